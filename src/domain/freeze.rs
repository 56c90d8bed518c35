//! A change freeze: a time when releases are refused (a rollback never is) unless an admin
//! overrides it. One-off (`from`, `until` or open-ended) or recurring weekly within those
//! bounds (`weekly`, the window shape recycling uses), always with a reason.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ValidationError;
use super::window::Window;

/// How every refusal of a release during a freeze begins (the release page answers such a
/// conflict with the admin's second question).
pub const REFUSED: &str = "Releases are frozen";

/// A freeze as asked for (`POST /api/v1/freezes`, the Rollouts page's form).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FreezeInput {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    #[serde(default)]
    pub weekly: Option<Window>,
    pub reason: String,
}

impl FreezeInput {
    /// Checks it as a whole; each refusal names its field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let reason = self.reason.trim();
        if reason.is_empty() {
            return Err(ValidationError::new(
                "reason: say why releases are frozen (people will read it when refused).",
            ));
        }
        if reason.chars().count() > 200 {
            return Err(ValidationError::new("reason: at most 200 characters."));
        }
        if let Some(until) = self.until
            && until <= self.from
        {
            return Err(ValidationError::new("until: must be after from."));
        }
        if let Some(w) = &self.weekly {
            w.validate("weekly")?;
        }
        Ok(())
    }
}

/// A stored freeze.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Freeze {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub weekly: Option<Window>,
    pub reason: String,
    pub created_by: String,
}

/// "2026-12-20 00:00 UTC".
pub fn utc_minute(t: OffsetDateTime) -> String {
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

impl Freeze {
    /// Whether releases are frozen at `t` (unix seconds).
    pub fn in_force(&self, t: i64) -> bool {
        t >= self.from.unix_timestamp()
            && self.until.is_none_or(|u| t < u.unix_timestamp())
            && self.weekly.as_ref().is_none_or(|w| w.is_open(t))
    }

    /// Over for good at `t`: it will never be in force again.
    pub fn is_over(&self, t: i64) -> bool {
        self.until.is_some_and(|u| t >= u.unix_timestamp())
    }

    /// When it applies, in words: "from 2026-12-20 00:00 UTC until 2027-01-04 00:00 UTC",
    /// "fri 12:00–23:59 UTC every week from 2026-12-01 00:00 UTC".
    pub fn when(&self) -> String {
        let bounds = match self.until {
            Some(u) => format!("from {} until {}", utc_minute(self.from), utc_minute(u)),
            None => format!("from {}", utc_minute(self.from)),
        };
        match &self.weekly {
            Some(w) => format!("{w} every week {bounds}"),
            None => bounds,
        }
    }

    /// The sentence a refused release shows.
    pub fn refusal(&self) -> String {
        format!(
            "{REFUSED}: \"{}\" ({}, freeze #{} by {}). An admin can override the freeze; a rollback is always allowed.",
            self.reason,
            self.when(),
            self.id,
            self.created_by
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn input(from: &str, until: Option<&str>, weekly: Option<Window>, reason: &str) -> FreezeInput {
        FreezeInput {
            from: at(from),
            until: until.map(at),
            weekly,
            reason: reason.into(),
        }
    }

    fn stored(i: FreezeInput) -> Freeze {
        Freeze {
            id: 7,
            from: i.from,
            until: i.until,
            weekly: i.weekly,
            reason: i.reason,
            created_by: "ada".into(),
        }
    }

    #[test]
    fn a_freeze_is_validated_as_a_whole_and_each_refusal_names_its_field() {
        let err = |i: FreezeInput| i.validate().unwrap_err().0;
        assert!(err(input("2026-12-20T00:00:00Z", None, None, " ")).starts_with("reason:"));
        assert!(
            err(input(
                "2026-12-20T00:00:00Z",
                Some("2026-12-20T00:00:00Z"),
                None,
                "holidays"
            ))
            .starts_with("until: must be after from")
        );
        let bad_week = Window {
            days: vec!["friday".into()],
            from: "12:00".into(),
            until: "23:59".into(),
        };
        assert!(
            err(input("2026-12-01T00:00:00Z", None, Some(bad_week), "x"))
                .starts_with("weekly.days:")
        );
        assert!(
            input(
                "2026-12-20T00:00:00Z",
                Some("2027-01-04T00:00:00Z"),
                None,
                "holidays"
            )
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn one_off_open_ended_and_weekly_freezes_are_in_force_when_they_say() {
        let holidays = stored(input(
            "2026-12-20T00:00:00Z",
            Some("2027-01-04T00:00:00Z"),
            None,
            "holidays",
        ));
        let t = |s: &str| at(s).unix_timestamp();
        assert!(!holidays.in_force(t("2026-12-19T23:59:59Z")));
        assert!(holidays.in_force(t("2026-12-20T00:00:00Z")));
        assert!(
            !holidays.in_force(t("2027-01-04T00:00:00Z")),
            "until is exclusive"
        );
        assert!(holidays.is_over(t("2027-01-04T00:00:00Z")));
        assert_eq!(
            holidays.when(),
            "from 2026-12-20 00:00 UTC until 2027-01-04 00:00 UTC"
        );
        let open = stored(input("2026-12-20T00:00:00Z", None, None, "incident"));
        assert!(open.in_force(t("2030-01-01T00:00:00Z")));
        assert!(!open.is_over(t("2030-01-01T00:00:00Z")));
        let fridays = stored(input(
            "2026-12-01T00:00:00Z",
            None,
            Some(Window {
                days: vec!["fri".into()],
                from: "12:00".into(),
                until: "23:59".into(),
            }),
            "no Friday releases",
        ));
        assert!(
            fridays.in_force(t("2026-12-04T15:00:00Z")),
            "a Friday afternoon"
        );
        assert!(
            !fridays.in_force(t("2026-12-04T09:00:00Z")),
            "Friday morning"
        );
        assert!(!fridays.in_force(t("2026-12-05T15:00:00Z")), "a Saturday");
        assert!(
            !fridays.in_force(t("2026-11-27T15:00:00Z")),
            "before it began"
        );
        assert_eq!(
            fridays.refusal(),
            "Releases are frozen: \"no Friday releases\" (fri 12:00–23:59 UTC every week from 2026-12-01 00:00 UTC, freeze #7 by ada). An admin can override the freeze; a rollback is always allowed."
        );
    }
}

//! A weekly window: days of the week and hours, UTC —
//! `{"days": ["mon", …], "from": "HH:MM", "until": "HH:MM"}`. Recycling runs inside one; a
//! change freeze may recur in one. `until` before `from` spans midnight, and such a window
//! belongs to the day it opens on.

use serde::{Deserialize, Serialize};

use super::ValidationError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub days: Vec<String>,
    pub from: String,
    pub until: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn bad<T>(m: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(m))
}

/// Minutes since midnight of "HH:MM".
fn minutes(field: &str, s: &str) -> Result<u32, ValidationError> {
    let parsed = s
        .split_once(':')
        .filter(|(h, m)| h.len() == 2 && m.len() == 2)
        .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
        .filter(|(h, m)| *h < 24 && *m < 60);
    match parsed {
        Some((h, m)) => Ok(h * 60 + m),
        None => bad(format!(
            "{field}: {s:?} is not a time of day as HH:MM (UTC)."
        )),
    }
}

impl Window {
    /// Checks the window; `field` names it in a refusal ("recycle.window").
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.days.is_empty() {
            return bad(format!("{field}.days: name at least one day (mon … sun)."));
        }
        if let Some(d) = self.days.iter().find(|d| !DAYS.contains(&d.as_str())) {
            return bad(format!(
                "{field}.days: {d:?} is not a day; use mon, tue, wed, thu, fri, sat, sun."
            ));
        }
        let (from, until) = (
            minutes(&format!("{field}.from"), &self.from)?,
            minutes(&format!("{field}.until"), &self.until)?,
        );
        if from == until {
            return bad(format!("{field}.until: must differ from from."));
        }
        Ok(())
    }

    /// Whether the window is open at unix time `t`.
    pub fn is_open(&self, t: i64) -> bool {
        let (Ok(from), Ok(until)) = (minutes("", &self.from), minutes("", &self.until)) else {
            return false;
        };
        let day = t.div_euclid(86_400);
        let minute = (t.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday: index 3 in DAYS.
        let weekday = |d: i64| DAYS[((d + 3).rem_euclid(7)) as usize];
        let listed = |d: i64| self.days.iter().any(|x| x == weekday(d));
        if from < until {
            listed(day) && (from..until).contains(&minute)
        } else {
            (listed(day) && minute >= from) || (listed(day - 1) && minute < until)
        }
    }
}

impl std::fmt::Display for Window {
    /// "sat, sun 22:00–04:00 UTC"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}–{} UTC",
            self.days.join(", "),
            self.from,
            self.until
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_open_on_their_days_and_hours_in_utc() {
        let w = Window {
            days: vec!["sat".into(), "sun".into()],
            from: "22:00".into(),
            until: "04:00".into(),
        };
        let sat = 1_796_428_800; // 2026-12-05, a Saturday, at midnight UTC
        let at = |d: i64, h: i64, m: i64| sat + d * 86_400 + h * 3600 + m * 60;
        assert!(!w.is_open(at(0, 21, 59)));
        assert!(w.is_open(at(0, 22, 0)));
        assert!(
            w.is_open(at(1, 3, 59)),
            "Sunday early morning: Saturday's window"
        );
        assert!(
            w.is_open(at(2, 1, 0)),
            "Monday early morning: Sunday's window"
        );
        assert!(!w.is_open(at(2, 4, 0)));
        assert!(!w.is_open(at(-1, 23, 0)), "Friday night is not listed");
        assert_eq!(w.to_string(), "sat, sun 22:00–04:00 UTC");
    }

    #[test]
    fn a_refusal_names_the_field() {
        let w = |days: &[&str], from: &str, until: &str| Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            until: until.into(),
        };
        let err = |w: Window| w.validate("weekly").unwrap_err().0;
        assert!(err(w(&[], "01:00", "02:00")).starts_with("weekly.days:"));
        assert!(err(w(&["friday"], "01:00", "02:00")).starts_with("weekly.days:"));
        assert!(err(w(&["fri"], "1:00", "02:00")).starts_with("weekly.from:"));
        assert!(err(w(&["fri"], "01:00", "01:00")).starts_with("weekly.until:"));
        assert!(w(&["fri"], "12:00", "23:59").validate("weekly").is_ok());
    }
}

//! A rollout as asked for — its batch settings, and for a release its plan (canary, soak time,
//! health check, guarding alerts, a human's go-ahead) — validated as a whole against the
//! console's defaults. No I/O: what needs the database (the fleet's size for the canary, that
//! the guarding alerts exist) is checked by `rollouts::start` with the values resolved here.

use serde::Deserialize;

use super::{Approval, DeadlineAction, InsufficientData, RolloutKind, ValidationError};

/// The longest health command accepted (it is a job's command).
pub const MAX_HEALTH_COMMAND: usize = 4096;

/// A rollout's settings and plan as asked for (the API's body, or the release form parsed);
/// each field left out takes its default.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RolloutInput {
    #[serde(default)]
    pub batch_size: Option<i64>,
    #[serde(default)]
    pub min_healthy_percent: Option<i64>,
    #[serde(default)]
    pub health_timeout_s: Option<i64>,
    #[serde(default)]
    pub drain_timeout_s: Option<i64>,
    /// Release during a change freeze (admins only: the web layer checks the role).
    #[serde(default)]
    pub override_freeze: Option<bool>,
    #[serde(default)]
    pub canary: Option<i64>,
    #[serde(default)]
    pub soak_s: Option<i64>,
    #[serde(default)]
    pub health_command: Option<String>,
    #[serde(default)]
    pub guard_alerts: Option<GuardAlerts>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub approval_deadline_s: Option<i64>,
    #[serde(default)]
    pub on_deadline: Option<DeadlineAction>,
    #[serde(default)]
    pub on_insufficient_data: Option<InsufficientData>,
    #[serde(default)]
    pub canary_p95_margin: Option<f64>,
}

/// The alerts that guard a release: `"any"` (any alert firing on the new servers) or a list
/// of alert rule ids (any source); an empty list guards with none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAlerts {
    Any,
    Rules(Vec<i64>),
}

impl<'de> Deserialize<'de> for GuardAlerts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GuardAlerts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"any\" or a list of alert ids")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GuardAlerts, E> {
                GuardAlerts::parse(v).map_err(|e| E::custom(e.0))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<GuardAlerts, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<i64>()? {
                    ids.push(id);
                }
                Ok(GuardAlerts::Rules(ids))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl GuardAlerts {
    /// `any`, or alert ids separated by commas (a setting, a form's field); empty: none.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        if s == "any" {
            return Ok(GuardAlerts::Any);
        }
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<i64>().map_err(|_| {
                    ValidationError::new(format!(
                        "{p:?} is not an alert id; guard_alerts takes \"any\" or a list of alert ids"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(GuardAlerts::Rules)
    }
}

/// Validated batch settings of one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutSettings {
    pub batch_size: i32,
    pub min_healthy_percent: i32,
    pub health_timeout_s: i32,
    pub drain_timeout_s: i32,
    pub grace_s: i32,
}

/// A release's validated plan. A rollback's is [`Plan::none`]: it goes back at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Servers of the first batch; 0: no canary.
    pub canary: i32,
    /// Watched time after each batch before the next one (or the end).
    pub soak_s: i32,
    /// Run on each new server as a pinned job; empty: none.
    pub health_command: String,
    /// Any alert firing on the new servers trips the release.
    pub guard_any: bool,
    /// These alert rules firing (on any source) trip the release.
    pub guard_rule_ids: Vec<i64>,
    pub approval: Approval,
    pub approval_deadline_s: i32,
    pub on_deadline: DeadlineAction,
    pub on_insufficient_data: InsufficientData,
    pub canary_p95_margin: f64,
}

impl Plan {
    /// No canary, no soak, no health check, no guards, no wait.
    pub fn none() -> Self {
        Plan {
            canary: 0,
            soak_s: 0,
            health_command: String::new(),
            guard_any: false,
            guard_rule_ids: Vec::new(),
            approval: Approval::None,
            approval_deadline_s: 3600,
            on_deadline: DeadlineAction::Rollback,
            on_insufficient_data: InsufficientData::Wait,
            canary_p95_margin: 0.5,
        }
    }

    /// "the canary" or "batch n": how the sentences name batch `n`.
    pub fn batch_name(&self, n: i32) -> String {
        if self.canary > 0 && n == 1 {
            "the canary".to_owned()
        } else {
            format!("batch {n}")
        }
    }

    /// When a batch that closed at `done_at` has soaked.
    pub fn soak_end(&self, done_at: time::OffsetDateTime) -> time::OffsetDateTime {
        done_at + time::Duration::seconds(self.soak_s.into())
    }

    /// When the go-ahead after a batch that closed at `done_at` is due.
    pub fn approval_deadline(&self, done_at: time::OffsetDateTime) -> time::OffsetDateTime {
        self.soak_end(done_at) + time::Duration::seconds(self.approval_deadline_s.into())
    }

    /// The plan in a few words, for the audit log and the rollout page; "" for none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.canary > 0 {
            parts.push(format!("canary of {}", self.canary));
        }
        if self.soak_s > 0 {
            parts.push(format!("soak {} s", self.soak_s));
        }
        if !self.health_command.is_empty() {
            parts.push(format!("health check `{}`", self.health_command));
        }
        match (self.guard_any, self.guard_rule_ids.as_slice()) {
            (false, []) => {}
            (true, []) => parts.push("guarded by any alert on the new servers".into()),
            (any, ids) => parts.push(format!(
                "guarded by alert{} {}{}",
                if ids.len() == 1 { "" } else { "s" },
                ids.iter()
                    .map(|id| format!("#{id}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if any {
                    " and any alert on the new servers"
                } else {
                    ""
                }
            )),
        }
        match self.approval {
            Approval::None => {}
            Approval::AfterCanary | Approval::EachBatch => parts.push(format!(
                "go-ahead {} (within {} s, else {})",
                if self.approval == Approval::AfterCanary {
                    "after the canary"
                } else {
                    "after each batch"
                },
                self.approval_deadline_s,
                match self.on_deadline {
                    DeadlineAction::Rollback => "roll back",
                    DeadlineAction::Continue => "continue",
                }
            )),
        }
        parts.join(", ")
    }
}

/// The console's defaults (`KILN_ROLLOUT_…`, `KILN_MIN_HEALTHY`, `KILN_RELEASE_…`).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub settings: RolloutSettings,
    pub plan: Plan,
}

impl Defaults {
    /// Checks the defaults as if a release had asked for each of them.
    pub fn check(&self) -> Result<(), ValidationError> {
        let p = &self.plan;
        RolloutInput {
            canary: Some(p.canary.into()),
            soak_s: Some(p.soak_s.into()),
            health_command: (!p.health_command.is_empty()).then(|| p.health_command.clone()),
            approval_deadline_s: Some(p.approval_deadline_s.into()),
            canary_p95_margin: Some(p.canary_p95_margin),
            ..RolloutInput::default()
        }
        .resolve(self, RolloutKind::Release)
        .map(|_| ())
    }
}

/// A whole number within `range`, or None when left out.
fn whole(
    value: Option<i64>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i32>, ValidationError> {
    match value {
        None => Ok(None),
        Some(n) if range.contains(&n) => Ok(Some(n as i32)),
        Some(n) => Err(ValidationError::new(format!(
            "{name} must be a whole number from {} to {}, not {n}.",
            range.start(),
            range.end()
        ))),
    }
}

impl RolloutInput {
    /// The plan fields given, by name (a rollback refuses them).
    fn plan_fields_given(&self) -> Option<&'static str> {
        [
            ("canary", self.canary.is_some()),
            ("soak_s", self.soak_s.is_some()),
            ("health_command", self.health_command.is_some()),
            ("guard_alerts", self.guard_alerts.is_some()),
            ("approval", self.approval.is_some()),
            ("approval_deadline_s", self.approval_deadline_s.is_some()),
            ("on_deadline", self.on_deadline.is_some()),
            ("on_insufficient_data", self.on_insufficient_data.is_some()),
            ("canary_p95_margin", self.canary_p95_margin.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }

    /// The rollout's settings and plan, every field checked and the plan checked as a whole.
    /// Each error names its field.
    pub fn resolve(
        &self,
        defaults: &Defaults,
        kind: RolloutKind,
    ) -> Result<(RolloutSettings, Plan), ValidationError> {
        let d = &defaults.settings;
        let settings = RolloutSettings {
            batch_size: whole(self.batch_size, "batch_size", 1..=500)?.unwrap_or(d.batch_size),
            min_healthy_percent: whole(self.min_healthy_percent, "min_healthy_percent", 0..=100)?
                .unwrap_or(d.min_healthy_percent),
            health_timeout_s: whole(self.health_timeout_s, "health_timeout_s", 1..=86_400)?
                .unwrap_or(d.health_timeout_s),
            drain_timeout_s: whole(self.drain_timeout_s, "drain_timeout_s", 0..=86_400)?
                .unwrap_or(d.drain_timeout_s),
            grace_s: d.grace_s,
        };
        if kind == RolloutKind::Rollback {
            if let Some(field) = self.plan_fields_given() {
                return Err(ValidationError::new(format!(
                    "{field}: a rollback has no plan (no canary, soak or go-ahead): it goes back at once."
                )));
            }
            return Ok((settings, Plan::none()));
        }
        let p = &defaults.plan;
        let health_command = match &self.health_command {
            None => p.health_command.clone(),
            Some(c) if c.trim().is_empty() => {
                return Err(ValidationError::new(
                    "health_command is empty; leave it out for no health check.",
                ));
            }
            Some(c) if c.len() > MAX_HEALTH_COMMAND => {
                return Err(ValidationError::new(format!(
                    "health_command is longer than {MAX_HEALTH_COMMAND} characters."
                )));
            }
            Some(c) => c.trim().to_owned(),
        };
        let (guard_any, guard_rule_ids) = match &self.guard_alerts {
            None => (p.guard_any, p.guard_rule_ids.clone()),
            Some(GuardAlerts::Any) => (true, Vec::new()),
            Some(GuardAlerts::Rules(ids)) => {
                if let Some(bad) = ids.iter().find(|id| **id <= 0) {
                    return Err(ValidationError::new(format!(
                        "guard_alerts: {bad} is not an alert id."
                    )));
                }
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                (false, ids)
            }
        };
        let canary_p95_margin = match self.canary_p95_margin {
            None => p.canary_p95_margin,
            Some(m) if m.is_finite() && m > 0.0 && m <= 10.0 => m,
            Some(m) => {
                return Err(ValidationError::new(format!(
                    "canary_p95_margin must be a fraction above 0 and at most 10 (0.5: 50% longer), not {m}."
                )));
            }
        };
        let plan = Plan {
            canary: whole(self.canary, "canary", 0..=500)?.unwrap_or(p.canary),
            soak_s: whole(self.soak_s, "soak_s", 0..=86_400)?.unwrap_or(p.soak_s),
            health_command,
            guard_any,
            guard_rule_ids,
            approval: self.approval.unwrap_or(p.approval),
            approval_deadline_s: whole(
                self.approval_deadline_s,
                "approval_deadline_s",
                1..=86_400,
            )?
            .unwrap_or(p.approval_deadline_s),
            on_deadline: self.on_deadline.unwrap_or(p.on_deadline),
            on_insufficient_data: self.on_insufficient_data.unwrap_or(p.on_insufficient_data),
            canary_p95_margin,
        };
        if plan.approval == Approval::AfterCanary && plan.canary == 0 {
            return Err(ValidationError::new(
                "approval: after_canary needs a canary (canary is 0); choose a canary size or each_batch.",
            ));
        }
        Ok((settings, plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            settings: RolloutSettings {
                batch_size: 5,
                min_healthy_percent: 100,
                health_timeout_s: 300,
                drain_timeout_s: 600,
                grace_s: 1800,
            },
            plan: Plan::none(),
        }
    }

    fn err(input: serde_json::Value, kind: RolloutKind) -> String {
        let input: RolloutInput = serde_json::from_value(input).unwrap();
        input.resolve(&defaults(), kind).unwrap_err().0
    }

    #[test]
    fn a_plan_takes_the_defaults_and_what_is_given() {
        let (s, p) = RolloutInput::default()
            .resolve(&defaults(), RolloutKind::Release)
            .unwrap();
        assert_eq!(
            (s.batch_size, s.health_timeout_s, s.grace_s),
            (5, 300, 1800)
        );
        assert_eq!(p, Plan::none());
        assert_eq!(p.describe(), "");
        let input: RolloutInput = serde_json::from_value(serde_json::json!({
            "canary": 1, "soak_s": 60, "health_command": " curl -fsS localhost:8080/health ",
            "guard_alerts": [3, 1, 3], "approval": "after_canary", "approval_deadline_s": 120,
            "on_deadline": "continue", "on_insufficient_data": "continue", "canary_p95_margin": 0.25
        }))
        .unwrap();
        let (_, p) = input.resolve(&defaults(), RolloutKind::Release).unwrap();
        assert_eq!(p.health_command, "curl -fsS localhost:8080/health");
        assert_eq!((p.guard_any, p.guard_rule_ids.clone()), (false, vec![1, 3]));
        assert_eq!(p.on_deadline, DeadlineAction::Continue);
        assert_eq!(
            p.describe(),
            "canary of 1, soak 60 s, health check `curl -fsS localhost:8080/health`, guarded by alerts #1, #3, go-ahead after the canary (within 120 s, else continue)"
        );
        let any: RolloutInput =
            serde_json::from_value(serde_json::json!({"guard_alerts": "any"})).unwrap();
        assert!(
            any.resolve(&defaults(), RolloutKind::Release)
                .unwrap()
                .1
                .guard_any
        );
    }

    #[test]
    fn bad_plans_are_refused_naming_the_field() {
        use RolloutKind::{Release, Rollback};
        use serde_json::json;
        for (input, starts) in [
            (json!({"canary": -1}), "canary must be"),
            (json!({"soak_s": 86_401}), "soak_s must be"),
            (json!({"health_command": "  "}), "health_command is empty"),
            (
                json!({"approval_deadline_s": 0}),
                "approval_deadline_s must be",
            ),
            (
                json!({"canary_p95_margin": 0.0}),
                "canary_p95_margin must be",
            ),
            (json!({"guard_alerts": [0]}), "guard_alerts: 0 is not"),
            (
                json!({"approval": "after_canary"}),
                "approval: after_canary needs a canary",
            ),
            (json!({"batch_size": 0}), "batch_size must be"),
        ] {
            let e = err(input.clone(), Release);
            assert!(e.starts_with(starts), "{input}: {e}");
        }
        let e = err(json!({"soak_s": 60}), Rollback);
        assert!(e.starts_with("soak_s: a rollback has no plan"), "{e}");
        assert!(serde_json::from_value::<RolloutInput>(json!({"guard_alerts": "all"})).is_err());
        assert!(serde_json::from_value::<RolloutInput>(json!({"approval": "later"})).is_err());
    }

    #[test]
    fn guard_alerts_parse_from_a_setting_or_a_form() {
        assert_eq!(GuardAlerts::parse("any").unwrap(), GuardAlerts::Any);
        assert_eq!(GuardAlerts::parse("").unwrap(), GuardAlerts::Rules(vec![]));
        assert_eq!(
            GuardAlerts::parse("2, 5").unwrap(),
            GuardAlerts::Rules(vec![2, 5])
        );
        assert!(GuardAlerts::parse("p95").is_err());
    }
}

//! A rule as a user writes it (`RuleInput`, from the API or the form) and as it is stored
//! (`Rule`): every field checked before anything is saved, each refusal naming the field.

use serde::{Deserialize, Serialize};

use super::{AlertAggregate, AlertGroup, AlertOp, NoDataPolicy, ValidationError};

/// More would make a rule nobody can read; Librato allows a handful too.
pub const MAX_CONDITIONS: usize = 10;
pub const DEFAULT_WINDOW_S: i64 = 60;
pub const DEFAULT_RENOTIFY_S: i64 = 600;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RuleInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub runbook_url: String,
    #[serde(default = "yes")]
    pub per_source: bool,
    /// How a rule that is not per source combines its sources (default max).
    #[serde(default)]
    pub group: Option<AlertGroup>,
    pub conditions: Vec<ConditionInput>,
    #[serde(default)]
    pub channels: Vec<i64>,
    #[serde(default)]
    pub renotify_s: Option<i64>,
    #[serde(default)]
    pub no_data: Option<NoDataPolicy>,
    #[serde(default)]
    pub blocks_changes: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConditionInput {
    pub metric: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub aggregate: Option<AlertAggregate>,
    #[serde(default)]
    pub window_s: Option<i64>,
    pub op: Option<AlertOp>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub for_s: Option<i64>,
    #[serde(default)]
    pub clear_threshold: Option<f64>,
}

/// A condition as stored (JSON in `alert_rules.conditions`) and evaluated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Condition {
    pub metric: String,
    /// A `*` glob.
    pub source: String,
    /// The glob as a LIKE pattern (what the evaluation's SQL matches with).
    pub source_like: String,
    pub aggregate: AlertAggregate,
    pub window_s: i64,
    pub op: AlertOp,
    pub threshold: Option<f64>,
    pub clear_threshold: Option<f64>,
    pub for_s: i64,
}

/// A validated rule, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub runbook_url: String,
    pub per_source: bool,
    pub group: AlertGroup,
    pub conditions: Vec<Condition>,
    pub channels: Vec<i64>,
    pub renotify_s: i64,
    pub no_data: NoDataPolicy,
    pub blocks_changes: bool,
    pub enabled: bool,
}

impl Rule {
    /// What the states of a rule's sources mean: when it changes on an edit, the old states
    /// are dropped; an edit of anything else (name, channels, runbook) keeps them.
    pub fn conditions_key(&self) -> String {
        let conditions = serde_json::to_string(&self.conditions).unwrap_or_default();
        format!(
            "{}|{}|{}|{conditions}",
            self.per_source,
            self.group.as_str(),
            self.no_data.as_str()
        )
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(msg))
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_')
}

/// Librato's rule for alert names, metric names and sources: 1 to 255 of `A-Za-z0-9.:-_`
/// (a source glob may also hold `*`).
fn check_librato_name(field: &str, s: &str, glob: bool) -> Result<(), ValidationError> {
    if s.is_empty() || s.len() > 255 || !s.chars().all(|c| name_char(c) || (glob && c == '*')) {
        let extra = if glob { " and *" } else { "" };
        return bad(format!(
            "{field}: {s:?} is invalid: use 1 to 255 characters of A-Z a-z 0-9 . : - _{extra}"
        ));
    }
    Ok(())
}

/// An http(s) URL of at most 2,000 characters (a runbook link, a webhook's address).
pub fn check_http_url(field: &str, s: &str) -> Result<url::Url, ValidationError> {
    if s.len() > 2000 {
        return bad(format!("{field}: a URL has at most 2000 characters."));
    }
    let url = url::Url::parse(s)
        .map_err(|e| ValidationError::new(format!("{field}: {s:?} is not a URL ({e}).")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return bad(format!("{field}: only http and https URLs are allowed."));
    }
    Ok(url)
}

fn finite(field: &str, v: Option<f64>) -> Result<Option<f64>, ValidationError> {
    match v {
        Some(x) if !x.is_finite() => bad(format!("{field}: must be a finite number.")),
        v => Ok(v),
    }
}

impl ConditionInput {
    fn validate(&self, at: &str) -> Result<Condition, ValidationError> {
        let metric = self.metric.trim();
        check_librato_name(&format!("{at}.metric"), metric, false)?;
        let source = match self.source.as_deref().map(str::trim) {
            None | Some("") => "*".to_owned(),
            Some(s) => s.to_owned(),
        };
        check_librato_name(&format!("{at}.source"), &source, true)?;
        let window_s = self.window_s.unwrap_or(DEFAULT_WINDOW_S);
        if !(10..=86_400).contains(&window_s) {
            return bad(format!(
                "{at}.window_s: must be between 10 and 86400 seconds."
            ));
        }
        let for_s = self.for_s.unwrap_or(0);
        if for_s != 0 && !(60..=3600).contains(&for_s) {
            return bad(format!(
                "{at}.for_s: must be 0 or between 60 and 3600 seconds."
            ));
        }
        let Some(op) = self.op else {
            return bad(format!("{at}.op: missing; one of above, below, absent."));
        };
        let threshold = finite(&format!("{at}.threshold"), self.threshold)?;
        let clear = finite(&format!("{at}.clear_threshold"), self.clear_threshold)?;
        match op {
            AlertOp::Absent => {
                if threshold.is_some() || clear.is_some() {
                    return bad(format!(
                        "{at}.threshold: an absent condition takes no threshold."
                    ));
                }
            }
            AlertOp::Above | AlertOp::Below => {
                let Some(t) = threshold else {
                    return bad(format!(
                        "{at}.threshold: missing; an {op} condition needs one."
                    ));
                };
                match (op, clear) {
                    (AlertOp::Above, Some(c)) if c > t => {
                        return bad(format!(
                            "{at}.clear_threshold: must be at most the threshold ({t}) for an above condition: it resolves below it."
                        ));
                    }
                    (AlertOp::Below, Some(c)) if c < t => {
                        return bad(format!(
                            "{at}.clear_threshold: must be at least the threshold ({t}) for a below condition: it resolves above it."
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(Condition {
            metric: metric.to_owned(),
            source_like: super::measurement::like_of(&source),
            source,
            aggregate: self.aggregate.unwrap_or(AlertAggregate::Avg),
            window_s,
            op,
            threshold,
            clear_threshold: clear,
            for_s,
        })
    }
}

impl RuleInput {
    /// Every field checked; the channels' existence is checked where they are stored.
    pub fn validate(&self) -> Result<Rule, ValidationError> {
        let name = self.name.trim();
        check_librato_name("name", name, false)?;
        let description = self.description.trim();
        if description.chars().count() > 1000 {
            return bad("description: at most 1000 characters.");
        }
        let runbook_url = self.runbook_url.trim();
        if !runbook_url.is_empty() {
            check_http_url("runbook_url", runbook_url)?;
        }
        if self.conditions.is_empty() {
            return bad("conditions: a rule needs at least one condition.");
        }
        if self.conditions.len() > MAX_CONDITIONS {
            return bad(format!(
                "conditions: at most {MAX_CONDITIONS} conditions per rule."
            ));
        }
        let conditions = self
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| c.validate(&format!("conditions[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let renotify_s = self.renotify_s.unwrap_or(DEFAULT_RENOTIFY_S);
        if renotify_s != 0 && !(60..=86_400).contains(&renotify_s) {
            return bad("renotify_s: must be 0 (never) or between 60 and 86400 seconds.");
        }
        if self.channels.len() > 20 {
            return bad("channels: at most 20 channels per rule.");
        }
        let mut channels = self.channels.clone();
        channels.sort_unstable();
        channels.dedup();
        Ok(Rule {
            name: name.to_owned(),
            description: description.to_owned(),
            runbook_url: runbook_url.to_owned(),
            per_source: self.per_source,
            group: self.group.unwrap_or(AlertGroup::Max),
            conditions,
            channels,
            renotify_s,
            no_data: self.no_data.unwrap_or(NoDataPolicy::Resolve),
            blocks_changes: self.blocks_changes,
            enabled: self.enabled,
        })
    }
}

/// Whether `source` matches a `*` glob (the silences' and previews' check, in Rust).
pub fn glob_matches(glob: &str, source: &str) -> bool {
    fn go(g: &[u8], s: &[u8]) -> bool {
        match g.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(glob.as_bytes(), source.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(op: AlertOp, threshold: Option<f64>) -> ConditionInput {
        ConditionInput {
            metric: "cpu".into(),
            op: Some(op),
            threshold,
            ..Default::default()
        }
    }

    fn rule(conditions: Vec<ConditionInput>) -> RuleInput {
        RuleInput {
            name: "cpu.high".into(),
            per_source: true,
            enabled: true,
            conditions,
            ..Default::default()
        }
    }

    fn refusal(r: RuleInput) -> String {
        r.validate().unwrap_err().0
    }

    #[test]
    fn defaults_fill_in() {
        let r = rule(vec![cond(AlertOp::Above, Some(80.0))])
            .validate()
            .unwrap();
        let c = &r.conditions[0];
        assert_eq!((c.source.as_str(), c.source_like.as_str()), ("*", "%"));
        assert_eq!((c.window_s, c.for_s), (60, 0));
        assert_eq!(c.aggregate, AlertAggregate::Avg);
        assert_eq!(r.renotify_s, 600);
        assert_eq!(r.no_data, NoDataPolicy::Resolve);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = rule(vec![cond(AlertOp::Above, Some(80.0))]);
        r.name = "cpu high".into();
        assert!(refusal(r).starts_with("name:"));
        assert!(refusal(rule(vec![])).starts_with("conditions:"));
        assert!(refusal(rule(vec![cond(AlertOp::Above, Some(1.0)); 11])).contains("at most 10"));
        assert!(refusal(rule(vec![cond(AlertOp::Above, None)])).contains("threshold: missing"));
        assert!(
            refusal(rule(vec![cond(AlertOp::Above, Some(f64::INFINITY))]))
                .contains("conditions[0].threshold: must be a finite")
        );
        assert!(refusal(rule(vec![cond(AlertOp::Absent, Some(1.0))])).contains("no threshold"));
        let mut c = cond(AlertOp::Above, Some(1.0));
        c.for_s = Some(30);
        assert!(refusal(rule(vec![c])).contains("conditions[0].for_s"));
        let mut c = cond(AlertOp::Above, Some(90.0));
        c.clear_threshold = Some(95.0);
        assert!(refusal(rule(vec![c])).contains("clear_threshold"));
        let mut c = cond(AlertOp::Below, Some(10.0));
        c.source = Some("web%".into());
        assert!(refusal(rule(vec![c])).contains("conditions[0].source"));
        let mut c = cond(AlertOp::Above, Some(1.0));
        c.metric = "cpu load".into();
        assert!(refusal(rule(vec![c])).contains("conditions[0].metric"));
        let mut r = rule(vec![cond(AlertOp::Above, Some(1.0))]);
        r.renotify_s = Some(5);
        assert!(refusal(r).starts_with("renotify_s"));
        let mut r = rule(vec![cond(AlertOp::Above, Some(1.0))]);
        r.runbook_url = "javascript:alert(1)".into();
        assert!(refusal(r).starts_with("runbook_url"));
    }

    #[test]
    fn the_key_changes_with_meaning_only() {
        let a = rule(vec![cond(AlertOp::Above, Some(80.0))])
            .validate()
            .unwrap();
        let mut b = a.clone();
        b.name = "other".into();
        b.channels = vec![3];
        assert_eq!(a.conditions_key(), b.conditions_key());
        b.conditions[0].threshold = Some(81.0);
        assert_ne!(a.conditions_key(), b.conditions_key());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", "i-1"));
        assert!(glob_matches("web-*", "web-3"));
        assert!(!glob_matches("web-*", "db-3"));
        assert!(glob_matches("*-3", "web-3"));
        assert!(glob_matches("i-1", "i-1"));
        assert!(!glob_matches("i-1", "i-12"));
    }
}

//! What a rule would have done over the last 24 hours: the same `decide` as the evaluation,
//! run minute by minute over the stored 1-minute rollups (one read per condition), each
//! source as if it had always been live and never silenced. Rollups are per minute, so a
//! window shorter than a minute is previewed as the last minute.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::alerts::decide::{self, Inputs, Notice, SourceFact, SourceState};
use crate::alerts::evaluate::{GROUP_SOURCE, group, reduce};
use crate::db::metrics::{Bucket, Table};
use crate::domain::AlertState;
use crate::domain::alert_rule::{Condition, Rule};

pub const SPAN_S: i64 = 86_400;
const STEP_S: i64 = 60;
/// Episodes listed in the answer (the count covers them all).
const LISTED: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Episode {
    pub source: String,
    /// Unix seconds.
    pub from: i64,
    /// None: still firing at the end of the span.
    pub until: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Preview {
    pub fired: usize,
    pub sources: usize,
    pub episodes: Vec<Episode>,
    pub sentence: String,
}

/// One source's minute buckets of one condition, by minute start.
type Minutes = BTreeMap<i64, Bucket>;

fn window_value(c: &Condition, minutes: &Minutes, end: i64) -> Option<f64> {
    // Rollups are per minute: a window shorter than one is previewed as the last minute.
    let window_s = c.window_s.max(STEP_S);
    let from = end - window_s;
    let mut count = 0i64;
    let (mut sum, mut min, mut max) = (0.0, f64::MAX, f64::MIN);
    let mut counter = false;
    for b in minutes.range(from..end).map(|(_, b)| b) {
        count += b.count;
        sum += b.sum;
        min = min.min(b.min);
        max = max.max(b.max);
        counter = b.kind == "counter";
    }
    reduce(c, counter, window_s, count, (sum, min, max))
}

fn hhmm(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(|t| format!("{:02}:{:02}", t.hour(), t.minute()))
        .unwrap_or_default()
}

/// The replay itself, pure: `series[i]` holds condition i's minute buckets per source.
pub fn replay(rule: &Rule, series: &[BTreeMap<String, Minutes>], end: i64) -> Preview {
    let start = end - SPAN_S;
    let mut sources: Vec<String> = series.iter().flat_map(|m| m.keys().cloned()).collect();
    sources.sort();
    sources.dedup();
    let keys: Vec<String> = if rule.per_source {
        sources.clone()
    } else {
        vec![GROUP_SOURCE.to_owned()]
    };
    let empty = Minutes::new();
    let mut states: BTreeMap<&str, Option<SourceState>> = BTreeMap::new();
    let mut open: BTreeMap<&str, i64> = BTreeMap::new();
    let mut episodes = Vec::new();
    let mut t = start + STEP_S;
    while t <= end {
        for key in &keys {
            let values: Vec<Option<f64>> = rule
                .conditions
                .iter()
                .zip(series)
                .map(|(c, per)| {
                    if rule.per_source {
                        window_value(c, per.get(key).unwrap_or(&empty), t)
                    } else {
                        group(
                            rule.group,
                            per.values().filter_map(|m| window_value(c, m, t)),
                        )
                    }
                })
                .collect();
            let prior = states.entry(key.as_str()).or_insert(None);
            let outcome = decide::decide(&Inputs {
                rule,
                prior: prior.as_ref(),
                values: &values,
                now: t,
                silenced: false,
                fact: SourceFact::Live,
                for_scale: 1.0,
            });
            if let Some(tr) = &outcome.transition {
                if tr.to == AlertState::Firing {
                    open.insert(key.as_str(), t);
                } else if tr.from == AlertState::Firing
                    && let Some(from) = open.remove(key.as_str())
                {
                    episodes.push(Episode {
                        source: key.clone(),
                        from,
                        until: Some(t),
                    });
                }
            }
            debug_assert!(outcome.notice != Some(Notice::Renotify) || prior.is_some());
            *prior = outcome.next;
        }
        t += STEP_S;
    }
    for (source, from) in open {
        episodes.push(Episode {
            source: source.to_owned(),
            from,
            until: None,
        });
    }
    episodes.sort_by_key(|e| (e.from, e.source.clone()));
    let fired = episodes.len();
    let sentence = if sources.is_empty() {
        "No stored data matches these conditions in the last 24 hours.".to_owned()
    } else if fired == 0 {
        format!(
            "Would not have fired in the last 24 hours ({} source{} evaluated).",
            sources.len(),
            if sources.len() == 1 { "" } else { "s" }
        )
    } else {
        let shown: Vec<String> = episodes
            .iter()
            .take(5)
            .map(|e| {
                let on = if e.source.is_empty() {
                    "all sources".to_owned()
                } else {
                    e.source.clone()
                };
                match e.until {
                    Some(u) => format!("{}–{} on {on}", hhmm(e.from), hhmm(u)),
                    None => format!("{}–now on {on}", hhmm(e.from)),
                }
            })
            .collect();
        format!(
            "Would have fired {fired} time{}: {}{}",
            if fired == 1 { "" } else { "s" },
            shown.join(", "),
            if fired > 5 { ", …" } else { "" }
        )
    };
    episodes.truncate(LISTED);
    Preview {
        fired,
        sources: sources.len(),
        episodes,
        sentence,
    }
}

/// Reads each condition's minute rollups over the span (and its first window) and replays.
pub async fn preview(pool: &PgPool, rule: &Rule) -> sqlx::Result<Preview> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    // The last complete minute: the rollups of the current one are still filling.
    let end = now.unix_timestamp() / 60 * 60;
    let mut series = Vec::with_capacity(rule.conditions.len());
    for c in &rule.conditions {
        let from = OffsetDateTime::from_unix_timestamp(end - SPAN_S - c.window_s)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let to = OffsetDateTime::from_unix_timestamp(end).unwrap_or(now);
        let buckets = crate::db::metrics::buckets(
            pool,
            &c.metric,
            &c.source_like,
            from,
            to,
            60,
            Table::Rollup(60),
        )
        .await?;
        let mut per: BTreeMap<String, Minutes> = BTreeMap::new();
        for b in buckets {
            per.entry(b.source.clone()).or_default().insert(b.t, b);
        }
        series.push(per);
    }
    Ok(replay(rule, &series, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AlertOp;
    use crate::domain::alert_rule::{ConditionInput, RuleInput};

    fn bucket(source: &str, t: i64, v: f64) -> Bucket {
        Bucket {
            source: source.into(),
            kind: "gauge".into(),
            t,
            count: 1,
            sum: v,
            min: v,
            max: v,
            last: v,
        }
    }

    #[test]
    fn replays_the_day_minute_by_minute() {
        let rule = RuleInput {
            name: "cpu".into(),
            per_source: true,
            enabled: true,
            conditions: vec![ConditionInput {
                metric: "cpu".into(),
                op: Some(AlertOp::Above),
                threshold: Some(80.0),
                for_s: Some(120),
                ..Default::default()
            }],
            ..Default::default()
        }
        .validate()
        .unwrap();
        let end = 1_000_000 * 60;
        let start = end - SPAN_S;
        let mut a = Minutes::new();
        let mut b = Minutes::new();
        for m in 0..1440 {
            let t = start + m * 60;
            // a: hot from minute 100 to 109 (fires after its 2-minute for), b: never.
            let v = if (100..110).contains(&m) { 95.0 } else { 20.0 };
            a.insert(t, bucket("a", t, v));
            b.insert(t, bucket("b", t, 50.0));
        }
        let series = vec![BTreeMap::from([("a".to_owned(), a), ("b".to_owned(), b)])];
        let p = replay(&rule, &series, end);
        assert_eq!(p.fired, 1, "{p:?}");
        assert_eq!(p.sources, 2);
        let e = &p.episodes[0];
        assert_eq!(e.source, "a");
        // The window ending at minute 101's end first sees 95; pending there, firing two
        // minutes later; resolved when the window ending after minute 110 sees 20.
        assert_eq!(e.from, start + 103 * 60);
        assert_eq!(e.until, Some(start + 111 * 60));
        assert!(
            p.sentence.starts_with("Would have fired 1 time: "),
            "{}",
            p.sentence
        );
        assert!(p.sentence.ends_with(" on a"), "{}", p.sentence);
    }
}

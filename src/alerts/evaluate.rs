//! The evaluation pass: every `KILN_ALERT_INTERVAL`, one console at a time (an advisory
//! lock), read every enabled rule's windows in one statement, the stored states, the active
//! silences and what the sources are as servers; decide each (rule, source) with the pure
//! `decide`; write what changed — states, transitions, notifications and their delivery
//! tasks — in one transaction. The statements per pass do not grow with the number of rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::alerts::decide::{self, Inputs, SourceFact, SourceState};
use crate::alerts::notify::{self, AlertItem};
use crate::db::alerts::{RuleRow, StateRow, WindowRow};
use crate::domain::alert_rule::{Condition, Rule, glob_matches};
use crate::domain::{AlertAggregate, AlertGroup, AlertState};
use crate::telemetry::prometheus::Registry;

pub const LOCK: i64 = 0x006b_696c_6e61_6c72; // "kilnalr"

/// The source key of a rule that is not evaluated per source: its sources as one.
pub const GROUP_SOURCE: &str = "";

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub interval: Duration,
    /// Multiplies every condition's `for_s` (1 in production; tests shorten it).
    pub for_scale: f64,
    pub public_url: String,
}

impl EvalConfig {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        EvalConfig {
            interval: Duration::from_secs(s.alert_interval),
            for_scale: s.alert_for_scale,
            public_url: s.public_url(),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub rules: usize,
    pub pairs: usize,
    pub transitions: usize,
    pub notifications: usize,
}

/// A condition's value from a window's figures (count, sum, min, max): a counter's increase
/// per minute over `window_s`, a gauge's aggregate; None when the window holds no point. The
/// evaluation pass and the preview both reduce their windows here.
pub fn reduce(
    c: &Condition,
    counter: bool,
    window_s: i64,
    count: i64,
    (sum, min, max): (f64, f64, f64),
) -> Option<f64> {
    if count == 0 {
        return None;
    }
    if counter {
        return Some((max - min).max(0.0) * 60.0 / window_s as f64);
    }
    Some(match c.aggregate {
        AlertAggregate::Avg => sum / count as f64,
        AlertAggregate::Min => min,
        AlertAggregate::Max => max,
        AlertAggregate::Sum => sum,
        AlertAggregate::Count => count as f64,
    })
}

/// A condition's value from its row of the window statement.
pub fn value_of(c: &Condition, w: &WindowRow) -> Option<f64> {
    let figures = (w.sum?, w.min?, w.max?);
    reduce(c, w.kind == "counter", c.window_s, w.count, figures)
}

/// Combines the sources' values of a rule that is not per source.
pub fn group(g: AlertGroup, values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    Some(match g {
        AlertGroup::Max => v.iter().copied().fold(f64::MIN, f64::max),
        AlertGroup::Min => v.iter().copied().fold(f64::MAX, f64::min),
        AlertGroup::Sum => v.iter().sum(),
        AlertGroup::Avg => v.iter().sum::<f64>() / v.len() as f64,
    })
}

/// Each source's values, one per condition (None: no point in the window).
pub type SourceValues = BTreeMap<String, Vec<Option<f64>>>;

/// Each source's values for one rule.
pub fn source_values(
    rule: &Rule,
    rows: &[&WindowRow],
    known: impl Iterator<Item = String>,
) -> SourceValues {
    let n = rule.conditions.len();
    let mut per: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for w in rows {
        let Some(c) = rule.conditions.get(w.idx as usize) else {
            continue;
        };
        per.entry(w.source.clone()).or_insert_with(|| vec![None; n])[w.idx as usize] =
            value_of(c, w);
    }
    if !rule.per_source {
        let grouped: Vec<Option<f64>> = (0..n)
            .map(|k| group(rule.group, per.values().filter_map(|v| v[k])))
            .collect();
        return BTreeMap::from([(GROUP_SOURCE.to_owned(), grouped)]);
    }
    for s in known {
        per.entry(s).or_insert_with(|| vec![None; n]);
    }
    per
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn at(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn stored(row: &StateRow) -> SourceState {
    SourceState {
        state: row.state,
        since: unix(row.since),
        value: row.value,
        cond_since: row.cond_since.0.clone(),
        notified: row.notified,
        last_notified_at: row.last_notified_at.map(unix),
        acked: row.acked_by.is_some(),
    }
}

/// A write the pass makes to one (rule, source).
struct StateWrite {
    rule_id: i64,
    key: String,
    source: String,
    next: Option<SourceState>,
}

struct TransitionWrite {
    rule_id: i64,
    source: String,
    from: AlertState,
    to: AlertState,
    value: Option<f64>,
    reason: String,
}

/// Whether a decided state differs from the stored one in a way worth a write.
fn worth_writing(prior: Option<&SourceState>, next: &SourceState) -> bool {
    match prior {
        None => true,
        Some(p) => {
            p.state != next.state
                || p.since != next.since
                || p.cond_since != next.cond_since
                || p.notified != next.notified
                || p.last_notified_at != next.last_notified_at
                || (next.state != AlertState::Ok && p.value != next.value)
        }
    }
}

/// One pass under the lock; None when another console holds it.
pub async fn run_once(pool: &PgPool, cfg: &EvalConfig) -> anyhow::Result<Option<PassSummary>> {
    crate::db::exclusively(pool, LOCK, || pass(pool, cfg)).await
}

pub async fn pass(pool: &PgPool, cfg: &EvalConfig) -> anyhow::Result<PassSummary> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let rules: Vec<RuleRow> = crate::db::alerts::rules(pool)
        .await?
        .into_iter()
        .filter(|r| r.enabled)
        .collect();
    let states = crate::db::alerts::states(pool).await?;
    // Fleet events first: they need no rule.
    let mut tx = pool.begin().await?;
    let events = crate::alerts::events::send_new(&mut tx, &cfg.public_url).await?;
    tx.commit().await?;
    if rules.is_empty() && states.is_empty() {
        return Ok(PassSummary {
            notifications: events,
            ..Default::default()
        });
    }
    let windows = crate::db::alerts::windows(pool, now).await?;
    let silences = crate::db::alerts::active_silences(pool, now).await?;

    let mut rows_by_rule: HashMap<i64, Vec<&WindowRow>> = HashMap::new();
    for w in &windows {
        rows_by_rule.entry(w.rule_id).or_default().push(w);
    }
    let mut states_by_rule: HashMap<i64, HashMap<&str, &StateRow>> = HashMap::new();
    for s in &states {
        states_by_rule
            .entry(s.rule_id)
            .or_default()
            .insert(s.source.as_str(), s);
    }
    let mut values: Vec<(&RuleRow, Rule, SourceValues)> = Vec::new();
    let mut sources: BTreeSet<String> = BTreeSet::new();
    for row in &rules {
        let rule = row.rule();
        let known = states_by_rule
            .get(&row.id)
            .map(|m| m.keys().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap_or_default();
        let per = source_values(
            &rule,
            rows_by_rule.get(&row.id).map_or(&[][..], Vec::as_slice),
            known.into_iter(),
        );
        sources.extend(per.keys().filter(|s| !s.is_empty()).cloned());
        values.push((row, rule, per));
    }
    let ids: Vec<String> = sources.into_iter().collect();
    let facts: HashMap<String, SourceFact> = crate::db::alerts::server_facts(pool, &ids)
        .await?
        .into_iter()
        .map(|(id, terminated, changing)| {
            let fact = if terminated {
                SourceFact::Terminated
            } else if changing {
                SourceFact::Changing
            } else {
                SourceFact::Live
            };
            (id, fact)
        })
        .collect();

    let mut summary = PassSummary {
        rules: rules.len(),
        notifications: events,
        ..Default::default()
    };
    let mut writes: Vec<StateWrite> = Vec::new();
    let mut transitions: Vec<TransitionWrite> = Vec::new();
    let mut notices: Vec<(&RuleRow, &Rule, Vec<AlertItem>)> = Vec::new();
    for (row, rule, per) in &values {
        let mut items = Vec::new();
        for (source, vals) in per {
            summary.pairs += 1;
            let prior = states_by_rule
                .get(&row.id)
                .and_then(|m| m.get(source.as_str()))
                .map(|s| stored(s));
            let silenced = silences.iter().any(|s| {
                s.rule_id.is_none_or(|r| r == row.id)
                    && s.source_glob
                        .as_deref()
                        .is_none_or(|g| glob_matches(g, source))
            });
            let outcome = decide::decide(&Inputs {
                rule,
                prior: prior.as_ref(),
                values: vals,
                now: unix(now),
                silenced,
                fact: facts.get(source).copied().unwrap_or(SourceFact::Live),
                for_scale: cfg.for_scale,
            });
            let value = vals.iter().copied().flatten().next();
            if let Some(t) = &outcome.transition {
                transitions.push(TransitionWrite {
                    rule_id: row.id,
                    source: source.clone(),
                    from: t.from,
                    to: t.to,
                    value,
                    reason: t.reason.clone(),
                });
            }
            if let Some(notice) = outcome.notice {
                items.push(AlertItem {
                    source: source.clone(),
                    notice,
                    started_at: at(outcome.episode_since),
                    at: now,
                    value,
                    reason: outcome
                        .transition
                        .as_ref()
                        .map(|t| t.reason.clone())
                        .unwrap_or_default(),
                });
            }
            // An ok source with nothing pending is not stored: its row (if any) goes.
            let next = outcome
                .next
                .filter(|n| n.state != AlertState::Ok || n.cond_since.iter().any(Option::is_some));
            let write = match (&prior, &next) {
                (None, None) => false,
                (Some(_), None) => true,
                (p, Some(n)) => worth_writing(p.as_ref(), n),
            };
            if write {
                writes.push(StateWrite {
                    rule_id: row.id,
                    key: row.conditions_key.clone(),
                    source: source.clone(),
                    next,
                });
            }
        }
        if !items.is_empty() {
            notices.push((row, rule, items));
        }
    }
    // States of rules that are gone or disabled: cleared by the edit itself.

    summary.transitions = transitions.len();
    let mut tx = pool.begin().await?;
    write_states(&mut tx, &writes, now).await?;
    write_transitions(&mut tx, &transitions, now).await?;
    if !notices.is_empty() {
        let fleet = notify::fleet_context(&mut tx).await?;
        let channels: BTreeSet<i64> = crate::db::alerts::channel_ids(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let mut all = Vec::new();
        for (row, rule, items) in &notices {
            for channel_id in rule.channels.iter().filter(|c| channels.contains(c)) {
                all.push(notify::alert_notification(
                    *channel_id,
                    row.id,
                    rule,
                    items,
                    &fleet,
                    &cfg.public_url,
                ));
            }
        }
        summary.notifications += all.len();
        notify::send(&mut tx, &all).await?;
    }
    tx.commit().await?;
    Ok(summary)
}

async fn write_states(
    conn: &mut sqlx::PgConnection,
    writes: &[StateWrite],
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    let (gone, kept): (Vec<&StateWrite>, Vec<&StateWrite>) =
        writes.iter().partition(|w| w.next.is_none());
    if !gone.is_empty() {
        let rule_ids: Vec<i64> = gone.iter().map(|w| w.rule_id).collect();
        let sources: Vec<&str> = gone.iter().map(|w| w.source.as_str()).collect();
        sqlx::query(
            "DELETE FROM alert_states s USING unnest($1::BIGINT[], $2::TEXT[]) AS g(rule_id, source)
             WHERE s.rule_id = g.rule_id AND s.source = g.source",
        )
        .bind(&rule_ids)
        .bind(&sources)
        .execute(&mut *conn)
        .await?;
    }
    if kept.is_empty() {
        return Ok(());
    }
    let n = |w: &&StateWrite| w.next.clone().expect("partitioned");
    let rule_ids: Vec<i64> = kept.iter().map(|w| w.rule_id).collect();
    let keys: Vec<&str> = kept.iter().map(|w| w.key.as_str()).collect();
    let sources: Vec<&str> = kept.iter().map(|w| w.source.as_str()).collect();
    let next: Vec<SourceState> = kept.iter().map(n).collect();
    let states: Vec<AlertState> = next.iter().map(|s| s.state).collect();
    let since: Vec<OffsetDateTime> = next.iter().map(|s| at(s.since)).collect();
    let values: Vec<Option<f64>> = next.iter().map(|s| s.value).collect();
    let cond: Vec<Json<&Vec<Option<i64>>>> = next.iter().map(|s| Json(&s.cond_since)).collect();
    let notified: Vec<bool> = next.iter().map(|s| s.notified).collect();
    let last: Vec<Option<OffsetDateTime>> =
        next.iter().map(|s| s.last_notified_at.map(at)).collect();
    // Only for rules whose meaning has not changed since the pass read them (an edit in
    // between dropped their states); an acknowledgement stays with its firing episode.
    sqlx::query(
        "INSERT INTO alert_states (rule_id, source, state, since, value, cond_since, evaluated_at, notified, last_notified_at)
         SELECT u.rule_id, u.source, u.state, u.since, u.value, u.cond_since, $10, u.notified, u.last_notified_at
         FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TIMESTAMPTZ[], $6::FLOAT8[], $7::JSONB[],
                     $8::BOOL[], $9::TIMESTAMPTZ[])
              AS u(rule_id, key, source, state, since, value, cond_since, notified, last_notified_at)
         JOIN alert_rules r ON r.id = u.rule_id AND r.conditions_key = u.key
         ON CONFLICT (rule_id, source) DO UPDATE SET
             state = EXCLUDED.state, since = EXCLUDED.since, value = EXCLUDED.value,
             cond_since = EXCLUDED.cond_since, evaluated_at = EXCLUDED.evaluated_at,
             notified = EXCLUDED.notified, last_notified_at = EXCLUDED.last_notified_at,
             acked_by = CASE WHEN EXCLUDED.state = 'firing' AND EXCLUDED.since = alert_states.since
                             THEN alert_states.acked_by END,
             acked_at = CASE WHEN EXCLUDED.state = 'firing' AND EXCLUDED.since = alert_states.since
                             THEN alert_states.acked_at END",
    )
    .bind(&rule_ids)
    .bind(&keys)
    .bind(&sources)
    .bind(&states)
    .bind(&since)
    .bind(&values)
    .bind(&cond)
    .bind(&notified)
    .bind(&last)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_transitions(
    conn: &mut sqlx::PgConnection,
    all: &[TransitionWrite],
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    if all.is_empty() {
        return Ok(());
    }
    let rule_ids: Vec<i64> = all.iter().map(|t| t.rule_id).collect();
    let sources: Vec<&str> = all.iter().map(|t| t.source.as_str()).collect();
    let from: Vec<AlertState> = all.iter().map(|t| t.from).collect();
    let to: Vec<AlertState> = all.iter().map(|t| t.to).collect();
    let values: Vec<Option<f64>> = all.iter().map(|t| t.value).collect();
    let reasons: Vec<&str> = all.iter().map(|t| t.reason.as_str()).collect();
    sqlx::query(
        "INSERT INTO alert_transitions (rule_id, source, at, from_state, to_state, value, reason)
         SELECT u.rule_id, u.source, $7, u.from_state, u.to_state, u.value, u.reason
         FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::FLOAT8[], $6::TEXT[])
              AS u(rule_id, source, from_state, to_state, value, reason)
         WHERE EXISTS (SELECT 1 FROM alert_rules r WHERE r.id = u.rule_id)",
    )
    .bind(&rule_ids)
    .bind(&sources)
    .bind(&from)
    .bind(&to)
    .bind(&values)
    .bind(&reasons)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs passes every interval until stopped. A pass longer than the interval is logged and
/// counted (`kiln_alert_pass_overruns_total`).
pub async fn run(
    pool: PgPool,
    cfg: EvalConfig,
    registry: Arc<Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    registry.describe(
        "kiln_alert_passes_total",
        "Alert evaluation passes run by this console.",
    );
    registry.describe(
        "kiln_alert_pass_overruns_total",
        "Alert evaluation passes that took longer than KILN_ALERT_INTERVAL.",
    );
    registry.describe(
        "kiln_alert_pass_seconds",
        "Time spent per alert evaluation pass.",
    );
    loop {
        let started = Instant::now();
        match run_once(&pool, &cfg).await {
            Ok(Some(summary)) => {
                let took = started.elapsed();
                registry.inc("kiln_alert_passes_total", &[]);
                registry.observe("kiln_alert_pass_seconds", &[], took.as_secs_f64());
                if took > cfg.interval {
                    registry.inc("kiln_alert_pass_overruns_total", &[]);
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        interval_ms = cfg.interval.as_millis() as u64,
                        rules = summary.rules,
                        pairs = summary.pairs,
                        "alert evaluation pass overran its interval"
                    );
                }
                if summary.transitions > 0 {
                    tracing::info!(
                        transitions = summary.transitions,
                        notifications = summary.notifications,
                        "alert states changed"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "alert evaluation failed; next pass soon"
            ),
        }
        let wait = cfg.interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(
        idx: i32,
        source: &str,
        kind: &str,
        count: i64,
        sum: f64,
        min: f64,
        max: f64,
    ) -> WindowRow {
        WindowRow {
            rule_id: 1,
            idx,
            source: source.into(),
            kind: kind.into(),
            count,
            sum: Some(sum),
            min: Some(min),
            max: Some(max),
        }
    }

    fn rule(per_source: bool, aggregate: AlertAggregate) -> Rule {
        use crate::domain::AlertOp;
        use crate::domain::alert_rule::{ConditionInput, RuleInput};
        RuleInput {
            name: "r".into(),
            per_source,
            enabled: true,
            group: Some(AlertGroup::Max),
            conditions: vec![ConditionInput {
                metric: "cpu".into(),
                op: Some(AlertOp::Above),
                threshold: Some(1.0),
                aggregate: Some(aggregate),
                window_s: Some(120),
                ..Default::default()
            }],
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn values_per_source_and_grouped() {
        let r = rule(true, AlertAggregate::Avg);
        let rows = [
            w(0, "a", "gauge", 2, 10.0, 4.0, 6.0),
            w(0, "b", "counter", 3, 0.0, 100.0, 160.0),
        ];
        let refs: Vec<&WindowRow> = rows.iter().collect();
        let per = source_values(&r, &refs, ["c".to_owned()].into_iter());
        assert_eq!(per["a"], vec![Some(5.0)]);
        // A counter: 60 more over 120 s = 30 per minute.
        assert_eq!(per["b"], vec![Some(30.0)]);
        assert_eq!(
            per["c"],
            vec![None],
            "a stored source with no rows has no value"
        );
        let r = rule(false, AlertAggregate::Max);
        let per = source_values(&r, &refs, ["c".to_owned()].into_iter());
        assert_eq!(per.len(), 1);
        assert_eq!(per[GROUP_SOURCE], vec![Some(30.0)]);
        assert_eq!(group(AlertGroup::Avg, [1.0, 3.0].into_iter()), Some(2.0));
        assert_eq!(group(AlertGroup::Sum, std::iter::empty()), None);
    }
}

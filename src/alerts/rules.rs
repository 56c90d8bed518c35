//! What operators do to rules: create, edit, delete (each validated whole, written and
//! audited with before/after in one transaction), acknowledge a firing alert, silence, and
//! send a rule's test notification.

use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::alerts::notify;
use crate::auth::Principal;
use crate::db::alerts::{RuleRow, SilenceRow};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::alert_rule::{Rule, RuleInput};
use crate::error::Error;

/// A rule as the audit log records it (no ids of states, no secrets: rules hold none).
pub fn summary(rule: &Rule) -> serde_json::Value {
    json!({
        "name": rule.name,
        "per_source": rule.per_source,
        "group": rule.group,
        "conditions": rule.conditions.iter().map(|c| json!({
            "metric": c.metric, "source": c.source, "aggregate": c.aggregate,
            "window_s": c.window_s, "op": c.op, "threshold": c.threshold,
            "clear_threshold": c.clear_threshold, "for_s": c.for_s,
        })).collect::<Vec<_>>(),
        "channels": rule.channels,
        "renotify_s": rule.renotify_s,
        "no_data": rule.no_data,
        "blocks_changes": rule.blocks_changes,
        "enabled": rule.enabled,
    })
}

async fn check_references(
    conn: &mut sqlx::PgConnection,
    rule: &Rule,
    except: Option<i64>,
) -> Result<(), Error> {
    let unknown = crate::db::alerts::unknown_channels(&mut *conn, &rule.channels).await?;
    if let Some(id) = unknown.first() {
        return Err(Error::invalid(format!(
            "channels: there is no channel {id}."
        )));
    }
    if crate::db::alerts::rule_name_taken(&mut *conn, &rule.name, except).await? {
        return Err(Error::conflict(format!(
            "A rule named {:?} exists already.",
            rule.name
        )));
    }
    Ok(())
}

pub async fn create(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    input: &RuleInput,
) -> Result<RuleRow, Error> {
    let rule = input.validate()?;
    let mut tx = pool.begin().await?;
    check_references(&mut tx, &rule, None).await?;
    let id = crate::db::alerts::insert_rule(&mut tx, &rule, &principal.name).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "alert.create",
            format!("alert:{id}"),
            Outcome::Ok,
        )
        .detail(summary(&rule).to_string())
        .from_ip(ip),
    )
    .await?;
    let row = crate::db::alerts::rule(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the rule just created is missing")))?;
    tx.commit().await?;
    Ok(row)
}

/// Replaces a rule. Sources keep their states when the conditions mean what they meant; a
/// change of meaning (or disabling the rule) drops them, recorded in the history.
pub async fn update(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
    input: &RuleInput,
) -> Result<RuleRow, Error> {
    let rule = input.validate()?;
    let mut tx = pool.begin().await?;
    let before = crate::db::alerts::rule_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("No alert rule {id}.")))?;
    check_references(&mut tx, &rule, Some(id)).await?;
    crate::db::alerts::update_rule(&mut tx, id, &rule).await?;
    if before.conditions_key != rule.conditions_key() || !rule.enabled {
        let why = if rule.enabled {
            "the rule's conditions changed"
        } else {
            "the rule was disabled"
        };
        sqlx::query(
            "WITH gone AS (DELETE FROM alert_states WHERE rule_id = $1 AND state <> 'ok' RETURNING source, state, value)
             INSERT INTO alert_transitions (rule_id, source, at, from_state, to_state, value, reason)
             SELECT $1, source, now(), state, 'ok', value, $2 FROM gone",
        )
        .bind(id)
        .bind(why)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM alert_states WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "alert.edit", format!("alert:{id}"), Outcome::Ok)
            .detail(json!({"before": summary(&before.rule()), "after": summary(&rule)}).to_string())
            .from_ip(ip),
    )
    .await?;
    let row = crate::db::alerts::rule(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the rule just edited is missing")))?;
    tx.commit().await?;
    Ok(row)
}

pub async fn delete(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let before = crate::db::alerts::rule_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("No alert rule {id}.")))?;
    sqlx::query("DELETE FROM alert_rules WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "alert.delete",
            format!("alert:{id}"),
            Outcome::Ok,
        )
        .detail(json!({"before": summary(&before.rule())}).to_string())
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Acknowledges the firing episode of (rule, source): no more re-notifications for it.
/// Acknowledging twice is a no-op; a source that is not firing is a conflict.
pub async fn acknowledge(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
    source: &str,
) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    if crate::db::alerts::rule(&mut *tx, id).await?.is_none() {
        return Err(Error::not_found(format!("No alert rule {id}.")));
    }
    let state: Option<(crate::domain::AlertState, Option<String>)> = sqlx::query_as(
        "SELECT state, acked_by FROM alert_states WHERE rule_id = $1 AND source = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(source)
    .fetch_optional(&mut *tx)
    .await?;
    match state {
        Some((crate::domain::AlertState::Firing, Some(_))) => return Ok(false),
        Some((crate::domain::AlertState::Firing, None)) => {}
        _ => {
            return Err(Error::conflict(format!(
                "Rule {id} is not firing on {}; only a firing alert can be acknowledged.",
                if source.is_empty() {
                    "its sources"
                } else {
                    source
                }
            )));
        }
    }
    sqlx::query(
        "UPDATE alert_states SET acked_by = $3, acked_at = now() WHERE rule_id = $1 AND source = $2",
    )
    .bind(id)
    .bind(source)
    .bind(&principal.name)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "alert.ack", format!("alert:{id}"), Outcome::Ok)
            .detail(format!("source {source:?}"))
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Clears every firing source of a rule now (Librato's "clear"): each goes back to ok, the
/// history says who cleared it, and the channels get the resolved notice of what they were
/// told was firing. A condition still breaching fires again after its `for`.
pub async fn clear(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
    public_url: &str,
) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    let row = crate::db::alerts::rule_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("No alert rule {id}.")))?;
    let cleared: Vec<(String, Option<f64>, OffsetDateTime, bool)> = sqlx::query_as(
        "DELETE FROM alert_states WHERE rule_id = $1 AND state = 'firing'
         RETURNING source, value, since, notified",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let reason = format!("cleared by {}", principal.name);
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    for (source, value, _, _) in &cleared {
        sqlx::query(
            "INSERT INTO alert_transitions (rule_id, source, at, from_state, to_state, value, reason)
             VALUES ($1, $2, $3, 'firing', 'ok', $4, $5)",
        )
        .bind(id)
        .bind(source)
        .bind(now)
        .bind(value)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    }
    let items: Vec<notify::AlertItem> = cleared
        .iter()
        .filter(|c| c.3)
        .map(|(source, value, since, _)| notify::AlertItem {
            source: source.clone(),
            notice: crate::alerts::decide::Notice::Resolved,
            started_at: *since,
            at: now,
            value: *value,
            reason: reason.clone(),
        })
        .collect();
    if !items.is_empty() {
        let rule = row.rule();
        let fleet = notify::fleet_context(&mut tx).await?;
        let all: Vec<_> = rule
            .channels
            .iter()
            .map(|c| notify::alert_notification(*c, id, &rule, &items, &fleet, public_url))
            .collect();
        notify::send(&mut tx, &all).await?;
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "alert.clear", format!("alert:{id}"), Outcome::Ok)
            .detail(format!("{} source(s) cleared", cleared.len()))
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(cleared.len())
}

/// A silence as asked for: a rule and/or a source glob, a start (default now) and an end.
#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct SilenceInput {
    #[serde(default)]
    pub rule_id: Option<i64>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// Instead of `until`: how long from the start.
    #[serde(default)]
    pub duration_s: Option<i64>,
    #[serde(default)]
    pub comment: String,
}

pub async fn silence(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    input: &SilenceInput,
) -> Result<SilenceRow, Error> {
    let source = input
        .source
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(s) = source
        && (s.len() > 255
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '*')))
    {
        return Err(Error::invalid(format!(
            "source: {s:?} is invalid: use 1 to 255 characters of A-Z a-z 0-9 . : - _ and *"
        )));
    }
    if input.rule_id.is_none() && source.is_none() {
        return Err(Error::invalid(
            "rule_id: a silence matches a rule, a source glob, or both; give at least one.",
        ));
    }
    let comment = input.comment.trim();
    if comment.chars().count() > 500 {
        return Err(Error::invalid("comment: at most 500 characters."));
    }
    let mut tx = pool.begin().await?;
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let from = input.from.unwrap_or(now);
    let until = match (input.until, input.duration_s) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid("until: give until or duration_s, not both."));
        }
        (Some(u), None) => u,
        (None, Some(d)) if (60..=30 * 86_400).contains(&d) => from + time::Duration::seconds(d),
        (None, Some(_)) => {
            return Err(Error::invalid(
                "duration_s: between 60 seconds and 30 days.",
            ));
        }
        (None, None) => return Err(Error::invalid("until: missing; when does the silence end?")),
    };
    if until <= from || until <= now {
        return Err(Error::invalid(
            "until: must be after the start and in the future.",
        ));
    }
    if until - from > time::Duration::days(30) {
        return Err(Error::invalid("until: a silence lasts at most 30 days."));
    }
    if let Some(r) = input.rule_id
        && crate::db::alerts::rule(&mut *tx, r).await?.is_none()
    {
        return Err(Error::invalid(format!(
            "rule_id: there is no alert rule {r}."
        )));
    }
    let row = crate::db::alerts::insert_silence(
        &mut tx,
        input.rule_id,
        source,
        from,
        until,
        comment,
        &principal.name,
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "alert.silence",
            format!("silence:{}", row.id),
            Outcome::Ok,
        )
        .detail(format!(
            "rule {} source {} until {}",
            input.rule_id.map_or("any".into(), |r| r.to_string()),
            source.unwrap_or("any"),
            until
        ))
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn end_silence(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let ended = crate::db::alerts::end_silence(&mut tx, id).await?;
    if ended {
        audit::record(
            &mut *tx,
            AuditEvent::by(
                principal,
                "alert.unsilence",
                format!("silence:{id}"),
                Outcome::Ok,
            )
            .from_ip(ip),
        )
        .await?;
    } else {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM alert_silences WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(Error::not_found(format!("No silence {id}.")));
        }
    }
    tx.commit().await?;
    Ok(ended)
}

/// Queues a test notification on each of the rule's channels.
pub async fn test(
    pool: &PgPool,
    principal: &Principal,
    id: i64,
    public_url: &str,
) -> Result<Vec<uuid::Uuid>, Error> {
    let mut tx = pool.begin().await?;
    let row = crate::db::alerts::rule(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("No alert rule {id}.")))?;
    let rule = row.rule();
    if rule.channels.is_empty() {
        return Err(Error::conflict(format!(
            "Rule {:?} notifies no channel; add one first.",
            rule.name
        )));
    }
    let all: Vec<_> = rule
        .channels
        .iter()
        .map(|c| notify::test_notification(*c, Some((id, &rule)), &principal.name, public_url))
        .collect();
    notify::send(&mut tx, &all).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "alert.test", format!("alert:{id}"), Outcome::Ok),
    )
    .await?;
    tx.commit().await?;
    Ok(all.iter().map(|n| n.id).collect())
}

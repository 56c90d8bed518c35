//! Fleet events for the channels subscribed to them: a rollout failed, the fleet was rolled
//! back, a bake failed, a launch got only part of its servers. The rooms already write each
//! of these to the audit log in the transaction that makes them true; the evaluation pass
//! reads the new ones (the last hour's, not yet seen) and queues their notifications in the
//! transaction that marks them seen. So the rooms know nothing of alerting, and an event is
//! sent once even when the console dies in between.

use serde_json::json;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::alerts::notify;

#[derive(Debug, sqlx::FromRow)]
struct AuditEvent {
    id: i64,
    at: OffsetDateTime,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

/// The fleet event an audit event is, if any: (event, summary).
fn event_of(e: &AuditEvent) -> Option<(&'static str, String)> {
    let what = |prefix: &str| {
        e.target
            .strip_prefix(prefix)
            .unwrap_or(&e.target)
            .to_owned()
    };
    Some(match e.action.as_str() {
        "rollout.failed" => (
            "rollout_failed",
            format!("Rollout #{} failed: {}", what("rollout:"), e.detail),
        ),
        // A release rolled back by its guards says why in its own event.
        "image.rollback" if e.actor != "kiln" => (
            "rollout_rolled_back",
            format!("{} rolled the fleet back to {}", e.actor, what("image:")),
        ),
        "rollout.rolled_back" => (
            "rollout_rolled_back",
            format!(
                "Release #{} was rolled back automatically: {}",
                what("rollout:"),
                e.detail
            ),
        ),
        "bake.failed" => (
            "bake_failed",
            format!("Bake #{} failed {}", what("bake:"), e.detail),
        ),
        "servers.launched" => (
            "launch_partial",
            format!("A launch got only part of its servers: {}", e.detail),
        ),
        _ => return None,
    })
}

/// Queues the notifications of the fleet events not seen yet; returns how many went out.
pub async fn send_new(conn: &mut PgConnection, public_url: &str) -> sqlx::Result<usize> {
    let events: Vec<AuditEvent> = sqlx::query_as(
        "SELECT a.id, a.at, a.actor, a.action, a.target, a.detail FROM audit_events a
         WHERE a.at > now() - interval '1 hour'
           AND (a.action IN ('rollout.failed', 'image.rollback', 'rollout.rolled_back', 'bake.failed')
                OR (a.action = 'servers.launched' AND a.result = 'failed'))
           AND NOT EXISTS (SELECT 1 FROM alert_fleet_events f WHERE f.audit_id = a.id)
         ORDER BY a.id LIMIT 100",
    )
    .fetch_all(&mut *conn)
    .await?;
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    sqlx::query("INSERT INTO alert_fleet_events (audit_id) SELECT unnest($1::BIGINT[]) ON CONFLICT DO NOTHING")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    let mut sent = 0;
    for e in &events {
        if let Some((event, summary)) = event_of(e) {
            let detail = json!({
                "audit_id": e.id,
                "action": e.action,
                "target": e.target,
                "actor": e.actor,
                "detail": e.detail,
                "at": e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            });
            // The channels of the guarding alert that tripped the release hear of it too.
            let also: Vec<i64> = if e.action == "rollout.rolled_back" {
                sqlx::query_scalar(
                    "SELECT unnest(ru.channel_ids) FROM rollouts r JOIN alert_rules ru ON ru.id = r.tripped_rule_id
                     WHERE 'rollout:' || r.id = $1",
                )
                .bind(&e.target)
                .fetch_all(&mut *conn)
                .await?
            } else {
                Vec::new()
            };
            sent +=
                notify::fleet_event(&mut *conn, event, &summary, detail, public_url, &also).await?;
        }
    }
    Ok(sent)
}

/// Drops what alerting keeps only for a while: transitions after 30 days, finished
/// notifications after 30 days, seen fleet events after a day.
pub async fn prune(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM alert_transitions WHERE at < now() - interval '30 days'")
        .execute(pool)
        .await?;
    sqlx::query(
        "DELETE FROM alert_notifications WHERE state <> 'pending' AND created_at < now() - interval '30 days'",
    )
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM alert_fleet_events WHERE at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(())
}

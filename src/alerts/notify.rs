//! What a notification says, and how it is queued: one row per (message, channel) with its
//! own id — the `Idempotency-Key` every try carries — and one durable delivery task, both in
//! the caller's transaction.

use serde_json::{Value, json};
use sqlx::PgConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::alerts::decide::Notice;
use crate::alerts::deliver::DeliverNotification;
use crate::db::alerts::NewNotification;
use crate::domain::alert_rule::Rule;

/// One source's part of an alert notification.
#[derive(Debug, Clone)]
pub struct AlertItem {
    pub source: String,
    pub notice: Notice,
    /// The firing episode's start (the incident key is made from it).
    pub started_at: OffsetDateTime,
    pub at: OffsetDateTime,
    pub value: Option<f64>,
    pub reason: String,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Stable for one firing episode of one (rule, source): the resolve carries the same key
/// as the firing notice and its re-notifications.
pub fn incident_key(rule_id: i64, source: &str, started_at: OffsetDateTime) -> String {
    let source = if source.is_empty() { "all" } else { source };
    format!(
        "kiln-alert-{rule_id}-{source}-{}",
        started_at.unix_timestamp()
    )
}

/// The fleet as a notification describes it: the current image and the rollout in progress.
#[derive(Debug, Clone, Default)]
pub struct FleetContext {
    pub current_image: Option<String>,
    pub rollout: Option<(i64, String)>,
}

impl FleetContext {
    fn json(&self, public_url: &str) -> Value {
        json!({
            "current_image": self.current_image,
            "rollout": self.rollout.as_ref().map(|(id, kind)| json!({
                "id": id,
                "kind": kind,
                "url": format!("{public_url}/rollouts/{id}"),
            })),
        })
    }
}

pub async fn fleet_context(conn: &mut PgConnection) -> sqlx::Result<FleetContext> {
    let current_image = crate::db::images::current_id(&mut *conn).await?;
    let rollout = crate::db::rollouts::active(&mut *conn)
        .await?
        .map(|r| (r.id, r.kind.to_string()));
    Ok(FleetContext {
        current_image,
        rollout,
    })
}

fn rule_json(rule_id: i64, rule: &Rule, public_url: &str) -> Value {
    json!({
        "id": rule_id,
        "name": rule.name,
        "description": rule.description,
        "runbook_url": rule.runbook_url,
        "url": format!("{public_url}/alerts/{rule_id}"),
        "conditions": rule.conditions.iter().map(|c| json!({
            "metric": c.metric,
            "source": c.source,
            "aggregate": c.aggregate,
            "window_s": c.window_s,
            "op": c.op,
            "threshold": c.threshold,
            "clear_threshold": c.clear_threshold,
            "for_s": c.for_s,
        })).collect::<Vec<_>>(),
    })
}

/// The notification of one rule's sources that changed in one evaluation, for one channel.
pub fn alert_notification(
    channel_id: i64,
    rule_id: i64,
    rule: &Rule,
    items: &[AlertItem],
    fleet: &FleetContext,
    public_url: &str,
) -> NewNotification {
    let id = uuid::Uuid::new_v4();
    let firing = items.iter().any(|i| i.notice != Notice::Resolved);
    let status = if firing { "firing" } else { "resolved" };
    let alerts: Vec<Value> = items
        .iter()
        .map(|i| {
            let resolved = i.notice == Notice::Resolved;
            json!({
                "source": i.source,
                "status": if resolved { "resolved" } else { "firing" },
                "renotification": i.notice == Notice::Renotify,
                "incident_key": incident_key(rule_id, &i.source, i.started_at),
                "started_at": rfc3339(i.started_at),
                "resolved_at": resolved.then(|| rfc3339(i.at)),
                "value": i.value,
                "at": rfc3339(i.at),
                "reason": i.reason,
            })
        })
        .collect();
    let payload = json!({
        "id": id,
        "status": status,
        "rule": rule_json(rule_id, rule, public_url),
        "alerts": alerts,
        "fleet": fleet.json(public_url),
        "sent_at": rfc3339(items.first().map_or(OffsetDateTime::now_utc(), |i| i.at)),
    });
    NewNotification {
        id,
        channel_id,
        rule_id: Some(rule_id),
        status: status.to_owned(),
        payload,
    }
}

/// A test message for a channel (or for a rule's channels): says so, changes no state.
pub fn test_notification(
    channel_id: i64,
    rule: Option<(i64, &Rule)>,
    by: &str,
    public_url: &str,
) -> NewNotification {
    let id = uuid::Uuid::new_v4();
    let payload = json!({
        "id": id,
        "status": "test",
        "rule": rule.map(|(rid, r)| rule_json(rid, r, public_url)),
        "alerts": [],
        "message": format!("A test notification from Kiln, sent by {by}."),
        "sent_at": rfc3339(OffsetDateTime::now_utc()),
    });
    NewNotification {
        id,
        channel_id,
        rule_id: rule.map(|(rid, _)| rid),
        status: "test".into(),
        payload,
    }
}

/// A fleet event (a bake failed, a rollout failed or was rolled back, a launch got only part
/// of its servers) for every channel subscribed to it, and the channels in `also` (a
/// guarding alert's, when it rolled a release back).
pub async fn fleet_event(
    conn: &mut PgConnection,
    event: &str,
    summary: &str,
    detail: Value,
    public_url: &str,
    also: &[i64],
) -> sqlx::Result<usize> {
    let channels: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM alert_channels WHERE $1 = ANY(events) OR id = ANY($2) ORDER BY id",
    )
    .bind(event)
    .bind(also)
    .fetch_all(&mut *conn)
    .await?;
    if channels.is_empty() {
        return Ok(0);
    }
    let fleet = fleet_context(&mut *conn).await?;
    let all: Vec<NewNotification> = channels
        .into_iter()
        .map(|channel_id| {
            let id = uuid::Uuid::new_v4();
            NewNotification {
                id,
                channel_id,
                rule_id: None,
                status: event.to_owned(),
                payload: json!({
                    "id": id,
                    "status": event,
                    "summary": summary,
                    "event": detail,
                    "fleet": fleet.json(public_url),
                    "sent_at": rfc3339(OffsetDateTime::now_utc()),
                }),
            }
        })
        .collect();
    send(conn, &all).await?;
    Ok(all.len())
}

/// The fleet events a channel may subscribe to.
pub const FLEET_EVENTS: &[&str] = &[
    "bake_failed",
    "rollout_failed",
    "rollout_rolled_back",
    "launch_partial",
];

/// Stores the notifications and queues their deliveries, in the caller's transaction.
pub async fn send(conn: &mut PgConnection, all: &[NewNotification]) -> sqlx::Result<()> {
    crate::db::alerts::insert_notifications(&mut *conn, all).await?;
    for n in all {
        crate::tasks::enqueue(
            &mut *conn,
            &DeliverNotification { id: n.id },
            Some(&format!("notify:{}", n.id)),
        )
        .await?;
    }
    Ok(())
}

/// A one-line summary of a notification, for Slack and e-mail subjects.
pub fn headline(payload: &Value) -> String {
    let status = payload["status"].as_str().unwrap_or("");
    match status {
        "firing" | "resolved" => {
            let name = payload["rule"]["name"].as_str().unwrap_or("");
            let alerts = payload["alerts"].as_array().map_or(&[][..], Vec::as_slice);
            let sources: Vec<&str> = alerts
                .iter()
                .map(|a| match a["source"].as_str().unwrap_or("") {
                    "" => "all sources",
                    s => s,
                })
                .collect();
            format!(
                "[{}] {name} on {}",
                status.to_uppercase(),
                sources.join(", ")
            )
        }
        "test" => "[TEST] Kiln notification".to_owned(),
        _ => format!(
            "[{}] {}",
            status.to_uppercase().replace('_', " "),
            payload["summary"].as_str().unwrap_or("")
        ),
    }
}

/// The plain-text body of a notification (e-mail, Slack).
pub fn text(payload: &Value) -> String {
    let mut out = headline(payload);
    out.push('\n');
    if let Some(d) = payload["rule"]["description"]
        .as_str()
        .filter(|d| !d.is_empty())
    {
        out.push_str(&format!("\n{d}\n"));
    }
    for a in payload["alerts"].as_array().into_iter().flatten() {
        let source = match a["source"].as_str().unwrap_or("") {
            "" => "all sources",
            s => s,
        };
        out.push_str(&format!(
            "\n- {source}: {} since {} ({}) value {}",
            a["status"].as_str().unwrap_or(""),
            a["started_at"].as_str().unwrap_or(""),
            a["reason"].as_str().unwrap_or(""),
            a["value"]
        ));
    }
    if let Some(m) = payload["message"].as_str() {
        out.push_str(&format!("\n{m}\n"));
    }
    if let Some(r) = payload["rule"]["runbook_url"]
        .as_str()
        .filter(|r| !r.is_empty())
    {
        out.push_str(&format!("\n\nRunbook: {r}"));
    }
    if let Some(u) = payload["rule"]["url"].as_str() {
        out.push_str(&format!("\nRule: {u}"));
    }
    if let Some(img) = payload["fleet"]["current_image"].as_str() {
        out.push_str(&format!("\nCurrent image: {img}"));
    }
    if let Some(u) = payload["fleet"]["rollout"]["url"].as_str() {
        out.push_str(&format!("\nRollout in progress: {u}"));
    }
    out
}

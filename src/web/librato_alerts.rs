//! Librato's alerts API (v1) over Kiln's rules, for the tooling that already speaks it:
//! `POST/GET /v1/alerts`, `GET/PUT/DELETE /v1/alerts/{id}`, `GET /v1/alerts/status`,
//! `POST /v1/alerts/{id}/clear`, with the same basic auth as `/v1/metrics`.
//!
//! The mapping: a Librato condition's `type` is the operator, `metric_name` the metric,
//! `summary_function` the aggregation (`average` is avg), `duration` the `for` of an above or
//! below condition and the window of an absent one; `rearm_seconds` is the re-notify
//! interval, `services` the channels, `attributes.runbook_url` the runbook, `active` enabled.
//! Librato evaluates every series on its own, so these rules are per source. Fields Librato's
//! clients send that Kiln does not use (`md`, `version`, `tags`) are ignored.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::db::alerts::{ChannelRow, RuleRow};
use crate::domain::alert_rule::{Condition, ConditionInput, RuleInput};
use crate::domain::{AlertAggregate, AlertOp, AlertState, ChannelKind};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::json::{Unknown, parse};
use crate::web::pages::source_ip;

#[derive(Debug, Deserialize)]
pub struct LibratoAlert {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    attributes: Option<LibratoAttributes>,
    #[serde(default)]
    rearm_seconds: Option<i64>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    services: Vec<LibratoService>,
    #[serde(default)]
    conditions: Vec<LibratoCondition>,
}

#[derive(Debug, Deserialize, Default)]
pub struct LibratoAttributes {
    #[serde(default)]
    runbook_url: Option<String>,
}

/// A service as an id, or as the object Librato's own answers hold.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum LibratoService {
    Id(i64),
    Object { id: i64 },
}

#[derive(Debug, Deserialize)]
pub struct LibratoCondition {
    #[serde(rename = "type")]
    kind: AlertOp,
    metric_name: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    duration: Option<i64>,
    #[serde(default)]
    summary_function: Option<String>,
}

fn aggregate(f: Option<&str>, at: usize) -> Result<AlertAggregate, AppError> {
    Ok(match f {
        None | Some("average") | Some("mean") | Some("avg") => AlertAggregate::Avg,
        Some("max") => AlertAggregate::Max,
        Some("min") => AlertAggregate::Min,
        Some("sum") => AlertAggregate::Sum,
        Some("count") => AlertAggregate::Count,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "conditions[{at}].summary_function: {other:?} is not one Kiln evaluates (average, max, min, sum, count)."
            )));
        }
    })
}

impl LibratoAlert {
    fn input(self) -> Result<RuleInput, AppError> {
        let mut conditions = Vec::new();
        for (i, c) in self.conditions.into_iter().enumerate() {
            let (window_s, for_s) = match c.kind {
                AlertOp::Absent => (c.duration, Some(0)),
                _ => (None, c.duration),
            };
            conditions.push(ConditionInput {
                metric: c.metric_name,
                source: c.source,
                aggregate: Some(aggregate(c.summary_function.as_deref(), i)?),
                window_s,
                op: Some(c.kind),
                threshold: c.threshold,
                for_s,
                clear_threshold: None,
            });
        }
        Ok(RuleInput {
            name: self.name,
            description: self.description.unwrap_or_default(),
            runbook_url: self
                .attributes
                .and_then(|a| a.runbook_url)
                .unwrap_or_default(),
            per_source: true,
            group: None,
            conditions,
            channels: self
                .services
                .into_iter()
                .map(|s| match s {
                    LibratoService::Id(id) | LibratoService::Object { id } => id,
                })
                .collect(),
            renotify_s: self.rearm_seconds,
            no_data: None,
            blocks_changes: false,
            enabled: self.active.unwrap_or(true),
        })
    }
}

fn condition_json(i: usize, c: &Condition) -> Value {
    let mut out = json!({
        "id": i + 1,
        "type": c.op,
        "metric_name": c.metric,
        "source": c.source,
        "tags": [],
        "summary_function": match c.aggregate {
            AlertAggregate::Avg => "average",
            a => a.as_str(),
        },
    });
    match c.op {
        AlertOp::Absent => {
            out["duration"] = json!(c.window_s);
            out["summary_function"] = Value::Null;
        }
        _ => {
            out["threshold"] = json!(c.threshold);
            out["duration"] = if c.for_s == 0 {
                Value::Null
            } else {
                json!(c.for_s)
            };
        }
    }
    out
}

fn service_json(c: &ChannelRow) -> Value {
    json!({
        "id": c.id,
        "title": c.name,
        "type": match c.kind {
            ChannelKind::Email => "mail",
            k => k.as_str(),
        },
        // Settings hold URLs and secrets: never shown.
        "settings": {},
    })
}

fn alert_json(r: &RuleRow, channels: &[ChannelRow]) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "conditions": r.conditions.0.iter().enumerate().map(|(i, c)| condition_json(i, c)).collect::<Vec<_>>(),
        "services": channels.iter().filter(|c| r.channel_ids.contains(&c.id)).map(service_json).collect::<Vec<_>>(),
        "attributes": if r.runbook_url.is_empty() { json!({}) } else { json!({"runbook_url": r.runbook_url}) },
        "active": r.enabled,
        "rearm_seconds": r.renotify_s,
        "rearm_per_signal": true,
        "md": false,
        "version": 2,
        "created_at": r.created_at.unix_timestamp(),
        "updated_at": r.updated_at.unix_timestamp(),
    })
}

async fn rule_and_channels(state: &AppState, id: i64) -> Result<Value, AppError> {
    let (rule, channels) = tokio::try_join!(
        crate::db::alerts::rule(&state.pool, id),
        crate::db::alerts::channels(&state.pool),
    )?;
    let rule = rule.ok_or_else(|| AppError::NotFound(format!("No alert {id}.")))?;
    Ok(alert_json(&rule, &channels))
}

fn id_of(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("No alert {raw}.")))
}

/// `POST /v1/alerts` -> 201 with the alert as Librato shows one.
pub async fn create(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let input = parse::<LibratoAlert>(&body, Unknown::Ignore)?.input()?;
    let row =
        crate::alerts::rules::create(&state.pool, &principal, source_ip(&req), &input).await?;
    Ok(HttpResponse::Created().json(rule_and_channels(&state, row.id).await?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    name: Option<String>,
    offset: Option<usize>,
    length: Option<usize>,
}

/// `GET /v1/alerts` (`?name=` for one by name; `offset`, `length` page through).
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let (rules, channels) = tokio::try_join!(
        crate::db::alerts::rules(&state.pool),
        crate::db::alerts::channels(&state.pool),
    )?;
    let found: Vec<&RuleRow> = rules
        .iter()
        .filter(|r| q.name.as_deref().is_none_or(|n| r.name == n))
        .collect();
    let offset = q.offset.unwrap_or(0);
    let length = q.length.unwrap_or(100).clamp(1, 100);
    let page: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(length)
        .map(|r| alert_json(r, &channels))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "query": {"offset": offset, "length": page.len(), "found": found.len(), "total": rules.len()},
        "alerts": page,
    })))
}

/// `GET /v1/alerts/{id}`
pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(rule_and_channels(&state, id_of(&id)?).await?))
}

/// `PUT /v1/alerts/{id}` -> 204, as Librato answers.
pub async fn update(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let id = id_of(&id)?;
    let input = parse::<LibratoAlert>(&body, Unknown::Ignore)?.input()?;
    crate::alerts::rules::update(&state.pool, &principal, source_ip(&req), id, &input).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /v1/alerts/{id}` -> 204
pub async fn delete(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id_of(&id)?;
    crate::alerts::rules::delete(&state.pool, &principal, source_ip(&req), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/alerts/status` -> `{"firing": [{"id", "triggered_at"}], "cleared": [{"id",
/// "cleared_at"}]}` (cleared: resolved in the last hour).
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let (firing, cleared) = tokio::try_join!(
        crate::db::alerts::firing(&state.pool),
        crate::db::alerts::recently_resolved(&state.pool, 3600),
    )?;
    let mut firing_rules: Vec<(i64, i64)> = Vec::new();
    for (s, _) in &firing {
        if s.state == AlertState::Firing && !firing_rules.iter().any(|(id, _)| *id == s.rule_id) {
            firing_rules.push((s.rule_id, s.since.unix_timestamp()));
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "firing": firing_rules.iter().map(|(id, at)| json!({"id": id, "triggered_at": at})).collect::<Vec<_>>(),
        "cleared": cleared.iter().filter(|(id, _)| !firing_rules.iter().any(|(f, _)| f == id))
            .map(|(id, at)| json!({"id": id, "cleared_at": at})).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/alerts/{id}/clear` -> 204: every firing source of the alert is cleared now
/// (resolved notices go out); a condition still breaching fires again after its `for`.
pub async fn clear(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id_of(&id)?;
    crate::alerts::rules::clear(
        &state.pool,
        &principal,
        source_ip(&req),
        id,
        &state.settings.public_url(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

//! `/api/v1/alerts`, `/api/v1/silences` and `/api/v1/channels` as JSON.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use time::OffsetDateTime;

use crate::alerts::channels::{ChannelInput, ChannelView};
use crate::alerts::rules::SilenceInput;
use crate::auth::Principal;
use crate::db::alerts::{RuleRow, SilenceRow, StateRow, TransitionRow};
use crate::domain::AlertState;
use crate::domain::alert_rule::{Condition, RuleInput};
use crate::web::AppState;
use crate::web::error::{AppError, path_id};
use crate::web::json::{NoBody, Strict};
use crate::web::pages::source_ip;

#[derive(Serialize)]
pub struct SourceJson {
    pub source: String,
    pub state: AlertState,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub value: Option<f64>,
    pub acked_by: Option<String>,
}

impl From<&StateRow> for SourceJson {
    fn from(s: &StateRow) -> Self {
        SourceJson {
            source: s.source.clone(),
            state: s.state,
            since: s.since,
            value: s.value,
            acked_by: s.acked_by.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct RuleJson {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub runbook_url: String,
    pub per_source: bool,
    pub group: crate::domain::AlertGroup,
    pub conditions: Vec<ConditionJson>,
    pub channels: Vec<i64>,
    pub renotify_s: i32,
    pub no_data: crate::domain::NoDataPolicy,
    pub blocks_changes: bool,
    pub enabled: bool,
    /// The worst state of its sources.
    pub state: AlertState,
    pub sources: Vec<SourceJson>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct ConditionJson {
    pub metric: String,
    pub source: String,
    pub aggregate: crate::domain::AlertAggregate,
    pub window_s: i64,
    pub op: crate::domain::AlertOp,
    pub threshold: Option<f64>,
    pub clear_threshold: Option<f64>,
    pub for_s: i64,
}

impl From<&Condition> for ConditionJson {
    fn from(c: &Condition) -> Self {
        ConditionJson {
            metric: c.metric.clone(),
            source: c.source.clone(),
            aggregate: c.aggregate,
            window_s: c.window_s,
            op: c.op,
            threshold: c.threshold,
            clear_threshold: c.clear_threshold,
            for_s: c.for_s,
        }
    }
}

/// The worst of the states: firing, then pending, then ok.
pub fn worst(states: &[&StateRow]) -> AlertState {
    if states.iter().any(|s| s.state == AlertState::Firing) {
        AlertState::Firing
    } else if states.iter().any(|s| s.state == AlertState::Pending) {
        AlertState::Pending
    } else {
        AlertState::Ok
    }
}

pub fn rule_json(r: &RuleRow, states: &[&StateRow]) -> RuleJson {
    RuleJson {
        id: r.id,
        name: r.name.clone(),
        description: r.description.clone(),
        runbook_url: r.runbook_url.clone(),
        per_source: r.per_source,
        group: r.group_fn,
        conditions: r.conditions.0.iter().map(ConditionJson::from).collect(),
        channels: r.channel_ids.clone(),
        renotify_s: r.renotify_s,
        no_data: r.no_data,
        blocks_changes: r.blocks_changes,
        enabled: r.enabled,
        state: worst(states),
        sources: states
            .iter()
            .filter(|s| s.state != AlertState::Ok)
            .map(|s| SourceJson::from(*s))
            .collect(),
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

async fn one(state: &AppState, id: i64) -> Result<RuleJson, AppError> {
    let row = crate::db::alerts::rule(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("No alert rule {id}.")))?;
    let states = crate::db::alerts::states_of(&state.pool, id).await?;
    let refs: Vec<&StateRow> = states.iter().collect();
    Ok(rule_json(&row, &refs))
}

/// `GET /api/v1/alerts`
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let rules = crate::db::alerts::rules(&state.pool).await?;
    let states = crate::db::alerts::states(&state.pool).await?;
    let mut by_rule: HashMap<i64, Vec<&StateRow>> = HashMap::new();
    for s in &states {
        by_rule.entry(s.rule_id).or_default().push(s);
    }
    let out: Vec<RuleJson> = rules
        .iter()
        .map(|r| rule_json(r, by_rule.get(&r.id).map_or(&[][..], Vec::as_slice)))
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /api/v1/alerts` -> 201 with the rule.
pub async fn create(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: Strict<RuleInput>,
) -> Result<HttpResponse, AppError> {
    let row = crate::alerts::rules::create(&state.pool, &principal, source_ip(&req), &body).await?;
    Ok(HttpResponse::Created().json(rule_json(&row, &[])))
}

/// `GET /api/v1/alerts/{id}`
pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    Ok(HttpResponse::Ok().json(one(&state, id).await?))
}

/// `PUT /api/v1/alerts/{id}`: the whole rule, as for create.
pub async fn update(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: Strict<RuleInput>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    crate::alerts::rules::update(&state.pool, &principal, source_ip(&req), id, &body).await?;
    Ok(HttpResponse::Ok().json(one(&state, id).await?))
}

/// `DELETE /api/v1/alerts/{id}` -> 204
pub async fn delete(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    crate::alerts::rules::delete(&state.pool, &principal, source_ip(&req), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize)]
struct FiringJson {
    alert_id: i64,
    name: String,
    source: String,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    value: Option<f64>,
    acked_by: Option<String>,
}

/// `GET /api/v1/alerts/status` -> `{"firing": [{"alert_id", "source", "since", "value"}]}`
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let firing = crate::db::alerts::firing(&state.pool).await?;
    let firing: Vec<FiringJson> = firing
        .into_iter()
        .map(|(s, name)| FiringJson {
            alert_id: s.rule_id,
            name,
            source: s.source,
            since: s.since,
            value: s.value,
            acked_by: s.acked_by,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "firing": firing })))
}

/// `POST /api/v1/alerts/preview`: what the rule in the body would have done over the last
/// 24 hours. Saves nothing.
pub async fn preview(
    state: web::Data<AppState>,
    body: Strict<RuleInput>,
) -> Result<HttpResponse, AppError> {
    let rule = body.validate()?;
    let p = crate::alerts::preview::preview(&state.pool, &rule).await?;
    Ok(HttpResponse::Ok().json(p))
}

#[derive(serde::Deserialize, Default)]
pub struct AckBody {
    #[serde(default)]
    source: String,
}

/// `POST /api/v1/alerts/{id}/ack` `{"source"}` (omit it for a rule across sources).
pub async fn ack(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    let body: AckBody = crate::web::json::parse_optional(&body)?;
    crate::alerts::rules::acknowledge(&state.pool, &principal, source_ip(&req), id, &body.source)
        .await?;
    Ok(HttpResponse::Ok().json(one(&state, id).await?))
}

#[derive(serde::Deserialize, Default)]
pub struct RuleSilence {
    #[serde(default)]
    source: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    #[serde(default)]
    duration_s: Option<i64>,
    #[serde(default)]
    comment: String,
}

/// `POST /api/v1/alerts/{id}/silence` -> 201 with the silence.
pub async fn silence_rule(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: Strict<RuleSilence>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    if crate::db::alerts::rule(&state.pool, id).await?.is_none() {
        return Err(AppError::NotFound(format!("No alert rule {id}.")));
    }
    let input = SilenceInput {
        rule_id: Some(id),
        source: body.0.source,
        from: body.0.from,
        until: body.0.until,
        duration_s: body.0.duration_s,
        comment: body.0.comment,
    };
    let row =
        crate::alerts::rules::silence(&state.pool, &principal, source_ip(&req), &input).await?;
    Ok(HttpResponse::Created().json(SilenceJson::from(&row)))
}

/// `POST /api/v1/alerts/{id}/test` -> 202 with the notifications' ids.
pub async fn test_rule(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    let ids = crate::alerts::rules::test(&state.pool, &principal, id, &state.settings.public_url())
        .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "notifications": ids })))
}

#[derive(Serialize)]
struct TransitionJson {
    source: String,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    from: AlertState,
    to: AlertState,
    value: Option<f64>,
    reason: String,
}

impl From<TransitionRow> for TransitionJson {
    fn from(t: TransitionRow) -> Self {
        TransitionJson {
            source: t.source,
            at: t.at,
            from: t.from_state,
            to: t.to_state,
            value: t.value,
            reason: t.reason,
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LimitQuery {
    limit: Option<i64>,
}

/// `GET /api/v1/alerts/{id}/history`: transitions, newest first (30 days are kept).
pub async fn history(
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    let limit = super::limit(q.limit)?;
    one(&state, id).await?;
    let rows = crate::db::alerts::transitions_of(&state.pool, id, limit).await?;
    Ok(HttpResponse::Ok().json(
        rows.into_iter()
            .map(TransitionJson::from)
            .collect::<Vec<_>>(),
    ))
}

/// `GET /api/v1/alerts/{id}/deliveries`: the delivery log, newest first.
pub async fn deliveries(
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "alert rule")?;
    let limit = super::limit(q.limit)?;
    one(&state, id).await?;
    let rows = crate::db::alerts::deliveries(&state.pool, Some(id), limit).await?;
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Serialize)]
pub struct SilenceJson {
    id: i64,
    rule_id: Option<i64>,
    source: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
    comment: String,
    created_by: String,
}

impl From<&SilenceRow> for SilenceJson {
    fn from(s: &SilenceRow) -> Self {
        SilenceJson {
            id: s.id,
            rule_id: s.rule_id,
            source: s.source_glob.clone(),
            from: s.starts_at,
            until: s.ends_at,
            comment: s.comment.clone(),
            created_by: s.created_by.clone(),
        }
    }
}

/// `GET /api/v1/silences`: the silences that have not ended.
pub async fn list_silences(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let rows = crate::db::alerts::silences(&state.pool).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(SilenceJson::from).collect::<Vec<_>>()))
}

/// `POST /api/v1/silences` `{"rule_id"?, "source"?, "from"?, "until" | "duration_s", "comment"}`
pub async fn create_silence(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: Strict<SilenceInput>,
) -> Result<HttpResponse, AppError> {
    let row =
        crate::alerts::rules::silence(&state.pool, &principal, source_ip(&req), &body).await?;
    Ok(HttpResponse::Created().json(SilenceJson::from(&row)))
}

/// `DELETE /api/v1/silences/{id}`: ends it now (200; already over: 200 too).
pub async fn end_silence(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "silence")?;
    let ended =
        crate::alerts::rules::end_silence(&state.pool, &principal, source_ip(&req), id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "ended": ended })))
}

/// `GET /api/v1/channels` (admins)
pub async fn list_channels(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let rows = crate::db::alerts::channels(&state.pool).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(ChannelView::from).collect::<Vec<_>>()))
}

/// `POST /api/v1/channels` -> 201
pub async fn create_channel(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: Strict<ChannelInput>,
) -> Result<HttpResponse, AppError> {
    let row = crate::alerts::channels::create(
        &state.pool,
        &principal,
        source_ip(&req),
        &body,
        &state.settings.alert_allow_hosts,
    )
    .await?;
    Ok(HttpResponse::Created().json(ChannelView::from(&row)))
}

/// `GET /api/v1/channels/{id}`
pub async fn show_channel(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    let row = crate::db::alerts::channel(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("No channel {id}.")))?;
    Ok(HttpResponse::Ok().json(ChannelView::from(&row)))
}

/// `PUT /api/v1/channels/{id}`: the whole channel; a secret left out stays as saved.
pub async fn update_channel(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: Strict<ChannelInput>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    let row = crate::alerts::channels::update(
        &state.pool,
        &principal,
        source_ip(&req),
        id,
        &body,
        &state.settings.alert_allow_hosts,
    )
    .await?;
    Ok(HttpResponse::Ok().json(ChannelView::from(&row)))
}

/// `DELETE /api/v1/channels/{id}` -> 204 (rules that named it stop naming it).
pub async fn delete_channel(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    crate::alerts::channels::delete(&state.pool, &principal, source_ip(&req), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/channels/{id}/test` -> 202 with the notification's id.
pub async fn test_channel(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    let n =
        crate::alerts::channels::test(&state.pool, &principal, id, &state.settings.public_url())
            .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "notification": n })))
}

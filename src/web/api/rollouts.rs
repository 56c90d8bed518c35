//! `/api/v1/rollouts` and the release / rollback actions on images, as JSON.

use actix_web::{HttpRequest, HttpResponse, web};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::db::rollouts::RolloutRow;
use crate::rollouts::{Action, Effect, Kind, RolloutInput};
use crate::web::AppState;
use crate::web::error::AppError;

#[derive(serde::Serialize)]
pub struct RolloutJson {
    id: i64,
    kind: crate::domain::RolloutKind,
    state: crate::domain::RolloutState,
    reason: String,
    from_image_id: Option<String>,
    to_image_id: String,
    replaced: i32,
    total: i32,
    fleet_size: i32,
    batch_size: i32,
    min_healthy_percent: i32,
    health_timeout_s: i32,
    drain_timeout_s: i32,
    grace_s: i32,
    superseded_by: Option<i64>,
    started_by: String,
    /// canary, soaking or awaiting_approval while the release's plan holds it; else null.
    phase: Option<crate::domain::RolloutPhase>,
    /// The rollback that undid this release (by its guards or an operator).
    rolled_back_by: Option<i64>,
    /// The plan (a rollback's: no canary, no soak, no guards, no wait).
    canary: i32,
    soak_s: i32,
    health_command: Option<String>,
    guard_alerts: serde_json::Value,
    approval: crate::domain::Approval,
    approval_deadline_s: i32,
    on_deadline: crate::domain::DeadlineAction,
    on_insufficient_data: crate::domain::InsufficientData,
    canary_p95_margin: f64,
    /// Batches let go after their soak time (by the plan, an operator or a deadline).
    approved_through: i32,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
}

impl From<RolloutRow> for RolloutJson {
    fn from(r: RolloutRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            state: r.state,
            reason: r.reason,
            from_image_id: r.from_image_id,
            to_image_id: r.to_image_id,
            replaced: r.replaced,
            total: r.total,
            fleet_size: r.fleet_size,
            batch_size: r.batch_size,
            min_healthy_percent: r.min_healthy_percent,
            health_timeout_s: r.health_timeout_s,
            drain_timeout_s: r.drain_timeout_s,
            grace_s: r.grace_s,
            superseded_by: r.superseded_by,
            started_by: r.started_by,
            phase: r.phase,
            rolled_back_by: r.rolled_back_by,
            canary: r.canary,
            soak_s: r.soak_s,
            health_command: Some(r.health_command).filter(|c| !c.is_empty()),
            guard_alerts: if r.guard_any {
                serde_json::json!("any")
            } else {
                serde_json::json!(r.guard_rule_ids)
            },
            approval: r.approval,
            approval_deadline_s: r.approval_deadline_s,
            on_deadline: r.on_deadline,
            on_insufficient_data: r.on_insufficient_data,
            canary_p95_margin: r.canary_p95_margin,
            approved_through: r.approved_through,
            created_at: r.created_at,
            finished_at: r.finished_at,
        }
    }
}

/// The optional settings body: empty means every default; anything else must be a JSON
/// object of the rollout's settings and, for a release, its plan (see `RolloutInput`).
fn settings_body(body: &[u8]) -> Result<RolloutInput, AppError> {
    crate::web::json::parse_optional(body)
}

async fn start(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
    kind: Kind,
) -> Result<HttpResponse, AppError> {
    let input = settings_body(&body)?;
    crate::web::pages::rollouts::may_override_freeze(&principal, &input)?;
    let ip = crate::web::pages::source_ip(&req);
    let (row, created) = crate::rollouts::start(
        &state.pool,
        &state.settings,
        &principal,
        ip,
        id.as_str(),
        kind,
        &input,
    )
    .await?;
    let mut res = if created {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(RolloutJson::from(row)))
}

/// `POST /api/v1/images/{id}/release` -> 202 with the rollout.
pub async fn release(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    start(req, principal, state, id, body, Kind::Release).await
}

/// `POST /api/v1/images/{id}/rollback` -> 202 with the rollout.
pub async fn rollback(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    start(req, principal, state, id, body, Kind::Rollback).await
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    before: Option<i64>,
    image: Option<String>,
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let rows =
        crate::db::rollouts::list(&state.pool, query.image.as_deref(), query.before, limit + 1)
            .await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<RolloutJson> = rows
        .into_iter()
        .take(limit as usize)
        .map(RolloutJson::from)
        .collect();
    let mut res = HttpResponse::Ok();
    if more && let Some(last) = rows.last() {
        let mut next = vec![
            ("limit".to_owned(), limit.to_string()),
            ("before".to_owned(), last.id.to_string()),
        ];
        if let Some(image) = &query.image {
            next.push(("image".to_owned(), image.clone()));
        }
        res.insert_header((
            "Link",
            format!(
                "</api/v1/rollouts?{}>; rel=\"next\"",
                serde_urlencoded::to_string(next).unwrap_or_default()
            ),
        ));
    }
    Ok(res.json(rows))
}

fn rollout_id(raw: &str) -> Result<i64, AppError> {
    crate::web::error::path_id(raw, "rollout")
}

pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = rollout_id(&id)?;
    let row = crate::db::rollouts::find(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no rollout {id}.")))?;
    Ok(HttpResponse::Ok().json(RolloutJson::from(row)))
}

/// `GET /api/v1/rollouts/{id}/comparison`: the jobs on the new image against those on the
/// old over the rollout's time (pinned jobs left out), and the judgment; 404 for a rollout
/// without an old image.
pub async fn comparison(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = rollout_id(&id)?;
    let row = crate::db::rollouts::find(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no rollout {id}.")))?;
    let c = crate::rollouts::comparison(&state.pool, &row, row.canary_p95_margin)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "Rollout {id} had no previous image to compare with."
            ))
        })?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "new": {"image_id": row.to_image_id, "jobs": c.new.jobs, "failed": c.new.failed,
                "p50_s": c.new.p50_s, "p95_s": c.new.p95_s},
        "old": {"image_id": row.from_image_id, "jobs": c.old.jobs, "failed": c.old.failed,
                "p50_s": c.old.p50_s, "p95_s": c.old.p95_s},
        "verdict": c.verdict,
    })))
}

/// `POST /api/v1/rollouts/{id}/{pause|resume|cancel|continue|rollback}` -> 200 with the
/// rollout (continue and rollback: a release's go-ahead).
pub async fn control(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    _body: crate::web::json::NoBody,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    let action = Action::parse(&action)?;
    let id = rollout_id(&id)?;
    let ip = crate::web::pages::source_ip(&req);
    let (row, _effect): (RolloutRow, Effect) =
        crate::rollouts::act(&state.pool, &principal, ip, id, action).await?;
    Ok(HttpResponse::Ok().json(RolloutJson::from(row)))
}

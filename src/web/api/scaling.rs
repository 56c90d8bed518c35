//! `/api/v1/scaling`: the autoscaling settings (read by viewers, written whole by operators),
//! the recent decisions, and a preview of the next one.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Principal;
use crate::domain::scaling::ScalingSettings;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::json::{NoBody, Strict};
use crate::web::pages::source_ip;

/// `GET /api/v1/scaling`
pub async fn show(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(crate::scaling::settings(&state.pool).await?))
}

/// `PUT /api/v1/scaling`: the whole settings document (fields left out take their defaults).
pub async fn update(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: Strict<ScalingSettings>,
) -> Result<HttpResponse, AppError> {
    let saved = crate::scaling::save(
        &state.pool,
        &principal,
        source_ip(&req),
        &body,
        state.settings.max_servers,
    )
    .await?;
    Ok(HttpResponse::Ok().json(saved))
}

#[derive(serde::Deserialize)]
pub struct LimitQuery {
    limit: Option<i64>,
}

/// `GET /api/v1/scaling/decisions`: newest first.
pub async fn decisions(
    state: web::Data<AppState>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(q.limit)?;
    Ok(HttpResponse::Ok().json(crate::scaling::decisions(&state.pool, limit).await?))
}

/// `POST /api/v1/scaling/preview`: what the autoscaler would do now, and why; changes nothing.
pub async fn preview(state: web::Data<AppState>, _body: NoBody) -> Result<HttpResponse, AppError> {
    let env = crate::scaling::Env::from_settings(&state.settings);
    let crate::scaling::Preview {
        decision: d,
        recycling,
    } = crate::scaling::preview(&state.pool, &env).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "desired_before": d.desired_before,
        "desired_after": d.desired_after,
        "action": d.action.word(),
        "detail": d.action,
        "reason": d.reason,
        "inputs": d.inputs,
        "recycling": {
            "steps": recycling.steps.iter().map(|s| s.sentence()).collect::<Vec<_>>(),
            "waiting": recycling.waiting,
        },
    })))
}

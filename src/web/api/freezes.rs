//! `/api/v1/freezes`: change freezes (read by viewers, defined and deleted by admins).

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Principal;
use crate::domain::freeze::FreezeInput;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::json::{NoBody, Strict};
use crate::web::pages::source_ip;

/// `GET /api/v1/freezes`: every freeze, the latest first, with whether it is in force now.
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let freezes = crate::db::freezes::list(&state.pool).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let out: Vec<serde_json::Value> = freezes
        .into_iter()
        .map(|f| {
            let mut v = serde_json::to_value(&f).unwrap_or_default();
            v["in_force"] = f.in_force(now).into();
            v["when"] = f.when().into();
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /api/v1/freezes` `{"from", "until"?, "weekly"?, "reason"}`.
pub async fn create(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: Strict<FreezeInput>,
) -> Result<HttpResponse, AppError> {
    let freeze =
        crate::rollouts::freezes::create(&state.pool, &principal, source_ip(&req), &body).await?;
    Ok(HttpResponse::Created().json(freeze))
}

/// `DELETE /api/v1/freezes/{id}`.
pub async fn delete(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, AppError> {
    let id = crate::web::error::path_id(&id, "freeze")?;
    crate::rollouts::freezes::delete(&state.pool, &principal, source_ip(&req), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

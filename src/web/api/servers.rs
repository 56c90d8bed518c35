//! `/api/v1/servers` and `/api/v1/launches`.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Principal;
use crate::db::servers::{LaunchRow, ServerQuery};
use crate::fleet::servers::Launch;
use crate::web::AppState;
use crate::web::error::AppError;

#[derive(serde::Serialize)]
struct LaunchJson {
    id: i64,
    state: crate::domain::LaunchState,
    image_id: String,
    count: i32,
    instance_type: String,
    error: String,
    requested_by: String,
    server_ids: Vec<String>,
}

async fn launch_json(state: &AppState, l: LaunchRow) -> Result<LaunchJson, AppError> {
    let server_ids = crate::db::servers::ids_of_launch(&state.pool, l.id).await?;
    Ok(LaunchJson {
        id: l.id,
        state: l.state,
        image_id: l.image_id,
        count: l.count,
        instance_type: l.instance_type,
        error: l.error,
        requested_by: l.requested_by,
        server_ids,
    })
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    #[serde(flatten)]
    filters: ServerQuery,
    limit: Option<i64>,
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let rows = crate::db::servers::list(&state.pool, &query.filters, None, limit).await?;
    Ok(HttpResponse::Ok().json(rows))
}

pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let row = crate::db::servers::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no server {id}.")))?;
    Ok(HttpResponse::Ok().json(row))
}

/// `POST /api/v1/servers` -> 202 with the launch; its servers appear as the provider names them.
pub async fn launch(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: crate::web::json::Strict<Launch>,
) -> Result<HttpResponse, AppError> {
    let ip = crate::web::pages::source_ip(&req);
    let launch = crate::fleet::servers::launch(
        &state.pool,
        &state.cloud,
        &state.settings,
        &principal,
        ip,
        &body,
    )
    .await?;
    Ok(HttpResponse::Accepted().json(launch_json(&state, launch).await?))
}

pub async fn show_launch(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let not_found = || AppError::NotFound(format!("There is no launch {id}."));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let launch = crate::db::servers::find_launch(&state.pool, n)
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(launch_json(&state, launch).await?))
}

/// An action's optional body: `{"force": true}` makes a terminate skip the drain.
#[derive(Default, serde::Deserialize)]
pub struct ActBody {
    #[serde(default)]
    force: bool,
    /// Confirms a disable or terminate that leaves fewer workers than the autoscaler's minimum.
    #[serde(default)]
    below_minimum: bool,
}

/// `POST /api/v1/servers/{id}/{disable|enable|terminate}`: 200 when it took effect or already
/// had, 202 when a terminate was queued.
pub async fn act(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    use crate::fleet::servers::{Action, Effect};
    let (id, verb) = path.into_inner();
    let body: ActBody = crate::web::json::parse_optional(&body)?;
    let action = match verb.as_str() {
        "disable" | "enable" if body.force => {
            return Err(AppError::BadRequest(format!(
                "force: only a terminate can be forced, not {verb}."
            )));
        }
        "disable" => Action::Disable,
        "enable" => Action::Enable,
        "terminate" if body.force => Action::ForceTerminate,
        "terminate" => Action::Terminate,
        other => {
            return Err(AppError::NotFound(format!(
                "Servers have no action {other:?}; use disable, enable or terminate."
            )));
        }
    };
    let ip = crate::web::pages::source_ip(&req);
    let effects = crate::fleet::servers::act(
        &state.pool,
        &principal,
        ip,
        std::slice::from_ref(&id),
        action,
        std::time::Duration::from_secs(state.settings.drain_timeout),
        body.below_minimum,
    )
    .await?;
    let row = crate::db::servers::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no server {id}.")))?;
    let mut res = if effects[0] == Effect::Queued {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(row))
}

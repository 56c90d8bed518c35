//! `/api/v1/images`: the catalogue as JSON.

use actix_web::{HttpRequest, HttpResponse, web};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::db::images::ImageRow;
use crate::fleet::images::AddImage;
use crate::web::AppState;
use crate::web::error::AppError;

#[derive(serde::Serialize)]
pub struct ImageJson {
    id: String,
    name: String,
    version: String,
    description: String,
    source_revision: String,
    state: crate::domain::ImageState,
    state_reason: String,
    current: bool,
    servers: i64,
    added_by: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// As EC2 names it (`x86_64`, `arm64`); null when unknown.
    architecture: Option<String>,
}

impl From<ImageRow> for ImageJson {
    fn from(r: ImageRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            version: r.version,
            description: r.description,
            source_revision: r.source_revision,
            state: r.state,
            state_reason: r.state_reason,
            current: r.current,
            servers: r.servers,
            added_by: r.added_by,
            created_at: r.created_at,
            architecture: r.architecture,
        }
    }
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let rows = crate::db::images::list(&state.pool, limit).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(ImageJson::from).collect::<Vec<_>>()))
}

pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let row = crate::db::images::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no image {id} in the catalogue.")))?;
    Ok(HttpResponse::Ok().json(ImageJson::from(row)))
}

/// `POST /api/v1/images` -> 201 with the image, `pending` until a task has checked it.
pub async fn add(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: crate::web::json::Strict<AddImage>,
) -> Result<HttpResponse, AppError> {
    let ip = crate::web::pages::source_ip(&req);
    let row = crate::fleet::images::add(&state.pool, &state.cloud, &principal, ip, &body).await?;
    Ok(HttpResponse::Created().json(ImageJson::from(row)))
}

/// `POST /api/v1/images/{id}/deregister` -> 202 when queued, 200 when it already was.
pub async fn deregister(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: crate::web::json::NoBody,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let ip = crate::web::pages::source_ip(&req);
    let queued = crate::fleet::images::deregister(&state.pool, &principal, ip, &id).await?;
    let row = crate::db::images::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no image {id} in the catalogue.")))?;
    let mut res = if queued {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(ImageJson::from(row)))
}

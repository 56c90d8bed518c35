use actix_web::{HttpRequest, HttpResponse, web};

use crate::web::AppState;
use crate::web::error::AppError;

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// `GET /api/v1/audit`: newest first, with `Link: <…>; rel="next"` when there is more.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let mut rows = crate::db::audit::page(&state.pool, query.before, limit).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut res = HttpResponse::Ok();
    if more && let Some(last) = rows.last() {
        res.insert_header((
            "Link",
            format!(
                "<{}?limit={limit}&before={}>; rel=\"next\"",
                req.path(),
                last.id
            ),
        ));
    }
    Ok(res.json(rows))
}

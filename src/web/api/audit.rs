use actix_web::{HttpRequest, HttpResponse, web};

use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::pages::audit::AuditQuery;

/// `GET /api/v1/audit`: newest first, filtered as the Audit page filters (`action`, `user`,
/// `target`, `from`, `until`), with `Link: <…>; rel="next"` when there is more.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let filter = query.filter()?;
    let mut rows = crate::db::audit::search(&state.pool, &filter, query.before, limit).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut res = HttpResponse::Ok();
    if more && let Some(last) = rows.last() {
        let filters = query.encoded();
        res.insert_header((
            "Link",
            format!(
                "<{}?limit={limit}&before={}{}{filters}>; rel=\"next\"",
                req.path(),
                last.id,
                if filters.is_empty() { "" } else { "&" },
            ),
        ));
    }
    Ok(res.json(rows))
}

use actix_web::{HttpResponse, web};

use crate::web::AppState;

/// The process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// The database answers and every migration this binary knows is applied.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match crate::db::migrations_current(&state.pool).await {
        Ok(true) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Ok(false) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready: database migrations are behind this binary\n"),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("not ready: the database does not answer\n")
        }
    }
}

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

/// Prometheus text: the console's own figures (EC2 calls and latency so far). Open, or with
/// KILN_METRICS_TOKEN set, only with that bearer token.
pub async fn metrics(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(expected) = &state.settings.metrics_token {
        let sent = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !sent.is_some_and(|s| crate::auth::token::equal(s, expected)) {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .content_type("text/plain")
                .body("GET /metrics needs the bearer token set in KILN_METRICS_TOKEN\n");
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

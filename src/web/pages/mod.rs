//! Console pages: one module per page, each with its handlers and template structs.

pub mod account;
pub mod alerts;
pub mod audit;
pub mod bakes;
pub mod dashboard_edit;
pub mod dashboards;
pub mod health;
pub mod images;
pub mod jobs;
pub mod login;
pub mod overview;
pub mod rollouts;
pub mod scaling;
pub mod servers;
pub mod users;

use actix_web::HttpRequest;
use actix_web::HttpResponse;
use actix_web::http::header;

/// Renders a template as an HTML response with `status` (askama_web's responder is always 200;
/// forms re-rendered with a validation message need 400/409).
pub fn html(
    template: &impl askama::Template,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, crate::web::error::AppError> {
    html_sized(template, status, 0)
}

/// [`html`], rendered into a buffer of at least `capacity` bytes: for the big pages, which
/// know about how large they will be.
pub fn html_sized<T: askama::Template>(
    template: &T,
    status: actix_web::http::StatusCode,
    capacity: usize,
) -> Result<HttpResponse, crate::web::error::AppError> {
    let mut body = String::with_capacity(capacity.max(T::SIZE_HINT));
    template.render_into(&mut body).map_err(|e| {
        crate::web::error::AppError::Internal(
            anyhow::Error::new(e).context("Failed to render a page"),
        )
    })?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body))
}

#[derive(askama::Template)]
#[template(path = "partials/toast_oob.html")]
struct ToastOob<'a> {
    message: &'a str,
}

/// A success toast delivered out of band with an htmx response that swaps something else.
pub fn toast_oob(message: &str) -> String {
    use askama::Template;
    ToastOob { message }.render().unwrap_or_default()
}

/// A form's number field: empty is None; anything else must parse, or a 400 names the field.
pub fn form_number<T: std::str::FromStr>(
    field: &str,
    text: &str,
) -> Result<Option<T>, crate::web::error::AppError> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            crate::web::error::AppError::BadRequest(format!("{field}: {t:?} is not a number."))
        }),
    }
}

/// Post/redirect/get: after a form post, send the browser to a page it can reload safely.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

pub fn is_htmx(req: &HttpRequest) -> bool {
    req.headers().contains_key("hx-request")
}

/// The address the request came from. Deliberately the socket peer, not X-Forwarded-For:
/// login throttling keys on it, and a client-supplied header would let anyone pick its own.
pub fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// The client's address as the audit log records it.
pub fn source_ip(req: &HttpRequest) -> Option<String> {
    client_ip(req).map(|ip| ip.to_string())
}

/// The status a refused form is shown again with; anything else is an error page.
fn refused(e: &crate::web::error::AppError) -> Option<actix_web::http::StatusCode> {
    use crate::web::error::AppError;
    match e {
        AppError::BadRequest(_) => Some(actix_web::http::StatusCode::BAD_REQUEST),
        AppError::Conflict(_) => Some(actix_web::http::StatusCode::CONFLICT),
        _ => None,
    }
}

/// A form's answer: done -> `done`'s redirect; refused (400, 409) -> the form shown again by
/// `again` with the reason and the status; anything else -> the error page.
pub async fn answer<T, Again, Shown>(
    result: Result<T, crate::web::error::AppError>,
    done: impl FnOnce(T) -> HttpResponse,
    again: Again,
) -> Result<HttpResponse, crate::web::error::AppError>
where
    Again: FnOnce(String, actix_web::http::StatusCode) -> Shown,
    Shown: std::future::Future<Output = Result<HttpResponse, crate::web::error::AppError>>,
{
    use crate::web::error::AppError;
    match result {
        Ok(value) => Ok(done(value)),
        Err(e) => match refused(&e) {
            Some(status) => {
                let message = match e {
                    AppError::BadRequest(m) | AppError::Conflict(m) => m,
                    other => other.to_string(),
                };
                again(message, status).await
            }
            None => Err(e),
        },
    }
}

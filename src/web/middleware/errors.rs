//! Renders every error response for whoever asked: JSON `{"error": …}` on API routes, a toast
//! for an htmx request (swapped into `#toasts`, so the page stays as it was), a full page
//! otherwise. A 5xx is logged here, once, with its error chain, and shown as a generic
//! message with the request id so that an operator can find the log line.
//!
//! Only responses that carry an error are touched: a handler that renders its own 4xx page
//! (a form with a validation message) returns it as it is.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, HttpResponse};
use askama::Template;

use super::request_id::RequestId;
use crate::auth::Principal;
use crate::web::AppState;
use crate::web::access::session_principal;
use crate::web::error::AppError;
use crate::web::layout::Layout;
use actix_web::web;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    title: String,
    message: String,
    request_id: Option<String>,
}

#[derive(Template)]
#[template(path = "partials/toast.html")]
struct Toast {
    kind: &'static str,
    message: String,
}

pub async fn render(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Do not clone the request before routing: the router needs to own it. An Err from the
    // inner services (only the session store failing) is left to actix's plain rendering.
    let res = next.call(req).await?.map_into_boxed_body();
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(res);
    }
    let Some(error) = res.response().error() else {
        return Ok(res);
    };
    let http_req = res.request().clone();

    let request_id = http_req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone());
    let message = if status.is_server_error() {
        tracing::error!(error = %chain(error), "request failed");
        match &request_id {
            Some(id) => format!(
                "Something went wrong on our side. It has been logged with request id {id}."
            ),
            None => "Something went wrong on our side. It has been logged.".to_owned(),
        }
    } else {
        user_message(error, status)
    };

    if !crate::web::is_api_path(http_req.path())
        && http_req.extensions().get::<Principal>().is_none()
    {
        // No access check ran (an unknown address): find the user so the page keeps its nav.
        if let Some(state) = http_req.app_data::<web::Data<AppState>>()
            && let Ok(Some(principal)) = session_principal(&http_req, state).await
        {
            http_req.extensions_mut().insert(principal);
        }
    }
    let mut out = build(&http_req, status, message, request_id);
    // Keep what the error said about retrying or authenticating.
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = res.headers().get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    Ok(ServiceResponse::new(http_req, out))
}

fn build(
    req: &HttpRequest,
    status: StatusCode,
    message: String,
    request_id: Option<String>,
) -> HttpResponse {
    if crate::web::is_api_path(req.path()) {
        let mut res = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        return res.json(serde_json::json!({ "error": message }));
    }
    if req.headers().contains_key("hx-request") {
        let toast = Toast {
            kind: "error",
            message,
        };
        return HttpResponse::build(status)
            .insert_header(("HX-Retarget", "#toasts"))
            .insert_header(("HX-Reswap", "beforeend"))
            .content_type("text/html; charset=utf-8")
            .body(toast.render().unwrap_or_default());
    }
    let page = ErrorPage {
        layout: Layout::from_request(req),
        status: status.as_u16(),
        title: title(status).to_owned(),
        message,
        request_id,
    };
    match page.render() {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(html),
        Err(e) => {
            tracing::error!(error = %e, "failed to render the error page");
            HttpResponse::build(status)
                .content_type("text/plain; charset=utf-8")
                .body(page.message)
        }
    }
}

/// The sentence shown for a 4xx: ours as written, actix's extractor errors made plainer.
fn user_message(error: &Error, status: StatusCode) -> String {
    if let Some(app) = error.as_error::<AppError>() {
        return app.to_string();
    }
    match status {
        StatusCode::NOT_FOUND => "There is nothing at this address.".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => {
            "This address does not accept that kind of request.".to_owned()
        }
        StatusCode::PAYLOAD_TOO_LARGE => "The request is too large.".to_owned(),
        _ => format!("The request was not understood: {error}"),
    }
}

fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "That did not work",
        401 => "Log in to continue",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Not possible right now",
        429 => "Too many attempts",
        s if s >= 500 => "Something went wrong",
        _ => "That did not work",
    }
}

fn chain(error: &Error) -> String {
    match error.as_error::<AppError>() {
        Some(AppError::Internal(inner)) => return format!("{inner:#}"),
        Some(AppError::Unavailable { message, source }) => return format!("{message}: {source:#}"),
        _ => {}
    }
    // actix's own errors expose no source chain; their Debug form is the most detail we get.
    format!("{error} ({error:?})")
}

/// The default service: an unknown address is a 404 rendered like every other error.
pub async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound(
        "There is nothing at this address.".into(),
    ))
}

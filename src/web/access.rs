//! The one place that decides whether a request may reach its handler.
//!
//! Every route is wrapped (see `routes.rs`) with `enforce(access)`, which:
//! 1. checks the CSRF token of every state-changing request made with a session cookie
//!    (token-authenticated API routes need none);
//! 2. resolves the principal: a bearer API token on API routes, the session elsewhere;
//! 3. compares its role with the route's least role.
//!
//! Refusals: API requests get 401/403 JSON; unauthenticated page requests are redirected to
//! /login (htmx requests via `HX-Redirect`); authenticated ones without the role get 403.

use actix_session::SessionExt;
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::AppError;
use super::session_store::{LOADED_USER, USER_ID};
use crate::auth::{Principal, Via};
use crate::db::sessions::{LoadedUser, SessionUser};
use crate::domain::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open without login.
    Public,
    /// Needs a user with at least this role.
    Role(Role),
    /// Needs a registered agent's own token (`/agent/v1/…`); users' tokens do not do.
    Agent,
    /// Open at the door; the handler checks the request's signature (the GitHub webhook's
    /// HMAC) and answers 401 without a valid one.
    Signed,
}

/// The server whose agent made the request (set by `enforce` on `Access::Agent` routes).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub server_id: String,
    /// Where the server stood when its token was last verified (at most one heartbeat
    /// flush ago, see `web::agent_tokens`).
    pub standing: crate::db::agents::Standing,
}

impl FromRequest for AgentIdentity {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<AgentIdentity>()
                .cloned()
                .ok_or(AppError::Unauthorized),
        )
    }
}

/// The session key of the CSRF token.
pub const CSRF: &str = "csrf";
/// The form field and header that carry it.
pub const CSRF_FIELD: &str = "csrf_token";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// State-changing forms are small; a larger body is refused before it is buffered.
const MAX_FORM_BYTES: usize = 1 << 20;

pub async fn enforce(
    access: Access,
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let api = super::is_api_path(req.path());

    if !api
        && !is_safe(req.method())
        && let Err(error) = check_csrf(&mut req).await
    {
        return Ok(req.error_response(error));
    }

    let least = match access {
        Access::Public | Access::Signed => return next.call(req).await,
        Access::Agent => {
            return match agent_from_token(&req).await {
                Ok(Some(agent)) => {
                    tracing::Span::current().record("user", agent.server_id.as_str());
                    req.extensions_mut().insert(agent);
                    next.call(req).await
                }
                Ok(None) => Ok(req.error_response(AppError::Unauthorized)),
                Err(error) => Ok(req.error_response(error)),
            };
        }
        Access::Role(least) => least,
    };

    let principal = if api {
        principal_from_token(&req).await
    } else {
        principal_from_session(&req).await
    };
    let principal = match principal {
        Ok(Some(p)) => p,
        Ok(None) if api => return Ok(req.error_response(AppError::Unauthorized)),
        Ok(None) => {
            let response = redirect_to_login(req.request());
            return Ok(req.into_response(response));
        }
        Err(error) => return Ok(req.error_response(error)),
    };
    if principal.role < least {
        return Ok(req.error_response(AppError::forbidden_role()));
    }
    tracing::Span::current().record("user", principal.name.as_str());
    req.extensions_mut().insert(principal);
    next.call(req).await
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The CSRF token for this request's forms. A logged-in session keeps its token in its row
/// (created at login). A visitor without one gets the token of the signed login cookie, a
/// new one (set as that cookie on the response) when it has none: nothing is written to the
/// database for a visitor who has not logged in.
pub fn csrf_token(req: &HttpRequest) -> String {
    use super::middleware::login_csrf::{Issued, Presented};
    let session = req.get_session();
    if let Ok(Some(token)) = session.get::<String>(CSRF) {
        return token;
    }
    let new_token = || crate::auth::token::Secret::generate("").expose().to_owned();
    if session.contains_key(USER_ID) {
        // A logged-in session without a token (made before tokens were kept): give it one.
        // A failed insert would only mean the next form post is refused (the safe way).
        let token = new_token();
        let _ = session.insert(CSRF, &token);
        return token;
    }
    if let Some(Presented(token)) = req.extensions().get::<Presented>() {
        return token.clone();
    }
    if let Some(Issued(token)) = req.extensions().get::<Issued>() {
        return token.clone();
    }
    let token = new_token();
    req.extensions_mut().insert(Issued(token.clone()));
    token
}

async fn check_csrf(req: &mut ServiceRequest) -> Result<(), AppError> {
    let refused = || {
        AppError::Forbidden(
            "This form has expired or did not come from Kiln. Reload the page and try again."
                .into(),
        )
    };
    // The session's token; without one (no one has logged in), the signed login cookie's.
    let expected = req
        .get_session()
        .get::<String>(CSRF)
        .ok()
        .flatten()
        .or_else(|| {
            req.extensions()
                .get::<super::middleware::login_csrf::Presented>()
                .map(|p| p.0.clone())
        })
        .ok_or_else(refused)?;

    if let Some(sent) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if crate::auth::token::equal(sent, &expected) {
            Ok(())
        } else {
            Err(refused())
        };
    }

    // Plain HTML forms carry the token as a field: read the body, check it, and put the
    // bytes back for the handler's own extractor.
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refused());
    }
    let body = req
        .extract::<web::Bytes>()
        .await
        .map_err(|_| AppError::BadRequest("The form could not be read.".into()))?;
    if body.len() > MAX_FORM_BYTES {
        return Err(AppError::BadRequest("The form is too large.".into()));
    }
    let sent = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|fields| {
            fields
                .into_iter()
                .find(|(k, _)| k == CSRF_FIELD)
                .map(|(_, v)| v)
        });
    req.set_payload(actix_web::dev::Payload::from(body));
    match sent {
        Some(sent) if crate::auth::token::equal(&sent, &expected) => Ok(()),
        _ => Err(refused()),
    }
}

async fn principal_from_session(req: &ServiceRequest) -> Result<Option<Principal>, AppError> {
    let state = state(req)?;
    session_principal(req.request(), &state).await
}

/// The logged-in user of a session, if any (also used to render error pages of routes that
/// no access check ran on, such as the 404 of an unknown address).
pub async fn session_principal(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<Principal>, AppError> {
    let session = req.get_session();
    let Ok(Some(user_id)) = session.get::<i64>(USER_ID) else {
        return Ok(None);
    };
    // Normally read with the session in the same statement; looked up only when the session
    // changed hands during this request (a login) and the loaded user is not this one.
    let user = match session.get::<LoadedUser>(LOADED_USER) {
        Ok(Some(loaded)) if loaded.id == user_id => loaded.user,
        _ => crate::db::users::find(&state.pool, user_id)
            .await?
            .map(SessionUser::from),
    };
    match user {
        Some(user) if !user.disabled => Ok(Some(Principal {
            user_id: user.id,
            role: user.role,
            name: user.name,
            via: Via::Session,
        })),
        // Deleted or disabled since login: the session ends now.
        _ => {
            session.purge();
            Ok(None)
        }
    }
}

fn bearer(req: &ServiceRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

async fn agent_from_token(req: &ServiceRequest) -> Result<Option<AgentIdentity>, AppError> {
    let Some(token) = bearer(req) else {
        return Ok(None);
    };
    let state = state(req)?;
    let hash = crate::auth::token::hash(token);
    if let Some((server_id, standing)) = state.agent_tokens.get(&hash) {
        return Ok(Some(AgentIdentity {
            server_id,
            standing,
        }));
    }
    let server = crate::db::agents::server_of(&state.pool, &hash).await?;
    if let Some((server_id, standing)) = &server {
        state
            .agent_tokens
            .put(hash, server_id.clone(), standing.clone());
    }
    Ok(server.map(|(server_id, standing)| AgentIdentity {
        server_id,
        standing,
    }))
}

/// An API token from `Authorization: Bearer TOKEN`, or from HTTP basic auth's password (how
/// Librato clients send it: `user:token`, the user part is not checked).
fn api_token(req: &ServiceRequest) -> Option<String> {
    if let Some(token) = bearer(req) {
        return Some(token.to_owned());
    }
    use base64::Engine;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (_, password) = pair.split_once(':')?;
    Some(password.to_owned())
}

async fn principal_from_token(req: &ServiceRequest) -> Result<Option<Principal>, AppError> {
    let Some(token) = api_token(req) else {
        return Ok(None);
    };
    let token = token.as_str();
    let state = state(req)?;
    let owner = crate::db::tokens::owner_of(&state.pool, &crate::auth::token::hash(token)).await?;
    Ok(owner.map(|o| Principal {
        user_id: o.user_id,
        role: o.role(),
        name: o.name,
        via: Via::ApiToken(o.token_id),
    }))
}

fn state(req: &ServiceRequest) -> Result<web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("AppState is not registered")))
}

fn redirect_to_login(req: &HttpRequest) -> HttpResponse {
    let target = if req.method() == Method::GET {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if path_and_query == "/" {
            "/login".to_owned()
        } else {
            format!("/login?next={}", urlencode(path_and_query))
        }
    } else {
        "/login".to_owned()
    };
    if req.headers().contains_key("hx-request") {
        HttpResponse::Unauthorized()
            .insert_header(("HX-Redirect", target))
            .finish()
    } else {
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, target))
            .finish()
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e[1..].to_owned())
        .unwrap_or_default()
}

/// Handlers of routes that need a role take the principal as an argument.
impl FromRequest for Principal {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(req.extensions().get::<Principal>().cloned().ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!(
                "{} asks for a user but its route is public",
                req.path()
            ))
        }))
    }
}

//! Logging in and out. A login renews the session id (no fixation) and rotates its CSRF
//! token; failures are throttled per account and per source address, and every attempt is
//! audited.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{client_ip, see_other, source_ip};
use crate::auth::Principal;
use crate::auth::throttle::{self, Verdict};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::web::AppState;
use crate::web::access::CSRF;
use crate::web::error::AppError;
use crate::web::layout::Layout;
use crate::web::session_store::USER_ID;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    username: String,
    next: String,
    error: Option<String>,
}

impl LoginPage {
    fn respond(self, status: StatusCode) -> Result<HttpResponse, AppError> {
        super::html(&self, status)
    }
}

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn form(
    layout: Layout,
    session: Session,
    query: web::Query<NextQuery>,
) -> Result<HttpResponse, AppError> {
    if session.get::<i64>(USER_ID).ok().flatten().is_some() {
        return Ok(see_other(&safe_next(query.next.as_deref())));
    }
    LoginPage {
        layout,
        username: String::new(),
        next: safe_next(query.next.as_deref()),
        error: None,
    }
    .respond(StatusCode::OK)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

const WRONG: &str = "Wrong user name or password.";

pub async fn submit(
    req: HttpRequest,
    layout: Layout,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let next = safe_next(Some(&form.next));
    let username = form.username.trim().to_owned();
    let page = |layout: Layout, error: &str| LoginPage {
        layout,
        username: username.clone(),
        next: next.clone(),
        error: Some(error.to_owned()),
    };
    if username.is_empty()
        || form.password.is_empty()
        || username.len() > 64
        || form.password.len() > 1024
    {
        return page(layout, "Enter your user name and password.").respond(StatusCode::BAD_REQUEST);
    }
    let ip = client_ip(&req).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let ip_text = Some(ip.to_string());
    let settings = &state.settings;

    let counts = crate::db::login_failures::counts(
        &state.pool,
        &username,
        ip,
        settings.login_failure_window,
    )
    .await?;
    match throttle::judge(settings, counts) {
        Verdict::Refuse {
            retry_after,
            reason,
        } => {
            audit::record(
                &state.pool,
                AuditEvent::by_name(
                    &username,
                    "login",
                    format!("user:{username}"),
                    Outcome::Refused,
                )
                .detail(reason)
                .from_ip(ip_text),
            )
            .await?;
            let minutes = retry_after.as_secs().div_ceil(60);
            return Err(AppError::TooManyRequests {
                message: format!(
                    "Too many failed logins. Try again in {minutes} minute{}.",
                    if minutes == 1 { "" } else { "s" }
                ),
                retry_after_s: retry_after.as_secs(),
            });
        }
        Verdict::Allow { delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    let user = crate::db::users::find_by_name(&state.pool, &username).await?;
    let ok = crate::auth::password::verify(
        &form.password,
        user.as_ref().map(|u| u.password_hash.as_str()),
    )
    .await?;
    let failure = match (&user, ok) {
        (None, _) => Some(("unknown user", WRONG)),
        (Some(_), false) => Some(("wrong password", WRONG)),
        (Some(u), true) if u.disabled => Some((
            "user is disabled",
            "This account is disabled. Ask an admin to enable it.",
        )),
        _ => None,
    };
    if let Some((why, shown)) = failure {
        let mut tx = state.pool.begin().await?;
        crate::db::login_failures::record(&mut *tx, &username, ip).await?;
        audit::record(
            &mut *tx,
            AuditEvent::by_name(
                &username,
                "login",
                format!("user:{username}"),
                Outcome::Failed,
            )
            .detail(why)
            .from_ip(ip_text),
        )
        .await?;
        tx.commit().await?;
        return page(layout, shown).respond(StatusCode::UNAUTHORIZED);
    }
    let user = user.expect("a successful login has a user");

    let mut tx = state.pool.begin().await?;
    crate::db::login_failures::clear_account(&mut *tx, &user.name).await?;
    crate::db::users::touch_login(&mut *tx, user.id).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by_user(
            user.id,
            &user.name,
            "login",
            format!("user:{}", user.name),
            Outcome::Ok,
        )
        .from_ip(ip_text),
    )
    .await?;
    tx.commit().await?;

    session.renew();
    session
        .insert(USER_ID, user.id)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("Failed to store the session: {e}")))?;
    let _ = session.insert(CSRF, crate::auth::token::Secret::generate("").expose());
    Ok(see_other(&next))
}

pub async fn logout(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    audit::record(
        &state.pool,
        AuditEvent::by(
            &principal,
            "logout",
            format!("user:{}", principal.name),
            Outcome::Ok,
        )
        .from_ip(source_ip(&req)),
    )
    .await?;
    // purge() deletes the session row and tells the browser to drop the cookie.
    session.purge();
    Ok(see_other("/login"))
}

/// Only local paths: `next` must not send a user who just logged in to another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login") =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/audit?before=5")), "/audit?before=5");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}

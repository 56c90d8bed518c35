//! The Account page: any user sees its role and changes its own password.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{see_other, source_ip};
use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::Password;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    error: Option<String>,
}

fn render(
    layout: Layout,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    super::html(&AccountPage { layout, error }, status)
}

pub async fn show(layout: Layout) -> Result<HttpResponse, AppError> {
    render(layout, None, StatusCode::OK)
}

#[derive(serde::Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

pub async fn change_password(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, AppError> {
    let ip = source_ip(&req);
    let user = crate::db::users::find(&state.pool, principal.user_id)
        .await?
        .ok_or_else(|| AppError::NotFound("Your account no longer exists.".into()))?;
    if !crate::auth::password::verify(&form.current, Some(&user.password_hash)).await? {
        audit::record(
            &state.pool,
            AuditEvent::by(
                &principal,
                "password.change",
                format!("user:{}", principal.name),
                Outcome::Failed,
            )
            .detail("wrong current password")
            .from_ip(ip),
        )
        .await?;
        return render(
            layout,
            Some("Your current password is not right.".into()),
            StatusCode::BAD_REQUEST,
        );
    }
    if form.new != form.confirm {
        return render(
            layout,
            Some("The new password and its confirmation differ.".into()),
            StatusCode::BAD_REQUEST,
        );
    }
    let new = match Password::parse(&form.new) {
        Ok(p) => p,
        Err(e) => return render(layout, Some(e.0), StatusCode::BAD_REQUEST),
    };
    let hash = crate::auth::password::hash(&new).await?;
    let mut tx = state.pool.begin().await?;
    crate::db::users::set_password(&mut *tx, principal.user_id, &hash).await?;
    // Every other session of this user ends; this one continues under a fresh id.
    crate::db::sessions::delete_for_user(&mut *tx, principal.user_id).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            &principal,
            "password.change",
            format!("user:{}", principal.name),
            Outcome::Ok,
        )
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    session.renew();
    flash(
        &session,
        "Password changed. Your other sessions have been logged out.",
    );
    Ok(see_other("/account"))
}

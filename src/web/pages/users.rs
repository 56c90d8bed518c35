//! The Users page (admins only): users and their roles, API tokens.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::auth::token::{API_PREFIX, Secret};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::tokens::TokenRow;
use crate::db::users::{CreateUserError, UserRow};
use crate::domain::{Password, Role, TokenName, UserName};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when, when_opt};

pub struct UserView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created: When,
    pub last_login: Option<When>,
    pub is_self: bool,
}

impl UserView {
    fn new(row: UserRow, me: i64) -> Self {
        Self {
            id: row.id,
            role: row.role(),
            is_self: row.id == me,
            name: row.name,
            disabled: row.disabled,
            created: when(row.created_at),
            last_login: when_opt(row.last_login_at),
        }
    }
}

pub struct TokenView {
    pub id: i64,
    pub user_name: String,
    pub name: String,
    pub created: When,
    pub last_used: Option<When>,
    pub revoked: bool,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> Self {
        Self {
            id: t.id,
            user_name: t.user_name,
            name: t.name,
            created: when(t.created_at),
            last_used: when_opt(t.last_used_at),
            revoked: t.revoked_at.is_some(),
        }
    }
}

/// A token just created: its secret is shown on this one response and never again.
pub struct NewToken {
    pub id: i64,
    pub user_name: String,
    pub secret: String,
}

#[derive(Default)]
pub struct UserFormState {
    pub name: String,
    pub role: String,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct TokenFormState {
    pub user_id: i64,
    pub name: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    layout: Layout,
    csrf: String,
    users: Vec<UserView>,
    tokens: Vec<TokenView>,
    roles: [Role; 3],
    user_form: UserFormState,
    token_form: TokenFormState,
    new_token: Option<NewToken>,
}

#[derive(Template)]
#[template(path = "partials/user_row.html")]
struct UserRowPartial {
    csrf: String,
    user: UserView,
}

async fn page(
    layout: Layout,
    state: &AppState,
    principal: &Principal,
    user_form: UserFormState,
    token_form: TokenFormState,
    new_token: Option<NewToken>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let users = crate::db::users::list(&state.pool).await?;
    let tokens = crate::db::tokens::list(&state.pool).await?;
    let page = UsersPage {
        csrf: layout.csrf.clone(),
        layout,
        users: users
            .into_iter()
            .map(|u| UserView::new(u, principal.user_id))
            .collect(),
        tokens: tokens.into_iter().map(TokenView::from).collect(),
        roles: Role::ALL,
        user_form,
        token_form,
        new_token,
    };
    super::html(&page, status)
}

pub async fn show(
    layout: Layout,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let user_form = UserFormState {
        role: "viewer".into(),
        ..Default::default()
    };
    page(
        layout,
        &state,
        &principal,
        user_form,
        TokenFormState::default(),
        None,
        StatusCode::OK,
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct CreateUserForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

pub async fn create(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<CreateUserForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let parsed = UserName::parse(&form.name)
        .and_then(|name| Ok((name, form.role.parse::<Role>()?)))
        .and_then(|(name, role)| Ok((name, role, Password::parse(&form.password)?)));
    let (name, role, password) = match parsed {
        Ok(ok) => ok,
        Err(e) => {
            let state_form = UserFormState {
                name: form.name,
                role: form.role,
                error: Some(e.0),
            };
            return page(
                layout,
                &state,
                &principal,
                state_form,
                TokenFormState::default(),
                None,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let hash = crate::auth::password::hash(&password).await?;
    let mut tx = state.pool.begin().await?;
    match crate::db::users::create(&mut tx, &name, role, &hash).await {
        Ok(_) => {}
        Err(CreateUserError::NameTaken(taken)) => {
            drop(tx);
            let state_form = UserFormState {
                name: form.name,
                role: form.role,
                error: Some(format!("A user named {taken:?} already exists.")),
            };
            return page(
                layout,
                &state,
                &principal,
                state_form,
                TokenFormState::default(),
                None,
                StatusCode::CONFLICT,
            )
            .await;
        }
        Err(CreateUserError::Database(e)) => return Err(e.into()),
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(
            &principal,
            "user.create",
            format!("user:{}", name.as_str()),
            Outcome::Ok,
        )
        .detail(format!("role {role}"))
        .from_ip(source_ip(&req)),
    )
    .await?;
    tx.commit().await?;
    flash(&session, format!("Created {} ({role}).", name.as_str()));
    Ok(see_other("/users"))
}

pub async fn disable(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    set_disabled(req, principal, session, state, id.into_inner(), true).await
}

pub async fn enable(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    set_disabled(req, principal, session, state, id.into_inner(), false).await
}

async fn set_disabled(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: i64,
    disabled: bool,
) -> Result<HttpResponse, AppError> {
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    let target = crate::db::users::find(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no user with id {id}.")))?;
    if disabled && target.id == principal.user_id {
        // Refusing this also guarantees one enabled admin is always left.
        return Err(AppError::Conflict(
            "You cannot disable your own account; ask another admin.".into(),
        ));
    }
    let mut tx = state.pool.begin().await?;
    let changed = crate::db::users::set_disabled(&mut *tx, id, disabled).await?;
    if disabled {
        // A disabled user is logged out everywhere at once, not at its next request.
        crate::db::sessions::delete_for_user(&mut *tx, id).await?;
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(
            &principal,
            action,
            format!("user:{}", target.name),
            Outcome::Ok,
        )
        .detail(if changed { "" } else { "already in effect" })
        .from_ip(source_ip(&req)),
    )
    .await?;
    tx.commit().await?;

    let verb = if disabled { "Disabled" } else { "Enabled" };
    if is_htmx(&req) {
        let row = crate::db::users::find(&state.pool, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("There is no user with id {id}.")))?;
        let csrf = crate::web::access::csrf_token(&req);
        let row = UserRowPartial {
            csrf,
            user: UserView::new(row, principal.user_id),
        };
        return super::html(&row, StatusCode::OK);
    }
    flash(&session, format!("{verb} {}.", target.name));
    Ok(see_other("/users"))
}

#[derive(serde::Deserialize)]
pub struct CreateTokenForm {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    name: String,
}

pub async fn create_token(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    state: web::Data<AppState>,
    form: web::Form<CreateTokenForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let user_id: i64 = form.user_id.trim().parse().unwrap_or(0);
    let user = crate::db::users::find(&state.pool, user_id).await?;
    let checked = match (&user, TokenName::parse(&form.name)) {
        (None, _) => Err("Choose the user the token acts as.".to_owned()),
        (Some(u), _) if u.disabled => Err(format!(
            "{} is disabled; enable it before creating tokens.",
            u.name
        )),
        (_, Err(e)) => Err(e.0),
        (Some(u), Ok(name)) => Ok((u.clone(), name)),
    };
    let (user, name) = match checked {
        Ok(ok) => ok,
        Err(error) => {
            let token_form = TokenFormState {
                user_id,
                name: form.name,
                error: Some(error),
            };
            let user_form = UserFormState {
                role: "viewer".into(),
                ..Default::default()
            };
            return page(
                layout,
                &state,
                &principal,
                user_form,
                token_form,
                None,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let secret = Secret::generate(API_PREFIX);
    let mut tx = state.pool.begin().await?;
    let id = crate::db::tokens::create_api(
        &mut tx,
        user.id,
        &name,
        &secret.hash(),
        Some(principal.user_id),
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            &principal,
            "token.create",
            format!("user:{}", user.name),
            Outcome::Ok,
        )
        .detail(format!("token {id} ({})", name.as_str()))
        .from_ip(source_ip(&req)),
    )
    .await?;
    tx.commit().await?;
    let new_token = NewToken {
        id,
        user_name: user.name,
        secret: secret.expose().to_owned(),
    };
    let user_form = UserFormState {
        role: "viewer".into(),
        ..Default::default()
    };
    page(
        layout,
        &state,
        &principal,
        user_form,
        TokenFormState::default(),
        Some(new_token),
        StatusCode::CREATED,
    )
    .await
}

pub async fn revoke_token(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let token = crate::db::tokens::find(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no API token with id {id}.")))?;
    let mut tx = state.pool.begin().await?;
    let changed = crate::db::tokens::revoke(&mut *tx, id).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            &principal,
            "token.revoke",
            format!("user:{}", token.user_name),
            Outcome::Ok,
        )
        .detail(format!(
            "token {id} ({}){}",
            token.name,
            if changed { "" } else { ", already revoked" }
        ))
        .from_ip(source_ip(&req)),
    )
    .await?;
    tx.commit().await?;
    flash(
        &session,
        format!(
            "Revoked token {id} ({}) of {}.",
            token.name, token.user_name
        ),
    );
    Ok(see_other("/users"))
}

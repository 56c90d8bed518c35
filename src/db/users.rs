use sqlx::{PgConnection, PgExecutor, PgPool};
use time::OffsetDateTime;

use crate::domain::{Role, UserName};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: RoleColumn,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: OffsetDateTime,
    pub last_login_at: Option<OffsetDateTime>,
}

/// The `role` column, checked by the database to be one of the three roles.
#[derive(Debug, Clone, Copy)]
pub struct RoleColumn(pub Role);

impl TryFrom<String> for RoleColumn {
    type Error = crate::domain::ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse().map(RoleColumn)
    }
}

impl UserRow {
    pub fn role(&self) -> Role {
        self.role.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("A user named {0:?} already exists.")]
    NameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The columns of `UserRow`, spliced into literal queries (sqlx 0.9 takes only static SQL).
macro_rules! columns {
    () => {
        "id, name, role, password_hash, disabled, created_at, last_login_at"
    };
}

pub async fn create(
    conn: &mut PgConnection,
    name: &UserName,
    role: Role,
    password_hash: &str,
) -> Result<UserRow, CreateUserError> {
    let result = sqlx::query_as::<_, UserRow>(concat!(
        "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3) RETURNING ",
        columns!()
    ))
    .bind(name.as_str())
    .bind(role.as_str())
    .bind(password_hash)
    .fetch_one(conn)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(CreateUserError::NameTaken(name.as_str().to_owned()))
        }
        other => Ok(other?),
    }
}

pub async fn find_by_name(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM users WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM users ORDER BY name"))
        .fetch_all(pool)
        .await
}

pub async fn set_disabled(db: impl PgExecutor<'_>, id: i64, disabled: bool) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE users SET disabled = $2 WHERE id = $1 AND disabled <> $2")
        .bind(id)
        .bind(disabled)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_password(db: impl PgExecutor<'_>, id: i64, hash: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn touch_login(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET last_login_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Creates `admin` with the given password hash when there are no users at all. Safe when
/// several processes start at once: the advisory lock makes the check-and-insert atomic.
pub async fn create_initial_admin(pool: &PgPool, password_hash: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.initial_admin'))")
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(false);
    }
    sqlx::query("INSERT INTO users (name, role, password_hash) VALUES ('admin', 'admin', $1)")
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    super::audit::record(
        &mut *tx,
        super::audit::AuditEvent::system("user.create", "user:admin", super::audit::Outcome::Ok)
            .detail("initial admin created at first start"),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await
}

//! The audit log: every state-changing action, who did it, to what, and how it ended.

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

use crate::auth::Principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The action was tried and did not succeed (a wrong password, a provider error).
    Failed,
    /// The action was not allowed to run (throttled, forbidden by state).
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    actor_id: Option<i64>,
    actor: String,
    action: String,
    target: String,
    outcome: Outcome,
    detail: String,
    source_ip: Option<String>,
}

impl AuditEvent {
    pub fn by(
        principal: &Principal,
        action: &str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self::new(
            Some(principal.user_id),
            &principal.name,
            action,
            target,
            outcome,
        )
    }

    pub fn by_user(
        user_id: i64,
        name: &str,
        action: &str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self::new(Some(user_id), name, action, target, outcome)
    }

    /// An action whose actor is known only by the name it gave (a failed login).
    pub fn by_name(name: &str, action: &str, target: impl Into<String>, outcome: Outcome) -> Self {
        Self::new(None, name, action, target, outcome)
    }

    pub fn by_cli(action: &str, target: impl Into<String>, outcome: Outcome) -> Self {
        Self::new(None, "cli", action, target, outcome)
    }

    pub fn system(action: &str, target: impl Into<String>, outcome: Outcome) -> Self {
        Self::new(None, "kiln", action, target, outcome)
    }

    fn new(
        actor_id: Option<i64>,
        actor: &str,
        action: &str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            actor_id,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.into(),
            outcome,
            detail: String::new(),
            source_ip: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn from_ip(mut self, ip: Option<String>) -> Self {
        self.source_ip = ip;
        self
    }
}

pub async fn record(db: impl PgExecutor<'_>, event: AuditEvent) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (actor_id, actor, action, target, result, detail, source_ip)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.actor_id)
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(event.outcome.as_str())
    .bind(&event.detail)
    .bind(&event.source_ip)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
    pub source_ip: Option<String>,
}

/// The newest events about one target (an image's or a server's audit trail).
pub async fn for_target(pool: &PgPool, target: &str, limit: i64) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, result, detail, source_ip FROM audit_events
         WHERE target = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Newest first; `before` is the id of the last row of the previous page (keyset pagination,
/// so deep pages cost the same as the first). Returns one row more than `limit` when there
/// is a next page.
pub async fn page(pool: &PgPool, before: Option<i64>, limit: i64) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, result, detail, source_ip FROM audit_events
         WHERE ($1::BIGINT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

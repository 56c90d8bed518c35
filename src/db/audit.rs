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

/// What the Audit page and `GET /api/v1/audit` filter by; None does not filter.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// An action ("rollout.rollback"), or its family ("rollout": every "rollout.…").
    pub action: Option<String>,
    /// Who did it, exactly ("dana", "system").
    pub actor: Option<String>,
    /// A target ("server:i-0abc"), or a kind of target ("server": every "server:…").
    pub target: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

/// The events of the rollouts that touched a server and name it in their detail ("batch 1:
/// disabled i-0abc, i-0def": a rollout's events are about the rollout, their servers named
/// in a sentence), newest first.
pub async fn of_rollouts_naming(
    pool: &PgPool,
    server_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, result, detail, source_ip FROM audit_events
         WHERE target IN (SELECT 'rollout:' || rollout_id FROM rollout_servers WHERE server_id = $1)
           AND strpos(detail, $1) > 0
         ORDER BY id DESC LIMIT $2",
    )
    .bind(server_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Events matching `filter`, newest first; `before` is the id of the last row of the previous
/// page (keyset pagination, so deep pages cost the same as the first); one row more than
/// `limit` when there is a next page. A family or kind matches by prefix, compared as
/// text (no LIKE: what the user typed is never a pattern).
pub async fn search(
    pool: &PgPool,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, result, detail, source_ip FROM audit_events
         WHERE ($1::BIGINT IS NULL OR id < $1)
           AND ($2::TEXT IS NULL OR action = $2 OR left(action, length($2) + 1) = $2 || '.')
           AND ($3::TEXT IS NULL OR actor = $3)
           AND ($4::TEXT IS NULL OR target = $4 OR left(target, length($4) + 1) = $4 || ':')
           AND ($5::TIMESTAMPTZ IS NULL OR at >= $5)
           AND ($6::TIMESTAMPTZ IS NULL OR at < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(before)
    .bind(&filter.action)
    .bind(&filter.actor)
    .bind(&filter.target)
    .bind(filter.from)
    .bind(filter.until)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

/// Routine events the Overview folds into one line per actor ("150 jobs enqueued by
/// ci-bot"), so that releases, rollbacks and users' changes stay in sight.
pub const ROUTINE: [&str; 4] = ["job.enqueue", "agent.register", "login", "logout"];

/// Routine events folded: per action and actor, how many and the newest, since `since`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Folded {
    pub action: String,
    pub actor: String,
    pub n: i64,
    pub last_at: OffsetDateTime,
}

/// The newest `limit` events that are not routine, and the routine ones since the oldest of
/// them, folded (all of them when fewer than `limit` notable events exist).
pub async fn overview(pool: &PgPool, limit: i64) -> sqlx::Result<(Vec<AuditRow>, Vec<Folded>)> {
    let notable: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at, actor, action, target, result, detail, source_ip FROM audit_events
         WHERE action <> ALL($1) ORDER BY id DESC LIMIT $2",
    )
    .bind(&ROUTINE[..])
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let since = if notable.len() as i64 == limit {
        notable.last().map(|r| r.id)
    } else {
        None
    };
    let folded = sqlx::query_as(
        "SELECT action, actor, count(*) AS n, max(at) AS last_at FROM audit_events
         WHERE action = ANY($1) AND ($2::BIGINT IS NULL OR id > $2)
         GROUP BY action, actor ORDER BY max(id) DESC",
    )
    .bind(&ROUTINE[..])
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok((notable, folded))
}

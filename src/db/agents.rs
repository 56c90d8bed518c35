//! The agents: one per server that registered, with its hashed per-server token and its
//! latest system figures.

use sqlx::{PgConnection, PgExecutor};

use crate::domain::{ServerMode, ServerState};

use crate::agent::wire::SystemMetrics;

/// Whether an enrollment token is live (known, not expired) and, when it was made for one
/// instance, made for this one.
pub async fn enrollment_valid(
    db: impl PgExecutor<'_>,
    token_hash: &str,
    instance_id: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enrollment_tokens
                        WHERE token_hash = $1 AND expires_at > now()
                          AND (instance_id IS NULL OR instance_id = $2))",
    )
    .bind(token_hash)
    .bind(instance_id)
    .fetch_one(db)
    .await
}

pub struct NewAgent<'a> {
    pub server_id: &'a str,
    pub token_hash: &'a str,
    pub version: &'a str,
    pub slots: i32,
    pub hostname: &'a str,
}

/// Records (or replaces: a restarted agent registers again) a server's agent.
pub async fn upsert(conn: &mut PgConnection, agent: &NewAgent<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO agents (server_id, token_hash, version, slots, hostname, last_heartbeat_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (server_id) DO UPDATE SET token_hash = EXCLUDED.token_hash, version = EXCLUDED.version,
             slots = EXCLUDED.slots, hostname = EXCLUDED.hostname, registered_at = now(),
             last_heartbeat_at = now()",
    )
    .bind(agent.server_id)
    .bind(agent.token_hash)
    .bind(agent.version)
    .bind(agent.slots)
    .bind(agent.hostname)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE servers SET last_seen_at = now() WHERE id = $1")
        .bind(agent.server_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The server an agent token belongs to.
pub async fn server_of(db: impl PgExecutor<'_>, token_hash: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT server_id FROM agents WHERE token_hash = $1")
        .bind(token_hash)
        .fetch_optional(db)
        .await
}

/// The server's mode and state as its agent should see them (None: the server is gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Standing {
    pub mode: ServerMode,
    pub state: ServerState,
}

impl Standing {
    /// Terminated, or on its way there (a terminate task holds it): the agent should exit.
    pub fn terminating(&self) -> bool {
        match self.state {
            ServerState::Terminated
            | ServerState::ShuttingDown
            | ServerState::Stopping
            | ServerState::Stopped => true,
            ServerState::Pending | ServerState::Running => false,
        }
    }
}

/// A heartbeat: the agent's figures and the server's last-seen time, in one statement;
/// returns where the server stands.
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    server_id: &str,
    m: &SystemMetrics,
) -> sqlx::Result<Option<Standing>> {
    sqlx::query_as(
        "WITH a AS (
             UPDATE agents SET last_heartbeat_at = now(), cpu_percent = $2, mem_percent = $3,
                 load1 = $4, disk_percent = $5
             WHERE server_id = $1
         )
         UPDATE servers SET last_seen_at = now() WHERE id = $1 RETURNING mode, state",
    )
    .bind(server_id)
    .bind(m.cpu_percent)
    .bind(m.mem_percent)
    .bind(m.load1)
    .bind(m.disk_percent)
    .fetch_optional(db)
    .await
}

pub async fn standing(db: impl PgExecutor<'_>, server_id: &str) -> sqlx::Result<Option<Standing>> {
    sqlx::query_as("SELECT mode, state FROM servers WHERE id = $1")
        .bind(server_id)
        .fetch_optional(db)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub version: String,
    pub slots: i32,
    pub hostname: String,
    pub cpu_percent: Option<f64>,
    pub mem_percent: Option<f64>,
    pub load1: Option<f64>,
    pub disk_percent: Option<f64>,
}

pub async fn find(db: impl PgExecutor<'_>, server_id: &str) -> sqlx::Result<Option<AgentRow>> {
    sqlx::query_as(
        "SELECT version, slots, hostname, cpu_percent, mem_percent, load1, disk_percent FROM agents WHERE server_id = $1",
    )
    .bind(server_id)
    .fetch_optional(db)
    .await
}

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
    // An agent runs only on a running server: a launch recorded as pending need not wait for
    // the next reconcile (up to KILN_RECONCILE_INTERVAL) before a rollout counts it healthy.
    sqlx::query(
        "UPDATE servers SET last_seen_at = now(),
             state = CASE WHEN state = 'pending' THEN 'running' ELSE state END,
             updated_at = CASE WHEN state = 'pending' THEN now() ELSE updated_at END
         WHERE id = $1",
    )
    .bind(agent.server_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The server an agent token belongs to, and where it stands.
pub async fn server_of(
    db: impl PgExecutor<'_>,
    token_hash: &str,
) -> sqlx::Result<Option<(String, Standing)>> {
    let row: Option<(String, ServerMode, ServerState)> = sqlx::query_as(
        "SELECT a.server_id, s.mode, s.state FROM agents a JOIN servers s ON s.id = a.server_id
         WHERE a.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(server, mode, state)| (server, Standing { mode, state })))
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

/// One server's heartbeat as a flush writes it: `ago` is how long before the statement the
/// console heard it (the database's clock stamps it, so consoles' clocks do not matter).
pub struct Heard<'a> {
    pub server_id: &'a str,
    pub ago: std::time::Duration,
    pub metrics: &'a SystemMetrics,
}

/// Writes a batch of heartbeats (agents' figures and times, servers' `last_seen_at`) and, in
/// the same statement, returns the server and standing of every token in `verify` that is
/// still an agent's. Rows are locked in server order, so two consoles' flushes cannot
/// deadlock; a time never moves backwards (a later heartbeat may have reached another
/// console).
pub async fn heartbeats(
    db: impl PgExecutor<'_>,
    beats: &[Heard<'_>],
    verify: &[String],
) -> sqlx::Result<Vec<(String, String, Standing)>> {
    let mut ids = Vec::with_capacity(beats.len());
    let mut ago = Vec::with_capacity(beats.len());
    let (mut cpu, mut mem, mut load1, mut disk) = (vec![], vec![], vec![], vec![]);
    for b in beats {
        ids.push(b.server_id);
        ago.push(b.ago.as_secs_f64());
        cpu.push(b.metrics.cpu_percent);
        mem.push(b.metrics.mem_percent);
        load1.push(b.metrics.load1);
        disk.push(b.metrics.disk_percent);
    }
    let rows: Vec<(String, String, ServerMode, ServerState)> = sqlx::query_as(
        "WITH beat AS (
             SELECT b.server_id, now() - make_interval(secs => b.ago) AS at, b.cpu, b.mem, b.load1, b.disk
             FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[])
                  AS b(server_id, ago, cpu, mem, load1, disk)
         ),
         agent_rows AS (
             SELECT server_id FROM agents WHERE server_id = ANY($1) ORDER BY server_id FOR NO KEY UPDATE
         ),
         a AS (
             UPDATE agents SET last_heartbeat_at = GREATEST(agents.last_heartbeat_at, b.at),
                 cpu_percent = b.cpu, mem_percent = b.mem, load1 = b.load1, disk_percent = b.disk
             FROM beat b JOIN agent_rows USING (server_id)
             WHERE agents.server_id = b.server_id
         ),
         server_rows AS (
             SELECT id FROM servers WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE
         ),
         s AS (
             UPDATE servers SET last_seen_at = GREATEST(servers.last_seen_at, b.at)
             FROM beat b JOIN server_rows ON server_rows.id = b.server_id
             WHERE servers.id = b.server_id
         )
         SELECT ag.token_hash, ag.server_id, sv.mode, sv.state
         FROM agents ag JOIN servers sv ON sv.id = ag.server_id
         WHERE ag.token_hash = ANY($7)",
    )
    .bind(&ids)
    .bind(&ago)
    .bind(&cpu)
    .bind(&mem)
    .bind(&load1)
    .bind(&disk)
    .bind(verify)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(hash, server, mode, state)| (hash, server, Standing { mode, state }))
        .collect())
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

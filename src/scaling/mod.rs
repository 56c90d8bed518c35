//! Autoscaling on queue saturation: every `KILN_SCALING_INTERVAL`, one console at a time,
//! read a snapshot (workers, the queue, launches in flight, rollouts, blocking alerts), call
//! the pure `decide`, and apply it — a launch or a drain — in the transaction that records the
//! decision. The same shape as the rollouts and the alert pass.
//!
//! - `decide.rs` — **the policy as a pure function**, table-tested;
//! - this file — the settings (read, validated and written whole, audited), the snapshot,
//!   applying a decision, the loop, and the preview (a decision not applied).
//!
//! Scale-in never interrupts work: the idle servers chosen are disabled by one statement that
//! checks again that they run no job (the claim statement refuses disabled servers), then
//! terminated gracefully (a job that slipped in is drained, not killed). A scale-out's launch
//! token is derived from the decision's id, so a console killed mid-decision never launches
//! twice: the decision and its launch commit together, or neither does.

pub mod decide;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::scaling::ScalingSettings;
use crate::domain::{ServerMode, ServerState};
use crate::error::Error;
use crate::fleet::launch_servers::LaunchServers;
use decide::{Action, Decision, Memory, Snapshot, Worker};

pub const LOCK: i64 = 0x006b_696c_6e73_636c; // "kilnscl"

pub use crate::db::scaling::settings;

/// Replaces the settings, validated as a whole; audited with what changed.
pub async fn save(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    new: &ScalingSettings,
    cap: u32,
) -> Result<ScalingSettings, Error> {
    new.validate(cap)?;
    let mut tx = pool.begin().await?;
    let before = settings(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO scaling_settings (id, settings, updated_by) VALUES (true, $1, $2)
         ON CONFLICT (id) DO UPDATE SET settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(sqlx::types::Json(new))
    .bind(&principal.name)
    .execute(&mut *tx)
    .await?;
    let action = if before.paused != new.paused && before.enabled == new.enabled {
        if new.paused {
            "scaling.pause"
        } else {
            "scaling.resume"
        }
    } else {
        "scaling.settings"
    };
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, action, "scaling", Outcome::Ok)
            .detail(serde_json::json!({"before": before, "after": new}).to_string())
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(new.clone())
}

/// What the autoscaler knows, read in the caller's transaction with the database's clock.
pub async fn snapshot(conn: &mut PgConnection, heartbeat_s: u64) -> sqlx::Result<Snapshot> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    type Row = (
        String,
        ServerState,
        ServerMode,
        OffsetDateTime,
        i64,
        bool,
        Option<bool>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.id, s.state, s.mode, s.launched_at,
                (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id),
                a.server_id IS NOT NULL,
                a.last_heartbeat_at > now() - make_interval(secs => $1)
         FROM servers s LEFT JOIN agents a ON a.server_id = s.id
         WHERE s.purpose = 'worker' AND s.state <> 'terminated'",
    )
    .bind(crate::domain::agent_health_window(heartbeat_s).as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    let (queued, oldest, busy, launching, slots): (i64, Option<f64>, i64, i64, Option<i32>) =
        sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM jobs WHERE state = 'queued' AND pinned_server_id IS NULL),
                (SELECT extract(epoch FROM now() - min(created_at))::FLOAT8 FROM jobs
                  WHERE state = 'queued' AND pinned_server_id IS NULL),
                (SELECT count(*) FROM jobs j JOIN servers s ON s.id = j.server_id
                  WHERE j.state = 'running' AND j.pinned_server_id IS NULL AND s.purpose = 'worker'),
                (SELECT COALESCE(sum(l.count - (SELECT count(*) FROM servers s WHERE s.launch_id = l.id)), 0)::BIGINT
                  FROM launches l WHERE l.state IN ('pending', 'running') AND l.purpose = 'worker'),
                (SELECT mode() WITHIN GROUP (ORDER BY a.slots) FROM agents a
                  JOIN servers s ON s.id = a.server_id WHERE s.state <> 'terminated' AND s.purpose = 'worker')",
        )
        .fetch_one(&mut *conn)
        .await?;
    let rollout_active = crate::db::rollouts::active(&mut *conn).await?.is_some();
    let blocked_by: Option<String> = sqlx::query_scalar(
        "SELECT r.name FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id
         WHERE s.state = 'firing' AND r.blocks_changes ORDER BY s.since LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let memory: (Option<OffsetDateTime>, Option<OffsetDateTime>) =
        sqlx::query_as("SELECT below_since, last_scale_out_at FROM scaling_state")
            .fetch_one(&mut *conn)
            .await?;
    // Stale inputs: workers with agents, and not one of them heard from lately.
    let with_agents = rows
        .iter()
        .filter(|r| r.5 && r.1 == ServerState::Running)
        .count();
    let fresh = rows.iter().filter(|r| r.6 == Some(true)).count();
    let stale = (with_agents > 0 && fresh == 0).then(|| {
        format!(
            "none of the {with_agents} workers' agents has sent a heartbeat in the last {} s",
            crate::domain::agent_health_window(heartbeat_s).as_secs()
        )
    });
    Ok(Snapshot {
        now: now.unix_timestamp(),
        workers: rows
            .into_iter()
            .map(
                |(id, state, mode, launched_at, running_jobs, has_agent, _)| Worker {
                    id,
                    state,
                    mode,
                    launched_at: launched_at.unix_timestamp(),
                    running_jobs,
                    has_agent,
                },
            )
            .collect(),
        launching: launching.max(0),
        queued,
        oldest_queued_s: oldest.map(|s| s as i64),
        busy,
        agent_slots: slots.map(|s| s.max(1) as u32),
        stale,
        rollout_active,
        blocked_by,
        memory: Memory {
            below_since: memory.0.map(OffsetDateTime::unix_timestamp),
            last_scale_out_at: memory.1.map(OffsetDateTime::unix_timestamp),
        },
    })
}

fn at(t: Option<i64>) -> Option<OffsetDateTime> {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
}

/// What the settings of the process say about launches and drains.
#[derive(Debug, Clone)]
pub struct Env {
    pub heartbeat_s: u64,
    pub drain_timeout_s: u64,
    pub instance_type: String,
}

impl Env {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Env {
            heartbeat_s: s.heartbeat,
            drain_timeout_s: s.drain_timeout,
            instance_type: s.instance_types.first().cloned().unwrap_or_default(),
        }
    }
}

/// Applies a decision in the caller's transaction: records it (only when it does something,
/// or says something new), and launches or drains. Returns the decision's id if recorded.
async fn apply(conn: &mut PgConnection, d: &Decision, env: &Env) -> Result<Option<i64>, Error> {
    sqlx::query("UPDATE scaling_state SET below_since = $1, last_scale_out_at = $2")
        .bind(at(d.memory.below_since))
        .bind(at(d.memory.last_scale_out_at))
        .execute(&mut *conn)
        .await?;
    let last: Option<String> =
        sqlx::query_scalar("SELECT reason FROM scaling_decisions ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let acts = matches!(d.action, Action::ScaleOut { .. } | Action::ScaleIn { .. });
    // A waiting decision's sentence changes every pass ("for 30 s of 600 s"): its first
    // words say whether it is news.
    let gist = |r: &str| {
        r.split([':', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
            .next()
            .unwrap_or("")
            .to_owned()
    };
    if !acts && last.as_deref().map(gist) == Some(gist(&d.reason)) {
        return Ok(None);
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO scaling_decisions (desired_before, desired_after, action, reason, inputs)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(d.desired_before as i32)
    .bind(d.desired_after as i32)
    .bind(d.action.word())
    .bind(&d.reason)
    .bind(sqlx::types::Json(&d.inputs))
    .fetch_one(&mut *conn)
    .await?;
    match &d.action {
        Action::ScaleOut { count } if *count > 0 => {
            // While a rollout runs, launch what it rolls out to; otherwise the current image.
            let image = match crate::db::rollouts::active(&mut *conn).await? {
                Some(r) => Some(r.to_image_id),
                None => crate::db::images::current_id(&mut *conn).await?,
            };
            let Some(image) = image else {
                sqlx::query("UPDATE scaling_decisions SET reason = reason || ' — but there is no current image to launch' WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                return Ok(Some(id));
            };
            let launch = crate::db::servers::insert_launch(
                conn,
                &format!("scale-{id}"),
                &image,
                *count as i32,
                &env.instance_type,
                "autoscaler",
            )
            .await?;
            crate::tasks::enqueue(
                conn,
                &LaunchServers {
                    launch_id: launch.id,
                },
                None,
            )
            .await?;
            sqlx::query("UPDATE scaling_decisions SET launch_id = $2 WHERE id = $1")
                .bind(id)
                .bind(launch.id)
                .execute(&mut *conn)
                .await?;
            audit::record(
                &mut *conn,
                AuditEvent::system(
                    "scaling.scale_out",
                    format!("launch:{}", launch.id),
                    Outcome::Ok,
                )
                .detail(d.reason.clone()),
            )
            .await?;
        }
        Action::ScaleIn { servers } => {
            // Disabled only if still idle, in the statement that checks it.
            let taken: Vec<String> = sqlx::query_scalar(
                "UPDATE servers s SET mode = 'disabled', updated_at = now()
                 WHERE s.id = ANY($1) AND s.mode = 'enabled' AND s.purpose = 'worker'
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id)
                 RETURNING s.id",
            )
            .bind(servers)
            .fetch_all(&mut *conn)
            .await?;
            let drain_until =
                OffsetDateTime::now_utc().unix_timestamp() + env.drain_timeout_s as i64;
            for server in &taken {
                crate::fleet::terminate_server::request(
                    &mut *conn,
                    server,
                    false,
                    Some(drain_until),
                )
                .await?;
            }
            sqlx::query("UPDATE scaling_decisions SET server_ids = $2 WHERE id = $1")
                .bind(id)
                .bind(&taken)
                .execute(&mut *conn)
                .await?;
            audit::record(
                &mut *conn,
                AuditEvent::system("scaling.scale_in", "scaling", Outcome::Ok).detail(format!(
                    "{} — {}",
                    d.reason,
                    taken.join(", ")
                )),
            )
            .await?;
        }
        _ => {}
    }
    Ok(Some(id))
}

/// One decision, applied; None when another console holds the lock.
pub async fn run_once(pool: &PgPool, env: &Env) -> anyhow::Result<Option<Decision>> {
    crate::db::exclusively(pool, LOCK, || async {
        let mut tx = pool.begin().await?;
        let settings = settings(&mut *tx).await?;
        let snap = snapshot(&mut tx, env.heartbeat_s).await?;
        let d = decide::decide(&snap, &settings);
        apply(&mut tx, &d, env).await.map_err(anyhow::Error::from)?;
        tx.commit().await?;
        Ok(d)
    })
    .await
}

/// What the autoscaler would do now, and why, without doing it.
pub async fn preview(pool: &PgPool, heartbeat_s: u64) -> sqlx::Result<Decision> {
    let mut tx = pool.begin().await?;
    let settings = settings(&mut *tx).await?;
    let snap = snapshot(&mut tx, heartbeat_s).await?;
    tx.rollback().await?;
    Ok(decide::decide(&snap, &settings))
}

/// Decides every interval until stopped.
pub async fn run(
    pool: PgPool,
    env: Env,
    every: Duration,
    registry: Arc<crate::telemetry::prometheus::Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    registry.describe(
        "kiln_scaling_decisions_total",
        "Autoscaling decisions by action.",
    );
    loop {
        let started = Instant::now();
        match run_once(&pool, &env).await {
            Ok(Some(d)) => {
                registry.inc(
                    "kiln_scaling_decisions_total",
                    &[("action", d.action.word())],
                );
                if !matches!(d.action, Action::None | Action::Skip) {
                    tracing::info!(action = d.action.word(), reason = %d.reason, "autoscaling");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "autoscaling decision failed; next one soon"
            ),
        }
        let wait = every.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DecisionRow {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub desired_before: i32,
    pub desired_after: i32,
    pub action: String,
    pub reason: String,
    pub inputs: sqlx::types::Json<serde_json::Value>,
    pub launch_id: Option<i64>,
    pub server_ids: Vec<String>,
}

pub async fn decisions(
    db: impl sqlx::PgExecutor<'_>,
    limit: i64,
) -> sqlx::Result<Vec<DecisionRow>> {
    sqlx::query_as(
        "SELECT id, at, desired_before, desired_after, action, reason, inputs, launch_id, server_ids
         FROM scaling_decisions ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

//! Autoscaling on queue saturation, and recycling: every `KILN_SCALING_INTERVAL`, one console
//! at a time, read a snapshot (workers, the queue, launches in flight, rollouts, bakes,
//! blocking alerts, replacements in flight), call the pure `decide` and `recycle::plan`, and
//! apply them — launches, drains — in the transaction that read the snapshot and records the
//! decision. The same shape as the rollouts and the alert pass.
//!
//! - `decide.rs` — **the scaler's policy as a pure function**, table-tested;
//! - `recycle.rs` — **recycling's policy** (surge first, a share at a time), table-tested;
//! - `snapshot.rs` — the pass's one read (and its lock); `apply.rs` — its effects;
//! - this file — the settings (read, validated and written whole, audited), the pass, the
//!   loop, the preview (a pass not applied) and the decisions list.
//!
//! Scale-in never interrupts work: the idle servers chosen are disabled by one statement that
//! checks again that they run no job (the claim statement refuses disabled servers), then
//! terminated gracefully (a job that slipped in is drained, not killed). A scale-out's launch
//! token is derived from the decision's id, so a console killed mid-decision never launches
//! twice: the decision and its launch commit together, or neither does.

mod apply;
pub mod decide;
pub mod recycle;
pub mod snapshot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::scaling::ScalingSettings;
use crate::error::Error;
use decide::{Action, Decision};
use recycle::Plan;

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

/// What the settings of the process say about launches and drains.
#[derive(Debug, Clone)]
pub struct Env {
    pub heartbeat_s: u64,
    pub drain_timeout_s: u64,
    /// How long a recycling replacement has to come up (KILN_HEALTH_TIMEOUT).
    pub boot_timeout_s: u64,
    /// Seconds between passes (KILN_SCALING_INTERVAL).
    pub interval_s: u64,
    pub instance_type: String,
}

impl Env {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Env {
            heartbeat_s: s.heartbeat,
            drain_timeout_s: s.drain_timeout,
            boot_timeout_s: s.health_timeout,
            interval_s: s.scaling_interval,
            instance_type: s.instance_types.first().cloned().unwrap_or_default(),
        }
    }
}

/// One pass — a scaling decision and recycling's steps — applied; None when another
/// console holds the lock.
pub async fn run_once(pool: &PgPool, env: &Env) -> anyhow::Result<Option<Decision>> {
    let mut tx = pool.begin().await?;
    let Some(read) = snapshot::read(&mut tx, Some(LOCK), env).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let d = decide::decide(&read.scaling, &read.settings);
    let plan = recycle::plan(&read.recycling, &read.settings);
    apply::apply(&mut tx, &read, &d, &plan, env)
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    Ok(Some(d))
}

/// What a pass would do now, and why, without doing it.
pub struct Preview {
    pub decision: Decision,
    pub recycling: Plan,
}

pub async fn preview(pool: &PgPool, env: &Env) -> sqlx::Result<Preview> {
    let mut tx = pool.begin().await?;
    let read = snapshot::read(&mut tx, None, env)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    tx.rollback().await?;
    Ok(Preview {
        decision: decide::decide(&read.scaling, &read.settings),
        recycling: recycle::plan(&read.recycling, &read.settings),
    })
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

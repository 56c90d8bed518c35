//! What one pass knows, read in one statement with the database's clock: the settings, the
//! workers, the queue, launches in flight, what holds changes back (a rollout, a bake, a
//! firing alert that blocks changes), the scaler's memory, and recycling's replacements in
//! flight. The pass's lock is taken by the same statement (a transaction-scoped advisory
//! lock): another console's pass reads nothing and decides nothing.

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::decide::{Memory, Snapshot, Worker};
use super::recycle::{InFlight, RecycleSnapshot};
use crate::domain::scaling::ScalingSettings;
use crate::domain::{LaunchState, RolloutState, ServerState};

/// Everything a pass decides from.
#[derive(Debug, Clone)]
pub struct Read {
    pub settings: ScalingSettings,
    pub scaling: Snapshot,
    pub recycling: RecycleSnapshot,
    /// What the autoscaler launches: the image the fleet is known to run well on — a
    /// rollout's source image while it is pending or paused (waiting for a human) or while a
    /// release's canary has not been let go (the new image is not proven yet), its target
    /// once it runs past that, otherwise the current image.
    pub launch_image: Option<String>,
    /// What recycling launches: the current image.
    pub current_image: Option<String>,
    /// The last recorded scaling decision's sentence (recycling's are not counted).
    pub last_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    now: OffsetDateTime,
    settings: Option<Json<ScalingSettings>>,
    workers: Json<Vec<WorkerRow>>,
    queued: i64,
    oldest_s: Option<f64>,
    busy: i64,
    launching: i64,
    slots: Option<i32>,
    rollout_state: Option<RolloutState>,
    rollout_image: Option<String>,
    current_image: Option<String>,
    blocking_alert: Option<String>,
    bake_running: bool,
    below_since: Option<OffsetDateTime>,
    last_scale_out_at: Option<OffsetDateTime>,
    last_pass_at: Option<OffsetDateTime>,
    last_reason: Option<String>,
    in_flight: Json<Vec<InFlightRow>>,
    failed_lately: Json<Vec<(String, i64)>>,
}

#[derive(serde::Deserialize)]
struct WorkerRow {
    #[serde(flatten)]
    worker: Worker,
    fresh: bool,
}

#[derive(serde::Deserialize)]
struct InFlightRow {
    id: i64,
    old: String,
    old_in_service: bool,
    launch: Option<LaunchState>,
    launch_error: Option<String>,
    new: Option<String>,
    new_state: Option<ServerState>,
    new_ready: Option<bool>,
    started_at: i64,
}

const SQL: &str = "
SELECT now() AS now,
  (SELECT settings FROM scaling_settings) AS settings,
  (SELECT COALESCE(json_agg(json_build_object(
       'id', s.id, 'state', s.state, 'mode', s.mode,
       'launched_at', extract(epoch FROM s.launched_at)::BIGINT,
       'running_jobs', (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id),
       'has_agent', a.server_id IS NOT NULL,
       'fresh', COALESCE(a.last_heartbeat_at > now() - make_interval(secs => $2), false),
       'being_replaced', EXISTS (SELECT 1 FROM recycles r WHERE r.server_id = s.id AND r.state = 'replacing'))), '[]')
   FROM servers s LEFT JOIN agents a ON a.server_id = s.id
   WHERE s.purpose = 'worker' AND s.state <> 'terminated') AS workers,
  (SELECT count(*) FROM jobs WHERE state = 'queued' AND pinned_server_id IS NULL) AS queued,
  (SELECT extract(epoch FROM now() - min(created_at))::FLOAT8 FROM jobs
    WHERE state = 'queued' AND pinned_server_id IS NULL) AS oldest_s,
  (SELECT count(*) FROM jobs j JOIN servers s ON s.id = j.server_id
    WHERE j.state = 'running' AND j.pinned_server_id IS NULL AND s.purpose = 'worker') AS busy,
  (SELECT COALESCE(sum(l.count - (SELECT count(*) FROM servers s WHERE s.launch_id = l.id)), 0)::BIGINT
    FROM launches l WHERE l.state IN ('pending', 'running') AND l.purpose = 'worker') AS launching,
  (SELECT mode() WITHIN GROUP (ORDER BY a.slots) FROM agents a
    JOIN servers s ON s.id = a.server_id WHERE s.state <> 'terminated' AND s.purpose = 'worker') AS slots,
  ro.state AS rollout_state,
  CASE WHEN ro.state = 'running' AND (ro.canary = 0 OR ro.approved_through >= 1) THEN ro.to_image_id
       ELSE COALESCE(ro.from_image_id, ro.to_image_id) END AS rollout_image,
  (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) AS current_image,
  (SELECT r.name FROM alert_states x JOIN alert_rules r ON r.id = x.rule_id
    WHERE x.state = 'firing' AND r.blocks_changes ORDER BY x.since LIMIT 1) AS blocking_alert,
  EXISTS (SELECT 1 FROM bakes WHERE state = 'running') AS bake_running,
  st.below_since, st.last_scale_out_at, st.last_pass_at,
  (SELECT reason FROM scaling_decisions WHERE action <> 'recycle' ORDER BY id DESC LIMIT 1) AS last_reason,
  (SELECT COALESCE(json_agg(json_build_object(
       'id', r.id, 'old', r.server_id,
       'old_in_service', o.mode = 'enabled' AND o.state IN ('pending', 'running'),
       'launch', l.state, 'launch_error', l.error,
       'new', n.id, 'new_state', n.state,
       'new_ready', n.state = 'running' AND n.mode = 'enabled' AND na.server_id IS NOT NULL,
       'started_at', extract(epoch FROM r.started_at)::BIGINT)), '[]')
   FROM recycles r JOIN servers o ON o.id = r.server_id
   LEFT JOIN launches l ON l.id = r.launch_id
   LEFT JOIN LATERAL (SELECT id, state, mode FROM servers WHERE launch_id = r.launch_id
                      ORDER BY launched_at DESC LIMIT 1) n ON true
   LEFT JOIN agents na ON na.server_id = n.id
   WHERE r.state = 'replacing') AS in_flight,
  (SELECT COALESCE(json_agg(json_build_array(server_id, extract(epoch FROM finished_at)::BIGINT)), '[]')
   FROM recycles WHERE state = 'failed' AND finished_at > now() - make_interval(secs => $3)) AS failed_lately
FROM scaling_state st
LEFT JOIN LATERAL (SELECT state, from_image_id, to_image_id, canary, approved_through FROM rollouts
                   WHERE state IN ('pending', 'running', 'paused') ORDER BY id DESC LIMIT 1) ro ON true
WHERE $1::BIGINT IS NULL OR pg_try_advisory_xact_lock($1)";

/// A pass this long after the previous one finds the scaler's memory stale.
pub fn behind_after_s(interval_s: u64) -> i64 {
    (interval_s * 3).max(60) as i64
}

/// Reads a pass's snapshot in the caller's transaction; with `lock`, only if this
/// transaction gets that advisory lock (None when another console holds it).
pub async fn read(
    conn: &mut PgConnection,
    lock: Option<i64>,
    env: &super::Env,
) -> sqlx::Result<Option<Read>> {
    let (heartbeat_s, boot_timeout_s) = (env.heartbeat_s, env.boot_timeout_s);
    let window = crate::domain::agent_health_window(heartbeat_s);
    let Some(row) = sqlx::query_as::<_, Row>(SQL)
        .bind(lock)
        .bind(window.as_secs_f64())
        .bind(super::recycle::RETRY_AFTER_S as f64)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let workers = row.workers.0;
    // Stale inputs: workers with agents, and not one of them heard from lately.
    let with_agents = workers
        .iter()
        .filter(|w| w.worker.has_agent && w.worker.state == ServerState::Running)
        .count();
    let fresh = workers.iter().filter(|w| w.fresh).count();
    let now = row.now.unix_timestamp();
    // The console was behind or down: what the scaler remembers (how long utilisation has
    // been low) was not watched meanwhile. One pass looks again before deciding.
    let behind = row
        .last_pass_at
        .map(|t| now - t.unix_timestamp())
        .filter(|gap| *gap > behind_after_s(env.interval_s));
    let stale = if let Some(gap) = behind {
        Some(format!(
            "the previous pass was {gap} s ago (the console was behind or down); looking again"
        ))
    } else {
        (with_agents > 0 && fresh == 0).then(|| {
            format!(
                "none of the {with_agents} workers' agents has sent a heartbeat in the last {} s",
                window.as_secs()
            )
        })
    };
    let workers: Vec<Worker> = workers.into_iter().map(|w| w.worker).collect();
    let held_by = match (&row.rollout_state, &row.blocking_alert) {
        (Some(_), _) => Some("a rollout is in progress".to_owned()),
        (None, Some(alert)) => Some(format!("alert {alert} is firing and blocks changes")),
        (None, None) if row.bake_running => Some("a bake is running".to_owned()),
        (None, None) => None,
    };
    let launch_image = row.rollout_image.or_else(|| row.current_image.clone());
    Ok(Some(Read {
        settings: row.settings.map(|s| s.0).unwrap_or_default(),
        recycling: RecycleSnapshot {
            now,
            workers: workers.clone(),
            in_flight: row
                .in_flight
                .0
                .into_iter()
                .map(|r| InFlight {
                    id: r.id,
                    old: r.old,
                    old_in_service: r.old_in_service,
                    launch: r.launch,
                    launch_error: r.launch_error.unwrap_or_default(),
                    new: r.new.zip(r.new_state),
                    new_ready: r.new_ready.unwrap_or(false),
                    started_at: r.started_at,
                })
                .collect(),
            failed_lately: row.failed_lately.0,
            held_by,
            boot_timeout_s: boot_timeout_s as i64,
            image_available: row.current_image.is_some(),
        },
        scaling: Snapshot {
            now,
            workers,
            launching: row.launching.max(0),
            queued: row.queued,
            oldest_queued_s: row.oldest_s.map(|s| s as i64),
            busy: row.busy,
            agent_slots: row.slots.map(|s| s.max(1) as u32),
            stale,
            rollout_active: row.rollout_state.is_some(),
            blocked_by: row.blocking_alert,
            memory: Memory {
                below_since: row
                    .below_since
                    .filter(|_| behind.is_none())
                    .map(OffsetDateTime::unix_timestamp),
                last_scale_out_at: row.last_scale_out_at.map(OffsetDateTime::unix_timestamp),
            },
        },
        launch_image,
        current_image: row.current_image,
        last_reason: row.last_reason,
    }))
}

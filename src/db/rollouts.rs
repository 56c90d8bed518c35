//! Rollouts, their batches and the servers they touched, as stored. The rules live in
//! `rollouts::decide`, the steps that apply them in `rollouts::advance`.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::release_plan::Plan;
use crate::domain::{
    Approval, DeadlineAction, InsufficientData, LaunchState, RolloutKind, RolloutPhase,
    RolloutRole, RolloutServerState, RolloutState, ServerMode, ServerState,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: i64,
    pub kind: RolloutKind,
    pub release_id: i64,
    pub from_image_id: Option<String>,
    pub to_image_id: String,
    pub state: RolloutState,
    pub reason: String,
    pub batch_size: i32,
    pub min_healthy_percent: i32,
    pub health_timeout_s: i32,
    pub drain_timeout_s: i32,
    pub grace_s: i32,
    pub fleet_size: i32,
    pub total: i32,
    pub replaced: i32,
    pub superseded_by: Option<i64>,
    pub started_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub cleaned_at: Option<OffsetDateTime>,
    // The release's plan (a rollback's is none).
    pub canary: i32,
    pub soak_s: i32,
    pub health_command: String,
    pub guard_any: bool,
    pub guard_rule_ids: Vec<i64>,
    pub approval: Approval,
    pub approval_deadline_s: i32,
    pub on_deadline: DeadlineAction,
    pub on_insufficient_data: InsufficientData,
    pub canary_p95_margin: f64,
    /// Batches let go after their soak time.
    pub approved_through: i32,
    pub phase: Option<RolloutPhase>,
    /// The rollback that undid this release.
    pub rolled_back_by: Option<i64>,
    /// The guarding alert rule that tripped it.
    pub tripped_rule_id: Option<i64>,
    /// Filled by the queries: the images' versions, for display.
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub from_name: Option<String>,
    pub to_name: Option<String>,
}

impl RolloutRow {
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    pub fn plan(&self) -> Plan {
        Plan {
            canary: self.canary,
            soak_s: self.soak_s,
            health_command: self.health_command.clone(),
            guard_any: self.guard_any,
            guard_rule_ids: self.guard_rule_ids.clone(),
            approval: self.approval,
            approval_deadline_s: self.approval_deadline_s,
            on_deadline: self.on_deadline,
            on_insufficient_data: self.on_insufficient_data,
            canary_p95_margin: self.canary_p95_margin,
        }
    }
}

macro_rules! select_rollouts {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.kind, r.release_id, r.from_image_id, r.to_image_id, r.state, r.reason, r.batch_size,
                    r.min_healthy_percent, r.health_timeout_s, r.drain_timeout_s, r.grace_s, r.fleet_size, r.total,
                    r.replaced, r.superseded_by, r.started_by, r.created_at, r.updated_at, r.finished_at, r.cleaned_at,
                    r.canary, r.soak_s, r.health_command, r.guard_any, r.guard_rule_ids, r.approval,
                    r.approval_deadline_s, r.on_deadline, r.on_insufficient_data, r.canary_p95_margin,
                    r.approved_through, r.phase, r.rolled_back_by, r.tripped_rule_id,
                    fi.version AS from_version, ti.version AS to_version, fi.name AS from_name, ti.name AS to_name
             FROM rollouts r LEFT JOIN images fi ON fi.id = r.from_image_id LEFT JOIN images ti ON ti.id = r.to_image_id ",
            $rest
        )
    };
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<RolloutRow>> {
    sqlx::query_as(select_rollouts!("WHERE r.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Locks the rollout's row for the rest of the transaction: the step, pause, resume, cancel
/// and a superseding rollback all take it, so they never interleave on one rollout.
pub async fn lock(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<RolloutRow>> {
    sqlx::query("SELECT 1 FROM rollouts WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    find(&mut *conn, id).await
}

/// Newest first; `before` is the previous page's last id; `image` keeps those to or from it.
pub async fn list(
    db: impl PgExecutor<'_>,
    image: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<RolloutRow>> {
    sqlx::query_as(select_rollouts!(
        "WHERE ($1::TEXT IS NULL OR r.to_image_id = $1 OR r.from_image_id = $1)
           AND ($2::BIGINT IS NULL OR r.id < $2)
         ORDER BY r.id DESC LIMIT $3"
    ))
    .bind(image)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What rollouts did to one server, newest first: (rollout, its kind, the server's step
/// there, when): a server's page shows them in its audit trail (the rollouts' own audit
/// events name their servers in a sentence, under the rollout's target).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TouchRow {
    pub rollout_id: i64,
    pub kind: RolloutKind,
    pub state: RolloutServerState,
    pub batch: i32,
    pub at: OffsetDateTime,
    /// When the rollout's grace period ends (its end + grace; None while it runs): how long
    /// a server it keeps stays kept.
    pub grace_until: Option<OffsetDateTime>,
}

pub async fn touches_of(db: impl PgExecutor<'_>, server_id: &str) -> sqlx::Result<Vec<TouchRow>> {
    sqlx::query_as(
        "SELECT rs.rollout_id, r.kind, rs.state, rs.batch, rs.at,
                r.finished_at + make_interval(secs => r.grace_s) AS grace_until
         FROM rollout_servers rs JOIN rollouts r ON r.id = rs.rollout_id
         WHERE rs.server_id = $1 ORDER BY rs.at DESC LIMIT 50",
    )
    .bind(server_id)
    .fetch_all(db)
    .await
}

/// The rollback that undid a release: the first rollback away from its image after it (a
/// guard's own rollback is recorded on the release as `rolled_back_by`; one started by hand
/// from the Images page or the Overview is found here).
pub async fn undone_by(db: impl PgExecutor<'_>, release: &RolloutRow) -> sqlx::Result<Option<i64>> {
    if let Some(id) = release.rolled_back_by {
        return Ok(Some(id));
    }
    sqlx::query_scalar(
        "SELECT x.id FROM rollouts x
         WHERE x.kind = 'rollback' AND x.from_image_id = $2 AND x.id > $1
           AND NOT EXISTS (SELECT 1 FROM rollouts y WHERE y.kind = 'release' AND y.to_image_id = $2
                             AND y.id > $1 AND y.id < x.id)
         ORDER BY x.id LIMIT 1",
    )
    .bind(release.id)
    .bind(&release.to_image_id)
    .fetch_optional(db)
    .await
}

/// The rollout in progress (pending, running or paused), if any.
pub async fn active(db: impl PgExecutor<'_>) -> sqlx::Result<Option<RolloutRow>> {
    sqlx::query_as(select_rollouts!(
        "WHERE r.state IN ('pending', 'running', 'paused') ORDER BY r.id DESC LIMIT 1"
    ))
    .fetch_optional(db)
    .await
}

/// A server a rollout touched, with what the server is doing now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutServerRow {
    pub server_id: String,
    pub role: RolloutRole,
    pub state: RolloutServerState,
    pub batch: i32,
    pub at: OffsetDateTime,
    pub image_id: String,
    pub server_state: ServerState,
    pub mode: ServerMode,
    pub running_jobs: i64,
    pub last_heartbeat_at: Option<OffsetDateTime>,
}

pub async fn servers_of(
    db: impl PgExecutor<'_>,
    rollout_id: i64,
) -> sqlx::Result<Vec<RolloutServerRow>> {
    sqlx::query_as(
        "SELECT rs.server_id, rs.role, rs.state, rs.batch, rs.at, s.image_id, s.state AS server_state, s.mode,
                (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id) AS running_jobs,
                a.last_heartbeat_at
         FROM rollout_servers rs JOIN servers s ON s.id = rs.server_id
         LEFT JOIN agents a ON a.server_id = rs.server_id
         WHERE rs.rollout_id = $1 ORDER BY rs.batch, rs.role DESC, rs.server_id",
    )
    .bind(rollout_id)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub n: i32,
    pub launch_id: Option<i64>,
    pub size: i32,
    pub deadline: OffsetDateTime,
    pub done_at: Option<OffsetDateTime>,
    pub launch_state: Option<LaunchState>,
    pub launch_error: Option<String>,
}

pub async fn batches_of(db: impl PgExecutor<'_>, rollout_id: i64) -> sqlx::Result<Vec<BatchRow>> {
    sqlx::query_as(
        "SELECT b.n, b.launch_id, b.size, b.deadline, b.done_at, l.state AS launch_state, l.error AS launch_error
         FROM rollout_batches b LEFT JOIN launches l ON l.id = b.launch_id
         WHERE b.rollout_id = $1 ORDER BY b.n",
    )
    .bind(rollout_id)
    .fetch_all(db)
    .await
}

/// Launches of a rollout the provider has not answered yet (pending or running).
pub async fn unsettled_launches(
    db: impl PgExecutor<'_>,
    rollout_id: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT l.id FROM rollout_batches b JOIN launches l ON l.id = b.launch_id
         WHERE b.rollout_id = $1 AND l.state IN ('pending', 'running') ORDER BY l.id",
    )
    .bind(rollout_id)
    .fetch_all(db)
    .await
}

/// The finished, unpinned jobs on each of two images, finished within `since..=until`
/// (until: now when None): for each, (jobs, failed, p50 seconds, p95 seconds).
///
/// One aggregate without grouping, each image's figures FILTERed: grouped, PostgreSQL sorts
/// every row by image (on disk at 100,000 jobs) before sorting each image's durations again;
/// both percentiles come from one ordered-set aggregate, over date_part's float8 (extract's
/// numeric costs three times as much). `kiln bench canary`.
pub async fn job_figures(
    db: impl PgExecutor<'_>,
    images: [&str; 2],
    since: OffsetDateTime,
    until: Option<OffsetDateTime>,
) -> sqlx::Result<[(i64, i64, Option<f64>, Option<f64>); 2]> {
    type Row = (i64, i64, Option<Vec<f64>>, i64, i64, Option<Vec<f64>>);
    let (n0, f0, p0, n1, f1, p1): Row = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.image_id = $1),
                count(*) FILTER (WHERE s.image_id = $1 AND j.state = 'failed'),
                percentile_cont(ARRAY[0.5, 0.95]::FLOAT8[])
                    WITHIN GROUP (ORDER BY date_part('epoch', j.finished_at - j.started_at))
                    FILTER (WHERE s.image_id = $1),
                count(*) FILTER (WHERE s.image_id = $2),
                count(*) FILTER (WHERE s.image_id = $2 AND j.state = 'failed'),
                percentile_cont(ARRAY[0.5, 0.95]::FLOAT8[])
                    WITHIN GROUP (ORDER BY date_part('epoch', j.finished_at - j.started_at))
                    FILTER (WHERE s.image_id = $2)
         FROM jobs j JOIN servers s ON s.id = j.server_id
         WHERE j.state IN ('succeeded', 'failed') AND j.finished_at >= $3
           AND ($4::TIMESTAMPTZ IS NULL OR j.finished_at <= $4)
           AND j.pinned_server_id IS NULL AND j.started_at IS NOT NULL
           AND s.image_id IN ($1, $2)",
    )
    .bind(images[0])
    .bind(images[1])
    .bind(since)
    .bind(until)
    .fetch_one(db)
    .await?;
    let side = |n, f, p: Option<Vec<f64>>| {
        let p = p.unwrap_or_default();
        (n, f, p.first().copied(), p.get(1).copied())
    };
    Ok([side(n0, f0, p0), side(n1, f1, p1)])
}

//! One step of a rollout, in one transaction with the rollout's row locked: read a snapshot,
//! ask [`decide`](super::decide::decide) what to do, apply it, and look again until the
//! decision is to stop or to wait. The policy lives in `decide`; this file only reads and
//! writes.
//!
//! The step never calls the cloud: launches and terminations are tasks of their own.

use std::time::Duration;

use sqlx::PgConnection;
use time::OffsetDateTime;

use super::decide::{
    self, BatchLaunch, Decision, HealthCheck, OpenBatch, Policy, Replacement, Snapshot, Source,
    Trip,
};
use super::guard::{Decider, roll_back};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::rollouts::RolloutRow;
use crate::domain::{
    JobState, LaunchState, Next, RolloutPhase, RolloutRole, RolloutServerState, RolloutState,
    ServerMode,
};
use crate::fleet::launch_servers::LaunchServers;

/// How soon a waiting rollout looks again: often enough that a healthy batch moves on within
/// a fraction of a second (one small transaction per look).
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// How soon a soaking or waiting release looks again: its guards are read each time (the
/// canary's comparison too), so a tripped guard starts the rollback within a second.
const HOLD_LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Servers a rollout replaces: enabled workers, live, not on the target image, not already
/// part of this rollout. Idle ones first (disabling them costs no drain), then the oldest.
macro_rules! candidates {
    ($select:literal, $rest:literal) => {
        concat!(
            $select,
            " FROM servers s
             WHERE s.purpose = 'worker' AND s.mode = 'enabled' AND s.state IN ('pending', 'running')
               AND s.image_id <> $2
               AND NOT EXISTS (SELECT 1 FROM rollout_servers rs WHERE rs.rollout_id = $1 AND rs.server_id = s.id) ",
            $rest
        )
    };
}

/// Kept servers of earlier rollouts on the target image that can serve again at once: their
/// agent heartbeats and nothing is terminating them.
macro_rules! reusable_kept {
    ($select:literal, $rest:literal) => {
        concat!(
            $select,
            " FROM rollout_servers rs
             JOIN servers s ON s.id = rs.server_id JOIN agents a ON a.server_id = s.id
             WHERE rs.role = 'old' AND rs.state = 'kept' AND rs.rollout_id <> $1
               AND s.image_id = $2 AND s.mode = 'disabled' AND s.state = 'running' AND s.purpose = 'worker'
               AND a.last_heartbeat_at > now() - make_interval(secs => $3)
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.dedupe_key = 'terminate:' || s.id
                               AND t.state IN ('queued', 'running')) ",
            $rest
        )
    };
}

pub async fn advance(
    conn: &mut PgConnection,
    rollout_id: i64,
    heartbeat_s: u64,
) -> sqlx::Result<Next> {
    let policy = Policy::for_heartbeat(heartbeat_s);
    // The database's clock, so that every console judges deadlines and heartbeats by the same
    // time; `now()` is the transaction's, the same for every look of this step.
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    loop {
        let Some(r) = crate::db::rollouts::lock(conn, rollout_id).await? else {
            return Ok(Next::Done);
        };
        let snapshot = read_snapshot(conn, &r, &policy).await?;
        let decision = decide::decide(&snapshot, now, &policy);
        if let Some(next) = apply(conn, &r, &policy, decision).await? {
            return Ok(next);
        }
    }
}

/// Reads what `decide` needs for the rollout's state (and only that).
async fn read_snapshot(
    conn: &mut PgConnection,
    r: &RolloutRow,
    policy: &Policy,
) -> sqlx::Result<Snapshot> {
    let window = policy.health_window.as_secs_f64();
    let mut s = Snapshot {
        state: r.state,
        cleaned: r.cleaned_at.is_some(),
        batch_size: r.batch_size,
        min_healthy_percent: r.min_healthy_percent,
        health_timeout_s: r.health_timeout_s,
        fleet_size: r.fleet_size,
        replaced: r.replaced,
        unclean_other: None,
        open_batch: None,
        remaining: 0,
        next_batch: 1,
        reusable_kept: 0,
        healthy_workers: 0,
        common_instance_type: None,
        plan: r.plan(),
        approved_through: r.approved_through,
        last_done: None,
        tripped: None,
        canary_verdict: None,
        has_previous: r.from_image_id.is_some(),
    };
    match r.state {
        RolloutState::Pending => {
            s.unclean_other = sqlx::query_scalar(
                "SELECT id FROM rollouts WHERE state IN ('failed', 'cancelled') AND cleaned_at IS NULL AND id <> $1 LIMIT 1",
            )
            .bind(r.id)
            .fetch_optional(&mut *conn)
            .await?;
        }
        RolloutState::Running => {
            s.tripped = read_trip(conn, r).await?;
            let batches = crate::db::rollouts::batches_of(&mut *conn, r.id).await?;
            s.next_batch = batches.iter().map(|b| b.n).max().unwrap_or(0) + 1;
            s.last_done = batches
                .iter()
                .filter_map(|b| b.done_at.map(|at| (b.n, at)))
                .max_by_key(|(n, _)| *n);
            if let Some(b) = batches.into_iter().find(|b| b.done_at.is_none()) {
                s.open_batch = Some(read_open_batch(conn, r.id, b).await?);
            } else {
                read_fleet(conn, r, window, &mut s).await?;
                // The canary is judged while it soaks or waits for its go-ahead.
                if r.canary > 0
                    && r.approved_through < 1
                    && s.last_done.is_some_and(|(n, _)| n == 1)
                {
                    s.canary_verdict = super::comparison(&mut *conn, r, r.canary_p95_margin)
                        .await?
                        .map(|c| c.verdict);
                }
            }
        }
        RolloutState::Paused
        | RolloutState::Succeeded
        | RolloutState::Failed
        | RolloutState::Cancelled => {}
    }
    Ok(s)
}

async fn read_open_batch(
    conn: &mut PgConnection,
    rollout_id: i64,
    b: crate::db::rollouts::BatchRow,
) -> sqlx::Result<OpenBatch> {
    let launch = match (b.launch_id, b.launch_state) {
        (Some(id), Some(state)) => Some(BatchLaunch {
            id,
            state,
            error: b.launch_error.unwrap_or_default(),
        }),
        _ => None,
    };
    let unrecorded: i64 = match &launch {
        Some(l) if l.state == LaunchState::Succeeded => {
            sqlx::query_scalar(
                "SELECT count(*) FROM servers s WHERE s.launch_id = $2
                   AND NOT EXISTS (SELECT 1 FROM rollout_servers rs WHERE rs.rollout_id = $1 AND rs.server_id = s.id)",
            )
            .bind(rollout_id)
            .bind(l.id)
            .fetch_one(&mut *conn)
            .await?
        }
        _ => 0,
    };
    type ReplacementRow = (
        String,
        bool,
        Option<OffsetDateTime>,
        Option<i64>,
        Option<JobState>,
        Option<i32>,
        Option<String>,
    );
    let replacements: Vec<ReplacementRow> = sqlx::query_as(
        "SELECT rs.server_id, s.state = 'running' AND s.mode = 'enabled', a.last_heartbeat_at,
                j.id, j.state, j.exit_code, j.reason
         FROM rollout_servers rs JOIN servers s ON s.id = rs.server_id
         LEFT JOIN agents a ON a.server_id = s.id
         LEFT JOIN jobs j ON j.id = rs.health_job_id
         WHERE rs.rollout_id = $1 AND rs.batch = $2 AND rs.role = 'new'
         ORDER BY rs.server_id",
    )
    .bind(rollout_id)
    .bind(b.n)
    .fetch_all(&mut *conn)
    .await?;
    let disabled_early: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rollout_servers WHERE rollout_id = $1 AND batch = $2 AND role = 'old'",
    )
    .bind(rollout_id)
    .bind(b.n)
    .fetch_one(&mut *conn)
    .await?;
    Ok(OpenBatch {
        n: b.n,
        size: b.size,
        deadline: b.deadline,
        launch,
        unrecorded,
        replacements: replacements
            .into_iter()
            .map(
                |(server_id, serving, last_heartbeat_at, job, state, exit_code, reason)| {
                    Replacement {
                        server_id,
                        serving,
                        last_heartbeat_at,
                        health: health_check(job, state, exit_code, reason),
                    }
                },
            )
            .collect(),
        disabled_early,
    })
}

/// A replacement's health-check job as the decision sees it.
fn health_check(
    job: Option<i64>,
    state: Option<JobState>,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> HealthCheck {
    let (Some(job), Some(state)) = (job, state) else {
        return HealthCheck::NotRun;
    };
    match state {
        JobState::Queued | JobState::Running => HealthCheck::Running,
        JobState::Succeeded => HealthCheck::Passed,
        JobState::Failed => HealthCheck::Failed(match (exit_code, reason.as_deref()) {
            (Some(code), _) => format!("job #{job} exited with {code}"),
            (None, Some(r)) if !r.is_empty() => format!("job #{job}: {r}"),
            _ => format!("job #{job} failed"),
        }),
        JobState::Cancelled => HealthCheck::Failed(format!("job #{job} was cancelled")),
    }
}

/// The first guarding alert that began firing since the release started: one of the plan's
/// rules on any source, or (guard "any") any rule on one of the release's new servers. An
/// alert already firing when the release started does not trip it — it may be what the
/// release fixes. (The evaluator's times are whole seconds: an alert that fired in the
/// second the release started counts.)
async fn read_trip(conn: &mut PgConnection, r: &RolloutRow) -> sqlx::Result<Option<Trip>> {
    if !r.guard_any && r.guard_rule_ids.is_empty() {
        return Ok(None);
    }
    let fired: Option<(i64, String, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT st.rule_id, ru.name, st.source, st.since
         FROM alert_states st JOIN alert_rules ru ON ru.id = st.rule_id
         WHERE st.state = 'firing' AND st.since >= date_trunc('second', $2::TIMESTAMPTZ)
           AND (st.rule_id = ANY($3)
                OR ($4 AND st.source IN (SELECT server_id FROM rollout_servers
                                         WHERE rollout_id = $1 AND role = 'new')))
         ORDER BY st.since, st.rule_id LIMIT 1",
    )
    .bind(r.id)
    .bind(r.created_at)
    .bind(&r.guard_rule_ids)
    .bind(r.guard_any)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(fired.map(|(rule_id, name, source, since)| Trip {
        reason: format!(
            "alert '{name}' fired{} at {}",
            if source.is_empty() {
                String::new()
            } else {
                format!(" on {source}")
            },
            decide::clock(since)
        ),
        rule_id: Some(rule_id),
    }))
}

/// What the next batch needs to know of the fleet.
async fn read_fleet(
    conn: &mut PgConnection,
    r: &RolloutRow,
    window: f64,
    s: &mut Snapshot,
) -> sqlx::Result<()> {
    s.remaining = sqlx::query_scalar(candidates!("SELECT count(*)", ""))
        .bind(r.id)
        .bind(&r.to_image_id)
        .fetch_one(&mut *conn)
        .await?;
    if s.remaining == 0 {
        return Ok(());
    }
    s.reusable_kept = sqlx::query_scalar(reusable_kept!("SELECT count(*)", ""))
        .bind(r.id)
        .bind(&r.to_image_id)
        .bind(window)
        .fetch_one(&mut *conn)
        .await?;
    s.healthy_workers = sqlx::query_scalar(
        "SELECT count(*) FROM servers s JOIN agents a ON a.server_id = s.id
         WHERE s.purpose = 'worker' AND s.mode = 'enabled' AND s.state = 'running'
           AND a.last_heartbeat_at > now() - make_interval(secs => $1)",
    )
    .bind(window)
    .fetch_one(&mut *conn)
    .await?;
    s.common_instance_type = sqlx::query_scalar(candidates!(
        "SELECT s.instance_type",
        "GROUP BY s.instance_type ORDER BY count(*) DESC, s.instance_type LIMIT 1"
    ))
    .bind(r.id)
    .bind(&r.to_image_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(())
}

/// Applies a decision's effects; Some when the step ends here (stop or wait), None when the
/// rollout should be looked at again at once.
async fn apply(
    conn: &mut PgConnection,
    r: &RolloutRow,
    policy: &Policy,
    decision: Decision,
) -> sqlx::Result<Option<Next>> {
    match decision {
        Decision::Stop => Ok(Some(Next::Done)),
        Decision::Wait(why) => Ok(Some(Next::Wait(LOOK_AGAIN, why))),
        Decision::Undo => {
            if super::undo::undo(conn, r.id, r.drain_timeout_s).await? {
                Ok(Some(Next::Done))
            } else {
                Ok(Some(Next::Wait(
                    LOOK_AGAIN,
                    "waiting for a launch to finish before removing its servers".into(),
                )))
            }
        }
        Decision::Start => {
            sqlx::query(
                "UPDATE rollouts SET state = 'running', updated_at = now(),
                     fleet_size = (SELECT count(*) FROM servers WHERE purpose = 'worker' AND mode = 'enabled'
                                   AND state IN ('pending', 'running'))
                 WHERE id = $1",
            )
            .bind(r.id)
            .execute(&mut *conn)
            .await?;
            audit::record(
                &mut *conn,
                AuditEvent::system("rollout.started", format!("rollout:{}", r.id), Outcome::Ok)
                    .detail(format!("{} to {}", r.kind, r.to_image_id)),
            )
            .await?;
            Ok(None)
        }
        Decision::Fail(reason) => {
            fail(conn, r, &reason).await?;
            Ok(None)
        }
        Decision::RecordLaunched { batch } => {
            sqlx::query(
                "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch)
                 SELECT $1, s.id, 'new', 'launched', $2
                 FROM rollout_batches b JOIN servers s ON s.launch_id = b.launch_id
                 WHERE b.rollout_id = $1 AND b.n = $2
                 ON CONFLICT DO NOTHING",
            )
            .bind(r.id)
            .bind(batch)
            .execute(&mut *conn)
            .await?;
            Ok(None)
        }
        Decision::CloseBatch { batch, disable } => {
            disable_old(conn, r, batch, disable).await?;
            sqlx::query(
                "UPDATE rollout_batches SET done_at = now() WHERE rollout_id = $1 AND n = $2",
            )
            .bind(r.id)
            .bind(batch)
            .execute(&mut *conn)
            .await?;
            Ok(None)
        }
        Decision::RollBack { reason, rule_id } => {
            roll_back(
                conn,
                r,
                Decider::Guard {
                    reason: &reason,
                    rule_id,
                },
            )
            .await?;
            Ok(None)
        }
        Decision::CheckHealth { servers } => {
            check_health(conn, r, &servers).await?;
            Ok(None)
        }
        Decision::Hold { phase, why } => {
            set_phase(conn, r.id, Some(phase)).await?;
            Ok(Some(Next::Wait(HOLD_LOOK_AGAIN, why)))
        }
        Decision::LetGo { batch, by } => {
            sqlx::query(
                "UPDATE rollouts SET approved_through = $2, phase = NULL, updated_at = now() WHERE id = $1",
            )
            .bind(r.id)
            .bind(batch)
            .execute(&mut *conn)
            .await?;
            if let Some(by) = by {
                audit::record(
                    &mut *conn,
                    AuditEvent::system(
                        "rollout.continue",
                        format!("rollout:{}", r.id),
                        Outcome::Ok,
                    )
                    .detail(by),
                )
                .await?;
            }
            Ok(None)
        }
        Decision::Succeed { total } => {
            set_total(conn, r.id, total).await?;
            succeed(conn, r).await?;
            Ok(Some(Next::Done))
        }
        Decision::StartBatch {
            n,
            count,
            source: Source::Reuse,
            total,
            disable_early: _,
        } => {
            set_total(conn, r.id, total).await?;
            set_phase(conn, r.id, batch_phase(r, n)).await?;
            reuse_kept(conn, r, policy, n, count).await?;
            Ok(None)
        }
        Decision::StartBatch {
            n,
            count,
            source: Source::Launch { instance_type },
            total,
            disable_early,
        } => {
            set_total(conn, r.id, total).await?;
            set_phase(conn, r.id, batch_phase(r, n)).await?;
            launch_batch(conn, r, n, count, &instance_type).await?;
            disable_old(conn, r, n, disable_early).await?;
            Ok(Some(Next::Wait(LOOK_AGAIN, format!("launching batch {n}"))))
        }
    }
}

/// The phase a batch starts: the canary's, or none.
fn batch_phase(r: &RolloutRow, n: i32) -> Option<RolloutPhase> {
    (n == 1 && r.canary > 0).then_some(RolloutPhase::Canary)
}

/// Records the plan's phase for the pages (written only when it changes).
async fn set_phase(
    conn: &mut PgConnection,
    rollout_id: i64,
    phase: Option<RolloutPhase>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE rollouts SET phase = $2, updated_at = now() WHERE id = $1 AND phase IS DISTINCT FROM $2",
    )
    .bind(rollout_id)
    .bind(phase)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Queues the plan's health command as a job pinned to each of `servers` (its agent has
/// joined) and records it; the job's result decides whether the server counts as healthy.
async fn check_health(
    conn: &mut PgConnection,
    r: &RolloutRow,
    servers: &[String],
) -> sqlx::Result<()> {
    let labels = crate::db::jobs::Labels::from([
        ("rollout".to_owned(), r.id.to_string()),
        ("check".to_owned(), "health".to_owned()),
    ]);
    for server in servers {
        let job = crate::db::jobs::insert(
            conn,
            &crate::db::jobs::NewJob {
                command: &r.health_command,
                labels: &labels,
                timeout_s: r.health_timeout_s,
                retries: 0,
                pinned_server_id: Some(server),
                enqueued_by: &format!("rollout #{}", r.id),
            },
        )
        .await?;
        sqlx::query(
            "UPDATE rollout_servers SET health_job_id = $3 WHERE rollout_id = $1 AND server_id = $2",
        )
        .bind(r.id)
        .bind(server)
        .bind(job.id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn set_total(conn: &mut PgConnection, rollout_id: i64, total: i32) -> sqlx::Result<()> {
    sqlx::query("UPDATE rollouts SET total = $2, updated_at = now() WHERE id = $1")
        .bind(rollout_id)
        .bind(total)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Enables up to `count` kept servers of earlier rollouts on the target image as batch `n`
/// (an instant rollback). Reads them again under their rows' locks: the batch is as large as
/// what it got.
async fn reuse_kept(
    conn: &mut PgConnection,
    r: &RolloutRow,
    policy: &Policy,
    n: i32,
    count: i64,
) -> sqlx::Result<()> {
    let reused: Vec<String> = sqlx::query_scalar(concat!(
        "WITH kept AS (",
        reusable_kept!(
            "SELECT rs.rollout_id, rs.server_id",
            "ORDER BY s.launched_at DESC LIMIT $4 FOR UPDATE OF rs"
        ),
        ")
         UPDATE rollout_servers u SET state = 'reused', at = now() FROM kept
         WHERE u.rollout_id = kept.rollout_id AND u.server_id = kept.server_id
         RETURNING u.server_id"
    ))
    .bind(r.id)
    .bind(&r.to_image_id)
    .bind(policy.health_window.as_secs_f64())
    .bind(count)
    .fetch_all(&mut *conn)
    .await?;
    if reused.is_empty() {
        return Ok(());
    }
    take_part(
        conn,
        r.id,
        n,
        &reused,
        ServerMode::Enabled,
        RolloutRole::New,
        RolloutServerState::Reenabled,
    )
    .await?;
    insert_batch(conn, r, n, None, reused.len() as i32).await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("rollout.batch", format!("rollout:{}", r.id), Outcome::Ok).detail(
            format!(
                "batch {n}: enabled {} kept server(s) on {}: {}",
                reused.len(),
                r.to_image_id,
                reused.join(", ")
            ),
        ),
    )
    .await?;
    Ok(())
}

/// Launches batch `n`: the batch and its launch are written together, so the launch token
/// (`rollout-<id>-<n>`) is deterministic and a retried step never launches twice.
async fn launch_batch(
    conn: &mut PgConnection,
    r: &RolloutRow,
    n: i32,
    count: i64,
    instance_type: &str,
) -> sqlx::Result<()> {
    let token = format!("rollout-{}-{n}", r.id);
    let launch = crate::db::servers::insert_launch(
        conn,
        &token,
        &r.to_image_id,
        count as i32,
        instance_type,
        &format!("rollout #{}", r.id),
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
    insert_batch(conn, r, n, Some(launch.id), count as i32).await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("rollout.batch", format!("rollout:{}", r.id), Outcome::Ok).detail(
            format!(
                "batch {n}: launching {count} × {instance_type} from {} (launch #{})",
                r.to_image_id, launch.id
            ),
        ),
    )
    .await?;
    Ok(())
}

/// Disables up to `count` old servers (idle ones first) and records them as kept.
async fn disable_old(
    conn: &mut PgConnection,
    r: &RolloutRow,
    batch: i32,
    count: i64,
) -> sqlx::Result<()> {
    if count <= 0 {
        return Ok(());
    }
    let ids: Vec<String> = sqlx::query_scalar(candidates!(
        "SELECT s.id",
        "ORDER BY (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id), s.launched_at, s.id
         LIMIT $3 FOR UPDATE OF s"
    ))
    .bind(r.id)
    .bind(&r.to_image_id)
    .bind(count)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(());
    }
    take_part(
        conn,
        r.id,
        batch,
        &ids,
        ServerMode::Disabled,
        RolloutRole::Old,
        RolloutServerState::Kept,
    )
    .await?;
    sqlx::query("UPDATE rollouts SET replaced = replaced + $2, updated_at = now() WHERE id = $1")
        .bind(r.id)
        .bind(ids.len() as i32)
        .execute(&mut *conn)
        .await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("rollout.disable", format!("rollout:{}", r.id), Outcome::Ok)
            .detail(format!("batch {batch}: disabled {}", ids.join(", "))),
    )
    .await?;
    Ok(())
}

/// Records batch `n` (its launch, if any) with the health deadline the rollout allows.
async fn insert_batch(
    conn: &mut PgConnection,
    r: &RolloutRow,
    n: i32,
    launch_id: Option<i64>,
    size: i32,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO rollout_batches (rollout_id, n, launch_id, size, deadline)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(r.id)
    .bind(n)
    .bind(launch_id)
    .bind(size)
    .bind(f64::from(r.health_timeout_s))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Puts `ids` in `mode` and records them as part of the rollout's batch, in `role` and
/// `state`: a replacement enabled, or an old server disabled and kept.
async fn take_part(
    conn: &mut PgConnection,
    rollout_id: i64,
    batch: i32,
    ids: &[String],
    mode: ServerMode,
    role: RolloutRole,
    state: RolloutServerState,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE servers SET mode = $2, updated_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .bind(mode)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch)
         SELECT $1, id, $3, $4, $5 FROM unnest($2::TEXT[]) AS id",
    )
    .bind(rollout_id)
    .bind(ids)
    .bind(role)
    .bind(state)
    .bind(batch)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn succeed(conn: &mut PgConnection, r: &RolloutRow) -> sqlx::Result<()> {
    super::finish(conn, r, RolloutState::Succeeded, "").await?;
    let retire_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(r.grace_s));
    crate::tasks::enqueue_at(
        conn,
        &crate::rollouts::retire_servers::RetireServers { rollout_id: r.id },
        Some(&format!("retire:{}", r.id)),
        Some(retire_at),
    )
    .await?;
    audit::record(
        &mut *conn,
        AuditEvent::system(
            "rollout.succeeded",
            format!("rollout:{}", r.id),
            Outcome::Ok,
        )
        .detail(format!(
            "every enabled worker runs {}; the {} replaced server(s) stay disabled for {} s",
            r.to_image_id, r.replaced, r.grace_s
        )),
    )
    .await?;
    Ok(())
}

async fn fail(conn: &mut PgConnection, r: &RolloutRow, reason: &str) -> sqlx::Result<()> {
    super::finish(conn, r, RolloutState::Failed, reason).await?;
    let back = super::revert_current(conn, r, "kiln").await?;
    super::undo::undo(conn, r.id, r.drain_timeout_s).await?;
    audit::record(
        &mut *conn,
        AuditEvent::system(
            "rollout.failed",
            format!("rollout:{}", r.id),
            Outcome::Failed,
        )
        .detail(format!(
            "{reason}{}",
            match back {
                Some(img) => format!(" The current image is {img} again."),
                None => String::new(),
            }
        )),
    )
    .await?;
    Ok(())
}

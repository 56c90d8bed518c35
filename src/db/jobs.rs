//! The work queue: jobs, their attempts and their output.
//!
//! The rules (see the glossary in ARCHITECTURE.md): only a job's newest attempt counts; an attempt cut short
//! by Kiln or by a dead server is `lost` and the job goes back to `queued` without using up
//! its `retries`, until it has been lost [`MAX_LOSSES`] times; a failed attempt is retried
//! while `failures <= retries`. Every change that makes a job claimable notifies
//! [`CHANNEL`], which wakes waiting claims (see `jobs::wakeups`).

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::{AttemptState, JobState};

/// The NOTIFY channel for "a job became claimable"; the payload is how many.
pub const CHANNEL: &str = "kiln_jobs";
/// The NOTIFY payload of a job pinned to one server: every waiting claim is woken (see
/// `jobs::wakeups`).
pub const PINNED: &str = "all";
/// A job whose attempts were lost this many times fails: it may be what kills its servers.
pub const MAX_LOSSES: i32 = 3;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub command: String,
    pub labels: Json<Labels>,
    pub timeout_s: i32,
    pub retries: i32,
    pub state: JobState,
    pub pinned_server_id: Option<String>,
    pub attempt: i32,
    pub server_id: Option<String>,
    pub failures: i32,
    pub losses: i32,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub enqueued_by: String,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT id, command, labels, timeout_s, retries, state, pinned_server_id, attempt, server_id,
                    failures, losses, exit_code, reason, enqueued_by, created_at, started_at, finished_at
             FROM jobs ",
            $rest
        )
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub n: i32,
    pub server_id: String,
    pub state: AttemptState,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub exit_code: Option<i32>,
    pub reason: String,
}

pub struct NewJob<'a> {
    pub command: &'a str,
    pub labels: &'a Labels,
    pub timeout_s: i32,
    pub retries: i32,
    pub pinned_server_id: Option<&'a str>,
    pub enqueued_by: &'a str,
}

/// Wakes waiting claims when the surrounding transaction commits.
pub async fn notify(db: impl PgExecutor<'_>, claimable: i64) -> sqlx::Result<()> {
    if claimable > 0 {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(claimable.to_string())
            .execute(db)
            .await?;
    }
    Ok(())
}

/// Wakes every waiting claim when the surrounding transaction commits: for a job only one
/// server may take, where a single wake-up could land on another server and be spent.
pub async fn notify_all(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(PINNED)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn insert(conn: &mut PgConnection, job: &NewJob<'_>) -> sqlx::Result<JobRow> {
    let row: JobRow = sqlx::query_as(concat!(
        "INSERT INTO jobs (command, labels, timeout_s, retries, pinned_server_id, enqueued_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        "id, command, labels, timeout_s, retries, state, pinned_server_id, attempt, server_id,
         failures, losses, exit_code, reason, enqueued_by, created_at, started_at, finished_at"
    ))
    .bind(job.command)
    .bind(Json(job.labels))
    .bind(job.timeout_s)
    .bind(job.retries)
    .bind(job.pinned_server_id)
    .bind(job.enqueued_by)
    .fetch_one(&mut *conn)
    .await?;
    if job.pinned_server_id.is_some() {
        notify_all(&mut *conn).await?;
    } else {
        notify(&mut *conn, 1).await?;
    }
    Ok(row)
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(select_jobs!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

async fn find_for_update(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(select_jobs!("WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Filters of the Jobs page and `GET /api/v1/jobs`.
#[derive(Debug, Default, Clone)]
pub struct JobQuery {
    pub state: Option<String>,
    /// `key=value`: jobs whose labels carry it.
    pub label: Option<(String, String)>,
    pub server_id: Option<String>,
}

/// Newest first, keyset-paginated by id.
pub async fn list(
    db: impl PgExecutor<'_>,
    q: &JobQuery,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    let label = label_filter(q);
    sqlx::query_as(select_jobs!(
        "WHERE ($1::TEXT IS NULL OR state = $1)
           AND ($2::JSONB IS NULL OR labels @> $2)
           AND ($3::TEXT IS NULL OR server_id = $3)
           AND ($4::BIGINT IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(&q.state)
    .bind(label)
    .bind(&q.server_id)
    .bind(before_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn attempts(db: impl PgExecutor<'_>, job_id: i64) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        "SELECT n, server_id, state, started_at, finished_at, exit_code, reason FROM job_attempts
         WHERE job_id = $1 ORDER BY n",
    )
    .bind(job_id)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct QueueCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded_1h: i64,
    pub failed_1h: i64,
}

pub async fn counts(db: impl PgExecutor<'_>) -> sqlx::Result<QueueCounts> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE state = 'queued') AS queued,
                (SELECT count(*) FROM jobs WHERE state = 'running') AS running,
                (SELECT count(*) FROM jobs WHERE state = 'succeeded' AND finished_at > now() - interval '1 hour') AS succeeded_1h,
                (SELECT count(*) FROM jobs WHERE state = 'failed' AND finished_at > now() - interval '1 hour') AS failed_1h",
    )
    .fetch_one(db)
    .await
}

pub async fn running_on(db: impl PgExecutor<'_>, server_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running' AND server_id = $1")
        .bind(server_id)
        .fetch_one(db)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub attempt: i32,
    pub command: String,
    pub timeout_s: i32,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    mode: crate::domain::ServerMode,
    state: crate::domain::ServerState,
    id: Option<i64>,
    attempt: Option<i32>,
    command: Option<String>,
    timeout_s: Option<i32>,
}

/// Gives up to `slots` queued jobs to a server, as new attempts, in one statement that also
/// says where the server stands (None: no such server): only an enabled, live server gets
/// any; a builder gets only the jobs pinned to it, a worker only unpinned ones. Concurrent
/// claims skip each other's rows (SKIP LOCKED).
pub async fn claim(
    db: impl PgExecutor<'_>,
    server_id: &str,
    slots: i64,
    lease_s: u64,
) -> sqlx::Result<Option<(crate::db::agents::Standing, Vec<Claimed>)>> {
    let rows: Vec<ClaimRow> = sqlx::query_as(
        "WITH srv AS (
             SELECT id, purpose, mode, state FROM servers WHERE id = $1
         ), picked AS (
             SELECT j.id FROM jobs j, srv
             WHERE srv.mode = 'enabled' AND srv.state IN ('pending', 'running')
               AND j.state = 'queued'
               AND ((srv.purpose = 'worker' AND j.pinned_server_id IS NULL) OR j.pinned_server_id = srv.id)
             ORDER BY j.id LIMIT $2
             FOR UPDATE OF j SKIP LOCKED
         ), taken AS (
             UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, server_id = $1,
                 lease_until = now() + make_interval(secs => $3), started_at = COALESCE(j.started_at, now()),
                 updated_at = now()
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.attempt, j.command, j.timeout_s
         ), recorded AS (
             INSERT INTO job_attempts (job_id, n, server_id) SELECT id, attempt, $1 FROM taken
         )
         SELECT srv.mode, srv.state, t.id, t.attempt, t.command, t.timeout_s
         FROM srv LEFT JOIN taken t ON TRUE ORDER BY t.id",
    )
    .bind(server_id)
    .bind(slots)
    .bind(lease_s as f64)
    .fetch_all(db)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let standing = crate::db::agents::Standing {
        mode: first.mode,
        state: first.state,
    };
    let jobs = rows
        .into_iter()
        .filter_map(|r| {
            Some(Claimed {
                id: r.id?,
                attempt: r.attempt?,
                command: r.command?,
                timeout_s: r.timeout_s?,
            })
        })
        .collect();
    Ok(Some((standing, jobs)))
}

/// Renews the leases of the attempts a server's agent says it runs, and returns those of
/// them that no longer count (cancelled, lost, or someone else's): the agent stops them.
pub async fn renew(
    db: impl PgExecutor<'_>,
    server_id: &str,
    running: &[(i64, i32)],
    lease_s: u64,
) -> sqlx::Result<Vec<(i64, i32)>> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = running.iter().copied().unzip();
    sqlx::query_as(
        "WITH reported AS (SELECT * FROM unnest($2::BIGINT[], $3::INT[]) AS r(job_id, attempt)),
              renewed AS (
                  UPDATE jobs j SET lease_until = now() + make_interval(secs => $4)
                  FROM reported r
                  WHERE j.id = r.job_id AND j.attempt = r.attempt AND j.server_id = $1 AND j.state = 'running'
                  RETURNING j.id, j.attempt
              )
         SELECT r.job_id, r.attempt FROM reported r
         WHERE NOT EXISTS (SELECT 1 FROM renewed n WHERE n.id = r.job_id AND n.attempt = r.attempt)",
    )
    .bind(server_id)
    .bind(ids)
    .bind(attempts)
    .bind(lease_s as f64)
    .fetch_all(db)
    .await
}

/// Which running attempts to record as lost.
pub enum Lose<'a> {
    /// Those whose lease ran out.
    Expired,
    /// Every one on this server (terminated, vanished, or its agent started afresh).
    OnServer(&'a str),
    /// Every one on a server that is gone or going (terminated, shutting down, stopped).
    OnDeadServers,
}

/// Records running attempts as `lost` and puts their jobs back in the queue (or fails a job
/// lost [`MAX_LOSSES`] times). Returns (job id, new state) per job touched.
pub async fn lose(
    conn: &mut PgConnection,
    which: Lose<'_>,
    reason: &str,
) -> sqlx::Result<Vec<(i64, String)>> {
    let (expired, server, dead) = match which {
        Lose::Expired => (true, None, false),
        Lose::OnServer(id) => (false, Some(id), false),
        Lose::OnDeadServers => (false, None, true),
    };
    let touched: Vec<(i64, String)> = sqlx::query_as(
        "WITH victims AS (
             SELECT id, attempt FROM jobs
             WHERE state = 'running'
               AND (($1 AND lease_until < now()) OR server_id = $2
                    OR ($5 AND server_id IN (SELECT id FROM servers
                                             WHERE state IN ('terminated', 'shutting-down', 'stopped'))))
             FOR UPDATE SKIP LOCKED
         ), marked AS (
             UPDATE job_attempts a SET state = 'lost', finished_at = now(), reason = $3
             FROM victims v WHERE a.job_id = v.id AND a.n = v.attempt AND a.state = 'running'
         )
         UPDATE jobs j SET losses = j.losses + 1, lease_until = NULL, updated_at = now(),
             state = CASE WHEN j.losses + 1 >= $4 THEN 'failed' ELSE 'queued' END,
             reason = CASE WHEN j.losses + 1 >= $4
                           THEN 'lost ' || (j.losses + 1) || ' times (the last: ' || $3 || '); it may be what kills its servers'
                           ELSE j.reason END,
             finished_at = CASE WHEN j.losses + 1 >= $4 THEN now() ELSE NULL END
         FROM victims v WHERE j.id = v.id
         RETURNING j.id, j.state",
    )
    .bind(expired)
    .bind(server)
    .bind(reason)
    .bind(MAX_LOSSES)
    .bind(dead)
    .fetch_all(&mut *conn)
    .await?;
    let requeued = touched.iter().filter(|(_, s)| s == "queued").count() as i64;
    notify(&mut *conn, requeued).await?;
    Ok(touched)
}

/// Where an agent's report about an attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptCheck {
    UnknownJob,
    UnknownAttempt,
    /// The attempt ran on another server.
    NotYours,
    /// The attempt is the job's newest and still running: the report counts.
    Current,
    /// Its result is already recorded (a resent finish).
    AlreadyFinished(String),
    /// Lost, cancelled or superseded by a newer attempt: the report is refused.
    Superseded(String),
}

async fn check_attempt(
    conn: &mut PgConnection,
    job: &JobRow,
    attempt: i32,
    server_id: &str,
) -> sqlx::Result<AttemptCheck> {
    let row: Option<(String, AttemptState)> =
        sqlx::query_as("SELECT server_id, state FROM job_attempts WHERE job_id = $1 AND n = $2")
            .bind(job.id)
            .bind(attempt)
            .fetch_optional(conn)
            .await?;
    Ok(match row {
        None => AttemptCheck::UnknownAttempt,
        Some((server, _)) if server != server_id => AttemptCheck::NotYours,
        Some((_, state @ (AttemptState::Succeeded | AttemptState::Failed))) => {
            AttemptCheck::AlreadyFinished(state.to_string())
        }
        Some((_, state @ (AttemptState::Lost | AttemptState::Cancelled))) => {
            AttemptCheck::Superseded(state.to_string())
        }
        Some((_, AttemptState::Running))
            if job.attempt != attempt || job.state != JobState::Running =>
        {
            AttemptCheck::Superseded(job.state.to_string())
        }
        Some((_, AttemptState::Running)) => AttemptCheck::Current,
    })
}

pub struct OutputChunk<'a> {
    pub seq: i32,
    pub stream: &'a str,
    pub data: &'a str,
}

/// Appends output of the current attempt (a resent chunk is ignored). The check and the
/// insert share a transaction holding the job's row, so output never lands after the
/// attempt was lost.
pub async fn append_output(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    server_id: &str,
    chunks: &[OutputChunk<'_>],
) -> sqlx::Result<AttemptCheck> {
    let Some(job) = find_for_update(conn, job_id).await? else {
        return Ok(AttemptCheck::UnknownJob);
    };
    let check = check_attempt(conn, &job, attempt, server_id).await?;
    if check != AttemptCheck::Current {
        return Ok(check);
    }
    let seqs: Vec<i32> = chunks.iter().map(|c| c.seq).collect();
    let streams: Vec<&str> = chunks.iter().map(|c| c.stream).collect();
    let data: Vec<&str> = chunks.iter().map(|c| c.data).collect();
    sqlx::query(
        "INSERT INTO job_output (job_id, attempt, seq, stream, data)
         SELECT $1, $2, c.seq, c.stream, c.data FROM unnest($3::INT[], $4::TEXT[], $5::TEXT[]) AS c(seq, stream, data)
         ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(seqs)
    .bind(streams)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(AttemptCheck::Current)
}

/// What recording a result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The job's new state: `succeeded`, `failed`, or `queued` (a failure with retries left).
    Recorded(String),
    Refused(AttemptCheck),
}

pub struct JobResult<'a> {
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    pub reason: &'a str,
}

/// Records the result of the current attempt; a result for any other attempt is refused.
pub async fn finish(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    server_id: &str,
    result: &JobResult<'_>,
) -> sqlx::Result<Finished> {
    let Some(job) = find_for_update(conn, job_id).await? else {
        return Ok(Finished::Refused(AttemptCheck::UnknownJob));
    };
    let check = check_attempt(conn, &job, attempt, server_id).await?;
    if check != AttemptCheck::Current {
        return Ok(Finished::Refused(check));
    }
    let attempt_state = if result.succeeded {
        "succeeded"
    } else {
        "failed"
    };
    sqlx::query(
        "UPDATE job_attempts SET state = $3, finished_at = now(), exit_code = $4, reason = $5
         WHERE job_id = $1 AND n = $2",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(attempt_state)
    .bind(result.exit_code)
    .bind(result.reason)
    .execute(&mut *conn)
    .await?;
    let failures = job.failures + i32::from(!result.succeeded);
    let state = if result.succeeded {
        "succeeded"
    } else if failures <= job.retries {
        "queued"
    } else {
        "failed"
    };
    sqlx::query(
        "UPDATE jobs SET state = $2, failures = $3, exit_code = $4, reason = $5, lease_until = NULL,
             finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END, updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(state)
    .bind(failures)
    .bind(result.exit_code)
    .bind(result.reason)
    .execute(&mut *conn)
    .await?;
    notify(&mut *conn, i64::from(state == "queued")).await?;
    Ok(Finished::Recorded(state.to_owned()))
}

/// Cancels a queued or running job (a running attempt is recorded `cancelled`; its agent
/// learns at its next heartbeat and stops it). Returns the job's previous state, or None
/// when there is no such job.
pub async fn cancel(conn: &mut PgConnection, job_id: i64) -> sqlx::Result<Option<JobState>> {
    let Some(job) = find_for_update(conn, job_id).await? else {
        return Ok(None);
    };
    if !job.state.is_finished() {
        sqlx::query(
            "UPDATE job_attempts SET state = 'cancelled', finished_at = now(), reason = 'cancelled'
             WHERE job_id = $1 AND n = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(job.attempt)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', lease_until = NULL, finished_at = now(), updated_at = now(),
                 reason = 'cancelled'
             WHERE id = $1",
        )
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(job.state))
}

/// Puts a failed or cancelled job back in the queue for a new attempt, with its retry and
/// loss budgets afresh. Returns the previous state (None: no such job).
pub async fn retry(conn: &mut PgConnection, job_id: i64) -> sqlx::Result<Option<JobState>> {
    let Some(job) = find_for_update(conn, job_id).await? else {
        return Ok(None);
    };
    if matches!(job.state, JobState::Failed | JobState::Cancelled) {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', failures = 0, losses = 0, exit_code = NULL, reason = '',
                 finished_at = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
        notify(&mut *conn, 1).await?;
    }
    Ok(Some(job.state))
}

/// The failed jobs a filter's label ($1) and server ($2) match: what "Retry all failed" counts
/// and what it retries.
macro_rules! failed_matching {
    () => {
        "state = 'failed' AND ($1::JSONB IS NULL OR labels @> $1) AND ($2::TEXT IS NULL OR server_id = $2)"
    };
}

/// The failed jobs a filter matches (its label and server; the state is `failed`).
pub async fn count_failed(db: impl PgExecutor<'_>, q: &JobQuery) -> sqlx::Result<i64> {
    sqlx::query_scalar(concat!(
        "SELECT count(*) FROM jobs WHERE ",
        failed_matching!()
    ))
    .bind(label_filter(q))
    .bind(&q.server_id)
    .fetch_one(db)
    .await
}

/// Queues every failed job a filter matches for a new attempt, as [`retry`] does one; the
/// ids, in order.
pub async fn retry_failed(conn: &mut PgConnection, q: &JobQuery) -> sqlx::Result<Vec<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(concat!(
        "WITH retried AS (
             UPDATE jobs SET state = 'queued', failures = 0, losses = 0, exit_code = NULL, reason = '',
                 finished_at = NULL, updated_at = now()
             WHERE ",
        failed_matching!(),
        " RETURNING id)
         SELECT id FROM retried ORDER BY id"
    ))
    .bind(label_filter(q))
    .bind(&q.server_id)
    .fetch_all(&mut *conn)
    .await?;
    if !ids.is_empty() {
        notify(&mut *conn, ids.len() as i64).await?;
    }
    Ok(ids)
}

fn label_filter(q: &JobQuery) -> Option<Json<Labels>> {
    q.label
        .as_ref()
        .map(|(k, v)| Json(Labels::from([(k.clone(), v.clone())])))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutputRow {
    pub attempt: i32,
    pub seq: i32,
    pub stream: String,
    pub data: String,
}

/// A job's output, all attempts, in order; `after` = (attempt, seq) of the last chunk seen.
pub async fn output(
    db: impl PgExecutor<'_>,
    job_id: i64,
    after: Option<(i32, i32)>,
    limit: i64,
) -> sqlx::Result<Vec<OutputRow>> {
    let (a, s) = after.unwrap_or((-1, -1));
    sqlx::query_as(
        "SELECT attempt, seq, stream, data FROM job_output
         WHERE job_id = $1 AND (attempt, seq) > ($2, $3)
         ORDER BY attempt, seq LIMIT $4",
    )
    .bind(job_id)
    .bind(a)
    .bind(s)
    .bind(limit)
    .fetch_all(db)
    .await
}

//! Retention of what grows without bound: finished jobs (their attempts go with them) and,
//! sooner, their output; finished tasks; audit events; scaling decisions and finished
//! recycles. Each is removed in batches of at most [`BATCH`] rows, one short statement per
//! batch, so that no lock is held for long and ingest, claims and pages go on meanwhile.
//! Run by the janitor on every console: a batch picks its rows with `SKIP LOCKED`, so two
//! consoles share the work instead of waiting for each other.
//!
//! Kept whatever their age: the jobs of a bake (its setup log and test report are its record)
//! and unfinished work.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;

/// Rows one statement removes at most.
pub const BATCH: i64 = 5000;

/// How long each kind of record is kept (days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub job_output_days: u32,
    pub jobs_days: u32,
    pub tasks_days: u32,
    pub audit_days: u32,
    pub decisions_days: u32,
}

/// What one pass removed, and the longest statement it ran (the longest any lock was held).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub job_output: u64,
    pub jobs: u64,
    pub tasks: u64,
    pub audit: u64,
    pub decisions: u64,
    pub longest: Duration,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.job_output + self.jobs + self.tasks + self.audit + self.decisions
    }
}

fn days_ago(now: OffsetDateTime, days: u32) -> OffsetDateTime {
    now - time::Duration::days(days.into())
}

/// Runs `statement` (bound to `cutoff`) until a batch removes fewer than [`BATCH`] rows.
async fn in_batches(
    pool: &PgPool,
    statement: &'static str,
    cutoff: OffsetDateTime,
    longest: &mut Duration,
) -> sqlx::Result<u64> {
    let mut removed = 0;
    loop {
        let started = Instant::now();
        let n = sqlx::query(statement)
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        *longest = (*longest).max(started.elapsed());
        removed += n;
        if n < BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// Removes the output of jobs finished before the cutoff, from where the last pass stopped.
/// Each statement takes the next finished jobs in (`finished_at`, id) order, removes at most
/// [`BATCH`] of their output rows, and moves the mark past them once none is left (a chatty
/// job's output takes several statements) — so a pass never reads jobs whose output is
/// already gone, and no statement removes more than a batch.
async fn job_output(
    pool: &PgPool,
    cutoff: OffsetDateTime,
    longest: &mut Duration,
) -> sqlx::Result<u64> {
    let mut removed = 0;
    loop {
        let started = Instant::now();
        let (rows, moved): (i64, bool) = sqlx::query_as(
            "WITH mark AS (SELECT COALESCE(m.through, '-infinity'::TIMESTAMPTZ) AS through,
                                  COALESCE(m.through_id, 0) AS through_id
                           FROM (SELECT 1) one LEFT JOIN retention_marks m ON m.what = 'job_output'),
                  -- The mark as scalar subqueries (init plans): the finished index's range.
                  done AS (SELECT j.id, j.finished_at FROM jobs j
                           WHERE j.state IN ('succeeded', 'failed', 'cancelled')
                             AND j.finished_at >= (SELECT through FROM mark) AND j.finished_at < $1
                             AND (j.finished_at, j.id) > ((SELECT through FROM mark), (SELECT through_id FROM mark))
                           ORDER BY j.finished_at, j.id LIMIT $3),
                  gone AS (DELETE FROM job_output o WHERE o.ctid = ANY (ARRAY(
                               SELECT o2.ctid FROM job_output o2 JOIN done ON o2.job_id = done.id LIMIT $2))
                           RETURNING 1),
                  last AS (SELECT finished_at, id FROM done ORDER BY finished_at DESC, id DESC LIMIT 1),
                  moved AS (INSERT INTO retention_marks (what, through, through_id)
                            SELECT 'job_output', finished_at, id FROM last
                            WHERE (SELECT count(*) FROM gone) < $2
                            ON CONFLICT (what) DO UPDATE
                                SET through = EXCLUDED.through, through_id = EXCLUDED.through_id
                            RETURNING 1)
             SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM moved)",
        )
        .bind(cutoff)
        .bind(BATCH)
        .bind(BATCH / 5)
        .fetch_one(pool)
        .await?;
        *longest = (*longest).max(started.elapsed());
        removed += rows as u64;
        // Done when the jobs ran out (nothing to move past) with nothing removed.
        if !moved && rows == 0 {
            return Ok(removed);
        }
    }
}

/// One retention pass over everything, as of `now`.
pub async fn pass(pool: &PgPool, keep: &Retention, now: OffsetDateTime) -> sqlx::Result<Report> {
    let mut r = Report::default();
    r.job_output = job_output(pool, days_ago(now, keep.job_output_days), &mut r.longest).await?;
    r.jobs = in_batches(
        pool,
        "DELETE FROM jobs WHERE id IN (
             SELECT j.id FROM jobs j
             WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < $1
               AND NOT EXISTS (SELECT 1 FROM bakes b WHERE b.setup_job_id = j.id OR b.test_job_id = j.id)
             ORDER BY j.finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        days_ago(now, keep.jobs_days),
        &mut r.longest,
    )
    .await?;
    r.tasks = in_batches(
        pool,
        "DELETE FROM tasks WHERE id IN (
             SELECT id FROM tasks WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1
             ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        days_ago(now, keep.tasks_days),
        &mut r.longest,
    )
    .await?;
    // Audit events have no index on their time (every action writes one): ids grow with
    // time, so the oldest are the lowest ids, read in the primary key's order.
    r.audit = in_batches(
        pool,
        "DELETE FROM audit_events WHERE id IN (
             SELECT id FROM audit_events WHERE id < COALESCE(
                 (SELECT id FROM audit_events WHERE at >= $1 ORDER BY id LIMIT 1), 9223372036854775807)
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        days_ago(now, keep.audit_days),
        &mut r.longest,
    )
    .await?;
    let decisions = days_ago(now, keep.decisions_days);
    r.decisions = in_batches(
        pool,
        "DELETE FROM scaling_decisions WHERE id IN (
             SELECT id FROM scaling_decisions WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        decisions,
        &mut r.longest,
    )
    .await?;
    r.decisions += in_batches(
        pool,
        "DELETE FROM recycles WHERE id IN (
             SELECT id FROM recycles WHERE state <> 'replacing' AND finished_at < $1
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        decisions,
        &mut r.longest,
    )
    .await?;
    Ok(r)
}

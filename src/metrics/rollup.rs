//! The rollup loop: every few seconds, recompute the 1-minute rollups of the minutes that got
//! new raw points (and the 1-hour rollups of their hours) and move a batch of rows from the
//! tables before partitioning, if any are left; now and then create the partitions ahead and
//! drop those past retention (`storage::maintain`). Several consoles may run it at once:
//! dirty minutes are claimed with SKIP LOCKED, maintenance is one console at a time.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

/// Dirty minutes per transaction.
const BATCH: i64 = 5000;
/// How often partitions are created ahead and retention is applied.
const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub raw_s: i64,
    pub minute_s: i64,
    pub hour_s: i64,
}

impl Retention {
    /// KILN_METRICS_RETENTION_DAYS's default, 7 days.
    pub const DEFAULT: Retention = Retention::for_raw_days(7);

    /// Raw points for KILN_METRICS_RETENTION_DAYS.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Retention::for_raw_days(settings.metrics_retention_days as i64)
    }

    /// Raw points for `days`; 1-minute rollups 30 days (at least as long); 1-hour rollups
    /// 400 days.
    pub const fn for_raw_days(days: i64) -> Self {
        let raw_s = days * 86_400;
        Retention {
            raw_s,
            minute_s: if raw_s > 30 * 86_400 {
                raw_s
            } else {
                30 * 86_400
            },
            hour_s: if raw_s > 400 * 86_400 {
                raw_s
            } else {
                400 * 86_400
            },
        }
    }
}

/// Rolls up every dirty minute now (in batches); returns how many were done.
pub async fn roll_up_all(pool: &PgPool) -> sqlx::Result<usize> {
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await?;
        let n = crate::db::metrics::roll_up(&mut tx, BATCH).await?;
        tx.commit().await?;
        done += n;
        if n == 0 {
            return Ok(done);
        }
    }
}

pub async fn run(
    pool: PgPool,
    every: Duration,
    retention: Retention,
    legacy: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let mut maintained = Instant::now();
    // Compaction runs beside the loop (a day's rebuild takes seconds; rollups go on).
    let mut compacting: Option<tokio::task::JoinHandle<()>> = None;
    // Where moving the legacy rows got to; None once both legacy tables are empty (or were
    // at start).
    let mut moving = legacy.then_some((0, 0));
    loop {
        if let Err(e) = roll_up_all(&pool).await {
            tracing::warn!(error = %e, "metric rollup failed; next try soon");
        }
        if let Some(after) = moving.as_mut() {
            let batch = crate::metrics::storage::MOVE_BATCH;
            match crate::metrics::storage::move_legacy(&pool, &retention, after, batch).await {
                Ok(0) => moving = None,
                Ok(n) => tracing::debug!(rows = n, "moved metric rows to the partitioned tables"),
                Err(e) => {
                    tracing::warn!(error = %e, "moving legacy metric rows failed; next try soon")
                }
            }
        }
        if maintained.elapsed() >= MAINTAIN_EVERY {
            maintained = Instant::now();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if let Err(e) = crate::metrics::storage::maintain(&pool, &retention, now).await {
                tracing::warn!(error = %e, "metric partition maintenance failed; next try later");
            }
            // Not while legacy rows are still moving into the old days' partitions.
            let idle = compacting.as_ref().is_none_or(|c| c.is_finished());
            if moving.is_none() && idle {
                let pool = pool.clone();
                compacting = Some(tokio::spawn(async move {
                    if let Err(e) = crate::metrics::storage::compact_closed(&pool, now).await {
                        tracing::warn!(error = %e, "compacting metric partitions failed; next try later");
                    }
                }));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
    }
}

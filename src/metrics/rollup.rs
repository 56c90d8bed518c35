//! The rollup loop: every few seconds, recompute the 1-minute rollups of the minutes that got
//! new raw points (and the 1-hour rollups of their hours); now and then drop what is past its
//! retention. Several consoles may run it at once: dirty minutes are claimed with SKIP LOCKED.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

/// Dirty minutes per transaction.
const BATCH: i64 = 5000;
/// How often retention is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub raw_s: i64,
    pub minute_s: i64,
    pub hour_s: i64,
}

impl Retention {
    /// Raw points for KILN_METRICS_RETENTION_DAYS; 1-minute rollups 30 days (at least as long);
    /// 1-hour rollups 400 days.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        let raw_s = (settings.metrics_retention_days * 86_400) as i64;
        Retention {
            raw_s,
            minute_s: raw_s.max(30 * 86_400),
            hour_s: raw_s.max(400 * 86_400),
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
    mut stopped: watch::Receiver<bool>,
) {
    let mut pruned = Instant::now();
    loop {
        if let Err(e) = roll_up_all(&pool).await {
            tracing::warn!(error = %e, "metric rollup failed; next try soon");
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            if let Err(e) = crate::db::metrics::prune(
                &pool,
                retention.raw_s,
                retention.minute_s,
                retention.hour_s,
            )
            .await
            {
                tracing::warn!(error = %e, "metric retention failed; next try later");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
    }
}

//! The console's own figures, recorded as ordinary metrics every sample interval (the product's
//! internal metrics): `kiln.jobs.queued` / `.running` (gauges), `kiln.jobs.succeeded` /
//! `.failed` (counters), `kiln.job.duration` (jobs finished since the last sample, as one
//! aggregate), `kiln.servers` (source `state:image`), `kiln.scaling.desired` (the capacity
//! the autoscaler wants, while it is on), `kiln.scaling.running` (enabled running workers),
//! `kiln.scaling.busy_slots` (jobs running on workers), each agent's `system.cpu`, `system.mem`,
//! `system.load`, `system.disk` (source: its server), and this process's `kiln.ec2.calls`
//! (counter) and `kiln.ec2.latency` (seconds, average since the last sample; source: the
//! process).
//!
//! The fleet-wide figures are written by one console at a time (an advisory lock); each
//! console writes its own EC2 figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::ingest::{Kind, Measurement};
use crate::telemetry::prometheus::Registry;

fn gauge(name: &str, source: &str, time: i64, v: f64) -> Measurement {
    Measurement {
        name: name.into(),
        source: source.into(),
        tags: BTreeMap::new(),
        kind: Kind::Gauge,
        time,
        count: 1,
        sum: v,
        min: v,
        max: v,
        last: v,
    }
}

fn counter(name: &str, source: &str, time: i64, v: f64) -> Measurement {
    Measurement {
        kind: Kind::Counter,
        ..gauge(name, source, time, v)
    }
}

/// What the previous sample saw, to turn totals into "since then".
#[derive(Default)]
pub struct Recorder {
    last_sample: Option<OffsetDateTime>,
    ec2_seen: (u64, f64),
}

impl Recorder {
    /// Samples once; returns how many measurements were stored.
    pub async fn sample(
        &mut self,
        pool: &PgPool,
        registry: &Registry,
        process: &str,
        heartbeat_s: u64,
    ) -> sqlx::Result<usize> {
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let since = self
            .last_sample
            .unwrap_or(now - time::Duration::seconds(60));
        let mut out = Vec::new();

        // This process's EC2 calls (every console records its own).
        let calls = registry.counter(crate::cloud::aws::calls::CALLS, &[]);
        let (n, secs) = registry.summary(crate::cloud::aws::calls::SECONDS);
        out.push(counter("kiln.ec2.calls", process, t, calls));
        if n > self.ec2_seen.0 {
            out.push(gauge(
                "kiln.ec2.latency",
                process,
                t,
                (secs - self.ec2_seen.1) / (n - self.ec2_seen.0) as f64,
            ));
        }
        self.ec2_seen = (n, secs);

        let mut tx = pool.begin().await?;
        let elected: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('kiln.metrics.recorder'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if elected {
            let (queued, running, succeeded, failed): (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'),
                        count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed')
                 FROM jobs",
            )
            .fetch_one(&mut *tx)
            .await?;
            out.push(gauge("kiln.jobs.queued", "", t, queued as f64));
            out.push(gauge("kiln.jobs.running", "", t, running as f64));
            out.push(counter("kiln.jobs.succeeded", "", t, succeeded as f64));
            out.push(counter("kiln.jobs.failed", "", t, failed as f64));
            let durations: (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
                "SELECT count(*), sum(d), min(d), max(d) FROM (
                     SELECT extract(epoch FROM finished_at - started_at)::FLOAT8 AS d FROM jobs
                     WHERE state IN ('succeeded', 'failed') AND finished_at > $1 AND finished_at <= $2
                       AND started_at IS NOT NULL) x",
            )
            .bind(since)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if let (n, Some(sum), Some(min), Some(max)) = durations
                && n > 0
            {
                out.push(Measurement {
                    count: n,
                    sum,
                    min,
                    max,
                    last: max,
                    ..gauge("kiln.job.duration", "", t, 0.0)
                });
            }
            let servers: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT state, image_id, count(*) FROM servers WHERE state <> 'terminated' GROUP BY 1, 2",
            )
            .fetch_all(&mut *tx)
            .await?;
            for (state, image, n) in servers {
                out.push(gauge(
                    "kiln.servers",
                    &format!("{state}:{image}"),
                    t,
                    n as f64,
                ));
            }
            // The Scaling page's chart: what the autoscaler wants, what runs, what is busy
            // (the queue's depth is kiln.jobs.queued).
            let (desired, running, busy): (Option<i32>, i64, i64) = sqlx::query_as(
                "SELECT (SELECT desired FROM scaling_state),
                        (SELECT count(*) FROM servers
                          WHERE purpose = 'worker' AND state = 'running' AND mode = 'enabled'),
                        (SELECT count(*) FROM jobs j JOIN servers s ON s.id = j.server_id
                          WHERE j.state = 'running' AND s.purpose = 'worker')",
            )
            .fetch_one(&mut *tx)
            .await?;
            if let Some(desired) = desired {
                out.push(gauge("kiln.scaling.desired", "", t, f64::from(desired)));
            }
            out.push(gauge("kiln.scaling.running", "", t, running as f64));
            out.push(gauge("kiln.scaling.busy_slots", "", t, busy as f64));
            type Figures = (String, Option<f64>, Option<f64>, Option<f64>, Option<f64>);
            let agents: Vec<Figures> = sqlx::query_as(
                "SELECT server_id, cpu_percent, mem_percent, load1, disk_percent FROM agents
                 WHERE last_heartbeat_at > now() - make_interval(secs => $1)",
            )
            .bind((heartbeat_s * 3).max(15) as f64)
            .fetch_all(&mut *tx)
            .await?;
            for (server, cpu, mem, load, disk) in agents {
                for (name, v) in [
                    ("system.cpu", cpu),
                    ("system.mem", mem),
                    ("system.load", load),
                    ("system.disk", disk),
                ] {
                    if let Some(v) = v.filter(|v| v.is_finite()) {
                        out.push(gauge(name, &server, t, v));
                    }
                }
            }
        }
        let stored = match crate::db::metrics::store(&mut tx, &out).await? {
            Ok(n) => n,
            Err(why) => {
                tracing::warn!(why, "internal metrics refused");
                0
            }
        };
        tx.commit().await?;
        self.last_sample = Some(now);
        Ok(stored)
    }
}

pub async fn run(
    pool: PgPool,
    registry: Arc<Registry>,
    process: String,
    every: Duration,
    heartbeat_s: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut recorder = Recorder::default();
    loop {
        if let Err(e) = recorder
            .sample(&pool, &registry, &process, heartbeat_s)
            .await
        {
            tracing::warn!(error = %e, "recording internal metrics failed; next try soon");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
    }
}

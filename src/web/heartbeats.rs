//! Agents' heartbeats, written in batches. An idle agent's heartbeat is answered from memory
//! (the token cache knows its server's standing) and its figures wait in [`Heartbeats`] for
//! the next flush: one statement per console per flush interval writes every agent's
//! `last_heartbeat_at`/`last_seen_at` and figures and, in the same statement, verifies the
//! tokens agents use (`web::agent_tokens`).
//!
//! The buffer holds one entry per server (a newer heartbeat replaces an older one), so it is
//! bounded by the number of agents. Bounds (ARCHITECTURE.md invariants): a server's
//! `last_heartbeat_at` lags its agent's heartbeat by at most one flush interval (at most
//! 1 s; rollout health, autoscaling and alerts rely on it); a console that dies loses at most
//! one interval of heartbeats, which the agents' next heartbeats (to any console) repair.
//! Lease renewals are not buffered: a heartbeat that lists running jobs renews their leases
//! in its own statement before it is answered, so an acknowledged renewal is never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::agent::wire::SystemMetrics;
use crate::web::agent_tokens::AgentTokens;

/// The longest flush interval allowed (`KILN_HEARTBEAT_FLUSH_MS`): the lag others rely on.
pub const MAX_FLUSH: Duration = Duration::from_secs(1);

/// One server's latest heartbeat, not yet written.
#[derive(Debug, Clone)]
pub struct Beat {
    pub metrics: SystemMetrics,
    pub at: Instant,
}

#[derive(Default)]
pub struct Heartbeats {
    pending: Mutex<HashMap<String, Beat>>,
}

impl Heartbeats {
    pub fn record(&self, server_id: &str, metrics: SystemMetrics) {
        let beat = Beat {
            metrics,
            at: Instant::now(),
        };
        self.pending
            .lock()
            .expect("heartbeat buffer")
            .insert(server_id.to_owned(), beat);
    }

    fn take(&self) -> HashMap<String, Beat> {
        std::mem::take(&mut *self.pending.lock().expect("heartbeat buffer"))
    }

    /// Puts back beats a failed flush could not write, unless newer ones came meanwhile.
    fn restore(&self, beats: HashMap<String, Beat>) {
        let mut pending = self.pending.lock().expect("heartbeat buffer");
        for (server, beat) in beats {
            pending.entry(server).or_insert(beat);
        }
    }
}

/// Writes the pending heartbeats and verifies the tokens in use, in one statement.
pub async fn flush(pool: &PgPool, beats: &Heartbeats, tokens: &AgentTokens) -> sqlx::Result<()> {
    let pending = beats.take();
    let asked = tokens.in_use();
    if pending.is_empty() && asked.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let rows: Vec<_> = pending
        .iter()
        .map(|(server, beat)| crate::db::agents::Heard {
            server_id: server,
            ago: started.saturating_duration_since(beat.at),
            metrics: &beat.metrics,
        })
        .collect();
    match crate::db::agents::heartbeats(pool, &rows, &asked).await {
        Ok(found) => {
            tokens.verified(&asked, found, started);
            Ok(())
        }
        Err(e) => {
            beats.restore(pending);
            Err(e)
        }
    }
}

/// Flushes every `every` until `stopped`, and once more then.
pub async fn run(
    pool: PgPool,
    beats: Arc<Heartbeats>,
    tokens: Arc<AgentTokens>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        if let Err(e) = flush(&pool, &beats, &tokens).await {
            tracing::warn!(error = %e, "writing agents' heartbeats failed; next try soon");
        }
        if stop {
            return;
        }
    }
}

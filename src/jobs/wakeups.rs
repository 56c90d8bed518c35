//! Wake-ups for agents' long-polling claims. One LISTEN connection per console process turns
//! each `kiln_jobs` NOTIFY ("n jobs became claimable") into n in-process wake-ups, each of a
//! single waiting claim: a waiting claim holds no database connection, and one new job
//! wakes one agent rather than all of them. When the LISTEN connection was lost (and
//! notifications may have been missed), every waiting claim is woken to look again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};

use crate::db::jobs::CHANNEL;

/// More wake-ups than this per notification are pointless: no process holds that many
/// waiting claims worth waking one by one.
const MAX_WAKEUPS_PER_NOTIFY: usize = 10_000;

pub use crate::db::jobs::PINNED;

#[derive(Clone, Default)]
pub struct Wakeups {
    notify: Arc<Notify>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self::default()
    }

    /// A future that completes at the next wake-up handed to it. Enable it (or poll it)
    /// before looking for work, so a wake-up arriving meanwhile is not lost.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Hands a wake-up on to another waiting claim (one that was woken but could not use it).
    pub fn pass_on(&self) {
        self.notify.notify_one();
    }

    /// The console is stopping: waiting claims answer now, and new ones do not wait.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wake(&self, n: usize) {
        for _ in 0..n.min(MAX_WAKEUPS_PER_NOTIFY) {
            self.notify.notify_one();
        }
    }

    fn wake_all(&self) {
        self.notify.notify_waiters();
    }

    /// Listens until `stopped` turns true, reconnecting after a lost connection.
    pub async fn listen(self, pool: PgPool, mut stopped: watch::Receiver<bool>) {
        loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            let mut listener = match connected {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "job wake-up listener cannot LISTEN; claims fall back to their timeout");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = stopped.changed() => return,
                    }
                }
            };
            // Jobs may have been enqueued while nobody listened.
            self.wake_all();
            loop {
                tokio::select! {
                    message = listener.recv() => match message {
                        // "all": a job only one server may take (a builder's pinned step);
                        // waking one waiter could wake another server, which would go back
                        // to waiting with the wake-up spent.
                        Ok(n) if n.payload() == PINNED => self.wake_all(),
                        Ok(n) => self.wake(n.payload().parse().unwrap_or(1)),
                        Err(e) => {
                            tracing::warn!(error = %e, "job wake-up listener lost its connection; reconnecting");
                            self.wake_all();
                            break;
                        }
                    },
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

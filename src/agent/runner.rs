//! Runs one job attempt: `sh -c COMMAND` in a fresh working directory, in its own process
//! group (so a timeout or a stop kills everything it started), with its output streamed to
//! the console in numbered chunks and its result reported once all output is delivered.
//!
//! Output waits in a bounded outbox while the console is unreachable; past the bound, new
//! output is dropped and a note says how much, so a chatty job cannot eat the server's memory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use super::client::{Backoff, CallError, Client};
use super::wire::{self, Chunk, ClaimedJob, Ending, Finish, Log, Stream};

/// Output held for the console at most (per job) while it is unreachable.
const OUTBOX_LIMIT_BYTES: usize = 8 * 1024 * 1024;
const READ_BYTES: usize = 16 * 1024;
const SEND_EVERY: Duration = Duration::from_millis(250);

/// Why a run ended without a result to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The console said this attempt no longer counts (cancelled, lost) or refused its output.
    Superseded,
    /// The agent is shutting down.
    Shutdown,
}

struct OutboxState {
    next_seq: i32,
    pending: VecDeque<Chunk>,
    pending_bytes: usize,
    dropped_bytes: usize,
}

/// The numbered output of one attempt on its way to the console.
struct Outbox {
    state: Mutex<OutboxState>,
    wake: Notify,
}

impl Outbox {
    fn new() -> Self {
        Self {
            state: Mutex::new(OutboxState {
                next_seq: 0,
                pending: VecDeque::new(),
                pending_bytes: 0,
                dropped_bytes: 0,
            }),
            wake: Notify::new(),
        }
    }

    fn push(&self, stream: Stream, data: String) {
        if data.is_empty() {
            return;
        }
        let mut s = self.state.lock().expect("outbox lock");
        if s.pending_bytes + data.len() > OUTBOX_LIMIT_BYTES {
            s.dropped_bytes += data.len();
            return;
        }
        if s.dropped_bytes > 0 {
            let note = format!(
                "[kiln agent: {} bytes of output were dropped while the console was unreachable]\n",
                s.dropped_bytes
            );
            s.dropped_bytes = 0;
            Self::append(&mut s, Stream::Kiln, note);
        }
        Self::append(&mut s, stream, data);
        drop(s);
        self.wake.notify_one();
    }

    fn append(s: &mut OutboxState, stream: Stream, data: String) {
        let seq = s.next_seq;
        s.next_seq += 1;
        s.pending_bytes += data.len();
        s.pending.push_back(Chunk { seq, stream, data });
    }

    /// The oldest pending chunks, still pending until [`Outbox::delivered`].
    fn batch(&self) -> Vec<Chunk> {
        let s = self.state.lock().expect("outbox lock");
        s.pending
            .iter()
            .take(wire::MAX_CHUNKS_PER_POST)
            .cloned()
            .collect()
    }

    fn delivered(&self, n: usize) {
        let mut s = self.state.lock().expect("outbox lock");
        for _ in 0..n {
            if let Some(c) = s.pending.pop_front() {
                s.pending_bytes -= c.data.len();
            }
        }
    }
}

/// Delivers an outbox's chunks until `done` and the outbox is empty. Returns Err when the
/// console refused the output (the attempt no longer counts).
async fn deliver(
    client: &Client,
    job: &ClaimedJob,
    outbox: &Outbox,
    done: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), CallError> {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        let batch = outbox.batch();
        if batch.is_empty() {
            if *done.borrow() {
                return Ok(());
            }
            let mut done = done.clone();
            tokio::select! {
                _ = outbox.wake.notified() => {}
                _ = done.changed() => {}
                _ = tokio::time::sleep(SEND_EVERY) => {}
            }
            continue;
        }
        let n = batch.len();
        let body = Log {
            job_id: job.job_id,
            attempt: job.attempt,
            chunks: batch,
        };
        match client
            .post::<_, serde_json::Value>("log", &body, Duration::from_secs(30))
            .await
        {
            Ok(_) => {
                backoff.reset();
                outbox.delivered(n);
                // Let output gather a little between posts rather than post every line.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e @ CallError::Refused { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(job.id = job.job_id, error = %e, "cannot deliver output yet; keeping it");
                tokio::time::sleep(backoff.step()).await;
            }
        }
    }
}

/// Reads a pipe into the outbox, splitting only on UTF-8 character boundaries.
async fn pump(mut pipe: impl AsyncRead + Unpin, stream: Stream, outbox: Arc<Outbox>) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let valid = match std::str::from_utf8(&carry) {
            Ok(_) => carry.len(),
            // An incomplete character at the end waits for the next read; invalid bytes
            // in the middle are replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => carry.len(),
        };
        let rest = carry.split_off(valid);
        outbox.push(stream, String::from_utf8_lossy(&carry).into_owned());
        carry = rest;
    }
    if !carry.is_empty() {
        outbox.push(stream, String::from_utf8_lossy(&carry).into_owned());
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on our own child's process group; no memory is involved.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// Runs a claimed attempt to its end and reports it. `stop` fires when the attempt no
/// longer counts or the agent shuts down (with the reason in `why`).
pub async fn run(
    client: Client,
    job: ClaimedJob,
    workdir_root: PathBuf,
    stop: Arc<Notify>,
    why: Arc<Mutex<Option<Stopped>>>,
) {
    let outbox = Arc::new(Outbox::new());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let sender = {
        let (client, job, outbox, done_rx) = (client.clone(), job.clone(), outbox.clone(), done_rx);
        let stop = stop.clone();
        let why = why.clone();
        tokio::spawn(async move {
            let result = deliver(&client, &job, &outbox, &done_rx).await;
            if let Err(e) = &result {
                tracing::warn!(job.id = job.job_id, error = %e, "the console refused this attempt's output; stopping it");
                why.lock()
                    .expect("why lock")
                    .get_or_insert(Stopped::Superseded);
                stop.notify_one();
            }
            result
        })
    };

    let dir = workdir_root.join(format!("job-{}-{}", job.job_id, job.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::fs::create_dir_all(&dir).and_then(|_| {
        let mut command = tokio::process::Command::new("sh");
        // SAFETY: prctl is async-signal-safe; between fork and exec it only sets a flag.
        // A job dies with its agent (as it would with its server), instead of running on
        // unwatched after the agent was killed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
            .arg("-c")
            .arg(&job.command)
            .current_dir(&dir)
            .env("KILN_JOB_ID", job.job_id.to_string())
            .env("KILN_JOB_ATTEMPT", job.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    });

    let (ending, exit_code, message) = match started {
        Err(e) => (Ending::NotStarted, None, e.to_string()),
        Ok(mut child) => {
            let pid = child.id();
            let readers = [
                child
                    .stdout
                    .take()
                    .map(|p| tokio::spawn(pump(p, Stream::Stdout, outbox.clone()))),
                child
                    .stderr
                    .take()
                    .map(|p| tokio::spawn(pump(p, Stream::Stderr, outbox.clone()))),
            ];
            let timeout = Duration::from_secs(job.timeout_s.max(1));
            let ended = tokio::select! {
                status = child.wait() => Some(status),
                _ = tokio::time::sleep(timeout) => None,
                _ = stop.notified() => {
                    kill_group(pid);
                    let _ = child.wait().await;
                    let reason = why.lock().expect("why lock").unwrap_or(Stopped::Shutdown);
                    tracing::info!(job.id = job.job_id, attempt = job.attempt, ?reason, "attempt stopped");
                    let _ = done_tx.send(true);
                    sender.abort();
                    let _ = std::fs::remove_dir_all(&dir);
                    return;
                }
            };
            // Whatever the command left running in its group goes with it.
            kill_group(pid);
            let result = match ended {
                Some(Ok(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status.code().or_else(|| status.signal().map(|s| 128 + s));
                    (Ending::Exited, code, String::new())
                }
                Some(Err(e)) => (Ending::NotStarted, None, e.to_string()),
                None => {
                    let _ = child.wait().await;
                    outbox.push(
                        Stream::Kiln,
                        format!(
                            "[kiln agent: killed after its timeout of {} s]\n",
                            job.timeout_s
                        ),
                    );
                    (Ending::TimedOut, None, String::new())
                }
            };
            // The pipes close once the group is gone; bounded in case something escaped it.
            for reader in readers.into_iter().flatten() {
                let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
            }
            result
        }
    };
    if ending == Ending::NotStarted {
        outbox.push(
            Stream::Kiln,
            format!("[kiln agent: could not start: {message}]\n"),
        );
    }
    let _ = done_tx.send(true);
    let delivered = sender.await;
    let _ = std::fs::remove_dir_all(&dir);
    if !matches!(delivered, Ok(Ok(()))) {
        return;
    }
    report(&client, &job, ending, exit_code, message, &stop).await;
}

/// Reports the result until the console takes it or refuses it for good.
async fn report(
    client: &Client,
    job: &ClaimedJob,
    ending: Ending,
    exit_code: Option<i32>,
    message: String,
    stop: &Notify,
) {
    let body = Finish {
        job_id: job.job_id,
        attempt: job.attempt,
        ending,
        exit_code,
        message,
    };
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match client
            .post::<_, serde_json::Value>("finish", &body, Duration::from_secs(30))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    job.id = job.job_id,
                    attempt = job.attempt,
                    ?ending,
                    ?exit_code,
                    "attempt reported"
                );
                return;
            }
            Err(e @ CallError::Refused { .. }) => {
                tracing::warn!(job.id = job.job_id, attempt = job.attempt, error = %e, "result refused; dropping it");
                return;
            }
            Err(e) => {
                tracing::warn!(job.id = job.job_id, error = %e, "cannot report the result yet; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.step()) => {}
                    // Shutting down: the console requeues the attempt when the lease runs out.
                    _ = stop.notified() => return,
                }
            }
        }
    }
}

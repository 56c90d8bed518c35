//! The agent that runs on every server (`kiln agent`). It knows the wire protocol
//! ([`wire`]) and nothing of the database or the cloud:
//!
//! 1. registers (enrollment token + instance id -> its own agent token), retrying while the
//!    console does not know the server yet or cannot be reached;
//! 2. heartbeats every few seconds with the server's figures and its running attempts; the
//!    answer says whether the server is enabled, which attempts to stop, and whether to exit;
//! 3. claims work with a long-poll while it has free slots and its server is enabled, and
//!    runs each attempt ([`runner`]).
//!
//! A console outage is ridden out: running jobs keep running, their output waits (bounded),
//! calls retry with backoff and jitter.

pub mod client;
pub mod metrics;
pub mod runner;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::sync::{Notify, watch};

use client::{Backoff, CallError, Client};
use runner::Stopped;
use wire::{AttemptRef, Claim, ClaimReply, Heartbeat, HeartbeatReply, Register, Registered};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The console's URL.
    #[arg(long)]
    pub url: String,
    /// Enrollment token, exchanged for the agent's own credentials at registration.
    #[arg(long)]
    pub token: String,
    /// This server's instance id (default: from EC2's instance metadata service).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// How many jobs to run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Where jobs' working directories go, and the agent's credentials once registered (so
    /// that a restarted agent carries on as itself). Default: $TMPDIR/kiln-agent/<instance id>.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// One running attempt, as the heartbeat reports it and as a stop reaches it.
struct Running {
    stop: Arc<Notify>,
    why: Arc<Mutex<Option<Stopped>>>,
}

struct Shared {
    client: Client,
    slots: u32,
    running: Mutex<HashMap<AttemptRef, Running>>,
    /// A slot came free.
    freed: Notify,
    /// `enabled` or `disabled`, as the console last said.
    mode: watch::Sender<String>,
    /// Set once: the server is terminated, or the agent was told to stop.
    exit: watch::Sender<bool>,
}

impl Shared {
    fn free_slots(&self) -> u32 {
        self.slots
            .saturating_sub(self.running.lock().expect("running lock").len() as u32)
    }

    fn stop(&self, attempt: &AttemptRef, why: Stopped) {
        if let Some(r) = self.running.lock().expect("running lock").get(attempt) {
            r.why.lock().expect("why lock").get_or_insert(why);
            r.stop.notify_one();
        }
    }

    fn stop_all(&self, why: Stopped) {
        for r in self.running.lock().expect("running lock").values() {
            r.why.lock().expect("why lock").get_or_insert(why);
            r.stop.notify_one();
        }
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if args.slots == 0 || args.slots > wire::MAX_SLOTS {
        anyhow::bail!("--slots must be between 1 and {}", wire::MAX_SLOTS);
    }
    let client = Client::new(&args.url)?;
    let instance_id = match &args.instance_id {
        Some(id) => id.clone(),
        None => instance_id_from_imds().await?,
    };

    let workdir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-agent").join(&instance_id));
    let registered = tokio::select! {
        r = resume_or_register(&client, &args, &instance_id, &workdir) => r?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let shared = Arc::new(Shared {
        client: client.with_token(registered.agent_token.clone()),
        slots: args.slots,
        running: Mutex::new(HashMap::new()),
        freed: Notify::new(),
        mode: watch::channel("enabled".to_owned()).0,
        exit: watch::channel(false).0,
    });
    let beat = tokio::spawn(heartbeats(
        shared.clone(),
        Duration::from_secs(registered.heartbeat_s.max(1)),
    ));
    let claims = tokio::spawn(claims(shared.clone(), workdir));
    let mut exit = shared.exit.subscribe();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = exit.wait_for(|e| *e) => tracing::info!("the server is terminated: exiting"),
    }
    let _ = shared.exit.send(true);
    // The attempts in hand stop with us; the console requeues them (lost, not failed).
    shared.stop_all(Stopped::Shutdown);
    beat.abort();
    claims.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// The agent's credentials from an earlier run of this agent on this server, when the
/// console still knows them; else a registration with the enrollment token, whose answer is
/// kept for the next run. An agent restarted by systemd after its launch's enrollment token
/// has expired (24 h) thus carries on; its previous run's jobs are requeued after their
/// lease, as a dead agent's are.
async fn resume_or_register(
    client: &Client,
    args: &AgentArgs,
    instance_id: &str,
    workdir: &std::path::Path,
) -> anyhow::Result<Registered> {
    let path = workdir.join(CREDENTIALS);
    if let Some(saved) = load_credentials(&path, &args.url, instance_id) {
        let probe = Heartbeat {
            running: Vec::new(),
            metrics: Default::default(),
        };
        match client
            .with_token(saved.agent_token.clone())
            .post::<_, HeartbeatReply>("heartbeat", &probe, Duration::from_secs(15))
            .await
        {
            Err(CallError::Refused { status: 401, .. }) => {
                tracing::info!(
                    "the console no longer knows the saved credentials; registering again"
                );
            }
            // Accepted, or the console cannot say right now: the heartbeats will tell.
            _ => {
                tracing::info!(server = %saved.server_id, slots = args.slots, "agent resumed with its saved credentials");
                return Ok(saved);
            }
        }
    }
    let registered = register(client, args, instance_id).await?;
    tracing::info!(server = %registered.server_id, slots = args.slots, "agent registered");
    if let Err(e) = save_credentials(&path, &args.url, &registered) {
        tracing::warn!(error = %e, path = %path.display(), "could not keep the credentials; a restart will need a valid enrollment token");
    }
    Ok(registered)
}

/// The file, in the agent's work directory, that keeps its credentials between runs.
const CREDENTIALS: &str = ".kiln-agent-credentials.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    url: String,
    registered: Registered,
}

/// The saved credentials when they are this server's, for this console.
fn load_credentials(path: &std::path::Path, url: &str, instance_id: &str) -> Option<Registered> {
    let saved: Saved = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (saved.url == url && saved.registered.server_id == instance_id).then_some(saved.registered)
}

/// Written whole (a temporary file renamed over the old one), readable by this user only.
fn save_credentials(
    path: &std::path::Path,
    url: &str,
    registered: &Registered,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(&Saved {
        url: url.to_owned(),
        registered: registered.clone(),
    })?)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

async fn register(
    client: &Client,
    args: &AgentArgs,
    instance_id: &str,
) -> anyhow::Result<Registered> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let body = Register {
        protocol: wire::PROTOCOL,
        enrollment_token: args.token.clone(),
        instance_id: instance_id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        slots: args.slots,
        hostname,
    };
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        match client
            .post::<_, Registered>("register", &body, Duration::from_secs(30))
            .await
        {
            Ok(r) => return Ok(r),
            // The launch has not recorded this server yet: it will.
            Err(CallError::Refused {
                status: 404,
                message,
            }) => {
                tracing::info!(%message, "not known to the console yet; retrying");
            }
            Err(e @ CallError::Refused { .. }) => {
                anyhow::bail!("registration refused: {e}");
            }
            Err(e) => tracing::warn!(error = %e, "cannot register yet; retrying"),
        }
        tokio::time::sleep(backoff.step()).await;
    }
}

async fn heartbeats(shared: Arc<Shared>, every: Duration) {
    let mut sampler = metrics::Sampler::new();
    loop {
        let running: Vec<AttemptRef> = shared
            .running
            .lock()
            .expect("running lock")
            .keys()
            .copied()
            .collect();
        let body = Heartbeat {
            running,
            metrics: sampler.sample(),
        };
        match shared
            .client
            .post::<_, HeartbeatReply>("heartbeat", &body, Duration::from_secs(15))
            .await
        {
            Ok(reply) => {
                for attempt in &reply.stop {
                    tracing::info!(
                        job.id = attempt.job_id,
                        attempt = attempt.attempt,
                        "the console says this attempt no longer counts; stopping it"
                    );
                    shared.stop(attempt, Stopped::Superseded);
                }
                shared.mode.send_if_modified(|m| {
                    let changed = *m != reply.mode;
                    *m = reply.mode.clone();
                    changed
                });
                if reply.terminate {
                    let _ = shared.exit.send(true);
                    return;
                }
            }
            Err(CallError::Refused { status: 401, .. }) => {
                tracing::error!(
                    "the console no longer knows this agent's token (another agent registered for this server?); exiting"
                );
                let _ = shared.exit.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; running jobs carry on"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn claims(shared: Arc<Shared>, workdir: PathBuf) {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    let mut mode = shared.mode.subscribe();
    loop {
        if mode.borrow_and_update().as_str() != "enabled" {
            // Disabled: claim nothing until enabled again (the heartbeat tells us).
            let _ = mode.changed().await;
            continue;
        }
        let free = shared.free_slots();
        if free == 0 {
            shared.freed.notified().await;
            continue;
        }
        let body = Claim {
            slots: free,
            wait_s: 25,
        };
        let reply = shared
            .client
            .post::<_, ClaimReply>("claim", &body, Duration::from_secs(25 + 15))
            .await;
        let reply = match reply {
            Ok(r) => {
                backoff.reset();
                r
            }
            Err(CallError::Refused { status: 401, .. }) => {
                let _ = shared.exit.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                tokio::time::sleep(backoff.step()).await;
                continue;
            }
        };
        if reply.terminate {
            let _ = shared.exit.send(true);
            return;
        }
        if reply.jobs.is_empty() && reply.mode != "enabled" {
            shared.mode.send_replace(reply.mode);
            continue;
        }
        for job in reply.jobs {
            let attempt = AttemptRef {
                job_id: job.job_id,
                attempt: job.attempt,
            };
            let stop = Arc::new(Notify::new());
            let why = Arc::new(Mutex::new(None));
            shared.running.lock().expect("running lock").insert(
                attempt,
                Running {
                    stop: stop.clone(),
                    why: why.clone(),
                },
            );
            tracing::info!(job.id = job.job_id, attempt = job.attempt, "running");
            let shared = shared.clone();
            let workdir = workdir.clone();
            tokio::spawn(async move {
                runner::run(shared.client.clone(), job, workdir, stop, why).await;
                shared
                    .running
                    .lock()
                    .expect("running lock")
                    .remove(&attempt);
                shared.freed.notify_one();
            });
        }
    }
}

/// The instance id from EC2's instance metadata service (IMDSv2: a session token first).
async fn instance_id_from_imds() -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let base = "http://169.254.169.254/latest";
    let token = http
        .put(format!("{base}/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            anyhow::anyhow!(
                "no --instance-id given and EC2's metadata service did not answer ({e}); pass --instance-id"
            )
        })?
        .text()
        .await?;
    let id = http
        .get(format!("{base}/meta-data/instance-id"))
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(id.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_for_this_server_and_console_only_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kiln-creds-{}", std::process::id()));
        let path = dir.join(CREDENTIALS);
        let registered = Registered {
            agent_token: "kiln_agent_x".into(),
            server_id: "i-0abc".into(),
            heartbeat_s: 5,
            lease_s: 60,
        };
        save_credentials(&path, "https://kiln.example.com", &registered).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let back = load_credentials(&path, "https://kiln.example.com", "i-0abc");
        let other_console = load_credentials(&path, "https://other.example.com", "i-0abc");
        let other_server = load_credentials(&path, "https://kiln.example.com", "i-0def");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
        assert_eq!(back.map(|r| r.agent_token), Some("kiln_agent_x".into()));
        assert!(other_console.is_none() && other_server.is_none());
    }
}

//! The agent protocol's messages (`/agent/v1/…`), shared by the agent and the console: the
//! only thing the two have in common. Changing a message in a way an older agent cannot read
//! means bumping [`PROTOCOL`]; the console refuses agents of another protocol with a message
//! that says which one it speaks.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// Limits the console enforces and a well-behaved agent stays within.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
pub const MAX_CHUNKS_PER_POST: usize = 64;
pub const MAX_SLOTS: u32 = 64;
/// The longest a claim is held open waiting for work.
pub const MAX_WAIT_S: u64 = 30;

/// `POST /agent/v1/register`, authenticated by the enrollment token in the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    pub protocol: u32,
    pub enrollment_token: String,
    pub instance_id: String,
    pub version: String,
    pub slots: u32,
    #[serde(default)]
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The per-server credential for every later call (`Authorization: Bearer …`).
    pub agent_token: String,
    pub server_id: String,
    pub heartbeat_s: u64,
    pub lease_s: u64,
}

/// A job attempt the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub job_id: i64,
    pub attempt: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemMetrics {
    pub cpu_percent: Option<f64>,
    pub mem_percent: Option<f64>,
    pub load1: Option<f64>,
    pub disk_percent: Option<f64>,
}

/// `POST /agent/v1/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub running: Vec<AttemptRef>,
    #[serde(default)]
    pub metrics: SystemMetrics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// `enabled` or `disabled`: a disabled server claims nothing (it may be enabled again).
    pub mode: String,
    /// The server is terminated (or terminating): stop and exit.
    pub terminate: bool,
    /// Attempts the agent reported that no longer count (cancelled, or lost and requeued):
    /// stop running them.
    pub stop: Vec<AttemptRef>,
}

/// `POST /agent/v1/claim`: a long-poll for up to `slots` jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claim {
    pub slots: u32,
    /// How long the console may hold the request open when there is no work (capped).
    #[serde(default)]
    pub wait_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub attempt: i32,
    pub command: String,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimReply {
    pub jobs: Vec<ClaimedJob>,
    pub mode: String,
    pub terminate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines the agent itself writes into a job's log (start, timeout, dropped output).
    Kiln,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Kiln => "kiln",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    /// Numbered from 0 per attempt; a resent chunk is recognised by its number.
    pub seq: i32,
    pub stream: Stream,
    pub data: String,
}

/// `POST /agent/v1/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log {
    pub job_id: i64,
    pub attempt: i32,
    pub chunks: Vec<Chunk>,
}

/// How a command ended on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// It exited (by itself) with `exit_code`.
    Exited,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It could not be started (the shell is missing, the working directory failed).
    NotStarted,
}

/// `POST /agent/v1/finish`: the attempt's result, after all its output was delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finish {
    pub job_id: i64,
    pub attempt: i32,
    pub ending: Ending,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: String,
}

/// The body of every 4xx/5xx the console sends an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
}

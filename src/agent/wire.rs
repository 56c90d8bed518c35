//! The agent protocol's messages (`/agent/v1/…`), shared by the agent and the console: the
//! only thing the two have in common.
//!
//! Compatibility across an upgrade of the console: servers launched before it run the old
//! agent until they are replaced, so the console keeps serving them.
//! - Adding a field is not a new protocol: a new field the console sends is ignored by older
//!   agents (no message denies unknown fields), a new field an agent sends has a
//!   `#[serde(default)]` so older agents may leave it out.
//! - Anything else (removing, renaming or retyping a field, changing a meaning) bumps
//!   [`PROTOCOL`], and [`OLDEST_PROTOCOL`] stays at the previous version for at least one
//!   release: the console then answers each agent in the version it registered with.
//!   Agents outside `OLDEST_PROTOCOL..=PROTOCOL` are refused with a message that says which
//!   versions the console speaks.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;
/// The oldest protocol version the console still serves (see the module's comment).
pub const OLDEST_PROTOCOL: u32 = 1;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent of this build reads the replies of a later console that added fields.
    #[test]
    fn an_agent_ignores_fields_a_later_console_adds() {
        let reply: HeartbeatReply = serde_json::from_str(
            r#"{"mode": "enabled", "terminate": false, "stop": [], "drain_by": "2027-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(reply.mode, "enabled");
        let claim: ClaimReply = serde_json::from_str(
            r#"{"jobs": [{"job_id": 1, "attempt": 1, "command": "true", "timeout_s": 60, "env": {}}], "mode": "enabled", "terminate": false, "priority": 2}"#,
        )
        .unwrap();
        assert_eq!(claim.jobs[0].command, "true");
    }

    /// A console of this build reads what an agent of an earlier build sends, which lacks the
    /// fields added since (each has a default).
    #[test]
    fn the_console_reads_an_agent_that_leaves_out_later_fields() {
        let register: Register = serde_json::from_str(
            r#"{"protocol": 1, "enrollment_token": "t", "instance_id": "i-1", "version": "0.1.0", "slots": 1}"#,
        )
        .unwrap();
        assert_eq!(register.hostname, "");
        let heartbeat: Heartbeat = serde_json::from_str("{}").unwrap();
        assert!(heartbeat.running.is_empty());
        assert!((OLDEST_PROTOCOL..=PROTOCOL).contains(&register.protocol));
    }
}

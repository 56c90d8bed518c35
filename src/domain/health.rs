use std::time::Duration;

/// An agent is healthy when it heartbeated within three heartbeat intervals (at least 15 s):
/// one late heartbeat is not a sick agent. Rollouts and bakes judge agents by this one window.
pub fn agent_health_window(heartbeat_s: u64) -> Duration {
    Duration::from_secs((heartbeat_s * 3).max(15))
}

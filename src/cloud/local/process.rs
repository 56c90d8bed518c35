//! The processes behind local servers: start `kiln agent`, check it is still alive (by pid
//! and by its command line, so a reused pid is not mistaken for it), stop it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Starts `kiln agent` for a server in its own process group, so that a Ctrl-C at the
/// console's terminal does not take the fleet down with it: local servers outlive the
/// console, like EC2 instances do. Output goes to a log file per server.
pub fn spawn_agent(
    exe: &PathBuf,
    server_id: &str,
    console_url: &str,
    token: &str,
    slots: u32,
    log_dir: &PathBuf,
    env: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<u32> {
    std::fs::create_dir_all(log_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{server_id}.log")))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "agent",
            "--instance-id",
            server_id,
            "--url",
            console_url,
            "--token",
            token,
            "--slots",
            &slots.to_string(),
        ])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default();
    // Reap it when it exits, so it does not linger as a zombie of this console.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
}

/// True when `pid` is a live (not zombie) `kiln agent` process for `server_id`.
pub fn is_alive(pid: u32, server_id: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| {
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.iter().any(|a| *a == b"agent") && args.contains(&server_id.as_bytes())
        })
        .unwrap_or(false)
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid is checked by the
    // callers (is_alive) right before.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// SIGTERM, then SIGKILL after `grace` if the process is still there.
pub async fn stop(pid: u32, server_id: &str, grace: Duration) {
    if !is_alive(pid, server_id) {
        return;
    }
    signal(pid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !is_alive(pid, server_id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if is_alive(pid, server_id) {
        tracing::warn!(
            server.id = server_id,
            pid,
            "agent ignored SIGTERM; sending SIGKILL"
        );
        signal(pid, libc::SIGKILL);
    }
}

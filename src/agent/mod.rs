//! The agent that runs on every server. Until the work-queue issue lands it is a stub: a real
//! process that logs that it is not implemented and waits for SIGTERM/SIGINT, so that the
//! local provider has something to start and stop.

use clap::Args;

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
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Listen before saying we run, so that a SIGTERM right after the log line is not lost.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::warn!(
        url = %args.url,
        instance_id = args.instance_id.as_deref().unwrap_or("-"),
        "agent not implemented yet; waiting for SIGTERM"
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("agent stopping");
    Ok(())
}

//! The console's own observability: structured logs (tracing to stderr, filtered by
//! `RUST_LOG`, default `info`; standard output stays free for what commands print for
//! scripts) and the figures served at `GET /metrics` ([`prometheus`]).

pub mod prometheus;

use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,actix_server=warn"));
    // A second init (tests start many apps in one process) is harmless: keep the first.
    use std::io::IsTerminal;
    let _ = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

//! The HTTP surface: console pages (askama + htmx), the JSON API, static assets, and the
//! middleware that every request passes through (request ids, security headers, error
//! rendering, sessions, and per-route access + CSRF checks).

pub mod access;
pub mod agent_api;
pub mod agent_tokens;
pub mod api;
pub mod assets;
pub mod body;
pub mod error;
pub mod heartbeats;
pub mod hooks;
pub mod json;
pub mod layout;
pub mod librato_alerts;
pub mod metrics_api;
pub mod middleware;
pub mod pages;
pub mod routes;
pub mod session_store;
pub mod view;

use std::sync::Arc;

use sqlx::PgPool;

use crate::cloud::AnyProvider;
use crate::config::Settings;
use crate::telemetry::prometheus::Registry;

/// What every handler may need. One is built per HTTP worker (each worker has its own pool,
/// see `startup.rs`); what must be shared across workers is behind an `Arc`.
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// The provider. Handlers never call it (they enqueue tasks); pages may read from it.
    pub cloud: Arc<AnyProvider>,
    /// The console's own figures, served at /metrics.
    pub metrics: Arc<Registry>,
    /// Wakes agents' waiting claims when jobs become claimable.
    pub wakeups: crate::jobs::wakeups::Wakeups,
    /// Agent tokens seen lately (see `agent_tokens.rs`).
    pub agent_tokens: Arc<agent_tokens::AgentTokens>,
    /// Agents' heartbeats waiting for the next flush (see `heartbeats.rs`).
    pub heartbeats: Arc<heartbeats::Heartbeats>,
    /// Metric series ids seen by this process (ingest's fast path).
    pub series_ids: crate::metrics::series_ids::SeriesIds,
}

/// The name of the console's session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";

/// True for the routes that answer in JSON and authenticate by token, not by session.
pub fn is_api_path(path: &str) -> bool {
    ["/api/", "/agent/", "/v1/", "/hooks/"]
        .iter()
        .any(|p| path.starts_with(p))
}

//! Builds and runs the console: connect and migrate, create the first admin, bind the
//! listener (tests bind port 0 and ask for the port), start the background janitor, serve
//! until SIGINT/SIGTERM, then drain in-flight requests and stop.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_session::SessionMiddleware;
use actix_session::config::{BrowserSession, CookieContentSecurity, TtlExtensionPolicy};
use actix_web::cookie::{Key, SameSite};
use actix_web::dev::Server;
use actix_web::middleware::{Compress, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use sqlx::PgPool;

use crate::cloud::Provider;
use crate::config::Settings;
use crate::db::private::Use;
use crate::telemetry::prometheus::Registry;
use crate::web::session_store::PgSessionStore;
use crate::web::{AppState, middleware, routes};

/// HTTP worker threads: one per core, at most this many (each holds its own pool).
const MAX_HTTP_WORKERS: usize = 4;

/// Connections each HTTP worker may hold (a page reads at most three at once; more requests
/// wait their turn). With the background work's pool of 16, one process holds at most
/// 16 + 4 x 4 = 32, so that three replicas stay under PostgreSQL's default 100.
const WORKER_POOL_CONNECTIONS: u32 = 4;

fn http_workers() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(MAX_HTTP_WORKERS)
}

pub struct Application {
    port: u16,
    settings: Arc<Settings>,
    workers: crate::tasks::worker::WorkerConfig,
    cloud: Arc<crate::cloud::AnyProvider>,
    server: Server,
    wakeups: crate::jobs::wakeups::Wakeups,
    /// Agents' heartbeats and tokens, shared with the handlers; flushed and verified by
    /// background work (`web::heartbeats::run`).
    heartbeats: Arc<crate::web::heartbeats::Heartbeats>,
    agent_tokens: Arc<crate::web::agent_tokens::AgentTokens>,
    /// The console's own figures (`/metrics`), also recorded as metrics.
    registry: Arc<Registry>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    pool: PgPool,
    /// Whether the metrics tables before partitioning held rows at start: the rollup loop
    /// then moves them over (nothing writes to them after the migration).
    legacy_metrics: bool,
    /// Set when this start created the first admin: printed once, never stored in clear.
    pub initial_admin_password: Option<String>,
}

impl Application {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let pool = crate::db::connect(&settings.database.url()).await?;
        crate::db::migrate(&pool).await?;
        let initial_admin_password = create_initial_admin(&pool).await?;
        // Before any ingest: the partitions for every time ingest accepts.
        crate::metrics::storage::maintain(
            &pool,
            &crate::metrics::rollup::Retention::from_settings(&settings),
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .await
        .context("Failed to create the metrics' partitions")?;
        let legacy_metrics = crate::metrics::storage::legacy_rows_left(&pool).await?;
        let key = crate::db::secrets::get_or_create(&pool, "session_key", 64)
            .await
            .context("Failed to load the session signing key")?;
        let key = Key::try_from(key.as_slice()).context("The stored session key is too short")?;

        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("Failed to listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        // Agents are told the console's address: with a port picked by the OS (bind port 0,
        // as tests do) and no public URL configured, that is the port actually bound.
        if settings.public_url.is_none() && settings.bind.port() == 0 {
            settings.public_url = Some(format!("http://{}", listener.local_addr()?));
        }
        let metrics = Arc::new(Registry::default());
        let cloud = Arc::new(
            crate::cloud::from_settings(&settings, pool.clone(), metrics.clone())
                .await
                .context("Failed to set up the cloud provider")?,
        );
        tracing::info!(provider = cloud.name(), fleet = %settings.fleet, "cloud provider ready");
        if let crate::cloud::AnyProvider::Aws(aws) = cloud.as_ref() {
            // Say at once when EC2 is unreachable or refuses the credentials, rather than at
            // the first launch. Not fatal: EC2 may be having a bad minute.
            match aws.check_access().await {
                Ok(()) => tracing::info!("EC2 reachable; credentials accepted"),
                Err(e) => {
                    tracing::warn!(error = %e, "EC2 check failed; launches will fail until this is fixed")
                }
            }
        }
        let imported = crate::fleet::images::import_local(&pool, &cloud)
            .await
            .context("Failed to add the local provider's images to the catalogue")?;
        if imported > 0 {
            tracing::info!(
                images = imported,
                "added the local provider's images to the catalogue"
            );
        }
        let workers = crate::tasks::worker::WorkerConfig::from_settings(&settings);
        let settings = Arc::new(settings);
        let settings_for_tasks = settings.clone();
        let wakeups = crate::jobs::wakeups::Wakeups::new();
        let agent_tokens = Arc::new(crate::web::agent_tokens::AgentTokens::default());
        let heartbeats = Arc::new(crate::web::heartbeats::Heartbeats::default());
        let (app_tokens, app_beats) = (agent_tokens.clone(), heartbeats.clone());
        let series_ids = crate::metrics::series_ids::SeriesIds::default();
        let shared_pool = pool.clone();
        let (http_cloud, http_metrics, http_wakeups, http_settings) = (
            cloud.clone(),
            metrics.clone(),
            wakeups.clone(),
            settings.clone(),
        );

        let server = HttpServer::new(move || {
            // Runs once on each worker's thread: its pool is its own (see db::worker_pool);
            // everything else is shared by the whole process.
            let worker_pool = crate::db::worker_pool(&shared_pool, WORKER_POOL_CONNECTIONS);
            let settings = &http_settings;
            let state = web::Data::new(AppState {
                pool: worker_pool.clone(),
                settings: settings.clone(),
                cloud: http_cloud.clone(),
                metrics: http_metrics.clone(),
                wakeups: http_wakeups.clone(),
                agent_tokens: agent_tokens.clone(),
                heartbeats: heartbeats.clone(),
                series_ids: series_ids.clone(),
            });
            let store = PgSessionStore::new(
                worker_pool,
                settings.session_absolute_timeout,
                settings.session_idle_timeout,
            );
            let sessions = SessionMiddleware::builder(store, key.clone())
                .cookie_name(crate::web::SESSION_COOKIE.into())
                .cookie_http_only(true)
                .cookie_same_site(SameSite::Lax)
                .cookie_secure(settings.secure_cookies())
                .cookie_content_security(CookieContentSecurity::Signed)
                .session_lifecycle(
                    BrowserSession::default()
                        .state_ttl(actix_web::cookie::time::Duration::seconds(
                            settings.session_idle_timeout as i64,
                        ))
                        // Loading a session pushes its idle expiry forward (in the same
                        // statement); an unchanged one needs no second write afterwards.
                        .state_ttl_extension_policy(TtlExtensionPolicy::OnStateChanges),
                )
                .build();
            let (csrf_key, secure) = (key.clone(), settings.secure_cookies());
            App::new()
                .app_data(state.clone())
                .app_data(web::FormConfig::default().limit(1 << 20))
                .configure(routes::register)
                .default_service(web::to(middleware::errors::not_found))
                // Outermost last: request id -> security headers -> compression -> the login
                // form's CSRF cookie -> sessions -> errors. Errors render inside the session so
                // that an error page's forms carry the session's live CSRF token.
                .wrap(from_fn(middleware::errors::render))
                .wrap(sessions)
                .wrap(from_fn(move |req, next| {
                    middleware::login_csrf::handle(csrf_key.clone(), secure, req, next)
                }))
                .wrap(Compress::default())
                .wrap(middleware::security_headers::headers(
                    settings.secure_cookies(),
                ))
                .wrap(from_fn(middleware::request_id::assign))
        })
        .workers(http_workers())
        .listen(listener)?
        .shutdown_timeout(10)
        // Our own signal handlers, installed before `build` returns: actix's would only be
        // installed once its server task first runs, and a SIGTERM arriving before that
        // would kill the process instead of stopping it gracefully.
        .disable_signals()
        .run();
        let shutdown = Box::pin(shutdown_signal()?);

        Ok(Self {
            port,
            settings: settings_for_tasks,
            workers,
            cloud,
            server,
            wakeups,
            heartbeats: app_beats,
            agent_tokens: app_tokens,
            registry: metrics,
            shutdown,
            pool,
            legacy_metrics,
            initial_admin_password,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cloud(&self) -> Arc<crate::cloud::AnyProvider> {
        self.cloud.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until SIGINT/SIGTERM, then stops accepting, lets in-flight requests finish
    /// (up to 10 s), stops the background work and closes the pool.
    pub fn public_url(&self) -> String {
        self.settings.public_url()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let janitor = tokio::spawn(janitor(self.pool.clone(), self.settings.retention()));
        let workers = crate::tasks::worker::spawn(
            self.pool.clone(),
            task_registry(),
            Some(self.cloud.clone()),
            Some(self.settings.clone()),
            self.workers.clone(),
        );
        let (stop_reconciler, stopped) = tokio::sync::watch::channel(false);
        let reconciler = tokio::spawn(crate::fleet::reconciler::run_periodically(
            self.pool.clone(),
            self.cloud.clone(),
            Duration::from_secs(self.settings.reconcile_interval),
            stopped,
        ));
        let listener = tokio::spawn(
            self.wakeups
                .clone()
                .listen(self.pool.clone(), stop_reconciler.subscribe()),
        );
        // A quarter of the lease: a dead agent's jobs are requeued within ~1.25 leases.
        let sweep_every = Duration::from_millis((self.settings.job_lease * 250).max(500));
        let sweeper = tokio::spawn(crate::jobs::sweeper::run(
            self.pool.clone(),
            sweep_every,
            stop_reconciler.subscribe(),
        ));
        let rollups = tokio::spawn(crate::metrics::rollup::run(
            self.pool.clone(),
            Duration::from_secs(self.settings.metrics_rollup_interval),
            crate::metrics::rollup::Retention::from_settings(&self.settings),
            self.legacy_metrics,
            stop_reconciler.subscribe(),
        ));
        let recorder = tokio::spawn(crate::metrics::recorder::run(
            self.pool.clone(),
            self.registry.clone(),
            // The process's name, as a metric source (only A-Z a-z 0-9 . : - _).
            workers
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".:-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect(),
            Duration::from_secs(self.settings.metrics_sample_interval),
            self.settings.heartbeat,
            stop_reconciler.subscribe(),
        ));
        let alerts = tokio::spawn(crate::alerts::evaluate::run(
            self.pool.clone(),
            crate::alerts::evaluate::EvalConfig::from_settings(&self.settings),
            self.registry.clone(),
            stop_reconciler.subscribe(),
        ));
        let scaling = tokio::spawn(crate::scaling::run(
            self.pool.clone(),
            crate::scaling::Env::from_settings(&self.settings),
            Duration::from_secs(self.settings.scaling_interval),
            self.registry.clone(),
            stop_reconciler.subscribe(),
        ));
        // Stopped only after the HTTP server: its last flush writes the last heartbeats.
        let (stop_flusher, flusher_stopped) = tokio::sync::watch::channel(false);
        let flusher = tokio::spawn(crate::web::heartbeats::run(
            self.pool.clone(),
            self.heartbeats.clone(),
            self.agent_tokens.clone(),
            Duration::from_millis(self.settings.heartbeat_flush_ms),
            flusher_stopped,
        ));
        // The demo talks to this console over HTTP: started with it, stopped before it.
        let demo = self.settings.demo.then(|| {
            tokio::spawn(crate::demo::run(
                self.pool.clone(),
                self.settings.public_url(),
                stop_reconciler.subscribe(),
            ))
        });
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let result = tokio::select! {
            result = &mut server => result,
            () = self.shutdown => {
                tracing::info!("shutdown requested; finishing in-flight requests");
                if let Some(demo) = &demo {
                    demo.abort();
                }
                // Agents' waiting claims answer at once rather than hold the shutdown up.
                self.wakeups.close();
                handle.stop(true).await;
                server.await
            }
        };
        let _ = stop_reconciler.send(true);
        let _ = stop_flusher.send(true);
        let _ = flusher.await;
        let _ = reconciler.await;
        let _ = listener.await;
        let _ = sweeper.await;
        let _ = rollups.await;
        let _ = recorder.await;
        let _ = alerts.await;
        let _ = scaling.await;
        janitor.abort();
        // Let the tasks in hand finish (a task cut short is claimed again after its lease).
        workers.stop().await;
        self.pool.close().await;
        result
            .context("The HTTP server task panicked")?
            .context("The HTTP server failed")
    }
}

/// `kiln serve`
pub async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    settings.validate()?;
    let database = crate::db::locate::open(&settings.database, Use::Console).await?;
    settings.database.database_url = Some(database.url.clone());
    // The private database (when there is one) stops after the console, whatever happened.
    let served = async {
        let app = Application::build(settings).await?;
        if let Some(password) = &app.initial_admin_password {
            // The one time this password exists in clear: stdout, for the operator who started us.
            println!("initial admin password: {password}");
        }
        tracing::info!(url = %app.public_url(), port = app.port(), "kiln console listening");
        app.run_until_stopped().await
    }
    .await;
    let closed = database.close();
    served?;
    closed?;
    tracing::info!("kiln stopped");
    Ok(())
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("Failed to listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("Failed to listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

async fn create_initial_admin(pool: &PgPool) -> anyhow::Result<Option<String>> {
    if crate::db::users::count(pool).await? > 0 {
        return Ok(None);
    }
    let password = crate::auth::password::generate_initial();
    let hash = crate::auth::password::hash(&password).await?;
    let created = crate::db::users::create_initial_admin(pool, &hash).await?;
    Ok(created.then(|| password.expose().to_owned()))
}

/// Deletes what has expired: sessions, old login failures, alert history, and what the
/// retention settings keep no longer (`retention::pass`, in short batches). Runs on every
/// replica; the deletes are idempotent and skip rows another replica holds, so no
/// coordination is needed.
async fn janitor(pool: PgPool, keep: crate::retention::Retention) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tick.tick().await;
        match crate::retention::pass(&pool, &keep, time::OffsetDateTime::now_utc()).await {
            Ok(r) if r.total() > 0 => tracing::info!(
                job_output = r.job_output,
                jobs = r.jobs,
                tasks = r.tasks,
                audit = r.audit,
                decisions = r.decisions,
                longest_ms = r.longest.as_millis() as u64,
                "retention removed old records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one goes on"),
        }
        let absolute = 7 * 24 * 3600;
        if let Err(e) = crate::db::sessions::prune(&pool, absolute).await {
            tracing::warn!(error = %e, "failed to prune sessions");
        }
        if let Err(e) = crate::db::login_failures::prune(&pool, 24 * 3600).await {
            tracing::warn!(error = %e, "failed to prune login failures");
        }
        if let Err(e) = crate::alerts::events::prune(&pool).await {
            tracing::warn!(error = %e, "failed to prune alert history");
        }
    }
}

/// Every task kind Kiln runs, in one place (each lives with the room whose work it does).
pub fn task_registry() -> crate::tasks::Registry {
    crate::tasks::Registry::default()
        .register::<crate::fleet::adopt_image::AdoptImage>()
        .register::<crate::fleet::deregister_image::DeregisterImage>()
        .register::<crate::fleet::launch_servers::LaunchServers>()
        .register::<crate::fleet::terminate_server::TerminateServer>()
        .register::<crate::rollouts::rollout_step::RolloutStep>()
        .register::<crate::rollouts::retire_servers::RetireServers>()
        .register::<crate::bakes::bake_step::BakeStep>()
        .register::<crate::alerts::deliver::DeliverNotification>()
}

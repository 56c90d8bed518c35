//! `kiln bench`: the fleet pages against a bare actix + sqlx + askama handler that does what
//! any authenticated page must — loads the request's session and its user in one statement —
//! and then lists the same rows (the Servers page: first page, with counts; the Images page:
//! all of it), with 5,000 servers and 1,000 images. Targets: within 1.5x of the reference at
//! p50 and 2x at p99; console RSS under 100 MB. Measured in the same run, against the same
//! database, taking turns request by request; the figures printed: p50/p99 per page and the
//! ratios (see docs/performance.md).
//!
//! Run it on a release build: `cargo run --release -- bench`.

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use askama::Template;
use clap::Args;
use sqlx::PgPool;

use crate::config::{Settings, default_database_url};

pub mod agents;
pub mod alerts;
pub mod bake;
pub mod big_rollback;
pub mod canary;
pub mod guard;
pub mod metrics;
pub mod metrics_storage;
pub mod queue;
pub mod retention;
pub mod rollout;
pub mod scaling;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Suite {
    /// Many agents on several consoles: statements per heartbeat and per job, latencies, CPU.
    Agents(agents::AgentsArgs),
    /// A 1,000-server release and rollback on moto within EC2's rate limits (needs moto_server).
    BigRollback(big_rollback::BigRollbackArgs),
    /// The work queue: claim+finish cycles vs plain SQL, pickup latency, idle agents.
    Queue(queue::QueueArgs),
    /// Rollouts: a full rollback of a local fleet with jobs running, and where its time goes.
    Rollout(rollout::RolloutArgs),
    /// Metrics: HTTP ingest vs COPY, chart query vs its SQL at 1M and 10M points, the page.
    Metrics(metrics::MetricsArgs),
    /// Metrics storage: bytes per point and per rollup row, a day's retention, vs the old layout.
    MetricsStorage(metrics_storage::MetricsStorageArgs),
    /// Bakes: Kiln's own overhead per bake (all but the commands and the provider).
    Bake(bake::BakeArgs),
    /// Alerts: one evaluation pass over 1,000 rules x 50 sources vs the bare SQL.
    Alerts(alerts::AlertsArgs),
    /// Autoscaling: one decision with 1,000 workers and 100,000 queued jobs.
    Scaling(scaling::ScalingArgs),
    /// Canary judgment: a rollout's comparison over 100,000 finished jobs.
    Canary(canary::CanaryArgs),
    /// Guarded releases: how soon a tripped guard (an alert, a health check) starts the rollback.
    Guard(guard::GuardArgs),
    /// Retention: one pass over a backlog of old jobs, tasks and audit events.
    Retention(retention::RetentionArgs),
}

/// `kiln bench` measures the fleet pages; `kiln bench queue` the work queue.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub suite: Option<Suite>,
    #[arg(long, default_value_t = 5000)]
    pub servers: i64,
    #[arg(long, default_value_t = 1000)]
    pub images: i64,
    /// Timed requests per page (after 20 warm-up requests).
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
}

/// A new API token of the `admin` user (whom the console created on first start), for a
/// benchmark's API calls; returns the secret.
pub async fn admin_api_token(pool: &PgPool) -> anyhow::Result<String> {
    let secret = crate::auth::token::Secret::generate(crate::auth::token::API_PREFIX);
    let mut conn = pool.acquire().await?;
    let admin: i64 = sqlx::query_scalar("SELECT id FROM users WHERE name = 'admin'")
        .fetch_one(&mut *conn)
        .await?;
    crate::db::tokens::create_api(
        &mut conn,
        admin,
        &crate::domain::TokenName::parse("bench")?,
        &secret.hash(),
        None,
    )
    .await?;
    Ok(secret.expose().to_owned())
}

/// Counts the statements sqlx runs (its `sqlx::query` events) under the returned subscriber;
/// a benchmark runs the work it counts `.with_subscriber(…)`.
pub fn statement_counter() -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    impl tracing::Subscriber + Send + Sync,
) {
    use tracing_subscriber::layer::SubscriberExt;
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().target() == "sqlx::query" {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (n.clone(), tracing_subscriber::registry().with(Count(n)))
}

/// A database of its own for one benchmark run, next to DATABASE_URL's (created by the
/// console on first connect), dropped again by [`ThrowawayDb::drop_now`].
pub struct ThrowawayDb {
    /// The server's own database, to drop from.
    base: String,
    name: String,
    /// The throwaway database's URL.
    pub url: String,
}

impl ThrowawayDb {
    pub fn new() -> anyhow::Result<Self> {
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| default_database_url());
        let mut url = url::Url::parse(&base).context("DATABASE_URL is not a URL")?;
        let name = format!("kiln_bench_{}", uuid::Uuid::new_v4().simple());
        url.set_path(&format!("/{name}"));
        Ok(Self {
            base,
            name,
            url: url.to_string(),
        })
    }

    /// Drops the database, ending its connections (failures are ignored: it is a throwaway).
    pub async fn drop_now(&self) -> anyhow::Result<()> {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&crate::db::connect(&self.base).await?)
        .await;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct BareServer {
    id: String,
    image_id: String,
    state: String,
    mode: String,
    launched_by: String,
    launched_at: time::OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct BareImage {
    id: String,
    name: String,
    version: String,
    state: String,
    created_at: time::OffsetDateTime,
}

#[derive(Template)]
#[template(path = "bench/bare_servers.html")]
struct BareServers {
    servers: Vec<BareServer>,
}

#[derive(Template)]
#[template(path = "bench/bare_images.html")]
struct BareImages {
    images: Vec<BareImage>,
}

/// The session the bench logged in with (its key's hash): the bare handlers read it, and its
/// user, as every authenticated page must.
#[derive(Clone)]
struct BareSession(String);

/// One statement: the session, if live, and its user's name and role.
async fn bare_session(pool: &PgPool, session: &BareSession) -> Option<(String, String)> {
    sqlx::query_as(
        "SELECT u.name, u.role FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
    )
    .bind(&session.0)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The reference: the least an authenticated handler can do to list the same rows.
async fn bare_servers(pool: web::Data<PgPool>, session: web::Data<BareSession>) -> HttpResponse {
    if bare_session(&pool, &session).await.is_none() {
        return HttpResponse::Unauthorized().finish();
    }
    let servers: Vec<BareServer> = sqlx::query_as(
        "SELECT id, image_id, state, mode, launched_by, launched_at FROM servers
         WHERE state <> 'terminated' ORDER BY launched_at DESC, id DESC LIMIT 100",
    )
    .fetch_all(pool.get_ref())
    .await
    .unwrap();
    HttpResponse::Ok()
        .content_type("text/html")
        .body(BareServers { servers }.render().unwrap())
}

async fn bare_images(pool: web::Data<PgPool>, session: web::Data<BareSession>) -> HttpResponse {
    if bare_session(&pool, &session).await.is_none() {
        return HttpResponse::Unauthorized().finish();
    }
    let images: Vec<BareImage> = sqlx::query_as(
        "SELECT id, name, version, state, created_at FROM images ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(pool.get_ref())
    .await
    .unwrap();
    HttpResponse::Ok()
        .content_type("text/html")
        .body(BareImages { images }.render().unwrap())
}

/// Serves the bare handlers on a port of their own, each HTTP worker with the pool
/// `pool_for_worker` gives it (called once per worker, on the worker's thread).
fn serve_bare(
    session: BareSession,
    pool_for_worker: impl Fn() -> PgPool + Clone + Send + 'static,
) -> anyhow::Result<u16> {
    let bare = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(pool_for_worker()))
            .app_data(web::Data::new(session.clone()))
            .route("/servers", web::get().to(bare_servers))
            .route("/images", web::get().to(bare_images))
    })
    .workers(2)
    .disable_signals()
    .bind(("127.0.0.1", 0))?;
    let port = bare.addrs()[0].port();
    tokio::spawn(bare.run());
    Ok(port)
}

async fn seed(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO images (id, name, version, state, added_by, created_at)
         SELECT 'ami-local-' || lpad(to_hex(g), 17, '0'), 'image-' || g, g::TEXT, 'available', 'bench',
                now() - make_interval(mins => $1 - g)
         FROM generate_series(1, $1) g",
    )
    .bind(args.images as i32)
    .execute(pool)
    .await?;
    // The servers also exist at the local provider (as pending records), so the reconciler
    // running during the benchmark sees them and leaves them be.
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, mode, launched_by, launched_at)
         SELECT 'i-local-' || lpad(to_hex(g), 17, '0'), 'ami-local-' || lpad(to_hex(1 + g % $2), 17, '0'), 't3.micro',
                CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'running' END,
                CASE WHEN g % 7 = 0 THEN 'disabled' ELSE 'enabled' END, 'bench', now() - make_interval(secs => g)
         FROM generate_series(1, $1) g",
    )
    .bind(args.servers as i32)
    .bind(args.images as i32)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO local_instances (id, image_id, instance_type, state, tags, launch_token)
         SELECT id, image_id, instance_type, 'pending', '{\"kiln:fleet\": \"bench\"}', 'bench' FROM servers",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Requests each of `urls` `n` times (after 20 unmeasured ones each), taking turns: one
/// request to each in order, then again. Taking turns, a machine that slows down or speeds up
/// during the run does so for every page alike, and the ratios between them hold. Returns
/// each url's p50 and p99.
async fn time(
    client: &reqwest::Client,
    urls: &[String],
    n: usize,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    async fn page(client: &reqwest::Client, url: &str) -> anyhow::Result<actix_web::web::Bytes> {
        Ok(client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?)
    }
    for _ in 0..20 {
        for url in urls {
            page(client, url).await?;
        }
    }
    let mut samples = vec![Vec::with_capacity(n); urls.len()];
    for _ in 0..n {
        for (url, samples) in urls.iter().zip(&mut samples) {
            let started = Instant::now();
            let body = page(client, url).await?;
            samples.push(started.elapsed());
            anyhow::ensure!(!body.is_empty(), "{url} answered with an empty page");
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            (percentile(&s, 0.5), percentile(&s, 0.99))
        })
        .collect())
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Some(Suite::Agents(a)) => return agents::run(a).await,
        Some(Suite::BigRollback(b)) => return big_rollback::run(b).await,
        Some(Suite::Queue(q)) => return queue::run(q).await,
        Some(Suite::Rollout(r)) => return rollout::run(r).await,
        Some(Suite::Metrics(m)) => return metrics::run(m).await,
        Some(Suite::MetricsStorage(m)) => return metrics_storage::run(m).await,
        Some(Suite::Bake(b)) => return bake::run(b).await,
        Some(Suite::Alerts(a)) => return alerts::run(a).await,
        Some(Suite::Scaling(s)) => return scaling::run(s).await,
        Some(Suite::Canary(c)) => return canary::run(c).await,
        Some(Suite::Guard(g)) => return guard::run(g).await,
        Some(Suite::Retention(r)) => return retention::run(r).await,
        None => {}
    }
    let db = ThrowawayDb::new()?;
    let mut settings = Settings::with_defaults(db.url.clone(), "127.0.0.1:0".parse()?);
    settings.fleet = "bench".into();
    settings.reconcile_interval = 3600;
    let app = crate::startup::Application::build(settings).await?;
    let pool = app.pool().clone();
    let password = app
        .initial_admin_password
        .clone()
        .context("a fresh database has an admin")?;
    let port = app.port();
    seed(&pool, &args).await?;
    let rss_before = rss_mb();
    tokio::spawn(app.run_until_stopped());

    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let kiln = format!("http://127.0.0.1:{port}");
    let page = client
        .get(format!("{kiln}/login"))
        .send()
        .await?
        .text()
        .await?;
    let csrf = page
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the login page has a CSRF token")?
        .to_owned();
    let res = client
        .post(format!("{kiln}/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "admin"),
            ("password", &password),
        ])
        .send()
        .await?;
    anyhow::ensure!(res.status() == 303, "bench login failed: {}", res.status());
    let session = BareSession(
        sqlx::query_scalar("SELECT id_hash FROM sessions ORDER BY created_at DESC LIMIT 1")
            .fetch_one(&pool)
            .await?,
    );

    // The reference as such handlers are usually written: one pool of their own, opened at
    // startup (with the console's pool settings: no ping before each statement) and shared
    // by the HTTP workers.
    let bare_pool = crate::db::connect(&db.url).await?;
    let bare_port = serve_bare(session.clone(), move || bare_pool.clone())?;
    // And with the console's own arrangement, a pool per HTTP worker (db::worker_pool), so
    // that the ratio against it shows what the pages themselves cost.
    let shared = pool.clone();
    let bare_own_port = serve_bare(session, move || crate::db::worker_pool(&shared, 4))?;

    let bare_url = format!("http://127.0.0.1:{bare_port}");
    let bare_own_url = format!("http://127.0.0.1:{bare_own_port}");
    println!(
        "kiln bench: {} servers, {} images, {} timed requests per page, sequential, one client",
        args.servers, args.images, args.requests
    );
    println!("{:<28} {:>10} {:>10}", "page", "p50 ms", "p99 ms");
    let mut ratios = Vec::new();
    // Each page with the statements that prepare it first. The seeded servers have no
    // agents, and the Servers page counts running jobs only where an agent was seen (a
    // subquery per row); a fleet's servers all have one, so the page is measured again once
    // every agent has reported — vacuumed, so that neither side steps over the 5,000 dead row
    // versions the update left until autovacuum came by.
    let every_agent_seen: &[&'static str] = &[
        "UPDATE servers SET last_seen_at = now()",
        "VACUUM (ANALYZE) servers",
    ];
    for (name, ours, reference, prepare) in [
        (
            "servers (first page+counts)",
            "/servers",
            "/servers",
            &[][..],
        ),
        ("images (all)", "/images", "/images", &[]),
        (
            "servers, agents seen",
            "/servers",
            "/servers",
            every_agent_seen,
        ),
    ] {
        for &statement in prepare {
            sqlx::query(statement).execute(&pool).await?;
        }
        let urls = [
            format!("{kiln}{ours}"),
            format!("{bare_url}{reference}"),
            format!("{bare_own_url}{reference}"),
        ];
        let timed = time(&client, &urls, args.requests).await?;
        let [(k50, k99), (b50, b99), (o50, o99)] = timed[..] else {
            unreachable!("one timing per url")
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        for (who, p50, p99) in [
            ("kiln", k50, k99),
            ("bare, one pool", b50, b99),
            ("bare, pool per worker", o50, o99),
        ] {
            println!(
                "{:<28} {:>10.2} {:>10.2}",
                format!("{who} {name}"),
                ms(p50),
                ms(p99)
            );
        }
        ratios.push((name, "bare, one pool", ms(k50) / ms(b50), ms(k99) / ms(b99)));
        ratios.push((
            name,
            "bare, pool per worker",
            ms(k50) / ms(o50),
            ms(k99) / ms(o99),
        ));
    }
    // Where the time goes: the floor every console page pays (middleware; then session,
    // principal and layout), measured the same way.
    for (name, path) in [
        ("floor: /healthz (middleware only)", "/healthz"),
        ("floor: /account (session+auth+layout)", "/account"),
    ] {
        let [(p50, p99)] = time(&client, &[format!("{kiln}{path}")], args.requests).await?[..]
        else {
            unreachable!("one timing per url")
        };
        println!(
            "{:<28} {:>10.2} {:>10.2}",
            name,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    for (name, reference, p50, p99) in ratios {
        println!(
            "ratio kiln/({reference}) {name}: p50 {p50:.2}x, p99 {p99:.2}x (target: p50 <= 1.5x, p99 <= 2x)"
        );
    }
    println!(
        "process RSS: {:.1} MB after seeding, {:.1} MB after the run (console + bare server + bench client in one process; target < 100 MB)",
        rss_before,
        rss_mb()
    );
    pool.close().await;
    db.drop_now().await?;
    Ok(())
}

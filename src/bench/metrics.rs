//! `kiln bench metrics`: the metrics targets, each against its reference, in one run on a
//! throwaway database with the console in this process:
//!
//! - ingest through HTTP (`POST /v1/metrics`, batches of 300 and 1,000, several concurrent
//!   clients, bodies serialised before the clock starts) in measurements/s, against a raw
//!   `COPY` of the same rows into the same table — one COPY per client (all its rows), and a
//!   COPY per batch (the same batches as the HTTP requests, each committed);
//! - a 24-hour chart at 1-minute resolution over 50 sources: the series endpoint against the
//!   SQL it runs, timed directly; at 1M and at 10M stored points (the chart reads rollups, so
//!   it should stay flat), next to the same numbers computed from the raw points;
//! - the Metrics page's first render (8 charts), and the series requests its charts make.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;

use crate::config::Settings;

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Measurements sent per ingest run.
    #[arg(long, default_value_t = 120_000)]
    pub measurements: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Timed requests per chart query.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
}

const SOURCES: usize = 50;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The bodies of one ingest run: `n` gauges over 50 sources, `batch` per request, times in
/// the last hour.
fn bodies(n: usize, batch: usize, now: i64, name: &str) -> Vec<Vec<u8>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            let gauges: Vec<_> = chunk
                .iter()
                .map(|i| {
                    json!({"name": name, "source": format!("host-{}", i % SOURCES),
                           "value": (*i % 1000) as f64 / 10.0, "measure_time": now - 3600 + (*i as i64 % 3600)})
                })
                .collect();
            serde_json::to_vec(&json!({ "gauges": gauges })).expect("serialisable")
        })
        .collect()
}

async fn ingest_http(
    base: &str,
    token: &str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
) -> anyhow::Result<Duration> {
    let http = reqwest::Client::new();
    let per = bodies.len().div_ceil(clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for part in bodies.chunks(per) {
        let part = part.to_vec();
        let http = http.clone();
        let url = format!("{base}/v1/metrics");
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            for body in part {
                let res = http
                    .post(&url)
                    .basic_auth("bench", Some(&token))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(res.status() == 200, "ingest answered {}", res.status());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in join_all(tasks).await {
        t??;
    }
    Ok(started.elapsed())
}

/// The same rows through COPY (series ids of the same 50 series), `clients` connections at
/// once: each client's rows in COPYs of `per_copy` rows (each its own transaction).
async fn ingest_copy(
    pool: &PgPool,
    name: &str,
    n: usize,
    clients: usize,
    now: i64,
    per_copy: usize,
) -> anyhow::Result<Duration> {
    let ids: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM metric_series WHERE name = $1 ORDER BY source")
            .bind(name)
            .fetch_all(pool)
            .await?;
    anyhow::ensure!(ids.len() == SOURCES, "the HTTP run created the series");
    let per = n.div_ceil(clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = pool.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let rows: Vec<usize> = (c * per..((c + 1) * per).min(n)).collect();
            let texts: Vec<String> = rows
                .chunks(per_copy.max(1))
                .map(|chunk| {
                    let mut text = String::with_capacity(chunk.len() * 64);
                    for &i in chunk {
                        let v = (i % 1000) as f64 / 10.0;
                        let t = crate::metrics::storage::stored_t(now - 3600 + (i as i64 % 3600));
                        text.push_str(&format!("{}\t{t}\t{v}\n", ids[i % SOURCES]));
                    }
                    text
                })
                .collect();
            let mut conn = pool.acquire().await?;
            for text in texts {
                let mut copy = conn
                    .copy_in_raw(
                        "COPY metric_values (series_id, t, value) FROM STDIN WITH (FORMAT text)",
                    )
                    .await?;
                copy.send(text.into_bytes()).await?;
                copy.finish().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in join_all(tasks).await {
        t??;
    }
    Ok(started.elapsed())
}

/// Seeds `per_series` points for each of 50 series over the last 24 h (plus their dirty
/// minutes), then rolls them up. Points are written in time order, as ingest writes them
/// (every source's point of a moment arrives together), so a minute's points share pages.
async fn seed(pool: &PgPool, name: &str, per_series: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO metric_series (name, source, kind) SELECT $1, 'host-' || g, 'gauge' FROM generate_series(0, 49) g
         ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO metric_values (series_id, t, value)
         SELECT s.id, metric_t(now() - make_interval(secs => 86400.0 * g / $2)), v
         FROM metric_series s, generate_series(1, $2) g, LATERAL (SELECT (g % 1000) / 10.0 AS v) x
         WHERE s.name = $1
         ORDER BY 2",
    )
    .bind(name)
    .bind(per_series)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO metric_dirty (series_id, minute)
         SELECT s.id, m FROM metric_series s,
              generate_series(date_trunc('minute', now() - interval '1 day'), now(), interval '1 minute') m
         WHERE s.name = $1 ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(pool)
    .await?;
    crate::metrics::rollup::roll_up_all(pool).await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// (endpoint p50, the same SQL direct p50, the raw-points SQL p50) for a 24 h, 60 s chart.
async fn chart(
    pool: &PgPool,
    base: &str,
    token: &str,
    name: &str,
    requests: usize,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let http = reqwest::Client::new();
    let to = time::OffsetDateTime::now_utc().unix_timestamp();
    let from = to - 86_400;
    let url = format!("{base}/api/v1/series?metric={name}&from={from}&to={to}&resolution=60");
    let at = |t| time::OffsetDateTime::from_unix_timestamp(t).expect("a time");
    let (mut endpoint, mut direct, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..requests + 3 {
        let started = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let e = started.elapsed();
        anyhow::ensure!(body.len() > 1000, "the chart has data");
        let started = Instant::now();
        let rows = crate::db::metrics::buckets(
            pool,
            name,
            "%",
            at(from),
            at(to),
            60,
            crate::db::metrics::Table::Rollup(60),
        )
        .await?;
        let d = started.elapsed();
        anyhow::ensure!(rows.len() >= SOURCES * 1400, "{} buckets", rows.len());
        if i >= 3 {
            endpoint.push(e);
            direct.push(d);
        }
        // The same numbers from the raw points (slow at 10M: a few samples only).
        if i < 3 {
            let started = Instant::now();
            crate::db::metrics::buckets(
                pool,
                name,
                "%",
                at(from),
                at(to),
                60,
                crate::db::metrics::Table::Raw,
            )
            .await?;
            raw.push(started.elapsed());
        }
    }
    Ok((median(endpoint), median(direct), median(raw)))
}

pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let mut settings = Settings::with_defaults(db.url.clone(), "127.0.0.1:0".parse()?);
    settings.fleet = format!("bench-metrics-{}", uuid::Uuid::new_v4().simple());
    settings.reconcile_interval = 3600;
    settings.metrics_rollup_interval = 3600;
    settings.metrics_sample_interval = 3600;
    let app = crate::startup::Application::build(settings).await?;
    let pool = app.pool().clone();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let token = super::admin_api_token(&pool).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    println!(
        "kiln bench metrics: ingest of {} measurements over {SOURCES} sources, {} concurrent clients",
        args.measurements, args.clients
    );
    for batch in [300usize, 1000] {
        let name = format!("bench.ingest.b{batch}");
        let bodies = bodies(args.measurements, batch, now, &name);
        let http = ingest_http(&base, &token, bodies, args.clients).await?;
        let copy = ingest_copy(
            &pool,
            &name,
            args.measurements,
            args.clients,
            now,
            usize::MAX,
        )
        .await?;
        let batched =
            ingest_copy(&pool, &name, args.measurements, args.clients, now, batch).await?;
        let h = args.measurements as f64 / http.as_secs_f64();
        let c = args.measurements as f64 / copy.as_secs_f64();
        let b = args.measurements as f64 / batched.as_secs_f64();
        println!(
            "  batches of {batch:>4}: HTTP {h:>9.0}/s   one COPY per client {c:>9.0}/s -> {:.2}x (target >= 0.5x);   a COPY per batch of {batch} {b:>9.0}/s -> {:.2}x",
            h / c,
            h / b
        );
    }

    println!(
        "24-hour chart at 1-minute resolution, {SOURCES} sources, median of {} requests:",
        args.requests
    );
    let mut flat = Vec::new();
    for (label, per_series) in [("1M", 20_000i64), ("10M", 200_000)] {
        let name = "bench.chart";
        let started = Instant::now();
        // Grow the same series to the target: 1M, then 10M stored points in the window.
        let have: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM metric_values p JOIN metric_series s ON s.id = p.series_id WHERE s.name = $1",
        )
        .bind(name)
        .fetch_one(&pool)
        .await?;
        seed(&pool, name, per_series - have / SOURCES as i64).await?;
        let seeded = started.elapsed();
        let (e, d, r) = chart(&pool, &base, &token, name, args.requests).await?;
        println!(
            "  {label:>3} points (seeded + rolled up in {:.0} s): endpoint {:.2} ms, same SQL direct {:.2} ms -> {:.2}x (target <= 1.2x); from raw points {:.1} ms",
            seeded.as_secs_f64(),
            ms(e),
            ms(d),
            ms(e) / ms(d),
            ms(r)
        );
        flat.push(e);
    }
    println!(
        "  endpoint at 10M / at 1M: {:.2}x (flat means ~1x; the raw-points query grows with the points)",
        ms(flat[1]) / ms(flat[0])
    );

    // The Metrics page: its HTML, then the series requests its 8 charts make (1 h range).
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let login = client
        .get(format!("{base}/login"))
        .send()
        .await?
        .text()
        .await?;
    let csrf = login
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("login form")?
        .to_owned();
    // Log in with a fresh password set for the bench user (the admin's is printed once).
    let pw = "bench-password-123456";
    let hash = crate::auth::password::hash(&crate::domain::Password::parse(pw)?).await?;
    sqlx::query("UPDATE users SET password_hash = $1 WHERE name = 'admin'")
        .bind(hash)
        .execute(&pool)
        .await?;
    client
        .post(format!("{base}/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "admin"),
            ("password", pw),
        ])
        .send()
        .await?;
    let mut pages = Vec::new();
    let mut data = Vec::new();
    let to = time::OffsetDateTime::now_utc().unix_timestamp();
    for i in 0..args.requests + 3 {
        let started = Instant::now();
        let html = client
            .get(format!("{base}/dashboards"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let p = started.elapsed();
        anyhow::ensure!(
            html.matches("class=\"chart panel\"").count() == 8,
            "8 charts"
        );
        let started = Instant::now();
        let specs = crate::metrics::dashboards::fleet();
        let requests = specs.iter().flat_map(|c| c.series.iter()).map(|s| {
            client
                .get(format!(
                    "{base}/dashboards/series?metric={}&source=*&aggregate={}&from={}&to={to}",
                    s.metric,
                    s.aggregate,
                    to - 3600
                ))
                .send()
        });
        for r in join_all(requests).await {
            r?.error_for_status()?;
        }
        if i >= 3 {
            pages.push(p);
            data.push(started.elapsed());
        }
    }
    println!(
        "Metrics page (8 charts): first render {:.2} ms (HTML), its 11 series requests together {:.2} ms (median of {})",
        ms(median(pages)),
        ms(median(data)),
        args.requests
    );
    db.drop_now().await?;
    Ok(())
}

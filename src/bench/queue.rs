//! `kiln bench queue`: the work queue's performance targets, measured in one run against a
//! `kiln serve` child process (this same binary) on a throwaway database, with simulated
//! agents speaking the real protocol from this process:
//!
//! - claim + finish cycles per second through the HTTP agent API (2 agents; then with 8
//!   slots per claim) against the same cycle as plain SQL (the same statements, no HTTP);
//! - pickup latency: enqueue (commit) -> claimed by an idle long-polling agent, p50/p99;
//! - 500 idle long-polling agents: the database's transactions per second while nothing
//!   happens (long-polls alone, then with heartbeats every 5 s), and the console's CPU and
//!   memory meanwhile.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use sqlx::PgPool;

use crate::agent::wire::{ClaimReply, Registered};
use crate::db::jobs::{JobResult, Labels, NewJob};

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Pickup-latency samples.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Idle long-polling agents.
    #[arg(long, default_value_t = 500)]
    pub idle_agents: usize,
    /// Seconds per idle measurement window.
    #[arg(long, default_value_t = 20)]
    pub idle_window: u64,
}

const LEASE_S: u64 = 60;

pub(super) struct Console {
    pub child: tokio::process::Child,
    pub base: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `kiln serve` child process on `db`; `env` adds to (or overrides) its settings.
pub(super) async fn start_console(db: &str, env: &[(&str, &str)]) -> anyhow::Result<Console> {
    let port = free_port()?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", db)
        .env("KILN_BIND", format!("127.0.0.1:{port}"))
        .env("KILN_FLEET", "bench-queue")
        .env("KILN_RECONCILE_INTERVAL", "3600")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start kiln serve")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the console did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Console { child, base })
}

/// Adds `n` servers (also known to the local provider, so nothing reconciles them away) and
/// registers an agent for each through the HTTP API; returns their agent tokens.
async fn agents(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
    slots: u32,
) -> anyhow::Result<Vec<String>> {
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, launched_by)
         SELECT $1 || lpad(g::TEXT, 12, '0'), 'ami-bench', 't3.micro', 'running', 'bench' FROM generate_series(1, $2) g",
    )
    .bind(prefix)
    .bind(n as i32)
    .execute(pool)
    .await?;
    let enrollment = crate::auth::token::Secret::generate(crate::auth::token::ENROLLMENT_PREFIX);
    let mut conn = pool.acquire().await?;
    crate::db::tokens::create_enrollment(&mut conn, &enrollment.hash(), None, 3600).await?;
    drop(conn);
    let mut tokens = Vec::with_capacity(n);
    for i in 1..=n {
        let reg: Registered = http
            .post(format!("{base}/agent/v1/register"))
            .json(&json!({"protocol": crate::agent::wire::PROTOCOL, "enrollment_token": enrollment.expose(),
                          "instance_id": format!("{prefix}{i:012}"), "version": "bench", "slots": slots}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(reg.agent_token);
    }
    Ok(tokens)
}

async fn enqueue_many(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by) SELECT 'true', 60, 'bench' FROM generate_series(1, $1)",
    )
    .bind(n as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// One simulated agent working through the queue by HTTP: claim up to `slots`, finish each.
async fn http_worker(
    http: reqwest::Client,
    base: String,
    token: String,
    slots: u32,
) -> anyhow::Result<usize> {
    let mut done = 0;
    loop {
        let reply: ClaimReply = http
            .post(format!("{base}/agent/v1/claim"))
            .bearer_auth(&token)
            .json(&json!({"slots": slots, "wait_s": 0}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if reply.jobs.is_empty() {
            return Ok(done);
        }
        for job in reply.jobs {
            http.post(format!("{base}/agent/v1/finish"))
                .bearer_auth(&token)
                .json(&json!({"job_id": job.job_id, "attempt": job.attempt, "ending": "exited", "exit_code": 0}))
                .send()
                .await?
                .error_for_status()?;
            done += 1;
        }
    }
}

/// The same cycle without HTTP: the claim statement, then the finish transaction.
async fn sql_worker(pool: PgPool, server: String, slots: i64) -> anyhow::Result<usize> {
    let mut done = 0;
    loop {
        let jobs = crate::db::jobs::claim(&pool, &server, slots, LEASE_S)
            .await?
            .map(|(_, jobs)| jobs)
            .unwrap_or_default();
        if jobs.is_empty() {
            return Ok(done);
        }
        for job in jobs {
            let mut tx = pool.begin().await?;
            crate::db::jobs::finish(
                &mut tx,
                job.id,
                job.attempt,
                &server,
                &JobResult {
                    succeeded: true,
                    exit_code: Some(0),
                    reason: "",
                },
            )
            .await?;
            tx.commit().await?;
            done += 1;
        }
    }
}

async fn throughput_http(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    tokens: &[String],
    jobs: usize,
    slots: u32,
) -> anyhow::Result<f64> {
    enqueue_many(pool, jobs).await?;
    let started = Instant::now();
    let workers: Vec<_> = tokens
        .iter()
        .map(|t| tokio::spawn(http_worker(http.clone(), base.to_owned(), t.clone(), slots)))
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.await??;
    }
    anyhow::ensure!(done == jobs, "HTTP run finished {done} of {jobs} jobs");
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

async fn throughput_sql(
    pool: &PgPool,
    servers: &[String],
    jobs: usize,
    slots: i64,
) -> anyhow::Result<f64> {
    enqueue_many(pool, jobs).await?;
    let started = Instant::now();
    let workers: Vec<_> = servers
        .iter()
        .map(|s| tokio::spawn(sql_worker(pool.clone(), s.clone(), slots)))
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.await??;
    }
    anyhow::ensure!(done == jobs, "SQL run finished {done} of {jobs} jobs");
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn pickup_latency(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    token: &str,
    samples: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut latencies = Vec::with_capacity(samples);
    let labels = Labels::new();
    for _ in 0..samples {
        // The agent is already waiting when the job arrives.
        let claim = {
            let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let reply: ClaimReply = http
                    .post(format!("{base}/agent/v1/claim"))
                    .bearer_auth(&token)
                    .json(&json!({"slots": 1, "wait_s": 25}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok::<_, anyhow::Error>((Instant::now(), reply))
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut tx = pool.begin().await?;
        crate::db::jobs::insert(
            &mut tx,
            &NewJob {
                command: "true",
                labels: &labels,
                timeout_s: 60,
                retries: 0,
                pinned_server_id: None,
                enqueued_by: "bench",
            },
        )
        .await?;
        tx.commit().await?;
        let enqueued = Instant::now();
        let (claimed, reply) = claim.await??;
        let job = reply.jobs.first().context("the waiting agent got no job")?;
        latencies.push(claimed.saturating_duration_since(enqueued));
        http.post(format!("{base}/agent/v1/finish"))
            .bearer_auth(token)
            .json(&json!({"job_id": job.job_id, "attempt": job.attempt, "ending": "exited", "exit_code": 0}))
            .send()
            .await?
            .error_for_status()?;
    }
    latencies.sort();
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

/// (user + system CPU seconds, RSS MB) of a process.
pub(super) fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // After "pid (comm)": state is field 0, utime 11, stime 12 (clock ticks).
    let ticks = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok((ticks / hz, rss_kb / 1024.0))
}

async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    // Statistics are per backend until reported; ask for a fresh snapshot.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

struct Idle {
    tx_per_s: f64,
    cpu_percent: f64,
    rss_mb: f64,
}

async fn idle_window(pool: &PgPool, pid: u32, secs: u64) -> anyhow::Result<Idle> {
    // Statistics reach pg_stat_database within about a second (stats flush interval).
    let c0 = commits(pool).await?;
    let (cpu0, _) = cpu_and_rss(pid)?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, rss) = cpu_and_rss(pid)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c1 = commits(pool).await?;
    // Our own two snapshot queries are in the count; they are negligible but subtracted.
    Ok(Idle {
        tx_per_s: ((c1 - c0 - 2).max(0)) as f64 / elapsed,
        cpu_percent: 100.0 * (cpu1 - cpu0) / elapsed,
        rss_mb: rss,
    })
}

pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let throwaway = super::ThrowawayDb::new()?;
    let db = throwaway.url.clone();
    let console = start_console(&db, &[]).await?;
    let pid = console.child.id().context("console pid")?;
    let pool = crate::db::connect(&db).await?;
    // Many idle long-polls at once: one client, many connections.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()?;
    let base = console.base.clone();
    println!(
        "kiln bench queue: console pid {pid}, {} jobs per throughput run, release build recommended",
        args.jobs
    );

    let tokens = agents(&pool, &http, &base, "i-bench-http-", 2, 8).await?;
    let sql_servers: Vec<String> = (1..=2).map(|i| format!("i-bench-sql-{i:012}")).collect();
    agents(&pool, &http, &base, "i-bench-sql-", 2, 8).await?;

    let http1 = throughput_http(&pool, &http, &base, &tokens, args.jobs, 1).await?;
    let sql1 = throughput_sql(&pool, &sql_servers, args.jobs, 1).await?;
    let http8 = throughput_http(&pool, &http, &base, &tokens, args.jobs, 8).await?;
    let sql8 = throughput_sql(&pool, &sql_servers, args.jobs, 8).await?;
    println!("claim+finish cycles/s, 2 agents:");
    println!(
        "  slots 1: HTTP {http1:>8.0}/s   plain SQL {sql1:>8.0}/s   ratio {:.2}x (target >= 0.7x)",
        http1 / sql1
    );
    println!(
        "  slots 8: HTTP {http8:>8.0}/s   plain SQL {sql8:>8.0}/s   ratio {:.2}x; batch claims vs slots 1: {:.2}x",
        http8 / sql8,
        http8 / http1
    );

    let (p50, p99) = pickup_latency(&pool, &http, &base, &tokens[0], args.samples).await?;
    println!(
        "pickup latency (enqueue commit -> claimed by a waiting agent), {} samples: p50 {:.2} ms, p99 {:.2} ms",
        args.samples,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );

    let (_, rss_before) = cpu_and_rss(pid)?;
    let idle = agents(&pool, &http, &base, "i-bench-idle-", args.idle_agents, 1).await?;
    // Registering them was a burst of writes; let its statistics land before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = idle_window(&pool, pid, args.idle_window.min(10)).await?;
    let mut pollers = Vec::new();
    for token in &idle {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                let _ = http
                    .post(format!("{base}/agent/v1/claim"))
                    .bearer_auth(&token)
                    .json(&json!({"slots": 1, "wait_s": 25}))
                    .send()
                    .await;
            }
        }));
    }
    // Let every long-poll get in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = idle_window(&pool, pid, args.idle_window).await?;
    for (i, token) in idle.iter().enumerate() {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        pollers.push(tokio::spawn(async move {
            // Spread the heartbeats over the 5 s period, as real agents started at different
            // times would be.
            tokio::time::sleep(Duration::from_millis((i as u64 * 5000) / 500)).await;
            loop {
                let _ = http
                    .post(format!("{base}/agent/v1/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({"running": [], "metrics": {"cpu_percent": 1.0}}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let beats = idle_window(&pool, pid, args.idle_window).await?;
    for p in pollers {
        p.abort();
    }
    println!(
        "{} idle agents long-polling (wait 25 s), over {} s:",
        args.idle_agents, args.idle_window
    );
    println!(
        "  baseline (registered, not polling): {:>7.1} DB transactions/s, console CPU {:>5.1}%",
        quiet.tx_per_s, quiet.cpu_percent
    );
    println!(
        "  long-polls only:          {:>7.1} DB transactions/s, console CPU {:>5.1}%, RSS {:.1} MB (before the agents: {:.1} MB)",
        polls.tx_per_s, polls.cpu_percent, polls.rss_mb, rss_before
    );
    println!(
        "  + heartbeats every 5 s:   {:>7.1} DB transactions/s, console CPU {:>5.1}%, RSS {:.1} MB (heartbeats alone would be {:.0}/s)",
        beats.tx_per_s,
        beats.cpu_percent,
        beats.rss_mb,
        args.idle_agents as f64 / 5.0
    );

    drop(console);
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    throwaway.drop_now().await?;
    Ok(())
}

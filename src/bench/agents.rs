//! `kiln bench agents`: many agents on several consoles. N simulated agents in this process
//! speak the real agent protocol over HTTP (registered with an enrollment token, heartbeats
//! with figures every 5 s, long-poll claims, a log line, finish) against `--consoles` real
//! `kiln serve` child processes on one throwaway database, agent i on console i mod C, while
//! a producer enqueues short jobs through the API at `--jobs-per-s`.
//!
//! Four windows of `--window` seconds each: registered agents doing nothing (the consoles'
//! own background work: the baseline), heartbeats only, heartbeats and idle long-polls, and
//! all that with jobs flowing. Per window: PostgreSQL statements (from `pg_stat_statements`
//! when the cluster preloads it, see `scripts/pg-stat-cluster`; otherwise transactions from
//! `pg_stat_database`), CPU per process, and the latencies. Statements per idle heartbeat and
//! per job are the differences between windows, divided by what the agents did.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::agent::wire::{ClaimReply, Registered};

use super::queue::{Console, cpu_and_rss, percentile, start_console};

#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 2000)]
    pub agents: usize,
    /// `kiln serve` processes sharing the database.
    #[arg(long, default_value_t = 2)]
    pub consoles: usize,
    /// Jobs enqueued per second in the busy window.
    #[arg(long, default_value_t = 50.0)]
    pub jobs_per_s: f64,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
}

const HEARTBEAT: Duration = Duration::from_secs(5);

/// What the simulated agents did, stamped so each window takes its own share.
#[derive(Default)]
struct Sim {
    beating: AtomicBool,
    polling: AtomicBool,
    /// (sent, took) per heartbeat.
    beats: Mutex<Vec<(Instant, Duration)>>,
    /// job id -> the producer's request was sent.
    enqueued: Mutex<HashMap<i64, Instant>>,
    /// (enqueue sent, claimed) per job, matched once both are known.
    claimed: Mutex<Vec<(i64, Instant)>>,
    finished: AtomicU64,
    errors: AtomicU64,
}

impl Sim {
    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("  agent error ({what}): {e}");
        }
    }
}

/// Statement (or transaction) counts of the throwaway database.
struct Counter {
    pool: PgPool,
    statements: bool,
}

impl Counter {
    async fn new(pool: PgPool) -> Self {
        let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .is_ok()
            && sqlx::query("SELECT count(*) FROM pg_stat_statements")
                .execute(&pool)
                .await
                .is_ok();
        Self { pool, statements }
    }

    fn unit(&self) -> &'static str {
        if self.statements {
            "statements"
        } else {
            "transactions"
        }
    }

    async fn reset(&self) -> anyhow::Result<i64> {
        if self.statements {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&self.pool)
                .await?;
            Ok(0)
        } else {
            self.transactions().await
        }
    }

    async fn transactions(&self) -> anyhow::Result<i64> {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Since `reset` (which returned `from`): the count, and the statements by calls.
    async fn since(&self, from: i64) -> anyhow::Result<(i64, Vec<(String, i64)>)> {
        if !self.statements {
            // Statistics reach pg_stat_database within about a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return Ok((self.transactions().await? - from, vec![]));
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query NOT LIKE '%pg_stat_statements%'
             ORDER BY calls DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((rows.iter().map(|(_, c)| c).sum(), rows))
    }
}

/// CPU seconds of the consoles, of every `postgres` process, and of this process.
fn cpu(consoles: &[u32]) -> anyhow::Result<(Vec<f64>, f64, f64)> {
    let per_console = consoles
        .iter()
        .map(|pid| cpu_and_rss(*pid).map(|(c, _)| c))
        .collect::<anyhow::Result<_>>()?;
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres")
            && let Ok((c, _)) = cpu_and_rss(pid)
        {
            postgres += c;
        }
    }
    let own = cpu_and_rss(std::process::id())?.0;
    Ok((per_console, postgres, own))
}

struct Window {
    name: &'static str,
    secs: f64,
    count: i64,
    top: Vec<(String, i64)>,
    console_cpu: Vec<f64>,
    postgres_cpu: f64,
    own_cpu: f64,
    started: Instant,
    ended: Instant,
    finished: u64,
}

async fn window(
    name: &'static str,
    secs: u64,
    counter: &Counter,
    consoles: &[u32],
    sim: &Sim,
) -> anyhow::Result<Window> {
    let from = counter.reset().await?;
    let (c0, p0, o0) = cpu(consoles)?;
    let f0 = sim.finished.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let ended = Instant::now();
    let (c1, p1, o1) = cpu(consoles)?;
    let finished = sim.finished.load(Ordering::Relaxed) - f0;
    let (count, top) = counter.since(from).await?;
    let elapsed = ended.duration_since(started).as_secs_f64();
    let pct = |a: f64, b: f64| 100.0 * (b - a) / elapsed;
    Ok(Window {
        name,
        secs: elapsed,
        count,
        top,
        console_cpu: c0.iter().zip(&c1).map(|(a, b)| pct(*a, *b)).collect(),
        postgres_cpu: pct(p0, p1),
        own_cpu: pct(o0, o1),
        started,
        ended,
        finished,
    })
}

async fn register(
    pool: &PgPool,
    http: &reqwest::Client,
    bases: &[String],
    n: usize,
) -> anyhow::Result<Vec<String>> {
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, launched_by)
         SELECT 'i-sim-' || lpad(g::TEXT, 8, '0'), 'ami-bench', 't3.micro', 'running', 'bench'
         FROM generate_series(1, $1) g",
    )
    .bind(n as i32)
    .execute(pool)
    .await?;
    let enrollment = crate::auth::token::Secret::generate(crate::auth::token::ENROLLMENT_PREFIX);
    let mut conn = pool.acquire().await?;
    crate::db::tokens::create_enrollment(&mut conn, &enrollment.hash(), None, 3600).await?;
    drop(conn);
    let enrollment = enrollment.expose().to_owned();
    let tokens: Vec<anyhow::Result<String>> = futures_util::stream::iter(1..=n)
        .map(|i| {
            let (http, base, enrollment) =
                (http.clone(), bases[i % bases.len()].clone(), enrollment.clone());
            async move {
                let reg: Registered = http
                    .post(format!("{base}/agent/v1/register"))
                    .json(&json!({"protocol": crate::agent::wire::PROTOCOL, "enrollment_token": enrollment,
                                  "instance_id": format!("i-sim-{i:08}"), "version": "bench", "slots": 1}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok(reg.agent_token)
            }
        })
        .buffered(16)
        .collect()
        .await;
    tokens.into_iter().collect()
}

async fn heartbeats(
    http: reqwest::Client,
    base: String,
    token: String,
    sim: Arc<Sim>,
    offset: Duration,
) {
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if !sim.beating.load(Ordering::Relaxed) {
            continue;
        }
        let sent = Instant::now();
        let r = http
            .post(format!("{base}/agent/v1/heartbeat"))
            .bearer_auth(&token)
            .json(&json!({"running": [], "metrics": {"cpu_percent": 12.5, "mem_percent": 40.0, "load1": 0.3, "disk_percent": 55.0}}))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match r {
            Ok(_) => sim.beats.lock().await.push((sent, sent.elapsed())),
            Err(e) => sim.failed("heartbeat", e),
        }
    }
}

async fn work(http: reqwest::Client, base: String, token: String, sim: Arc<Sim>) {
    loop {
        if !sim.polling.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let reply = async {
            let reply: ClaimReply = http
                .post(format!("{base}/agent/v1/claim"))
                .bearer_auth(&token)
                .json(&json!({"slots": 1, "wait_s": 20}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(reply)
        }
        .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                sim.failed("claim", e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let claimed = Instant::now();
        for job in reply.jobs {
            sim.claimed.lock().await.push((job.job_id, claimed));
            let done = async {
                http.post(format!("{base}/agent/v1/log"))
                    .bearer_auth(&token)
                    .json(&json!({"job_id": job.job_id, "attempt": job.attempt,
                                  "chunks": [{"seq": 0, "stream": "stdout", "data": "building…\nok\n"}]}))
                    .send()
                    .await?
                    .error_for_status()?;
                http.post(format!("{base}/agent/v1/finish"))
                    .bearer_auth(&token)
                    .json(&json!({"job_id": job.job_id, "attempt": job.attempt, "ending": "exited", "exit_code": 0}))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok::<_, reqwest::Error>(())
            }
            .await;
            match done {
                Ok(()) => {
                    sim.finished.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => sim.failed("log/finish", e),
            }
        }
    }
}

/// Enqueues `per_s` jobs a second through the API, round robin over the consoles.
async fn produce(
    http: reqwest::Client,
    bases: Vec<String>,
    token: String,
    per_s: f64,
    sim: Arc<Sim>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    let mut i = 0usize;
    loop {
        tick.tick().await;
        let (http, base, token, sim) = (
            http.clone(),
            bases[i % bases.len()].clone(),
            token.clone(),
            sim.clone(),
        );
        i += 1;
        tokio::spawn(async move {
            let sent = Instant::now();
            let r = async {
                let v: serde_json::Value = http
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(&token)
                    .json(&json!({"command": "make test"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok::<_, reqwest::Error>(v)
            }
            .await;
            match r {
                Ok(v) => {
                    if let Some(id) = v["id"].as_i64() {
                        sim.enqueued.lock().await.insert(id, sent);
                    }
                }
                Err(e) => sim.failed("enqueue", e),
            }
        });
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn beat_latencies(sim: &Sim, w: &Window) -> (usize, Duration, Duration) {
    let mut took: Vec<Duration> = sim
        .beats
        .lock()
        .await
        .iter()
        .filter(|(sent, _)| *sent >= w.started && *sent < w.ended)
        .map(|(_, took)| *took)
        .collect();
    took.sort();
    if took.is_empty() {
        return (0, Duration::ZERO, Duration::ZERO);
    }
    (took.len(), percentile(&took, 0.5), percentile(&took, 0.99))
}

fn report(w: &Window, unit: &str) {
    let consoles: Vec<String> = w.console_cpu.iter().map(|c| format!("{c:.1}%")).collect();
    println!(
        "  {:<28} {:>8.1} {unit}/s   CPU: consoles {}, postgres {:.1}%, simulator {:.1}%",
        w.name,
        w.count as f64 / w.secs,
        consoles.join(" + "),
        w.postgres_cpu,
        w.own_cpu
    );
}

pub async fn run(args: AgentsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.consoles >= 1 && args.agents >= 1 && args.jobs_per_s > 0.0);
    let throwaway = super::ThrowawayDb::new()?;
    let db = throwaway.url.clone();
    let mut consoles: Vec<Console> = Vec::new();
    for _ in 0..args.consoles {
        consoles.push(start_console(&db, &[("KILN_FLEET", "bench-agents")]).await?);
    }
    let pids: Vec<u32> = consoles
        .iter()
        .map(|c| c.child.id().context("console pid"))
        .collect::<anyhow::Result<_>>()?;
    let bases: Vec<String> = consoles.iter().map(|c| c.base.clone()).collect();
    let pool = crate::db::connect(&db).await?;
    let counter = Counter::new(pool.clone()).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4 * args.agents)
        .timeout(Duration::from_secs(60))
        .build()?;
    println!(
        "kiln bench agents: {} simulated agents over {} consoles (pids {:?}), heartbeats every {} s, {} jobs/s in the busy window; counting {}",
        args.agents,
        args.consoles,
        pids,
        HEARTBEAT.as_secs(),
        args.jobs_per_s,
        counter.unit()
    );
    let registering = Instant::now();
    let tokens = register(&pool, &http, &bases, args.agents).await?;
    println!(
        "  registered {} agents in {:.1} s",
        tokens.len(),
        registering.elapsed().as_secs_f64()
    );
    let api = super::admin_api_token(&pool).await?;

    let sim = Arc::new(Sim::default());
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let base = bases[i % bases.len()].clone();
        // Spread over the period, as agents started at different times would be.
        let offset = HEARTBEAT.mul_f64(i as f64 / args.agents as f64);
        tasks.push(tokio::spawn(heartbeats(
            http.clone(),
            base.clone(),
            token.clone(),
            sim.clone(),
            offset,
        )));
        tasks.push(tokio::spawn(work(
            http.clone(),
            base,
            token.clone(),
            sim.clone(),
        )));
    }
    // Registration's burst is over before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = args.window;
    let baseline = window("baseline (registered, quiet)", w, &counter, &pids, &sim).await?;

    sim.beating.store(true, Ordering::Relaxed);
    tokio::time::sleep(HEARTBEAT + Duration::from_secs(1)).await;
    let beats = window("heartbeats only", w, &counter, &pids, &sim).await?;

    sim.polling.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = window("+ idle long-polls", w, &counter, &pids, &sim).await?;

    tasks.push(tokio::spawn(produce(
        http.clone(),
        bases.clone(),
        api.clone(),
        args.jobs_per_s,
        sim.clone(),
    )));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy = window("+ jobs flowing", w, &counter, &pids, &sim).await?;
    let rss: Vec<f64> = pids
        .iter()
        .map(|pid| cpu_and_rss(*pid).map(|(_, r)| r))
        .collect::<anyhow::Result<_>>()?;
    for t in &tasks {
        t.abort();
    }

    let unit = counter.unit();
    println!("per window ({} s each):", w);
    for win in [&baseline, &beats, &idle, &busy] {
        report(win, unit);
    }
    let rate = |win: &Window| win.count as f64 / win.secs;
    let (n_beats, _, _) = beat_latencies(&sim, &beats).await;
    let per_beat = (rate(&beats) - rate(&baseline)) * beats.secs / n_beats.max(1) as f64;
    println!(
        "idle heartbeats: {n_beats} in the window, {per_beat:.4} {unit} per heartbeat beyond the baseline (target <= 0.05)"
    );
    let polls_per_s = rate(&idle) - rate(&beats);
    println!(
        "idle long-polls (wait 20 s): {polls_per_s:.1} {unit}/s for {} waiting agents",
        args.agents
    );
    let jobs = busy.finished;
    let per_job = (rate(&busy) - rate(&idle)) * busy.secs / jobs.max(1) as f64;
    println!(
        "jobs: {jobs} finished in the busy window ({:.1}/s), {per_job:.2} {unit} per job lifecycle (enqueue by API, claim, log, finish)",
        jobs as f64 / busy.secs
    );
    for (label, win) in [("idle", &idle), ("busy", &busy)] {
        let (n, p50, p99) = beat_latencies(&sim, win).await;
        println!(
            "heartbeat latency, {label} window ({n} heartbeats): p50 {:.2} ms, p99 {:.2} ms (target p99 < 50 ms)",
            ms(p50),
            ms(p99)
        );
    }
    let mut pickup: Vec<Duration> = {
        let enqueued = sim.enqueued.lock().await;
        sim.claimed
            .lock()
            .await
            .iter()
            .filter(|(_, at)| *at >= busy.started && *at < busy.ended)
            .filter_map(|(id, at)| {
                enqueued
                    .get(id)
                    .map(|sent| at.saturating_duration_since(*sent))
            })
            .collect()
    };
    pickup.sort();
    if !pickup.is_empty() {
        println!(
            "claim-to-start (enqueue request sent -> an agent holds the job), {} jobs: p50 {:.2} ms, p99 {:.2} ms (target p99 < 100 ms)",
            pickup.len(),
            ms(percentile(&pickup, 0.5)),
            ms(percentile(&pickup, 0.99))
        );
    }
    let rss: Vec<String> = rss.iter().map(|r| format!("{r:.1} MB")).collect();
    println!(
        "console RSS at the end: {} (target < 150 MB)",
        rss.join(", ")
    );
    println!(
        "errors seen by the simulated agents: {}",
        sim.errors.load(Ordering::Relaxed)
    );
    if !busy.top.is_empty() {
        println!("busy window's statements by calls:");
        for (query, calls) in busy.top.iter().take(14) {
            let q: String = query.chars().take(110).collect();
            println!("  {calls:>8}  {q}");
        }
        println!("heartbeats-only window's statements by calls:");
        for (query, calls) in beats.top.iter().take(8) {
            let q: String = query.chars().take(110).collect();
            println!("  {calls:>8}  {q}");
        }
    }

    drop(consoles);
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    throwaway.drop_now().await?;
    Ok(())
}

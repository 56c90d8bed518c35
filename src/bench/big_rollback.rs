//! `kiln bench big-rollback`: a 1,000-server fleet on moto released to a new image and rolled
//! back (batch size 100), through a real `kiln serve` child process with the aws provider and
//! its default EC2 buckets (AWS's documented defaults). Simulated agents in this process play
//! the instances: each server row Kiln records gets an agent registered for it at once (the
//! simulated boot), and every agent heartbeats every 5 s until told its server is gone.
//!
//! Reports per rollout: its duration, the simulated boot inside it (the slowest agent's
//! registration after its server was recorded, per group of servers recorded in the same
//! second: an upper bound, groups overlap), the time spent waiting for EC2's (moto's)
//! answers (`kiln_ec2_call_seconds`), the rest, EC2 calls by action (the console's
//! `kiln_ec2_calls_total`), and the minimum time the buckets allow for those calls; then
//! the termination of the servers it replaced, until the last is gone (`KILN_ROLLBACK_GRACE=0`:
//! retired at once, so that the rollback replaces the whole fleet again instead of
//! re-enabling the kept servers).
//!
//! Needs `moto_server` (`.venv/bin/moto_server` after `scripts/test-env`, or `KILN_MOTO_SERVER`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::agent::wire::Registered;

use super::queue::start_console;

#[derive(Debug, Clone, Args)]
pub struct BigRollbackArgs {
    #[arg(long, default_value_t = 1000)]
    pub servers: u32,
    #[arg(long, default_value_t = 100)]
    pub batch_size: u32,
}

/// The key of [`ec2_calls`]'s total time waiting for EC2's answers.
const WAITED: &str = "~waited";

const IMAGES: [&str; 2] = ["ami-1e749f67", "ami-03cf127a"];

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> anyhow::Result<(Moto, u16)> {
    let exe = std::env::var("KILN_MOTO_SERVER").unwrap_or_else(|_| ".venv/bin/moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(&exe)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_ENABLE_AMI_VALIDATION", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("start {exe} (run scripts/test-env, or set KILN_MOTO_SERVER)"))?;
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "moto_server did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((moto, port))
}

/// The simulated instances' agents: token per server, and those told to go.
#[derive(Default)]
struct Agents {
    tokens: Mutex<HashMap<String, String>>,
    gone: Mutex<HashSet<String>>,
}

/// Registers an agent for every live server without one, every 100 ms, until aborted.
async fn boot(
    pool: PgPool,
    http: reqwest::Client,
    base: String,
    enrollment: String,
    agents: Arc<Agents>,
) {
    loop {
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM servers WHERE state IN ('pending', 'running')
               AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.server_id = servers.id)",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let results: Vec<_> = futures_util::stream::iter(waiting)
            .map(|id| {
                let (http, base, enrollment) = (http.clone(), base.clone(), enrollment.clone());
                async move {
                    let reg: Result<Registered, reqwest::Error> = async {
                        http.post(format!("{base}/agent/v1/register"))
                            .json(&json!({"protocol": crate::agent::wire::PROTOCOL, "enrollment_token": enrollment,
                                          "instance_id": id, "version": "bench", "slots": 1}))
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await
                    }
                    .await;
                    (id, reg)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (id, reg) in results {
            if let Ok(reg) = reg {
                agents.tokens.lock().await.insert(id, reg.agent_token);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every agent heartbeats every 5 s (spread over the period) until its server is gone.
async fn heartbeat(http: reqwest::Client, base: String, agents: Arc<Agents>) {
    loop {
        let started = Instant::now();
        let all: Vec<(String, String)> = agents
            .tokens
            .lock()
            .await
            .iter()
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        let n = all.len().max(1);
        let beats = all.into_iter().enumerate().map(|(i, (server, token))| {
            let (http, base, agents) = (http.clone(), base.clone(), agents.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(5).mul_f64(i as f64 / n as f64)).await;
                let reply: Option<Value> = async {
                    http.post(format!("{base}/agent/v1/heartbeat"))
                        .bearer_auth(&token)
                        .json(&json!({"running": []}))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()
                }
                .await;
                if reply.is_none_or(|r| r["terminate"] == true) {
                    agents.tokens.lock().await.remove(&server);
                    agents.gone.lock().await.insert(server);
                }
            }
        });
        futures_util::stream::iter(beats)
            .buffer_unordered(512)
            .collect::<Vec<()>>()
            .await;
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        tokio::time::sleep(left).await;
    }
}

async fn ec2_calls(http: &reqwest::Client, base: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut calls = HashMap::new();
    // The time spent waiting for EC2's (moto's) answers, all actions together.
    let waited: f64 = text
        .lines()
        .filter(|l| l.starts_with("kiln_ec2_call_seconds_sum{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    calls.insert(WAITED.to_owned(), waited);
    for line in text
        .lines()
        .filter(|l| l.starts_with("kiln_ec2_calls_total{"))
    {
        let Some(action) = line
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let key = if outcome == "ok" {
            action.to_owned()
        } else {
            format!("{action} ({outcome})")
        };
        *calls.entry(key).or_default() += value;
    }
    Ok(calls)
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let res = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let v: Value = res.json().await?;
    anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
    Ok(v)
}

/// The least time a bucket of `size` refilled `rate` a second allows for `calls` calls.
fn bucket_minimum(calls: f64, size: f64, rate: f64) -> f64 {
    ((calls - size) / rate).max(0.0)
}

struct Measured {
    secs: f64,
    boot_secs: f64,
    /// Waiting for EC2's (moto's) answers, summed over calls (some overlap).
    ec2_secs: f64,
    calls: Vec<(String, f64)>,
}

/// EC2 calls by action since `before`, and the seconds spent waiting for their answers.
async fn calls_since(
    http: &reqwest::Client,
    base: &str,
    before: &HashMap<String, f64>,
) -> anyhow::Result<(Vec<(String, f64)>, f64)> {
    let after = ec2_calls(http, base).await?;
    let mut calls: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    let ec2_secs = calls
        .iter()
        .find(|(k, _)| k == WAITED)
        .map_or(0.0, |(_, v)| *v);
    calls.retain(|(k, _)| k != WAITED);
    Ok((calls, ec2_secs))
}

/// Waits until every server on `image` (the ones a rollout replaced) is terminated: their
/// retirement, due at the end of the grace (0 s here), drains them and terminates them.
async fn retirement(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    image: &str,
) -> anyhow::Result<Measured> {
    let before = ec2_calls(http, base).await?;
    let started = Instant::now();
    super::rollout::wait_for("the replaced servers' termination", 3600, async || {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM servers WHERE image_id = $1 AND state <> 'terminated'",
        )
        .bind(image)
        .fetch_one(pool)
        .await?;
        Ok(left == 0)
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let (calls, ec2_secs) = calls_since(http, base, &before).await?;
    Ok(Measured {
        secs,
        boot_secs: 0.0,
        ec2_secs,
        calls,
    })
}

async fn rollout(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    token: &str,
    image: &str,
    kind: &str,
    batch: u32,
) -> anyhow::Result<Measured> {
    let before = ec2_calls(http, base).await?;
    let started = Instant::now();
    let r = post(
        http,
        base,
        token,
        &format!("/api/v1/images/{image}/{kind}"),
        json!({"batch_size": batch}),
    )
    .await?;
    let id = r["id"].as_i64().context("rollout id")?;
    let mut state = String::new();
    super::rollout::wait_for(&format!("{kind} #{id}"), 3600, async || {
        let v: Value = http
            .get(format!("{base}/api/v1/rollouts/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        state = v["state"].as_str().unwrap_or("").to_owned();
        Ok(matches!(
            state.as_str(),
            "succeeded" | "failed" | "cancelled"
        ))
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(state == "succeeded", "{kind} #{id} ended {state}");
    let (calls, ec2_secs) = calls_since(http, base, &before).await?;
    // Per batch of launched servers (one launch each), the slowest agent's registration.
    let boot_secs: f64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(slowest), 0)::FLOAT8 FROM (
             SELECT max(EXTRACT(EPOCH FROM a.registered_at - s.launched_at)) AS slowest
             FROM servers s JOIN agents a ON a.server_id = s.id
             WHERE s.image_id = $1 AND s.launched_at >= now() - make_interval(secs => $2)
             GROUP BY s.launched_by, date_trunc('second', s.launched_at)
         ) b",
    )
    .bind(image)
    .bind(secs + 1.0)
    .fetch_one(pool)
    .await?;
    Ok(Measured {
        secs,
        boot_secs,
        ec2_secs,
        calls,
    })
}

fn report(kind: &str, m: &Measured, servers: u32, batch: u32) {
    println!(
        "{kind} of {servers} servers (batch {batch}): {:.1} s; simulated boot inside it {:.1} s; waiting for EC2's (moto's) answers {:.1} s (summed over calls); the rest, Kiln's own time and its pacing: {:.1} s",
        m.secs,
        m.boot_secs,
        m.ec2_secs,
        (m.secs - m.boot_secs - m.ec2_secs).max(0.0)
    );
    let mut minimum: f64 = 0.0;
    for (action, n) in &m.calls {
        println!("  {action:<28} {n:>6}");
        // AWS's defaults, which the console runs with here (KILN_EC2_BUCKETS unset).
        let floor = match action.as_str() {
            "RunInstances" | "TerminateInstances" => bucket_minimum(*n, 5.0, 2.0),
            a if a.starts_with("Describe") => bucket_minimum(*n, 100.0, 20.0),
            _ => bucket_minimum(*n, 200.0, 5.0),
        };
        minimum = minimum.max(floor);
    }
    println!("  the buckets' minimum for these calls: {minimum:.1} s");
}

pub async fn run(args: BigRollbackArgs) -> anyhow::Result<()> {
    let (moto, port) = start_moto()?;
    let throwaway = super::ThrowawayDb::new()?;
    let db = throwaway.url.clone();
    let endpoint = format!("http://127.0.0.1:{port}");
    let max = (args.servers * 3).to_string();
    let console = start_console(
        &db,
        &[
            ("KILN_PROVIDER", "aws"),
            ("KILN_EC2_ENDPOINT", &endpoint),
            ("KILN_FLEET", "bench-big-rollback"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("KILN_MAX_SERVERS", &max),
            ("KILN_ROLLBACK_GRACE", "0"),
            ("KILN_RECONCILE_INTERVAL", "30"),
        ],
    )
    .await?;
    let base = console.base.clone();
    let pool = crate::db::connect(&db).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(120))
        .build()?;
    let token = super::admin_api_token(&pool).await?;
    let enrollment = crate::auth::token::Secret::generate(crate::auth::token::ENROLLMENT_PREFIX);
    {
        let mut conn = pool.acquire().await?;
        crate::db::tokens::create_enrollment(&mut conn, &enrollment.hash(), None, 86_400).await?;
    }
    println!(
        "kiln bench big-rollback: {} servers on moto (port {port}), batch size {}, EC2 buckets at AWS's defaults",
        args.servers, args.batch_size
    );
    // One after the other: the first to become available is the current image.
    for (i, image) in IMAGES.iter().enumerate() {
        post(
            &http,
            &base,
            &token,
            "/api/v1/images",
            json!({"id": image, "name": "worker", "version": (i + 1).to_string()}),
        )
        .await?;
        super::rollout::wait_for("the image", 120, async || {
            let v: Value = http
                .get(format!("{base}/api/v1/images/{image}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            Ok(v["state"] == "available")
        })
        .await?;
    }
    let agents = Arc::new(Agents::default());
    let tasks = [
        tokio::spawn(boot(
            pool.clone(),
            http.clone(),
            base.clone(),
            enrollment.expose().to_owned(),
            agents.clone(),
        )),
        tokio::spawn(heartbeat(http.clone(), base.clone(), agents.clone())),
    ];

    // The fleet on the first image (the first one adopted is current), launched 100 at a time.
    let launching = Instant::now();
    let mut left = args.servers;
    while left > 0 {
        let n = left.min(100);
        post(
            &http,
            &base,
            &token,
            "/api/v1/servers",
            json!({"image_id": IMAGES[0], "count": n}),
        )
        .await?;
        left -= n;
    }
    super::rollout::wait_for("the fleet's agents", 1800, async || {
        Ok(agents.tokens.lock().await.len() as u32 >= args.servers)
    })
    .await?;
    println!(
        "the fleet is up: {} servers launched and their agents registered in {:.1} s",
        args.servers,
        launching.elapsed().as_secs_f64()
    );

    let release = rollout(
        &pool,
        &http,
        &base,
        &token,
        IMAGES[1],
        "release",
        args.batch_size,
    )
    .await?;
    report("release", &release, args.servers, args.batch_size);
    // The release's replaced servers go before the rollback starts, so that the rollback
    // replaces the fleet again (instead of re-enabling them) and their terminations are
    // counted on their own.
    let retired = retirement(&pool, &http, &base, IMAGES[0]).await?;
    report(
        "termination after the release",
        &retired,
        args.servers,
        args.batch_size,
    );
    let back = rollout(
        &pool,
        &http,
        &base,
        &token,
        IMAGES[0],
        "rollback",
        args.batch_size,
    )
    .await?;
    report("rollback", &back, args.servers, args.batch_size);
    let retired = retirement(&pool, &http, &base, IMAGES[1]).await?;
    report(
        "termination after the rollback",
        &retired,
        args.servers,
        args.batch_size,
    );
    // moto never throttles; that the pacing never trips a bucket AWS enforces is tested with
    // the fault proxy enforcing them (tests/api/cloud_aws.rs). Here: any call not answered ok.
    let failed: f64 = ec2_calls(&http, &base)
        .await?
        .iter()
        .filter(|(k, _)| k.contains('('))
        .map(|(_, v)| v)
        .sum();
    println!("EC2 calls not answered ok over the whole run: {failed}");

    for t in tasks {
        t.abort();
    }
    drop(console);
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    throwaway.drop_now().await?;
    drop(moto);
    Ok(())
}

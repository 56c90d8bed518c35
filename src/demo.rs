//! `kiln serve --demo`: a fresh console comes alive within a minute, so that a newcomer sees
//! what Kiln is for before setting anything up. Local provider only.
//!
//! The demo is a client of the console's own HTTP API, acting as the user `demo` (an
//! operator): every demo action goes through the same validation as anyone's and is in the
//! audit log under that name (plus one `demo.start` event at each start). Each pass decides
//! from the database what is still missing, so a restarted demo carries on instead of doing
//! everything twice:
//!
//! - autoscaling on, between 3 and 5 workers, unless someone set scaling before: the
//!   autoscaler launches the first three and its decisions have something to say;
//! - a trickle of jobs, one every 4 s while fewer than 10 wait — builds and tests, some
//!   failing, some slow;
//! - `app.checkout.latency` (two sources, a slow wave) and `app.orders` posted every 10 s
//!   through the Librato-compatible API, and an alert rule on the latency that fires at the
//!   wave's crests;
//! - an annotation at start and a "load test" band ten minutes back;
//! - once the servers' agents have joined, a bake of a second image (recipe `demo-worker`)
//!   that releases itself: a bake, a new image and a release, with their chart markers.
//!
//! Without `--demo` none of this runs; the demo's token is replaced at every demo start.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::{Role, TokenName, UserName};

pub const USER: &str = "demo";
const WORKERS: i64 = 3;
const RECIPE: &str = "demo-worker";
const ALERT: &str = "checkout.slow";
const TICK: Duration = Duration::from_secs(2);

/// The jobs of the trickle, in turn: (command, labels).
const JOBS: &[(&str, &str, &str)] = &[
    (
        "echo building api; sleep 2; echo 'built api in 2 s'",
        "api",
        "build",
    ),
    (
        "echo running unit tests; sleep 3; echo '214 passed'",
        "api",
        "test",
    ),
    ("echo building web; sleep 1; echo ok", "web", "build"),
    (
        "echo running integration tests; sleep 2; echo 'checkout_test.go:88: expected 200, got 502' >&2; exit 1",
        "web",
        "test",
    ),
    ("echo linting; sleep 1; echo clean", "api", "lint"),
    (
        "echo long end-to-end suite; sleep 25; echo '61 passed'",
        "web",
        "e2e",
    ),
    (
        "echo running unit tests; sleep 2; echo '88 passed'",
        "web",
        "test",
    ),
    (
        "echo flaky upload test; sleep 1; echo 'timeout talking to s3' >&2; exit 1",
        "api",
        "test",
    ),
];

struct Demo {
    pool: PgPool,
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Runs the demo until `stop` changes. `base` is the console's own address.
pub async fn run(pool: PgPool, base: String, mut stop: watch::Receiver<bool>) {
    let token = match prepare(&pool).await {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the demo could not start");
            return;
        }
    };
    tracing::info!("demo: launching servers, enqueueing jobs and posting metrics as the user demo");
    let demo = Demo {
        pool,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client with a timeout"),
        base: base.trim_end_matches('/').to_owned(),
        token,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = demo.step(n).await {
            tracing::warn!(error = %format!("{e:#}"), "demo step failed; trying again");
        }
        n += 1;
    }
}

/// The user `demo` (created once, with a password nobody knows) and a fresh API token of
/// its, the previous ones revoked; audited as `demo.start`.
async fn prepare(pool: &PgPool) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let user = match crate::db::users::find_by_name(&mut *tx, USER).await? {
        Some(user) => user,
        None => {
            let hash =
                crate::auth::password::hash(&crate::auth::password::generate_initial()).await?;
            crate::db::users::create(&mut tx, &UserName::parse(USER)?, Role::Operator, &hash)
                .await?
        }
    };
    crate::db::tokens::revoke_all_of(&mut *tx, user.id).await?;
    let secret = crate::auth::token::Secret::generate(crate::auth::token::API_PREFIX);
    crate::db::tokens::create_api(
        &mut tx,
        user.id,
        &TokenName::parse(USER)?,
        &secret.hash(),
        None,
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::system("demo.start", format!("user:{USER}"), Outcome::Ok).detail(
            "kiln serve --demo: the user demo launches servers, enqueues jobs, posts metrics, bakes and releases an image",
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(secret.expose().to_owned())
}

impl Demo {
    async fn step(&self, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            self.annotate().await?;
            self.alert_rule().await?;
            self.autoscaling().await?;
        }
        if n.is_multiple_of(2) {
            self.job(n / 2).await?;
        }
        if n.is_multiple_of(5) {
            self.metrics(n).await?;
        }
        self.bake().await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, body).await
    }

    /// A call to the console's API with the demo's token; an error names the refusal.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let res = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            anyhow::bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Autoscaling between 3 and 5 workers, unless scaling was ever set by someone.
    async fn autoscaling(&self) -> anyhow::Result<()> {
        let touched = self
            .count("SELECT count(*) FROM audit_events WHERE action LIKE 'scaling.%'")
            .await?;
        if touched == 0 {
            self.call(
                reqwest::Method::PUT,
                "/api/v1/scaling",
                json!({"enabled": true, "min": WORKERS, "max": 5}),
            )
            .await?;
        }
        Ok(())
    }

    async fn job(&self, n: u64) -> anyhow::Result<()> {
        let waiting = self
            .count("SELECT count(*) FROM jobs WHERE state = 'queued'")
            .await?;
        if waiting >= 10 {
            return Ok(());
        }
        let (command, repo, kind) = JOBS[(n as usize) % JOBS.len()];
        self.post(
            "/api/v1/jobs",
            json!({"command": command, "labels": {"repo": repo, "kind": kind},
                   "timeout_s": 120, "retries": 0}),
        )
        .await?;
        Ok(())
    }

    /// Checkout latency as a slow wave (a 6-minute period) with some jitter, per web server;
    /// orders as a counter. Posted the way a Librato client does: basic auth, token as
    /// password.
    async fn metrics(&self, n: u64) -> anyhow::Result<()> {
        let t = n as f64 * TICK.as_secs_f64();
        let wave = (t / 360.0 * std::f64::consts::TAU).sin();
        let jitter = |k: u64| ((n.wrapping_mul(2_654_435_761).wrapping_add(k) % 21) as f64) - 10.0;
        let orders = (t * 0.7) as i64;
        let body = json!({
            "gauges": [
                {"name": "app.checkout.latency", "value": 140.0 + 60.0 * wave + jitter(1), "source": "web-1"},
                {"name": "app.checkout.latency", "value": 120.0 + 50.0 * wave + jitter(2), "source": "web-2"},
            ],
            "counters": [
                {"name": "app.orders", "value": orders, "source": "web-1"},
                {"name": "app.orders", "value": orders / 2, "source": "web-2"},
            ],
        });
        self.librato("/v1/metrics", body).await
    }

    /// A POST to Librato's API the way its clients make one: basic auth, token as password.
    async fn librato(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(USER, Some(&self.token))
            .json(&body)
            .send()
            .await?;
        if !res.status().is_success() {
            anyhow::bail!("POST {path}: {}: {}", res.status(), res.text().await?);
        }
        Ok(())
    }

    async fn annotate(&self) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for body in [
            json!({"title": "Demo started", "description": "kiln serve --demo"}),
            json!({"title": "Load test (demo)", "description": "a band: an annotation with an end time",
                   "start_time": now - 600, "end_time": now - 300}),
        ] {
            self.librato("/v1/annotations/demo", body).await?;
        }
        Ok(())
    }

    async fn alert_rule(&self) -> anyhow::Result<()> {
        let exists = self
            .count(&format!(
                "SELECT count(*) FROM alert_rules WHERE name = '{ALERT}'"
            ))
            .await?;
        if exists == 0 {
            self.post(
                "/api/v1/alerts",
                json!({"name": ALERT, "description": "demo: checkout is slow at the wave's crest",
                       "conditions": [{"metric": "app.checkout.latency", "source": "web-*",
                                       "aggregate": "avg", "window_s": 60, "op": "above",
                                       "threshold": 185, "clear_threshold": 170}]}),
            )
            .await?;
        }
        Ok(())
    }

    /// Once the workers' agents have joined: a recipe and one bake that releases its image.
    async fn bake(&self) -> anyhow::Result<()> {
        let recipes = self
            .count(&format!(
                "SELECT count(*) FROM recipes WHERE name = '{RECIPE}'"
            ))
            .await?;
        if recipes > 0 {
            return Ok(());
        }
        let joined = self
            .count(
                "SELECT count(*) FROM servers s JOIN agents a ON a.server_id = s.id
                 WHERE s.purpose = 'worker' AND s.state = 'running'",
            )
            .await?;
        if joined < WORKERS {
            return Ok(());
        }
        let Some(base) = crate::db::images::current_id(&self.pool).await? else {
            return Ok(());
        };
        let recipe = self
            .post(
                "/api/v1/recipes",
                json!({"name": RECIPE, "base_image_id": base,
                       "setup_script": "echo installing the toolchain; sleep 2; echo toolchain 1.2 installed",
                       "test_command": "echo smoke test; true",
                       "auto_release": true}),
            )
            .await?;
        let id = recipe["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("the recipe has no id: {recipe}"))?;
        self.post(
            "/api/v1/bakes",
            json!({"recipe_id": id, "source_revision": "demo-2"}),
        )
        .await?;
        Ok(())
    }
}

//! `kiln doctor`: checks what `kiln serve` with the same settings needs — the database, the
//! provider, the public URL, the private database's disk — and says for each what is wrong
//! and how to fix it, in plain words. Exits non-zero when a check fails, so that a
//! deployment script can stop on it. It changes nothing: no database is created or
//! migrated, no private PostgreSQL started, no EC2 resource touched (DryRun calls only).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::cloud::{CloudError, ErrorKind};
use crate::config::{ProviderKind, Settings};

/// Below this, the private PostgreSQL's disk is reported as too full.
const MIN_FREE_BYTES: u64 = 1 << 30;
const PG_OLDEST_MAJOR: u32 = 13;
const CHECKS: [&str; 5] = ["settings", "database", "data dir", "provider", "public URL"];

enum Outcome {
    Ok(String),
    Fail { what: String, fix: String },
    Skip(String),
}

struct Check {
    name: &'static str,
    outcome: Outcome,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, name: &'static str, said: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::Ok(said.into()),
        });
    }

    fn fail(&mut self, name: &'static str, what: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::Fail {
                // One line: the SDK's messages run over several.
                what: what.into().split_whitespace().collect::<Vec<_>>().join(" "),
                fix: fix.into(),
            },
        });
    }

    fn skip(&mut self, name: &'static str, why: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome: Outcome::Skip(why.into()),
        });
    }

    fn failures(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
            .count()
    }

    /// In the order of `CHECKS` (the database's check says first whether the data directory
    /// is used at all), each check's lines in the order they were found.
    fn print(&self) {
        let mut checks: Vec<&Check> = self.0.iter().collect();
        checks.sort_by_key(|c| CHECKS.iter().position(|n| *n == c.name));
        for check in checks {
            match &check.outcome {
                Outcome::Ok(said) => println!("ok    {:<11} {said}", check.name),
                Outcome::Skip(why) => println!("skip  {:<11} {why}", check.name),
                Outcome::Fail { what, fix } => {
                    println!("FAIL  {:<11} {what}", check.name);
                    println!("      {:<11} fix: {fix}", "");
                }
            }
        }
    }
}

pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let mut report = Report::default();
    match settings.validate() {
        Ok(()) => report.ok("settings", "valid"),
        Err(e) => report.fail(
            "settings",
            format!("{e:#}"),
            "correct the setting named (`kiln serve --help` lists each with its variable)",
        ),
    }
    // Say soon what is wrong: one attempt per EC2 call, a short timeout.
    settings.ec2_max_attempts = 1;
    settings.ec2_timeout = settings.ec2_timeout.min(15);

    let pool = database(&settings, &mut report).await;
    provider(&settings, pool.as_ref(), &mut report).await;
    public_url(&settings, &mut report).await;
    if let Some(pool) = pool {
        pool.close().await;
    }

    report.print();
    match report.failures() {
        0 => Ok(()),
        n => anyhow::bail!(
            "{n} of {} checks failed (each with its fix above)",
            report.0.len()
        ),
    }
}

/// Where the database is, and whether this build's migrations are all there; the pool when
/// it could connect (the provider's check reads the current image from it).
async fn database(settings: &Settings, report: &mut Report) -> Option<PgPool> {
    use crate::db::locate::Found;
    let (url, whose) = match crate::db::locate::find(&settings.database).await {
        Ok(Found::Given(url)) => (url, "DATABASE_URL"),
        Ok(Found::Local(url)) => (url, "the local server"),
        Ok(Found::Private(dir)) => return private_database(settings, &dir, report).await,
        Err(e) => {
            report.fail(
                "database",
                format!("{e:#}"),
                "set KILN_DATA_DIR or DATABASE_URL",
            );
            return None;
        }
    };
    let shown = crate::db::redact(&url);
    report.skip("data dir", format!("not used: the database is {shown}"));
    // One plain connection first: a pool retries until its timeout and hides why it failed.
    let first = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    let pool = match first {
        Ok(conn) => {
            let _ = conn.close().await;
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await
                .ok()?
        }
        Err(e) => {
            let (what, fix) = connect_failure(&e, whose);
            report.fail("database", format!("{shown}: {what}"), fix);
            return None;
        }
    };
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .unwrap_or_default();
    let major: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < PG_OLDEST_MAJOR {
        report.fail(
            "database",
            format!("{shown} is PostgreSQL {version}; Kiln needs {PG_OLDEST_MAJOR} or later"),
            "upgrade PostgreSQL (docs/deploying.md, PostgreSQL)",
        );
    } else {
        match migrations(&pool).await {
            Ok(said) => report.ok(
                "database",
                format!("{shown} (PostgreSQL {version}) reachable; {said}"),
            ),
            Err((what, fix)) => report.fail("database", format!("{shown}: {what}"), fix),
        }
    }
    Some(pool)
}

/// No server to talk to: `kiln serve` would run a private one in `dir`. Its binaries and
/// its disk.
async fn private_database(settings: &Settings, dir: &Path, report: &mut Report) -> Option<PgPool> {
    let db = &settings.database;
    match crate::db::private::find_binaries(db.postgres_bin.as_deref()) {
        Ok(bin) => report.ok(
            "database",
            format!(
                "no server answers on the standard socket or port and DATABASE_URL is unset: \
                 `kiln serve` runs a private PostgreSQL in {} (programs in {})",
                dir.display(),
                bin.display()
            ),
        ),
        Err(e) => report.fail(
            "database",
            "no server answers on the standard socket or 127.0.0.1:5432, DATABASE_URL is unset, and PostgreSQL's programs are not installed",
            format!("{e:#}").replace('\n', "\n                  "),
        ),
    }
    match free_bytes(dir) {
        Some(free) if free < MIN_FREE_BYTES => report.fail(
            "data dir",
            format!("{} has {} free", dir.display(), human(free)),
            format!(
                "free space on that disk (at least {}), or choose another directory with --data-dir or KILN_DATA_DIR",
                human(MIN_FREE_BYTES)
            ),
        ),
        Some(free) => report.ok("data dir", format!("{}: {} free", dir.display(), human(free))),
        None => report.fail(
            "data dir",
            format!("cannot tell how much space is free for {}", dir.display()),
            "check that the directory (or its parent) exists and `df` runs",
        ),
    }
    // The console's cluster when it runs: the provider's check reads the current image there.
    if crate::db::private::answers(&crate::db::private::socket_in(dir)).await {
        return PgPool::connect(&crate::db::private::url_for(dir))
            .await
            .ok();
    }
    None
}

/// Plain words for a failed connection, and what to do about it.
fn connect_failure(e: &sqlx::Error, whose: &str) -> (String, String) {
    if let sqlx::Error::Database(db) = e {
        return match db.code().as_deref() {
            Some("3D000") => (
                "the database does not exist yet".into(),
                "`kiln migrate` (or the first `kiln serve`) creates it and its tables".into(),
            ),
            Some("28P01") | Some("28000") => (
                format!("the server refused the login: {}", db.message()),
                format!("check the user and password in {whose}, and pg_hba.conf on the server"),
            ),
            _ => (
                db.message().to_owned(),
                format!("check {whose} and the server's log"),
            ),
        };
    }
    let what = match e {
        sqlx::Error::Io(io) => format!("cannot connect: {io}"),
        sqlx::Error::PoolTimedOut => "no answer within 5 s".to_owned(),
        other => format!("cannot connect: {other}"),
    };
    (
        what,
        format!(
            "start PostgreSQL there, or correct the host and port in {whose} \
             (postgres://user:password@host:5432/kiln); unset, Kiln runs a private PostgreSQL"
        ),
    )
}

async fn migrations(pool: &PgPool) -> Result<String, (String, String)> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(v) => v,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => {
            return Err((
                format!("cannot read the applied migrations: {e}"),
                "check the database user's rights".into(),
            ));
        }
    };
    let known: Vec<i64> = crate::db::MIGRATOR.iter().map(|m| m.version).collect();
    let unknown: Vec<i64> = applied
        .iter()
        .filter(|v| !known.contains(v))
        .copied()
        .collect();
    let missing = known.iter().filter(|v| !applied.contains(v)).count();
    if !unknown.is_empty() {
        return Err((
            format!(
                "migrated by a newer Kiln (migration {} is not this build's)",
                unknown[0]
            ),
            "run the Kiln that migrated it, or restore the database of this version".into(),
        ));
    }
    if missing > 0 {
        return Err((
            format!(
                "{missing} of this build's {} migrations are not applied",
                known.len()
            ),
            "`kiln migrate` applies them (so does `kiln serve` when it starts)".into(),
        ));
    }
    Ok(format!("migrations current ({})", known.len()))
}

async fn provider(settings: &Settings, pool: Option<&PgPool>, report: &mut Report) {
    match settings.provider {
        ProviderKind::Local => {
            let exe = settings
                .agent_exe
                .clone()
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_default();
            if exe.is_file() {
                report.ok(
                    "provider",
                    format!(
                        "local: servers are `kiln agent` processes on this machine ({})",
                        exe.display()
                    ),
                );
            } else {
                report.fail(
                    "provider",
                    format!("local: the agent binary {} does not exist", exe.display()),
                    "unset KILN_AGENT_EXE (this binary is used) or point it at a kiln binary",
                );
            }
        }
        ProviderKind::Aws => aws(settings, pool, report).await,
    }
}

async fn aws(settings: &Settings, pool: Option<&PgPool>, report: &mut Report) {
    let endpoint = settings
        .ec2_endpoint
        .clone()
        .unwrap_or_else(|| "AWS itself".to_owned());
    let registry = std::sync::Arc::new(crate::telemetry::prometheus::Registry::default());
    let aws = match crate::cloud::aws_from_settings(settings, registry).await {
        Ok(aws) => aws,
        Err(e) => {
            report.fail(
                "provider",
                format!("aws ({endpoint}): {e:#}"),
                "set AWS_REGION (or a profile's region)",
            );
            return;
        }
    };
    if let Err(e) = aws.check_access().await {
        report.fail(
            "provider",
            format!("aws ({endpoint}): {}", e.message),
            aws_fix(&e, &endpoint),
        );
        return;
    }
    let current = match pool {
        Some(pool) => crate::db::images::current_id(pool).await.ok().flatten(),
        None => None,
    };
    let instance_type = settings.instance_types.first().cloned().unwrap_or_default();
    let mut allowed = vec!["DescribeInstances"];
    for (action, result) in aws.dry_runs(current.as_deref(), &instance_type).await {
        match result {
            Ok(()) => allowed.push(action),
            Err(e) => report.fail(
                "provider",
                format!("aws ({endpoint}): {}", e.message),
                aws_fix(&e, &endpoint),
            ),
        }
    }
    let unchecked = if current.is_none() {
        "RunInstances (no current image yet), TerminateInstances, CreateImage, DeregisterImage, CreateTags"
    } else {
        "TerminateInstances, CreateImage, DeregisterImage, CreateTags"
    };
    report.ok(
        "provider",
        format!(
            "aws ({endpoint}): credentials accepted; allowed (DryRun): {}; not checkable without a resource: {unchecked} (`kiln iam-policy` lists them all)",
            allowed.join(", ")
        ),
    );
}

fn aws_fix(e: &CloudError, endpoint: &str) -> String {
    let message = e.message.to_ascii_lowercase();
    if message.contains("credential") || message.contains("identity") {
        return "no AWS credentials were found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and \
                AWS_SECRET_ACCESS_KEY, or run the console on an EC2 instance with a role"
            .into();
    }
    match e.kind {
        ErrorKind::Unauthorized if message.contains("unauthorizedoperation") => {
            "allow the action: attach the policy `kiln iam-policy` prints (docs/deploying.md)".into()
        }
        ErrorKind::Unauthorized => {
            "the credentials are wrong or expired: check AWS_ACCESS_KEY_ID / AWS_PROFILE and the clock".into()
        }
        ErrorKind::Unavailable | ErrorKind::Throttled => format!(
            "EC2 at {endpoint} did not answer: check KILN_EC2_ENDPOINT (unset for AWS itself), \
             AWS_REGION, and that this machine reaches it (proxy, firewall)"
        ),
        _ => "see the message; `kiln iam-policy` lists what Kiln needs".into(),
    }
}

/// The public URL answers `/healthz` from here: a running console is reachable at it.
async fn public_url(settings: &Settings, report: &mut Report) {
    let url = settings.public_url();
    let health = format!("{}/healthz", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .expect("a client with a timeout");
    match client.get(&health).send().await {
        Ok(res) if res.status().is_success() => {
            report.ok("public URL", format!("{health} answered {}", res.status()))
        }
        Ok(res) => report.fail(
            "public URL",
            format!("{health} answered {}", res.status()),
            "KILN_PUBLIC_URL must lead to a Kiln console: check the proxy in front of it (docs/deploying.md, TLS)",
        ),
        Err(e) => {
            let why = if e.is_timeout() {
                "no answer within 5 s".to_owned()
            } else if e.is_connect() {
                "nothing answers there (connection failed)".to_owned()
            } else {
                format!("{e}")
            };
            report.fail(
                "public URL",
                format!("{health}: {why}"),
                "start `kiln serve`, then run this again; if it runs, set KILN_PUBLIC_URL to the \
                 address browsers and agents reach it at, and open that port to them",
            )
        }
    }
}

/// Free bytes on the disk holding `dir` (or its nearest existing parent), from `df`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let mut at: PathBuf = dir.to_owned();
    while !at.exists() {
        at = at.parent()?.to_owned();
    }
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(&at)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

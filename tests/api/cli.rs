//! The command line as scripts use it: the real `kiln` binary.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::helpers::{client, fresh_database_url};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Waits for a line containing `needle`; the bound only guards against a hang.
pub async fn line_with(
    lines: &mut tokio::io::Lines<BufReader<impl tokio::io::AsyncRead + Unpin>>,
    needle: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the output ended without {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within 120 s"))
}

pub fn serve(db: &str) -> tokio::process::Child {
    serve_with(db, &[])
}

pub fn serve_with(db: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    Command::new(KILN)
        .arg("serve")
        .env("DATABASE_URL", db)
        .env("KILN_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

pub async fn sigterm_and_wait(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap()
}

#[tokio::test]
async fn serve_prints_the_admin_password_once_creates_the_database_and_stops_on_sigterm() {
    let db = fresh_database_url();
    let mut first = serve(&db);
    let mut stdout = BufReader::new(first.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(first.stderr.take().unwrap()).lines();

    let password_line = line_with(&mut stdout, "initial admin password: ").await;
    let listening = line_with(&mut stderr, "kiln console listening").await;
    let port: u16 = listening
        .split("port=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let password = password_line
        .trim_start_matches("initial admin password: ")
        .to_owned();
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    let page = c
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = crate::helpers::csrf_from(&page);
    let res = c
        .post(format!("{base}/login"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("username", "admin"),
            ("password", &password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "the printed password logs in");
    assert!(
        sigterm_and_wait(&mut first).await.success(),
        "graceful shutdown exits 0"
    );

    let mut second = serve(&db);
    let mut stderr = BufReader::new(second.stderr.take().unwrap()).lines();
    line_with(&mut stderr, "kiln console listening").await;
    assert!(sigterm_and_wait(&mut second).await.success());
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut second.stdout.take().unwrap(), &mut rest)
        .await
        .unwrap();
    assert!(
        !rest.contains("initial admin password"),
        "printed once only: {rest}"
    );
}

#[tokio::test]
async fn user_add_and_token_create_work_for_scripts() {
    let db = fresh_database_url();
    let migrate = Command::new(KILN)
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let mut add = Command::new(KILN)
        .args([
            "user",
            "add",
            "ops",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .env("DATABASE_URL", &db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"operators long password\n")
        .await
        .unwrap();
    let added = add.wait_with_output().await.unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let token = Command::new(KILN)
        .args(["token", "create", "--user", "ops", "--name", "deploy"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let stdout = String::from_utf8(token.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(
        secret.starts_with("kiln_") && !secret.contains(' '),
        "alone on the last line: {stdout}"
    );

    let enrollment = Command::new(KILN)
        .args(["token", "create", "--enrollment", "--ttl", "600"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(enrollment.status.success());
    let enroll = String::from_utf8(enrollment.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(enroll.starts_with("kiln_enroll_"), "{enroll}");

    // The token works against a console on that database, with the user's role.
    let app = kiln::startup::Application::build(kiln::config::Settings::with_defaults(
        db.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    assert!(
        app.initial_admin_password.is_none(),
        "users exist: no initial admin"
    );
    let port = app.port();
    let pool = app.pool().clone();
    tokio::spawn(app.run_until_stopped());
    let res = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/audit"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events: Vec<serde_json::Value> = res.json().await.unwrap();
    // The console's own start-up work (adopting the base image) may be audited meanwhile;
    // the CLI's events are those by "cli".
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e["actor"] == "cli")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["enrollment_token.create", "token.create", "user.create"]
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollment_tokens WHERE token_hash = $1 AND expires_at > now()",
    )
    .bind(kiln::auth::token::hash(&enroll))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn bad_cli_input_fails_with_a_message_and_changes_nothing() {
    let db = fresh_database_url();
    Command::new(KILN)
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();

    let mut short = Command::new(KILN)
        .args([
            "user",
            "add",
            "ops",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .env("DATABASE_URL", &db)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    short
        .stdin
        .take()
        .unwrap()
        .write_all(b"short\n")
        .await
        .unwrap();
    let short = short.wait_with_output().await.unwrap();
    let bad_role = Command::new(KILN)
        .args(["user", "add", "ops", "--role", "root", "--password-stdin"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    let no_user = Command::new(KILN)
        .args(["token", "create", "--user", "ghost"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();

    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
    assert!(!bad_role.status.success());
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("viewer, operator or admin"));
    assert!(!no_user.status.success());
    assert!(String::from_utf8_lossy(&no_user.stderr).contains("there is no user named \"ghost\""));
    let pool = kiln::db::connect(&db).await.unwrap();
    assert_eq!(kiln::db::users::count(&pool).await.unwrap(), 0);
}

#[tokio::test]
/// An agent whose console cannot be reached keeps trying (with backoff) and stops cleanly on
/// SIGTERM.
async fn an_agent_without_its_console_retries_until_sigterm() {
    let mut agent = Command::new(KILN)
        .args([
            "agent",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "kiln_enroll_x",
            "--instance-id",
            "i-local-test",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(agent.stderr.take().unwrap()).lines();

    line_with(&mut stderr, "cannot register yet; retrying").await;
    line_with(&mut stderr, "cannot register yet; retrying").await;

    assert!(agent.try_wait().unwrap().is_none(), "still running");
    assert!(sigterm_and_wait(&mut agent).await.success());
}

#[tokio::test]
async fn serve_refuses_aws_with_a_loopback_public_url() {
    let db = fresh_database_url();

    let out = Command::new(KILN)
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("KILN_BIND", "127.0.0.1:0")
        .env("KILN_PROVIDER", "aws")
        .output()
        .await
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("EC2 servers cannot reach"), "{stderr}");
}

/// Waits for a console's "kiln console listening" line and returns its port; the rest of its
/// log is drained in the background so the process never blocks on a full pipe.
pub async fn listening_port(console: &mut tokio::process::Child) -> u16 {
    let mut stderr = BufReader::new(console.stderr.take().unwrap()).lines();
    let listening = line_with(&mut stderr, "kiln console listening").await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    listening
        .split("port=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `kiln serve` on the aws provider against an EC2-compatible `endpoint`, its credentials from
/// the standard AWS chain (environment variables), plus `extra` settings.
pub fn serve_aws(
    db: &str,
    endpoint: &str,
    fleet: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    let mut env = vec![
        ("KILN_PROVIDER", "aws"),
        ("KILN_EC2_ENDPOINT", endpoint),
        ("KILN_FLEET", fleet),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    env.extend_from_slice(extra);
    serve_with(db, &env)
}

/// An API token of `admin`, made the way scripts make one (`kiln token create`).
pub async fn admin_token(db: &str) -> String {
    let out = Command::new(KILN)
        .args(["token", "create", "--user", "admin"])
        .env("DATABASE_URL", db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// `kiln_ec2_calls_total` per action, from the console's `/metrics`.
pub async fn ec2_calls(base: &str) -> std::collections::BTreeMap<String, f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("kiln_ec2_calls_total{"))
        .filter_map(|l| {
            let action = l.split("action=\"").nth(1)?.split('"').next()?.to_owned();
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((action, n))
        })
        .fold(Default::default(), |mut m, (a, n)| {
            *m.entry(a).or_insert(0.0) += n;
            m
        })
}

/// Adds an AMI to the catalogue of the console at `base` through the API and waits until
/// the console has adopted it (checked at EC2: `available`).
pub async fn adopt_ami(base: &str, token: &str, pool: &sqlx::PgPool, ami: &str) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/images"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": ami, "name": "ubuntu", "version": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    crate::helpers::eventually(30, "the AMI is adopted", || async {
        let state: String = sqlx::query_scalar("SELECT state FROM images WHERE id = $1")
            .bind(ami)
            .fetch_one(pool)
            .await
            .unwrap();
        (state == "available").then_some(())
    })
    .await;
}

/// `kiln --version` says which build it is: the package's version and the git revision the
/// binary was built from (the checkout's HEAD: cargo builds again when it moves).
#[tokio::test]
async fn the_version_names_the_package_version_and_the_git_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--version")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
        .unwrap_or_else(|| "unknown revision".to_owned());
    assert_eq!(
        printed.trim(),
        format!("kiln {} ({head})", env!("CARGO_PKG_VERSION"))
    );
}

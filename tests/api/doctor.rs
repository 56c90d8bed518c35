//! `kiln doctor` as an operator runs it: the real binary, its report on stdout, its status.

use tokio::process::Command;

use crate::helpers::fresh_database_url;
use crate::moto::moto_port;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

struct Report {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Report {
    /// The line of check `name` with `marker` (`ok`, `FAIL`, `skip`), and the fix after it.
    fn line(&self, marker: &str, name: &str) -> String {
        let mut lines = self.stdout.lines();
        while let Some(line) = lines.next() {
            if line.starts_with(&format!("{marker:<6}{name}")) {
                let fix = lines
                    .next()
                    .filter(|l| l.trim_start().starts_with("fix:"))
                    .unwrap_or_default();
                return format!("{line}\n{fix}");
            }
        }
        panic!(
            "no {marker} line for {name} in:\n{}\n{}",
            self.stdout, self.stderr
        );
    }
}

/// `kiln doctor` with only `env` (and PATH, HOME) in its environment: no AWS credentials or
/// DATABASE_URL of the machine's leak in.
async fn doctor(env: &[(&str, &str)]) -> Report {
    let home = std::env::temp_dir().join(format!("kiln-doctor-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(KILN)
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    Report {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check() {
    let db = fresh_database_url();
    let mut console = crate::cli::serve(&db);
    let port = crate::cli::listening_port(&mut console).await;
    let public = format!("http://127.0.0.1:{port}");
    let report = doctor(&[("DATABASE_URL", &db), ("KILN_PUBLIC_URL", &public)]).await;
    assert!(report.ok, "{}\n{}", report.stdout, report.stderr);
    assert!(
        report
            .line("ok", "database")
            .contains("reachable; migrations current"),
        "{}",
        report.stdout
    );
    report.line("ok", "provider");
    report.line("skip", "data dir");
    assert!(
        report
            .line("ok", "public URL")
            .contains(&format!("{public}/healthz answered 200 OK"))
    );
    assert!(crate::cli::sigterm_and_wait(&mut console).await.success());
}

#[tokio::test]
async fn a_wrong_database_url_is_reported_with_its_fix() {
    let refused = doctor(&[("DATABASE_URL", "postgres://kiln@127.0.0.1:1/kiln")]).await;
    assert!(!refused.ok);
    let line = refused.line("FAIL", "database");
    assert!(
        line.contains("postgres://kiln@127.0.0.1:1/kiln: cannot connect: Connection refused")
            && line.contains(
                "fix: start PostgreSQL there, or correct the host and port in DATABASE_URL"
            ),
        "{line}"
    );
    assert!(
        refused.stderr.contains("checks failed"),
        "{}",
        refused.stderr
    );

    // A server that answers, a database that is not there yet: nothing is created.
    let missing = fresh_database_url();
    let report = doctor(&[("DATABASE_URL", &missing)]).await;
    assert!(!report.ok);
    let line = report.line("FAIL", "database");
    assert!(
        line.contains("the database does not exist yet") && line.contains("`kiln migrate`"),
        "{line}"
    );
    use sqlx::migrate::MigrateDatabase;
    assert!(
        !sqlx::Postgres::database_exists(&missing).await.unwrap(),
        "doctor creates nothing"
    );
}

#[tokio::test]
async fn a_provider_without_credentials_is_reported_with_its_fix() {
    let db = fresh_database_url();
    kiln::db::connect(&db).await.unwrap().close().await;
    let endpoint = format!("http://127.0.0.1:{}", moto_port());
    let aws = [
        ("DATABASE_URL", db.as_str()),
        ("KILN_PROVIDER", "aws"),
        ("KILN_EC2_ENDPOINT", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let report = doctor(&aws).await;
    assert!(!report.ok);
    let line = report.line("FAIL", "provider");
    assert!(
        line.contains(&format!("aws ({endpoint})"))
            && line.contains("fix: no AWS credentials were found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{line}"
    );

    // With credentials (moto takes any), the same provider passes its DryRun checks.
    let mut with_keys = aws.to_vec();
    with_keys.extend([
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]);
    let report = doctor(&with_keys).await;
    let line = report.line("ok", "provider");
    assert!(
        line.contains("credentials accepted; allowed (DryRun): DescribeInstances, DescribeImages"),
        "{line}"
    );
}

#[tokio::test]
async fn an_unreachable_public_url_is_reported_with_its_fix() {
    let db = fresh_database_url();
    kiln::db::connect(&db).await.unwrap().close().await;
    kiln::db::migrate(&kiln::db::connect(&db).await.unwrap())
        .await
        .unwrap();
    let report = doctor(&[
        ("DATABASE_URL", &db),
        ("KILN_PUBLIC_URL", "http://127.0.0.1:1"),
    ])
    .await;
    assert!(!report.ok);
    report.line("ok", "database");
    let line = report.line("FAIL", "public URL");
    assert!(
        line.contains("http://127.0.0.1:1/healthz: nothing answers there")
            && line.contains(
                "fix: start `kiln serve`, then run this again; if it runs, set KILN_PUBLIC_URL"
            ),
        "{line}"
    );
}

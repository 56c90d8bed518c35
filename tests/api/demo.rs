//! `kiln serve --demo`: a fresh console comes alive by itself, through its own API, as the
//! user `demo`; a browser then finds something on every page.

use crate::helpers::{browser_check_with, eventually, spawn_app_with, stop_fleet};

#[tokio::test]
async fn a_demo_console_has_data_on_every_page_within_minutes() {
    let app = spawn_app_with(|s| {
        s.demo = true;
        // Quicker passes than the defaults, not a different demo.
        s.scaling_interval = 2;
        s.task_poll = 1;
    })
    .await;
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // What a minute of demo makes, each looked up until it is there (no fixed wait).
    for (what, sql) in [
        (
            "a bake succeeded",
            "SELECT count(*) FROM bakes WHERE state = 'succeeded'",
        ),
        (
            "its image was released",
            "SELECT count(*) FROM rollouts WHERE kind = 'release' AND state = 'succeeded'",
        ),
        (
            "a job failed",
            "SELECT count(*) FROM jobs WHERE state = 'failed'",
        ),
        (
            "jobs succeeded",
            "SELECT (count(*) >= 3)::int::bigint FROM jobs WHERE state = 'succeeded'",
        ),
        (
            "the autoscaler decided",
            "SELECT count(*) FROM scaling_decisions WHERE action = 'scale_out'",
        ),
        (
            "the app metric arrived through the Librato API",
            "SELECT count(*) FROM metric_series WHERE name = 'app.checkout.latency'",
        ),
        (
            "the annotations",
            "SELECT (count(*) >= 2)::int::bigint FROM annotations",
        ),
    ] {
        eventually(240, what, || async { (count(sql).await > 0).then_some(()) }).await;
    }
    // Everything done so far is the user demo's or the console's own (no one else acted).
    let by_others =
        count("SELECT count(*) FROM audit_events WHERE actor NOT IN ('demo', 'kiln')").await;
    assert_eq!(by_others, 0, "the demo acts as the user demo");
    assert_eq!(
        count("SELECT count(*) FROM audit_events WHERE action = 'demo.start' AND detail LIKE 'kiln serve --demo:%'").await,
        1
    );

    let out = browser_check_with(&app, "demo_check.py", &[]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_fleet(&app).await;
}

#[tokio::test]
async fn the_demo_is_refused_with_the_aws_provider() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--demo"])
        .env("KILN_PROVIDER", "aws")
        .env("KILN_EC2_ENDPOINT", "http://127.0.0.1:1")
        .env("DATABASE_URL", "postgres://kiln@127.0.0.1:1/kiln")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--demo launches servers as `kiln agent` processes on this machine: it runs with the local provider only, not KILN_PROVIDER=aws."),
        "{said}"
    );
}

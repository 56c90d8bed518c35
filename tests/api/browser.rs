//! A real browser (Debian's Chromium, driven by Python Playwright from the test venv) logs in
//! through the form, checks that the console logs no error (a CSP violation would), disables
//! a user through htmx, and leaves screenshots in test-output/browser/.

use kiln::domain::Role;

use crate::helpers::{python, spawn_app};

#[tokio::test]
async fn a_browser_logs_in_sees_the_overview_without_console_errors() {
    let python = python();
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run scripts/test (it creates .venv with playwright and installs chromium)"
    );
    let app = spawn_app().await;
    app.create_user("browser-victim", Role::Viewer).await;
    // A deploy annotation, posted the way a Librato client posts one: the dashboard draws it.
    let token = app.token_for("admin").await;
    let res = reqwest::Client::new()
        .post(app.url("/v1/annotations/deploys"))
        .basic_auth("admin", Some(&token))
        .json(&serde_json::json!({"title": "api deployed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let result = crate::helpers::browser_check(&app, "console_check.py").await;

    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !result.status.success() {
        // What the console had done by then, to tell a slow step from a lost one.
        let servers: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, state, mode FROM servers ORDER BY launched_at")
                .fetch_all(&app.pool)
                .await
                .unwrap_or_default();
        let tasks: Vec<(i64, String, String, i32, Option<String>)> =
            sqlx::query_as("SELECT id, kind, state, attempts, last_error FROM tasks ORDER BY id")
                .fetch_all(&app.pool)
                .await
                .unwrap_or_default();
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, n FROM server_state_counts ORDER BY state")
                .fetch_all(&app.pool)
                .await
                .unwrap_or_default();
        panic!(
            "browser check failed:\n{stdout}\n{stderr}\nservers: {servers:?}\ncounts: {counts:?}\ntasks: {tasks:?}"
        );
    }
    assert!(stdout.contains("console errors: 0"), "{stdout}");
    assert!(
        std::fs::metadata(format!("{}/overview.png", crate::helpers::browser_output()))
            .unwrap()
            .len()
            > 5_000
    );
    let disabled: bool =
        sqlx::query_scalar("SELECT disabled FROM users WHERE name = 'browser-victim'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(disabled, "the htmx disable went through in the browser");
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT state, mode FROM servers WHERE purpose = 'worker' ORDER BY state, mode",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(s, m)| (s.as_str(), m.as_str()))
        .collect();
    // Launch 3, disable 1, terminate 1; then a release replaced the enabled one and the
    // rollback enabled it again (the release's server is kept, disabled).
    assert_eq!(
        states,
        [
            ("running", "disabled"),
            ("running", "disabled"),
            ("running", "enabled"),
            ("terminated", "disabled")
        ],
        "launch 3, disable 1, terminate 1, release, roll back"
    );
    // The bake's builder is thrown away once the image is made.
    crate::helpers::eventually(30, "the builder is terminated", || async {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM servers WHERE purpose = 'builder' AND state <> 'terminated'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (live == 0).then_some(())
    })
    .await;
    let rollouts: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, state FROM rollouts ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rollouts,
        [
            ("release".to_owned(), "succeeded".to_owned()),
            ("rollback".to_owned(), "succeeded".to_owned())
        ],
        "a release and a rollback from the browser"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM servers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    kiln::cloud::Provider::terminate(app.cloud.as_ref(), &ids)
        .await
        .unwrap();
}

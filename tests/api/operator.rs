//! The console at 3 a.m. (issue 21), in a real browser against a lived-in fleet: a release
//! and a one-click rollback from the Overview, the fled image without a red button, the
//! serving and kept counts, names in legends and markers, the phone layout (390x844, never
//! wider than the screen), audit filters, and Retry all failed on exactly the filtered jobs.
//! Its screenshots are the README's (`scripts/screenshots` copies them to docs/screenshots).

use serde_json::json;

use crate::helpers::{
    add_image, current_image, eventually, get_json, launch_agents, post, spawn_app_with, stop_fleet,
};
use crate::rollouts::{rollout_in, start};

#[tokio::test]
async fn an_operator_under_stress_finds_what_they_need_on_desktop_and_phone() {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.reconcile_interval = 2;
        s.task_poll = 1;
        s.rollback_grace = 1800;
        s.local_slots = 2;
        s.health_timeout = 60;
        s.metrics_sample_interval = 1;
    })
    .await;
    let token = app.token_for("admin").await;
    let old = current_image(&app).await;
    let (name, version): (String, String) =
        sqlx::query_as("SELECT name, version FROM images WHERE id = $1")
            .bind(&old)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let old_label = kiln::web::view::image_label(&old, &name, &version);
    launch_agents(&app, &token, 2).await;

    // Jobs that fail, in two suites: the browser retries one suite's failures only.
    for (suite, n) in [("flaky", 3), ("other", 2)] {
        for _ in 0..n {
            let res = post(
                &app,
                &token,
                "/api/v1/jobs",
                json!({"command": "exit 3", "labels": {"suite": suite}}),
            )
            .await;
            assert_eq!(res.status(), 201);
        }
    }
    eventually(60, "the five jobs fail", || async {
        let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (failed == 5).then_some(())
    })
    .await;
    // An annotation with an end: a band on the charts.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let res = reqwest::Client::new()
        .post(app.url("/v1/annotations/deploys"))
        .basic_auth("admin", Some(&token))
        .json(&json!({"title": "db migration", "start_time": now - 120, "end_time": now - 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // A release of v2: the old servers are kept, disabled, for an instant rollback.
    let new = add_image(&app, &token, "2").await;
    let r = start(&app, &token, &new, "release", json!({"batch_size": 2})).await;
    let release = r["id"].as_i64().unwrap();
    rollout_in(&app, &token, release, &["succeeded"], 90).await;
    // Routine work after the release: the Overview folds it into one line.
    for _ in 0..4 {
        let res = post(
            &app,
            &token,
            "/api/v1/jobs",
            json!({"command": "true", "labels": {"suite": "ok"}}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }

    let result = crate::helpers::browser_check_with(
        &app,
        "operator_check.py",
        &[&old, &old_label, &new, &release.to_string()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "browser check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console errors: 0"), "{stdout}");

    // The Overview's button rolled the fleet back to the image before.
    assert_eq!(current_image(&app).await, old);
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, state FROM rollouts ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        [
            ("release".to_owned(), "succeeded".to_owned()),
            ("rollback".to_owned(), "succeeded".to_owned())
        ]
    );
    // Retry all failed retried exactly the filtered failed jobs, as one audited action.
    let attempts: Vec<(String, i32)> = eventually(60, "the retried jobs ran again", || async {
        let rows: Vec<(String, i32, String)> = sqlx::query_as(
            "SELECT labels->>'suite', attempt, state FROM jobs WHERE labels->>'suite' <> 'ok'
             ORDER BY labels->>'suite', id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        rows.iter()
            .all(|(_, _, state)| state == "failed")
            .then(|| rows.into_iter().map(|(s, a, _)| (s, a)).collect())
    })
    .await;
    assert_eq!(
        attempts,
        [
            ("flaky".to_owned(), 2),
            ("flaky".to_owned(), 2),
            ("flaky".to_owned(), 2),
            ("other".to_owned(), 1),
            ("other".to_owned(), 1)
        ],
        "the three flaky jobs ran a second attempt; the others were left alone"
    );
    let retried: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, detail FROM audit_events WHERE action = 'job.retry_all' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert!(
        retried[0]
            .1
            .starts_with("3 failed jobs queued for a new attempt (label suite=flaky): "),
        "{retried:?}"
    );
    // The API filters the audit log as the page does.
    let events = get_json(&app, &token, "/api/v1/audit?action=rollout&limit=500").await;
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("rollout.")),
        "{events:?}"
    );
    stop_fleet(&app).await;
}

#[tokio::test]
async fn audit_filters_narrow_the_list_and_a_bad_time_is_refused_by_name() {
    let app = spawn_app_with(|_| {}).await;
    let token = app.token_for("admin").await;
    for n in 0..3 {
        let res = post(
            &app,
            &token,
            "/api/v1/jobs",
            json!({"command": format!("echo {n}")}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }
    let all = get_json(&app, &token, "/api/v1/audit?limit=500").await;
    let enqueued = get_json(&app, &token, "/api/v1/audit?action=job.enqueue").await;
    assert_eq!(enqueued.as_array().unwrap().len(), 3, "{enqueued}");
    assert!(all.as_array().unwrap().len() > 3);
    let family = get_json(&app, &token, "/api/v1/audit?action=job").await;
    assert_eq!(family, enqueued, "a family matches its actions");
    let by_nobody = get_json(&app, &token, "/api/v1/audit?user=nobody").await;
    assert_eq!(by_nobody, json!([]));
    let later = get_json(&app, &token, "/api/v1/audit?from=2999-01-01").await;
    assert_eq!(later, json!([]));
    let one = get_json(&app, &token, "/api/v1/audit?action=job.enqueue&limit=1").await;
    assert_eq!(one.as_array().unwrap().len(), 1);

    let client = reqwest::Client::new();
    let res = client
        .get(app.url("/api/v1/audit?from=yesterday"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("from: \"yesterday\" is not a time"),
        "{body}"
    );
    // The next page's link keeps the filters.
    let res = client
        .get(app.url("/api/v1/audit?action=job&limit=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let link = res.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.contains("action=job"), "{link}");
}

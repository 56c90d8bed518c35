//! Guarded releases end to end with the local provider: real `kiln agent` processes on the
//! old and new images; a bad image is bad honestly — its agents run with an environment (as a
//! real image carries its software) under which the health check or the jobs really fail.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::alerts::{Receiver, created, keep_sending};
use crate::helpers::{TestApp, add_image, current_image, spawn_app, spawn_app_with};
use crate::helpers::{eventually, get_json, launch_agents, post, stop_fleet};
use crate::jobs::enqueue;
use crate::rollouts::{enabled_images, rollout_in, start};

/// Agents heartbeat every second, tasks and alerts are looked at every second, an alert's
/// `for` is scaled down 20 times.
async fn guarded_app() -> (TestApp, String) {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.reconcile_interval = 2;
        s.task_poll = 1;
        s.rollback_grace = 1800;
        s.local_slots = 1;
        s.health_timeout = 60;
        s.alert_interval = 1;
        s.alert_for_scale = 0.05;
    })
    .await;
    let token = app.token_for("admin").await;
    (app, token)
}

/// Makes the local image's servers' agents (and so their jobs) run with `env`.
async fn set_env(app: &TestApp, image: &str, env: Value) {
    sqlx::query("UPDATE local_images SET agent_env = $2 WHERE id = $1")
        .bind(image)
        .bind(env)
        .execute(&app.pool)
        .await
        .unwrap();
}

async fn rollout(app: &TestApp, token: &str, id: i64) -> Value {
    get_json(app, token, &format!("/api/v1/rollouts/{id}")).await
}

async fn phase_is(app: &TestApp, token: &str, id: i64, phase: &str, secs: u64) -> Value {
    eventually(secs, &format!("rollout {id} in phase {phase}"), || async {
        let r = rollout(app, token, id).await;
        (r["phase"] == phase).then_some(r)
    })
    .await
}

/// Instances the local provider started (the fleet's and every rollout's).
async fn instances(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM local_instances").await
}

#[tokio::test]
async fn a_good_image_goes_canary_soak_batches_done_with_health_checks_and_a_comparison() {
    let (app, token) = guarded_app().await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 3).await;
    let new = add_image(&app, &token, "2").await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"canary": 1, "soak_s": 3, "batch_size": 2, "health_command": "test -n \"$KILN_JOB_ID\"",
               "on_insufficient_data": "continue"}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(
        (r["canary"].as_i64(), r["soak_s"].as_i64()),
        (Some(1), Some(3))
    );
    // The canary alone, then its soak time.
    let soaking = phase_is(&app, &token, id, "soaking", 60).await;
    assert_eq!(soaking["replaced"], 1, "{soaking}");
    // Work keeps flowing on both images (too little to judge in 3 s: the plan continues).
    for _ in 0..30 {
        enqueue(&app, &token, json!({"command": "true"})).await;
    }
    assert_eq!(
        app.count("SELECT count(*) FROM rollout_batches WHERE done_at IS NOT NULL")
            .await,
        1
    );
    let done = rollout_in(&app, &token, id, &["succeeded", "failed"], 120).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["phase"], Value::Null);
    assert_eq!(
        (done["replaced"].as_i64(), done["total"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(enabled_images(&app).await, vec![new.clone(); 3]);
    // Batches: the canary of 1, then 2; each new server passed its own health check.
    let sizes: Vec<i32> = sqlx::query_scalar("SELECT size FROM rollout_batches ORDER BY n")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(sizes, vec![1, 2]);
    let checks: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.state, rs.server_id FROM rollout_servers rs JOIN jobs j ON j.id = rs.health_job_id
         WHERE rs.role = 'new' AND j.pinned_server_id = rs.server_id ORDER BY rs.server_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert!(
        checks.iter().all(|(state, _)| state == "succeeded"),
        "{checks:?}"
    );
    assert_eq!(current_image(&app).await, new);
    let audit = app.audit().await;
    let release = audit
        .iter()
        .find(|e| e.action == "image.release")
        .expect("the release is audited");
    assert!(
        release
            .detail
            .contains("canary of 1, soak 3 s, health check `test -n \"$KILN_JOB_ID\"`"),
        "{}",
        release.detail
    );
    // The rollout's page: its plan, and the jobs on the new image against the old.
    let page = app
        .admin()
        .await
        .get(app.url(&format!("/rollouts/{id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"rollout-plan\">canary of 1, soak 3 s"),
        "{page}"
    );
    assert!(page.contains("Jobs on the new image against the old"));
    let c = get_json(&app, &token, &format!("/api/v1/rollouts/{id}/comparison")).await;
    assert_eq!(c["old"]["image_id"], old.as_str());
    assert!(c["new"]["jobs"].as_i64().unwrap() > 0, "{c}");
    assert_eq!(
        (c["new"]["failed"].as_i64(), c["old"]["failed"].as_i64()),
        (Some(0), Some(0))
    );
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_bad_image_whose_health_check_fails_is_stopped_at_the_canary_and_rolled_back() {
    let (app, token) = guarded_app().await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 3).await;
    let new = add_image(&app, &token, "2").await;
    // The bad image's servers lack what the health check needs.
    set_env(&app, &new, json!({"BROKEN": "1"})).await;
    let before = instances(&app).await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"canary": 1, "batch_size": 3, "health_command": "test -z \"$BROKEN\""}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    let done = rollout_in(&app, &token, id, &["succeeded", "failed", "cancelled"], 90).await;
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the health check failed on the canary i-local-"),
        "{reason}"
    );
    let back = done["rolled_back_by"]
        .as_i64()
        .expect("rolled back by a rollout");
    assert!(
        reason.ends_with(&format!("rolled back to {old} (rollout #{back})")),
        "{reason}"
    );
    // Only the canary was launched; the fleet is the old image's again, all of it.
    assert_eq!(instances(&app).await, before + 1);
    assert_eq!(current_image(&app).await, old);
    let rollback = rollout_in(&app, &token, back, &["succeeded", "failed"], 60).await;
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    assert_eq!(rollback["kind"], "rollback");
    assert_eq!(rollback["to_image_id"], old.as_str());
    eventually(30, "the canary is removed", || async {
        (enabled_images(&app).await == vec![old.clone(); 3]
            && app
                .count("SELECT count(*) FROM servers WHERE image_id <> (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) AND state = 'running'")
                .await
                == 0)
            .then_some(())
    })
    .await;
    let audit = app.audit().await;
    let auto = audit
        .iter()
        .find(|e| e.action == "rollout.rolled_back")
        .expect("the automatic rollback is audited");
    assert_eq!(auto.actor, "kiln");
    assert_eq!(auto.detail, reason);
    // The image fled comes back only through a release.
    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{new}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_guarding_alert_that_fires_during_soak_time_rolls_the_release_back_and_tells_its_channels()
 {
    let (app, token) = guarded_app().await;
    let old = current_image(&app).await;
    let hooks = Receiver::start().await;
    let channel = created(
        post(
            &app,
            &token,
            "/api/v1/channels",
            json!({"name": "release hook", "kind": "webhook", "url": hooks.url("/hook")}),
        )
        .await,
    )
    .await;
    let rule = created(
        post(
            &app,
            &token,
            "/api/v1/alerts",
            json!({
                "name": "checkout.errors",
                "conditions": [{"metric": "app.errors", "source": "*", "aggregate": "max", "window_s": 10,
                                "op": "above", "threshold": 5, "for_s": 0}],
                "channels": [channel["id"]],
            }),
        )
        .await,
    )
    .await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"canary": 1, "soak_s": 600, "guard_alerts": [rule["id"]]}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(r["guard_alerts"], json!([rule["id"]]));
    phase_is(&app, &token, id, "soaking", 60).await;
    // The application's error count climbs on the new image.
    let values = Arc::new(Mutex::new(vec![("web-1", 50.0)]));
    let sender = keep_sending(&app, &token, "app.errors", values);
    let done = rollout_in(&app, &token, id, &["failed", "succeeded", "cancelled"], 60).await;
    sender.abort();
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("alert 'checkout.errors' fired on web-1 at "),
        "{reason}"
    );
    assert!(done["rolled_back_by"].is_i64());
    assert_eq!(current_image(&app).await, old);
    assert_eq!(enabled_images(&app).await, vec![old.clone(); 2]);
    // How long the rollback took to start once the alert fired (for the note; the step
    // looks every second while a release soaks).
    let lag: f64 = sqlx::query_scalar(
        "SELECT date_part('epoch', r.finished_at - st.since) FROM rollouts r, alert_states st
         WHERE r.id = $1 AND st.rule_id = $2",
    )
    .bind(id)
    .bind(rule["id"].as_i64().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    println!("rollback started {lag:.2} s after the alert fired");
    // The guarding alert's channel hears of the rollback, not only of the alert.
    let got = eventually(
        30,
        "the rollback's notice on the rule's channel",
        || async {
            hooks
                .delivered("/hook")
                .into_iter()
                .map(|r| r.json())
                .find(|b| b["status"] == "rollout_rolled_back")
        },
    )
    .await;
    assert_eq!(
        got["summary"],
        format!("Release #{id} was rolled back automatically: {reason}")
    );
    // The charts carry the rollback's marker, marked automatic.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let markers = app
        .admin()
        .await
        .get(app.url(&format!(
            "/dashboards/markers?from={}&to={}",
            now - 600,
            now + 60
        )))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let back = done["rolled_back_by"].as_i64().unwrap();
    assert!(
        markers.as_array().unwrap().iter().any(|m| {
            let title = m["title"].as_str().unwrap_or_default();
            m["kind"] == "rollback"
                && title.starts_with(&format!("rollback #{back} to "))
                && title.contains(&format!("({old}) by kiln"))
                && title.ends_with("(automatic)")
                && m["short"].as_str().unwrap_or_default().starts_with("↩ ")
        }),
        "{markers}"
    );
    stop_fleet(&app).await;
}

/// `"any"`: an alert firing on one of the release's new servers trips it; the same alert on
/// an old server does not.
#[tokio::test]
async fn guarded_by_any_alert_only_the_new_servers_alerts_trip_the_release() {
    let (app, token) = guarded_app().await;
    let old = current_image(&app).await;
    created(
        post(
            &app,
            &token,
            "/api/v1/alerts",
            json!({
                "name": "queue.stuck",
                "conditions": [{"metric": "app.stuck", "source": "*", "aggregate": "max", "window_s": 10,
                                "op": "above", "threshold": 0, "for_s": 0}],
            }),
        )
        .await,
    )
    .await;
    let old_servers = launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"canary": 1, "soak_s": 600, "guard_alerts": "any"}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    assert_eq!(r["guard_alerts"], "any");
    phase_is(&app, &token, id, "soaking", 60).await;
    let canary: String = sqlx::query_scalar(
        "SELECT server_id FROM rollout_servers WHERE rollout_id = $1 AND role = 'new'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // Firing on an old server: the release soaks on.
    let old_source: &'static str = Box::leak(old_servers[0].clone().into_boxed_str());
    let values = Arc::new(Mutex::new(vec![(old_source, 1.0)]));
    let sender = keep_sending(&app, &token, "app.stuck", values.clone());
    eventually(30, "the alert fires on the old server", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alert_states WHERE state = 'firing' AND source = $1",
        )
        .bind(old_source)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(rollout(&app, &token, id).await["phase"], "soaking");
    // Firing on the canary: rolled back.
    let canary_source: &'static str = Box::leak(canary.clone().into_boxed_str());
    values.lock().unwrap().push((canary_source, 1.0));
    let done = rollout_in(&app, &token, id, &["failed", "succeeded", "cancelled"], 60).await;
    sender.abort();
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("alert 'queue.stuck' fired on {canary} at ")),
        "{done}"
    );
    assert_eq!(current_image(&app).await, old);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_canary_with_too_few_jobs_waits_and_one_with_a_clearly_higher_failure_rate_is_rolled_back()
 {
    let (app, token) = guarded_app().await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    // On the new image the jobs' command fails: the variable it checks is set there.
    set_env(&app, &new, json!({"FAIL": "1"})).await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"canary": 1, "soak_s": 1, "on_insufficient_data": "wait", "approval_deadline_s": 600}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    // No job has run: not enough data, so it waits for a human.
    phase_is(&app, &token, id, "awaiting_approval", 60).await;
    let c = get_json(&app, &token, &format!("/api/v1/rollouts/{id}/comparison")).await;
    assert_eq!(c["verdict"]["verdict"], "not_enough_data", "{c}");
    assert!(
        c["verdict"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not enough data"),
        "{c}"
    );
    let overview = app
        .admin()
        .await
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        overview.contains(&format!(
            "Release #{id} to worker v2 is waiting for an operator's go-ahead."
        )),
        "the Overview shows the release waiting: {overview}"
    );
    // Work arrives: the canary fails every job the old server succeeds at.
    for _ in 0..100 {
        enqueue(&app, &token, json!({"command": "test -z \"$FAIL\""})).await;
    }
    let done = rollout_in(&app, &token, id, &["failed", "succeeded", "cancelled"], 90).await;
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the canary was judged worse: "),
        "{reason}"
    );
    assert_eq!(current_image(&app).await, old);
    let c = get_json(&app, &token, &format!("/api/v1/rollouts/{id}/comparison")).await;
    assert_eq!(c["verdict"]["verdict"], "worse", "{c}");
    assert!(c["new"]["jobs"].as_i64().unwrap() >= 20, "{c}");
    assert_eq!(c["new"]["failed"], c["new"]["jobs"], "{c}");
    assert_eq!(c["old"]["failed"], 0, "{c}");
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_go_ahead_continue_proceeds_roll_back_rolls_back_and_a_passed_deadline_rolls_back() {
    let (app, token) = guarded_app().await;
    let first = current_image(&app).await;
    launch_agents(&app, &token, 2).await;
    let plan = |deadline: i64| {
        json!({"canary": 1, "approval": "after_canary", "approval_deadline_s": deadline,
               "on_insufficient_data": "continue"})
    };
    let viewer = {
        app.create_user("vera", kiln::domain::Role::Viewer).await;
        app.token_for("vera").await
    };

    // Continue: the rest of the fleet follows.
    let second = add_image(&app, &token, "2").await;
    let id = start(&app, &token, &second, "release", plan(600)).await["id"]
        .as_i64()
        .unwrap();
    let waiting = phase_is(&app, &token, id, "awaiting_approval", 60).await;
    assert_eq!(waiting["replaced"], 1);
    let res = post(
        &app,
        &viewer,
        &format!("/api/v1/rollouts/{id}/continue"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 403, "a viewer cannot give the go-ahead");
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/continue"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let done = rollout_in(&app, &token, id, &["succeeded", "failed"], 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["approved_through"], 2, "both batches let go");
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/continue"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409, "not waiting any more");
    assert!(
        app.audit()
            .await
            .iter()
            .any(|e| e.action == "rollout.continue"
                && e.actor == "admin"
                && e.detail == "go-ahead after batch 1")
    );

    // Roll back: the kept server takes work again; the release ends cancelled, undone.
    let third = add_image(&app, &token, "3").await;
    let id = start(&app, &token, &third, "release", plan(600)).await["id"]
        .as_i64()
        .unwrap();
    phase_is(&app, &token, id, "awaiting_approval", 60).await;
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let r: Value = res.json().await.unwrap();
    assert_eq!(r["state"], "cancelled", "{r}");
    assert!(r["rolled_back_by"].is_i64(), "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("admin pressed Roll back: rolled back to {second}")),
        "{r}"
    );
    assert_eq!(current_image(&app).await, second);
    eventually(30, "the fleet is back on the second image", || async {
        (enabled_images(&app).await == vec![second.clone(); 2]).then_some(())
    })
    .await;

    // Nobody decides: the deadline's action (roll back, by default).
    let fourth = add_image(&app, &token, "4").await;
    let id = start(&app, &token, &fourth, "release", plan(2)).await["id"]
        .as_i64()
        .unwrap();
    let done = rollout_in(&app, &token, id, &["failed", "succeeded", "cancelled"], 60).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"].as_str().unwrap().starts_with(
            "nobody gave the go-ahead after the canary within 2 s: rolled back, as the plan says"
        ),
        "{done}"
    );
    assert_eq!(current_image(&app).await, second);
    assert_ne!(first, second);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn bad_plans_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let old = current_image(&app).await;
    let new = add_image(&app, &token, "2").await;
    let releases = app.count("SELECT count(*) FROM releases").await;
    for (body, says) in [
        (
            json!({"canary": 2}),
            "canary: 2 server(s), but the fleet has 0 enabled worker(s) to replace.",
        ),
        (
            json!({"soak_s": 86_401}),
            "soak_s must be a whole number from 0 to 86400, not 86401.",
        ),
        (
            json!({"guard_alerts": [999]}),
            "guard_alerts: there is no alert 999.",
        ),
        (json!({"guard_alerts": "all"}), "guard_alerts: "),
        (
            json!({"health_command": " "}),
            "health_command is empty; leave it out for no health check.",
        ),
        (
            json!({"approval": "after_canary"}),
            "approval: after_canary needs a canary",
        ),
        (json!({"approval": "later"}), "approval: "),
        (
            json!({"approval_deadline_s": 86_401}),
            "approval_deadline_s must be",
        ),
        (json!({"on_deadline": "panic"}), "on_deadline: "),
        (
            json!({"canary_p95_margin": -1}),
            "canary_p95_margin must be",
        ),
        (json!({"canary_size": 1}), "canary_size: unknown field"),
    ] {
        let res = post(
            &app,
            &token,
            &format!("/api/v1/images/{new}/release"),
            body.clone(),
        )
        .await;
        assert_eq!(res.status(), 400, "{body}");
        let message = res.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.starts_with(says), "{body}: {message}");
    }
    // A rollback has no plan.
    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{old}/rollback"),
        json!({"soak_s": 5}),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM releases").await, releases);
    assert_eq!(app.count("SELECT count(*) FROM rollouts").await, 0);
    assert_eq!(current_image(&app).await, old);
}

/// A real `kiln serve` killed with SIGKILL while the canary soaks, and kept down until the
/// soak time has passed: started again, it goes on at once — the soak time is measured from
/// the canary batch's recorded done time, not restarted by the new process.
#[tokio::test]
async fn a_console_killed_during_soak_time_resumes_without_restarting_it() {
    const SOAK_S: f64 = 8.0;
    let db = crate::helpers::fresh_database_url();
    let agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("g-{}", uuid::Uuid::new_v4().simple());
    let port = crate::helpers::free_port();
    let console_up =
        || crate::helpers::start_console(&db, port, &fleet, &[("KILN_TASK_LEASE", "3")]);
    let mut console = console_up().await;
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let call = |path: String, body: Option<Value>| {
        let (http, token, base) = (http.clone(), token.clone(), base.clone());
        async move {
            let req = match body {
                Some(b) => http.post(format!("{base}{path}")).json(&b),
                None => http.get(format!("{base}{path}")),
            };
            let res = req.bearer_auth(&token).send().await.unwrap();
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let old: String = eventually(30, "the base image is current", || async {
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    let (status, _) = call(
        "/api/v1/servers".into(),
        Some(json!({"image_id": old, "count": 2})),
    )
    .await;
    assert_eq!(status, 202);
    eventually(60, "two agents register", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM agents")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    let (_, image) = call(
        "/api/v1/images".into(),
        Some(json!({"name": "worker", "version": "2"})),
    )
    .await;
    let new = image["id"].as_str().unwrap().to_owned();
    eventually(30, "the new image is available", || async {
        let (_, img) = call(format!("/api/v1/images/{new}"), None).await;
        (img["state"] == "available").then_some(())
    })
    .await;
    let (status, r) = call(
        format!("/api/v1/images/{new}/release"),
        Some(json!({"canary": 1, "soak_s": SOAK_S as i64, "on_insufficient_data": "continue"})),
    )
    .await;
    assert_eq!(status, 202, "{r}");
    let id = r["id"].as_i64().unwrap();
    eventually(60, "the canary soaks", || async {
        let (_, r) = call(format!("/api/v1/rollouts/{id}"), None).await;
        (r["phase"] == "soaking").then_some(())
    })
    .await;
    console.kill().await.unwrap();
    // Down until the soak time is over.
    let left: f64 = sqlx::query_scalar(
        "SELECT date_part('epoch', done_at + make_interval(secs => $1) - now()) FROM rollout_batches WHERE n = 1",
    )
    .bind(SOAK_S)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(left > 1.0, "killed during the soak time ({left:.1} s left)");
    tokio::time::sleep(std::time::Duration::from_secs_f64(left + 1.0)).await;
    let mut console = console_up().await;
    let restarted: time::OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    eventually(60, "the release completes", || async {
        let (_, r) = call(format!("/api/v1/rollouts/{id}"), None).await;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    // The second batch started soon after the restart (within the killed step's task lease
    // and a look), where a restarted soak time would have held it for another 8 s; and never
    // before the canary's soak time had passed.
    let (soak_end, second): (time::OffsetDateTime, time::OffsetDateTime) = sqlx::query_as(
        "SELECT (SELECT done_at + make_interval(secs => $1) FROM rollout_batches WHERE n = 1),
                (SELECT min(at) FROM audit_events WHERE action = 'rollout.batch' AND detail LIKE 'batch 2:%')",
    )
    .bind(SOAK_S)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        second >= soak_end,
        "batch 2 at {second}, soak ended {soak_end}"
    );
    let after_restart = (second - restarted).as_seconds_f64();
    assert!(
        after_restart < SOAK_S,
        "batch 2 started {after_restart:.1} s after the restart: the soak time was restarted"
    );
    drop(agents);
    crate::cli::sigterm_and_wait(&mut console).await;
}

/// A real browser: the release dialog with a plan, the rollout page waiting for the go-ahead
/// with the canary comparison, Continue (screenshots in test-output/browser/release-*.png).
#[tokio::test]
async fn a_browser_releases_with_a_plan_and_gives_the_go_ahead() {
    let (app, token) = guarded_app().await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    let result = crate::helpers::browser_check_with(&app, "release_check.py", &[&new]).await;
    stop_fleet(&app).await;
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("console errors: 0"), "{stdout}");
    assert!(
        stdout.contains(&format!("asked: Release {new}?")),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "plan: canary of 1, soak 1 s, go-ahead after the canary (within 600 s, else roll back)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("waiting: Waiting for an operator's go-ahead after the canary: Continue or Roll back before"),
        "{stdout}"
    );
    assert!(stdout.contains("comparison: not enough data"), "{stdout}");
    assert!(stdout.contains("state: succeeded"), "{stdout}");
    assert!(stdout.contains("overview waiting banner: 0"), "{stdout}");
    let r: (i32, i32, String) = sqlx::query_as(
        "SELECT canary, approved_through, state FROM rollouts WHERE kind = 'release'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(r, (1, 2, "succeeded".to_owned()));
    assert!(
        app.audit()
            .await
            .iter()
            .any(|e| e.action == "rollout.continue" && e.actor == "admin")
    );
}

//! Releases, rollbacks and their rollouts, end to end with the local provider: real `kiln
//! agent` processes on the old and new images run real jobs while the fleet is replaced.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, add_image, current_image, spawn_app_with};
use crate::helpers::{eventually, get_json, launch_agents, post, stop_fleet};
use crate::jobs::enqueue;

/// Agents heartbeat every second; tasks are looked at every second.
pub(crate) async fn fleet_app(grace_s: u64, slots: u32) -> (TestApp, String) {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.reconcile_interval = 2;
        s.task_poll = 1;
        s.rollback_grace = grace_s;
        s.local_slots = slots;
        s.health_timeout = 60;
    })
    .await;
    let token = app.token_for("admin").await;
    (app, token)
}

pub(crate) async fn start(
    app: &TestApp,
    token: &str,
    image: &str,
    kind: &str,
    body: Value,
) -> Value {
    let res = post(app, token, &format!("/api/v1/images/{image}/{kind}"), body).await;
    let status = res.status();
    let rollout: Value = res.json().await.unwrap();
    assert_eq!(status, 202, "{kind} {image}: {rollout}");
    rollout
}

pub(crate) async fn rollout_in(
    app: &TestApp,
    token: &str,
    id: i64,
    states: &[&str],
    secs: u64,
) -> Value {
    eventually(secs, &format!("rollout {id} in {states:?}"), || async {
        let r = get_json(app, token, &format!("/api/v1/rollouts/{id}")).await;
        states
            .contains(&r["state"].as_str().unwrap_or_default())
            .then_some(r)
    })
    .await
}

/// (image, mode) of every live worker, sorted.
pub(crate) async fn fleet(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT image_id, mode FROM servers WHERE purpose = 'worker' AND state IN ('pending', 'running')
         ORDER BY image_id, mode",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

pub(crate) async fn enabled_images(app: &TestApp) -> Vec<String> {
    fleet(app)
        .await
        .into_iter()
        .filter(|(_, mode)| mode == "enabled")
        .map(|(image, _)| image)
        .collect()
}

/// Makes the local image's servers run `exe` as their agent (a broken image: `/bin/false`).
pub(crate) async fn set_agent(pool: &sqlx::PgPool, image: &str, exe: &str) {
    sqlx::query("UPDATE local_images SET agent_exe = $2 WHERE id = $1")
        .bind(image)
        .bind(exe)
        .execute(pool)
        .await
        .unwrap();
}

/// Waits until no server is left on an image other than the current one.
async fn only_current_image_left(app: &TestApp, what: &str) {
    eventually(60, what, || async {
        (app.count("SELECT count(*) FROM servers WHERE state <> 'terminated' AND image_id <> (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1)").await == 0)
            .then_some(())
    })
    .await;
}

async fn launches(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM local_instances").await
}

#[tokio::test]
async fn a_release_replaces_the_fleet_in_batches_and_keeps_the_old_servers_disabled() {
    let (app, token) = fleet_app(1800, 1).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 3).await;
    let new = add_image(&app, &token, "2").await;

    let r = start(&app, &token, &new, "release", json!({"batch_size": 2})).await;
    // The current image moved before the 202.
    assert_eq!(current_image(&app).await, new);
    assert_eq!(r["kind"], "release");
    assert_eq!(r["from_image_id"], old.as_str());
    assert_eq!(r["to_image_id"], new.as_str());
    let id = r["id"].as_i64().unwrap();
    let done = rollout_in(&app, &token, id, &["succeeded", "failed"], 120).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        (done["replaced"].as_i64(), done["total"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(done["fleet_size"], 3);

    // Every enabled worker runs the new image, as many as before; the old ones are kept,
    // disabled, for the grace period.
    assert_eq!(enabled_images(&app).await, vec![new.clone(); 3]);
    let disabled: Vec<(String, String)> = fleet(&app)
        .await
        .into_iter()
        .filter(|(_, m)| m == "disabled")
        .collect();
    assert_eq!(disabled, vec![(old.clone(), "disabled".to_owned()); 3]);
    // Two batches: 2 then 1 replacements, one launch each.
    assert_eq!(launches(&app).await, 6);
    assert_eq!(
        app.count("SELECT count(*) FROM launches WHERE requested_by LIKE 'rollout #%'")
            .await,
        2
    );

    // A second release of the same image is a no-op conflict; its rollout shows on the pages.
    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{new}/release"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let list = get_json(&app, &token, "/api/v1/rollouts").await;
    assert_eq!(list[0]["id"], id);
    let admin = app.admin().await;
    let page = app
        .get(&admin, &format!("/rollouts/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("3 of 3 servers replaced"), "{page}");
    let images = app.get(&admin, "/images").await.text().await.unwrap();
    assert!(
        images.contains(&format!("/images/{old}/rollback")),
        "the old image offers a rollback"
    );
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "image.release" && e.target == format!("image:{new}"))
    );
    assert!(audit.iter().any(|e| e.action == "rollout.succeeded"));
    stop_fleet(&app).await;
}

#[tokio::test]
async fn an_instant_rollback_within_the_grace_period_enables_the_kept_servers_without_launching() {
    let (app, token) = fleet_app(1800, 1).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    let r = start(&app, &token, &new, "release", json!({})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 120).await;
    let launched = launches(&app).await;

    let back = start(&app, &token, &old, "rollback", json!({})).await;
    assert_eq!(back["kind"], "rollback");
    assert_eq!(current_image(&app).await, old);
    let done = rollout_in(
        &app,
        &token,
        back["id"].as_i64().unwrap(),
        &["succeeded", "failed"],
        30,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["replaced"], 2);
    assert_eq!(
        launches(&app).await,
        launched,
        "a rollback within the grace period launches nothing"
    );
    assert_eq!(enabled_images(&app).await, vec![old.clone(); 2]);
    // The release's servers are now the kept ones, disabled, ready to roll forward again.
    let disabled: Vec<String> = fleet(&app)
        .await
        .into_iter()
        .filter(|(_, m)| m == "disabled")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(disabled, vec![new.clone(); 2]);
    // Rolling back is only offered to images that were current before.
    let third = add_image(&app, &token, "3").await;
    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{third}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_rollback_while_fifty_jobs_run_loses_none_and_runs_none_twice() {
    // No grace period: the replaced servers are terminated once their jobs are done, so the
    // rollback launches fresh servers while the release's servers still run the jobs.
    let (app, token) = fleet_app(0, 20).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 3).await;
    let new = add_image(&app, &token, "2").await;
    let r = start(&app, &token, &new, "release", json!({"batch_size": 3})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 120).await;
    eventually(60, "the old servers are retired", || async {
        (app.count("SELECT count(*) FROM servers WHERE state <> 'terminated'")
            .await
            == 3)
            .then_some(())
    })
    .await;

    // The jobs hold until the test opens their gate (once the rollback has started), so that
    // all fifty are running at once however slowly they were enqueued.
    let gate = std::env::temp_dir().join(format!("kiln-gate-{}", uuid::Uuid::new_v4().simple()));
    let command = format!(
        // (At most a minute, should the test fail before opening it.)
        "for i in $(seq 600); do [ -e {} ] && break; sleep 0.1; done; sleep 1; echo done $KILN_JOB_ID",
        gate.display()
    );
    let mut jobs = Vec::new();
    for _ in 0..50 {
        jobs.push(enqueue(&app, &token, json!({ "command": command })).await);
    }
    eventually(30, "all fifty jobs run at once", || async {
        (app.count("SELECT count(*) FROM jobs WHERE state = 'running'")
            .await
            == 50)
            .then_some(())
    })
    .await;
    let back = start(&app, &token, &old, "rollback", json!({"batch_size": 3})).await;
    std::fs::write(&gate, b"open").unwrap();
    let done = rollout_in(
        &app,
        &token,
        back["id"].as_i64().unwrap(),
        &["succeeded", "failed"],
        120,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    eventually(120, "every job finishes", || async {
        (app.count("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
            .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await,
        50
    );
    assert_eq!(
        app.count("SELECT count(*) FROM job_attempts WHERE state = 'succeeded'")
            .await,
        50
    );
    assert_eq!(
        app.count("SELECT count(*) FROM job_attempts WHERE state <> 'succeeded'")
            .await,
        0,
        "no attempt lost"
    );
    assert_eq!(enabled_images(&app).await, vec![old.clone(); 3]);
    // The release's servers drain and go once their jobs are done.
    eventually(60, "the replaced servers are terminated", || async {
        (app.count("SELECT count(*) FROM servers WHERE state <> 'terminated'")
            .await
            == 3)
            .then_some(())
    })
    .await;
    let _ = std::fs::remove_file(&gate);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_rollback_during_a_release_supersedes_it() {
    let (app, token) = fleet_app(1800, 1).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    // The release's replacements never come up (a broken image): it stays mid-way.
    set_agent(&app.pool, &new, "/bin/false").await;
    let release = start(&app, &token, &new, "release", json!({"batch_size": 1})).await;
    let release_id = release["id"].as_i64().unwrap();
    eventually(30, "the release launches its first batch", || async {
        (app.count("SELECT count(*) FROM rollout_batches").await == 1).then_some(())
    })
    .await;
    // A second release is refused while it runs; a rollback is not.
    let third = add_image(&app, &token, "3").await;
    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{third}/release"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let back = start(&app, &token, &old, "rollback", json!({})).await;
    let cancelled = get_json(&app, &token, &format!("/api/v1/rollouts/{release_id}")).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["superseded_by"], back["id"]);
    let done = rollout_in(
        &app,
        &token,
        back["id"].as_i64().unwrap(),
        &["succeeded", "failed"],
        60,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(current_image(&app).await, old);
    assert_eq!(enabled_images(&app).await, vec![old.clone(); 2]);
    only_current_image_left(&app, "the release's server is gone").await;
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_release_whose_agents_never_become_healthy_fails_and_leaves_the_fleet_as_it_was() {
    let (app, token) = fleet_app(1800, 1).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 2).await;
    let new = add_image(&app, &token, "2").await;
    set_agent(&app.pool, &new, "/bin/false").await;
    let r = start(
        &app,
        &token,
        &new,
        "release",
        json!({"health_timeout_s": 3}),
    )
    .await;
    let done = rollout_in(
        &app,
        &token,
        r["id"].as_i64().unwrap(),
        &["succeeded", "failed"],
        60,
    )
    .await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("no healthy agent"),
        "{done}"
    );
    assert_eq!(
        current_image(&app).await,
        old,
        "the current image moved back"
    );
    assert_eq!(enabled_images(&app).await, vec![old.clone(); 2]);
    only_current_image_left(&app, "the failed replacements are terminated").await;
    let releases: Vec<String> = sqlx::query_scalar("SELECT kind FROM releases ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(releases, vec!["first", "release", "revert"]);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn pause_resume_cancel_and_bad_input() {
    let (app, token) = fleet_app(1800, 1).await;
    let old = current_image(&app).await;
    launch_agents(&app, &token, 1).await;
    let new = add_image(&app, &token, "2").await;
    for (body, why) in [
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"min_healthy_percent": 101}), "min_healthy_percent"),
        (json!({"health_timeout_s": "soon"}), "health_timeout_s"),
    ] {
        let res = post(&app, &token, &format!("/api/v1/images/{new}/release"), body).await;
        assert_eq!(res.status(), 400);
        assert!(res.text().await.unwrap().contains(why));
    }
    let (c, t) = crate::helpers::api(&token);
    let res = c
        .post(app.url(&format!("/api/v1/images/{new}/release")))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        app.count("SELECT count(*) FROM rollouts").await,
        0,
        "bad input changes nothing"
    );
    assert_eq!(current_image(&app).await, old);
    let res = post(
        &app,
        &token,
        "/api/v1/images/ami-local-00000000000000000/release",
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 404);

    // Its agents never come up, so the rollout is still waiting when it is paused.
    set_agent(&app.pool, &new, "/bin/false").await;
    let r = start(&app, &token, &new, "release", json!({})).await;
    let id = r["id"].as_i64().unwrap();
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/pause"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "paused");
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/pause"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200, "pausing a paused rollout is a no-op");
    // Paused: nothing more happens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get_json(&app, &token, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(r["state"], "paused");
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/explode"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/resume"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "cancelled");
    assert_eq!(
        current_image(&app).await,
        old,
        "cancelling moves the current image back"
    );
    let res = post(
        &app,
        &token,
        &format!("/api/v1/rollouts/{id}/resume"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    eventually(60, "the fleet is back as it was", || async {
        (enabled_images(&app).await == vec![old.clone()]
            && app
                .count("SELECT count(*) FROM rollouts WHERE cleaned_at IS NULL")
                .await
                == 0)
            .then_some(())
    })
    .await;
    only_current_image_left(&app, "no server of the cancelled rollout is left").await;

    // A viewer can read rollouts but not start, pause or cancel one.
    app.create_user("watcher", kiln::domain::Role::Viewer).await;
    let viewer = app.token_for("watcher").await;
    assert_eq!(
        get_json(&app, &viewer, "/api/v1/rollouts")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for path in [
        format!("/api/v1/images/{new}/release"),
        format!("/api/v1/rollouts/{id}/pause"),
        format!("/api/v1/rollouts/{id}/cancel"),
    ] {
        let res = post(&app, &viewer, &path, json!({})).await;
        assert_eq!(res.status(), 403, "{path}");
    }
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_console_killed_mid_rollout_completes_it_after_restart_without_double_launches() {
    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("r-{}", uuid::Uuid::new_v4().simple());
    let port = crate::helpers::free_port();
    let start_console =
        || crate::helpers::start_console(&db, port, &fleet, &[("KILN_TASK_LEASE", "3")]);
    let mut console = start_console().await;
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let post = |path: String, body: Value| {
        let http = http.clone();
        let token = token.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // The base image becomes current once the fresh console's adopt task has run.
    let old: String = eventually(30, "the base image is current", || async {
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    let res = post(
        "/api/v1/servers".into(),
        json!({"image_id": old, "count": 4}),
    )
    .await;
    assert_eq!(res.status(), 202);
    eventually(60, "four agents register", || async {
        (count("SELECT count(*) FROM agents").await == 4).then_some(())
    })
    .await;
    let res = post(
        "/api/v1/images".into(),
        json!({"name": "worker", "version": "2"}),
    )
    .await;
    let new = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(30, "the new image is available", || async {
        (count("SELECT count(*) FROM images WHERE state = 'available'").await == 2).then_some(())
    })
    .await;
    // The new image's agents take 2 s to start, so each batch takes at least that long and
    // the console is killed with three batches still to go.
    let slow = std::env::temp_dir().join(format!("kiln-slow-agent-{fleet}.sh"));
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 2\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_kiln")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    set_agent(&pool, &new, slow.to_str().unwrap()).await;
    let res = post(
        format!("/api/v1/images/{new}/release"),
        json!({"batch_size": 1}),
    )
    .await;
    assert_eq!(res.status(), 202);
    eventually(60, "the first batch is in", || async {
        (count("SELECT count(*) FROM rollouts WHERE replaced >= 1").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        count("SELECT count(*) FROM rollouts WHERE state = 'running' AND replaced < 4").await,
        1,
        "killed mid-rollout"
    );
    // kill -9 the console mid-rollout, start it again.
    console.kill().await.unwrap();
    let mut console = start_console().await;
    eventually(120, "the rollout completes", || async {
        (count("SELECT count(*) FROM rollouts WHERE state = 'succeeded'").await == 1).then_some(())
    })
    .await;
    // Four replacements, four instances launched at the provider for them: none twice.
    assert_eq!(count("SELECT count(*) FROM local_instances").await, 8);
    assert_eq!(count("SELECT count(*) FROM rollout_batches").await, 4);
    assert_eq!(
        count("SELECT count(*) FROM servers WHERE mode = 'enabled' AND state = 'running' AND image_id = (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1)").await,
        4
    );
    // The local servers stop before their console does.
    drop(agents);
    crate::cli::sigterm_and_wait(&mut console).await;
}

/// Which way is back: after a rollback, the image rolled back from comes back only through a
/// release (so freezes apply to it); the image it went back to may be rolled back to again
/// once the fleet has moved on by a release.
#[tokio::test]
async fn an_image_rolled_back_from_comes_back_only_through_a_release() {
    let app = crate::helpers::spawn_app().await;
    let token = app.token_for("admin").await;
    let first = current_image(&app).await;
    let second = add_image(&app, &token, "2").await;
    let r = start(&app, &token, &second, "release", json!({})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 30).await;
    let r = start(&app, &token, &first, "rollback", json!({})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 30).await;

    let res = post(
        &app,
        &token,
        &format!("/api/v1/images/{second}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let err: Value = res.json().await.unwrap();
    let message = err["error"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "{second} was rolled back from (admin rolled back to {first} at "
        )) && message.ends_with(
            "it comes back only through a release (Make current), so that freezes apply."
        ),
        "{message}"
    );
    assert_eq!(current_image(&app).await, first, "nothing changed");
    let admin = app.admin().await;
    let page = app
        .get(&admin, &format!("/images/{second}"))
        .await
        .text()
        .await
        .unwrap();
    // The image fled is marked so, and offered again only as a release, never as a rollback.
    assert!(page.contains("Release this image again"), "{page}");
    assert!(
        page.contains("The fleet was rolled back from this image at"),
        "{page}"
    );
    assert!(!page.contains("Roll back to this"), "{page}");

    let r = start(&app, &token, &second, "release", json!({})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 30).await;
    // Released again, it is an ordinary image; the first may be rolled back to.
    let r = start(&app, &token, &first, "rollback", json!({})).await;
    rollout_in(&app, &token, r["id"].as_i64().unwrap(), &["succeeded"], 30).await;
    assert_eq!(current_image(&app).await, first);
}

/// The rollout's page compares the jobs on the new image with those on the old over the
/// rollout's time, pinned jobs left out, and says when the new image is worse.
#[tokio::test]
async fn the_rollout_page_compares_the_jobs_on_the_new_image_with_the_old() {
    let app = crate::helpers::spawn_app().await;
    let token = app.token_for("admin").await;
    let first = current_image(&app).await;
    let second = add_image(&app, &token, "2").await;
    let r = start(&app, &token, &second, "release", json!({})).await;
    let id = r["id"].as_i64().unwrap();
    rollout_in(&app, &token, id, &["succeeded"], 30).await;
    let admin = app.admin().await;
    let page = app
        .get(&admin, &format!("/rollouts/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("not enough data: 0 jobs on the new image and 0 on the old"),
        "{page}"
    );

    // Jobs finished during the rollout: 10 of 40 failed on the new image, 4 of 200 on the
    // old; 50 failed pinned jobs (health checks, bake steps) on the new one do not count.
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, mode, launched_by) VALUES
             ('i-cmp-old', $1, 't3.micro', 'running', 'enabled', 'test'),
             ('i-cmp-new', $2, 't3.micro', 'running', 'enabled', 'test')",
    )
    .bind(&first)
    .bind(&second)
    .execute(&app.pool)
    .await
    .unwrap();
    for (server, n, failed, pinned) in [
        ("i-cmp-new", 40, 10, false),
        ("i-cmp-old", 200, 4, false),
        ("i-cmp-new", 50, 50, true),
    ] {
        sqlx::query(
            "INSERT INTO jobs (command, timeout_s, enqueued_by, state, attempt, server_id, pinned_server_id,
                               started_at, finished_at)
             SELECT 'true', 60, 'test', CASE WHEN g <= $3 THEN 'failed' ELSE 'succeeded' END, 1, $1,
                    CASE WHEN $4 THEN $1 END, r.created_at, r.created_at
             FROM generate_series(1, $2) g, rollouts r WHERE r.id = $5",
        )
        .bind(server)
        .bind(n)
        .bind(failed)
        .bind(pinned)
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let page = app
        .get(&admin, &format!("/rollouts/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(
            "<td class=\"num\">40</td><td class=\"num\">10</td><td class=\"num\">25.0%</td>"
        ),
        "{page}"
    );
    assert!(
        page.contains(
            "<td class=\"num\">200</td><td class=\"num\">4</td><td class=\"num\">2.0%</td>"
        ),
        "{page}"
    );
    assert!(
        page.contains(
            "worse: 25.0% of its jobs failed against 2.0% on the old image (Fisher exact p = "
        ),
        "{page}"
    );
    let api = get_json(&app, &token, &format!("/api/v1/rollouts/{id}/comparison")).await;
    assert_eq!(api["new"]["jobs"], 40, "{api}");
    assert_eq!(api["old"]["failed"], 4, "{api}");
    assert_eq!(api["verdict"]["verdict"], "worse", "{api}");
}

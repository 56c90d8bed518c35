//! Launching servers (pages and API), the Servers page, the fleet cap, bad input, and the
//! reconciler (states, vanished servers, adopted ones, one replica at a time).

use kiln::cloud::{ServerFilter, ServerState, describe_all};
use kiln::domain::Role;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

async fn base_image(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits (bounded) for a launch to finish; returns its JSON.
async fn finished_launch(app: &TestApp, token: &str, id: i64) -> serde_json::Value {
    crate::helpers::eventually(60, &format!("launch {id} finishes"), || async {
        let launch: serde_json::Value = reqwest::Client::new()
            .get(app.url(&format!("/api/v1/launches/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (!matches!(launch["state"].as_str(), Some("pending") | Some("running"))).then_some(launch)
    })
    .await
}

async fn launch_api(app: &TestApp, token: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/v1/servers"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_launch_returns_at_once_and_its_servers_come_up_at_the_provider() {
    let app = spawn_app().await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let image = base_image(&app).await;

    let res = launch_api(
        &app,
        &token,
        serde_json::json!({"image_id": image, "count": 2, "instance_type": "t3.small"}),
    )
    .await;

    assert_eq!(res.status(), 202);
    let accepted: serde_json::Value = res.json().await.unwrap();
    assert_eq!(accepted["state"], "pending");
    assert_eq!(accepted["count"], 2);
    let launch = finished_launch(&app, &token, accepted["id"].as_i64().unwrap()).await;
    assert_eq!(launch["state"], "succeeded", "{launch}");
    let ids: Vec<String> = serde_json::from_value(launch["server_ids"].clone()).unwrap();
    assert_eq!(ids.len(), 2);
    let at_provider = describe_all(
        app.cloud.as_ref(),
        &ServerFilter {
            ids: ids.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        at_provider.iter().all(|s| s.state == ServerState::Running),
        "{at_provider:?}"
    );
    let listed: Vec<serde_json::Value> = reqwest::Client::new()
        .get(app.url("/api/v1/servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    for s in &listed {
        assert_eq!(
            (
                s["mode"].as_str(),
                s["state"].as_str(),
                s["purpose"].as_str()
            ),
            (Some("enabled"), Some("running"), Some("worker"))
        );
        assert_eq!(s["image_id"], image.as_str());
        assert_eq!(s["running_jobs"], 0);
        assert_eq!(s["instance_type"], "t3.small");
    }
    let operator = app.user_client("ollie", Role::Operator).await;
    let page = app.get(&operator, "/servers").await.text().await.unwrap();
    assert!(
        ids.iter().all(|id| page.contains(id.as_str())),
        "the page lists them"
    );
    let detail = app
        .get(&operator, &format!("/servers/{}", ids[0]))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        detail.contains("servers.launched"),
        "the server's page shows its launch in the audit trail"
    );
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.action == "servers.launch" && a.actor == "olga")
    );
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn the_launch_form_launches_from_the_current_image() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let image = base_image(&app).await;
    let page = app.get(&operator, "/servers").await.text().await.unwrap();
    assert!(
        page.contains("Launch servers")
            && page.contains(&format!("<option value=\"{image}\" selected")),
        "current image preselected"
    );

    let res = app
        .post_form(
            &operator,
            "/servers",
            "/servers",
            &[
                ("image_id", &image),
                ("count", "1"),
                ("instance_type", "t3.micro"),
            ],
        )
        .await;

    assert_eq!(res.status(), 303);
    let after = app.get(&operator, "/servers").await.text().await.unwrap();
    assert!(after.contains("Launching 1 from"), "flash");
    crate::helpers::eventually(60, "one server running", || async {
        (app.count("SELECT count(*) FROM servers WHERE state = 'running'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn bad_launches_are_refused_with_reasons_and_leave_nothing_behind() {
    let app = spawn_app_with(|s| s.max_servers = 3).await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let image = base_image(&app).await;
    let cases = [
        (
            serde_json::json!({"image_id": "ami-1e749f67", "count": 1}),
            400,
            "is not a local image id",
        ),
        (
            serde_json::json!({"image_id": image, "count": 0}),
            400,
            "at least one",
        ),
        (
            serde_json::json!({"image_id": image, "count": 10000}),
            400,
            "KILN_MAX_SERVERS",
        ),
        (
            serde_json::json!({"image_id": image, "count": "lots"}),
            400,
            "whole number",
        ),
        (
            serde_json::json!({"image_id": image, "count": 1, "instance_type": "m9.huge"}),
            400,
            "not an offered instance type",
        ),
        (
            serde_json::json!({"image_id": "ami-local-0123456789abcdef0", "count": 1}),
            404,
            "no image",
        ),
        (
            serde_json::json!({"image_id": image, "count": 4}),
            400,
            "KILN_MAX_SERVERS",
        ),
    ];
    for (body, status, words) in cases {
        let res = launch_api(&app, &token, body.clone()).await;
        assert_eq!(res.status().as_u16(), status, "{body}");
        let error = res.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(error.contains(words), "{body}: {error}");
    }
    assert_eq!(app.count("SELECT count(*) FROM launches").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE kind = 'launch_servers'")
            .await,
        0
    );

    // Within the cap, then over it counting servers not launched yet.
    let ok = launch_api(
        &app,
        &token,
        serde_json::json!({"image_id": image, "count": 2}),
    )
    .await;
    assert_eq!(ok.status(), 202);
    let over = launch_api(
        &app,
        &token,
        serde_json::json!({"image_id": image, "count": 2}),
    )
    .await;
    assert_eq!(over.status(), 409);
    assert!(
        over.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("over its cap of 3")
    );
    let id = sqlx::query_scalar::<_, i64>("SELECT id FROM launches")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    finished_launch(&app, &token, id).await;
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn a_pending_image_cannot_be_launched() {
    let app = spawn_app().await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let image = base_image(&app).await;
    sqlx::query("UPDATE images SET state = 'pending'")
        .execute(&app.pool)
        .await
        .unwrap();

    let res = launch_api(
        &app,
        &token,
        serde_json::json!({"image_id": image, "count": 1}),
    )
    .await;

    assert_eq!(res.status(), 409);
    assert!(
        res.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("only available images can be launched")
    );
}

#[tokio::test]
async fn the_reconciler_follows_the_provider_marks_the_vanished_and_adopts_strangers() {
    let app = spawn_app_with(|s| s.reconcile_interval = 3600).await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let image = base_image(&app).await;
    let accepted: serde_json::Value = launch_api(
        &app,
        &token,
        serde_json::json!({"image_id": image, "count": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    let launch = finished_launch(&app, &token, accepted["id"].as_i64().unwrap()).await;
    let ids: Vec<String> = serde_json::from_value(launch["server_ids"].clone()).unwrap();
    // One agent dies; one server Kiln knows is gone from the provider; one stranger appears.
    let pid: i32 = sqlx::query_scalar("SELECT pid FROM local_instances WHERE id = $1")
        .bind(&ids[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // SAFETY: plain kill(2) of an agent this test launched.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    sqlx::query("INSERT INTO servers (id, image_id, state, launched_at) VALUES ('i-local-0000000000000dead', $1, 'running', now() - interval '10 minutes')")
        .bind(&image)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO local_instances (id, image_id, instance_type, state, tags, launch_token)
         VALUES ('i-local-000000000000000aa', $1, 't3.micro', 'pending', '{\"kiln:fleet\": \"default\"}', 'elsewhere')",
    )
    .bind(&image)
    .execute(&app.pool)
    .await
    .unwrap();
    crate::helpers::eventually(30, "the killed agent is gone", || async {
        (!std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")))
            .then_some(())
    })
    .await;

    let summary = kiln::fleet::reconciler::run_once(&app.pool, &app.cloud)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        (summary.updated, summary.vanished, summary.adopted),
        (1, 1, 1),
        "{summary:?}"
    );
    let pool = app.pool.clone();
    let state = |id: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM servers WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let dead: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
        .bind(&ids[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let alive: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
        .bind(&ids[1])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((dead.as_str(), alive.as_str()), ("terminated", "running"));
    assert_eq!(state("i-local-0000000000000dead").await, "terminated");
    let adopted: bool =
        sqlx::query_scalar("SELECT adopted FROM servers WHERE id = 'i-local-000000000000000aa'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(adopted);
    let audit = app.audit().await;
    assert!(
        audit.iter().any(
            |a| a.action == "server.vanished" && a.target == "server:i-local-0000000000000dead"
        )
    );
    assert!(
        audit
            .iter()
            .any(|a| a.action == "server.adopt" && a.target == "server:i-local-000000000000000aa")
    );
    let page = app
        .get(&app.admin().await, "/servers")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("adopted</span>"),
        "adopted servers are flagged on the page"
    );

    let again = kiln::fleet::reconciler::run_once(&app.pool, &app.cloud)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.updated, again.vanished, again.adopted),
        (0, 0, 0),
        "a second pass changes nothing"
    );
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn only_one_replica_reconciles_at_a_time() {
    let app = spawn_app_with(|s| s.reconcile_interval = 3600).await;
    let mut holder = app.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(kiln::fleet::reconciler::LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();

    let skipped = kiln::fleet::reconciler::run_once(&app.pool, &app.cloud)
        .await
        .unwrap();

    assert!(skipped.is_none(), "another replica holds the reconciler");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(kiln::fleet::reconciler::LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    // Once released, a pass runs. The console's own reconciler makes its first pass when it
    // starts, which can fall just after the release and hold the lock for that instant (the
    // interval is an hour, so there is no second one): retry rather than race it.
    crate::helpers::eventually(10, "a pass once the lock is released", || async {
        kiln::fleet::reconciler::run_once(&app.pool, &app.cloud)
            .await
            .unwrap()
    })
    .await;
}

async fn launched(app: &TestApp, token: &str, count: u32) -> Vec<String> {
    let image = base_image(app).await;
    let accepted: serde_json::Value = launch_api(
        app,
        token,
        serde_json::json!({"image_id": image, "count": count}),
    )
    .await
    .json()
    .await
    .unwrap();
    let launch = finished_launch(app, token, accepted["id"].as_i64().unwrap()).await;
    serde_json::from_value(launch["server_ids"].clone()).unwrap()
}

async fn api_act(
    app: &TestApp,
    token: &str,
    id: &str,
    verb: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(app.url(&format!("/api/v1/servers/{id}/{verb}")))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn until_server_state(app: &TestApp, id: &str, state: &str) {
    crate::helpers::eventually(60, &format!("server {id} {state}"), || async {
        let now: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (now == state).then_some(())
    })
    .await
}

#[tokio::test]
async fn disable_and_enable_are_immediate_idempotent_and_survive_a_reconcile() {
    let app = spawn_app_with(|s| s.reconcile_interval = 3600).await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let id = launched(&app, &token, 1).await.remove(0);

    let first = api_act(&app, &token, &id, "disable", None).await;
    let again = api_act(&app, &token, &id, "disable", None).await;

    assert_eq!(first.status(), 200);
    assert_eq!(
        first.json::<serde_json::Value>().await.unwrap()["mode"],
        "disabled"
    );
    assert_eq!(
        again.status(),
        200,
        "disabling a disabled server is a no-op"
    );
    kiln::fleet::reconciler::run_once(&app.pool, &app.cloud)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("SELECT mode FROM servers WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(mode, "disabled", "a reconcile keeps the mode");
    let enabled = api_act(&app, &token, &id, "enable", None).await;
    assert_eq!(
        enabled.json::<serde_json::Value>().await.unwrap()["mode"],
        "enabled"
    );
    let actions: Vec<(String, String)> = app
        .audit()
        .await
        .iter()
        // The server's agent registers on its own time (agent.register, same target): it may
        // land between the two disables, so only the users' actions are compared.
        .filter(|a| a.target == format!("server:{id}") && a.action.starts_with("server."))
        .map(|a| (a.action.clone(), a.detail.clone()))
        .collect();
    assert_eq!(
        actions[..3],
        [
            ("server.enable".into(), "".into()),
            ("server.disable".into(), "already in effect".into()),
            ("server.disable".into(), "".into())
        ]
    );
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn terminate_stops_the_server_at_the_provider_and_force_does_too() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let ids = launched(&app, &token, 2).await;

    let graceful = api_act(
        &app,
        &token,
        &ids[0],
        "terminate",
        Some(serde_json::json!({"force": false})),
    )
    .await;
    let forced = app
        .post_form(
            &operator,
            "/servers",
            &format!("/servers/{}/force_terminate", ids[1]),
            &[],
        )
        .await;

    assert_eq!(graceful.status(), 202);
    assert_eq!(
        graceful.json::<serde_json::Value>().await.unwrap()["mode"],
        "disabled",
        "disabled at once"
    );
    assert_eq!(forced.status(), 303);
    for id in &ids {
        until_server_state(&app, id, "terminated").await;
    }
    let at_provider = describe_all(
        app.cloud.as_ref(),
        &ServerFilter {
            ids: ids.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        at_provider
            .iter()
            .all(|s| s.state == ServerState::Terminated),
        "{at_provider:?}"
    );
    let again = api_act(&app, &token, &ids[0], "terminate", None).await;
    assert_eq!(
        again.status(),
        200,
        "terminating a terminated server is a no-op"
    );
    let disable_dead = api_act(&app, &token, &ids[0], "disable", None).await;
    assert_eq!(disable_dead.status(), 409);
    assert!(
        disable_dead.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("is terminated")
    );
    let page = app.get(&operator, "/servers").await.text().await.unwrap();
    assert!(
        page.contains("Terminating 1 server now."),
        "flash after the forced terminate"
    );
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.action == "server.force_terminate" && a.actor == "olga")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "server.terminated")
            .count(),
        2
    );
}

#[tokio::test]
async fn bulk_actions_apply_to_the_selection_or_change_nothing() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let ids = launched(&app, &token, 3).await;
    let csrf = app.csrf(&operator, "/servers").await;

    let res = operator
        .post(app.url("/servers/bulk"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("ids", &ids[0]),
            ("ids", &ids[1]),
            ("action", "disable"),
        ])
        .send()
        .await
        .unwrap();
    let page = app.get(&operator, "/servers").await.text().await.unwrap();
    assert!(page.contains("Disabled 2 servers"), "flash");
    let with_unknown = operator
        .post(app.url("/servers/bulk"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("ids", &ids[2]),
            ("ids", "i-local-00000000000000bad"),
            ("action", "disable"),
        ])
        .send()
        .await
        .unwrap();
    let nothing = operator
        .post(app.url("/servers/bulk"))
        .form(&[("csrf_token", csrf.as_str()), ("action", "disable")])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 303);
    assert_eq!(with_unknown.status(), 404);
    assert!(
        with_unknown
            .text()
            .await
            .unwrap()
            .contains("There is no server i-local-00000000000000bad.")
    );
    assert_eq!(nothing.status(), 400);
    let modes: Vec<String> = sqlx::query_scalar(
        "SELECT mode FROM servers WHERE id = ANY($1) ORDER BY array_position($1, id)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        modes,
        ["disabled", "disabled", "enabled"],
        "the refused bulk action changed nothing"
    );
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn a_viewer_sees_servers_without_action_controls() {
    let app = spawn_app().await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let ids = launched(&app, &token, 1).await;
    let viewer = app.user_client("vera", Role::Viewer).await;

    let page = app.get(&viewer, "/servers").await.text().await.unwrap();
    let refused = app
        .post_form(
            &viewer,
            "/servers",
            &format!("/servers/{}/disable", ids[0]),
            &[],
        )
        .await;

    assert!(page.contains(&ids[0]));
    assert!(
        !page.contains("Launch servers")
            && !page.contains(">Disable<")
            && !page.contains("Apply to selected")
    );
    assert_eq!(refused.status(), 403);
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn the_counts_per_state_mode_and_image_stay_equal_to_the_servers_table() {
    let app = spawn_app().await;
    let grouped = |pool: sqlx::PgPool| async move {
        let mut g: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM servers GROUP BY state ORDER BY state")
                .fetch_all(&pool)
                .await
                .unwrap();
        g.sort();
        g
    };
    let steps = [
        "INSERT INTO servers (id, image_id, state) SELECT 'i-c-' || g, 'ami-x', 'pending' FROM generate_series(1, 50) g",
        "UPDATE servers SET state = 'running' WHERE id LIKE 'i-c-%' AND right(id, 1) IN ('1', '2', '3')",
        "UPDATE servers SET mode = 'disabled' WHERE id LIKE 'i-c-%'",
        "UPDATE servers SET mode = 'enabled' WHERE id LIKE 'i-c-4%'",
        "UPDATE servers SET mode = 'enabled', state = 'running' WHERE id LIKE 'i-c-5%'",
        "UPDATE servers SET state = 'terminated' WHERE id LIKE 'i-c-1%'",
        "UPDATE servers SET state = 'running' WHERE id = 'i-c-nothing'",
        "DELETE FROM servers WHERE id LIKE 'i-c-2%'",
        "UPDATE servers SET image_id = 'ami-y' WHERE id LIKE 'i-c-3%'",
        "UPDATE servers SET state = 'pending', image_id = 'ami-z' WHERE id LIKE 'i-c-1%'",
        "INSERT INTO servers (id, image_id, state) VALUES ('i-c-gone', 'ami-x', 'terminated')",
    ];
    // Live servers per image, as the Images page counts them.
    let per_image = |pool: sqlx::PgPool| async move {
        let g: Vec<(String, i64)> = sqlx::query_as(
            "SELECT image_id, count(*) FROM servers WHERE state <> 'terminated' GROUP BY image_id ORDER BY image_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        g
    };
    for sql in steps {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&app.pool)
            .await
            .unwrap();
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, n FROM server_state_counts WHERE n <> 0 ORDER BY state")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(counted, grouped(app.pool.clone()).await, "after {sql}");
        let kept: Vec<(String, i64)> = sqlx::query_as(
            "SELECT image_id, n FROM image_server_counts WHERE n <> 0 ORDER BY image_id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            kept,
            per_image(app.pool.clone()).await,
            "per image, after {sql}"
        );
        // Per state and mode, as the Overview and the Servers page's chips count them.
        let by_mode: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT state, mode, n FROM server_mode_counts WHERE n <> 0 ORDER BY state, mode",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let grouped_by_mode: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT state, mode, count(*) FROM servers GROUP BY state, mode ORDER BY state, mode",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(by_mode, grouped_by_mode, "per state and mode, after {sql}");
    }
}

#[tokio::test]
async fn the_servers_page_shows_the_version_of_each_servers_image_even_one_catalogued_later() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // Adopted from the provider while its image was not in the catalogue yet.
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, launched_by, adopted)
         VALUES ('i-adopted-early', 'ami-later', 't3.micro', 'running', 'reconciler', TRUE)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let page = app.get(&admin, "/servers").await.text().await.unwrap();
    assert!(page.contains("i-adopted-early"), "{page}");
    assert!(!page.contains("v77"));

    sqlx::query(
        "INSERT INTO images (id, name, version, state, added_by)
         VALUES ('ami-later', 'late', '77', 'available', 'admin')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let page = app.get(&admin, "/servers").await.text().await.unwrap();
    assert!(page.contains("v77"), "the version arrives with the image");

    // A server recorded after its image: the version at once.
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, launched_by)
         VALUES ('i-launched-later', 'ami-later', 't3.micro', 'running', 'admin')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let versions: Vec<Option<String>> =
        sqlx::query_scalar("SELECT image_version FROM servers WHERE image_id = 'ami-later'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![Some("77".to_owned()); 2]);
}

/// The launch form's choices are kept by the console between page views (read again only
/// when the catalogue clock moved): every change to the catalogue or the release history,
/// by this console or behind its back, shows on the next view.
#[tokio::test]
async fn the_launch_form_follows_the_catalogue_whoever_changes_it() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let base = base_image(&app).await;
    let choices = |page: String| -> Vec<String> {
        let form = page
            .split("name=\"image_id\"")
            .nth(1)
            .and_then(|rest| rest.split("</select>").next())
            .expect("the launch form's image select")
            .to_owned();
        form.split("<option value=\"")
            .skip(1)
            .map(|o| o.split('>').next().unwrap_or_default().to_owned())
            .collect()
    };
    let view = || async { choices(app.get(&operator, "/servers").await.text().await.unwrap()) };
    assert_eq!(
        view().await,
        [format!("{base}\" selected")],
        "only the base image"
    );
    // Twice: the second view is served from what the first kept.
    assert_eq!(view().await, [format!("{base}\" selected")]);

    // Behind the console's back (another replica, or SQL): a new available image.
    sqlx::query(
        "INSERT INTO images (id, name, version, state, added_by) VALUES ('ami-local-newer', 'newer', '2', 'available', 'test')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        view().await,
        [format!("{base}\" selected"), "ami-local-newer\"".to_owned()],
        "a new image is a choice at once"
    );

    // No longer available: no longer a choice.
    sqlx::query("UPDATE images SET state = 'failed' WHERE id = 'ami-local-newer'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(view().await, [format!("{base}\" selected")]);

    // Available again and released: the current image, first and preselected.
    sqlx::query("UPDATE images SET state = 'available' WHERE id = 'ami-local-newer'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO releases (image_id, previous_image_id, kind, released_by) VALUES ('ami-local-newer', $1, 'release', 'test')",
    )
    .bind(&base)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        view().await,
        ["ami-local-newer\" selected".to_owned(), format!("{base}\"")],
        "the released image is current"
    );

    // A transaction that changes the catalogue and rolls back leaves the choices as they were.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE images SET state = 'failed'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        view().await,
        ["ami-local-newer\" selected".to_owned(), format!("{base}\"")]
    );
}

//! Autoscaling with real agents on the local provider: a burst grows the fleet to its
//! maximum within a couple of decisions, every job succeeds, none is lost to a scale-in, and
//! the fleet comes back to its minimum when the queue is empty. Decisions every second, the
//! delays a few seconds.

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, get_json, post, put, spawn_app_with};

/// A console deciding every second (agents heartbeating and tasks looked at every second, and
/// `extra` settings), with an operator's API token.
async fn scaling_app(extra: impl FnOnce(&mut kiln::config::Settings)) -> (TestApp, String) {
    let app = spawn_app_with(|s| {
        s.scaling_interval = 1;
        s.heartbeat = 1;
        s.task_poll = 1;
        extra(s);
    })
    .await;
    app.create_user("sam", kiln::domain::Role::Operator).await;
    let token = app.token_for("sam").await;
    (app, token)
}

async fn live_workers(app: &TestApp) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE mode = 'enabled'), count(*) FROM servers
         WHERE purpose = 'worker' AND state <> 'terminated'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_burst_grows_the_fleet_to_max_every_job_succeeds_and_it_shrinks_back_to_min() {
    let (app, token) = scaling_app(|s| s.job_lease = 10).await;

    // Settings are checked as a whole, and the refusal names the field.
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 5, "max": 2}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().starts_with("min:"), "{err}");
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "max": 9999}),
    )
    .await;
    assert_eq!(res.status(), 400);

    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 1, "max": 8, "max_queue_latency_s": 1,
               "scale_in_delay_s": 3, "cooldown_s": 3}),
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // The minimum first: one worker, launched by the autoscaler.
    eventually(60, "the minimum of one worker comes up", || async {
        let registered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agents a JOIN servers s ON s.id = a.server_id WHERE s.state <> 'terminated'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (registered == 1).then_some(())
    })
    .await;

    // The burst arrives all at once, whatever the speed of enqueueing it here: autoscaling
    // is off while the jobs are enqueued and back on once they all wait.
    let settings = |enabled: bool| {
        json!({"enabled": enabled, "min": 1, "max": 8, "max_queue_latency_s": 1,
               "scale_in_delay_s": 3, "cooldown_s": 3})
    };
    let res = put(&app, &token, "/api/v1/scaling", settings(false)).await;
    assert_eq!(res.status(), 200);
    let burst_at = std::time::Instant::now();
    for n in 0..200 {
        let res = post(
            &app,
            &token,
            "/api/v1/jobs",
            json!({"command": "sleep 1", "labels": {"burst": n.to_string()}}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }
    let res = put(&app, &token, "/api/v1/scaling", settings(true)).await;
    assert_eq!(res.status(), 200);
    eventually(30, "the fleet reaches its maximum of 8", || async {
        (live_workers(&app).await.0 == 8).then_some(())
    })
    .await;
    let took = burst_at.elapsed();
    let decisions = get_json(&app, &token, "/api/v1/scaling/decisions").await;
    let out: Vec<&Value> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "scale_out")
        .collect();
    // The burst's decision says why, with the figures: "utilisation 100% > 75% with jobs
    // waiting: +7 servers (47 queued jobs, 1 slot each)" (or the queue latency, if it came
    // first).
    assert!(
        out.iter().any(|d| {
            let r = d["reason"].as_str().unwrap();
            (r.starts_with("queue latency") || r.starts_with("utilisation"))
                && r.contains("+7 servers")
                && r.contains("queued jobs")
        }),
        "{decisions}"
    );
    eprintln!("reached 8 servers {took:?} after the burst's first job");

    eventually(240, "every job of the burst succeeds", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (done == 200).then_some(())
    })
    .await;
    eventually(90, "the fleet is back to its minimum", || async {
        (live_workers(&app).await == (1, 1)).then_some(())
    })
    .await;
    let lost: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE state <> 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(lost, 0, "no attempt was lost or cut short by a scale-in");
    let decisions = get_json(&app, &token, "/api/v1/scaling/decisions").await;
    let scale_in = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "scale_in")
        .expect("a scale-in decision");
    assert!(
        scale_in["reason"]
            .as_str()
            .unwrap()
            .contains("(idle, oldest first)"),
        "{scale_in}"
    );
    // The preview says what it would do now, and changes nothing.
    let res = post(&app, &token, "/api/v1/scaling/preview", json!({})).await;
    assert_eq!(res.status(), 200);
    let preview: Value = res.json().await.unwrap();
    assert_eq!(preview["desired_before"], 1, "{preview}");
    crate::helpers::stop_fleet(&app).await;
}

#[tokio::test]
async fn the_scaling_page_saves_settings_refuses_bad_ones_and_pauses_audited() {
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin().await;
    let page = app.get(&admin, "/scaling").await.text().await.unwrap();
    assert!(page.contains("Autoscaling is off"), "{page}");
    let fields = |min: &'static str, max: &'static str| {
        vec![
            ("enabled", "on"),
            ("min", min),
            ("max", max),
            ("slots_per_server", ""),
            ("target_utilization", "0.75"),
            ("scale_in_utilization", "0.3"),
            ("max_queue_latency_s", "30"),
            ("scale_in_delay_s", "600"),
            ("cooldown_s", "600"),
            ("recycle_max_age_s", ""),
            ("recycle_max_share", "0.1"),
            ("window_days", ""),
            ("window_from", ""),
            ("window_until", ""),
        ]
    };
    let res = app
        .post_form(&admin, "/scaling", "/scaling", &fields("5", "2"))
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("min: at most max (2)."));
    assert_eq!(
        app.count("SELECT count(*) FROM scaling_settings").await,
        0,
        "nothing saved"
    );
    let res = app
        .post_form(&admin, "/scaling", "/scaling", &fields("0", "3"))
        .await;
    assert_eq!(res.status(), 303);
    let token = app.token_for("admin").await;
    let saved = get_json(&app, &token, "/api/v1/scaling").await;
    assert_eq!(
        (
            saved["enabled"].clone(),
            saved["min"].clone(),
            saved["max"].clone()
        ),
        (json!(true), json!(0), json!(3))
    );
    let res = app
        .post_form(&admin, "/scaling", "/scaling/pause", &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        get_json(&app, &token, "/api/v1/scaling").await["paused"],
        true
    );
    let page = app.get(&admin, "/scaling").await.text().await.unwrap();
    assert!(page.contains("Resume autoscaling"));
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "scaling.settings"));
    assert!(audit.iter().any(|a| a.action == "scaling.pause"));
}

/// Two `kiln serve` processes on one database: one decides at a time, so the minimum is
/// launched once; SIGKILL of both and a restart launch nothing more (the decision and its
/// launch committed together, and the launch's token is the decision's).
#[tokio::test]
async fn two_consoles_scale_as_one_and_a_killed_one_launches_nothing_twice() {
    let db = crate::helpers::fresh_database_url();
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let extra = [("KILN_SCALING_INTERVAL", "1"), ("KILN_TASK_LEASE", "3")];
    let (port_a, port_b) = (crate::helpers::free_port(), crate::helpers::free_port());
    let mut a = crate::helpers::start_console(&db, port_a, &fleet, &extra).await;
    let mut b = crate::helpers::start_console(&db, port_b, &fleet, &extra).await;
    let token = crate::cli::admin_token(&db).await;
    let res = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port_a}/api/v1/scaling"))
        .bearer_auth(&token)
        .json(&json!({"enabled": true, "min": 3, "max": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pool = kiln::db::connect(&db).await.unwrap();
    let workers = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM servers WHERE purpose = 'worker' AND state <> 'terminated'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    eventually(60, "the minimum of 3 workers is launched", || async {
        (workers().await == 3).then_some(())
    })
    .await;
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    let _ = a.wait().await;
    let _ = b.wait().await;
    let mut a = crate::helpers::start_console(&db, port_a, &fleet, &extra).await;
    // A few decisions later: still 3, one scale-out decision, one launch of 3.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(workers().await, 3);
    let launches: Vec<(String, i32)> =
        sqlx::query_as("SELECT token, count FROM launches WHERE token LIKE 'scale-%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0].1, 3);
    let outs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scaling_decisions WHERE action = 'scale_out'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outs, 1);
    crate::cli::sigterm_and_wait(&mut a).await;
    pool.close().await;
}

#[tokio::test]
async fn the_traffic_guard_asks_twice_before_going_below_the_autoscaler_s_minimum() {
    // Decisions an hour apart: the autoscaler itself stays out of the way of this test.
    let app = spawn_app_with(|s| {
        s.scaling_interval = 3600;
        s.heartbeat = 1;
    })
    .await;
    let token = app.token_for("admin").await;
    let servers = crate::helpers::launch_agents(&app, &token, 3).await;
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 2, "max": 5}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let act = |server: String, verb: &'static str, body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            post(
                app,
                &token,
                &format!("/api/v1/servers/{server}/{verb}"),
                body,
            )
            .await
        }
    };
    // 3 -> 2: fine.
    assert_eq!(
        act(servers[0].clone(), "disable", json!({})).await.status(),
        200
    );
    // 2 -> 1: refused, with the reason; nothing changed.
    let res = act(servers[1].clone(), "disable", json!({})).await;
    assert_eq!(res.status(), 409);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("below the autoscaler's minimum of 2"),
        "{err}"
    );
    let mode: String = sqlx::query_scalar("SELECT mode FROM servers WHERE id = $1")
        .bind(&servers[1])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(mode, "enabled");
    // Confirmed: done, and the audit says so.
    let res = act(
        servers[1].clone(),
        "disable",
        json!({"below_minimum": true}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(app.audit().await.iter().any(|a| {
        a.action == "server.disable"
            && a.detail
                .contains("confirmed below the autoscaler's minimum of 2")
    }));
    // The page asks twice too: a bulk terminate of the last one shows the question…
    let admin = app.admin().await;
    let res = app
        .post_form(
            &admin,
            "/servers",
            "/servers/bulk",
            &[("ids", &servers[2]), ("action", "terminate")],
        )
        .await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.unwrap();
    assert!(page.contains("Go below the minimum"), "{page}");
    // …and its button goes ahead.
    let res = app
        .post_form(
            &admin,
            "/servers",
            "/servers/bulk",
            &[
                ("ids", &servers[2]),
                ("action", "terminate"),
                ("below_minimum", "1"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    // With autoscaling off, actions behave as before.
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": false, "min": 2, "max": 5}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        act(servers[0].clone(), "terminate", json!({"force": true}))
            .await
            .status(),
        202
    );
    crate::helpers::stop_fleet(&app).await;
}

/// Workers in service: enabled, running, their agent heard from.
async fn in_service(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM servers s JOIN agents a ON a.server_id = s.id
         WHERE s.purpose = 'worker' AND s.state = 'running' AND s.mode = 'enabled'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Long jobs on some servers while the fleet scales in: only the idle ones are drained, the
/// busy ones finish their jobs, and only then does the fleet reach its minimum.
#[tokio::test]
async fn a_scale_in_drains_only_idle_servers_while_long_jobs_run() {
    let (app, token) = scaling_app(|_| {}).await;
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 4, "max": 4}),
    )
    .await;
    assert_eq!(res.status(), 200);
    eventually(60, "4 workers in service", || async {
        (in_service(&app).await == 4).then_some(())
    })
    .await;
    for n in 0..2 {
        let res = post(
            &app,
            &token,
            "/api/v1/jobs",
            json!({"command": "sleep 15", "labels": {"long": n.to_string()}}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }
    let busy: Vec<String> = eventually(30, "both long jobs run", || async {
        let on: Vec<String> =
            sqlx::query_scalar("SELECT server_id FROM jobs WHERE state = 'running' ORDER BY 1")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        (on.len() == 2).then_some(on)
    })
    .await;
    // Now the minimum drops to 1 and 2 busy of 4 slots is "low": the scaler drains the two
    // idle servers (two jobs need two servers at a target of 100%), never the busy ones.
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 1, "max": 4, "target_utilization": 1.0,
               "scale_in_utilization": 0.9, "scale_in_delay_s": 1, "cooldown_s": 0}),
    )
    .await;
    assert_eq!(res.status(), 200);
    eventually(30, "the two idle servers are drained", || async {
        let disabled: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM servers WHERE purpose = 'worker' AND mode = 'disabled' ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        (disabled.len() == 2).then_some(())
    })
    .await;
    let running: i64 = app
        .count("SELECT count(*) FROM jobs WHERE state = 'running'")
        .await;
    assert_eq!(running, 2, "the long jobs still run");
    for server in &busy {
        let mode: String = sqlx::query_scalar("SELECT mode FROM servers WHERE id = $1")
            .bind(server)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(mode, "enabled", "{server} runs a job and was not drained");
    }
    eventually(
        60,
        "the long jobs end and the fleet reaches its minimum",
        || async { (live_workers(&app).await == (1, 1)).then_some(()) },
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await,
        2
    );
    assert_eq!(
        app.count("SELECT count(*) FROM job_attempts WHERE state <> 'succeeded'")
            .await,
        0,
        "no attempt lost"
    );
    crate::helpers::stop_fleet(&app).await;
}

/// Servers past their age are replaced surge first, one at a time (a third of 3), and the
/// workers in service never drop below 3; the Servers page shows when each is due.
#[tokio::test]
async fn recycling_replaces_old_servers_surge_first_a_share_at_a_time() {
    let (app, token) = scaling_app(|_| {}).await;
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 3, "max": 3}),
    )
    .await;
    assert_eq!(res.status(), 200);
    eventually(60, "3 workers in service", || async {
        (in_service(&app).await == 3).then_some(())
    })
    .await;
    // Refused: recycling from one hour up, shares in 0–1.
    for bad in [
        json!({"max_age_s": 60}),
        json!({"max_age_s": 3600, "max_share": 1.5}),
    ] {
        let res = put(
            &app,
            &token,
            "/api/v1/scaling",
            json!({"enabled": true, "min": 3, "max": 3, "recycle": bad}),
        )
        .await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    // They are two hours old (the database is the clock), and the limit is one hour.
    let old: Vec<String> = sqlx::query_scalar(
        "UPDATE servers SET launched_at = now() - interval '2 hours'
         WHERE state <> 'terminated' RETURNING id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 3, "max": 3,
               "recycle": {"max_age_s": 3600, "max_share": 0.34}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let (mut lowest, mut most_at_once) = (i64::MAX, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        lowest = lowest.min(in_service(&app).await);
        most_at_once = most_at_once.max(
            app.count("SELECT count(*) FROM recycles WHERE state = 'replacing'")
                .await,
        );
        let gone: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM servers WHERE id = ANY($1) AND state = 'terminated'",
        )
        .bind(&old)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if gone == 3 && in_service(&app).await == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recycling did not finish: {gone} of 3 old servers gone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lowest, 3, "workers in service never dropped below 3");
    assert_eq!(most_at_once, 1, "one replacement at a time");
    assert_eq!(
        app.count("SELECT count(*) FROM recycles WHERE state = 'done'")
            .await,
        3
    );
    let decisions = get_json(&app, &token, "/api/v1/scaling/decisions").await;
    let recycled: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "recycle")
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        recycled
            .iter()
            .filter(|r| r.contains("is 2 h old (max 1 h): launching its replacement"))
            .count(),
        3,
        "{recycled:?}"
    );
    assert_eq!(
        recycled
            .iter()
            .filter(|r| r.contains("has joined: draining"))
            .count(),
        3,
        "{recycled:?}"
    );
    // The new servers are young: nothing more to do, and the page says when they are due.
    assert_eq!(
        app.count("SELECT count(*) FROM recycles").await,
        3,
        "no further replacement"
    );
    let admin = app.admin().await;
    let page = app.get(&admin, "/servers").await.text().await.unwrap();
    // 3,600 s after launches a minute or so ago: "in 59 min" or "in 58 min".
    assert_eq!(page.matches("recycle in 5").count(), 3, "{page}");
    let page = app.get(&admin, "/scaling").await.text().await.unwrap();
    assert!(
        page.contains("Servers older than 1 h are replaced, 34% of the fleet at a time."),
        "{page}"
    );
    crate::helpers::stop_fleet(&app).await;
}

/// The same scale-out and scale-in through aws-sdk-ec2 against moto. Moto runs no instance,
/// so the test plays each instance's boot (what its user-data does on EC2): an agent with an
/// enrollment token for that instance id, started as soon as the console knows the server.
#[tokio::test]
async fn on_aws_the_fleet_scales_out_and_in_through_ec2() {
    use kiln::cloud::{ServerFilter, ServerState, describe_all};

    let db = crate::helpers::fresh_database_url();
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let endpoint = format!("http://127.0.0.1:{}", crate::moto::moto_port());
    let fleet = format!("s-{}", uuid::Uuid::new_v4().simple());
    let mut console = crate::cli::serve_aws(
        &db,
        &endpoint,
        &fleet,
        &[
            ("KILN_TASK_POLL", "1"),
            ("KILN_HEARTBEAT", "1"),
            ("KILN_SCALING_INTERVAL", "1"),
            ("KILN_RECONCILE_INTERVAL", "2"),
        ],
    );
    let port = crate::cli::listening_port(&mut console).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let api = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Value| {
        api.request(method, format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let res = send(
        reqwest::Method::POST,
        "/api/v1/images",
        json!({"id": "ami-1e749f67", "name": "ubuntu", "version": "1"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    eventually(30, "the AMI is adopted and current", || async {
        sqlx::query_scalar::<_, String>("SELECT image_id FROM releases LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;

    // Every server the console launches boots: its agent joins (killed when the test ends).
    let booter = {
        let (pool, base) = (pool.clone(), base.clone());
        tokio::spawn(async move {
            let mut booted: std::collections::HashMap<String, tokio::process::Child> =
                Default::default();
            loop {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM servers WHERE purpose = 'worker' AND state IN ('pending', 'running')",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for id in ids {
                    if booted.contains_key(&id) {
                        continue;
                    }
                    let enrollment =
                        kiln::auth::token::Secret::generate(kiln::auth::token::ENROLLMENT_PREFIX);
                    let mut conn = pool.acquire().await.unwrap();
                    kiln::db::tokens::create_enrollment(
                        &mut conn,
                        &enrollment.hash(),
                        Some(&id),
                        600,
                    )
                    .await
                    .unwrap();
                    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                        .args(["agent", "--url", &base, "--token", enrollment.expose()])
                        .args(["--instance-id", &id])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .unwrap();
                    booted.insert(id, child);
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    };

    let res = send(
        reqwest::Method::PUT,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 2, "max": 4, "max_queue_latency_s": 1,
               "scale_in_delay_s": 2, "cooldown_s": 2}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let (aws, _) = crate::moto::provider(endpoint.clone(), &fleet, 3).await;
    let at_provider = || async {
        let servers = describe_all(&aws, &ServerFilter::fleet(&fleet))
            .await
            .unwrap();
        let running = servers
            .iter()
            .filter(|s| s.state == ServerState::Running)
            .count();
        (running, servers.len() - running)
    };
    let joined = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM agents a JOIN servers s ON s.id = a.server_id
             WHERE s.state = 'running' AND s.mode = 'enabled'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    eventually(
        60,
        "the minimum of 2 runs at EC2 and its agents joined",
        || async { (at_provider().await.0 == 2 && joined().await == 2).then_some(()) },
    )
    .await;

    // The jobs hold until the fleet has grown (a gate the test opens), so the queue waits
    // however slowly they were enqueued.
    let gate = std::env::temp_dir().join(format!("kiln-gate-{}", uuid::Uuid::new_v4().simple()));
    let command = format!(
        "for i in $(seq 600); do [ -e {} ] && break; sleep 0.1; done; sleep 1",
        gate.display()
    );
    for n in 0..8 {
        let res = send(
            reqwest::Method::POST,
            "/api/v1/jobs",
            json!({"command": command, "labels": {"n": n.to_string()}}),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 201);
    }
    eventually(60, "the fleet grows to its maximum of 4 at EC2", || async {
        (at_provider().await.0 == 4).then_some(())
    })
    .await;
    std::fs::write(&gate, b"open").unwrap();
    eventually(120, "every job succeeds", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (done == 8).then_some(())
    })
    .await;
    eventually(
        90,
        "back to 2 at EC2, the other 2 terminated there",
        || async { (at_provider().await == (2, 2)).then_some(()) },
    )
    .await;
    let lost: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE state <> 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(lost, 0, "no attempt lost to a scale-in");
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM scaling_decisions WHERE action IN ('scale_out', 'scale_in') ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(actions.first().map(String::as_str), Some("scale_out"));
    assert!(actions.iter().any(|a| a == "scale_in"), "{actions:?}");
    let _ = std::fs::remove_file(&gate);
    booter.abort();
    let _ = booter.await;
    console.kill().await.unwrap();
}

/// A real browser on the Scaling page: a refused setting, settings saved, the preview, the
/// decision list and the chart (screenshot in test-output/browser/scaling.png).
#[tokio::test]
async fn a_browser_saves_scaling_settings_previews_and_sees_the_decisions() {
    let (app, _) = scaling_app(|_| {}).await;
    let result = crate::helpers::browser_check(&app, "scaling_check.py").await;
    crate::helpers::stop_fleet(&app).await;
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("console errors: 0"), "{stdout}");
    assert!(
        stdout.contains("refused: min: at most max (2)."),
        "{stdout}"
    );
    assert!(
        stdout.contains("preview: skip: autoscaling is paused"),
        "{stdout}"
    );
    assert!(stdout.contains("decision: "), "{stdout}");
    assert!(stdout.contains("scale_out | 0 → 1"), "{stdout}");
    assert!(
        stdout.contains("0 queued · 0 busy of 0 × 1 slots"),
        "the figures it was made from: {stdout}"
    );
}

/// A pass long after the previous one (the console was behind or down) decides nothing: the
/// scaler's memory of low utilisation was not watched meanwhile, so the delay starts again.
#[tokio::test]
async fn a_console_that_was_behind_looks_again_before_deciding() {
    let app = spawn_app_with(|s| s.scaling_interval = 1).await;
    app.create_user("sam", kiln::domain::Role::Operator).await;
    let token = app.token_for("sam").await;
    let res = put(
        &app,
        &token,
        "/api/v1/scaling",
        json!({"enabled": true, "min": 0, "max": 2}),
    )
    .await;
    assert_eq!(res.status(), 200);
    eventually(30, "a first pass", || async {
        (app.count("SELECT count(*) FROM scaling_state WHERE last_pass_at IS NOT NULL")
            .await
            == 1)
            .then_some(())
    })
    .await;
    sqlx::query(
        "UPDATE scaling_state SET last_pass_at = now() - interval '1 hour',
                below_since = now() - interval '2 hours'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let reason: String = eventually(30, "the next pass says why it waits", || async {
        sqlx::query_scalar(
            "SELECT reason FROM scaling_decisions WHERE reason LIKE 'no decision: the previous pass%'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(
        reason.contains("(the console was behind or down)"),
        "{reason}"
    );
    let below_since_age: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - below_since)::FLOAT8 FROM scaling_state",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        below_since_age.is_none_or(|age| age < 60.0),
        "the scale-in delay starts again: {below_since_age:?}"
    );
}

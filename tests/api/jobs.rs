//! The work queue end to end with the local provider: real `kiln agent` processes launched
//! through the API register, claim, run shell commands, stream output and report results.
//! Also the queue's rules (retries, losses, cancel, retry) and the agent protocol's refusals.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, eventually, free_port, get_json, launch_agents, post, spawn_app_with, start_console,
    stop_fleet,
};

/// Heartbeats every second and 4-second leases: a dead agent's job is requeued within
/// seconds, not minutes.
async fn queue_app() -> (TestApp, String) {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.reconcile_interval = 2;
    })
    .await;
    let token = app.token_for("admin").await;
    (app, token)
}

pub(crate) async fn enqueue(app: &TestApp, token: &str, body: Value) -> i64 {
    let res = post(app, token, "/api/v1/jobs", body).await;
    assert_eq!(res.status(), 201);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["state"], "queued");
    job["id"].as_i64().unwrap()
}

pub(crate) async fn job(app: &TestApp, token: &str, id: i64) -> Value {
    get_json(app, token, &format!("/api/v1/jobs/{id}")).await
}

pub(crate) async fn job_in(
    app: &TestApp,
    token: &str,
    id: i64,
    states: &[&str],
    secs: u64,
) -> Value {
    eventually(secs, &format!("job {id} in {states:?}"), || async {
        let j = job(app, token, id).await;
        states
            .contains(&j["state"].as_str().unwrap_or_default())
            .then_some(j)
    })
    .await
}

pub(crate) async fn agent_pid(app: &TestApp, server: &str) -> i32 {
    sqlx::query_scalar("SELECT pid FROM local_instances WHERE id = $1")
        .bind(server)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn three_servers_run_a_hundred_jobs_each_exactly_once() {
    let (app, token) = queue_app().await;
    launch_agents(&app, &token, 3).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            enqueue(
                &app,
                &token,
                json!({"command": format!("echo job-{i} on $KILN_JOB_ID; echo to-stderr >&2"), "labels": {"batch": "e2e"}}),
            )
            .await,
        );
    }
    eventually(120, "all 100 jobs succeed", || async {
        let done = app
            .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await;
        (done == 100).then_some(())
    })
    .await;
    // Each ran exactly once: one attempt per job, and its output once.
    assert_eq!(app.count("SELECT count(*) FROM job_attempts").await, 100);
    assert_eq!(
        app.count("SELECT count(*) FROM job_attempts WHERE state = 'succeeded'")
            .await,
        100
    );
    let servers_used = app
        .count("SELECT count(DISTINCT server_id) FROM job_attempts")
        .await;
    assert!(
        servers_used >= 2,
        "the work spread over the servers ({servers_used})"
    );
    let (i, id) = (42, ids[42]);
    let log: Vec<Value> =
        serde_json::from_value(get_json(&app, &token, &format!("/api/v1/jobs/{id}/log")).await)
            .unwrap();
    let text: String = log
        .iter()
        .filter(|c| c["stream"] == "stdout")
        .map(|c| c["data"].as_str().unwrap())
        .collect();
    assert_eq!(text, format!("job-{i} on {id}\n"));
    assert!(
        log.iter()
            .any(|c| c["stream"] == "stderr" && c["data"] == "to-stderr\n")
    );
    // The list filters by label; the page shows the queue.
    let labelled = get_json(&app, &token, "/api/v1/jobs?label=batch%3De2e&limit=5000").await;
    assert_eq!(labelled.as_array().unwrap().len(), 100);
    let j = job(&app, &token, id).await;
    assert_eq!(j["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(j["exit_code"], 0);
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_disabled_server_finishes_its_job_and_takes_no_new_one() {
    let (app, token) = queue_app().await;
    launch_agents(&app, &token, 2).await;
    let long = enqueue(&app, &token, json!({"command": "sleep 2; echo finished"})).await;
    let running = job_in(&app, &token, long, &["running"], 30).await;
    let busy = running["server_id"].as_str().unwrap().to_owned();
    let res = post(
        &app,
        &token,
        &format!("/api/v1/servers/{busy}/disable"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    // Shown as draining while its job runs.
    let c = app.admin().await;
    let page = app.get(&c, "/servers").await.text().await.unwrap();
    assert!(
        page.contains("draining"),
        "the Servers page shows the draining server"
    );

    let done = job_in(&app, &token, long, &["succeeded", "failed"], 30).await;
    assert_eq!(
        done["state"], "succeeded",
        "the running job finished: {done}"
    );
    assert_eq!(done["attempts"][0]["server_id"], busy.as_str());
    let mut quick = Vec::new();
    for _ in 0..6 {
        quick.push(enqueue(&app, &token, json!({"command": "sleep 0.1"})).await);
    }
    for id in quick {
        let j = job_in(&app, &token, id, &["succeeded"], 30).await;
        assert_ne!(
            j["server_id"].as_str().unwrap(),
            busy,
            "a disabled server took job {id}"
        );
    }
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_killed_agent_s_job_is_requeued_once_and_completed_elsewhere() {
    let (app, token) = queue_app().await;
    launch_agents(&app, &token, 2).await;
    let id = enqueue(&app, &token, json!({"command": "sleep 3; echo survived"})).await;
    let running = job_in(&app, &token, id, &["running"], 30).await;
    let victim = running["server_id"].as_str().unwrap().to_owned();
    let pid = agent_pid(&app, &victim).await;
    // kill -9 the agent (its job dies with it, as on a dead server).
    // SAFETY: kill(2) on a process this test's console started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let done = job_in(&app, &token, id, &["succeeded", "failed"], 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "requeued exactly once: {done}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[0]["server_id"], victim.as_str());
    assert_eq!(attempts[1]["state"], "succeeded");
    assert_ne!(attempts[1]["server_id"], victim.as_str());
    stop_fleet(&app).await;
}

#[tokio::test]
async fn failures_are_retried_as_asked_and_cancel_and_retry_work() {
    let (app, token) = queue_app().await;
    launch_agents(&app, &token, 1).await;
    // Fails twice, then succeeds: a counter file outside the fresh working directories.
    let dir = tempdir();
    let counter = dir.join("n");
    let cmd = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ]",
        c = counter.display()
    );
    let id = enqueue(&app, &token, json!({"command": cmd, "retries": 2})).await;
    let done = job_in(&app, &token, id, &["succeeded", "failed"], 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let states: Vec<&str> = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "failed", "succeeded"]);

    // Without retries a failure is final, with its exit status; retry makes a new attempt.
    let id = enqueue(&app, &token, json!({"command": "exit 7"})).await;
    let failed = job_in(&app, &token, id, &["failed"], 30).await;
    assert_eq!(failed["exit_code"], 7);
    let res = post(&app, &token, &format!("/api/v1/jobs/{id}/retry"), json!({})).await;
    assert_eq!(res.status(), 202);
    eventually(30, "the retried job's second attempt fails too", || async {
        let j = job(&app, &token, id).await;
        (j["state"] == "failed" && j["attempts"].as_array().unwrap().len() == 2).then_some(())
    })
    .await;

    // Cancel a running job: the agent stops it, and its late result does not count.
    let id = enqueue(&app, &token, json!({"command": "sleep 30"})).await;
    job_in(&app, &token, id, &["running"], 30).await;
    let res = post(
        &app,
        &token,
        &format!("/api/v1/jobs/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let cancelled = job(&app, &token, id).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["attempts"][0]["state"], "cancelled");
    // The agent is free again soon: a new job runs.
    let next = enqueue(&app, &token, json!({"command": "true"})).await;
    job_in(&app, &token, next, &["succeeded"], 30).await;
    // Cancelling a finished job is refused; retrying a running or succeeded one too.
    let res = post(
        &app,
        &token,
        &format!("/api/v1/jobs/{next}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let res = post(
        &app,
        &token,
        &format!("/api/v1/jobs/{next}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    stop_fleet(&app).await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn bad_enqueues_are_refused_with_reasons_and_add_nothing() {
    let (app, token) = queue_app().await;
    for (body, needle) in [
        (json!({}), "command is required"),
        (json!({"command": "  "}), "command is required"),
        (json!({"command": "true", "timeout_s": 0}), "timeout_s"),
        (
            json!({"command": "true", "timeout_s": 999999999}),
            "timeout_s",
        ),
        (json!({"command": "true", "retries": -1}), "retries"),
        (
            json!({"command": "true", "labels": {"bad key!": "x"}}),
            "label key",
        ),
        (json!({"command": "x".repeat(70_000)}), "bytes"),
    ] {
        let res = post(&app, &token, "/api/v1/jobs", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{body} -> {err}"
        );
    }
    let res = post(&app, &token, "/api/v1/jobs", json!("not an object")).await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    // A viewer cannot enqueue.
    app.create_user("watcher", kiln::domain::Role::Viewer).await;
    let viewer = app.token_for("watcher").await;
    let res = post(&app, &viewer, "/api/v1/jobs", json!({"command": "true"})).await;
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
}

/// A hand-made agent (the protocol spoken directly) for the refusals the real agent never
/// provokes: bad tokens, other protocol versions, someone else's job, oversized output,
/// superseded results.
async fn register(
    app: &TestApp,
    server: &str,
    enrollment: &str,
    protocol: u32,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/agent/v1/register"))
        .json(
            &json!({"protocol": protocol, "enrollment_token": enrollment, "instance_id": server,
                      "version": "test", "slots": 1}),
        )
        .send()
        .await
        .unwrap()
}

async fn agent_call(
    app: &TestApp,
    agent_token: &str,
    path: &str,
    body: Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url(&format!("/agent/v1/{path}")))
        .bearer_auth(agent_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn fake_server(app: &TestApp, id: &str) {
    sqlx::query(
        "INSERT INTO servers (id, image_id, state, launched_by) VALUES ($1, 'ami-test', 'running', 'test')",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn enrollment(app: &TestApp) -> String {
    let secret = kiln::auth::token::Secret::generate(kiln::auth::token::ENROLLMENT_PREFIX);
    let mut conn = app.pool.acquire().await.unwrap();
    kiln::db::tokens::create_enrollment(&mut conn, &secret.hash(), None, 600)
        .await
        .unwrap();
    secret.expose().to_owned()
}

#[tokio::test]
async fn the_agent_protocol_refuses_bad_calls_and_changes_nothing() {
    let (app, token) = queue_app().await;
    fake_server(&app, "i-local-0000000000000000a").await;
    fake_server(&app, "i-local-0000000000000000b").await;
    let enroll = enrollment(&app).await;

    // Enrollment: a wrong token, an unknown server, another protocol.
    let res = register(&app, "i-local-0000000000000000a", "kiln_enroll_wrong", 1).await;
    assert_eq!(res.status(), 401);
    let res = register(&app, "i-local-00000000000000999", &enroll, 1).await;
    assert_eq!(res.status(), 404);
    let res = register(&app, "i-local-0000000000000000a", &enroll, 99).await;
    assert_eq!(res.status(), 426);
    let msg: Value = res.json().await.unwrap();
    assert!(
        msg["error"].as_str().unwrap().contains("protocol 1"),
        "{msg}"
    );
    assert_eq!(app.count("SELECT count(*) FROM agents").await, 0);

    let a: Value = register(&app, "i-local-0000000000000000a", &enroll, 1)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = register(&app, "i-local-0000000000000000b", &enroll, 1)
        .await
        .json()
        .await
        .unwrap();
    let (ta, tb) = (
        a["agent_token"].as_str().unwrap(),
        b["agent_token"].as_str().unwrap(),
    );

    // Agent calls need an agent token: none, a user's API token, a made-up one.
    let res = reqwest::Client::new()
        .post(app.url("/agent/v1/heartbeat"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        agent_call(&app, &token, "heartbeat", json!({}))
            .await
            .status(),
        401
    );
    assert_eq!(
        agent_call(&app, "kiln_agent_nope", "claim", json!({"slots": 1}))
            .await
            .status(),
        401
    );
    // Malformed JSON and bad slot counts.
    let res = reqwest::Client::new()
        .post(app.url("/agent/v1/claim"))
        .bearer_auth(ta)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        agent_call(&app, ta, "claim", json!({"slots": 0}))
            .await
            .status(),
        400
    );

    // A claims the job; B may not log to it or finish it.
    let id = enqueue(&app, &token, json!({"command": "true"})).await;
    let claimed: Value = agent_call(&app, ta, "claim", json!({"slots": 1, "wait_s": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(claimed["jobs"][0]["job_id"], id);
    let attempt = claimed["jobs"][0]["attempt"].as_i64().unwrap();
    let log = json!({"job_id": id, "attempt": attempt, "chunks": [{"seq": 0, "stream": "stdout", "data": "hi\n"}]});
    assert_eq!(agent_call(&app, tb, "log", log.clone()).await.status(), 403);
    let finish = json!({"job_id": id, "attempt": attempt, "ending": "exited", "exit_code": 0});
    assert_eq!(
        agent_call(&app, tb, "finish", finish.clone())
            .await
            .status(),
        403
    );
    // Unknown job, oversized chunk.
    let unknown = json!({"job_id": 999999, "attempt": 1, "ending": "exited", "exit_code": 0});
    assert_eq!(agent_call(&app, ta, "finish", unknown).await.status(), 404);
    let big = json!({"job_id": id, "attempt": attempt, "chunks": [{"seq": 1, "stream": "stdout", "data": "x".repeat(70_000)}]});
    assert_eq!(agent_call(&app, ta, "log", big).await.status(), 413);
    let no_code = json!({"job_id": id, "attempt": attempt, "ending": "exited"});
    assert_eq!(agent_call(&app, ta, "finish", no_code).await.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM job_output").await, 0);
    assert_eq!(job(&app, &token, id).await["state"], "running");

    // A's own log and result count; a resent chunk is stored once, a resent finish is a no-op.
    assert_eq!(agent_call(&app, ta, "log", log.clone()).await.status(), 204);
    assert_eq!(agent_call(&app, ta, "log", log).await.status(), 204);
    assert_eq!(app.count("SELECT count(*) FROM job_output").await, 1);
    assert_eq!(
        agent_call(&app, ta, "finish", finish.clone())
            .await
            .status(),
        200
    );
    assert_eq!(agent_call(&app, ta, "finish", finish).await.status(), 200);
    let done = job(&app, &token, id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);

    // A superseded attempt's result is refused (409) and changes nothing: B claims a job,
    // its lease runs out (no heartbeats), the job is requeued and A takes it.
    let id = enqueue(&app, &token, json!({"command": "true"})).await;
    let claimed: Value = agent_call(&app, tb, "claim", json!({"slots": 1, "wait_s": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(claimed["jobs"][0]["job_id"], id);
    job_in(&app, &token, id, &["queued"], 30).await;
    let again: Value = agent_call(&app, ta, "claim", json!({"slots": 1, "wait_s": 5}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["jobs"][0]["attempt"], 2);
    let late = json!({"job_id": id, "attempt": 1, "ending": "exited", "exit_code": 1});
    let res = agent_call(&app, tb, "finish", late).await;
    assert_eq!(res.status(), 409);
    let j = job(&app, &token, id).await;
    assert_eq!(j["state"], "running");
    assert_eq!(j["attempts"][0]["state"], "lost");
    // B's heartbeat is told to stop the attempt it still believes it runs.
    let hb: Value = agent_call(
        &app,
        tb,
        "heartbeat",
        json!({"running": [{"job_id": id, "attempt": 1}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(hb["stop"][0]["job_id"], id);

    // A disabled server's claim returns no job, at once.
    post(
        &app,
        &token,
        "/api/v1/servers/i-local-0000000000000000b/disable",
        json!({}),
    )
    .await;
    enqueue(&app, &token, json!({"command": "true"})).await;
    let started = std::time::Instant::now();
    let none: Value = agent_call(&app, tb, "claim", json!({"slots": 1, "wait_s": 20}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(none["mode"], "disabled");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a disabled server's claim does not wait"
    );
}

#[tokio::test]
async fn a_job_lost_three_times_fails() {
    let (app, token) = queue_app().await;
    fake_server(&app, "i-local-0000000000000000c").await;
    let enroll = enrollment(&app).await;
    let reg: Value = register(&app, "i-local-0000000000000000c", &enroll, 1)
        .await
        .json()
        .await
        .unwrap();
    let t = reg["agent_token"].as_str().unwrap();
    let id = enqueue(&app, &token, json!({"command": "true", "retries": 5})).await;
    for n in 1..=3 {
        let c: Value = agent_call(&app, t, "claim", json!({"slots": 1, "wait_s": 10}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(c["jobs"][0]["attempt"], n);
        // Never heartbeat: the lease runs out.
        job_in(&app, &token, id, &["queued", "failed"], 30).await;
    }
    let j = job(&app, &token, id).await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["reason"].as_str().unwrap().contains("lost 3 times"),
        "{j}"
    );
}

#[tokio::test]
async fn a_graceful_terminate_waits_for_the_running_job_and_a_drain_timeout_requeues_it() {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.drain_timeout = 600;
    })
    .await;
    let token = app.token_for("admin").await;
    launch_agents(&app, &token, 2).await;
    let id = enqueue(&app, &token, json!({"command": "sleep 2; echo drained"})).await;
    let running = job_in(&app, &token, id, &["running"], 30).await;
    let server = running["server_id"].as_str().unwrap().to_owned();
    let res = post(
        &app,
        &token,
        &format!("/api/v1/servers/{server}/terminate"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let done = job_in(&app, &token, id, &["succeeded", "failed"], 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["attempts"].as_array().unwrap().len(),
        1,
        "it finished where it ran"
    );
    eventually(30, "the drained server is terminated", || async {
        let s = get_json(&app, &token, &format!("/api/v1/servers/{server}")).await;
        (s["state"] == "terminated").then_some(())
    })
    .await;
    stop_fleet(&app).await;
}

#[tokio::test]
async fn past_the_drain_timeout_the_server_goes_and_its_job_runs_elsewhere() {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.drain_timeout = 1;
    })
    .await;
    let token = app.token_for("admin").await;
    launch_agents(&app, &token, 2).await;
    // Long on its first attempt only.
    let id = enqueue(
        &app,
        &token,
        json!({"command": "if [ \"$KILN_JOB_ATTEMPT\" = 1 ]; then sleep 60; fi; echo second"}),
    )
    .await;
    let running = job_in(&app, &token, id, &["running"], 30).await;
    let server = running["server_id"].as_str().unwrap().to_owned();
    let res = post(
        &app,
        &token,
        &format!("/api/v1/servers/{server}/terminate"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let done = job_in(&app, &token, id, &["succeeded", "failed"], 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["state"], "lost");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("drain timeout"),
        "{done}"
    );
    assert_ne!(attempts[1]["server_id"], server.as_str());
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_console_restart_mid_run_loses_no_job() {
    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("r-{}", uuid::Uuid::new_v4().simple());
    let port = free_port();
    let mut console = start_console(&db, port, &fleet, &[]).await;
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The base image becomes current once the fresh console's adopt task has run.
    let image: String = eventually(30, "the base image is current", || async {
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    let res = http
        .post(format!("{base}/api/v1/servers"))
        .bearer_auth(&token)
        .json(&json!({"image_id": image, "count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(60, "two agents register", || async {
        (count("SELECT count(*) FROM agents").await == 2).then_some(())
    })
    .await;
    for _ in 0..30 {
        let res = http
            .post(format!("{base}/api/v1/jobs"))
            .bearer_auth(&token)
            .json(&json!({"command": "sleep 0.3; echo $KILN_JOB_ID"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    eventually(60, "some jobs succeed", || async {
        (count("SELECT count(*) FROM jobs WHERE state = 'succeeded'").await >= 4).then_some(())
    })
    .await;
    // kill -9 the console mid-run; the agents carry on and wait for it.
    console.kill().await.unwrap();
    let mut console = start_console(&db, port, &fleet, &[]).await;
    eventually(120, "every job finishes", || async {
        (count("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')").await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE state = 'succeeded'").await,
        30
    );
    // Each counted once: exactly one succeeded attempt per job.
    assert_eq!(
        count("SELECT count(*) FROM job_attempts WHERE state = 'succeeded'").await,
        30
    );
    // The local servers stop before their console does.
    drop(agents);
    crate::cli::sigterm_and_wait(&mut console).await;
}

/// An agent that dies and is started again (as systemd does) after its launch's enrollment
/// token has expired carries on as the same agent, with the credentials it kept.
#[tokio::test]
async fn a_restarted_agent_carries_on_with_its_saved_credentials_after_enrollment_expired() {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        // The local provider would see the dead process and end the server: not this test.
        s.reconcile_interval = 3600;
    })
    .await;
    let token = app.token_for("admin").await;
    let server = launch_agents(&app, &token, 1).await.remove(0);
    let pid = agent_pid(&app, &server).await;
    let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let registered_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT registered_at FROM agents WHERE server_id = $1")
            .bind(&server)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // SAFETY: kill(2) on a process this test's console started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    sqlx::query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();

    // The same command line again, as a unit's ExecStart would run it.
    let mut again = tokio::process::Command::new(&cmdline[0])
        .args(&cmdline[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = enqueue(&app, &token, json!({"command": "echo carried on"})).await;
    let done = job_in(&app, &token, id, &["succeeded", "failed"], 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["server_id"], server.as_str());
    let still: time::OffsetDateTime =
        sqlx::query_scalar("SELECT registered_at FROM agents WHERE server_id = $1")
            .bind(&server)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(still, registered_at, "resumed, not registered again");
    again.kill().await.unwrap();
    let mut said = String::new();
    use tokio::io::AsyncReadExt;
    again
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .await
        .unwrap();
    assert!(
        said.contains("agent resumed with its saved credentials"),
        "{said}"
    );
    stop_fleet(&app).await;
}

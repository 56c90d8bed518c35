//! Real `kiln serve` processes on one database: a console killed (SIGKILL) in the middle of a
//! launch does not lose it, and the restarted one finishes it without launching twice; two
//! consoles side by side run every task once. EC2 is moto behind the fault proxy, which
//! holds the first RunInstances answer so that the kill lands mid-call, deterministically.

use kiln::cloud::{ServerFilter, describe_all};

use crate::moto::{Fault, FaultProxy, provider};

struct Console {
    child: tokio::process::Child,
    base: String,
}

async fn start(db: &str, endpoint: &str, fleet: &str) -> Console {
    let mut child = crate::cli::serve_aws(
        db,
        endpoint,
        fleet,
        &[
            ("KILN_TASK_LEASE", "3"),
            ("KILN_TASK_POLL", "1"),
            ("KILN_RECONCILE_INTERVAL", "3600"),
        ],
    );
    let port = crate::cli::listening_port(&mut child).await;
    Console {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    crate::helpers::eventually(90, what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

async fn get_json(url: String, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_console_killed_mid_launch_loses_nothing_and_two_consoles_run_each_task_once() {
    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let proxy = FaultProxy::start().await;
    proxy.inject("RunInstances", Fault::Delay(120_000), 1);
    let mut a = start(&db, &proxy.endpoint, &fleet).await;
    let token = crate::cli::admin_token(&db).await;
    let api = reqwest::Client::new();
    let added = api
        .post(format!("{}/api/v1/images", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"id": "ami-1e749f67", "name": "ubuntu"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let image_url = format!("{}/api/v1/images/ami-1e749f67", a.base);
    until("the AMI to be adopted", || {
        let url = image_url.clone();
        let token = token.clone();
        async move { get_json(url, &token).await["state"] == "available" }
    })
    .await;

    let accepted: serde_json::Value = api
        .post(format!("{}/api/v1/servers", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"image_id": "ami-1e749f67", "count": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let launch_id = accepted["id"].as_i64().unwrap();
    until("RunInstances to reach EC2", || {
        let proxy = proxy.clone();
        async move { proxy.forwarded("RunInstances") == 1 }
    })
    .await;

    // EC2 has launched; the console dies before it hears so.
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let mut b = start(&db, &proxy.endpoint, &fleet).await;
    let mut c = start(&db, &proxy.endpoint, &fleet).await;

    let launch_url = format!("{}/api/v1/launches/{launch_id}", b.base);
    until(
        "the interrupted launch to finish on the restarted console",
        || {
            let url = launch_url.clone();
            let token = token.clone();
            async move { get_json(url, &token).await["state"] == "succeeded" }
        },
    )
    .await;
    let launch = get_json(launch_url.clone(), &token).await;
    assert_eq!(launch["server_ids"].as_array().unwrap().len(), 2);
    assert_eq!(
        proxy.forwarded("RunInstances"),
        1,
        "the retry found the launch by its token"
    );
    let (ec2, _) = provider(proxy.endpoint.clone(), &fleet, 3).await;
    assert_eq!(
        describe_all(&ec2, &ServerFilter::fleet(&fleet))
            .await
            .unwrap()
            .len(),
        2,
        "one set of servers, not two"
    );

    // Two consoles side by side: three more launches, each run once, wherever.
    let mut ids = Vec::new();
    for base in [&b.base, &c.base, &b.base] {
        let accepted: serde_json::Value = api
            .post(format!("{base}/api/v1/servers"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"image_id": "ami-1e749f67", "count": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(accepted["id"].as_i64().unwrap());
    }
    for id in &ids {
        let url = format!("{}/api/v1/launches/{id}", c.base);
        until("each launch to finish", || {
            let url = url.clone();
            let token = token.clone();
            async move { get_json(url, &token).await["state"] == "succeeded" }
        })
        .await;
    }
    assert_eq!(proxy.forwarded("RunInstances"), 4);
    assert_eq!(
        describe_all(&ec2, &ServerFilter::fleet(&fleet))
            .await
            .unwrap()
            .len(),
        5
    );
    let pool = kiln::db::connect(&db).await.unwrap();
    let (launch_tasks, reruns): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM tasks WHERE kind = 'launch_servers' AND payload->>'launch_id' <> $1",
    )
    .bind(launch_id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((launch_tasks, reruns), (3, 0), "each task ran once");
    let interrupted: i32 = sqlx::query_scalar(
        "SELECT attempts FROM tasks WHERE kind = 'launch_servers' AND payload->>'launch_id' = $1",
    )
    .bind(launch_id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        interrupted, 2,
        "the killed console's attempt, then the restarted one's"
    );
    assert!(crate::cli::sigterm_and_wait(&mut b.child).await.success());
    assert!(crate::cli::sigterm_and_wait(&mut c.child).await.success());
}

/// Two real consoles on one database: a session made by logging in on one acts on the other
/// (a form posted with its CSRF token, by HTTP and then in Chromium), and an agent
/// registered through one heartbeats through the other. (The servers are moto's.)
#[tokio::test]
async fn a_session_and_an_agent_move_between_consoles() {
    let db = crate::helpers::fresh_database_url();
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let endpoint = format!("http://127.0.0.1:{}", crate::moto::moto_port());
    let mut a = start(&db, &endpoint, &fleet).await;
    let mut b = start(&db, &endpoint, &fleet).await;
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env("DATABASE_URL", &db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(
        &["user", "add", "dana", "--role", "admin", "--password-stdin"],
        Some("dana-password-1234\n"),
    );

    // Log in on A; the same cookie posts a form on B.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = browser
        .get(format!("{}/login", a.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let res = browser
        .post(format!("{}/login", a.base))
        .form(&[
            ("csrf_token", crate::helpers::csrf_from(&login).as_str()),
            ("username", "dana"),
            ("password", "dana-password-1234"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "logged in on A");
    let rollouts = browser
        .get(format!("{}/rollouts", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(rollouts.status(), 200, "the session is known to B");
    let csrf = crate::helpers::csrf_from(&rollouts.text().await.unwrap());
    let res = browser
        .post(format!("{}/freezes", b.base))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("reason", "made on B by a session from A"),
            ("from", "2030-01-01 00:00"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "B acted on the session from A");
    let token = crate::cli::admin_token(&db).await;
    let freezes = get_json(format!("{}/api/v1/freezes", a.base), &token).await;
    assert_eq!(
        freezes[0]["reason"], "made on B by a session from A",
        "{freezes}"
    );
    assert_eq!(freezes[0]["created_by"], "dana", "{freezes}");

    // The same in a real browser: log in on A, act on B, log out on B.
    let out = crate::helpers::browser_script(
        "two_consoles_check.py",
        &a.base,
        "dana",
        "dana-password-1234",
        &[&b.base],
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}");
    assert!(
        out.status.success(),
        "the browser check failed:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A server at the provider, launched through A; its agent registers through A and
    // heartbeats through B.
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/api/v1/images", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"id": "ami-1e749f67", "name": "ubuntu"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let image: String = until_json(&http, &format!("{}/api/v1/images", a.base), &token, |v| {
        v.as_array()?
            .iter()
            .find(|i| i["state"] == "available")
            .and_then(|i| i["id"].as_str().map(str::to_owned))
    })
    .await;
    let res = http
        .post(format!("{}/api/v1/servers", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"image_id": image, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let server: String = until_json(&http, &format!("{}/api/v1/servers", a.base), &token, |v| {
        v.as_array()?
            .first()
            .and_then(|s| s["id"].as_str().map(str::to_owned))
    })
    .await;
    let enrollment = run(&["token", "create", "--enrollment"], None)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let registered: serde_json::Value = http
        .post(format!("{}/agent/v1/register", a.base))
        .json(
            &serde_json::json!({"protocol": 1, "enrollment_token": enrollment,
                                   "instance_id": server, "version": "test", "slots": 1}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_token = registered["agent_token"]
        .as_str()
        .unwrap_or_else(|| panic!("registered on A: {registered}"))
        .to_owned();
    // The agent's heartbeat, sent to B.
    let beat_on_b = |body: serde_json::Value| {
        http.post(format!("{}/agent/v1/heartbeat", b.base))
            .bearer_auth(&agent_token)
            .json(&body)
            .send()
    };
    let res = beat_on_b(serde_json::json!({"running": []})).await.unwrap();
    assert_eq!(res.status(), 200, "B knows the agent A registered");
    let reply: serde_json::Value = res.json().await.unwrap();
    assert_eq!(reply["mode"], "enabled", "{reply}");

    // The heartbeat B answered reaches the database with B's next flush (at most 1 s).
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let figures = |pool: sqlx::PgPool, server: String| async move {
        sqlx::query_scalar::<_, Option<f64>>("SELECT cpu_percent FROM agents WHERE server_id = $1")
            .bind(server)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(figures(pool.clone(), server.clone()).await, None);
    let res = beat_on_b(serde_json::json!({"running": [], "metrics": {"cpu_percent": 42.5}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    crate::helpers::eventually(10, "B's flush writes the heartbeat", || {
        let (pool, server) = (pool.clone(), server.clone());
        async move { (figures(pool, server).await == Some(42.5)).then_some(()) }
    })
    .await;

    // Disabled through A: B's answers to the agent say so within the token cache's bound
    // (its flush brings the server's standing with the token's verification).
    let res = http
        .post(format!("{}/api/v1/servers/{server}/disable", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "disable: {}", res.status());
    let disabled = std::time::Instant::now();
    crate::helpers::eventually(30, "B tells the agent its server is disabled", || async {
        let reply: serde_json::Value = beat_on_b(serde_json::json!({"running": []}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (reply["mode"] == "disabled").then_some(())
    })
    .await;
    // The bound is 5 s by construction (an entry unverified for 5 s is looked up again),
    // one flush interval (1 s) while flushes succeed; the margin is the polling's.
    assert!(
        disabled.elapsed() < std::time::Duration::from_millis(5500),
        "B said 'disabled' {:?} after the disable",
        disabled.elapsed()
    );

    // The agent registers again through A (a restarted agent process): B, which remembered
    // the old token, refuses it within the cache's bound of 5 s.
    let again = run(&["token", "create", "--enrollment"], None)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{}/agent/v1/register", a.base))
        .json(
            &serde_json::json!({"protocol": 1, "enrollment_token": again,
                                   "instance_id": server, "version": "test", "slots": 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let replaced = std::time::Instant::now();
    crate::helpers::eventually(30, "B refuses the replaced token", || async {
        let res = beat_on_b(serde_json::json!({"running": []})).await.unwrap();
        (res.status() == 401).then_some(())
    })
    .await;
    println!(
        "B refused the replaced token {:.1} s after the new registration",
        replaced.elapsed().as_secs_f64()
    );
    assert!(
        replaced.elapsed() < std::time::Duration::from_millis(5500),
        "B accepted the replaced token for {:?} (the bound is 5 s)",
        replaced.elapsed()
    );
    crate::cli::sigterm_and_wait(&mut a.child).await;
    crate::cli::sigterm_and_wait(&mut b.child).await;
}

/// Polls `url` until `pick` finds something in its JSON.
async fn until_json<T>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    pick: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    crate::helpers::eventually(60, url, || async {
        let v: serde_json::Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        pick(&v)
    })
    .await
}

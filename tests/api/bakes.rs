//! The bake pipeline end to end with the local provider: a real builder (a `kiln agent`
//! process) runs the recipe's setup and tests as pinned jobs; a passing bake makes exactly
//! one tagged image (and releases it when asked), a failing one leaves no launchable image
//! and no builder; cancel; the GitHub webhook's signatures, branches and redeliveries.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{TestApp, spawn_app_with};
use crate::helpers::{eventually, get_json, post, stop_fleet};

async fn bake_app(configure: impl FnOnce(&mut kiln::config::Settings)) -> (TestApp, String) {
    let app = spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.reconcile_interval = 2;
        s.task_poll = 1;
        s.health_timeout = 60;
        configure(s);
    })
    .await;
    let token = app.token_for("admin").await;
    (app, token)
}

async fn base_image(app: &TestApp) -> String {
    eventually(30, "the base image is current", || async {
        sqlx::query_scalar::<_, String>("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await
}

async fn recipe(app: &TestApp, token: &str, body: Value) -> i64 {
    let res = post(app, token, "/api/v1/recipes", body).await;
    let status = res.status();
    let recipe: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{recipe}");
    recipe["id"].as_i64().unwrap()
}

async fn bake(app: &TestApp, token: &str, recipe_id: i64) -> i64 {
    let res = post(
        app,
        token,
        "/api/v1/bakes",
        json!({ "recipe_id": recipe_id }),
    )
    .await;
    let status = res.status();
    let bake: Value = res.json().await.unwrap();
    assert_eq!(status, 202, "{bake}");
    assert_eq!(bake["state"], "running");
    bake["id"].as_i64().unwrap()
}

async fn bake_ends(app: &TestApp, token: &str, id: i64, secs: u64) -> Value {
    eventually(secs, &format!("bake {id} ends"), || async {
        let b = get_json(app, token, &format!("/api/v1/bakes/{id}")).await;
        (b["state"] != "running").then_some(b)
    })
    .await
}

async fn builders_gone(app: &TestApp) {
    eventually(30, "no builder is left running", || async {
        let live = app
            .count(
                "SELECT count(*) FROM servers WHERE purpose = 'builder' AND state <> 'terminated'",
            )
            .await;
        let local: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM local_instances i JOIN servers s ON s.id = i.id
             WHERE s.purpose = 'builder' AND i.state <> 'terminated'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (live == 0 && local == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_passing_bake_makes_one_tagged_image_and_releases_it() {
    let (app, token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    let recipe_id = recipe(
        &app,
        &token,
        json!({
            "name": "ci-worker", "base_image_id": base,
            "setup_script": "echo installing toolchain; echo setup-done > marker",
            "test_command": "echo running vm-tester; test \"$(uname)\" = Linux",
            "auto_release": true,
        }),
    )
    .await;
    let id = bake(&app, &token, recipe_id).await;
    let done = bake_ends(&app, &token, id, 120).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let steps: Vec<(String, String)> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "launch",
            "setup",
            "test",
            "create_image",
            "wait_image",
            "done"
        ]
    );
    assert!(
        steps.iter().all(|(_, state)| state == "succeeded"),
        "{steps:?}"
    );

    // Exactly one image, available, with its version and the bake's tags at the provider.
    let image = done["image_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.count("SELECT count(*) FROM images WHERE bake_id IS NOT NULL")
            .await,
        1
    );
    let (state, version, name): (String, String, String) =
        sqlx::query_as("SELECT state, version, name FROM images WHERE id = $1")
            .bind(&image)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), version.as_str(), name.as_str()),
        ("available", "1", "ci-worker")
    );
    let tags: Value = sqlx::query_scalar("SELECT tags FROM local_images WHERE id = $1")
        .bind(&image)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tags["kiln:bake"], id.to_string());
    assert_eq!(tags["kiln:recipe"], "ci-worker");
    assert_eq!(tags["kiln:version"], "1");
    assert_eq!(
        app.count("SELECT count(*) FROM local_images WHERE tags->>'kiln:bake' IS NOT NULL")
            .await,
        1,
        "one image at the provider"
    );

    // The setup and the tests ran on the builder only, their output kept as the bake's log.
    let builder = done["builder_id"].as_str().unwrap().to_owned();
    let jobs: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT state, server_id, pinned_server_id FROM jobs WHERE labels->>'bake' = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(jobs.len(), 2);
    for (state, server, pinned) in &jobs {
        assert_eq!(state, "succeeded");
        assert_eq!(server.as_deref(), Some(builder.as_str()));
        assert_eq!(pinned.as_deref(), Some(builder.as_str()));
    }
    let log: String = sqlx::query_scalar(
        "SELECT string_agg(o.data, '' ORDER BY o.job_id, o.seq) FROM job_output o JOIN jobs j ON j.id = o.job_id
         WHERE j.labels->>'bake' = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        log.contains("installing toolchain") && log.contains("running vm-tester"),
        "{log}"
    );

    // The builder is thrown away; the image became current through a release.
    builders_gone(&app).await;
    let current = base_image(&app).await;
    assert_eq!(current, image, "auto-release made the baked image current");
    let rollout: String = sqlx::query_scalar("SELECT kind FROM rollouts WHERE to_image_id = $1")
        .bind(&image)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rollout, "release");

    // The image's page leads to its bake (log and test report).
    let admin = app.admin().await;
    let page = app
        .get(&admin, &format!("/images/{image}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("href=\"/bakes/{id}\"")),
        "the image links its bake"
    );

    // The Metrics page's charts draw the bake as a marker.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let markers: Value = app
        .get(
            &admin,
            &format!("/dashboards/markers?from={}&to={}", now - 3600, now + 1),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        markers
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["stream"] == "bakes" && m["title"] == format!("bake #{id} ci-worker v1")),
        "{markers}"
    );

    // A second bake of the same recipe gets the next version.
    let second = bake(&app, &token, recipe_id).await;
    let b = get_json(&app, &token, &format!("/api/v1/bakes/{second}")).await;
    assert_eq!(b["version"], 2);
    bake_ends(&app, &token, second, 120).await;
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_failing_test_leaves_no_launchable_image_and_no_builder() {
    let (app, token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    let recipe_id = recipe(
        &app,
        &token,
        json!({
            "name": "broken", "base_image_id": base,
            "setup_script": "echo ok", "test_command": "echo 3 tests failed >&2; exit 3",
            "auto_release": true,
        }),
    )
    .await;
    let id = bake(&app, &token, recipe_id).await;
    let done = bake_ends(&app, &token, id, 120).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["step"], "test");
    let failure = done["failure"].as_str().unwrap();
    assert!(
        failure.contains("integration tests failed") && failure.contains("exit code 3"),
        "{failure}"
    );
    assert!(done["image_id"].is_null());
    assert_eq!(
        app.count("SELECT count(*) FROM images WHERE bake_id IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM local_images WHERE tags->>'kiln:bake' IS NOT NULL")
            .await,
        0
    );
    builders_gone(&app).await;
    assert_eq!(base_image(&app).await, base, "nothing was released");
    stop_fleet(&app).await;
}

#[tokio::test]
async fn a_cancelled_bake_stops_its_job_and_its_builder() {
    let (app, token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    let recipe_id = recipe(
        &app,
        &token,
        json!({"name": "slow", "base_image_id": base, "setup_script": "sleep 600", "test_command": "true"}),
    )
    .await;
    let id = bake(&app, &token, recipe_id).await;
    eventually(60, "the setup runs", || async {
        let b = get_json(&app, &token, &format!("/api/v1/bakes/{id}")).await;
        (b["step"] == "setup").then_some(())
    })
    .await;
    let admin = app.admin().await;
    let overview = app.get(&admin, "/").await.text().await.unwrap();
    assert!(
        overview.contains(&format!("href=\"/bakes/{id}\">#{id}</a> slow v1")),
        "the Overview shows the bake in progress"
    );
    let res = post(
        &app,
        &token,
        &format!("/api/v1/bakes/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["state"], "cancelled");
    builders_gone(&app).await;
    let setup: String = sqlx::query_scalar(
        "SELECT state FROM jobs WHERE labels->>'bake' = $1 AND labels->>'step' = 'setup'",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(setup, "cancelled");
    // A second cancel is a no-op; the audit names who cancelled.
    let res = post(
        &app,
        &token,
        &format!("/api/v1/bakes/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "bake.cancel" && a.actor == "admin")
    );
    stop_fleet(&app).await;
}

#[tokio::test]
async fn bad_recipes_and_bakes_are_refused_and_change_nothing() {
    let (app, token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    for (body, status, says) in [
        (
            json!({"name": "Bad Name", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
            400,
            "Recipe name",
        ),
        (
            json!({"name": "a", "base_image_id": base, "test_command": "y"}),
            400,
            "setup script",
        ),
        (
            json!({"name": "a", "base_image_id": base, "setup_script": "x"}),
            400,
            "test command",
        ),
        (
            json!({"name": "a", "base_image_id": "ami-local-nope", "setup_script": "x", "test_command": "y"}),
            400,
            "no image",
        ),
        (
            json!({"name": "a", "base_image_id": base, "setup_script": "x", "test_command": "y", "instance_type": "z9.huge"}),
            400,
            "Instance type",
        ),
        (
            json!({"name": "a", "base_image_id": base, "setup_script": "x", "test_command": "y", "test_timeout_s": 0}),
            400,
            "test_timeout_s",
        ),
        (
            json!({"name": "a", "base_image_id": base, "git_url": "ftp://x", "setup_path": "s.sh", "test_command": "y"}),
            400,
            "git repository URL",
        ),
        (
            json!({"name": "a", "base_image_id": base, "git_url": "https://x/r.git", "setup_path": "../s.sh", "test_command": "y"}),
            400,
            "relative",
        ),
    ] {
        let res = post(&app, &token, "/api/v1/recipes", body.clone()).await;
        assert_eq!(res.status(), status, "{body}");
        let why: Value = res.json().await.unwrap();
        assert!(
            why["error"].as_str().unwrap().contains(says),
            "{why} for {body}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM recipes").await, 0);
    recipe(
        &app,
        &token,
        json!({"name": "a", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
    )
    .await;
    let res = post(
        &app,
        &token,
        "/api/v1/recipes",
        json!({"name": "a", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
    )
    .await;
    assert_eq!(res.status(), 409);

    let second = recipe(
        &app,
        &token,
        json!({"name": "b", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
    )
    .await;
    let res = post(
        &app,
        &token,
        &format!("/api/v1/recipes/{second}"),
        json!({"name": "a", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
    )
    .await;
    assert_eq!(res.status(), 409, "renaming onto another recipe's name");
    let res = post(
        &app,
        &token,
        &format!("/api/v1/recipes/{second}"),
        json!({"name": "b", "base_image_id": base, "setup_script": "x2", "test_command": "y"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["setup_script"], "x2");
    let res = post(
        &app,
        &token,
        "/api/v1/recipes/999",
        json!({"name": "c", "base_image_id": base, "setup_script": "x", "test_command": "y"}),
    )
    .await;
    assert_eq!(res.status(), 404);

    let res = post(&app, &token, "/api/v1/bakes", json!({"recipe_id": 999})).await;
    assert_eq!(res.status(), 404);
    let res = post(&app, &token, "/api/v1/bakes", json!({"recipe": 1})).await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM bakes").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM launches").await, 0);

    // A viewer may read, not bake.
    app.create_user("watcher", kiln::domain::Role::Viewer).await;
    let viewer = app.token_for("watcher").await;
    let res = post(&app, &viewer, "/api/v1/bakes", json!({"recipe_id": 1})).await;
    assert_eq!(res.status(), 403);
    let res = post(&app, &viewer, "/api/v1/recipes", json!({})).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        get_json(&app, &viewer, "/api/v1/recipes")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(app.count("SELECT count(*) FROM bakes").await, 0);
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(app: &TestApp, secret: &str, delivery: &str, body: &Value) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(app.url("/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(secret, &bytes))
        .header("Content-Type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_github_webhook_bakes_pushes_to_its_branch_once_per_delivery() {
    let secret = "s3cret-for-tests";
    let (app, token) = bake_app(|s| {
        s.webhook_secret = Some(secret.into());
        s.webhook_branch = "main".into();
        s.webhook_recipe = Some("hooked".into());
    })
    .await;
    let base = base_image(&app).await;
    recipe(
        &app,
        &token,
        json!({"name": "hooked", "base_image_id": base, "setup_script": "true", "test_command": "true"}),
    )
    .await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let push = json!({"ref": "refs/heads/main", "after": sha, "deleted": false});

    // Bad or missing signatures: 401, nothing baked.
    let bytes = serde_json::to_vec(&push).unwrap();
    for signature in [
        None,
        Some("sha256=00".to_owned()),
        Some(sign("wrong", &bytes)),
    ] {
        let mut req = reqwest::Client::new()
            .post(app.url("/hooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "d-bad")
            .body(bytes.clone());
        if let Some(s) = signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    // A push of many commits is larger than actix's default body limit: still read.
    let commits: Vec<Value> = (0..3000)
        .map(|i| json!({"id": format!("{i:040x}"), "message": "x".repeat(100)}))
        .collect();
    let big = json!({"ref": "refs/heads/feature", "after": sha, "commits": commits});
    assert!(serde_json::to_vec(&big).unwrap().len() > 256 << 10);
    assert_eq!(deliver(&app, secret, "d-big", &big).await.status(), 202);
    // Another branch: 202, no bake.
    let other = json!({"ref": "refs/heads/feature", "after": sha});
    assert_eq!(deliver(&app, secret, "d-other", &other).await.status(), 202);
    assert_eq!(app.count("SELECT count(*) FROM bakes").await, 0);

    // The branch: a bake at the pushed commit; the same delivery again: the same bake.
    let res = deliver(&app, secret, "d-1", &push).await;
    assert_eq!(res.status(), 202);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["source_revision"], sha);
    let res = deliver(&app, secret, "d-1", &push).await;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.count("SELECT count(*) FROM bakes").await, 1);
    let (trigger, by): (String, String) = sqlx::query_as("SELECT trigger, started_by FROM bakes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((trigger.as_str(), by.as_str()), ("webhook", "github"));
    let id = first["id"].as_i64().unwrap();
    let done = bake_ends(&app, &token, id, 120).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let revision: String =
        sqlx::query_scalar("SELECT source_revision FROM images WHERE bake_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(revision, sha);
    builders_gone(&app).await;
    stop_fleet(&app).await;
}

/// The aws provider against moto. Moto runs no instance, so the test plays the builder's boot
/// (what its user-data does on EC2): it starts `kiln agent` for the builder's instance id with
/// an enrollment token. The bake makes exactly one AMI, named and tagged for its bake, and
/// terminates the builder at the provider.
#[tokio::test]
async fn on_aws_a_bake_makes_one_tagged_ami_and_terminates_its_builder() {
    use kiln::cloud::{ImageQuery, Provider, ServerFilter, ServerState, describe_all};

    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let endpoint = format!("http://127.0.0.1:{}", crate::moto::moto_port());
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let mut console = crate::cli::serve_aws(
        &db,
        &endpoint,
        &fleet,
        &[("KILN_TASK_POLL", "1"), ("KILN_HEARTBEAT", "1")],
    );
    let port = crate::cli::listening_port(&mut console).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let api = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        api.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let seeded = "ami-1e749f67";
    crate::cli::adopt_ami(&base, &token, &pool, seeded).await;
    let res = post(
        "/api/v1/recipes",
        json!({"name": "aws-ci", "base_image_id": seeded, "setup_script": "echo set up",
               "test_command": "echo tested", "instance_type": "t3.micro"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let recipe_id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let before = crate::cli::ec2_calls(&base).await;
    let res = post("/api/v1/bakes", json!({ "recipe_id": recipe_id }))
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let get = |id: i64| {
        let api = api.clone();
        let url = format!("{base}/api/v1/bakes/{id}");
        let token = token.clone();
        async move {
            api.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let builder: String = eventually(60, "the builder is launched", || async {
        get(id).await["builder_id"].as_str().map(str::to_owned)
    })
    .await;
    assert!(builder.starts_with("i-"), "{builder}");

    // The builder boots: its agent registers with an enrollment token for this instance.
    let enrollment = kiln::auth::token::Secret::generate(kiln::auth::token::ENROLLMENT_PREFIX);
    let mut conn = pool.acquire().await.unwrap();
    kiln::db::tokens::create_enrollment(&mut conn, &enrollment.hash(), Some(&builder), 600)
        .await
        .unwrap();
    drop(conn);
    let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "agent",
            "--url",
            &base,
            "--token",
            enrollment.expose(),
            "--instance-id",
            &builder,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let done: Value = eventually(120, "the bake ends", || async {
        let b = get(id).await;
        (b["state"] != "running").then_some(b)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let ami = done["image_id"].as_str().unwrap().to_owned();
    assert!(ami.starts_with("ami-") && ami != seeded, "{ami}");

    // At the provider: one AMI for this bake, with its name and tags.
    let (aws, _) = crate::moto::provider(endpoint.clone(), &fleet, 3).await;
    let query = ImageQuery {
        owners: vec!["self".into()],
        tags: vec![("kiln:bake".into(), id.to_string())],
    };
    let found = aws.list_images(&query, None).await.unwrap().items;
    assert_eq!(found.len(), 1, "{found:?}");
    let image = &found[0];
    assert_eq!(image.id, ami);
    assert_eq!(image.name, format!("kiln/{fleet}/aws-ci/v1"));
    assert_eq!(
        image.tags.get("kiln:recipe").map(String::as_str),
        Some("aws-ci")
    );
    assert_eq!(
        image.tags.get("kiln:version").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        image.tags.get("kiln:fleet").map(String::as_str),
        Some(fleet.as_str())
    );
    let state: String = sqlx::query_scalar("SELECT state FROM images WHERE id = $1")
        .bind(&ami)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "available");

    // The builder is terminated at the provider.
    eventually(60, "the builder is terminated at the provider", || async {
        let filter = ServerFilter {
            ids: vec![builder.clone()],
            ..ServerFilter::fleet(&fleet)
        };
        let servers = describe_all(&aws, &filter).await.unwrap();
        servers
            .iter()
            .all(|s| s.state == ServerState::Terminated)
            .then_some(())
    })
    .await;
    let after = crate::cli::ec2_calls(&base).await;
    let used: Vec<String> = after
        .iter()
        .map(|(a, n)| (a, n - before.get(a).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    println!("EC2 calls for one bake (the reconciler's describes included): {used:?}");
    assert_eq!(after.get("RunInstances"), Some(&1.0));
    assert_eq!(after.get("CreateImage"), Some(&1.0));
    console.kill().await.unwrap();
}

/// kill -9 of the console mid-bake: started again, it finishes the bake with one builder,
/// one image.
#[tokio::test]
async fn a_console_killed_mid_bake_finishes_it_after_a_restart() {
    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("b-{}", uuid::Uuid::new_v4().simple());
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
    let image: String = eventually(30, "the base image is current", || async {
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let res = post(
        "/api/v1/recipes",
        json!({"name": "restart", "base_image_id": image,
               "setup_script": "sleep 4; echo set up", "test_command": "echo tested"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let recipe_id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let res = post("/api/v1/bakes", json!({ "recipe_id": recipe_id }))
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    eventually(60, "the setup runs on the builder", || async {
        (count("SELECT count(*) FROM bakes WHERE step = 'setup'").await == 1).then_some(())
    })
    .await;

    console.kill().await.unwrap();
    let mut console = start_console().await;
    eventually(120, "the bake succeeds", || async {
        (count("SELECT count(*) FROM bakes WHERE state = 'succeeded'").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        count("SELECT count(*) FROM local_instances i JOIN servers s ON s.id = i.id WHERE s.purpose = 'builder'")
            .await,
        1,
        "one builder, never a second"
    );
    assert_eq!(
        count("SELECT count(*) FROM images WHERE bake_id IS NOT NULL AND state = 'available'")
            .await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM local_images WHERE tags->>'kiln:bake' IS NOT NULL").await,
        1
    );
    eventually(30, "the builder is terminated", || async {
        (count("SELECT count(*) FROM servers WHERE purpose = 'builder' AND state <> 'terminated'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    // The local servers stop before their console does.
    drop(agents);
    crate::cli::sigterm_and_wait(&mut console).await;
}

/// The Bakes page: a recipe added through the form (a refused one shown again with the
/// reason and what was typed), baked with its button, watched on the bake's page.
#[tokio::test]
async fn the_bakes_page_adds_a_recipe_and_bakes_it() {
    let (app, _token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    let ops = app.user_client("ops", kiln::domain::Role::Operator).await;
    let res = app
        .post_form(
            &ops,
            "/bakes",
            "/bakes/recipes",
            &[
                ("name", "Web Tier"),
                ("base_image_id", &base),
                ("setup_script", "true"),
                ("test_command", "true"),
            ],
        )
        .await;
    assert_eq!(res.status(), 400);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("form-error") && html.contains("Recipe name"),
        "the reason is shown"
    );
    assert!(
        html.contains("value=\"Web Tier\""),
        "what was typed is kept"
    );
    assert_eq!(app.count("SELECT count(*) FROM recipes").await, 0);

    let res = app
        .post_form(
            &ops,
            "/bakes",
            "/bakes/recipes",
            &[
                ("name", "web"),
                ("base_image_id", &base),
                ("setup_script", "echo preparing web"),
                ("test_command", "echo web tests ok"),
                ("instance_type", "t3.small"),
                ("setup_timeout_s", "600"),
                ("test_timeout_s", "300"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let recipe_id: i64 = sqlx::query_scalar("SELECT id FROM recipes WHERE name = 'web'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let page = app.get(&ops, "/bakes").await.text().await.unwrap();
    assert!(page.contains("Bake web"), "each recipe has its Bake button");
    let res = app
        .post_form(
            &ops,
            "/bakes",
            "/bakes",
            &[("recipe_id", &recipe_id.to_string())],
        )
        .await;
    assert_eq!(res.status(), 303);
    let location = crate::helpers::location(&res);
    assert!(location.starts_with("/bakes/"), "{location}");
    eventually(120, "the bake page shows it succeeded", || async {
        let html = app.get(&ops, &location).await.text().await.unwrap();
        (html.contains("id=\"bake-state\">succeeded") && html.contains("web tests ok"))
            .then_some(())
    })
    .await;

    // Edit the recipe: a refused change is shown with the reason; a good one applies to the
    // next bakes and keeps the version counting.
    let edit = format!("/bakes/recipes/{recipe_id}");
    let form = app.get(&ops, &edit).await.text().await.unwrap();
    assert!(form.contains("echo web tests ok") && form.contains("Save recipe"));
    let fields = |test: &'static str, timeout: &'static str| {
        vec![
            ("name", "web"),
            ("base_image_id", base.as_str()),
            ("setup_script", "echo preparing web"),
            ("test_command", test),
            ("instance_type", "t3.small"),
            ("setup_timeout_s", "600"),
            ("test_timeout_s", timeout),
        ]
    };
    let res = app
        .post_form(&ops, &edit, &edit, &fields("echo v2 tests", "soon"))
        .await;
    assert_eq!(res.status(), 400);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Test timeout must be a whole number")
    );
    let res = app
        .post_form(&ops, &edit, &edit, &fields("echo v2 tests", "900"))
        .await;
    assert_eq!(res.status(), 303);
    let (test, timeout, next): (String, i32, i32) = sqlx::query_as(
        "SELECT test_command, test_timeout_s, next_version FROM recipes WHERE id = $1",
    )
    .bind(recipe_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((test.as_str(), timeout, next), ("echo v2 tests", 900, 2));
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "recipe.update" && a.actor == "ops")
    );

    // A viewer sees the bakes and recipes but no button or form.
    let viewer = app.user_client("watcher", kiln::domain::Role::Viewer).await;
    let page = app.get(&viewer, &edit).await.text().await.unwrap();
    assert!(!page.contains("Save recipe") && page.contains("echo v2 tests"));
    let page = app.get(&viewer, "/bakes").await.text().await.unwrap();
    assert!(page.contains(">web</strong>"));
    assert!(!page.contains("Bake web") && !page.contains("New recipe"));
    let res = app
        .post_form(
            &viewer,
            "/bakes",
            "/bakes",
            &[("recipe_id", &recipe_id.to_string())],
        )
        .await;
    assert_eq!(res.status(), 403);
    builders_gone(&app).await;
    stop_fleet(&app).await;
}

/// Old-image cleanup (Asgard's rule), previewed first: only images that are old, not current,
/// not run by a server, not among the newest of their name and not a recipe's base go.
#[tokio::test]
async fn old_image_cleanup_previews_then_deregisters_only_what_qualifies() {
    let (app, token) = bake_app(|s| {
        s.image_keep = 1;
        s.image_min_age_days = 7;
    })
    .await;
    let base = base_image(&app).await;
    // Four more images of one name: v1 and v2 old, v3 old but run by a server, v4 new.
    let mut ids = Vec::new();
    for v in 1..=4 {
        let id = format!("ami-local-{v:017x}");
        sqlx::query(
            "INSERT INTO images (id, name, version, state, added_by, created_at)
             VALUES ($1, 'api', $2, 'available', 'test', now() - make_interval(days => $3))",
        )
        .bind(&id)
        .bind(v.to_string())
        .bind(if v == 4 { 0 } else { 30 })
        .execute(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    sqlx::query("INSERT INTO servers (id, image_id, state) VALUES ('i-local-00000000000000abc', $1, 'running')")
        .bind(&ids[2])
        .execute(&app.pool)
        .await
        .unwrap();
    // The base image is old too, but current and a recipe's base.
    sqlx::query("UPDATE images SET created_at = now() - interval '60 days' WHERE id = $1")
        .bind(&base)
        .execute(&app.pool)
        .await
        .unwrap();
    recipe(&app, &token, json!({"name": "keep-base", "base_image_id": base, "setup_script": "x", "test_command": "y"})).await;

    let ops = app.user_client("ops", kiln::domain::Role::Operator).await;
    let preview = app.get(&ops, "/images/cleanup").await.text().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            preview.contains(id.as_str()),
            i < 2,
            "{id} in the preview: {}",
            i < 2
        );
    }
    assert!(!preview.contains(&format!("href=\"/images/{base}\"")));
    assert!(preview.contains("Deregister these 2 images"));

    // The confirmation deregisters what the preview showed and still qualifies; a forged id
    // that does not qualify (the server's image) is left alone.
    let list = format!("{},{},{}", ids[0], ids[1], ids[2]);
    let res = app
        .post_form(
            &ops,
            "/images/cleanup",
            "/images/cleanup",
            &[("ids", &list)],
        )
        .await;
    assert_eq!(res.status(), 303);
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT id, state FROM images WHERE name = 'api' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let states: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        states,
        ["deregistered", "deregistered", "available", "available"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'image.deregister' AND detail LIKE 'old-image cleanup%'")
            .await,
        2
    );
    let after = app.get(&ops, "/images/cleanup").await.text().await.unwrap();
    assert!(after.contains("nothing to clean up"));
    // A viewer sees the preview, not the button.
    let viewer = app.user_client("watcher", kiln::domain::Role::Viewer).await;
    let page = app
        .get(&viewer, "/images/cleanup")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Deregister these"));
}

/// The janitor: a builder whose bake is over (or that has none, e.g. adopted with the builder
/// tag) is terminated by the next reconcile.
#[tokio::test]
async fn the_janitor_terminates_a_builder_without_a_running_bake() {
    let (app, token) = bake_app(|_| {}).await;
    let base = base_image(&app).await;
    let res = post(
        &app,
        &token,
        "/api/v1/servers",
        json!({"image_id": base, "count": 2}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let ids: Vec<String> = eventually(60, "two servers run", || async {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM servers WHERE state = 'running' ORDER BY id")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    // One of them is a builder left behind (say, its bake's clean-up never ran).
    sqlx::query("UPDATE servers SET purpose = 'builder' WHERE id = $1")
        .bind(&ids[0])
        .execute(&app.pool)
        .await
        .unwrap();
    eventually(60, "the stray builder is terminated", || async {
        let state: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
            .bind(&ids[0])
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (state == "terminated").then_some(())
    })
    .await;
    let worker: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
        .bind(&ids[1])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(worker, "running", "workers are never the janitor's");
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "server.terminate" && a.detail.contains("janitor"))
    );
    stop_fleet(&app).await;
}

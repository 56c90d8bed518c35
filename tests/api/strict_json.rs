//! The JSON API refuses what it does not understand: a corpus of malformed bodies across every
//! write route of `/api/v1` and Librato's `/v1`, each answered with a 4xx whose message names
//! the problem, and nothing changed anywhere.

use kiln::domain::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Everything a write could change, as one text to compare.
async fn fingerprint(app: &TestApp) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(id || ':' || state || ':' || mode, ',' ORDER BY id) FROM servers),
            (SELECT string_agg(id || ':' || state, ',' ORDER BY id) FROM images),
            (SELECT count(*) FROM releases), (SELECT count(*) FROM rollouts),
            (SELECT count(*) FROM launches), (SELECT count(*) FROM tasks),
            (SELECT string_agg(id || ':' || state, ',' ORDER BY id) FROM jobs),
            (SELECT string_agg(id || ':' || name || ':' || updated_at, ',' ORDER BY id) FROM recipes),
            (SELECT count(*) FROM bakes), (SELECT count(*) FROM users),
            (SELECT count(*) FROM api_tokens), (SELECT count(*) FROM dashboards),
            -- The console samples its own figures meanwhile: only the corpus's names count.
            (SELECT count(*) FROM metric_series WHERE name IN ('a', 'bad name!')),
            (SELECT count(*) FROM metric_points p JOIN metric_series s ON s.id = p.series_id
             WHERE s.name IN ('a', 'bad name!')),
            (SELECT count(*) FROM annotations))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A body as sent: JSON text, and the words its refusal must contain (the field, or what is
/// wrong with the text).
type Case = (String, &'static str);

fn field(body: Value, names: &'static str) -> Case {
    (body.to_string(), names)
}

/// Bodies that are not a JSON object at all.
fn not_objects(required: bool) -> Vec<Case> {
    let mut cases: Vec<Case> = vec![
        ("not json".into(), "valid"),
        ("{".into(), "valid"),
        (r#"{"a": 1} trailing"#.into(), "valid"),
        ("[]".into(), "valid"),
        ("42".into(), "valid"),
        (r#""text""#.into(), "valid"),
    ];
    if required {
        cases.push((String::new(), "empty"));
    }
    cases
}

#[tokio::test]
async fn malformed_bodies_are_refused_by_name_and_change_nothing() {
    let app = spawn_app().await;
    app.create_user("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let image: String =
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // A server with no process behind it: enough for its actions to be refused.
    sqlx::query(
        "INSERT INTO servers (id, image_id, state) VALUES ('i-local-00000000000000abc', $1, 'running')",
    )
    .bind(&image)
    .execute(&app.pool)
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let post = |path: String, body: String| {
        client
            .post(app.url(&path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let recipe_body = json!({"name": "r1", "base_image_id": image, "setup_script": "true", "test_command": "true"});
    let res = post("/api/v1/recipes".into(), recipe_body.to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let recipe_id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let with = |extra: Value| {
        let mut body = recipe_body.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let server = "i-local-00000000000000abc";
    // A queued job (no agent will take it): its cancel and retry take no body.
    let res = post(
        "/api/v1/jobs".into(),
        json!({"command": "true"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let job = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    let mut corpus: Vec<(String, Case)> = Vec::new();
    let mut add = |path: &str, cases: Vec<Case>| {
        corpus.extend(cases.into_iter().map(|c| (path.to_owned(), c)));
    };

    add("/api/v1/images", not_objects(true));
    add(
        "/api/v1/images",
        vec![
            field(json!({"name": 5}), "name"),
            field(json!({"name": "x", "version": 2}), "version"),
            field(json!({"name": "x", "nmae": "y"}), "nmae"),
            field(json!({"id": ["ami-1"]}), "id"),
            field(json!({"name": "x", "description": false}), "description"),
        ],
    );
    for path in [
        format!("/api/v1/images/{image}/release"),
        format!("/api/v1/images/{image}/rollback"),
    ] {
        add(&path, not_objects(false));
        add(
            &path,
            vec![
                field(json!({"batch_size": "3"}), "batch_size"),
                field(json!({"batch_size": 1.5}), "batch_size"),
                field(json!({"batch_size": 0}), "batch_size"),
                field(json!({"min_healthy_percent": 101}), "min_healthy_percent"),
                field(json!({"batchsize": 3}), "batchsize"),
                field(json!({"health_timeout_s": true}), "health_timeout_s"),
                field(json!({"drain_timeout_s": -5}), "drain_timeout_s"),
            ],
        );
    }
    add("/api/v1/servers", not_objects(true));
    add(
        "/api/v1/servers",
        vec![
            field(json!({"image_id": image, "count": "3"}), "count"),
            field(json!({"image_id": image}), "count"),
            field(json!({"image_id": image, "count": null}), "count"),
            field(json!({"image_id": image, "count": -1}), "count"),
            field(json!({"image_id": image, "count": 1.5}), "count"),
            field(json!({"image_id": image, "count": 0}), "count"),
            field(
                json!({"image_id": image, "count": 1, "instance": "t3.micro"}),
                "instance",
            ),
            field(json!({"count": 1}), "image_id"),
            field(json!({"image_id": 5, "count": 1}), "image_id"),
            field(
                json!({"image_id": image, "count": 1, "instance_type": 3}),
                "instance_type",
            ),
        ],
    );
    let terminate = format!("/api/v1/servers/{server}/terminate");
    add(&terminate, not_objects(false));
    add(
        &terminate,
        vec![
            field(json!({"force": "yes please"}), "force"),
            field(json!({"force": 1}), "force"),
            field(json!({"force": null}), "force"),
            field(json!({"forse": true}), "forse"),
        ],
    );
    add(
        &format!("/api/v1/servers/{server}/disable"),
        vec![
            field(json!({"force": true}), "force"),
            field(json!({"mode": "disabled"}), "mode"),
        ],
    );
    add("/api/v1/jobs", not_objects(true));
    add(
        "/api/v1/jobs",
        vec![
            field(json!({"command": 5}), "command"),
            field(json!({}), "command"),
            field(json!({"command": "x", "timeout_s": "60"}), "timeout_s"),
            field(json!({"command": "x", "timeout_s": 0}), "timeout_s"),
            field(json!({"command": "x", "retries": 1.5}), "retries"),
            field(json!({"command": "x", "labels": ["a"]}), "labels"),
            field(json!({"command": "x", "labels": {"a": 1}}), "labels"),
            field(json!({"command": "x", "lables": {}}), "lables"),
        ],
    );
    for path in [
        "/api/v1/recipes".to_owned(),
        format!("/api/v1/recipes/{recipe_id}"),
    ] {
        add(&path, not_objects(true));
        add(
            &path,
            vec![
                field(with(json!({"name": 1})), "name"),
                field(with(json!({"auto_release": "yes"})), "auto_release"),
                field(with(json!({"setup_timeout_s": "60"})), "setup_timeout_s"),
                field(with(json!({"test_cmd": "true"})), "test_cmd"),
                field(with(json!({"test_timeout_s": 0})), "test_timeout_s"),
            ],
        );
    }
    add("/api/v1/bakes", not_objects(true));
    add(
        "/api/v1/bakes",
        vec![
            field(json!({"recipe_id": "1"}), "recipe_id"),
            field(json!({}), "recipe_id"),
            field(json!({"recipe_id": 1.5}), "recipe_id"),
            field(json!({"recipe_id": recipe_id, "revision": "x"}), "revision"),
            field(
                json!({"recipe_id": recipe_id, "source_revision": 5}),
                "source_revision",
            ),
        ],
    );
    // Actions that take no body: nothing, or `{}`; anything else would be silently ignored.
    for path in [
        format!("/api/v1/jobs/{job}/cancel"),
        format!("/api/v1/jobs/{job}/retry"),
        format!("/api/v1/images/{image}/deregister"),
        "/api/v1/rollouts/1/pause".to_owned(),
        "/api/v1/rollouts/1/cancel".to_owned(),
        "/api/v1/bakes/1/cancel".to_owned(),
    ] {
        add(&path, not_objects(false));
        add(
            &path,
            vec![
                field(json!({"force": true}), "force"),
                field(json!({"reason": "because"}), "reason"),
            ],
        );
    }
    add(
        "/v1/metrics",
        vec![
            ("not json".into(), "JSON"),
            ("[]".into(), "object"),
            field(json!({"gauges": [{"name": "a", "value": "1"}]}), "value"),
            field(json!({"gauges": [{"value": 1}]}), "name"),
            field(json!({"gauges": "x"}), "gauges"),
            field(json!({"counters": [{"name": "a", "value": true}]}), "value"),
            field(
                json!({"gauges": [{"name": "bad name!", "value": 1}]}),
                "name",
            ),
            field(
                json!({"gauges": [{"name": "a", "value": 1, "source": 5}]}),
                "source",
            ),
            field(
                json!({"gauges": [{"name": "a", "value": 1, "measure_time": "now"}]}),
                "time",
            ),
        ],
    );
    add(
        "/v1/measurements",
        vec![
            ("not json".into(), "JSON"),
            field(
                json!({"measurements": [{"name": "a", "value": "1"}]}),
                "value",
            ),
            field(json!({"measurements": "x"}), "measurements"),
            field(json!({"measurements": [{"name": "a", "count": 2}]}), "sum"),
            field(
                json!({"measurements": [{"name": "a", "value": 1, "tags": {"k": [1]}}]}),
                "k",
            ),
            field(
                json!({"tags": "x", "measurements": [{"name": "a", "value": 1}]}),
                "tags",
            ),
        ],
    );
    add(
        "/v1/annotations/deploys",
        vec![
            ("not json".into(), "JSON"),
            field(json!({"title": 5}), "title"),
            field(json!({}), "title"),
            field(json!({"title": "x", "start_time": "yesterday"}), "time"),
        ],
    );

    assert!(corpus.len() >= 100, "only {} bodies", corpus.len());
    let before = fingerprint(&app).await;
    for (path, (body, names)) in &corpus {
        let res = post(path.clone(), body.clone()).await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(
            status.is_client_error(),
            "POST {path} {body:?}: {status} {text}"
        );
        let error = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("POST {path} {body:?}: no error message in {text}"));
        assert!(
            error.contains(names),
            "POST {path} {body:?}: {error:?} does not name {names:?}"
        );
    }
    assert_eq!(
        fingerprint(&app).await,
        before,
        "a refused body changed something"
    );
}

//! Librato-compatible ingest with Librato's own Python client, the series endpoint, rollups
//! against the raw aggregates, and the refusals (bad measurements store nothing).

use serde_json::{Value, json};

use crate::helpers::{TestApp, python, spawn_app};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) async fn series(app: &TestApp, token: &str, query: &str) -> Value {
    let res = reqwest::Client::new()
        .get(app.url(&format!("/api/v1/series?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.unwrap()
}

/// (source, points) of a series answer.
fn points(answer: &Value) -> Vec<(String, Vec<(i64, f64)>)> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_owned(),
                s["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

async fn post_basic(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url(path))
        .basic_auth("ops@example.com", Some(token))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn librato_s_python_client_submits_and_the_values_come_back() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let t = now() / 60 * 60;
    let out = tokio::process::Command::new(python())
        .arg(format!(
            "{}/tests/metrics/librato_client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([
            app.address.trim_start_matches("http://"),
            &token,
            &t.to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "librato client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Rollups run every KILN_METRICS_ROLLUP_INTERVAL; run them now rather than wait.
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let from = t - 600;
    let to = t + 60;
    let latency = series(
        &app,
        &token,
        &format!("metric=app.latency&from={from}&to={to}&resolution=60"),
    )
    .await;
    assert_eq!(latency["resolution"], 60);
    assert_eq!(
        points(&latency),
        vec![
            ("web1".to_owned(), vec![(t - 120, 120.5)]),
            ("web2".to_owned(), vec![(t - 120, 80.5)])
        ]
    );
    // A source glob.
    let web2 = series(
        &app,
        &token,
        &format!("metric=app.latency&source=*2&from={from}&to={to}&resolution=60"),
    )
    .await;
    assert_eq!(points(&web2).len(), 1);
    // Counters come back as the increase per interval.
    let requests = series(
        &app,
        &token,
        &format!("metric=app.requests&from={from}&to={to}&resolution=60"),
    )
    .await;
    assert_eq!(
        points(&requests),
        vec![("web1".to_owned(), vec![(t - 180, 0.0), (t - 120, 60.0)])]
    );
    // Tagged: the host tag is the source.
    let queue = series(
        &app,
        &token,
        &format!("metric=app.queue&from={from}&to={to}&resolution=60"),
    )
    .await;
    assert_eq!(
        points(&queue),
        vec![("worker-1".to_owned(), vec![(t - 60, 7.0)])]
    );
    // The queue's 450 values, sent in two requests, all stored.
    for (aggregate, want) in [
        ("count", 450.0),
        ("sum", (0..450).sum::<i32>() as f64),
        ("max", 449.0),
        ("avg", 224.5),
    ] {
        let batch = series(
            &app,
            &token,
            &format!("metric=app.batch&from={from}&to={to}&resolution=60&aggregate={aggregate}"),
        )
        .await;
        assert_eq!(
            points(&batch),
            vec![("batch".to_owned(), vec![(t - 60, want)])],
            "{aggregate}"
        );
    }
}

#[tokio::test]
async fn rollups_equal_the_raw_aggregates() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let base = now() / 3600 * 3600 - 3600;
    // 3 sources, a point every 7 s over 70 minutes, some sent late (out of order).
    let mut gauges = Vec::new();
    for i in 0..600 {
        let at = base + i * 7;
        if at > now() {
            break;
        }
        gauges.push(json!({"name": "load", "source": format!("s{}", i % 3), "value": (i % 17) as f64 * 1.5, "measure_time": at}));
    }
    for chunk in gauges.chunks(300).rev() {
        let res = post_basic(&app, &token, "/v1/metrics", json!({"gauges": chunk})).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let from = base;
    let to = base + 2 * 3600;
    for aggregate in ["avg", "sum", "min", "max", "count"] {
        for resolution in [60, 3600] {
            // Read from the 1-minute and 1-hour rollups; compared with the raw points
            // bucketed alike in plain SQL.
            let rolled = points(
                &series(&app, &token, &format!("metric=load&from={from}&to={to}&resolution={resolution}&aggregate={aggregate}")).await,
            );
            let agg = match aggregate {
                "avg" => "sum(sum) / sum(count)",
                "sum" => "sum(sum)",
                "min" => "min(min)",
                "max" => "max(max)",
                _ => "sum(count)::FLOAT8",
            };
            let raw: Vec<(String, i64, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT s.source, (floor(extract(epoch FROM p.t) / {resolution}) * {resolution})::BIGINT AS b, {agg}
                 FROM metric_points p JOIN metric_series s ON s.id = p.series_id
                 WHERE s.name = 'load' GROUP BY 1, 2 ORDER BY 1, 2"
            )))
            .fetch_all(&app.pool)
            .await
            .unwrap();
            let flat: Vec<(String, i64, f64)> = rolled
                .into_iter()
                .flat_map(|(s, ps)| ps.into_iter().map(move |(t, v)| (s.clone(), t, v)))
                .collect();
            assert_eq!(flat.len(), raw.len(), "{aggregate} at {resolution}");
            for (a, b) in flat.iter().zip(&raw) {
                assert_eq!((&a.0, a.1), (&b.0, b.1), "{aggregate} at {resolution}");
                assert!(
                    (a.2 - b.2).abs() < 1e-9,
                    "{aggregate} at {resolution}: {a:?} vs {b:?}"
                );
            }
        }
    }
    let stored: i64 = app
        .count("SELECT count(*) FROM metric_rollups WHERE resolution = 3600")
        .await;
    assert!(stored >= 3, "hour rollups exist for each source");
}

#[tokio::test]
async fn bad_measurements_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let t = now();
    let ok = json!({"name": "fine", "value": 1});
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("m{i}"), "value": 1}))
        .collect();
    let cases = [
        (
            "/v1/metrics",
            json!({"gauges": [ok, {"name": "cpu$", "value": 1}]}),
            "gauges[1]",
        ),
        (
            "/v1/metrics",
            json!({"gauges": [{"name": "x".repeat(256), "value": 1}]}),
            "name",
        ),
        (
            "/v1/metrics",
            json!({"gauges": [{"name": "cpu", "value": "NaN"}]}),
            "finite number",
        ),
        (
            "/v1/metrics",
            json!({"gauges": [{"name": "cpu", "value": [1]}]}),
            "finite number",
        ),
        ("/v1/metrics", json!({"gauges": many}), "1001"),
        (
            "/v1/metrics",
            json!({"counters": [{"name": "c", "value": 1, "measure_time": t + 7200}]}),
            "window",
        ),
        (
            "/v1/measurements",
            json!({"measurements": [{"name": "q", "value": 1, "tags": {"bad tag": "x"}}]}),
            "tag",
        ),
        ("/v1/measurements", json!({"measurements": "all"}), "list"),
    ];
    for (path, body, says) in cases {
        let res = post_basic(&app, &token, path, body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        let text = res.text().await.unwrap();
        assert!(text.contains(says), "{body} -> {text}");
    }
    // Not JSON at all; and NaN written literally (JSON has no NaN).
    let res = reqwest::Client::new()
        .post(app.url("/v1/metrics"))
        .basic_auth("x", Some(&token))
        .header("content-type", "application/json")
        .body(r#"{"gauges": [{"name": "cpu", "value": NaN}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A series is a gauge or a counter, not both: the whole request is refused.
    let res = post_basic(
        &app,
        &token,
        "/v1/metrics",
        json!({"gauges": [{"name": "dual", "value": 1}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = post_basic(&app, &token, "/v1/metrics", json!({"gauges": [{"name": "other", "value": 1}], "counters": [{"name": "dual", "value": 1}]})).await;
    assert_eq!(res.status(), 400);
    // The same clash when every series is already known to the console (its fast path).
    let res = post_basic(
        &app,
        &token,
        "/v1/metrics",
        json!({"counters": [{"name": "dual", "value": 1}]}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let why: Value = res.json().await.unwrap();
    assert!(why.to_string().contains("dual is a gauge"), "{why}");
    // (The console's own figures, `kiln.*`, are recorded alongside.)
    assert_eq!(
        app.count("SELECT count(*) FROM metric_points p JOIN metric_series s ON s.id = p.series_id WHERE s.name NOT LIKE 'kiln.%'").await,
        1,
        "only the one good request is stored"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM metric_series WHERE name = 'other'")
            .await,
        0
    );

    // Too large -> 413; wrong token -> 401; a viewer may read but not write.
    let huge = "x".repeat(5 << 20);
    let res = reqwest::Client::new()
        .post(app.url("/v1/metrics"))
        .basic_auth("x", Some(&token))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let res = post_basic(
        &app,
        "kiln_wrong",
        "/v1/metrics",
        json!({"gauges": [{"name": "a", "value": 1}]}),
    )
    .await;
    assert_eq!(res.status(), 401);
    app.create_user("reader", kiln::domain::Role::Viewer).await;
    let viewer = app.token_for("reader").await;
    let res = post_basic(
        &app,
        &viewer,
        "/v1/metrics",
        json!({"gauges": [{"name": "a", "value": 1}]}),
    )
    .await;
    assert_eq!(res.status(), 403);
    series(&app, &viewer, "metric=dual").await;
    // Bad series queries.
    for q in [
        "metric=",
        "metric=a&aggregate=median",
        "metric=a&from=10&to=5",
        "metric=a&from=0&to=86400&resolution=1",
    ] {
        let res = reqwest::Client::new()
            .get(app.url(&format!("/api/v1/series?{q}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{q}");
    }
}

#[tokio::test]
async fn annotations_are_stored_with_their_stream() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let res = post_basic(
        &app,
        &token,
        "/v1/annotations/deploys",
        json!({"title": "deployed v42", "source": "ci", "start_time": now() - 30}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let res = post_basic(
        &app,
        &token,
        "/v1/annotations/deploys",
        json!({"description": "no title"}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let res = post_basic(
        &app,
        &token,
        "/v1/annotations/bad%20stream",
        json!({"title": "x"}),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        app.count("SELECT count(*) FROM annotations WHERE stream = 'deploys'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_console_records_its_own_figures_as_metrics() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.heartbeat = 1;
        s.job_lease = 4;
        s.metrics_sample_interval = 1;
    })
    .await;
    let token = app.token_for("admin").await;
    let servers = crate::helpers::launch_agents(&app, &token, 1).await;
    let job = crate::jobs::enqueue(&app, &token, json!({"command": "echo hi"})).await;
    crate::jobs::job_in(&app, &token, job, &["succeeded"], 30).await;
    let image: String = sqlx::query_scalar("SELECT image_id FROM servers LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let from = now() - 120;
    // Raw points (a 10 s resolution reads them), so no wait for the rollups.
    crate::helpers::eventually(
        30,
        "the job's success, its duration and the agent's CPU are recorded",
        || async {
            let to = now() + 60;
            let q = |m: &str| format!("metric={m}&from={from}&to={to}&resolution=10&aggregate=max");
            let succeeded = points(&series(&app, &token, &q("kiln.jobs.succeeded")).await);
            let duration = points(&series(&app, &token, &q("kiln.job.duration")).await);
            let cpu = points(&series(&app, &token, &q("system.cpu")).await);
            let fleet = points(&series(&app, &token, &q("kiln.servers")).await);
            let counted = succeeded
                .iter()
                .flat_map(|(_, p)| p)
                .map(|(_, v)| *v)
                .sum::<f64>()
                >= 1.0;
            (counted
                && !duration.is_empty()
                && cpu.iter().any(|(s, _)| *s == servers[0])
                && fleet.iter().any(|(s, _)| *s == format!("running:{image}")))
            .then_some(())
        },
    )
    .await;
    crate::helpers::stop_fleet(&app).await;
}

/// A series may combine its sources into one line: "the worst server's CPU" is the max over
/// the servers, bucket by bucket; avg divides by the sources that reported in each bucket.
#[tokio::test]
async fn a_series_combines_its_sources_across_the_glob() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let t0 = (now() / 60) * 60 - 600;
    let gauges: Vec<Value> = [
        ("web-1", 10.0, 90.0),
        ("web-2", 30.0, 20.0),
        ("db-1", 99.0, 99.0),
    ]
    .iter()
    .flat_map(|(source, a, b)| {
        [
            json!({"name": "cpu", "value": a, "source": source, "measure_time": t0}),
            json!({"name": "cpu", "value": b, "source": source, "measure_time": t0 + 60}),
        ]
    })
    .collect();
    let res = post_basic(&app, &token, "/v1/metrics", json!({"gauges": gauges})).await;
    assert!(res.status().is_success(), "{}", res.status());
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let range = format!(
        "metric=cpu&source=web-*&from={t0}&to={}&resolution=60",
        t0 + 120
    );
    let each = points(&series(&app, &token, &range).await);
    assert_eq!(each.len(), 2, "a line per source without across: {each:?}");
    for (across, want) in [
        ("max", [30.0, 90.0]),
        ("min", [10.0, 20.0]),
        ("avg", [20.0, 55.0]),
        ("sum", [40.0, 110.0]),
    ] {
        let one = points(&series(&app, &token, &format!("{range}&across={across}")).await);
        assert_eq!(
            one,
            [(
                format!("{across} of 2 sources"),
                vec![(t0, want[0]), (t0 + 60, want[1])]
            )],
            "across={across}"
        );
    }
    let res = reqwest::Client::new()
        .get(app.url(&format!("/api/v1/series?{range}&across=median")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"],
        "across \"median\" is not one of max, min, avg, sum."
    );
}

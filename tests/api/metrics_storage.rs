//! Metrics storage (issue 20, part 3): narrow rows in tables partitioned by time, retention
//! that drops whole partitions, late points, and the rows of the tables before partitioning
//! read and moved over in batches.

use serde_json::{Value, json};

use kiln::metrics::rollup::Retention;
use kiln::metrics::storage;

use crate::helpers::{TestApp, spawn_app};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn ingest(app: &TestApp, token: &str, body: Value) {
    let res = reqwest::Client::new()
        .post(app.url("/v1/metrics"))
        .basic_auth("ops", Some(token))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// The series of a `GET /api/v1/series` answer.
async fn chart(app: &TestApp, token: &str, query: &str) -> Value {
    crate::metrics::series(app, token, query).await["series"].clone()
}

/// Rows of the tests' own series (the console records its `kiln.*` figures alongside).
const VALUES: &str =
    "SELECT count(*) FROM metric_values v JOIN metric_series s ON s.id = v.series_id
                      WHERE s.name NOT LIKE 'kiln.%'";
const AGGREGATES: &str =
    "SELECT count(*) FROM metric_aggregates a JOIN metric_series s ON s.id = a.series_id
                          WHERE s.name NOT LIKE 'kiln.%'";

async fn partitions(app: &TestApp, table: &str) -> Vec<String> {
    storage::partitions(&app.pool, table).await.unwrap()
}

#[tokio::test]
async fn plain_values_are_stored_narrow_late_points_land_and_retention_drops_whole_days() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let now = now();
    let four_days_ago = now - 4 * 86_400;

    // The console made the partitions as it started: from the retention's first day (7 days
    // by default) to two days ahead.
    let values = partitions(&app, "metric_values").await;
    let (today, ..) = storage::partition_of(&storage::TABLES[0], storage::stored_t(now).into());
    let (ahead, ..) = storage::partition_of(
        &storage::TABLES[0],
        storage::stored_t(now + 2 * 86_400).into(),
    );
    let (old, ..) =
        storage::partition_of(&storage::TABLES[0], storage::stored_t(four_days_ago).into());
    for name in [&today, &ahead, &old] {
        assert!(values.contains(name), "{name} in {values:?}");
    }
    assert!((9..=10).contains(&values.len()), "{values:?}");

    ingest(
        &app,
        &token,
        json!({"gauges": [
            {"name": "oven.temp", "source": "a", "value": 40, "measure_time": now - 60},
            // A late point: four days old, within the 7 days kept.
            {"name": "oven.temp", "source": "a", "value": 10, "measure_time": four_days_ago},
            {"name": "oven.temp", "source": "b", "count": 4, "sum": 100, "min": 10, "max": 40,
             "last": 30, "measure_time": now - 60},
        ]}),
    )
    .await;
    // A plain value is one number; only the pre-aggregated gauge keeps five.
    assert_eq!(app.count(VALUES).await, 2);
    assert_eq!(app.count(AGGREGATES).await, 1);
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let from = four_days_ago / 3600 * 3600;
    let week = chart(
        &app,
        &token,
        &format!(
            "metric=oven.temp&from={from}&to={}&resolution=3600&aggregate=max",
            now + 60
        ),
    )
    .await;
    let a: Vec<f64> = week[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(week[0]["source"], "a");
    assert_eq!(a, [10.0, 40.0], "the late point is in its hour's rollup");
    assert_eq!(week[1]["points"][0][1], 40.0, "b's max");

    // Closed days have their indexes rebuilt once; today's partition is left alone.
    let compacted = storage::compact_closed(&app.pool, now).await.unwrap();
    assert!(compacted.contains(&old), "{compacted:?}");
    assert!(!compacted.contains(&today), "{compacted:?}");
    assert_eq!(
        storage::compact_closed(&app.pool, now).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(app.count(VALUES).await, 2, "nothing lost to the rebuild");

    // Two days of raw points kept now: the late point's day goes, as one DROP TABLE.
    let shorter = Retention {
        raw_s: 2 * 86_400,
        ..Retention::DEFAULT
    };
    let done = storage::maintain(&app.pool, &shorter, now).await.unwrap();
    assert!(done.dropped.contains(&old), "{done:?}");
    assert!(done.created.is_empty(), "{done:?}");
    assert!(!partitions(&app, "metric_values").await.contains(&old));
    assert_eq!(app.count(VALUES).await, 1, "today's point stays");
    // The minute and hour rollups are kept longer: the late point's hour is still there.
    assert_eq!(
        app.count("SELECT count(*) FROM metric_hours WHERE series_id = (SELECT id FROM metric_series WHERE source = 'a')")
            .await,
        2
    );
    // A second pass has nothing to do.
    let again = storage::maintain(&app.pool, &shorter, now).await.unwrap();
    assert_eq!(again, storage::Maintained::default());
}

#[tokio::test]
async fn rows_from_before_partitioning_are_read_and_moved_in_batches() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let now = now() / 60 * 60;
    // The series exists (made by ingest); its history is in the legacy tables, as an upgraded
    // console finds it: 300 points of the last 50 minutes (every fifth pre-aggregated) and
    // minute rollups of an hour three hours ago that has no raw points left.
    ingest(
        &app,
        &token,
        json!({"gauges": [{"name": "old.load", "source": "w-1", "value": 1, "measure_time": now - 3000}]}),
    )
    .await;
    sqlx::query(
        "INSERT INTO metric_points_legacy (series_id, t, count, sum, min, max, last)
         SELECT s.id, to_timestamp($1 - 3000 + g * 10),
                CASE WHEN g % 5 = 0 THEN 2 ELSE 1 END,
                CASE WHEN g % 5 = 0 THEN 2 * (g % 7) + 1 ELSE g % 7 END,
                g % 7, CASE WHEN g % 5 = 0 THEN g % 7 + 1 ELSE g % 7 END, g % 7
         FROM metric_series s, generate_series(1, 299) g WHERE s.name = 'old.load'",
    )
    .bind(now as f64)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO metric_rollups_legacy (resolution, series_id, t, count, sum, min, max, last, last_t)
         SELECT 60, s.id, to_timestamp($1 - 3 * 3600 + m * 60), 6, 6 * m, m, m, m, to_timestamp($1 - 3 * 3600 + m * 60 + 50)
         FROM metric_series s, generate_series(0, 59) m WHERE s.name = 'old.load'",
    )
    .bind(now as f64)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO metric_dirty (series_id, minute)
         SELECT DISTINCT series_id, date_trunc('minute', t) FROM metric_points_legacy ON CONFLICT DO NOTHING",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();

    let raw = format!(
        "metric=old.load&from={}&to={}&resolution=10&aggregate=sum",
        now - 3000,
        now
    );
    let rolled = format!(
        "metric=old.load&from={}&to={}&resolution=60&aggregate=avg",
        now - 4 * 3600,
        now
    );
    let before = (
        chart(&app, &token, &raw).await,
        chart(&app, &token, &rolled).await,
    );
    assert_eq!(before.0[0]["points"].as_array().unwrap().len(), 300);
    assert!(before.1[0]["points"].as_array().unwrap().len() >= 110);

    // Moved in batches of 70 rows a table; every read between batches sees all of it.
    let mut after = (0, 0);
    let mut batches = 0;
    loop {
        let moved = storage::move_legacy(&app.pool, &Retention::DEFAULT, &mut after, 70)
            .await
            .unwrap();
        if moved == 0 {
            break;
        }
        batches += 1;
        let now = (
            chart(&app, &token, &raw).await,
            chart(&app, &token, &rolled).await,
        );
        assert_eq!(now, before, "after batch {batches}");
    }
    assert_eq!(batches, 5, "300 points and 60 rollups, 70 at a time");
    assert_eq!(
        app.count("SELECT count(*) FROM metric_points_legacy").await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM metric_rollups_legacy")
            .await,
        0
    );
    // 1 + 299 points: the pre-aggregated ones keep their five numbers, the others one.
    assert_eq!(app.count(AGGREGATES).await, 59);
    assert_eq!(app.count(VALUES).await, 241);
}

/// An upgraded console: rows in the tables before partitioning when the console starts are
/// moved over by its own background work, and nothing is lost on the way.
#[tokio::test]
async fn a_console_started_on_rows_from_before_partitioning_moves_them_itself() {
    let db = crate::helpers::fresh_database_url();
    let pool = kiln::db::connect(&db).await.unwrap();
    kiln::db::migrate(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO metric_series (name, source, kind) VALUES ('old.load', 'w-1', 'gauge')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO metric_points_legacy (series_id, t, count, sum, min, max, last)
         SELECT s.id, now() - make_interval(secs => g * 10), 1, g, g, g, g
         FROM metric_series s, generate_series(1, 500) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO metric_rollups_legacy (resolution, series_id, t, count, sum, min, max, last, last_t)
         SELECT 3600, s.id, date_trunc('hour', now()) - make_interval(hours => h), 360, 360, 1, 1, 1, now()
         FROM metric_series s, generate_series(2, 4) h",
    )
    .execute(&pool)
    .await
    .unwrap();

    let mut console = crate::cli::serve_with(&db, &[("KILN_METRICS_ROLLUP_INTERVAL", "1")]);
    crate::cli::listening_port(&mut console).await;
    crate::helpers::eventually(60, "the legacy rows moved", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM metric_points_legacy) + (SELECT count(*) FROM metric_rollups_legacy)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let (values, hours): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM metric_values v JOIN metric_series s ON s.id = v.series_id WHERE s.name = 'old.load'),
                (SELECT count(*) FROM metric_hours h JOIN metric_series s ON s.id = h.series_id WHERE s.name = 'old.load')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(values, 500);
    assert_eq!(hours, 3);
    assert!(crate::cli::sigterm_and_wait(&mut console).await.success());
}

//! Dashboards operators build: create one (empty or a copy of Fleet), add charts and series
//! through the forms, reorder, stack, remove, rename, delete — every edit audited — and the
//! refusals (bad metric, unknown aggregation, duplicate name, full chart, last series), each
//! shown with its reason and changing nothing.

use kiln::domain::Role;
use reqwest::Client;
use serde_json::Value;

use crate::helpers::{TestApp, location, spawn_app};

async fn dashboard_id(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM dashboards WHERE name = $1")
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// (title, stacked, series JSON) of a dashboard's charts in their order.
async fn charts(app: &TestApp, id: i64) -> Vec<(String, bool, Value)> {
    sqlx::query_as(
        "SELECT title, stacked, series FROM dashboard_charts WHERE dashboard_id = $1
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn chart_ids(app: &TestApp, id: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM dashboard_charts WHERE dashboard_id = $1 ORDER BY position")
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn post(app: &TestApp, c: &Client, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    app.post_form(c, "/dashboards", path, fields).await
}

/// The body of a refused form: its status, and the reason shown beside the form.
async fn refused(res: reqwest::Response, status: u16, reason: &str) {
    assert_eq!(res.status(), status);
    let html = res.text().await.unwrap();
    assert!(html.contains("form-error"), "no error shown");
    assert!(html.contains(reason), "{reason:?} not in the page");
}

#[tokio::test]
async fn an_operator_builds_a_dashboard_chart_by_chart() {
    let app = spawn_app().await;
    let c = app.user_client("ops", Role::Operator).await;

    let res = post(&app, &c, "/dashboards", &[("name", " Builds ")]).await;
    assert_eq!(res.status(), 303);
    let id = dashboard_id(&app, "Builds").await;
    assert_eq!(location(&res), format!("/dashboards/{id}"));

    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts"),
        &[
            ("title", "Running builds"),
            ("unit", "builds"),
            ("metric", "kiln.jobs.running"),
            ("source", ""),
            ("aggregate", "max"),
            ("label", "running"),
            ("stacked", "on"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    let first = chart_ids(&app, id).await[0];
    assert_eq!(location(&res), format!("/dashboards/{id}#chart-{first}"));

    // A second chart, then a second series on the first one, a glob source.
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts"),
        &[
            ("title", "CPU"),
            ("metric", "system.cpu"),
            ("source", "i-*"),
            ("aggregate", "avg"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts/{first}/series"),
        &[
            ("metric", "kiln.jobs.queued"),
            ("source", "*"),
            ("aggregate", "max"),
            ("label", "queued"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), format!("/dashboards/{id}/charts/{first}"));

    let got = charts(&app, id).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "Running builds");
    assert!(got[0].1, "stacked");
    assert_eq!(
        got[0].2,
        serde_json::json!([
            {"metric": "kiln.jobs.running", "source": "*", "aggregate": "max", "label": "running"},
            {"metric": "kiln.jobs.queued", "source": "*", "aggregate": "max", "label": "queued"},
        ])
    );
    assert_eq!(got[1].2[0]["source"], "i-*");
    assert!(!got[1].1);

    // The page draws both charts from their specs; the chart page lists both series.
    let html = app
        .get(&c, &format!("/dashboards/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("id=\"chart-{first}\"")));
    assert!(html.contains("data-stacked=\"1\""));
    assert!(html.contains("kiln.jobs.queued"));
    assert!(html.contains(">Builds</a>"), "the dashboard's tab");
    let chart_page = app
        .get(&c, &format!("/dashboards/{id}/charts/{first}"))
        .await;
    assert_eq!(chart_page.status(), 200);
    let chart_html = chart_page.text().await.unwrap();
    assert!(chart_html.contains("Remove series 2"));

    // Move the CPU chart before the first one; at the top, "up" changes nothing.
    let second = chart_ids(&app, id).await[1];
    let mv = format!("/dashboards/{id}/charts/{second}/move");
    assert_eq!(post(&app, &c, &mv, &[("dir", "up")]).await.status(), 303);
    assert_eq!(chart_ids(&app, id).await, vec![second, first]);
    assert_eq!(post(&app, &c, &mv, &[("dir", "up")]).await.status(), 303);
    assert_eq!(chart_ids(&app, id).await, vec![second, first]);

    // Rename the chart and unstack it; remove the first series; delete the CPU chart.
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts/{first}"),
        &[("title", "Builds"), ("unit", "")],
    )
    .await;
    assert_eq!(res.status(), 303);
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts/{first}/series/0/remove"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts/{second}/delete"),
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    let got = charts(&app, id).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].1), ("Builds", false));
    assert_eq!(got[0].2.as_array().unwrap().len(), 1);
    assert_eq!(got[0].2[0]["metric"], "kiln.jobs.queued");

    // Rename the dashboard, then delete it with its charts.
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/rename"),
        &[("name", "CI")],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(dashboard_id(&app, "CI").await, id);
    let res = post(&app, &c, &format!("/dashboards/{id}/delete"), &[]).await;
    assert_eq!(location(&res), "/dashboards");
    assert_eq!(app.count("SELECT count(*) FROM dashboards").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM dashboard_charts").await, 0);
    assert_eq!(
        app.get(&c, &format!("/dashboards/{id}")).await.status(),
        404
    );

    let actions: Vec<String> = app
        .audit()
        .await
        .into_iter()
        .filter(|a| a.action.starts_with("dashboard."))
        .map(|a| format!("{} {} {}", a.actor, a.action, a.result))
        .collect();
    assert_eq!(
        actions,
        [
            "ops dashboard.delete ok",
            "ops dashboard.rename ok",
            "ops dashboard.chart.delete ok",
            "ops dashboard.chart.edit ok",
            "ops dashboard.chart.edit ok",
            "ops dashboard.chart.move ok",
            "ops dashboard.chart.edit ok",
            "ops dashboard.chart.add ok",
            "ops dashboard.chart.add ok",
            "ops dashboard.create ok",
        ]
    );
}

#[tokio::test]
async fn a_copy_of_fleet_starts_with_fleet_s_charts() {
    let app = spawn_app().await;
    let c = app.user_client("ops", Role::Operator).await;
    let res = post(
        &app,
        &c,
        "/dashboards",
        &[("name", "My fleet"), ("copy_fleet", "on")],
    )
    .await;
    assert_eq!(res.status(), 303);
    let id = dashboard_id(&app, "My fleet").await;
    let got = charts(&app, id).await;
    let fleet = kiln::metrics::dashboards::fleet();
    assert_eq!(got.len(), fleet.len());
    for ((title, stacked, series), chart) in got.iter().zip(&fleet) {
        assert_eq!(title, &chart.title);
        assert_eq!(*stacked, chart.stacked);
        assert_eq!(series, &serde_json::to_value(&chart.series).unwrap());
    }
    // A viewer sees it but no editing forms.
    let viewer = app.user_client("watcher", Role::Viewer).await;
    let html = app
        .get(&viewer, &format!("/dashboards/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("Memory per server"));
    assert!(!html.contains("Add a chart"));
    assert!(!html.contains("/move"));
}

#[tokio::test]
async fn bad_edits_are_refused_with_the_reason_and_change_nothing() {
    let app = spawn_app().await;
    let c = app.user_client("ops", Role::Operator).await;
    post(&app, &c, "/dashboards", &[("name", "Builds")]).await;
    let id = dashboard_id(&app, "Builds").await;
    let add = format!("/dashboards/{id}/charts");
    let good = [
        ("title", "Queue"),
        ("metric", "kiln.jobs.queued"),
        ("source", "*"),
        ("aggregate", "max"),
    ];
    assert_eq!(post(&app, &c, &add, &good).await.status(), 303);
    let chart = chart_ids(&app, id).await[0];
    let before = charts(&app, id).await;
    let audited = app.audit().await.len();

    refused(
        post(&app, &c, "/dashboards", &[("name", "  ")]).await,
        400,
        "A dashboard needs a name.",
    )
    .await;
    refused(
        post(&app, &c, "/dashboards", &[("name", "builds")]).await,
        409,
        "There is already a dashboard called &#34;builds&#34;",
    )
    .await;
    refused(
        post(
            &app,
            &c,
            &add,
            &[
                ("title", "x"),
                ("metric", "bad metric!"),
                ("aggregate", "avg"),
            ],
        )
        .await,
        400,
        "Metric &#34;bad metric!&#34; is invalid",
    )
    .await;
    let res = post(
        &app,
        &c,
        &add,
        &[
            ("title", "Typed"),
            ("metric", "a.b"),
            ("aggregate", "median"),
        ],
    )
    .await;
    assert_eq!(res.status(), 400);
    let html = res.text().await.unwrap();
    assert!(html.contains("Aggregation &#34;median&#34; is not one of"));
    assert!(
        html.contains("value=\"Typed\""),
        "the form keeps what was typed"
    );
    refused(
        post(
            &app,
            &c,
            &add,
            &[("title", ""), ("metric", "a.b"), ("aggregate", "avg")],
        )
        .await,
        400,
        "A chart needs a title.",
    )
    .await;
    refused(
        post(
            &app,
            &c,
            &format!("/dashboards/{id}/charts/{chart}/series/0/remove"),
            &[],
        )
        .await,
        409,
        "A chart needs at least one series",
    )
    .await;
    refused(
        post(
            &app,
            &c,
            &format!("/dashboards/{id}/charts/{chart}/series"),
            &[("metric", "a b"), ("aggregate", "avg")],
        )
        .await,
        400,
        "is invalid",
    )
    .await;
    let res = post(
        &app,
        &c,
        &format!("/dashboards/{id}/charts/{chart}/move"),
        &[("dir", "sideways")],
    )
    .await;
    assert_eq!(res.status(), 400);
    // Unknown dashboards and charts are 404, with nothing made.
    assert_eq!(
        post(&app, &c, "/dashboards/999/charts", &good)
            .await
            .status(),
        404
    );
    assert_eq!(
        post(
            &app,
            &c,
            &format!("/dashboards/{id}/charts/999/delete"),
            &[]
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        post(
            &app,
            &c,
            &format!("/dashboards/{id}/charts/{chart}/series/7/remove"),
            &[]
        )
        .await
        .status(),
        404
    );

    assert_eq!(charts(&app, id).await, before);
    assert_eq!(app.count("SELECT count(*) FROM dashboards").await, 1);
    assert_eq!(app.audit().await.len(), audited, "refusals change nothing");

    // A chart holds at most MAX_SERIES series; a dashboard at most MAX_CHARTS charts.
    let series = format!("/dashboards/{id}/charts/{chart}/series");
    for _ in 1..kiln::metrics::dashboards::MAX_SERIES {
        let res = post(
            &app,
            &c,
            &series,
            &[("metric", "a.b"), ("aggregate", "sum")],
        )
        .await;
        assert_eq!(res.status(), 303);
    }
    refused(
        post(
            &app,
            &c,
            &series,
            &[("metric", "a.b"), ("aggregate", "sum")],
        )
        .await,
        409,
        "at most 10 series",
    )
    .await;
    for _ in 1..kiln::metrics::dashboards::MAX_CHARTS {
        assert_eq!(post(&app, &c, &add, &good).await.status(), 303);
    }
    refused(post(&app, &c, &add, &good).await, 409, "this one is full").await;
    assert_eq!(
        chart_ids(&app, id).await.len() as i64,
        kiln::metrics::dashboards::MAX_CHARTS
    );
}

use crate::helpers::{client, spawn_app};

#[tokio::test]
async fn audit_page_is_newest_first_and_paginated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for i in 0..60 {
        sqlx::query("INSERT INTO audit_events (actor, action, target, result) VALUES ('t', 'test.event', $1, 'ok')")
            .bind(format!("n:{i:02}"))
            .execute(&app.pool)
            .await
            .unwrap();
    }

    let first = app.get(&admin, "/audit").await.text().await.unwrap();

    let doc = scraper::Html::parse_document(&first);
    let rows: Vec<String> = doc
        .select(&scraper::Selector::parse("tbody tr td:nth-child(4)").unwrap())
        .map(|td| td.text().collect())
        .collect();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0], "n:59");
    let next = doc
        .select(&scraper::Selector::parse("a[rel=next]").unwrap())
        .next()
        .unwrap()
        .value()
        .attr("href")
        .unwrap()
        .to_owned();
    let second = app.get(&admin, &next).await.text().await.unwrap();
    assert!(second.contains("n:09") && !second.contains("n:10"));
    assert!(second.contains("test.event"));
}

#[tokio::test]
async fn audit_api_lists_newest_first_with_a_next_link() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    for i in 0..5 {
        sqlx::query("INSERT INTO audit_events (actor, action, target, result) VALUES ('t', 'test.event', $1, 'ok')")
            .bind(format!("n:{i}"))
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let api = reqwest::Client::new();

    let res = api
        .get(app.url("/api/v1/audit?limit=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    let link = res.headers()["link"].to_str().unwrap().to_owned();
    let events: Vec<serde_json::Value> = res.json().await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["target"], "n:4");
    assert!(
        events[0]["at"].as_str().unwrap().contains('T'),
        "RFC 3339 times"
    );
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let page2: Vec<serde_json::Value> = api
        .get(app.url(next))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page2[0]["target"], "n:2");
}

#[tokio::test]
async fn audit_api_errors_are_json_in_plain_words() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let api = reqwest::Client::new();

    let too_many = api
        .get(app.url("/api/v1/audit?limit=5001"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let no_token = api.get(app.url("/api/v1/audit")).send().await.unwrap();
    let bad_token = api
        .get(app.url("/api/v1/audit"))
        .bearer_auth("kiln_nope")
        .send()
        .await
        .unwrap();
    let session_only = app
        .admin()
        .await
        .get(app.url("/api/v1/audit"))
        .send()
        .await
        .unwrap();

    assert_eq!(too_many.status(), 400);
    let body: serde_json::Value = too_many.json().await.unwrap();
    assert_eq!(body["error"], "limit must be between 1 and 5000, not 5001");
    assert_eq!(no_token.status(), 401);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    assert!(no_token.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    assert_eq!(bad_token.status(), 401);
    assert_eq!(
        session_only.status(),
        401,
        "the API takes tokens, not session cookies"
    );
    let _ = client();
}

use crate::helpers::{client, spawn_app};

#[tokio::test]
async fn healthz_and_readyz_answer_without_login() {
    let app = spawn_app().await;
    let c = client();

    let health = app.get(&c, "/healthz").await;
    let ready = app.get(&c, "/readyz").await;

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
}

#[tokio::test]
async fn readyz_fails_when_migrations_are_behind() {
    let app = spawn_app().await;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&app.pool)
        .await
        .unwrap();

    let ready = app.get(&client(), "/readyz").await;

    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("migrations"));
}

#[tokio::test]
async fn unknown_address_is_a_readable_404() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    let res = app.get(&admin, "/no/such/page").await;

    assert_eq!(res.status(), 404);
    let body = res.text().await.unwrap();
    assert!(body.contains("There is nothing at this address."), "{body}");
    assert!(
        body.contains("<nav"),
        "a logged-in 404 keeps the navigation"
    );
}

#[tokio::test]
async fn a_server_error_shows_a_generic_page_with_a_request_id_and_no_internals() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // Break the audit table under the running app.
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone")
        .execute(&app.pool)
        .await
        .unwrap();

    let page = app.get(&admin, "/audit").await;
    let request_id = page.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = page.text().await.unwrap();
    let token = app.csrf(&admin, "/account").await;
    let htmx = admin
        .get(app.url("/audit"))
        .header("hx-request", "true")
        .header("x-csrf-token", token)
        .send()
        .await
        .unwrap();

    assert!(body.contains("Something went wrong on our side"), "{body}");
    assert!(body.contains(&request_id), "the page names the request id");
    assert!(!body.contains("audit_events"), "no internals leak: {body}");
    assert_eq!(htmx.status(), 500);
    assert_eq!(htmx.headers()["hx-retarget"], "#toasts");
    assert!(htmx.text().await.unwrap().contains("toast-error"));
}

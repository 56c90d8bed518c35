use crate::helpers::spawn_app;

#[tokio::test]
async fn a_post_without_a_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let users_before = app.count("SELECT count(*) FROM users").await;

    let res = admin
        .post(app.url("/users"))
        .form(&[
            ("name", "mallory"),
            ("role", "admin"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("did not come from Kiln"));
    assert_eq!(app.count("SELECT count(*) FROM users").await, users_before);
}

#[tokio::test]
async fn a_post_with_a_wrong_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let users_before = app.count("SELECT count(*) FROM users").await;

    let res = admin
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", "forged"),
            ("name", "mallory"),
            ("role", "admin"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();
    let header = admin
        .post(app.url("/users"))
        .header("x-csrf-token", "forged")
        .form(&[
            ("name", "mallory"),
            ("role", "admin"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 403);
    assert_eq!(header.status(), 403);
    assert_eq!(app.count("SELECT count(*) FROM users").await, users_before);
}

#[tokio::test]
async fn a_token_from_another_session_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let other = app.admin().await;
    let others_token = app.csrf(&other, "/users").await;

    let res = admin
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", others_token.as_str()),
            ("name", "mallory"),
            ("role", "admin"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 403);
    assert!(
        kiln::db::users::find_by_name(&app.pool, "mallory")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn logout_without_a_token_is_refused_and_the_session_lives_on() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    let res = admin.post(app.url("/logout")).send().await.unwrap();

    assert_eq!(res.status(), 403);
    assert_eq!(app.get(&admin, "/").await.status(), 200);
}

#[tokio::test]
async fn htmx_requests_carry_the_token_in_a_header() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user("victim", kiln::domain::Role::Viewer).await;
    let id = app.user_id("victim").await;
    let token = app.csrf(&admin, "/users").await;

    let res = admin
        .post(app.url(&format!("/users/{id}/disable")))
        .header("hx-request", "true")
        .header("x-csrf-token", token)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("state-disabled"));
}

#[tokio::test]
async fn token_authenticated_api_requests_need_no_csrf_token() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;

    let res = reqwest::Client::new()
        .get(app.url("/api/v1/audit"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
}

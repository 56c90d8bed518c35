use kiln::domain::Role;

use crate::helpers::{client, location, spawn_app};

#[tokio::test]
async fn an_admin_creates_users_with_each_role_who_can_then_log_in() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    for role in ["viewer", "operator", "admin"] {
        let name = format!("new-{role}");
        let res = app
            .post_form(
                &admin,
                "/users",
                "/users",
                &[
                    ("name", &name),
                    ("role", role),
                    ("password", "a fine long password"),
                ],
            )
            .await;
        assert_eq!(res.status(), 303, "create {role}");
        let c = client();
        assert_eq!(
            app.login(&c, &name, "a fine long password").await.status(),
            303
        );
    }

    let page = app.get(&admin, "/users").await.text().await.unwrap();
    assert!(
        page.contains("Created new-admin (admin)."),
        "flash shown after redirect"
    );
    assert!(app.audit().await.iter().any(|a| a.action == "user.create"
        && a.target == "user:new-operator"
        && a.detail == "role operator"));
}

#[tokio::test]
async fn bad_user_input_is_explained_and_creates_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let cases = [
        (("", "viewer", "a fine long password"), "Enter a user name."),
        (
            ("bad name", "viewer", "a fine long password"),
            "only letters, digits",
        ),
        (("carol", "root", "a fine long password"), "is not a role"),
        (("carol", "viewer", "short"), "at least 12 characters"),
    ];
    for ((name, role, password), message) in cases {
        let res = app
            .post_form(
                &admin,
                "/users",
                "/users",
                &[("name", name), ("role", role), ("password", password)],
            )
            .await;
        assert_eq!(res.status(), 400, "{name}/{role}");
        assert!(res.text().await.unwrap().contains(message), "{message}");
    }
    let dup = app
        .post_form(
            &admin,
            "/users",
            "/users",
            &[
                ("name", "admin"),
                ("role", "viewer"),
                ("password", "a fine long password"),
            ],
        )
        .await;
    assert_eq!(dup.status(), 409);
    assert!(dup.text().await.unwrap().contains("already exists"));
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_events WHERE action = 'user.create' AND actor = 'admin'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn disable_and_enable_a_user_with_htmx_row_swaps() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user("eve", Role::Operator).await;
    let id = app.user_id("eve").await;
    let token = app.csrf(&admin, "/users").await;
    let hx = |path: String| {
        admin
            .post(app.url(&path))
            .header("hx-request", "true")
            .header("x-csrf-token", &token)
            .send()
    };

    let disabled = hx(format!("/users/{id}/disable")).await.unwrap();
    assert_eq!(disabled.status(), 200);
    let row = disabled.text().await.unwrap();
    assert!(row.starts_with(&format!("<tr id=\"user-{id}\">")), "{row}");
    assert!(row.contains("state-disabled") && row.contains("Enable eve"));

    let again = hx(format!("/users/{id}/disable")).await.unwrap();
    assert_eq!(again.status(), 200, "disabling a disabled user is a no-op");

    let enabled = hx(format!("/users/{id}/enable")).await.unwrap();
    assert!(enabled.text().await.unwrap().contains("Disable eve"));
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .filter(|a| a.target == "user:eve")
        .map(|a| a.action.clone())
        .collect();
    assert_eq!(actions, ["user.enable", "user.disable", "user.disable"]);
}

#[tokio::test]
async fn an_admin_cannot_disable_itself_and_htmx_shows_why_in_a_toast() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let id = app.user_id("admin").await;
    let token = app.csrf(&admin, "/users").await;

    let res = admin
        .post(app.url(&format!("/users/{id}/disable")))
        .header("hx-request", "true")
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["hx-retarget"], "#toasts");
    let body = res.text().await.unwrap();
    assert!(
        body.contains("class=\"toast toast-error\"")
            && body.contains("cannot disable your own account"),
        "{body}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE disabled").await,
        0
    );
}

#[tokio::test]
async fn unknown_user_id_is_a_404_with_words() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    let res = app
        .post_form(&admin, "/users", "/users/9999/disable", &[])
        .await;

    assert_eq!(res.status(), 404);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("There is no user with id 9999.")
    );
}

#[tokio::test]
async fn api_tokens_are_shown_once_stored_hashed_work_and_can_be_revoked() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user("ci", Role::Operator).await;
    let ci = app.user_id("ci").await.to_string();

    let res = app
        .post_form(
            &admin,
            "/users",
            "/tokens",
            &[("user_id", &ci), ("name", "ci-metrics")],
        )
        .await;

    assert_eq!(res.status(), 201);
    let html = res.text().await.unwrap();
    let doc = scraper::Html::parse_document(&html);
    let secret = doc
        .select(&scraper::Selector::parse("code.secret-value").unwrap())
        .next()
        .expect("the new token is shown")
        .text()
        .collect::<String>();
    assert!(secret.starts_with("kiln_"));
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, kiln::auth::token::hash(&secret));
    assert!(
        !app.get(&admin, "/users")
            .await
            .text()
            .await
            .unwrap()
            .contains(&secret),
        "shown once only"
    );

    let api = reqwest::Client::new();
    let ok = api
        .get(app.url("/api/v1/audit"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let used: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE last_used_at > now() - interval '1 minute'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(used, 1, "a used token shows when it was last used");

    let id: i64 = sqlx::query_scalar("SELECT id FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let res = app
        .post_form(&admin, "/users", &format!("/tokens/{id}/revoke"), &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/users");
    let refused = api
        .get(app.url("/api/v1/audit"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "token.create"
        && a.target == "user:ci"
        && a.detail.contains("ci-metrics")));
    assert!(
        audit
            .iter()
            .any(|a| a.action == "token.revoke" && a.target == "user:ci")
    );
}

#[tokio::test]
async fn a_token_of_a_disabled_user_stops_working() {
    let app = spawn_app().await;
    app.create_user("bot", Role::Operator).await;
    let token = app.token_for("bot").await;
    let admin = app.admin().await;
    let id = app.user_id("bot").await;

    app.post_form(&admin, "/users", &format!("/users/{id}/disable"), &[])
        .await;

    let res = reqwest::Client::new()
        .get(app.url("/api/v1/audit"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_token_without_a_name_or_user_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    let no_name = app
        .post_form(
            &admin,
            "/users",
            "/tokens",
            &[("user_id", "1"), ("name", " ")],
        )
        .await;
    let no_user = app
        .post_form(
            &admin,
            "/users",
            "/tokens",
            &[("user_id", "999"), ("name", "x")],
        )
        .await;

    assert_eq!(no_name.status(), 400);
    assert!(
        no_name
            .text()
            .await
            .unwrap()
            .contains("Give the token a name")
    );
    assert_eq!(no_user.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM api_tokens").await, 0);
}

//! Change freezes: defined by admins (validated as a whole, audited), a release during one is
//! refused with 409 naming it unless an admin overrides it (page: asked a second time), and a
//! rollback is never refused.

use serde_json::{Value, json};

use crate::helpers::current_image as current;
use crate::helpers::{TestApp, add_image, eventually, get_json, post, spawn_app};
use kiln::domain::Role;

fn rfc3339(offset_s: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// No release or rollback in progress.
async fn settled(app: &TestApp) {
    eventually(30, "the rollout in progress ends", || async {
        (app.count("SELECT count(*) FROM rollouts WHERE state IN ('pending', 'running', 'paused')")
            .await
            == 0)
            .then_some(())
    })
    .await;
}

async fn delete(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .delete(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn freezes_are_validated_and_only_admins_define_them() {
    let app = spawn_app().await;
    let admin = app.token_for("admin").await;
    app.create_user("olga", Role::Operator).await;
    let operator = app.token_for("olga").await;
    let now = rfc3339(0);
    for (body, field) in [
        (json!({"from": now, "until": now, "reason": "x"}), "until:"),
        (
            json!({"from": now, "until": rfc3339(-60), "reason": "x"}),
            "until:",
        ),
        (json!({"from": rfc3339(0), "reason": "  "}), "reason:"),
        (
            json!({"from": rfc3339(0), "reason": "x",
                   "weekly": {"days": ["friday"], "from": "12:00", "until": "18:00"}}),
            "weekly.days:",
        ),
        (
            json!({"from": rfc3339(0), "reason": "x",
                   "weekly": {"days": ["fri"], "from": "12", "until": "18:00"}}),
            "weekly.from:",
        ),
        (json!({"from": "tomorrow", "reason": "x"}), "from"),
        (
            json!({"from": rfc3339(0), "reason": "x", "untill": rfc3339(60)}),
            "untill",
        ),
    ] {
        let res = post(&app, &admin, "/api/v1/freezes", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(field),
            "{body}: {err}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM freezes").await,
        0,
        "nothing saved"
    );
    let res = post(
        &app,
        &operator,
        "/api/v1/freezes",
        json!({"from": rfc3339(0), "reason": "mine"}),
    )
    .await;
    assert_eq!(res.status(), 403);
    let res = post(
        &app,
        &admin,
        "/api/v1/freezes",
        json!({"from": rfc3339(-60), "reason": "no Friday releases",
               "weekly": {"days": ["fri"], "from": "12:00", "until": "23:59"}}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let listed = get_json(&app, &operator, "/api/v1/freezes").await;
    assert_eq!(listed[0]["reason"], "no Friday releases");
    assert!(
        listed[0]["when"]
            .as_str()
            .unwrap()
            .starts_with("fri 12:00–23:59 UTC every week from"),
        "{listed}"
    );
    let id = listed[0]["id"].as_i64().unwrap();
    assert_eq!(
        delete(&app, &operator, &format!("/api/v1/freezes/{id}"))
            .await
            .status(),
        403
    );
    assert_eq!(
        delete(&app, &admin, &format!("/api/v1/freezes/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        delete(&app, &admin, &format!("/api/v1/freezes/{id}"))
            .await
            .status(),
        404
    );
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "freeze.create"));
    assert!(
        audit
            .iter()
            .any(|a| a.action == "freeze.delete" && a.detail.contains("no Friday releases"))
    );
}

#[tokio::test]
async fn a_release_during_a_freeze_is_refused_unless_an_admin_overrides_and_a_rollback_is_not() {
    let app = spawn_app().await;
    let admin = app.token_for("admin").await;
    app.create_user("olga", Role::Operator).await;
    let operator = app.token_for("olga").await;
    let first = current(&app).await;
    let second = add_image(&app, &operator, "2").await;
    let res = post(
        &app,
        &admin,
        "/api/v1/freezes",
        json!({"from": rfc3339(-3600), "until": rfc3339(3600), "reason": "year-end freeze"}),
    )
    .await;
    assert_eq!(res.status(), 201);

    // Refused, with the freeze named; nothing changed.
    let res = post(
        &app,
        &operator,
        &format!("/api/v1/images/{second}/release"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let err: Value = res.json().await.unwrap();
    let message = err["error"].as_str().unwrap();
    assert!(
        message.starts_with("Releases are frozen: \"year-end freeze\" (from ")
            && message.contains("An admin can override the freeze"),
        "{message}"
    );
    assert_eq!(current(&app).await, first);
    assert_eq!(app.count("SELECT count(*) FROM rollouts").await, 0);
    // An operator cannot override.
    let res = post(
        &app,
        &operator,
        &format!("/api/v1/images/{second}/release"),
        json!({"override_freeze": true}),
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(current(&app).await, first);

    // An admin can, and the audit log says so.
    let res = post(
        &app,
        &admin,
        &format!("/api/v1/images/{second}/release"),
        json!({"override_freeze": true}),
    )
    .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    assert_eq!(current(&app).await, second);
    let audit = app.audit().await;
    let release = audit
        .iter()
        .find(|a| a.action == "image.release")
        .expect("the release is audited");
    assert!(
        release.detail.contains("overriding freeze #")
            && release.detail.contains("year-end freeze"),
        "{}",
        release.detail
    );

    // A rollback is never refused.
    settled(&app).await;
    let res = post(
        &app,
        &operator,
        &format!("/api/v1/images/{first}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    assert_eq!(current(&app).await, first);
}

#[tokio::test]
async fn the_release_page_asks_an_admin_a_second_time_during_a_freeze() {
    let app = spawn_app().await;
    let token = app.token_for("admin").await;
    let second = add_image(&app, &token, "2").await;
    let res = post(
        &app,
        &token,
        "/api/v1/freezes",
        json!({"from": rfc3339(-60), "reason": "incident in progress"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let admin = app.admin().await;
    let path = format!("/images/{second}/release");
    let res = app
        .post_form(&admin, "/images", &path, &[("batch_size", "2")])
        .await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.unwrap();
    assert!(page.contains("incident in progress"), "{page}");
    assert!(
        page.contains("Release anyway, overriding the freeze"),
        "{page}"
    );
    assert_eq!(app.count("SELECT count(*) FROM rollouts").await, 0);
    let res = app
        .post_form(
            &admin,
            "/images",
            &path,
            &[("batch_size", "2"), ("override_freeze", "1")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(current(&app).await, second);
    let batch: i32 = sqlx::query_scalar("SELECT batch_size FROM rollouts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(batch, 2, "the form's own settings went through");
    // An operator sees the refusal and no button.
    let operator = app.user_client("olga", Role::Operator).await;
    let third = add_image(&app, &token, "3").await;
    settled(&app).await;
    let res = app
        .post_form(
            &operator,
            "/images",
            &format!("/images/{third}/release"),
            &[],
        )
        .await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.unwrap();
    assert!(page.contains("incident in progress"));
    assert!(!page.contains("Release anyway"));
}

#[tokio::test]
async fn the_rollouts_page_lists_freezes_and_admins_add_and_delete_them() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let fields = |from: &'static str, until: &'static str| {
        vec![
            ("reason", "year-end freeze"),
            ("from", from),
            ("until", until),
            ("weekly_days", ""),
            ("weekly_from", ""),
            ("weekly_until", ""),
        ]
    };
    let res = app
        .post_form(
            &admin,
            "/rollouts",
            "/freezes",
            &fields("2026-12-20 00:00", "2026-12-19 00:00"),
        )
        .await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("until: must be after from."), "{page}");
    assert!(
        page.contains("value=\"2026-12-19 00:00\""),
        "the form keeps what was typed"
    );
    let res = app
        .post_form(&admin, "/rollouts", "/freezes", &fields("20/12/2026", ""))
        .await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("is not a time as YYYY-MM-DD HH:MM (UTC)."),
        "{page}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM freezes").await,
        0,
        "nothing saved"
    );
    // From now (empty), until deleted.
    let res = app
        .post_form(&admin, "/rollouts", "/freezes", &fields("", ""))
        .await;
    assert_eq!(res.status(), 303);
    let page = app.get(&admin, "/rollouts").await.text().await.unwrap();
    assert!(page.contains("in force</span> year-end freeze"), "{page}");
    assert!(page.contains("Add a freeze"));
    let viewer = app.user_client("vera", Role::Viewer).await;
    let page = app.get(&viewer, "/rollouts").await.text().await.unwrap();
    assert!(page.contains("year-end freeze"));
    assert!(
        !page.contains("Add a freeze") && !page.contains("/delete"),
        "{page}"
    );
    let id: i64 = sqlx::query_scalar("SELECT id FROM freezes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let res = app
        .post_form(&admin, "/rollouts", &format!("/freezes/{id}/delete"), &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(app.count("SELECT count(*) FROM freezes").await, 0);
    let page = app.get(&admin, "/rollouts").await.text().await.unwrap();
    assert!(page.contains("No freeze ahead."));
}

use crate::helpers::{client, spawn_app_with};

#[tokio::test]
async fn repeated_failures_for_an_account_are_refused_with_429_and_audited() {
    let app = spawn_app_with(|s| {
        s.login_max_failures = 3;
        s.login_slow_after = 1;
        s.login_slowdown_ms = 5;
    })
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            app.login(&c, "admin", "wrong password!").await.status(),
            401
        );
    }

    // Even the right password is refused while the account is locked.
    let res = app.login(&c, "admin", &app.admin_password).await;

    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 900, "{retry_after}");
    assert!(res.text().await.unwrap().contains("Too many failed logins"));
    assert_eq!(app.get(&c, "/").await.status(), 303, "not logged in");
    let audit = app.audit().await;
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].result.as_str(),
            audit[0].detail.as_str()
        ),
        (
            "login",
            "refused",
            "too many failed logins for this account"
        )
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "login" && a.result == "failed")
            .count(),
        3
    );
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_refused_across_accounts() {
    let app = spawn_app_with(|s| {
        s.login_max_failures_ip = 4;
        s.login_slowdown_ms = 0;
    })
    .await;
    let c = client();
    for name in ["a", "b", "c", "d"] {
        assert_eq!(app.login(&c, name, "wrong password!").await.status(), 401);
    }

    let res = app.login(&c, "admin", &app.admin_password).await;

    assert_eq!(res.status(), 429);
    assert!(app.audit().await[0].detail.contains("from this address"));
}

#[tokio::test]
async fn failures_outside_the_window_no_longer_count() {
    let app = spawn_app_with(|s| {
        s.login_max_failures = 2;
        s.login_slowdown_ms = 0;
    })
    .await;
    let c = client();
    for _ in 0..2 {
        app.login(&c, "admin", "wrong password!").await;
    }
    // Move the failures out of the window instead of waiting 15 minutes.
    sqlx::query("UPDATE login_failures SET at = now() - interval '16 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();

    let res = app.login(&c, "admin", &app.admin_password).await;

    assert_eq!(res.status(), 303);
}

#[tokio::test]
async fn a_successful_login_resets_the_account_count() {
    let app = spawn_app_with(|s| {
        s.login_max_failures = 3;
        s.login_slowdown_ms = 0;
    })
    .await;
    let c = client();
    app.login(&c, "admin", "wrong password!").await;
    app.login(&c, "admin", "wrong password!").await;
    assert_eq!(
        app.login(&c, "admin", &app.admin_password).await.status(),
        303
    );

    let fresh = client();
    app.login(&fresh, "admin", "wrong password!").await;
    app.login(&fresh, "admin", "wrong password!").await;

    assert_eq!(
        app.login(&fresh, "admin", &app.admin_password)
            .await
            .status(),
        303
    );
}

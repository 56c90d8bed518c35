use kiln::domain::Role;

use crate::helpers::{client, spawn_app};

#[tokio::test]
async fn any_user_changes_its_own_password_and_other_sessions_end() {
    let app = spawn_app().await;
    let password = app.create_user("vic", Role::Viewer).await;
    let here = client();
    app.login(&here, "vic", &password).await;
    let elsewhere = client();
    app.login(&elsewhere, "vic", &password).await;

    let res = app
        .post_form(
            &here,
            "/account",
            "/account/password",
            &[
                ("current", &password),
                ("new", "a brand new password"),
                ("confirm", "a brand new password"),
            ],
        )
        .await;

    assert_eq!(res.status(), 303);
    assert_eq!(
        app.get(&here, "/account").await.status(),
        200,
        "this session continues"
    );
    assert_eq!(
        app.get(&elsewhere, "/").await.status(),
        303,
        "the other session ended"
    );
    assert_eq!(app.login(&client(), "vic", &password).await.status(), 401);
    assert_eq!(
        app.login(&client(), "vic", "a brand new password")
            .await
            .status(),
        303
    );
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "password.change" && a.result == "ok" && a.actor == "vic")
    );
}

#[tokio::test]
async fn a_wrong_current_password_or_a_weak_new_one_changes_nothing() {
    let app = spawn_app().await;
    let password = app.create_user("vic", Role::Viewer).await;
    let c = client();
    app.login(&c, "vic", &password).await;

    let wrong = app
        .post_form(
            &c,
            "/account",
            "/account/password",
            &[
                ("current", "not it at all"),
                ("new", "a brand new password"),
                ("confirm", "a brand new password"),
            ],
        )
        .await;
    let short = app
        .post_form(
            &c,
            "/account",
            "/account/password",
            &[
                ("current", &password),
                ("new", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    let mismatch = app
        .post_form(
            &c,
            "/account",
            "/account/password",
            &[
                ("current", &password),
                ("new", "a brand new password"),
                ("confirm", "another new password"),
            ],
        )
        .await;

    assert_eq!(wrong.status(), 400);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("current password is not right")
    );
    assert_eq!(short.status(), 400);
    assert!(
        short
            .text()
            .await
            .unwrap()
            .contains("at least 12 characters")
    );
    assert_eq!(mismatch.status(), 400);
    assert_eq!(
        app.login(&client(), "vic", &password).await.status(),
        303,
        "old password still works"
    );
}

use kiln::domain::Role;

use crate::helpers::{client, csrf_from, location, spawn_app};

#[tokio::test]
async fn login_with_the_initial_admin_password_reaches_the_console() {
    let app = spawn_app().await;
    let c = client();

    let res = app.login(&c, "admin", &app.admin_password).await;

    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/");
    let overview = app.get(&c, "/").await;
    assert_eq!(overview.status(), 200);
    let html = overview.text().await.unwrap();
    for nav in [
        "Overview", "Images", "Servers", "Rollouts", "Bakes", "Jobs", "Metrics", "Alerts", "Audit",
        "Users",
    ] {
        assert!(
            html.contains(&format!(">{nav}</a>")),
            "navigation has {nav}"
        );
    }
    let audit = app.audit().await;
    let login = audit
        .iter()
        .find(|a| a.action == "login")
        .expect("login audited");
    assert_eq!(
        (login.actor.as_str(), login.result.as_str()),
        ("admin", "ok")
    );
    assert_eq!(login.source_ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn unauthenticated_pages_redirect_to_login_with_next() {
    let app = spawn_app().await;
    let c = client();

    let res = app.get(&c, "/audit?before=10").await;

    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/login?next=%2Faudit%3Fbefore%3D10");
    let page = app.get(&c, &location(&res)).await.text().await.unwrap();
    let res = client().post(app.url("/login")).send().await.unwrap();
    assert_eq!(
        res.status(),
        403,
        "a login post without a CSRF token is refused"
    );
    let token = csrf_from(&page);
    let res = c
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("username", "admin"),
            ("password", &app.admin_password),
            ("next", "/audit?before=10"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/audit?before=10");
}

#[tokio::test]
async fn login_never_redirects_off_site() {
    let app = spawn_app().await;
    let c = client();
    let token = app.csrf(&c, "/login").await;

    let res = c
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("username", "admin"),
            ("password", &app.admin_password),
            ("next", "//evil.example/"),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(location(&res), "/");
}

#[tokio::test]
async fn wrong_password_is_refused_and_audited() {
    let app = spawn_app().await;
    let c = client();

    let res = app.login(&c, "admin", "not the password at all").await;

    assert_eq!(res.status(), 401);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Wrong user name or password.")
    );
    assert_eq!(app.get(&c, "/").await.status(), 303, "still logged out");
    let audit = app.audit().await;
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].result.as_str(),
            audit[0].detail.as_str()
        ),
        ("login", "failed", "wrong password")
    );
}

#[tokio::test]
async fn unknown_user_gets_the_same_answer_as_a_wrong_password() {
    let app = spawn_app().await;
    let c = client();

    let res = app.login(&c, "nobody", "whatever password").await;

    assert_eq!(res.status(), 401);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Wrong user name or password.")
    );
    let audit = app.audit().await;
    assert_eq!(
        (audit[0].actor.as_str(), audit[0].detail.as_str()),
        ("nobody", "unknown user")
    );
}

#[tokio::test]
async fn disabled_user_cannot_log_in_and_is_logged_out_everywhere() {
    let app = spawn_app().await;
    let password = app.create_user("dora", Role::Operator).await;
    let dora = client();
    assert_eq!(app.login(&dora, "dora", &password).await.status(), 303);
    let admin = app.admin().await;
    let id = app.user_id("dora").await;

    let res = app
        .post_form(&admin, "/users", &format!("/users/{id}/disable"), &[])
        .await;

    assert_eq!(res.status(), 303);
    assert_eq!(
        app.get(&dora, "/").await.status(),
        303,
        "dora's live session ended"
    );
    let again = client();
    let res = app.login(&again, "dora", &password).await;
    assert_eq!(res.status(), 401);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("This account is disabled")
    );
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "login" && a.detail == "user is disabled")
    );
}

#[tokio::test]
async fn session_id_changes_at_login() {
    // No session exists before a login (nothing is stored for a visitor), so the session a
    // login could inherit is an earlier one of the same browser: logging in again.
    let app = spawn_app().await;
    let c = client();
    let first = app.login(&c, "admin", &app.admin_password).await;
    let before = session_cookie(&first).expect("login sets a session cookie");

    // Logged in, /login redirects: post the form with the session's own token.
    let token = app.csrf(&c, "/account").await;
    let res = c
        .post(app.url("/login"))
        .form(&admin_login(&app, &token))
        .send()
        .await
        .unwrap();

    let after = session_cookie(&res).expect("login sets a new session cookie");
    assert_ne!(before, after);
    // The earlier id is dead: presenting it again is not logged in.
    let replay = client()
        .get(app.url("/"))
        .header("cookie", format!("kiln_session={before}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 303);
}

/// Visitors who have not logged in write nothing: the login form's CSRF token lives in a
/// signed cookie, and a session row is created at login, not before.
#[tokio::test]
async fn anonymous_visitors_and_failed_logins_store_no_session() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.login_max_failures = 3;
        s.login_slow_after = 1;
        s.login_slowdown_ms = 5;
    })
    .await;
    let sessions = "SELECT count(*) FROM sessions";
    let before = app.count(sessions).await;

    for _ in 0..50 {
        let res = client().get(app.url("/login")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(session_cookie(&res).is_none(), "no session for a visitor");
    }
    let same = client();
    for _ in 0..5 {
        assert_eq!(app.get(&same, "/login").await.status(), 200);
        assert_eq!(app.get(&same, "/servers").await.status(), 303);
    }
    let c = client();
    for _ in 0..3 {
        let res = app.login(&c, "admin", "wrong password!").await;
        assert_eq!(res.status(), 401);
        assert!(session_cookie(&res).is_none());
    }
    assert_eq!(app.count(sessions).await, before, "no row for visitors");

    // Throttling still holds: the account is locked even for the right password.
    let locked = app.login(&c, "admin", &app.admin_password).await;
    assert_eq!(locked.status(), 429);
    assert_eq!(app.count(sessions).await, before);

    let other = app.create_user("dana", kiln::domain::Role::Viewer).await;
    let res = app.login(&client(), "dana", &other).await;
    assert_eq!(res.status(), 303);
    assert_eq!(app.count(sessions).await, before + 1, "one row, at login");
}

/// The login form's token must match the signed cookie of the same browser.
#[tokio::test]
async fn the_login_form_needs_its_own_signed_cookie() {
    let app = spawn_app().await;
    let mallory = client();
    let token = app.csrf(&mallory, "/login").await;
    let form = admin_login(&app, &token);

    // Another browser (no cookie) with mallory's token.
    let res = client()
        .post(app.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The token as a cookie, unsigned.
    let res = client()
        .post(app.url("/login"))
        .header("cookie", format!("kiln_csrf={token}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("did not come from Kiln"));
    // Mallory's own browser, with its cookie: accepted.
    let res = mallory
        .post(app.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
}

#[tokio::test]
async fn logout_destroys_the_session_server_side() {
    let app = spawn_app().await;
    let c = client();
    let res = app.login(&c, "admin", &app.admin_password).await;
    let cookie = session_cookie(&res).unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE user_id IS NOT NULL")
            .await,
        1
    );

    let res = app.post_form(&c, "/", "/logout", &[]).await;

    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/login");
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE user_id IS NOT NULL")
            .await,
        0
    );
    let replay = client()
        .get(app.url("/"))
        .header("cookie", format!("kiln_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        replay.status(),
        303,
        "the old cookie no longer logs anyone in"
    );
    assert!(
        app.audit()
            .await
            .iter()
            .any(|a| a.action == "logout" && a.actor == "admin")
    );
}

#[tokio::test]
async fn session_cookie_is_httponly_and_samesite_lax() {
    let app = spawn_app().await;

    let res = app.login(&client(), "admin", &app.admin_password).await;

    let header = set_cookie(&res, "kiln_session=");
    assert!(header.contains("HttpOnly"), "{header}");
    assert!(header.contains("SameSite=Lax"), "{header}");
    assert!(!header.contains("Secure"), "plain http: no Secure flag");
}

#[tokio::test]
async fn sessions_end_after_the_idle_timeout() {
    let app = spawn_app().await;
    let c = app.admin().await;

    // Age the session past its idle expiry instead of sleeping.
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();

    assert_eq!(app.get(&c, "/").await.status(), 303);
}

/// The catalogue pages (the biggest reads) show nothing to an ended session.
#[tokio::test]
async fn an_ended_session_sees_nothing_of_the_catalogue_pages() {
    let app = spawn_app().await;
    let c = app.admin().await;
    let image: String = sqlx::query_scalar("SELECT id FROM images LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let images = app.get(&c, "/images").await;
    assert_eq!(images.status(), 200);
    assert!(images.text().await.unwrap().contains(&image));
    let servers = app.get(&c, "/servers").await;
    assert_eq!(servers.status(), 200);
    assert!(
        servers.text().await.unwrap().contains(&image),
        "the launch form offers it"
    );

    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();

    for path in [
        "/images",
        "/servers",
        "/servers?state=running",
        "/images?rows=true",
    ] {
        let res = app.get(&c, path).await;
        assert_eq!(res.status(), 303, "{path}");
        assert!(location(&res).starts_with("/login"), "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains(&image), "{path}: {body}");
    }
    for path in ["/servers?live=true", "/images?rows=true"] {
        let res = c
            .get(app.url(path))
            .header("HX-Request", "true")
            .send()
            .await
            .unwrap();
        assert_ne!(res.status(), 200, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains(&image), "{path}: {body}");
    }
    // The pages' reads were dropped with the refused requests; the console still reads.
    let c = app.admin().await;
    assert_eq!(app.get(&c, "/servers").await.status(), 200);
}

/// The Servers page hands the session it read to the session store of the same request
/// only: many requests at once, from users of different roles, each see their own.
#[tokio::test]
async fn requests_at_once_each_see_their_own_session() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let viewer = app.user_client("vera", Role::Viewer).await;
    let anonymous = client();
    let view = |c: &reqwest::Client| {
        let c = c.clone();
        let url = app.url("/servers");
        async move {
            let res = c.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.push(view(&admin));
        requests.push(view(&viewer));
        requests.push(view(&anonymous));
    }
    let answers = futures_util::future::join_all(requests).await;
    for (i, (status, page)) in answers.into_iter().enumerate() {
        match i % 3 {
            0 => assert!(
                status == 200
                    && page.contains("Launch servers")
                    && page.contains("title=\"Your account\">admin</a>"),
                "admin's view: {status}"
            ),
            1 => assert!(
                status == 200
                    && !page.contains("Launch servers")
                    && page.contains("title=\"Your account\">vera</a>"),
                "vera's view: {status}"
            ),
            _ => assert_eq!(status, 303, "no session, no page"),
        }
    }
}

#[tokio::test]
async fn using_a_session_pushes_its_idle_expiry_forward() {
    let app = spawn_app().await;
    let c = app.admin().await;
    sqlx::query("UPDATE sessions SET expires_at = now() + interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();

    assert_eq!(app.get(&c, "/servers").await.status(), 200);

    let left: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(expires_at) - now())::FLOAT8 FROM sessions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        left > 1800.0 - 60.0,
        "the idle timeout (1,800 s) starts again: {left} s left"
    );
}

#[tokio::test]
async fn every_request_sees_the_user_as_the_database_has_it_now() {
    let app = spawn_app().await;
    let password = app.create_user("erin", Role::Admin).await;
    let erin = client();
    assert_eq!(app.login(&erin, "erin", &password).await.status(), 303);
    assert_eq!(app.get(&erin, "/users").await.status(), 200);

    // Changed behind the console's back (no session is ended): the next request knows.
    sqlx::query("UPDATE users SET role = 'viewer' WHERE name = 'erin'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.get(&erin, "/users").await.status(), 403);
    // The Servers page too: the same user, as the database has it now.
    let servers = app.get(&erin, "/servers").await;
    assert_eq!(servers.status(), 200);
    let page = servers.text().await.unwrap();
    assert!(
        !page.contains("Launch servers") && !page.contains("Apply to selected"),
        "a viewer now: no launch form, no actions"
    );

    sqlx::query("UPDATE users SET disabled = TRUE WHERE name = 'erin'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.get(&erin, "/servers").await.status(), 303);
}

#[tokio::test]
async fn the_user_read_with_a_session_is_never_stored_in_it() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // A request that changes the session (a flash message) writes its state back.
    let res = app
        .post_form(
            &admin,
            "/users",
            "/users",
            &[
                ("name", "frank"),
                ("role", "viewer"),
                ("password", "a fine long password"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(app.get(&admin, "/users").await.status(), 200);

    let states: Vec<String> = sqlx::query_scalar("SELECT state::TEXT FROM sessions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(!states.is_empty());
    for state in states {
        assert!(!state.contains("kiln.loaded_user"), "{state}");
    }
}

#[tokio::test]
async fn sessions_end_after_the_absolute_timeout_even_when_active() {
    let app = spawn_app().await;
    let c = app.admin().await;

    assert_eq!(app.get(&c, "/servers").await.status(), 200);

    sqlx::query("UPDATE sessions SET created_at = now() - interval '13 hours'")
        .execute(&app.pool)
        .await
        .unwrap();

    // Every page, including those that read the session along with their own reads.
    for path in ["/", "/servers", "/images"] {
        let res = app.get(&c, path).await;
        assert_eq!(res.status(), 303, "{path}");
        assert!(location(&res).starts_with("/login"), "{path}");
    }
}

fn session_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let rest = v.strip_prefix("kiln_session=")?;
        let value = rest.split(';').next()?;
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[tokio::test]
async fn session_cookie_is_secure_when_served_over_https() {
    let app =
        crate::helpers::spawn_app_with(|s| s.public_url = Some("https://kiln.example.com".into()))
            .await;

    // The login page's CSRF cookie, then the session's (Secure cookies are not sent back over
    // the tests' plain http, so the login is posted with the cookie by hand).
    let page = client().get(app.url("/login")).send().await.unwrap();
    let csrf_cookie = set_cookie(&page, "kiln_csrf=");
    assert!(csrf_cookie.contains("; Secure"), "{csrf_cookie}");
    assert!(page.headers().contains_key("strict-transport-security"));
    let token = crate::helpers::csrf_from(&page.text().await.unwrap());
    let res = client()
        .post(app.url("/login"))
        .header("cookie", csrf_cookie.split(';').next().unwrap())
        .form(&admin_login(&app, &token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let header = set_cookie(&res, "kiln_session=");
    assert!(header.contains("; Secure"), "{header}");
}

/// The login form as the first admin fills it in, with `token` as its CSRF token.
fn admin_login<'a>(app: &'a crate::helpers::TestApp, token: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("csrf_token", token),
        ("username", "admin"),
        ("password", app.admin_password.as_str()),
    ]
}

/// The whole Set-Cookie header of the cookie whose pair starts with `prefix`.
fn set_cookie(res: &reqwest::Response, prefix: &str) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} cookie was set"))
        .to_owned()
}

//! Every route in the route table, called as nobody, a viewer, an operator and an admin.
//! The expectations are written out here, route by route: adding a route to the table
//! without adding it here fails `the_matrix_covers_every_route`.

use kiln::domain::Role;
use kiln::web::access::Access;
use kiln::web::routes::ROUTES;
use reqwest::{Client, StatusCode};

use crate::helpers::{TestApp, client, location, spawn_app};

/// The access each route declares.
const EXPECTED: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Public),
    ("GET", "/static/{path:.*}", Access::Public),
    ("GET", "/login", Access::Public),
    ("POST", "/login", Access::Public),
    ("POST", "/logout", Access::Role(Role::Viewer)),
    ("GET", "/", Access::Role(Role::Viewer)),
    ("GET", "/images", Access::Role(Role::Viewer)),
    ("POST", "/images", Access::Role(Role::Operator)),
    ("GET", "/images/cleanup", Access::Role(Role::Viewer)),
    ("POST", "/images/cleanup", Access::Role(Role::Operator)),
    ("GET", "/images/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/images/{id}/deregister",
        Access::Role(Role::Operator),
    ),
    ("GET", "/servers", Access::Role(Role::Viewer)),
    ("POST", "/servers", Access::Role(Role::Operator)),
    ("GET", "/servers/{id}", Access::Role(Role::Viewer)),
    ("POST", "/servers/bulk", Access::Role(Role::Operator)),
    (
        "POST",
        "/servers/{id}/{action}",
        Access::Role(Role::Operator),
    ),
    ("POST", "/images/{id}/release", Access::Role(Role::Operator)),
    (
        "POST",
        "/images/{id}/rollback",
        Access::Role(Role::Operator),
    ),
    ("GET", "/rollouts", Access::Role(Role::Viewer)),
    ("GET", "/rollouts/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/rollouts/{id}/{action}",
        Access::Role(Role::Operator),
    ),
    ("GET", "/bakes", Access::Role(Role::Viewer)),
    ("POST", "/bakes", Access::Role(Role::Operator)),
    ("POST", "/bakes/recipes", Access::Role(Role::Operator)),
    ("GET", "/bakes/recipes/{id}", Access::Role(Role::Viewer)),
    ("POST", "/bakes/recipes/{id}", Access::Role(Role::Operator)),
    ("GET", "/bakes/{id}", Access::Role(Role::Viewer)),
    ("POST", "/bakes/{id}/cancel", Access::Role(Role::Operator)),
    ("GET", "/jobs", Access::Role(Role::Viewer)),
    ("GET", "/dashboards", Access::Role(Role::Viewer)),
    ("GET", "/dashboards/series", Access::Role(Role::Viewer)),
    ("GET", "/dashboards/markers", Access::Role(Role::Viewer)),
    ("POST", "/dashboards", Access::Role(Role::Operator)),
    ("GET", "/dashboards/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/dashboards/{id}/rename",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/delete",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/charts",
        Access::Role(Role::Operator),
    ),
    (
        "GET",
        "/dashboards/{id}/charts/{chart}",
        Access::Role(Role::Viewer),
    ),
    (
        "POST",
        "/dashboards/{id}/charts/{chart}",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/charts/{chart}/series",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/charts/{chart}/series/{n}/remove",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/charts/{chart}/delete",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/dashboards/{id}/charts/{chart}/move",
        Access::Role(Role::Operator),
    ),
    ("GET", "/scaling", Access::Role(Role::Viewer)),
    ("POST", "/scaling", Access::Role(Role::Operator)),
    ("POST", "/scaling/preview", Access::Role(Role::Operator)),
    ("POST", "/scaling/{action}", Access::Role(Role::Operator)),
    ("GET", "/alerts", Access::Role(Role::Viewer)),
    ("POST", "/alerts", Access::Role(Role::Operator)),
    ("GET", "/alerts/badge", Access::Role(Role::Viewer)),
    ("POST", "/alerts/preview", Access::Role(Role::Operator)),
    ("POST", "/alerts/silences", Access::Role(Role::Operator)),
    (
        "POST",
        "/alerts/silences/{id}/end",
        Access::Role(Role::Operator),
    ),
    ("POST", "/alerts/channels", Access::Role(Role::Admin)),
    (
        "POST",
        "/alerts/channels/{id}/delete",
        Access::Role(Role::Admin),
    ),
    (
        "POST",
        "/alerts/channels/{id}/test",
        Access::Role(Role::Admin),
    ),
    ("GET", "/alerts/{id}", Access::Role(Role::Viewer)),
    ("POST", "/alerts/{id}", Access::Role(Role::Operator)),
    ("POST", "/alerts/{id}/delete", Access::Role(Role::Operator)),
    ("POST", "/alerts/{id}/ack", Access::Role(Role::Operator)),
    ("POST", "/alerts/{id}/test", Access::Role(Role::Operator)),
    ("GET", "/audit", Access::Role(Role::Viewer)),
    ("GET", "/account", Access::Role(Role::Viewer)),
    ("POST", "/account/password", Access::Role(Role::Viewer)),
    ("GET", "/users", Access::Role(Role::Admin)),
    ("POST", "/users", Access::Role(Role::Admin)),
    ("POST", "/users/{id}/disable", Access::Role(Role::Admin)),
    ("POST", "/users/{id}/enable", Access::Role(Role::Admin)),
    ("POST", "/tokens", Access::Role(Role::Admin)),
    ("POST", "/tokens/{id}/revoke", Access::Role(Role::Admin)),
    ("GET", "/api/v1/audit", Access::Role(Role::Viewer)),
    ("GET", "/api/v1/images", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/images", Access::Role(Role::Operator)),
    ("GET", "/api/v1/images/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/images/{id}/deregister",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/images/{id}/release",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/images/{id}/rollback",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/rollouts", Access::Role(Role::Viewer)),
    ("GET", "/api/v1/series", Access::Role(Role::Viewer)),
    ("GET", "/api/v1/recipes", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/recipes", Access::Role(Role::Operator)),
    ("POST", "/api/v1/recipes/{id}", Access::Role(Role::Operator)),
    ("GET", "/api/v1/bakes", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/bakes", Access::Role(Role::Operator)),
    ("GET", "/api/v1/bakes/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/bakes/{id}/cancel",
        Access::Role(Role::Operator),
    ),
    ("POST", "/hooks/github", Access::Signed),
    ("POST", "/v1/metrics", Access::Role(Role::Operator)),
    ("POST", "/v1/measurements", Access::Role(Role::Operator)),
    (
        "POST",
        "/v1/annotations/{stream}",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/rollouts/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/rollouts/{id}/{action}",
        Access::Role(Role::Operator),
    ),
    ("POST", "/freezes", Access::Role(Role::Admin)),
    ("POST", "/freezes/{id}/delete", Access::Role(Role::Admin)),
    (
        "GET",
        "/api/v1/rollouts/{id}/comparison",
        Access::Role(Role::Viewer),
    ),
    ("GET", "/api/v1/freezes", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/freezes", Access::Role(Role::Admin)),
    ("DELETE", "/api/v1/freezes/{id}", Access::Role(Role::Admin)),
    ("GET", "/api/v1/servers", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/servers", Access::Role(Role::Operator)),
    ("GET", "/api/v1/servers/{id}", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/servers/{id}/{action}",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/launches/{id}", Access::Role(Role::Viewer)),
    ("GET", "/jobs/{id}", Access::Role(Role::Viewer)),
    ("POST", "/jobs", Access::Role(Role::Operator)),
    ("POST", "/jobs/retry_failed", Access::Role(Role::Operator)),
    ("POST", "/jobs/{id}/cancel", Access::Role(Role::Operator)),
    ("POST", "/jobs/{id}/retry", Access::Role(Role::Operator)),
    ("GET", "/api/v1/jobs", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/jobs", Access::Role(Role::Operator)),
    ("GET", "/api/v1/jobs/{id}", Access::Role(Role::Viewer)),
    ("GET", "/api/v1/jobs/{id}/log", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/jobs/{id}/cancel",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/jobs/{id}/retry",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/scaling", Access::Role(Role::Viewer)),
    ("PUT", "/api/v1/scaling", Access::Role(Role::Operator)),
    (
        "GET",
        "/api/v1/scaling/decisions",
        Access::Role(Role::Viewer),
    ),
    (
        "POST",
        "/api/v1/scaling/preview",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/alerts", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/alerts", Access::Role(Role::Operator)),
    ("GET", "/api/v1/alerts/status", Access::Role(Role::Viewer)),
    (
        "POST",
        "/api/v1/alerts/preview",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/alerts/{id}", Access::Role(Role::Viewer)),
    ("PUT", "/api/v1/alerts/{id}", Access::Role(Role::Operator)),
    (
        "DELETE",
        "/api/v1/alerts/{id}",
        Access::Role(Role::Operator),
    ),
    (
        "GET",
        "/api/v1/alerts/{id}/history",
        Access::Role(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/alerts/{id}/deliveries",
        Access::Role(Role::Viewer),
    ),
    (
        "POST",
        "/api/v1/alerts/{id}/ack",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/alerts/{id}/silence",
        Access::Role(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/alerts/{id}/test",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/silences", Access::Role(Role::Viewer)),
    ("POST", "/api/v1/silences", Access::Role(Role::Operator)),
    (
        "DELETE",
        "/api/v1/silences/{id}",
        Access::Role(Role::Operator),
    ),
    ("GET", "/api/v1/channels", Access::Role(Role::Admin)),
    ("POST", "/api/v1/channels", Access::Role(Role::Admin)),
    ("GET", "/api/v1/channels/{id}", Access::Role(Role::Admin)),
    ("PUT", "/api/v1/channels/{id}", Access::Role(Role::Admin)),
    ("DELETE", "/api/v1/channels/{id}", Access::Role(Role::Admin)),
    (
        "POST",
        "/api/v1/channels/{id}/test",
        Access::Role(Role::Admin),
    ),
    ("GET", "/v1/alerts", Access::Role(Role::Viewer)),
    ("POST", "/v1/alerts", Access::Role(Role::Operator)),
    ("GET", "/v1/alerts/status", Access::Role(Role::Viewer)),
    ("GET", "/v1/alerts/{id}", Access::Role(Role::Viewer)),
    ("PUT", "/v1/alerts/{id}", Access::Role(Role::Operator)),
    ("DELETE", "/v1/alerts/{id}", Access::Role(Role::Operator)),
    (
        "POST",
        "/v1/alerts/{id}/clear",
        Access::Role(Role::Operator),
    ),
    ("POST", "/agent/v1/register", Access::Public),
    ("POST", "/agent/v1/heartbeat", Access::Agent),
    ("POST", "/agent/v1/claim", Access::Agent),
    ("POST", "/agent/v1/log", Access::Agent),
    ("POST", "/agent/v1/finish", Access::Agent),
    ("GET", "/agent/v1/binary", Access::Public),
];

#[test]
fn the_matrix_covers_every_route() {
    let declared: Vec<(&str, &str, Access)> = ROUTES
        .iter()
        .map(|r| (r.method, r.path, r.access))
        .collect();
    for route in &declared {
        assert!(
            EXPECTED.contains(route),
            "route {route:?} is not in the role matrix: add it to EXPECTED"
        );
    }
    for route in EXPECTED {
        assert!(
            declared.contains(route),
            "EXPECTED lists {route:?}, which the route table does not declare"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    As(Role),
}

const EVERYONE: [Who; 4] = [
    Who::Nobody,
    Who::As(Role::Viewer),
    Who::As(Role::Operator),
    Who::As(Role::Admin),
];

struct Fixture {
    passwords: Vec<(Role, String)>,
    tokens: Vec<(Role, String)>,
    victim_id: i64,
    token_id: i64,
    image_id: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let mut passwords = Vec::new();
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = format!("m-{role}");
        passwords.push((role, app.create_user(&name, role).await));
        tokens.push((role, app.token_for(&name).await));
    }
    app.create_user("victim", Role::Viewer).await;
    let victim_id = app.user_id("victim").await;
    // The revoke route acts on the victim's token, not on one the matrix still uses.
    app.token_for("victim").await;
    let token_id: i64 = sqlx::query_scalar("SELECT max(id) FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let image_id: String = sqlx::query_scalar("SELECT id FROM images LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    Fixture {
        passwords,
        tokens,
        victim_id,
        token_id,
        image_id,
    }
}

fn concrete(path: &str, f: &Fixture) -> String {
    path.replace("{path:.*}", "app.css")
        .replace("/users/{id}", &format!("/users/{}", f.victim_id))
        .replace("/tokens/{id}", &format!("/tokens/{}", f.token_id))
        .replace("/images/{id}", &format!("/images/{}", f.image_id))
        .replace("/servers/{id}", "/servers/i-local-00000000000000000")
        .replace("/launches/{id}", "/launches/1")
        .replace("/jobs/{id}", "/jobs/1")
        .replace("/rollouts/{id}", "/rollouts/1")
        .replace("/dashboards/{id}", "/dashboards/1")
        .replace("/bakes/{id}", "/bakes/1")
        .replace("/recipes/{id}", "/recipes/1")
        .replace("/alerts/{id}", "/alerts/1")
        .replace("/silences/{id}", "/silences/1")
        .replace("/channels/{id}", "/channels/1")
        .replace("/freezes/{id}", "/freezes/1")
        .replace("{chart}", "1")
        .replace("{n}", "0")
        .replace("/scaling/{action}", "/scaling/pause")
        .replace("{action}", "disable")
        .replace("{stream}", "deploys")
}

/// A fresh client for `who` (fresh, because some routes log out or disable), and a CSRF
/// token of its session so that posts reach the access check.
async fn session_for(app: &TestApp, who: Who, f: &Fixture) -> (Client, String) {
    let c = client();
    match who {
        Who::Nobody => {
            let token = app.csrf(&c, "/login").await;
            (c, token)
        }
        Who::As(role) => {
            let password = &f.passwords.iter().find(|(r, _)| *r == role).unwrap().1;
            let res = app.login(&c, &format!("m-{role}"), password).await;
            assert_eq!(res.status(), 303);
            let token = app.csrf(&c, "/account").await;
            (c, token)
        }
    }
}

#[tokio::test]
async fn every_route_answers_each_role_as_declared() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let mut failures = Vec::new();

    for route in ROUTES {
        let path = concrete(route.path, &f);
        let api = kiln::web::is_api_path(&path);
        for who in EVERYONE {
            let res = if api {
                let mut req = Client::new().request(route.method.parse().unwrap(), app.url(&path));
                if let Who::As(role) = who {
                    req = req.bearer_auth(&f.tokens.iter().find(|(r, _)| *r == role).unwrap().1);
                }
                req.send().await.unwrap()
            } else {
                let (c, token) = session_for(&app, who, &f).await;
                if route.method == "GET" {
                    c.get(app.url(&path)).send().await.unwrap()
                } else {
                    c.post(app.url(&path))
                        .form(&[("csrf_token", token.as_str())])
                        .send()
                        .await
                        .unwrap()
                }
            };
            let status = res.status();
            let to_login = status == StatusCode::SEE_OTHER && location(&res).starts_with("/login");
            // A server error is never an answer: not a refusal, and not "allowed" either.
            let outcome = if status.is_server_error() {
                Err("server error")
            } else {
                decide_outcome(route, who, api, status, to_login)
            };
            if let Err(why) = outcome {
                failures.push(format!(
                    "{} {} as {:?}: {} (got {})",
                    route.method, path, who, why, status
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role matrix failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_viewer_sees_pages_without_action_controls_and_no_users_link() {
    let app = spawn_app().await;
    let viewer = app.user_client("vera", Role::Viewer).await;

    let html = app.get(&viewer, "/").await.text().await.unwrap();

    assert!(
        !html.contains(">Users</a>"),
        "viewers do not see the Users page"
    );
    assert!(html.contains(">Audit</a>"));
    assert_eq!(app.get(&viewer, "/users").await.status(), 403);
}

/// What a role's request to a route should have got, by its status (server errors are
/// judged before this: never acceptable).
fn decide_outcome(
    route: &kiln::web::routes::RouteSpec,
    who: Who,
    api: bool,
    status: StatusCode,
    to_login: bool,
) -> Result<(), &'static str> {
    match (route.access, who) {
        // Nobody in the matrix signs its requests with the webhook's secret.
        (Access::Signed, _) => {
            if status == StatusCode::UNAUTHORIZED {
                Ok(())
            } else {
                Err("expected 401 without a valid signature")
            }
        }
        // Nobody in the matrix holds an agent token; a user's API token is not one.
        (Access::Agent, _) => {
            if status == StatusCode::UNAUTHORIZED {
                Ok(())
            } else {
                Err("expected 401 without an agent token")
            }
        }
        (Access::Public, _) => {
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || to_login {
                Err("public route refused")
            } else {
                Ok(())
            }
        }
        (Access::Role(_), Who::Nobody) if api => {
            if status == StatusCode::UNAUTHORIZED {
                Ok(())
            } else {
                Err("expected 401")
            }
        }
        (Access::Role(_), Who::Nobody) => {
            if to_login {
                Ok(())
            } else {
                Err("expected a redirect to /login")
            }
        }
        (Access::Role(least), Who::As(role)) if role < least => {
            if status == StatusCode::FORBIDDEN {
                Ok(())
            } else {
                Err("expected 403")
            }
        }
        // Logging out succeeds by sending the user to the login page.
        (Access::Role(_), Who::As(_)) if route.path == "/logout" => {
            if to_login {
                Ok(())
            } else {
                Err("expected logout to redirect to /login")
            }
        }
        (Access::Role(_), Who::As(_)) => {
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || to_login {
                Err("allowed role refused")
            } else {
                Ok(())
            }
        }
    }
}

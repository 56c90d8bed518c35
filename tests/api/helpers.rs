//! Arrange helpers: a running app on a fresh database, HTTP clients, users and tokens.

use kiln::config::Settings;
use kiln::domain::{Password, Role, UserName};
use kiln::startup::Application;
use std::time::Duration;

use kiln::cloud::{Provider, ServerFilter, ServerState, describe_all};
use reqwest::{Client, Response, redirect};
use serde_json::{Value, json};
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub cloud: std::sync::Arc<kiln::cloud::AnyProvider>,
    pub pool: PgPool,
    pub admin_password: String,
    /// Stops the local servers (agent processes) this app launched when the test ends,
    /// passed or panicked.
    _agents: AgentsGuard,
}

/// Kills, when dropped, every local server's agent process recorded in a database: local
/// servers are real processes in process groups of their own, and outlive the test process
/// unless something stops them. Used by every [`TestApp`], and by the tests that run
/// `kiln serve` as a child process (they hold one for their database).
pub struct AgentsGuard {
    database_url: String,
}

impl AgentsGuard {
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
        }
    }
}

impl Drop for AgentsGuard {
    fn drop(&mut self) {
        let url = self.database_url.clone();
        // On a thread of its own: a drop may run inside the test's runtime, which must not
        // block, and after a panic that runtime may be gone.
        let stopped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(pool) = kiln::db::connect(&url).await else {
                    return;
                };
                let live: Vec<(String, i32)> = sqlx::query_as(
                    "SELECT id, pid FROM local_instances WHERE pid IS NOT NULL AND state <> 'terminated'",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for (id, pid) in live {
                    // Only the process that is still this server's agent (pid and command
                    // line, as the local provider itself checks): never a reused pid.
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    if cmdline.contains("agent") && cmdline.contains(&id) {
                        // SAFETY: kill(2) on a process group; no memory is touched.
                        unsafe {
                            libc::kill(-pid, libc::SIGKILL);
                        }
                    }
                }
                pool.close().await;
            });
        });
        let _ = stopped.join();
    }
}

/// The URL of a fresh, uniquely named database on the local server (or on
/// KILN_TEST_DATABASE_URL's server when set). Kiln creates it at start.
pub fn fresh_database_url() -> String {
    let base = std::env::var("KILN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| kiln::config::default_database_url());
    let mut url = url::Url::parse(&base).expect("a valid database URL");
    url.set_path(&format!("/kiln_test_{}", uuid::Uuid::new_v4().simple()));
    url.to_string()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    // The app's logs drown test output; KILN_TEST_LOG=1 (with RUST_LOG) shows them.
    if std::env::var_os("KILN_TEST_LOG").is_some() {
        kiln::telemetry::init();
    }
    let database_url = fresh_database_url();
    let mut settings =
        Settings::with_defaults(database_url.clone(), "127.0.0.1:0".parse().unwrap());
    settings.agent_exe = Some(env!("CARGO_BIN_EXE_kiln").into());
    configure(&mut settings);
    let app = Application::build(settings).await.expect("the app builds");
    let port = app.port();
    let pool = app.pool().clone();
    let admin_password = app
        .initial_admin_password
        .clone()
        .expect("a fresh database creates the admin");
    let cloud = app.cloud();
    tokio::spawn(app.run_until_stopped());
    // Let the start-up tasks (adopting the local base image) finish, so that tests begin
    // from a settled console and background writes do not interleave with their own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let busy: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state IN ('queued', 'running')")
                .fetch_one(&pool)
                .await
                .unwrap();
        if busy == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "start-up tasks did not finish within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        cloud,
        pool,
        admin_password,
        _agents: AgentsGuard::new(&database_url),
    }
}

/// A browser-like client: keeps cookies, does not follow redirects (tests look at them).
pub fn client() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// The CSRF token from a page's first form.
pub fn csrf_from(html: &str) -> String {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(r#"input[name="csrf_token"]"#).unwrap();
    doc.select(&sel)
        .next()
        .and_then(|e| e.value().attr("value"))
        .expect("the page has a form with a CSRF token")
        .to_owned()
}

pub fn location(res: &Response) -> String {
    res.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, client: &Client, path: &str) -> Response {
        client.get(self.url(path)).send().await.unwrap()
    }

    /// GETs `page` and returns the CSRF token of its forms.
    pub async fn csrf(&self, client: &Client, page: &str) -> String {
        let res = self.get(client, page).await;
        assert_eq!(res.status(), 200, "GET {page} to read its CSRF token");
        csrf_from(&res.text().await.unwrap())
    }

    /// Posts a form the way a browser does: with the CSRF token of `page`.
    pub async fn post_form(
        &self,
        client: &Client,
        page: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Response {
        let token = self.csrf(client, page).await;
        let mut body: Vec<(&str, &str)> = vec![("csrf_token", &token)];
        body.extend_from_slice(fields);
        client
            .post(self.url(path))
            .form(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, client: &Client, name: &str, password: &str) -> Response {
        self.post_form(
            client,
            "/login",
            "/login",
            &[("username", name), ("password", password)],
        )
        .await
    }

    /// A logged-in client of the first admin.
    pub async fn admin(&self) -> Client {
        let c = client();
        let res = self.login(&c, "admin", &self.admin_password.clone()).await;
        assert_eq!(res.status(), 303, "admin login");
        c
    }

    /// Creates a user directly in the database; returns its password.
    pub async fn create_user(&self, name: &str, role: Role) -> String {
        let password = format!("pw-{}-{}", name, uuid::Uuid::new_v4().simple());
        let hash = kiln::auth::password::hash(&Password::parse(&password).unwrap())
            .await
            .unwrap();
        let mut conn = self.pool.acquire().await.unwrap();
        kiln::db::users::create(&mut conn, &UserName::parse(name).unwrap(), role, &hash)
            .await
            .unwrap();
        password
    }

    /// A logged-in client of a new user with `role`.
    pub async fn user_client(&self, name: &str, role: Role) -> Client {
        let password = self.create_user(name, role).await;
        let c = client();
        let res = self.login(&c, name, &password).await;
        assert_eq!(res.status(), 303, "login of {name}");
        c
    }

    /// An API token for an existing user.
    pub async fn token_for(&self, name: &str) -> String {
        let user = kiln::db::users::find_by_name(&self.pool, name)
            .await
            .unwrap()
            .unwrap();
        let secret = kiln::auth::token::Secret::generate(kiln::auth::token::API_PREFIX);
        let mut conn = self.pool.acquire().await.unwrap();
        kiln::db::tokens::create_api(
            &mut conn,
            user.id,
            &kiln::domain::TokenName::parse("test").unwrap(),
            &secret.hash(),
            None,
        )
        .await
        .unwrap();
        secret.expose().to_owned()
    }

    pub async fn user_id(&self, name: &str) -> i64 {
        kiln::db::users::find_by_name(&self.pool, name)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    /// Audit rows as (actor, action, target, result, detail, source_ip), newest first.
    pub async fn audit(&self) -> Vec<AuditLine> {
        sqlx::query_as("SELECT actor, action, target, result, detail, source_ip FROM audit_events ORDER BY id DESC")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct AuditLine {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
    pub source_ip: Option<String>,
}

// Shared fixtures: the API as a script calls it, waiting without sleeping for luck, and
// local fleets started and stopped.

pub fn api(token: &str) -> (reqwest::Client, String) {
    (reqwest::Client::new(), token.to_owned())
}

pub async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    let (c, t) = api(token);
    c.post(app.url(path))
        .bearer_auth(t)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn put(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    let (c, t) = api(token);
    c.put(app.url(path))
        .bearer_auth(t)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn get_json(app: &TestApp, token: &str, path: &str) -> Value {
    let (c, t) = api(token);
    let res = c.get(app.url(path)).bearer_auth(t).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.unwrap()
}

/// Polls `check` until it returns Some, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Launches `n` servers through the API and waits until each one's agent has registered.
pub async fn launch_agents(app: &TestApp, token: &str, n: i64) -> Vec<String> {
    let image: String =
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let res = post(
        app,
        token,
        "/api/v1/servers",
        json!({"image_id": image, "count": n}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let launch: Value = res.json().await.unwrap();
    let launch_id = launch["id"].as_i64().unwrap();
    eventually(60, "the launched servers' agents register", || async {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT a.server_id FROM agents a JOIN servers s ON s.id = a.server_id
             WHERE s.launch_id = $1 ORDER BY a.server_id",
        )
        .bind(launch_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        (ids.len() as i64 == n).then_some(ids)
    })
    .await
}

pub async fn stop_fleet(app: &TestApp) {
    let live: Vec<String> =
        describe_all(app.cloud.as_ref(), &ServerFilter::fleet(app.cloud.fleet()))
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.state != ServerState::Terminated)
            .map(|s| s.id)
            .collect();
    app.cloud.terminate(&live).await.unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kiln serve` as a child process on a fixed port (so agents find it again after a
/// restart), with fast heartbeats and task polling, plus `extra` settings.
pub async fn start_console(
    db: &str,
    port: u16,
    fleet: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let bind = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("KILN_BIND", bind.as_str()),
        ("KILN_FLEET", fleet),
        ("KILN_HEARTBEAT", "1"),
        ("KILN_LEASE", "4"),
        ("KILN_TASK_POLL", "1"),
    ];
    env.extend_from_slice(extra);
    let mut child = crate::cli::serve_with(db, &env);
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    crate::cli::line_with(&mut stderr, "kiln console listening").await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    child
}

/// The test venv's Python (Playwright, moto, the Librato client): `KILN_TEST_PYTHON`, or
/// `.venv/bin/python` as `scripts/test-env` makes it.
pub fn python() -> String {
    std::env::var("KILN_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// Where the browser checks leave their screenshots.
pub fn browser_output() -> String {
    format!("{}/test-output/browser", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/browser/<script>` (Python Playwright on Debian's Chromium, from the test venv)
/// against the app, logged in as admin; its screenshots go to test-output/browser/.
pub async fn browser_check(app: &TestApp, script: &str) -> std::process::Output {
    browser_check_with(app, script, &[]).await
}

/// [`browser_check`] with arguments of the script's own after the four every script takes.
pub async fn browser_check_with(
    app: &TestApp,
    script: &str,
    args: &[&str],
) -> std::process::Output {
    browser_script(script, &app.address, "admin", &app.admin_password, args).await
}

/// Runs `tests/browser/<script>` against the console at `base` as `user`.
pub async fn browser_script(
    script: &str,
    base: &str,
    user: &str,
    password: &str,
    args: &[&str],
) -> std::process::Output {
    let out = browser_output();
    std::fs::create_dir_all(&out).unwrap();
    tokio::process::Command::new(python())
        .arg(format!(
            "{}/tests/browser/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([base, user, password, &out])
        .args(args)
        .output()
        .await
        .unwrap()
}

/// The current image (the newest release's).
pub async fn current_image(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Adds a local image through the API and waits until it is available.
pub async fn add_image(app: &TestApp, token: &str, version: &str) -> String {
    let res = post(
        app,
        token,
        "/api/v1/images",
        json!({"name": "worker", "version": version}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(30, "the new image is available", || async {
        let img = get_json(app, token, &format!("/api/v1/images/{id}")).await;
        (img["state"] == "available").then_some(())
    })
    .await;
    id
}

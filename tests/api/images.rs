//! The image catalogue: the local base image becomes current on its own, images are added
//! (pages and API), checked at the provider by a task, and bad input changes nothing.

use kiln::domain::Role;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestApp, location, spawn_app, spawn_app_with};

/// Waits (bounded) until the catalogue's `id` has `state`.
async fn until_state(pool: &sqlx::PgPool, id: &str, state: &str) {
    crate::helpers::eventually(60, &format!("image {id} {state}"), || async {
        let now: Option<String> = sqlx::query_scalar("SELECT state FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
        (now.as_deref() == Some(state)).then_some(())
    })
    .await
}

async fn api_images(app: &TestApp, token: &str) -> Vec<serde_json::Value> {
    reqwest::Client::new()
        .get(app.url("/api/v1/images"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fresh_local_install_has_one_base_image_made_current() {
    let app = spawn_app().await;
    let base: String = sqlx::query_scalar("SELECT id FROM images")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    until_state(&app.pool, &base, "available").await;

    let token = app.token_for("admin").await;
    let images = api_images(&app, &token).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["id"], base.as_str());
    assert_eq!(images[0]["current"], true);
    assert!(base.starts_with("ami-local-"));
    let admin = app.admin().await;
    let page = app.get(&admin, "/images").await.text().await.unwrap();
    assert!(
        page.contains("current-badge") && page.contains(&base),
        "{page}"
    );
    let detail = app
        .get(&admin, &format!("/images/{base}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        detail.contains("first") && detail.contains("image.adopt"),
        "release history and audit trail"
    );
}

#[tokio::test]
async fn an_operator_adds_a_local_image_which_becomes_available_but_not_current() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;

    let res = app
        .post_form(
            &operator,
            "/images",
            "/images",
            &[
                ("name", "worker"),
                ("version", "42"),
                ("description", "CI workers"),
            ],
        )
        .await;

    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/images");
    let id: String = sqlx::query_scalar("SELECT id FROM images WHERE name = 'worker'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    until_state(&app.pool, &id, "available").await;
    let page = app.get(&operator, "/images").await.text().await.unwrap();
    assert!(page.contains("Added worker"), "flash");
    let current: String =
        sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(current, id, "the base image stays current");
    let at_provider: i64 = sqlx::query_scalar("SELECT count(*) FROM local_images WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(at_provider, 1, "recorded by the local provider");
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "image.add"
        && a.actor == "olga"
        && a.target == format!("image:{id}")));
    assert!(audit.iter().any(|a| a.action == "image.adopt"
        && a.result == "ok"
        && a.target == format!("image:{id}")));
}

#[tokio::test]
async fn bad_image_input_is_explained_and_adds_nothing() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let before = app.count("SELECT count(*) FROM images").await;
    let tasks_before = app.count("SELECT count(*) FROM tasks").await;

    let no_name = app
        .post_form(&operator, "/images", "/images", &[("name", " ")])
        .await;
    let with_id = reqwest::Client::new()
        .post(app.url("/api/v1/images"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"id": "ami-0123456789abcdef0", "name": "x"}))
        .send()
        .await
        .unwrap();
    let not_json = reqwest::Client::new()
        .post(app.url("/api/v1/images"))
        .bearer_auth(&token)
        .body("name=x")
        .send()
        .await
        .unwrap();

    assert_eq!(no_name.status(), 400);
    assert!(
        no_name
            .text()
            .await
            .unwrap()
            .contains("Give the image a name.")
    );
    assert_eq!(with_id.status(), 400);
    let body: serde_json::Value = with_id.json().await.unwrap();
    assert_eq!(
        body["error"],
        "The local provider names its own images: leave the id empty."
    );
    assert_eq!(not_json.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM images").await, before);
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, tasks_before);
}

#[tokio::test]
async fn a_viewer_cannot_add_images_and_sees_no_form() {
    let app = spawn_app().await;
    let viewer = app.user_client("vera", Role::Viewer).await;

    let page = app.get(&viewer, "/images").await.text().await.unwrap();
    let res = app
        .post_form(&viewer, "/images", "/images", &[("name", "sneaky")])
        .await;

    assert!(!page.contains("Add an image"));
    assert_eq!(res.status(), 403);
}

/// The aws provider end to end: the real binary (credentials from the AWS chain), moto as
/// EC2, the JSON API. A seeded AMI is adopted and becomes the first current image; an AMI
/// moto does not have fails with the reason; a malformed id is refused before anything.
#[tokio::test]
async fn on_aws_an_existing_ami_is_adopted_and_an_unknown_one_fails_with_the_reason() {
    let db = crate::helpers::fresh_database_url();
    // Whatever agents its consoles launch stop when the test ends, passed or not.
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let endpoint = format!("http://127.0.0.1:{}", crate::moto::moto_port());
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let mut kiln = crate::cli::serve_aws(&db, &endpoint, &fleet, &[("KILN_TASK_POLL", "1")]);
    let mut stderr = BufReader::new(kiln.stderr.take().unwrap()).lines();
    let listening = crate::cli::line_with(&mut stderr, "kiln console listening").await;
    let port: u16 = listening
        .split("port=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let token = crate::cli::admin_token(&db).await;
    let api = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1/images");
    let add = |body: serde_json::Value| api.post(&base).bearer_auth(&token).json(&body).send();

    let seeded = add(serde_json::json!({"id": "ami-1e749f67", "name": "ubuntu", "version": "1"}))
        .await
        .unwrap();
    let unknown = add(serde_json::json!({"id": "ami-0123456789abcdef0", "name": "ghost"}))
        .await
        .unwrap();
    let malformed = add(serde_json::json!({"id": "ami-nope", "name": "bad"}))
        .await
        .unwrap();
    let missing = add(serde_json::json!({"name": "no id"})).await.unwrap();

    assert_eq!(seeded.status(), 201);
    let created: serde_json::Value = seeded.json().await.unwrap();
    assert_eq!(
        (created["state"].as_str(), created["current"].as_bool()),
        (Some("pending"), Some(false))
    );
    assert_eq!(unknown.status(), 201);
    assert_eq!(malformed.status(), 400);
    assert!(
        malformed.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("is not an EC2 image id")
    );
    assert_eq!(missing.status(), 400);
    let pool = kiln::db::connect(&db).await.unwrap();
    until_state(&pool, "ami-1e749f67", "available").await;
    until_state(&pool, "ami-0123456789abcdef0", "failed").await;
    let one = |id: &'static str| api.get(format!("{base}/{id}")).bearer_auth(&token).send();
    let adopted: serde_json::Value = one("ami-1e749f67").await.unwrap().json().await.unwrap();
    let ghost: serde_json::Value = one("ami-0123456789abcdef0")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        adopted["current"], true,
        "the first available image is made current"
    );
    assert_eq!(ghost["current"], false);
    assert!(
        ghost["state_reason"]
            .as_str()
            .unwrap()
            .contains("ami-0123456789abcdef0"),
        "{ghost}"
    );
    let listed: Vec<serde_json::Value> = api
        .get(&base)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        2,
        "the malformed and id-less ones were not added"
    );
    let missing_one = one("ami-1111111111111111f").await.unwrap();
    assert_eq!(missing_one.status(), 404);
    assert!(crate::cli::sigterm_and_wait(&mut kiln).await.success());
}

#[tokio::test]
async fn deregister_refuses_the_current_image_and_one_servers_run_then_deregisters() {
    let app = spawn_app().await;
    let operator = app.user_client("olga", Role::Operator).await;
    let token = app.token_for("olga").await;
    let base: String = sqlx::query_scalar("SELECT id FROM images")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.post_form(&operator, "/images", "/images", &[("name", "spare")])
        .await;
    let spare: String = sqlx::query_scalar("SELECT id FROM images WHERE name = 'spare'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    until_state(&app.pool, &spare, "available").await;
    sqlx::query("INSERT INTO servers (id, image_id, state) VALUES ('i-local-00000000000000abc', $1, 'running')")
        .bind(&spare)
        .execute(&app.pool)
        .await
        .unwrap();
    let api = reqwest::Client::new();
    let deregister = |id: String| {
        api.post(app.url(&format!("/api/v1/images/{id}/deregister")))
            .bearer_auth(&token)
            .send()
    };

    let current = deregister(base.clone()).await.unwrap();
    let busy = deregister(spare.clone()).await.unwrap();

    assert_eq!(current.status(), 409);
    assert!(
        current.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("is the current image")
    );
    assert_eq!(busy.status(), 409);
    assert!(
        busy.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("1 server still run")
    );
    let detail = app
        .get(&operator, &format!("/images/{spare}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        detail.contains("1 running it") && detail.contains("still run it"),
        "{detail}"
    );

    sqlx::query("UPDATE servers SET state = 'terminated'")
        .execute(&app.pool)
        .await
        .unwrap();
    let res = app
        .post_form(
            &operator,
            &format!("/images/{spare}"),
            &format!("/images/{spare}/deregister"),
            &[],
        )
        .await;
    assert_eq!(res.status(), 303);
    until_state(&app.pool, &spare, "deregistered").await;
    crate::helpers::eventually(30, "the provider deregisters it", || async {
        let at_provider: String =
            sqlx::query_scalar("SELECT state FROM local_images WHERE id = $1")
                .bind(&spare)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (at_provider == "deregistered").then_some(())
    })
    .await;
    let again = deregister(spare.clone()).await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "deregistering a deregistered image is a no-op"
    );
    let launch = api
        .post(app.url("/api/v1/servers"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"image_id": spare, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        launch.status(),
        409,
        "nothing launches from a deregistered image"
    );
}

/// The row of `id` in the Images page's table.
fn image_row<'p>(page: &'p str, id: &str) -> &'p str {
    let start = page
        .find(&format!("<tr data-id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id}:\n{page}"));
    let end = start + page[start..].find("</tr>").expect("the row ends");
    &page[start..end]
}

#[tokio::test]
async fn the_images_page_marks_each_row_current_was_current_and_its_live_servers() {
    let app = spawn_app_with(|s| s.fleet = "marks".into()).await;
    let base: String = sqlx::query_scalar("SELECT id FROM images")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    until_state(&app.pool, &base, "available").await;
    // Two more images; `older` was released once, then the base image was released again
    // (by a release: an image left by a rollback comes back only through a release, see
    // rollouts::an_image_rolled_back_from_comes_back_only_through_a_release).
    // The page reads only the database: rows written here are what it must show.
    for (id, name) in [
        ("ami-local-00000000000000000a1", "older"),
        ("ami-local-00000000000000000a2", "never"),
    ] {
        sqlx::query(
            "INSERT INTO images (id, name, version, state, added_by) VALUES ($1, $2, '7', 'available', 'test')",
        )
        .bind(id)
        .bind(name)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO releases (image_id, previous_image_id, kind, released_by) VALUES
             ('ami-local-00000000000000000a1', $1, 'release', 'test'),
             ($1, 'ami-local-00000000000000000a1', 'release', 'test')",
    )
    .bind(&base)
    .execute(&app.pool)
    .await
    .unwrap();
    // Two live servers on `older`, one terminated on `never` (not counted).
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, mode, launched_by) VALUES
             ('i-marks-1', 'ami-local-00000000000000000a1', 't3.micro', 'running', 'disabled', 'test'),
             ('i-marks-2', 'ami-local-00000000000000000a1', 't3.micro', 'running', 'disabled', 'test'),
             ('i-marks-3', 'ami-local-00000000000000000a2', 't3.micro', 'terminated', 'enabled', 'test')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // The live ones exist at the local provider too (as the bench's do), so that a reconcile
    // running meanwhile finds them and leaves them live.
    sqlx::query(
        "INSERT INTO local_instances (id, image_id, instance_type, state, tags, launch_token)
         SELECT id, image_id, instance_type, 'pending', '{\"kiln:fleet\": \"marks\"}', 'test'
         FROM servers WHERE id IN ('i-marks-1', 'i-marks-2')",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let admin = app.admin().await;
    let page = app.get(&admin, "/images").await.text().await.unwrap();
    let current = image_row(&page, &base);
    assert!(current.contains("current-badge"), "{current}");
    assert!(
        !current.contains("<button"),
        "the current image offers no release: {current}"
    );
    let older = image_row(&page, "ami-local-00000000000000000a1");
    assert!(older.contains("was current"), "{older}");
    assert!(older.contains(">Roll back to this</button>"), "{older}");
    assert!(older.contains("data-ask=\"rollback\""), "{older}");
    assert!(
        older.contains("<a href=\"/servers?image=ami-local-00000000000000000a1\">2</a>"),
        "{older}"
    );
    let never = image_row(&page, "ami-local-00000000000000000a2");
    assert!(
        !never.contains("was current") && !never.contains("current-badge"),
        "{never}"
    );
    assert!(never.contains(">Make current</button>"), "{never}");
    assert!(
        never.contains("<a href=\"/servers?image=ami-local-00000000000000000a2\">0</a>"),
        "{never}"
    );
    // The questions the buttons name are on the table, with the row's image to fill in.
    assert!(page.contains("data-ask-rollback=\"Roll the fleet back to {id}?"));
    assert!(page.contains("data-ask-release=\"Release {id}?"));
    // Newest first: the two added last come before the base image.
    assert!(page.find("ami-local-00000000000000000a2") < page.find(&format!("data-id=\"{base}\"")));
}

//! Recipes, bakes and their steps as stored (see migrations/…_bakes.sql and src/bakes/).

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::{BakeState, BakeStep};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RecipeRow {
    pub id: i64,
    pub name: String,
    pub base_image_id: String,
    pub setup_script: String,
    pub git_url: String,
    pub git_ref: String,
    pub setup_path: String,
    pub test_command: String,
    pub instance_type: String,
    pub setup_timeout_s: i32,
    pub test_timeout_s: i32,
    pub auto_release: bool,
    pub next_version: i32,
    pub created_by: String,
    #[serde(skip)]
    pub created_by_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

macro_rules! recipe_columns {
    () => {
        "id, name, base_image_id, setup_script, git_url, git_ref, setup_path, test_command, instance_type,
         setup_timeout_s, test_timeout_s, auto_release, next_version, created_by, created_by_id, created_at"
    };
}

pub struct NewRecipe<'a> {
    pub name: &'a str,
    pub base_image_id: &'a str,
    pub setup_script: &'a str,
    pub git_url: &'a str,
    pub git_ref: &'a str,
    pub setup_path: &'a str,
    pub test_command: &'a str,
    pub instance_type: &'a str,
    pub setup_timeout_s: i32,
    pub test_timeout_s: i32,
    pub auto_release: bool,
}

/// `None` when a recipe with that name exists.
pub async fn insert_recipe(
    conn: &mut PgConnection,
    r: &NewRecipe<'_>,
    by: &str,
    by_id: i64,
) -> sqlx::Result<Option<RecipeRow>> {
    sqlx::query_as(concat!(
        "INSERT INTO recipes (name, base_image_id, setup_script, git_url, git_ref, setup_path, test_command,
             instance_type, setup_timeout_s, test_timeout_s, auto_release, created_by, created_by_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (name) DO NOTHING RETURNING ",
        recipe_columns!()
    ))
    .bind(r.name)
    .bind(r.base_image_id)
    .bind(r.setup_script)
    .bind(r.git_url)
    .bind(r.git_ref)
    .bind(r.setup_path)
    .bind(r.test_command)
    .bind(r.instance_type)
    .bind(r.setup_timeout_s)
    .bind(r.test_timeout_s)
    .bind(r.auto_release)
    .bind(by)
    .bind(by_id)
    .fetch_optional(conn)
    .await
}

/// Replaces a recipe's definition (its version counter stays). `None` when the name is taken
/// by another recipe; `Some(false)` when the recipe does not exist.
pub async fn update_recipe(
    conn: &mut PgConnection,
    id: i64,
    r: &NewRecipe<'_>,
) -> sqlx::Result<Option<bool>> {
    let taken: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM recipes WHERE name = $1 AND id <> $2)")
            .bind(r.name)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    if taken {
        return Ok(None);
    }
    let done = sqlx::query(
        "UPDATE recipes SET name = $2, base_image_id = $3, setup_script = $4, git_url = $5, git_ref = $6,
             setup_path = $7, test_command = $8, instance_type = $9, setup_timeout_s = $10,
             test_timeout_s = $11, auto_release = $12, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(r.name)
    .bind(r.base_image_id)
    .bind(r.setup_script)
    .bind(r.git_url)
    .bind(r.git_ref)
    .bind(r.setup_path)
    .bind(r.test_command)
    .bind(r.instance_type)
    .bind(r.setup_timeout_s)
    .bind(r.test_timeout_s)
    .bind(r.auto_release)
    .execute(conn)
    .await?;
    Ok(Some(done.rows_affected() == 1))
}

pub async fn recipes(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<RecipeRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        recipe_columns!(),
        " FROM recipes ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

pub async fn recipe(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<RecipeRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        recipe_columns!(),
        " FROM recipes WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn recipe_by_name(
    db: impl PgExecutor<'_>,
    name: &str,
) -> sqlx::Result<Option<RecipeRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        recipe_columns!(),
        " FROM recipes WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Locks the recipe and takes its next version (versions only ever increase).
pub async fn take_version(
    conn: &mut PgConnection,
    recipe_id: i64,
) -> sqlx::Result<Option<(RecipeRow, i32)>> {
    let row: Option<RecipeRow> = sqlx::query_as(concat!(
        "UPDATE recipes SET next_version = next_version + 1, updated_at = now() WHERE id = $1 RETURNING ",
        recipe_columns!()
    ))
    .bind(recipe_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        let version = r.next_version - 1;
        (r, version)
    }))
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct BakeRow {
    pub id: i64,
    pub recipe_id: i64,
    pub recipe_name: String,
    pub version: i32,
    pub source_revision: String,
    pub image_name: String,
    pub state: BakeState,
    pub step: BakeStep,
    pub failure: String,
    pub launch_id: Option<i64>,
    pub builder_id: Option<String>,
    pub setup_job_id: Option<i64>,
    pub test_job_id: Option<i64>,
    pub image_id: Option<String>,
    pub trigger: String,
    pub started_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

macro_rules! select_bakes {
    ($rest:literal) => {
        concat!(
            "SELECT b.id, b.recipe_id, r.name AS recipe_name, b.version, b.source_revision, b.image_name,
                    b.state, b.step, b.failure, b.launch_id, b.builder_id, b.setup_job_id, b.test_job_id,
                    b.image_id, b.trigger, b.started_by, b.created_at, b.finished_at
             FROM bakes b JOIN recipes r ON r.id = b.recipe_id ",
            $rest
        )
    };
}

pub struct NewBake<'a> {
    pub recipe_id: i64,
    pub version: i32,
    pub source_revision: &'a str,
    pub image_name: &'a str,
    pub trigger: &'a str,
    pub delivery_id: Option<&'a str>,
    pub started_by: &'a str,
}

/// `None` when a bake of this webhook delivery exists already.
pub async fn insert_bake(conn: &mut PgConnection, b: &NewBake<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO bakes (recipe_id, version, source_revision, image_name, trigger, delivery_id, started_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
    )
    .bind(b.recipe_id)
    .bind(b.version)
    .bind(b.source_revision)
    .bind(b.image_name)
    .bind(b.trigger)
    .bind(b.delivery_id)
    .bind(b.started_by)
    .fetch_optional(conn)
    .await
}

pub async fn by_delivery(db: impl PgExecutor<'_>, delivery_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT id FROM bakes WHERE delivery_id = $1")
        .bind(delivery_id)
        .fetch_optional(db)
        .await
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<BakeRow>> {
    sqlx::query_as(select_bakes!("WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The bake with its row locked, for a step or a cancel.
pub async fn lock(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<BakeRow>> {
    sqlx::query_as(select_bakes!("WHERE b.id = $1 FOR UPDATE OF b"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Newest first.
pub async fn list(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<BakeRow>> {
    sqlx::query_as(select_bakes!("ORDER BY b.id DESC LIMIT $1"))
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Moves the bake to `step` and opens that step's record.
pub async fn enter_step(conn: &mut PgConnection, id: i64, step: BakeStep) -> sqlx::Result<()> {
    sqlx::query("UPDATE bakes SET step = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(step)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO bake_steps (bake_id, step, state) VALUES ($1, $2, 'running')
         ON CONFLICT (bake_id, step) DO NOTHING",
    )
    .bind(id)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes a step's record (if still open) with its outcome.
pub async fn close_step(
    conn: &mut PgConnection,
    id: i64,
    step: BakeStep,
    state: BakeState,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE bake_steps SET state = $3, detail = $4, finished_at = now()
         WHERE bake_id = $1 AND step = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(step)
    .bind(state)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the bake (`succeeded`, `failed` or `cancelled`).
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    state: BakeState,
    failure: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE bakes SET state = $2, failure = $3, finished_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(failure)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_launch(conn: &mut PgConnection, id: i64, launch_id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE bakes SET launch_id = $2 WHERE id = $1")
        .bind(id)
        .bind(launch_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_builder(conn: &mut PgConnection, id: i64, server_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE bakes SET builder_id = $2 WHERE id = $1")
        .bind(id)
        .bind(server_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_job(
    conn: &mut PgConnection,
    id: i64,
    setup: bool,
    job_id: i64,
) -> sqlx::Result<()> {
    let sql = if setup {
        "UPDATE bakes SET setup_job_id = $2 WHERE id = $1"
    } else {
        "UPDATE bakes SET test_job_id = $2 WHERE id = $1"
    };
    sqlx::query(sql).bind(id).bind(job_id).execute(conn).await?;
    Ok(())
}

pub async fn set_image(conn: &mut PgConnection, id: i64, image_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE bakes SET image_id = $2 WHERE id = $1")
        .bind(id)
        .bind(image_id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StepRow {
    pub step: BakeStep,
    pub state: BakeState,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

pub async fn steps(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Vec<StepRow>> {
    sqlx::query_as(
        "SELECT step, state, detail, started_at, finished_at FROM bake_steps WHERE bake_id = $1
         ORDER BY started_at, step",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// Builders that should not be running: their bake is over (or they have none). The janitor
/// terminates them.
pub async fn stray_builders(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT s.id FROM servers s
         WHERE s.purpose = 'builder' AND s.state <> 'terminated'
           AND NOT EXISTS (SELECT 1 FROM bakes b WHERE b.builder_id = s.id AND b.state = 'running')
           AND NOT EXISTS (SELECT 1 FROM bakes b WHERE b.launch_id = s.launch_id AND b.state = 'running')",
    )
    .fetch_all(db)
    .await
}

/// The bake that made an image: (bake id, recipe name, version).
pub async fn of_image(
    db: impl PgExecutor<'_>,
    image_id: &str,
) -> sqlx::Result<Option<(i64, String, i32)>> {
    sqlx::query_as(
        "SELECT b.id, r.name, b.version FROM bakes b JOIN recipes r ON r.id = b.recipe_id
         WHERE b.image_id = $1",
    )
    .bind(image_id)
    .fetch_optional(db)
    .await
}

/// Bakes in progress, for the Overview: (id, recipe, version, step).
pub async fn running(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(i64, String, i32, String)>> {
    sqlx::query_as(
        "SELECT b.id, r.name, b.version, b.step FROM bakes b JOIN recipes r ON r.id = b.recipe_id
         WHERE b.state = 'running' ORDER BY b.id DESC LIMIT 5",
    )
    .fetch_all(db)
    .await
}

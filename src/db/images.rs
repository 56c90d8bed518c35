//! The image catalogue and the release history (the current image is the newest release's).

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImageRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub source_revision: String,
    pub state: String,
    pub state_reason: String,
    pub added_by: String,
    pub created_at: OffsetDateTime,
    /// Filled by the listing queries.
    pub current: bool,
    pub was_current: bool,
    /// Servers (not terminated) running it.
    pub servers: i64,
}

macro_rules! select_images {
    ($rest:literal) => {
        concat!(
            "SELECT i.id, i.name, i.version, i.description, i.source_revision, i.state, i.state_reason, i.added_by,
                    i.created_at,
                    i.id = (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) IS TRUE AS current,
                    EXISTS (SELECT 1 FROM releases r WHERE r.image_id = i.id) AS was_current,
                    (SELECT count(*) FROM servers s WHERE s.image_id = i.id AND s.state <> 'terminated') AS servers
             FROM images i ",
            $rest
        )
    };
}

pub struct NewImage<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub state: &'a str,
    pub added_by: &'a str,
}

/// Inserts an image; false when one with that id is already in the catalogue.
pub async fn insert(conn: &mut PgConnection, image: &NewImage<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO images (id, name, version, description, state, added_by) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(image.id)
    .bind(image.name)
    .bind(image.version)
    .bind(image.description)
    .bind(image.state)
    .bind(image.added_by)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find(db: impl PgExecutor<'_>, id: &str) -> sqlx::Result<Option<ImageRow>> {
    sqlx::query_as(select_images!("WHERE i.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first.
pub async fn list(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<ImageRow>> {
    sqlx::query_as(select_images!(
        "ORDER BY i.created_at DESC, i.id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: &str,
    state: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE images SET state = $2, state_reason = $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn current_id(db: impl PgExecutor<'_>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
        .fetch_optional(db)
        .await
}

/// Makes `id` current when no image is (SPEC: the first image that becomes available is made
/// current, a first release with nothing to replace). Serialised by an advisory lock.
pub async fn make_first_current(conn: &mut PgConnection, id: &str, by: &str) -> sqlx::Result<bool> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *conn)
        .await?;
    if current_id(&mut *conn).await?.is_some() {
        return Ok(false);
    }
    sqlx::query("INSERT INTO releases (image_id, kind, released_by) VALUES ($1, 'first', $2)")
        .bind(id)
        .bind(by)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReleaseRow {
    pub id: i64,
    pub image_id: String,
    pub previous_image_id: Option<String>,
    pub kind: String,
    pub released_by: String,
    pub at: OffsetDateTime,
}

pub async fn releases_of(db: impl PgExecutor<'_>, image_id: &str) -> sqlx::Result<Vec<ReleaseRow>> {
    sqlx::query_as(
        "SELECT id, image_id, previous_image_id, kind, released_by, at FROM releases
         WHERE image_id = $1 OR previous_image_id = $1 ORDER BY id DESC LIMIT 100",
    )
    .bind(image_id)
    .fetch_all(db)
    .await
}

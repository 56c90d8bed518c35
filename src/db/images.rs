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
    pub state: crate::domain::ImageState,
    pub state_reason: String,
    pub added_by: String,
    pub created_at: OffsetDateTime,
    /// As EC2 names it; None when unknown (see the migration `image_architecture`).
    pub architecture: Option<String>,
    /// Filled by the listing queries.
    pub current: bool,
    /// Was current before and was not rolled back from since: a rollback may go to it.
    pub was_current: bool,
    /// Servers (not terminated) running it.
    pub servers: i64,
}

/// The images a rollback may go to: each was current before and was not rolled back from
/// since (a rollback away from an image is undone only by releasing it again: after a
/// rollback, the image rolled back from comes back only through a release, so freezes apply).
macro_rules! rollback_targets {
    () => {
        "SELECT DISTINCT r.image_id FROM releases r
         WHERE NOT EXISTS (
             SELECT 1 FROM releases x WHERE x.previous_image_id = r.image_id AND x.kind = 'rollback'
               AND NOT EXISTS (SELECT 1 FROM releases y WHERE y.image_id = r.image_id AND y.id > x.id))"
    };
}

/// Every image rolled back from and not released again since, with the last such rollback
/// (the catalogue's marks; one image's is [`rolled_back_from`]).
macro_rules! fled {
    () => {
        "SELECT DISTINCT ON (x.previous_image_id) x.previous_image_id AS image_id, x.at, x.released_by AS by
         FROM releases x
         WHERE x.kind = 'rollback' AND x.previous_image_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM releases y WHERE y.image_id = x.previous_image_id AND y.id > x.id)
         ORDER BY x.previous_image_id, x.id DESC"
    };
}

// Server counts come from `image_server_counts` (kept by triggers), not a GROUP BY over
// servers: the Images page lists 1,000 images next to 5,000 servers.
macro_rules! select_images {
    ($rest:literal) => {
        concat!(
            "WITH cur AS (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1),
                  counts AS (SELECT image_id, n FROM image_server_counts),
                  released AS (",
            rollback_targets!(),
            ")
             SELECT i.id, i.name, i.version, i.description, i.source_revision, i.state, i.state_reason, i.added_by,
                    i.created_at, i.architecture,
                    i.id = (SELECT image_id FROM cur) IS TRUE AS current,
                    r.image_id IS NOT NULL AS was_current,
                    COALESCE(c.n, 0) AS servers
             FROM images i LEFT JOIN counts c ON c.image_id = i.id LEFT JOIN released r ON r.image_id = i.id ",
            $rest
        )
    };
}

pub struct NewImage<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub state: crate::domain::ImageState,
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
///
/// The limit is written into the statement: bound as `LIMIT $1`, PostgreSQL re-plans the
/// statement on every execution (its generic plan never wins). It is a number, and in
/// practice one of two (the page's, the API's default).
pub async fn list(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<ImageRow>> {
    let sql = format!(
        "{} ORDER BY i.created_at DESC, i.id DESC LIMIT {limit}",
        select_images!("")
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db).await
}

/// One image as the Images page lists it: only the columns the page shows.
#[derive(Debug, Clone)]
pub struct CatalogueRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub source_revision: String,
    pub state: crate::domain::ImageState,
    pub state_reason: String,
    pub created_at: OffsetDateTime,
    /// The bake that made it, if one did.
    pub bake_id: Option<i64>,
}

/// Read by position, in [`catalogue`]'s column order: by name, sqlx hashes each column's name
/// on every row (7,000 lookups for the page).
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for CatalogueRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            version: row.try_get(2)?,
            source_revision: row.try_get(3)?,
            state: row.try_get(4)?,
            state_reason: row.try_get(5)?,
            created_at: row.try_get(6)?,
            bake_id: row.try_get(7)?,
        })
    }
}

/// What the Images page marks on its rows, read apart from the rows: the current image,
/// every image a rollback may go to (was current, not rolled back from since), and the live servers per image (only images with some).
#[derive(Debug, Default)]
pub struct CatalogueMarks {
    pub current: Option<String>,
    pub released: std::collections::HashSet<String, foldhash::fast::RandomState>,
    pub servers: std::collections::HashMap<String, i64, foldhash::fast::RandomState>,
    /// Images rolled back from and not released again since ([`fled!`]).
    pub fled: Vec<Fled>,
}

/// The Images page's rows, newest first, without the marks ([`catalogue_marks`]).
///
/// The page lists every image (1,000 on a big catalogue). Joined with the server counts and
/// the release history in one statement, PostgreSQL hashes both sides and then sorts wider
/// rows; the marks are a few hundred small values, joined in the page instead.
pub async fn catalogue(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<CatalogueRow>> {
    // The limit is written in, as in [`list`].
    let sql = format!(
        "SELECT id, name, version, source_revision, state, state_reason, created_at, bake_id FROM images
         ORDER BY created_at DESC, id DESC LIMIT {limit}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db).await
}

/// The marks of [`catalogue`]'s rows, in one statement.
pub async fn catalogue_marks(db: impl PgExecutor<'_>) -> sqlx::Result<CatalogueMarks> {
    type Marks = (
        Option<String>,
        Vec<String>,
        Vec<String>,
        Vec<i64>,
        sqlx::types::Json<Vec<Fled>>,
    );
    let (current, released, counted, counts, fled): Marks = sqlx::query_as(concat!(
        "SELECT (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1),
                ARRAY(",
        rollback_targets!(),
        "),
                COALESCE(array_agg(image_id), '{}'), COALESCE(array_agg(n), '{}'),
                (SELECT COALESCE(json_agg(f), '[]') FROM (",
        fled!(),
        ") f)
         FROM image_server_counts WHERE n <> 0"
    ))
    .fetch_one(db)
    .await?;
    Ok(CatalogueMarks {
        current,
        released: released.into_iter().collect(),
        servers: counted.into_iter().zip(counts).collect(),
        fled: fled.0,
    })
}

/// The launch form's choices (see [`launchable`]), as a statement for other statements to
/// read from: `id, name, version, current, created_at`; the form lists them current first,
/// then newest first.
///
/// The current image, then the 25 newest available images but the current one, glued with
/// `UNION ALL`: the same rows as a `UNION` of the two (the current image is left out of the
/// second part), without PostgreSQL hashing them to drop a duplicate that cannot occur.
pub const LAUNCHABLE_CHOICES: &str = "
    SELECT i.id, i.name, i.version, TRUE AS current, i.created_at FROM images i
    WHERE i.id = (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) AND i.state = 'available'
    UNION ALL
    SELECT n.id, n.name, n.version, FALSE, n.created_at FROM (
        SELECT i.id, i.name, i.version, i.created_at FROM images i WHERE i.state = 'available'
        ORDER BY i.created_at DESC, i.id DESC LIMIT 25) n
    WHERE n.id IS DISTINCT FROM (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1)";

/// The launch form's choices: the current image and the 25 newest available ones (id, name,
/// version, current). Older images launch from their own page; a select of 1,000 is no help.
pub async fn launchable(
    db: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<(String, String, String, bool)>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT id, name, version, current FROM ({LAUNCHABLE_CHOICES}) c
             ORDER BY current DESC, created_at DESC, id DESC"
        )
    });
    sqlx::query_as(SQL.as_str()).fetch_all(db).await
}

pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: &str,
    state: crate::domain::ImageState,
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

/// Records the architecture the provider reports for an image (kept when it says nothing).
pub async fn set_architecture(
    db: impl PgExecutor<'_>,
    id: &str,
    architecture: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE images SET architecture = COALESCE($2, architecture) WHERE id = $1")
        .bind(id)
        .bind(architecture)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn current_id(db: impl PgExecutor<'_>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT image_id FROM releases ORDER BY id DESC LIMIT 1")
        .fetch_optional(db)
        .await
}

/// An image as people name it: its id (the link, shown on hover), name and version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ImageName {
    pub id: String,
    pub name: String,
    pub version: String,
}

/// The current image by name.
pub async fn current(db: impl PgExecutor<'_>) -> sqlx::Result<Option<ImageName>> {
    sqlx::query_as(
        "SELECT i.id, i.name, i.version FROM images i
         WHERE i.id = (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1)",
    )
    .fetch_optional(db)
    .await
}

/// The images among `ids`, by name (for legends and labels).
pub async fn names_of(db: impl PgExecutor<'_>, ids: &[String]) -> sqlx::Result<Vec<ImageName>> {
    sqlx::query_as("SELECT id, name, version FROM images WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
}

/// Where a rollback goes by default: the image that was current most recently before the
/// current one, is still available, and was not rolled back from since (the same rule the
/// rollback itself checks, [`rollback_targets!`]).
pub async fn rollback_target(db: impl PgExecutor<'_>) -> sqlx::Result<Option<ImageName>> {
    sqlx::query_as(concat!(
        "WITH targets AS (",
        rollback_targets!(),
        ")
         SELECT i.id, i.name, i.version FROM releases r JOIN images i ON i.id = r.image_id
         WHERE r.image_id IN (SELECT image_id FROM targets) AND i.state = 'available'
           AND r.image_id IS DISTINCT FROM (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1)
         ORDER BY r.id DESC LIMIT 1"
    ))
    .fetch_optional(db)
    .await
}

/// A rollback away from an image, not undone by a release of it since: the image was fled.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Fled {
    pub image_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
}

/// Makes `id` current when no image is (the first image that becomes available is made
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
    pub to_name: String,
    pub to_version: String,
    pub from_name: Option<String>,
    pub from_version: Option<String>,
}

/// An image's releases (to or from it), newest first, the images named for display.
pub async fn releases_of(db: impl PgExecutor<'_>, image_id: &str) -> sqlx::Result<Vec<ReleaseRow>> {
    sqlx::query_as(
        "SELECT r.id, r.image_id, r.previous_image_id, r.kind, r.released_by, r.at,
                ti.name AS to_name, ti.version AS to_version, fi.name AS from_name, fi.version AS from_version
         FROM releases r JOIN images ti ON ti.id = r.image_id LEFT JOIN images fi ON fi.id = r.previous_image_id
         WHERE r.image_id = $1 OR r.previous_image_id = $1 ORDER BY r.id DESC LIMIT 100",
    )
    .bind(image_id)
    .fetch_all(db)
    .await
}

/// The rollback that took the fleet away from `image_id` and was not undone by releasing it
/// again since: (the image rolled back to, by whom, when).
pub async fn rolled_back_from(
    db: impl PgExecutor<'_>,
    image_id: &str,
) -> sqlx::Result<Option<(String, String, OffsetDateTime)>> {
    sqlx::query_as(
        "SELECT x.image_id, x.released_by, x.at FROM releases x
         WHERE x.previous_image_id = $1 AND x.kind = 'rollback'
           AND NOT EXISTS (SELECT 1 FROM releases y WHERE y.image_id = $1 AND y.id > x.id)
         ORDER BY x.id DESC LIMIT 1",
    )
    .bind(image_id)
    .fetch_optional(db)
    .await
}

//! Change freezes as stored. See src/domain/freeze.rs.

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::freeze::{Freeze, FreezeInput};
use crate::domain::window::Window;

type Row = (
    i64,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Option<Json<Window>>,
    String,
    String,
);

fn freeze((id, from, until, weekly, reason, created_by): Row) -> Freeze {
    Freeze {
        id,
        from,
        until,
        weekly: weekly.map(|w| w.0),
        reason,
        created_by,
    }
}

macro_rules! columns {
    () => {
        "id, starts_at, ends_at, weekly, reason, created_by"
    };
}

/// Every freeze, the latest first.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Freeze>> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM freezes ORDER BY starts_at DESC, id DESC"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(freeze).collect())
}

/// The freeze in force now (the database's clock), if any.
pub async fn in_force(conn: &mut PgConnection) -> sqlx::Result<Option<Freeze>> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM freezes WHERE starts_at <= now() AND (ends_at IS NULL OR ends_at > now()) ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(freeze)
        .find(|f| f.in_force(now.unix_timestamp())))
}

pub async fn create(
    conn: &mut PgConnection,
    input: &FreezeInput,
    by: &str,
) -> sqlx::Result<Freeze> {
    let row: Row = sqlx::query_as(concat!(
        "INSERT INTO freezes (starts_at, ends_at, weekly, reason, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING ",
        columns!()
    ))
    .bind(input.from)
    .bind(input.until)
    .bind(input.weekly.as_ref().map(Json))
    .bind(input.reason.trim())
    .bind(by)
    .fetch_one(&mut *conn)
    .await?;
    Ok(freeze(row))
}

/// Deletes a freeze; None when there is none with that id.
pub async fn delete(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<Freeze>> {
    let row: Option<Row> = sqlx::query_as(concat!(
        "DELETE FROM freezes WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(freeze))
}

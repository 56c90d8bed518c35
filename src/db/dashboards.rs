//! Dashboards that operators build, and their charts (see migrations/…_dashboards.sql).

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::measurement::SeriesSpec;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DashboardRow {
    pub id: i64,
    pub name: String,
    pub created_by: String,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChartRow {
    pub id: i64,
    pub dashboard_id: i64,
    pub position: i32,
    pub title: String,
    pub unit: String,
    pub stacked: bool,
    pub series: Json<Vec<SeriesSpec>>,
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<DashboardRow>> {
    sqlx::query_as(
        "SELECT id, name, created_by, updated_at FROM dashboards ORDER BY lower(name), id",
    )
    .fetch_all(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<DashboardRow>> {
    sqlx::query_as("SELECT id, name, created_by, updated_at FROM dashboards WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Locks the dashboard for an edit (edits of one dashboard run one after another, so
/// positions and the chart limit hold) and says whether it exists.
pub async fn lock(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<DashboardRow>> {
    sqlx::query_as(
        "UPDATE dashboards SET updated_at = now() WHERE id = $1
         RETURNING id, name, created_by, updated_at",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// `None` when another dashboard has that name (any case).
pub async fn create(conn: &mut PgConnection, name: &str, by: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO dashboards (name, created_by) VALUES ($1, $2)
         ON CONFLICT ((lower(name))) DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(by)
    .fetch_optional(conn)
    .await
}

/// Whether a dashboard other than `id` has this name (any case).
pub async fn name_taken(db: impl PgExecutor<'_>, name: &str, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dashboards WHERE lower(name) = lower($1) AND id <> $2)",
    )
    .bind(name)
    .bind(id)
    .fetch_one(db)
    .await
}

pub async fn rename(conn: &mut PgConnection, id: i64, name: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE dashboards SET name = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM dashboards WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn charts(db: impl PgExecutor<'_>, dashboard_id: i64) -> sqlx::Result<Vec<ChartRow>> {
    sqlx::query_as(
        "SELECT id, dashboard_id, position, title, unit, stacked, series FROM dashboard_charts
         WHERE dashboard_id = $1 ORDER BY position, id",
    )
    .bind(dashboard_id)
    .fetch_all(db)
    .await
}

pub async fn chart(
    db: impl PgExecutor<'_>,
    dashboard_id: i64,
    chart_id: i64,
) -> sqlx::Result<Option<ChartRow>> {
    sqlx::query_as(
        "SELECT id, dashboard_id, position, title, unit, stacked, series FROM dashboard_charts
         WHERE dashboard_id = $1 AND id = $2",
    )
    .bind(dashboard_id)
    .bind(chart_id)
    .fetch_optional(db)
    .await
}

pub async fn chart_count(conn: &mut PgConnection, dashboard_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM dashboard_charts WHERE dashboard_id = $1")
        .bind(dashboard_id)
        .fetch_one(conn)
        .await
}

pub struct NewChart<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub stacked: bool,
    pub series: &'a [SeriesSpec],
}

/// Appends a chart at the end of the dashboard.
pub async fn add_chart(
    conn: &mut PgConnection,
    dashboard_id: i64,
    chart: &NewChart<'_>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO dashboard_charts (dashboard_id, position, title, unit, stacked, series)
         SELECT $1, coalesce(max(position), 0) + 1, $2, $3, $4, $5
         FROM dashboard_charts WHERE dashboard_id = $1
         RETURNING id",
    )
    .bind(dashboard_id)
    .bind(chart.title)
    .bind(chart.unit)
    .bind(chart.stacked)
    .bind(Json(chart.series))
    .fetch_one(conn)
    .await
}

pub async fn update_chart(
    conn: &mut PgConnection,
    chart_id: i64,
    chart: &NewChart<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dashboard_charts SET title = $2, unit = $3, stacked = $4, series = $5
         WHERE id = $1",
    )
    .bind(chart_id)
    .bind(chart.title)
    .bind(chart.unit)
    .bind(chart.stacked)
    .bind(Json(chart.series))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_chart(conn: &mut PgConnection, chart_id: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dashboard_charts WHERE id = $1")
        .bind(chart_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Swaps the chart with its neighbour before (`up`) or after it; false at either end.
/// Positions are distinct within a dashboard (each chart is appended at max + 1).
pub async fn move_chart(
    conn: &mut PgConnection,
    dashboard_id: i64,
    chart_id: i64,
    up: bool,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "WITH me AS (SELECT id, position FROM dashboard_charts WHERE id = $2 AND dashboard_id = $1),
              other AS (
                SELECT c.id, c.position FROM dashboard_charts c, me
                WHERE c.dashboard_id = $1 AND c.id <> me.id
                  AND CASE WHEN $3 THEN c.position < me.position ELSE c.position > me.position END
                ORDER BY CASE WHEN $3 THEN -c.position ELSE c.position END
                LIMIT 1)
         UPDATE dashboard_charts d
         SET position = CASE WHEN d.id = me.id THEN other.position ELSE me.position END
         FROM me, other WHERE d.id IN (me.id, other.id)",
    )
    .bind(dashboard_id)
    .bind(chart_id)
    .bind(up)
    .execute(conn)
    .await?;
    Ok(moved.rows_affected() == 2)
}

//! Servers and launches as Kiln records them.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::{ServerMode, ServerPurpose, ServerState};

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ServerRow {
    pub id: String,
    pub image_id: String,
    pub image_version: Option<String>,
    /// The image's name, for display ("worker v7").
    pub image_name: Option<String>,
    pub launch_id: Option<i64>,
    pub instance_type: String,
    pub state: ServerState,
    pub mode: ServerMode,
    pub purpose: ServerPurpose,
    pub adopted: bool,
    pub launched_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub launched_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    /// Jobs running on it now.
    pub running_jobs: i64,
}

/// Filters of the Servers page and `GET /api/v1/servers`; None does not filter.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct ServerQuery {
    pub image: Option<String>,
    pub state: Option<String>,
    pub mode: Option<String>,
    pub purpose: Option<String>,
}

/// `running_jobs` is looked up only for a server whose agent has been seen: jobs are claimed
/// through an agent, which registers (setting `last_seen_at`) before its first claim, so
/// without one the count is 0 — and the pages show "—" there anyway. The lookup is a subplan
/// run once per row; skipped, a page of servers without agents (just launched, or a provider
/// without agents) costs PostgreSQL a third less.
macro_rules! select_servers {
    ($rest:literal) => {
        concat!(
            "SELECT s.id, s.image_id, s.image_version, s.image_name, s.launch_id, s.instance_type, s.state, s.mode,
                    s.purpose, s.adopted, s.launched_by, s.launched_at, s.last_seen_at,
                    CASE WHEN s.last_seen_at IS NULL THEN 0
                         ELSE (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id)
                    END AS running_jobs
             FROM servers s ",
            $rest
        )
    };
}

/// Newest first, keyset-paginated: `after` is the (launched_at, id) of the previous page's
/// last row. Terminated servers are listed only when asked for by state.
///
/// Only the filters in use go into the statement: with `($1 IS NULL OR …)` for every filter,
/// PostgreSQL re-plans the statement on each execution (its generic plan looks dearer on
/// paper; figures in docs/performance.md). Each combination of filters is its own prepared
/// statement (at most 2^5, inside sqlx's statement cache), and nothing the user typed is ever
/// part of the SQL text: values are bound.
pub async fn list(
    db: impl PgExecutor<'_>,
    q: &ServerQuery,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> sqlx::Result<Vec<ServerRow>> {
    // "draining" is not a stored mode but a disabled server still running jobs: a condition
    // of its own, with no value bound.
    let draining = q.mode.as_deref() == Some("draining");
    let mode = if draining { &None } else { &q.mode };
    // Numbered and bound in this one order.
    let filters = [
        (&q.image, "s.image_id"),
        (&q.state, "s.state"),
        (mode, "s.mode"),
        (&q.purpose, "s.purpose"),
    ];
    let mut conditions = Vec::with_capacity(6);
    let mut placeholder = 0;
    let mut next = || {
        placeholder += 1;
        placeholder
    };
    if draining {
        conditions.push(
            "s.mode = 'disabled' AND EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id)"
                .to_owned(),
        );
    }
    for (value, column) in filters {
        if value.is_some() {
            conditions.push(format!("{column} = ${}", next()));
        }
    }
    if q.state.is_none() {
        conditions.push("s.state <> 'terminated'".to_owned());
    }
    if after.is_some() {
        let (at, id) = (next(), next());
        conditions.push(format!("(s.launched_at, s.id) < (${at}, ${id})"));
    }
    // The limit is written into the statement, not bound: with `LIMIT $n` PostgreSQL
    // rejects its generic plan and plans the statement again on every execution. It is a
    // number, and in practice one of two (the page size, the API's default).
    let sql = format!(
        "{} WHERE {} ORDER BY s.launched_at DESC, s.id DESC LIMIT {limit}",
        select_servers!(""),
        conditions.join(" AND "),
    );
    let mut query = sqlx::query_as::<_, ServerRow>(sqlx::AssertSqlSafe(sql));
    for value in filters.into_iter().filter_map(|(value, _)| value.as_ref()) {
        query = query.bind(value);
    }
    if let Some((at, id)) = after {
        query = query.bind(at).bind(id);
    }
    query.fetch_all(db).await
}

pub async fn find(db: impl PgExecutor<'_>, id: &str) -> sqlx::Result<Option<ServerRow>> {
    sqlx::query_as(select_servers!("WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A server a release kept disabled (and running) so that a rollback can enable it again at
/// once; `until` is when the release's grace period ends and it is retired (None while the
/// release is still running: its grace period has not begun).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Kept {
    pub server_id: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

const KEPT: &str =
    "SELECT rs.server_id, max(r.finished_at + make_interval(secs => r.grace_s)) AS until
     FROM rollout_servers rs JOIN rollouts r ON r.id = rs.rollout_id JOIN servers s ON s.id = rs.server_id
     WHERE rs.role = 'old' AND rs.state = 'kept' AND s.state <> 'terminated' AND s.mode = 'disabled'
     GROUP BY rs.server_id";

/// Every server kept for a rollback now (live and disabled).
pub async fn kept(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Kept>> {
    sqlx::query_as(KEPT).fetch_all(db).await
}

/// Servers counted by state, mode and whether they drain (disabled, jobs still running):
/// what the state chips of the Servers page and the Overview say, within the page's image
/// filter. Live servers are counted; terminated ones only for one image (all of them are in
/// `server_state_counts`, which the callers read instead).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Tally {
    pub state: ServerState,
    pub mode: ServerMode,
    pub draining: bool,
    pub n: i64,
}

/// The fleet's tally: per state and mode from `server_mode_counts` (kept by triggers), the
/// draining ones found from the running jobs (few, and indexed) rather than from every server;
/// for one image, a grouping of that image's servers.
const TALLY_FLEET: &str = "WITH draining AS (
             SELECT s.state, count(DISTINCT s.id) AS n FROM jobs j JOIN servers s ON s.id = j.server_id
             WHERE j.state = 'running' AND s.mode = 'disabled' AND s.state <> 'terminated' GROUP BY s.state)
         SELECT c.state, c.mode, FALSE AS draining,
                c.n - CASE WHEN c.mode = 'disabled' THEN COALESCE(d.n, 0) ELSE 0 END AS n
         FROM server_mode_counts c LEFT JOIN draining d ON d.state = c.state
         WHERE c.state <> 'terminated' AND c.n <> 0
         UNION ALL
         SELECT d.state, 'disabled', TRUE, d.n FROM draining d";
const TALLY_ONE_IMAGE: &str = "SELECT s.state, s.mode,
                s.mode = 'disabled' AND EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id)
                    AS draining,
                count(*) AS n
         FROM servers s WHERE s.image_id = $1 GROUP BY 1, 2, 3";

pub async fn tally(db: impl PgExecutor<'_>, image: Option<&str>) -> sqlx::Result<Vec<Tally>> {
    match image {
        None => sqlx::query_as(TALLY_FLEET).fetch_all(db).await,
        Some(image) => {
            sqlx::query_as(TALLY_ONE_IMAGE)
                .bind(image)
                .fetch_all(db)
                .await
        }
    }
}

/// Servers not terminated: what counts toward KILN_MAX_SERVERS.
pub async fn live_count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM servers WHERE state <> 'terminated'")
        .fetch_one(db)
        .await
}

/// Records a server the provider named: new, or already known (adopted by a reconcile that
/// ran between the provider's answer and this write: it is ours after all).
pub async fn record_launched(
    conn: &mut PgConnection,
    server: &crate::cloud::Server,
    launch_id: i64,
    launched_by: &str,
    purpose: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO servers (id, image_id, launch_id, instance_type, state, launched_by, launched_at, purpose)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()), $8)
         ON CONFLICT (id) DO UPDATE SET launch_id = EXCLUDED.launch_id, adopted = FALSE,
             launched_by = EXCLUDED.launched_by, purpose = EXCLUDED.purpose, updated_at = now()",
    )
    .bind(&server.id)
    .bind(&server.image_id)
    .bind(launch_id)
    .bind(&server.instance_type)
    .bind(server.state.as_str())
    .bind(launched_by)
    .bind(server.launched_at)
    .bind(purpose)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct LaunchRow {
    pub id: i64,
    pub token: String,
    pub image_id: String,
    pub count: i32,
    pub instance_type: String,
    pub state: crate::domain::LaunchState,
    pub error: String,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `worker`, or `builder` for a bake's builder.
    #[serde(skip_serializing)]
    pub purpose: String,
}

pub async fn insert_launch(
    conn: &mut PgConnection,
    token: &str,
    image_id: &str,
    count: i32,
    instance_type: &str,
    requested_by: &str,
) -> sqlx::Result<LaunchRow> {
    insert_launch_for(
        conn,
        token,
        image_id,
        count,
        instance_type,
        requested_by,
        "worker",
    )
    .await
}

/// As [`insert_launch`], of servers with `purpose`.
pub async fn insert_launch_for(
    conn: &mut PgConnection,
    token: &str,
    image_id: &str,
    count: i32,
    instance_type: &str,
    requested_by: &str,
    purpose: &str,
) -> sqlx::Result<LaunchRow> {
    sqlx::query_as(
        "INSERT INTO launches (token, image_id, count, instance_type, requested_by, purpose) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, token, image_id, count, instance_type, state, error, requested_by, created_at, purpose",
    )
    .bind(token)
    .bind(image_id)
    .bind(count)
    .bind(instance_type)
    .bind(requested_by)
    .bind(purpose)
    .fetch_one(conn)
    .await
}

pub async fn find_launch(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<LaunchRow>> {
    sqlx::query_as("SELECT id, token, image_id, count, instance_type, state, error, requested_by, created_at, purpose FROM launches WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn set_launch_state(
    db: impl PgExecutor<'_>,
    id: i64,
    state: crate::domain::LaunchState,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE launches SET state = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn ids_of_launch(db: impl PgExecutor<'_>, launch_id: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT id FROM servers WHERE launch_id = $1 ORDER BY id")
        .bind(launch_id)
        .fetch_all(db)
        .await
}

/// A launch form choice: image id, name, version, and whether it is the current image.
pub type Choice = (String, String, String, bool);

/// What the Servers page shows around its list, read in one statement (one round trip, one
/// snapshot): the servers per state, the recent launches that have not finished, whether
/// anything moved in the last 10 s (see `busy` on the page), the launch form's choices, the
/// chips' tally and the kept servers (apart, on two more connections, these two made the page
/// 30% slower: docs/performance.md).
#[derive(Debug)]
pub struct PageContext {
    pub counts: Vec<(String, i64)>,
    pub launches: Vec<LaunchRow>,
    pub recently_busy: bool,
    /// [`crate::db::images::LAUNCHABLE_CHOICES`] (empty when not asked for: the page's live
    /// refresh shows no launch form).
    pub choices: Vec<Choice>,
    /// Recycling's maximum age, if servers are recycled, and the servers being replaced.
    pub recycle_max_age_s: Option<i32>,
    pub being_replaced: Vec<String>,
    /// [`tally`] within the page's image filter, and [`kept`].
    pub tally: Vec<Tally>,
    pub kept: Vec<Kept>,
}

/// The Servers page's [`PageContext`], with the launch form's choices when asked for. Its
/// small reads as one statement: run apart, each on its own pooled connection, they cost more
/// in round trips than in reading.
pub async fn page_context(
    db: impl PgExecutor<'_>,
    with_choices: bool,
    image: Option<&str>,
) -> sqlx::Result<PageContext> {
    use sqlx::Row;
    use sqlx::types::Json;
    fn statement(with_choices: bool, one_image: bool) -> String {
        let tally = if one_image {
            TALLY_ONE_IMAGE
        } else {
            TALLY_FLEET
        };
        let choices = if with_choices {
            format!(
                "(SELECT COALESCE(json_agg(json_build_array(c.id, c.name, c.version, c.current)
                                           ORDER BY c.current DESC, c.created_at DESC, c.id DESC), '[]')
                  FROM ({}) c)",
                crate::db::images::LAUNCHABLE_CHOICES
            )
        } else {
            "'[]'::json".to_owned()
        };
        format!(
            "SELECT ARRAY(SELECT state FROM server_state_counts WHERE n <> 0 ORDER BY state) AS states,
                    ARRAY(SELECT n FROM server_state_counts WHERE n <> 0 ORDER BY state) AS counts,
                    (SELECT COALESCE(json_agg(l ORDER BY l.id DESC), '[]') FROM (
                         SELECT id, token, image_id, count, instance_type, state, error, requested_by, created_at, purpose
                         FROM launches
                         WHERE state IN ('pending', 'running')
                            OR (state IN ('failed', 'partial') AND updated_at > now() - interval '1 hour')
                         ORDER BY id DESC LIMIT 20) l) AS launches,
                    EXISTS (SELECT 1 FROM tasks WHERE kind = 'terminate_server'
                              AND (state IN ('queued', 'running') OR finished_at > now() - interval '10 seconds'))
                      OR EXISTS (SELECT 1 FROM launches WHERE updated_at > now() - interval '10 seconds')
                      AS recently_busy,
                    {choices} AS choices,
                    (SELECT (settings->'recycle'->>'max_age_s')::INT FROM scaling_settings) AS recycle_max_age_s,
                    ARRAY(SELECT server_id FROM recycles WHERE state = 'replacing') AS being_replaced,
                    (SELECT COALESCE(json_agg(t), '[]') FROM ({tally}) t) AS tally,
                    (SELECT COALESCE(json_agg(k), '[]') FROM ({KEPT}) k) AS kept"
        )
    }
    static STATEMENTS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
        [
            statement(false, false),
            statement(true, false),
            statement(false, true),
            statement(true, true),
        ]
    });
    let which = usize::from(with_choices) + 2 * usize::from(image.is_some());
    let mut query = sqlx::query(STATEMENTS[which].as_str());
    if let Some(image) = image {
        query = query.bind(image);
    }
    let row = query.fetch_one(db).await?;
    let tally: Json<Vec<Tally>> = row.try_get("tally")?;
    let kept: Json<Vec<Kept>> = row.try_get("kept")?;
    let states: Vec<String> = row.try_get("states")?;
    let ns: Vec<i64> = row.try_get("counts")?;
    let launches: Json<Vec<LaunchRow>> = row.try_get("launches")?;
    let choices: Json<Vec<Choice>> = row.try_get("choices")?;
    Ok(PageContext {
        counts: states.into_iter().zip(ns).collect(),
        launches: launches.0,
        recently_busy: row.try_get("recently_busy")?,
        choices: choices.0,
        recycle_max_age_s: row.try_get("recycle_max_age_s")?,
        being_replaced: row.try_get("being_replaced")?,
        tally: tally.0,
        kept: kept.0,
    })
}

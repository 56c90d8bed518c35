//! Servers and launches as Kiln records them.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerRow {
    pub id: String,
    pub image_id: String,
    pub image_version: Option<String>,
    pub launch_id: Option<i64>,
    pub instance_type: String,
    pub state: String,
    pub mode: String,
    pub purpose: String,
    pub adopted: bool,
    pub launched_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub launched_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    /// Jobs running on it now.
    pub running_jobs: i64,
}

/// A server row as sent, borrowing its text from the row: what the Servers page renders,
/// without a `String` allocated, filled and freed for every text column of 101 rows (the
/// largest part of decoding the page: ~5% of its CPU in a profile).
///
/// Read by position, in `select_servers!`'s column order (the only statement that yields
/// these rows): by name, sqlx hashes every column's name on every row, a tenth of the Servers
/// page's time in a profile. And unchecked: sqlx would otherwise compare each value's type
/// with the field's (clone, compare, drop a type descriptor: 1,300 times per page, ~4% of
/// the page's CPU). The statement is ours, its column types fixed, and every test that lists
/// or shows a server decodes it.
#[derive(Debug, Clone, Copy)]
pub struct ServerRef<'r> {
    pub id: &'r str,
    pub image_id: &'r str,
    pub image_version: Option<&'r str>,
    pub launch_id: Option<i64>,
    pub instance_type: &'r str,
    pub state: &'r str,
    pub mode: &'r str,
    pub purpose: &'r str,
    pub adopted: bool,
    pub launched_by: &'r str,
    pub launched_at: OffsetDateTime,
    pub last_seen_at: Option<OffsetDateTime>,
    pub running_jobs: i64,
}

impl<'r> ServerRef<'r> {
    pub fn decode(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self {
            id: row.try_get_unchecked(0)?,
            image_id: row.try_get_unchecked(1)?,
            image_version: row.try_get_unchecked(2)?,
            launch_id: row.try_get_unchecked(3)?,
            instance_type: row.try_get_unchecked(4)?,
            state: row.try_get_unchecked(5)?,
            mode: row.try_get_unchecked(6)?,
            purpose: row.try_get_unchecked(7)?,
            adopted: row.try_get_unchecked(8)?,
            launched_by: row.try_get_unchecked(9)?,
            launched_at: row.try_get_unchecked(10)?,
            last_seen_at: row.try_get_unchecked(11)?,
            running_jobs: row.try_get_unchecked(12)?,
        })
    }
}

impl<'r> From<ServerRef<'r>> for ServerRow {
    fn from(r: ServerRef<'r>) -> Self {
        Self {
            id: r.id.to_owned(),
            image_id: r.image_id.to_owned(),
            image_version: r.image_version.map(str::to_owned),
            launch_id: r.launch_id,
            instance_type: r.instance_type.to_owned(),
            state: r.state.to_owned(),
            mode: r.mode.to_owned(),
            purpose: r.purpose.to_owned(),
            adopted: r.adopted,
            launched_by: r.launched_by.to_owned(),
            launched_at: r.launched_at,
            last_seen_at: r.last_seen_at,
            running_jobs: r.running_jobs,
        }
    }
}

impl ServerRow {
    /// This row borrowed as the pages render it.
    pub fn as_ref(&self) -> ServerRef<'_> {
        ServerRef {
            id: &self.id,
            image_id: &self.image_id,
            image_version: self.image_version.as_deref(),
            launch_id: self.launch_id,
            instance_type: &self.instance_type,
            state: &self.state,
            mode: &self.mode,
            purpose: &self.purpose,
            adopted: self.adopted,
            launched_by: &self.launched_by,
            launched_at: self.launched_at,
            last_seen_at: self.last_seen_at,
            running_jobs: self.running_jobs,
        }
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ServerRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        ServerRef::decode(row).map(Self::from)
    }
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
            "SELECT s.id, s.image_id, s.image_version, s.launch_id, s.instance_type, s.state, s.mode,
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
/// Only the filters in use go into the statement. With `($1 IS NULL OR …)` for every filter,
/// PostgreSQL planned the statement again on each execution (its generic plan looks dearer
/// on paper): 0.3–0.5 ms of a statement that runs in well under 1 ms (the limit likewise). Each combination of
/// filters is its own prepared statement (at most 2^5, inside sqlx's statement cache), and
/// nothing the user typed is ever part of the SQL text: values are bound.
pub async fn list(
    db: impl PgExecutor<'_>,
    q: &ServerQuery,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> sqlx::Result<Vec<ServerRow>> {
    list_rows(db, q, after, limit)
        .await?
        .iter()
        .map(|row| ServerRef::decode(row).map(ServerRow::from))
        .collect()
}

/// [`list`]'s rows as sent, for [`ServerRef::decode`] to borrow from.
pub async fn list_rows(
    db: impl PgExecutor<'_>,
    q: &ServerQuery,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> sqlx::Result<Vec<sqlx::postgres::PgRow>> {
    // Numbered and bound in this one order.
    let filters = [
        (&q.image, "s.image_id"),
        (&q.state, "s.state"),
        (&q.mode, "s.mode"),
        (&q.purpose, "s.purpose"),
    ];
    let mut conditions = Vec::with_capacity(6);
    let mut placeholder = 0;
    let mut next = || {
        placeholder += 1;
        placeholder
    };
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
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
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

/// Servers by state (terminated ones included), for the counts at the top of the page: read
/// from `server_state_counts`, which triggers keep equal to a GROUP BY over `servers`.
pub async fn counts_by_state(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT state, n FROM server_state_counts WHERE n <> 0 ORDER BY state")
        .fetch_all(db)
        .await
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

/// The launch form's choices as this console last read them, with the catalogue clock they
/// were read at (`catalogue_clock`: ticked by every statement that changes images or
/// releases, in its transaction). [`page_context`] sends the clock it has; PostgreSQL reads
/// the choices again only when its clock, in the statement's own snapshot, differs — so the
/// choices shown are always the catalogue as that snapshot has it. One per console (its
/// `AppState`): a clock's ticks mean something only in one database.
#[derive(Default)]
pub struct ChoicesCache(std::sync::Mutex<Option<(i64, std::sync::Arc<Vec<Choice>>)>>);

impl ChoicesCache {
    fn get(&self) -> Option<(i64, std::sync::Arc<Vec<Choice>>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps what was read at `ticks`, unless something read later is already kept.
    fn put(&self, ticks: i64, choices: std::sync::Arc<Vec<Choice>>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.as_ref().is_none_or(|(t, _)| *t <= ticks) {
            *kept = Some((ticks, choices));
        }
    }
}

/// What the Servers page shows around its list, read in one statement (one round trip, one
/// snapshot): the servers per state, the recent launches that have not finished, whether
/// anything moved in the last 10 s (see `busy` on the page), and the launch form's choices.
#[derive(Debug)]
pub struct PageContext {
    pub counts: Vec<(String, i64)>,
    pub launches: Vec<LaunchRow>,
    pub recently_busy: bool,
    /// [`crate::db::images::launchable`]'s choices (empty when not asked for: the page's
    /// live refresh shows no launch form).
    pub choices: std::sync::Arc<Vec<Choice>>,
}

/// A session to read in the same statement as the page's context (see `web::prefetch`): its
/// key's hash, and the absolute and idle timeouts in seconds.
pub struct SessionToRead {
    pub id_hash: String,
    pub absolute_s: u64,
    pub idle_s: u64,
}

/// The Servers page's [`PageContext`], with the launch form's choices when given where to
/// keep them, and a session when given one to read (None in the result: no live session).
/// Its small reads as one statement: run apart, each on its own pooled connection, they cost
/// more in round trips and wake-ups than in reading.
///
/// The choices were a third of this statement's cost for PostgreSQL and an eighth of the
/// page's time (the page measured with and without them, side by side); they change far less
/// often than the page is viewed, so they are read only when the catalogue clock moved.
pub async fn page_context(
    db: impl PgExecutor<'_>,
    choices: Option<&ChoicesCache>,
    session: Option<&SessionToRead>,
) -> sqlx::Result<(PageContext, Option<crate::db::sessions::SessionRead>)> {
    use sqlx::Row;
    use sqlx::types::Json;
    fn statement(with_choices: bool, with_session: bool) -> String {
        // PostgreSQL runs a CASE branch's subquery only when the branch is taken.
        let choices = if with_choices {
            format!(
                "CASE WHEN (SELECT ticks FROM catalogue_clock) = $1 THEN NULL ELSE
                     (SELECT COALESCE(json_agg(json_build_array(c.id, c.name, c.version, c.current)
                                               ORDER BY c.current DESC, c.created_at DESC, c.id DESC), '[]')
                      FROM ({}) c)
                 END,
                 (SELECT ticks FROM catalogue_clock)",
                crate::db::images::LAUNCHABLE_CHOICES
            )
        } else {
            "NULL::json, 0::bigint".to_owned()
        };
        let context = format!(
            "SELECT ARRAY(SELECT state FROM server_state_counts WHERE n <> 0 ORDER BY state),
                    ARRAY(SELECT n FROM server_state_counts WHERE n <> 0 ORDER BY state),
                    (SELECT COALESCE(json_agg(l ORDER BY l.id DESC), '[]') FROM (
                         SELECT id, token, image_id, count, instance_type, state, error, requested_by, created_at, purpose
                         FROM launches
                         WHERE state IN ('pending', 'running')
                            OR (state IN ('failed', 'partial') AND updated_at > now() - interval '1 hour')
                         ORDER BY id DESC LIMIT 20) l),
                    EXISTS (SELECT 1 FROM tasks WHERE kind = 'terminate_server'
                              AND (state IN ('queued', 'running') OR finished_at > now() - interval '10 seconds'))
                      OR EXISTS (SELECT 1 FROM launches WHERE updated_at > now() - interval '10 seconds'),
                    {choices}"
        );
        if !with_session {
            return context;
        }
        // The session's columns follow the context's (NULL when there is no live session).
        let first = if with_choices { 2 } else { 1 };
        format!(
            "SELECT ctx.*, sess.* FROM ({context}) ctx LEFT JOIN ({}) sess ON TRUE",
            crate::db::sessions::read_sql(first)
        )
    }
    static STATEMENTS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
        [
            statement(false, false),
            statement(false, true),
            statement(true, false),
            statement(true, true),
        ]
    });
    let kept = choices.and_then(ChoicesCache::get);
    let sql = &STATEMENTS[usize::from(choices.is_some()) * 2 + usize::from(session.is_some())];
    let mut query = sqlx::query(sql.as_str());
    if choices.is_some() {
        query = query.bind(kept.as_ref().map_or(-1, |(t, _)| *t));
    }
    if let Some(s) = session {
        query = query
            .bind(&s.id_hash)
            .bind(s.absolute_s as f64)
            .bind(s.idle_s as f64);
    }
    let row = query.fetch_one(db).await?;
    let states: Vec<String> = row.try_get(0)?;
    let ns: Vec<i64> = row.try_get(1)?;
    let launches: Json<Vec<LaunchRow>> = row.try_get(2)?;
    let recently_busy: bool = row.try_get(3)?;
    let read: Option<Json<Vec<Choice>>> = row.try_get(4)?;
    let ticks: i64 = row.try_get(5)?;
    // The session's columns, by name (the context's are unnamed); NULL without a live one.
    let session_read = match session {
        Some(_) if row.try_get::<Option<bool>, _>("extend")?.is_some() => {
            Some(sqlx::FromRow::from_row(&row)?)
        }
        _ => None,
    };
    let choices = match (choices, read, kept) {
        (None, _, _) => Default::default(),
        // Read again: the clock moved (or nothing was kept).
        (Some(cache), Some(read), _) => {
            let read = std::sync::Arc::new(read.0);
            cache.put(ticks, read.clone());
            read
        }
        // Not read: the clock, in this statement's snapshot, is the one the kept choices
        // were read at.
        (Some(_), None, Some((_, kept))) => kept,
        (Some(_), None, None) => {
            return Err(sqlx::Error::Protocol(
                "the launch choices were not read, and none were kept".into(),
            ));
        }
    };
    let context = PageContext {
        counts: states.into_iter().zip(ns).collect(),
        launches: launches.0,
        recently_busy,
        choices,
    };
    Ok((context, session_read))
}

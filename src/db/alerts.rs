//! Alerts as stored: rules, their sources' states and transitions, silences, channels,
//! notifications and their delivery attempts. See src/alerts/.

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::alert_rule::{Condition, Rule};
use crate::domain::{AlertGroup, AlertState, ChannelKind, DeliveryState, NoDataPolicy};

macro_rules! rule_columns {
    () => {
        "id, name, description, runbook_url, per_source, group_fn, conditions, conditions_key, channel_ids, renotify_s, no_data, blocks_changes, enabled, created_by, created_at, updated_at"
    };
}
macro_rules! state_columns {
    () => {
        "rule_id, source, state, since, value, cond_since, evaluated_at, notified, last_notified_at, acked_by, acked_at"
    };
}
macro_rules! channel_columns {
    () => {
        "id, name, kind, url, secret, email_to, smtp, events, created_by, created_at, updated_at"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub runbook_url: String,
    pub per_source: bool,
    pub group_fn: AlertGroup,
    pub conditions: Json<Vec<Condition>>,
    pub conditions_key: String,
    pub channel_ids: Vec<i64>,
    pub renotify_s: i32,
    pub no_data: NoDataPolicy,
    pub blocks_changes: bool,
    pub enabled: bool,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl RuleRow {
    pub fn rule(&self) -> Rule {
        Rule {
            name: self.name.clone(),
            description: self.description.clone(),
            runbook_url: self.runbook_url.clone(),
            per_source: self.per_source,
            group: self.group_fn,
            conditions: self.conditions.0.clone(),
            channels: self.channel_ids.clone(),
            renotify_s: i64::from(self.renotify_s),
            no_data: self.no_data,
            blocks_changes: self.blocks_changes,
            enabled: self.enabled,
        }
    }
}

pub async fn rules(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<RuleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        rule_columns!(),
        " FROM alert_rules ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

pub async fn rule(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<RuleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        rule_columns!(),
        " FROM alert_rules WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn rule_for_update(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<RuleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        rule_columns!(),
        " FROM alert_rules WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn insert_rule(conn: &mut PgConnection, r: &Rule, by: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO alert_rules (name, description, runbook_url, per_source, group_fn, conditions, conditions_key,
             channel_ids, renotify_s, no_data, blocks_changes, enabled, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
    )
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.runbook_url)
    .bind(r.per_source)
    .bind(r.group)
    .bind(Json(&r.conditions))
    .bind(r.conditions_key())
    .bind(&r.channels)
    .bind(r.renotify_s as i32)
    .bind(r.no_data)
    .bind(r.blocks_changes)
    .bind(r.enabled)
    .bind(by)
    .fetch_one(conn)
    .await
}

pub async fn update_rule(conn: &mut PgConnection, id: i64, r: &Rule) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE alert_rules SET name = $2, description = $3, runbook_url = $4, per_source = $5, group_fn = $6,
             conditions = $7, conditions_key = $8, channel_ids = $9, renotify_s = $10, no_data = $11,
             blocks_changes = $12, enabled = $13, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.runbook_url)
    .bind(r.per_source)
    .bind(r.group)
    .bind(Json(&r.conditions))
    .bind(r.conditions_key())
    .bind(&r.channels)
    .bind(r.renotify_s as i32)
    .bind(r.no_data)
    .bind(r.blocks_changes)
    .bind(r.enabled)
    .execute(conn)
    .await?;
    Ok(())
}

/// True when a rule with this name exists (other than `except`).
pub async fn rule_name_taken(
    db: impl PgExecutor<'_>,
    name: &str,
    except: Option<i64>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM alert_rules WHERE name = $1 AND id IS DISTINCT FROM $2)",
    )
    .bind(name)
    .bind(except)
    .fetch_one(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateRow {
    pub rule_id: i64,
    pub source: String,
    pub state: AlertState,
    pub since: OffsetDateTime,
    pub value: Option<f64>,
    pub cond_since: Json<Vec<Option<i64>>>,
    pub evaluated_at: OffsetDateTime,
    pub notified: bool,
    pub last_notified_at: Option<OffsetDateTime>,
    pub acked_by: Option<String>,
    pub acked_at: Option<OffsetDateTime>,
}

pub async fn states(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<StateRow>> {
    sqlx::query_as(concat!("SELECT ", state_columns!(), " FROM alert_states"))
        .fetch_all(db)
        .await
}

pub async fn states_of(db: impl PgExecutor<'_>, rule_id: i64) -> sqlx::Result<Vec<StateRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        state_columns!(),
        " FROM alert_states WHERE rule_id = $1 ORDER BY state = 'ok', source"
    ))
    .bind(rule_id)
    .fetch_all(db)
    .await
}

pub async fn firing_count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM alert_states WHERE state = 'firing'")
        .fetch_one(db)
        .await
}

/// Rules with a source resolved in the last `secs` seconds: (rule id, when, unix seconds).
pub async fn recently_resolved(
    db: impl PgExecutor<'_>,
    secs: i64,
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "SELECT rule_id, max(floor(extract(epoch FROM at)))::BIGINT FROM alert_transitions
         WHERE from_state = 'firing' AND to_state = 'ok' AND at > now() - make_interval(secs => $1)
         GROUP BY rule_id ORDER BY 2 DESC",
    )
    .bind(secs as f64)
    .fetch_all(db)
    .await
}

/// Firing (rule, source) pairs, newest first.
pub async fn firing(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(StateRow, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        state: StateRow,
        name: String,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.rule_id, s.source, s.state, s.since, s.value, s.cond_since, s.evaluated_at, s.notified,
                s.last_notified_at, s.acked_by, s.acked_at, r.name
         FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id
         WHERE s.state = 'firing' ORDER BY s.since DESC, r.name, s.source",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.name)).collect())
}

/// One condition's figures for one source over its window (the evaluation's one read).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WindowRow {
    pub rule_id: i64,
    pub idx: i32,
    pub source: String,
    pub kind: String,
    pub count: i64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Every enabled rule's conditions over their windows ending at `now`, per source, in two
/// statements whatever the number of rules: windows up to 15 minutes from raw points; longer
/// ones from the 1-minute rollups of their complete minutes older than two minutes (the
/// rollup task has done those) and raw points after. An `absent` condition also lists the
/// sources its series had in the last hour with a count of 0 — that is how a source that
/// stopped sending is noticed. Each series' window is one index range scan, aggregated in
/// place (`kiln bench alerts`: aggregating outside cost a sort of every point).
///
/// Read with JIT compilation off, in a read-only transaction of their own: they are tens of
/// thousands of small index lookups, and PostgreSQL's estimate of `jsonb_array_elements` (100
/// rows a call, where a rule has one to ten) makes them look dear enough to compile, which
/// cost more than it saved (figures in docs/performance.md).
pub async fn windows(pool: &sqlx::PgPool, now: OffsetDateTime) -> sqlx::Result<Vec<WindowRow>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let mut rows: Vec<WindowRow> = sqlx::query_as(SHORT_WINDOWS_SQL)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    rows.extend(
        sqlx::query_as::<_, WindowRow>(LONG_WINDOWS_SQL)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?,
    );
    tx.commit().await?;
    Ok(rows)
}

/// The conditions of enabled rules, one row each, with their window's start (the CTE is
/// materialised: each condition's JSON is read once, not once per series).
macro_rules! conditions_cte {
    ($filter:literal) => {
        concat!(
            "WITH c AS MATERIALIZED (
    SELECT r.id AS rule_id, (c.ord - 1)::INT AS idx, c.cond->>'metric' AS metric,
           c.cond->>'source_like' AS source_like, c.cond->>'op' AS op,
           metric_t($1::TIMESTAMPTZ - make_interval(secs => (c.cond->>'window_s')::INT)) AS w_from,
           metric_t(greatest($1::TIMESTAMPTZ - make_interval(secs => (c.cond->>'window_s')::INT),
                    date_trunc('minute', $1::TIMESTAMPTZ - interval '2 minutes'))) AS raw_from,
           metric_t($1::TIMESTAMPTZ) AS w_to
    FROM alert_rules r CROSS JOIN LATERAL jsonb_array_elements(r.conditions) WITH ORDINALITY AS c(cond, ord)
    WHERE r.enabled AND ",
            $filter,
            "
)"
        )
    };
}

/// A source of an absent condition that sent nothing in its window still counts when its
/// series had a point in the last hour.
macro_rules! absent_or_data {
    () => {
        "
WHERE v.count > 0
   OR (c.op = 'absent' AND EXISTS (
        SELECT 1 FROM metric_rolled(60, s.id, c.w_to - 3600, 2147483647)))"
    };
}

pub const SHORT_WINDOWS_SQL: &str = concat!(
    conditions_cte!("(c.cond->>'window_s')::INT <= 900"),
    "
SELECT c.rule_id, c.idx, s.source, s.kind, v.count, v.sum, v.min, v.max
FROM c
JOIN metric_series s ON s.name = c.metric AND s.source LIKE c.source_like
CROSS JOIN LATERAL (
    SELECT coalesce(sum(p.count), 0)::BIGINT AS count, sum(p.sum) AS sum, min(p.min) AS min, max(p.max) AS max
    FROM metric_raw(s.id, c.w_from, c.w_to) p
) v",
    absent_or_data!()
);

pub const LONG_WINDOWS_SQL: &str = concat!(
    conditions_cte!("(c.cond->>'window_s')::INT > 900"),
    "
SELECT c.rule_id, c.idx, s.source, s.kind, v.count, v.sum, v.min, v.max
FROM c
JOIN metric_series s ON s.name = c.metric AND s.source LIKE c.source_like
CROSS JOIN LATERAL (
    SELECT coalesce(sum(x.count), 0)::BIGINT AS count, sum(x.sum) AS sum, min(x.min) AS min, max(x.max) AS max
    FROM (
        SELECT p.count, p.sum, p.min, p.max FROM metric_raw(s.id, c.raw_from, c.w_to) p
        UNION ALL
        SELECT u.count, u.sum, u.min, u.max FROM metric_rolled(60, s.id, c.w_from, c.raw_from) u
    ) x
) v",
    absent_or_data!()
);

/// What the pass knows of sources that are servers: (id, terminated, changing).
pub async fn server_facts(
    db: impl PgExecutor<'_>,
    ids: &[String],
) -> sqlx::Result<Vec<(String, bool, bool)>> {
    sqlx::query_as(
        "SELECT s.id, s.state = 'terminated',
                s.state IN ('pending', 'stopping', 'shutting-down', 'stopped') OR s.purpose = 'builder'
                OR s.mode <> 'enabled'
                OR EXISTS (SELECT 1 FROM rollout_servers rs JOIN rollouts r ON r.id = rs.rollout_id
                           WHERE rs.server_id = s.id AND r.state IN ('pending', 'running', 'paused'))
         FROM servers s WHERE s.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SilenceRow {
    pub id: i64,
    pub rule_id: Option<i64>,
    pub source_glob: Option<String>,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    pub comment: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}

pub async fn active_silences(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
) -> sqlx::Result<Vec<SilenceRow>> {
    sqlx::query_as(
        "SELECT id, rule_id, source_glob, starts_at, ends_at, comment, created_by, created_at
         FROM alert_silences WHERE starts_at <= $1 AND ends_at > $1 ORDER BY ends_at",
    )
    .bind(now)
    .fetch_all(db)
    .await
}

/// Silences that have not ended, newest first.
pub async fn silences(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<SilenceRow>> {
    sqlx::query_as(
        "SELECT id, rule_id, source_glob, starts_at, ends_at, comment, created_by, created_at
         FROM alert_silences WHERE ends_at > now() ORDER BY created_at DESC LIMIT 500",
    )
    .fetch_all(db)
    .await
}

pub async fn insert_silence(
    conn: &mut PgConnection,
    rule_id: Option<i64>,
    source_glob: Option<&str>,
    starts_at: OffsetDateTime,
    ends_at: OffsetDateTime,
    comment: &str,
    by: &str,
) -> sqlx::Result<SilenceRow> {
    sqlx::query_as(
        "INSERT INTO alert_silences (rule_id, source_glob, starts_at, ends_at, comment, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, rule_id, source_glob, starts_at, ends_at, comment, created_by, created_at",
    )
    .bind(rule_id)
    .bind(source_glob)
    .bind(starts_at)
    .bind(ends_at)
    .bind(comment)
    .bind(by)
    .fetch_one(conn)
    .await
}

/// Ends a silence now; false when it was unknown or already over.
pub async fn end_silence(conn: &mut PgConnection, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE alert_silences SET ends_at = greatest(now(), starts_at + interval '1 microsecond')
         WHERE id = $1 AND ends_at > now()",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionRow {
    pub rule_id: i64,
    pub source: String,
    pub at: OffsetDateTime,
    pub from_state: AlertState,
    pub to_state: AlertState,
    pub value: Option<f64>,
    pub reason: String,
}

pub async fn transitions_of(
    db: impl PgExecutor<'_>,
    rule_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<TransitionRow>> {
    sqlx::query_as(
        "SELECT rule_id, source, at, from_state, to_state, value, reason FROM alert_transitions
         WHERE rule_id = $1 AND at > now() - interval '30 days' ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(rule_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    pub url: Option<String>,
    /// Write-only: read for delivery, never shown.
    pub secret: Option<String>,
    pub email_to: Vec<String>,
    pub smtp: Option<Json<serde_json::Value>>,
    pub events: Vec<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

pub async fn channels(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<ChannelRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        channel_columns!(),
        " FROM alert_channels ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

pub async fn channel(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<ChannelRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        channel_columns!(),
        " FROM alert_channels WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn channel_ids(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM alert_channels")
        .fetch_all(db)
        .await
}

/// The ids among `ids` that name no channel.
pub async fn unknown_channels(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT i FROM unnest($1::BIGINT[]) AS i WHERE NOT EXISTS (SELECT 1 FROM alert_channels c WHERE c.id = i) ORDER BY i",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A notification to write and deliver.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: uuid::Uuid,
    pub channel_id: i64,
    pub rule_id: Option<i64>,
    pub status: String,
    pub payload: serde_json::Value,
}

pub async fn insert_notifications(
    conn: &mut PgConnection,
    all: &[NewNotification],
) -> sqlx::Result<()> {
    if all.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = all.iter().map(|n| n.id).collect();
    let channels: Vec<i64> = all.iter().map(|n| n.channel_id).collect();
    let rules: Vec<Option<i64>> = all.iter().map(|n| n.rule_id).collect();
    let statuses: Vec<&str> = all.iter().map(|n| n.status.as_str()).collect();
    let payloads: Vec<Json<&serde_json::Value>> = all.iter().map(|n| Json(&n.payload)).collect();
    sqlx::query(
        "INSERT INTO alert_notifications (id, channel_id, rule_id, status, payload)
         SELECT * FROM unnest($1::UUID[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::JSONB[])",
    )
    .bind(&ids)
    .bind(&channels)
    .bind(&rules)
    .bind(&statuses)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: uuid::Uuid,
    pub channel_id: i64,
    pub rule_id: Option<i64>,
    pub status: String,
    pub payload: Json<serde_json::Value>,
    pub state: DeliveryState,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

pub async fn notification(
    db: impl PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<Option<NotificationRow>> {
    sqlx::query_as(
        "SELECT id, channel_id, rule_id, status, payload, state, attempts, created_at, finished_at
         FROM alert_notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// One line of a rule's delivery log.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeliveryRow {
    pub notification_id: uuid::Uuid,
    pub channel: String,
    pub status: String,
    pub state: DeliveryState,
    pub attempt: Option<i32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub at: Option<OffsetDateTime>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// The delivery log of a rule (or of the fleet events when `rule_id` is None): each attempt,
/// newest first; a notification not yet tried shows once with no attempt.
pub async fn deliveries(
    db: impl PgExecutor<'_>,
    rule_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        "SELECT n.id AS notification_id, c.name AS channel, n.status, n.state, a.attempt,
                coalesce(a.at, n.created_at) AS at, a.status_code, a.error
         FROM alert_notifications n JOIN alert_channels c ON c.id = n.channel_id
         LEFT JOIN alert_delivery_attempts a ON a.notification_id = n.id
         WHERE n.rule_id IS NOT DISTINCT FROM $1
         ORDER BY coalesce(a.at, n.created_at) DESC LIMIT $2",
    )
    .bind(rule_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

//! `/api/v1/jobs`: the work queue as JSON.

use actix_web::{HttpRequest, HttpResponse, web};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::db::jobs::{AttemptRow, JobQuery, JobRow, Labels};
use crate::jobs::{Change, Enqueue};
use crate::web::AppState;
use crate::web::error::AppError;

#[derive(serde::Serialize)]
struct AttemptJson {
    n: i32,
    server_id: String,
    state: crate::domain::AttemptState,
    #[serde(with = "time::serde::rfc3339")]
    started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
    exit_code: Option<i32>,
    reason: String,
}

impl From<AttemptRow> for AttemptJson {
    fn from(a: AttemptRow) -> Self {
        Self {
            n: a.n,
            server_id: a.server_id,
            state: a.state,
            started_at: a.started_at,
            finished_at: a.finished_at,
            exit_code: a.exit_code,
            reason: a.reason,
        }
    }
}

#[derive(serde::Serialize)]
pub struct JobJson {
    id: i64,
    state: crate::domain::JobState,
    command: String,
    labels: Labels,
    timeout_s: i32,
    retries: i32,
    server_id: Option<String>,
    exit_code: Option<i32>,
    reason: String,
    enqueued_by: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
    attempts: Vec<AttemptJson>,
}

fn job_json(j: JobRow, attempts: Vec<AttemptRow>) -> JobJson {
    JobJson {
        id: j.id,
        state: j.state,
        command: j.command,
        labels: j.labels.0,
        timeout_s: j.timeout_s,
        retries: j.retries,
        server_id: j.server_id,
        exit_code: j.exit_code,
        reason: j.reason,
        enqueued_by: j.enqueued_by,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        attempts: attempts.into_iter().map(AttemptJson::from).collect(),
    }
}

fn parse_id(id: &str) -> Result<i64, AppError> {
    id.parse()
        .map_err(|_| AppError::NotFound(format!("There is no job {id}.")))
}

async fn load(state: &AppState, id: i64) -> Result<JobJson, AppError> {
    let job = crate::db::jobs::find(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no job {id}.")))?;
    let attempts = crate::db::jobs::attempts(&state.pool, id).await?;
    Ok(job_json(job, attempts))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    /// `key=value`
    label: Option<String>,
    server: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Parses the filters shared by the page and the API; a malformed one is a 400.
pub fn job_query(
    state: Option<&str>,
    label: Option<&str>,
    server: Option<&str>,
) -> Result<JobQuery, AppError> {
    fn nonempty(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|s| !s.is_empty())
    }
    let state = nonempty(state).map(str::to_owned);
    if let Some(s) = &state
        && !["queued", "running", "succeeded", "failed", "cancelled"].contains(&s.as_str())
    {
        return Err(AppError::BadRequest(format!(
            "state must be queued, running, succeeded, failed or cancelled, not {s:?}."
        )));
    }
    let label = match nonempty(label) {
        None => None,
        Some(l) => {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                AppError::BadRequest(format!("label must be key=value, not {l:?}."))
            })?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        }
    };
    Ok(JobQuery {
        state,
        label,
        server_id: nonempty(server).map(str::to_owned),
    })
}

/// `GET /api/v1/jobs`: newest first (attempts omitted; `GET …/{id}` has them).
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = super::limit(query.limit)?;
    let q = job_query(
        query.state.as_deref(),
        query.label.as_deref(),
        query.server.as_deref(),
    )?;
    let rows = crate::db::jobs::list(&state.pool, &q, query.before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<JobJson> = rows
        .into_iter()
        .take(limit as usize)
        .map(|j| job_json(j, vec![]))
        .collect();
    let mut res = HttpResponse::Ok();
    if more && let Some(last) = rows.last() {
        let mut next = vec![
            ("limit".to_owned(), limit.to_string()),
            ("before".to_owned(), last.id.to_string()),
        ];
        for (k, v) in [
            ("state", &query.state),
            ("label", &query.label),
            ("server", &query.server),
        ] {
            if let Some(v) = v {
                next.push((k.to_owned(), v.clone()));
            }
        }
        res.insert_header((
            "Link",
            format!(
                "</api/v1/jobs?{}>; rel=\"next\"",
                serde_urlencoded::to_string(next).unwrap_or_default()
            ),
        ));
    }
    Ok(res.json(rows))
}

/// `POST /api/v1/jobs` -> 201 with the job, queued.
pub async fn enqueue(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: crate::web::json::Strict<Enqueue>,
) -> Result<HttpResponse, AppError> {
    let job = crate::jobs::enqueue(
        &state.pool,
        &principal,
        crate::web::pages::source_ip(&req),
        &body,
        state.settings.default_job_timeout,
    )
    .await?;
    Ok(HttpResponse::Created().json(job_json(job, vec![])))
}

pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(load(&state, id).await?))
}

#[derive(serde::Deserialize)]
pub struct LogQuery {
    /// Only output after this attempt/seq (`attempt:seq`), for following a running job.
    after: Option<String>,
}

#[derive(serde::Serialize)]
struct LogChunkJson {
    attempt: i32,
    seq: i32,
    stream: String,
    data: String,
}

/// `GET /api/v1/jobs/{id}/log`: the output of every attempt, in order, as JSON chunks
/// (`?after=attempt:seq` for what came since; up to 5,000 chunks per call).
pub async fn log(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    if crate::db::jobs::find(&state.pool, id).await?.is_none() {
        return Err(AppError::NotFound(format!("There is no job {id}.")));
    }
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            a.split_once(':')
                .and_then(|(x, y)| Some((x.parse().ok()?, y.parse().ok()?)))
                .ok_or_else(|| {
                    AppError::BadRequest(format!("after must be attempt:seq, not {a:?}."))
                })?,
        ),
    };
    let rows = crate::db::jobs::output(&state.pool, id, after, 5000).await?;
    Ok(HttpResponse::Ok().json(
        rows.into_iter()
            .map(|r| LogChunkJson {
                attempt: r.attempt,
                seq: r.seq,
                stream: r.stream,
                data: r.data,
            })
            .collect::<Vec<_>>(),
    ))
}

pub async fn cancel(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: crate::web::json::NoBody,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    crate::jobs::cancel(
        &state.pool,
        &principal,
        crate::web::pages::source_ip(&req),
        id,
    )
    .await
    .map(|_: Change| ())?;
    Ok(HttpResponse::Ok().json(load(&state, id).await?))
}

/// `POST /api/v1/jobs/{id}/retry` -> 202: a new attempt is queued.
pub async fn retry(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: crate::web::json::NoBody,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    crate::jobs::retry(
        &state.pool,
        &principal,
        crate::web::pages::source_ip(&req),
        id,
    )
    .await?;
    Ok(HttpResponse::Accepted().json(load(&state, id).await?))
}

//! The Jobs page (queue depth, running jobs, recent results, the enqueue form; refreshed
//! every 2 s) and a job's own page (attempts and live log; cancel, retry).

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::db::jobs::{AttemptRow, JobRow, Labels, QueueCounts};
use crate::jobs::Enqueue;
use crate::web::AppState;
use crate::web::api::jobs::job_query;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when, when_opt};

const PAGE: i64 = 50;
const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
/// The job page shows at most this many output chunks (the API pages through the rest).
const LOG_CHUNKS: i64 = 2000;

pub struct JobView {
    pub id: i64,
    pub state: crate::domain::JobState,
    pub command: String,
    pub command_short: String,
    pub labels: Vec<String>,
    /// Each label and the link that filters by it (the page's other filters kept).
    pub label_links: Vec<(String, String)>,
    /// How long it waited in the queue (so far, while queued).
    pub queued_for: String,
    /// How long its latest attempt ran (so far, while running); empty before it started.
    pub run_time: String,
    pub timeout_s: i32,
    pub retries: i32,
    pub server_id: Option<String>,
    pub attempt: i32,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub enqueued_by: String,
    pub created: When,
    pub finished: bool,
}

impl From<JobRow> for JobView {
    fn from(j: JobRow) -> Self {
        let first_line = j.command.lines().next().unwrap_or_default();
        let command_short = if first_line.chars().count() > 80 || j.command.contains('\n') {
            format!("{}…", first_line.chars().take(80).collect::<String>())
        } else {
            first_line.to_owned()
        };
        let now = time::OffsetDateTime::now_utc();
        let secs = |d: time::Duration| crate::web::view::duration(d.whole_seconds());
        let queued_for = secs(j.started_at.unwrap_or(now) - j.created_at);
        let run_time = j
            .started_at
            .filter(|_| j.state != crate::domain::JobState::Queued)
            .map(|start| secs(j.finished_at.unwrap_or(now) - start))
            .unwrap_or_default();
        Self {
            label_links: Vec::new(),
            queued_for,
            run_time,
            id: j.id,
            finished: j.state.is_finished(),
            state: j.state,
            command_short,
            command: j.command,
            labels: j.labels.0.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            timeout_s: j.timeout_s,
            retries: j.retries,
            server_id: j.server_id,
            attempt: j.attempt,
            exit_code: j.exit_code,
            reason: j.reason,
            enqueued_by: j.enqueued_by,
            created: when(j.created_at),
        }
    }
}

#[derive(Default, serde::Deserialize)]
pub struct Filters {
    state: Option<String>,
    label: Option<String>,
    server: Option<String>,
    before: Option<i64>,
    #[serde(default)]
    live: bool,
}

impl Filters {
    fn encoded(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("state", &self.state),
            ("label", &self.label),
            ("server", &self.server),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|v| (k, v))
        })
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[derive(Template)]
#[template(path = "partials/jobs_live.html")]
struct JobsLive {
    counts: QueueCounts,
    jobs: Vec<JobView>,
    filters: String,
    next: Option<i64>,
    first_page: bool,
    /// Viewing failed jobs: how many the filter matches, for "Retry all failed".
    failed_matching: Option<i64>,
    can_act: bool,
    csrf: String,
    /// The filter's label and server, carried by the Retry all form.
    filter_label: String,
    filter_server: String,
}

/// The enqueue form as typed (re-shown with the error when refused).
#[derive(Default, serde::Deserialize)]
pub struct EnqueueForm {
    #[serde(default)]
    command: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    timeout_s: String,
    #[serde(default)]
    retries: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    live: JobsLive,
    states: [&'static str; 5],
    filter_state: String,
    filter_label: String,
    form: EnqueueForm,
    error: Option<String>,
}

async fn live(state: &AppState, layout: &Layout, filters: &Filters) -> Result<JobsLive, AppError> {
    let q = job_query(
        filters.state.as_deref(),
        filters.label.as_deref(),
        filters.server.as_deref(),
    )?;
    let viewing_failed = q.state.as_deref() == Some("failed");
    let (counts, mut rows, failed_matching) = tokio::try_join!(
        crate::db::jobs::counts(&state.pool),
        crate::db::jobs::list(&state.pool, &q, filters.before, PAGE + 1),
        async {
            if viewing_failed && layout.can_act() {
                crate::db::jobs::count_failed(&state.pool, &q)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        },
    )?;
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let label_link = |label: &str| {
        let f = Filters {
            state: filters.state.clone(),
            label: Some(label.to_owned()),
            server: filters.server.clone(),
            before: None,
            live: false,
        };
        format!("/jobs?{}", f.encoded())
    };
    let jobs = rows
        .into_iter()
        .map(|row| {
            let mut v = JobView::from(row);
            v.label_links = v
                .labels
                .iter()
                .map(|l| (l.clone(), label_link(l)))
                .collect();
            v
        })
        .collect();
    Ok(JobsLive {
        counts,
        jobs,
        filters: filters.encoded(),
        next,
        first_page: filters.before.is_none(),
        failed_matching,
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
        filter_label: filters.label.clone().unwrap_or_default(),
        filter_server: filters.server.clone().unwrap_or_default(),
    })
}

async fn render(
    layout: Layout,
    state: &AppState,
    filters: Filters,
    form: EnqueueForm,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let form = EnqueueForm {
        timeout_s: if form.timeout_s.is_empty() {
            state.settings.default_job_timeout.to_string()
        } else {
            form.timeout_s
        },
        retries: if form.retries.is_empty() {
            "0".into()
        } else {
            form.retries
        },
        ..form
    };
    let page = JobsPage {
        live: live(state, &layout, &filters).await?,
        layout,
        states: STATES,
        filter_state: filters.state.clone().unwrap_or_default(),
        filter_label: filters.label.clone().unwrap_or_default(),
        form,
        error,
    };
    super::html(&page, status)
}

pub async fn list(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    filters: web::Query<Filters>,
) -> Result<HttpResponse, AppError> {
    let filters = filters.into_inner();
    if filters.live && is_htmx(&req) {
        return super::html(&live(&state, &layout, &filters).await?, StatusCode::OK);
    }
    render(
        layout,
        &state,
        filters,
        EnqueueForm::default(),
        None,
        StatusCode::OK,
    )
    .await
}

/// `key=value, key2=value2` (commas or new lines) -> labels.
fn parse_labels(text: &str) -> Result<Labels, AppError> {
    let mut labels = Labels::new();
    for part in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            AppError::BadRequest(format!(
                "Labels are key=value pairs separated by commas; {part:?} has no '='."
            ))
        })?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

fn parse_number(field: &str, text: &str) -> Result<Option<i64>, AppError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| AppError::BadRequest(format!("{field} must be a whole number, not {text:?}.")))
}

pub async fn enqueue(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<EnqueueForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let parsed = (|| {
        Ok::<_, AppError>(Enqueue {
            command: form.command.replace("\r\n", "\n"),
            labels: parse_labels(&form.labels)?,
            timeout_s: parse_number("timeout_s", &form.timeout_s)?,
            retries: parse_number("retries", &form.retries)?,
        })
    })();
    let result = match parsed {
        Ok(input) => crate::jobs::enqueue(
            &state.pool,
            &principal,
            source_ip(&req),
            &input,
            state.settings.default_job_timeout,
        )
        .await
        .map_err(AppError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(job) => {
            flash(&session, format!("Enqueued job {}.", job.id));
            Ok(see_other(&format!("/jobs/{}", job.id)))
        }
        Err(AppError::BadRequest(m)) => {
            render(
                layout,
                &state,
                Filters::default(),
                form,
                Some(m),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

pub struct AttemptView {
    pub n: i32,
    pub server_id: String,
    pub state: crate::domain::AttemptState,
    pub started: When,
    pub finished: Option<When>,
    pub exit_code: Option<i32>,
    pub reason: String,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            n: a.n,
            server_id: a.server_id,
            state: a.state,
            started: when(a.started_at),
            finished: when_opt(a.finished_at),
            exit_code: a.exit_code,
            reason: a.reason,
        }
    }
}

pub struct LogView {
    pub attempt: i32,
    pub first_of_attempt: bool,
    pub stream: String,
    pub data: String,
}

#[derive(Template)]
#[template(path = "partials/job_live.html")]
struct JobLive {
    can_act: bool,
    csrf: String,
    job: JobView,
    attempts: Vec<AttemptView>,
    log: Vec<LogView>,
    truncated: bool,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    live: JobLive,
}

#[derive(Default, serde::Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    live: bool,
}

async fn job_live(state: &AppState, layout: &Layout, id: &str) -> Result<JobLive, AppError> {
    let not_found = || AppError::NotFound(format!("There is no job {id}."));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let (job, attempts, log) = tokio::try_join!(
        crate::db::jobs::find(&state.pool, id),
        crate::db::jobs::attempts(&state.pool, id),
        crate::db::jobs::output(&state.pool, id, None, LOG_CHUNKS + 1),
    )?;
    let job = job.ok_or_else(not_found)?;
    let truncated = log.len() as i64 > LOG_CHUNKS;
    let mut previous = None;
    let log = log
        .into_iter()
        .take(LOG_CHUNKS as usize)
        .map(|c| {
            let first_of_attempt = previous != Some(c.attempt);
            previous = Some(c.attempt);
            LogView {
                attempt: c.attempt,
                first_of_attempt,
                stream: c.stream,
                data: c.data,
            }
        })
        .collect();
    Ok(JobLive {
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
        job: job.into(),
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
        log,
        truncated,
    })
}

pub async fn show(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ShowQuery>,
) -> Result<HttpResponse, AppError> {
    let live = job_live(&state, &layout, &id).await?;
    if query.live && is_htmx(&req) {
        return super::html(&live, StatusCode::OK);
    }
    super::html(&JobPage { layout, live }, StatusCode::OK)
}

fn job_id(id: &str) -> Result<i64, AppError> {
    id.parse()
        .map_err(|_| AppError::NotFound(format!("There is no job {id}.")))
}

pub async fn cancel(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = job_id(&id)?;
    let change = crate::jobs::cancel(&state.pool, &principal, source_ip(&req), id).await?;
    flash(
        &session,
        match change {
            crate::jobs::Change::Done => format!("Cancelled job {id}."),
            crate::jobs::Change::AlreadySo => format!("Job {id} was already cancelled."),
        },
    );
    Ok(see_other(&format!("/jobs/{id}")))
}

/// The Retry all form: the filter it was shown under (the state is `failed`).
#[derive(serde::Deserialize)]
pub struct RetryAllForm {
    #[serde(default)]
    label: String,
    #[serde(default)]
    server: String,
}

/// `POST /jobs/retry_failed`: Retry all failed (as filtered), audited as one action.
pub async fn retry_failed(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<RetryAllForm>,
) -> Result<HttpResponse, AppError> {
    let q = job_query(Some("failed"), Some(&form.label), Some(&form.server))?;
    let n = crate::jobs::retry_failed(&state.pool, &principal, source_ip(&req), &q).await?;
    flash(
        &session,
        match n {
            0 => "No failed job matched: nothing was retried.".to_owned(),
            1 => "1 failed job is queued for a new attempt.".to_owned(),
            n => format!("{n} failed jobs are queued for a new attempt."),
        },
    );
    let back = Filters {
        state: Some("failed".into()),
        label: Some(form.label.clone()),
        server: Some(form.server.clone()),
        before: None,
        live: false,
    };
    Ok(see_other(&format!("/jobs?{}", back.encoded())))
}

pub async fn retry(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = job_id(&id)?;
    crate::jobs::retry(&state.pool, &principal, source_ip(&req), id).await?;
    flash(&session, format!("Job {id} is queued for a new attempt."));
    Ok(see_other(&format!("/jobs/{id}")))
}

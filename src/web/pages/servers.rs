//! The Servers page (filters, counts per state, keyset pagination, the launch form, live
//! refresh while anything is in motion) and a server's own page.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::db::servers::{LaunchRow, ServerQuery, ServerRow};
use crate::domain::{ServerMode, ServerPurpose, ServerState};
use crate::fleet::servers::Launch;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::pages::audit::EventView;
use crate::web::view::{When, when, when_opt};

const PAGE: i64 = 100;
const STATES: [&str; 6] = [
    "pending",
    "running",
    "stopping",
    "stopped",
    "shutting-down",
    "terminated",
];

/// A server as the pages show it, borrowing its text from the row it was read in.
pub struct ServerView<'r> {
    pub id: &'r str,
    pub image_id: &'r str,
    pub image_version: &'r str,
    pub instance_type: &'r str,
    pub state: ServerState,
    pub mode: ServerMode,
    pub purpose: ServerPurpose,
    pub adopted: bool,
    pub launched_by: &'r str,
    pub launched: When,
    pub last_seen: Option<When>,
    pub running_jobs: i64,
    /// When recycling replaces it, if servers are recycled.
    pub recycle: Option<RecycleNote>,
    /// Kept disabled by a release for an instant rollback: until when (None: until the
    /// release ends and its grace period has passed).
    pub kept: Option<Option<When>>,
    /// The image as people name it ("worker v7").
    pub image_label: String,
}

/// A worker's place in recycling, under its age.
pub enum RecycleNote {
    Due(When),
    BeingReplaced,
}

impl std::fmt::Display for RecycleNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecycleNote::Due(w) if w.is_past() => f.write_str("recycle due now"),
            RecycleNote::Due(w) => write!(f, "recycle {}", w.relative),
            RecycleNote::BeingReplaced => f.write_str("being replaced"),
        }
    }
}

impl ServerView<'_> {
    /// Sets when recycling replaces it: enabled running workers only.
    fn note_recycling(
        &mut self,
        max_age_s: Option<i32>,
        being_replaced: &[String],
        at: time::OffsetDateTime,
    ) {
        let in_service = self.purpose == ServerPurpose::Worker
            && self.mode == ServerMode::Enabled
            && self.state == ServerState::Running;
        self.recycle = match max_age_s {
            _ if !in_service => None,
            _ if being_replaced.iter().any(|id| id == self.id) => Some(RecycleNote::BeingReplaced),
            Some(age) => Some(RecycleNote::Due(when(
                at + time::Duration::seconds(i64::from(age)),
            ))),
            None => None,
        };
    }

    /// A disabled server still running jobs is *draining*.
    pub fn mode_label(&self) -> &'static str {
        match self.mode {
            ServerMode::Disabled if self.running_jobs > 0 => "draining",
            ServerMode::Disabled | ServerMode::Enabled => self.mode.as_str(),
        }
    }
}

impl<'r> From<&'r ServerRow> for ServerView<'r> {
    fn from(r: &'r ServerRow) -> Self {
        Self {
            id: &r.id,
            image_id: &r.image_id,
            image_version: r.image_version.as_deref().unwrap_or_default(),
            instance_type: &r.instance_type,
            state: r.state,
            mode: r.mode,
            purpose: r.purpose,
            adopted: r.adopted,
            launched_by: &r.launched_by,
            launched: when(r.launched_at),
            last_seen: when_opt(r.last_seen_at),
            running_jobs: r.running_jobs,
            recycle: None,
            kept: None,
            image_label: crate::web::view::image_label(
                &r.image_id,
                r.image_name.as_deref().unwrap_or_default(),
                r.image_version.as_deref().unwrap_or_default(),
            ),
        }
    }
}

pub struct LaunchView {
    pub id: i64,
    pub image_id: String,
    pub count: i32,
    pub state: crate::domain::LaunchState,
    pub error: String,
    pub requested_by: String,
    pub created: When,
}

impl From<LaunchRow> for LaunchView {
    fn from(l: LaunchRow) -> Self {
        Self {
            id: l.id,
            image_id: l.image_id,
            count: l.count,
            state: l.state,
            error: l.error,
            requested_by: l.requested_by,
            created: when(l.created_at),
        }
    }
}

/// The launch form as typed: every field a string (a blank count means one server).
#[derive(serde::Deserialize)]
pub struct LaunchForm {
    #[serde(default)]
    image_id: String,
    #[serde(default)]
    count: String,
    #[serde(default)]
    instance_type: String,
}

impl LaunchForm {
    fn parse(&self) -> Result<Launch, crate::error::Error> {
        let count = match self.count.trim() {
            "" => 1,
            n => n.parse::<u32>().map_err(|_| {
                crate::error::Error::invalid(
                    "The count must be a whole number of servers, 1 or more.",
                )
            })?,
        };
        Ok(Launch {
            image_id: self.image_id.clone(),
            count,
            instance_type: Some(self.instance_type.clone()),
        })
    }
}

/// A chip at the top of the list: a state or mode, how many servers within the other filters,
/// and the link that filters by it (keeping the others).
pub struct Count {
    pub state: &'static str,
    pub n: i64,
    pub href: String,
    pub active: bool,
}

/// "5 serving · 5 kept for rollback until 22:38": the fleet's truth in one line (kept servers
/// are disabled but running, and would otherwise count as running).
pub struct FleetLine {
    pub serving: i64,
    pub kept: usize,
    /// When the last of them is retired (None while their release still runs).
    pub kept_until: Option<When>,
}

impl FleetLine {
    pub fn new(tally: &[crate::db::servers::Tally], kept: &[crate::db::servers::Kept]) -> Self {
        Self {
            serving: tally
                .iter()
                .filter(|t| t.state == ServerState::Running && t.mode == ServerMode::Enabled)
                .map(|t| t.n)
                .sum(),
            kept: kept.len(),
            kept_until: kept.iter().filter_map(|k| k.until).max().map(when),
        }
    }
}

pub struct ImageChoice {
    pub id: String,
    pub label: String,
    pub current: bool,
}

#[derive(Default, serde::Deserialize)]
pub struct Filters {
    image: Option<String>,
    state: Option<String>,
    mode: Option<String>,
    after: Option<String>,
    #[serde(default)]
    live: bool,
}

impl Filters {
    fn query(&self) -> ServerQuery {
        let keep = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        ServerQuery {
            image: keep(&self.image),
            state: keep(&self.state),
            mode: keep(&self.mode),
            purpose: None,
        }
    }

    /// The filters as a query string, for links that keep them.
    fn encoded(&self) -> String {
        let q = self.query();
        let pairs: Vec<(&str, String)> = [("image", q.image), ("state", q.state), ("mode", q.mode)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage<'r> {
    layout: Layout,
    live: ServersLive<'r>,
    images: Vec<ImageChoice>,
    instance_types: Vec<String>,
    max_count: u32,
    filter_image: String,
    filter_state: String,
    filter_mode: String,
    states: [&'static str; 6],
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "partials/servers_live.html")]
struct ServersLive<'r> {
    can_act: bool,
    csrf: String,
    servers: Vec<ServerView<'r>>,
    counts: Vec<Count>,
    modes: Vec<Count>,
    fleet: FleetLine,
    launches: Vec<LaunchView>,
    busy: bool,
    filters: String,
    next: Option<String>,
    first_page: bool,
    /// Sent out of band, in an action's response.
    oob: bool,
}

/// The page's live part, read now and rendered to be sent out of band (an action's answer).
async fn live_oob(
    state: &AppState,
    layout: &Layout,
    filters: &Filters,
) -> Result<String, AppError> {
    let data = reads(state, filters, false).await?;
    let mut region = assemble(&data, layout, filters)?.0;
    region.oob = true;
    region
        .render()
        .map_err(|e| AppError::Internal(anyhow::Error::new(e)))
}

/// What the page reads: the rows of its page (one more, to know whether a next page exists)
/// and everything around them.
pub struct ServersData {
    context: crate::db::servers::PageContext,
    rows: Vec<ServerRow>,
}

/// The page's reads; the launch form's choices only when asked for (the live refresh shows
/// no form).
async fn reads(
    state: &AppState,
    filters: &Filters,
    with_choices: bool,
) -> Result<ServersData, AppError> {
    let pool = &state.pool;
    let after = match filters.after.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => crate::db::servers::find(pool, id)
            .await?
            .map(|s| (s.launched_at, s.id)),
        None => None,
    };
    // The list and the rest are read at once, each on its own pooled connection, so they are
    // separate snapshots. A launch or termination that ends between them must not leave the
    // page still and stale (a launch finished after the servers were read, before the
    // launches were: its servers are missing and nothing is in flight any more), so one that
    // ended in the last 10 s keeps the page refreshing (`recently_busy`); the next refresh,
    // two seconds later, reads after the end.
    let query = filters.query();
    let (context, rows) = tokio::try_join!(
        crate::db::servers::page_context(pool, with_choices, query.image.as_deref()),
        crate::db::servers::list(pool, &query, after, PAGE + 1),
    )?;
    Ok(ServersData { context, rows })
}

/// Whether a GET of the page shows the launch form (a full page) or only its live part.
fn wants_choices(req: &HttpRequest, filters: &Filters) -> bool {
    !(filters.live && is_htmx(req))
}

/// The page's live part and the launch form's choices (id, name, version, current), from
/// what was read.
fn assemble<'r>(
    data: &'r ServersData,
    layout: &Layout,
    filters: &Filters,
) -> Result<(ServersLive<'r>, &'r [crate::db::servers::Choice]), AppError> {
    let crate::db::servers::PageContext {
        counts: by_state,
        launches,
        recently_busy,
        choices,
        recycle_max_age_s,
        being_replaced,
        tally,
        kept: kept_servers,
    } = &data.context;
    let kept: std::collections::HashMap<&str, Option<time::OffsetDateTime>> = kept_servers
        .iter()
        .map(|k| (k.server_id.as_str(), k.until))
        .collect();
    let mut servers: Vec<ServerView<'r>> = data
        .rows
        .iter()
        .map(|r| {
            let mut v = ServerView::from(r);
            v.note_recycling(*recycle_max_age_s, being_replaced, r.launched_at);
            v.kept = kept.get(r.id.as_str()).map(|until| until.map(when));
            v
        })
        .collect();
    let next = if servers.len() as i64 > PAGE {
        servers.truncate(PAGE as usize);
        servers.last().map(|s| s.id.to_owned())
    } else {
        None
    };
    let (counts, modes) = chips(filters, tally, by_state);
    let launches: Vec<LaunchView> = launches.iter().cloned().map(LaunchView::from).collect();
    // Terminations in flight keep the page refreshing until the servers are gone.
    let busy = *recently_busy
        || launches.iter().any(|l| l.state.is_unsettled())
        || servers.iter().any(|s| match s.state {
            ServerState::Pending | ServerState::Stopping | ServerState::ShuttingDown => true,
            ServerState::Running | ServerState::Stopped | ServerState::Terminated => false,
        });
    let live = ServersLive {
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
        servers,
        counts,
        modes,
        fleet: FleetLine::new(tally, kept_servers),
        launches,
        busy,
        filters: filters.encoded(),
        next,
        first_page: filters.after.is_none(),
        oob: false,
    };
    Ok((live, choices))
}

async fn render(
    layout: Layout,
    state: &AppState,
    filters: Filters,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let data = reads(state, &filters, true).await?;
    render_read(layout, state, data, filters, error, status)
}

fn render_read(
    layout: Layout,
    state: &AppState,
    data: ServersData,
    filters: Filters,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let (live, images) = assemble(&data, &layout, &filters)?;
    let images = images
        .iter()
        .map(|(id, name, version, current)| ImageChoice {
            label: format!(
                "{name} {version}{}",
                if *current { " (current)" } else { "" }
            )
            .replace("  ", " "),
            id: id.clone(),
            current: *current,
        })
        .collect();
    let q = filters.query();
    let page = ServersPage {
        live,
        layout,
        images,
        instance_types: state.settings.instance_types.clone(),
        max_count: state.settings.max_servers,
        filter_image: q.image.unwrap_or_default(),
        filter_state: q.state.unwrap_or_default(),
        filter_mode: q.mode.unwrap_or_default(),
        states: STATES,
        error,
    };
    super::html_sized(&page, status, size_hint(data.rows.len()))
}

/// The state chips (within the mode filter) and the mode chips (within the state filter),
/// each linking to its filter with the others kept. Terminated servers are counted from
/// `server_state_counts` unless one image is asked for (the tally counts them then).
fn chips(
    filters: &Filters,
    tally: &[crate::db::servers::Tally],
    by_state: &[(String, i64)],
) -> (Vec<Count>, Vec<Count>) {
    let q = filters.query();
    // A mode as the chips and the filter say it: "draining" is disabled with jobs running,
    // and a draining server is disabled too.
    let in_mode = |t: &crate::db::servers::Tally, mode: &str| match mode {
        "draining" => t.draining,
        m => t.mode.as_str() == m,
    };
    let mode_matches =
        |t: &crate::db::servers::Tally| q.mode.as_deref().is_none_or(|m| in_mode(t, m));
    let state_matches = |t: &crate::db::servers::Tally| match q.state.as_deref() {
        None => t.state != ServerState::Terminated,
        Some(s) => t.state.as_str() == s,
    };
    let link = |key: &str, value: &str| {
        let mut f = Filters {
            image: q.image.clone(),
            state: q.state.clone(),
            mode: q.mode.clone(),
            after: None,
            live: false,
        };
        let slot = if key == "state" {
            &mut f.state
        } else {
            &mut f.mode
        };
        *slot = Some(value.to_owned());
        format!("/servers?{}", f.encoded())
    };
    let states = STATES
        .iter()
        .map(|&st| {
            let n = if st == "terminated" && q.image.is_none() && q.mode.is_none() {
                by_state
                    .iter()
                    .find(|(s, _)| s == st)
                    .map_or(0, |(_, n)| *n)
            } else {
                tally
                    .iter()
                    .filter(|t| t.state.as_str() == st && mode_matches(t))
                    .map(|t| t.n)
                    .sum()
            };
            Count {
                state: st,
                n,
                href: link("state", st),
                active: q.state.as_deref() == Some(st),
            }
        })
        .collect();
    let modes = ["enabled", "disabled", "draining"]
        .into_iter()
        .map(|m| Count {
            state: m,
            n: tally
                .iter()
                .filter(|t| state_matches(t) && in_mode(t, m))
                .map(|t| t.n)
                .sum(),
            href: link("mode", m),
            active: q.mode.as_deref() == Some(m),
        })
        .collect();
    (states, modes)
}

/// Bytes the page will take, about: rendered into a buffer this large, the page is not
/// copied from buffer to ever larger buffer while it grows (2 KB, 4 KB, … 128 KB).
fn size_hint(rows: usize) -> usize {
    16 * 1024 + rows * 1200
}

pub async fn list(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    filters: web::Query<Filters>,
) -> Result<HttpResponse, AppError> {
    let filters = filters.into_inner();
    let with_choices = wants_choices(&req, &filters);
    let data = reads(&state, &filters, with_choices).await?;
    if !with_choices {
        let live = assemble(&data, &layout, &filters)?.0;
        return super::html_sized(&live, StatusCode::OK, size_hint(data.rows.len()));
    }
    render_read(layout, &state, data, filters, None, StatusCode::OK)
}

pub async fn launch(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<LaunchForm>,
) -> Result<HttpResponse, AppError> {
    let ip = source_ip(&req);
    let launched = match form.parse() {
        Ok(launch) => {
            crate::fleet::servers::launch(
                &state.pool,
                &state.cloud,
                &state.settings,
                &principal,
                ip,
                &launch,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match launched {
        Ok(launch) => {
            flash(
                &session,
                format!(
                    "Launching {} from {} (launch {}).",
                    launch.count, launch.image_id, launch.id
                ),
            );
            Ok(see_other("/servers"))
        }
        Err(crate::error::Error::Invalid(m)) => {
            render(
                layout,
                &state,
                Filters::default(),
                Some(m),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(crate::error::Error::Conflict(m)) => {
            render(
                layout,
                &state,
                Filters::default(),
                Some(m),
                StatusCode::CONFLICT,
            )
            .await
        }
        Err(crate::error::Error::NotFound(m)) => {
            render(
                layout,
                &state,
                Filters::default(),
                Some(m),
                StatusCode::NOT_FOUND,
            )
            .await
        }
        Err(other) => Err(other.into()),
    }
}

pub struct AgentView {
    pub version: String,
    pub slots: i32,
    pub hostname: String,
    /// "CPU 12%, memory 40%, load 0.31, disk 55%": what the last heartbeat said.
    pub figures: String,
}

impl From<crate::db::agents::AgentRow> for AgentView {
    fn from(a: crate::db::agents::AgentRow) -> Self {
        let mut parts = Vec::new();
        if let Some(v) = a.cpu_percent {
            parts.push(format!("CPU {v:.0}%"));
        }
        if let Some(v) = a.mem_percent {
            parts.push(format!("memory {v:.0}%"));
        }
        if let Some(v) = a.load1 {
            parts.push(format!("load {v:.2}"));
        }
        if let Some(v) = a.disk_percent {
            parts.push(format!("disk {v:.0}%"));
        }
        Self {
            version: a.version,
            slots: a.slots,
            hostname: a.hostname,
            figures: if parts.is_empty() {
                "not reported yet".into()
            } else {
                parts.join(", ")
            },
        }
    }
}

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage<'r> {
    layout: Layout,
    server: ServerView<'r>,
    launch_id: Option<i64>,
    agent: Option<AgentView>,
    jobs: Vec<crate::web::pages::jobs::JobView>,
    events: Vec<EventView>,
    /// Its CPU, memory and load over the last hour.
    charts: Vec<crate::web::pages::dashboards::ChartView>,
    from: i64,
    to: i64,
}

/// What a rollout did to a server since its own audited event, as a line of its audit trail:
/// enabled again, retired, taken away. None for a step the rollout's own event already says
/// (kept: its `rollout.disable`; launched: its `servers.launched`).
fn touch_event(t: crate::db::rollouts::TouchRow) -> Option<EventView> {
    use crate::domain::RolloutServerState as S;
    let r = format!("{} #{}", t.kind, t.rollout_id);
    let (action, detail) = match t.state {
        S::Kept | S::Launched => return None,
        S::Restored => (
            "rollout.enable",
            format!("{r} had disabled it; enabled again when it was undone"),
        ),
        S::Reused => (
            "rollout.enable",
            format!("{r} had disabled it; a later rollout enabled it again"),
        ),
        S::Retired => (
            "rollout.retire",
            format!("{r} had disabled it; retired when its grace period ended"),
        ),
        S::Reenabled => (
            "rollout.enable",
            format!("{r} enabled it again (batch {})", t.batch),
        ),
        S::Removed => (
            "rollout.remove",
            format!("{r} took it away again when it was undone"),
        ),
    };
    Some(EventView {
        id: 0,
        at: when(t.at),
        actor: "system".into(),
        action: action.into(),
        target: format!("rollout:{}", t.rollout_id),
        result: "ok".into(),
        detail,
        source_ip: String::new(),
        folded: 0,
    })
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let row = crate::db::servers::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no server {id}.")))?;
    let launch_id = row.launch_id;
    let mut events: Vec<EventView> =
        crate::db::audit::for_target(&state.pool, &format!("server:{id}"), 50)
            .await?
            .into_iter()
            .map(EventView::from)
            .collect();
    if let Some(l) = launch_id {
        events.extend(
            crate::db::audit::for_target(&state.pool, &format!("launch:{l}"), 10)
                .await?
                .into_iter()
                .map(EventView::from),
        );
    }
    let jobs_here = crate::db::jobs::JobQuery {
        server_id: Some(id.clone()),
        ..Default::default()
    };
    let (agent, jobs, touches, named) = tokio::try_join!(
        crate::db::agents::find(&state.pool, &id),
        crate::db::jobs::list(&state.pool, &jobs_here, None, 20),
        crate::db::rollouts::touches_of(&state.pool, &id),
        crate::db::audit::of_rollouts_naming(&state.pool, &id, 50),
    )?;
    // Kept for a rollback: a live, disabled server a rollout keeps (as `db::servers::kept`
    // counts them), until that rollout's grace period ends.
    let kept = if row.state != ServerState::Terminated && row.mode == ServerMode::Disabled {
        touches
            .iter()
            .filter(|t| t.state == crate::domain::RolloutServerState::Kept)
            .map(|t| t.grace_until)
            .max()
    } else {
        None
    };
    // Its own and its launch's events, the rollouts' own events that name it (a disable, a
    // retirement), and where its step in a rollout changed since (enabled again, taken away:
    // the rollouts' rows are not audit events), newest first, merged by time.
    let mut events: Vec<(time::OffsetDateTime, EventView)> = events
        .into_iter()
        .chain(named.into_iter().map(EventView::from))
        .map(|e| (e.at_time(), e))
        .chain(
            touches
                .into_iter()
                .filter_map(|t| Some((t.at, touch_event(t)?))),
        )
        .collect();
    events.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let events = events.into_iter().map(|(_, e)| e).collect();
    let mut server = ServerView::from(&row);
    server.kept = kept.map(|until| until.map(when));
    let to = crate::metrics::dashboards::window_end();
    super::html(
        &ServerPage {
            layout,
            server,
            launch_id,
            agent: agent.map(AgentView::from),
            jobs: jobs.into_iter().map(Into::into).collect(),
            events,
            charts: crate::metrics::dashboards::server(&id)
                .into_iter()
                .map(Into::into)
                .collect(),
            from: to - 3600,
            to,
        },
        StatusCode::OK,
    )
}

#[derive(askama::Template)]
#[template(path = "partials/below_minimum.html")]
struct BelowMinimum<'a> {
    message: &'a str,
    action: &'a str,
    csrf: &'a str,
    fields: &'a [(String, String)],
}

#[derive(askama::Template)]
#[template(path = "below_minimum.html")]
struct BelowMinimumPage {
    layout: Layout,
    confirm: String,
}

/// The traffic guard refused: ask again, with the one button that goes ahead (`fields` are
/// the form's own, posted again with `below_minimum`).
fn ask_again(
    req: &HttpRequest,
    layout: Layout,
    message: &str,
    fields: &[(String, String)],
) -> Result<HttpResponse, AppError> {
    use askama::Template;
    let confirm = BelowMinimum {
        message,
        action: req.path(),
        csrf: &layout.csrf,
        fields,
    }
    .render()
    .map_err(|e| AppError::Internal(anyhow::Error::new(e)))?;
    if is_htmx(req) {
        return Ok(HttpResponse::Conflict()
            .insert_header(("HX-Retarget", "#toasts"))
            .insert_header(("HX-Reswap", "beforeend"))
            .content_type("text/html; charset=utf-8")
            .body(confirm));
    }
    super::html(&BelowMinimumPage { layout, confirm }, StatusCode::CONFLICT)
}

/// Whether an action's error is the traffic guard's refusal (answered with a second question).
fn guard_refusal(e: &crate::error::Error) -> Option<&str> {
    match e {
        crate::error::Error::Conflict(m) if m.contains("autoscaler's minimum") => Some(m),
        _ => None,
    }
}

fn confirmed(fields: &[(String, String)]) -> bool {
    fields
        .iter()
        .any(|(k, v)| k == "below_minimum" && matches!(v.as_str(), "1" | "on" | "true"))
}

/// `POST /servers/{id}/{action}`: one server, from its row or its page.
pub async fn act(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    let action = crate::fleet::servers::Action::parse(&action)?;
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .into_owned()
        .filter(|(k, _)| k != "csrf_token")
        .collect();
    let ip = source_ip(&req);
    let effects = match crate::fleet::servers::act(
        &state.pool,
        &principal,
        ip,
        std::slice::from_ref(&id),
        action,
        std::time::Duration::from_secs(state.settings.drain_timeout),
        confirmed(&fields),
    )
    .await
    {
        Ok(effects) => effects,
        Err(e) => match guard_refusal(&e) {
            Some(m) => return ask_again(&req, layout, m, &[]),
            None => return Err(e.into()),
        },
    };
    let message = describe(action, &effects);
    if is_htmx(&req) {
        // The whole live region (rows, counts, launches), rendered after the action committed,
        // and the toast, both out of band; nothing else is swapped. Rendering it here rather
        // than on an event means a refresh racing the action can never leave the page showing
        // the fleet as it was before it.
        let filters = current_filters(&req);
        let body = format!(
            "{}{}",
            live_oob(&state, &layout, &filters).await?,
            super::toast_oob(&message)
        );
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("HX-Reswap", "none"))
            .body(body));
    }
    flash(&session, message);
    Ok(see_other(&back_to(&req, "/servers")))
}

/// `POST /servers/bulk`: the selected servers (`ids`, repeated) and one `action`.
pub async fn bulk(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, AppError> {
    let fields = form.into_inner();
    let ids: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.clone())
        .collect();
    let action = fields
        .iter()
        .find(|(k, _)| k == "action")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            AppError::BadRequest("Choose what to do with the selected servers.".into())
        })?;
    let action = crate::fleet::servers::Action::parse(action)?;
    let ip = source_ip(&req);
    let effects = match crate::fleet::servers::act(
        &state.pool,
        &principal,
        ip,
        &ids,
        action,
        std::time::Duration::from_secs(state.settings.drain_timeout),
        confirmed(&fields),
    )
    .await
    {
        Ok(effects) => effects,
        Err(e) => match guard_refusal(&e) {
            Some(m) => {
                let again: Vec<(String, String)> = fields
                    .iter()
                    .filter(|(k, _)| k == "ids" || k == "action")
                    .cloned()
                    .collect();
                return ask_again(&req, layout, m, &again);
            }
            None => return Err(e.into()),
        },
    };
    flash(&session, describe(action, &effects));
    Ok(see_other("/servers"))
}

fn describe(
    action: crate::fleet::servers::Action,
    effects: &[crate::fleet::servers::Effect],
) -> String {
    use crate::fleet::servers::{Action, Effect};
    let n = |e: Effect| effects.iter().filter(|x| **x == e).count();
    let servers = |k: usize| {
        if k == 1 {
            "1 server".to_owned()
        } else {
            format!("{k} servers")
        }
    };
    let (done, already, queued) = (n(Effect::Done), n(Effect::AlreadyDone), n(Effect::Queued));
    let mut parts = Vec::new();
    match action {
        Action::Disable if done > 0 => parts.push(format!(
            "Disabled {}: no new work; running jobs finish.",
            servers(done)
        )),
        Action::Enable if done > 0 => parts.push(format!("Enabled {}.", servers(done))),
        Action::Terminate if queued > 0 => {
            parts.push(format!("Terminating {} once idle.", servers(queued)))
        }
        Action::ForceTerminate if queued > 0 => {
            parts.push(format!("Terminating {} now.", servers(queued)))
        }
        _ => {}
    }
    if already > 0 {
        parts.push(format!("{} already so.", servers(already)));
    }
    parts.join(" ")
}

/// The filters of the page an htmx request came from (its `HX-Current-URL`).
fn current_filters(req: &HttpRequest) -> Filters {
    req.headers()
        .get("HX-Current-URL")
        .and_then(|v| v.to_str().ok())
        .and_then(|u| url::Url::parse(u).ok())
        .filter(|u| u.path() == "/servers")
        .and_then(|u| serde_urlencoded::from_str::<Filters>(u.query().unwrap_or("")).ok())
        .unwrap_or_default()
}

/// Back to the page the form was on, when that was one of ours.
fn back_to(req: &HttpRequest, default: &str) -> String {
    req.headers()
        .get(actix_web::http::header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .filter(|u| u.path().starts_with("/servers"))
        .map(|u| match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
        .unwrap_or_else(|| default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::LaunchForm;

    fn count(typed: &str) -> Result<u32, String> {
        LaunchForm {
            image_id: "ami-1".into(),
            count: typed.into(),
            instance_type: String::new(),
        }
        .parse()
        .map(|l| l.count)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_forms_count_is_a_whole_number_or_blank() {
        assert_eq!(count(""), Ok(1));
        assert_eq!(count(" 4 "), Ok(4));
        for bad in ["many", "-2", "1.5", "[1]"] {
            assert!(count(bad).unwrap_err().contains("whole number"), "{bad}");
        }
        // Zero parses; the launch itself refuses it ("count: launch at least one server.").
        assert_eq!(count("0"), Ok(0));
    }
}

//! The Rollouts page (current and past releases and rollbacks with their progress), a
//! rollout's own page (progress, batches, servers; pause, resume, cancel; refreshed every
//! second while it runs), and the release / rollback forms posted from the Images pages.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::db::rollouts::{BatchRow, RolloutRow, RolloutServerRow};
use crate::domain::{
    LaunchState, RolloutKind, RolloutRole, RolloutServerState, RolloutState, ServerMode,
    ServerState,
};
use crate::rollouts::guard::GoAhead;
use crate::rollouts::{Action, Control, Effect, Kind, RolloutInput};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when, when_opt};

pub struct RolloutView {
    pub id: i64,
    pub kind: RolloutKind,
    pub state: RolloutState,
    pub reason: String,
    pub from: String,
    pub from_version: String,
    pub to: String,
    pub to_version: String,
    pub replaced: i32,
    pub total: i32,
    pub percent: i32,
    pub fleet_size: i32,
    pub batch_size: i32,
    pub min_healthy_percent: i32,
    pub health_timeout_s: i32,
    pub drain_timeout_s: i32,
    pub grace_s: i32,
    pub superseded_by: Option<i64>,
    pub started_by: String,
    pub created: When,
    pub finished: Option<When>,
    pub active: bool,
    pub phase: Option<crate::domain::RolloutPhase>,
    /// The release's plan in a few words ("" without one).
    pub plan: String,
    pub rolled_back_by: Option<i64>,
    /// The images as people name them ("worker v7").
    pub from_label: String,
    pub to_label: String,
    /// Seconds from its start to its end (or to now while it runs).
    pub elapsed_s: i64,
}

impl RolloutView {
    /// How long it ran ("3 min 20 s"), or has been running.
    pub fn elapsed(&self) -> String {
        crate::web::view::duration(self.elapsed_s)
    }
}

impl From<RolloutRow> for RolloutView {
    fn from(r: RolloutRow) -> Self {
        let percent = if r.total > 0 {
            (r.replaced * 100 / r.total).clamp(0, 100)
        } else if r.state == RolloutState::Succeeded {
            100
        } else {
            0
        };
        let from_label = r.from_image_id.as_deref().map_or_else(String::new, |id| {
            crate::web::view::image_label(
                id,
                r.from_name.as_deref().unwrap_or_default(),
                r.from_version.as_deref().unwrap_or_default(),
            )
        });
        let to_label = crate::web::view::image_label(
            &r.to_image_id,
            r.to_name.as_deref().unwrap_or_default(),
            r.to_version.as_deref().unwrap_or_default(),
        );
        let end = r.finished_at.unwrap_or_else(time::OffsetDateTime::now_utc);
        Self {
            from_label,
            to_label,
            elapsed_s: (end - r.created_at).whole_seconds(),
            plan: r.plan().describe(),
            active: r.is_active(),
            id: r.id,
            kind: r.kind,
            state: r.state,
            reason: r.reason,
            from: r.from_image_id.unwrap_or_default(),
            from_version: r.from_version.unwrap_or_default(),
            to: r.to_image_id,
            to_version: r.to_version.unwrap_or_default(),
            replaced: r.replaced,
            total: r.total,
            percent,
            fleet_size: r.fleet_size,
            batch_size: r.batch_size,
            min_healthy_percent: r.min_healthy_percent,
            health_timeout_s: r.health_timeout_s,
            drain_timeout_s: r.drain_timeout_s,
            grace_s: r.grace_s,
            superseded_by: r.superseded_by,
            started_by: r.started_by,
            created: when(r.created_at),
            finished: when_opt(r.finished_at),
            phase: r.phase,
            rolled_back_by: r.rolled_back_by,
        }
    }
}

pub struct RolloutServerView {
    pub id: String,
    pub role: RolloutRole,
    pub state: RolloutServerState,
    pub batch: i32,
    pub image_id: String,
    pub server_state: ServerState,
    pub mode: ServerMode,
    pub running_jobs: i64,
    pub last_heartbeat: Option<When>,
}

impl From<RolloutServerRow> for RolloutServerView {
    fn from(s: RolloutServerRow) -> Self {
        Self {
            id: s.server_id,
            role: s.role,
            state: s.state,
            batch: s.batch,
            image_id: s.image_id,
            server_state: s.server_state,
            mode: s.mode,
            running_jobs: s.running_jobs,
            last_heartbeat: when_opt(s.last_heartbeat_at),
        }
    }
}

pub struct BatchView {
    pub n: i32,
    pub launch_id: Option<i64>,
    pub size: i32,
    pub state: String,
    /// When it finished, or by when its replacements must be healthy.
    pub done: Option<When>,
    pub deadline: When,
}

impl From<BatchRow> for BatchView {
    fn from(b: BatchRow) -> Self {
        Self {
            state: if b.done_at.is_some() {
                "done".into()
            } else if b.launch_id.is_none() {
                "re-enabling".into()
            } else {
                match b.launch_state {
                    Some(LaunchState::Pending | LaunchState::Running) => "launching".into(),
                    Some(LaunchState::Succeeded) | None => "waiting for agents".into(),
                    Some(other @ (LaunchState::Partial | LaunchState::Failed)) => {
                        format!("launch {other}")
                    }
                }
            },
            done: when_opt(b.done_at),
            n: b.n,
            launch_id: b.launch_id,
            size: b.size,
            deadline: when(b.deadline),
        }
    }
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    layout: Layout,
    rollouts: Vec<RolloutView>,
    next: Option<i64>,
    freezes: Vec<FreezeView>,
    freeze_form: FreezeForm,
    freeze_error: Option<String>,
}

/// A freeze as the Rollouts page shows it (those not over yet).
pub struct FreezeView {
    pub id: i64,
    pub reason: String,
    pub when: String,
    pub by: String,
    pub in_force: bool,
}

/// The freeze form as typed: times as "YYYY-MM-DD HH:MM" in UTC, the weekly window's days and
/// hours; shown again with the reason when refused.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FreezeForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    weekly_days: String,
    #[serde(default)]
    weekly_from: String,
    #[serde(default)]
    weekly_until: String,
}

/// "2026-12-20 00:00" (UTC); empty is None.
fn utc_minute(field: &str, text: &str) -> Result<Option<time::OffsetDateTime>, AppError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    time::PrimitiveDateTime::parse(&text.replace('T', " "), format)
        .map(|t| Some(t.assume_utc()))
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{field}: {text:?} is not a time as YYYY-MM-DD HH:MM (UTC)."
            ))
        })
}

impl FreezeForm {
    fn input(&self) -> Result<crate::domain::freeze::FreezeInput, AppError> {
        let days: Vec<String> = self
            .weekly_days
            .split([',', ' '])
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_lowercase)
            .collect();
        let weekly = (!days.is_empty() || !self.weekly_from.trim().is_empty()).then(|| {
            crate::domain::window::Window {
                days,
                from: self.weekly_from.trim().to_owned(),
                until: self.weekly_until.trim().to_owned(),
            }
        });
        Ok(crate::domain::freeze::FreezeInput {
            from: utc_minute("from", &self.from)?.unwrap_or_else(time::OffsetDateTime::now_utc),
            until: utc_minute("until", &self.until)?,
            weekly,
            reason: self.reason.clone(),
        })
    }
}

async fn render_list(
    layout: Layout,
    state: &AppState,
    before: Option<i64>,
    freeze_form: Option<FreezeForm>,
    freeze_error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let (mut rows, freezes) = tokio::try_join!(
        crate::db::rollouts::list(&state.pool, None, before, PAGE + 1),
        crate::db::freezes::list(&state.pool),
    )?;
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let freezes = freezes
        .into_iter()
        .filter(|f| !f.is_over(now))
        .map(|f| FreezeView {
            id: f.id,
            in_force: f.in_force(now),
            when: f.when(),
            reason: f.reason,
            by: f.created_by,
        })
        .collect();
    super::html(
        &RolloutsPage {
            layout,
            rollouts: rows.into_iter().map(RolloutView::from).collect(),
            next,
            freezes,
            freeze_form: freeze_form.unwrap_or_default(),
            freeze_error,
        },
        status,
    )
}

/// `POST /freezes`: an admin defines a change freeze.
pub async fn create_freeze(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<FreezeForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let result = match form.input() {
        Ok(input) => {
            crate::rollouts::freezes::create(&state.pool, &principal, source_ip(&req), &input)
                .await
                .map_err(AppError::from)
        }
        Err(e) => Err(e),
    };
    super::answer(
        result,
        |f| {
            flash(&session, format!("Freeze #{} added: {}.", f.id, f.when()));
            see_other("/rollouts")
        },
        |message, status| render_list(layout, &state, None, Some(form), Some(message), status),
    )
    .await
}

/// `POST /freezes/{id}/delete`.
pub async fn delete_freeze(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = crate::web::error::path_id(&id, "freeze")?;
    let f = crate::rollouts::freezes::delete(&state.pool, &principal, source_ip(&req), id).await?;
    flash(
        &session,
        format!("Freeze #{} (\"{}\") deleted.", f.id, f.reason),
    );
    Ok(see_other("/rollouts"))
}

#[derive(Template)]
#[template(path = "partials/rollout_live.html")]
struct RolloutLive {
    rollout: RolloutView,
    /// What the release's plan holds it for, and until when.
    phase_note: Option<String>,
    batches: Vec<BatchView>,
    servers: Vec<RolloutServerView>,
    can_act: bool,
    csrf: String,
    /// A finished release: the rollback that undid it, if one did.
    undone_by: Option<i64>,
    /// A finished release whose image is still current: where a rollback would go.
    rollback_to: Option<RollbackTarget>,
}

impl RolloutLive {
    /// The first instant of a rollout, before its first step has counted the fleet: the page
    /// says "Planning…" rather than "0 of 0 servers, fleet size 0".
    fn planning(&self) -> bool {
        self.rollout.active && self.rollout.total == 0 && self.batches.is_empty()
    }
}

/// The image a one-click rollback goes to, as its button names it ("Roll back to worker v6").
pub struct RollbackTarget {
    pub id: String,
    pub label: String,
}

impl RollbackTarget {
    /// Where a rollback goes now: the image current most recently before the current one and
    /// not rolled back from since; None when there is none.
    pub async fn now(pool: &sqlx::PgPool) -> Result<Option<Self>, AppError> {
        Ok(crate::db::images::rollback_target(pool)
            .await?
            .map(Into::into))
    }
}

impl From<crate::db::images::ImageName> for RollbackTarget {
    fn from(i: crate::db::images::ImageName) -> Self {
        Self {
            label: crate::web::view::image_label(&i.id, &i.name, &i.version),
            id: i.id,
        }
    }
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    layout: Layout,
    live: RolloutLive,
    comparison: Option<ComparisonView>,
}

/// One side of the comparison, as the page shows it.
pub struct SideView {
    pub label: &'static str,
    pub image: String,
    /// The image as people name it.
    pub image_label: String,
    pub jobs: i64,
    pub failed: i64,
    pub rate: String,
    pub p50: String,
    pub p95: String,
}

pub struct ComparisonView {
    /// The new image first.
    pub sides: Vec<SideView>,
    pub worse: bool,
    pub verdict: String,
}

fn side(
    label: &'static str,
    (image, image_label): (&str, &str),
    s: &crate::rollouts::judge::Sample,
) -> SideView {
    let secs = |v: Option<f64>| v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "—".into());
    SideView {
        label,
        image: image.to_owned(),
        image_label: image_label.to_owned(),
        jobs: s.jobs,
        failed: s.failed,
        rate: s
            .failure_rate()
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "—".into()),
        p50: secs(s.p50_s),
        p95: secs(s.p95_s),
    }
}

const PAGE: i64 = 50;

#[derive(serde::Deserialize)]
pub struct ListQuery {
    before: Option<i64>,
}

pub async fn list(
    layout: Layout,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    render_list(layout, &state, query.before, None, None, StatusCode::OK).await
}

fn rollout_id(raw: &str) -> Result<i64, AppError> {
    crate::web::error::path_id(raw, "rollout")
}

/// The page's live part, and the rollout's row it was made from.
async fn live(
    state: &AppState,
    layout: &Layout,
    id: i64,
) -> Result<(RolloutLive, RolloutRow), AppError> {
    let (row, batches, servers) = tokio::try_join!(
        crate::db::rollouts::find(&state.pool, id),
        crate::db::rollouts::batches_of(&state.pool, id),
        crate::db::rollouts::servers_of(&state.pool, id),
    )?;
    let row = row.ok_or_else(|| AppError::NotFound(format!("There is no rollout {id}.")))?;
    // A finished release answers the next question: was it undone, and if not, where would a
    // rollback go (only while its image is still the current one).
    let (undone_by, rollback_to) = if row.kind == RolloutKind::Release && !row.is_active() {
        let (undone_by, current) = tokio::try_join!(
            crate::db::rollouts::undone_by(&state.pool, &row),
            crate::db::images::current_id(&state.pool),
        )?;
        let rollback_to = if undone_by.is_none()
            && current.as_deref() == Some(row.to_image_id.as_str())
            && layout.can_act()
        {
            RollbackTarget::now(&state.pool).await?
        } else {
            None
        };
        (undone_by, rollback_to)
    } else {
        (None, None)
    };
    let live = RolloutLive {
        undone_by,
        rollback_to,
        phase_note: phase_note(&row, &batches),
        rollout: row.clone().into(),
        batches: batches.into_iter().map(BatchView::from).collect(),
        servers: servers.into_iter().map(RolloutServerView::from).collect(),
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
    };
    Ok((live, row))
}

/// The plan's phase in a sentence, with the time it ends (from the recorded batch times, as
/// the step reads them).
fn phase_note(r: &RolloutRow, batches: &[BatchRow]) -> Option<String> {
    use crate::domain::{DeadlineAction, RolloutPhase};
    use crate::rollouts::decide::clock;
    let phase = r.phase?;
    let last = batches
        .iter()
        .filter_map(|b| b.done_at.map(|at| (b.n, at)))
        .max_by_key(|(n, _)| *n);
    let plan = r.plan();
    Some(match (phase, last) {
        (RolloutPhase::Canary, _) => format!(
            "Canary: {} server{} on the new image first, alone{}.",
            r.canary,
            if r.canary == 1 { "" } else { "s" },
            if r.health_command.is_empty() {
                ""
            } else {
                ", each health-checked"
            }
        ),
        (RolloutPhase::Soaking, Some((n, at))) => format!(
            "Soaking {} until {}: its guards are watched before anything else is replaced.",
            plan.batch_name(n),
            clock(plan.soak_end(at))
        ),
        (RolloutPhase::AwaitingApproval, Some((n, at))) => format!(
            "Waiting for an operator's go-ahead after {}: Continue or Roll back before {}, or it will {}.",
            plan.batch_name(n),
            clock(plan.approval_deadline(at)),
            match r.on_deadline {
                DeadlineAction::Rollback => "roll back by itself",
                DeadlineAction::Continue => "continue by itself",
            }
        ),
        (RolloutPhase::Soaking | RolloutPhase::AwaitingApproval, None) => return None,
    })
}

#[derive(serde::Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    live: bool,
}

pub async fn show(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ShowQuery>,
) -> Result<HttpResponse, AppError> {
    let id = rollout_id(&id)?;
    let (live, row) = live(&state, &layout, id).await?;
    if query.live && is_htmx(&req) {
        return super::html(&live, StatusCode::OK);
    }
    // Jobs on the new image against the old, over the rollout's time (the full page only:
    // the live part refreshes every two seconds).
    let comparison = crate::rollouts::comparison(&state.pool, &row, row.canary_p95_margin)
        .await?
        .map(|c| ComparisonView {
            sides: vec![
                side("new", (&row.to_image_id, &live.rollout.to_label), &c.new),
                side(
                    "old",
                    (
                        row.from_image_id.as_deref().unwrap_or_default(),
                        &live.rollout.from_label,
                    ),
                    &c.old,
                ),
            ],
            worse: matches!(c.verdict, crate::rollouts::judge::Verdict::Worse(_)),
            verdict: c.verdict.sentence().to_owned(),
        });
    super::html(
        &RolloutPage {
            layout,
            live,
            comparison,
        },
        StatusCode::OK,
    )
}

/// `POST /rollouts/{id}/{pause|resume|cancel|continue|rollback}` from the rollout's page.
pub async fn control(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    let action = Action::parse(&action)?;
    let id = rollout_id(&id)?;
    let (row, effect) =
        crate::rollouts::act(&state.pool, &principal, source_ip(&req), id, action).await?;
    let done = match action {
        Action::Control(Control::Pause) => "paused".to_owned(),
        Action::Control(Control::Resume) => "resumed".to_owned(),
        Action::Control(Control::Cancel) => {
            "cancelled: the fleet goes back to the previous image".to_owned()
        }
        Action::GoAhead(GoAhead::Continue) => "continues: the next batch starts".to_owned(),
        Action::GoAhead(GoAhead::RollBack) => match row.rolled_back_by {
            Some(by) => format!("rolled back: the kept servers take work again (rollback #{by})"),
            None => "cancelled: its servers are put back".to_owned(),
        },
    };
    flash(
        &session,
        match (effect, action) {
            (Effect::AlreadyDone, Action::Control(c)) => {
                format!("Rollout #{id} was already {}.", action_state(c))
            }
            _ => format!("Rollout #{id} {done}."),
        },
    );
    Ok(see_other(&format!("/rollouts/{id}")))
}

fn action_state(action: Control) -> &'static str {
    match action {
        Control::Pause => "paused",
        Control::Resume => "running",
        Control::Cancel => "cancelled",
    }
}

/// The release dialog's settings and plan as typed: strings, blank for the default.
#[derive(serde::Deserialize)]
pub struct RolloutForm {
    #[serde(default)]
    batch_size: String,
    #[serde(default)]
    min_healthy_percent: String,
    #[serde(default)]
    health_timeout_s: String,
    #[serde(default)]
    drain_timeout_s: String,
    #[serde(default)]
    canary: String,
    #[serde(default)]
    soak_s: String,
    #[serde(default)]
    health_command: String,
    /// "any", "none", or alert ids separated by commas.
    #[serde(default)]
    guard_alerts: String,
    #[serde(default)]
    approval: String,
    #[serde(default)]
    approval_deadline_s: String,
    #[serde(default)]
    on_deadline: String,
    #[serde(default)]
    on_insufficient_data: String,
    #[serde(default)]
    canary_p95_margin: String,
    /// The admin's second confirmation of a release during a change freeze.
    #[serde(default)]
    override_freeze: String,
}

/// Overriding a change freeze is an admin's call (the release itself an operator's).
pub fn may_override_freeze(principal: &Principal, input: &RolloutInput) -> Result<(), AppError> {
    if input.override_freeze == Some(true) && principal.role < crate::domain::Role::Admin {
        return Err(AppError::Forbidden(
            "Only an admin can override a change freeze.".into(),
        ));
    }
    Ok(())
}

#[derive(Template)]
#[template(path = "freeze_override.html")]
struct FrozenPage<'a> {
    layout: Layout,
    message: &'a str,
    action: &'a str,
    fields: Vec<(&'static str, &'a str)>,
    can_override: bool,
}

impl RolloutForm {
    /// The form's own fields, to post again with the override.
    fn fields(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("batch_size", &self.batch_size),
            ("min_healthy_percent", &self.min_healthy_percent),
            ("health_timeout_s", &self.health_timeout_s),
            ("drain_timeout_s", &self.drain_timeout_s),
            ("canary", &self.canary),
            ("soak_s", &self.soak_s),
            ("health_command", &self.health_command),
            ("guard_alerts", &self.guard_alerts),
            ("approval", &self.approval),
            ("approval_deadline_s", &self.approval_deadline_s),
            ("on_deadline", &self.on_deadline),
            ("on_insufficient_data", &self.on_insufficient_data),
            ("canary_p95_margin", &self.canary_p95_margin),
        ]
    }

    fn parse(&self) -> Result<RolloutInput, AppError> {
        fn number(value: &str, name: &str) -> Result<Option<i64>, AppError> {
            match value.trim() {
                "" => Ok(None),
                n => n.parse().map(Some).map_err(|_| {
                    AppError::BadRequest(format!("{name} must be a whole number, not {n:?}."))
                }),
            }
        }
        /// A choice's word, or None when left blank (the default).
        fn word<T: std::str::FromStr<Err = crate::domain::ValidationError>>(
            value: &str,
            name: &str,
        ) -> Result<Option<T>, AppError> {
            match value.trim() {
                "" => Ok(None),
                w => w
                    .parse()
                    .map(Some)
                    .map_err(|e: crate::domain::ValidationError| {
                        AppError::BadRequest(format!("{name}: {e}."))
                    }),
            }
        }
        use crate::domain::release_plan::GuardAlerts;
        Ok(RolloutInput {
            batch_size: number(&self.batch_size, "batch_size")?,
            min_healthy_percent: number(&self.min_healthy_percent, "min_healthy_percent")?,
            health_timeout_s: number(&self.health_timeout_s, "health_timeout_s")?,
            drain_timeout_s: number(&self.drain_timeout_s, "drain_timeout_s")?,
            override_freeze: matches!(self.override_freeze.as_str(), "1" | "on" | "true")
                .then_some(true),
            canary: number(&self.canary, "canary")?,
            soak_s: number(&self.soak_s, "soak_s")?,
            health_command: Some(self.health_command.trim().to_owned()).filter(|c| !c.is_empty()),
            guard_alerts: match self.guard_alerts.trim() {
                "" => None,
                "none" => Some(GuardAlerts::Rules(Vec::new())),
                g => Some(
                    GuardAlerts::parse(g)
                        .map_err(|e| AppError::BadRequest(format!("guard_alerts: {e}.")))?,
                ),
            },
            approval: word(&self.approval, "approval")?,
            approval_deadline_s: number(&self.approval_deadline_s, "approval_deadline_s")?,
            on_deadline: word(&self.on_deadline, "on_deadline")?,
            on_insufficient_data: word(&self.on_insufficient_data, "on_insufficient_data")?,
            canary_p95_margin: match self.canary_p95_margin.trim() {
                "" => None,
                m => Some(m.parse().map_err(|_| {
                    AppError::BadRequest(format!(
                        "canary_p95_margin must be a fraction such as 0.5, not {m:?}."
                    ))
                })?),
            },
        })
    }
}

/// What a release or rollback form asks for.
struct Ask {
    id: String,
    form: RolloutForm,
    kind: Kind,
}

async fn start(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    ask: Ask,
) -> Result<HttpResponse, AppError> {
    let Ask { id, form, kind } = ask;
    let input = form.parse()?;
    may_override_freeze(&principal, &input)?;
    let started = crate::rollouts::start(
        &state.pool,
        &state.settings,
        &principal,
        source_ip(&req),
        id.as_str(),
        kind,
        &input,
    )
    .await;
    let (row, created) = match started {
        Err(crate::error::Error::Conflict(message))
            if message.starts_with(crate::domain::freeze::REFUSED) =>
        {
            // The refusal, and for an admin the one button that goes ahead.
            return super::html(
                &FrozenPage {
                    can_override: principal.role >= crate::domain::Role::Admin,
                    layout,
                    message: &message,
                    action: req.path(),
                    fields: form.fields(),
                },
                StatusCode::CONFLICT,
            );
        }
        other => other?,
    };
    let label = crate::web::view::image_label(
        &row.to_image_id,
        row.to_name.as_deref().unwrap_or_default(),
        row.to_version.as_deref().unwrap_or_default(),
    );
    flash(
        &session,
        if created {
            match kind {
                Kind::Release => {
                    format!("Released {}: rollout #{} started.", label, row.id)
                }
                Kind::Rollback => {
                    format!("Rolling back to {}: rollout #{} started.", label, row.id)
                }
            }
        } else {
            format!(
                "{} is already current; rollout #{} is in progress.",
                label, row.id
            )
        },
    );
    Ok(see_other(&format!("/rollouts/{}", row.id)))
}

/// `POST /images/{id}/release` (Make current).
pub async fn release(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RolloutForm>,
) -> Result<HttpResponse, AppError> {
    let ask = Ask {
        id: id.into_inner(),
        form: form.into_inner(),
        kind: Kind::Release,
    };
    start(req, layout, principal, session, state, ask).await
}

/// `POST /images/{id}/rollback` (Roll back to this).
pub async fn rollback(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RolloutForm>,
) -> Result<HttpResponse, AppError> {
    let ask = Ask {
        id: id.into_inner(),
        form: form.into_inner(),
        kind: Kind::Rollback,
    };
    start(req, layout, principal, session, state, ask).await
}

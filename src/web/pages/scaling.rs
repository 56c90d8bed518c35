//! The Scaling page: what the autoscaler is doing and why (its recent decisions, a preview of
//! the next one), its settings (operators edit; a pause switch), all audited.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{answer, form_number as number, see_other, source_ip};
use crate::auth::Principal;
use crate::domain::scaling::{Recycle, ScalingSettings, Window};
use crate::scaling::DecisionRow;
use crate::scaling::decide::Decision;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when};

/// The settings form as typed (every value a string; shown again with the reason when
/// refused).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct SettingsForm {
    enabled: Option<String>,
    paused: Option<String>,
    #[serde(default)]
    min: String,
    #[serde(default)]
    max: String,
    #[serde(default)]
    slots_per_server: String,
    #[serde(default)]
    target_utilization: String,
    #[serde(default)]
    scale_in_utilization: String,
    #[serde(default)]
    max_queue_latency_s: String,
    #[serde(default)]
    scale_in_delay_s: String,
    #[serde(default)]
    cooldown_s: String,
    #[serde(default)]
    recycle_max_age_s: String,
    #[serde(default)]
    recycle_max_share: String,
    #[serde(default)]
    window_days: String,
    #[serde(default)]
    window_from: String,
    #[serde(default)]
    window_until: String,
}

fn required<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, AppError> {
    number(field, text)?.ok_or_else(|| AppError::BadRequest(format!("{field}: missing.")))
}

impl SettingsForm {
    fn of(s: &ScalingSettings) -> Self {
        let w = s.recycle.window.clone();
        SettingsForm {
            enabled: s.enabled.then(|| "on".into()),
            paused: s.paused.then(|| "on".into()),
            min: s.min.to_string(),
            max: s.max.to_string(),
            slots_per_server: s
                .slots_per_server
                .map(|n| n.to_string())
                .unwrap_or_default(),
            target_utilization: s.target_utilization.to_string(),
            scale_in_utilization: s.scale_in_utilization.to_string(),
            max_queue_latency_s: s.max_queue_latency_s.to_string(),
            scale_in_delay_s: s.scale_in_delay_s.to_string(),
            cooldown_s: s.cooldown_s.to_string(),
            recycle_max_age_s: s
                .recycle
                .max_age_s
                .map(|n| n.to_string())
                .unwrap_or_default(),
            recycle_max_share: s.recycle.max_share.to_string(),
            window_days: w.as_ref().map(|w| w.days.join(", ")).unwrap_or_default(),
            window_from: w.as_ref().map(|w| w.from.clone()).unwrap_or_default(),
            window_until: w.map(|w| w.until).unwrap_or_default(),
        }
    }

    fn settings(&self) -> Result<ScalingSettings, AppError> {
        let days: Vec<String> = self
            .window_days
            .split([',', ' '])
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_lowercase)
            .collect();
        let window = (!days.is_empty() || !self.window_from.trim().is_empty()).then(|| Window {
            days,
            from: self.window_from.trim().to_owned(),
            until: self.window_until.trim().to_owned(),
        });
        Ok(ScalingSettings {
            enabled: self.enabled.is_some(),
            paused: self.paused.is_some(),
            min: required("min", &self.min)?,
            max: required("max", &self.max)?,
            slots_per_server: number("slots_per_server", &self.slots_per_server)?,
            target_utilization: required("target_utilization", &self.target_utilization)?,
            scale_in_utilization: required("scale_in_utilization", &self.scale_in_utilization)?,
            max_queue_latency_s: required("max_queue_latency_s", &self.max_queue_latency_s)?,
            scale_in_delay_s: required("scale_in_delay_s", &self.scale_in_delay_s)?,
            cooldown_s: required("cooldown_s", &self.cooldown_s)?,
            recycle: Recycle {
                max_age_s: number("recycle.max_age_s", &self.recycle_max_age_s)?,
                max_share: required("recycle.max_share", &self.recycle_max_share)?,
                window,
            },
        })
    }
}

pub struct DecisionView {
    pub at: When,
    pub action: String,
    pub before: i32,
    pub after: i32,
    pub reason: String,
    pub launch_id: Option<i64>,
    pub servers: String,
    /// The figures it was made from: "8 queued · 2 busy of 2 × 1 slots · oldest 94 s".
    pub figures: String,
}

/// A decision's inputs in a line (the API has them whole).
fn figures(inputs: &serde_json::Value) -> String {
    let n = |k: &str| inputs.get(k).and_then(serde_json::Value::as_i64);
    let mut parts = Vec::new();
    if let Some(q) = n("queued") {
        parts.push(format!("{q} queued"));
    }
    if let (Some(busy), Some(cap), Some(slots)) = (n("busy"), n("capacity"), n("slots")) {
        parts.push(format!("{busy} busy of {cap} × {slots} slots"));
    }
    if let Some(l) = n("latency_s") {
        parts.push(format!("oldest {l} s"));
    }
    for (k, word) in [("launching", "launching"), ("draining", "draining")] {
        if let Some(v) = n(k).filter(|v| *v > 0) {
            parts.push(format!("{v} {word}"));
        }
    }
    parts.join(" · ")
}

impl From<DecisionRow> for DecisionView {
    fn from(d: DecisionRow) -> Self {
        DecisionView {
            at: when(d.at),
            action: d.action,
            before: d.desired_before,
            after: d.desired_after,
            reason: d.reason,
            launch_id: d.launch_id,
            servers: d.server_ids.join(", "),
            figures: figures(&d.inputs.0),
        }
    }
}

#[derive(Template)]
#[template(path = "scaling.html")]
struct ScalingPage {
    layout: Layout,
    settings: ScalingSettings,
    form: SettingsForm,
    error: Option<String>,
    decisions: Vec<DecisionView>,
    /// "2 h": servers older than this are replaced, if recycling is on.
    recycle_age: Option<String>,
    /// The chart's window (unix seconds) and series.
    from: i64,
    to: i64,
    chart_series: String,
}

/// Desired vs running servers vs busy slots vs queue depth, as the recorder samples them.
fn chart_series() -> String {
    serde_json::json!([
        {"metric": "kiln.scaling.desired", "source": "*", "aggregate": "max", "label": "desired servers"},
        {"metric": "kiln.scaling.running", "source": "*", "aggregate": "max", "label": "running servers"},
        {"metric": "kiln.scaling.busy_slots", "source": "*", "aggregate": "max", "label": "busy slots"},
        {"metric": "kiln.jobs.queued", "source": "*", "aggregate": "max", "label": "queued jobs"},
    ])
    .to_string()
}

async fn render(
    layout: Layout,
    state: &AppState,
    form: Option<SettingsForm>,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let to = crate::metrics::dashboards::window_end();
    let (settings, decisions) = tokio::try_join!(
        crate::scaling::settings(&state.pool),
        crate::scaling::decisions(&state.pool, 100),
    )?;
    super::html(
        &ScalingPage {
            layout,
            form: form.unwrap_or_else(|| SettingsForm::of(&settings)),
            recycle_age: settings
                .recycle
                .max_age_s
                .map(|s| crate::scaling::recycle::duration(i64::from(s))),
            settings,
            error,
            decisions: decisions.into_iter().map(DecisionView::from).collect(),
            from: to - 6 * 3600,
            to,
            chart_series: chart_series(),
        },
        status,
    )
}

pub async fn show(layout: Layout, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    render(layout, &state, None, None, StatusCode::OK).await
}

pub async fn save(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<SettingsForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let result = match form.settings() {
        Ok(s) => crate::scaling::save(
            &state.pool,
            &principal,
            source_ip(&req),
            &s,
            state.settings.max_servers,
        )
        .await
        .map_err(AppError::from),
        Err(e) => Err(e),
    };
    answer(
        result,
        |_| {
            flash(&session, "Saved the scaling settings.");
            see_other("/scaling")
        },
        |message, status| render(layout, &state, Some(form), Some(message), status),
    )
    .await
}

/// Pause or resume: the one switch an operator under stress needs, audited.
pub async fn switch(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    action: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(AppError::NotFound(format!(
                "There is no scaling action {other:?}."
            )));
        }
    };
    let mut settings = crate::scaling::settings(&state.pool).await?;
    settings.paused = paused;
    crate::scaling::save(
        &state.pool,
        &principal,
        source_ip(&req),
        &settings,
        state.settings.max_servers,
    )
    .await?;
    flash(
        &session,
        if paused {
            "Autoscaling is paused: no launch and no drain until you resume it."
        } else {
            "Autoscaling resumed."
        },
    );
    Ok(see_other("/scaling"))
}

#[derive(Template)]
#[template(path = "partials/scaling_preview.html")]
struct PreviewPartial {
    d: Decision,
    recycling: crate::scaling::recycle::Plan,
}

/// What the autoscaler would do now (htmx), without doing it.
pub async fn preview(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let env = crate::scaling::Env::from_settings(&state.settings);
    let crate::scaling::Preview {
        decision: d,
        recycling,
    } = crate::scaling::preview(&state.pool, &env).await?;
    super::html(&PreviewPartial { d, recycling }, StatusCode::OK)
}

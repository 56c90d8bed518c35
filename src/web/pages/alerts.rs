//! The Alerts page (firing alerts, rules with their state, the new-rule form with its
//! preview, silences, and for admins the channels) and a rule's own page (its sources, a
//! chart of its metric with the threshold drawn, history, deliveries, the edit form).

use std::collections::HashMap;

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{answer, form_number as number, see_other, source_ip};
use crate::alerts::channels::{ChannelInput, ChannelView, SmtpInput};
use crate::alerts::deliver::SmtpTls;
use crate::alerts::preview::Preview;
use crate::alerts::rules::SilenceInput;
use crate::auth::Principal;
use crate::db::alerts::{DeliveryRow, RuleRow, SilenceRow, StateRow, TransitionRow};
use crate::domain::alert_rule::{ConditionInput, RuleInput};
use crate::domain::{AlertAggregate, AlertGroup, AlertOp, AlertState, ChannelKind, NoDataPolicy};
use crate::web::AppState;
use crate::web::error::{AppError, path_id};
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when};

/// A form body with repeated keys (a rule's condition rows, its channel checkboxes).
struct Fields(HashMap<String, Vec<String>>);

impl Fields {
    fn parse(body: &[u8]) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Fields(map)
    }

    fn one(&self, key: &str) -> String {
        self.0
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    fn checked(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// One condition row of the rule form, as typed.
#[derive(Debug, Clone, Default)]
pub struct ConditionRow {
    pub metric: String,
    pub source: String,
    pub aggregate: String,
    pub window_s: String,
    pub op: String,
    pub threshold: String,
    pub clear_threshold: String,
    pub for_s: String,
}

/// The rule form as typed (shown again with the reason when refused).
#[derive(Debug, Clone, Default)]
pub struct RuleForm {
    pub name: String,
    pub description: String,
    pub runbook_url: String,
    pub per_source: bool,
    pub group: String,
    pub conditions: Vec<ConditionRow>,
    pub channels: Vec<i64>,
    pub renotify_s: String,
    pub no_data: String,
    pub blocks_changes: bool,
    pub enabled: bool,
}

fn word<T: std::str::FromStr<Err = crate::domain::ValidationError>>(
    field: &str,
    text: &str,
) -> Result<Option<T>, AppError> {
    match text.trim() {
        "" => Ok(None),
        t => t
            .parse()
            .map(Some)
            .map_err(|e: crate::domain::ValidationError| {
                AppError::BadRequest(format!("{field}: {}", e.0))
            }),
    }
}

impl RuleForm {
    fn blank() -> Self {
        RuleForm {
            per_source: true,
            enabled: true,
            group: "max".into(),
            renotify_s: "600".into(),
            no_data: "resolve".into(),
            conditions: vec![ConditionRow {
                aggregate: "avg".into(),
                window_s: "60".into(),
                op: "above".into(),
                for_s: "0".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn from_fields(f: &Fields) -> Self {
        let metrics = f.all("metric");
        let col = |k: &str, i: usize| f.all(k).get(i).cloned().unwrap_or_default();
        let conditions = (0..metrics.len())
            .map(|i| ConditionRow {
                metric: col("metric", i),
                source: col("source", i),
                aggregate: col("aggregate", i),
                window_s: col("window_s", i),
                op: col("op", i),
                threshold: col("threshold", i),
                clear_threshold: col("clear_threshold", i),
                for_s: col("for_s", i),
            })
            .collect();
        RuleForm {
            name: f.one("name"),
            description: f.one("description"),
            runbook_url: f.one("runbook_url"),
            per_source: f.checked("per_source"),
            group: f.one("group"),
            conditions,
            channels: f
                .all("channel")
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            renotify_s: f.one("renotify_s"),
            no_data: f.one("no_data"),
            blocks_changes: f.checked("blocks_changes"),
            enabled: f.checked("enabled"),
        }
    }

    fn of(r: &RuleRow) -> Self {
        RuleForm {
            name: r.name.clone(),
            description: r.description.clone(),
            runbook_url: r.runbook_url.clone(),
            per_source: r.per_source,
            group: r.group_fn.to_string(),
            conditions: r
                .conditions
                .0
                .iter()
                .map(|c| ConditionRow {
                    metric: c.metric.clone(),
                    source: c.source.clone(),
                    aggregate: c.aggregate.to_string(),
                    window_s: c.window_s.to_string(),
                    op: c.op.to_string(),
                    threshold: c.threshold.map(|t| t.to_string()).unwrap_or_default(),
                    clear_threshold: c.clear_threshold.map(|t| t.to_string()).unwrap_or_default(),
                    for_s: c.for_s.to_string(),
                })
                .collect(),
            channels: r.channel_ids.clone(),
            renotify_s: r.renotify_s.to_string(),
            no_data: r.no_data.to_string(),
            blocks_changes: r.blocks_changes,
            enabled: r.enabled,
        }
    }

    /// The rows shown: the typed ones and one blank row to add a condition with.
    pub fn rows(&self) -> Vec<ConditionRow> {
        let mut rows: Vec<ConditionRow> = self
            .conditions
            .iter()
            .filter(|c| !c.metric.trim().is_empty())
            .cloned()
            .collect();
        if rows.len() < crate::domain::alert_rule::MAX_CONDITIONS {
            rows.push(ConditionRow {
                aggregate: "avg".into(),
                window_s: "60".into(),
                op: "above".into(),
                for_s: "0".into(),
                ..Default::default()
            });
        }
        rows
    }

    fn input(&self) -> Result<RuleInput, AppError> {
        let mut conditions = Vec::new();
        for (i, c) in self
            .conditions
            .iter()
            .filter(|c| !c.metric.trim().is_empty())
            .enumerate()
        {
            let at = format!("Condition {}", i + 1);
            conditions.push(ConditionInput {
                metric: c.metric.clone(),
                source: Some(c.source.clone()),
                aggregate: word::<AlertAggregate>(&format!("{at} aggregation"), &c.aggregate)?,
                window_s: number(&format!("{at} window"), &c.window_s)?,
                op: word::<AlertOp>(&format!("{at} operator"), &c.op)?,
                threshold: number(&format!("{at} threshold"), &c.threshold)?,
                for_s: number(&format!("{at} for"), &c.for_s)?,
                clear_threshold: number(&format!("{at} clear threshold"), &c.clear_threshold)?,
            });
        }
        Ok(RuleInput {
            name: self.name.clone(),
            description: self.description.clone(),
            runbook_url: self.runbook_url.clone(),
            per_source: self.per_source,
            group: word::<AlertGroup>("Group", &self.group)?,
            conditions,
            channels: self.channels.clone(),
            renotify_s: number("Re-notify", &self.renotify_s)?,
            no_data: word::<NoDataPolicy>("No data", &self.no_data)?,
            blocks_changes: self.blocks_changes,
            enabled: self.enabled,
        })
    }
}

pub struct FiringView {
    pub rule_id: i64,
    pub rule: String,
    pub source: String,
    pub since: When,
    pub value: String,
    pub acked_by: Option<String>,
    pub silenced: bool,
}

pub struct RuleView {
    pub id: i64,
    pub name: String,
    pub summary: String,
    pub state: AlertState,
    pub firing: usize,
    pub pending: usize,
    pub channels: String,
    pub blocks_changes: bool,
    pub enabled: bool,
}

pub struct SilenceView {
    pub id: i64,
    pub rule: String,
    pub source: String,
    pub until: When,
    pub comment: String,
    pub by: String,
}

fn value_text(v: Option<f64>) -> String {
    v.map(crate::alerts::decide::show)
        .unwrap_or_else(|| "no data".into())
}

/// "dana, 5 min ago": who acknowledged the firing episode, and when.
fn acked(s: &StateRow) -> Option<String> {
    s.acked_by.as_ref().map(|by| match s.acked_at {
        Some(at) => format!("{by}, {}", when(at).relative),
        None => by.clone(),
    })
}

fn source_text(s: &str) -> String {
    if s.is_empty() {
        "all sources".into()
    } else {
        s.to_owned()
    }
}

/// "avg(app.cpu) on w-* above 80 (clears below 70) for 60 s"
pub fn condition_text(c: &crate::domain::alert_rule::Condition) -> String {
    let mut out = match c.op {
        AlertOp::Absent => format!("no {} on {} for {} s", c.metric, c.source, c.window_s),
        op => format!(
            "{}({}) on {} over {} s {op} {}",
            c.aggregate,
            c.metric,
            c.source,
            c.window_s,
            c.threshold
                .map(crate::alerts::decide::show)
                .unwrap_or_default()
        ),
    };
    if let Some(clear) = c.clear_threshold {
        out.push_str(&format!(
            " (clears {} {})",
            if c.op == AlertOp::Below {
                "above"
            } else {
                "below"
            },
            crate::alerts::decide::show(clear)
        ));
    }
    if c.for_s > 0 {
        out.push_str(&format!(" for {} s", c.for_s));
    }
    out
}

fn silenced_by(silences: &[SilenceRow], rule_id: i64, source: &str) -> bool {
    let now = time::OffsetDateTime::now_utc();
    silences.iter().any(|s| {
        s.starts_at <= now
            && s.rule_id.is_none_or(|r| r == rule_id)
            && s.source_glob
                .as_deref()
                .is_none_or(|g| crate::domain::alert_rule::glob_matches(g, source))
    })
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    layout: Layout,
    firing: Vec<FiringView>,
    rules: Vec<RuleView>,
    silences: Vec<SilenceView>,
    channels: Vec<ChannelView>,
    rule_names: Vec<(i64, String)>,
    form: RuleForm,
    error: Option<String>,
    channel_error: Option<String>,
}

async fn render(
    layout: Layout,
    state: &AppState,
    form: RuleForm,
    error: Option<String>,
    channel_error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let pool = &state.pool;
    let (rules, states, silences, channels, firing) = tokio::try_join!(
        crate::db::alerts::rules(pool),
        crate::db::alerts::states(pool),
        crate::db::alerts::silences(pool),
        crate::db::alerts::channels(pool),
        crate::db::alerts::firing(pool),
    )?;
    let mut by_rule: HashMap<i64, Vec<&StateRow>> = HashMap::new();
    for s in &states {
        by_rule.entry(s.rule_id).or_default().push(s);
    }
    let channel_names: HashMap<i64, &str> =
        channels.iter().map(|c| (c.id, c.name.as_str())).collect();
    let names: HashMap<i64, &str> = rules.iter().map(|r| (r.id, r.name.as_str())).collect();
    let views = rules
        .iter()
        .map(|r| {
            let s = by_rule.get(&r.id).map_or(&[][..], Vec::as_slice);
            RuleView {
                id: r.id,
                name: r.name.clone(),
                summary: r
                    .conditions
                    .0
                    .iter()
                    .map(condition_text)
                    .collect::<Vec<_>>()
                    .join(" and "),
                state: crate::web::api::alerts::worst(s),
                firing: s.iter().filter(|x| x.state == AlertState::Firing).count(),
                pending: s.iter().filter(|x| x.state == AlertState::Pending).count(),
                channels: r
                    .channel_ids
                    .iter()
                    .filter_map(|c| channel_names.get(c).copied())
                    .collect::<Vec<_>>()
                    .join(", "),
                blocks_changes: r.blocks_changes,
                enabled: r.enabled,
            }
        })
        .collect();
    let firing = firing
        .into_iter()
        .map(|(s, name)| FiringView {
            silenced: silenced_by(&silences, s.rule_id, &s.source),
            rule_id: s.rule_id,
            rule: name,
            source: source_text(&s.source),
            since: when(s.since),
            value: value_text(s.value),
            acked_by: acked(&s),
        })
        .collect();
    let silence_views = silences
        .iter()
        .map(|s| SilenceView {
            id: s.id,
            rule: s
                .rule_id
                .map(|r| names.get(&r).map_or(format!("#{r}"), |n| (*n).to_owned()))
                .unwrap_or_else(|| "any rule".into()),
            source: s.source_glob.clone().unwrap_or_else(|| "any source".into()),
            until: when(s.ends_at),
            comment: s.comment.clone(),
            by: s.created_by.clone(),
        })
        .collect();
    let rule_names = rules.iter().map(|r| (r.id, r.name.clone())).collect();
    super::html(
        &AlertsPage {
            layout,
            firing,
            rules: views,
            silences: silence_views,
            channels: channels.iter().map(ChannelView::from).collect(),
            rule_names,
            form,
            error,
            channel_error,
        },
        status,
    )
}

pub async fn list(layout: Layout, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    render(
        layout,
        &state,
        RuleForm::blank(),
        None,
        None,
        StatusCode::OK,
    )
    .await
}

pub async fn create(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let form = RuleForm::from_fields(&Fields::parse(&body));
    let result = match form.input() {
        Ok(input) => crate::alerts::rules::create(&state.pool, &principal, source_ip(&req), &input)
            .await
            .map_err(AppError::from),
        Err(e) => Err(e),
    };
    answer(
        result,
        |row| {
            flash(&session, format!("Added the rule {}.", row.name));
            see_other(&format!("/alerts/{}", row.id))
        },
        |message, status| render(layout, &state, form, Some(message), None, status),
    )
    .await
}

#[derive(Template)]
#[template(path = "partials/alert_preview.html")]
struct PreviewPartial {
    preview: Option<Preview>,
    error: Option<String>,
}

/// The rule form's preview (htmx): what the typed rule would have done in the last 24 hours.
pub async fn preview(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let mut form = RuleForm::from_fields(&Fields::parse(&body));
    // A rule being written may have no name yet; the preview does not need one.
    if form.name.trim().is_empty() {
        form.name = "preview".into();
    }
    let rule = form
        .input()
        .and_then(|i| i.validate().map_err(|e| AppError::BadRequest(e.0)));
    let page = match rule {
        Ok(rule) => PreviewPartial {
            preview: Some(crate::alerts::preview::preview(&state.pool, &rule).await?),
            error: None,
        },
        Err(AppError::BadRequest(m)) => PreviewPartial {
            preview: None,
            error: Some(m),
        },
        Err(e) => return Err(e),
    };
    super::html(&page, StatusCode::OK)
}

pub struct SourceView {
    pub source: String,
    pub raw_source: String,
    pub state: AlertState,
    pub since: When,
    pub value: String,
    pub acked_by: Option<String>,
    pub silenced: bool,
}

pub struct TransitionView {
    pub at: When,
    pub source: String,
    pub from: AlertState,
    pub to: AlertState,
    pub value: String,
    pub reason: String,
}

impl From<TransitionRow> for TransitionView {
    fn from(t: TransitionRow) -> Self {
        TransitionView {
            at: when(t.at),
            source: source_text(&t.source),
            from: t.from_state,
            to: t.to_state,
            value: value_text(t.value),
            reason: t.reason,
        }
    }
}

pub struct DeliveryView {
    pub at: Option<When>,
    pub channel: String,
    pub status: String,
    pub state: crate::domain::DeliveryState,
    pub attempt: String,
    pub outcome: String,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        DeliveryView {
            at: d.at.map(when),
            channel: d.channel,
            status: d.status,
            state: d.state,
            attempt: d.attempt.map_or("—".into(), |a| a.to_string()),
            outcome: match (d.status_code, d.error) {
                (_, Some(e)) => e,
                (Some(c), None) => format!("answered {c}"),
                (None, None) => "waiting".into(),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "alert.html")]
struct AlertPage {
    layout: Layout,
    rule: RuleRow,
    conditions: Vec<String>,
    sources: Vec<SourceView>,
    history: Vec<TransitionView>,
    deliveries: Vec<DeliveryView>,
    channels: Vec<ChannelView>,
    form: RuleForm,
    error: Option<String>,
    /// The chart of the first condition's metric, thresholds drawn.
    chart_series: String,
    thresholds: String,
    from: i64,
    to: i64,
}

fn rule_id(raw: &str) -> Result<i64, AppError> {
    path_id(raw, "alert rule")
}

async fn render_rule(
    layout: Layout,
    state: &AppState,
    id: i64,
    form: Option<RuleForm>,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let pool = &state.pool;
    let (rule, states, history, deliveries, channels, silences) = tokio::try_join!(
        crate::db::alerts::rule(pool, id),
        crate::db::alerts::states_of(pool, id),
        crate::db::alerts::transitions_of(pool, id, 200),
        crate::db::alerts::deliveries(pool, Some(id), 100),
        crate::db::alerts::channels(pool),
        crate::db::alerts::silences(pool),
    )?;
    let rule = rule.ok_or_else(|| AppError::NotFound(format!("There is no alert rule {id}.")))?;
    let first = rule.conditions.0.first().cloned();
    let chart_series = first
        .as_ref()
        .map(|c| {
            serde_json::json!([{
                "metric": c.metric,
                "source": c.source,
                "aggregate": match c.aggregate { AlertAggregate::Count => "count", a => a.as_str() },
                "label": "",
            }])
            .to_string()
        })
        .unwrap_or_else(|| "[]".into());
    let thresholds = first
        .as_ref()
        .map(|c| {
            serde_json::json!(
                [c.threshold, c.clear_threshold]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<f64>>()
            )
            .to_string()
        })
        .unwrap_or_else(|| "[]".into());
    let to = crate::metrics::dashboards::window_end();
    let page = AlertPage {
        layout,
        conditions: rule.conditions.0.iter().map(condition_text).collect(),
        sources: states
            .iter()
            .map(|s| SourceView {
                silenced: silenced_by(&silences, id, &s.source),
                source: source_text(&s.source),
                raw_source: s.source.clone(),
                state: s.state,
                since: when(s.since),
                value: value_text(s.value),
                acked_by: acked(s),
            })
            .collect(),
        history: history.into_iter().map(TransitionView::from).collect(),
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
        channels: channels.iter().map(ChannelView::from).collect(),
        form: form.unwrap_or_else(|| RuleForm::of(&rule)),
        error,
        chart_series,
        thresholds,
        from: to - 6 * 3600,
        to,
        rule,
    };
    super::html(&page, status)
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    render_rule(layout, &state, rule_id(&id)?, None, None, StatusCode::OK).await
}

pub async fn update(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let id = rule_id(&id)?;
    let form = RuleForm::from_fields(&Fields::parse(&body));
    let result = match form.input() {
        Ok(input) => {
            crate::alerts::rules::update(&state.pool, &principal, source_ip(&req), id, &input)
                .await
                .map_err(AppError::from)
        }
        Err(e) => Err(e),
    };
    answer(
        result,
        |row| {
            flash(&session, format!("Saved the rule {}.", row.name));
            see_other(&format!("/alerts/{id}"))
        },
        |message, status| render_rule(layout, &state, id, Some(form), Some(message), status),
    )
    .await
}

pub async fn delete(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = rule_id(&id)?;
    crate::alerts::rules::delete(&state.pool, &principal, source_ip(&req), id).await?;
    flash(&session, "Deleted the rule.");
    Ok(see_other("/alerts"))
}

#[derive(serde::Deserialize)]
pub struct SourceForm {
    #[serde(default)]
    source: String,
    #[serde(default)]
    back: String,
}

fn back_to(back: &str, id: i64) -> String {
    if back == "list" {
        "/alerts".into()
    } else {
        format!("/alerts/{id}")
    }
}

pub async fn ack(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<SourceForm>,
) -> Result<HttpResponse, AppError> {
    let id = rule_id(&id)?;
    crate::alerts::rules::acknowledge(&state.pool, &principal, source_ip(&req), id, &form.source)
        .await?;
    flash(
        &session,
        format!(
            "Acknowledged on {}: no more reminders for this episode.",
            source_text(&form.source)
        ),
    );
    Ok(see_other(&back_to(&form.back, id)))
}

pub async fn test(
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = rule_id(&id)?;
    let sent =
        crate::alerts::rules::test(&state.pool, &principal, id, &state.settings.public_url())
            .await?;
    flash(
        &session,
        format!(
            "Sending a test notification to {} channel{}; the delivery log shows how it went.",
            sent.len(),
            if sent.len() == 1 { "" } else { "s" }
        ),
    );
    Ok(see_other(&format!("/alerts/{id}")))
}

#[derive(serde::Deserialize)]
pub struct SilenceForm {
    #[serde(default)]
    rule_id: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    back: String,
}

pub async fn silence(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<SilenceForm>,
) -> Result<HttpResponse, AppError> {
    let rule = number::<i64>("Rule", &form.rule_id)?;
    let minutes = number::<i64>("Minutes", &form.minutes)?
        .ok_or_else(|| AppError::BadRequest("Say for how many minutes.".into()))?;
    let input = SilenceInput {
        rule_id: rule,
        source: Some(form.source.clone()),
        from: None,
        until: None,
        duration_s: Some(minutes.saturating_mul(60)),
        comment: form.comment.clone(),
    };
    let row =
        crate::alerts::rules::silence(&state.pool, &principal, source_ip(&req), &input).await?;
    flash(
        &session,
        format!("Silenced until {} UTC.", when(row.ends_at).absolute),
    );
    Ok(see_other(&match (form.back.as_str(), rule) {
        ("rule", Some(r)) => format!("/alerts/{r}"),
        _ => "/alerts".into(),
    }))
}

pub async fn end_silence(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "silence")?;
    crate::alerts::rules::end_silence(&state.pool, &principal, source_ip(&req), id).await?;
    flash(&session, "Ended the silence.");
    Ok(see_other("/alerts"))
}

#[derive(serde::Deserialize)]
pub struct ChannelForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    smtp_host: String,
    #[serde(default)]
    smtp_port: String,
    #[serde(default)]
    smtp_tls: String,
    #[serde(default)]
    smtp_user: String,
    #[serde(default)]
    smtp_password: String,
    #[serde(default)]
    smtp_from: String,
    #[serde(default)]
    events: String,
}

impl ChannelForm {
    fn input(&self) -> Result<ChannelInput, AppError> {
        let kind = word::<ChannelKind>("Kind", &self.kind)?;
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let events: Vec<String> = self
            .events
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let email = kind == Some(ChannelKind::Email);
        Ok(ChannelInput {
            name: self.name.clone(),
            kind,
            url: if email { None } else { opt(&self.url) },
            secret: if email { None } else { opt(&self.secret) },
            to: email.then(|| {
                self.to
                    .split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            smtp: if email {
                Some(SmtpInput {
                    host: self.smtp_host.clone(),
                    port: number("SMTP port", &self.smtp_port)?,
                    tls: match self.smtp_tls.as_str() {
                        "none" => Some(SmtpTls::None),
                        "tls" => Some(SmtpTls::Tls),
                        _ => Some(SmtpTls::Starttls),
                    },
                    user: opt(&self.smtp_user),
                    password: opt(&self.smtp_password),
                    from: self.smtp_from.clone(),
                })
            } else {
                None
            },
            events: Some(events),
        })
    }
}

pub async fn create_channel(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<ChannelForm>,
) -> Result<HttpResponse, AppError> {
    let result = match form.input() {
        Ok(input) => crate::alerts::channels::create(
            &state.pool,
            &principal,
            source_ip(&req),
            &input,
            &state.settings.alert_allow_hosts,
        )
        .await
        .map_err(AppError::from),
        Err(e) => Err(e),
    };
    answer(
        result,
        |row| {
            flash(&session, format!("Added the channel {}.", row.name));
            see_other("/alerts#channels")
        },
        |message, status| {
            render(
                layout,
                &state,
                RuleForm::blank(),
                None,
                Some(message),
                status,
            )
        },
    )
    .await
}

pub async fn delete_channel(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    crate::alerts::channels::delete(&state.pool, &principal, source_ip(&req), id).await?;
    flash(&session, "Deleted the channel.");
    Ok(see_other("/alerts#channels"))
}

pub async fn test_channel(
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path_id(&id, "channel")?;
    crate::alerts::channels::test(&state.pool, &principal, id, &state.settings.public_url())
        .await?;
    flash(&session, "Sending a test notification.");
    Ok(see_other("/alerts#channels"))
}

#[derive(Template)]
#[template(path = "partials/alert_badge.html")]
struct Badge {
    firing: i64,
}

/// The navigation's count of firing alerts (loaded by htmx after the page, so that no page
/// pays a statement for it).
pub async fn badge(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let firing = crate::db::alerts::firing_count(&state.pool).await?;
    super::html(&Badge { firing }, StatusCode::OK)
}

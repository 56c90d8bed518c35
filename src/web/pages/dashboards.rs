//! Metrics (`/dashboards`): the built-in Fleet dashboard and the dashboards operators build
//! (`/dashboards/{id}`), each a grid of charts over a chosen range, drawn in the browser by
//! uPlot from `/dashboards/series` (the series endpoint, for a logged-in session) with
//! releases, rollbacks and annotations as markers from `/dashboards/markers`. The forms that
//! edit dashboards live in `dashboard_edit`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use time::OffsetDateTime;

use crate::db::dashboards::{ChartRow, DashboardRow};
use crate::metrics::dashboards::{self, AGGREGATES, Chart, RANGES};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::Layout;

pub struct ChartView {
    /// 0 for a built-in chart (not editable).
    pub id: i64,
    pub title: String,
    pub unit: String,
    pub stacked: bool,
    /// The chart's series as JSON, for the script.
    pub spec: String,
    /// Why the chart can have no data here (its metrics are never recorded under the current
    /// provider); empty when it can.
    pub absent: String,
}

impl From<Chart> for ChartView {
    fn from(c: Chart) -> Self {
        Self {
            id: 0,
            spec: serde_json::to_string(&c.series).unwrap_or_else(|_| "[]".into()),
            absent: String::new(),
            title: c.title,
            unit: c.unit,
            stacked: c.stacked,
        }
    }
}

impl From<ChartRow> for ChartView {
    fn from(c: ChartRow) -> Self {
        Self {
            id: c.id,
            spec: serde_json::to_string(&c.series.0).unwrap_or_else(|_| "[]".into()),
            absent: String::new(),
            title: c.title,
            unit: c.unit,
            stacked: c.stacked,
        }
    }
}

/// A tab: the Fleet dashboard (id 0) or an operator's.
pub struct Tab {
    pub href: String,
    pub name: String,
    pub active: bool,
}

/// The forms of a dashboard page as typed, re-shown with the error when refused.
#[derive(Default, serde::Deserialize)]
pub struct ChartForm {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub aggregate: String,
    #[serde(default)]
    pub label: String,
    /// How the series combines its sources ("": a line each).
    #[serde(default)]
    pub across: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    pub stacked: Option<String>,
}

/// Which form a refusal belongs to, so the message shows next to it.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum FormAt {
    #[default]
    None,
    Create,
    Chart,
    Rename,
}

#[derive(Default)]
pub struct Refusal {
    pub at: FormAt,
    pub message: String,
    pub create_name: String,
    pub chart: ChartForm,
}

#[derive(Template)]
#[template(path = "dashboards.html")]
struct DashboardPage {
    layout: Layout,
    /// 0: the built-in Fleet dashboard.
    id: i64,
    name: String,
    created_by: String,
    tabs: Vec<Tab>,
    charts: Vec<ChartView>,
    ranges: Vec<&'static str>,
    range: String,
    aggregates: [&'static str; 5],
    across: [&'static str; 5],
    from: i64,
    to: i64,
    refusal: Refusal,
}

impl DashboardPage {
    fn error_at(&self, at: &str) -> Option<&str> {
        let here = match at {
            "create" => FormAt::Create,
            "chart" => FormAt::Chart,
            "rename" => FormAt::Rename,
            _ => FormAt::None,
        };
        (self.refusal.at == here && here != FormAt::None).then_some(self.refusal.message.as_str())
    }

    fn href(&self) -> String {
        if self.id == 0 {
            "/dashboards".into()
        } else {
            format!("/dashboards/{}", self.id)
        }
    }
}

#[derive(serde::Deserialize)]
pub struct RangeQuery {
    range: Option<String>,
}

fn span_of(range: &str) -> Result<i64, AppError> {
    dashboards::range(range).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{range:?} is not a range; use one of 1h, 6h, 24h, 7d, 30d."
        ))
    })
}

pub fn dashboard_id(id: &str) -> Result<i64, AppError> {
    id.parse()
        .map_err(|_| AppError::NotFound(format!("There is no dashboard {id}.")))
}

/// Renders the Fleet dashboard (`id` 0) or an operator's, with a refused form's message.
pub async fn render(
    layout: Layout,
    state: &AppState,
    id: i64,
    range: Option<String>,
    refusal: Refusal,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let range = range.unwrap_or_else(|| "1h".into());
    let span = span_of(&range)?;
    let all = crate::db::dashboards::list(&state.pool).await?;
    let provider = crate::cloud::Provider::name(state.cloud.as_ref());
    let (name, created_by, charts) = if id == 0 {
        let charts: Vec<ChartView> = dashboards::fleet()
            .into_iter()
            .map(|c| ChartView {
                absent: dashboards::no_data_under(&c.series, provider),
                ..c.into()
            })
            .collect();
        ("Fleet".to_owned(), String::new(), charts)
    } else {
        let DashboardRow {
            name, created_by, ..
        } = all
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| AppError::NotFound(format!("There is no dashboard {id}.")))?;
        let charts = crate::db::dashboards::charts(&state.pool, id)
            .await?
            .into_iter()
            .map(|c| ChartView {
                absent: dashboards::no_data_under(&c.series.0, provider),
                ..c.into()
            })
            .collect();
        (name, created_by, charts)
    };
    let tabs = std::iter::once(Tab {
        href: "/dashboards".into(),
        name: "Fleet".into(),
        active: id == 0,
    })
    .chain(all.into_iter().map(|d| Tab {
        href: format!("/dashboards/{}", d.id),
        active: d.id == id,
        name: d.name,
    }))
    .collect();
    let to = dashboards::window_end();
    super::html(
        &DashboardPage {
            layout,
            id,
            name,
            created_by,
            tabs,
            charts,
            ranges: RANGES.iter().map(|(n, _)| *n).collect(),
            range,
            aggregates: AGGREGATES,
            across: crate::metrics::dashboards::ACROSS,
            from: to - span,
            to,
            refusal,
        },
        status,
    )
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, AppError> {
    let range = query.into_inner().range;
    render(layout, &state, 0, range, Refusal::default(), StatusCode::OK).await
}

pub async fn show_custom(
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, AppError> {
    let id = dashboard_id(&id)?;
    let range = query.into_inner().range;
    render(
        layout,
        &state,
        id,
        range,
        Refusal::default(),
        StatusCode::OK,
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct MarkerQuery {
    from: i64,
    to: i64,
}

/// `GET /dashboards/markers?from=&to=`: releases, rollbacks and annotations in the range.
pub async fn markers(
    state: web::Data<AppState>,
    query: web::Query<MarkerQuery>,
) -> Result<HttpResponse, AppError> {
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| AppError::BadRequest(format!("{t} is not a time Kiln can read.")))
    };
    let markers = crate::db::metrics::markers(&state.pool, at(query.from)?, at(query.to)?).await?;
    Ok(HttpResponse::Ok().json(markers))
}

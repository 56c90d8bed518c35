//! Metrics (`/dashboards`): the Fleet dashboard's charts over a chosen range, drawn in the
//! browser by uPlot from `/dashboards/series` (the series endpoint, for a logged-in session)
//! with releases, rollbacks and annotations as markers from `/dashboards/markers`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use time::OffsetDateTime;

use crate::metrics::dashboards::{self, Chart, RANGES};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::Layout;

pub struct ChartView {
    pub title: &'static str,
    pub unit: &'static str,
    /// The chart's series as JSON, for the script.
    pub spec: String,
}

impl From<Chart> for ChartView {
    fn from(c: Chart) -> Self {
        Self {
            title: c.title,
            unit: c.unit,
            spec: serde_json::to_string(&c.series).unwrap_or_else(|_| "[]".into()),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboards.html")]
struct DashboardPage {
    layout: Layout,
    charts: Vec<ChartView>,
    ranges: Vec<&'static str>,
    range: String,
    from: i64,
    to: i64,
}

#[derive(serde::Deserialize)]
pub struct RangeQuery {
    range: Option<String>,
}

pub async fn show(layout: Layout, query: web::Query<RangeQuery>) -> Result<HttpResponse, AppError> {
    let range = query.range.clone().unwrap_or_else(|| "1h".into());
    let span = dashboards::range(&range).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{range:?} is not a range; use one of 1h, 6h, 24h, 7d, 30d."
        ))
    })?;
    let to = OffsetDateTime::now_utc().unix_timestamp();
    super::html(
        &DashboardPage {
            layout,
            charts: dashboards::fleet()
                .into_iter()
                .map(ChartView::from)
                .collect(),
            ranges: RANGES.iter().map(|(n, _)| *n).collect(),
            range,
            from: to - span,
            to,
        },
        StatusCode::OK,
    )
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

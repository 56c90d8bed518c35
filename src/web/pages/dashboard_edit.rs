//! The forms that build dashboards: create (empty or a copy of Fleet), rename, delete; add a
//! chart; a chart's own page (preview, title / unit / stacking, its series, delete, move).
//! A refused form is shown again with what was typed and the reason, and changes nothing.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::dashboards::{ChartForm, FormAt, Refusal, dashboard_id, render};
use super::{answer, see_other, source_ip};
use crate::auth::Principal;
use crate::metrics::dashboard_edits::{self as edits, ChartEdit, ChartInput, Editor};
use crate::metrics::dashboards::{AGGREGATES, SeriesSpec, series_spec, window_end};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};

fn editor<'a>(principal: &'a Principal, req: &HttpRequest) -> Editor<'a> {
    Editor {
        principal,
        ip: source_ip(req),
    }
}

#[derive(serde::Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    /// A checkbox: present when ticked.
    copy_fleet: Option<String>,
    /// The dashboard the form was sent from (0: Fleet), shown again if refused.
    #[serde(default)]
    from: i64,
}

pub async fn create(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<CreateForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let copy = form.copy_fleet.is_some();
    let result = edits::create(&state.pool, &editor(&principal, &req), &form.name, copy)
        .await
        .map_err(AppError::from);
    let done = format!("Created dashboard {:?}.", form.name.trim());
    answer(
        result,
        |id| {
            flash(&session, done);
            see_other(&format!("/dashboards/{id}"))
        },
        |message, status| async move {
            // Shown again on the dashboard it was sent from, if that still exists.
            let back = match form.from {
                0 => 0,
                from => crate::db::dashboards::get(&state.pool, from)
                    .await?
                    .map_or(0, |d| d.id),
            };
            let refusal = Refusal {
                at: FormAt::Create,
                message,
                create_name: form.name,
                ..Refusal::default()
            };
            render(layout, &state, back, None, refusal, status).await
        },
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct RenameForm {
    #[serde(default)]
    name: String,
}

pub async fn rename(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RenameForm>,
) -> Result<HttpResponse, AppError> {
    let id = dashboard_id(&id)?;
    let result = edits::rename(&state.pool, &editor(&principal, &req), id, &form.name)
        .await
        .map_err(AppError::from);
    let done = format!("Renamed the dashboard to {:?}.", form.name.trim());
    answer(
        result,
        |()| {
            flash(&session, done);
            see_other(&format!("/dashboards/{id}"))
        },
        |message, status| async move {
            let refusal = Refusal {
                at: FormAt::Rename,
                message,
                ..Refusal::default()
            };
            render(layout, &state, id, None, refusal, status).await
        },
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
    let id = dashboard_id(&id)?;
    edits::delete(&state.pool, &editor(&principal, &req), id).await?;
    flash(&session, "Deleted the dashboard.");
    Ok(see_other("/dashboards"))
}

fn spec_of(form: &ChartForm) -> Result<SeriesSpec, AppError> {
    series_spec(
        &form.metric,
        &form.source,
        &form.aggregate,
        &form.label,
        &form.across,
    )
    .map_err(AppError::BadRequest)
}

pub async fn add_chart(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<ChartForm>,
) -> Result<HttpResponse, AppError> {
    let id = dashboard_id(&id)?;
    let form = form.into_inner();
    let result = match spec_of(&form) {
        Ok(series) => {
            let input = ChartInput {
                title: &form.title,
                unit: &form.unit,
                stacked: form.stacked.is_some(),
                series,
            };
            edits::add_chart(&state.pool, &editor(&principal, &req), id, input)
                .await
                .map_err(AppError::from)
        }
        Err(e) => Err(e),
    };
    let done = format!("Added the chart {:?}.", form.title.trim());
    answer(
        result,
        |chart| {
            flash(&session, done);
            see_other(&format!("/dashboards/{id}#chart-{chart}"))
        },
        |message, status| async move {
            let refusal = Refusal {
                at: FormAt::Chart,
                message,
                chart: form,
                ..Refusal::default()
            };
            render(layout, &state, id, None, refusal, status).await
        },
    )
    .await
}

pub struct SeriesView {
    pub n: usize,
    pub metric: String,
    pub source: String,
    pub aggregate: String,
    pub label: String,
    pub across: String,
}

#[derive(Template)]
#[template(path = "dashboard_chart.html")]
struct ChartPage {
    layout: Layout,
    dashboard_id: i64,
    dashboard_name: String,
    chart: super::dashboards::ChartView,
    series: Vec<SeriesView>,
    aggregates: [&'static str; 5],
    across: [&'static str; 5],
    from: i64,
    to: i64,
    /// The settings as shown (what was typed, when refused).
    title: String,
    unit: String,
    stacked: bool,
    labels_error: Option<String>,
    series_form: ChartForm,
    series_error: Option<String>,
    /// A refused removal, shown above the list of series.
    list_error: Option<String>,
}

#[derive(Default)]
struct ChartRefusal {
    labels: Option<(ChartForm, String)>,
    series: Option<(ChartForm, String)>,
    list: Option<String>,
}

async fn render_chart(
    layout: Layout,
    state: &AppState,
    id: i64,
    chart_id: i64,
    refusal: ChartRefusal,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let dashboard = crate::db::dashboards::get(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no dashboard {id}.")))?;
    let chart = crate::db::dashboards::chart(&state.pool, id, chart_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("Dashboard {id} has no chart {chart_id}.")))?;
    let series = chart
        .series
        .0
        .iter()
        .enumerate()
        .map(|(n, s)| SeriesView {
            n,
            metric: s.metric.clone(),
            source: s.source.clone(),
            aggregate: s.aggregate.clone(),
            label: s.label.clone(),
            across: s.across.clone(),
        })
        .collect();
    let (title, unit, stacked, labels_error) = match refusal.labels {
        Some((form, message)) => (form.title, form.unit, form.stacked.is_some(), Some(message)),
        None => (chart.title.clone(), chart.unit.clone(), chart.stacked, None),
    };
    let (series_form, series_error) = match refusal.series {
        Some((form, message)) => (form, Some(message)),
        None => (
            ChartForm {
                source: "*".into(),
                aggregate: "avg".into(),
                ..ChartForm::default()
            },
            None,
        ),
    };
    let to = window_end();
    super::html(
        &ChartPage {
            layout,
            dashboard_id: id,
            dashboard_name: dashboard.name,
            chart: chart.into(),
            series,
            aggregates: AGGREGATES,
            across: crate::metrics::dashboards::ACROSS,
            from: to - 3600,
            to,
            title,
            unit,
            stacked,
            labels_error,
            series_form,
            series_error,
            list_error: refusal.list,
        },
        status,
    )
}

fn ids(path: &(String, String)) -> Result<(i64, i64), AppError> {
    let id = dashboard_id(&path.0)?;
    let chart = path
        .1
        .parse()
        .map_err(|_| AppError::NotFound(format!("Dashboard {id} has no chart {}.", path.1)))?;
    Ok((id, chart))
}

pub async fn show_chart(
    layout: Layout,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&path)?;
    render_chart(
        layout,
        &state,
        id,
        chart,
        ChartRefusal::default(),
        StatusCode::OK,
    )
    .await
}

/// The chart page an edit answers with.
struct ChartPlace {
    layout: Layout,
    state: web::Data<AppState>,
    id: i64,
    chart: i64,
}

/// A chart edit's answer: done -> back to the chart's page with `done` as the toast; refused
/// -> the chart's page with the refusal `again` makes of the reason.
async fn chart_answer(
    result: Result<(), AppError>,
    session: &Session,
    done: String,
    place: ChartPlace,
    again: impl FnOnce(String) -> ChartRefusal,
) -> Result<HttpResponse, AppError> {
    let ChartPlace {
        layout,
        state,
        id,
        chart,
    } = place;
    answer(
        result,
        |()| {
            flash(session, done);
            see_other(&format!("/dashboards/{id}/charts/{chart}"))
        },
        |message, status| async move {
            render_chart(layout, &state, id, chart, again(message), status).await
        },
    )
    .await
}

pub async fn edit_chart(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    form: web::Form<ChartForm>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&path)?;
    let form = form.into_inner();
    let edit = ChartEdit::Labels {
        title: &form.title,
        unit: &form.unit,
        stacked: form.stacked.is_some(),
    };
    let result = edits::edit_chart(&state.pool, &editor(&principal, &req), id, chart, edit)
        .await
        .map_err(AppError::from);
    let again = |message| ChartRefusal {
        labels: Some((form, message)),
        ..ChartRefusal::default()
    };
    let place = ChartPlace {
        layout,
        state,
        id,
        chart,
    };
    chart_answer(result, &session, "Saved the chart.".into(), place, again).await
}

pub async fn add_series(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    form: web::Form<ChartForm>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&path)?;
    let form = form.into_inner();
    let result = match spec_of(&form) {
        Ok(spec) => {
            let edit = ChartEdit::AddSeries(spec);
            edits::edit_chart(&state.pool, &editor(&principal, &req), id, chart, edit)
                .await
                .map_err(AppError::from)
        }
        Err(e) => Err(e),
    };
    let done = format!("Added {} to the chart.", form.metric.trim());
    let again = |message| ChartRefusal {
        series: Some((form, message)),
        ..ChartRefusal::default()
    };
    let place = ChartPlace {
        layout,
        state,
        id,
        chart,
    };
    chart_answer(result, &session, done, place, again).await
}

pub async fn remove_series(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&(path.0.clone(), path.1.clone()))?;
    let n: usize = path
        .2
        .parse()
        .map_err(|_| AppError::NotFound(format!("This chart has no series {}.", path.2)))?;
    let edit = ChartEdit::RemoveSeries(n);
    let result = edits::edit_chart(&state.pool, &editor(&principal, &req), id, chart, edit)
        .await
        .map_err(AppError::from);
    let again = |message| ChartRefusal {
        list: Some(message),
        ..ChartRefusal::default()
    };
    let place = ChartPlace {
        layout,
        state,
        id,
        chart,
    };
    chart_answer(result, &session, "Removed the series.".into(), place, again).await
}

pub async fn delete_chart(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&path)?;
    edits::delete_chart(&state.pool, &editor(&principal, &req), id, chart).await?;
    flash(&session, "Deleted the chart.");
    Ok(see_other(&format!("/dashboards/{id}")))
}

#[derive(serde::Deserialize)]
pub struct MoveForm {
    #[serde(default)]
    dir: String,
}

pub async fn move_chart(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    form: web::Form<MoveForm>,
) -> Result<HttpResponse, AppError> {
    let (id, chart) = ids(&path)?;
    let up = match form.dir.as_str() {
        "up" => true,
        "down" => false,
        other => {
            return Err(AppError::BadRequest(format!(
                "A chart moves \"up\" or \"down\", not {other:?}."
            )));
        }
    };
    edits::move_chart(&state.pool, &editor(&principal, &req), id, chart, up).await?;
    Ok(see_other(&format!("/dashboards/{id}#chart-{chart}")))
}

//! Edits of operators' dashboards: create, rename, copy the Fleet dashboard, delete; add,
//! change, move and delete charts and their series. Each edit validates first, then writes and
//! audits in one transaction with the dashboard locked, so a refused edit changes nothing and
//! two editors never interleave.

use sqlx::{PgPool, Postgres, Transaction};

use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::dashboards::{self as db, ChartRow, NewChart};
use crate::error::Error;
use crate::metrics::dashboards::{
    MAX_CHARTS, MAX_SERIES, SeriesSpec, chart_labels, dashboard_name, fleet,
};

/// Who asks, for the audit log.
pub struct Editor<'a> {
    pub principal: &'a Principal,
    pub ip: Option<String>,
}

impl Editor<'_> {
    async fn audit(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        action: &str,
        target: String,
        detail: String,
    ) -> Result<(), Error> {
        audit::record(
            &mut **tx,
            AuditEvent::by(self.principal, action, target, Outcome::Ok)
                .detail(detail)
                .from_ip(self.ip.clone()),
        )
        .await?;
        Ok(())
    }
}

fn bad(message: String) -> Error {
    Error::Invalid(message)
}

fn taken(name: &str) -> Error {
    Error::Conflict(format!(
        "There is already a dashboard called {name:?}; pick another name."
    ))
}

/// Opens the edit's transaction with the dashboard locked; 404 when it is gone.
async fn begin(pool: &PgPool, dashboard_id: i64) -> Result<Transaction<'static, Postgres>, Error> {
    let mut tx = pool.begin().await?;
    db::lock(&mut tx, dashboard_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no dashboard {dashboard_id}.")))?;
    Ok(tx)
}

async fn chart_in(
    tx: &mut Transaction<'_, Postgres>,
    dashboard_id: i64,
    chart_id: i64,
) -> Result<ChartRow, Error> {
    db::chart(&mut **tx, dashboard_id, chart_id)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!("Dashboard {dashboard_id} has no chart {chart_id}."))
        })
}

/// Creates a dashboard, empty or holding a copy of the Fleet dashboard's charts.
pub async fn create(
    pool: &PgPool,
    editor: &Editor<'_>,
    name: &str,
    copy_fleet: bool,
) -> Result<i64, Error> {
    let name = dashboard_name(name).map_err(bad)?;
    let mut tx = pool.begin().await?;
    let id = db::create(&mut tx, &name, &editor.principal.name)
        .await?
        .ok_or_else(|| taken(&name))?;
    if copy_fleet {
        for chart in fleet() {
            db::add_chart(
                &mut tx,
                id,
                &NewChart {
                    title: &chart.title,
                    unit: &chart.unit,
                    stacked: chart.stacked,
                    series: &chart.series,
                },
            )
            .await?;
        }
    }
    let detail = if copy_fleet {
        format!("{name:?}, a copy of Fleet")
    } else {
        format!("{name:?}")
    };
    editor
        .audit(
            &mut tx,
            "dashboard.create",
            format!("dashboard:{id}"),
            detail,
        )
        .await?;
    tx.commit().await?;
    Ok(id)
}

pub async fn rename(
    pool: &PgPool,
    editor: &Editor<'_>,
    dashboard_id: i64,
    name: &str,
) -> Result<(), Error> {
    let name = dashboard_name(name).map_err(bad)?;
    let mut tx = begin(pool, dashboard_id).await?;
    if db::name_taken(&mut *tx, &name, dashboard_id).await? {
        return Err(taken(&name));
    }
    db::rename(&mut tx, dashboard_id, &name).await?;
    editor
        .audit(
            &mut tx,
            "dashboard.rename",
            format!("dashboard:{dashboard_id}"),
            format!("to {name:?}"),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn delete(pool: &PgPool, editor: &Editor<'_>, dashboard_id: i64) -> Result<(), Error> {
    let mut tx = begin(pool, dashboard_id).await?;
    let name = db::get(&mut *tx, dashboard_id)
        .await?
        .map(|d| d.name)
        .unwrap_or_default();
    db::delete(&mut tx, dashboard_id).await?;
    editor
        .audit(
            &mut tx,
            "dashboard.delete",
            format!("dashboard:{dashboard_id}"),
            format!("{name:?}"),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A chart as typed: its labels, whether stacked, and its first series.
pub struct ChartInput<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub stacked: bool,
    pub series: SeriesSpec,
}

pub async fn add_chart(
    pool: &PgPool,
    editor: &Editor<'_>,
    dashboard_id: i64,
    input: ChartInput<'_>,
) -> Result<i64, Error> {
    let (title, unit) = chart_labels(input.title, input.unit).map_err(bad)?;
    let mut tx = begin(pool, dashboard_id).await?;
    if db::chart_count(&mut tx, dashboard_id).await? >= MAX_CHARTS {
        return Err(Error::Conflict(format!(
            "A dashboard holds at most {MAX_CHARTS} charts; this one is full. Delete a chart or start another dashboard."
        )));
    }
    let series = [input.series];
    let id = db::add_chart(
        &mut tx,
        dashboard_id,
        &NewChart {
            title: &title,
            unit: &unit,
            stacked: input.stacked,
            series: &series,
        },
    )
    .await?;
    editor
        .audit(
            &mut tx,
            "dashboard.chart.add",
            format!("dashboard:{dashboard_id}"),
            format!("chart {id} {title:?} ({})", series[0].metric),
        )
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// What an edit does to a chart's own settings or its list of series.
pub enum ChartEdit<'a> {
    Labels {
        title: &'a str,
        unit: &'a str,
        stacked: bool,
    },
    AddSeries(SeriesSpec),
    /// By position in the chart's list (0-based).
    RemoveSeries(usize),
}

pub async fn edit_chart(
    pool: &PgPool,
    editor: &Editor<'_>,
    dashboard_id: i64,
    chart_id: i64,
    edit: ChartEdit<'_>,
) -> Result<(), Error> {
    let labels = match &edit {
        ChartEdit::Labels { title, unit, .. } => Some(chart_labels(title, unit).map_err(bad)?),
        _ => None,
    };
    let mut tx = begin(pool, dashboard_id).await?;
    let chart = chart_in(&mut tx, dashboard_id, chart_id).await?;
    let (mut title, mut unit, mut stacked) = (chart.title, chart.unit, chart.stacked);
    let mut series = chart.series.0;
    let detail = match edit {
        ChartEdit::Labels { stacked: s, .. } => {
            (title, unit) = labels.unwrap_or_default();
            stacked = s;
            format!("{title:?}, unit {unit:?}, stacked {stacked}")
        }
        ChartEdit::AddSeries(spec) => {
            if series.len() >= MAX_SERIES {
                return Err(Error::Conflict(format!(
                    "A chart holds at most {MAX_SERIES} series; remove one first."
                )));
            }
            let detail = format!(
                "added {} {} of {}",
                spec.aggregate, spec.metric, spec.source
            );
            series.push(spec);
            detail
        }
        ChartEdit::RemoveSeries(n) => {
            if n >= series.len() {
                return Err(Error::NotFound(format!(
                    "This chart has no series number {}.",
                    n + 1
                )));
            }
            if series.len() == 1 {
                return Err(Error::Conflict(
                    "A chart needs at least one series; delete the chart instead.".into(),
                ));
            }
            let gone = series.remove(n);
            format!(
                "removed {} {} of {}",
                gone.aggregate, gone.metric, gone.source
            )
        }
    };
    db::update_chart(
        &mut tx,
        chart_id,
        &NewChart {
            title: &title,
            unit: &unit,
            stacked,
            series: &series,
        },
    )
    .await?;
    editor
        .audit(
            &mut tx,
            "dashboard.chart.edit",
            format!("dashboard:{dashboard_id}"),
            format!("chart {chart_id}: {detail}"),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn delete_chart(
    pool: &PgPool,
    editor: &Editor<'_>,
    dashboard_id: i64,
    chart_id: i64,
) -> Result<(), Error> {
    let mut tx = begin(pool, dashboard_id).await?;
    let chart = chart_in(&mut tx, dashboard_id, chart_id).await?;
    db::delete_chart(&mut tx, chart_id).await?;
    editor
        .audit(
            &mut tx,
            "dashboard.chart.delete",
            format!("dashboard:{dashboard_id}"),
            format!("chart {chart_id} {:?}", chart.title),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Moves a chart one place earlier (`up`) or later; at either end it stays where it is.
pub async fn move_chart(
    pool: &PgPool,
    editor: &Editor<'_>,
    dashboard_id: i64,
    chart_id: i64,
    up: bool,
) -> Result<bool, Error> {
    let mut tx = begin(pool, dashboard_id).await?;
    chart_in(&mut tx, dashboard_id, chart_id).await?;
    let moved = db::move_chart(&mut tx, dashboard_id, chart_id, up).await?;
    if moved {
        editor
            .audit(
                &mut tx,
                "dashboard.chart.move",
                format!("dashboard:{dashboard_id}"),
                format!("chart {chart_id} {}", if up { "up" } else { "down" }),
            )
            .await?;
    }
    tx.commit().await?;
    Ok(moved)
}

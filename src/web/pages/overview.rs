//! The Overview page: the fleet at a glance (servers by state, the current image, the queue,
//! the rollout in progress) and the last audit events.

use actix_web::web;
use askama::Template;
use askama_web::WebTemplate;

use super::audit::EventView;
use super::rollouts::RolloutView;
use crate::db::jobs::QueueCounts;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::Layout;

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    layout: Layout,
    events: Vec<EventView>,
    users: i64,
    servers: Vec<(String, i64)>,
    live_servers: i64,
    fleet: super::servers::FleetLine,
    /// The current image: its id and name ("worker v7").
    current: Option<(String, String)>,
    /// Where a one-click rollback goes (an operator's view only).
    rollback_to: Option<super::rollouts::RollbackTarget>,
    queue: QueueCounts,
    rollout: Option<RolloutView>,
    /// Bakes in progress: (id, recipe, version, step).
    bakes: Vec<(i64, String, i32, String)>,
    charts: Vec<super::dashboards::ChartView>,
    /// Firing alerts: (rule id, rule, source, since) — the first few; and how many in all.
    firing: Vec<(i64, String, String, crate::web::view::When)>,
    firing_total: usize,
    from: i64,
    to: i64,
}

pub async fn show(layout: Layout, state: web::Data<AppState>) -> Result<OverviewPage, AppError> {
    let pool = &state.pool;
    let (rows, users, tally, kept, current, rollback_to, queue, rollout, bakes, firing) = tokio::try_join!(
        crate::db::audit::overview(pool, 10),
        crate::db::users::count(pool),
        crate::db::servers::tally(pool, None),
        crate::db::servers::kept(pool),
        crate::db::images::current(pool),
        async {
            // Only an operator is offered the rollback.
            if layout.can_act() {
                crate::db::images::rollback_target(pool).await
            } else {
                Ok(None)
            }
        },
        crate::db::jobs::counts(pool),
        crate::db::rollouts::active(pool),
        crate::db::bakes::running(pool),
        crate::db::alerts::firing(pool),
    )?;
    let firing_total = firing.len();
    // Notable events and the routine ones folded, newest first.
    let (notable, folded) = rows;
    let mut events: Vec<EventView> = notable
        .into_iter()
        .map(EventView::from)
        .chain(folded.into_iter().map(EventView::folded))
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.at_time()));
    // Live servers per state, from the same tally as the serving count.
    let mut by_state: std::collections::BTreeMap<&str, i64> = Default::default();
    for t in &tally {
        *by_state.entry(t.state.as_str()).or_default() += t.n;
    }
    let servers: Vec<(String, i64)> = by_state
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(state, n)| (state.to_owned(), n))
        .collect();
    Ok(OverviewPage {
        layout,
        events,
        users,
        live_servers: servers.iter().map(|(_, n)| n).sum(),
        servers,
        fleet: super::servers::FleetLine::new(&tally, &kept),
        current: current.map(|i| {
            (
                crate::web::view::image_label(&i.id, &i.name, &i.version),
                i.id,
            )
        }),
        rollback_to: rollback_to.map(Into::into),
        queue,
        rollout: rollout.map(Into::into),
        bakes,
        firing: firing
            .into_iter()
            .take(5)
            .map(|(s, name)| {
                let source = if s.source.is_empty() {
                    "all sources".to_owned()
                } else {
                    s.source
                };
                (s.rule_id, name, source, crate::web::view::when(s.since))
            })
            .collect(),
        firing_total,
        charts: crate::metrics::dashboards::overview()
            .into_iter()
            .map(Into::into)
            .collect(),
        from: crate::metrics::dashboards::window_end() - 3600,
        to: crate::metrics::dashboards::window_end(),
    })
}

use actix_web::web;
use askama::Template;
use askama_web::WebTemplate;

use super::audit::EventView;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::Layout;

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    layout: Layout,
    events: Vec<EventView>,
    users: i64,
}

pub async fn show(layout: Layout, state: web::Data<AppState>) -> Result<OverviewPage, AppError> {
    let mut rows = crate::db::audit::page(&state.pool, None, 10).await?;
    rows.truncate(10);
    let users = crate::db::users::count(&state.pool).await?;
    Ok(OverviewPage {
        layout,
        events: rows.into_iter().map(EventView::from).collect(),
        users,
    })
}

//! The Audit page: every state-changing action, newest first, 50 a page.

use actix_web::web;
use askama::Template;
use askama_web::WebTemplate;

use crate::db::audit::AuditRow;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::Layout;
use crate::web::view::{When, when};

const PAGE_SIZE: i64 = 50;

pub struct EventView {
    pub id: i64,
    pub at: When,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
    pub source_ip: String,
}

impl From<AuditRow> for EventView {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            at: when(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            result: r.result,
            detail: r.detail,
            source_ip: r.source_ip.unwrap_or_default(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "audit.html")]
pub struct AuditPage {
    layout: Layout,
    events: Vec<EventView>,
    next_before: Option<i64>,
    first_page: bool,
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<AuditPage, AppError> {
    let mut rows = crate::db::audit::page(&state.pool, query.before, PAGE_SIZE).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let next_before = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(AuditPage {
        layout,
        events: rows.into_iter().map(EventView::from).collect(),
        next_before,
        first_page: query.before.is_none(),
    })
}

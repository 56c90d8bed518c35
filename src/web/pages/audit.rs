//! The Audit page: every state-changing action, newest first, 50 a page, filtered by action,
//! user, target and time (the filters in the URL, as `GET /api/v1/audit` takes them).

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
    /// A line that stands for this many routine events (0: one event).
    pub folded: i64,
}

impl EventView {
    /// When it happened (to merge events of several kinds in time order).
    pub fn at_time(&self) -> time::OffsetDateTime {
        self.at.absolute.time()
    }

    /// Routine events folded into one line: "150 jobs enqueued by ci-bot".
    pub fn folded(f: crate::db::audit::Folded) -> Self {
        let (one, many, verb) = match f.action.as_str() {
            "job.enqueue" => ("job", "jobs", "enqueued"),
            "agent.register" => ("agent", "agents", "registered"),
            "login" => ("login", "logins", "recorded"),
            "logout" => ("logout", "logouts", "recorded"),
            _ => ("event", "events", "recorded"),
        };
        Self {
            id: 0,
            at: when(f.last_at),
            detail: format!(
                "{} {} {verb} by {}",
                f.n,
                if f.n == 1 { one } else { many },
                f.actor
            ),
            actor: f.actor,
            action: f.action,
            target: String::new(),
            result: "ok".into(),
            source_ip: String::new(),
            folded: f.n,
        }
    }
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
            folded: 0,
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
    query: AuditQuery,
    /// The filters as a query string, for the pager's links.
    filters: String,
}

/// The filters as typed (kept in the URL): action or family, user, target or kind, and a
/// time range as "YYYY-MM-DD HH:MM" (UTC) or RFC 3339.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub until: String,
    #[serde(default, skip_serializing)]
    pub before: Option<i64>,
    /// The API's page size (the page's is fixed).
    #[serde(default, skip_serializing)]
    pub limit: Option<i64>,
}

impl AuditQuery {
    /// The filter, validated: a time that is not one is refused with its field named.
    pub fn filter(&self) -> Result<crate::db::audit::AuditFilter, AppError> {
        fn text(v: &str) -> Option<String> {
            Some(v.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
        }
        fn time(field: &str, v: &str) -> Result<Option<time::OffsetDateTime>, AppError> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            let rfc = time::format_description::well_known::Rfc3339;
            let minute = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
            let day = time::macros::format_description!("[year]-[month]-[day]");
            time::OffsetDateTime::parse(v, &rfc)
                .or_else(|_| {
                    time::PrimitiveDateTime::parse(&v.replace('T', " "), minute)
                        .map(|t| t.assume_utc())
                })
                .or_else(|_| {
                    time::Date::parse(v, day).map(|d| d.midnight().assume_utc())
                })
                .map(Some)
                .map_err(|_| {
                    AppError::BadRequest(format!(
                        "{field}: {v:?} is not a time: use YYYY-MM-DD, YYYY-MM-DD HH:MM (UTC) or RFC 3339."
                    ))
                })
        }
        Ok(crate::db::audit::AuditFilter {
            action: text(&self.action),
            actor: text(&self.user),
            target: text(&self.target),
            from: time("from", &self.from)?,
            until: time("until", &self.until)?,
        })
    }

    /// The filters (not the page) as a query string.
    pub fn encoded(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<AuditPage, AppError> {
    let query = query.into_inner();
    let filter = query.filter()?;
    let mut rows = crate::db::audit::search(&state.pool, &filter, query.before, PAGE_SIZE).await?;
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
        filters: query.encoded(),
        query,
    })
}

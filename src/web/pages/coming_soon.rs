//! Pages whose issue has not landed yet. They say so plainly, and what they will show, so
//! that the navigation has no dead links.

use actix_web::HttpRequest;
use askama::Template;
use askama_web::WebTemplate;

use crate::web::layout::Layout;

#[derive(Template, WebTemplate)]
#[template(path = "coming_soon.html")]
pub struct ComingSoonPage {
    layout: Layout,
    title: &'static str,
    will_show: &'static str,
}

const PAGES: &[(&str, &str, &str)] = &[
    (
        "/images",
        "Images",
        "every machine image, newest first, with its version, state and the servers running it; launch, release and roll back from here",
    ),
    (
        "/servers",
        "Servers",
        "every server with its image, mode, state and running jobs; launch, disable, enable and terminate from here",
    ),
    (
        "/rollouts",
        "Rollouts",
        "current and past releases and rollbacks with their progress; pause, resume and cancel from here",
    ),
    (
        "/bakes",
        "Bakes",
        "current and past image bakes with their live logs, and the recipes they run",
    ),
    (
        "/jobs",
        "Jobs",
        "the work queue: queue depth, running jobs, recent results and each job's live log",
    ),
    (
        "/alerts",
        "Alerts",
        "alert rules on metrics, their state and history",
    ),
];

pub async fn show(req: HttpRequest, layout: Layout) -> ComingSoonPage {
    let (title, will_show) = PAGES
        .iter()
        .find(|(path, _, _)| *path == req.path())
        .map(|&(_, title, will_show)| (title, will_show))
        .unwrap_or(("This page", "more of the fleet"));
    ComingSoonPage {
        layout,
        title,
        will_show,
    }
}

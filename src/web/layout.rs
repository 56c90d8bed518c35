//! What the base template needs on every page: the user, the CSRF token for its forms, the
//! navigation, a one-time flash message, and versioned asset URLs.

use actix_session::{Session, SessionExt};
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::access::csrf_token;
use super::error::AppError;
use crate::auth::Principal;
use crate::domain::Role;

/// The session key of a message shown once on the next page (after a redirect).
const FLASH: &str = "flash";

pub struct Layout {
    pub user: Option<Principal>,
    pub csrf: String,
    pub path: String,
    pub flash: Option<String>,
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub active: bool,
}

const NAV: &[(&str, &str, Role)] = &[
    ("/", "Overview", Role::Viewer),
    ("/images", "Images", Role::Viewer),
    ("/servers", "Servers", Role::Viewer),
    ("/rollouts", "Rollouts", Role::Viewer),
    ("/scaling", "Scaling", Role::Viewer),
    ("/bakes", "Bakes", Role::Viewer),
    ("/jobs", "Jobs", Role::Viewer),
    ("/dashboards", "Metrics", Role::Viewer),
    ("/alerts", "Alerts", Role::Viewer),
    ("/audit", "Audit", Role::Viewer),
    ("/users", "Users", Role::Admin),
];

impl Layout {
    pub fn from_request(req: &HttpRequest) -> Self {
        let session = req.get_session();
        // Only touch the flash when there is one: any removal marks the session changed, and a
        // changed session is written back on every page view.
        let flash = if session.contains_key(FLASH) {
            session.remove_as::<String>(FLASH).and_then(Result::ok)
        } else {
            None
        };
        // Before the principal is read: a new token is put into the request's extensions.
        let csrf = csrf_token(req);
        Self {
            user: req.extensions().get::<Principal>().cloned(),
            csrf,
            path: req.path().to_owned(),
            flash,
        }
    }

    /// The navigation for this user: a viewer sees every page but Users.
    pub fn nav(&self) -> Vec<NavItem> {
        let Some(user) = &self.user else {
            return Vec::new();
        };
        NAV.iter()
            .filter(|(_, _, least)| user.role >= *least)
            .map(|&(href, label, _)| NavItem {
                href,
                label,
                active: if href == "/" {
                    self.path == "/"
                } else {
                    self.path.starts_with(href)
                },
            })
            .collect()
    }

    pub fn asset(&self, name: &str) -> String {
        super::assets::url(name)
    }

    /// Whether to show action controls (operators and admins act; viewers only look).
    pub fn can_act(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= Role::Operator)
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= Role::Admin)
    }
}

/// Leaves a message for the next page this session renders.
pub fn flash(session: &Session, message: impl Into<String>) {
    let _ = session.insert(FLASH, message.into());
}

impl FromRequest for Layout {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(Ok(Layout::from_request(req)))
    }
}

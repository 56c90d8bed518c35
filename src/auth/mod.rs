//! Credentials: password hashing, random tokens, login throttling, and the principal a
//! request acts as.

pub mod password;
pub mod throttle;
pub mod token;

use crate::domain::Role;

/// Who a request acts as, put in the request's extensions by the access middleware.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    pub role: Role,
    /// How the request proved it: a console session or an API token.
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Session,
    ApiToken(i64),
}

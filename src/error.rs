//! The one error vocabulary below the web: what fleet, rollouts, bakes, jobs and metrics say
//! went wrong, in words a user can act on. `web::error` alone turns these into statuses and
//! pages; `tasks` alone decides which are worth another try ([`Error::is_retryable`]).
//!
//! The cause chain is kept: `Unavailable` and `Internal` carry their source, so a bake that
//! fails because a release could not start logs the database error underneath, not a string.

use crate::cloud::{CloudError, ErrorKind};
use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a field out of range, an unknown name); the sentence
    /// names what to change.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked about does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the state of things forbids it now (an image already current,
    /// a rollout already finished).
    #[error("{0}")]
    Conflict(String),
    /// Something Kiln depends on (the provider, the database) is not answering; trying
    /// again later may work.
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: anyhow::Error,
    },
    /// A bug or an unexpected failure; the user sees a generic sentence, the log the chain.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }

    /// Whether an automatic retry later may succeed: outages and unexpected failures (a
    /// database that blipped) may pass; a request that is wrong, or that the state of things
    /// forbids, stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Internal(_) => true,
            Error::Invalid(_) | Error::NotFound(_) | Error::Conflict(_) => false,
        }
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::Invalid(e.0)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(e).context("A database query failed"))
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(e)
    }
}

/// The provider's words mapped onto ours; throttling, outages and missing capacity come and
/// go, so they are `Unavailable` (retryable), as `CloudError::is_retryable` says.
impl From<CloudError> for Error {
    fn from(e: CloudError) -> Self {
        match e.kind {
            ErrorKind::NotFound => Error::NotFound(e.message),
            ErrorKind::InvalidInput => Error::Invalid(e.message),
            _ if e.is_retryable() => Error::Unavailable {
                message: format!("The cloud provider is not answering: {}", e.message),
                source: e.into(),
            },
            _ => Error::Internal(anyhow::Error::new(e).context("The cloud provider refused")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_the_kind() {
        assert!(!Error::invalid("x").is_retryable());
        assert!(!Error::not_found("x").is_retryable());
        assert!(!Error::conflict("x").is_retryable());
        assert!(Error::from(anyhow::anyhow!("boom")).is_retryable());
        let throttled = Error::from(CloudError::new(ErrorKind::Throttled, "slow down"));
        assert!(matches!(throttled, Error::Unavailable { .. }));
        assert!(throttled.is_retryable());
        let denied = Error::from(CloudError::new(ErrorKind::Unauthorized, "no"));
        assert!(matches!(denied, Error::Internal(_)));
        assert!(matches!(
            Error::from(CloudError::not_found("gone")),
            Error::NotFound(m) if m == "gone"
        ));
    }

    #[test]
    fn the_cause_chain_is_kept() {
        let e = Error::from(sqlx::Error::RowNotFound);
        let chain: Vec<String> = match &e {
            Error::Internal(inner) => inner.chain().map(|c| c.to_string()).collect(),
            _ => panic!("a database error is internal"),
        };
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert!(chain[0].contains("database"));
    }
}

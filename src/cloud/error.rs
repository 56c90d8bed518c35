use std::fmt;

/// What went wrong at the provider, in Kiln's words, and whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The provider asked us to slow down (EC2's RequestLimitExceeded).
    Throttled,
    /// The provider could not be reached or failed on its side (5xx, timeouts, connections).
    Unavailable,
    /// The image or server does not exist.
    NotFound,
    /// The request was refused as malformed before or by the provider.
    InvalidInput,
    /// The credentials were missing, wrong, or lack the permission.
    Unauthorized,
    /// A client token was reused with different parameters.
    IdempotencyMismatch,
    /// The provider has no capacity for this instance type right now.
    InsufficientCapacity,
    /// Anything else the provider said.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Worth retrying later, automatically: throttling, outages and capacity come and go.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::InsufficientCapacity
        )
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CloudError {}

pub type CloudResult<T> = Result<T, CloudError>;

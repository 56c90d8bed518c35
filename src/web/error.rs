//! The errors a handler returns. Each maps to a status code and a sentence the user can act
//! on; `Internal` hides its cause from the user (it is logged once, with a request id).
//! How an error is shown (JSON, an htmx toast, a full page) is decided in
//! `middleware::errors`, which knows the request.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Log in to continue.")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A body over a limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// An agent of another protocol version (426).
    #[error("{0}")]
    WrongProtocol(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    /// Something the console depends on is not answering (503); the source is logged once,
    /// with the 5xx, by the error middleware.
    #[error("{message}")]
    Unavailable {
        message: String,
        source: anyhow::Error,
    },
    #[error("Something went wrong on our side.")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn forbidden_role() -> Self {
        AppError::Forbidden("Your role does not allow this action.".into())
    }
}

impl From<ValidationError> for AppError {
    fn from(e: ValidationError) -> Self {
        AppError::BadRequest(e.0)
    }
}

/// The core's vocabulary, decided into statuses here and nowhere else.
impl From<crate::error::Error> for AppError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        match e {
            Error::Invalid(m) => AppError::BadRequest(m),
            Error::NotFound(m) => AppError::NotFound(m),
            Error::Conflict(m) => AppError::Conflict(m),
            Error::Unavailable { message, source } => AppError::Unavailable { message, source },
            Error::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(anyhow::Error::new(e).context("A database query failed"))
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::WrongProtocol(_) => StatusCode::UPGRADE_REQUIRED,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A bare response: the error middleware replaces its body with the right rendering.
    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let AppError::TooManyRequests { retry_after_s, .. } = self {
            res.insert_header(("Retry-After", retry_after_s.to_string()));
        }
        res.finish()
    }
}

/// A path's numeric id, or a 404 that says there is no such `what` ("There is no rollout x.").
pub fn path_id(raw: &str, what: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("There is no {what} {raw}.")))
}

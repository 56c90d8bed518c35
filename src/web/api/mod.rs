//! The JSON API under /api/v1 (bearer API tokens; same rules and audit as the pages).

pub mod alerts;
pub mod audit;
pub mod bakes;
pub mod freezes;
pub mod images;
pub mod jobs;
pub mod rollouts;
pub mod scaling;
pub mod servers;

/// `?limit=`: default 500, at most 5,000.
pub fn limit(requested: Option<i64>) -> Result<i64, crate::web::error::AppError> {
    match requested {
        None => Ok(500),
        Some(n) if (1..=5000).contains(&n) => Ok(n),
        Some(n) => Err(crate::web::error::AppError::BadRequest(format!(
            "limit must be between 1 and 5000, not {n}"
        ))),
    }
}

//! Request bodies read by hand (the routes that need a limit other than actix's default).

use actix_web::web;
use futures_util::StreamExt;

use super::error::AppError;

/// Reads the whole body, refusing (413, with `too_large`'s sentence) one over `max` bytes
/// before reading the rest.
pub async fn read_limited(
    mut payload: web::Payload,
    max: usize,
    too_large: impl FnOnce() -> String,
) -> Result<web::Bytes, AppError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| AppError::BadRequest(format!("The body could not be read: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(AppError::TooLarge(too_large()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

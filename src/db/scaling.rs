//! The autoscaling settings as stored (one JSON document). See src/scaling/.

use sqlx::PgExecutor;

use crate::domain::scaling::ScalingSettings;

/// The settings in force (the defaults — off — until someone saves them).
pub async fn settings(db: impl PgExecutor<'_>) -> sqlx::Result<ScalingSettings> {
    let stored: Option<sqlx::types::Json<ScalingSettings>> =
        sqlx::query_scalar("SELECT settings FROM scaling_settings")
            .fetch_optional(db)
            .await?;
    Ok(stored.map(|s| s.0).unwrap_or_default())
}

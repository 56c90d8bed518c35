//! DeregisterImage: deregisters an image at the provider (the catalogue already shows it
//! deregistered). Idempotent: the provider treats an unknown or deregistered image as done.

use serde::{Deserialize, Serialize};

use crate::cloud::Provider;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct DeregisterImage {
    pub image_id: String,
}

impl Task for DeregisterImage {
    const KIND: &'static str = "deregister_image";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let cloud = ctx.cloud()?;
        match cloud.deregister_image(&self.image_id).await {
            Ok(()) => {
                audit::record(
                    &ctx.pool,
                    AuditEvent::system(
                        "image.deregistered",
                        format!("image:{}", self.image_id),
                        Outcome::Ok,
                    ),
                )
                .await?;
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(TaskError::Retryable(e.into())),
            Err(e) => {
                crate::db::images::set_state(
                    &ctx.pool,
                    &self.image_id,
                    crate::domain::ImageState::Deregistered,
                    &format!("The provider refused: {e}"),
                )
                .await?;
                audit::record(
                    &ctx.pool,
                    AuditEvent::system(
                        "image.deregistered",
                        format!("image:{}", self.image_id),
                        Outcome::Failed,
                    )
                    .detail(e.message.clone()),
                )
                .await?;
                Err(TaskError::Fatal(e.into()))
            }
        }
    }
}

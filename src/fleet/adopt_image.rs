//! AdoptImage: checks that an image added to the catalogue exists at the provider and is
//! usable, then marks it `available` (or `failed`, with the reason). With the local provider
//! it first records the image there. Idempotent: an image no longer `pending` is left alone.

use serde::{Deserialize, Serialize};

use crate::cloud::{ImageState, Provider, Tags};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct AdoptImage {
    pub image_id: String,
}

impl Task for AdoptImage {
    const KIND: &'static str = "adopt_image";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let cloud = ctx
            .cloud
            .as_ref()
            .ok_or_else(|| TaskError::Fatal(anyhow::anyhow!("no cloud provider")))?;
        let Some(image) = crate::db::images::find(&ctx.pool, &self.image_id).await? else {
            return Err(TaskError::Fatal(anyhow::anyhow!(
                "image {} is not in the catalogue",
                self.image_id
            )));
        };
        if image.state != crate::domain::ImageState::Pending {
            return Ok(());
        }
        if cloud.name() == "local" {
            let tags = Tags::from([("kiln:version".to_owned(), image.version.clone())]);
            if let Err(e) = cloud
                .register_image(&image.id, &image.name, &image.description, &tags)
                .await
            {
                return self.settle(ctx, &e.message, e.is_retryable()).await;
            }
        }
        match cloud.get_image(&image.id).await {
            Err(e) => self.settle(ctx, &e.message, e.is_retryable()).await,
            Ok(None) => {
                self.finish(
                    ctx,
                    ImageState::Failed,
                    &format!("The provider has no image {}.", image.id),
                    None,
                )
                .await
            }
            Ok(Some(found)) => match found.state {
                ImageState::Available => {
                    self.finish(
                        ctx,
                        ImageState::Available,
                        "",
                        found.architecture.as_deref(),
                    )
                    .await
                }
                ImageState::Pending => Err(TaskError::Retryable(anyhow::anyhow!(
                    "image {} is still pending at the provider",
                    image.id
                ))),
                other => {
                    self.finish(
                        ctx,
                        ImageState::Failed,
                        &format!("The provider reports the image {}.", other.as_str()),
                        None,
                    )
                    .await
                }
            },
        }
    }
}

impl AdoptImage {
    /// A provider error: retried when it may pass, otherwise the image fails with its words.
    async fn settle(&self, ctx: &Context, message: &str, retryable: bool) -> Result<(), TaskError> {
        if retryable {
            Err(TaskError::Retryable(anyhow::anyhow!("{message}")))
        } else {
            self.finish(ctx, ImageState::Failed, message, None).await
        }
    }

    /// Records the image's state (and the architecture the provider reports for an available
    /// one) with its audit event, in one transaction.
    async fn finish(
        &self,
        ctx: &Context,
        state: ImageState,
        reason: &str,
        architecture: Option<&str>,
    ) -> Result<(), TaskError> {
        let mut tx = ctx.pool.begin().await?;
        crate::db::images::set_state(&mut *tx, &self.image_id, state, reason).await?;
        crate::db::images::set_architecture(&mut *tx, &self.image_id, architecture).await?;
        let mut detail = reason.to_owned();
        if state == ImageState::Available
            && crate::db::images::make_first_current(&mut tx, &self.image_id, "kiln").await?
        {
            detail = "made current: the first available image".to_owned();
        }
        let outcome = if state == ImageState::Available {
            Outcome::Ok
        } else {
            Outcome::Failed
        };
        audit::record(
            &mut *tx,
            AuditEvent::system("image.adopt", format!("image:{}", self.image_id), outcome)
                .detail(detail),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(image.id = %self.image_id, state = %state, "image adopted");
        Ok(())
    }
}

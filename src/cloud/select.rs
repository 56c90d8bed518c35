//! The provider chosen at start (`KILN_PROVIDER`), behind the same contract.

use super::{
    CloudResult, Image, ImageQuery, LaunchOutcome, LaunchRequest, Page, Provider, Server,
    ServerFilter, Tags, aws, local,
};

/// The provider chosen at start (`KILN_PROVIDER`).
pub enum AnyProvider {
    Aws(aws::AwsProvider),
    Local(local::LocalProvider),
}

macro_rules! delegate {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyProvider::Aws($p) => $call,
            AnyProvider::Local($p) => $call,
        }
    };
}

impl Provider for AnyProvider {
    fn name(&self) -> &'static str {
        delegate!(self, p => p.name())
    }
    fn fleet(&self) -> &str {
        delegate!(self, p => p.fleet())
    }
    fn check_image_id(&self, id: &str) -> CloudResult<()> {
        delegate!(self, p => p.check_image_id(id))
    }
    fn check_server_id(&self, id: &str) -> CloudResult<()> {
        delegate!(self, p => p.check_server_id(id))
    }
    async fn list_images(
        &self,
        query: &ImageQuery,
        page: Option<String>,
    ) -> CloudResult<Page<Image>> {
        delegate!(self, p => p.list_images(query, page).await)
    }
    async fn get_image(&self, id: &str) -> CloudResult<Option<Image>> {
        delegate!(self, p => p.get_image(id).await)
    }
    async fn create_image(
        &self,
        server_id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> CloudResult<String> {
        delegate!(self, p => p.create_image(server_id, name, description, tags).await)
    }
    async fn deregister_image(&self, id: &str) -> CloudResult<()> {
        delegate!(self, p => p.deregister_image(id).await)
    }
    async fn register_image(
        &self,
        id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> CloudResult<()> {
        delegate!(self, p => p.register_image(id, name, description, tags).await)
    }
    async fn launch(&self, request: &LaunchRequest) -> CloudResult<LaunchOutcome> {
        delegate!(self, p => p.launch(request).await)
    }
    async fn describe_servers(
        &self,
        filter: &ServerFilter,
        page: Option<String>,
        page_size: u32,
    ) -> CloudResult<Page<Server>> {
        delegate!(self, p => p.describe_servers(filter, page, page_size).await)
    }
    async fn terminate(&self, ids: &[String]) -> CloudResult<()> {
        delegate!(self, p => p.terminate(ids).await)
    }
    async fn tag(&self, ids: &[String], tags: &Tags) -> CloudResult<()> {
        delegate!(self, p => p.tag(ids, tags).await)
    }
}

/// Builds the configured provider.
/// The aws provider as `kiln serve`'s settings describe it (`kiln doctor` builds it alone,
/// without a database).
pub async fn aws_from_settings(
    settings: &crate::config::Settings,
    registry: std::sync::Arc<crate::telemetry::prometheus::Registry>,
) -> anyhow::Result<aws::AwsProvider> {
    let aws = aws::AwsSettings {
        fleet: settings.fleet.clone(),
        endpoint: settings.ec2_endpoint.clone(),
        region: None,
        max_attempts: settings.ec2_max_attempts,
        initial_backoff: std::time::Duration::from_secs(1),
        call_timeout: std::time::Duration::from_secs(settings.ec2_timeout),
        static_credentials: None,
        pacing: aws::pacing::PacingSettings::parse(&settings.ec2_buckets)
            .map_err(|e| anyhow::anyhow!("KILN_EC2_BUCKETS: {e}"))?,
    };
    aws::AwsProvider::new(aws, registry).await
}

pub async fn from_settings(
    settings: &crate::config::Settings,
    pool: sqlx::PgPool,
    registry: std::sync::Arc<crate::telemetry::prometheus::Registry>,
) -> anyhow::Result<AnyProvider> {
    use crate::config::ProviderKind;
    use anyhow::Context;
    match settings.provider {
        ProviderKind::Aws => Ok(AnyProvider::Aws(
            aws_from_settings(settings, registry).await?,
        )),
        ProviderKind::Local => {
            let local = local::LocalSettings {
                fleet: settings.fleet.clone(),
                agent_exe: match &settings.agent_exe {
                    Some(exe) => exe.clone(),
                    None => std::env::current_exe()
                        .context("Failed to find the kiln binary for local agents")?,
                },
                log_dir: settings.local_log_dir(),
                terminate_grace: std::time::Duration::from_secs(settings.local_terminate_grace),
                agent_slots: settings.local_slots,
            };
            Ok(AnyProvider::Local(
                local::LocalProvider::new(pool, local).await?,
            ))
        }
    }
}

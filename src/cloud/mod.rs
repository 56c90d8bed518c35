//! The cloud contract: what Kiln needs from wherever its servers live, in Kiln's own words.
//!
//! Two providers implement [`Provider`]: `aws` (EC2 through aws-sdk-ec2, any EC2-compatible
//! endpoint) and `local` (servers are `kiln agent` processes on this machine, images are rows
//! in PostgreSQL). One contract test suite (`tests/api/cloud_contract.rs`) runs against both.
//!
//! Rules every provider keeps:
//! - Everything Kiln creates carries the tag `kiln:fleet`; launches also `kiln:launch-token`.
//! - A launch with a client token that already launched returns what it launched, never a
//!   second set — the provider looks for the token's tag first, it does not trust the
//!   endpoint's own idempotency.
//! - Input is validated before any call is made ([`validate_launch`] and each provider's id
//!   formats); errors are [`CloudError`]s that say whether to retry.

pub mod aws;
mod error;
pub mod local;
mod select;

use std::collections::BTreeMap;
use std::future::Future;

use time::OffsetDateTime;

pub use error::{CloudError, CloudResult, ErrorKind};
pub use select::{AnyProvider, aws_from_settings, from_settings};

pub const FLEET_TAG: &str = "kiln:fleet";
pub const LAUNCH_TOKEN_TAG: &str = "kiln:launch-token";

pub type Tags = BTreeMap<String, String>;

/// The states the provider reports are Kiln's own stored words.
pub use crate::domain::{ImageState, ServerState};

#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub description: String,
    pub state: ImageState,
    pub tags: Tags,
    pub created_at: Option<OffsetDateTime>,
    /// As EC2 names it (`x86_64`, `arm64`); None when the provider does not say.
    pub architecture: Option<String>,
}

/// The architecture, in EC2's words, of the agent this console hands to new servers: its own
/// binary (`/agent/v1/binary`). An image of another architecture cannot run it.
pub const AGENT_ARCHITECTURE: &str = match std::env::consts::ARCH.as_bytes() {
    b"aarch64" => "arm64",
    b"x86" => "i386",
    _ => std::env::consts::ARCH,
};

/// Which images to list. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct ImageQuery {
    /// Owners as EC2 names them (`self`, an account id); the local provider ignores them.
    pub owners: Vec<String>,
    /// Every (key, value) must match.
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub id: String,
    pub image_id: String,
    pub instance_type: String,
    pub state: ServerState,
    pub tags: Tags,
    pub launched_at: Option<OffsetDateTime>,
}

/// How a new server finds its console: EC2 passes it in user-data, the local provider on the
/// agent's command line.
#[derive(Debug, Clone)]
pub struct AgentBootstrap {
    pub console_url: String,
    pub enrollment_token: String,
}

#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub image_id: String,
    pub count: u32,
    pub instance_type: String,
    /// Tags besides `kiln:fleet` and `kiln:launch-token`, which the provider adds.
    pub tags: Tags,
    pub bootstrap: AgentBootstrap,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<String>,
    /// Identifies this launch across retries (sent as EC2's ClientToken, kept as a tag).
    pub client_token: String,
}

/// What a launch got. `servers.len() < requested` is a partial launch: the provider had less
/// capacity than asked; `shortfall` says why when the provider said.
#[derive(Debug, Clone)]
pub struct LaunchOutcome {
    pub requested: u32,
    pub servers: Vec<Server>,
    /// True when the servers were found by the launch token (an earlier try launched them).
    pub already_launched: bool,
    pub shortfall: Option<CloudError>,
}

/// Which servers to describe: every tag must match; empty `states` means all states.
#[derive(Debug, Clone, Default)]
pub struct ServerFilter {
    pub tags: Vec<(String, String)>,
    pub ids: Vec<String>,
    pub states: Vec<ServerState>,
}

impl ServerFilter {
    pub fn fleet(fleet: &str) -> Self {
        Self {
            tags: vec![(FLEET_TAG.to_owned(), fleet.to_owned())],
            ..Default::default()
        }
    }
}

/// One page of a listing; `next` continues it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The contract. Futures are `Send` so that background tasks can run them.
pub trait Provider: Send + Sync {
    /// `aws` or `local`.
    fn name(&self) -> &'static str;

    /// The fleet every resource is tagged with.
    fn fleet(&self) -> &str;

    /// Checks an image id's format; no call is made.
    fn check_image_id(&self, id: &str) -> CloudResult<()>;

    /// Checks a server id's format; no call is made.
    fn check_server_id(&self, id: &str) -> CloudResult<()>;

    fn list_images(
        &self,
        query: &ImageQuery,
        page: Option<String>,
    ) -> impl Future<Output = CloudResult<Page<Image>>> + Send;

    /// None when the provider does not know the image.
    fn get_image(&self, id: &str) -> impl Future<Output = CloudResult<Option<Image>>> + Send;

    /// Starts creating an image from a server; returns its id. Poll [`Provider::get_image`]
    /// until it leaves `pending`.
    fn create_image(
        &self,
        server_id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> impl Future<Output = CloudResult<String>> + Send;

    fn deregister_image(&self, id: &str) -> impl Future<Output = CloudResult<()>> + Send;

    /// Records a new image under a Kiln-chosen id (the local provider's "add an image"). EC2
    /// images are baked elsewhere and adopted by their id: the aws provider refuses this.
    fn register_image(
        &self,
        id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> impl Future<Output = CloudResult<()>> + Send;

    /// Launches `count` servers, or returns those an earlier try with the same client token
    /// launched. Validate with [`validate_launch`] first.
    fn launch(
        &self,
        request: &LaunchRequest,
    ) -> impl Future<Output = CloudResult<LaunchOutcome>> + Send;

    /// One page of servers; `page_size` is a hint (EC2 allows 5..=1000).
    fn describe_servers(
        &self,
        filter: &ServerFilter,
        page: Option<String>,
        page_size: u32,
    ) -> impl Future<Output = CloudResult<Page<Server>>> + Send;

    /// Terminates servers (many per call). Unknown or already terminated ids are not an error.
    fn terminate(&self, ids: &[String]) -> impl Future<Output = CloudResult<()>> + Send;

    /// Adds or replaces tags on servers or images.
    fn tag(&self, ids: &[String], tags: &Tags) -> impl Future<Output = CloudResult<()>> + Send;
}

/// The largest describe page EC2 allows; with it 1,000 servers take at most two calls.
pub const MAX_PAGE: u32 = 1000;

/// Every page of a describe.
pub async fn describe_all<P: Provider>(
    provider: &P,
    filter: &ServerFilter,
) -> CloudResult<Vec<Server>> {
    let mut all = Vec::new();
    let mut next = None;
    loop {
        let page = provider.describe_servers(filter, next, MAX_PAGE).await?;
        all.extend(page.items);
        match page.next {
            Some(token) if !token.is_empty() => next = Some(token),
            _ => return Ok(all),
        }
    }
}

/// The limits a launch is checked against before any call.
#[derive(Debug, Clone)]
pub struct LaunchLimits {
    /// KILN_MAX_SERVERS: no single launch may exceed it.
    pub max_servers: u32,
    /// KILN_INSTANCE_TYPES.
    pub instance_types: Vec<String>,
}

impl LaunchLimits {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        LaunchLimits {
            max_servers: settings.max_servers,
            instance_types: settings.instance_types.clone(),
        }
    }
}

/// Validates a launch request against the limits and the provider's id formats.
pub fn validate_launch<P: Provider>(
    provider: &P,
    limits: &LaunchLimits,
    request: &LaunchRequest,
) -> CloudResult<()> {
    provider.check_image_id(&request.image_id)?;
    if request.count == 0 {
        return Err(CloudError::invalid("Launch at least one server."));
    }
    if request.count > limits.max_servers {
        return Err(CloudError::invalid(format!(
            "A launch of {} servers exceeds the fleet's cap of {} (KILN_MAX_SERVERS).",
            request.count, limits.max_servers
        )));
    }
    if !limits
        .instance_types
        .iter()
        .any(|t| t == &request.instance_type)
    {
        return Err(CloudError::invalid(format!(
            "{:?} is not an offered instance type; choose one of {} (KILN_INSTANCE_TYPES).",
            request.instance_type,
            limits.instance_types.join(", ")
        )));
    }
    let token = &request.client_token;
    // 56 leaves room for the "-partial" suffix within EC2's 64-character ClientToken.
    if token.is_empty()
        || token.len() > 56
        || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(CloudError::invalid(
            "A launch token is 1 to 56 characters of letters, digits and '-'.",
        ));
    }
    Ok(())
}

/// True for `prefix-` followed by 8 or 17 lowercase hex digits (EC2's id formats).
pub fn is_ec2_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_id_formats() {
        assert!(is_ec2_id("ami-1e749f67", "ami"));
        assert!(is_ec2_id("i-0123456789abcdef0", "i"));
        assert!(!is_ec2_id("ami-XYZ", "ami"));
        assert!(!is_ec2_id("ami-1E749F67", "ami"));
        assert!(!is_ec2_id("i-0123", "i"));
        assert!(!is_ec2_id("ami-local-0123abcd", "ami"));
    }
}

//! The aws provider: EC2 through aws-sdk-ec2, against AWS itself or any EC2-compatible
//! endpoint (`KILN_EC2_ENDPOINT`: moto, LocalStack).
//!
//! Architecture invariant: this module (and its children) is the only code that imports
//! aws-sdk-ec2 / aws-config.
//!
//! - Retries: the SDK's standard mode (exponential backoff with jitter, a retry quota) for
//!   every call but RunInstances, with KILN_EC2_MAX_ATTEMPTS attempts and per-attempt and
//!   per-call timeouts. RunInstances is retried by `launch` itself, which looks for the
//!   launch token's tag before every try: an endpoint that ignores ClientToken (moto), or a
//!   response lost after EC2 acted, must not launch a second set.
//! - Describes filter by tag and ask for the largest page EC2 allows (1,000), so reconciling
//!   1,000 instances takes at most two DescribeInstances calls (EC2 counts MaxResults in
//!   instances; the second call only when it hands back a NextToken).

pub mod calls;
mod errors;
pub mod pacing;
pub mod policy;

use pacing::Class;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceStateName, InstanceType,
    ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use calls::{CALLS, SECONDS};

use super::{
    CloudError, CloudResult, ErrorKind, FLEET_TAG, Image, ImageQuery, ImageState, LAUNCH_TOKEN_TAG,
    LaunchOutcome, LaunchRequest, Page, Provider, Server, ServerFilter, ServerState, Tags,
    is_ec2_id,
};
use crate::telemetry::prometheus::Registry;

#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub fleet: String,
    /// An EC2-compatible endpoint; None for AWS itself.
    pub endpoint: Option<String>,
    /// Overrides the region of the AWS configuration chain.
    pub region: Option<String>,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The first retry's backoff; later ones grow exponentially (with jitter).
    pub initial_backoff: Duration,
    /// A whole call, retries included.
    pub call_timeout: Duration,
    /// Static credentials instead of the chain (tests against an emulator).
    pub static_credentials: Option<(String, String)>,
    /// The client-side token buckets the process's calls wait on.
    pub pacing: pacing::PacingSettings,
}

pub struct AwsProvider {
    client: Client,
    /// Boxed: four buckets would make the provider enum lopsided.
    pacing: Box<pacing::Pacing>,
    fleet: String,
    max_attempts: u32,
    initial_backoff: Duration,
}

impl AwsProvider {
    pub async fn new(settings: AwsSettings, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let retry = RetryConfig::standard()
            .with_max_attempts(settings.max_attempts.max(1))
            .with_initial_backoff(settings.initial_backoff);
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(settings.call_timeout)
            .operation_attempt_timeout(settings.call_timeout.min(Duration::from_secs(30)))
            .connect_timeout(Duration::from_secs(5))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((key, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                key,
                secret,
                None,
                None,
                "kiln-static",
            ));
        }
        let sdk = loader.load().await;
        let mut config =
            aws_sdk_ec2::config::Builder::from(&sdk).interceptor(calls::CallCounter::new(registry));
        if sdk.region().is_none() {
            if settings.endpoint.is_none() {
                anyhow::bail!(
                    "No AWS region is configured: set AWS_REGION (or a profile's region)."
                );
            }
            // An emulator does not care which region; the SDK needs one to sign.
            config = config.region(Region::new("us-east-1"));
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            pacing: Box::new(pacing::Pacing::new(settings.pacing)),
            fleet: settings.fleet,
            max_attempts: settings.max_attempts.max(1),
            initial_backoff: settings.initial_backoff,
        })
    }

    /// Checks that EC2 answers and accepts the credentials (a DryRun DescribeInstances: EC2
    /// says "DryRunOperation" when the call would have succeeded).
    pub async fn check_access(&self) -> CloudResult<()> {
        self.pacing.take(Class::Describe).await;
        let answer = self.client.describe_instances().dry_run(true).send().await;
        dry_run_said("DescribeInstances", answer)
    }

    /// `kiln doctor`'s permission checks after [`Self::check_access`]: the other actions of
    /// the policy that EC2 can check with a DryRun without touching a resource —
    /// DescribeImages, and RunInstances of `image` (the current one) when there is one. Terminating, imaging,
    /// deregistering and tagging need a real resource to be checked, so they are not.
    pub async fn dry_runs(
        &self,
        image: Option<&str>,
        instance_type: &str,
    ) -> Vec<(&'static str, CloudResult<()>)> {
        let mut checks = Vec::new();
        self.pacing.take(Class::Describe).await;
        let images = self.client.describe_images().dry_run(true).send().await;
        checks.push(("DescribeImages", dry_run_said("DescribeImages", images)));
        if let Some(image) = image {
            self.pacing.take(Class::Run).await;
            let run = self
                .client
                .run_instances()
                .dry_run(true)
                .image_id(image)
                .instance_type(InstanceType::from(instance_type))
                .min_count(1)
                .max_count(1)
                .send()
                .await;
            checks.push(("RunInstances", dry_run_said("RunInstances", run)));
        }
        checks
    }

    fn kiln_tags(&self, extra: &Tags, launch_token: Option<&str>) -> Vec<Tag> {
        let mut tags = extra.clone();
        tags.insert(FLEET_TAG.to_owned(), self.fleet.clone());
        if let Some(token) = launch_token {
            tags.insert(LAUNCH_TOKEN_TAG.to_owned(), token.to_owned());
        }
        tags.into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    async fn launched_with(&self, token: &str) -> CloudResult<Vec<Server>> {
        let filter = ServerFilter {
            tags: vec![
                (FLEET_TAG.to_owned(), self.fleet.clone()),
                (LAUNCH_TOKEN_TAG.to_owned(), token.to_owned()),
            ],
            ..Default::default()
        };
        super::describe_all(self, &filter).await
    }

    /// One RunInstances call for `min..=request.count` servers under `client_token`.
    async fn run_instances(
        &self,
        request: &LaunchRequest,
        min: u32,
        client_token: &str,
    ) -> CloudResult<Vec<Server>> {
        let mut call = self
            .client
            .run_instances()
            .image_id(&request.image_id)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(min as i32)
            .max_count(request.count as i32)
            .client_token(client_token)
            .user_data(user_data(request))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(
                        self.kiln_tags(&request.tags, Some(&request.client_token)),
                    ))
                    .build(),
            );
        if let Some(subnet) = &request.subnet_id {
            call = call.subnet_id(subnet);
        }
        for group in &request.security_group_ids {
            call = call.security_group_ids(group);
        }
        if let Some(key) = &request.key_name {
            call = call.key_name(key);
        }
        if let Some(profile) = &request.iam_instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder()
                    .arn(profile)
                    .build()
            } else {
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build()
            };
            call = call.iam_instance_profile(spec);
        }
        // No SDK retries here: `launch` retries, after looking for the token's instances.
        self.pacing.take(Class::Run).await;
        let output = call
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| errors::from_sdk("RunInstances", e))?;
        Ok(output.instances().iter().map(server_from).collect())
    }

    async fn terminate_chunk(&self, ids: &[String]) -> CloudResult<()> {
        self.pacing.take(Class::Terminate).await;
        match self
            .client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = errors::from_sdk("TerminateInstances", e);
                // One unknown id fails the whole call; terminate the others one by one.
                if err.kind == ErrorKind::NotFound && ids.len() > 1 {
                    for id in ids {
                        Box::pin(self.terminate_chunk(std::slice::from_ref(id))).await?;
                    }
                    Ok(())
                } else if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn fleet(&self) -> &str {
        &self.fleet
    }

    fn check_image_id(&self, id: &str) -> CloudResult<()> {
        if is_ec2_id(id, "ami") {
            Ok(())
        } else {
            Err(CloudError::invalid(format!(
                "{id:?} is not an EC2 image id (ami- followed by 8 or 17 hex digits)."
            )))
        }
    }

    fn check_server_id(&self, id: &str) -> CloudResult<()> {
        if is_ec2_id(id, "i") {
            Ok(())
        } else {
            Err(CloudError::invalid(format!(
                "{id:?} is not an EC2 instance id (i- followed by 8 or 17 hex digits)."
            )))
        }
    }

    async fn list_images(
        &self,
        query: &ImageQuery,
        page: Option<String>,
    ) -> CloudResult<Page<Image>> {
        let mut call = self
            .client
            .describe_images()
            .set_next_token(page)
            .max_results(1000);
        for owner in &query.owners {
            call = call.owners(owner);
        }
        for (k, v) in &query.tags {
            call = call.filters(Filter::builder().name(format!("tag:{k}")).values(v).build());
        }
        self.pacing.take(Class::Describe).await;
        let output = call
            .send()
            .await
            .map_err(|e| errors::from_sdk("DescribeImages", e))?;
        Ok(Page {
            items: output.images().iter().map(image_from).collect(),
            next: output
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    async fn get_image(&self, id: &str) -> CloudResult<Option<Image>> {
        self.check_image_id(id)?;
        self.pacing.take(Class::Describe).await;
        match self.client.describe_images().image_ids(id).send().await {
            Ok(output) => Ok(output.images().first().map(image_from)),
            Err(e) => {
                let err = errors::from_sdk("DescribeImages", e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn create_image(
        &self,
        server_id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> CloudResult<String> {
        self.check_server_id(server_id)?;
        self.pacing.take(Class::Mutate).await;
        let output = self
            .client
            .create_image()
            .instance_id(server_id)
            .name(name)
            .description(description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(self.kiln_tags(tags, None)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| errors::from_sdk("CreateImage", e))?;
        output.image_id().map(str::to_owned).ok_or_else(|| {
            CloudError::new(ErrorKind::Other, "EC2 CreateImage returned no image id")
        })
    }

    async fn deregister_image(&self, id: &str) -> CloudResult<()> {
        self.check_image_id(id)?;
        self.pacing.take(Class::Mutate).await;
        match self.client.deregister_image().image_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = errors::from_sdk("DeregisterImage", e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// EC2 has no "register an image from nothing": AMIs come from a bake or from elsewhere.
    async fn register_image(
        &self,
        _id: &str,
        _name: &str,
        _description: &str,
        _tags: &Tags,
    ) -> CloudResult<()> {
        Err(CloudError::invalid(
            "On EC2 an image is baked elsewhere (or by a bake) and added by its AMI id.",
        ))
    }

    /// All or nothing first (MinCount = MaxCount = N). When EC2 has not the capacity for all,
    /// a second call takes what there is (MinCount 1) and the outcome says what is missing.
    /// Each call is preceded by a look for the launch token's instances.
    async fn launch(&self, request: &LaunchRequest) -> CloudResult<LaunchOutcome> {
        self.check_image_id(&request.image_id)?;
        let mut attempt = 0;
        let mut partial = None;
        loop {
            attempt += 1;
            let existing = self.launched_with(&request.client_token).await?;
            if !existing.is_empty() {
                return Ok(outcome(request.count, existing, true, partial));
            }
            let result = match &partial {
                None => {
                    self.run_instances(request, request.count, &request.client_token)
                        .await
                }
                // A different ClientToken: EC2 would call the same one with other counts an
                // idempotency mismatch. The instances still carry the launch token's tag.
                Some(_) => {
                    self.run_instances(request, 1, &format!("{}-partial", request.client_token))
                        .await
                }
            };
            match result {
                Ok(servers) => return Ok(outcome(request.count, servers, false, partial)),
                Err(e)
                    if e.kind == ErrorKind::InsufficientCapacity
                        && partial.is_none()
                        && request.count > 1 =>
                {
                    tracing::warn!(error = %e, "not enough capacity for the whole launch; taking what there is");
                    partial = Some(e);
                }
                Err(e)
                    if e.is_retryable()
                        && e.kind != ErrorKind::InsufficientCapacity
                        && attempt < self.max_attempts =>
                {
                    let backoff = self.initial_backoff * 2u32.saturating_pow(attempt - 1);
                    tracing::warn!(error = %e, attempt, "RunInstances failed; looking for the launch token before retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn describe_servers(
        &self,
        filter: &ServerFilter,
        page: Option<String>,
        page_size: u32,
    ) -> CloudResult<Page<Server>> {
        let mut call = self.client.describe_instances().set_next_token(page);
        if filter.ids.is_empty() {
            // EC2 refuses MaxResults together with instance ids.
            call = call.max_results(page_size.clamp(5, 1000) as i32);
        } else {
            call = call.set_instance_ids(Some(filter.ids.clone()));
        }
        for (k, v) in &filter.tags {
            call = call.filters(Filter::builder().name(format!("tag:{k}")).values(v).build());
        }
        if !filter.states.is_empty() {
            let states: Vec<String> = filter
                .states
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            call = call.filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(states))
                    .build(),
            );
        }
        self.pacing.take(Class::Describe).await;
        let output = call
            .send()
            .await
            .map_err(|e| errors::from_sdk("DescribeInstances", e))?;
        let items = output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(server_from)
            .collect();
        Ok(Page {
            items,
            next: output
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    async fn terminate(&self, ids: &[String]) -> CloudResult<()> {
        for id in ids {
            self.check_server_id(id)?;
        }
        for chunk in ids.chunks(1000) {
            self.terminate_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn tag(&self, ids: &[String], tags: &Tags) -> CloudResult<()> {
        if ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        for chunk in ids.chunks(1000) {
            self.pacing.take(Class::Mutate).await;
            self.client
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| errors::from_sdk("CreateTags", e))?;
        }
        Ok(())
    }
}

fn outcome(
    requested: u32,
    servers: Vec<Server>,
    already_launched: bool,
    capacity: Option<CloudError>,
) -> LaunchOutcome {
    let shortfall = (servers.len() < requested as usize).then(|| {
        let why = capacity.map(|e| format!(" ({e})")).unwrap_or_default();
        CloudError::new(
            ErrorKind::InsufficientCapacity,
            format!(
                "EC2 launched {} of {} servers{why}.",
                servers.len(),
                requested
            ),
        )
    });
    LaunchOutcome {
        requested,
        servers,
        already_launched,
        shortfall,
    }
}

/// The boot script: fetch the agent from the console when the image does not carry it, then
/// run it with this launch's enrollment token.
/// The user data of a launch: a shell script that fetches the agent from the console unless
/// the image has it (baked in, on PATH), then runs it — as a systemd service where systemd
/// runs (restarted if it dies; its log in the journal and /var/log/kiln-agent.log), else in
/// the background with nohup. The enrollment token is the launch's, valid 24 hours; a
/// restarted agent carries on with the credentials it kept (`agent::resume_or_register`).
fn user_data(request: &LaunchRequest) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let url = quote(&request.bootstrap.console_url);
    let token = quote(&request.bootstrap.enrollment_token);
    let script = format!(
        "#!/bin/sh\n\
         # Written by Kiln: start the agent, which registers this server with the console.\n\
         set -eu\n\
         if ! command -v kiln >/dev/null 2>&1; then\n\
         \x20 curl -fsS --retry 10 --retry-connrefused {url}/agent/v1/binary -o /usr/local/bin/kiln\n\
         \x20 chmod 0755 /usr/local/bin/kiln\n\
         fi\n\
         KILN=$(command -v kiln)\n\
         if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then\n\
         \x20 cat >/etc/systemd/system/kiln-agent.service <<UNIT\n\
         [Unit]\n\
         Description=Kiln agent (joins the work queue of {url})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         [Service]\n\
         ExecStart=$KILN agent --url {url} --token {token}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         StandardOutput=append:/var/log/kiln-agent.log\n\
         StandardError=append:/var/log/kiln-agent.log\n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         UNIT\n\
         \x20 systemctl daemon-reload\n\
         \x20 systemctl enable --now kiln-agent.service\n\
         else\n\
         \x20 nohup \"$KILN\" agent --url {url} --token {token} >>/var/log/kiln-agent.log 2>&1 &\n\
         fi\n"
    );
    base64::engine::general_purpose::STANDARD.encode(script)
}

/// A DryRun's answer: "DryRunOperation" means the call would have succeeded; an endpoint
/// that ignores DryRun (an emulator) and just answers means the same.
fn dry_run_said<O, E, R>(
    action: &str,
    result: Result<O, aws_sdk_ec2::error::SdkError<E, R>>,
) -> CloudResult<()>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("DryRunOperation") => Ok(()),
        Err(e) => Err(errors::from_sdk(action, e)),
    }
}

fn tags_of(tags: &[Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn server_from(i: &Instance) -> Server {
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => ServerState::Pending,
        Some(InstanceStateName::Running) => ServerState::Running,
        Some(InstanceStateName::Stopping) => ServerState::Stopping,
        Some(InstanceStateName::Stopped) => ServerState::Stopped,
        Some(InstanceStateName::ShuttingDown) => ServerState::ShuttingDown,
        Some(InstanceStateName::Terminated) => ServerState::Terminated,
        _ => ServerState::Pending,
    };
    Server {
        id: i.instance_id().unwrap_or_default().to_owned(),
        image_id: i.image_id().unwrap_or_default().to_owned(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        state,
        tags: tags_of(i.tags()),
        launched_at: i
            .launch_time()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t.secs()).ok()),
    }
}

fn image_from(i: &aws_sdk_ec2::types::Image) -> Image {
    use aws_sdk_ec2::types::ImageState as S;
    let state = match i.state() {
        Some(S::Available) => ImageState::Available,
        Some(S::Pending) | Some(S::Transient) => ImageState::Pending,
        Some(S::Deregistered) => ImageState::Deregistered,
        Some(_) => ImageState::Failed,
        None => ImageState::Pending,
    };
    Image {
        id: i.image_id().unwrap_or_default().to_owned(),
        name: i.name().unwrap_or_default().to_owned(),
        description: i.description().unwrap_or_default().to_owned(),
        state,
        tags: tags_of(i.tags()),
        created_at: i
            .creation_date()
            .and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok()),
        architecture: i.architecture().map(|a| a.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::AgentBootstrap;

    /// The user data of a launch to https://kiln.example.com, as the instance reads it.
    fn decoded_user_data() -> String {
        let request = LaunchRequest {
            image_id: "ami-1e749f67".into(),
            count: 1,
            instance_type: "t3.micro".into(),
            tags: Tags::new(),
            bootstrap: AgentBootstrap {
                console_url: "https://kiln.example.com".into(),
                enrollment_token: "kiln_enroll_abc".into(),
            },
            subnet_id: None,
            security_group_ids: vec![],
            key_name: None,
            iam_instance_profile: None,
            client_token: "t-1".into(),
        };
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(user_data(&request))
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn user_data_starts_the_agent_with_the_launch_token() {
        let script = decoded_user_data();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("curl -fsS --retry 10 --retry-connrefused 'https://kiln.example.com'/agent/v1/binary"), "{script}");
        assert!(
            script.contains(
                "\"$KILN\" agent --url 'https://kiln.example.com' --token 'kiln_enroll_abc'"
            ),
            "{script}"
        );
        assert!(
            script.contains("ExecStart=$KILN agent --url 'https://kiln.example.com' --token 'kiln_enroll_abc'\nRestart=on-failure"),
            "{script}"
        );
    }

    /// The user data is a script `sh` parses, and the unit it writes where systemd runs
    /// restarts the agent when it fails. (Not run here: it writes into /etc.)
    #[test]
    fn user_data_parses_and_its_unit_restarts_the_agent() {
        let script = decoded_user_data();
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The unit as systemd would read it: the here-document expands $KILN only.
        let unit_start = script.find("[Unit]").unwrap();
        let unit_end = script.find("\nUNIT\n").unwrap();
        let unit = &script[unit_start..unit_end];
        for line in [
            "[Service]",
            "Restart=on-failure",
            "WantedBy=multi-user.target",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "{line} missing from {unit}"
            );
        }
    }
}

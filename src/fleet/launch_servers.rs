//! LaunchServers: asks the provider for a launch's servers and records them. Safe to run
//! again: the provider finds what the launch token already launched (never a second set).

use serde::{Deserialize, Serialize};

use crate::cloud::{AgentBootstrap, LaunchRequest, Provider, Tags};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::LaunchState;
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct LaunchServers {
    pub launch_id: i64,
}

impl Task for LaunchServers {
    const KIND: &'static str = "launch_servers";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let cloud = ctx.cloud()?;
        let settings = ctx.settings()?;
        let Some(launch) = crate::db::servers::find_launch(&ctx.pool, self.launch_id).await? else {
            return Err(TaskError::Fatal(anyhow::anyhow!(
                "launch {} does not exist",
                self.launch_id
            )));
        };
        if !launch.state.is_unsettled() {
            return Ok(());
        }
        crate::db::servers::set_launch_state(&ctx.pool, launch.id, LaunchState::Running, "")
            .await?;

        // The agents' enrollment token: one per try, shown only to the servers (user-data or
        // the local agent's command line). A retry that finds the launched servers does not
        // use it; they enrolled with the first one.
        let enrollment =
            crate::auth::token::Secret::generate(crate::auth::token::ENROLLMENT_PREFIX);
        {
            let mut conn = ctx.pool.acquire().await?;
            crate::db::tokens::create_enrollment(&mut conn, &enrollment.hash(), None, 24 * 3600)
                .await?;
        }
        let request = LaunchRequest {
            image_id: launch.image_id.clone(),
            count: launch.count as u32,
            instance_type: launch.instance_type.clone(),
            tags: Tags::from([("kiln:purpose".to_owned(), launch.purpose.clone())]),
            bootstrap: AgentBootstrap {
                console_url: settings.public_url(),
                enrollment_token: enrollment.expose().to_owned(),
            },
            subnet_id: None,
            security_group_ids: vec![],
            key_name: None,
            iam_instance_profile: None,
            client_token: launch.token.clone(),
        };
        let target = format!("launch:{}", launch.id);
        match cloud.launch(&request).await {
            Ok(outcome) => {
                let mut tx = ctx.pool.begin().await?;
                for server in &outcome.servers {
                    crate::db::servers::record_launched(
                        &mut tx,
                        server,
                        launch.id,
                        &launch.requested_by,
                        &launch.purpose,
                    )
                    .await?;
                }
                let (state, error) = match &outcome.shortfall {
                    None => (LaunchState::Succeeded, String::new()),
                    Some(short) => (LaunchState::Partial, short.message.clone()),
                };
                crate::db::servers::set_launch_state(&mut *tx, launch.id, state, &error).await?;
                let ids: Vec<&str> = outcome.servers.iter().map(|s| s.id.as_str()).collect();
                audit::record(
                    &mut *tx,
                    AuditEvent::system(
                        "servers.launched",
                        target,
                        if state == LaunchState::Succeeded {
                            Outcome::Ok
                        } else {
                            Outcome::Failed
                        },
                    )
                    .detail(format!(
                        "{} of {} from {}: {}{}",
                        ids.len(),
                        launch.count,
                        launch.image_id,
                        ids.join(", "),
                        if error.is_empty() {
                            String::new()
                        } else {
                            format!(" — {error}")
                        }
                    )),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }
            Err(e)
                if e.is_retryable() && e.kind != crate::cloud::ErrorKind::InsufficientCapacity =>
            {
                Err(TaskError::Retryable(e.into()))
            }
            Err(e) => {
                let mut tx = ctx.pool.begin().await?;
                crate::db::servers::set_launch_state(
                    &mut *tx,
                    launch.id,
                    LaunchState::Failed,
                    &e.message,
                )
                .await?;
                audit::record(
                    &mut *tx,
                    AuditEvent::system("servers.launched", target, Outcome::Failed)
                        .detail(e.message.clone()),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

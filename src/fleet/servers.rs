//! Launching servers: validated, recorded as a launch, and handed to the LaunchServers task
//! in one transaction.

use std::sync::Arc;

use crate::auth::Principal;
use crate::cloud::{AgentBootstrap, AnyProvider, LaunchRequest, Tags, validate_launch};
use crate::config::Settings;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::servers::LaunchRow;
use crate::error::Error;
use crate::fleet::launch_servers::LaunchServers;

/// A launch as asked for (the API's body; the Servers page's form is parsed into one).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Launch {
    pub image_id: String,
    pub count: u32,
    #[serde(default)]
    pub instance_type: Option<String>,
}

pub async fn launch(
    pool: &sqlx::PgPool,
    cloud: &Arc<AnyProvider>,
    settings: &Settings,
    principal: &Principal,
    source_ip: Option<String>,
    input: &Launch,
) -> Result<LaunchRow, Error> {
    let image_id = input.image_id.trim().to_owned();
    let count = input.count;
    if count < 1 {
        return Err(Error::Invalid("count: launch at least one server.".into()));
    }
    let instance_type = input
        .instance_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| settings.instance_types[0].clone());
    let token = format!("l-{}", uuid::Uuid::new_v4().simple());
    // The same checks the provider makes, before anything is written: id format, count,
    // instance type.
    let request = LaunchRequest {
        image_id: image_id.clone(),
        count,
        instance_type: instance_type.clone(),
        tags: Tags::new(),
        bootstrap: AgentBootstrap {
            console_url: String::new(),
            enrollment_token: String::new(),
        },
        subnet_id: None,
        security_group_ids: vec![],
        key_name: None,
        iam_instance_profile: None,
        client_token: token.clone(),
    };
    validate_launch(
        cloud.as_ref(),
        &crate::cloud::LaunchLimits::from_settings(settings),
        &request,
    )
    .map_err(|e| Error::Invalid(e.message))?;

    let mut tx = pool.begin().await?;
    let image = crate::db::images::find(&mut *tx, &image_id)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!("There is no image {image_id} in the catalogue."))
        })?;
    if image.state != crate::domain::ImageState::Available {
        return Err(Error::Conflict(format!(
            "Image {image_id} is {}; only available images can be launched.",
            image.state
        )));
    }
    crate::fleet::images::runs_our_agent(&image)?;
    // Launches are counted against the cap one at a time, including those not yet fulfilled.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.launch'))")
        .execute(&mut *tx)
        .await?;
    let live = crate::db::servers::live_count(&mut *tx).await?;
    let pending: i64 = sqlx::query_scalar("SELECT COALESCE(sum(count), 0)::BIGINT FROM launches WHERE state IN ('pending', 'running')")
        .fetch_one(&mut *tx)
        .await?;
    let after = live + pending + i64::from(count);
    if after > i64::from(settings.max_servers) {
        return Err(Error::Conflict(format!(
            "Launching {count} would make the fleet {after} servers, over its cap of {} (KILN_MAX_SERVERS).",
            settings.max_servers
        )));
    }
    let launch = crate::db::servers::insert_launch(
        &mut tx,
        &token,
        &image_id,
        count as i32,
        &instance_type,
        &principal.name,
    )
    .await?;
    crate::tasks::enqueue(
        &mut tx,
        &LaunchServers {
            launch_id: launch.id,
        },
        None,
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "servers.launch",
            format!("launch:{}", launch.id),
            Outcome::Ok,
        )
        .detail(format!("{count} × {instance_type} from {image_id}"))
        .from_ip(source_ip),
    )
    .await?;
    tx.commit().await?;
    Ok(launch)
}

/// The traffic guard: while autoscaling is on, a disable or terminate that would leave fewer
/// enabled running workers than its minimum is refused, unless confirmed again
/// (`below_minimum`); then the audit says so. Returns that note when it applies.
async fn traffic_guard(
    conn: &mut sqlx::PgConnection,
    ids: &[String],
    action: Action,
    below_minimum: bool,
) -> Result<Option<String>, Error> {
    if action == Action::Enable {
        return Ok(None);
    }
    let scaling = crate::db::scaling::settings(&mut *conn).await?;
    if !scaling.enabled {
        return Ok(None);
    }
    let (serving, chosen): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE id = ANY($1)) FROM servers
         WHERE purpose = 'worker' AND mode = 'enabled' AND state = 'running'",
    )
    .bind(ids)
    .fetch_one(&mut *conn)
    .await?;
    let after = serving - chosen;
    let min = i64::from(scaling.min);
    if chosen == 0 || after >= min {
        return Ok(None);
    }
    if !below_minimum {
        return Err(Error::Conflict(format!(
            "This would leave {after} enabled running worker{}, below the autoscaler's minimum of {min}. Confirm again to go below it (below_minimum).",
            if after == 1 { "" } else { "s" }
        )));
    }
    Ok(Some(format!(
        "confirmed below the autoscaler's minimum of {min} ({after} left)"
    )))
}

/// What an operator does to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Disable,
    Enable,
    Terminate,
    ForceTerminate,
}

impl Action {
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "disable" => Ok(Action::Disable),
            "enable" => Ok(Action::Enable),
            "terminate" => Ok(Action::Terminate),
            "force_terminate" => Ok(Action::ForceTerminate),
            other => Err(Error::Invalid(format!(
                "{other:?} is not a server action; use disable, enable, terminate or force_terminate."
            ))),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Disable => "server.disable",
            Action::Enable => "server.enable",
            Action::Terminate => "server.terminate",
            Action::ForceTerminate => "server.force_terminate",
        }
    }
}

/// What an action did: took effect now, was already in effect, or was queued (terminate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Done,
    AlreadyDone,
    Queued,
}

/// Applies `action` to each server, all or nothing: if any server refuses it (unknown,
/// terminated), nothing changes and the error names it.
pub async fn act(
    pool: &sqlx::PgPool,
    principal: &Principal,
    source_ip: Option<String>,
    ids: &[String],
    action: Action,
    drain_timeout: std::time::Duration,
    below_minimum: bool,
) -> Result<Vec<Effect>, Error> {
    let drain_until =
        time::OffsetDateTime::now_utc().unix_timestamp() + drain_timeout.as_secs() as i64;
    if ids.is_empty() {
        return Err(Error::Invalid("Select at least one server.".into()));
    }
    if ids.len() > 5000 {
        return Err(Error::Invalid(
            "Act on at most 5,000 servers at once.".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    let guard = traffic_guard(&mut tx, ids, action, below_minimum).await?;
    let mut effects = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT state, mode FROM servers WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, mode)) = row else {
            return Err(Error::NotFound(format!("There is no server {id}.")));
        };
        if state == "terminated" {
            if matches!(action, Action::Terminate | Action::ForceTerminate) {
                effects.push(Effect::AlreadyDone);
                continue;
            }
            return Err(Error::Conflict(format!(
                "Server {id} is terminated; it cannot be {}d.",
                &action.verb()[7..]
            )));
        }
        let effect = match action {
            Action::Disable | Action::Enable => {
                let want = if action == Action::Disable {
                    "disabled"
                } else {
                    "enabled"
                };
                if mode == want {
                    Effect::AlreadyDone
                } else {
                    sqlx::query("UPDATE servers SET mode = $2, updated_at = now() WHERE id = $1")
                        .bind(id)
                        .bind(want)
                        .execute(&mut *tx)
                        .await?;
                    Effect::Done
                }
            }
            Action::Terminate | Action::ForceTerminate => {
                use crate::fleet::terminate_server::{Requested, request};
                let force = action == Action::ForceTerminate;
                match request(&mut tx, id, force, Some(drain_until)).await? {
                    Requested::Queued | Requested::Escalated => Effect::Queued,
                    Requested::AlreadyPending => Effect::AlreadyDone,
                }
            }
        };
        audit::record(
            &mut *tx,
            AuditEvent::by(
                principal,
                action.verb(),
                format!("server:{id}"),
                Outcome::Ok,
            )
            .detail(format!(
                "{}{}",
                match effect {
                    Effect::Done => "",
                    Effect::AlreadyDone => "already in effect",
                    Effect::Queued => "queued",
                },
                guard
                    .as_deref()
                    .map(|g| format!(" — {g}"))
                    .unwrap_or_default()
            ))
            .from_ip(source_ip.clone()),
        )
        .await?;
        effects.push(effect);
    }
    tx.commit().await?;
    Ok(effects)
}

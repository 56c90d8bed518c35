//! The work queue's actions as users take them (enqueue, cancel, retry), validated and
//! audited in one transaction each, plus the machinery agents rely on: wake-ups for
//! long-polling claims and the lease sweeper that requeues the jobs of dead servers.
//! The SQL lives in `db::jobs`; the agents' HTTP side in `web::agent_api`.

pub mod sweeper;
pub mod wakeups;

use sqlx::PgPool;

use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::jobs::{JobRow, Labels, NewJob};
use crate::domain::JobState;
use crate::error::Error;

pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const MAX_LABELS: usize = 50;
pub const MAX_TIMEOUT_S: i64 = 7 * 24 * 3600;
pub const MAX_RETRIES: i64 = 100;

/// An enqueue request, as the form and `POST /api/v1/jobs` send it.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Enqueue {
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub labels: Labels,
    pub timeout_s: Option<i64>,
    pub retries: Option<i64>,
}

/// Checks an enqueue request; every message names what was wrong.
pub fn validate(input: &Enqueue, default_timeout_s: u64) -> Result<(i32, i32), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if input.command.trim().is_empty() {
        return bad("command is required: the shell command the job runs.".into());
    }
    if input.command.len() > MAX_COMMAND_BYTES {
        return bad(format!(
            "command is {} bytes; at most {MAX_COMMAND_BYTES} are allowed.",
            input.command.len()
        ));
    }
    if input.command.contains('\0') {
        return bad("command contains a NUL byte.".into());
    }
    if input.labels.len() > MAX_LABELS {
        return bad(format!("at most {MAX_LABELS} labels are allowed."));
    }
    for (k, v) in &input.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c));
        if !key_ok {
            return bad(format!(
                "label key {k:?} must be 1 to 64 characters of letters, digits and . _ - : /"
            ));
        }
        if v.len() > 256 || v.contains('\0') {
            return bad(format!("label {k}'s value must be at most 256 characters."));
        }
    }
    let timeout = input.timeout_s.unwrap_or(default_timeout_s as i64);
    if !(1..=MAX_TIMEOUT_S).contains(&timeout) {
        return bad(format!(
            "timeout_s must be between 1 and {MAX_TIMEOUT_S} seconds, not {timeout}."
        ));
    }
    let retries = input.retries.unwrap_or(0);
    if !(0..=MAX_RETRIES).contains(&retries) {
        return bad(format!(
            "retries must be between 0 and {MAX_RETRIES}, not {retries}."
        ));
    }
    Ok((timeout as i32, retries as i32))
}

pub async fn enqueue(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    input: &Enqueue,
    default_timeout_s: u64,
) -> Result<JobRow, Error> {
    let (timeout_s, retries) = validate(input, default_timeout_s)?;
    let mut tx = pool.begin().await?;
    let job = crate::db::jobs::insert(
        &mut tx,
        &NewJob {
            command: &input.command,
            labels: &input.labels,
            timeout_s,
            retries,
            pinned_server_id: None,
            enqueued_by: &principal.name,
        },
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "job.enqueue",
            format!("job:{}", job.id),
            Outcome::Ok,
        )
        .detail(format!(
            "timeout {timeout_s} s, retries {retries}{}",
            if input.labels.is_empty() {
                String::new()
            } else {
                format!(
                    ", labels {}",
                    input
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
        ))
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(job)
}

/// What a cancel or retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    AlreadySo,
}

pub async fn cancel(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<Change, Error> {
    let mut tx = pool.begin().await?;
    let before = crate::db::jobs::cancel(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no job {id}.")))?;
    let change = match before {
        JobState::Queued | JobState::Running => Change::Done,
        JobState::Cancelled => Change::AlreadySo,
        other @ (JobState::Succeeded | JobState::Failed) => {
            return Err(Error::Conflict(format!(
                "Job {id} has already {other}; there is nothing to cancel."
            )));
        }
    };
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "job.cancel", format!("job:{id}"), Outcome::Ok)
            .detail(if change == Change::Done {
                format!("was {before}")
            } else {
                "already in effect".into()
            })
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(change)
}

/// Retry all failed (as filtered): every failed job the filter matches is queued for a new
/// attempt, in one transaction, recorded as one audit event. The number retried.
pub async fn retry_failed(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    q: &crate::db::jobs::JobQuery,
) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    let ids = crate::db::jobs::retry_failed(&mut tx, q).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let mut filter = Vec::new();
    if let Some((k, v)) = &q.label {
        filter.push(format!("label {k}={v}"));
    }
    if let Some(s) = &q.server_id {
        filter.push(format!("server {s}"));
    }
    const SHOWN: usize = 20;
    let shown: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "job.retry_all", "jobs", Outcome::Ok)
            .detail(format!(
                "{} failed job{} queued for a new attempt ({}): {}{}",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                if filter.is_empty() {
                    "every failed job".to_owned()
                } else {
                    filter.join(", ")
                },
                shown.join(", "),
                if ids.len() > SHOWN { ", …" } else { "" }
            ))
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(ids.len())
}

pub async fn retry(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let before = crate::db::jobs::retry(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no job {id}.")))?;
    if !matches!(before, JobState::Failed | JobState::Cancelled) {
        return Err(Error::Conflict(format!(
            "Job {id} is {before}; only a failed or cancelled job can be retried."
        )));
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "job.retry", format!("job:{id}"), Outcome::Ok)
            .detail(format!("was {before}; queued for a new attempt"))
            .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

//! The agents' side of the console, `/agent/v1/…` (messages in `agent::wire`): register,
//! heartbeat, claim (long-poll), log, finish, and the agent binary for user-data to fetch.
//! Every call but `register` and `binary` carries the agent's own token (`Access::Agent`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::agent::wire::{
    self, AttemptRef, Claim, ClaimReply, ClaimedJob, Ending, Finish, Heartbeat, HeartbeatReply,
    Log, Register, Registered,
};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::jobs::{AttemptCheck, Finished, JobResult, Lose, OutputChunk};
use crate::web::AppState;
use crate::web::access::AgentIdentity;
use crate::web::error::AppError;

fn refused(check: AttemptCheck, job_id: i64, attempt: i32) -> AppError {
    match check {
        AttemptCheck::UnknownJob => AppError::NotFound(format!("There is no job {job_id}.")),
        AttemptCheck::UnknownAttempt => {
            AppError::NotFound(format!("Job {job_id} has no attempt {attempt}."))
        }
        AttemptCheck::NotYours => AppError::Forbidden(format!(
            "Attempt {attempt} of job {job_id} runs on another server."
        )),
        AttemptCheck::Superseded(state) => AppError::Conflict(format!(
            "Attempt {attempt} of job {job_id} no longer counts (it is {state}); stop it and drop its result."
        )),
        AttemptCheck::AlreadyFinished(state) => AppError::Conflict(format!(
            "Attempt {attempt} of job {job_id} already finished ({state})."
        )),
        AttemptCheck::Current => AppError::Internal(anyhow::anyhow!("refused a current attempt")),
    }
}

pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Register>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if !(wire::OLDEST_PROTOCOL..=wire::PROTOCOL).contains(&body.protocol) {
        let speaks = if wire::OLDEST_PROTOCOL == wire::PROTOCOL {
            format!("agent protocol {}", wire::PROTOCOL)
        } else {
            format!(
                "agent protocols {} to {}",
                wire::OLDEST_PROTOCOL,
                wire::PROTOCOL
            )
        };
        return Err(AppError::WrongProtocol(format!(
            "This console speaks {speaks}; the agent (version {}) speaks {}. Run the agent that matches the console: GET /agent/v1/binary.",
            body.version, body.protocol
        )));
    }
    if body.slots == 0 || body.slots > wire::MAX_SLOTS {
        return Err(AppError::BadRequest(format!(
            "slots must be between 1 and {}, not {}.",
            wire::MAX_SLOTS,
            body.slots
        )));
    }
    if body.instance_id.is_empty() || body.instance_id.len() > 64 || body.version.len() > 64 {
        return Err(AppError::BadRequest(
            "instance_id (1 to 64 characters) and version (at most 64) are required.".into(),
        ));
    }
    let token_hash = crate::auth::token::hash(&body.enrollment_token);
    if !crate::db::agents::enrollment_valid(&state.pool, &token_hash, &body.instance_id).await? {
        return Err(AppError::Unauthorized);
    }
    let standing = crate::db::agents::standing(&state.pool, &body.instance_id)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "There is no server {} in this fleet (yet): it registers once its launch has recorded it.",
                body.instance_id
            ))
        })?;
    if standing.terminating() {
        return Err(AppError::Conflict(format!(
            "Server {} is {}; its agent should exit.",
            body.instance_id, standing.state
        )));
    }
    let secret = crate::auth::token::Secret::generate(crate::auth::token::AGENT_PREFIX);
    let mut tx = state.pool.begin().await?;
    crate::db::agents::upsert(
        &mut tx,
        &crate::db::agents::NewAgent {
            server_id: &body.instance_id,
            token_hash: &secret.hash(),
            version: &body.version,
            slots: body.slots as i32,
            hostname: &body.hostname,
        },
    )
    .await?;
    // A registering agent started afresh: whatever its server was running is gone with the
    // old process. Requeue it now rather than wait for the leases.
    let lost = crate::db::jobs::lose(
        &mut tx,
        Lose::OnServer(&body.instance_id),
        "the server's agent restarted",
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::system(
            "agent.register",
            format!("server:{}", body.instance_id),
            Outcome::Ok,
        )
        .detail(format!(
            "agent {} with {} slot(s){}",
            body.version,
            body.slots,
            if lost.is_empty() {
                String::new()
            } else {
                format!("; {} running job(s) requeued", lost.len())
            }
        ))
        .from_ip(crate::web::pages::source_ip(&req)),
    )
    .await?;
    crate::bakes::advance::nudge_for_builder(&mut tx, &body.instance_id).await?;
    tx.commit().await?;
    state.agent_tokens.forget_server(&body.instance_id);
    Ok(HttpResponse::Ok().json(Registered {
        agent_token: secret.expose().to_owned(),
        server_id: body.instance_id,
        heartbeat_s: state.settings.heartbeat,
        lease_s: state.settings.job_lease,
    }))
}

pub async fn heartbeat(
    agent: AgentIdentity,
    state: web::Data<AppState>,
    body: web::Json<Heartbeat>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if body.running.len() > wire::MAX_SLOTS as usize {
        return Err(AppError::BadRequest(format!(
            "An agent runs at most {} jobs; the heartbeat lists {}.",
            wire::MAX_SLOTS,
            body.running.len()
        )));
    }
    // Written with every other agent's at the next flush (at most 1 s away, `web::heartbeats`);
    // where the server stands is what the token cache verified at the last one.
    state.heartbeats.record(&agent.server_id, body.metrics);
    let standing = agent.standing;
    let running: Vec<(i64, i32)> = body.running.iter().map(|r| (r.job_id, r.attempt)).collect();
    // An idle agent's heartbeat costs no statement of its own; leases are renewed (at once,
    // before the answer, so an acknowledged renewal is never lost) only when there are some.
    let stop = if running.is_empty() {
        vec![]
    } else {
        crate::db::jobs::renew(
            &state.pool,
            &agent.server_id,
            &running,
            state.settings.job_lease,
        )
        .await?
    };
    Ok(HttpResponse::Ok().json(HeartbeatReply {
        terminate: standing.terminating(),
        mode: standing.mode.to_string(),
        stop: stop
            .into_iter()
            .map(|(job_id, attempt)| AttemptRef { job_id, attempt })
            .collect(),
    }))
}

pub async fn claim(
    agent: AgentIdentity,
    state: web::Data<AppState>,
    body: web::Json<Claim>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if body.slots == 0 || body.slots > wire::MAX_SLOTS {
        return Err(AppError::BadRequest(format!(
            "slots must be between 1 and {}, not {}.",
            wire::MAX_SLOTS,
            body.slots
        )));
    }
    let wait = Duration::from_secs(body.wait_s.min(wire::MAX_WAIT_S));
    let deadline = tokio::time::Instant::now() + wait;
    let wakeups = &state.wakeups;
    let mut was_woken = false;
    loop {
        // Registered for a wake-up before looking, so one arriving meanwhile is not missed.
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (standing, jobs) = crate::db::jobs::claim(
            &state.pool,
            &agent.server_id,
            i64::from(body.slots),
            state.settings.job_lease,
        )
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no server {}.", agent.server_id)))?;
        if !jobs.is_empty() {
            return Ok(HttpResponse::Ok().json(ClaimReply {
                jobs: jobs
                    .into_iter()
                    .map(|j| ClaimedJob {
                        job_id: j.id,
                        attempt: j.attempt,
                        command: j.command,
                        timeout_s: j.timeout_s as u64,
                    })
                    .collect(),
                mode: standing.mode.to_string(),
                terminate: false,
            }));
        }
        let can_work =
            standing.mode == crate::domain::ServerMode::Enabled && !standing.terminating();
        if !can_work || wakeups.is_closing() || tokio::time::Instant::now() >= deadline {
            if was_woken && !can_work {
                // The wake-up meant a job for someone who can take it.
                wakeups.pass_on();
            }
            return Ok(HttpResponse::Ok().json(ClaimReply {
                jobs: vec![],
                terminate: standing.terminating(),
                mode: standing.mode.to_string(),
            }));
        }
        // Wait for a wake-up or the deadline, holding no database connection.
        let woke = tokio::select! {
            _ = &mut woken => true,
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if !woke {
            // Nothing was enqueued meanwhile (a lost LISTEN connection wakes every waiter),
            // so there is nothing to look for: answer without another query.
            return Ok(HttpResponse::Ok().json(ClaimReply {
                jobs: vec![],
                terminate: false,
                mode: standing.mode.to_string(),
            }));
        }
        was_woken = true;
    }
}

pub async fn log(
    agent: AgentIdentity,
    state: web::Data<AppState>,
    body: web::Json<Log>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if body.chunks.len() > wire::MAX_CHUNKS_PER_POST {
        return Err(AppError::TooLarge(format!(
            "At most {} chunks per request; this one has {}.",
            wire::MAX_CHUNKS_PER_POST,
            body.chunks.len()
        )));
    }
    if let Some(c) = body
        .chunks
        .iter()
        .find(|c| c.data.len() > wire::MAX_CHUNK_BYTES)
    {
        return Err(AppError::TooLarge(format!(
            "Chunk {} is {} bytes; a chunk holds at most {}.",
            c.seq,
            c.data.len(),
            wire::MAX_CHUNK_BYTES
        )));
    }
    if let Some(c) = body
        .chunks
        .iter()
        .find(|c| c.seq < 0 || c.data.contains('\0'))
    {
        return Err(AppError::BadRequest(format!(
            "Chunk {} is malformed: sequence numbers start at 0 and data holds no NUL byte.",
            c.seq
        )));
    }
    let chunks: Vec<OutputChunk> = body
        .chunks
        .iter()
        .map(|c| OutputChunk {
            seq: c.seq,
            stream: c.stream.as_str(),
            data: &c.data,
        })
        .collect();
    let mut tx = state.pool.begin().await?;
    let check = crate::db::jobs::append_output(
        &mut tx,
        body.job_id,
        body.attempt,
        &agent.server_id,
        &chunks,
    )
    .await?;
    if check != AttemptCheck::Current {
        return Err(refused(check, body.job_id, body.attempt));
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn finish(
    agent: AgentIdentity,
    state: web::Data<AppState>,
    body: web::Json<Finish>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if body.message.len() > 4096 {
        return Err(AppError::BadRequest(
            "message must be at most 4096 bytes.".into(),
        ));
    }
    let (succeeded, reason) = match body.ending {
        Ending::Exited => match body.exit_code {
            Some(0) => (true, String::new()),
            Some(code) => (false, format!("exited with status {code}")),
            None => {
                return Err(AppError::BadRequest(
                    "An exited command needs its exit_code.".into(),
                ));
            }
        },
        Ending::TimedOut => (false, "ran past its timeout and was killed".to_owned()),
        Ending::NotStarted => (
            false,
            format!("could not be started: {}", body.message.trim()),
        ),
    };
    let mut tx = state.pool.begin().await?;
    let outcome = crate::db::jobs::finish(
        &mut tx,
        body.job_id,
        body.attempt,
        &agent.server_id,
        &JobResult {
            succeeded,
            exit_code: body.exit_code,
            reason: &reason,
        },
    )
    .await?;
    match outcome {
        Finished::Recorded(job_state) => {
            crate::bakes::advance::nudge_for_job(&mut tx, body.job_id).await?;
            tx.commit().await?;
            Ok(HttpResponse::Ok().json(serde_json::json!({ "job_state": job_state })))
        }
        // A resent finish (its first answer was lost): already recorded, nothing to do.
        Finished::Refused(AttemptCheck::AlreadyFinished(attempt_state)) => Ok(HttpResponse::Ok()
            .json(serde_json::json!({ "attempt_state": attempt_state, "already": true }))),
        Finished::Refused(check) => Err(refused(check, body.job_id, body.attempt)),
    }
}

/// `GET /agent/v1/binary`: this console's own executable, which is also the agent
/// (`kiln agent …`), for user-data to fetch onto servers whose image does not carry it.
pub async fn binary() -> Result<HttpResponse, AppError> {
    use tokio::io::AsyncReadExt;
    let fail = |e: std::io::Error| {
        AppError::Internal(anyhow::Error::new(e).context("cannot read the console's executable"))
    };
    let exe = std::env::current_exe().map_err(fail)?;
    let file = tokio::fs::File::open(&exe).await.map_err(fail)?;
    let len = file.metadata().await.map_err(fail)?.len();
    // Streamed in 256 KiB pieces: the binary is tens of megabytes.
    let body = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(web::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Content-Disposition", "attachment; filename=\"kiln\""))
        // Already as small as it gets; the compression middleware leaves it alone.
        .insert_header(actix_web::http::header::ContentEncoding::Identity)
        .no_chunking(len)
        .streaming(body))
}

//! The reconciler keeps the `servers` table in line with the provider: it pulls every server
//! carrying the fleet tag (all pages), updates states, marks servers that vanished as
//! terminated, and adopts (and flags) unknown servers with the fleet tag. It runs every
//! KILN_RECONCILE_INTERVAL on one replica at a time (a PostgreSQL advisory lock held by the
//! running one; a crashed holder's connection drops and frees it).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::cloud::{AnyProvider, Provider, ServerFilter, ServerState, describe_all};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::ServerPurpose;

pub const LOCK: i64 = 0x006b_696c_6e72_6563; // "kilnrec"

/// A server Kiln knows but the provider no longer reports is terminated only after this long
/// since launch: EC2's describes are eventually consistent for brand-new instances.
const VANISH_GRACE_S: f64 = 60.0;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seen: usize,
    pub updated: usize,
    pub vanished: usize,
    pub adopted: usize,
    /// Builders the janitor terminated (their bake is over).
    pub builders_ended: usize,
}

/// One pass; None when another replica holds the lock.
pub async fn run_once(pool: &PgPool, cloud: &AnyProvider) -> anyhow::Result<Option<Summary>> {
    crate::db::exclusively(pool, LOCK, || pass(pool, cloud)).await
}

async fn pass(pool: &PgPool, cloud: &AnyProvider) -> anyhow::Result<Summary> {
    let seen = describe_all(cloud, &ServerFilter::fleet(cloud.fleet())).await?;
    let mut summary = Summary {
        seen: seen.len(),
        ..Default::default()
    };
    let known: Vec<(String, ServerState)> = sqlx::query_as("SELECT id, state FROM servers")
        .fetch_all(pool)
        .await?;
    let known: std::collections::HashMap<String, ServerState> = known.into_iter().collect();

    for server in &seen {
        match known.get(&server.id) {
            Some(&state) if state == server.state || state == ServerState::Terminated => {}
            Some(_) => {
                sqlx::query(
                    "UPDATE servers SET state = $2, updated_at = now(),
                         terminated_at = CASE WHEN $2 = 'terminated' THEN now() ELSE terminated_at END
                     WHERE id = $1 AND state <> 'terminated'",
                )
                .bind(&server.id)
                .bind(server.state)
                .execute(pool)
                .await?;
                summary.updated += 1;
            }
            None if server.state != ServerState::Terminated => {
                let mut tx = pool.begin().await?;
                // A builder stays a builder (never a worker); the janitor then ends it.
                let purpose = match server.tags.get("kiln:purpose").map(String::as_str) {
                    Some("builder") => ServerPurpose::Builder,
                    _ => ServerPurpose::Worker,
                };
                let inserted = sqlx::query(
                    "INSERT INTO servers (id, image_id, instance_type, state, adopted, launched_by, launched_at, purpose)
                     VALUES ($1, $2, $3, $4, TRUE, 'adopted', COALESCE($5, now()), $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&server.id)
                .bind(&server.image_id)
                .bind(&server.instance_type)
                .bind(server.state)
                .bind(server.launched_at)
                .bind(purpose)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    audit::record(
                        &mut *tx,
                        AuditEvent::system(
                            "server.adopt",
                            format!("server:{}", server.id),
                            Outcome::Ok,
                        )
                        .detail(
                            "found at the provider with the fleet tag; not launched by this Kiln",
                        ),
                    )
                    .await?;
                    summary.adopted += 1;
                }
                tx.commit().await?;
            }
            None => {}
        }
    }

    let seen_ids: std::collections::HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    for (id, state) in &known {
        if *state == ServerState::Terminated || seen_ids.contains(id.as_str()) {
            continue;
        }
        let mut tx = pool.begin().await?;
        let done = sqlx::query(
            "UPDATE servers SET state = 'terminated', terminated_at = now(), updated_at = now()
             WHERE id = $1 AND state <> 'terminated' AND launched_at < now() - make_interval(secs => $2)",
        )
        .bind(id)
        .bind(VANISH_GRACE_S)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            audit::record(
                &mut *tx,
                AuditEvent::system("server.vanished", format!("server:{id}"), Outcome::Ok)
                    .detail("the provider no longer reports it; marked terminated"),
            )
            .await?;
            summary.vanished += 1;
        }
        tx.commit().await?;
    }
    summary.builders_ended = super::builders::sweep(pool).await?;
    Ok(summary)
}

/// Runs a pass every `interval` until `stop` turns true.
pub async fn run_periodically(
    pool: PgPool,
    cloud: Arc<AnyProvider>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match run_once(&pool, &cloud).await {
            Ok(Some(s)) if s.updated + s.vanished + s.adopted + s.builders_ended > 0 => {
                tracing::info!(?s, "reconciled")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconcile failed; trying again next interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

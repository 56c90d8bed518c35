//! Drained servers are terminated in batches: one TerminateInstances (and one
//! DescribeInstances) for up to [`BATCH`] servers instead of one each, so that a rollback of
//! 1,000 servers stays far inside EC2's TerminateInstances bucket (5 at once, 2 a second).
//!
//! There is no batch task to lose. Each server's own terminate task, once its server is
//! drained, *hands it in* (a row of `server_terminations`) and, after a short gathering
//! window, *leads*: it locks every handed-in row no other task has locked (`FOR UPDATE SKIP
//! LOCKED`, its own first), terminates them all in one call and records each one — state,
//! lost attempts, audit — in the same transaction. A task whose row another leader holds
//! waits and finds its server terminated by that batch; if that leader failed or its console
//! died, its transaction rolled back, the rows are free again and the next task leads.
//! The rows stay locked during the provider call: a transaction, not a lease, is what says a
//! batch is in flight, so nothing is left claimed by a dead console.

use sqlx::PgConnection;

use crate::cloud::{Provider, ServerFilter, describe_all};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::jobs::Lose;
use crate::tasks::{Context, TaskError};

/// The most servers one TerminateInstances names (EC2 takes up to 1,000 ids a call).
pub const BATCH: i64 = 1000;

/// Hands a drained server in to be terminated; true when it was not handed in before. A
/// force on a server already handed in makes its row forced.
pub async fn hand_in(conn: &mut PgConnection, server_id: &str, force: bool) -> sqlx::Result<bool> {
    // `xmax = 0` only on a row this statement inserted (an updated row has the updater's xmax).
    sqlx::query_scalar(
        "INSERT INTO server_terminations (server_id, forced) VALUES ($1, $2)
         ON CONFLICT (server_id) DO UPDATE SET forced = server_terminations.forced OR excluded.forced
         RETURNING xmax = 0",
    )
    .bind(server_id)
    .bind(force)
    .fetch_one(conn)
    .await
}

/// Whether another task's batch terminated this server: its row is then removed and its own
/// task is done.
pub async fn terminated_by_another(conn: &mut PgConnection, server_id: &str) -> sqlx::Result<bool> {
    let gone = sqlx::query(
        "DELETE FROM server_terminations WHERE server_id = $1 AND terminated_at IS NOT NULL",
    )
    .bind(server_id)
    .execute(conn)
    .await?;
    Ok(gone.rows_affected() > 0)
}

/// Forgets a server's row (its server is terminated).
pub async fn forget(conn: &mut PgConnection, server_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM server_terminations WHERE server_id = $1")
        .bind(server_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Terminates, in one provider call, every handed-in server no other batch holds, `own` first.
/// False (nothing done) when another batch holds `own`.
pub async fn lead(ctx: &Context, own: &str) -> Result<bool, TaskError> {
    let cloud = ctx.cloud()?;
    let mut tx = ctx.pool.begin().await?;
    let mut batch: Vec<(String, bool)> = sqlx::query_as(
        "SELECT server_id, forced FROM server_terminations WHERE terminated_at IS NULL
         ORDER BY server_id = $1 DESC, handed_in_at, server_id
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(own)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if batch.first().is_none_or(|(id, _)| id != own) {
        return Ok(false);
    }
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    cloud.terminate(&ids).await?;
    let reported = describe_all(
        cloud.as_ref(),
        &ServerFilter {
            ids: ids.clone(),
            ..Default::default()
        },
    )
    .await?;
    let together = if ids.len() > 1 {
        format!(" (one call for {} servers)", ids.len())
    } else {
        String::new()
    };
    // Servers rows in key order, as the heartbeats' flush locks them: no deadlock between them.
    batch.sort_unstable();
    for (id, forced) in &batch {
        // A server the provider no longer lists is gone.
        let state = reported
            .iter()
            .find(|s| &s.id == id)
            .map_or("terminated", |s| s.state.as_str());
        record(&mut tx, id, *forced, state, &together).await?;
    }
    sqlx::query(
        "UPDATE server_terminations SET terminated_at = now() WHERE server_id = ANY($1) AND server_id <> $2",
    )
    .bind(&ids)
    .bind(own)
    .execute(&mut *tx)
    .await?;
    forget(&mut tx, own).await?;
    tx.commit().await?;
    Ok(true)
}

/// Records one terminated server: its state, its running attempts lost (their jobs requeued),
/// and an audit event.
async fn record(
    tx: &mut PgConnection,
    server_id: &str,
    forced: bool,
    state: &str,
    together: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE servers SET state = $2, updated_at = now(),
             terminated_at = CASE WHEN $2 = 'terminated' THEN now() ELSE terminated_at END
         WHERE id = $1 AND state <> 'terminated'",
    )
    .bind(server_id)
    .bind(state)
    .execute(&mut *tx)
    .await?;
    let why = if forced {
        "its server was force-terminated"
    } else {
        "its server's drain timeout passed"
    };
    let lost = crate::db::jobs::lose(&mut *tx, Lose::OnServer(server_id), why).await?;
    audit::record(
        &mut *tx,
        AuditEvent::system(
            "server.terminated",
            format!("server:{server_id}"),
            Outcome::Ok,
        )
        .detail(format!(
            "{} terminate{together}; the provider reports it {state}{}",
            if forced { "forced" } else { "graceful" },
            if lost.is_empty() {
                String::new()
            } else {
                format!("; {} running job(s) requeued", lost.len())
            }
        )),
    )
    .await?;
    Ok(())
}

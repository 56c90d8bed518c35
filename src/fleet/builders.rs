//! Bakes' builders as servers: terminating one (its bake ended, or it has none) goes through
//! the one terminate path, audited, like any other server.

use sqlx::{PgConnection, PgPool};

use crate::db::audit::{self, AuditEvent, Outcome};
use crate::fleet::terminate_server::{Requested, request};

/// Asks for a builder's forced termination (a builder's work is worth nothing once its bake
/// is over), saying why in the audit log.
pub async fn terminate(conn: &mut PgConnection, id: &str, why: &str) -> sqlx::Result<()> {
    if request(conn, id, true, None).await? == Requested::Queued {
        audit::record(
            &mut *conn,
            AuditEvent::system("server.terminate", format!("server:{id}"), Outcome::Ok)
                .detail(format!("builder of {why}")),
        )
        .await?;
    }
    Ok(())
}

/// The janitor: terminates every builder whose bake is over (or that has no bake), e.g. one
/// adopted by the reconciler or left by a bake whose clean-up never ran.
pub async fn sweep(pool: &PgPool) -> sqlx::Result<usize> {
    let stray = crate::db::bakes::stray_builders(pool).await?;
    for id in &stray {
        let mut tx = pool.begin().await?;
        terminate(&mut tx, id, "no running bake (janitor)").await?;
        tx.commit().await?;
    }
    Ok(stray.len())
}

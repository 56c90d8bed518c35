//! Change freezes, as admins define them: validated, stored and audited. A release during one
//! is refused by `rollouts::start` unless an admin overrides it; a rollback never is.

use sqlx::PgPool;

use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::freeze::{Freeze, FreezeInput};
use crate::error::Error;

pub async fn create(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    input: &FreezeInput,
) -> Result<Freeze, Error> {
    input.validate()?;
    let mut tx = pool.begin().await?;
    let freeze = crate::db::freezes::create(&mut tx, input, &principal.name).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "freeze.create",
            format!("freeze:{}", freeze.id),
            Outcome::Ok,
        )
        .detail(format!("\"{}\" ({})", freeze.reason, freeze.when()))
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(freeze)
}

pub async fn delete(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<Freeze, Error> {
    let mut tx = pool.begin().await?;
    let freeze = crate::db::freezes::delete(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("There is no freeze {id}.")))?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "freeze.delete",
            format!("freeze:{id}"),
            Outcome::Ok,
        )
        .detail(format!("\"{}\" ({})", freeze.reason, freeze.when()))
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(freeze)
}

//! Old-image cleanup (Asgard's rule): deregister images that are neither current, nor run by
//! any server, nor among the newest `keep` of their name, nor younger than `min_age_days` —
//! and, so that no bake breaks, nor the base image of a recipe. Always shown as a preview
//! first; the cleanup then deregisters only what the preview showed and still qualifies.

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::db::audit::{AuditEvent, Outcome};
use crate::error::Error;

#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub keep: u32,
    pub min_age_days: u32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub version: String,
    pub state: crate::domain::ImageState,
    pub created_at: OffsetDateTime,
}

/// The images the rule would deregister now, oldest first.
pub async fn candidates(db: impl PgExecutor<'_>, rule: Rule) -> sqlx::Result<Vec<Candidate>> {
    sqlx::query_as(
        "WITH cur AS (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1),
              ranked AS (
                SELECT i.id, i.name, i.version, i.state, i.created_at,
                       row_number() OVER (PARTITION BY i.name ORDER BY i.created_at DESC, i.id DESC) AS newest
                FROM images i WHERE i.state <> 'deregistered')
         SELECT r.id, r.name, r.version, r.state, r.created_at FROM ranked r
         WHERE r.state IN ('available', 'failed')
           AND r.id IS DISTINCT FROM (SELECT image_id FROM cur)
           AND r.newest > $1
           AND r.created_at < now() - make_interval(days => $2)
           AND NOT EXISTS (SELECT 1 FROM servers s WHERE s.image_id = r.id AND s.state <> 'terminated')
           AND NOT EXISTS (SELECT 1 FROM recipes c WHERE c.base_image_id = r.id)
         ORDER BY r.created_at, r.id",
    )
    .bind(i64::from(rule.keep))
    .bind(rule.min_age_days as i32)
    .fetch_all(db)
    .await
}

/// Deregisters those of `ids` that the rule still selects (the preview may be stale); returns
/// them. Serialised with releases, so an image cannot become current meanwhile.
pub async fn clean(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    rule: Rule,
    ids: &[String],
) -> Result<Vec<String>, Error> {
    if ids.is_empty() {
        return Err(Error::Invalid(
            "Nothing to clean up: preview the cleanup, then confirm its list.".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *tx)
        .await?;
    let now = candidates(&mut *tx, rule).await?;
    let gone: Vec<String> = now
        .into_iter()
        .map(|c| c.id)
        .filter(|id| ids.contains(id))
        .collect();
    for id in &gone {
        let event = AuditEvent::by(
            principal,
            "image.deregister",
            format!("image:{id}"),
            Outcome::Ok,
        )
        .detail(format!(
            "old-image cleanup (keep {} per name, younger than {} days)",
            rule.keep, rule.min_age_days
        ))
        .from_ip(ip.clone());
        crate::fleet::images::mark_deregistered(&mut tx, id, "old-image cleanup", event).await?;
    }
    tx.commit().await?;
    Ok(gone)
}

//! Adding images to the catalogue.

use std::sync::Arc;

use crate::auth::Principal;
use crate::cloud::{AnyProvider, Provider};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::images::{ImageRow, NewImage};
use crate::domain::ValidationError;
use crate::error::Error;
use crate::fleet::adopt_image::AdoptImage;

/// What a user asks to add: an existing AMI by id (aws), or a new local image (no id).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AddImage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

fn text(value: &str, what: &str, max: usize, required: bool) -> Result<String, ValidationError> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(ValidationError::new(format!("Give the image a {what}.")));
    }
    if value.chars().count() > max {
        return Err(ValidationError::new(format!(
            "An image's {what} has at most {max} characters."
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ValidationError::new(format!(
            "An image's {what} cannot contain control characters."
        )));
    }
    Ok(value.to_owned())
}

/// Validates, records the image as `pending` and enqueues its adoption, in one transaction.
pub async fn add(
    pool: &sqlx::PgPool,
    cloud: &Arc<AnyProvider>,
    principal: &Principal,
    source_ip: Option<String>,
    input: &AddImage,
) -> Result<ImageRow, Error> {
    let name = text(&input.name, "name", 128, true)?;
    let version = text(
        input.version.as_deref().unwrap_or_default(),
        "version",
        64,
        false,
    )?;
    let description = text(
        input.description.as_deref().unwrap_or_default(),
        "description",
        1000,
        false,
    )?;
    let id = match (
        cloud.name(),
        input.id.as_deref().map(str::trim).filter(|s| !s.is_empty()),
    ) {
        ("local", None) => format!(
            "{}{}",
            crate::cloud::local::IMAGE_PREFIX,
            crate::cloud::local::random_hex(17)
        ),
        ("local", Some(_)) => {
            return Err(Error::Invalid(
                "The local provider names its own images: leave the id empty.".into(),
            ));
        }
        (_, None) => {
            return Err(Error::Invalid(
                "Give the id of the AMI to add, e.g. ami-0123456789abcdef0.".into(),
            ));
        }
        (_, Some(id)) => {
            cloud
                .check_image_id(id)
                .map_err(|e| Error::Invalid(e.message))?;
            id.to_owned()
        }
    };

    let mut tx = pool.begin().await?;
    let inserted = crate::db::images::insert(
        &mut tx,
        &NewImage {
            id: &id,
            name: &name,
            version: &version,
            description: &description,
            state: crate::domain::ImageState::Pending,
            added_by: &principal.name,
        },
    )
    .await?;
    if !inserted {
        return Err(Error::Conflict(format!(
            "Image {id} is already in the catalogue."
        )));
    }
    crate::tasks::enqueue(
        &mut tx,
        &AdoptImage {
            image_id: id.clone(),
        },
        Some(&format!("adopt_image:{id}")),
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "image.add", format!("image:{id}"), Outcome::Ok)
            .detail(format!("{name} {version}").trim().to_owned())
            .from_ip(source_ip),
    )
    .await?;
    let row = crate::db::images::find(&mut *tx, &id)
        .await?
        .expect("just inserted");
    tx.commit().await?;
    Ok(row)
}

/// Refuses an image whose servers could not run this console's agent (409): they run the
/// console's own binary, so the image's architecture must be the console's. Unknown passes.
pub fn runs_our_agent(image: &crate::db::images::ImageRow) -> Result<(), Error> {
    match image.architecture.as_deref() {
        Some(arch) if arch != crate::cloud::AGENT_ARCHITECTURE => Err(Error::Conflict(format!(
            "Image {} is built for {arch}, and the agent this console gives its servers is its \
             own {} binary: servers of that image could not run it. Use an {} image, or run \
             Kiln built for {arch} (docs/deploying.md).",
            image.id,
            crate::cloud::AGENT_ARCHITECTURE,
            crate::cloud::AGENT_ARCHITECTURE,
        ))),
        _ => Ok(()),
    }
}

/// At start with the local provider: every image the provider has for this fleet that the
/// catalogue lacks (the base image of a fresh install) is added and adopted.
pub async fn import_local(pool: &sqlx::PgPool, cloud: &AnyProvider) -> anyhow::Result<usize> {
    if cloud.name() != "local" {
        return Ok(0);
    }
    let query = crate::cloud::ImageQuery {
        tags: vec![(crate::cloud::FLEET_TAG.to_owned(), cloud.fleet().to_owned())],
        ..Default::default()
    };
    let mut added = 0;
    let mut next = None;
    loop {
        let page = cloud.list_images(&query, next).await?;
        for image in page.items {
            let version = image.tags.get("kiln:version").cloned().unwrap_or_default();
            let mut tx = pool.begin().await?;
            let new = NewImage {
                id: &image.id,
                name: &image.name,
                version: &version,
                description: &image.description,
                state: crate::domain::ImageState::Pending,
                added_by: "kiln",
            };
            if crate::db::images::insert(&mut tx, &new).await? {
                crate::tasks::enqueue(
                    &mut tx,
                    &AdoptImage {
                        image_id: image.id.clone(),
                    },
                    Some(&format!("adopt_image:{}", image.id)),
                )
                .await?;
                added += 1;
            }
            tx.commit().await?;
        }
        match page.next {
            Some(n) => next = Some(n),
            None => return Ok(added),
        }
    }
}

/// Deregisters an image: refused for the current image and for one that servers still run.
/// The catalogue marks it at once (nothing launches from it any more) and a task
/// deregisters it at the provider. Returns false when it already was.
pub async fn deregister(
    pool: &sqlx::PgPool,
    principal: &Principal,
    source_ip: Option<String>,
    id: &str,
) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *tx)
        .await?;
    let image = crate::db::images::find(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no image {id} in the catalogue.")))?;
    if image.state == crate::domain::ImageState::Deregistered {
        return Ok(false);
    }
    if image.current {
        return Err(Error::Conflict(format!(
            "{id} is the current image: make another image current before deregistering it."
        )));
    }
    if image.servers > 0 {
        return Err(Error::Conflict(format!(
            "{} server{} still run {id}: terminate or replace them first.",
            image.servers,
            if image.servers == 1 { "" } else { "s" }
        )));
    }
    let event = AuditEvent::by(
        principal,
        "image.deregister",
        format!("image:{id}"),
        Outcome::Ok,
    )
    .from_ip(source_ip);
    mark_deregistered(&mut tx, id, "", event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks an image deregistered in the catalogue (nobody can launch it from now on), enqueues
/// its deregistration at the provider and audits `event`, in the caller's transaction.
pub async fn mark_deregistered(
    conn: &mut sqlx::PgConnection,
    id: &str,
    reason: &str,
    event: AuditEvent,
) -> sqlx::Result<()> {
    crate::db::images::set_state(
        &mut *conn,
        id,
        crate::domain::ImageState::Deregistered,
        reason,
    )
    .await?;
    crate::tasks::enqueue(
        conn,
        &crate::fleet::deregister_image::DeregisterImage {
            image_id: id.to_owned(),
        },
        Some(&format!("deregister:{id}")),
    )
    .await?;
    audit::record(&mut *conn, event).await
}

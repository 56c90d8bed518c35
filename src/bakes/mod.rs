//! The bake pipeline: recipes (base image, setup, tests) and bakes that turn a recipe into a
//! new, tested image. A bake launches a builder (a server with purpose `builder`), runs the
//! setup and then the tests on it as jobs pinned to it, creates the image, waits until it is
//! available and terminates the builder; `advance.rs` is that state machine, run by the
//! `bake_step` task. Handlers here validate, write and enqueue in one transaction.

pub mod advance;
pub mod bake_step;
pub mod decide;

use sqlx::PgPool;

use crate::auth::Principal;
use crate::config::Settings;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::bakes::{BakeRow, NewBake, NewRecipe, RecipeRow};
use crate::domain::{BakeState, BakeStep};
use crate::error::Error;
use crate::fleet::launch_servers::LaunchServers;

pub const DEFAULT_SETUP_TIMEOUT_S: i32 = 3600;
pub const DEFAULT_TEST_TIMEOUT_S: i32 = 1800;
const MAX_TIMEOUT_S: i32 = 604_800;

/// A recipe as sent (`POST /api/v1/recipes`) or typed on the Bakes page.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RecipeInput {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub base_image_id: String,
    #[serde(default)]
    pub setup_script: Option<String>,
    #[serde(default)]
    pub git_url: Option<String>,
    #[serde(default)]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub setup_path: Option<String>,
    #[serde(default)]
    pub test_command: String,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub setup_timeout_s: Option<i64>,
    #[serde(default)]
    pub test_timeout_s: Option<i64>,
    #[serde(default)]
    pub auto_release: Option<bool>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

fn timeout(field: &str, value: Option<i64>, default: i32) -> Result<i32, Error> {
    match value {
        None => Ok(default),
        Some(v) if (1..=i64::from(MAX_TIMEOUT_S)).contains(&v) => Ok(v as i32),
        Some(v) => Err(bad(format!(
            "{field} must be between 1 and {MAX_TIMEOUT_S} seconds, not {v}."
        ))),
    }
}

fn trimmed(v: &Option<String>) -> &str {
    v.as_deref().map(str::trim).unwrap_or_default()
}

/// Checks a recipe as sent; returns the values to store.
fn validate<'a>(input: &'a RecipeInput, settings: &'a Settings) -> Result<NewRecipe<'a>, Error> {
    let name = input.name.trim();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(bad(format!(
            "Recipe name {name:?} is invalid: 1 to 63 of a-z 0-9 . _ - starting with a letter or digit (it becomes part of image names)."
        )));
    }
    let base_image_id = input.base_image_id.trim();
    if base_image_id.is_empty() {
        return Err(bad("A recipe needs a base image."));
    }
    let setup_script = input.setup_script.as_deref().unwrap_or_default();
    let (git_url, git_ref, setup_path) = (
        trimmed(&input.git_url),
        trimmed(&input.git_ref),
        trimmed(&input.setup_path),
    );
    if setup_script.trim().is_empty() {
        if git_url.is_empty() || setup_path.is_empty() {
            return Err(bad(
                "A recipe needs a setup script, or a git repository URL with the path of its setup script.",
            ));
        }
    } else if !git_url.is_empty() {
        return Err(bad(
            "Give either a setup script or a git repository, not both.",
        ));
    }
    const SCHEMES: [&str; 6] = ["https://", "http://", "git@", "ssh://", "file://", "/"];
    if !git_url.is_empty() && !SCHEMES.iter().any(|p| git_url.starts_with(p)) {
        return Err(bad(format!(
            "{git_url:?} is not a git repository URL (https://, ssh://, git@…, file:// or a path)."
        )));
    }
    if setup_path.starts_with('/') || setup_path.split('/').any(|p| p == "..") {
        return Err(bad(format!(
            "The setup script's path {setup_path:?} must be relative to the repository."
        )));
    }
    if setup_script.len() > 65_536 {
        return Err(bad("The setup script has at most 64 KiB."));
    }
    let test_command = input.test_command.trim();
    if test_command.is_empty() {
        return Err(bad(
            "A recipe needs an integration test command (its exit status decides the bake).",
        ));
    }
    if test_command.len() > 65_536 {
        return Err(bad("The test command has at most 64 KiB."));
    }
    let instance_type = match trimmed(&input.instance_type) {
        "" => settings
            .instance_types
            .first()
            .map(String::as_str)
            .unwrap_or("t3.medium"),
        t if settings.instance_types.iter().any(|k| k == t) => t,
        t => {
            return Err(bad(format!(
                "Instance type {t:?} is not one of {}.",
                settings.instance_types.join(", ")
            )));
        }
    };
    Ok(NewRecipe {
        name,
        base_image_id,
        setup_script,
        git_url,
        git_ref,
        setup_path,
        test_command,
        instance_type,
        setup_timeout_s: timeout(
            "setup_timeout_s",
            input.setup_timeout_s,
            DEFAULT_SETUP_TIMEOUT_S,
        )?,
        test_timeout_s: timeout(
            "test_timeout_s",
            input.test_timeout_s,
            DEFAULT_TEST_TIMEOUT_S,
        )?,
        auto_release: input.auto_release.unwrap_or(false),
    })
}

/// The base image must be in the catalogue and available.
async fn check_base(conn: &mut sqlx::PgConnection, id: &str) -> Result<(), Error> {
    let base = crate::db::images::find(&mut *conn, id)
        .await?
        .ok_or_else(|| {
            bad(format!(
                "There is no image {id} in the catalogue to bake from."
            ))
        })?;
    if base.state != crate::domain::ImageState::Available {
        return Err(Error::Conflict(format!(
            "Image {} is {}; a recipe bakes from an available image.",
            base.id, base.state
        )));
    }
    // The builder runs the agent too.
    crate::fleet::images::runs_our_agent(&base)?;
    Ok(())
}

/// Changes a recipe; bakes already started keep what they started with (their jobs and image
/// name were fixed at their start), and its versions keep counting up.
pub async fn update_recipe(
    pool: &PgPool,
    settings: &Settings,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
    input: &RecipeInput,
) -> Result<RecipeRow, Error> {
    let recipe = validate(input, settings)?;
    let mut tx = pool.begin().await?;
    check_base(&mut tx, recipe.base_image_id).await?;
    match crate::db::bakes::update_recipe(&mut tx, id, &recipe).await? {
        None => {
            return Err(Error::Conflict(format!(
                "There is already a recipe called {:?}.",
                recipe.name
            )));
        }
        Some(false) => return Err(Error::NotFound(format!("There is no recipe {id}."))),
        Some(true) => {}
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "recipe.update",
            format!("recipe:{id}"),
            Outcome::Ok,
        )
        .detail(format!("{:?} from {}", recipe.name, recipe.base_image_id))
        .from_ip(ip),
    )
    .await?;
    let row = crate::db::bakes::recipe(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no recipe {id}.")))?;
    tx.commit().await?;
    Ok(row)
}

pub async fn create_recipe(
    pool: &PgPool,
    settings: &Settings,
    principal: &Principal,
    ip: Option<String>,
    input: &RecipeInput,
) -> Result<RecipeRow, Error> {
    let recipe = validate(input, settings)?;
    let mut tx = pool.begin().await?;
    check_base(&mut tx, recipe.base_image_id).await?;
    let row = crate::db::bakes::insert_recipe(&mut tx, &recipe, &principal.name, principal.user_id)
        .await?
        .ok_or_else(|| {
            Error::Conflict(format!(
                "There is already a recipe called {:?}.",
                recipe.name
            ))
        })?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "recipe.create",
            format!("recipe:{}", row.id),
            Outcome::Ok,
        )
        .detail(format!("{:?} from {}", row.name, row.base_image_id))
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Who started a bake.
pub enum StartedBy<'a> {
    /// From the Bakes page or the API.
    User {
        principal: &'a Principal,
        ip: Option<String>,
        via_api: bool,
    },
    /// A GitHub push; the delivery id makes a redelivery a no-op.
    Webhook { delivery_id: &'a str },
}

/// The deterministic name of a bake's image: unique per fleet, recipe and version, so a
/// second Kiln in the same account never collides with this one.
pub fn image_name(fleet: &str, recipe: &str, version: i32) -> String {
    format!("kiln/{fleet}/{recipe}/v{version}")
}

/// Starts a bake of `recipe_id`: takes the recipe's next version, records the bake and its
/// builder's launch, and enqueues both, in one transaction. Returns the bake and whether it
/// was created now (false: a webhook delivery seen before).
pub async fn start(
    pool: &PgPool,
    settings: &Settings,
    started_by: StartedBy<'_>,
    recipe_id: i64,
    source_revision: &str,
) -> Result<(BakeRow, bool), Error> {
    let mut tx = pool.begin().await?;
    if let StartedBy::Webhook { delivery_id } = &started_by
        && let Some(id) = crate::db::bakes::by_delivery(&mut *tx, delivery_id).await?
    {
        let bake = found(&mut *tx, id).await?;
        return Ok((bake, false));
    }
    let (recipe, version) = crate::db::bakes::take_version(&mut tx, recipe_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no recipe {recipe_id}.")))?;
    let base = crate::db::images::find(&mut *tx, &recipe.base_image_id).await?;
    if base.as_ref().map(|b| b.state) != Some(crate::domain::ImageState::Available) {
        return Err(Error::Conflict(format!(
            "Recipe {} bakes from {}, which is not available (it is {}).",
            recipe.name,
            recipe.base_image_id,
            base.map_or("gone".to_owned(), |b| b.state.to_string())
        )));
    }
    let (trigger, who, delivery_id) = match &started_by {
        StartedBy::User {
            principal, via_api, ..
        } => (
            if *via_api { "api" } else { "manual" },
            principal.name.clone(),
            None,
        ),
        StartedBy::Webhook { delivery_id } => ("webhook", "github".to_owned(), Some(*delivery_id)),
    };
    let name = image_name(&settings.fleet, &recipe.name, version);
    let Some(id) = crate::db::bakes::insert_bake(
        &mut tx,
        &NewBake {
            recipe_id,
            version,
            source_revision,
            image_name: &name,
            trigger,
            delivery_id,
            started_by: &who,
        },
    )
    .await?
    else {
        // A concurrent redelivery won the race: the bake exists; nothing of this try stays.
        tx.rollback().await?;
        let id = crate::db::bakes::by_delivery(pool, delivery_id.unwrap_or_default())
            .await?
            .ok_or_else(|| Error::Conflict("That delivery is being handled.".into()))?;
        let bake = found(pool, id).await?;
        return Ok((bake, false));
    };
    let launch = crate::db::servers::insert_launch_for(
        &mut tx,
        &format!("bake-{id}"),
        &recipe.base_image_id,
        1,
        &recipe.instance_type,
        &who,
        "builder",
    )
    .await?;
    crate::db::bakes::set_launch(&mut tx, id, launch.id).await?;
    crate::db::bakes::enter_step(&mut tx, id, BakeStep::Launch).await?;
    crate::tasks::enqueue(
        &mut tx,
        &LaunchServers {
            launch_id: launch.id,
        },
        None,
    )
    .await?;
    crate::tasks::enqueue(
        &mut tx,
        &crate::bakes::bake_step::BakeStep { bake_id: id },
        Some(&step_key(id)),
    )
    .await?;
    let event = match &started_by {
        StartedBy::User { principal, ip, .. } => {
            AuditEvent::by(principal, "bake.start", format!("bake:{id}"), Outcome::Ok)
                .from_ip(ip.clone())
        }
        StartedBy::Webhook { delivery_id } => {
            AuditEvent::by_name("github", "bake.start", format!("bake:{id}"), Outcome::Ok)
                .detail(format!("delivery {delivery_id}"))
        }
    };
    audit::record(
        &mut *tx,
        event.detail(format!(
            "{} v{version} from {}{}",
            recipe.name,
            recipe.base_image_id,
            if source_revision.is_empty() {
                String::new()
            } else {
                format!(" at {source_revision}")
            }
        )),
    )
    .await?;
    let bake = found(&mut *tx, id).await?;
    tx.commit().await?;
    Ok((bake, true))
}

/// The bake, or a 404 saying there is none.
pub async fn found(db: impl sqlx::PgExecutor<'_>, id: i64) -> Result<BakeRow, Error> {
    crate::db::bakes::find(db, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no bake {id}.")))
}

/// The dedupe key of a bake's step task: one unfinished step per bake.
pub fn step_key(bake_id: i64) -> String {
    format!("bake:{bake_id}")
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    Now,
    AlreadyOver,
}

/// Cancels a running bake: it ends `cancelled` at once; its step task then stops its jobs,
/// terminates the builder and deregisters any half-made image.
pub async fn cancel(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<(BakeRow, Cancelled), Error> {
    let mut tx = pool.begin().await?;
    let bake = crate::db::bakes::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no bake {id}.")))?;
    if bake.state != BakeState::Running {
        return Ok((bake, Cancelled::AlreadyOver));
    }
    let why = format!("cancelled by {}", principal.name);
    crate::db::bakes::close_step(&mut tx, id, bake.step, BakeState::Cancelled, &why).await?;
    crate::db::bakes::finish(&mut tx, id, BakeState::Cancelled, &why).await?;
    crate::tasks::enqueue(
        &mut tx,
        &crate::bakes::bake_step::BakeStep { bake_id: id },
        Some(&step_key(id)),
    )
    .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(principal, "bake.cancel", format!("bake:{id}"), Outcome::Ok)
            .detail(format!("at step {}", bake.step))
            .from_ip(ip),
    )
    .await?;
    let bake = found(&mut *tx, id).await?;
    tx.commit().await?;
    Ok((bake, Cancelled::Now))
}

/// The setup step's shell command: the recipe's script, or a checkout of its repository at
/// the bake's revision (else the recipe's ref) and its setup script.
pub fn setup_command(recipe: &RecipeRow, source_revision: &str) -> String {
    if !recipe.setup_script.trim().is_empty() {
        return recipe.setup_script.clone();
    }
    let revision = if source_revision.is_empty() {
        recipe.git_ref.as_str()
    } else {
        source_revision
    };
    let mut script = format!(
        "set -eu\ngit clone --quiet {} src\ncd src\n",
        quote(&recipe.git_url)
    );
    if !revision.is_empty() {
        script.push_str(&format!("git checkout --quiet {}\n", quote(revision)));
    }
    script.push_str(&format!("sh {}\n", quote(&recipe.setup_path)));
    script
}

/// A shell word in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_setup_checks_out_the_revision_quoted() {
        let recipe = RecipeRow {
            id: 1,
            name: "ci".into(),
            base_image_id: "ami-1".into(),
            setup_script: String::new(),
            git_url: "https://example.com/it's.git".into(),
            git_ref: "main".into(),
            setup_path: "setup/run.sh".into(),
            test_command: "true".into(),
            instance_type: "t3.medium".into(),
            setup_timeout_s: 1,
            test_timeout_s: 1,
            auto_release: false,
            next_version: 1,
            created_by: "a".into(),
            created_by_id: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let s = setup_command(&recipe, "abc123");
        assert!(s.contains(r"git clone --quiet 'https://example.com/it'\''s.git' src"));
        assert!(s.contains("git checkout --quiet 'abc123'"));
        assert!(s.ends_with("sh 'setup/run.sh'\n"));
        assert!(setup_command(&recipe, "").contains("'main'"));
        assert_eq!(image_name("prod", "ci", 7), "kiln/prod/ci/v7");
    }
}

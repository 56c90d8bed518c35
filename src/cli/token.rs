//! `kiln token create --user NAME [--name LABEL]` and `kiln token create --enrollment [--ttl S]`.
//! The token is printed once, alone on the last line of standard output.

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::config::DatabaseArgs;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::{TokenName, UserName};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token: an API token for a user, or an agent enrollment token.
    Create {
        /// The user the API token acts as (it carries this user's role).
        #[arg(
            long,
            conflicts_with = "enrollment",
            required_unless_present = "enrollment"
        )]
        user: Option<String>,
        /// A label for the API token, shown on the Users page.
        #[arg(long, conflicts_with = "enrollment")]
        name: Option<String>,
        /// Create an agent enrollment token instead of an API token: any server this console
        /// knows may register with it until it expires.
        #[arg(long)]
        enrollment: bool,
        /// Seconds the enrollment token stays valid.
        #[arg(long, requires = "enrollment", default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create {
        user,
        name,
        enrollment,
        ttl,
        db,
    } = command;
    crate::db::locate::with_pool(&db, async |pool| {
        if enrollment {
            if ttl == 0 || ttl > 30 * 24 * 3600 {
                bail!("--ttl must be between 1 and 2592000 seconds (30 days)");
            }
            let token = crate::auth::token::Secret::generate(crate::auth::token::ENROLLMENT_PREFIX);
            let mut tx = pool.begin().await?;
            crate::db::tokens::create_enrollment(&mut tx, &token.hash(), None, ttl).await?;
            audit::record(
                &mut *tx,
                AuditEvent::by_cli("enrollment_token.create", "enrollment", Outcome::Ok)
                    .detail(format!("valid for {ttl} s")),
            )
            .await?;
            tx.commit().await?;
            println!("enrollment token (valid for {ttl} s, for the servers this console knows):");
            println!("{}", token.expose());
            return Ok(());
        }
        let user_name = UserName::parse(user.as_deref().unwrap_or_default())?;
        let label = TokenName::parse(name.as_deref().unwrap_or("cli"))?;
        let user = crate::db::users::find_by_name(pool, user_name.as_str())
            .await?
            .with_context(|| format!("there is no user named {:?}", user_name.as_str()))?;
        if user.disabled {
            bail!(
                "user {:?} is disabled; enable it before creating tokens",
                user.name
            );
        }
        let token = crate::auth::token::Secret::generate(crate::auth::token::API_PREFIX);
        let mut tx = pool.begin().await?;
        let id =
            crate::db::tokens::create_api(&mut tx, user.id, &label, &token.hash(), None).await?;
        audit::record(
            &mut *tx,
            AuditEvent::by_cli("token.create", format!("user:{}", user.name), Outcome::Ok)
                .detail(format!("token {id} ({})", label.as_str())),
        )
        .await?;
        tx.commit().await?;
        println!(
            "API token {id} for {} ({}), shown once:",
            user.name,
            user.role()
        );
        println!("{}", token.expose());
        Ok(())
    })
    .await
}

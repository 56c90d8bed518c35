//! `kiln user add NAME --role ROLE --password-stdin`

use std::io::Read;

use anyhow::Context;
use clap::Subcommand;

use crate::config::DatabaseArgs;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::{Password, Role, UserName};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

pub async fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password_stdin: _,
            db,
        } => {
            let name = UserName::parse(&name)?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("Failed to read the password from standard input")?;
            let password = Password::parse(input.trim_end_matches(['\r', '\n']))?;
            let hash = crate::auth::password::hash(&password).await?;
            crate::db::locate::with_pool(&db, async |pool| {
                let mut tx = pool.begin().await?;
                let user = crate::db::users::create(&mut tx, &name, role, &hash).await?;
                audit::record(
                    &mut *tx,
                    AuditEvent::by_cli(
                        "user.create",
                        format!("user:{}", name.as_str()),
                        Outcome::Ok,
                    )
                    .detail(format!("role {role}")),
                )
                .await?;
                tx.commit().await?;
                println!(
                    "created user {} ({}) with id {}",
                    name.as_str(),
                    role,
                    user.id
                );
                Ok(())
            })
            .await
        }
    }
}

//! The command line: `kiln serve | migrate | user add | token create | agent`.
//! Each subcommand lives in its own file; this one only parses and dispatches.

mod doctor;
mod token;
mod user;

use clap::{Parser, Subcommand};

use crate::config::{DatabaseArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    // Which build this is: the package's version and the git revision it was built from.
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KILN_GIT_REVISION"), ")"),
    about = "A web console for fleets of immutable servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the console and the background workers.
    Serve(Box<Settings>),
    /// Check what `kiln serve` with these settings needs (database, provider, public URL,
    /// disk), each with its fix; exit status 1 when something is wrong.
    Doctor(Box<Settings>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage console users.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Create API and enrollment tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Run the agent on a server.
    Agent(crate::agent::AgentArgs),
    /// Print the IAM policy the aws provider needs: exactly the EC2 actions it calls.
    IamPolicy,
    /// Measure the fleet pages against a bare handler (seeds a throwaway database).
    Bench(crate::bench::BenchArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(settings) => crate::startup::serve(*settings).await,
        Command::Doctor(settings) => doctor::run(*settings).await,
        Command::Migrate(db) => {
            crate::db::locate::with_pool(&db, async |_| Ok(())).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::User { command } => user::run(command).await,
        Command::Token { command } => token::run(command).await,
        Command::Agent(args) => crate::agent::run(args).await,
        Command::IamPolicy => {
            println!("{}", crate::cloud::aws::policy::document());
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

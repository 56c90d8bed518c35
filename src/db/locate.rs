//! Where a command's database is: DATABASE_URL when set; else the local server when one
//! answers on the standard socket or port; else the private cluster (`db::private`) in the
//! data directory, started if need be.

use std::path::PathBuf;

use crate::config::DatabaseArgs;
use crate::db::private::{PrivateCluster, Use};

/// The database a command talks to, and the private cluster behind it when there is one
/// (stopped with `close`).
#[derive(Debug)]
pub struct Database {
    pub url: String,
    pub private: Option<PrivateCluster>,
}

impl Database {
    /// Stops the private cluster when this process owns it.
    pub fn close(self) -> anyhow::Result<()> {
        match self.private {
            Some(cluster) => cluster.stop(),
            None => Ok(()),
        }
    }
}

/// Where the database is, as `open` finds it (and `kiln doctor` reports it).
pub enum Found {
    /// DATABASE_URL.
    Given(String),
    /// The machine's server, answering on the standard socket or port.
    Local(String),
    /// Neither: the private cluster of this data directory.
    Private(PathBuf),
}

/// DATABASE_URL when set; else the local server when one answers on the standard socket or
/// port; else the private cluster's data directory (`--data-dir`, or its default).
pub async fn find(args: &DatabaseArgs) -> anyhow::Result<Found> {
    if let Some(url) = &args.database_url {
        return Ok(Found::Given(url.clone()));
    }
    if let Some(url) = local_server_url().await {
        return Ok(Found::Local(url));
    }
    Ok(Found::Private(match &args.data_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => crate::db::private::default_data_dir()?,
    }))
}

/// The database `find` finds, starting the private cluster if need be. Says where the data
/// lives when it is the private cluster (on stdout for the console, on stderr for one-off
/// commands, whose stdout may be a token being captured).
pub async fn open(args: &DatabaseArgs, purpose: Use) -> anyhow::Result<Database> {
    let dir = match find(args).await? {
        Found::Given(url) | Found::Local(url) => return Ok(Database { url, private: None }),
        Found::Private(dir) => dir,
    };
    let cluster = PrivateCluster::start(&dir, args.postgres_bin.as_deref(), purpose).await?;
    let line = format!(
        "data lives in {} (a private PostgreSQL on a Unix socket there, no TCP port)",
        dir.display()
    );
    match purpose {
        Use::Console => println!("{line}"),
        Use::Command => eprintln!("{line}"),
    }
    Ok(Database {
        url: cluster.url(),
        private: Some(cluster),
    })
}

/// Runs a one-off command's `work` on the database (migrated first), then closes it: the
/// pool, and the private cluster when this command had to start it.
pub async fn with_pool<T>(
    args: &DatabaseArgs,
    work: impl AsyncFnOnce(&sqlx::PgPool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = open(args, Use::Command).await?;
    let result = async {
        let pool = crate::db::connect(&database.url).await?;
        crate::db::migrate(&pool).await?;
        let result = work(&pool).await;
        pool.close().await;
        result
    }
    .await;
    let closed = database.close();
    let value = result?;
    closed?;
    Ok(value)
}

/// The local server's URL when one accepts connections on the standard socket or on
/// 127.0.0.1:5432 (the socket preferred, as `default_database_url` does).
pub async fn local_server_url() -> Option<String> {
    let socket =
        std::path::Path::new(crate::config::LOCAL_SOCKET_DIR).join(crate::config::PG_SOCKET);
    if crate::db::private::answers(&socket).await {
        return Some(crate::config::default_database_url());
    }
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", 5432)),
    )
    .await;
    matches!(tcp, Ok(Ok(_))).then(|| {
        format!(
            "postgres://{}@127.0.0.1:5432/kiln",
            crate::config::os_user()
        )
    })
}

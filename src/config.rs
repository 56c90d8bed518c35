//! Settings of `kiln serve`. Each has a flag, a `KILN_…` variable and a default, so that
//! `kiln serve --help` is the complete list.

use std::net::SocketAddr;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL to use; created if missing. Default: the local server, database `kiln`.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(default_database_url)
    }
}

/// The local server on its standard socket (or 127.0.0.1:5432 when there is no socket),
/// logged in as the current OS user, like `psql` does. `USER` may be unset (sqlx would then
/// log in as "anonymous"), so the name comes from the process's uid, then `USER`, then
/// `postgres`.
pub fn default_database_url() -> String {
    let user = os_user_name()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "postgres".to_owned());
    let socket_dir = "/var/run/postgresql";
    if std::path::Path::new(socket_dir)
        .join(".s.PGSQL.5432")
        .exists()
    {
        format!("postgres://{user}@localhost/kiln?host={socket_dir}")
    } else {
        format!("postgres://{user}@127.0.0.1:5432/kiln")
    }
}

/// The name of the effective uid from /etc/passwd (Linux), without a libc binding.
fn os_user_name() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    })
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address the console listens on.
    #[arg(long, env = "KILN_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// The console's address as browsers and agents reach it. Default: http:// + bind address.
    /// An https:// address makes session cookies Secure.
    #[arg(long, env = "KILN_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Seconds of inactivity after which a console session ends.
    #[arg(long, env = "KILN_SESSION_IDLE_TIMEOUT", default_value_t = 1800)]
    pub session_idle_timeout: u64,

    /// Seconds after login at which a console session ends, active or not.
    #[arg(long, env = "KILN_SESSION_ABSOLUTE_TIMEOUT", default_value_t = 43200)]
    pub session_absolute_timeout: u64,

    /// Window, in seconds, over which failed logins are counted.
    #[arg(long, env = "KILN_LOGIN_FAILURE_WINDOW", default_value_t = 900)]
    pub login_failure_window: u64,

    /// Failed logins per account within the window after which each attempt is slowed.
    #[arg(long, env = "KILN_LOGIN_SLOW_AFTER", default_value_t = 3)]
    pub login_slow_after: u32,

    /// Milliseconds added per failure beyond KILN_LOGIN_SLOW_AFTER (capped at 8 steps).
    #[arg(long, env = "KILN_LOGIN_SLOWDOWN_MS", default_value_t = 400)]
    pub login_slowdown_ms: u64,

    /// Failed logins per account within the window after which logins are refused (429).
    #[arg(long, env = "KILN_LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u32,

    /// Failed logins per source IP within the window after which logins are refused (429).
    #[arg(long, env = "KILN_LOGIN_MAX_FAILURES_IP", default_value_t = 50)]
    pub login_max_failures_ip: u32,
}

impl Settings {
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    pub fn secure_cookies(&self) -> bool {
        self.public_url().starts_with("https://")
    }

    /// Settings for tests and embedding: every default, a given database and bind address.
    pub fn with_defaults(database_url: String, bind: SocketAddr) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: Settings,
        }
        let mut settings = Defaults::parse_from(["kiln"]).settings;
        settings.database.database_url = Some(database_url);
        settings.bind = bind;
        settings.public_url = None;
        settings
    }
}

//! A private PostgreSQL for a console that has no database server to talk to: a cluster of
//! its own, run from the PostgreSQL binaries installed on the machine, kept in Kiln's data
//! directory and reachable only through a Unix socket inside it (no TCP port).
//!
//! It exists so that `kiln serve` works on a laptop with nothing set up. It serves one
//! console: a lock file in the data directory, held for as long as the console runs, makes a
//! second console on the same directory refuse (several consoles need a real server and
//! `DATABASE_URL`). A cluster left running by a console that was killed is found through its
//! socket and reused, never doubled; the console that owns it stops it when it stops.
//!
//! Our own module rather than the `postgresql_embedded` crate: that crate downloads
//! PostgreSQL (at run time, or at build time with `bundled`) into a layout of its own, talks
//! TCP with a generated password and has no way to run the server under another account —
//! we need system binaries found where distributions put them, a socket-only server, and
//! the `postgres` account when Kiln runs as root. What remains is `initdb` once, `postgres`
//! as a child, and `pg_ctl stop`: a page of code with nothing downloaded.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The role `initdb` creates and Kiln logs in as, and the database Kiln keeps in it.
const ROLE: &str = "kiln";
/// Longest a Unix socket's path may be (sun_path is 108 bytes with its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;
/// How long PostgreSQL may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Who asks for the database: the console owns the cluster for as long as it runs; a one-off
/// command (`kiln user add`, `kiln migrate`) uses the console's when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Console,
    Command,
}

/// The account PostgreSQL runs under when Kiln runs as root (PostgreSQL refuses root).
#[derive(Debug, Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

/// A running private cluster. `stop` shuts it down when this process owns it.
#[derive(Debug)]
pub struct PrivateCluster {
    dir: PathBuf,
    bin: PathBuf,
    account: Option<Account>,
    /// Held (an advisory `flock`) while this process owns the cluster; None when a one-off
    /// command borrows the cluster of a running console.
    lock: Option<File>,
    /// The server when this process started it (None when it was found running).
    child: Option<Child>,
}

impl PrivateCluster {
    /// Finds the binaries, creates the cluster on first use, starts it unless it is already
    /// running, and returns once it accepts connections.
    pub async fn start(
        dir: &Path,
        bin_override: Option<&Path>,
        purpose: Use,
    ) -> anyhow::Result<Self> {
        let account = postgres_account()?;
        // Before anything is created: with no binaries there is nothing to put in it.
        let bin = find_binaries(bin_override)?;
        let socket = socket_in(dir);
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            bail!(
                "The data directory {} is too long a path for PostgreSQL's socket (at most {} \
                 characters with its socket's name); choose a shorter one with --data-dir or KILN_DATA_DIR",
                dir.display(),
                SOCKET_PATH_MAX
            );
        }
        make_data_dir(dir, account.as_ref())?;
        let Some(lock) = try_lock(dir)? else {
            if purpose == Use::Command && answers(&socket).await {
                return Ok(Self {
                    dir: dir.to_owned(),
                    bin,
                    account,
                    lock: None,
                    child: None,
                });
            }
            let holder = std::fs::read_to_string(dir.join("kiln.lock")).unwrap_or_default();
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            bail!(
                "Another Kiln console{holder} is using the private PostgreSQL in {}. A private \
                 database serves one console; to run several, start a PostgreSQL server and give \
                 every console the same DATABASE_URL (docs/deploying.md)",
                dir.display()
            );
        };
        let mut cluster = Self {
            dir: dir.to_owned(),
            bin,
            account,
            lock: Some(lock),
            child: None,
        };
        if !cluster.pgdata().join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        if answers(&socket).await {
            // Left running by a console that was killed: ours now; stopped when we stop.
            tracing::info!(dir = %dir.display(), "reusing the private PostgreSQL found running");
            return Ok(cluster);
        }
        cluster.child = Some(cluster.spawn_server()?);
        cluster.wait_until_ready(&socket).await?;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        url_for(&self.dir)
    }

    /// Stops the server (a fast shutdown: open transactions are rolled back) when this process
    /// owns it, and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        let status = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.pgdata())
            .args(["-m", "fast", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("Failed to run pg_ctl to stop the private PostgreSQL")?;
        if let Some(mut child) = self.child.take() {
            if !status.success() {
                let _ = child.kill();
            }
            let _ = child.wait();
        } else if !status.success() {
            bail!(
                "pg_ctl could not stop the private PostgreSQL in {} (see {})",
                self.dir.display(),
                self.log().display()
            );
        }
        Ok(())
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for one of the binaries, run under the `postgres` account when we are root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some(account) = &self.account {
            command.uid(account.uid).gid(account.gid);
        }
        // Our environment may point libpq's tools elsewhere (PGHOST, PGDATA…): not here.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
    }

    fn initdb(&self) -> anyhow::Result<()> {
        tracing::info!(dir = %self.dir.display(), "creating a private PostgreSQL cluster");
        let log = self.open_log()?;
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.pgdata())
            // Trust is safe here because the only way in is the socket, in a directory only
            // the account running PostgreSQL (and root) may enter, with 0700 permissions.
            .args(["-U", ROLE, "--auth=trust", "--encoding=UTF8", "--locale=C"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("Failed to run initdb")?;
        if !status.success() {
            bail!(
                "initdb failed to create the private PostgreSQL in {}: {}",
                self.pgdata().display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn spawn_server(&self) -> anyhow::Result<Child> {
        let log = self.open_log()?;
        self.command("postgres")
            .arg("-D")
            .arg(self.pgdata())
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0700",
            ])
            // A group of its own: a Ctrl-C at the terminal reaches Kiln, which then stops the
            // database after its own shutdown, not both at once.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("Failed to start the private PostgreSQL")
    }

    async fn wait_until_ready(&mut self, socket: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if answers(socket).await {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "The private PostgreSQL in {} stopped at start ({status}): {}",
                    self.dir.display(),
                    self.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "The private PostgreSQL in {} did not accept connections within {} s: {}",
                    self.dir.display(),
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn open_log(&self) -> anyhow::Result<File> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .with_context(|| format!("Failed to open {}", self.log().display()))?;
        if let Some(account) = &self.account {
            std::os::unix::fs::chown(self.log(), Some(account.uid), Some(account.gid))?;
        }
        Ok(log)
    }

    /// The last lines PostgreSQL wrote, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            format!("nothing in {}", self.log().display())
        } else {
            format!("{tail} (more in {})", self.log().display())
        }
    }
}

/// The data directory's default: `/var/lib/kiln` for root (the `postgres` account cannot
/// enter `/root`), else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    data_dir_for(
        crate::config::effective_uid(),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn data_dir_for(
    uid: Option<u32>,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> anyhow::Result<PathBuf> {
    if uid == Some(0) {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    if let Some(xdg) = xdg_data_home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("kiln"));
    }
    let home = home
        .filter(|v| !v.is_empty())
        .context("Neither XDG_DATA_HOME nor HOME is set: choose a data directory with --data-dir or KILN_DATA_DIR")?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

/// The URL Kiln connects with to the private cluster of data directory `dir`: its role and
/// database over the socket there.
pub fn url_for(dir: &Path) -> String {
    let host: String =
        url::form_urlencoded::byte_serialize(dir.to_string_lossy().as_bytes()).collect();
    format!("postgres://{ROLE}@localhost/kiln?host={host}")
}

/// The private cluster's socket in data directory `dir`.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join(crate::config::PG_SOCKET)
}

/// Whether a PostgreSQL server accepts connections on the Unix socket `path`.
pub async fn answers(path: &Path) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(path)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Where distributions put the server's binaries, after `PATH`: Debian and Ubuntu
/// (`/usr/lib/postgresql/<version>/bin`), the PGDG packages of Fedora/RHEL
/// (`/usr/pgsql-<version>/bin`), Homebrew (`…/opt/postgresql@<version>/bin`), Postgres.app.
/// Within one pattern, the highest version first.
const USUAL_PLACES: &[(&str, &str, &str)] = &[
    ("/usr/lib/postgresql", "", "bin"),
    ("/usr", "pgsql-", "bin"),
    ("/opt/homebrew/opt", "postgresql@", "bin"),
    ("/usr/local/opt", "postgresql@", "bin"),
    (
        "/Applications/Postgres.app/Contents/Versions",
        "latest",
        "bin",
    ),
];
const BINARIES: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// The directory holding `initdb`, `postgres` and `pg_ctl`: `bin_override` alone when given,
/// else the first of `PATH` and the usual places that has all three.
pub fn find_binaries(bin_override: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match bin_override {
        Some(dir) => vec![dir.to_owned()],
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(USUAL_PLACES.iter().flat_map(|(parent, prefix, bin)| {
                versions_under(Path::new(parent), prefix)
                    .into_iter()
                    .map(move |dir| dir.join(bin))
            }))
            .collect(),
    };
    candidates
        .into_iter()
        .find(|dir| BINARIES.iter().all(|b| is_executable(&dir.join(b))))
        .ok_or_else(|| {
            let looked = match bin_override {
                Some(dir) => format!("in {} (KILN_POSTGRES_BIN)", dir.display()),
                None => "on PATH nor in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin or Homebrew's \
                         postgresql@*/bin"
                    .to_owned(),
            };
            anyhow::anyhow!(
                "No PostgreSQL server answers on the standard socket or 127.0.0.1:5432, \
                 DATABASE_URL is not set, and PostgreSQL's programs (initdb, postgres, pg_ctl) \
                 are not {looked}, so Kiln cannot run a private one. Install them:\n  \
                 Debian/Ubuntu: sudo apt-get install postgresql\n  \
                 Fedora:        sudo dnf install postgresql-server\n  \
                 macOS:         brew install postgresql@17\n\
                 or point Kiln at a server with DATABASE_URL=postgres://user@host/kiln"
            )
        })
}

/// The entries of `parent` named `prefix…`, highest version first (`15` before `9.6`).
fn versions_under(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let key = version
                .split('.')
                .map(|part| part.parse().unwrap_or(0))
                .collect();
            Some((key, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, path)| path).collect()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Creates the data directory (0700, like PostgreSQL's own) and hands it to the account
/// PostgreSQL runs under.
fn make_data_dir(dir: &Path, account: Option<&Account>) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("Failed to create the data directory {}", dir.display()))?;
    if let Some(account) = account {
        std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).with_context(|| {
            format!(
                "Failed to hand the data directory {} to the {} account",
                dir.display(),
                account.name
            )
        })?;
    }
    Ok(())
}

/// Takes the data directory's lock, writing our pid into it; None when another process holds it.
fn try_lock(dir: &Path) -> anyhow::Result<Option<File>> {
    let path = dir.join("kiln.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("Failed to open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("Failed to lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Some(file))
}

/// None unless we are root; then the `postgres` account, or an error saying what to do.
fn postgres_account() -> anyhow::Result<Option<Account>> {
    if crate::config::effective_uid() != Some(0) {
        return Ok(None);
    }
    account_in(&std::fs::read_to_string("/etc/passwd").unwrap_or_default()).map(Some)
}

/// The `postgres` account of a passwd file, or an error saying what to do without it.
fn account_in(passwd: &str) -> anyhow::Result<Account> {
    let account = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres")).then(|| {
            Some(Account {
                name: "postgres".to_owned(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })?
    });
    match account {
        Some(account) => Ok(account),
        None => bail!(
            "Kiln runs as root and PostgreSQL refuses to: there is no `postgres` account to run \
             the private PostgreSQL under. Install PostgreSQL's package (it creates the account), \
             run Kiln as an ordinary user, or set DATABASE_URL"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_postgres_as_the_postgres_account_or_says_plainly_why_not() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        let account = account_in(passwd).unwrap();
        assert_eq!(
            (account.name.as_str(), account.uid, account.gid),
            ("postgres", 101, 104)
        );
        let error = account_in("root:x:0:0:root:/root:/bin/bash\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "Kiln runs as root and PostgreSQL refuses to: there is no `postgres` account"
            ) && error.contains("Install PostgreSQL's package")
                && error.contains("DATABASE_URL"),
            "{error}"
        );
    }

    #[test]
    fn the_data_directory_defaults_to_xdg_then_home_and_var_lib_for_root() {
        let some = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            data_dir_for(Some(0), some("/x"), some("/root")).unwrap(),
            PathBuf::from("/var/lib/kiln"),
            "root: a directory the postgres account can reach, not /root"
        );
        assert_eq!(
            data_dir_for(Some(1000), some("/home/dana/.data"), some("/home/dana")).unwrap(),
            PathBuf::from("/home/dana/.data/kiln")
        );
        assert_eq!(
            data_dir_for(Some(1000), some(""), some("/home/dana")).unwrap(),
            PathBuf::from("/home/dana/.local/share/kiln")
        );
        assert!(data_dir_for(Some(1000), None, None).is_err());
    }

    #[test]
    fn versions_sort_numerically_highest_first() {
        let dir = std::env::temp_dir().join(format!("kiln-versions-{}", std::process::id()));
        for v in ["9.6", "15", "13", "notes"] {
            std::fs::create_dir_all(dir.join(format!("pgsql-{v}"))).unwrap();
        }
        let found: Vec<String> = versions_under(&dir, "pgsql-")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found[..3], ["pgsql-15", "pgsql-13", "pgsql-9.6"]);
    }

    #[test]
    fn no_binaries_names_the_install_command_of_each_system() {
        let empty = std::env::temp_dir().join(format!("kiln-no-bin-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let error = find_binaries(Some(&empty)).unwrap_err().to_string();
        std::fs::remove_dir_all(&empty).unwrap();
        for words in [
            "sudo apt-get install postgresql",
            "sudo dnf install postgresql-server",
            "brew install postgresql@17",
            "DATABASE_URL",
            "KILN_POSTGRES_BIN",
        ] {
            assert!(error.contains(words), "{words:?} missing from: {error}");
        }
    }

    #[test]
    fn the_url_reaches_the_socket_in_the_data_directory() {
        let options: sqlx::postgres::PgConnectOptions =
            url_for(Path::new("/home/dana/my data/kiln"))
                .parse()
                .unwrap();
        assert_eq!(
            options.get_socket(),
            Some(&PathBuf::from("/home/dana/my data/kiln"))
        );
        assert_eq!(options.get_username(), "kiln");
        assert_eq!(options.get_database(), Some("kiln"));
    }
}

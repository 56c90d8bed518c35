//! The private PostgreSQL (`db::private`): the real `kiln` binary in a mount + network
//! namespace (`unshare`) where the machine's own server is out of sight — the standard socket
//! directory is an empty tmpfs and 127.0.0.1:5432 is another network's — so that Kiln must
//! run its own, from the machine's PostgreSQL binaries, in a data directory of the test's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::{line_with, sigterm_and_wait};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Mounts an empty tmpfs over the standard socket directory, empties PATH when asked, then
/// becomes `kiln` (exec: the child's pid is Kiln's).
const ISOLATE: &str = r#"if [ -d /var/run/postgresql ]; then /bin/mount -t tmpfs kiln-test /var/run/postgresql || exit 97; fi
if [ -n "$KILN_TEST_EMPTY_PATH" ]; then PATH=/nonexistent; export PATH; fi
if [ -n "$KILN_TEST_AS_NOBODY" ]; then exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups "$0" "$@"; fi
exec "$0" "$@""#;

/// A data directory of the test's own; on drop, whatever PostgreSQL still runs from it is
/// stopped (immediate shutdown) and the directory removed, even when the test failed.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        // Short: a Unix socket's path has at most 107 characters.
        let dir = std::env::temp_dir().join(format!(
            "kiln-private-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The postmaster's pid while one runs from this directory.
    fn postmaster(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.0.join("postgres/postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// How many postmasters run from this directory: processes started as `postgres -D
    /// <dir>/postgres` whose parent is not one of them. (A backend the postmaster has just
    /// forked carries its parent's command line until it renames itself: it is a child, not
    /// a second server.)
    fn postmasters(&self) -> usize {
        let wanted = format!("{}/postgres", self.0.display());
        let mut started: Vec<(u32, u32)> = Vec::new(); // (pid, parent)
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_server = args.first().is_some_and(|a| a.ends_with("postgres"))
                && args.windows(2).any(|w| w[0] == "-D" && w[1] == wanted);
            if !is_server {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command's ")": state, then the parent's pid.
            let parent = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            started.push((pid, parent));
        }
        started
            .iter()
            .filter(|(_, parent)| !started.iter().any(|(pid, _)| pid == parent))
            .count()
    }

    fn url(&self) -> String {
        let host: String =
            url::form_urlencoded::byte_serialize(self.0.to_string_lossy().as_bytes()).collect();
        format!("postgres://kiln@localhost/kiln?host={host}")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster() {
            let _ = std::process::Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status();
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// `kiln <args>` in the namespace, without DATABASE_URL, on the test's data directory.
fn isolated(dir: &DataDir, args: &[&str], env: &[(&str, &str)]) -> Child {
    isolated_program(dir, KILN, args, env)
}

/// `program <args>` in the namespace, without DATABASE_URL, on the test's data directory.
fn isolated_program(dir: &DataDir, program: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new("unshare");
    if kiln::config::effective_uid() != Some(0) {
        // Not root: a user namespace of our own uid lets us mount and unshare the network.
        command.args(["--user", "--map-current-user"]);
    }
    command
        .args(["--mount", "--net", "--", "/bin/sh", "-c", ISOLATE, program])
        .args(args)
        .env_remove("DATABASE_URL")
        .env("KILN_DATA_DIR", dir.path())
        .env("KILN_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().expect("unshare runs")
}

/// A console in the namespace, once it listens: (child, stdout lines so far, stderr so far).
struct Console {
    child: Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    data_line: String,
    before_listening: Vec<String>,
}

async fn console(dir: &DataDir) -> Console {
    listening(isolated(dir, &["serve"], &[])).await
}

async fn listening(mut child: Child) -> Console {
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let data_line = line_with(&mut stdout, "data lives in").await;
    let mut before_listening = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let done = line.contains("kiln console listening");
            before_listening.push(line);
            if done {
                return;
            }
        }
        panic!("the console ended before listening: {before_listening:#?}");
    })
    .await
    .expect("listening within 120 s");
    Console {
        child,
        stdout,
        stderr,
        data_line,
        before_listening,
    }
}

impl Console {
    /// SIGTERM; waits for the exit and returns the rest of stdout.
    async fn stop(mut self) -> String {
        let status = sigterm_and_wait(&mut self.child).await;
        assert!(status.success(), "the console stops cleanly: {status}");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            rest.push(line);
        }
        while let Ok(Some(line)) = self.stderr.next_line().await {
            assert!(
                !line.contains("ERROR") && !line.contains(" WARN "),
                "a clean stop logs no error: {line}"
            );
        }
        rest.join("\n")
    }
}

async fn users(dir: &DataDir) -> Vec<String> {
    let pool = sqlx::PgPool::connect(&dir.url()).await.unwrap();
    let names = sqlx::query_scalar("SELECT name FROM users ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    names
}

#[tokio::test]
async fn with_no_server_reachable_kiln_runs_a_private_postgres_reuses_it_and_stops_it() {
    let dir = DataDir::new();
    let first = console(&dir).await;
    assert_eq!(
        first.data_line,
        format!(
            "data lives in {} (a private PostgreSQL on a Unix socket there, no TCP port)",
            dir.path().display()
        )
    );
    assert!(
        first
            .before_listening
            .iter()
            .any(|l| l.contains("creating a private PostgreSQL cluster")),
        "the first start creates the cluster"
    );
    let pid = dir
        .postmaster()
        .expect("a postmaster runs from the data dir");
    // Socket only: the pid file's listen-address line is empty, the socket is in the data dir.
    let pidfile = std::fs::read_to_string(dir.path().join("postgres/postmaster.pid")).unwrap();
    let lines: Vec<&str> = pidfile.lines().collect();
    assert_eq!(lines[4], dir.path().to_str().unwrap(), "socket directory");
    assert_eq!(lines[5].trim(), "", "no TCP listen address");
    assert_eq!(users(&dir).await, ["admin"], "Kiln's own database is there");

    let rest = first.stop().await;
    assert!(!rest.contains("error"), "{rest}");
    assert!(!alive(pid), "the private PostgreSQL stops with the console");
    assert_eq!(dir.postmaster(), None);

    let second = console(&dir).await;
    assert!(
        !second
            .before_listening
            .iter()
            .any(|l| l.contains("creating a private PostgreSQL cluster")),
        "the next start reuses the cluster"
    );
    let rest = second.stop().await;
    assert!(
        !rest.contains("initial admin password"),
        "the admin made on the first start is still there, so no new password: {rest}"
    );
    assert_eq!(dir.postmaster(), None);
}

#[tokio::test]
async fn a_killed_console_s_postgres_is_found_and_reused_and_a_second_console_refuses() {
    let dir = DataDir::new();
    let mut first = console(&dir).await;
    let pid = dir.postmaster().expect("a postmaster runs");
    first.child.kill().await.unwrap(); // SIGKILL: no chance to stop anything
    first.child.wait().await.unwrap();
    assert!(alive(pid), "PostgreSQL outlives a killed console");

    let second = console(&dir).await;
    assert!(
        second
            .before_listening
            .iter()
            .any(|l| l.contains("reusing the private PostgreSQL found running")),
        "{:#?}",
        second.before_listening
    );
    assert_eq!(
        dir.postmaster(),
        Some(pid),
        "the same server, not a new one"
    );
    assert_eq!(dir.postmasters(), 1, "not doubled");

    // A second console on the same directory while this one runs: refused, in words.
    let third = isolated(&dir, &["serve"], &[])
        .wait_with_output()
        .await
        .unwrap();
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    let console_pid = second.child.id().unwrap();
    assert!(
        said.contains(&format!(
            "Another Kiln console (pid {console_pid}) is using the private PostgreSQL in {}",
            dir.path().display()
        )) && said.contains("DATABASE_URL"),
        "{said}"
    );
    assert_eq!(dir.postmasters(), 1);

    // A one-off command borrows the running console's cluster and leaves it running.
    let mut add = isolated(
        &dir,
        &[
            "user",
            "add",
            "dana",
            "--role",
            "operator",
            "--password-stdin",
        ],
        &[],
    );
    let mut stdin = add.stdin.take().unwrap();
    stdin.write_all(b"a long enough password\n").await.unwrap();
    drop(stdin);
    let added = add.wait_with_output().await.unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert_eq!(users(&dir).await, ["admin", "dana"]);
    assert_eq!(dir.postmaster(), Some(pid), "the command left it running");

    second.stop().await;
    assert!(!alive(pid), "the console that reused it stops it");
}

#[tokio::test]
async fn a_one_off_command_starts_the_private_postgres_for_itself_and_stops_it() {
    let dir = DataDir::new();
    let mut create = isolated(
        &dir,
        &["token", "create", "--enrollment", "--ttl", "60"],
        &[],
    );
    let mut stdout = String::new();
    create
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    let mut stderr = String::new();
    create
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(create.wait().await.unwrap().success(), "{stderr}");
    assert!(stdout.contains("enrollment token"), "{stdout}");
    assert!(
        !stdout.contains("data lives in") && stderr.contains("data lives in"),
        "where the data lives goes to stderr, leaving stdout to the token"
    );
    assert_eq!(dir.postmaster(), None, "stopped again after the command");
}

#[tokio::test]
async fn with_database_url_set_kiln_never_starts_a_database() {
    let dir = DataDir::new();
    let out = isolated(
        &dir,
        &["serve"],
        &[("DATABASE_URL", "postgres://kiln@127.0.0.1:1/kiln")],
    )
    .wait_with_output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Failed to reach PostgreSQL at postgres://kiln@127.0.0.1:1/kiln"),
        "{said}"
    );
    assert!(!dir.path().exists(), "no data directory was made");
}

#[tokio::test]
async fn with_no_postgres_binaries_the_error_names_the_command_that_installs_them() {
    let dir = DataDir::new();
    let out = isolated(
        &dir,
        &["serve"],
        &[
            ("KILN_TEST_EMPTY_PATH", "1"),
            ("KILN_POSTGRES_BIN", "/nonexistent/postgres/bin"),
        ],
    )
    .wait_with_output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for words in [
        "No PostgreSQL server answers on the standard socket or 127.0.0.1:5432",
        "/nonexistent/postgres/bin (KILN_POSTGRES_BIN)",
        "Debian/Ubuntu: sudo apt-get install postgresql",
        "Fedora:        sudo dnf install postgresql-server",
        "macOS:         brew install postgresql@17",
        "DATABASE_URL=",
    ] {
        assert!(said.contains(words), "{words:?} missing from: {said}");
    }
    assert!(!dir.path().exists(), "nothing was created");
}

/// Stand-ins for what README's first command (`scripts/serve`) calls around Kiln: `cargo`
/// runs the built binary (`cargo run … -- serve ARGS` → `kiln serve ARGS`); `sudo` and
/// `apt-get` write down how they were called and install nothing, so that the machine's own
/// packages are never touched.
struct Shims(PathBuf);

impl Shims {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("kiln-shims-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let calls = dir.join("calls");
        std::fs::write(&calls, "").unwrap();
        for (name, body) in [
            (
                "cargo",
                format!("while [ \"$1\" != -- ]; do shift; done; shift; exec {KILN} \"$@\""),
            ),
            ("sudo", format!("echo \"sudo $*\" >> {}", calls.display())),
            (
                "apt-get",
                format!("echo \"apt-get $*\" >> {}", calls.display()),
            ),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // README's script, copied beside them: the test may run it as `nobody`, who may not be
        // able to enter the checkout (its `cargo` is the stand-in, so nothing else is needed).
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::copy(SERVE_SCRIPT, dir.join("scripts/serve")).unwrap();
        // The test may run the script as `nobody`, who must reach the shims and the record.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&calls, std::fs::Permissions::from_mode(0o666)).unwrap();
        Self(dir)
    }

    /// PATH: the shims, then the system's directories (but not /usr/local/bin, where this
    /// machine links PostgreSQL's programs: the script must find them where Debian puts them).
    fn path(&self) -> String {
        format!("{}:/usr/bin:/bin", self.0.display())
    }

    fn script(&self) -> String {
        self.0.join("scripts/serve").display().to_string()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.0.join("calls")).unwrap()
    }
}

impl Drop for Shims {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SERVE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/serve");

#[tokio::test]
async fn readme_s_first_command_starts_the_console_with_the_postgres_binaries_it_finds() {
    let dir = DataDir::new();
    let shims = Shims::new();
    let path = shims.path();
    let child = isolated_program(&dir, &shims.script(), &[], &[("PATH", &path)]);
    let console = listening(child).await;
    assert!(console.data_line.contains(dir.path().to_str().unwrap()));
    assert!(dir.postmaster().is_some(), "a private PostgreSQL runs");
    console.stop().await;
    assert_eq!(
        shims.calls(),
        "",
        "nothing was installed: the binaries were there"
    );
    assert_eq!(dir.postmaster(), None);
}

#[tokio::test]
async fn readme_s_first_command_installs_postgres_with_sudo_when_there_are_no_binaries() {
    let dir = DataDir::new();
    let shims = Shims::new();
    let path = shims.path();
    let mut env = vec![
        ("PATH", path.as_str()),
        ("KILN_POSTGRES_BIN", "/nonexistent/postgres/bin"),
    ];
    // Not root: the script must use sudo. The test runs it as `nobody` when it is root.
    if kiln::config::effective_uid() == Some(0) {
        env.push(("KILN_TEST_AS_NOBODY", "1"));
    }
    let out = isolated_program(&dir, &shims.script(), &[], &env)
        .wait_with_output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("serve: installing postgresql"), "{said}");
    assert_eq!(
        shims.calls(),
        "sudo apt-get update -qq\n\
         sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql\n"
    );
    // The stand-in installed nothing, so Kiln says what to do, and fails.
    assert!(!out.status.success());
    assert!(
        said.contains("Debian/Ubuntu: sudo apt-get install postgresql"),
        "{said}"
    );
}

#[tokio::test]
async fn doctor_says_where_the_private_postgres_would_live_and_how_much_disk_it_has() {
    let dir = DataDir::new();
    let out = isolated(
        &dir,
        &["doctor"],
        &[("KILN_PUBLIC_URL", "http://127.0.0.1:1")],
    )
    .wait_with_output()
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "ok    database    no server answers on the standard socket or port and DATABASE_URL is unset: `kiln serve` runs a private PostgreSQL in {}",
            dir.path().display()
        )),
        "{said}"
    );
    assert!(
        said.lines().any(|l| l
            .starts_with(&format!("ok    data dir    {}: ", dir.path().display()))
            && l.ends_with(" free")),
        "{said}"
    );
    assert!(!out.status.success(), "the public URL check fails: {said}");
    assert!(!dir.path().exists(), "doctor starts and creates nothing");
}

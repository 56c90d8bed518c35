//! Settings of `kiln serve`. Each has a flag, a `KILN_…` variable and a default, so that
//! `kiln serve --help` is the complete list.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL to use; created if missing. Default: the local server, database `kiln`.
    /// With DATABASE_URL set, Kiln never starts a database of its own.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where Kiln keeps a private PostgreSQL when DATABASE_URL is unset and no server answers
    /// on the standard socket or port. Default: $XDG_DATA_HOME/kiln, else
    /// ~/.local/share/kiln (/var/lib/kiln as root).
    #[arg(long = "data-dir", env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The directory holding PostgreSQL's initdb, postgres and pg_ctl for the private
    /// database; when set, the only place Kiln looks. Default: PATH, then the usual places
    /// (/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, Homebrew).
    #[arg(long = "postgres-bin", env = "KILN_POSTGRES_BIN")]
    pub postgres_bin: Option<PathBuf>,
}

impl DatabaseArgs {
    /// DATABASE_URL when set, else the local server's default URL (no private cluster: for
    /// callers that opened the database already, or that need the machine's server).
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
    let user = os_user();
    let socket_dir = LOCAL_SOCKET_DIR;
    if std::path::Path::new(socket_dir).join(PG_SOCKET).exists() {
        format!("postgres://{user}@localhost/kiln?host={socket_dir}")
    } else {
        format!("postgres://{user}@127.0.0.1:5432/kiln")
    }
}

/// The file name of PostgreSQL's Unix socket (port 5432) inside its socket directory.
pub const PG_SOCKET: &str = ".s.PGSQL.5432";

pub const LOCAL_SOCKET_DIR: &str = "/var/run/postgresql";

pub fn os_user() -> String {
    os_user_name()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "postgres".to_owned())
}

/// The effective uid, from /proc (Linux), without a libc binding.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The name of the effective uid from /etc/passwd (Linux), without a libc binding.
fn os_user_name() -> Option<String> {
    let uid = effective_uid()?.to_string();
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

    /// Make the console alive for a first look: a user `demo` turns autoscaling on (3 to 5
    /// local servers), enqueues a trickle of jobs (some failing, some slow), posts an app
    /// metric with an alert rule, annotates, and bakes and releases a second image. Local
    /// provider only; without the flag, none of it runs.
    #[arg(long, env = "KILN_DEMO")]
    pub demo: bool,

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

    /// Where servers live: `local` (agent processes on this machine) or `aws` (EC2).
    #[arg(long, env = "KILN_PROVIDER", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,

    /// The fleet's name: the value of the `kiln:fleet` tag on everything Kiln creates.
    #[arg(long, env = "KILN_FLEET", default_value = "default")]
    pub fleet: String,

    /// An EC2-compatible endpoint (moto, LocalStack); unset means AWS itself. Region and
    /// credentials come from the standard AWS chain (AWS_REGION, AWS_PROFILE, …).
    #[arg(long, env = "KILN_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,

    /// Attempts per EC2 call, the first included (throttling and 5xx are retried with backoff).
    #[arg(long, env = "KILN_EC2_MAX_ATTEMPTS", default_value_t = 5)]
    pub ec2_max_attempts: u32,

    /// Client-side token buckets for EC2's request rate limits, shared by everything the
    /// console does: `CLASS=SIZE/RATE` for run (RunInstances), terminate, describe and mutate
    /// (other changes); each class left out keeps AWS's default (5/2, 5/2, 100/20, 200/5).
    #[arg(long, env = "KILN_EC2_BUCKETS", default_value = "")]
    pub ec2_buckets: String,

    /// Seconds one EC2 call may take, retries included.
    #[arg(long, env = "KILN_EC2_TIMEOUT", default_value_t = 60)]
    pub ec2_timeout: u64,

    /// A cap on the fleet's size: a launch beyond it is refused.
    #[arg(long, env = "KILN_MAX_SERVERS", default_value_t = 500)]
    pub max_servers: u32,

    /// Old-image cleanup keeps the newest this many images of each name.
    #[arg(long, env = "KILN_IMAGE_KEEP", default_value_t = 5)]
    pub image_keep: u32,

    /// Old-image cleanup keeps images younger than this many days.
    #[arg(long, env = "KILN_IMAGE_MIN_AGE_DAYS", default_value_t = 14)]
    pub image_min_age_days: u32,

    /// Instance types offered on the launch form (comma-separated; the local provider ignores them).
    #[arg(
        long,
        env = "KILN_INSTANCE_TYPES",
        value_delimiter = ',',
        default_value = "t3.micro,t3.small,t3.medium,c5.large,c5.xlarge"
    )]
    pub instance_types: Vec<String>,

    /// Seconds a local server's agent gets between SIGTERM and SIGKILL when terminated.
    #[arg(long, env = "KILN_LOCAL_TERMINATE_GRACE", default_value_t = 10)]
    pub local_terminate_grace: u64,

    /// Jobs each local server's agent runs at once.
    #[arg(long, env = "KILN_LOCAL_SLOTS", default_value_t = 1)]
    pub local_slots: u32,

    /// Directory for local servers' agent logs. Default: $TMPDIR/kiln-local/<fleet>.
    #[arg(long, env = "KILN_LOCAL_DIR")]
    pub local_dir: Option<std::path::PathBuf>,

    /// Background tasks this process runs at once.
    #[arg(long, env = "KILN_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// Seconds a claimed task is held without renewal; a crashed process's tasks run again
    /// after it.
    #[arg(long, env = "KILN_TASK_LEASE", default_value_t = 60)]
    pub task_lease: u64,

    /// Seconds between looks for due tasks when no notification arrives.
    #[arg(long, env = "KILN_TASK_POLL", default_value_t = 5)]
    pub task_poll: u64,

    /// Seconds between reconciles of the servers table with the provider.
    #[arg(long, env = "KILN_RECONCILE_INTERVAL", default_value_t = 30)]
    pub reconcile_interval: u64,

    /// Seconds a graceful terminate waits for a server's running jobs before it terminates
    /// the server anyway (those jobs then go back to the queue).
    #[arg(long, env = "KILN_DRAIN_TIMEOUT", default_value_t = 600)]
    pub drain_timeout: u64,

    /// Milliseconds a drained server waits for others before they are terminated together
    /// (one TerminateInstances for up to 1,000); a forced terminate does not wait. 0 to 60000.
    #[arg(long, env = "KILN_TERMINATE_GATHER_MS", default_value_t = 1000)]
    pub terminate_gather_ms: u64,

    /// Seconds a rollout waits for a batch of replacements' agents to register and heartbeat
    /// before it fails (and puts the fleet back on the previous image).
    #[arg(long, env = "KILN_HEALTH_TIMEOUT", default_value_t = 300)]
    pub health_timeout: u64,

    /// Seconds a rollout keeps the servers it replaced running, disabled, so that a rollback
    /// within it only enables them again; after it they are terminated once idle.
    #[arg(long, env = "KILN_ROLLBACK_GRACE", default_value_t = 1800)]
    pub rollback_grace: u64,

    /// A rollout's default batch size: replacements launched at once (the surge).
    #[arg(long, env = "KILN_ROLLOUT_BATCH", default_value_t = 5)]
    pub rollout_batch: u32,

    /// A rollout's default minimum healthy percentage: enabled, healthy workers never drop
    /// below this share of the fleet while it runs.
    #[arg(long, env = "KILN_MIN_HEALTHY", default_value_t = 100)]
    pub min_healthy_percent: u32,

    /// A release's default canary: servers replaced first, alone (0: no canary).
    #[arg(long, env = "KILN_RELEASE_CANARY", default_value_t = 0)]
    pub release_canary: u32,

    /// A release's default soak time in seconds after each batch (the canary's included):
    /// its guards are watched before the next batch starts.
    #[arg(long, env = "KILN_RELEASE_SOAK_S", default_value_t = 0)]
    pub release_soak_s: u32,

    /// A release's default health check: a command run as a job on each new server, which
    /// must succeed before the server counts as healthy (empty: none).
    #[arg(long, env = "KILN_RELEASE_HEALTH_COMMAND", default_value = "")]
    pub release_health_command: String,

    /// The alerts that guard a release by default: `any` (any alert firing on the new
    /// servers), alert ids separated by commas, or empty for none.
    #[arg(long, env = "KILN_RELEASE_GUARD_ALERTS", default_value = "")]
    pub release_guard_alerts: String,

    /// When a release waits for an operator's go-ahead by default: none, after_canary or
    /// each_batch.
    #[arg(long, env = "KILN_RELEASE_APPROVAL", default_value = "none")]
    pub release_approval: crate::domain::Approval,

    /// Seconds a release waits for a go-ahead by default (at most 86400).
    #[arg(long, env = "KILN_RELEASE_APPROVAL_DEADLINE_S", default_value_t = 3600)]
    pub release_approval_deadline_s: u32,

    /// What happens when nobody decides in time: rollback or continue.
    #[arg(long, env = "KILN_RELEASE_ON_DEADLINE", default_value = "rollback")]
    pub release_on_deadline: crate::domain::DeadlineAction,

    /// What a canary with too few jobs to judge does: wait (for a human) or continue.
    #[arg(
        long,
        env = "KILN_RELEASE_ON_INSUFFICIENT_DATA",
        default_value = "wait"
    )]
    pub release_on_insufficient_data: crate::domain::InsufficientData,

    /// How much longer the canary's p95 job duration may be than the old image's before it
    /// is judged worse (0.5: 50% longer).
    #[arg(long, env = "KILN_RELEASE_CANARY_P95_MARGIN", default_value_t = 0.5)]
    pub release_canary_p95_margin: f64,

    /// Seconds a job attempt's lease lasts; agents' heartbeats renew it. An attempt whose
    /// lease runs out (server died, agent killed) is recorded `lost` and the job requeued.
    #[arg(long, env = "KILN_LEASE", default_value_t = 60)]
    pub job_lease: u64,

    /// Seconds between metric rollup passes (1-minute and 1-hour rollups of new points).
    #[arg(long, env = "KILN_METRICS_ROLLUP_INTERVAL", default_value_t = 10)]
    pub metrics_rollup_interval: u64,

    /// Seconds between samples of the console's own figures (jobs, servers, agents' system
    /// figures, EC2 calls), recorded as metrics.
    #[arg(long, env = "KILN_METRICS_SAMPLE_INTERVAL", default_value_t = 10)]
    pub metrics_sample_interval: u64,

    /// Days raw metric points are kept (and how old a submitted measurement may be).
    #[arg(long, env = "KILN_METRICS_RETENTION_DAYS", default_value_t = 7)]
    pub metrics_retention_days: u64,

    /// Days the output of a finished job is kept (the job itself stays longer).
    #[arg(long, env = "KILN_RETAIN_JOB_OUTPUT_DAYS", default_value_t = 7)]
    pub retain_job_output_days: u32,

    /// Days a finished job (with its attempts) is kept; a bake's jobs stay with the bake.
    #[arg(long, env = "KILN_RETAIN_JOBS_DAYS", default_value_t = 30)]
    pub retain_jobs_days: u32,

    /// Days a finished background task is kept.
    #[arg(long, env = "KILN_RETAIN_TASKS_DAYS", default_value_t = 7)]
    pub retain_tasks_days: u32,

    /// Days an audit event is kept.
    #[arg(long, env = "KILN_RETAIN_AUDIT_DAYS", default_value_t = 400)]
    pub retain_audit_days: u32,

    /// Days a scaling decision (and a finished recycle) is kept.
    #[arg(long, env = "KILN_RETAIN_DECISIONS_DAYS", default_value_t = 30)]
    pub retain_decisions_days: u32,

    /// The GitHub webhook's secret (`POST /hooks/github` checks each delivery's HMAC-SHA256
    /// signature with it). Unset: the webhook refuses every delivery.
    #[arg(long, env = "KILN_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Pushes to this branch start a bake; other branches are ignored.
    #[arg(long, env = "KILN_WEBHOOK_BRANCH", default_value = "main")]
    pub webhook_branch: String,

    /// The recipe (by name) a push bakes.
    #[arg(long, env = "KILN_WEBHOOK_RECIPE")]
    pub webhook_recipe: Option<String>,

    /// Seconds between an agent's heartbeats (told to agents when they register).
    #[arg(long, env = "KILN_HEARTBEAT", default_value_t = 5)]
    pub heartbeat: u64,

    /// Milliseconds between writes of agents' heartbeats (all of this console's agents in one
    /// statement). A server's last-seen time lags by at most this: 50 to 1000.
    #[arg(long, env = "KILN_HEARTBEAT_FLUSH_MS", default_value_t = 1000)]
    pub heartbeat_flush_ms: u64,

    /// A job's timeout when its enqueuer gives none, in seconds.
    #[arg(long, env = "KILN_JOB_TIMEOUT", default_value_t = 3600)]
    pub default_job_timeout: u64,

    /// The `kiln` binary local servers run as their agent. Default: this binary.
    #[arg(long, env = "KILN_AGENT_EXE")]
    pub agent_exe: Option<std::path::PathBuf>,

    /// When set, `GET /metrics` requires it as a bearer token.
    #[arg(long, env = "KILN_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Seconds between alert evaluation passes (one console evaluates at a time).
    #[arg(long, env = "KILN_ALERT_INTERVAL", default_value_t = 15)]
    pub alert_interval: u64,

    /// Seconds between autoscaling decisions (one console decides at a time).
    #[arg(long, env = "KILN_SCALING_INTERVAL", default_value_t = 15)]
    pub scaling_interval: u64,

    /// Multiplies every alert condition's `for` (tests shorten minutes to seconds; 1 in use).
    #[arg(long, env = "KILN_ALERT_FOR_SCALE", default_value_t = 1.0, hide = true)]
    pub alert_for_scale: f64,

    /// Seconds a notification is retried (with backoff) before it is marked failed.
    #[arg(long, env = "KILN_NOTIFY_RETRY_WINDOW", default_value_t = 900)]
    pub notify_retry_window: u64,

    /// The first retry delay of a failed notification, in milliseconds (doubling, at most 30x).
    #[arg(long, env = "KILN_NOTIFY_RETRY_BASE_MS", default_value_t = 5000)]
    pub notify_retry_base_ms: u64,

    /// Hosts a channel may reach even though they resolve to link-local or metadata
    /// addresses (comma-separated; by default none may).
    #[arg(long, env = "KILN_ALERT_ALLOW_HOSTS", value_delimiter = ',')]
    pub alert_allow_hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    Local,
    Aws,
}

impl Settings {
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    pub fn local_log_dir(&self) -> std::path::PathBuf {
        self.local_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-local").join(&self.fleet))
    }

    /// Checks what clap cannot: combinations of settings.
    /// How long the records that grow without bound are kept.
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            job_output_days: self.retain_job_output_days,
            jobs_days: self.retain_jobs_days,
            tasks_days: self.retain_tasks_days,
            audit_days: self.retain_audit_days,
            decisions_days: self.retain_decisions_days,
        }
    }

    /// A rollout's defaults as the console's settings give them; the guard alerts' list
    /// may not parse.
    pub fn rollout_defaults(
        &self,
    ) -> Result<crate::domain::release_plan::Defaults, crate::domain::ValidationError> {
        use crate::domain::release_plan::{Defaults, GuardAlerts, Plan, RolloutSettings};
        let clamp = |n: u64| n.min(i32::MAX as u64) as i32;
        let (guard_any, guard_rule_ids) = match GuardAlerts::parse(&self.release_guard_alerts)? {
            GuardAlerts::Any => (true, Vec::new()),
            GuardAlerts::Rules(ids) => (false, ids),
        };
        Ok(Defaults {
            settings: RolloutSettings {
                batch_size: clamp(self.rollout_batch.into()),
                min_healthy_percent: clamp(self.min_healthy_percent.into()),
                health_timeout_s: clamp(self.health_timeout),
                drain_timeout_s: clamp(self.drain_timeout.min(86_400)),
                grace_s: clamp(self.rollback_grace),
            },
            plan: Plan {
                canary: clamp(self.release_canary.into()),
                soak_s: clamp(self.release_soak_s.into()),
                health_command: self.release_health_command.trim().to_owned(),
                guard_any,
                guard_rule_ids,
                approval: self.release_approval,
                approval_deadline_s: clamp(self.release_approval_deadline_s.into()),
                on_deadline: self.release_on_deadline,
                on_insufficient_data: self.release_on_insufficient_data,
                canary_p95_margin: self.release_canary_p95_margin,
            },
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.demo && self.provider != ProviderKind::Local {
            anyhow::bail!(
                "--demo launches servers as `kiln agent` processes on this machine: it runs with the local provider only, not KILN_PROVIDER=aws."
            );
        }
        let days = [
            self.retain_job_output_days,
            self.retain_jobs_days,
            self.retain_tasks_days,
            self.retain_audit_days,
            self.retain_decisions_days,
        ];
        if days.iter().any(|d| !(1..=3650).contains(d))
            || self.retain_job_output_days > self.retain_jobs_days
        {
            anyhow::bail!(
                "KILN_RETAIN_…_DAYS must be between 1 and 3650, and job output kept no longer than jobs."
            );
        }
        let defaults = self
            .rollout_defaults()
            .map_err(|e| anyhow::anyhow!("KILN_RELEASE_GUARD_ALERTS: {e}"))?;
        if let Err(e) = defaults.check() {
            anyhow::bail!("The release defaults (KILN_RELEASE_…) are not valid: {e}");
        }
        if self.provider == ProviderKind::Aws && self.ec2_endpoint.is_none() {
            let url = self.public_url();
            let host = url::Url::parse(&url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                anyhow::bail!(
                    "KILN_PUBLIC_URL is {url}, which EC2 servers cannot reach: with KILN_PROVIDER=aws set it to an address the servers can call."
                );
            }
        }
        if self.fleet.is_empty() || self.fleet.len() > 128 {
            anyhow::bail!("KILN_FLEET must be 1 to 128 characters.");
        }
        if self.instance_types.iter().any(|t| t.trim().is_empty()) {
            anyhow::bail!("KILN_INSTANCE_TYPES has an empty entry.");
        }
        if self.reconcile_interval == 0 {
            anyhow::bail!("KILN_RECONCILE_INTERVAL must be at least 1 second.");
        }
        if self.workers == 0 || self.task_lease < 3 || self.task_poll == 0 {
            anyhow::bail!(
                "KILN_WORKERS and KILN_TASK_POLL must be at least 1, KILN_TASK_LEASE at least 3."
            );
        }
        if self.heartbeat == 0 || self.job_lease < 2 * self.heartbeat {
            anyhow::bail!(
                "KILN_LEASE must be at least twice KILN_HEARTBEAT (heartbeats renew leases), and KILN_HEARTBEAT at least 1."
            );
        }
        if self.terminate_gather_ms > 60_000 {
            anyhow::bail!("KILN_TERMINATE_GATHER_MS must be between 0 and 60000.");
        }
        if !(50..=1000).contains(&self.heartbeat_flush_ms) {
            anyhow::bail!("KILN_HEARTBEAT_FLUSH_MS must be between 50 and 1000.");
        }
        if !(1..=604_800).contains(&self.default_job_timeout) {
            anyhow::bail!("KILN_JOB_TIMEOUT must be between 1 and 604800 seconds.");
        }
        if !(1..=86_400).contains(&self.health_timeout) || self.rollback_grace > 604_800 {
            anyhow::bail!(
                "KILN_HEALTH_TIMEOUT must be between 1 and 86400 seconds, KILN_ROLLBACK_GRACE at most 604800."
            );
        }
        if self.metrics_sample_interval == 0
            || self.metrics_rollup_interval == 0
            || !(1..=3650).contains(&self.metrics_retention_days)
        {
            anyhow::bail!(
                "KILN_METRICS_ROLLUP_INTERVAL must be at least 1 second, KILN_METRICS_RETENTION_DAYS between 1 and 3650."
            );
        }
        if !(1..=64).contains(&self.local_slots) {
            anyhow::bail!("KILN_LOCAL_SLOTS must be between 1 and 64.");
        }
        if !(1..=500).contains(&self.rollout_batch) || self.min_healthy_percent > 100 {
            anyhow::bail!(
                "KILN_ROLLOUT_BATCH must be between 1 and 500, KILN_MIN_HEALTHY between 0 and 100."
            );
        }
        let scale_ok = self.alert_for_scale > 0.0 && self.alert_for_scale <= 1.0;
        if !(1..=3600).contains(&self.scaling_interval) {
            anyhow::bail!("KILN_SCALING_INTERVAL must be between 1 and 3600 seconds.");
        }
        if !(1..=3600).contains(&self.alert_interval)
            || !scale_ok
            || self.notify_retry_base_ms == 0
            || !(1..=86_400).contains(&self.notify_retry_window)
        {
            anyhow::bail!(
                "KILN_ALERT_INTERVAL must be between 1 and 3600 seconds, KILN_NOTIFY_RETRY_WINDOW between 1 and 86400, KILN_NOTIFY_RETRY_BASE_MS at least 1."
            );
        }
        if self.ec2_max_attempts == 0 {
            anyhow::bail!("KILN_EC2_MAX_ATTEMPTS must be at least 1.");
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings::with_defaults(String::new(), "127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn a_rollout_s_defaults_come_from_the_settings() {
        let d = defaults().rollout_defaults().unwrap();
        assert_eq!(
            (
                d.settings.batch_size,
                d.settings.health_timeout_s,
                d.settings.grace_s
            ),
            (5, 300, 1800)
        );
        assert_eq!(d.plan, crate::domain::release_plan::Plan::none());
        let mut s = defaults();
        s.release_canary = 2;
        s.release_guard_alerts = "any".into();
        s.release_approval = crate::domain::Approval::AfterCanary;
        let d = s.rollout_defaults().unwrap();
        assert!(d.plan.guard_any);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_release_defaults_stop_the_console_naming_the_setting() {
        let mut s = defaults();
        s.release_guard_alerts = "p95".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with("KILN_RELEASE_GUARD_ALERTS: "), "{e}");
        let mut s = defaults();
        s.release_approval = crate::domain::Approval::AfterCanary;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("after_canary needs a canary"), "{e}");
        let mut s = defaults();
        s.release_soak_s = 90_000;
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("soak_s must be a whole number from 0 to 86400"),
            "{e}"
        );
    }
}

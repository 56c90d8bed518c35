//! The local provider: the contract suite's harness, and what only it promises — real agent
//! processes, found again after a console restart, marked terminated when they die.

use std::sync::Arc;
use std::time::Duration;

use kiln::cloud::local::{LocalProvider, LocalSettings};
use kiln::cloud::{FLEET_TAG, ImageQuery, Provider, ServerFilter, ServerState, describe_all};
use kiln::telemetry::prometheus::Registry;
use sqlx::PgPool;

use crate::cloud_contract::{Ctx, limits, request, token};

pub struct Harness {
    pub provider: LocalProvider,
    pub ctx: Ctx,
    pub pool: PgPool,
    pub settings: LocalSettings,
    /// The agents its launches start stop when the test ends, passed or not.
    _agents: crate::helpers::AgentsGuard,
}

pub fn settings(fleet: &str) -> LocalSettings {
    LocalSettings {
        fleet: fleet.to_owned(),
        agent_exe: env!("CARGO_BIN_EXE_kiln").into(),
        log_dir: std::env::temp_dir().join("kiln-test-local").join(fleet),
        terminate_grace: Duration::from_secs(5),
        agent_slots: 1,
    }
}

pub async fn harness() -> Harness {
    let url = crate::helpers::fresh_database_url();
    let pool = kiln::db::connect(&url).await.unwrap();
    kiln::db::migrate(&pool).await.unwrap();
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let settings = settings(&fleet);
    let provider = LocalProvider::new(pool.clone(), settings.clone())
        .await
        .unwrap();
    let query = ImageQuery {
        tags: vec![(FLEET_TAG.to_owned(), fleet.clone())],
        ..Default::default()
    };
    let base = provider.list_images(&query, None).await.unwrap().items;
    assert_eq!(
        base.len(),
        1,
        "a fresh local fleet starts with one base image"
    );
    let ctx = Ctx {
        image_id: base[0].id.clone(),
        unknown_image_id: "ami-local-0123456789abcdef0".into(),
        limits: limits(),
        registry: Arc::new(Registry::default()),
    };
    Harness {
        _agents: crate::helpers::AgentsGuard::new(&url),
        provider,
        ctx,
        pool,
        settings,
    }
}

impl Harness {
    /// Stops every agent process the test started.
    pub async fn cleanup(&self) {
        let all = describe_all(&self.provider, &ServerFilter::fleet(self.provider.fleet()))
            .await
            .unwrap();
        let ids: Vec<String> = all
            .into_iter()
            .filter(|s| s.state != ServerState::Terminated)
            .map(|s| s.id)
            .collect();
        self.provider.terminate(&ids).await.unwrap();
    }

    async fn pid(&self, id: &str) -> u32 {
        let pid: i32 = sqlx::query_scalar("SELECT pid FROM local_instances WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        pid as u32
    }
}

fn cmdline(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next()),
                Some("Z") | Some("X")
            )
        })
        .unwrap_or(false)
}

/// Waits (bounded) for a condition on the process table.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    crate::helpers::eventually(30, what, || std::future::ready(condition().then_some(()))).await
}

#[tokio::test]
async fn a_local_server_is_a_real_agent_process_stopped_by_terminate() {
    let h = harness().await;

    let server = h
        .provider
        .launch(&request(&h.ctx, 1, &token()))
        .await
        .unwrap()
        .servers
        .remove(0);

    assert_eq!(server.state, ServerState::Running);
    let pid = h.pid(&server.id).await;
    let cmd = cmdline(pid).expect("the agent process exists");
    assert!(
        cmd.contains("agent") && cmd.contains(&format!("--instance-id {}", server.id)),
        "{cmd}"
    );
    assert!(
        cmd.contains("--url http://127.0.0.1:9") && cmd.contains("--token kiln_enroll_test"),
        "{cmd}"
    );

    h.provider
        .terminate(std::slice::from_ref(&server.id))
        .await
        .unwrap();

    until("the agent to exit", || !is_running(pid)).await;
    let after = describe_all(
        &h.provider,
        &ServerFilter {
            ids: vec![server.id.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(after[0].state, ServerState::Terminated);
}

#[tokio::test]
async fn after_a_console_restart_live_servers_are_found_and_dead_ones_terminated() {
    let h = harness().await;
    let servers = h
        .provider
        .launch(&request(&h.ctx, 2, &token()))
        .await
        .unwrap()
        .servers;
    let (survivor, victim) = (&servers[0].id, &servers[1].id);
    let victim_pid = h.pid(victim).await;

    // A "restart": a new provider on the same database, while one agent dies meanwhile.
    let restarted = LocalProvider::new(h.pool.clone(), h.settings.clone())
        .await
        .unwrap();
    // SAFETY: plain kill(2) on a pid this test started.
    unsafe {
        libc::kill(victim_pid as i32, libc::SIGKILL);
    }
    until("the killed agent to go", || !is_running(victim_pid)).await;

    let all = describe_all(&restarted, &ServerFilter::fleet(restarted.fleet()))
        .await
        .unwrap();

    assert_eq!(all.len(), 2, "not orphaned, not duplicated");
    let state = |id: &str| all.iter().find(|s| s.id == id).unwrap().state;
    assert_eq!(state(survivor), ServerState::Running);
    assert_eq!(state(victim), ServerState::Terminated);
    let images = restarted
        .list_images(
            &ImageQuery {
                tags: vec![(FLEET_TAG.to_owned(), restarted.fleet().to_owned())],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(images.items.len(), 1, "the base image is seeded once");
    h.cleanup().await;
}

#[tokio::test]
async fn a_launch_interrupted_before_its_processes_started_starts_them_on_retry() {
    let h = harness().await;
    let token = token();
    // What a crash between recording and starting leaves behind.
    sqlx::query(
        "INSERT INTO local_instances (id, image_id, instance_type, state, tags, launch_token)
         VALUES ('i-local-00000000000000abc', $1, 't3.micro', 'pending', $2, $3)",
    )
    .bind(&h.ctx.image_id)
    .bind(sqlx::types::Json(kiln::cloud::Tags::from([
        (FLEET_TAG.to_owned(), h.provider.fleet().to_owned()),
        (kiln::cloud::LAUNCH_TOKEN_TAG.to_owned(), token.clone()),
    ])))
    .bind(&token)
    .execute(&h.pool)
    .await
    .unwrap();

    let outcome = h
        .provider
        .launch(&request(&h.ctx, 1, &token))
        .await
        .unwrap();

    assert!(outcome.already_launched);
    assert_eq!(outcome.servers.len(), 1);
    assert_eq!(outcome.servers[0].state, ServerState::Running);
    let pid = h.pid("i-local-00000000000000abc").await;
    assert!(is_running(pid));
    h.cleanup().await;
}

#[tokio::test]
async fn only_available_images_launch() {
    let h = harness().await;
    sqlx::query("UPDATE local_images SET state = 'pending'")
        .execute(&h.pool)
        .await
        .unwrap();

    let err = h
        .provider
        .launch(&request(&h.ctx, 1, &token()))
        .await
        .unwrap_err();

    assert_eq!(err.kind, kiln::cloud::ErrorKind::InvalidInput);
    assert!(
        err.message
            .contains("only available images can be launched"),
        "{err}"
    );
}

#[tokio::test]
async fn an_agent_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let h = harness().await;
    let mut stubborn = h.settings.clone();
    stubborn.agent_exe = format!(
        "{}/tests/fixtures/stubborn-agent.sh",
        env!("CARGO_MANIFEST_DIR")
    )
    .into();
    stubborn.terminate_grace = Duration::from_millis(300);
    let provider = LocalProvider::new(h.pool.clone(), stubborn).await.unwrap();
    let server = provider
        .launch(&request(&h.ctx, 1, &token()))
        .await
        .unwrap()
        .servers
        .remove(0);
    let pid = h.pid(&server.id).await;
    until("the stubborn agent to start", || {
        cmdline(pid).is_some_and(|c| c.contains(&server.id))
    })
    .await;

    provider
        .terminate(std::slice::from_ref(&server.id))
        .await
        .unwrap();

    until("the stubborn agent to be killed", || !is_running(pid)).await;
    let after = describe_all(
        &provider,
        &ServerFilter {
            ids: vec![server.id.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(after[0].state, ServerState::Terminated);
}

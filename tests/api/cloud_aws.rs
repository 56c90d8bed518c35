//! The aws provider against moto: the contract suite's harness, faults from the proxy
//! (throttling, 5xx, lost responses, capacity), and the EC2 call counts quoted in the notes.

use std::sync::Arc;

use kiln::cloud::aws::{AwsProvider, CALLS};
use kiln::cloud::{ErrorKind, Provider, ServerFilter, ServerState, describe_all};
use kiln::telemetry::prometheus::Registry;

use crate::cloud_contract::{Ctx, limits, request, token};
use crate::moto::{Fault, FaultProxy, moto_port, provider};

/// A public AMI that moto seeds (DescribeImages lists it; AMI validation accepts it).
const SEEDED_AMI: &str = "ami-1e749f67";

pub struct Harness {
    pub provider: AwsProvider,
    pub ctx: Ctx,
}

fn fleet() -> String {
    format!("f-{}", uuid::Uuid::new_v4().simple())
}

fn ctx(registry: Arc<Registry>) -> Ctx {
    Ctx {
        image_id: SEEDED_AMI.into(),
        unknown_image_id: "ami-0123456789abcdef0".into(),
        limits: limits(),
        registry,
    }
}

pub async fn harness() -> Harness {
    let (provider, registry) =
        provider(format!("http://127.0.0.1:{}", moto_port()), &fleet(), 3).await;
    Harness {
        provider,
        ctx: ctx(registry),
    }
}

async fn behind_proxy(max_attempts: u32) -> (AwsProvider, Arc<Registry>, FaultProxy) {
    let proxy = FaultProxy::start().await;
    let (provider, registry) = provider(proxy.endpoint.clone(), &fleet(), max_attempts).await;
    (provider, registry, proxy)
}

fn calls(registry: &Registry, action: &str) -> f64 {
    registry.counter(CALLS, &[("action", action)])
}

#[tokio::test]
async fn throttled_calls_are_retried_until_they_succeed() {
    let (p, registry, proxy) = behind_proxy(3).await;
    proxy.inject("DescribeInstances", Fault::Throttle, 2);

    let servers = describe_all(&p, &ServerFilter::fleet(p.fleet()))
        .await
        .unwrap();

    assert!(servers.is_empty());
    assert_eq!(
        calls(&registry, "DescribeInstances"),
        3.0,
        "two throttled attempts, then the answer"
    );
    assert_eq!(
        registry.counter(
            CALLS,
            &[("action", "DescribeInstances"), ("outcome", "503")]
        ),
        2.0
    );
}

#[tokio::test]
async fn throttling_that_outlasts_the_attempts_is_reported_as_throttled() {
    let (p, registry, proxy) = behind_proxy(3).await;
    proxy.inject("DescribeInstances", Fault::Throttle, 100);

    let err = describe_all(&p, &ServerFilter::fleet(p.fleet()))
        .await
        .unwrap_err();

    assert_eq!(err.kind, ErrorKind::Throttled, "{err}");
    assert!(err.is_retryable());
    assert!(err.message.contains("RequestLimitExceeded"), "{err}");
    assert_eq!(calls(&registry, "DescribeInstances"), 3.0);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (p, _registry, proxy) = behind_proxy(3).await;
    let ids: Vec<String> = p
        .launch(&request(&ctx(Arc::default()), 2, &token()))
        .await
        .unwrap()
        .servers
        .into_iter()
        .map(|s| s.id)
        .collect();
    proxy.inject("TerminateInstances", Fault::ServerError, 2);

    p.terminate(&ids).await.unwrap();

    let after = describe_all(
        &p,
        &ServerFilter {
            ids,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(after.iter().all(|s| s.state == ServerState::Terminated));
    assert_eq!(proxy.forwarded("TerminateInstances"), 1);
}

#[tokio::test]
async fn a_launch_whose_answer_was_lost_is_found_by_its_token_not_launched_again() {
    let (p, _registry, proxy) = behind_proxy(3).await;
    // Moto launches, the answer never arrives: the retry must find the instances by tag.
    proxy.inject("RunInstances", Fault::LoseResponse, 1);

    let outcome = p
        .launch(&request(&ctx(Arc::default()), 2, &token()))
        .await
        .unwrap();

    assert!(outcome.already_launched);
    assert_eq!(outcome.servers.len(), 2);
    assert_eq!(
        proxy.forwarded("RunInstances"),
        1,
        "RunInstances reached EC2 once"
    );
    assert_eq!(
        describe_all(&p, &ServerFilter::fleet(p.fleet()))
            .await
            .unwrap()
            .len(),
        2,
        "one set, not two"
    );
}

#[tokio::test]
async fn a_throttled_launch_is_retried_once_it_is_known_not_to_have_launched() {
    let (p, _registry, proxy) = behind_proxy(4).await;
    proxy.inject("RunInstances", Fault::Throttle, 2);

    let outcome = p
        .launch(&request(&ctx(Arc::default()), 3, &token()))
        .await
        .unwrap();

    assert!(!outcome.already_launched);
    assert_eq!(outcome.servers.len(), 3);
    assert_eq!(
        describe_all(&p, &ServerFilter::fleet(p.fleet()))
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn no_capacity_at_all_is_an_error_that_says_so_and_launches_nothing() {
    let (p, _registry, proxy) = behind_proxy(3).await;
    proxy.inject("RunInstances", Fault::NoCapacity, 2);

    let err = p
        .launch(&request(&ctx(Arc::default()), 2, &token()))
        .await
        .unwrap_err();

    assert_eq!(err.kind, ErrorKind::InsufficientCapacity, "{err}");
    assert!(
        err.message.contains("InsufficientInstanceCapacity"),
        "{err}"
    );
    assert_eq!(proxy.forwarded("RunInstances"), 0);
    assert!(
        describe_all(&p, &ServerFilter::fleet(p.fleet()))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_partly_fulfilled_launch_reports_what_it_got() {
    let (p, _registry, proxy) = behind_proxy(3).await;
    // Not enough capacity for all 3; the second call (MinCount 1) gets 1.
    proxy.inject("RunInstances", Fault::NoCapacity, 1);
    proxy.inject("RunInstances", Fault::CapCount(1), 1);

    let outcome = p
        .launch(&request(&ctx(Arc::default()), 3, &token()))
        .await
        .unwrap();

    assert_eq!(outcome.requested, 3);
    assert_eq!(outcome.servers.len(), 1);
    let shortfall = outcome.shortfall.expect("a partial launch says so");
    assert_eq!(shortfall.kind, ErrorKind::InsufficientCapacity);
    assert!(shortfall.message.contains("1 of 3"), "{shortfall}");
    assert!(
        shortfall.message.contains("InsufficientInstanceCapacity"),
        "{shortfall}"
    );
    assert_eq!(
        describe_all(&p, &ServerFilter::fleet(p.fleet()))
            .await
            .unwrap()
            .len(),
        1
    );
    let again = p
        .launch(&request(&ctx(Arc::default()), 3, &token()))
        .await
        .unwrap();
    assert_eq!(again.servers.len(), 3, "a new token is a new launch");
}

/// The real binary, its credentials from the standard AWS chain (environment variables), moto
/// as the endpoint: the start-up check's EC2 call shows up at /metrics.
#[tokio::test]
async fn ec2_calls_are_counted_and_exposed_at_metrics() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let endpoint = format!("http://127.0.0.1:{}", moto_port());
    let fleet = fleet();
    let mut kiln = crate::cli::serve_aws(
        &crate::helpers::fresh_database_url(),
        &endpoint,
        &fleet,
        &[],
    );
    let mut stderr = BufReader::new(kiln.stderr.take().unwrap()).lines();

    crate::cli::line_with(&mut stderr, "EC2 reachable; credentials accepted").await;
    let listening = crate::cli::line_with(&mut stderr, "kiln console listening").await;
    let port: u16 = listening
        .split("port=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let res = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("# TYPE kiln_ec2_calls_total counter"),
        "{text}"
    );
    assert!(
        text.contains("kiln_ec2_calls_total{action=\"DescribeInstances\""),
        "{text}"
    );
    // The start-up check's call, and the reconciler's first pass if it has run already (it
    // starts with the console), counted and timed.
    // Summed over outcomes (the check is a DryRun: EC2 answers it with an error, 412).
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let timed = value("kiln_ec2_call_seconds_count{action=\"DescribeInstances\"}");
    let counted = value("kiln_ec2_calls_total{action=\"DescribeInstances\",");
    assert!(timed >= 1.0 && counted >= 1.0, "{text}");
    assert!(crate::cli::sigterm_and_wait(&mut kiln).await.success());
}

#[tokio::test]
async fn metrics_require_the_configured_token() {
    let app =
        crate::helpers::spawn_app_with(|s| s.metrics_token = Some("scrape-secret".into())).await;

    let without = reqwest::get(app.url("/metrics")).await.unwrap();
    let with = reqwest::Client::new()
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();

    assert_eq!(without.status(), 401);
    assert_eq!(with.status(), 200);
}

/// The figures quoted in the note: EC2 calls for launch / describe-1000 /
/// terminate-100. Real EC2 pages DescribeInstances by instances (MaxResults up to 1,000), so
/// 1,000 instances take at most 2 calls there; moto pages by reservation (one per launch),
/// so 1,000 instances from one launch come back in one call here.
#[tokio::test]
async fn ec2_call_counts_for_launch_describe_1000_terminate_100() {
    let (p, registry) = provider(format!("http://127.0.0.1:{}", moto_port()), &fleet(), 3).await;
    let mut limits = limits();
    limits.max_servers = 1000;
    let c = ctx(registry.clone());

    let before = registry.counter(CALLS, &[]);
    let launched = p.launch(&request(&c, 1000, &token())).await.unwrap();
    let launch_calls = registry.counter(CALLS, &[]) - before;
    assert_eq!(launched.servers.len(), 1000);

    let before = calls(&registry, "DescribeInstances");
    let all = describe_all(&p, &ServerFilter::fleet(p.fleet()))
        .await
        .unwrap();
    let describe_calls = calls(&registry, "DescribeInstances") - before;
    assert_eq!(all.len(), 1000);

    let hundred: Vec<String> = all.iter().take(100).map(|s| s.id.clone()).collect();
    let before = calls(&registry, "TerminateInstances");
    p.terminate(&hundred).await.unwrap();
    let terminate_calls = calls(&registry, "TerminateInstances") - before;

    println!(
        "EC2 calls: launch 1000 = {launch_calls} (1 DescribeInstances for the token + 1 RunInstances), describe 1000 = {describe_calls}, terminate 100 = {terminate_calls}"
    );
    assert_eq!(launch_calls, 2.0);
    assert!(describe_calls <= 2.0);
    assert_eq!(terminate_calls, 1.0);
    p.terminate(&all.iter().map(|s| s.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
}

/// EC2's rate limits, enforced by the fault proxy as token buckets (RunInstances and
/// TerminateInstances: 2 at once, 1 a second): a provider paced with the same buckets sends
/// six launches and six terminations at once and is never throttled; one paced with AWS's
/// default (larger) buckets is.
#[tokio::test]
async fn calls_paced_by_the_client_s_buckets_are_never_throttled() {
    use kiln::cloud::aws::pacing::PacingSettings;
    let proxy = FaultProxy::start().await;
    proxy.enforce("RunInstances", 2.0, 1.0);
    proxy.enforce("TerminateInstances", 2.0, 1.0);
    let (p, registry) = crate::moto::provider_paced(
        proxy.endpoint.clone(),
        &fleet(),
        3,
        PacingSettings::parse("run=2/1,terminate=2/1").unwrap(),
    )
    .await;
    let paced_ctx = ctx(registry);
    let launches = futures_util::future::join_all((0..6).map(|_| async {
        let r = request(&paced_ctx, 1, &token());
        p.launch(&r).await
    }))
    .await;
    let mut ids = Vec::new();
    for l in launches {
        let l = l.expect("a paced launch succeeds");
        ids.extend(l.servers.into_iter().map(|s| s.id));
    }
    assert_eq!(ids.len(), 6);
    let terminations =
        futures_util::future::join_all(ids.iter().map(|id| p.terminate(std::slice::from_ref(id))))
            .await;
    assert!(terminations.iter().all(Result::is_ok), "{terminations:?}");
    assert_eq!(proxy.throttled("RunInstances"), 0);
    assert_eq!(proxy.throttled("TerminateInstances"), 0);
    assert_eq!(proxy.forwarded("RunInstances"), 6);
    assert_eq!(proxy.forwarded("TerminateInstances"), 6);

    // The same burst under AWS's default buckets (5 at once) meets the proxy's smaller ones.
    let (unpaced, registry) = provider(proxy.endpoint.clone(), &fleet(), 1).await;
    let unpaced_ctx = ctx(registry);
    let _ = futures_util::future::join_all((0..6).map(|_| async {
        let r = request(&unpaced_ctx, 1, &token());
        unpaced.launch(&r).await
    }))
    .await;
    assert!(
        proxy.throttled("RunInstances") > 0,
        "the proxy enforces its buckets"
    );
}

/// Servers drained together are terminated together: six graceful terminates asked for within
/// the gathering window make one TerminateInstances and one DescribeInstances, and each server
/// still gets its own state and audit event.
#[tokio::test]
async fn servers_drained_together_are_terminated_with_one_call() {
    use serde_json::{Value, json};

    let db = crate::helpers::fresh_database_url();
    let endpoint = format!("http://127.0.0.1:{}", moto_port());
    let fleet = fleet();
    // The reconciler stays out of the way so that every DescribeInstances is the batch's.
    let mut console = crate::cli::serve_aws(
        &db,
        &endpoint,
        &fleet,
        &[
            ("KILN_TASK_POLL", "1"),
            ("KILN_RECONCILE_INTERVAL", "3600"),
            ("KILN_TERMINATE_GATHER_MS", "5000"),
        ],
    );
    let port = crate::cli::listening_port(&mut console).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let api = reqwest::Client::new();
    let post = |path: String, body: Value| {
        api.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    crate::cli::adopt_ami(&base, &token, &pool, SEEDED_AMI).await;
    let res = post(
        "/api/v1/servers".into(),
        json!({"image_id": SEEDED_AMI, "count": 6, "instance_type": "t3.micro"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let ids: Vec<String> = crate::helpers::eventually(60, "six servers launched", || async {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM servers ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        (ids.len() == 6).then_some(ids)
    })
    .await;

    let before = crate::cli::ec2_calls(&base).await;
    for id in &ids {
        let res = post(format!("/api/v1/servers/{id}/terminate"), json!({}))
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    }
    crate::helpers::eventually(60, "the six terminate tasks are done", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE kind = 'terminate_server' AND state <> 'succeeded'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let after = crate::cli::ec2_calls(&base).await;
    let delta =
        |action: &str| after.get(action).unwrap_or(&0.0) - before.get(action).unwrap_or(&0.0);
    assert_eq!(delta("TerminateInstances"), 1.0, "{before:?} → {after:?}");
    assert_eq!(delta("DescribeInstances"), 1.0, "{before:?} → {after:?}");

    let states: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT state FROM servers WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, ["terminated"]);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'server.terminated'
         AND detail LIKE 'graceful terminate (one call for 6 servers)%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 6);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM server_terminations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "every handed-in row is gone with its task");
    let (p, _) = provider(endpoint.clone(), &fleet, 3).await;
    let at_moto = describe_all(&p, &ServerFilter::fleet(&fleet))
        .await
        .unwrap();
    assert!(
        at_moto.iter().all(|s| s.state == ServerState::Terminated) && at_moto.len() == 6,
        "{at_moto:?}"
    );
    assert!(crate::cli::sigterm_and_wait(&mut console).await.success());
}

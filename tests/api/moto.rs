//! moto (the EC2 emulator) for the aws provider's tests, and a fault-injecting proxy in front
//! of it (moto has no fault injection): throttling, 5xx, lost responses, capacity errors.
//!
//! One `moto_server` per test process, from the test venv (`.venv/bin/moto_server`, pinned in
//! tests/requirements.txt), on a free loopback port, started by a long-lived thread so that
//! PR_SET_PDEATHSIG ends it with the test process. Tests isolate themselves by fleet name.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use kiln::cloud::aws::pacing::PacingSettings;
use kiln::cloud::aws::{AwsProvider, AwsSettings};
use kiln::telemetry::prometheus::Registry;

static MOTO: OnceLock<u16> = OnceLock::new();

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The port of this process's moto server, started on first use.
pub fn moto_port() -> u16 {
    *MOTO.get_or_init(|| {
        let exe = format!("{}/.venv/bin/moto_server", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::path::Path::new(&exe).exists(),
            "{exe} is missing: run scripts/test (it installs tests/requirements.txt into .venv)"
        );
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut command = std::process::Command::new(exe);
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: prctl in the child before exec; no allocation, no locks.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command.spawn().expect("moto_server starts");
            tx.send(()).unwrap();
            let _ = child.wait();
        });
        rx.recv().unwrap();
        // Wait for it to answer (bounded: this guards a hang, it is not a timing assumption).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    })
}

/// An aws provider for a fresh fleet against `endpoint`.
pub async fn provider(
    endpoint: String,
    fleet: &str,
    max_attempts: u32,
) -> (AwsProvider, Arc<Registry>) {
    provider_paced(endpoint, fleet, max_attempts, PacingSettings::default()).await
}

/// [`provider`] with its own token buckets.
pub async fn provider_paced(
    endpoint: String,
    fleet: &str,
    max_attempts: u32,
    pacing: PacingSettings,
) -> (AwsProvider, Arc<Registry>) {
    let registry = Arc::new(Registry::default());
    let settings = AwsSettings {
        fleet: fleet.to_owned(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        call_timeout: Duration::from_secs(60),
        static_credentials: Some(("testing".into(), "testing".into())),
        pacing,
    };
    (
        AwsProvider::new(settings, registry.clone()).await.unwrap(),
        registry,
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// 503 with EC2's RequestLimitExceeded; moto never sees the call.
    Throttle,
    /// 500 InternalError; moto never sees the call.
    ServerError,
    /// Moto acts, the client gets a 503 instead of the answer (a lost response).
    LoseResponse,
    /// 500 InsufficientInstanceCapacity; moto never sees the call.
    NoCapacity,
    /// Moto acts, and the answer is held back this many milliseconds (a slow or hung call).
    Delay(u64),
    /// Moto acts on the call with MinCount and MaxCount lowered to this (EC2 launching fewer
    /// than asked; moto itself always launches MinCount).
    CapCount(u32),
}

#[derive(Default)]
struct Plan {
    rules: Vec<(String, Fault, u32)>,
    forwarded: Vec<String>,
    /// EC2's rate limits as the proxy enforces them: (action, size, rate, tokens, counted at).
    buckets: Vec<(String, f64, f64, f64, std::time::Instant)>,
    /// Calls refused by a bucket.
    throttled: Vec<String>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    plan: Arc<Mutex<Plan>>,
}

impl FaultProxy {
    pub async fn start() -> Self {
        let upstream = format!("http://127.0.0.1:{}", moto_port());
        let plan = Arc::new(Mutex::new(Plan::default()));
        let state = (plan.clone(), upstream, reqwest::Client::new());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .default_service(web::to(forward))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            plan,
        }
    }

    /// The next `times` calls of `action` meet `fault`.
    pub fn inject(&self, action: &str, fault: Fault, times: u32) {
        self.plan
            .lock()
            .unwrap()
            .rules
            .push((action.to_owned(), fault, times));
    }

    /// Enforces a token bucket on `action`, as EC2 does per account: `size` calls at once,
    /// refilled `per_second`; a call finding it empty gets RequestLimitExceeded. (The refill
    /// allows 10% for the jitter between the client's clock and the proxy's arrivals.)
    pub fn enforce(&self, action: &str, size: f64, per_second: f64) {
        self.plan.lock().unwrap().buckets.push((
            action.to_owned(),
            size,
            per_second * 1.1,
            size,
            std::time::Instant::now(),
        ));
    }

    /// How many calls of `action` a bucket refused.
    pub fn throttled(&self, action: &str) -> usize {
        self.plan
            .lock()
            .unwrap()
            .throttled
            .iter()
            .filter(|a| *a == action)
            .count()
    }

    /// How many calls of `action` reached moto.
    pub fn forwarded(&self, action: &str) -> usize {
        self.plan
            .lock()
            .unwrap()
            .forwarded
            .iter()
            .filter(|a| *a == action)
            .count()
    }
}

type ProxyState = (Arc<Mutex<Plan>>, String, reqwest::Client);

fn ec2_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("text/xml;charset=UTF-8")
        .body(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>kiln-fault-proxy</RequestID></Response>"
        ))
}

async fn forward(req: HttpRequest, body: web::Bytes, state: web::Data<ProxyState>) -> HttpResponse {
    let (plan, upstream, client) = state.get_ref();
    let mut fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let action = fields
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let fault = {
        let mut plan = plan.lock().unwrap();
        let now = std::time::Instant::now();
        let empty = plan.buckets.iter_mut().find(|b| b.0 == action).is_some_and(
            |(_, size, rate, tokens, at)| {
                *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * *rate).min(*size);
                *at = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    false
                } else {
                    true
                }
            },
        );
        if empty {
            plan.throttled.push(action.clone());
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
        }

        plan.rules
            .iter_mut()
            .find(|(a, _, n)| *a == action && *n > 0)
            .map(|rule| {
                rule.2 -= 1;
                rule.1
            })
    };
    match fault {
        Some(Fault::Throttle) => {
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
        }
        Some(Fault::ServerError) => {
            return ec2_error(500, "InternalError", "An internal error has occurred.");
        }
        Some(Fault::NoCapacity) => {
            return ec2_error(
                500,
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity.",
            );
        }
        _ => {}
    }
    let body = if let Some(Fault::CapCount(n)) = fault {
        for (k, v) in fields.iter_mut() {
            if k == "MaxCount" || k == "MinCount" {
                *v = n.to_string();
            }
        }
        serde_urlencoded::to_string(&fields)
            .unwrap()
            .into_bytes()
            .into()
    } else {
        body
    };
    plan.lock().unwrap().forwarded.push(action.clone());
    let mut upstream_req = client.post(format!("{upstream}{}", req.uri())).body(body);
    for (name, value) in req.headers() {
        if name != "host" && name != "content-length" {
            upstream_req = upstream_req.header(name.as_str(), value.as_bytes());
        }
    }
    let res = upstream_req.send().await.unwrap();
    if let Some(Fault::Delay(ms)) = fault {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if fault == Some(Fault::LoseResponse) {
        return ec2_error(
            503,
            "ServiceUnavailable",
            "The response was lost on the way back.",
        );
    }
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_owned();
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type(content_type)
        .body(res.bytes().await.unwrap())
}

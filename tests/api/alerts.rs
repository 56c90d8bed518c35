//! Alerts end to end: rules through the API, metrics through the ingest API, the evaluation
//! pass every second (`for` scaled down 20x), and deliveries to real receivers — an HTTP
//! server in the test that records what it gets and answers with the status a test chooses,
//! and aiosmtpd, a real SMTP server, for e-mail.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{TestApp, eventually, get_json, post, put, spawn_app_with};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver on a free port: records every request and answers with `status`.
pub struct Receiver {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<AtomicU16>,
    /// Requests still to be left unanswered for 12 s (longer than a try's 10 s).
    pub hang: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let hang = Arc::new(AtomicU16::new(0));
        let (g, s, h) = (got.clone(), status.clone(), hang.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (g, s, h) = (g.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        read.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    read.read_exact(&mut body).await.unwrap();
                    let hung = h
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    // A hung request is recorded as answered 0: the sender gave up first.
                    let answered = if hung { 0 } else { s.load(Ordering::SeqCst) };
                    g.lock().unwrap().push(Received {
                        path,
                        headers,
                        body,
                        answered,
                    });
                    if hung {
                        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
                    }
                    let reply = format!(
                        "HTTP/1.1 {answered} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = write.write_all(reply.as_bytes()).await;
                });
            }
        });
        Receiver {
            port,
            got,
            status,
            hang,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Requests to `path` answered 2xx.
    pub fn delivered(&self, path: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.path == path && (200..300).contains(&r.answered))
            .collect()
    }
}

/// aiosmtpd in the test venv, printing each message it receives.
pub struct SmtpSink {
    pub port: u16,
    child: tokio::process::Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let port = crate::helpers::free_port();
        let python = std::env::var("KILN_TEST_PYTHON")
            .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
        let mut child = tokio::process::Command::new(python)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Debugging",
            ])
            .args(["-l", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("aiosmtpd (tests/requirements.txt) in .venv");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let l = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        eventually(20, "aiosmtpd listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        SmtpSink { port, child, lines }
    }

    /// The subjects of the messages received so far.
    pub fn subjects(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A console that evaluates every second, with `for` 20x shorter and quick retries.
pub async fn alerting_app() -> TestApp {
    spawn_app_with(|s| {
        s.alert_interval = 1;
        s.alert_for_scale = 0.05;
        s.notify_retry_base_ms = 200;
        s.notify_retry_window = 60;
        s.task_poll = 1;
    })
    .await
}

pub async fn operator_token(app: &TestApp) -> String {
    app.create_user("olga", kiln::domain::Role::Operator).await;
    app.token_for("olga").await
}

pub async fn admin_token(app: &TestApp) -> String {
    app.token_for("admin").await
}

pub(crate) async fn created(res: reqwest::Response) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

/// Keeps sending `values` every 300 ms until the returned guard is dropped.
pub(crate) fn keep_sending(
    app: &TestApp,
    token: &str,
    name: &'static str,
    values: Arc<Mutex<Vec<(&'static str, f64)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(send_forever(
        app.url("/v1/metrics"),
        token.to_owned(),
        name,
        values,
    ))
}

/// Posts `values` as gauges named `name` to `url` every 300 ms until aborted.
async fn send_forever(
    url: String,
    token: String,
    name: &'static str,
    values: Arc<Mutex<Vec<(&'static str, f64)>>>,
) {
    loop {
        let now: Vec<Value> = values
            .lock()
            .unwrap()
            .iter()
            .map(|(source, v)| json!({"name": name, "source": source, "value": v}))
            .collect();
        let _ = reqwest::Client::new()
            .post(&url)
            .basic_auth("ops", Some(&token))
            .json(&json!({ "gauges": now }))
            .send()
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn state_of(app: &TestApp, rule: i64, source: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM alert_states WHERE rule_id = $1 AND source = $2")
        .bind(rule)
        .bind(source)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_source_fires_after_its_for_notifies_every_channel_once_and_resolves_once() {
    let app = alerting_app().await;
    let admin = admin_token(&app).await;
    let op = operator_token(&app).await;
    let hooks = Receiver::start().await;
    let smtp = SmtpSink::start().await;

    let webhook = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "ops hook", "kind": "webhook", "url": hooks.url("/hook"), "secret": "s3cret"}),
        )
        .await,
    )
    .await;
    assert_eq!(webhook["has_secret"], true);
    assert!(webhook.get("secret").is_none(), "{webhook}");
    let slack = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "slack", "kind": "slack", "url": hooks.url("/slack/T000/B000/XXXX")}),
        )
        .await,
    )
    .await;
    assert_eq!(
        slack["url"],
        format!("http://127.0.0.1:{}/…", hooks.port),
        "a Slack URL is its own secret"
    );
    let email = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "mail", "kind": "email", "to": ["oncall@example.com"],
                   "smtp": {"host": "127.0.0.1", "port": smtp.port, "tls": "none", "from": "kiln@example.com"}}),
        )
        .await,
    )
    .await;

    let rule = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({
                "name": "cpu.hot",
                "description": "A worker runs hot",
                "runbook_url": "https://runbooks.example.com/cpu",
                "per_source": true,
                "conditions": [{"metric": "app.cpu", "source": "w-*", "aggregate": "avg", "window_s": 10,
                                "op": "above", "threshold": 80, "clear_threshold": 70, "for_s": 60}],
                "channels": [webhook["id"], slack["id"], email["id"]],
            }),
        )
        .await,
    )
    .await;
    let rule_id = rule["id"].as_i64().unwrap();

    let values = Arc::new(Mutex::new(vec![
        ("w-1", 95.0),
        ("w-2", 20.0),
        ("w-3", 30.0),
    ]));
    let sender = keep_sending(&app, &op, "app.cpu", values.clone());

    // Pending first (the for is 60 s x 0.05 = 3 s), then firing.
    eventually(20, "w-1 pending", || async {
        (state_of(&app, rule_id, "w-1").await.as_deref() == Some("pending")).then_some(())
    })
    .await;
    let fired = eventually(30, "the firing webhook", || async {
        hooks.delivered("/hook").first().cloned()
    })
    .await;
    let body = fired.json();
    assert_eq!(body["status"], "firing");
    assert_eq!(body["rule"]["name"], "cpu.hot");
    assert_eq!(
        body["rule"]["runbook_url"],
        "https://runbooks.example.com/cpu"
    );
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only w-1 breaches: {body}");
    assert_eq!(alerts[0]["source"], "w-1");
    assert!(alerts[0]["value"].as_f64().unwrap() > 80.0);
    let key = alerts[0]["incident_key"].as_str().unwrap().to_owned();
    // Signed like GitHub's webhooks, with the notification's id as the idempotency key.
    assert_eq!(
        fired.header("x-kiln-signature-256").unwrap(),
        kiln::alerts::deliver::signature("s3cret", &fired.body)
    );
    assert_eq!(
        fired.header("idempotency-key").unwrap(),
        body["id"].as_str().unwrap()
    );
    let slack_msg = eventually(30, "the Slack message", || async {
        hooks.delivered("/slack/T000/B000/XXXX").first().cloned()
    })
    .await;
    let text = slack_msg.json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("[FIRING] cpu.hot on w-1"), "{text}");
    eventually(30, "the e-mail", || async {
        smtp.subjects()
            .iter()
            .any(|s| s.contains("[FIRING] cpu.hot on w-1"))
            .then_some(())
    })
    .await;
    let status = get_json(&app, &op, "/api/v1/alerts/status").await;
    assert_eq!(status["firing"][0]["alert_id"], rule_id);
    assert_eq!(status["firing"][0]["source"], "w-1");

    // Between the clear threshold and the threshold it stays firing (hysteresis)…
    values.lock().unwrap()[0].1 = 75.0;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert_eq!(
        state_of(&app, rule_id, "w-1").await.as_deref(),
        Some("firing")
    );
    // …and under it, it resolves: one resolved notice per channel, with the same key.
    values.lock().unwrap()[0].1 = 40.0;
    let resolved = eventually(30, "the resolved webhook", || async {
        hooks
            .delivered("/hook")
            .into_iter()
            .find(|r| r.json()["status"] == "resolved")
    })
    .await;
    let body = resolved.json();
    assert_eq!(body["alerts"][0]["incident_key"], key.as_str());
    assert_eq!(body["alerts"][0]["status"], "resolved");
    eventually(30, "the resolved e-mail and Slack message", || async {
        (smtp
            .subjects()
            .iter()
            .any(|s| s.contains("[RESOLVED] cpu.hot"))
            && hooks.delivered("/slack/T000/B000/XXXX").len() == 2)
            .then_some(())
    })
    .await;
    // A few more passes: nothing else goes out (renotify is 10 minutes away).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    sender.abort();
    assert_eq!(
        hooks.delivered("/hook").len(),
        2,
        "one firing, one resolved"
    );
    assert_eq!(hooks.delivered("/slack/T000/B000/XXXX").len(), 2);
    assert_eq!(smtp.subjects().len(), 2, "{:?}", smtp.subjects());

    // The history says what happened, in order.
    let history = get_json(&app, &op, &format!("/api/v1/alerts/{rule_id}/history")).await;
    let steps: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| {
            (
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("ok".into(), "pending".into()),
            ("pending".into(), "firing".into()),
            ("firing".into(), "ok".into())
        ]
    );
    let log = get_json(&app, &op, &format!("/api/v1/alerts/{rule_id}/deliveries")).await;
    assert_eq!(log.as_array().unwrap().len(), 6, "{log}");
}

#[tokio::test]
async fn a_silence_holds_the_notice_and_its_end_sends_it_and_a_failing_receiver_gets_it_once() {
    let app = alerting_app().await;
    let admin = admin_token(&app).await;
    let op = operator_token(&app).await;
    let hooks = Receiver::start().await;
    let channel = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "hook", "kind": "webhook", "url": hooks.url("/hook")}),
        )
        .await,
    )
    .await;
    let rule = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({"name": "queue.deep", "per_source": true, "channels": [channel["id"]],
                   "conditions": [{"metric": "app.queue", "window_s": 10, "op": "above", "threshold": 100}]}),
        )
        .await,
    )
    .await;
    let rule_id = rule["id"].as_i64().unwrap();
    let silence = created(
        post(
            &app,
            &op,
            &format!("/api/v1/alerts/{rule_id}/silence"),
            json!({"duration_s": 3600, "comment": "deploying"}),
        )
        .await,
    )
    .await;
    // The receiver is down (500) when the notice finally goes out.
    hooks.status.store(500, Ordering::SeqCst);
    let values = Arc::new(Mutex::new(vec![("q-1", 500.0)]));
    let sender = keep_sending(&app, &op, "app.queue", values.clone());
    eventually(20, "q-1 firing", || async {
        (state_of(&app, rule_id, "q-1").await.as_deref() == Some("firing")).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(hooks.all().is_empty(), "silenced: nothing sent");

    // The first try gets no answer at all (it gives up after 10 s), the next ones a 500.
    hooks.hang.store(1, Ordering::SeqCst);
    let res = reqwest::Client::new()
        .delete(app.url(&format!("/api/v1/silences/{}", silence["id"])))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Tried, timed out, refused, tried again…
    eventually(40, "a timed-out try and a refused one", || async {
        (hooks.all().len() >= 2).then_some(())
    })
    .await;
    hooks.status.store(200, Ordering::SeqCst);
    let got = eventually(30, "the delivery", || async {
        hooks.delivered("/hook").first().cloned()
    })
    .await;
    assert_eq!(got.json()["status"], "firing");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    sender.abort();
    let all = hooks.all();
    assert_eq!(hooks.delivered("/hook").len(), 1, "delivered once");
    let keys: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(keys.len(), 1, "every try carries the same key");
    let log = get_json(&app, &op, &format!("/api/v1/alerts/{rule_id}/deliveries")).await;
    let codes: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["status_code"].as_i64())
        .collect();
    assert!(codes.contains(&500) && codes.contains(&200), "{log}");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|d| d["error"] == "no answer within 10 s"),
        "{log}"
    );
    // The silence and its end are audited.
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "alert.silence"));
    assert!(audit.iter().any(|a| a.action == "alert.unsilence"));
}

#[tokio::test]
async fn bad_rules_and_channels_are_refused_naming_the_field_and_change_nothing() {
    let app = alerting_app().await;
    let admin = admin_token(&app).await;
    let op = operator_token(&app).await;
    let cond = json!({"metric": "app.cpu", "op": "above", "threshold": 1});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "x", "conditions": []}), "conditions"),
        (json!({"name": "bad name", "conditions": [cond]}), "name"),
        (
            json!({"name": "x", "conditions": [{"metric": "app.cpu", "op": "sideways", "threshold": 1}]}),
            "op",
        ),
        (
            json!({"name": "x", "conditions": [{"metric": "app.cpu", "op": "above", "aggregate": "median", "threshold": 1}]}),
            "aggregate",
        ),
        (
            json!({"name": "x", "conditions": [{"metric": "app.cpu", "op": "above", "threshold": "high"}]}),
            "threshold",
        ),
        (
            json!({"name": "x", "conditions": [{"metric": "app.cpu", "op": "above", "threshold": 1, "for_s": 30}]}),
            "for_s",
        ),
        (
            json!({"name": "x", "conditions": [{"metric": "app cpu", "op": "above", "threshold": 1}]}),
            "metric",
        ),
        (
            json!({"name": "x", "conditions": [{"metric": "app.cpu", "source": "w/%", "op": "above", "threshold": 1}]}),
            "source",
        ),
        (
            json!({"name": "x", "conditions": vec![cond.clone(); 11]}),
            "at most 10",
        ),
        (
            json!({"name": "x", "conditions": [cond], "channels": [999]}),
            "channel 999",
        ),
        (
            json!({"name": "x", "conditions": [cond], "renotify_s": 5}),
            "renotify_s",
        ),
        (
            json!({"name": "x", "conditions": [cond], "colour": "red"}),
            "colour",
        ),
    ];
    for (body, named) in cases {
        let res = post(&app, &op, "/api/v1/alerts", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        let err = res.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(err.contains(named), "{body} -> {err}");
    }
    for (body, named) in [
        (
            json!({"name": "m", "kind": "webhook", "url": "http://169.254.169.254/latest/meta-data/"}),
            "metadata",
        ),
        (
            json!({"name": "m", "kind": "webhook", "url": "http://[fd00:ec2::254]/"}),
            "metadata",
        ),
        (
            json!({"name": "m", "kind": "webhook", "url": "file:///etc/passwd"}),
            "url",
        ),
        (json!({"name": "m", "kind": "pager"}), "kind"),
        (
            json!({"name": "m", "kind": "email", "to": ["nobody"], "smtp": {"host": "x", "from": "k@example.com"}}),
            "to",
        ),
    ] {
        let res = post(&app, &admin, "/api/v1/channels", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        let err = res.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(err.contains(named), "{body} -> {err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM alert_rules").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM alert_channels").await, 0);
    // Operators do not manage channels; viewers do not write rules.
    let res = post(
        &app,
        &op,
        "/api/v1/channels",
        json!({"name": "m", "kind": "webhook", "url": "http://x"}),
    )
    .await;
    assert_eq!(res.status(), 403);
    app.create_user("vic", kiln::domain::Role::Viewer).await;
    let viewer = app.token_for("vic").await;
    let res = post(
        &app,
        &viewer,
        "/api/v1/alerts",
        json!({"name": "x", "conditions": [cond]}),
    )
    .await;
    assert_eq!(res.status(), 403);
    // A rule edit keeps what it may and is audited with before and after.
    let rule = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({"name": "x", "conditions": [cond]}),
        )
        .await,
    )
    .await;
    let res = put(
        &app,
        &op,
        &format!("/api/v1/alerts/{}", rule["id"]),
        json!({"name": "x.renamed", "conditions": [cond]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let edit = app
        .audit()
        .await
        .into_iter()
        .find(|a| a.action == "alert.edit")
        .unwrap();
    assert!(
        edit.detail.contains("\"before\"") && edit.detail.contains("x.renamed"),
        "{}",
        edit.detail
    );
}

#[tokio::test]
async fn the_preview_replays_the_last_day_from_the_rollups() {
    let app = alerting_app().await;
    let op = operator_token(&app).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() / 60 * 60;
    // Two hours ago, p-1 ran hot for 10 minutes; p-2 never did.
    let mut gauges = Vec::new();
    for m in 0..180 {
        let t = now - 3 * 3600 + m * 60;
        let hot = (60..70).contains(&m);
        gauges.push(json!({"name": "app.load", "source": "p-1", "value": if hot { 9.0 } else { 1.0 }, "measure_time": t}));
        gauges.push(json!({"name": "app.load", "source": "p-2", "value": 1.0, "measure_time": t}));
    }
    for chunk in gauges.chunks(300) {
        let res = reqwest::Client::new()
            .post(app.url("/v1/metrics"))
            .basic_auth("ops", Some(&op))
            .json(&json!({ "gauges": chunk }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let res = post(
        &app,
        &op,
        "/api/v1/alerts/preview",
        json!({"name": "load.high", "conditions": [{"metric": "app.load", "op": "above", "threshold": 5, "for_s": 120}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["fired"], 1, "{p}");
    assert_eq!(p["sources"], 2);
    assert_eq!(p["episodes"][0]["source"], "p-1");
    assert!(
        p["sentence"]
            .as_str()
            .unwrap()
            .starts_with("Would have fired 1 time: "),
        "{p}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM alert_rules").await,
        0,
        "a preview saves nothing"
    );
}

#[tokio::test]
async fn librato_s_python_client_creates_and_lists_alerts_on_v1() {
    let app = alerting_app().await;
    let admin = admin_token(&app).await;
    let op = operator_token(&app).await;
    let channel = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/hook"}),
        )
        .await,
    )
    .await;
    let python = std::env::var("KILN_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let out = tokio::process::Command::new(python)
        .arg(format!(
            "{}/tests/alerts/librato_alerts.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(app.address.trim_start_matches("http://"))
        .arg(&op)
        .arg(channel["id"].to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["created_name"], "app.latency.high");
    assert_eq!(seen["listed"], json!(["app.latency.high"]));
    assert_eq!(seen["got_id"], seen["created_id"]);
    assert_eq!(seen["services"], json!([channel["id"]]));
    assert_eq!(seen["rearm"], 900);
    assert_eq!(seen["runbook"], "https://runbooks.example.com/latency");
    assert_eq!(
        seen["conditions"],
        json!([
            {"type": "above", "metric": "app.latency", "source": "web*", "threshold": 250.0, "duration": 300, "summary": "max"},
            {"type": "absent", "metric": "app.heartbeat", "source": "*", "threshold": null, "duration": 600, "summary": null}
        ])
    );
    // The same rule through Kiln's own API: Librato's duration is the for of an above
    // condition and the window of an absent one; the client's save() edited it.
    let id = seen["created_id"].as_i64().unwrap();
    let rule = get_json(&app, &op, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!(rule["description"], "p99 latency above 250 ms (edited)");
    assert_eq!(rule["conditions"][0]["for_s"], 300);
    assert_eq!(rule["conditions"][0]["aggregate"], "max");
    assert_eq!(rule["conditions"][1]["window_s"], 600);
    assert_eq!(rule["per_source"], true);
    let status = reqwest::Client::new()
        .get(app.url("/v1/alerts/status"))
        .basic_auth("ops", Some(&op))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert!(status["firing"].is_array(), "{status}");
    // The client's gauge (400 ms on web1) breaches; with no heartbeat at all, the absent
    // condition holds too: after the (scaled) 300 s it fires, as Librato's status says.
    eventually(40, "the rule fires on web1", || async {
        let status: Value = reqwest::Client::new()
            .get(app.url("/v1/alerts/status"))
            .basic_auth("ops", Some(&op))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (status["firing"][0]["id"] == id).then_some(())
    })
    .await;
    let firing = get_json(&app, &op, "/api/v1/alerts/status").await;
    assert_eq!(firing["firing"][0]["source"], "web1");
    // Librato's clear: resolved now, and the history says who cleared it.
    let res = reqwest::Client::new()
        .post(app.url(&format!("/v1/alerts/{id}/clear")))
        .basic_auth("ops", Some(&op))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let history = get_json(&app, &op, &format!("/api/v1/alerts/{id}/history")).await;
    assert_eq!(history[0]["reason"], "cleared by olga", "{history}");
}

#[tokio::test]
async fn a_terminated_server_resolves_as_terminated_and_a_retiring_one_never_fires_absent() {
    let app = spawn_app_with(|s| {
        s.alert_interval = 1;
        s.alert_for_scale = 0.05;
        s.notify_retry_base_ms = 200;
        s.task_poll = 1;
        s.heartbeat = 1;
        s.metrics_sample_interval = 1;
    })
    .await;
    let admin = admin_token(&app).await;
    let op = operator_token(&app).await;
    let hooks = Receiver::start().await;
    let channel = created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "hook", "kind": "webhook", "url": hooks.url("/hook")}),
        )
        .await,
    )
    .await;
    // Every live server breaches this one; the second fires when a server stops reporting.
    let seen = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({"name": "cpu.seen", "channels": [channel["id"]],
                   "conditions": [{"metric": "system.cpu", "window_s": 10, "op": "above", "threshold": -1}]}),
        )
        .await,
    )
    .await;
    let gone = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({"name": "cpu.gone", "channels": [channel["id"]],
                   "conditions": [{"metric": "system.cpu", "window_s": 10, "op": "absent"}]}),
        )
        .await,
    )
    .await;
    let servers = crate::helpers::launch_agents(&app, &op, 2).await;
    let (doomed, kept) = (&servers[0], &servers[1]);
    for s in &servers {
        eventually(30, "each server's cpu.seen fires", || async {
            (state_of(&app, seen["id"].as_i64().unwrap(), s)
                .await
                .as_deref()
                == Some("firing"))
            .then_some(())
        })
        .await;
    }
    let res = post(
        &app,
        &op,
        &format!("/api/v1/servers/{doomed}/terminate"),
        json!({"force": true}),
    )
    .await;
    assert!(res.status().is_success(), "{}", res.status());
    let reason: String = eventually(40, "the terminated server's alert resolves", || async {
        sqlx::query_scalar(
            "SELECT reason FROM alert_transitions WHERE rule_id = $1 AND source = $2 AND to_state = 'ok'",
        )
        .bind(seen["id"].as_i64().unwrap())
        .bind(doomed)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(reason, "server terminated");
    eventually(20, "its resolved notice", || async {
        hooks
            .delivered("/hook")
            .into_iter()
            .find(|r| {
                let b = r.json();
                b["status"] == "resolved" && b["alerts"][0]["source"] == doomed.as_str()
            })
            .map(|_| ())
    })
    .await;
    // Long past the absent window: the retired server never fired (nor pended) "absent".
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let absent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_transitions WHERE rule_id = $1 AND source = $2",
    )
    .bind(gone["id"].as_i64().unwrap())
    .bind(doomed)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(absent, 0, "a server being retired does not fire absent");
    assert_eq!(
        state_of(&app, seen["id"].as_i64().unwrap(), kept)
            .await
            .as_deref(),
        Some("firing"),
        "the other server is untouched"
    );
    assert!(
        !hooks
            .delivered("/hook")
            .iter()
            .any(|r| r.json()["rule"]["name"] == "cpu.gone"),
        "nothing from the absent rule"
    );
}

#[tokio::test]
async fn fleet_events_reach_the_channels_subscribed_to_them_once() {
    let app = alerting_app().await;
    let admin = admin_token(&app).await;
    let hooks = Receiver::start().await;
    created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "events", "kind": "webhook", "url": hooks.url("/events"), "events": ["bake_failed", "rollout_failed"]}),
        )
        .await,
    )
    .await;
    created(
        post(
            &app,
            &admin,
            "/api/v1/channels",
            json!({"name": "quiet", "kind": "webhook", "url": hooks.url("/quiet")}),
        )
        .await,
    )
    .await;
    // What the rooms write when a bake fails and a launch comes up short.
    use kiln::db::audit::{AuditEvent, Outcome, record};
    record(
        &app.pool,
        AuditEvent::system("bake.failed", "bake:7", Outcome::Failed).detail("at test: exit 1"),
    )
    .await
    .unwrap();
    record(
        &app.pool,
        AuditEvent::system("servers.launched", "launch:3", Outcome::Failed)
            .detail("1 of 3 from ami-1"),
    )
    .await
    .unwrap();
    let got = eventually(20, "the bake_failed event", || async {
        hooks.delivered("/events").first().cloned()
    })
    .await;
    let body = got.json();
    assert_eq!(body["status"], "bake_failed");
    assert_eq!(body["summary"], "Bake #7 failed at test: exit 1");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        hooks.delivered("/events").len(),
        1,
        "once; launch_partial not subscribed"
    );
    assert!(hooks.delivered("/quiet").is_empty());
}

/// Real `kiln serve` processes: two on one database send each notice once; killed with
/// SIGKILL while a notice is still undelivered, a restarted console delivers it (the
/// receiver sees the same key).
#[tokio::test]
async fn two_consoles_notify_once_and_a_killed_console_delivers_after_restart() {
    let db = crate::helpers::fresh_database_url();
    let _agents = crate::helpers::AgentsGuard::new(&db);
    let fleet = format!("f-{}", uuid::Uuid::new_v4().simple());
    let extra = [
        ("KILN_ALERT_INTERVAL", "1"),
        ("KILN_ALERT_FOR_SCALE", "0.05"),
        ("KILN_NOTIFY_RETRY_BASE_MS", "300"),
        ("KILN_TASK_LEASE", "3"),
    ];
    let (port_a, port_b) = (crate::helpers::free_port(), crate::helpers::free_port());
    let mut a = crate::helpers::start_console(&db, port_a, &fleet, &extra).await;
    let mut b = crate::helpers::start_console(&db, port_b, &fleet, &extra).await;
    let token = crate::cli::admin_token(&db).await;
    let base_a = format!("http://127.0.0.1:{port_a}");
    let base_b = format!("http://127.0.0.1:{port_b}");
    let hooks = Receiver::start().await;
    let api = reqwest::Client::new();
    let channel: Value = api
        .post(format!("{base_a}/api/v1/channels"))
        .bearer_auth(&token)
        .json(&json!({"name": "hook", "kind": "webhook", "url": hooks.url("/hook")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rule: Value = api
        .post(format!("{base_b}/api/v1/alerts"))
        .bearer_auth(&token)
        .json(&json!({"name": "disk.full", "channels": [channel["id"]],
                      "conditions": [{"metric": "app.disk", "window_s": 10, "op": "above", "threshold": 90}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rule["id"].is_i64(), "{rule}");
    // Each console gets half of the measurements.
    let send = |base: String, v: f64| {
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/metrics"))
                .basic_auth("ops", Some(&token))
                .json(&json!({"gauges": [{"name": "app.disk", "source": "d-1", "value": v}]}))
                .send()
                .await
                .unwrap();
        }
    };
    let fired = eventually(30, "the firing notice", || {
        let (a, b) = (base_a.clone(), base_b.clone());
        let hooks = &hooks;
        let send = &send;
        async move {
            send(a, 97.0).await;
            send(b, 97.0).await;
            hooks.delivered("/hook").first().cloned()
        }
    })
    .await;
    assert_eq!(fired.json()["status"], "firing");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(hooks.all().len(), 1, "two consoles, one notification");

    // The receiver fails; the value drops; the resolved notice is pending when both die.
    hooks.status.store(503, Ordering::SeqCst);
    eventually(40, "a refused resolved notice", || {
        let (a, b) = (base_a.clone(), base_b.clone());
        let hooks = &hooks;
        let send = &send;
        async move {
            send(a, 10.0).await;
            send(b, 10.0).await;
            hooks
                .all()
                .iter()
                .any(|r| r.answered == 503 && r.json()["status"] == "resolved")
                .then_some(())
        }
    })
    .await;
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    let _ = a.wait().await;
    let _ = b.wait().await;
    let key = hooks
        .all()
        .last()
        .unwrap()
        .header("idempotency-key")
        .unwrap()
        .to_owned();
    hooks.status.store(200, Ordering::SeqCst);
    let mut a = crate::helpers::start_console(&db, port_a, &fleet, &extra).await;
    let resolved = eventually(40, "the resolved notice after the restart", || async {
        hooks
            .delivered("/hook")
            .into_iter()
            .find(|r| r.json()["status"] == "resolved")
    })
    .await;
    assert_eq!(resolved.header("idempotency-key"), Some(key.as_str()));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        hooks.delivered("/hook").len(),
        2,
        "firing once, resolved once"
    );
    crate::cli::sigterm_and_wait(&mut a).await;
}

#[tokio::test]
async fn a_browser_writes_a_rule_previews_it_watches_it_fire_and_silences_it() {
    let app = alerting_app().await;
    let token = admin_token(&app).await;
    // Yesterday's history for the preview: t-1 ran hot for ten minutes two hours ago.
    let now = time::OffsetDateTime::now_utc().unix_timestamp() / 60 * 60;
    let history: Vec<Value> = (0..60)
        .map(|m| {
            let hot = (20..30).contains(&m);
            json!({"name": "app.temp", "source": "t-1", "value": if hot { 95.0 } else { 40.0 },
                   "measure_time": now - 3 * 3600 + m * 60})
        })
        .collect();
    let res = reqwest::Client::new()
        .post(app.url("/v1/metrics"))
        .basic_auth("ops", Some(&token))
        .json(&json!({ "gauges": history }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    // And it runs hot again once the browser has read the preview (the script creates
    // `previewed` then), so that the preview sees only the history however long Chromium
    // takes to start.
    let previewed = std::env::temp_dir().join(format!(
        "kiln-previewed-{}-{}",
        std::process::id(),
        app.address.rsplit(':').next().unwrap()
    ));
    let _ = std::fs::remove_file(&previewed);
    let gate = previewed.clone();
    let (url, sender_token) = (app.url("/v1/metrics"), token.clone());
    let sender = tokio::spawn(async move {
        while !gate.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let values = Arc::new(Mutex::new(vec![("t-1", 95.0)]));
        send_forever(url, sender_token, "app.temp", values).await;
    });
    let result =
        crate::helpers::browser_check_with(&app, "alerts_check.py", &[previewed.to_str().unwrap()])
            .await;
    sender.abort();
    let _ = std::fs::remove_file(&previewed);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("console errors: 0"), "{stdout}");
    assert!(
        stdout.contains("preview: Would have fired 1 time"),
        "{stdout}"
    );
    let silences = app.count("SELECT count(*) FROM alert_silences").await;
    assert_eq!(silences, 1);
}

#[tokio::test]
async fn a_long_window_reads_the_rollups_and_the_raw_points_after_them() {
    let app = alerting_app().await;
    let op = operator_token(&app).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Forty minutes of a hot series, one point a minute, the last one a minute ago: most of
    // an hour's window is in the 1-minute rollups, the last minutes only in raw points.
    let gauges: Vec<Value> = (1..=40)
        .map(|m| json!({"name": "app.queue.age", "source": "long-1", "value": 600.0, "measure_time": now - m * 60}))
        .collect();
    let res = reqwest::Client::new()
        .post(app.url("/v1/metrics"))
        .basic_auth("ops", Some(&op))
        .json(&json!({ "gauges": gauges }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    kiln::metrics::rollup::roll_up_all(&app.pool).await.unwrap();
    let rule = created(
        post(
            &app,
            &op,
            "/api/v1/alerts",
            json!({"name": "queue.stale", "conditions": [{"metric": "app.queue.age", "aggregate": "count",
                    "window_s": 3600, "op": "above", "threshold": 35}]}),
        )
        .await,
    )
    .await;
    let id = rule["id"].as_i64().unwrap();
    eventually(20, "the hour-long window fires", || async {
        (state_of(&app, id, "long-1").await.as_deref() == Some("firing")).then_some(())
    })
    .await;
    let value: f64 = sqlx::query_scalar("SELECT value FROM alert_states WHERE rule_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Every point counted once: from the rollups or from the raw points, never both.
    assert!((38.0..=40.0).contains(&value), "{value}");
}

//! Delivering one notification to one channel, as a durable task: each try has 10 s; a
//! failed try is logged and tried again with exponential backoff and jitter until the retry
//! window (`KILN_NOTIFY_RETRY_WINDOW`, 15 minutes) is spent, then the notification is marked
//! failed. A console killed mid-delivery loses the task's lease and another worker tries
//! again: the receiver may see a repeat, with the same `Idempotency-Key`.
//!
//! A channel's address is checked again at every try (DNS may have changed since it was
//! saved): link-local and cloud-metadata addresses are refused unless the host is allowed
//! explicitly (`KILN_ALERT_ALLOW_HOSTS`), and the connection goes to the addresses checked —
//! no second lookup, no redirects.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::alerts::notify;
use crate::db::alerts::{ChannelRow, NotificationRow};
use crate::domain::{ChannelKind, DeliveryState};
use crate::tasks::{Context, Task, TaskError};

pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
pub struct DeliverNotification {
    pub id: uuid::Uuid,
}

/// What the retry schedule needs from the settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub window: Duration,
    pub base: Duration,
    pub allow_hosts: Vec<String>,
}

impl RetryPolicy {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        RetryPolicy {
            window: Duration::from_secs(s.notify_retry_window),
            base: Duration::from_millis(s.notify_retry_base_ms),
            allow_hosts: s.alert_allow_hosts.clone(),
        }
    }

    /// base, 2·base, 4·base … capped at 30·base, each ±20% so that retries of many
    /// notifications to one receiver spread out.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = 2u32.saturating_pow(attempt.clamp(1, 16) as u32 - 1).min(30);
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        self.base.mul_f64(f64::from(exp) * jitter)
    }
}

/// Link-local addresses (where clouds serve instance metadata and credentials) and AWS's
/// IPv6 metadata address.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// The addresses of `host:port`, refused when any is forbidden and the host is not allowed.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_hosts: &[String],
) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    let allowed = allow_hosts.iter().any(|a| a.eq_ignore_ascii_case(bare));
    if !allowed && let Some(bad) = addrs.iter().find(|a| forbidden_ip(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, a link-local or metadata address; an admin must allow the host explicitly (KILN_ALERT_ALLOW_HOSTS)",
            bad.ip()
        ));
    }
    Ok(addrs)
}

/// How one try ended: the receiver's status code if it answered, and an error if it failed.
#[derive(Debug)]
pub struct TryResult {
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// The HMAC-SHA256 of the body, as GitHub's `X-Hub-Signature-256` spells it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    allow_hosts: &[String],
) -> TryResult {
    let failed = |e: String| TryResult {
        status_code: None,
        error: Some(e),
    };
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return failed(format!("bad URL: {e}")),
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return failed("the URL has no host".into());
    };
    let addrs = match resolve_checked(host, port, allow_hosts).await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let client = match reqwest::Client::builder()
        .timeout(TRY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(host.trim_start_matches('[').trim_end_matches(']'), &addrs)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("{e}")),
    };
    let mut req = client
        .post(parsed)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(res) if res.status().is_success() => TryResult {
            status_code: Some(res.status().as_u16()),
            error: None,
        },
        Ok(res) => TryResult {
            status_code: Some(res.status().as_u16()),
            error: Some(format!("the receiver answered {}", res.status())),
        },
        Err(e) if e.is_timeout() => failed(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
        // Without the URL: a Slack webhook's URL is its secret, and the log is shown.
        Err(e) => failed(chain(&e.without_url())),
    }
}

/// An error and its causes, on one line ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The SMTP part of an e-mail channel, as stored (the password lives in the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    #[serde(default)]
    pub user: Option<String>,
    pub from: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

async fn email(channel: &ChannelRow, n: &NotificationRow, allow_hosts: &[String]) -> TryResult {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let failed = |e: String| TryResult {
        status_code: None,
        error: Some(e),
    };
    let Some(smtp) = channel
        .smtp
        .as_ref()
        .and_then(|s| serde_json::from_value::<Smtp>(s.0.clone()).ok())
    else {
        return failed("the channel has no SMTP settings".into());
    };
    if let Err(e) = resolve_checked(&smtp.host, smtp.port, allow_hosts).await {
        return failed(e);
    }
    let builder = match smtp.tls {
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &smtp.host,
        )),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
    };
    let mut builder = match builder {
        Ok(b) => b.port(smtp.port).timeout(Some(TRY_TIMEOUT)),
        Err(e) => return failed(format!("SMTP: {e}")),
    };
    if let (Some(user), Some(password)) = (&smtp.user, &channel.secret) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let transport = builder.build();
    let payload = &n.payload.0;
    let mut message = Message::builder()
        .subject(notify::headline(payload))
        .message_id(Some(format!("<{}@kiln>", n.id)))
        .header(ContentType::TEXT_PLAIN);
    match smtp.from.parse() {
        Ok(from) => message = message.from(from),
        Err(e) => return failed(format!("from address {:?}: {e}", smtp.from)),
    }
    for to in &channel.email_to {
        match to.parse() {
            Ok(addr) => message = message.to(addr),
            Err(e) => return failed(format!("recipient {to:?}: {e}")),
        }
    }
    let message = match message.body(notify::text(payload)) {
        Ok(m) => m,
        Err(e) => return failed(format!("{e}")),
    };
    match tokio::time::timeout(TRY_TIMEOUT, transport.send(message)).await {
        Ok(Ok(res)) => TryResult {
            status_code: Some(u16::from(res.code())),
            error: None,
        },
        Ok(Err(e)) => TryResult {
            status_code: e.status().map(u16::from),
            error: Some(format!("SMTP: {e}")),
        },
        Err(_) => failed(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
    }
}

/// One try of one notification on one channel.
pub async fn try_once(
    channel: &ChannelRow,
    n: &NotificationRow,
    allow_hosts: &[String],
) -> TryResult {
    let key = n.id.to_string();
    match channel.kind {
        ChannelKind::Webhook => {
            let body = serde_json::to_vec(&n.payload.0).unwrap_or_default();
            let mut headers = vec![("idempotency-key", key)];
            if let Some(secret) = channel.secret.as_deref().filter(|s| !s.is_empty()) {
                headers.push(("x-kiln-signature-256", signature(secret, &body)));
            }
            post(
                channel.url.as_deref().unwrap_or(""),
                body,
                &headers,
                allow_hosts,
            )
            .await
        }
        ChannelKind::Slack => {
            let body =
                serde_json::to_vec(&serde_json::json!({ "text": notify::text(&n.payload.0) }))
                    .unwrap_or_default();
            post(
                channel.url.as_deref().unwrap_or(""),
                body,
                &[("idempotency-key", key)],
                allow_hosts,
            )
            .await
        }
        ChannelKind::Email => email(channel, n, allow_hosts).await,
    }
}

impl Task for DeliverNotification {
    const KIND: &'static str = "deliver_notification";
    /// Retries are scheduled by the task itself (not an attempt each); this only bounds
    /// database failures.
    const MAX_ATTEMPTS: i32 = 20;

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let policy = RetryPolicy::from_settings(ctx.settings()?);
        let Some(n) = crate::db::alerts::notification(&ctx.pool, self.id).await? else {
            return Ok(());
        };
        if n.state != DeliveryState::Pending {
            return Ok(());
        }
        let Some(channel) = crate::db::alerts::channel(&ctx.pool, n.channel_id).await? else {
            return Ok(());
        };
        let attempt = n.attempts + 1;
        let result = try_once(&channel, &n, &policy.allow_hosts).await;
        let age: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - created_at)::FLOAT8 FROM alert_notifications WHERE id = $1",
        )
        .bind(n.id)
        .fetch_one(&ctx.pool)
        .await?;
        let delay = policy.delay(attempt);
        let state = match &result.error {
            None => DeliveryState::Delivered,
            Some(_) if age + delay.as_secs_f64() > policy.window.as_secs_f64() => {
                DeliveryState::Failed
            }
            Some(_) => DeliveryState::Pending,
        };
        let mut tx = ctx.pool.begin().await?;
        sqlx::query(
            "INSERT INTO alert_delivery_attempts (notification_id, attempt, status_code, error)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(n.id)
        .bind(attempt)
        .bind(result.status_code.map(i32::from))
        .bind(&result.error)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE alert_notifications SET attempts = $2, state = $3,
                 finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
             WHERE id = $1",
        )
        .bind(n.id)
        .bind(attempt)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        match (state, result.error) {
            (DeliveryState::Pending, Some(e)) => Err(TaskError::NotYet(
                delay,
                format!(
                    "notification to {} failed ({e}); trying again",
                    channel.name
                ),
            )),
            (DeliveryState::Failed, Some(e)) => {
                tracing::warn!(
                    channel = %channel.name,
                    notification = %n.id,
                    attempts = attempt,
                    error = %e,
                    "notification not delivered within the retry window; marked failed"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden() {
        assert!(forbidden_ip("169.254.169.254".parse().unwrap()));
        assert!(forbidden_ip("fd00:ec2::254".parse().unwrap()));
        assert!(forbidden_ip("fe80::1".parse().unwrap()));
        assert!(forbidden_ip("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!forbidden_ip("127.0.0.1".parse().unwrap()));
        assert!(!forbidden_ip("10.0.0.5".parse().unwrap()));
        assert!(!forbidden_ip("fd00:ec2::253".parse().unwrap()));
    }

    #[test]
    fn signatures_are_githubs() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = RetryPolicy {
            window: Duration::from_secs(900),
            base: Duration::from_secs(5),
            allow_hosts: vec![],
        };
        let first = p.delay(1).as_secs_f64();
        assert!((4.0..=6.0).contains(&first), "{first}");
        let third = p.delay(3).as_secs_f64();
        assert!((16.0..=24.0).contains(&third), "{third}");
        assert!(p.delay(40).as_secs_f64() <= 180.0);
    }

    #[tokio::test]
    async fn a_metadata_host_is_refused_unless_allowed() {
        assert!(
            resolve_checked("169.254.169.254", 80, &[])
                .await
                .unwrap_err()
                .contains("metadata")
        );
        assert!(
            resolve_checked("169.254.169.254", 80, &["169.254.169.254".into()])
                .await
                .is_ok()
        );
    }
}

//! Notification channels (admins manage them): a generic webhook (JSON, HMAC-signed), a
//! Slack-compatible incoming webhook, or e-mail over SMTP. A secret — the webhook's key, the
//! SMTP password — is write-only once saved: answers say only whether one is set; a Slack
//! URL (which is its own secret) is shown up to its host.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::alerts::deliver::{Smtp, SmtpTls, resolve_checked};
use crate::alerts::notify::{self, FLEET_EVENTS};
use crate::auth::Principal;
use crate::db::alerts::ChannelRow;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::domain::alert_rule::check_http_url;
use crate::domain::{ChannelKind, ValidationError};
use crate::error::Error;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChannelInput {
    pub name: String,
    pub kind: Option<ChannelKind>,
    #[serde(default)]
    pub url: Option<String>,
    /// Omitted on an edit: the saved one stays. Empty: none.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub smtp: Option<SmtpInput>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct SmtpInput {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    #[serde(default)]
    pub user: Option<String>,
    /// Write-only, like a webhook's secret.
    #[serde(default)]
    pub password: Option<String>,
    pub from: String,
}

/// A channel as answers show it: never its secret.
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    pub url: Option<String>,
    pub has_secret: bool,
    pub to: Vec<String>,
    pub smtp: Option<serde_json::Value>,
    pub events: Vec<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

impl From<&ChannelRow> for ChannelView {
    fn from(c: &ChannelRow) -> Self {
        let url = c.url.as_deref().map(|u| match c.kind {
            ChannelKind::Slack => url::Url::parse(u)
                .ok()
                .map(|p| format!("{}/…", &p[..url::Position::BeforePath]))
                .unwrap_or_else(|| "…".into()),
            _ => u.to_owned(),
        });
        ChannelView {
            id: c.id,
            name: c.name.clone(),
            kind: c.kind,
            url,
            has_secret: c.secret.as_deref().is_some_and(|s| !s.is_empty()),
            to: c.email_to.clone(),
            smtp: c.smtp.as_ref().map(|s| {
                let mut v = s.0.clone();
                v["has_password"] = serde_json::Value::Bool(c.secret.is_some());
                v
            }),
            events: c.events.clone(),
            created_by: c.created_by.clone(),
            created_at: c.created_at,
        }
    }
}

/// What a valid input stores. `secret`: None keeps the saved one.
#[derive(Debug, Clone)]
struct Valid {
    name: String,
    kind: ChannelKind,
    url: Option<String>,
    secret: Option<Option<String>>,
    to: Vec<String>,
    smtp: Option<Smtp>,
    events: Vec<String>,
}

fn bad<T>(m: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(m))
}

fn validate(input: &ChannelInput) -> Result<Valid, ValidationError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return bad("name: 1 to 100 characters.");
    }
    let Some(kind) = input.kind else {
        return bad("kind: missing; one of webhook, slack, email.");
    };
    let mut events = input.events.clone().unwrap_or_default();
    events.sort();
    events.dedup();
    if let Some(e) = events.iter().find(|e| !FLEET_EVENTS.contains(&e.as_str())) {
        return bad(format!(
            "events: {e:?} is not a fleet event; one of {}.",
            FLEET_EVENTS.join(", ")
        ));
    }
    let secret = input
        .secret
        .as_ref()
        .map(|s| Some(s.clone()).filter(|s| !s.is_empty()));
    if let Some(Some(s)) = &secret
        && s.len() > 1000
    {
        return bad("secret: at most 1000 characters.");
    }
    match kind {
        ChannelKind::Webhook | ChannelKind::Slack => {
            let Some(url) = input
                .url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
            else {
                return bad("url: missing; a webhook needs an http(s) URL.");
            };
            check_http_url("url", url)?;
            if input.to.is_some() || input.smtp.is_some() {
                return bad("to: only an e-mail channel has recipients and SMTP settings.");
            }
            if kind == ChannelKind::Slack && matches!(secret, Some(Some(_))) {
                return bad("secret: a Slack webhook's URL is its secret; it takes no other.");
            }
            Ok(Valid {
                name: name.to_owned(),
                kind,
                url: Some(url.to_owned()),
                secret,
                to: vec![],
                smtp: None,
                events,
            })
        }
        ChannelKind::Email => {
            if input.url.is_some() || input.secret.is_some() {
                return bad(
                    "url: an e-mail channel has no URL (its password goes in smtp.password).",
                );
            }
            let to: Vec<String> = input
                .to
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.trim().to_owned())
                .collect();
            if to.is_empty() || to.len() > 20 {
                return bad("to: 1 to 20 e-mail addresses.");
            }
            for t in &to {
                if t.parse::<lettre::Address>().is_err() {
                    return bad(format!("to: {t:?} is not an e-mail address."));
                }
            }
            let Some(smtp) = &input.smtp else {
                return bad("smtp: missing; host, port, tls, user, password and from.");
            };
            let host = smtp.host.trim();
            if host.is_empty() || host.len() > 255 || host.contains(['/', ' ']) {
                return bad("smtp.host: a host name or address.");
            }
            if smtp
                .from
                .trim()
                .parse::<lettre::message::Mailbox>()
                .is_err()
            {
                return bad(format!(
                    "smtp.from: {:?} is not an e-mail address.",
                    smtp.from
                ));
            }
            let tls = smtp.tls.unwrap_or(SmtpTls::Starttls);
            let port = smtp.port.unwrap_or(match tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
            });
            if port == 0 {
                return bad("smtp.port: 1 to 65535.");
            }
            if smtp.user.is_some() != smtp.password.is_some() && smtp.password.is_some() {
                return bad("smtp.user: a password needs a user.");
            }
            Ok(Valid {
                name: name.to_owned(),
                kind,
                url: None,
                secret: smtp
                    .password
                    .as_ref()
                    .map(|p| Some(p.clone()).filter(|p| !p.is_empty())),
                to,
                smtp: Some(Smtp {
                    host: host.to_owned(),
                    port,
                    tls,
                    user: smtp.user.clone().filter(|u| !u.is_empty()),
                    from: smtp.from.trim().to_owned(),
                }),
                events,
            })
        }
    }
}

/// The destination must not be a link-local or metadata address (checked again at every
/// delivery). A name that does not resolve now is accepted: deliveries will say so.
async fn check_destination(v: &Valid, allow_hosts: &[String]) -> Result<(), Error> {
    let (host, port) = match (&v.url, &v.smtp) {
        (Some(u), _) => {
            let p = url::Url::parse(u).map_err(|e| Error::invalid(format!("url: {e}")))?;
            (
                p.host_str().unwrap_or("").to_owned(),
                p.port_or_known_default().unwrap_or(80),
            )
        }
        (None, Some(s)) => (s.host.clone(), s.port),
        _ => return Ok(()),
    };
    let field = if v.url.is_some() { "url" } else { "smtp.host" };
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        resolve_checked(&host, port, allow_hosts),
    )
    .await
    {
        Ok(Err(e)) if e.contains("metadata") => Err(Error::invalid(format!("{field}: {e}."))),
        _ => Ok(()),
    }
}

fn unique(e: sqlx::Error, name: &str) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            Error::conflict(format!("A channel named {name:?} exists already."))
        }
        _ => e.into(),
    }
}

pub async fn create(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    input: &ChannelInput,
    allow_hosts: &[String],
) -> Result<ChannelRow, Error> {
    let v = validate(input)?;
    check_destination(&v, allow_hosts).await?;
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alert_channels (name, kind, url, secret, email_to, smtp, events, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&v.name)
    .bind(v.kind)
    .bind(&v.url)
    .bind(v.secret.clone().flatten())
    .bind(&v.to)
    .bind(v.smtp.as_ref().map(Json))
    .bind(&v.events)
    .bind(&principal.name)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| unique(e, &v.name))?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "channel.create",
            format!("channel:{id}"),
            Outcome::Ok,
        )
        .detail(format!("{} ({})", v.name, v.kind))
        .from_ip(ip),
    )
    .await?;
    let row = crate::db::alerts::channel(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the channel just created is missing")))?;
    tx.commit().await?;
    Ok(row)
}

pub async fn update(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
    input: &ChannelInput,
    allow_hosts: &[String],
) -> Result<ChannelRow, Error> {
    let v = validate(input)?;
    check_destination(&v, allow_hosts).await?;
    let mut tx = pool.begin().await?;
    let before = crate::db::alerts::channel(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("No channel {id}.")))?;
    if before.kind != v.kind {
        return Err(Error::invalid(format!(
            "kind: channel {id} is a {} channel; make a new channel for another kind.",
            before.kind
        )));
    }
    sqlx::query(
        "UPDATE alert_channels SET name = $2, url = $3, secret = CASE WHEN $4 THEN $5 ELSE secret END,
             email_to = $6, smtp = $7, events = $8, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&v.name)
    .bind(&v.url)
    .bind(v.secret.is_some())
    .bind(v.secret.clone().flatten())
    .bind(&v.to)
    .bind(v.smtp.as_ref().map(Json))
    .bind(&v.events)
    .execute(&mut *tx)
    .await
    .map_err(|e| unique(e, &v.name))?;
    let mut what = vec![];
    if before.name != v.name {
        what.push(format!("name {:?} -> {:?}", before.name, v.name));
    }
    if before.url != v.url && v.kind == ChannelKind::Webhook {
        what.push("url changed".into());
    }
    if v.secret.is_some() {
        what.push("secret replaced".into());
    }
    if before.events != v.events {
        what.push(format!("events {:?} -> {:?}", before.events, v.events));
    }
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "channel.edit",
            format!("channel:{id}"),
            Outcome::Ok,
        )
        .detail(what.join("; "))
        .from_ip(ip),
    )
    .await?;
    let row = crate::db::alerts::channel(&mut *tx, id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the channel just edited is missing")))?;
    tx.commit().await?;
    Ok(row)
}

pub async fn delete(
    pool: &PgPool,
    principal: &Principal,
    ip: Option<String>,
    id: i64,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let name: Option<String> =
        sqlx::query_scalar("DELETE FROM alert_channels WHERE id = $1 RETURNING name")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(name) = name else {
        return Err(Error::not_found(format!("No channel {id}.")));
    };
    sqlx::query("UPDATE alert_rules SET channel_ids = array_remove(channel_ids, $1) WHERE $1 = ANY(channel_ids)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "channel.delete",
            format!("channel:{id}"),
            Outcome::Ok,
        )
        .detail(name)
        .from_ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Queues a test notification on a channel; returns its id (the delivery log shows it).
pub async fn test(
    pool: &PgPool,
    principal: &Principal,
    id: i64,
    public_url: &str,
) -> Result<uuid::Uuid, Error> {
    let mut tx = pool.begin().await?;
    if crate::db::alerts::channel(&mut *tx, id).await?.is_none() {
        return Err(Error::not_found(format!("No channel {id}.")));
    }
    let n = notify::test_notification(id, None, &principal.name, public_url);
    notify::send(&mut tx, std::slice::from_ref(&n)).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            "channel.test",
            format!("channel:{id}"),
            Outcome::Ok,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(n.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str) -> ChannelInput {
        ChannelInput {
            name: "ops".into(),
            kind: Some(ChannelKind::Webhook),
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn channels_are_checked() {
        assert!(validate(&webhook("https://hooks.example.com/x")).is_ok());
        assert!(
            validate(&webhook("ftp://x"))
                .unwrap_err()
                .0
                .starts_with("url:")
        );
        assert!(
            validate(&webhook("file:///etc/passwd"))
                .unwrap_err()
                .0
                .starts_with("url:")
        );
        let mut e = webhook("http://x");
        e.events = Some(vec!["bake_exploded".into()]);
        assert!(validate(&e).unwrap_err().0.starts_with("events:"));
        let email = ChannelInput {
            name: "mail".into(),
            kind: Some(ChannelKind::Email),
            to: Some(vec!["ops@example.com".into()]),
            smtp: Some(SmtpInput {
                host: "127.0.0.1".into(),
                port: Some(2525),
                tls: Some(SmtpTls::None),
                from: "kiln@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = validate(&email).unwrap();
        assert_eq!(v.smtp.unwrap().port, 2525);
        let mut bad_to = email.clone();
        bad_to.to = Some(vec!["not an address".into()]);
        assert!(validate(&bad_to).unwrap_err().0.starts_with("to:"));
    }
}

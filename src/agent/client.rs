//! The agent's HTTP calls to the console: JSON in, JSON out, with the agent token once it has
//! one. A refusal (4xx) is final for that call; anything else (no answer, 5xx) means the
//! console is unreachable for now and the caller retries with [`Backoff`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The console answered and said no; retrying the same call cannot help.
    #[error("the console refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No usable answer (network, timeout, 5xx): try again later.
    #[error("the console is unreachable: {0}")]
    Unreachable(String),
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            CallError::Unreachable(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        })
    }

    pub fn with_token(&self, token: String) -> Self {
        Self {
            token: Some(token),
            ..self.clone()
        }
    }

    /// POSTs `body` to `/agent/v1/{path}`; `timeout` bounds the whole call (a long-poll
    /// passes its wait plus a margin).
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let mut req = self
            .http
            .post(format!("{}/agent/v1/{path}", self.base))
            .timeout(timeout)
            .json(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let res = req
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = res.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                // Callers of body-less answers ask for `serde_json::Value` or `()`.
                return serde_json::from_str("null")
                    .map_err(|e| CallError::Unreachable(e.to_string()));
            }
            return res
                .json()
                .await
                .map_err(|e| CallError::Unreachable(format!("unreadable answer: {e}")));
        }
        let text = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<crate::agent::wire::Refusal>(&text)
            .map(|r| r.error)
            .unwrap_or(text);
        if status.is_client_error() {
            Err(CallError::Refused {
                status: status.as_u16(),
                message,
            })
        } else {
            Err(CallError::Unreachable(format!("{status}: {message}")))
        }
    }
}

/// Exponential backoff with full jitter, so that a fleet of agents coming back after a
/// console outage does not knock on the door at the same instant.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(250),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(250);
    }

    /// The next wait: uniformly random in [next/2, next], then next doubles up to max.
    pub fn step(&mut self) -> Duration {
        use rand::Rng;
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.step()).collect();
        assert!(waits[0] <= Duration::from_millis(250));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
        assert!(
            waits[7] >= Duration::from_secs(1),
            "capped near 2 s: {waits:?}"
        );
        b.reset();
        assert!(b.step() <= Duration::from_millis(250));
    }
}

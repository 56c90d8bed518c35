//! Login throttling. Failures are counted per account and per source IP over a sliding
//! window (KILN_LOGIN_FAILURE_WINDOW). Past KILN_LOGIN_SLOW_AFTER failures for an account each
//! attempt is delayed a little more; at KILN_LOGIN_MAX_FAILURES (account) or
//! KILN_LOGIN_MAX_FAILURES_IP (source) attempts are refused with 429 until the oldest failure
//! in the window ages out. With the defaults an account sees at most 40 failures an hour,
//! well under ASVS's 100.

use std::time::Duration;

use crate::config::Settings;

/// What the counts say about the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        delay: Duration,
    },
    Refuse {
        retry_after: Duration,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub account_failures: u32,
    pub ip_failures: u32,
    /// Seconds until the oldest failure that counts toward a limit leaves the window.
    pub account_retry_after_s: u64,
    pub ip_retry_after_s: u64,
}

pub fn judge(settings: &Settings, counts: Counts) -> Verdict {
    if counts.account_failures >= settings.login_max_failures {
        return Verdict::Refuse {
            retry_after: Duration::from_secs(counts.account_retry_after_s.max(1)),
            reason: "too many failed logins for this account",
        };
    }
    if counts.ip_failures >= settings.login_max_failures_ip {
        return Verdict::Refuse {
            retry_after: Duration::from_secs(counts.ip_retry_after_s.max(1)),
            reason: "too many failed logins from this address",
        };
    }
    let beyond = counts
        .account_failures
        .saturating_sub(settings.login_slow_after);
    let steps = u64::from(beyond.min(8));
    Verdict::Allow {
        delay: Duration::from_millis(steps * settings.login_slowdown_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut s =
            Settings::with_defaults("postgres://x/y".into(), "127.0.0.1:0".parse().unwrap());
        s.login_slow_after = 3;
        s.login_slowdown_ms = 100;
        s.login_max_failures = 10;
        s.login_max_failures_ip = 50;
        s
    }

    fn counts(account: u32, ip: u32) -> Counts {
        Counts {
            account_failures: account,
            ip_failures: ip,
            account_retry_after_s: 60,
            ip_retry_after_s: 30,
        }
    }

    #[test]
    fn slows_then_refuses() {
        let s = settings();
        assert_eq!(
            judge(&s, counts(0, 0)),
            Verdict::Allow {
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            judge(&s, counts(3, 3)),
            Verdict::Allow {
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            judge(&s, counts(5, 5)),
            Verdict::Allow {
                delay: Duration::from_millis(200)
            }
        );
        assert!(
            matches!(judge(&s, counts(10, 10)), Verdict::Refuse { retry_after, .. } if retry_after.as_secs() == 60)
        );
        assert!(
            matches!(judge(&s, counts(0, 50)), Verdict::Refuse { retry_after, .. } if retry_after.as_secs() == 30)
        );
    }
}

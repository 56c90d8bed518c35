//! Agent token -> server (and where the server stands), held in memory. Agents call several
//! times a second in a busy queue and every few seconds when idle; looking the token up in
//! the database on each call was half the statements of an idle fleet.
//!
//! An entry is trusted only while it was *verified* against the database within [`TTL`].
//! The heartbeat flush (`web::heartbeats`) verifies every entry in use, in the statement that
//! writes the heartbeats, once per flush interval (at most 1 s); an entry whose token is no
//! longer an agent's (the agent registered again, the server is gone) is dropped there. So a
//! replaced token is refused by every console within one flush interval, and at most [`TTL`]
//! if flushes fail; a server's `terminate` reaches its agent within the same bound. These
//! bounds are ARCHITECTURE.md invariants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::agents::Standing;

/// How long a verification is trusted. Flushes verify every second; this is the bound when
/// they cannot (the database is unreachable, every call then fails over to a lookup).
pub const TTL: Duration = Duration::from_secs(5);
/// An entry no agent has used for this long is dropped (its agent stopped, or moved to
/// another console): the flush verifies only the tokens agents use.
const IDLE: Duration = Duration::from_secs(60);
/// More entries than agents a console serves; past it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    server_id: String,
    standing: Standing,
    verified: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct AgentTokens {
    known: Mutex<HashMap<String, Entry>>,
}

impl AgentTokens {
    /// The server of a token hash, and where it stands, when verified within the TTL.
    pub fn get(&self, token_hash: &str) -> Option<(String, Standing)> {
        let mut known = self.known.lock().expect("agent token cache");
        let entry = known
            .get_mut(token_hash)
            .filter(|e| e.verified.elapsed() < TTL)?;
        entry.used = Instant::now();
        Some((entry.server_id.clone(), entry.standing.clone()))
    }

    /// A token just looked up in the database.
    pub fn put(&self, token_hash: String, server_id: String, standing: Standing) {
        let mut known = self.known.lock().expect("agent token cache");
        if known.len() >= MAX_ENTRIES {
            known.clear();
        }
        let now = Instant::now();
        known.insert(
            token_hash,
            Entry {
                server_id,
                standing,
                verified: now,
                used: now,
            },
        );
    }

    /// Forgets every token of a server (it registered again).
    pub fn forget_server(&self, server_id: &str) {
        self.known
            .lock()
            .expect("agent token cache")
            .retain(|_, e| e.server_id != server_id);
    }

    /// The tokens to verify in the next flush: those used lately. Idle ones are dropped.
    pub fn in_use(&self) -> Vec<String> {
        let mut known = self.known.lock().expect("agent token cache");
        known.retain(|_, e| e.used.elapsed() < IDLE);
        known.keys().cloned().collect()
    }

    /// What the database said of `asked` (taken by [`in_use`](Self::in_use) before the
    /// statement began): the tokens it returned are verified now, with their servers'
    /// standing; the others are no agent's any more and are dropped.
    pub fn verified(&self, asked: &[String], found: Vec<(String, String, Standing)>, at: Instant) {
        let mut known = self.known.lock().expect("agent token cache");
        let mut found: HashMap<String, (String, Standing)> = found
            .into_iter()
            .map(|(hash, server, standing)| (hash, (server, standing)))
            .collect();
        for hash in asked {
            match found.remove(hash) {
                Some((server_id, standing)) => {
                    if let Some(e) = known.get_mut(hash) {
                        // A lookup after the statement began knows better.
                        if e.verified < at {
                            e.server_id = server_id;
                            e.standing = standing;
                            e.verified = at;
                        }
                    }
                }
                None => {
                    if known.get(hash).is_some_and(|e| e.verified < at) {
                        known.remove(hash);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ServerMode, ServerState};

    fn running() -> Standing {
        Standing {
            mode: ServerMode::Enabled,
            state: ServerState::Running,
        }
    }

    #[test]
    fn a_token_the_flush_did_not_find_is_dropped_and_one_it_found_takes_its_new_standing() {
        let tokens = AgentTokens::default();
        tokens.put("a".into(), "i-a".into(), running());
        tokens.put("b".into(), "i-b".into(), running());
        let asked = tokens.in_use();
        let at = Instant::now();
        let mut disabled = running();
        disabled.mode = ServerMode::Disabled;
        tokens.verified(&asked, vec![("a".into(), "i-a".into(), disabled)], at);
        assert_eq!(
            tokens.get("a").map(|(s, st)| (s, st.mode)),
            Some(("i-a".into(), ServerMode::Disabled))
        );
        assert!(tokens.get("b").is_none());
    }

    #[test]
    fn a_lookup_made_while_the_flush_ran_is_not_undone_by_it() {
        let tokens = AgentTokens::default();
        let asked = vec!["a".to_owned()];
        let at = Instant::now();
        // The agent registered meanwhile and its token was looked up after `at`.
        std::thread::sleep(Duration::from_millis(2));
        tokens.put("a".into(), "i-a".into(), running());
        tokens.verified(&asked, vec![], at);
        assert!(tokens.get("a").is_some());
    }
}

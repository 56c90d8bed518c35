//! Agent token -> server, remembered for a short while. Agents call several times a second
//! in a busy queue (claim, log, finish, heartbeat); looking the token up in the database on
//! each call doubled the round trips of a claim+finish cycle. A registration in this process
//! forgets the server's old token at once; another replica may accept a replaced token for
//! up to [`TTL`] (a replaced token belongs to an agent process that has restarted, so it has
//! nobody left to use it). The bound is an invariant (ARCHITECTURE.md): a replaced agent token
//! is refused by every console within 5 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(5);
/// More entries than agents a console serves; past it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct AgentTokens {
    known: Mutex<HashMap<String, (String, Instant)>>,
}

impl AgentTokens {
    /// The server of a token hash, when seen within the TTL.
    pub fn get(&self, token_hash: &str) -> Option<String> {
        let known = self.known.lock().expect("agent token cache");
        known
            .get(token_hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(server, _)| server.clone())
    }

    pub fn put(&self, token_hash: String, server_id: String) {
        let mut known = self.known.lock().expect("agent token cache");
        if known.len() >= MAX_ENTRIES {
            known.clear();
        }
        known.insert(token_hash, (server_id, Instant::now()));
    }

    /// Forgets every token of a server (it registered again).
    pub fn forget_server(&self, server_id: &str) {
        self.known
            .lock()
            .expect("agent token cache")
            .retain(|_, (server, _)| server != server_id);
    }
}

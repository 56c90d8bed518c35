use std::time::Duration;

/// What a state machine's step says about the next one: the one shape shared by rollouts and
/// bakes (and the autoscaler and recycler to come), which `tasks` turns into "done" or "look
/// again after the delay".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing more to do until something changes (finished, paused, put back).
    Done,
    /// Look again after the delay; the sentence says what it waits for.
    Wait(Duration, String),
}

//! Alerts: rules on metrics, evaluated per source (or across sources) every
//! `KILN_ALERT_INTERVAL` by one console at a time, with `for` durations, clear thresholds,
//! no-data policies, silences and acknowledgements, and notifications to channels (webhook,
//! Slack, e-mail) delivered as durable tasks.
//!
//! - `decide.rs` — **the policy as a pure function** (state of one (rule, source) + this
//!   evaluation's values + time -> next state, transition, notice), table-tested;
//! - `evaluate.rs` — the pass: a bounded number of statements for all rules, then `decide`,
//!   then one transaction of writes;
//! - `preview.rs` — what a rule would have done over the last 24 hours (the same `decide`
//!   over 1-minute rollups);
//! - `notify.rs` — what a notification says; `deliver.rs` — the delivery task and the
//!   channels' wire formats; `channels.rs`, `rules.rs` — what users do to them;
//! - `events.rs` — fleet events (from the audit log) for the channels subscribed to them.
//!
//! A rule as typed and validated lives in `domain::alert_rule` (the database layer stores it).

pub mod channels;
pub mod decide;
pub mod deliver;
pub mod evaluate;
pub mod events;
pub mod notify;
pub mod preview;
pub mod rules;

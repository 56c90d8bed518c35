//! The rollout's policy as pure functions: a [`Snapshot`] of the rollout and the fleet, read
//! under the rollout's row lock, goes in with the time and the [`Policy`]; a [`Decision`]
//! comes out. No I/O, no clock, no SQL here — `advance` reads the snapshot and applies the
//! decision's effects in the same transaction, and these functions are tested case by case
//! without PostgreSQL or agents (see the tests below).
//!
//! Per batch (at most `batch_size` servers): bring in replacements on the target image —
//! kept servers of an earlier rollout are enabled again at once, otherwise a launch is made —
//! wait until every replacement's agent heartbeats, then disable as many old servers.
//! Replacements come before removals, so capacity stays at the fleet's size; with
//! `min_healthy_percent` below 100, old servers beyond that share leave as their batch starts.
//! A batch not healthy by its deadline fails the rollout, which is then put back ([`plan_undo`]).
//!
//! A release's [`Plan`] adds steps between batches, all decided here from recorded times: the
//! canary is the first batch, alone; with a health command a replacement counts as healthy
//! only once its health-check job (pinned to it) has passed; after each batch the release
//! soaks (watched) until `done_at + soak_s`; then it may wait for an operator's go-ahead until
//! a deadline. A guard that trips — a guarding alert firing, a failed health check, the canary
//! judged worse, a deadline whose action is to roll back — rolls the release back
//! ([`Decision::RollBack`]). A restarted console reads the same times, so nothing restarts.

use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::release_plan::Plan;
use crate::domain::{
    Approval, DeadlineAction, InsufficientData, LaunchState, RolloutPhase, RolloutRole,
    RolloutServerState, RolloutState,
};
use crate::rollouts::judge::Verdict;

/// What the rollout's settings and the console's say about health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An agent is healthy when it heartbeated within this window.
    pub health_window: Duration,
}

impl Policy {
    pub fn for_heartbeat(heartbeat_s: u64) -> Self {
        Policy {
            health_window: crate::domain::agent_health_window(heartbeat_s),
        }
    }
}

/// The rollout as the step sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: RolloutState,
    /// The fleet has been put back after a failure or cancel.
    pub cleaned: bool,
    pub batch_size: i32,
    pub min_healthy_percent: i32,
    /// How long a batch may take to become healthy (for the failure's sentence; the batch's
    /// deadline is what counts).
    pub health_timeout_s: i32,
    /// Enabled workers when the rollout started (what min healthy is a share of).
    pub fleet_size: i32,
    /// Old servers disabled so far.
    pub replaced: i32,
    /// Pending only: another ended rollout that has not put its servers back yet.
    pub unclean_other: Option<i64>,
    /// The batch not done yet, if any.
    pub open_batch: Option<OpenBatch>,
    /// Enabled live workers not on the target image and not yet part of this rollout.
    pub remaining: i64,
    /// The number the next batch takes.
    pub next_batch: i32,
    /// Kept servers of earlier rollouts on the target image, healthy and not being
    /// terminated: they can be enabled again at once.
    pub reusable_kept: i64,
    /// Enabled running workers with a healthy agent, now.
    pub healthy_workers: i64,
    /// The instance type most of the remaining servers have.
    pub common_instance_type: Option<String>,
    /// The release's plan ([`Plan::none`] for a rollback).
    pub plan: Plan,
    /// Batches let go after their soak time.
    pub approved_through: i32,
    /// Running with no batch open: the last closed batch and when it closed.
    pub last_done: Option<(i32, OffsetDateTime)>,
    /// Running: a guarding alert that fired since the release started.
    pub tripped: Option<Trip>,
    /// While the canary soaks or waits: the jobs on the new image judged against the old.
    pub canary_verdict: Option<Verdict>,
    /// There is an image to roll back to.
    pub has_previous: bool,
}

/// A guard that tripped: the sentence saying so, and the alert rule if one did.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub reason: String,
    pub rule_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenBatch {
    pub n: i32,
    pub size: i32,
    pub deadline: OffsetDateTime,
    /// The batch's launch; None when it re-enabled kept servers.
    pub launch: Option<BatchLaunch>,
    /// Servers the launch made that the rollout has not recorded yet.
    pub unrecorded: i64,
    /// The batch's replacements as recorded.
    pub replacements: Vec<Replacement>,
    /// Old servers disabled early for this batch (below 100% min healthy).
    pub disabled_early: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchLaunch {
    pub id: i64,
    pub state: LaunchState,
    pub error: String,
}

/// A replacement server of the open batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    pub server_id: String,
    /// Running at the provider and enabled.
    pub serving: bool,
    pub last_heartbeat_at: Option<OffsetDateTime>,
    pub health: HealthCheck,
}

/// A replacement's health-check job (when the plan has a health command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    NotRun,
    Running,
    Passed,
    /// Failed, with what the job said.
    Failed(String),
}

/// Where the next batch's servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Kept servers of an earlier rollout, enabled again (an instant rollback).
    Reuse,
    /// A launch of this many servers of this type, with a token unique to the batch.
    Launch { instance_type: String },
}

/// What one look at a rollout decides. Every variant but `Stop` and `Wait` changes something
/// and is followed by another look in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Finished, paused, or put back: nothing to do until someone acts.
    Stop,
    /// Look again soon; the sentence says what it waits for.
    Wait(String),
    /// Pending -> running, with the fleet's size taken now.
    Start,
    /// Ended (failed, cancelled) and not put back yet: undo.
    Undo,
    /// End the rollout as failed with this reason; the current image moves back and the fleet
    /// is put back.
    Fail(String),
    /// Record the servers the batch's launch made as its replacements.
    RecordLaunched { batch: i32 },
    /// The batch is healthy: disable this many old servers (idle first) and close it.
    CloseBatch { batch: i32, disable: i64 },
    /// Nothing is left to replace: the rollout succeeded.
    Succeed { total: i32 },
    /// A guard tripped: the release ends, and a rollback to the previous image starts at once
    /// (the kept old servers enabled again).
    RollBack {
        reason: String,
        rule_id: Option<i64>,
    },
    /// Run the plan's health command on these replacements (their agents have joined).
    CheckHealth { servers: Vec<String> },
    /// Wait in a phase of the plan (soaking, awaiting approval); the sentence says until when.
    Hold { phase: RolloutPhase, why: String },
    /// Batch `batch` may be followed; `by` says why when it is not the plan's own course
    /// (a deadline's action).
    LetGo { batch: i32, by: Option<String> },
    /// Start batch `n` of `count` servers; `disable_early` old servers leave at once.
    StartBatch {
        n: i32,
        count: i64,
        source: Source,
        total: i32,
        disable_early: i64,
    },
}

/// Used when no remaining server says which instance type to launch.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";

/// The one decision for this look at the rollout.
pub fn decide(s: &Snapshot, now: OffsetDateTime, policy: &Policy) -> Decision {
    match s.state {
        RolloutState::Paused | RolloutState::Succeeded => Decision::Stop,
        RolloutState::Failed | RolloutState::Cancelled => {
            if s.cleaned {
                Decision::Stop
            } else {
                Decision::Undo
            }
        }
        RolloutState::Pending => match s.unclean_other {
            // A superseded rollout puts its servers back first, so that this one sees the
            // fleet as it will be.
            Some(other) => Decision::Wait(format!(
                "waiting for rollout #{other} to put its servers back"
            )),
            None => Decision::Start,
        },
        RolloutState::Running => {
            if let Some(trip) = &s.tripped {
                return roll_back(s, trip.reason.clone(), trip.rule_id);
            }
            match &s.open_batch {
                Some(b) => decide_open_batch(s, b, now, policy),
                None => decide_between_batches(s, now),
            }
        }
    }
}

/// Rolls the release back, or — with no earlier image to go back to — fails it.
fn roll_back(s: &Snapshot, reason: String, rule_id: Option<i64>) -> Decision {
    if s.has_previous {
        Decision::RollBack { reason, rule_id }
    } else {
        Decision::Fail(format!(
            "{reason}; there is no earlier image to roll back to."
        ))
    }
}

/// "14:02:07 UTC": when a phase ends, in the sentences.
pub fn clock(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02}:{:02} UTC", t.hour(), t.minute(), t.second())
}

/// After a batch closed: soak, judge the canary, wait for a go-ahead, or go on.
fn decide_between_batches(s: &Snapshot, now: OffsetDateTime) -> Decision {
    let Some((n, done_at)) = s.last_done else {
        return decide_next_batch(s);
    };
    if s.approved_through >= n {
        return decide_next_batch(s);
    }
    let plan = &s.plan;
    let is_canary = plan.canary > 0 && n == 1;
    let verdict = s.canary_verdict.as_ref().filter(|_| is_canary);
    if let Some(Verdict::Worse(why)) = verdict {
        return roll_back(s, format!("the canary was judged worse: {why}"), None);
    }
    let after = plan.batch_name(n);
    let soak_end = plan.soak_end(done_at);
    if now < soak_end {
        return Decision::Hold {
            phase: RolloutPhase::Soaking,
            why: format!("soaking {after} until {}", clock(soak_end)),
        };
    }
    let too_few = matches!(verdict, Some(Verdict::NotEnoughData(_)))
        && plan.on_insufficient_data == InsufficientData::Wait;
    let asked = match plan.approval {
        Approval::None => false,
        Approval::AfterCanary => is_canary,
        // Nothing is left to approve after the last batch.
        Approval::EachBatch => s.remaining > 0,
    };
    if !(asked || too_few) {
        return Decision::LetGo { batch: n, by: None };
    }
    let deadline = plan.approval_deadline(done_at);
    if now >= deadline {
        return match plan.on_deadline {
            DeadlineAction::Rollback => roll_back(
                s,
                format!(
                    "nobody gave the go-ahead after {after} within {} s: rolled back, as the plan says",
                    plan.approval_deadline_s
                ),
                None,
            ),
            DeadlineAction::Continue => Decision::LetGo {
                batch: n,
                by: Some(format!(
                    "nobody gave the go-ahead after {after} within {} s: continued, as the plan says",
                    plan.approval_deadline_s
                )),
            },
        };
    }
    Decision::Hold {
        phase: RolloutPhase::AwaitingApproval,
        why: format!(
            "waiting for an operator's go-ahead after {after}{} until {}, then {}",
            if too_few && !asked {
                " (too few jobs to judge the canary)"
            } else {
                ""
            },
            clock(deadline),
            match plan.on_deadline {
                DeadlineAction::Rollback => "roll back",
                DeadlineAction::Continue => "continue",
            }
        ),
    }
}

fn decide_open_batch(
    s: &Snapshot,
    b: &OpenBatch,
    now: OffsetDateTime,
    policy: &Policy,
) -> Decision {
    let health_timeout_s = s.health_timeout_s;
    let late = now > b.deadline;
    if let Some(launch) = &b.launch {
        match launch.state {
            LaunchState::Pending | LaunchState::Running => {
                return if late {
                    Decision::Fail(format!(
                        "Batch {}'s launch did not finish within {health_timeout_s} s.",
                        b.n
                    ))
                } else {
                    Decision::Wait(format!("launching batch {}", b.n))
                };
            }
            LaunchState::Failed => {
                return Decision::Fail(format!("Launching batch {} failed: {}", b.n, launch.error));
            }
            LaunchState::Partial => {
                return Decision::Fail(format!(
                    "The provider launched fewer servers than batch {} asked for: {}",
                    b.n, launch.error
                ));
            }
            LaunchState::Succeeded => {
                if b.unrecorded > 0 {
                    return Decision::RecordLaunched { batch: b.n };
                }
            }
        }
    }
    let checked = !s.plan.health_command.is_empty();
    if checked {
        if let Some((id, why)) = b.replacements.iter().find_map(|r| match &r.health {
            HealthCheck::Failed(why) => Some((&r.server_id, why)),
            _ => None,
        }) {
            let what = if s.plan.canary > 0 && b.n == 1 {
                "the canary"
            } else {
                "a new server"
            };
            return roll_back(
                s,
                format!("the health check failed on {what} {id}: {why}"),
                None,
            );
        }
        let unchecked: Vec<String> = b
            .replacements
            .iter()
            .filter(|r| r.health == HealthCheck::NotRun && agent_healthy(r, now, policy))
            .map(|r| r.server_id.clone())
            .collect();
        if !unchecked.is_empty() {
            return Decision::CheckHealth { servers: unchecked };
        }
    }
    let healthy = b
        .replacements
        .iter()
        .filter(|r| agent_healthy(r, now, policy) && (!checked || r.health == HealthCheck::Passed))
        .count() as i64;
    if healthy < i64::from(b.size) {
        if late {
            return Decision::Fail(format!(
                "{} of batch {}'s {} replacement(s) had no healthy agent{} after {health_timeout_s} s (health timeout).",
                i64::from(b.size) - healthy,
                b.n,
                b.size,
                if checked {
                    " and passed health check"
                } else {
                    ""
                }
            ));
        }
        return Decision::Wait(format!(
            "waiting for batch {}'s {} ({healthy} of {} healthy)",
            b.n,
            if checked {
                "agents and health checks"
            } else {
                "agents"
            },
            b.size
        ));
    }
    // Healthy: as many old servers leave as came in, less those that left early.
    Decision::CloseBatch {
        batch: b.n,
        disable: (i64::from(b.size) - b.disabled_early).max(0),
    }
}

fn decide_next_batch(s: &Snapshot) -> Decision {
    let total = (i64::from(s.replaced) + s.remaining) as i32;
    if s.remaining == 0 {
        return Decision::Succeed { total };
    }
    // The canary is the first batch, alone.
    let size = if s.next_batch == 1 && s.plan.canary > 0 {
        s.plan.canary
    } else {
        s.batch_size
    };
    let k = s.remaining.min(i64::from(size));
    if s.reusable_kept > 0 {
        return Decision::StartBatch {
            n: s.next_batch,
            count: s.reusable_kept.min(k),
            source: Source::Reuse,
            total,
            disable_early: 0,
        };
    }
    let instance_type = s
        .common_instance_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.into());
    Decision::StartBatch {
        n: s.next_batch,
        count: k,
        source: Source::Launch { instance_type },
        total,
        disable_early: early_disable(s.healthy_workers, s.fleet_size, s.min_healthy_percent, k),
    }
}

/// Below 100% minimum healthy, the old servers beyond that share of the fleet may leave as
/// soon as a batch starts: at most the batch's size, never below the share (rounded up).
pub fn early_disable(healthy: i64, fleet_size: i32, min_healthy_percent: i32, batch: i64) -> i64 {
    let need = (i64::from(fleet_size) * i64::from(min_healthy_percent) + 99) / 100;
    (healthy - need).clamp(0, batch.max(0))
}

/// A replacement serving with an agent heard from within the health window.
fn agent_healthy(r: &Replacement, now: OffsetDateTime, policy: &Policy) -> bool {
    let window = time::Duration::try_from(policy.health_window).unwrap_or(time::Duration::MAX);
    r.serving && r.last_heartbeat_at.is_some_and(|at| now - at < window)
}

/// A server an ended rollout touched, as the undo sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Touched {
    pub server_id: String,
    pub role: RolloutRole,
    pub state: RolloutServerState,
    /// Terminated or shutting down at the provider.
    pub gone: bool,
    /// Disabled now.
    pub disabled: bool,
    /// A terminate is queued or running for it.
    pub terminating: bool,
}

/// What putting the fleet back does to each server the rollout touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UndoPlan {
    /// Old servers it disabled: enabled again (they take work at once).
    pub enable: Vec<String>,
    /// Old servers it disabled, all recorded as restored (even those something else
    /// terminates: they are no longer this rollout's to keep).
    pub restored: Vec<String>,
    /// Kept servers of an earlier rollout it enabled: disabled and kept again.
    pub keep_again: Vec<String>,
    /// Servers it launched: drained and terminated.
    pub remove: Vec<String>,
    /// Nothing will be left to undo after this plan (no launch is still unanswered, so no
    /// server of it can appear later).
    pub clean: bool,
}

/// Puts the fleet back after a failure or cancel. Idempotent: servers already restored or
/// removed are left alone, so planning again after a partial undo finishes the rest.
pub fn plan_undo(touched: &[Touched], unsettled_launches: usize) -> UndoPlan {
    let mut plan = UndoPlan {
        clean: unsettled_launches == 0,
        ..UndoPlan::default()
    };
    for t in touched {
        match (t.role, t.state) {
            (RolloutRole::Old, RolloutServerState::Kept) => {
                if !t.gone && t.disabled && !t.terminating {
                    plan.enable.push(t.server_id.clone());
                }
                plan.restored.push(t.server_id.clone());
            }
            (RolloutRole::New, RolloutServerState::Reenabled) => {
                plan.keep_again.push(t.server_id.clone())
            }
            (RolloutRole::New, RolloutServerState::Launched) => {
                plan.remove.push(t.server_id.clone())
            }
            // Already put back, or never this rollout's to put back.
            (
                RolloutRole::Old,
                RolloutServerState::Restored
                | RolloutServerState::Reused
                | RolloutServerState::Retired
                | RolloutServerState::Launched
                | RolloutServerState::Reenabled
                | RolloutServerState::Removed,
            )
            | (
                RolloutRole::New,
                RolloutServerState::Removed
                | RolloutServerState::Kept
                | RolloutServerState::Restored
                | RolloutServerState::Reused
                | RolloutServerState::Retired,
            ) => {}
        }
    }
    plan
}

/// A user's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

/// What a user's action does to a rollout in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlDecision {
    /// Already in effect (pausing a paused rollout): a no-op, not an error.
    AlreadyDone,
    Pause,
    /// Running again; the open batch gets its full health timeout from now.
    Resume,
    /// Ended as cancelled; the current image moves back and the fleet is put back.
    Cancel,
}

/// Pause, resume or cancel, or the sentence saying why the rollout's state forbids it.
pub fn decide_control(
    id: i64,
    state: RolloutState,
    action: Control,
) -> Result<ControlDecision, String> {
    use RolloutState as S;
    match (action, state) {
        (Control::Pause, S::Paused)
        | (Control::Resume, S::Pending | S::Running)
        | (Control::Cancel, S::Cancelled) => Ok(ControlDecision::AlreadyDone),
        (Control::Pause, S::Pending | S::Running) => Ok(ControlDecision::Pause),
        (Control::Resume, S::Paused) => Ok(ControlDecision::Resume),
        (Control::Cancel, S::Pending | S::Running | S::Paused) => Ok(ControlDecision::Cancel),
        (Control::Cancel, S::Succeeded | S::Failed) => Err(format!(
            "Rollout #{id} has already {state}; to undo it, roll back to the image it replaced."
        )),
        (Control::Pause, S::Succeeded | S::Failed | S::Cancelled) => Err(format!(
            "Rollout #{id} is {state}; only a running rollout can be paused."
        )),
        (Control::Resume, S::Succeeded | S::Failed | S::Cancelled) => Err(format!(
            "Rollout #{id} is {state}; only a paused rollout can be resumed."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-04 12:00 UTC);

    fn policy() -> Policy {
        Policy::for_heartbeat(5)
    }

    fn snapshot(state: RolloutState) -> Snapshot {
        Snapshot {
            state,
            cleaned: false,
            batch_size: 5,
            min_healthy_percent: 100,
            health_timeout_s: 300,
            fleet_size: 10,
            replaced: 0,
            unclean_other: None,
            open_batch: None,
            remaining: 10,
            next_batch: 1,
            reusable_kept: 0,
            healthy_workers: 10,
            common_instance_type: Some("c5.large".into()),
            plan: Plan::none(),
            approved_through: 0,
            last_done: None,
            tripped: None,
            canary_verdict: None,
            has_previous: true,
        }
    }

    fn seconds(s: i64) -> time::Duration {
        time::Duration::seconds(s)
    }

    fn healthy(n: usize) -> Vec<Replacement> {
        (0..n)
            .map(|i| Replacement {
                server_id: format!("i-new{i}"),
                serving: true,
                last_heartbeat_at: Some(NOW - seconds(2)),
                health: HealthCheck::NotRun,
            })
            .collect()
    }

    fn batch(size: i32, launch: Option<LaunchState>, replacements: Vec<Replacement>) -> OpenBatch {
        OpenBatch {
            n: 1,
            size,
            deadline: NOW + seconds(60),
            launch: launch.map(|state| BatchLaunch {
                id: 7,
                state,
                error: "no capacity".into(),
            }),
            unrecorded: 0,
            replacements,
            disabled_early: 0,
        }
    }

    fn running_with(b: OpenBatch) -> Snapshot {
        Snapshot {
            open_batch: Some(b),
            ..snapshot(RolloutState::Running)
        }
    }

    #[test]
    fn ended_and_paused_rollouts_stop_or_undo() {
        use RolloutState as S;
        let cases = [
            (S::Paused, false, Decision::Stop),
            (S::Succeeded, false, Decision::Stop),
            (S::Failed, false, Decision::Undo),
            (S::Failed, true, Decision::Stop),
            (S::Cancelled, false, Decision::Undo),
            (S::Cancelled, true, Decision::Stop),
        ];
        for (state, cleaned, want) in cases {
            let s = Snapshot {
                cleaned,
                ..snapshot(state)
            };
            assert_eq!(
                decide(&s, NOW, &policy()),
                want,
                "{state} cleaned={cleaned}"
            );
        }
    }

    #[test]
    fn a_pending_rollout_waits_for_a_superseded_one_to_put_its_servers_back() {
        let s = Snapshot {
            unclean_other: Some(3),
            ..snapshot(RolloutState::Pending)
        };
        assert_eq!(
            decide(&s, NOW, &policy()),
            Decision::Wait("waiting for rollout #3 to put its servers back".into())
        );
        assert_eq!(
            decide(&snapshot(RolloutState::Pending), NOW, &policy()),
            Decision::Start
        );
    }

    /// Batch sizes and early disables at every fleet size from 0 to 20, for batch sizes 1,
    /// 3 and 5 and minimum healthy 0, 50, 75 and 100%.
    #[test]
    fn batch_sizes_and_min_healthy_at_every_fleet_size() {
        for fleet in 0..=20i64 {
            for batch_size in [1, 3, 5] {
                for min_healthy in [0, 50, 75, 100] {
                    let s = Snapshot {
                        fleet_size: fleet as i32,
                        remaining: fleet,
                        healthy_workers: fleet,
                        batch_size,
                        min_healthy_percent: min_healthy,
                        ..snapshot(RolloutState::Running)
                    };
                    let got = decide(&s, NOW, &policy());
                    if fleet == 0 {
                        assert_eq!(got, Decision::Succeed { total: 0 });
                        continue;
                    }
                    let k = fleet.min(i64::from(batch_size));
                    let need = (fleet * i64::from(min_healthy) + 99) / 100;
                    let early = (fleet - need).clamp(0, k);
                    assert_eq!(
                        got,
                        Decision::StartBatch {
                            n: 1,
                            count: k,
                            source: Source::Launch {
                                instance_type: "c5.large".into()
                            },
                            total: fleet as i32,
                            disable_early: early,
                        },
                        "fleet {fleet}, batch {batch_size}, min healthy {min_healthy}%"
                    );
                    // Never below the share: what stays serving covers it.
                    assert!(fleet - early >= need, "fleet {fleet}: {early} early");
                }
            }
        }
    }

    #[test]
    fn early_disable_counts_only_healthy_workers() {
        // 10 servers, 50%: 5 must stay; only 6 are healthy, so 1 may leave early.
        assert_eq!(early_disable(6, 10, 50, 5), 1);
        // Fewer healthy than the share: none leaves early.
        assert_eq!(early_disable(3, 10, 50, 5), 0);
        // 100%: none ever leaves early.
        assert_eq!(early_disable(10, 10, 100, 5), 0);
        // The share rounds up: 3 servers at 50% keep 2.
        assert_eq!(early_disable(3, 3, 50, 3), 1);
    }

    #[test]
    fn later_batches_take_the_rest_and_count_what_was_replaced() {
        let s = Snapshot {
            replaced: 5,
            remaining: 2,
            next_batch: 2,
            ..snapshot(RolloutState::Running)
        };
        assert_eq!(
            decide(&s, NOW, &policy()),
            Decision::StartBatch {
                n: 2,
                count: 2,
                source: Source::Launch {
                    instance_type: "c5.large".into()
                },
                total: 7,
                disable_early: 0,
            }
        );
        let done = Snapshot {
            replaced: 7,
            remaining: 0,
            next_batch: 3,
            ..snapshot(RolloutState::Running)
        };
        assert_eq!(
            decide(&done, NOW, &policy()),
            Decision::Succeed { total: 7 }
        );
    }

    #[test]
    fn kept_servers_are_reused_before_anything_is_launched() {
        for (kept, remaining, batch_size, want) in [(3, 10, 5, 3), (8, 10, 5, 5), (8, 2, 5, 2)] {
            let s = Snapshot {
                reusable_kept: kept,
                remaining,
                batch_size,
                min_healthy_percent: 0,
                ..snapshot(RolloutState::Running)
            };
            assert_eq!(
                decide(&s, NOW, &policy()),
                Decision::StartBatch {
                    n: 1,
                    count: want,
                    source: Source::Reuse,
                    total: remaining as i32,
                    disable_early: 0,
                },
                "{kept} kept, {remaining} remaining"
            );
        }
    }

    #[test]
    fn a_launch_without_a_known_instance_type_uses_the_default() {
        for common in [None, Some(String::new())] {
            let s = Snapshot {
                common_instance_type: common,
                ..snapshot(RolloutState::Running)
            };
            let Decision::StartBatch { source, .. } = decide(&s, NOW, &policy()) else {
                panic!("a batch starts");
            };
            assert_eq!(
                source,
                Source::Launch {
                    instance_type: DEFAULT_INSTANCE_TYPE.into()
                }
            );
        }
    }

    #[test]
    fn a_launching_batch_waits_then_fails_at_its_deadline() {
        for state in [LaunchState::Pending, LaunchState::Running] {
            let b = batch(5, Some(state), vec![]);
            assert_eq!(
                decide(&running_with(b.clone()), NOW, &policy()),
                Decision::Wait("launching batch 1".into())
            );
            let late = NOW + seconds(61);
            assert_eq!(
                decide(&running_with(b), late, &policy()),
                Decision::Fail("Batch 1's launch did not finish within 300 s.".into())
            );
        }
    }

    #[test]
    fn a_failed_or_partial_launch_fails_the_rollout_with_the_providers_words() {
        let failed = decide(
            &running_with(batch(5, Some(LaunchState::Failed), vec![])),
            NOW,
            &policy(),
        );
        assert_eq!(
            failed,
            Decision::Fail("Launching batch 1 failed: no capacity".into())
        );
        let partial = decide(
            &running_with(batch(5, Some(LaunchState::Partial), vec![])),
            NOW,
            &policy(),
        );
        assert!(
            matches!(&partial, Decision::Fail(why) if why.contains("fewer servers than batch 1") && why.contains("no capacity")),
            "{partial:?}"
        );
    }

    #[test]
    fn a_finished_launch_records_its_servers_first() {
        let mut b = batch(5, Some(LaunchState::Succeeded), vec![]);
        b.unrecorded = 5;
        assert_eq!(
            decide(&running_with(b), NOW, &policy()),
            Decision::RecordLaunched { batch: 1 }
        );
    }

    #[test]
    fn a_batch_waits_for_every_agent_then_closes() {
        let cases: [(usize, Decision); 3] = [
            (
                0,
                Decision::Wait("waiting for batch 1's agents (0 of 5 healthy)".into()),
            ),
            (
                4,
                Decision::Wait("waiting for batch 1's agents (4 of 5 healthy)".into()),
            ),
            (
                5,
                Decision::CloseBatch {
                    batch: 1,
                    disable: 5,
                },
            ),
        ];
        for (n, want) in cases {
            let mut replacements = healthy(n);
            replacements.extend((n..5).map(|i| Replacement {
                server_id: format!("i-silent{i}"),
                serving: true,
                last_heartbeat_at: None,
                health: HealthCheck::NotRun,
            }));
            let b = batch(5, Some(LaunchState::Succeeded), replacements);
            assert_eq!(
                decide(&running_with(b), NOW, &policy()),
                want,
                "{n} healthy"
            );
        }
    }

    #[test]
    fn a_batch_not_healthy_by_its_deadline_fails() {
        let b = batch(5, Some(LaunchState::Succeeded), healthy(3));
        let late = NOW + seconds(61);
        // Heartbeats two seconds before the deadline's check are still fresh.
        let mut b_late = b.clone();
        for r in &mut b_late.replacements {
            r.last_heartbeat_at = Some(late - seconds(2));
        }
        assert_eq!(
            decide(&running_with(b_late), late, &policy()),
            Decision::Fail(
                "2 of batch 1's 5 replacement(s) had no healthy agent after 300 s (health timeout)."
                    .into()
            )
        );
        // At the deadline itself it still waits.
        assert!(matches!(
            decide(&running_with(b.clone()), NOW + seconds(60), &policy()),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn health_is_a_recent_heartbeat_on_a_serving_server() {
        let p = policy(); // 15 s window
        let at = |s: i64| Some(NOW - seconds(s));
        let cases = [
            (true, at(0), 1),
            (true, at(14), 1),
            (true, at(15), 0),
            (true, at(60), 0),
            (true, None, 0),
            (false, at(1), 0),
        ];
        for (serving, last, want) in cases {
            let r = Replacement {
                server_id: "i-1".into(),
                serving,
                last_heartbeat_at: last,
                health: HealthCheck::NotRun,
            };
            assert_eq!(
                i64::from(agent_healthy(&r, NOW, &p)),
                want,
                "serving={serving} {last:?}"
            );
        }
        assert_eq!(
            Policy::for_heartbeat(1).health_window,
            Duration::from_secs(15)
        );
        assert_eq!(
            Policy::for_heartbeat(10).health_window,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_reused_batch_has_no_launch_to_wait_for() {
        let b = batch(3, None, healthy(3));
        assert_eq!(
            decide(&running_with(b), NOW, &policy()),
            Decision::CloseBatch {
                batch: 1,
                disable: 3
            }
        );
    }

    #[test]
    fn servers_disabled_early_are_not_disabled_twice() {
        let mut b = batch(5, Some(LaunchState::Succeeded), healthy(5));
        b.disabled_early = 2;
        assert_eq!(
            decide(&running_with(b.clone()), NOW, &policy()),
            Decision::CloseBatch {
                batch: 1,
                disable: 3
            }
        );
        b.disabled_early = 7;
        assert_eq!(
            decide(&running_with(b), NOW, &policy()),
            Decision::CloseBatch {
                batch: 1,
                disable: 0
            }
        );
    }

    #[test]
    fn pause_resume_and_cancel_in_every_state() {
        use Control::*;
        use ControlDecision as D;
        use RolloutState as S;
        let ok = |d| Ok::<_, ()>(d);
        let refused = Err(());
        let cases = [
            (Pause, S::Pending, ok(D::Pause)),
            (Pause, S::Running, ok(D::Pause)),
            (Pause, S::Paused, ok(D::AlreadyDone)),
            (Pause, S::Succeeded, refused),
            (Pause, S::Failed, refused),
            (Pause, S::Cancelled, refused),
            (Resume, S::Pending, ok(D::AlreadyDone)),
            (Resume, S::Running, ok(D::AlreadyDone)),
            (Resume, S::Paused, ok(D::Resume)),
            (Resume, S::Succeeded, refused),
            (Resume, S::Failed, refused),
            (Resume, S::Cancelled, refused),
            (Cancel, S::Pending, ok(D::Cancel)),
            (Cancel, S::Running, ok(D::Cancel)),
            (Cancel, S::Paused, ok(D::Cancel)),
            (Cancel, S::Succeeded, refused),
            (Cancel, S::Failed, refused),
            (Cancel, S::Cancelled, ok(D::AlreadyDone)),
        ];
        for (action, state, want) in cases {
            let got = decide_control(4, state, action);
            assert_eq!(got.clone().map_err(|_| ()), want, "{action:?} on {state}");
            if let Err(why) = got {
                assert!(
                    why.starts_with("Rollout #4 ") && why.contains(state.as_str()),
                    "{why}"
                );
            }
        }
    }

    fn touched(id: &str, role: RolloutRole, state: RolloutServerState) -> Touched {
        Touched {
            server_id: id.into(),
            role,
            state,
            gone: false,
            disabled: true,
            terminating: false,
        }
    }

    #[test]
    fn undo_enables_the_old_rekeeps_the_reused_and_removes_the_launched() {
        use RolloutRole::*;
        use RolloutServerState as T;
        let plan = plan_undo(
            &[
                touched("old-1", Old, T::Kept),
                touched("old-2", Old, T::Kept),
                touched("kept-1", New, T::Reenabled),
                touched("new-1", New, T::Launched),
                touched("new-2", New, T::Launched),
            ],
            0,
        );
        assert_eq!(plan.enable, ["old-1", "old-2"]);
        assert_eq!(plan.restored, ["old-1", "old-2"]);
        assert_eq!(plan.keep_again, ["kept-1"]);
        assert_eq!(plan.remove, ["new-1", "new-2"]);
        assert!(plan.clean);
    }

    #[test]
    fn undo_leaves_old_servers_that_are_gone_or_being_terminated_disabled() {
        use RolloutServerState as T;
        let mut gone = touched("gone", RolloutRole::Old, T::Kept);
        gone.gone = true;
        let mut ending = touched("ending", RolloutRole::Old, T::Kept);
        ending.terminating = true;
        let mut enabled = touched("enabled", RolloutRole::Old, T::Kept);
        enabled.disabled = false;
        let plan = plan_undo(&[gone, ending, enabled], 0);
        assert!(plan.enable.is_empty(), "{plan:?}");
        assert_eq!(plan.restored, ["gone", "ending", "enabled"]);
    }

    #[test]
    fn undo_is_not_clean_while_a_launch_is_unanswered() {
        let plan = plan_undo(&[], 1);
        assert!(!plan.clean);
        assert_eq!(plan, UndoPlan::default());
    }

    #[test]
    fn undo_twice_changes_nothing_more() {
        use RolloutRole::*;
        use RolloutServerState as T;
        let after = [
            touched("old-1", Old, T::Restored),
            touched("kept-1", New, T::Removed),
            touched("new-1", New, T::Removed),
            touched("old-2", Old, T::Reused),
            touched("old-3", Old, T::Retired),
        ];
        assert_eq!(
            plan_undo(&after, 0),
            UndoPlan {
                clean: true,
                ..UndoPlan::default()
            }
        );
    }

    /// A rollback that supersedes a release: the release is cancelled and undone (its
    /// replacements removed, its old servers back), then the rollback's own rollout, pending,
    /// waits until that undo is clean and starts on the fleet as it will be.
    #[test]
    fn a_rollback_supersedes_a_release() {
        assert_eq!(
            decide_control(1, RolloutState::Running, Control::Cancel),
            Ok(ControlDecision::Cancel)
        );
        let release = Snapshot {
            cleaned: false,
            ..snapshot(RolloutState::Cancelled)
        };
        assert_eq!(decide(&release, NOW, &policy()), Decision::Undo);
        let rollback = Snapshot {
            unclean_other: Some(1),
            ..snapshot(RolloutState::Pending)
        };
        assert!(matches!(
            decide(&rollback, NOW, &policy()),
            Decision::Wait(_)
        ));
        let rollback = Snapshot {
            unclean_other: None,
            ..rollback
        };
        assert_eq!(decide(&rollback, NOW, &policy()), Decision::Start);
        // The rollback then finds the release's kept servers on its image and reuses them.
        let running = Snapshot {
            reusable_kept: 5,
            remaining: 5,
            ..snapshot(RolloutState::Running)
        };
        assert!(matches!(
            decide(&running, NOW, &policy()),
            Decision::StartBatch {
                source: Source::Reuse,
                count: 5,
                ..
            }
        ));
    }

    fn plan(canary: i32, soak_s: i32, approval: Approval) -> Plan {
        Plan {
            canary,
            soak_s,
            approval,
            approval_deadline_s: 600,
            ..Plan::none()
        }
    }

    /// Running with batch `n` closed at `done_ago` seconds before now.
    fn after_batch(n: i32, done_ago: i64, plan: Plan) -> Snapshot {
        Snapshot {
            plan,
            next_batch: n + 1,
            last_done: Some((n, NOW - seconds(done_ago))),
            ..snapshot(RolloutState::Running)
        }
    }

    fn hold(d: Decision) -> (RolloutPhase, String) {
        match d {
            Decision::Hold { phase, why } => (phase, why),
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn the_canary_is_the_first_batch_alone_then_batches_take_their_size() {
        let s = Snapshot {
            plan: plan(2, 0, Approval::None),
            ..snapshot(RolloutState::Running)
        };
        assert!(matches!(
            decide(&s, NOW, &policy()),
            Decision::StartBatch { n: 1, count: 2, .. }
        ));
        let s = Snapshot {
            approved_through: 1,
            ..after_batch(1, 5, plan(2, 0, Approval::None))
        };
        assert!(matches!(
            decide(&s, NOW, &policy()),
            Decision::StartBatch { n: 2, count: 5, .. }
        ));
    }

    #[test]
    fn a_health_command_runs_on_each_joined_replacement_and_a_failure_rolls_back() {
        let checked = Plan {
            health_command: "curl -fsS localhost:8080/health".into(),
            ..plan(2, 0, Approval::None)
        };
        let with = |health: [HealthCheck; 2], silent_second: bool| {
            let mut r = healthy(2);
            for (r, h) in r.iter_mut().zip(health) {
                r.health = h;
            }
            if silent_second {
                r[1].last_heartbeat_at = None;
            }
            Snapshot {
                plan: checked.clone(),
                ..running_with(batch(2, Some(LaunchState::Succeeded), r))
            }
        };
        use HealthCheck::{Failed, NotRun, Passed, Running};
        // Only replacements whose agent has joined are checked.
        assert_eq!(
            decide(&with([NotRun, NotRun], true), NOW, &policy()),
            Decision::CheckHealth {
                servers: vec!["i-new0".into()]
            }
        );
        assert_eq!(
            decide(&with([Running, Passed], false), NOW, &policy()),
            Decision::Wait(
                "waiting for batch 1's agents and health checks (1 of 2 healthy)".into()
            )
        );
        assert_eq!(
            decide(&with([Passed, Passed], false), NOW, &policy()),
            Decision::CloseBatch {
                batch: 1,
                disable: 2
            }
        );
        assert_eq!(
            decide(
                &with([Passed, Failed("job #9 exited with 7".into())], false),
                NOW,
                &policy()
            ),
            Decision::RollBack {
                reason: "the health check failed on the canary i-new1: job #9 exited with 7".into(),
                rule_id: None
            }
        );
        // The first release has nothing to go back to: it fails.
        let first = Snapshot {
            has_previous: false,
            ..with([Failed("job #9 exited with 7".into()), Passed], false)
        };
        assert!(
            matches!(decide(&first, NOW, &policy()), Decision::Fail(r) if r.ends_with("no earlier image to roll back to."))
        );
    }

    #[test]
    fn a_guarding_alert_rolls_back_in_any_running_step() {
        let trip = Trip {
            reason: "alert 'p95 latency' fired on i-1 at 14:02:07 UTC".into(),
            rule_id: Some(4),
        };
        let want = Decision::RollBack {
            reason: trip.reason.clone(),
            rule_id: Some(4),
        };
        for s in [
            snapshot(RolloutState::Running),
            running_with(batch(2, Some(LaunchState::Running), vec![])),
            after_batch(1, 5, plan(1, 600, Approval::AfterCanary)),
        ] {
            let s = Snapshot {
                tripped: Some(trip.clone()),
                ..s
            };
            assert_eq!(decide(&s, NOW, &policy()), want);
        }
        // Paused: a human holds it; the guard waits for them.
        let paused = Snapshot {
            tripped: Some(trip),
            ..snapshot(RolloutState::Paused)
        };
        assert_eq!(decide(&paused, NOW, &policy()), Decision::Stop);
    }

    #[test]
    fn soak_time_is_measured_from_the_batch_done_time() {
        let p = plan(1, 60, Approval::None);
        let (phase, why) = hold(decide(&after_batch(1, 10, p.clone()), NOW, &policy()));
        assert_eq!(phase, RolloutPhase::Soaking);
        assert_eq!(why, "soaking the canary until 12:00:50 UTC");
        // The same recorded time after a restart: not restarted.
        assert_eq!(
            decide(&after_batch(1, 60, p.clone()), NOW, &policy()),
            Decision::LetGo { batch: 1, by: None }
        );
        let (_, why) = hold(decide(
            &after_batch(3, 0, plan(0, 30, Approval::None)),
            NOW,
            &policy(),
        ));
        assert_eq!(why, "soaking batch 3 until 12:00:30 UTC");
    }

    #[test]
    fn the_canary_judgment_rolls_back_waits_or_goes_on() {
        let judged = |v: Verdict, on: InsufficientData, done_ago: i64| Snapshot {
            canary_verdict: Some(v),
            plan: Plan {
                on_insufficient_data: on,
                ..plan(1, 60, Approval::None)
            },
            ..after_batch(1, done_ago, Plan::none())
        };
        // Worse rolls back at once, soak time or not.
        assert_eq!(
            decide(
                &judged(
                    Verdict::Worse("10 of 20 failed".into()),
                    InsufficientData::Wait,
                    5
                ),
                NOW,
                &policy()
            ),
            Decision::RollBack {
                reason: "the canary was judged worse: 10 of 20 failed".into(),
                rule_id: None
            }
        );
        let few = || Verdict::NotEnoughData("not enough data".into());
        let (phase, why) = hold(decide(
            &judged(few(), InsufficientData::Wait, 61),
            NOW,
            &policy(),
        ));
        assert_eq!(phase, RolloutPhase::AwaitingApproval);
        assert!(why.contains("(too few jobs to judge the canary)"), "{why}");
        assert_eq!(
            decide(
                &judged(few(), InsufficientData::Continue, 61),
                NOW,
                &policy()
            ),
            Decision::LetGo { batch: 1, by: None }
        );
        assert_eq!(
            decide(
                &judged(Verdict::NoWorse("fine".into()), InsufficientData::Wait, 61),
                NOW,
                &policy()
            ),
            Decision::LetGo { batch: 1, by: None }
        );
    }

    #[test]
    fn a_go_ahead_waits_until_its_deadline_then_does_what_the_plan_says() {
        let waiting = |approval, n, ago, on| {
            let mut s = after_batch(
                n,
                ago,
                Plan {
                    on_deadline: on,
                    ..plan(1, 0, approval)
                },
            );
            s.canary_verdict = Some(Verdict::NoWorse("fine".into()));
            s
        };
        let (phase, why) = hold(decide(
            &waiting(Approval::AfterCanary, 1, 10, DeadlineAction::Rollback),
            NOW,
            &policy(),
        ));
        assert_eq!(phase, RolloutPhase::AwaitingApproval);
        assert_eq!(
            why,
            "waiting for an operator's go-ahead after the canary until 12:09:50 UTC, then roll back"
        );
        assert_eq!(
            decide(
                &waiting(Approval::AfterCanary, 1, 600, DeadlineAction::Rollback),
                NOW,
                &policy()
            ),
            Decision::RollBack {
                reason: "nobody gave the go-ahead after the canary within 600 s: rolled back, as the plan says".into(),
                rule_id: None
            }
        );
        assert!(matches!(
            decide(
                &waiting(Approval::AfterCanary, 1, 600, DeadlineAction::Continue),
                NOW,
                &policy()
            ),
            Decision::LetGo {
                batch: 1,
                by: Some(_)
            }
        ));
        // After the canary only: batch 2 goes on; each batch: it waits too.
        assert_eq!(
            decide(
                &waiting(Approval::AfterCanary, 2, 10, DeadlineAction::Rollback),
                NOW,
                &policy()
            ),
            Decision::LetGo { batch: 2, by: None }
        );
        assert!(matches!(
            decide(
                &waiting(Approval::EachBatch, 2, 10, DeadlineAction::Rollback),
                NOW,
                &policy()
            ),
            Decision::Hold {
                phase: RolloutPhase::AwaitingApproval,
                ..
            }
        ));
        // Nothing is left to approve after the last batch.
        let last = Snapshot {
            remaining: 0,
            ..waiting(Approval::EachBatch, 2, 10, DeadlineAction::Rollback)
        };
        assert_eq!(
            decide(&last, NOW, &policy()),
            Decision::LetGo { batch: 2, by: None }
        );
        // Let go: the next batch.
        let approved = Snapshot {
            approved_through: 2,
            ..waiting(Approval::EachBatch, 2, 10, DeadlineAction::Rollback)
        };
        assert!(matches!(
            decide(&approved, NOW, &policy()),
            Decision::StartBatch { n: 3, .. }
        ));
    }
}

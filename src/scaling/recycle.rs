//! Recycling's policy as a pure function of a snapshot: which servers past their maximum age
//! to replace now, and how each replacement in flight goes on. Surge first — a replacement is
//! launched, and only once its agent has joined is the old server drained — so enabled
//! capacity never drops below what it was. No I/O, no clock: table-tested below.
//!
//! - At most `max_share` of the fleet (at least one server) is being replaced at once.
//! - New replacements start only inside the window (if one is set), and never while a
//!   rollout or a bake runs or an alert that "blocks changes" fires; while held, replacements
//!   already up wait too (the old server keeps working; nothing is drained).
//! - A replacement that does not come up (its launch failed, its server died, no agent
//!   within the boot deadline) fails: the old server stays, and is not tried again for a
//!   while (`RETRY_AFTER_S`).

use super::decide::Worker;
use crate::domain::scaling::ScalingSettings;
use crate::domain::{LaunchState, ServerMode, ServerState};

/// After a failed replacement, a server is not tried again for this long.
pub const RETRY_AFTER_S: i64 = 600;

/// A replacement in flight (`recycles.state = 'replacing'`).
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    pub id: i64,
    /// The server being replaced.
    pub old: String,
    /// Still enabled and alive (nobody else took it out of service).
    pub old_in_service: bool,
    /// The replacement's launch (None if there was no image to launch).
    pub launch: Option<LaunchState>,
    pub launch_error: String,
    /// The replacement server, once the provider named it, and its state.
    pub new: Option<(String, ServerState)>,
    /// The replacement is running, enabled, and its agent has joined.
    pub new_ready: bool,
    /// Unix seconds.
    pub started_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecycleSnapshot {
    pub now: i64,
    pub workers: Vec<Worker>,
    pub in_flight: Vec<InFlight>,
    /// Servers whose last replacement failed, and when (unix seconds).
    pub failed_lately: Vec<(String, i64)>,
    /// Why nothing may change now: a rollout, a bake, a firing alert that blocks changes.
    pub held_by: Option<String>,
    /// Seconds a replacement has to come up (its agent to join).
    pub boot_timeout_s: i64,
    /// There is a current image to launch replacements from.
    pub image_available: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Launch a replacement for this server.
    Replace { server: String, reason: String },
    /// The replacement is up: drain and terminate the old server.
    Swap {
        recycle: i64,
        old: String,
        new: String,
        reason: String,
    },
    /// Nothing left to do (the old server was taken out of service by someone else).
    Finish { recycle: i64, outcome: String },
    /// The replacement did not come up: the old server stays; the replacement, if it exists,
    /// is terminated.
    Fail {
        recycle: i64,
        old: String,
        new: Option<String>,
        reason: String,
    },
}

impl Step {
    /// What the step does, in a sentence.
    pub fn sentence(&self) -> &str {
        match self {
            Step::Replace { reason, .. }
            | Step::Swap { reason, .. }
            | Step::Fail { reason, .. } => reason,
            Step::Finish { outcome, .. } => outcome,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Why recycling waits, if it does (shown on the Scaling page).
    pub waiting: Option<String>,
}

/// "2 h 5 min", "45 min", "30 s".
pub fn duration(s: i64) -> String {
    match s {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 && s % 3600 >= 60 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 3600 => format!("{} h", s / 3600),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn in_service(w: &Worker) -> bool {
    w.mode == ServerMode::Enabled && w.state == ServerState::Running && w.has_agent
}

/// How many servers may be in replacement at once: the share of the fleet, at least one.
pub fn at_once(fleet: usize, share: f64) -> usize {
    ((fleet as f64 * share).floor() as usize).max(1)
}

pub fn plan(s: &RecycleSnapshot, settings: &ScalingSettings) -> Plan {
    let mut plan = Plan::default();
    if settings.paused {
        plan.waiting = Some("autoscaling is paused".into());
        return plan;
    }
    let mut replacing = 0;
    for r in &s.in_flight {
        if !r.old_in_service {
            plan.steps.push(Step::Finish {
                recycle: r.id,
                outcome: format!("{} was taken out of service meanwhile", r.old),
            });
            continue;
        }
        let new_alive = r
            .new
            .as_ref()
            .is_some_and(|(_, st)| matches!(st, ServerState::Pending | ServerState::Running));
        let failure = match r.launch {
            None => Some("there was no image to launch".to_owned()),
            Some(LaunchState::Failed) => Some(format!(
                "its replacement could not be launched ({})",
                if r.launch_error.is_empty() {
                    "the provider refused"
                } else {
                    &r.launch_error
                }
            )),
            Some(l) if !l.is_unsettled() && !new_alive => {
                Some("its replacement stopped before its agent joined".to_owned())
            }
            Some(_) if !r.new_ready && s.now - r.started_at > s.boot_timeout_s => Some(format!(
                "its replacement's agent did not join within {}",
                duration(s.boot_timeout_s)
            )),
            Some(_) => None,
        };
        if let Some(why) = failure {
            plan.steps.push(Step::Fail {
                recycle: r.id,
                old: r.old.clone(),
                new: r
                    .new
                    .as_ref()
                    .filter(|_| new_alive)
                    .map(|(id, _)| id.clone()),
                reason: format!("replacing {} failed: {why}; {} stays", r.old, r.old),
            });
            continue;
        }
        replacing += 1;
        if let (true, Some((new, _))) = (r.new_ready, &r.new) {
            if s.held_by.is_some() {
                continue;
            }
            plan.steps.push(Step::Swap {
                recycle: r.id,
                old: r.old.clone(),
                new: new.clone(),
                reason: format!("{new} has joined: draining {} it replaces", r.old),
            });
        }
    }

    let Some(max_age) = settings.recycle.max_age_s.map(i64::from) else {
        return plan;
    };
    if let Some(why) = &s.held_by {
        plan.waiting = Some(format!("recycling waits: {why}"));
        return plan;
    }
    if !s.image_available {
        plan.waiting = Some("recycling waits: there is no current image to launch".into());
        return plan;
    }
    if let Some(w) = &settings.recycle.window
        && !w.is_open(s.now)
    {
        plan.waiting = Some(format!(
            "recycling waits for its window ({} {}–{} UTC)",
            w.days.join(","),
            w.from,
            w.until
        ));
        return plan;
    }
    let fleet: Vec<&Worker> = s.workers.iter().filter(|w| in_service(w)).collect();
    let limit = at_once(fleet.len(), settings.recycle.max_share);
    let taken: std::collections::HashSet<&str> =
        s.in_flight.iter().map(|r| r.old.as_str()).collect();
    let mut due: Vec<&&Worker> = fleet
        .iter()
        .filter(|w| s.now - w.launched_at >= max_age && !taken.contains(w.id.as_str()))
        .filter(|w| {
            !s.failed_lately
                .iter()
                .any(|(id, at)| id == &w.id && s.now - at < RETRY_AFTER_S)
        })
        .collect();
    due.sort_by_key(|w| (w.launched_at, w.id.clone()));
    let room = limit.saturating_sub(replacing);
    if !due.is_empty() && room == 0 {
        plan.waiting = Some(format!(
            "{} due; {replacing} being replaced (at most {limit} at once)",
            due.len()
        ));
    }
    for w in due.into_iter().take(room) {
        plan.steps.push(Step::Replace {
            server: w.id.clone(),
            reason: format!(
                "{} is {} old (max {}): launching its replacement (at most {limit} at once)",
                w.id,
                duration(s.now - w.launched_at),
                duration(max_age)
            ),
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scaling::{Recycle, Window};

    const H: i64 = 3600;
    const NOW: i64 = 1_780_000_000; // a Thursday

    fn worker(id: &str, age: i64) -> Worker {
        Worker {
            id: id.into(),
            state: ServerState::Running,
            mode: ServerMode::Enabled,
            launched_at: NOW - age,
            running_jobs: 0,
            has_agent: true,
            being_replaced: false,
        }
    }

    fn settings(max_age: Option<u32>, share: f64) -> ScalingSettings {
        ScalingSettings {
            recycle: Recycle {
                max_age_s: max_age,
                max_share: share,
                window: None,
            },
            ..ScalingSettings::default()
        }
    }

    fn snap(workers: Vec<Worker>, in_flight: Vec<InFlight>) -> RecycleSnapshot {
        RecycleSnapshot {
            now: NOW,
            workers,
            in_flight,
            failed_lately: vec![],
            held_by: None,
            boot_timeout_s: 300,
            image_available: true,
        }
    }

    fn flight(id: i64, old: &str) -> InFlight {
        InFlight {
            id,
            old: old.into(),
            old_in_service: true,
            launch: Some(LaunchState::Running),
            launch_error: String::new(),
            new: None,
            new_ready: false,
            started_at: NOW - 30,
        }
    }

    fn replaced(p: &Plan) -> Vec<&str> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Replace { server, .. } => Some(server.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn off_by_default_and_young_servers_stay() {
        let fleet = vec![worker("a", 30 * H), worker("b", 2 * H)];
        assert!(
            plan(&snap(fleet.clone(), vec![]), &settings(None, 0.1))
                .steps
                .is_empty()
        );
        let p = plan(&snap(fleet, vec![]), &settings(Some(3 * 3600), 0.5));
        assert_eq!(replaced(&p), vec!["a"]);
        let Step::Replace { reason, .. } = &p.steps[0] else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "a is 1 d 6 h old (max 3 h): launching its replacement (at most 1 at once)"
        );
    }

    #[test]
    fn oldest_first_at_most_the_share_at_once_counting_those_in_flight() {
        let fleet: Vec<Worker> = (0..20)
            .map(|i| worker(&format!("s{i:02}"), (10 + i) * H))
            .collect();
        // 20 servers × 10% = 2 at once: the two oldest.
        let p = plan(&snap(fleet.clone(), vec![]), &settings(Some(3600), 0.1));
        assert_eq!(replaced(&p), vec!["s19", "s18"]);
        // One already in flight: one more.
        let p = plan(
            &snap(fleet.clone(), vec![flight(1, "s19")]),
            &settings(Some(3600), 0.1),
        );
        assert_eq!(replaced(&p), vec!["s18"]);
        // Two in flight: none, and the page says why.
        let p = plan(
            &snap(fleet.clone(), vec![flight(1, "s19"), flight(2, "s18")]),
            &settings(Some(3600), 0.1),
        );
        assert!(replaced(&p).is_empty());
        assert_eq!(
            p.waiting.as_deref(),
            Some("18 due; 2 being replaced (at most 2 at once)")
        );
        // A tiny share still replaces one at a time.
        let p = plan(
            &snap(fleet[..3].to_vec(), vec![]),
            &settings(Some(3600), 0.01),
        );
        assert_eq!(replaced(&p).len(), 1);
    }

    #[test]
    fn only_servers_in_service_are_recycled() {
        let mut draining = worker("draining", 9 * H);
        draining.mode = ServerMode::Disabled;
        let mut booting = worker("booting", 9 * H);
        booting.has_agent = false;
        let mut pending = worker("pending", 9 * H);
        pending.state = ServerState::Pending;
        let p = plan(
            &snap(
                vec![draining, booting, pending, worker("ok", 9 * H)],
                vec![],
            ),
            &settings(Some(3600), 1.0),
        );
        assert_eq!(replaced(&p), vec!["ok"]);
    }

    #[test]
    fn surge_first_the_old_server_is_drained_only_once_its_replacement_has_joined() {
        let fleet = vec![worker("old", 5 * H), worker("new", 60)];
        let s = settings(Some(3600), 0.1);
        // Launching, booting: nothing to do yet.
        let mut f = flight(1, "old");
        f.new = Some(("new".into(), ServerState::Pending));
        assert!(
            plan(&snap(fleet.clone(), vec![f.clone()]), &s)
                .steps
                .is_empty()
        );
        // Joined: swap.
        f.launch = Some(LaunchState::Succeeded);
        f.new = Some(("new".into(), ServerState::Running));
        f.new_ready = true;
        assert_eq!(
            plan(&snap(fleet.clone(), vec![f.clone()]), &s).steps,
            vec![Step::Swap {
                recycle: 1,
                old: "old".into(),
                new: "new".into(),
                reason: "new has joined: draining old it replaces".into()
            }]
        );
        // Someone else disabled the old server meanwhile: finished, nothing drained twice.
        f.old_in_service = false;
        assert!(matches!(
            plan(&snap(fleet, vec![f]), &s).steps[..],
            [Step::Finish { recycle: 1, .. }]
        ));
    }

    #[test]
    fn a_replacement_that_does_not_come_up_fails_and_the_old_server_stays() {
        let fleet = vec![worker("old", 5 * H)];
        let s = settings(Some(3600), 0.1);
        let fails = |f: InFlight| -> (Option<String>, String) {
            match &plan(&snap(fleet.clone(), vec![f]), &s).steps[..] {
                [Step::Fail { new, reason, .. }] => (new.clone(), reason.clone()),
                other => panic!("expected a failure, got {other:?}"),
            }
        };
        let mut f = flight(1, "old");
        f.launch = Some(LaunchState::Failed);
        f.launch_error = "InsufficientInstanceCapacity".into();
        assert_eq!(
            fails(f).1,
            "replacing old failed: its replacement could not be launched (InsufficientInstanceCapacity); old stays"
        );
        let mut f = flight(1, "old");
        f.launch = Some(LaunchState::Succeeded);
        f.new = Some(("new".into(), ServerState::Terminated));
        assert_eq!(fails(f).0, None);
        let mut f = flight(1, "old");
        f.new = Some(("new".into(), ServerState::Running));
        f.started_at = NOW - 301;
        let (new, reason) = fails(f);
        assert_eq!(
            new.as_deref(),
            Some("new"),
            "the silent replacement is terminated"
        );
        assert!(reason.contains("did not join within 5 min"), "{reason}");
        // …and that server is not tried again at once.
        let mut snapshot = snap(fleet, vec![]);
        snapshot.failed_lately = vec![("old".into(), NOW - 60)];
        assert!(plan(&snapshot, &s).steps.is_empty());
        snapshot.failed_lately = vec![("old".into(), NOW - RETRY_AFTER_S)];
        assert_eq!(replaced(&plan(&snapshot, &s)), vec!["old"]);
    }

    #[test]
    fn held_by_a_rollout_a_bake_or_an_alert_and_outside_the_window() {
        let fleet = vec![worker("old", 5 * H), worker("new", 60)];
        let s = settings(Some(3600), 0.1);
        let mut ready = flight(1, "old");
        ready.new = Some(("new".into(), ServerState::Running));
        ready.new_ready = true;
        let mut held = snap(fleet.clone(), vec![ready]);
        held.held_by = Some("a rollout is in progress".into());
        let p = plan(&held, &s);
        assert!(p.steps.is_empty(), "no new replacement and no drain: {p:?}");
        assert_eq!(
            p.waiting.as_deref(),
            Some("recycling waits: a rollout is in progress")
        );

        let mut windowed = s.clone();
        // NOW is Thursday 2026-05-28 20:26 UTC.
        windowed.recycle.window = Some(Window {
            days: vec!["sat".into(), "sun".into()],
            from: "00:00".into(),
            until: "06:00".into(),
        });
        let p = plan(&snap(fleet.clone(), vec![]), &windowed);
        assert!(p.steps.is_empty());
        assert!(
            p.waiting
                .unwrap()
                .starts_with("recycling waits for its window")
        );
        windowed.recycle.window = Some(Window {
            days: vec!["thu".into()],
            from: "20:00".into(),
            until: "21:00".into(),
        });
        assert_eq!(
            replaced(&plan(&snap(fleet.clone(), vec![]), &windowed)),
            vec!["old"]
        );

        let mut paused = s;
        paused.paused = true;
        assert!(plan(&snap(fleet, vec![]), &paused).steps.is_empty());
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(30), "30 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(86_400 + 7200), "1 d 2 h");
    }
}

//! The alert policy as a pure function: given a rule, the stored state of one of its sources,
//! this evaluation's values and the time, what the source's state becomes, which transition
//! to record and which notice to send. No I/O and no clock: the evaluation pass and the
//! preview both call it, and the tables below test it.
//!
//! `for` is tracked in the state: `cond_since[i]` is since when condition i has breached
//! without a break; a source fires when every condition breaches and each has done so for
//! its `for_s`. While firing, an above/below condition keeps breaching until its value
//! crosses the clear threshold (hysteresis), so a value wobbling around the threshold does
//! not flap.

use crate::domain::alert_rule::{Condition, Rule};
use crate::domain::{AlertOp, AlertState, NoDataPolicy};

/// What is stored per (rule, source) between evaluations. Times are unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceState {
    pub state: AlertState,
    /// When the source entered `state` (a firing episode starts here).
    pub since: i64,
    pub value: Option<f64>,
    pub cond_since: Vec<Option<i64>>,
    /// The firing notice of this episode went out (false while it was silenced).
    pub notified: bool,
    pub last_notified_at: Option<i64>,
    pub acked: bool,
}

impl SourceState {
    pub fn fresh(now: i64, conditions: usize) -> Self {
        SourceState {
            state: AlertState::Ok,
            since: now,
            value: None,
            cond_since: vec![None; conditions],
            notified: false,
            last_notified_at: None,
            acked: false,
        }
    }
}

/// What Kiln knows of the source as a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFact {
    /// Not a server, or a server in service.
    Live,
    /// A server a rollout, the autoscaler or a bake is launching or retiring: its `absent`
    /// conditions are silenced while that change runs.
    Changing,
    /// A terminated server: its alerts resolve as "server terminated" and its state goes.
    Terminated,
}

/// Which notice the evaluation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Firing,
    /// The same firing episode again, after the re-notify interval.
    Renotify,
    Resolved,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: AlertState,
    pub to: AlertState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The state to store; None: delete the stored row (an ok source that sends nothing, a
    /// terminated server).
    pub next: Option<SourceState>,
    pub transition: Option<Transition>,
    pub notice: Option<Notice>,
    /// The episode start the notice belongs to (its incident key), when there is a notice.
    pub episode_since: i64,
}

pub struct Inputs<'a> {
    pub rule: &'a Rule,
    /// The stored state, if any.
    pub prior: Option<&'a SourceState>,
    /// Each condition's value over its window; None: no point in the window.
    pub values: &'a [Option<f64>],
    pub now: i64,
    pub silenced: bool,
    pub fact: SourceFact,
    /// Multiplies every `for_s` (1.0 in production; tests shorten it).
    pub for_scale: f64,
}

/// A condition's verdict on one value: Some(breaching) or None when the no-data policy says
/// to keep the last state.
fn breaches(
    c: &Condition,
    value: Option<f64>,
    firing: bool,
    no_data: NoDataPolicy,
    fact: SourceFact,
) -> Option<bool> {
    match (c.op, value) {
        (AlertOp::Absent, _) if fact == SourceFact::Changing => Some(false),
        (AlertOp::Absent, v) => Some(v.is_none()),
        (_, None) => match no_data {
            NoDataPolicy::Resolve => Some(false),
            NoDataPolicy::Keep => None,
            NoDataPolicy::Alert => Some(true),
        },
        (op, Some(v)) => {
            let t = c.threshold.unwrap_or(0.0);
            // While firing, the clear threshold (if any) decides when it ends.
            let line = if firing {
                c.clear_threshold.unwrap_or(t)
            } else {
                t
            };
            Some(match (op, firing && c.clear_threshold.is_some()) {
                (AlertOp::Above, false) => v > line,
                (AlertOp::Above, true) => v >= line,
                (AlertOp::Below, false) => v < line,
                (AlertOp::Below, true) => v <= line,
                (AlertOp::Absent, _) => unreachable!("matched above"),
            })
        }
    }
}

/// A short phrase for a value, e.g. "91.5".
pub fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// "avg(cpu) 91.5 above 80", "no point of disk.free in 60 s".
fn describe(c: &Condition, value: Option<f64>) -> String {
    match (c.op, value) {
        (AlertOp::Absent, _) | (_, None) => {
            format!("no point of {} in {} s", c.metric, c.window_s)
        }
        (op, Some(v)) => format!(
            "{}({}) {} {op} {}",
            c.aggregate,
            c.metric,
            show(v),
            show(c.threshold.unwrap_or(0.0))
        ),
    }
}

pub fn decide(i: &Inputs<'_>) -> Outcome {
    let n = i.rule.conditions.len();
    let prior = i
        .prior
        .cloned()
        .unwrap_or_else(|| SourceState::fresh(i.now, n));
    let firing = prior.state == AlertState::Firing;
    let value = i.values.iter().copied().flatten().next();

    if i.fact == SourceFact::Terminated {
        let transition = (prior.state != AlertState::Ok).then(|| Transition {
            from: prior.state,
            to: AlertState::Ok,
            reason: "server terminated".into(),
        });
        let notice = (firing && prior.notified && !i.silenced).then_some(Notice::Resolved);
        return Outcome {
            next: None,
            transition,
            notice,
            episode_since: prior.since,
        };
    }

    let verdicts: Vec<Option<bool>> = i
        .rule
        .conditions
        .iter()
        .zip(i.values.iter().copied().chain(std::iter::repeat(None)))
        .map(|(c, v)| breaches(c, v, firing, i.rule.no_data, i.fact))
        .collect();
    if verdicts.iter().any(Option::is_none) {
        // No data, and the rule keeps the last state: nothing changes.
        return Outcome {
            next: Some(SourceState {
                value,
                ..prior.clone()
            }),
            transition: None,
            notice: None,
            episode_since: prior.since,
        };
    }
    let cond_since: Vec<Option<i64>> = verdicts
        .iter()
        .enumerate()
        .map(|(k, b)| {
            b.unwrap_or(false)
                .then(|| prior.cond_since.get(k).copied().flatten().unwrap_or(i.now))
        })
        .collect();
    let all_breach = verdicts.iter().all(|b| *b == Some(true));
    let held = i.rule.conditions.iter().zip(&cond_since).all(|(c, since)| {
        since.is_some_and(|s| (i.now - s) as f64 >= c.for_s as f64 * i.for_scale)
    });
    let target = match (all_breach, firing || held) {
        (false, _) => AlertState::Ok,
        (true, true) => AlertState::Firing,
        (true, false) => AlertState::Pending,
    };
    let why = || {
        i.rule
            .conditions
            .iter()
            .zip(i.values.iter().copied().chain(std::iter::repeat(None)))
            .map(|(c, v)| describe(c, v))
            .collect::<Vec<_>>()
            .join(" and ")
    };

    let mut next = SourceState {
        value,
        cond_since,
        ..prior.clone()
    };
    let mut transition = None;
    let mut notice = None;
    let mut episode_since = prior.since;
    if target != prior.state {
        next.state = target;
        next.since = i.now;
        let reason = match (prior.state, target) {
            (AlertState::Pending, AlertState::Ok) => {
                format!("cleared before its for: {}", why())
            }
            (AlertState::Firing, AlertState::Ok) if value.is_none() => "no data".to_owned(),
            (_, AlertState::Ok) => format!("resolved: {}", why()),
            _ => why(),
        };
        transition = Some(Transition {
            from: prior.state,
            to: target,
            reason,
        });
        match target {
            AlertState::Firing => {
                episode_since = i.now;
                next.acked = false;
                next.notified = !i.silenced;
                next.last_notified_at = (!i.silenced).then_some(i.now);
                if !i.silenced {
                    notice = Some(Notice::Firing);
                }
            }
            AlertState::Ok => {
                if firing && prior.notified && !i.silenced {
                    notice = Some(Notice::Resolved);
                }
                next.notified = false;
                next.acked = false;
                next.last_notified_at = None;
            }
            AlertState::Pending => {}
        }
    } else if firing && !i.silenced {
        if !prior.notified {
            // Silenced when it began; the silence is over and it still fires.
            notice = Some(Notice::Firing);
            next.notified = true;
            next.last_notified_at = Some(i.now);
        } else if !prior.acked
            && i.rule.renotify_s > 0
            && prior
                .last_notified_at
                .is_none_or(|t| i.now - t >= i.rule.renotify_s)
        {
            notice = Some(Notice::Renotify);
            next.last_notified_at = Some(i.now);
        }
    }
    // An ok source with no data and nothing pending has nothing worth keeping.
    let forget = next.state == AlertState::Ok
        && transition.is_none()
        && i.values.iter().all(Option::is_none);
    Outcome {
        next: (!forget).then_some(next),
        transition,
        notice,
        episode_since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AlertAggregate;
    use crate::domain::alert_rule::{ConditionInput, RuleInput};

    fn rule_with(op: AlertOp, threshold: Option<f64>, clear: Option<f64>, for_s: i64) -> Rule {
        RuleInput {
            name: "r".into(),
            per_source: true,
            enabled: true,
            conditions: vec![ConditionInput {
                metric: "cpu".into(),
                op: Some(op),
                threshold,
                clear_threshold: clear,
                for_s: Some(for_s),
                aggregate: Some(AlertAggregate::Avg),
                ..Default::default()
            }],
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    /// Runs a sequence of (time, value) evaluations; returns each step's (state, notice).
    fn run(
        rule: &Rule,
        steps: &[(i64, Option<f64>)],
        silenced_at: &dyn Fn(i64) -> bool,
    ) -> Vec<(AlertState, Option<Notice>)> {
        let mut state: Option<SourceState> = None;
        let mut out = Vec::new();
        for &(now, v) in steps {
            let o = decide(&Inputs {
                rule,
                prior: state.as_ref(),
                values: &[v],
                now,
                silenced: silenced_at(now),
                fact: SourceFact::Live,
                for_scale: 1.0,
            });
            out.push((
                o.next.as_ref().map_or(AlertState::Ok, |s| s.state),
                o.notice,
            ));
            state = o.next;
        }
        out
    }

    use AlertState::{Firing, Ok as Fine, Pending};

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule_with(AlertOp::Above, Some(80.0), None, 60);
        let steps: Vec<(i64, Option<f64>)> = vec![
            (0, Some(50.0)),
            (15, Some(90.0)),
            (30, Some(91.0)),
            (60, Some(92.0)),
            (75, Some(93.0)),
            (90, Some(70.0)),
        ];
        let got = run(&r, &steps, &|_| false);
        assert_eq!(
            got,
            vec![
                (Fine, None),
                (Pending, None),
                (Pending, None),
                (Pending, None),
                (Firing, Some(Notice::Firing)),
                (Fine, Some(Notice::Resolved)),
            ]
        );
    }

    #[test]
    fn a_break_restarts_the_for() {
        let r = rule_with(AlertOp::Above, Some(80.0), None, 60);
        let got = run(
            &r,
            &[
                (0, Some(90.0)),
                (30, Some(70.0)),
                (45, Some(90.0)),
                (90, Some(90.0)),
                (105, Some(90.0)),
            ],
            &|_| false,
        );
        let states: Vec<AlertState> = got.iter().map(|g| g.0).collect();
        assert_eq!(states, vec![Pending, Fine, Pending, Pending, Firing]);
    }

    #[test]
    fn hysteresis_keeps_an_oscillating_value_from_flapping() {
        let r = rule_with(AlertOp::Above, Some(90.0), Some(80.0), 0);
        let wobble: Vec<(i64, Option<f64>)> = (0..20)
            .map(|k| (k * 15, Some(if k % 2 == 0 { 91.0 } else { 89.0 })))
            .collect();
        let got = run(&r, &wobble, &|_| false);
        let notices = got.iter().filter(|g| g.1.is_some()).count();
        assert_eq!(notices, 1, "one firing notice, no resolve: {got:?}");
        // Below the clear threshold it resolves, once.
        let mut steps = wobble.clone();
        steps.push((400, Some(79.0)));
        steps.push((415, Some(85.0)));
        let got = run(&r, &steps, &|_| false);
        assert_eq!(got[20], (Fine, Some(Notice::Resolved)));
        assert_eq!(got[21], (Fine, None));
        // Without a clear threshold the same wobble would flap: the test above means something.
        let r = rule_with(AlertOp::Above, Some(90.0), None, 0);
        let got = run(&r, &wobble, &|_| false);
        assert!(got.iter().filter(|g| g.1.is_some()).count() > 10);
    }

    #[test]
    fn below_and_absent() {
        let r = rule_with(AlertOp::Below, Some(10.0), Some(20.0), 0);
        let got = run(
            &r,
            &[(0, Some(5.0)), (15, Some(15.0)), (30, Some(25.0))],
            &|_| false,
        );
        assert_eq!(
            got,
            vec![
                (Firing, Some(Notice::Firing)),
                (Firing, None),
                (Fine, Some(Notice::Resolved))
            ]
        );
        let r = rule_with(AlertOp::Absent, None, None, 60);
        let got = run(
            &r,
            &[
                (0, Some(1.0)),
                (15, None),
                (60, None),
                (80, None),
                (95, Some(1.0)),
            ],
            &|_| false,
        );
        let states: Vec<AlertState> = got.iter().map(|g| g.0).collect();
        assert_eq!(states, vec![Fine, Pending, Pending, Firing, Fine]);
    }

    #[test]
    fn no_data_policies() {
        let mut r = rule_with(AlertOp::Above, Some(80.0), None, 0);
        let steps = [(0, Some(90.0)), (15, None)];
        assert_eq!(
            run(&r, &steps, &|_| false)[1],
            (Fine, Some(Notice::Resolved))
        );
        r.no_data = NoDataPolicy::Keep;
        assert_eq!(run(&r, &steps, &|_| false)[1], (Firing, None));
        r.no_data = NoDataPolicy::Alert;
        assert_eq!(
            run(&r, &[(0, None)], &|_| false)[0],
            (Firing, Some(Notice::Firing))
        );
    }

    #[test]
    fn a_silence_holds_the_notice_until_it_ends() {
        let r = rule_with(AlertOp::Above, Some(80.0), None, 0);
        let steps: Vec<(i64, Option<f64>)> = (0..6).map(|k| (k * 15, Some(90.0))).collect();
        let got = run(&r, &steps, &|t| t < 45);
        assert_eq!(got[0], (Firing, None));
        assert_eq!(got[2], (Firing, None));
        assert_eq!(got[3], (Firing, Some(Notice::Firing)), "{got:?}");
        assert_eq!(got[4], (Firing, None));
        // Silenced from firing to resolve: nothing at all.
        let got = run(&r, &[(0, Some(90.0)), (15, Some(10.0))], &|_| true);
        assert!(got.iter().all(|g| g.1.is_none()));
    }

    #[test]
    fn renotify_and_ack() {
        let mut r = rule_with(AlertOp::Above, Some(80.0), None, 0);
        r.renotify_s = 60;
        let steps: Vec<(i64, Option<f64>)> = (0..9).map(|k| (k * 15, Some(90.0))).collect();
        let got = run(&r, &steps, &|_| false);
        let at: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, g)| g.1.is_some())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(at, vec![0, 4, 8]);
        // Acknowledged: no more re-notifications, but the resolve still goes out.
        let mut state = decide(&Inputs {
            rule: &r,
            prior: None,
            values: &[Some(90.0)],
            now: 0,
            silenced: false,
            fact: SourceFact::Live,
            for_scale: 1.0,
        })
        .next
        .unwrap();
        state.acked = true;
        let o = decide(&Inputs {
            rule: &r,
            prior: Some(&state),
            values: &[Some(90.0)],
            now: 600,
            silenced: false,
            fact: SourceFact::Live,
            for_scale: 1.0,
        });
        assert_eq!(o.notice, None);
        let o = decide(&Inputs {
            rule: &r,
            prior: Some(&state),
            values: &[Some(10.0)],
            now: 615,
            silenced: false,
            fact: SourceFact::Live,
            for_scale: 1.0,
        });
        assert_eq!(o.notice, Some(Notice::Resolved));
        assert_eq!(o.episode_since, 0, "the resolve carries the episode's key");
    }

    #[test]
    fn a_terminated_server_resolves_as_terminated_and_is_forgotten() {
        let r = rule_with(AlertOp::Absent, None, None, 0);
        let firing = decide(&Inputs {
            rule: &r,
            prior: None,
            values: &[None],
            now: 0,
            silenced: false,
            fact: SourceFact::Live,
            for_scale: 1.0,
        })
        .next
        .unwrap();
        assert_eq!(firing.state, Firing);
        let o = decide(&Inputs {
            rule: &r,
            prior: Some(&firing),
            values: &[None],
            now: 15,
            silenced: false,
            fact: SourceFact::Terminated,
            for_scale: 1.0,
        });
        assert_eq!(o.next, None);
        assert_eq!(o.notice, Some(Notice::Resolved));
        assert_eq!(o.transition.unwrap().reason, "server terminated");
        // A server being replaced does not fire absent.
        let o = decide(&Inputs {
            rule: &r,
            prior: None,
            values: &[None],
            now: 0,
            silenced: false,
            fact: SourceFact::Changing,
            for_scale: 1.0,
        });
        assert_eq!(o.notice, None);
        assert_eq!(o.next, None);
    }

    #[test]
    fn every_condition_must_hold_for_its_own_for() {
        let mut r = rule_with(AlertOp::Above, Some(80.0), None, 0);
        let mut second = r.conditions[0].clone();
        second.metric = "mem".into();
        second.for_s = 60;
        r.conditions.push(second);
        let mut state: Option<SourceState> = None;
        let mut states = Vec::new();
        for (now, a, b) in [
            (0, 90.0, 90.0),
            (30, 90.0, 90.0),
            (45, 10.0, 90.0),
            (60, 90.0, 90.0),
            (75, 90.0, 90.0),
        ] {
            let o = decide(&Inputs {
                rule: &r,
                prior: state.as_ref(),
                values: &[Some(a), Some(b)],
                now,
                silenced: false,
                fact: SourceFact::Live,
                for_scale: 1.0,
            });
            states.push(o.next.as_ref().unwrap().state);
            state = o.next;
        }
        // mem has breached since 0, so once cpu is back (60) both hold and it fires.
        assert_eq!(states, vec![Pending, Pending, Fine, Firing, Firing]);
    }

    #[test]
    fn the_for_scale_shortens_every_for() {
        let r = rule_with(AlertOp::Above, Some(80.0), None, 60);
        let mut state = None;
        let mut last = Fine;
        for now in [0, 1, 2, 3] {
            let o = decide(&Inputs {
                rule: &r,
                prior: state.as_ref(),
                values: &[Some(90.0)],
                now,
                silenced: false,
                fact: SourceFact::Live,
                for_scale: 0.05,
            });
            last = o.next.as_ref().unwrap().state;
            state = o.next;
        }
        assert_eq!(last, Firing);
    }
}

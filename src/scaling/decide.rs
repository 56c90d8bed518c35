//! The autoscaler's policy as a pure function of a snapshot: how many workers the queue
//! needs, within min and max, step limits, the scale-in delay and the cool-down — and which
//! servers to drain (idle ones only, oldest first). No I/O, no clock: table-tested below.
//!
//! Capacity is the workers that are enabled and running or coming up (launching or booting
//! servers count as capacity, never as idle); draining and disabled servers never count.
//! Builders are not workers and are never counted nor touched.

use serde::Serialize;

use crate::domain::scaling::ScalingSettings;
use crate::domain::{ServerMode, ServerState};

/// A worker server as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Worker {
    pub id: String,
    pub state: ServerState,
    pub mode: ServerMode,
    /// Unix seconds.
    pub launched_at: i64,
    pub running_jobs: i64,
    /// Its agent has registered (a server without one is still booting).
    pub has_agent: bool,
    /// Recycling is replacing it: its replacement (launching) is counted instead, and it is
    /// recycling's to drain, not the scaler's.
    #[serde(default)]
    pub being_replaced: bool,
}

/// The scaler's memory between decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Memory {
    pub below_since: Option<i64>,
    pub last_scale_out_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now: i64,
    pub workers: Vec<Worker>,
    /// Servers asked of the provider and not yet named (launches pending or running).
    pub launching: i64,
    /// Queued jobs any worker may take (pinned jobs, such as a builder's, do not count).
    pub queued: i64,
    /// Age of the oldest of them, seconds.
    pub oldest_queued_s: Option<i64>,
    /// Slots busy with unpinned jobs on workers.
    pub busy: i64,
    /// Slots per server as the agents report them (the most common), if any reported.
    pub agent_slots: Option<u32>,
    /// Why the inputs cannot be trusted now, if they cannot (no fresh heartbeat…).
    pub stale: Option<String>,
    /// A rollout is running: no scale-in.
    pub rollout_active: bool,
    /// A firing alert marked "blocks changes": no scale-in.
    pub blocked_by: Option<String>,
    pub memory: Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    None,
    /// Launch this many workers.
    ScaleOut {
        count: u32,
    },
    /// Drain and terminate these idle workers.
    ScaleIn {
        servers: Vec<String>,
    },
    /// No decision: autoscaling is off or paused, or the inputs are stale.
    Skip,
}

impl Action {
    pub fn word(&self) -> &'static str {
        match self {
            Action::None => "none",
            Action::ScaleOut { .. } => "scale_out",
            Action::ScaleIn { .. } => "scale_in",
            Action::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub desired_before: i64,
    pub desired_after: i64,
    pub action: Action,
    /// A sentence: "queue latency 94 s > 30 s: +4 servers (8 queued jobs, 2 slots each)".
    pub reason: String,
    pub memory: Memory,
    /// The figures the decision was made from.
    pub inputs: Inputs,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    pub queued: i64,
    pub busy: i64,
    pub slots: i64,
    pub capacity: i64,
    pub idle: i64,
    pub latency_s: Option<i64>,
    pub utilization: Option<f64>,
    pub launching: i64,
    pub draining: i64,
}

fn is_capacity(w: &Worker) -> bool {
    w.mode == ServerMode::Enabled
        && matches!(w.state, ServerState::Pending | ServerState::Running)
        && !w.being_replaced
}

fn is_idle(w: &Worker) -> bool {
    is_capacity(w) && w.state == ServerState::Running && w.has_agent && w.running_jobs == 0
}

fn plural(n: i64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

pub fn decide(s: &Snapshot, settings: &ScalingSettings) -> Decision {
    let slots = i64::from(
        settings
            .slots_per_server
            .or(s.agent_slots)
            .unwrap_or(1)
            .max(1),
    );
    let capacity = s.workers.iter().filter(|w| is_capacity(w)).count() as i64 + s.launching;
    let mut idle: Vec<&Worker> = s.workers.iter().filter(|w| is_idle(w)).collect();
    idle.sort_by_key(|w| (w.launched_at, w.id.clone()));
    let draining = s
        .workers
        .iter()
        .filter(|w| w.mode == ServerMode::Disabled && w.running_jobs > 0)
        .count() as i64;
    let utilization = (capacity > 0).then(|| s.busy as f64 / (capacity * slots) as f64);
    let inputs = Inputs {
        queued: s.queued,
        busy: s.busy,
        slots,
        capacity,
        idle: idle.len() as i64,
        latency_s: s.oldest_queued_s,
        utilization,
        launching: s.launching,
        draining,
    };
    let decision = |after: i64, action: Action, reason: String, memory: Memory| Decision {
        desired_before: capacity,
        desired_after: after,
        action,
        reason,
        memory,
        inputs: inputs.clone(),
    };
    if !settings.enabled {
        return decision(
            capacity,
            Action::Skip,
            "autoscaling is off".into(),
            s.memory,
        );
    }
    if settings.paused {
        return decision(
            capacity,
            Action::Skip,
            "autoscaling is paused".into(),
            s.memory,
        );
    }
    if let Some(why) = &s.stale {
        return decision(
            capacity,
            Action::Skip,
            format!("no decision: {why}"),
            s.memory,
        );
    }
    let (min, max) = (i64::from(settings.min), i64::from(settings.max));
    // What the work needs: every busy and queued job a slot, at the target utilisation.
    let work = s.busy + s.queued;
    let needed = ((work as f64) / (slots as f64 * settings.target_utilization)).ceil() as i64;
    let step_out = 10.max((capacity as f64 * 0.5).ceil() as i64);
    let out = |target: i64, why: String| {
        let after = target.min(max).min(capacity + step_out);
        let count = (after - capacity).max(0);
        decision(
            after,
            Action::ScaleOut {
                count: count as u32,
            },
            format!(
                "{why}: +{} ({}, {} each)",
                plural(count, "server"),
                plural(s.queued, "queued job"),
                plural(slots, "slot")
            ),
            Memory {
                below_since: None,
                last_scale_out_at: Some(s.now),
            },
        )
    };

    if capacity < min {
        return out(
            min.max(needed),
            format!("{capacity} below the minimum of {min}"),
        );
    }
    let latency_high = s
        .oldest_queued_s
        .is_some_and(|l| l > i64::from(settings.max_queue_latency_s));
    let busy_high = s.queued > 0 && utilization.is_none_or(|u| u > settings.target_utilization);
    if (latency_high || busy_high) && capacity < max {
        let why = if latency_high {
            format!(
                "queue latency {} s > {} s",
                s.oldest_queued_s.unwrap_or(0),
                settings.max_queue_latency_s
            )
        } else {
            format!(
                "utilisation {:.0}% > {:.0}% with jobs waiting",
                utilization.unwrap_or(1.0) * 100.0,
                settings.target_utilization * 100.0
            )
        };
        return out(needed.max(capacity + 1), why);
    }

    if latency_high || busy_high {
        return decision(
            capacity,
            Action::None,
            format!(
                "at the maximum of {max}: utilisation {:.0}%, {} waiting",
                utilization.unwrap_or(1.0) * 100.0,
                plural(s.queued, "queued job")
            ),
            Memory {
                below_since: None,
                ..s.memory
            },
        );
    }

    // Scale in only while utilisation has stayed low for the delay, outside the cool-down,
    // with nothing waiting, no rollout running and no blocking alert.
    let low = s.queued == 0 && utilization.is_none_or(|u| u < settings.scale_in_utilization);
    let over_max = capacity > max;
    if !low && !over_max {
        return decision(
            capacity,
            Action::None,
            format!(
                "steady: utilisation {:.0}%, {}",
                utilization.unwrap_or(0.0) * 100.0,
                plural(s.queued, "queued job")
            ),
            Memory {
                below_since: None,
                ..s.memory
            },
        );
    }
    let below_since = s.memory.below_since.unwrap_or(s.now);
    let memory = Memory {
        below_since: low.then_some(below_since),
        ..s.memory
    };
    let hold = |why: String| decision(capacity, Action::None, why, memory);
    if s.rollout_active {
        return hold("a rollout is running: no scale-in".into());
    }
    if let Some(alert) = &s.blocked_by {
        return hold(format!(
            "alert {alert} is firing and blocks changes: no scale-in"
        ));
    }
    if !over_max {
        let waited = s.now - below_since;
        if waited < i64::from(settings.scale_in_delay_s) {
            return hold(format!(
                "utilisation {:.0}% < {:.0}% for {waited} s of {} s",
                utilization.unwrap_or(0.0) * 100.0,
                settings.scale_in_utilization * 100.0,
                settings.scale_in_delay_s
            ));
        }
        if let Some(out_at) = s.memory.last_scale_out_at
            && s.now - out_at < i64::from(settings.cooldown_s)
        {
            return hold(format!(
                "cooling down: scaled out {} s ago (cool-down {} s)",
                s.now - out_at,
                settings.cooldown_s
            ));
        }
    }
    let floor = min.max(needed);
    let step_in = 1.max((capacity as f64 * 0.1).floor() as i64);
    let want = if over_max {
        capacity - max
    } else {
        (capacity - floor).min(step_in)
    };
    let chosen: Vec<String> = idle
        .iter()
        .take(want.max(0) as usize)
        .map(|w| w.id.clone())
        .collect();
    if chosen.is_empty() {
        return hold(if want <= 0 {
            format!("at the floor of {floor} servers")
        } else {
            "no idle server to drain".into()
        });
    }
    let n = chosen.len() as i64;
    let why = if over_max {
        format!("{capacity} above the maximum of {max}")
    } else {
        format!(
            "utilisation {:.0}% < {:.0}% for {} s",
            utilization.unwrap_or(0.0) * 100.0,
            settings.scale_in_utilization * 100.0,
            s.now - below_since
        )
    };
    decision(
        capacity - n,
        Action::ScaleIn { servers: chosen },
        format!("{why}: -{} (idle, oldest first)", plural(n, "server")),
        memory,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScalingSettings {
        ScalingSettings {
            enabled: true,
            min: 1,
            max: 8,
            slots_per_server: Some(2),
            scale_in_delay_s: 60,
            cooldown_s: 120,
            ..ScalingSettings::default()
        }
    }

    fn worker(n: usize, running_jobs: i64) -> Worker {
        Worker {
            id: format!("i-{n:02}"),
            state: ServerState::Running,
            mode: ServerMode::Enabled,
            launched_at: n as i64,
            running_jobs,
            has_agent: true,
            being_replaced: false,
        }
    }

    fn snap(workers: Vec<Worker>, queued: i64, latency: Option<i64>) -> Snapshot {
        let busy = workers.iter().map(|w| w.running_jobs).sum();
        Snapshot {
            now: 10_000,
            workers,
            launching: 0,
            queued,
            oldest_queued_s: latency,
            busy,
            agent_slots: Some(2),
            stale: None,
            rollout_active: false,
            blocked_by: None,
            memory: Memory::default(),
        }
    }

    #[test]
    fn a_burst_scales_out_to_what_the_backlog_needs_within_max_and_the_step() {
        // 200 queued, 1 server of 2 slots: needs 134, capped by max 8.
        let d = decide(&snap(vec![worker(1, 2)], 200, Some(40)), &settings());
        assert_eq!(d.action, Action::ScaleOut { count: 7 });
        assert_eq!(d.desired_after, 8);
        assert!(
            d.reason.starts_with(
                "queue latency 40 s > 30 s: +7 servers (200 queued jobs, 2 slots each)"
            ),
            "{}",
            d.reason
        );
        assert_eq!(d.memory.last_scale_out_at, Some(10_000));
        // With a high max, one decision adds at most max(10, 50%).
        let mut big = settings();
        big.max = 500;
        let d = decide(
            &snap((0..40).map(|n| worker(n, 2)).collect(), 1000, Some(90)),
            &big,
        );
        assert_eq!(d.action, Action::ScaleOut { count: 20 }, "50% of 40");
        let d = decide(&snap(vec![worker(1, 2)], 1000, Some(90)), &big);
        assert_eq!(
            d.action,
            Action::ScaleOut { count: 10 },
            "at least +10 allowed"
        );
    }

    #[test]
    fn launching_and_booting_servers_count_as_capacity_not_as_idle() {
        let mut s = snap(vec![worker(1, 2)], 4, Some(5));
        s.launching = 3;
        // Capacity 4 (8 slots), busy 2 + queued 4 = 6 -> 6/8 = 75%: not above target.
        let d = decide(&s, &settings());
        assert_eq!(d.action, Action::None, "{}", d.reason);
        let mut booting = worker(2, 0);
        booting.has_agent = false;
        booting.state = ServerState::Pending;
        let mut s = snap(vec![worker(1, 0), booting], 0, None);
        s.memory.below_since = Some(0);
        let d = decide(&s, &settings());
        // Only the running idle one could go, and min is 1: both stay? floor is max(min, 0) = 1
        // of capacity 2: one to drain, and it is the idle running one, never the booting one.
        assert_eq!(
            d.action,
            Action::ScaleIn {
                servers: vec!["i-01".into()]
            }
        );
    }

    #[test]
    fn a_server_being_recycled_is_counted_through_its_replacement_and_never_drained() {
        // i-01 is being replaced (its replacement is launching): capacity stays 2, not 3,
        // and the scaler drains neither i-01 (recycling's to drain) nor anything else.
        let mut old = worker(1, 0);
        old.being_replaced = true;
        let mut s = snap(vec![old, worker(2, 0)], 0, None);
        s.launching = 1;
        s.memory.below_since = Some(0);
        let mut two = settings();
        two.min = 2;
        let d = decide(&s, &two);
        assert_eq!(d.desired_before, 2);
        assert_eq!(d.action, Action::None, "{}", d.reason);
        let d = decide(&s, &settings());
        assert_eq!(
            d.action,
            Action::ScaleIn {
                servers: vec!["i-02".into()]
            }
        );
    }

    #[test]
    fn scale_in_waits_for_the_delay_not_restarted_by_each_step_and_takes_idle_oldest_first() {
        let workers: Vec<Worker> = (0..8)
            .map(|n| worker(n, if n == 0 { 1 } else { 0 }))
            .collect();
        let mut s = snap(workers, 0, None);
        // First low reading: the delay starts.
        let d = decide(&s, &settings());
        assert_eq!(d.action, Action::None);
        assert_eq!(d.memory.below_since, Some(10_000));
        s.memory = d.memory;
        s.now += 30;
        assert_eq!(decide(&s, &settings()).action, Action::None);
        s.now += 31;
        let d = decide(&s, &settings());
        // 8 servers, 1 busy slot: needs 1; step in is max(1, 10%) = 1; the busy i-00 is oldest
        // but busy, so i-01 goes.
        assert_eq!(
            d.action,
            Action::ScaleIn {
                servers: vec!["i-01".into()]
            }
        );
        assert!(
            d.reason.contains("-1 server (idle, oldest first)"),
            "{}",
            d.reason
        );
        // The next decision does not wait the delay again.
        s.memory = d.memory;
        s.workers.retain(|w| w.id != "i-01");
        s.now += 15;
        assert_eq!(
            decide(&s, &settings()).action,
            Action::ScaleIn {
                servers: vec!["i-02".into()]
            }
        );
    }

    #[test]
    fn a_busy_server_is_never_chosen_and_draining_ones_are_not_capacity() {
        let mut workers: Vec<Worker> = (0..4).map(|n| worker(n, 1)).collect();
        let mut draining = worker(9, 2);
        draining.mode = ServerMode::Disabled;
        workers.push(draining);
        let mut s = snap(workers, 0, None);
        s.busy = 4;
        s.memory.below_since = Some(0);
        // 4 busy of 8 slots = 50%: not low; and were it low, nobody is idle.
        let d = decide(&s, &settings());
        assert_eq!(d.inputs.capacity, 4, "the draining server is not capacity");
        assert_eq!(d.action, Action::None);
        let mut st = settings();
        st.scale_in_utilization = 0.6;
        let d = decide(&s, &st);
        assert_eq!(d.action, Action::None);
        assert_eq!(d.reason, "no idle server to drain");
    }

    #[test]
    fn no_scale_in_during_a_rollout_a_blocking_alert_or_the_cool_down() {
        let mut s = snap((0..4).map(|n| worker(n, 0)).collect(), 0, None);
        s.memory.below_since = Some(0);
        s.rollout_active = true;
        assert_eq!(decide(&s, &settings()).action, Action::None);
        s.rollout_active = false;
        s.blocked_by = Some("disk.full".into());
        let d = decide(&s, &settings());
        assert_eq!(d.action, Action::None);
        assert!(d.reason.contains("disk.full"));
        s.blocked_by = None;
        s.memory.last_scale_out_at = Some(s.now - 60);
        assert!(decide(&s, &settings()).reason.starts_with("cooling down"));
        s.memory.last_scale_out_at = Some(s.now - 121);
        assert!(matches!(
            decide(&s, &settings()).action,
            Action::ScaleIn { .. }
        ));
    }

    #[test]
    fn min_max_off_paused_and_stale() {
        let d = decide(&snap(vec![], 0, None), &settings());
        assert_eq!(d.action, Action::ScaleOut { count: 1 });
        assert!(d.reason.starts_with("0 below the minimum of 1"));
        let mut s = snap((0..10).map(|n| worker(n, 0)).collect(), 0, None);
        s.memory.last_scale_out_at = Some(s.now);
        let d = decide(&s, &settings());
        assert_eq!(
            d.action,
            Action::ScaleIn {
                servers: vec!["i-00".into(), "i-01".into()]
            },
            "above max: drained at once, cool-down or not"
        );
        let mut off = settings();
        off.enabled = false;
        assert_eq!(decide(&s, &off).action, Action::Skip);
        let mut paused = settings();
        paused.paused = true;
        assert_eq!(decide(&s, &paused).reason, "autoscaling is paused");
        s.stale = Some("no agent has sent a heartbeat for 30 s".into());
        assert!(
            decide(&s, &settings())
                .reason
                .starts_with("no decision: no agent")
        );
    }

    #[test]
    fn an_oscillating_load_does_not_make_the_fleet_oscillate() {
        // Load swings between 3 and 5 busy slots on 4 servers (8 slots): 37%–62%, between the
        // bounds: no decision ever changes the fleet.
        let mut memory = Memory::default();
        let mut changes = 0;
        for k in 0..200 {
            let busy_per = if k % 2 == 0 {
                [1, 1, 1, 0]
            } else {
                [2, 1, 1, 1]
            };
            let workers = (0..4).map(|n| worker(n, busy_per[n])).collect();
            let mut s = snap(workers, 0, None);
            s.now = 10_000 + k as i64 * 15;
            s.memory = memory;
            let d = decide(&s, &settings());
            if d.action != Action::None {
                changes += 1;
            }
            memory = d.memory;
        }
        assert_eq!(changes, 0);
    }
}

//! Canary judgment from Kiln's own records: the jobs that ran on the new image against those
//! on the old one over the same period (pinned jobs — health checks, bake steps — left out).
//! The new image is judged worse when its failure rate is higher beyond chance (a one-sided
//! Fisher exact test at p < 0.01, with at least `MIN_JOBS` jobs on each side) or its p95
//! duration exceeds the old one's by more than a margin. A pure function: table-tested below.

use serde::Serialize;

/// Jobs needed on each side before a judgment.
pub const MIN_JOBS: i64 = 20;
/// The significance level of the failure-rate test.
pub const ALPHA: f64 = 0.01;
/// How much longer the new image's p95 job duration may be (a fraction), by default.
pub const DEFAULT_P95_MARGIN: f64 = 0.5;

/// The finished jobs on one image over the period.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Sample {
    pub jobs: i64,
    pub failed: i64,
    /// Duration percentiles, seconds (None without jobs).
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
}

impl Sample {
    pub fn failure_rate(&self) -> Option<f64> {
        (self.jobs > 0).then(|| self.failed as f64 / self.jobs as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// Fewer than `MIN_JOBS` jobs on a side.
    NotEnoughData(String),
    Worse(String),
    NoWorse(String),
}

impl Verdict {
    pub fn sentence(&self) -> &str {
        match self {
            Verdict::NotEnoughData(s) | Verdict::Worse(s) | Verdict::NoWorse(s) => s,
        }
    }
}

/// ln(n!) for 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let mut acc = 0.0;
    out.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        out.push(acc);
    }
    out
}

/// One-sided Fisher exact test: the probability, if failures fell on both images alike, of
/// the new image having `new_failed` or more of the `new_failed + old_failed` failures among
/// its `new_jobs` of all `new_jobs + old_jobs` jobs (the hypergeometric upper tail).
pub fn fisher_greater(new_failed: i64, new_jobs: i64, old_failed: i64, old_jobs: i64) -> f64 {
    let (a, n) = (new_failed as usize, new_jobs as usize);
    let total = n + old_jobs as usize;
    let failed = a + old_failed as usize;
    let lf = ln_factorials(total);
    let ln_choose = |n: usize, k: usize| lf[n] - lf[k] - lf[n - k];
    let denominator = ln_choose(total, n);
    let top = n.min(failed);
    let p: f64 = (a..=top)
        .filter(|x| n - x <= total - failed)
        .map(|x| (ln_choose(failed, x) + ln_choose(total - failed, n - x) - denominator).exp())
        .sum();
    p.min(1.0)
}

fn percent(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// Judges the new image's jobs against the old image's.
pub fn judge(old: &Sample, new: &Sample, p95_margin: f64) -> Verdict {
    if old.jobs < MIN_JOBS || new.jobs < MIN_JOBS {
        return Verdict::NotEnoughData(format!(
            "not enough data: {} jobs on the new image and {} on the old (at least {MIN_JOBS} each)",
            new.jobs, old.jobs
        ));
    }
    let (old_rate, new_rate) = (
        old.failure_rate().unwrap_or(0.0),
        new.failure_rate().unwrap_or(0.0),
    );
    if new_rate > old_rate {
        let p = fisher_greater(new.failed, new.jobs, old.failed, old.jobs);
        if p < ALPHA {
            return Verdict::Worse(format!(
                "worse: {} of its jobs failed against {} on the old image (Fisher exact p = {p:.4} < {ALPHA})",
                percent(new_rate),
                percent(old_rate)
            ));
        }
    }
    if let (Some(old_p95), Some(new_p95)) = (old.p95_s, new.p95_s)
        && new_p95 > old_p95 * (1.0 + p95_margin)
    {
        return Verdict::Worse(format!(
            "worse: its p95 job duration is {new_p95:.1} s against {old_p95:.1} s on the old image (more than {:.0}% longer)",
            p95_margin * 100.0
        ));
    }
    Verdict::NoWorse(format!(
        "no worse: {} failed against {}, p95 {} against {}",
        percent(new_rate),
        percent(old_rate),
        new.p95_s.map(|s| format!("{s:.1} s")).unwrap_or("—".into()),
        old.p95_s.map(|s| format!("{s:.1} s")).unwrap_or("—".into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(jobs: i64, failed: i64, p95: f64) -> Sample {
        Sample {
            jobs,
            failed,
            p50_s: Some(p95 / 2.0),
            p95_s: Some(p95),
        }
    }

    #[test]
    fn fisher_matches_known_values() {
        // Every failure on the new side, 3 of 3 against 0 of 3: p = 1 / C(6,3) = 0.05.
        assert!((fisher_greater(3, 3, 0, 3) - 0.05).abs() < 1e-12);
        // Lady tasting tea: 3 of 4 against 1 of 4, upper tail = (16 + 1) / 70.
        assert!((fisher_greater(3, 4, 1, 4) - 17.0 / 70.0).abs() < 1e-12);
        // No failures at all: nothing is surprising.
        assert!((fisher_greater(0, 50, 0, 50) - 1.0).abs() < 1e-12);
        // Large tables stay finite: 30/1000 against 10/1000.
        let p = fisher_greater(30, 1000, 10, 1000);
        assert!(p > 0.0 && p < 0.01, "{p}");
    }

    #[test]
    fn too_few_jobs_is_not_enough_data() {
        let v = judge(&sample(100, 0, 10.0), &sample(19, 19, 100.0), 0.5);
        assert_eq!(
            v,
            Verdict::NotEnoughData(
                "not enough data: 19 jobs on the new image and 100 on the old (at least 20 each)"
                    .into()
            )
        );
    }

    #[test]
    fn a_clearly_higher_failure_rate_is_worse_a_chance_one_is_not() {
        let old = sample(200, 4, 10.0);
        let v = judge(&old, &sample(40, 10, 10.0), 0.5);
        assert!(matches!(v, Verdict::Worse(_)), "{v:?}");
        assert!(
            v.sentence()
                .starts_with("worse: 25.0% of its jobs failed against 2.0%"),
            "{v:?}"
        );
        // 2 of 40 against 4 of 200: a little higher, well within chance.
        let v = judge(&old, &sample(40, 2, 10.0), 0.5);
        assert!(matches!(v, Verdict::NoWorse(_)), "{v:?}");
        // Fewer failures is never worse.
        assert!(matches!(
            judge(&old, &sample(40, 0, 10.0), 0.5),
            Verdict::NoWorse(_)
        ));
    }

    #[test]
    fn a_slower_p95_beyond_the_margin_is_worse() {
        let old = sample(100, 0, 10.0);
        assert!(matches!(
            judge(&old, &sample(50, 0, 15.0), 0.5),
            Verdict::NoWorse(_)
        ));
        let v = judge(&old, &sample(50, 0, 15.1), 0.5);
        assert_eq!(
            v.sentence(),
            "worse: its p95 job duration is 15.1 s against 10.0 s on the old image (more than 50% longer)"
        );
        assert!(matches!(
            judge(&old, &sample(50, 0, 15.1), 0.6),
            Verdict::NoWorse(_)
        ));
    }
}

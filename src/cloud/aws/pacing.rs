//! Client-side token buckets for EC2's request rate limits, so that Kiln paces its own calls
//! instead of meeting RequestLimitExceeded. EC2 throttles per account and per action class
//! with buckets that refill at a steady rate (AWS's documented defaults: RunInstances a
//! bucket of 5 refilled 2 a second, TerminateInstances alike, describe calls 100 and 20,
//! other mutating calls 200 and 5). One [`Pacing`] lives in the provider, which the whole
//! process shares — rollouts, autoscaling, bakes, the reconciler all wait on the same
//! buckets. A call waits for a token before it is sent (`RunInstances` is sent once per
//! try: `launch` does its own retrying; the SDK's retries of other calls are not paced, and
//! with the buckets sized below EC2's they are for errors, not throttling).

use std::time::Duration;

use tokio::sync::Mutex;
// tokio's clock: the real one, or the paused one of a test.
use tokio::time::Instant;

/// A bucket's size and refill rate (tokens a second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSize {
    pub capacity: f64,
    pub per_second: f64,
}

/// The buckets' sizes by action class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacingSettings {
    pub run: BucketSize,
    pub terminate: BucketSize,
    pub describe: BucketSize,
    pub mutate: BucketSize,
}

impl Default for PacingSettings {
    fn default() -> Self {
        let size = |capacity, per_second| BucketSize {
            capacity,
            per_second,
        };
        PacingSettings {
            run: size(5.0, 2.0),
            terminate: size(5.0, 2.0),
            describe: size(100.0, 20.0),
            mutate: size(200.0, 5.0),
        }
    }
}

impl PacingSettings {
    /// `run=5/2,terminate=5/2,describe=100/20,mutate=200/5`: any of the classes, the others
    /// keeping their defaults.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = PacingSettings::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (class, size) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not CLASS=SIZE/RATE"))?;
            let (capacity, per_second) = size
                .split_once('/')
                .ok_or_else(|| format!("{size:?} is not SIZE/RATE"))?;
            let number = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .ok_or_else(|| format!("{v:?} is not a positive number"))
            };
            let size = BucketSize {
                capacity: number(capacity)?.max(1.0),
                per_second: number(per_second)?,
            };
            match class.trim() {
                "run" => out.run = size,
                "terminate" => out.terminate = size,
                "describe" => out.describe = size,
                "mutate" => out.mutate = size,
                other => {
                    return Err(format!(
                        "{other:?} is not a class; use run, terminate, describe or mutate"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// An EC2 action's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Run,
    Terminate,
    Describe,
    Mutate,
}

struct Bucket {
    size: BucketSize,
    /// Tokens left and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(size: BucketSize) -> Self {
        Bucket {
            size,
            state: Mutex::new((size.capacity, Instant::now())),
        }
    }

    /// Takes a token, waiting until one has refilled.
    async fn take(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                let (tokens, at) = *state;
                match refill_and_take(tokens, now.duration_since(at), self.size) {
                    Ok(left) => {
                        *state = (left, now);
                        return;
                    }
                    Err((refilled, wait)) => {
                        *state = (refilled, now);
                        wait
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The bucket's arithmetic: `tokens` counted `elapsed` ago refill at the bucket's rate up to
/// its size; a whole token is taken (Ok: what is left), or there is none yet (Err: the
/// tokens now, and how long until one is whole).
fn refill_and_take(
    tokens: f64,
    elapsed: Duration,
    size: BucketSize,
) -> Result<f64, (f64, Duration)> {
    let tokens = (tokens + elapsed.as_secs_f64() * size.per_second).min(size.capacity);
    if tokens >= 1.0 {
        Ok(tokens - 1.0)
    } else {
        Err((
            tokens,
            Duration::from_secs_f64((1.0 - tokens) / size.per_second),
        ))
    }
}

/// The process's buckets.
pub struct Pacing {
    run: Bucket,
    terminate: Bucket,
    describe: Bucket,
    mutate: Bucket,
}

impl Pacing {
    pub fn new(s: PacingSettings) -> Self {
        Pacing {
            run: Bucket::new(s.run),
            terminate: Bucket::new(s.terminate),
            describe: Bucket::new(s.describe),
            mutate: Bucket::new(s.mutate),
        }
    }

    /// Waits for a token of `class`'s bucket.
    pub async fn take(&self, class: Class) {
        match class {
            Class::Run => self.run.take().await,
            Class::Terminate => self.terminate.take().await,
            Class::Describe => self.describe.take().await,
            Class::Mutate => self.mutate.take().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_by_class_and_the_rest_keep_aws_defaults() {
        let s = PacingSettings::parse("run=2/1, describe=10/5").unwrap();
        assert_eq!(
            s.run,
            BucketSize {
                capacity: 2.0,
                per_second: 1.0
            }
        );
        assert_eq!(s.describe.per_second, 5.0);
        assert_eq!(s.terminate, PacingSettings::default().terminate);
        assert_eq!(
            PacingSettings::parse("").unwrap(),
            PacingSettings::default()
        );
        for bad in ["run=2", "run=0/1", "launch=2/1", "run=x/1"] {
            assert!(PacingSettings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_lets_its_size_through_then_its_rate() {
        let size = BucketSize {
            capacity: 2.0,
            per_second: 1.0,
        };
        let ms = Duration::from_millis;
        // Full: two at once, then the third waits a second.
        let left = refill_and_take(2.0, ms(0), size).unwrap();
        let left = refill_and_take(left, ms(0), size).unwrap();
        assert_eq!(left, 0.0);
        let (now, wait) = refill_and_take(left, ms(0), size).unwrap_err();
        assert_eq!((now, wait), (0.0, ms(1000)));
        // Half a second later: half a token, half a second to go.
        let (now, wait) = refill_and_take(left, ms(500), size).unwrap_err();
        assert_eq!((now, wait), (0.5, ms(500)));
        assert_eq!(refill_and_take(now, ms(500), size).unwrap(), 0.0);
        // Idle for long: never more than the bucket's size.
        assert_eq!(refill_and_take(0.0, ms(60_000), size).unwrap(), 1.0);
    }
}

//! The bake's policy as pure functions, one per step that waits for something: what the step
//! sees goes in (with the time and the [`Policy`]), a [`Decision`] comes out. No I/O, no
//! clock, no SQL — `advance` reads, calls the provider, and applies the decision — so every
//! step's success, failure and timeout is tested below without PostgreSQL, agents or a cloud.

use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::{BakeStep, ImageState, JobState, LaunchState, ServerState};

/// What the console's settings say about waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An agent is healthy when it was heard from within this window.
    pub health_window: Duration,
    /// How long a bake may wait for its builder's agent (from the bake's start).
    pub health_timeout: Duration,
    /// How long the provider may take to make the image available (from the bake's start).
    pub image_timeout: Duration,
}

impl Policy {
    pub fn new(heartbeat_s: u64, health_timeout_s: u64) -> Self {
        Policy {
            health_window: crate::domain::agent_health_window(heartbeat_s),
            health_timeout: Duration::from_secs(health_timeout_s),
            image_timeout: Duration::from_secs(3600),
        }
    }
}

/// What one look at a step decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Look again soon; the sentence says what the bake waits for.
    Wait(String),
    /// End the bake as failed with this reason (the clean-up follows).
    Fail(String),
    /// The builder's agent is up: the launch step is done, the setup starts.
    BuilderUp,
    /// The step's job succeeded (the sentence: how): on to `next`.
    JobSucceeded { detail: String, next: BakeStep },
    /// The provider says the image is available: the bake succeeded.
    ImageAvailable,
}

/// The builder as the launch step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    pub id: String,
    pub state: ServerState,
    /// When its agent was last heard from (heartbeat, else registration); None: never.
    pub last_heard_at: Option<OffsetDateTime>,
}

/// The launch step: wait for the builder's launch, then for its agent.
pub fn decide_launch(
    launch: LaunchState,
    launch_error: &str,
    builder: Option<&Builder>,
    started_at: OffsetDateTime,
    now: OffsetDateTime,
    policy: &Policy,
) -> Decision {
    let Some(b) = builder else {
        return if launch.is_unsettled() {
            Decision::Wait("waiting for the builder's launch".into())
        } else {
            Decision::Fail(format!(
                "The builder could not be launched: {}",
                if launch_error.is_empty() {
                    "the provider gave no server"
                } else {
                    launch_error
                }
            ))
        };
    };
    if b.state == ServerState::Terminated {
        return Decision::Fail(format!("The builder {} was terminated.", b.id));
    }
    if heard_within(b.last_heard_at, now, policy.health_window) {
        return Decision::BuilderUp;
    }
    if now - started_at > policy.health_timeout {
        return Decision::Fail(format!(
            "The builder {}'s agent did not report within {} s.",
            b.id,
            policy.health_timeout.as_secs()
        ));
    }
    Decision::Wait("waiting for the builder's agent".into())
}

/// A step's job (setup or tests) as the step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepJob {
    pub id: i64,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub reason: String,
    /// How long it ran, when it finished.
    pub took: Option<Duration>,
}

/// The setup and test steps: wait for the step's job, then move on or fail with its words.
pub fn decide_job(step: BakeStep, job: &StepJob, builder_gone: Option<&str>) -> Decision {
    let what = match step {
        BakeStep::Setup => "setup",
        _ => "integration tests",
    };
    match job.state {
        JobState::Succeeded => Decision::JobSucceeded {
            detail: match job.took {
                Some(took) => format!("job {}, exit 0 in {} s", job.id, took.as_secs()),
                None => format!("job {}, exit 0", job.id),
            },
            next: match step {
                BakeStep::Setup => BakeStep::Test,
                _ => BakeStep::CreateImage,
            },
        },
        JobState::Failed | JobState::Cancelled => Decision::Fail(format!(
            "The {what} failed (job {}{}{}).",
            job.id,
            job.exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default(),
            if job.reason.is_empty() {
                String::new()
            } else {
                format!(", {}", job.reason)
            }
        )),
        JobState::Queued | JobState::Running => match builder_gone {
            Some(builder) => Decision::Fail(format!("The builder {builder} was terminated.")),
            None => Decision::Wait(format!("waiting for the {step} job")),
        },
    }
}

/// The wait-image step: what the provider says of the image (None: it does not know it).
pub fn decide_image(
    image: Option<ImageState>,
    started_at: OffsetDateTime,
    now: OffsetDateTime,
    policy: &Policy,
) -> Decision {
    match image {
        Some(ImageState::Available) => Decision::ImageAvailable,
        Some(ImageState::Pending) if now - started_at > policy.image_timeout => {
            Decision::Fail(format!(
                "The image did not become available within {} minutes.",
                policy.image_timeout.as_secs() / 60
            ))
        }
        Some(ImageState::Pending) => Decision::Wait("waiting for the image".into()),
        Some(other @ (ImageState::Failed | ImageState::Deregistered)) => {
            Decision::Fail(format!("The provider reports the image {other}."))
        }
        None => Decision::Fail("The provider no longer knows the image.".into()),
    }
}

fn heard_within(at: Option<OffsetDateTime>, now: OffsetDateTime, window: Duration) -> bool {
    let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
    at.is_some_and(|at| now - at < window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-12-04 12:00 UTC);

    fn policy() -> Policy {
        Policy::new(5, 300)
    }

    fn secs(s: i64) -> time::Duration {
        time::Duration::seconds(s)
    }

    fn builder(state: ServerState, heard: Option<i64>) -> Builder {
        Builder {
            id: "i-b".into(),
            state,
            last_heard_at: heard.map(|ago| START + secs(100) - secs(ago)),
        }
    }

    #[test]
    fn the_launch_step_in_every_case() {
        let now = START + secs(100);
        let up = builder(ServerState::Running, Some(3));
        let quiet = builder(ServerState::Running, Some(60));
        let silent = builder(ServerState::Pending, None);
        let gone = builder(ServerState::Terminated, Some(1));
        let cases: Vec<(
            LaunchState,
            &str,
            Option<&Builder>,
            OffsetDateTime,
            Decision,
        )> = vec![
            (
                LaunchState::Pending,
                "",
                None,
                now,
                Decision::Wait("waiting for the builder's launch".into()),
            ),
            (
                LaunchState::Running,
                "",
                None,
                now,
                Decision::Wait("waiting for the builder's launch".into()),
            ),
            (
                LaunchState::Failed,
                "InsufficientInstanceCapacity",
                None,
                now,
                Decision::Fail(
                    "The builder could not be launched: InsufficientInstanceCapacity".into(),
                ),
            ),
            (
                LaunchState::Succeeded,
                "",
                None,
                now,
                Decision::Fail(
                    "The builder could not be launched: the provider gave no server".into(),
                ),
            ),
            (
                LaunchState::Succeeded,
                "",
                Some(&up),
                now,
                Decision::BuilderUp,
            ),
            (
                LaunchState::Succeeded,
                "",
                Some(&quiet),
                now,
                Decision::Wait("waiting for the builder's agent".into()),
            ),
            (
                LaunchState::Succeeded,
                "",
                Some(&silent),
                now,
                Decision::Wait("waiting for the builder's agent".into()),
            ),
            (
                LaunchState::Succeeded,
                "",
                Some(&silent),
                START + secs(301),
                Decision::Fail("The builder i-b's agent did not report within 300 s.".into()),
            ),
            (
                LaunchState::Succeeded,
                "",
                Some(&gone),
                now,
                Decision::Fail("The builder i-b was terminated.".into()),
            ),
        ];
        for (launch, error, b, at, want) in cases {
            assert_eq!(
                decide_launch(launch, error, b, START, at, &policy()),
                want,
                "{launch} {b:?} at {at}"
            );
        }
    }

    fn job(state: JobState) -> StepJob {
        StepJob {
            id: 9,
            state,
            exit_code: None,
            reason: String::new(),
            took: None,
        }
    }

    #[test]
    fn setup_and_test_jobs_succeed_fail_or_wait() {
        for (step, next) in [
            (BakeStep::Setup, BakeStep::Test),
            (BakeStep::Test, BakeStep::CreateImage),
        ] {
            let ok = StepJob {
                took: Some(Duration::from_secs(42)),
                ..job(JobState::Succeeded)
            };
            assert_eq!(
                decide_job(step, &ok, None),
                Decision::JobSucceeded {
                    detail: "job 9, exit 0 in 42 s".into(),
                    next
                }
            );
            let failed = StepJob {
                exit_code: Some(2),
                reason: "exited".into(),
                ..job(JobState::Failed)
            };
            let what = if step == BakeStep::Setup {
                "setup"
            } else {
                "integration tests"
            };
            assert_eq!(
                decide_job(step, &failed, None),
                Decision::Fail(format!("The {what} failed (job 9, exit code 2, exited)."))
            );
            assert_eq!(
                decide_job(step, &job(JobState::Cancelled), None),
                Decision::Fail(format!("The {what} failed (job 9)."))
            );
            for waiting in [JobState::Queued, JobState::Running] {
                assert_eq!(
                    decide_job(step, &job(waiting), None),
                    Decision::Wait(format!("waiting for the {step} job"))
                );
                assert_eq!(
                    decide_job(step, &job(waiting), Some("i-b")),
                    Decision::Fail("The builder i-b was terminated.".into())
                );
            }
        }
        assert_eq!(
            decide_job(BakeStep::Setup, &job(JobState::Succeeded), None),
            Decision::JobSucceeded {
                detail: "job 9, exit 0".into(),
                next: BakeStep::Test
            }
        );
    }

    #[test]
    fn the_image_becomes_available_fails_or_times_out() {
        let now = START + secs(60);
        let late = START + secs(3601);
        let cases = [
            (Some(ImageState::Available), now, Decision::ImageAvailable),
            (Some(ImageState::Available), late, Decision::ImageAvailable),
            (
                Some(ImageState::Pending),
                now,
                Decision::Wait("waiting for the image".into()),
            ),
            (
                Some(ImageState::Pending),
                late,
                Decision::Fail("The image did not become available within 60 minutes.".into()),
            ),
            (
                Some(ImageState::Failed),
                now,
                Decision::Fail("The provider reports the image failed.".into()),
            ),
            (
                Some(ImageState::Deregistered),
                now,
                Decision::Fail("The provider reports the image deregistered.".into()),
            ),
            (
                None,
                now,
                Decision::Fail("The provider no longer knows the image.".into()),
            ),
        ];
        for (image, at, want) in cases {
            assert_eq!(
                decide_image(image, START, at, &policy()),
                want,
                "{image:?} at {at}"
            );
        }
    }
}

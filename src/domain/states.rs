//! Every state and kind Kiln stores as text, as a Rust enum. A value read from the database
//! that is not one of an enum's words is a decoding error, never a default branch, and every
//! `match` on a state is exhaustive: adding a state makes the compiler list every place that
//! must decide what it means.
//!
//! The stored words are the ones the migrations' CHECK constraints and the API use; an enum
//! is read and written as its word (`as_str`, `Display`, serde, sqlx).

/// Declares a text-backed enum: its words, `as_str`, `Display`, `FromStr` (an unknown word is
/// an error naming the allowed ones), serde as the word, and sqlx as PostgreSQL TEXT.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err($crate::domain::ValidationError::new(format!(
                        "{other:?} is not a {}; expected one of: {}",
                        $what,
                        [$($word),+].join(", ")
                    ))),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $crate::domain::ValidationError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
    };
}

text_enum! {
    /// Release or rollback (`rollouts.kind`, `releases.kind` but `revert`).
    pub enum RolloutKind ("rollout kind") {
        Release = "release",
        Rollback = "rollback",
    }
}

text_enum! {
    /// Where a rollout stands (`rollouts.state`).
    pub enum RolloutState ("rollout state") {
        /// Created; waits for a superseded rollout to put its servers back.
        Pending = "pending",
        Running = "running",
        Paused = "paused",
        Succeeded = "succeeded",
        /// Failed: the current image moved back and the fleet is being put back.
        Failed = "failed",
        /// Cancelled by a user or superseded by a rollback; put back like a failure.
        Cancelled = "cancelled",
    }
}

impl RolloutState {
    /// Pending, running or paused: the one rollout that may be in progress.
    pub fn is_active(self) -> bool {
        match self {
            RolloutState::Pending | RolloutState::Running | RolloutState::Paused => true,
            RolloutState::Succeeded | RolloutState::Failed | RolloutState::Cancelled => false,
        }
    }
}

text_enum! {
    /// Where a release's plan stands while it runs (`rollouts.phase`; none between steps).
    pub enum RolloutPhase ("rollout phase") {
        /// The canary batch is being brought in and checked.
        Canary = "canary",
        /// A batch is done; the release watches its guards until the soak time has passed.
        Soaking = "soaking",
        /// Waiting for an operator's Continue or Roll back (or the deadline's action).
        AwaitingApproval = "awaiting_approval",
    }
}

text_enum! {
    /// When a release waits for a human's go-ahead (`rollouts.approval`).
    pub enum Approval ("approval") {
        None = "none",
        AfterCanary = "after_canary",
        EachBatch = "each_batch",
    }
}

text_enum! {
    /// What happens when a go-ahead's deadline passes (`rollouts.on_deadline`).
    pub enum DeadlineAction ("deadline action") {
        Rollback = "rollback",
        Continue = "continue",
    }
}

text_enum! {
    /// What a canary with too few jobs to judge does (`rollouts.on_insufficient_data`).
    pub enum InsufficientData ("insufficient-data action") {
        /// Wait for a human, as if the plan asked for approval after the canary.
        Wait = "wait",
        Continue = "continue",
    }
}

text_enum! {
    /// Which side of a rollout a server is on (`rollout_servers.role`).
    pub enum RolloutRole ("rollout server role") {
        /// A server being replaced.
        Old = "old",
        /// A replacement on the target image.
        New = "new",
    }
}

text_enum! {
    /// What a rollout did with a server (`rollout_servers.state`).
    pub enum RolloutServerState ("rollout server state") {
        /// Old: disabled and kept for an instant rollback.
        Kept = "kept",
        /// Old: enabled again by an undo.
        Restored = "restored",
        /// Old: a later rollout enabled it again as a replacement.
        Reused = "reused",
        /// Old: terminated when the grace period ended.
        Retired = "retired",
        /// New: launched for this rollout.
        Launched = "launched",
        /// New: a kept server of an earlier rollout, enabled again.
        Reenabled = "reenabled",
        /// New: taken away again by an undo.
        Removed = "removed",
    }
}

text_enum! {
    /// A launch request's progress at the provider (`launches.state`).
    pub enum LaunchState ("launch state") {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        /// The provider launched fewer than asked (capacity); `error` says how many.
        Partial = "partial",
        Failed = "failed",
    }
}

impl LaunchState {
    /// Still waiting for the provider's answer.
    pub fn is_unsettled(self) -> bool {
        match self {
            LaunchState::Pending | LaunchState::Running => true,
            LaunchState::Succeeded | LaunchState::Partial | LaunchState::Failed => false,
        }
    }
}

text_enum! {
    /// A server's life at the provider (`servers.state`), EC2's words.
    pub enum ServerState ("server state") {
        Pending = "pending",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        ShuttingDown = "shutting-down",
        Terminated = "terminated",
    }
}

text_enum! {
    /// Whether a server takes work (`servers.mode`).
    pub enum ServerMode ("server mode") {
        Enabled = "enabled",
        /// Takes no new job; finishes what it runs (draining).
        Disabled = "disabled",
    }
}

text_enum! {
    /// What a server is for (`servers.purpose`).
    pub enum ServerPurpose ("server purpose") {
        /// Runs the queue's jobs; rollouts and (later) autoscaling manage these.
        Worker = "worker",
        /// A bake's builder: takes only jobs pinned to it.
        Builder = "builder",
    }
}

text_enum! {
    /// An image in the catalogue (`images.state`).
    pub enum ImageState ("image state") {
        /// Added or being made; not launchable yet.
        Pending = "pending",
        Available = "available",
        Failed = "failed",
        Deregistered = "deregistered",
    }
}

text_enum! {
    /// A bake (`bakes.state`), and each of its steps (`bake_steps.state`).
    pub enum BakeState ("bake state") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// Where a bake is (`bakes.step`, `bake_steps.step`), in order.
    pub enum BakeStep ("bake step") {
        /// The builder's launch; waits until its agent heartbeats.
        Launch = "launch",
        /// The recipe's setup, a job pinned to the builder.
        Setup = "setup",
        /// The recipe's tests, another pinned job.
        Test = "test",
        /// The provider makes the image from the builder.
        CreateImage = "create_image",
        /// Until the provider says the image is available.
        WaitImage = "wait_image",
        Done = "done",
    }
}

text_enum! {
    /// A job in the work queue (`jobs.state`).
    pub enum JobState ("job state") {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// Succeeded, failed or cancelled: it will not run again unless retried by a user.
    pub fn is_finished(self) -> bool {
        match self {
            JobState::Queued | JobState::Running => false,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => true,
        }
    }
}

text_enum! {
    /// One try of a job on one server (`job_attempts.state`).
    pub enum AttemptState ("attempt state") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Cut short (lease expired, server gone, agent restarted): the job is requeued.
        Lost = "lost",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// Where one (rule, source) of an alert stands (`alert_states.state`).
    pub enum AlertState ("alert state") {
        Ok = "ok",
        /// Breaching, waiting out the conditions' `for`.
        Pending = "pending",
        Firing = "firing",
    }
}

text_enum! {
    /// What a condition compares (`op` of a rule's condition).
    pub enum AlertOp ("condition operator") {
        Above = "above",
        Below = "below",
        /// No point in the window.
        Absent = "absent",
    }
}

text_enum! {
    /// How a condition reduces a source's points over its window.
    pub enum AlertAggregate ("aggregation") {
        Avg = "avg",
        Min = "min",
        Max = "max",
        Sum = "sum",
        Count = "count",
    }
}

text_enum! {
    /// How a rule that is not per source combines its sources' values (`alert_rules.group_fn`).
    pub enum AlertGroup ("group function") {
        Max = "max",
        Min = "min",
        Avg = "avg",
        Sum = "sum",
    }
}

text_enum! {
    /// What a rule does when a source sends nothing (`alert_rules.no_data`).
    pub enum NoDataPolicy ("no-data policy") {
        /// Treat as not breaching: a firing alert resolves.
        Resolve = "resolve",
        /// Keep the last state.
        Keep = "keep",
        /// Treat as breaching.
        Alert = "alert",
    }
}

text_enum! {
    /// Where notifications go (`alert_channels.kind`).
    pub enum ChannelKind ("channel kind") {
        Webhook = "webhook",
        Slack = "slack",
        Email = "email",
    }
}

text_enum! {
    /// One notification's delivery (`alert_notifications.state`).
    pub enum DeliveryState ("delivery state") {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_itself() {
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>().unwrap(), *s);
        }
        for s in ServerState::ALL {
            assert_eq!(s.to_string().parse::<ServerState>().unwrap(), *s);
        }
        assert_eq!(
            serde_json::to_string(&ServerState::ShuttingDown).unwrap(),
            "\"shutting-down\""
        );
    }

    #[test]
    fn an_unknown_word_is_an_error_naming_the_words() {
        let e = "runing".parse::<RolloutState>().unwrap_err();
        assert!(e.0.contains("\"runing\""), "{e}");
        assert!(e.0.contains("pending, running, paused"), "{e}");
        assert!(serde_json::from_str::<ServerMode>("\"on\"").is_err());
    }
}

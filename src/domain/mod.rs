//! Validated domain types. Nothing here does I/O: parsing turns user input into values that
//! are correct by construction, and every error is a sentence a user can act on.

pub mod alert_rule;
pub mod freeze;
mod health;
pub mod measurement;
mod names;
mod next;
mod password;
pub mod release_plan;
mod role;
pub mod scaling;
pub mod states;
pub mod window;

pub use health::agent_health_window;
pub use names::{TokenName, UserName};
pub use next::Next;
pub use password::Password;
pub use role::Role;
pub use states::{
    AlertAggregate, AlertGroup, AlertOp, AlertState, Approval, AttemptState, BakeState, BakeStep,
    ChannelKind, DeadlineAction, DeliveryState, ImageState, InsufficientData, JobState,
    LaunchState, NoDataPolicy, RolloutKind, RolloutPhase, RolloutRole, RolloutServerState,
    RolloutState, ServerMode, ServerPurpose, ServerState,
};

/// Input that failed validation; the message is shown to the user as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

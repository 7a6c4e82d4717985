//! Deployments: the rollout of one version of a service, with its own state machine.
//!
//! A deployment is `running`, `paused`, `successful`, `failed` or `cancelled`, and always says
//! why, as a machine-readable [`Reason`] and a sentence: it never sits in `running` without
//! naming what it waits for. As for tasks, every move goes through one function,
//! [`transition`], an exhaustive `match` with no wildcard; `successful`, `failed` and
//! `cancelled` are terminal.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::DeploymentId;

/// Where a deployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[derive(strum::Display, strum::VariantArray, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum DeploymentStatus {
    /// Replacing instances (or waiting, with a reason: health, promotion, room).
    Running,
    /// Stopped moving on request, or after a failed revert; resumes on request.
    Paused,
    /// Every instance of the version was healthy at once (terminal).
    Successful,
    /// Gave up, with the reason (terminal; a revert may follow as a deployment of its own).
    Failed,
    /// A newer version or the service's removal ended it (terminal).
    Cancelled,
}

impl DeploymentStatus {
    /// Whether the deployment is over.
    pub const fn is_terminal(self) -> bool {
        match self {
            DeploymentStatus::Successful
            | DeploymentStatus::Failed
            | DeploymentStatus::Cancelled => true,
            DeploymentStatus::Running | DeploymentStatus::Paused => false,
        }
    }
}

/// What moves a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[derive(strum::VariantArray)]
pub enum DeploymentTrigger {
    /// A user promoted the canaries (or `auto_promote` did once they were healthy).
    Promote,
    /// A user paused it, or a revert failed.
    Pause,
    /// A user resumed it.
    Resume,
    /// Every instance of the version is healthy.
    Complete,
    /// An instance failed, the progress deadline passed, or a user failed it.
    Fail,
    /// A newer version superseded it, or the service was removed.
    Cancel,
}

/// A trigger that is not allowed in the deployment's current status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid deployment transition: {trigger:?} is not allowed when {from}")]
pub struct InvalidDeploymentTransition {
    /// Status it was in.
    pub from: DeploymentStatus,
    /// What was attempted.
    pub trigger: DeploymentTrigger,
}

/// The deployment state machine: every (status, trigger) pair spelled out.
pub fn transition(
    from: DeploymentStatus,
    trigger: DeploymentTrigger,
) -> Result<DeploymentStatus, InvalidDeploymentTransition> {
    use DeploymentStatus as S;
    use DeploymentTrigger as T;
    let invalid = Err(InvalidDeploymentTransition { from, trigger });
    match (from, trigger) {
        (S::Running, T::Promote) => Ok(S::Running),
        (S::Running, T::Pause) => Ok(S::Paused),
        (S::Running, T::Complete) => Ok(S::Successful),
        (S::Running, T::Fail) => Ok(S::Failed),
        (S::Running, T::Cancel) => Ok(S::Cancelled),
        (S::Running, T::Resume) => invalid,

        (S::Paused, T::Resume) => Ok(S::Running),
        (S::Paused, T::Fail) => Ok(S::Failed),
        (S::Paused, T::Cancel) => Ok(S::Cancelled),
        // Promotion and completion are decided while it moves; resume first.
        (S::Paused, T::Promote | T::Pause | T::Complete) => invalid,

        (
            S::Successful | S::Failed | S::Cancelled,
            T::Promote | T::Pause | T::Resume | T::Complete | T::Fail | T::Cancel,
        ) => invalid,
    }
}

/// Why a deployment is where it is: a stable code for machines; the sentence beside it is for
/// people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[derive(strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Reason {
    /// Running: placing new instances.
    Placing,
    /// Running: new instances are starting or not yet healthy for `min_healthy_time`.
    WaitingHealth,
    /// Running: the canaries are healthy; waiting for `promote`.
    NeedsPromotion,
    /// Running: a surge instance found no room; replacing one at a time, stopping first.
    StopFirst,
    /// Running: no node has room for a new instance (`on_no_room = wait`).
    NoCapacity,
    /// Running: a static host port is taken where the new instance could go.
    PortConflict,
    /// Paused by a user.
    User,
    /// Paused: a revert failed (a revert never reverts again).
    RevertFailed,
    /// Successful: every instance of the version was healthy.
    AllHealthy,
    /// Failed: a new instance exited, failed its checks or was not healthy in time.
    Unhealthy,
    /// Failed: no instance turned healthy within the progress deadline.
    ProgressDeadline,
    /// Failed on a user's request.
    UserFailed,
    /// Cancelled: a newer version started rolling out.
    Superseded,
    /// Cancelled: the service was removed.
    ServiceRemoved,
}

/// One rollout of a service version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deployment {
    /// Stable id.
    pub id: DeploymentId,
    /// The service.
    pub service: String,
    /// The version rolled out.
    pub version: u64,
    /// The version it replaces (`None` for a service's first).
    pub previous: Option<u64>,
    /// A revert: `version` carries the spec of an earlier, successful one.
    #[serde(default)]
    pub revert: bool,
    /// Where it stands.
    pub status: DeploymentStatus,
    /// Why, as a code.
    pub reason: Reason,
    /// Why, in words (e.g. `task web/2: http check :80/ answered 503`).
    pub description: String,
    /// The canaries were promoted (or there were none): the rollout may replace the rest.
    #[serde(default)]
    pub promoted: bool,
    /// When it began.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// When anything in it last changed.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// When it last made progress (an instance turned healthy); the progress deadline runs
    /// from here, or from `created_at` before any did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub last_progress: Option<Timestamp>,
}

impl Deployment {
    /// A deployment of `version` (replacing `previous`) that starts placing.
    pub fn new(
        id: DeploymentId,
        service: impl Into<String>,
        version: u64,
        previous: Option<u64>,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            service: service.into(),
            version,
            previous,
            revert: false,
            status: DeploymentStatus::Running,
            reason: Reason::Placing,
            description: "placing new instances".into(),
            promoted: false,
            created_at: now,
            updated_at: now,
            last_progress: None,
        }
    }

    /// Applies a trigger through the state machine and records why; on error nothing changes.
    pub fn apply(
        &mut self,
        trigger: DeploymentTrigger,
        reason: Reason,
        description: impl Into<String>,
        now: Timestamp,
    ) -> Result<DeploymentStatus, InvalidDeploymentTransition> {
        let to = transition(self.status, trigger)?;
        if trigger == DeploymentTrigger::Promote {
            self.promoted = true;
        }
        self.status = to;
        self.note(reason, description, now);
        Ok(to)
    }

    /// Records why a running deployment waits, without moving it.
    pub fn note(&mut self, reason: Reason, description: impl Into<String>, now: Timestamp) {
        self.reason = reason;
        self.description = description.into();
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentStatus as S;
    use DeploymentTrigger as T;
    use strum::VariantArray;

    /// The whole table, written out independently of `transition`: `None` = invalid.
    fn expected(from: S, trigger: T) -> Option<S> {
        let table: &[(S, T, S)] = &[
            (S::Running, T::Promote, S::Running),
            (S::Running, T::Pause, S::Paused),
            (S::Running, T::Complete, S::Successful),
            (S::Running, T::Fail, S::Failed),
            (S::Running, T::Cancel, S::Cancelled),
            (S::Paused, T::Resume, S::Running),
            (S::Paused, T::Fail, S::Failed),
            (S::Paused, T::Cancel, S::Cancelled),
        ];
        table.iter().find(|(f, t, _)| *f == from && *t == trigger).map(|(_, _, to)| *to)
    }

    #[test]
    fn every_status_and_trigger_pair_matches_the_table() {
        let mut valid = 0;
        for &from in S::VARIANTS {
            for &trigger in T::VARIANTS {
                match expected(from, trigger) {
                    Some(to) => {
                        valid += 1;
                        assert_eq!(transition(from, trigger), Ok(to), "{from} + {trigger:?}");
                    }
                    None => assert!(transition(from, trigger).is_err(), "{from} + {trigger:?}"),
                }
                if from.is_terminal() {
                    assert!(transition(from, trigger).is_err(), "terminal {from}");
                }
            }
        }
        assert_eq!(valid, 8);
    }

    #[test]
    fn a_deployment_records_why_and_refuses_invalid_moves() {
        let at = Timestamp::from_second(1_893_456_000).unwrap();
        let id = DeploymentId::from_uuid(uuid::Uuid::nil());
        let mut d = Deployment::new(id, "web", 2, Some(1), at);
        assert_eq!((d.status, d.reason), (S::Running, Reason::Placing));
        d.note(Reason::WaitingHealth, "web/0 starting", at);
        d.apply(T::Promote, Reason::WaitingHealth, "promoted", at).unwrap();
        assert!(d.promoted);
        d.apply(T::Fail, Reason::Unhealthy, "task web/2: http check answered 503", at).unwrap();
        let before = d.clone();
        assert!(d.apply(T::Resume, Reason::User, "no", at).is_err());
        assert_eq!(d, before, "a refused move changes nothing");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            (json["status"].as_str(), json["reason"].as_str()),
            (Some("failed"), Some("unhealthy"))
        );
    }
}

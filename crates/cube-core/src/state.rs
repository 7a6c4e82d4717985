//! The task state machine: states, the triggers that move a task between them, and the one
//! [`transition`] function that decides every move.
//!
//! The book's five states (pending, scheduled, running, completed, failed) plus `restarting`:
//! a task waiting out its restart backoff is neither running nor finished, and users need to
//! see that (Kubernetes' `CrashLoopBackOff`). `completed` and `failed` are terminal: nothing
//! leaves them, so a finished task can never be resurrected by a late or duplicated message.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Observed state of a task: what is actually happening to it. Its name (`running`) is the same
/// on the wire, in `Display` and in `FromStr`; `VARIANTS` lists every state in lifecycle order.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[derive(strum::VariantArray, strum::VariantNames)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", parse_err_ty = CoreError, parse_err_fn = unknown_state)]
pub enum TaskState {
    /// Accepted, not yet placed on a node.
    Pending,
    /// Placed on a node; the node is starting it (pulling, creating, spawning).
    Scheduled,
    /// The workload runs.
    Running,
    /// Exited and waiting out its restart backoff before the next attempt.
    Restarting,
    /// Finished: exited 0, or stopped because someone asked (terminal).
    Completed,
    /// Finished: failed to start or exited non-zero, with no restarts left (terminal).
    Failed,
}

fn unknown_state(input: &str) -> CoreError {
    CoreError::unknown_name::<TaskState>("task state", input)
}

impl TaskState {
    /// Whether the task has finished for good.
    pub const fn is_terminal(self) -> bool {
        match self {
            TaskState::Completed | TaskState::Failed => true,
            TaskState::Pending
            | TaskState::Scheduled
            | TaskState::Running
            | TaskState::Restarting => false,
        }
    }

    /// Whether the task holds resources on a node (placed and not finished).
    pub const fn is_active_on_node(self) -> bool {
        match self {
            TaskState::Scheduled | TaskState::Running | TaskState::Restarting => true,
            TaskState::Pending | TaskState::Completed | TaskState::Failed => false,
        }
    }
}

/// Desired state of a task: what whoever asked wants. Written only by the API (the user or the
/// manager), never by the code that observes the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Keep it running (or let it run to completion).
    Running,
    /// Stop it and do not restart it.
    Stopped,
}

/// Something that happened to a task. Triggers carry the decisions the caller already made
/// (for example whether the restart policy allows another attempt), so the state machine itself
/// stays a pure table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A node was chosen for the task.
    Place,
    /// The driver reports the workload running.
    Started,
    /// The driver could not start the workload; `retry` says whether the policy allows another
    /// attempt.
    StartFailed {
        /// Another attempt follows after a backoff.
        retry: bool,
    },
    /// The workload ended without being asked to (including being killed for failing its health
    /// check).
    Exited {
        /// It exited with status 0.
        success: bool,
        /// Another attempt follows after a backoff.
        retry: bool,
    },
    /// The workload was stopped because the desired state became `stopped` (or it was cancelled
    /// before it ran).
    Stopped,
    /// The task must be placed again: its node was lost or refused it, or it ran out of local
    /// restarts and may try another node.
    Requeue,
    /// Its node was lost (or no longer has it) and it is not placed again: a service instance,
    /// whose slot gets a new task instead.
    Lost,
}

impl Trigger {
    /// Whether the trigger is observed where the workload runs (the worker's runner) rather than
    /// decided by placement (`Place`, `Requeue`, which the manager applies to its own record and
    /// a worker to its copy). A manager replays only observed triggers from a worker's history.
    pub const fn observed_on_node(self) -> bool {
        match self {
            Trigger::Place | Trigger::Requeue | Trigger::Lost => false,
            Trigger::Started
            | Trigger::StartFailed { .. }
            | Trigger::Exited { .. }
            | Trigger::Stopped => true,
        }
    }
}

/// Every trigger shape, for exhaustive tests.
pub const ALL_TRIGGERS: [Trigger; 11] = [
    Trigger::Place,
    Trigger::Started,
    Trigger::StartFailed { retry: false },
    Trigger::StartFailed { retry: true },
    Trigger::Exited { success: false, retry: false },
    Trigger::Exited { success: false, retry: true },
    Trigger::Exited { success: true, retry: false },
    Trigger::Exited { success: true, retry: true },
    Trigger::Stopped,
    Trigger::Requeue,
    Trigger::Lost,
];

/// A trigger that is not allowed in the task's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {trigger:?} is not allowed in state {from}")]
pub struct InvalidTransition {
    /// State the task was in.
    pub from: TaskState,
    /// What was attempted.
    pub trigger: Trigger,
}

/// The task state machine. Every (state, trigger) pair is spelled out, with no wildcard arm, so
/// adding a state or trigger does not compile until someone decides what it means.
pub fn transition(from: TaskState, trigger: Trigger) -> Result<TaskState, InvalidTransition> {
    use TaskState as S;
    use Trigger as T;
    let invalid = Err(InvalidTransition { from, trigger });
    match (from, trigger) {
        (S::Pending, T::Place) => Ok(S::Scheduled),
        (S::Pending, T::Stopped) => Ok(S::Completed),
        (
            S::Pending,
            T::Started | T::StartFailed { .. } | T::Exited { .. } | T::Requeue | T::Lost,
        ) => invalid,

        (S::Scheduled, T::Started) => Ok(S::Running),
        (S::Scheduled, T::StartFailed { retry: true }) => Ok(S::Restarting),
        (S::Scheduled, T::StartFailed { retry: false }) => Ok(S::Failed),
        (S::Scheduled, T::Stopped) => Ok(S::Completed),
        (S::Scheduled, T::Requeue) => Ok(S::Pending),
        (S::Scheduled, T::Lost) => Ok(S::Failed),
        (S::Scheduled, T::Place | T::Exited { .. }) => invalid,

        (S::Running, T::Exited { retry: true, .. }) => Ok(S::Restarting),
        (S::Running, T::Exited { success: true, retry: false }) => Ok(S::Completed),
        (S::Running, T::Exited { success: false, retry: false }) => Ok(S::Failed),
        (S::Running, T::Stopped) => Ok(S::Completed),
        (S::Running, T::Requeue) => Ok(S::Pending),
        (S::Running, T::Lost) => Ok(S::Failed),
        (S::Running, T::Place | T::Started | T::StartFailed { .. }) => invalid,

        (S::Restarting, T::Started) => Ok(S::Running),
        (S::Restarting, T::StartFailed { retry: true }) => Ok(S::Restarting),
        (S::Restarting, T::StartFailed { retry: false }) => Ok(S::Failed),
        (S::Restarting, T::Stopped) => Ok(S::Completed),
        (S::Restarting, T::Requeue) => Ok(S::Pending),
        (S::Restarting, T::Lost) => Ok(S::Failed),
        (S::Restarting, T::Place | T::Exited { .. }) => invalid,

        (
            S::Completed | S::Failed,
            T::Place
            | T::Started
            | T::StartFailed { .. }
            | T::Exited { .. }
            | T::Stopped
            | T::Requeue
            | T::Lost,
        ) => invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState as S;
    use strum::VariantArray;

    const ALL_STATES: &[TaskState] = TaskState::VARIANTS;
    use Trigger as T;

    /// The whole table, written out independently of `transition`: `None` = invalid.
    fn expected(from: TaskState, trigger: Trigger) -> Option<TaskState> {
        let table: &[(TaskState, Trigger, TaskState)] = &[
            (S::Pending, T::Place, S::Scheduled),
            (S::Pending, T::Stopped, S::Completed),
            (S::Scheduled, T::Started, S::Running),
            (S::Scheduled, T::StartFailed { retry: true }, S::Restarting),
            (S::Scheduled, T::StartFailed { retry: false }, S::Failed),
            (S::Scheduled, T::Stopped, S::Completed),
            (S::Scheduled, T::Requeue, S::Pending),
            (S::Scheduled, T::Lost, S::Failed),
            (S::Running, T::Exited { success: false, retry: true }, S::Restarting),
            (S::Running, T::Exited { success: true, retry: true }, S::Restarting),
            (S::Running, T::Exited { success: true, retry: false }, S::Completed),
            (S::Running, T::Exited { success: false, retry: false }, S::Failed),
            (S::Running, T::Stopped, S::Completed),
            (S::Running, T::Requeue, S::Pending),
            (S::Running, T::Lost, S::Failed),
            (S::Restarting, T::Started, S::Running),
            (S::Restarting, T::StartFailed { retry: true }, S::Restarting),
            (S::Restarting, T::StartFailed { retry: false }, S::Failed),
            (S::Restarting, T::Stopped, S::Completed),
            (S::Restarting, T::Requeue, S::Pending),
            (S::Restarting, T::Lost, S::Failed),
        ];
        table.iter().find(|(f, t, _)| *f == from && *t == trigger).map(|(_, _, to)| *to)
    }

    #[test]
    fn every_state_and_trigger_pair_matches_the_table() {
        let mut valid = 0;
        for &from in ALL_STATES {
            for trigger in ALL_TRIGGERS {
                let got = transition(from, trigger);
                match expected(from, trigger) {
                    Some(to) => {
                        valid += 1;
                        assert_eq!(got, Ok(to), "{from} + {trigger:?}");
                    }
                    None => assert_eq!(
                        got,
                        Err(InvalidTransition { from, trigger }),
                        "{from} + {trigger:?} must be rejected"
                    ),
                }
            }
        }
        assert_eq!(valid, 21, "the table has 21 valid moves");
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for &from in ALL_STATES.iter().filter(|s| s.is_terminal()) {
            for trigger in ALL_TRIGGERS {
                assert!(transition(from, trigger).is_err(), "{from} + {trigger:?}");
            }
        }
    }

    #[test]
    fn states_serialize_lowercase_and_parse_back() {
        for &s in ALL_STATES {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.to_string().parse::<TaskState>().unwrap(), s);
        }
        let err = "Running".parse::<TaskState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown task state \"Running\": expected one of pending, scheduled, running, \
             restarting, completed, failed"
        );
    }
}

//! Cube's domain model, free of I/O.
//!
//! - [`ids`]: id newtypes ([`TaskId`], [`NodeId`]).
//! - [`units`]: quantities with units ([`Bytes`], [`Millicores`], durations).
//! - [`spec`]: the task spec users submit and its validation.
//! - [`state`]: task states and the one [`transition`] function.
//! - [`task`]: the task record; [`event`]: its history, typed.
//! - [`node`]: the node record the manager keeps.
//! - [`stats`]: what a worker reports about its host.
//! - [`constraint`], [`scheduler`]: placement (candidates, scores, pick) with explanations.
//!
//! **Invariant:** nothing here performs I/O, reads the clock or draws random numbers; time and
//! new ids are passed in. Everything is therefore testable as plain functions.

pub mod constraint;
pub mod event;
pub mod ids;
pub mod node;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod stats;
pub mod task;
pub mod units;

pub use event::{EventKind, Note, TaskEvent};
pub use ids::{NodeId, TaskId};
/// Timestamps throughout Cube are UTC instants.
pub use jiff::Timestamp;
pub use node::{Node, NodeState};
pub use scheduler::{Decision, Explanation, NodeSet, NodeView, Scheduler, SchedulerKind};
pub use spec::{
    DriverKind, FieldError, HealthCheck, PortSpec, Probe, ProbeKind, Protocol, Resources,
    RestartMode, RestartPolicy, TaskSpec,
};
pub use state::{DesiredState, InvalidTransition, TaskState, Trigger, transition};
pub use task::{DriverHandle, HostPort, Task};
pub use units::{Bytes, Millicores};

/// Errors of the core crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// An id string is not a UUID.
    #[error("invalid {kind} id {input:?}: expected a UUID")]
    InvalidId {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The text given.
        input: String,
    },
    /// A quantity (size, CPU, duration) could not be parsed.
    #[error("invalid quantity {input:?}: expected {expected}")]
    InvalidQuantity {
        /// The text given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A task state name is unknown.
    #[error("unknown task state {0:?}")]
    InvalidState(String),
    /// A state machine move that is not allowed.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

//! Cube's domain model, free of I/O.
//!
//! - [`access`]: roles and users' token records.
//! - [`ids`]: id newtypes ([`TaskId`], [`NodeId`]).
//! - [`units`]: quantities with units ([`Bytes`], [`Millicores`], durations).
//! - [`spec`]: the task spec users submit and its validation; [`service`]: a replicated
//!   workload and its update strategy; [`endpoints`]: the instances an ingress may forward a
//!   service's published ports to.
//! - [`state`]: task states and the one [`transition`] function; [`deployment`]: the same for a
//!   service's rollouts.
//! - [`rollout`]: the rollout planner: given a service's instances, what to start and stop
//!   next and how its deployment moves.
//! - [`task`]: the task record; [`event`]: its history, typed.
//! - [`node`]: the node record the manager keeps.
//! - [`stats`]: what a worker reports about its host.
//! - [`constraint`], [`scheduler`]: placement (candidates, scores, pick) with explanations.
//!
//! **Invariant:** nothing here performs I/O, reads the clock or draws random numbers; time and
//! new ids are passed in. Everything is therefore testable as plain functions.

pub mod access;
pub mod constraint;
pub mod deployment;
pub mod endpoints;
mod error;
pub mod event;
pub mod ids;
pub mod node;
pub mod rollout;
pub mod scheduler;
pub mod schema;
pub mod service;
pub mod spec;
pub mod state;
pub mod stats;
pub mod task;
pub mod units;

pub use error::{Chain, CoreError};
pub use event::{EventKind, Note, TaskEvent};
pub use ids::{DeploymentId, NodeId, TaskId};
/// Timestamps throughout Cube are UTC instants.
pub use jiff::Timestamp;
pub use node::{Allows, Node, NodeState, Refusal};
pub use scheduler::{Decision, Explanation, NodeSet, NodeView, Scheduler, SchedulerKind};
pub use spec::{
    DriverKind, FieldError, HealthCheck, Mount, NetworkMode, PortSpec, Probe, ProbeKind, Protocol,
    Resources, RestartMode, RestartPolicy, TaskSpec,
};
pub use state::{DesiredState, InvalidTransition, TaskState, Trigger, transition};
pub use task::{DriverHandle, HostPort, InstanceOf, Task};
pub use units::{Bytes, Millicores};

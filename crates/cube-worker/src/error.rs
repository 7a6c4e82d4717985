//! The worker's error type.

use std::path::PathBuf;

use cube_core::{InvalidTransition, TaskId};
use cube_http::server::ServerError;
use cube_store::StoreError;

pub use crate::host::HostError;

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The id is taken by a task with a different spec.
    #[error("task {0} already exists with a different spec")]
    Conflict(TaskId),
    /// A command of a leader whose term ended: a newer leader's epoch was seen.
    #[error(
        "epoch {epoch} is older than epoch {seen} this node has seen: a newer leader took over"
    )]
    StaleLeader {
        /// The command's epoch.
        epoch: u64,
        /// The highest seen.
        seen: u64,
    },
    /// A placement older than the one this node runs.
    #[error("task {id}: generation {generation} is older than the current {current}")]
    Stale {
        /// The task.
        id: TaskId,
        /// Generation offered.
        generation: u32,
        /// Generation held.
        current: u32,
    },
    /// A newer placement arrived while the older one is still running here.
    #[error("task {id}: generation {generation} is still running here; retry once it has stopped")]
    Busy {
        /// The task.
        id: TaskId,
        /// Generation still running.
        generation: u32,
    },
    /// The task asks for something this node does not allow (a driver it does not enable, a
    /// user, privileges, a host mount, the host network, a capability).
    #[error("node {node}: {reason}")]
    NotAllowed {
        /// This node's name.
        node: String,
        /// What is refused and the worker setting that would allow it.
        reason: String,
    },
    /// The default user of process tasks cannot be used on this host.
    #[error("cannot run process tasks as user {user:?}: {why}")]
    ProcessUser {
        /// The user (`--process-user`).
        user: String,
        /// Why not.
        why: String,
    },
    /// An exec needs the task's workload running.
    #[error("task {id} is {state}: a command can run only in a running task")]
    NotRunning {
        /// The task.
        id: TaskId,
        /// Its state.
        state: cube_core::TaskState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state change was refused by the state machine (a bug).
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// A file or directory of the worker's own (the data directory, the node id file) could
    /// not be created, read or written.
    #[error("{operation} {}", path.display())]
    File {
        /// What was being done, e.g. `cannot create data dir`.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The node id file holds something that is not a node id.
    #[error("{}: not a node id", path.display())]
    BadNodeId {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: cube_core::CoreError,
    },
    /// The host's figures could not be read.
    #[error("cannot read host metrics")]
    Host(#[source] HostError),
    /// The API server could not start, or failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A start-up or shutdown step panicked (a bug).
    #[error("{what} panicked")]
    Panicked {
        /// The step.
        what: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The node's key or certificate could not be made or read.
    #[error("cannot use this node's key or certificate")]
    Pki(#[source] cube_pki::PkiError),
    /// Mutual TLS could not be set up from the node's certificate.
    #[error("cannot set up mutual TLS with the cluster's CA")]
    ClusterTls(#[source] cube_http::tls::TlsError),
    /// The node has no usable certificate and no join token to get one.
    #[error("this node has no valid certificate: start it with --token <join token>")]
    NoJoinToken,
    /// Joining (or renewing) was refused, or no manager with the pinned CA answered.
    #[error("cannot join the cluster")]
    Join {
        /// The call's error.
        #[source]
        source: cube_http::client::ClientError,
    },
    /// A manager answered a join with another CA than the join token names.
    #[error("the manager answered with another CA than the join token names")]
    OtherCa,
    /// Stopped before a manager answered the join.
    #[error("stopped before a manager answered the join")]
    JoinCancelled,
    /// The manager enrolled the node under another id than its own.
    #[error("the manager enrolled node {asked} as {got}")]
    OtherNodeId {
        /// This node's id.
        asked: cube_core::NodeId,
        /// The id in the certificate.
        got: cube_core::NodeId,
    },
}

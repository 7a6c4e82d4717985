//! The manager's error type, and how it is answered over the API.

use cube_api::{ApiError, ErrorCode};
use cube_core::deployment::InvalidDeploymentTransition;
use cube_core::{Chain, DeploymentId, NodeId, TaskId};
use cube_http::client::ClientError;
use cube_http::server::ServerError;
use cube_store::StoreError;

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No task with this id.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// No node with this id or name.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// The id is taken by a task with a different spec.
    #[error("task {0} already exists with a different spec")]
    Conflict(TaskId),
    /// No service with this name.
    #[error("service {0} not found")]
    ServiceNotFound(String),
    /// No deployment with this id.
    #[error("deployment {0} not found")]
    DeploymentNotFound(DeploymentId),
    /// `check_index` did not match the service's modify index.
    #[error("{}", index_mismatch(name, *current))]
    IndexMismatch {
        /// The service.
        name: String,
        /// Its modify index (`None`: it does not exist).
        current: Option<u64>,
    },
    /// The deployment's status does not allow the request.
    #[error("deployment {id} cannot do that")]
    DeploymentRefused {
        /// The deployment.
        id: DeploymentId,
        /// What the state machine said.
        #[source]
        source: InvalidDeploymentTransition,
    },
    /// Another service publishes the port.
    #[error("port {port} is published by service {by}: two services cannot publish one port")]
    PortTaken {
        /// The port.
        port: u16,
        /// The service publishing it.
        by: String,
    },
    /// The service's history has no such version.
    #[error("service {name} has no version {version} in its history")]
    VersionNotFound {
        /// The service.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// The task has not been placed on any node yet (so it has no output).
    #[error("task {0} has not run on any node yet")]
    NeverRan(TaskId),
    /// An exec needs the task running.
    #[error("task {id} is {state}: a command can run only in a running task")]
    NotRunning {
        /// The task.
        id: TaskId,
        /// Its state.
        state: cube_core::TaskState,
    },
    /// A node could not be reached for a request made on a user's behalf.
    #[error("node {node} unreachable")]
    NodeUnreachable {
        /// The node.
        node: NodeId,
        /// What the call to it reported.
        #[source]
        source: ClientError,
    },
    /// A node answered a request made on a user's behalf with an API error, passed on as is.
    #[error("{}", .0.message)]
    Remote(ApiError),
    /// No token with this name.
    #[error("token {0} not found")]
    TokenNotFound(String),
    /// A token's name is not valid.
    #[error(
        "`{0}` cannot name a token: use 1 to 63 of a-z, 0-9, `-`, `_`, `.`, starting with a letter or a digit"
    )]
    TokenName(String),
    /// A token of that name exists and is not revoked.
    #[error("token {0} exists: revoke it first to make a new one of that name")]
    TokenTaken(String),
    /// A token's expiry is out of range.
    #[error("an expiry of {0:?} is out of range")]
    TokenExpiry(std::time::Duration),
    /// The OS's random generator failed (a new secret cannot be drawn).
    #[error("the system's random generator failed")]
    Random,
    /// The cluster's CA or a certificate could not be made or read.
    #[error("the cluster's certificate authority failed")]
    Pki(#[from] cube_pki::PkiError),
    /// The cluster port's TLS could not be set up from the CA.
    #[error("cannot set up mutual TLS with the cluster's CA")]
    ClusterTls(#[source] cube_http::tls::TlsError),
    /// The stored CA record has a newer format than this manager knows.
    #[error("the cluster's CA record has format {0}, newer than this manager's; upgrade it")]
    PkiFormat(u32),
    /// The cluster has no CA yet (a highly available cluster before its first leader).
    #[error("the cluster has no certificate authority yet; retry")]
    NoCa,
    /// A join request's secret is not the join token's.
    #[error("wrong join token: get the current one with `cube token rotate worker`")]
    JoinRefused,
    /// A removed node tried to join or renew.
    #[error("node {0} was removed from the cluster; join as a new node (a fresh --data-dir)")]
    NodeRemoved(NodeId),
    /// A node id enrolled with another key than the request's.
    #[error("node {0} enrolled with another key; join as a new node (a fresh --data-dir)")]
    OtherKey(NodeId),
    /// A certificate request is not valid.
    #[error("not a valid certificate request")]
    BadCsr(#[source] cube_pki::PkiError),
    /// A route for nodes was called by a caller that is not one.
    #[error("only a node with its certificate may call this")]
    NotANode,
    /// A node's credentials were used for another node.
    #[error("node {caller} cannot act for node {node}")]
    OtherNode {
        /// The node the credentials name.
        caller: String,
        /// The node the request is about.
        node: NodeId,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// etcd refused or could not be reached (a highly available manager).
    #[error(transparent)]
    Etcd(cube_etcd::EtcdError),
    /// Only the leader does that, and this manager does not lead now.
    #[error("this manager does not lead now")]
    NoLeader,
    /// The client for calls to workers could not be built (bad TLS settings).
    #[error("cannot set up calls to workers")]
    Client(#[source] ClientError),
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
}

fn index_mismatch(name: &str, current: Option<u64>) -> String {
    match current {
        Some(index) => format!("service {name} is at modify index {index}, not the one given"),
        None => format!("service {name} does not exist (check_index must be 0)"),
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::TaskNotFound(id) => ApiError::not_found("task", id),
            ManagerError::NodeNotFound(id) => ApiError::not_found("node", id),
            ManagerError::Conflict(_)
            | ManagerError::NotRunning { .. }
            | ManagerError::PortTaken { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            ManagerError::NeverRan(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            ManagerError::TokenNotFound(name) => ApiError::not_found("token", name),
            ManagerError::TokenName(_) | ManagerError::TokenExpiry(_) => {
                ApiError::new(ErrorCode::InvalidArgument, e.to_string())
            }
            ManagerError::TokenTaken(_) => ApiError::new(ErrorCode::Conflict, e.to_string()),
            ManagerError::ServiceNotFound(name) => ApiError::not_found("service", name),
            ManagerError::DeploymentNotFound(id) => ApiError::not_found("deployment", id),
            ManagerError::VersionNotFound { .. } => {
                ApiError::new(ErrorCode::NotFound, e.to_string())
            }
            ManagerError::IndexMismatch { current, .. } => ApiError {
                code: ErrorCode::Conflict,
                message: e.to_string(),
                details: vec![cube_core::FieldError {
                    field: "check_index".into(),
                    message: format!("current index: {}", current.unwrap_or(0)),
                }],
                index: None,
            },
            ManagerError::DeploymentRefused { .. } => {
                ApiError::new(ErrorCode::Conflict, Chain(&e).to_string())
            }
            ManagerError::NodeUnreachable { .. } => {
                ApiError::new(ErrorCode::Unavailable, Chain(&e).to_string())
            }
            ManagerError::Remote(error) => error,
            ManagerError::Store(StoreError::Fenced) | ManagerError::NoLeader => {
                ApiError::new(ErrorCode::NoLeader, format!("{e}; retry"))
            }
            ManagerError::Etcd(_) => ApiError::new(ErrorCode::Unavailable, Chain(&e).to_string()),
            ManagerError::Store(_) => {
                let message = Chain(&e).to_string();
                tracing::error!(error = %message, "store failure while serving a request");
                ApiError::new(ErrorCode::Unavailable, message)
            }
            ManagerError::JoinRefused => ApiError::new(ErrorCode::Unauthorized, e.to_string()),
            ManagerError::NodeRemoved(_)
            | ManagerError::OtherKey(_)
            | ManagerError::NotANode
            | ManagerError::OtherNode { .. } => ApiError::new(ErrorCode::Forbidden, e.to_string()),
            ManagerError::BadCsr(_) => {
                ApiError::new(ErrorCode::InvalidArgument, Chain(&e).to_string())
            }
            ManagerError::NoCa => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            ManagerError::Client(_)
            | ManagerError::Pki(_)
            | ManagerError::ClusterTls(_)
            | ManagerError::PkiFormat(_)
            | ManagerError::Server(_)
            | ManagerError::Panicked { .. }
            | ManagerError::Random => ApiError::internal(Chain(&e).to_string()),
        }
    }
}

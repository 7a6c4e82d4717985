//! Task drivers: how a task's workload is started, watched, stopped and found again.
//!
//! Two drivers sit behind the [`Driver`] trait: [`docker::DockerDriver`] (a container through the
//! Docker Engine API) and [`process::ProcessDriver`] (a host process in its own process group).
//! [`Drivers`] holds one of each and dispatches on the task's [`DriverKind`] with a plain
//! `match`, so the rest of the worker never names a concrete driver.
//!
//! Every workload's output goes to one log file per task (see [`StartRequest::log_path`]), for
//! both drivers, so logs outlive the container and read the same way whichever driver ran them.

pub mod docker;
pub mod process;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use cube_core::{DriverHandle, DriverKind, HostPort, NodeId, TaskId, TaskSpec};
use tokio::sync::oneshot;

/// Everything a driver needs to start one run of a task.
#[derive(Clone, Debug)]
pub struct StartRequest {
    /// The task.
    pub task_id: TaskId,
    /// Task name (for container names and logs).
    pub name: String,
    /// This node, written into container labels.
    pub node_id: NodeId,
    /// What to run.
    pub spec: TaskSpec,
    /// File that receives the workload's stdout and stderr (appended to across restarts).
    pub log_path: PathBuf,
}

/// A workload that is running.
#[derive(Debug)]
pub struct Started {
    /// How to find it again.
    pub handle: DriverHandle,
    /// Ports it publishes on the host.
    pub host_ports: Vec<HostPort>,
    /// Resolves once when the workload exits.
    pub exit: ExitWatch,
}

/// Resolves when the workload exits. A dropped sender (the watcher itself failed) reads as an
/// exit with an error, never as a hang.
pub type ExitWatch = oneshot::Receiver<ExitInfo>;

/// How a workload ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status, when the workload exited by itself.
    pub code: Option<i64>,
    /// Signal that killed it, when known (process driver).
    pub signal: Option<i32>,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// An error the driver or engine reported about the run.
    pub error: Option<String>,
}

impl ExitInfo {
    /// Exited with status 0 and nothing else went wrong.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed && self.signal.is_none() && self.error.is_none()
    }

    /// One line for the task's `reason` and history.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.oom_killed {
            parts.push("killed: out of memory (OOM)".to_owned());
        }
        match (self.code, self.signal) {
            (_, Some(sig)) => parts.push(format!("killed by signal {sig}")),
            (Some(code), None) => parts.push(format!("exited with code {code}")),
            (None, None) => {}
        }
        if let Some(e) = &self.error {
            parts.push(e.clone());
        }
        if parts.is_empty() { "exited".to_owned() } else { parts.join("; ") }
    }
}

/// Errors of the drivers. A task's `reason` is the error with its causes
/// ([`cube_core::Chain`]), so each variant's words say what failed and its source why.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The image is not present locally and could not be pulled.
    #[error("image {image:?} is not present on this node and could not be pulled")]
    ImageUnavailable {
        /// The image reference.
        image: String,
        /// Why the pull failed.
        #[source]
        source: PullError,
    },
    /// The spec lacks something this driver needs (validation normally catches it).
    #[error("the {driver} driver needs {what}")]
    Incomplete {
        /// Which driver.
        driver: DriverKind,
        /// What is missing, e.g. `an image`.
        what: &'static str,
    },
    /// The program could not be started.
    #[error("cannot run {program:?}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The container engine refused or failed an operation.
    #[error("{operation}")]
    Engine {
        /// What was being done, e.g. `cannot create container`.
        operation: &'static str,
        /// The engine's answer.
        #[source]
        source: EngineError,
    },
    /// The driver cannot be used on this node (no container engine reachable).
    #[error("{driver} driver unavailable")]
    Unavailable {
        /// Which driver.
        driver: DriverKind,
        /// Why (shared: one failed connection explains every task refused for it).
        #[source]
        source: std::sync::Arc<EngineError>,
    },
    /// A file of the task (its log) could not be created or opened.
    #[error("cannot open {}", path.display())]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The OS refused an operation on a process (signal, pidfd).
    #[error("cannot {operation} process {pid}")]
    Process {
        /// What was being done, e.g. `signal`.
        operation: &'static str,
        /// The process (group) id.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The workload did not stop even after it was killed.
    #[error("{what} did not stop")]
    DidNotStop {
        /// The workload, e.g. `process 123`.
        what: String,
    },
    /// A handle of another driver was passed (a bug).
    #[error("the {driver} driver was given a handle it does not own ({handle})")]
    WrongHandle {
        /// Which driver.
        driver: DriverKind,
        /// The handle, shortened.
        handle: String,
    },
    /// The engine ran a command but reported no exit code for it.
    #[error("exec of {command:?} reported no exit code")]
    NoExitCode {
        /// The command.
        command: Vec<String>,
    },
}

/// Why an image pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The engine reported a failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The pull did not finish in time.
    #[error("pull did not finish within {}", cube_core::units::format_duration(*.0))]
    TimedOut(Duration),
}

/// An error from the container engine, in the engine's own words (bollard's display adds a
/// status-code prefix to what the engine said).
#[derive(Debug)]
pub struct EngineError(pub bollard::errors::Error);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                f.write_str(message)
            }
            other => std::fmt::Display::fmt(other, f),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What every driver can do. Methods take `&self` and are safe to call concurrently for
/// different tasks.
pub trait Driver: Send + Sync {
    /// Starts the workload and returns once it runs (after pulling the image, if needed).
    fn start(
        &self,
        req: &StartRequest,
    ) -> impl Future<Output = Result<Started, DriverError>> + Send;

    /// Asks the workload to stop: SIGTERM (or the image's stop signal), then SIGKILL once
    /// `grace` has passed. Returns when it has exited, with how it ended. `exit` is the watch
    /// from [`Started`].
    fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> impl Future<Output = Result<ExitInfo, DriverError>> + Send;

    /// Releases what an exited workload left behind (removes the container).
    fn cleanup(
        &self,
        handle: &DriverHandle,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Whether the workload behind `handle` is still running, and if so a fresh exit watch for
    /// it: how the worker re-finds its tasks after a restart.
    fn recover(
        &self,
        handle: &DriverHandle,
    ) -> impl Future<Output = Result<Option<Started>, DriverError>> + Send;
}

/// The worker's drivers. Docker is optional: a node without an engine still runs processes.
#[derive(Debug)]
pub struct Drivers {
    /// The docker driver, or why it is unavailable.
    pub docker: Result<docker::DockerDriver, std::sync::Arc<EngineError>>,
    /// The process driver.
    pub process: process::ProcessDriver,
}

impl Drivers {
    /// Names of the drivers usable on this node.
    pub fn available(&self) -> Vec<DriverKind> {
        let mut kinds = vec![DriverKind::Process];
        if self.docker.is_ok() {
            kinds.insert(0, DriverKind::Docker);
        }
        kinds
    }

    fn docker(&self) -> Result<&docker::DockerDriver, DriverError> {
        self.docker.as_ref().map_err(|source| DriverError::Unavailable {
            driver: DriverKind::Docker,
            source: std::sync::Arc::clone(source),
        })
    }

    /// Starts a task with the driver its spec names.
    pub async fn start(&self, req: &StartRequest) -> Result<Started, DriverError> {
        match req.spec.driver {
            DriverKind::Docker => self.docker()?.start(req).await,
            DriverKind::Process => self.process.start(req).await,
        }
    }

    /// Stops a workload (see [`Driver::stop`]).
    pub async fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> Result<ExitInfo, DriverError> {
        match handle {
            DriverHandle::Container { .. } => self.docker()?.stop(handle, grace, exit).await,
            DriverHandle::Process { .. } => self.process.stop(handle, grace, exit).await,
        }
    }

    /// Cleans up after an exited workload (see [`Driver::cleanup`]).
    pub async fn cleanup(&self, handle: &DriverHandle) -> Result<(), DriverError> {
        match handle {
            DriverHandle::Container { .. } => self.docker()?.cleanup(handle).await,
            DriverHandle::Process { .. } => self.process.cleanup(handle).await,
        }
    }

    /// Re-finds a workload (see [`Driver::recover`]).
    pub async fn recover(&self, handle: &DriverHandle) -> Result<Option<Started>, DriverError> {
        match handle {
            DriverHandle::Container { .. } => self.docker()?.recover(handle).await,
            DriverHandle::Process { .. } => self.process.recover(handle).await,
        }
    }
}

/// Waits for `exit`, turning a vanished watcher into an error exit.
pub async fn wait_exit(exit: &mut ExitWatch) -> ExitInfo {
    exit.await.unwrap_or_else(|_| ExitInfo {
        error: Some("lost track of the workload (exit watcher stopped)".into()),
        ..ExitInfo::default()
    })
}

//! Task drivers: how a task's workload is started, watched, stopped and found again.
//!
//! Every capability the worker needs from a workload goes through the [`Driver`] trait: start,
//! stop, cleanup, re-finding after a restart, running a command inside (exec health probes),
//! listing what it owns, and re-attaching output. Three drivers implement it:
//! [`docker::DockerDriver`] (a container through the Docker Engine API),
//! [`process::ProcessDriver`] (a host process in its own process group) and, for tests only,
//! [`fake::FakeDriver`] (scripted workloads in memory). [`Drivers`] holds the worker's and
//! dispatches with a plain `match`; nothing outside this module names a concrete driver.
//!
//! Every workload's output goes to one log file per task ([`output`]), whichever driver ran
//! it, so logs outlive the workload and read the same way.

pub(crate) mod docker;
#[cfg(any(test, feature = "fake-driver"))]
pub mod fake;
pub(crate) mod output;
pub(crate) mod process;
pub(crate) mod session;
pub(crate) mod users;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cube_core::{DriverHandle, DriverKind, HostPort, NodeId, TaskId, TaskSpec};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub(crate) use session::{Session, SessionControl, SessionRequest, Source};
use tokio_util::task::TaskTracker;

/// Everything a driver needs to start one run of a task.
#[derive(Clone, Debug)]
pub(crate) struct StartRequest {
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
pub(crate) struct Started {
    /// How to find it again.
    pub handle: DriverHandle,
    /// Ports it publishes on the host.
    pub host_ports: Vec<HostPort>,
    /// Resolves once when the workload exits.
    pub exit: ExitWatch,
}

/// A workload a driver finds labelled for this node (running or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    /// How to reach it.
    pub handle: DriverHandle,
    /// The task it was started for, when its labels say.
    pub task: Option<TaskId>,
    /// Whether it runs.
    pub running: bool,
}

/// Resolves when the workload exits. A dropped sender (the watcher itself failed or the worker
/// is shutting down) reads as an exit with an error, never as a hang.
pub(crate) type ExitWatch = oneshot::Receiver<ExitInfo>;

/// How a workload ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExitInfo {
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
pub(crate) enum DriverError {
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
    /// The worker does not enable this driver (`--driver`).
    #[error(
        "the {driver} driver is not enabled on this node (start the worker with --driver {driver})"
    )]
    Disabled {
        /// Which driver.
        driver: DriverKind,
    },
    /// A process task's user cannot be used.
    #[error("cannot run as user {user:?}: {why}")]
    User {
        /// The user named (or the default).
        user: String,
        /// Why not.
        why: &'static str,
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
    /// The driver cannot run interactive commands (the fake driver).
    #[error("this driver cannot run interactive commands")]
    NoSessions,
    /// A session's stream failed.
    #[error("the session's {what} failed")]
    SessionIo {
        /// Which stream.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why an image pull failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
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
pub(crate) struct EngineError(pub bollard::errors::Error);

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
/// different tasks. The last three have defaults for drivers without the capability.
pub(crate) trait Driver: Send + Sync {
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

    /// Runs `command` in the workload's environment (inside its container; on the host with its
    /// spec's environment for a process) and returns the exit code: exec health probes.
    fn exec(
        &self,
        handle: &DriverHandle,
        spec: &TaskSpec,
        command: &[String],
    ) -> impl Future<Output = Result<i64, DriverError>> + Send;

    /// Starts `req.command` in the workload's environment with its streams attached (an
    /// interactive exec): inside its container, or on the host with a process's environment.
    fn session(
        &self,
        _handle: &DriverHandle,
        _spec: &TaskSpec,
        _req: &SessionRequest,
    ) -> impl Future<Output = Result<Session, DriverError>> + Send {
        async { Err(DriverError::NoSessions) }
    }

    /// The workloads this driver finds labelled for `node`, running or not, so a restarted
    /// worker can remove those no task owns. Drivers that cannot list theirs find none.
    fn owned(&self, _node: NodeId) -> impl Future<Output = Result<Vec<Owned>, DriverError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Resumes copying a re-adopted workload's output to `log_path`, including what it wrote
    /// while no worker was copying. Drivers whose workloads write the file themselves have
    /// nothing to do.
    fn reattach_output(
        &self,
        _handle: &DriverHandle,
        _log_path: &Path,
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        async { Ok(()) }
    }
}

/// Helper tasks of the drivers (exit watchers, output copiers): tracked, and stopped only after
/// the runners that wait on them have returned, so a shutdown never reads as a workload's exit.
#[derive(Clone, Debug, Default)]
pub(crate) struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Runs `f` until it ends or the helpers are stopped.
    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = f => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Runs the helper `f` makes, to its end: given the token cancelled when the helpers must
    /// stop, it finishes its work (saves a position) and returns. Not cut off mid-way, as a
    /// helper of [`Background::spawn`] is.
    pub(crate) fn spawn_graceful<F>(&self, f: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(f(self.stop.clone()));
    }

    /// Stops every helper and waits for them.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The docker driver when an engine answered at start-up, or why none did: a node without an
/// engine still runs processes.
#[derive(Debug)]
enum DockerSlot {
    Ready(docker::DockerDriver),
    Unavailable(Arc<EngineError>),
}

#[derive(Debug)]
enum Set {
    /// This host's engine and processes.
    Host { docker: DockerSlot, process: process::ProcessDriver },
    /// Scripted workloads for every task, whatever its driver kind (tests).
    #[cfg(any(test, feature = "fake-driver"))]
    Fake(fake::FakeDriver),
}

/// The worker's drivers, dispatching on the task's driver kind or the handle's.
#[derive(Debug)]
pub(crate) struct Drivers {
    set: Set,
    background: Background,
    /// Whether new process tasks may start (`--driver process`). The process driver exists
    /// either way, so a worker restarted without the flag still watches and stops the
    /// processes it started before.
    process_enabled: bool,
}

impl Drivers {
    /// This host's drivers: docker when an engine answers (a pull may take `pull_timeout`),
    /// and processes when `process` says as whom (`None`: the process driver is off). With
    /// `ingress` (the address of the node's ingress), tasks are told where it is: processes
    /// at that address, containers at their bridge's gateway.
    pub(crate) async fn host(
        pull_timeout: Duration,
        pulls: crate::metrics::Pulls,
        ingress: Option<IpAddr>,
        process: Option<users::RunAs>,
    ) -> Self {
        let background = Background::default();
        let connected = docker::DockerDriver::connect(
            pull_timeout,
            background.clone(),
            pulls,
            ingress.is_some(),
        )
        .await;
        let docker = match connected {
            Ok(d) => {
                tracing::info!("docker driver ready");
                DockerSlot::Ready(d)
            }
            Err(e) => {
                let reason = cube_core::Chain(&e);
                if process.is_some() {
                    tracing::warn!(%reason, "docker driver unavailable; only process tasks can run");
                } else {
                    tracing::warn!(
                        %reason,
                        "docker driver unavailable and the process driver is off (--driver process): this node can run no tasks"
                    );
                }
                DockerSlot::Unavailable(Arc::new(e))
            }
        };
        let process_enabled = process.is_some();
        let run_as = process.unwrap_or_else(users::RunAs::unused);
        let process = process::ProcessDriver::new(background.clone(), ingress, run_as);
        Self { set: Set::Host { docker, process }, background, process_enabled }
    }

    /// The address containers reach the node's ingress at (their bridge's gateway), which the
    /// ingress listens on too; `None` without docker or without an ingress.
    pub(crate) fn container_ingress(&self) -> Option<IpAddr> {
        match &self.set {
            Set::Host { docker: DockerSlot::Ready(d), .. } => d.gateway(),
            _ => None,
        }
    }

    /// Scripted workloads in place of every driver.
    #[cfg(any(test, feature = "fake-driver"))]
    pub(crate) fn fake(driver: fake::FakeDriver, process_enabled: bool) -> Self {
        Self { set: Set::Fake(driver), background: Background::default(), process_enabled }
    }

    /// Names of the drivers usable on this node.
    pub(crate) fn available(&self) -> Vec<DriverKind> {
        let docker = match &self.set {
            Set::Host { docker, .. } => matches!(docker, DockerSlot::Ready(_)),
            #[cfg(any(test, feature = "fake-driver"))]
            Set::Fake(_) => true,
        };
        let docker = docker.then_some(DriverKind::Docker);
        docker.into_iter().chain(self.process_enabled.then_some(DriverKind::Process)).collect()
    }

    /// Stops the drivers' helper tasks and waits for them (after every runner returned).
    pub(crate) async fn shutdown(&self) {
        self.background.shutdown().await;
    }

    /// Starts a task with the driver its spec names.
    pub(crate) async fn start(&self, req: &StartRequest) -> Result<Started, DriverError> {
        if req.spec.driver == DriverKind::Process && !self.process_enabled {
            return Err(DriverError::Disabled { driver: DriverKind::Process });
        }
        match (&self.set, req.spec.driver) {
            (Set::Host { docker, .. }, DriverKind::Docker) => ready(docker)?.start(req).await,
            (Set::Host { process, .. }, DriverKind::Process) => process.start(req).await,
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.start(req).await,
        }
    }

    /// Stops a workload (see [`Driver::stop`]).
    pub(crate) async fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> Result<ExitInfo, DriverError> {
        match (&self.set, handle) {
            (Set::Host { docker, .. }, DriverHandle::Container { .. }) => {
                ready(docker)?.stop(handle, grace, exit).await
            }
            (Set::Host { process, .. }, DriverHandle::Process { .. }) => {
                process.stop(handle, grace, exit).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.stop(handle, grace, exit).await,
        }
    }

    /// Cleans up after an exited workload (see [`Driver::cleanup`]).
    pub(crate) async fn cleanup(&self, handle: &DriverHandle) -> Result<(), DriverError> {
        match (&self.set, handle) {
            (Set::Host { docker, .. }, DriverHandle::Container { .. }) => {
                ready(docker)?.cleanup(handle).await
            }
            (Set::Host { process, .. }, DriverHandle::Process { .. }) => {
                process.cleanup(handle).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.cleanup(handle).await,
        }
    }

    /// Re-finds a workload (see [`Driver::recover`]).
    pub(crate) async fn recover(
        &self,
        handle: &DriverHandle,
    ) -> Result<Option<Started>, DriverError> {
        match (&self.set, handle) {
            (Set::Host { docker, .. }, DriverHandle::Container { .. }) => {
                ready(docker)?.recover(handle).await
            }
            (Set::Host { process, .. }, DriverHandle::Process { .. }) => {
                process.recover(handle).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.recover(handle).await,
        }
    }

    /// Starts an interactive command in a workload's environment (see [`Driver::session`]).
    pub(crate) async fn session(
        &self,
        handle: &DriverHandle,
        spec: &TaskSpec,
        req: &SessionRequest,
    ) -> Result<Session, DriverError> {
        match (&self.set, spec.driver) {
            (Set::Host { docker, .. }, DriverKind::Docker) => {
                ready(docker)?.session(handle, spec, req).await
            }
            (Set::Host { process, .. }, DriverKind::Process) => {
                process.session(handle, spec, req).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.session(handle, spec, req).await,
        }
    }

    /// Runs a command in a workload's environment (see [`Driver::exec`]).
    pub(crate) async fn exec(
        &self,
        handle: &DriverHandle,
        spec: &TaskSpec,
        command: &[String],
    ) -> Result<i64, DriverError> {
        match (&self.set, handle) {
            (Set::Host { docker, .. }, DriverHandle::Container { .. }) => {
                ready(docker)?.exec(handle, spec, command).await
            }
            (Set::Host { process, .. }, DriverHandle::Process { .. }) => {
                process.exec(handle, spec, command).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.exec(handle, spec, command).await,
        }
    }

    /// Every workload labelled for `node`, of every available driver (see [`Driver::owned`]).
    pub(crate) async fn owned(&self, node: NodeId) -> Result<Vec<Owned>, DriverError> {
        match &self.set {
            Set::Host { docker, process, .. } => {
                let mut all = process.owned(node).await?;
                if let DockerSlot::Ready(docker) = docker {
                    all.extend(docker.owned(node).await?);
                }
                Ok(all)
            }
            #[cfg(any(test, feature = "fake-driver"))]
            Set::Fake(fake) => fake.owned(node).await,
        }
    }

    /// Resumes copying a re-adopted workload's output (see [`Driver::reattach_output`]).
    pub(crate) async fn reattach_output(
        &self,
        handle: &DriverHandle,
        log_path: &Path,
    ) -> Result<(), DriverError> {
        match (&self.set, handle) {
            (Set::Host { docker, .. }, DriverHandle::Container { .. }) => {
                ready(docker)?.reattach_output(handle, log_path).await
            }
            (Set::Host { process, .. }, DriverHandle::Process { .. }) => {
                process.reattach_output(handle, log_path).await
            }
            #[cfg(any(test, feature = "fake-driver"))]
            (Set::Fake(fake), _) => fake.reattach_output(handle, log_path).await,
        }
    }
}

fn ready(slot: &DockerSlot) -> Result<&docker::DockerDriver, DriverError> {
    match slot {
        DockerSlot::Ready(d) => Ok(d),
        DockerSlot::Unavailable(source) => {
            Err(DriverError::Unavailable { driver: DriverKind::Docker, source: Arc::clone(source) })
        }
    }
}

/// Waits for `exit`, turning a vanished watcher into an error exit.
pub(crate) async fn wait_exit(exit: &mut ExitWatch) -> ExitInfo {
    exit.await.unwrap_or_else(|_| ExitInfo {
        error: Some("lost track of the workload (exit watcher stopped)".into()),
        ..ExitInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_graceful_helper_finishes_its_work_when_the_helpers_stop() {
        let background = Background::default();
        let saved = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&saved);
        background.spawn_graceful(|stopping| async move {
            stopping.cancelled().await;
            // Work after the signal (a log cursor's write) must still happen.
            tokio::task::yield_now().await;
            flag.store(true, Ordering::SeqCst);
        });
        background.shutdown().await;
        assert!(saved.load(Ordering::SeqCst), "the helper was cut off before it saved");
    }
}

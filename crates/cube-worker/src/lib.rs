//! Cube's worker agent: runs tasks on this node and reports on them.
//!
//! - [`driver`]: the [`driver::Driver`] trait and the docker and process drivers.
//! - [`agent`]: the task table (accept, stop, list) with write-through persistence.
//! - `runner`: one supervisor per task (start, watch, restart, stop).
//! - [`metrics`]: host metrics from `/proc`.
//! - [`api`]: the HTTP API.
//!
//! [`start`] wires them together; the `cube worker` command calls it.

pub mod agent;
pub mod api;
pub mod driver;
mod health;
pub mod logs;
pub mod metrics;
pub mod reporter;
mod runner;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use cube_core::{Bytes, InvalidTransition, Millicores, NodeId, Resources, TaskId};
use cube_store::{Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use agent::Agent;

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The id is taken by a task with a different spec.
    #[error("task {0} already exists with a different spec")]
    Conflict(TaskId),
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
    Host(#[source] metrics::HostError),
    /// The API cannot listen on its address.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The API server failed while serving.
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
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

/// How to run a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Node name shown in listings (default: the host name).
    pub name: String,
    /// Directory for the node id, task logs and (with a durable store) the database.
    pub data_dir: PathBuf,
    /// Address the API listens on. Keep it on loopback unless you mean to expose the node:
    /// the API starts containers, which is root on this host.
    pub listen: SocketAddr,
    /// How often host metrics are sampled.
    pub stats_interval: Duration,
    /// Longest time an image pull may take before the task fails.
    pub pull_timeout: Duration,
    /// Manager to join, if any (a standalone worker takes tasks directly).
    pub manager: Option<String>,
    /// Address the manager should use to reach this worker [default: `http://<listen>`].
    pub advertise: Option<String>,
    /// Labels for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// Resources offered to tasks; each unset part defaults to what the host has.
    pub capacity: CapacityOverride,
    /// Finished tasks and their logs are deleted this long after they finished (`None`: kept
    /// forever).
    pub gc_after: Option<Duration>,
    /// Token and TLS of this API and of the calls to the manager.
    pub security: cube_http::Security,
}

/// Resources a node offers, when they should differ from the host's (e.g. to keep some for
/// the system, or to simulate a small node in tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct CapacityOverride {
    /// CPU offered [default: all cores].
    pub cpu: Option<Millicores>,
    /// Memory offered [default: `MemTotal`].
    pub memory: Option<Bytes>,
    /// Disk offered [default: size of the data directory's filesystem].
    pub disk: Option<Bytes>,
}

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    /// The address the API is bound to (useful with port 0).
    pub addr: SocketAddr,
    /// The task table.
    pub agent: Arc<Agent>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Worker {
    /// Waits for the server to stop (after the shutdown token is cancelled) and for every task
    /// runner to return. Workloads keep running.
    pub async fn wait(self) -> Result<(), WorkerError> {
        let served = self.server.await;
        self.agent.wait_runners().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WorkerError::Serve(e)),
            Err(source) => Err(WorkerError::Panicked { what: "the API server", source }),
        }
    }
}

/// Starts a worker: node identity, drivers, metrics sampler and the API server. Everything stops
/// when `shutdown` is cancelled.
pub async fn start(
    config: WorkerConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<Worker, WorkerError> {
    tokio::fs::create_dir_all(&config.data_dir).await.map_err(|source| WorkerError::File {
        operation: "cannot create data dir",
        path: config.data_dir.clone(),
        source,
    })?;
    let node_id = load_or_create_node_id(&config.data_dir).await?;

    let docker = driver::docker::DockerDriver::connect(config.pull_timeout).await.map_err(Arc::new);
    match &docker {
        Ok(_) => tracing::info!("docker driver ready"),
        Err(e) => {
            let reason = cube_core::Chain(&**e);
            tracing::warn!(%reason, "docker driver unavailable; only process tasks can run")
        }
    }
    let drivers = driver::Drivers { docker, process: driver::process::ProcessDriver::new() };

    let host =
        metrics::start_sampler(config.data_dir.clone(), config.stats_interval, shutdown.clone())
            .await
            .map_err(WorkerError::Host)?;
    let available_drivers = drivers.available();
    let tasks = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            cube_store::load_json::<cube_core::Task>(store.as_ref(), cube_store::Table::Tasks)
        })
        .await
        .map_err(|source| WorkerError::Panicked { what: "loading tasks", source })??
    };
    let agent = Agent::new(
        node_id,
        config.name.clone(),
        config.data_dir.clone(),
        drivers,
        store,
        shutdown.clone(),
    );

    let count = tasks.len();
    let r = agent.recover(tasks.into_iter().map(|(_, t)| t).collect()).await;
    if count > 0 || r.unowned > 0 {
        tracing::info!(
            tasks = count,
            adopted = r.adopted,
            vanished = r.vanished,
            restarted = r.restarted,
            unowned = r.unowned,
            "recovered state from the previous run"
        );
    }

    let listener = cube_http::server::bind(config.listen)
        .await
        .map_err(|source| WorkerError::Bind { addr: config.listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Bind { addr: config.listen, source })?;
    let router = api::router(api::ApiState {
        agent: Arc::clone(&agent),
        host: host.clone(),
        token: config.security.token.clone(),
    });
    let server = tokio::spawn(cube_http::server::serve(
        listener,
        router,
        shutdown.clone(),
        config.security.tls.clone(),
    ));
    tracing::info!(%addr, node = %node_id, name = %config.name, "worker API listening");

    if let Some(retain) = config.gc_after {
        let keep_unreported = config.manager.is_some();
        tokio::spawn(gc_loop(Arc::clone(&agent), retain, keep_unreported, shutdown.clone()));
    }
    if let Some(manager) = config.manager.clone() {
        let snapshot = host.borrow().clone();
        let capacity = Resources {
            cpu: config.capacity.cpu.unwrap_or(Millicores::cores(u64::from(snapshot.cpu.cores))),
            memory: config.capacity.memory.unwrap_or(Bytes(snapshot.memory.total_bytes)),
            disk: config.capacity.disk.unwrap_or(Bytes(snapshot.disk.total_bytes)),
        };
        let membership = reporter::Membership {
            manager,
            advertise: config
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{}://{addr}", config.security.scheme())),
            labels: config.labels.clone(),
            capacity,
            drivers: available_drivers,
            security: config.security.clone(),
        };
        tokio::spawn(reporter::run(Arc::clone(&agent), membership, host, shutdown));
    }
    Ok(Worker { addr, agent, server })
}

/// Deletes finished tasks and their logs once they are older than `retain`.
async fn gc_loop(
    agent: Arc<Agent>,
    retain: Duration,
    keep_unreported: bool,
    shutdown: CancellationToken,
) {
    let mut ticker = cube_rt::Ticker::new(cube_core::task::gc_period(retain), shutdown);
    while ticker.tick().await {
        // A retention reaching before the representable past collects nothing.
        if let Ok(cutoff) = jiff::Timestamp::now().checked_sub(retain) {
            agent.collect_garbage(cutoff, keep_unreported).await;
        }
    }
}

/// Reads the node id from `<data_dir>/node-id`, creating it on first start, so a node keeps its
/// identity across restarts (the book's random name per run lost it).
async fn load_or_create_node_id(data_dir: &Path) -> Result<NodeId, WorkerError> {
    let path = data_dir.join("node-id");
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => text.trim().parse().map_err(|source| WorkerError::BadNodeId { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId::from_uuid(uuid::Uuid::now_v7());
            tokio::fs::write(&path, format!("{id}\n")).await.map_err(|source| {
                WorkerError::File { operation: "cannot write", path: path.clone(), source }
            })?;
            Ok(id)
        }
        Err(source) => Err(WorkerError::File { operation: "cannot read", path, source }),
    }
}

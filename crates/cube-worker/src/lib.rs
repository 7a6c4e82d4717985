//! Cube's worker agent: runs tasks on this node and reports on them.
//!
//! - `agent`: accepts tasks, stops them, takes them back after a restart, forgets finished
//!   ones; `table`: the task table with write-through persistence.
//! - `runner`: one supervisor per task (start, watch, health, restart with backoff, stop);
//!   `health`: the probes, reporting changes to the runner.
//! - `driver`: the `Driver` trait and the docker, process and (tests only) fake drivers.
//! - `reporter`: registration and heartbeats; `host`: host figures; `api` and `logs`: HTTP.
//! - `ingress`: keeps the node's ingress (`cube_ingress`) on the manager's endpoints.
//!
//! [`start`] wires them together on a [`Platform`]; the `cube worker` command calls it.
//! Imports point one way: agent → runner → health → driver, all of them → table.

mod agent;
mod api;
mod driver;
mod enrol;
mod epoch;
mod error;
mod exec;
mod health;
mod host;
mod ingress;
mod logs;
mod metrics;
mod reporter;
mod runner;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cube_core::{Bytes, DriverKind, Millicores, NodeId, Resources, Task};
use cube_http::server::{Listener, Server};
use cube_rt::{Clock, Ticker};
use cube_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[cfg(any(test, feature = "fake-driver"))]
pub use driver::fake::FakeDriver;
pub use enrol::Join;
pub use error::{HostError, WorkerError};

use agent::Agent;
use driver::Drivers;
use driver::output::TaskFiles;
use host::HostSource;

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
    /// Also serve `GET /metrics` here, without the token (off by default).
    pub metrics_listen: Option<SocketAddr>,
    /// The address the ingress listens on for published service ports [default: the API's
    /// listen address, the one already chosen to expose this node].
    pub ingress_ip: Option<std::net::IpAddr>,
    /// Token and TLS of this API and of the calls to the manager.
    pub security: cube_http::Security,
    /// Join a cluster by certificate (`--join`): mutual TLS with its managers, which are then
    /// the only callers this worker's API accepts. Takes the place of `manager`.
    pub join: Option<Join>,
    /// Whether process tasks may run here (`--driver process`; off by default): a process
    /// task is code on this host, with only a user to stand between it and the host.
    pub process_driver: bool,
    /// The host user process tasks run as when the worker runs as root and the spec names no
    /// allowed user (`--process-user`, default `nobody`; it must exist).
    pub process_user: String,
    /// What tasks may ask for beyond the defaults (`--allow-*`): advertised to the manager,
    /// which places accordingly, and checked again here when a task arrives.
    pub allows: cube_core::Allows,
}

impl WorkerConfig {
    /// A worker named `name` keeping its state in `data_dir`, listening on a free loopback
    /// port, standalone, offering the whole host, keeping finished tasks for a day.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            manager: None,
            advertise: None,
            labels: BTreeMap::new(),
            capacity: CapacityOverride::default(),
            gc_after: Some(Duration::from_secs(24 * 3600)),
            security: cube_http::Security::default(),
            join: None,
            metrics_listen: None,
            ingress_ip: None,
            process_driver: false,
            process_user: DEFAULT_PROCESS_USER.to_owned(),
            allows: cube_core::Allows::default(),
        }
    }
}

/// The unprivileged user process tasks run as by default.
pub const DEFAULT_PROCESS_USER: &str = "nobody";

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

/// What a worker runs on: its drivers, where its host figures come from, and its clock.
#[derive(Clone, Debug)]
pub struct Platform {
    drivers: DriverChoice,
    host: HostSource,
    clock: Clock,
}

#[derive(Clone, Debug)]
enum DriverChoice {
    Host {
        pull_timeout: Duration,
    },
    #[cfg(any(test, feature = "fake-driver"))]
    Fake(FakeDriver),
}

impl Platform {
    /// This host: the docker driver when an engine answers (a pull may take `pull_timeout`)
    /// and the process driver, host figures read from `/proc` every `stats_interval`, and the
    /// system clock.
    pub fn host(pull_timeout: Duration, stats_interval: Duration) -> Self {
        Self {
            drivers: DriverChoice::Host { pull_timeout },
            host: HostSource::Sampled(stats_interval),
            clock: Clock::system(),
        }
    }

    /// Scripted workloads for every task ([`FakeDriver`]), the figures of an idle machine with
    /// 4 cores, 8 GiB of memory and 100 GiB of disk, and `clock` (which may follow a paused
    /// tokio clock). For tests only: only compiled with the `fake-driver` feature.
    #[cfg(any(test, feature = "fake-driver"))]
    pub fn fake(driver: FakeDriver, clock: Clock) -> Self {
        let host = host::HostSnapshot::idle(4, Bytes::gib(8), Bytes::gib(100), clock.now());
        Self { drivers: DriverChoice::Fake(driver), host: HostSource::Fixed(host), clock }
    }
}

/// A started worker.
#[derive(Debug)]
pub struct RunningWorker {
    agent: Arc<Agent>,
    drivers: Arc<Drivers>,
    server: Server,
    metrics_server: Option<Server>,
    /// The ingress, with a manager.
    ingress: Option<cube_ingress::Ingress>,
    /// The reporter, the GC loop and the host sampler.
    background: TaskTracker,
}

impl RunningWorker {
    /// The address the API is bound to (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.agent.node_id()
    }

    /// Drivers usable on this node.
    pub fn drivers(&self) -> Vec<DriverKind> {
        self.agent.drivers()
    }

    /// Waits for the server to stop (after the shutdown token is cancelled), then for every
    /// task runner and background loop to return, then stops the drivers' helpers. Workloads
    /// keep running.
    pub async fn wait(self) -> Result<(), WorkerError> {
        let served = self.server.wait().await;
        if let Some(metrics) = self.metrics_server {
            metrics.wait().await?;
        }
        self.agent.wait_runners().await;
        self.background.close();
        self.background.wait().await;
        if let Some(ingress) = self.ingress {
            ingress.wait().await;
        }
        self.drivers.shutdown().await;
        Ok(served?)
    }
}

/// Starts a worker on `platform`: node identity, drivers, host figures, the tasks `store`
/// holds, and the API server. Everything stops when `shutdown` is cancelled.
pub async fn start(
    config: WorkerConfig,
    platform: Platform,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<RunningWorker, WorkerError> {
    tokio::fs::create_dir_all(&config.data_dir).await.map_err(|source| WorkerError::File {
        operation: "cannot create data dir",
        path: config.data_dir.clone(),
        source,
    })?;
    let node_id = load_or_create_node_id(&config.data_dir).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    // A worker joined to a manager runs an ingress, on this address.
    let joins = config.manager.is_some() || config.join.is_some();
    let ingress_ip = joins.then(|| config.ingress_ip.unwrap_or(config.listen.ip()));
    let mut allows = config.allows.clone();
    let drivers = Arc::new(match platform.drivers {
        DriverChoice::Host { pull_timeout } => {
            let run_as =
                if config.process_driver {
                    let run_as = driver::users::RunAs::for_this_process(&config.process_user)
                        .map_err(|e| WorkerError::ProcessUser {
                            user: config.process_user.clone(),
                            why: cube_core::Chain(&e).to_string(),
                        })?;
                    // Naming the default user explicitly needs no permission.
                    if let Some(default) = run_as.default_user()
                        && !allows.users.iter().any(|u| u == default)
                    {
                        allows.users.insert(0, default.to_owned());
                    }
                    Some(run_as)
                } else {
                    None
                };
            Drivers::host(pull_timeout, metrics.pulls.clone(), ingress_ip, run_as).await
        }
        #[cfg(any(test, feature = "fake-driver"))]
        DriverChoice::Fake(fake) => Drivers::fake(fake, config.process_driver),
    });
    let background = TaskTracker::new();
    let (host, sampler) = host::start(platform.host, config.data_dir.clone(), shutdown.clone())
        .await
        .map_err(WorkerError::Host)?;
    background.spawn(sampler);

    let tasks: Vec<Task> = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            cube_store::load_json::<Task>(store.as_ref(), cube_store::Table::Tasks)
        })
        .await
        .map_err(|source| WorkerError::Panicked { what: "loading tasks", source })??
        .into_iter()
        .map(|(_, t)| t)
        .collect()
    };
    let epochs = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || epoch::Epochs::load(store)).await.map_err(
            |source| WorkerError::Panicked { what: "loading the leader epoch", source },
        )??
    };
    let epochs = Arc::new(epochs);
    let ctx = Arc::new(runner::Context {
        node_id,
        drivers: Arc::clone(&drivers),
        files: TaskFiles::new(&config.data_dir),
        http: health::http_client(),
        clock: platform.clock.clone(),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
        allows: allows.clone(),
    });
    let agent = Agent::new(config.name.clone(), ctx, table::TaskTable::new(store));

    let count = tasks.len();
    let r = agent.recover(tasks).await;
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

    // A worker that joins by certificate calls its managers and serves them over mutual TLS.
    let mut security = config.security.clone();
    let mut manager = config.manager.clone();
    if let Some(join) = &config.join {
        let (tls, key) = enrol::identity(&config.data_dir, node_id, join, &shutdown).await?;
        let server = tls
            .server(cube_http::mtls::Clients::ManagersOnly, cube_http::mtls::Revocations::default())
            .map_err(WorkerError::ClusterTls)?;
        security.tls = Some(server);
        security.cluster = Some(tls.clone());
        manager = Some(join.bases());
        background.spawn(enrol::renew_loop(
            tls,
            key,
            config.data_dir.clone(),
            node_id,
            join.clone(),
            shutdown.clone(),
        ));
    }
    let listener = Listener::bind(config.listen).await?.with_limits(security.limits);
    let addr = listener.addr();
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(Listener::bind(at).await?),
        None => None,
    };
    let router = api::router(api::ApiState {
        agent: Arc::clone(&agent),
        host: host.clone(),
        token: security.token.clone(),
        metrics: Arc::clone(&metrics),
        epochs: Arc::clone(&epochs),
    });
    let server = listener.spawn(router, shutdown.clone(), security.tls.clone());
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = %l.addr(), "serving /metrics without a token");
        l.spawn(api::metrics_router(Arc::clone(&agent), metrics), shutdown.clone(), None)
    });
    tracing::info!(%addr, node = %node_id, name = %config.name, "worker API listening");

    if let Some(retain) = config.gc_after {
        let keep_unreported = joins;
        let clock = platform.clock.clone();
        background.spawn(gc_loop(
            Arc::clone(&agent),
            retain,
            keep_unreported,
            clock,
            shutdown.clone(),
        ));
    }
    let mut ingress_handle = None;
    if let Some(manager) = manager {
        let snapshot = host.borrow().clone();
        let capacity = Resources {
            cpu: config.capacity.cpu.unwrap_or(Millicores::cores(u64::from(snapshot.cpu.cores))),
            memory: config.capacity.memory.unwrap_or(Bytes(snapshot.memory.total_bytes)),
            disk: config.capacity.disk.unwrap_or(Bytes(snapshot.disk.total_bytes)),
        };
        let ip = ingress_ip.unwrap_or(addr.ip());
        let ingress = cube_ingress::Ingress::with_container_address(
            node_id,
            ip,
            drivers.container_ingress(),
            shutdown.clone(),
        );
        let membership = reporter::Membership {
            manager,
            advertise: config
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{}://{addr}", security.scheme())),
            labels: config.labels.clone(),
            capacity,
            drivers: agent.drivers(),
            allows,
            security: security.clone(),
            ingress: Some(ingress.clone()),
            epochs,
        };
        match membership.security.client(&membership.manager, ingress::FEED_TIMEOUT) {
            Ok(client) => {
                background.spawn(ingress::follow(
                    ingress.clone(),
                    client,
                    node_id,
                    shutdown.clone(),
                ));
                ingress_handle = Some(ingress);
            }
            Err(e) => tracing::error!(error = %e, "cannot build the manager client; no ingress"),
        }
        background.spawn(disconnect_loop(Arc::clone(&agent), shutdown.clone()));
        background.spawn(reporter::run(Arc::clone(&agent), membership, host, shutdown));
    }
    Ok(RunningWorker {
        agent,
        drivers,
        server,
        metrics_server,
        ingress: ingress_handle,
        background,
    })
}

/// How often the worker looks for tasks to stop because the manager is out of reach.
const DISCONNECT_CHECK: Duration = Duration::from_millis(250);

/// Stops tasks whose `on_disconnect` says so, once the manager has been out of reach that long.
async fn disconnect_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(DISCONNECT_CHECK, shutdown);
    while ticker.tick().await {
        agent.stop_disconnected().await;
    }
}

/// Deletes finished tasks and their logs once they are older than `retain`.
async fn gc_loop(
    agent: Arc<Agent>,
    retain: Duration,
    keep_unreported: bool,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(cube_rt::sweep_period(retain), shutdown);
    while ticker.tick().await {
        // A retention reaching before the representable past collects nothing.
        if let Ok(cutoff) = clock.now().checked_sub(retain) {
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

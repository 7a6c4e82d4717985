//! An in-process cluster: one manager and N workers in the test's own process, on the fake
//! driver and in-memory stores, talking real HTTP over loopback, on a virtual clock.
//!
//! **Time.** Tests run on tokio's paused clock (`#[tokio::test(start_paused = true)]`). The
//! cluster then turns tokio's auto-advance off (auto-advance would jump to the next timer
//! whenever the runtime waits on a socket, so a request would seem to take seconds) and moves
//! time itself, in steps, only in [`Cluster::pass`], [`Cluster::wait_for`] and
//! [`Cluster::drive`]: each step advances the clock and then lets every task run, so requests
//! in flight finish "at once". Wall-clock timestamps follow the same clock
//! ([`cube_rt::Clock::following_tokio`]), so a 24 h retention passes in milliseconds.
//!
//! **Nodes.** Each worker has its own [`FakeDriver`], store and data directory, kept across
//! [`Cluster::stop_worker`] and [`Cluster::start_worker`]: its workloads outlive it, as
//! containers outlive a killed worker, and the next worker on that node finds them again.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cube_api::types::TaskView;
use cube_core::{NodeId, SchedulerKind, TaskId, TaskSpec};
use cube_http::client::Client;
use cube_manager::{ManagerConfig, RunningManager};
use cube_rt::Clock;
use cube_store::MemoryStore;
use cube_worker::{CapacityOverride, FakeDriver, Platform, RunningWorker, WorkerConfig};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

/// Tasks that may run between two steps of the clock: enough for every HTTP exchange in
/// flight to finish (each hop over loopback takes one).
const SETTLE_YIELDS: usize = 32;

/// How a [`Cluster`] is set up.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Workers (named `w0`, `w1`, ...).
    pub workers: usize,
    /// Placement strategy.
    pub scheduler: SchedulerKind,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is down.
    pub node_ttl: Duration,
    /// Finished tasks are forgotten this long after they finished (manager and workers).
    pub gc_after: Option<Duration>,
    /// What each worker offers.
    pub capacity: CapacityOverride,
    /// How far virtual time moves per step.
    pub step: Duration,
    /// How much of the manager's event history is kept.
    pub history: cube_manager::History,
}

impl Default for ClusterConfig {
    /// Three workers of 2 cores and 1 GiB, `spread`, heartbeats every second, a 5 s TTL, no
    /// garbage collection, steps of 50 ms.
    fn default() -> Self {
        Self {
            workers: 3,
            scheduler: SchedulerKind::Spread,
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            gc_after: None,
            capacity: CapacityOverride {
                cpu: Some(cube_core::Millicores::cores(2)),
                memory: Some(cube_core::Bytes::gib(1)),
                disk: Some(cube_core::Bytes::gib(10)),
            },
            step: Duration::from_millis(50),
            history: cube_manager::History::default(),
        }
    }
}

/// A manager and its workers in this process.
pub struct Cluster {
    config: ClusterConfig,
    clock: Clock,
    client: Client,
    manager: Option<(RunningManager, CancellationToken)>,
    /// The manager's store and configuration, kept for [`Cluster::restart_manager`].
    manager_store: Arc<MemoryStore>,
    manager_config: ManagerConfig,
    nodes: Vec<Node>,
    /// Keeps tokio's auto-advance off while the cluster lives.
    _frozen: Frozen,
    /// Holds the workers' data directories.
    _dir: tempfile::TempDir,
}

/// One worker node: what survives its worker process.
struct Node {
    name: String,
    fake: FakeDriver,
    store: Arc<MemoryStore>,
    data_dir: PathBuf,
    id: Option<NodeId>,
    running: Option<(RunningWorker, CancellationToken)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("manager", &self.client.base())
            .field("workers", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// While alive, a blocking task runs, which keeps tokio from advancing a paused clock by
/// itself (documented in `tokio::time::pause`).
struct Frozen {
    release: Option<std::sync::mpsc::Sender<()>>,
}

impl Frozen {
    fn new() -> Self {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            // Returns once the sender is dropped.
            let _ = wait.recv();
        });
        Self { release: Some(release) }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release.take();
    }
}

impl Cluster {
    /// Starts a cluster with `workers` workers and the other defaults, and waits until every
    /// worker has registered. Call from a test on tokio's paused clock.
    pub async fn start(workers: usize) -> Self {
        Self::with(ClusterConfig { workers, ..ClusterConfig::default() }).await
    }

    /// Starts a cluster set up by `config` and waits until every worker has registered.
    pub async fn with(config: ClusterConfig) -> Self {
        let frozen = Frozen::new();
        // A fixed origin, so timestamps read the same in every run.
        let start = Timestamp::from_second(1_893_456_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let clock = Clock::following_tokio(start);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let shutdown = CancellationToken::new();
        let manager_config = ManagerConfig {
            name: "testkit".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            scheduler: config.scheduler,
            heartbeat_interval: config.heartbeat_interval,
            node_ttl: config.node_ttl,
            gc_after: config.gc_after,
            history: config.history,
            ..ManagerConfig::default()
        };
        let manager_store = Arc::new(MemoryStore::new());
        let manager = cube_manager::start(
            manager_config.clone(),
            Arc::clone(&manager_store) as _,
            clock.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("the manager did not start: {}", cube_core::Chain(&e)));
        let client = Client::new(format!("http://{}", manager.addr), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("no client: {e}"));
        let nodes = (0..config.workers)
            .map(|i| {
                let name = format!("w{i}");
                Node {
                    data_dir: dir.path().join(&name),
                    name,
                    fake: FakeDriver::new(),
                    store: Arc::new(MemoryStore::new()),
                    id: None,
                    running: None,
                }
            })
            .collect();
        let mut cluster = Self {
            config,
            clock,
            client,
            manager: Some((manager, shutdown)),
            manager_store,
            manager_config,
            nodes,
            _frozen: frozen,
            _dir: dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_worker(i).await;
        }
        let expected = cluster.nodes.len();
        cluster
            .wait_for(Duration::from_secs(10), "every worker registered", |c| async move {
                let nodes = c.nodes().await.ok()?;
                (nodes.len() == expected).then_some(())
            })
            .await;
        cluster
    }

    /// The running manager (for figures the API does not show).
    pub fn manager(&self) -> &Arc<cube_manager::Manager> {
        match &self.manager {
            Some((m, _)) => &m.manager,
            None => panic!("the manager is not running"),
        }
    }

    /// A client for the manager's API.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster's clock (virtual wall time).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The fake driver of worker `i`: what runs there, and a way to crash it.
    pub fn fake(&self, i: usize) -> &FakeDriver {
        &self.nodes[i].fake
    }

    /// Node id of worker `i`.
    pub fn node_id(&self, i: usize) -> NodeId {
        match self.nodes[i].id {
            Some(id) => id,
            None => panic!("worker {i} never started"),
        }
    }

    /// The data directory of worker `i` (its node id and task logs).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir.clone()
    }

    /// A client for worker `i`'s API, while it runs.
    pub fn worker_client(&self, i: usize) -> Client {
        match &self.nodes[i].running {
            Some((w, _)) => Client::new(format!("http://{}", w.addr()), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("no client: {e}")),
            None => panic!("worker {i} is not running"),
        }
    }

    /// Starts worker `i` (again): same name, node id, store and fake driver, so it re-adopts
    /// the workloads it left running.
    pub async fn start_worker(&mut self, i: usize) {
        let manager = format!("http://{}", self.manager_addr());
        self.start_worker_with(i, manager).await;
    }

    /// Cuts worker `i` off from the manager, as a network partition would: it keeps running
    /// its workloads and serving its API, but its calls to the manager fail (it is restarted
    /// pointed at a closed port). [`Cluster::heal_worker`] ends the partition.
    pub async fn partition_worker(&mut self, i: usize) {
        self.stop_worker(i).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        self.start_worker_with(i, format!("http://{closed}")).await;
    }

    /// Ends a partition made by [`Cluster::partition_worker`].
    pub async fn heal_worker(&mut self, i: usize) {
        self.stop_worker(i).await;
        self.start_worker(i).await;
    }

    async fn start_worker_with(&mut self, i: usize, manager: String) {
        let node = &mut self.nodes[i];
        if node.running.is_some() {
            return;
        }
        let config = WorkerConfig {
            manager: Some(manager),
            capacity: self.config.capacity,
            gc_after: self.config.gc_after,
            // The fake driver runs every kind; the tests submit process tasks too.
            process_driver: true,
            ..WorkerConfig::new(node.name.clone(), node.data_dir.clone())
        };
        let shutdown = CancellationToken::new();
        let platform = Platform::fake(node.fake.clone(), self.clock.clone());
        let store: Arc<dyn cube_store::Store> = Arc::clone(&node.store) as _;
        let worker = cube_worker::start(config, platform, store, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("worker {i} did not start: {}", cube_core::Chain(&e)));
        node.id = Some(worker.node_id());
        node.running = Some((worker, shutdown));
    }

    /// Stops worker `i` as a crashed or partitioned worker stops: its API, runners and
    /// heartbeats end, its workloads keep running. The manager hears nothing from it until
    /// [`Cluster::start_worker`].
    pub async fn stop_worker(&mut self, i: usize) {
        let Some((worker, shutdown)) = self.nodes[i].running.take() else { return };
        shutdown.cancel();
        if let Err(e) = self.drive(worker.wait()).await {
            panic!("worker {i} did not stop cleanly: {}", cube_core::Chain(&e));
        }
    }

    /// Stops the manager as a killed one stops (nothing but its store survives) and starts a
    /// new one on the same store and address; workers find it again by themselves.
    pub async fn restart_manager(&mut self) {
        let addr = self.manager_addr();
        if let Some((manager, shutdown)) = self.manager.take() {
            shutdown.cancel();
            if let Err(e) = self.drive(manager.wait()).await {
                panic!("the manager did not stop cleanly: {}", cube_core::Chain(&e));
            }
        }
        let shutdown = CancellationToken::new();
        let config = ManagerConfig { listen: addr, ..self.manager_config.clone() };
        let manager = cube_manager::start(
            config,
            Arc::clone(&self.manager_store) as _,
            self.clock.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("the manager did not restart: {}", cube_core::Chain(&e)));
        self.manager = Some((manager, shutdown));
    }

    fn manager_addr(&self) -> SocketAddr {
        match &self.manager {
            Some((m, _)) => m.addr,
            None => panic!("the manager is not running"),
        }
    }

    /// Submits a task to the manager and returns its id.
    pub async fn submit(&self, spec: serde_json::Value) -> TaskId {
        let spec: TaskSpec =
            serde_json::from_value(spec).unwrap_or_else(|e| panic!("bad test spec: {e}"));
        match self.drive(self.client.submit(None, &spec)).await {
            Ok(submitted) => submitted.task.id,
            Err(e) => panic!("submit failed: {}", cube_core::Chain(&e)),
        }
    }

    /// The manager's view of task `id`.
    pub async fn task(&self, id: TaskId) -> TaskView {
        match self.drive(self.client.task(id)).await {
            Ok(task) => task,
            Err(e) => panic!("cannot read task {id}: {}", cube_core::Chain(&e)),
        }
    }

    /// Moves virtual time forward by `d`, in steps, letting everything run after each.
    pub async fn pass(&self, d: Duration) {
        self.pass_in_steps(d, self.config.step).await;
    }

    /// [`Cluster::pass`] with steps of `step` (coarser steps make long spans cheaper).
    pub async fn pass_in_steps(&self, d: Duration, step: Duration) {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            let left = end - tokio::time::Instant::now();
            Self::step(step.min(left)).await;
        }
        settle().await;
    }

    /// Moves virtual time forward until `check` (given the manager's client) returns `Some`,
    /// and returns it; panics with `what` once `within` has passed.
    pub async fn wait_for<'a, T, F, Fut>(&'a self, within: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut(&'a Client) -> Fut,
        Fut: Future<Output = Option<T>> + 'a,
    {
        let end = tokio::time::Instant::now() + within;
        loop {
            settle().await;
            if let Some(value) = self.drive(check(&self.client)).await {
                return value;
            }
            if tokio::time::Instant::now() >= end {
                panic!("{what}: not so after {within:?} of virtual time");
            }
            Self::step(self.config.step).await;
        }
    }

    /// Runs `fut` to completion while virtual time moves on (for anything that may wait on a
    /// timer).
    pub async fn drive<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                () = settle() => Self::step(self.config.step).await,
            }
        }
    }

    async fn step(d: Duration) {
        tokio::time::advance(d).await;
        settle().await;
    }

    /// Stops everything, in order: workers, then the manager. Workloads of the fake driver
    /// end with it.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_worker(i).await;
        }
        if let Some((manager, shutdown)) = self.manager.take() {
            shutdown.cancel();
            if let Err(e) = self.drive(manager.wait()).await {
                panic!("the manager did not stop cleanly: {}", cube_core::Chain(&e));
            }
        }
    }
}

/// Lets every runnable task run, and the I/O driver deliver what is ready, a few rounds over.
async fn settle() {
    for _ in 0..SETTLE_YIELDS {
        tokio::task::yield_now().await;
    }
}

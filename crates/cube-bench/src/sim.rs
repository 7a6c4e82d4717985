//! Simulated nodes: a benchmark tool, like Kubernetes' kwok or Nomad's node simulator, never a
//! way to run work.
//!
//! One listener serves a fake worker API for every simulated node, routed by path: node `i`
//! registers with the address `http://127.0.0.1:PORT/sim/i`, so the manager's calls to it
//! arrive as `/sim/i/v1/tasks`. A simulated node accepts a task (`POST /v1/tasks`) without
//! running anything and reports it `running` at once through its heartbeats, with the same
//! bodies and the same protocol as a real worker (`cube-worker`'s reporter): register with
//! every task it knows, heartbeat every interval the manager asks for and as soon as a task
//! changes, carry the changed tasks and the ids and generations of the unfinished ones, obey
//! the `stop` list and register again when asked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cube_api::types::{
    ActiveTask, CpuStats, DiskStats, HealthView, HeartbeatRequest, LoadStats, MemoryStats,
    NodeStats, RegisterRequest, TaskCounts, TaskSubmission, TaskView,
};
use cube_api::{ApiError, ErrorCode};
use cube_core::{
    Bytes, DriverKind, Millicores, NodeId, Resources, Task, TaskId, TaskState, Trigger,
};
use cube_http::client::Client;
use cube_http::server::{Body, HttpError, Listener};
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Resources each simulated node offers: a large machine, so placement is never the limit.
pub const SIM_CAPACITY: Resources =
    Resources { cpu: Millicores(64_000), memory: Bytes(256 << 30), disk: Bytes(1 << 40) };

/// Counters over all simulated nodes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tasks accepted (`POST /v1/tasks` answered 201).
    pub accepted: AtomicU64,
    /// Tasks whose `running` report the manager acknowledged.
    pub running_acked: AtomicU64,
    /// Tasks whose `completed` report the manager acknowledged.
    pub stopped_acked: AtomicU64,
    /// Heartbeats answered.
    pub heartbeats: AtomicU64,
    /// Heartbeats that failed.
    pub heartbeat_errors: AtomicU64,
    /// Times the manager asked a node to register again.
    pub reregistered: AtomicU64,
}

/// One task as a simulated node holds it.
#[derive(Debug)]
struct Entry {
    task: Task,
    /// The manager acknowledged a report of it running.
    counted: bool,
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Node id.
    pub id: NodeId,
    /// Node name (`sim-<index>`).
    pub name: String,
    address: String,
    tasks: Mutex<HashMap<TaskId, Entry>>,
    dirty: Mutex<HashSet<TaskId>>,
    wake: Notify,
}

impl SimNode {
    fn tasks(&self) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_dirty(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
        self.wake.notify_one();
    }

    fn take_dirty(&self) -> Vec<TaskId> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
    }

    fn register_request(&self) -> RegisterRequest {
        let tasks = self.tasks().values().map(|e| TaskView::from(&e.task)).collect();
        RegisterRequest {
            node_id: self.id,
            name: self.name.clone(),
            address: self.address.clone(),
            labels: BTreeMap::from([
                ("zone".to_owned(), format!("z{}", self.id.as_uuid().as_u128() % 3)),
                ("simulated".to_owned(), "true".to_owned()),
            ]),
            capacity: SIM_CAPACITY,
            drivers: vec![DriverKind::Docker, DriverKind::Process],
            allows: Default::default(),
            tasks,
        }
    }

    /// Stats as a worker would send them, from what the node holds.
    fn stats(&self) -> NodeStats {
        let tasks = self.tasks();
        let mut counts = TaskCounts::default();
        let mut reserved = Resources::default();
        for e in tasks.values() {
            counts.add(e.task.state);
            if e.task.state.is_active_on_node() {
                reserved = reserved.saturating_add(e.task.spec.resources);
            }
        }
        let total = SIM_CAPACITY.memory.get();
        let used = reserved.memory.get().min(total);
        NodeStats {
            collected_at: Timestamp::now(),
            memory: MemoryStats {
                total_bytes: total,
                available_bytes: total - used,
                used_bytes: used,
            },
            cpu: CpuStats { cores: 64, busy_fraction: 0.05, interval_ms: 1000 },
            load: LoadStats { one: 0.1, five: 0.1, fifteen: 0.1 },
            disk: DiskStats {
                path: "/simulated".into(),
                total_bytes: SIM_CAPACITY.disk.get(),
                free_bytes: SIM_CAPACITY.disk.get(),
            },
            tasks: counts,
            reserved,
        }
    }
}

/// Many simulated nodes behind one listener, heartbeating to one manager.
#[derive(Debug)]
pub struct SimCluster {
    /// The nodes.
    pub nodes: Vec<Arc<SimNode>>,
    /// Counters over all of them.
    pub counters: Arc<Counters>,
    /// Time the registrations took.
    pub register_time: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<Arc<SimNode>>,
    counters: Arc<Counters>,
}

impl SimCluster {
    /// Serves `count` simulated nodes on a loopback port, registers them all with `manager`
    /// (at most 32 registrations in flight) and starts their heartbeats.
    pub async fn start(manager: &str, count: usize) -> anyhow::Result<Self> {
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.addr();
        let nodes: Vec<Arc<SimNode>> = (0..count)
            .map(|i| {
                Arc::new(SimNode {
                    id: NodeId::from_uuid(uuid::Uuid::now_v7()),
                    name: format!("sim-{i}"),
                    address: format!("http://{addr}/sim/{i}"),
                    tasks: Mutex::new(HashMap::new()),
                    dirty: Mutex::new(HashSet::new()),
                    wake: Notify::new(),
                })
            })
            .collect();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared { nodes: nodes.clone(), counters: Arc::clone(&counters) });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(listener.serve(router(shared), shutdown.clone(), None));
        // Until the cluster is built, a failure must still stop the server.
        let guard = shutdown.clone().drop_guard();

        let client = Client::new(manager, Duration::from_secs(30))?;
        let began = std::time::Instant::now();
        let gate = Arc::new(Semaphore::new(32));
        let mut joins = Vec::with_capacity(count);
        for node in &nodes {
            let (node, client, gate) = (Arc::clone(node), client.clone(), Arc::clone(&gate));
            joins.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                client.register(&node.register_request()).await
            }));
        }
        let mut intervals = Vec::with_capacity(count);
        for join in joins {
            let response = join.await?.context("a simulated node could not register")?;
            intervals.push(response.interval());
        }
        let register_time = began.elapsed();
        for (i, (node, interval)) in nodes.iter().zip(intervals).enumerate() {
            // Spread the first beats over one interval, as independently started workers are.
            let offset = interval.mul_f64(i as f64 / count.max(1) as f64);
            tracker.spawn(heartbeat_loop(
                Arc::clone(node),
                client.clone(),
                Arc::clone(&counters),
                interval,
                offset,
                shutdown.clone(),
            ));
        }
        guard.disarm();
        Ok(Self { nodes, counters, register_time, shutdown, tracker })
    }

    /// Tasks whose `running` report the manager acknowledged.
    pub fn running_acked(&self) -> u64 {
        self.counters.running_acked.load(Ordering::Relaxed)
    }

    /// Stops serving and heartbeating; returns once everything has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn heartbeat_loop(
    node: Arc<SimNode>,
    client: Client,
    counters: Arc<Counters>,
    mut interval: Duration,
    offset: Duration,
    shutdown: CancellationToken,
) {
    let start = tokio::time::Instant::now() + offset;
    let mut ticker = tokio::time::interval_at(start, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // As the real worker does: the periodic beat carries stats and the active list (for
        // fencing); a beat pushed by a task change carries just the changed tasks.
        let periodic = tokio::select! {
            _ = ticker.tick() => true,
            () = node.wake.notified() => false,
            () = shutdown.cancelled() => return,
        };
        let ids = node.take_dirty();
        let (reports, active) = {
            let tasks = node.tasks();
            let reports: Vec<TaskView> = ids
                .iter()
                .filter_map(|id| tasks.get(id))
                .map(|e| TaskView::from(&e.task))
                .collect();
            let active: Option<Vec<ActiveTask>> = periodic.then(|| {
                tasks
                    .values()
                    .filter(|e| !e.task.state.is_terminal())
                    .map(|e| ActiveTask { id: e.task.id, generation: e.task.generation })
                    .collect()
            });
            (reports, active)
        };
        let stats = periodic.then(|| node.stats());
        let request = HeartbeatRequest { stats, tasks: reports, active, ingress: None };
        let response = tokio::select! {
            r = client.heartbeat(node.id, &request) => r,
            () = shutdown.cancelled() => return,
        };
        match response {
            Ok(response) => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                acknowledge(&node, &counters, &request.tasks);
                stop_tasks(&node, &response.stop);
                if response.register {
                    counters.reregistered.fetch_add(1, Ordering::Relaxed);
                    node.mark_dirty(ids);
                    if let Ok(r) = client.register(&node.register_request()).await {
                        stop_tasks(&node, &r.stop);
                    }
                }
                let wanted = response.interval();
                if wanted != interval {
                    interval = wanted;
                    ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Err(_) => {
                counters.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                node.mark_dirty(ids);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Counts reports the manager has now acknowledged; forgets finished tasks once reported.
fn acknowledge(node: &SimNode, counters: &Counters, sent: &[TaskView]) {
    let mut tasks = node.tasks();
    for view in sent {
        let Some(entry) = tasks.get_mut(&view.id) else { continue };
        if entry.task.generation != view.generation {
            continue;
        }
        match view.state {
            TaskState::Running if !entry.counted => {
                entry.counted = true;
                counters.running_acked.fetch_add(1, Ordering::Relaxed);
            }
            TaskState::Completed | TaskState::Failed if entry.task.state == view.state => {
                counters.stopped_acked.fetch_add(1, Ordering::Relaxed);
                tasks.remove(&view.id);
            }
            _ => {}
        }
    }
}

/// Stops tasks (a user stop or fencing): they complete at once.
fn stop_tasks(node: &SimNode, ids: &[TaskId]) {
    if ids.is_empty() {
        return;
    }
    let now = Timestamp::now();
    let mut changed = Vec::new();
    {
        let mut tasks = node.tasks();
        for id in ids {
            if let Some(e) = tasks.get_mut(id)
                && !e.task.state.is_terminal()
            {
                e.task.desired = cube_core::DesiredState::Stopped;
                if e.task.apply(Trigger::Stopped, now, "stopped on request (simulated)").is_ok() {
                    changed.push(*id);
                }
            }
        }
    }
    node.mark_dirty(changed);
}

fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        .route("/sim/{index}/v1/health", get(health))
        .route("/sim/{index}/v1/tasks", post(submit))
        .route("/sim/{index}/v1/tasks/{id}", get(get_task).delete(stop))
        .with_state(shared);
    cube_http::server::finish_router(
        routes,
        std::sync::Arc::new(cube_http::auth::ClusterToken(None)),
        None,
    )
}

fn node_at(shared: &Shared, index: usize) -> Result<&Arc<SimNode>, ApiError> {
    shared.nodes.get(index).ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such node"))
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<usize>,
) -> Result<axum::Json<HealthView>, HttpError> {
    let node = node_at(&shared, index)?;
    Ok(axum::Json(HealthView {
        status: "ok".into(),
        role: "worker".into(),
        node_id: Some(node.id),
        name: node.name.clone(),
        version: format!("{} (simulated)", env!("CARGO_PKG_VERSION")),
        leading: None,
        leader: None,
        epoch: None,
    }))
}

/// Accepts a task as a worker does: an unknown id or a newer generation is taken (201), a
/// repeat of the same placement is answered as it stands (200). The task is `running` at once.
async fn submit(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<usize>,
    Body(body): Body,
) -> Result<Response, HttpError> {
    let node = node_at(&shared, index)?;
    let submission = TaskSubmission::parse(&body)?;
    let id = submission.id.unwrap_or_else(|| TaskId::from_uuid(uuid::Uuid::now_v7()));
    let generation = submission.generation.unwrap_or(1);
    let view = {
        let mut tasks = node.tasks();
        if let Some(e) = tasks.get(&id)
            && e.task.generation >= generation
        {
            if e.task.generation > generation {
                return Err(ApiError::new(ErrorCode::Conflict, "older generation").into());
            }
            return Ok((StatusCode::OK, axum::Json(TaskView::from(&e.task))).into_response());
        }
        let now = Timestamp::now();
        let mut task = Task::new(id, submission.spec, now);
        task.node = Some(node.id);
        task.generation = generation;
        task.apply(Trigger::Place, now, "accepted by the node")
            .and_then(|_| task.apply(Trigger::Started, now, "running (simulated)"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let view = TaskView::from(&task);
        tasks.insert(id, Entry { task, counted: false });
        view
    };
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    node.mark_dirty([id]);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn get_task(
    State(shared): State<Arc<Shared>>,
    Path((index, id)): Path<(usize, String)>,
) -> Result<axum::Json<TaskView>, HttpError> {
    let node = node_at(&shared, index)?;
    let id: TaskId = cube_http::server::parse_id(&id)?;
    let tasks = node.tasks();
    let e = tasks.get(&id).ok_or_else(|| ApiError::not_found("task", id))?;
    Ok(axum::Json(TaskView::from(&e.task)))
}

async fn stop(
    State(shared): State<Arc<Shared>>,
    Path((index, id)): Path<(usize, String)>,
) -> Result<Response, HttpError> {
    let node = node_at(&shared, index)?;
    let id: TaskId = cube_http::server::parse_id(&id)?;
    stop_tasks(node, &[id]);
    let tasks = node.tasks();
    let e = tasks.get(&id).ok_or_else(|| ApiError::not_found("task", id))?;
    Ok((StatusCode::ACCEPTED, axum::Json(TaskView::from(&e.task))).into_response())
}

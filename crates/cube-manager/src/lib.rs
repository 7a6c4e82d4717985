//! Cube's manager: accepts tasks, places them on workers, tracks node membership and liveness,
//! and moves tasks off nodes that die or that exhaust a task's restarts.
//!
//! - `state`: the cluster state and its rules, free of I/O.
//! - [`Manager`]: the async shell around it: persistence, the placement and liveness loops,
//!   and calls to workers (with timeouts, retries and backoff).
//! - [`api`]: the HTTP API.
//!
//! Everything is event-driven: a submit, a heartbeat that frees capacity or a node coming back
//! wakes the placement loop at once; there are no fixed polling periods on the task path.

mod api;
mod audit;
mod error;
mod events;
mod exec;
mod ha;
mod metrics;
mod pki;
mod state;
mod tokens;
mod ui;

pub use error::ManagerError;
pub use ha::{HaConfig, ReplicatedManager, start_replicated};
pub use pki::ClusterPort;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cube_api::ErrorCode;
use cube_api::events::{Actor, EventObject, EventType, TaskSummary};
use cube_api::types::{
    FieldChange, InstanceCounts, PlannedInstance, ServicePlanView, ServiceView, VersionCounts,
};
use cube_api::types::{
    HeartbeatRequest, HeartbeatResponse, IngressFeed, NodeInfo, RegisterRequest, TaskFilter,
    TaskView,
};
use cube_core::deployment::Deployment;
use cube_core::service::{Service, ServiceSpec, Version};
use cube_core::{
    Chain, DeploymentId, Node, NodeId, NodeState, Scheduler, SchedulerKind, Task, TaskId, TaskSpec,
};
use cube_http::client::{Client, ClientError};
use cube_http::server::{Listener, Server};
use cube_rt::{Backoff, Clock, Ticker};
use cube_store::{Batch, Commit, Store, Table};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use state::{ActiveCopy, Beat, Report};
use state::{DeploymentAction, Dispatch, Effects, Refusal, State, StopCall};

/// How to run a manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Name shown by `GET /v1/health`.
    pub name: String,
    /// Address the API listens on (loopback by default: the API starts workloads on workers).
    pub listen: SocketAddr,
    /// Placement strategy.
    pub scheduler: SchedulerKind,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// A node silent for longer than this is down and its tasks are placed elsewhere.
    pub node_ttl: Duration,
    /// Timeout of each call to a worker.
    pub worker_timeout: Duration,
    /// Finished tasks are forgotten this long after they finished (`None`: kept forever).
    pub gc_after: Option<Duration>,
    /// Token and TLS of this API and of the calls to workers.
    pub security: cube_http::Security,
    /// How much of the event history is kept.
    pub history: History,
    /// Also serve `GET /metrics` here, without the token (for a Prometheus that cannot send
    /// one). Off by default: the API's `/metrics` needs the token like every route.
    pub metrics_listen: Option<SocketAddr>,
    /// How long the audit log keeps a record.
    pub audit_retention: Duration,
    /// Where workers that joined with a join token reach this manager over mutual TLS
    /// (`None`: no cluster port; workers may still register with the cluster token).
    pub cluster_listen: Option<SocketAddr>,
    /// The cluster port's identity and certificate lifetime, shared by every `Manager` this
    /// process builds.
    pub cluster: Arc<ClusterPort>,
}

/// How much of the event history the manager keeps: at least `events` events or `age` of
/// them, whichever holds more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    /// The newest this many events are always kept.
    pub events: u64,
    /// Events younger than this are always kept.
    pub age: Duration,
}

impl Default for History {
    /// 10,000 events or an hour: enough for a client that was away for a while to resume, and
    /// a bound on what a restart reads back.
    fn default() -> Self {
        Self { events: 10_000, age: Duration::from_secs(3600) }
    }
}

/// How long node and manager certificates last by default: 90 days, as Swarm's.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

impl Default for ManagerConfig {
    /// A manager on `127.0.0.1:5555` placing with `spread`, heartbeats every second, nodes down
    /// after 5 s of silence, 5 s per call to a worker, finished tasks kept for a day, plain
    /// HTTP without a token (fine on loopback only).
    fn default() -> Self {
        Self {
            name: "manager".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 5555)),
            scheduler: SchedulerKind::Spread,
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            worker_timeout: Duration::from_secs(5),
            gc_after: Some(Duration::from_secs(24 * 3600)),
            security: cube_http::Security::default(),
            history: History::default(),
            metrics_listen: None,
            audit_retention: Duration::from_secs(90 * 86_400),
            cluster_listen: None,
            cluster: ClusterPort::new("manager", DEFAULT_CERT_LIFETIME),
        }
    }
}

/// The manager: cluster state plus the machinery that acts on it.
#[derive(Debug)]
pub struct Manager {
    config: ManagerConfig,
    clock: Clock,
    state: Mutex<State>,
    store: Arc<dyn Store>,
    /// Every committed change, in index order.
    events: events::EventLog,
    metrics: metrics::Metrics,
    /// Exec sessions passing through now.
    exec_sessions: std::sync::atomic::AtomicUsize,
    kick: Notify,
    /// Wakes the service loop: a plan may want to be looked at again sooner.
    services_kick: Notify,
    /// One connection pool for every worker; per-worker clients are cheap views of it.
    http: Client,
    /// What this manager may do: act alone, act as the elected leader, or follow (written
    /// only by `ha` at role changes).
    role: Mutex<ha::Role>,
    /// A follower's copy may be behind: its feed from etcd is broken (written only by `ha`).
    stale: std::sync::atomic::AtomicBool,
    /// Cancelled when a commit was refused or failed in a way that means the leadership may
    /// be gone (`Fenced`, `Unavailable`): the leader stops acting and follows.
    fenced: CancellationToken,
    /// Users' tokens (written under the state lock, so their commits keep the store's order;
    /// read by every request's authentication).
    tokens: Arc<std::sync::RwLock<tokens::Tokens>>,
    /// The cluster's CA and enrolled nodes (written under the state lock by `pki`, or by `ha`
    /// from a leader's feed).
    pki: std::sync::RwLock<Option<pki::PkiRecord>>,
    /// Calls to workers that enrolled with a certificate: mutual TLS (set once the CA is known).
    cluster_http: std::sync::OnceLock<Client>,
    /// Calls to other managers' cluster ports (a follower passing a node's request on).
    manager_http: std::sync::OnceLock<Client>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// A change handed to the store: its commit, and the last event index it holds.
#[derive(Debug)]
struct Staged {
    commit: Commit,
    index: Option<u64>,
    /// Writes in the batch, and when it was handed to the store (for the commit metrics).
    writes: usize,
    began: std::time::Instant,
}

impl Staged {
    /// A batch handed to `store` now.
    fn commit(store: &dyn Store, batch: Batch, index: Option<u64>) -> Self {
        let writes = batch.ops.len();
        let began = std::time::Instant::now();
        let commit = if batch.is_empty() { Commit::ready(Ok(())) } else { store.commit(batch) };
        Self { commit, index, writes, began }
    }
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Attempts per call to a worker before giving up (about 10 s with the backoff below).
const CALL_ATTEMPTS: u32 = 8;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Most tasks one garbage-collection pass forgets under one hold of the state lock.
const GC_BATCH: usize = 5_000;

impl Manager {
    /// A manager over `store`, with the records it already holds.
    pub(crate) fn new(
        config: ManagerConfig,
        store: Arc<dyn Store>,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ManagerError> {
        let source = Arc::clone(&store);
        Self::with_role(config, source.as_ref(), store, clock, shutdown, ha::Role::Single)
    }

    /// A manager in `role` with the records `source` holds (the store itself, or a snapshot
    /// of it), writing to `store`. Reads the source: call from a blocking context.
    pub(crate) fn with_role(
        config: ManagerConfig,
        source: &dyn Store,
        store: Arc<dyn Store>,
        clock: Clock,
        shutdown: CancellationToken,
        role: ha::Role,
    ) -> Result<Arc<Self>, ManagerError> {
        let (state, events) = load_state(&config, source, &clock)?;
        let tokens = cube_store::load_json(source, Table::Tokens)?.into_iter().map(|(_, t)| t);
        let tokens = Arc::new(std::sync::RwLock::new(tokens::Tokens::new(tokens)));
        let http = config
            .security
            .client("http://worker.invalid", config.worker_timeout)
            .map_err(ManagerError::Client)?;
        let pki = pki::load(source)?;
        let manager = Arc::new(Self {
            config,
            clock,
            state: Mutex::new(state),
            store,
            events,
            metrics: metrics::Metrics::new(),
            exec_sessions: std::sync::atomic::AtomicUsize::new(0),
            kick: Notify::new(),
            services_kick: Notify::new(),
            http,
            role: Mutex::new(role),
            stale: std::sync::atomic::AtomicBool::new(false),
            fenced: CancellationToken::new(),
            tokens,
            pki: std::sync::RwLock::new(None),
            cluster_http: std::sync::OnceLock::new(),
            manager_http: std::sync::OnceLock::new(),
            tracker: TaskTracker::new(),
            shutdown,
        });
        if let Some(record) = pki {
            manager.set_pki(record)?;
        }
        Ok(manager)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still usable record by
        // record, so keep serving rather than poisoning the manager.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Plans the services the change touched, then hands the records `effects` touched to
    /// the store with an event each (call with the state lock held, so the store sees changes
    /// in order). Returns the commit and the last event index it holds.
    fn stage(
        &self,
        state: &mut State,
        effects: &mut Effects,
        by: &Actor,
    ) -> Result<Staged, ManagerError> {
        state.advance_drains(self.clock.now(), effects);
        if !effects.reconcile.is_empty() {
            state.reconcile(self.clock.now(), &mut uuid::Uuid::now_v7, effects);
            self.services_kick.notify_one();
        }
        let now = self.clock.now();
        let mut batch = Batch::new();
        let mut changes = Vec::new();
        // Services first: the index a service's event gets is known before it is encoded, so a
        // changed spec's `modify_index` is the index of the change itself.
        let first = self.events.next_index();
        for name in &effects.services {
            if effects.stamp.contains(name) {
                state.stamp_service(name, first + changes.len() as u64);
            }
            if let Some(entry) = state.service(name) {
                batch.put(Table::Services, name.clone(), &entry.service)?;
                let kind = if effects.created_services.contains(name) {
                    EventType::ServiceRegistered
                } else {
                    EventType::ServiceUpdated
                };
                let object = EventObject::Service(Some(Box::new(view(state, entry, now))));
                changes.push(events::Change { kind, key: name.clone(), object });
            }
        }
        for name in &effects.removed_services {
            batch.delete(Table::Services, name.clone());
            let object = EventObject::Service(None);
            changes.push(events::Change {
                kind: EventType::ServiceDeleted,
                key: name.clone(),
                object,
            });
        }
        for id in &effects.deployments {
            if let Some(d) = state.deployment(*id) {
                batch.put(Table::Deployments, id.to_string(), d)?;
                let kind = events::deployment_type(d);
                let object = EventObject::Deployment(Some(Box::new(d.clone())));
                changes.push(events::Change { kind, key: id.to_string(), object });
            }
        }
        for id in &effects.tasks {
            if let Some(t) = state.task(*id) {
                batch.put(Table::Tasks, id.to_string(), t)?;
                let object = EventObject::Task(Some(Box::new(TaskSummary::from(t))));
                // Named after the history entry the change added; a change that added none
                // (a replay cursor, a port) is an update.
                let before = effects.history_before.get(id);
                let added = before.is_none_or(|b| t.events.last() != b.as_ref());
                let kind = if added { events::task_type(t) } else { EventType::TaskUpdated };
                changes.push(events::Change { kind, key: id.to_string(), object });
            }
        }
        for id in &effects.nodes {
            if let Some(n) = state.node(*id) {
                batch.put(Table::Nodes, id.to_string(), &n.node)?;
                let u = state.usage(*id);
                let mut info = NodeInfo::new(&n.node, n.stats.clone(), u.reserved, u.count);
                info.ingress = state.ingress_listeners(*id);
                let object = EventObject::Node(Some(Box::new(info)));
                changes.push(events::Change {
                    kind: events::node_type(&n.node),
                    key: id.to_string(),
                    object,
                });
            }
        }
        for id in &effects.removed_nodes {
            batch.delete(Table::Nodes, id.to_string());
            let object = EventObject::Node(None);
            changes.push(events::Change {
                kind: EventType::NodeRemoved,
                key: id.to_string(),
                object,
            });
        }
        // Last: an instance leaves or joins the endpoints after the change that made it; one
        // that left is stopped only once the ingresses let go of it.
        let refreshed = state.refresh_endpoints(effects, false);
        for (name, endpoints) in refreshed.changed {
            let object = EventObject::Endpoints(endpoints.map(Box::new));
            changes.push(events::Change { kind: EventType::EndpointsUpdated, key: name, object });
            state.set_endpoints_index(first + changes.len() as u64 - 1);
        }
        if !refreshed.left.is_empty() {
            let index = state.endpoints_index();
            state.hold_stops(&refreshed.left, index, self.clock.instant(), effects);
        }
        let index = self.events.stage(changes, now, by, &mut batch)?;
        Ok(Staged::commit(self.store.as_ref(), batch, index))
    }

    /// Waits for the commit, then sends what the change requires to workers. Nothing is sent
    /// before the change is durable, so a crash never leaves a worker running something the
    /// manager has no record of.
    async fn finish(
        self: &Arc<Self>,
        staged: Staged,
        effects: Effects,
    ) -> Result<(), ManagerError> {
        // Placement may start before this commit is durable: the store applies batches in
        // order, so the placement's own commit (awaited before any dispatch) lands after this
        // one, and the two often share an fsync.
        if effects.kick {
            self.kick.notify_one();
        }
        self.committed(staged).await?;
        for d in effects.dispatch {
            let this = Arc::clone(self);
            self.tracker.spawn(this.dispatch(d));
        }
        for s in effects.stop {
            let this = Arc::clone(self);
            self.tracker.spawn(this.send_stop(s));
        }
        Ok(())
    }

    /// Commits events that change no record (an exec), for `by`.
    async fn record(&self, by: Actor, changes: Vec<events::Change>) -> Result<(), ManagerError> {
        let staged = {
            // Under the state lock like every change, so indexes follow commit order.
            let _state = self.lock();
            let mut batch = Batch::new();
            let index = self.events.stage(changes, self.clock.now(), &by, &mut batch)?;
            Staged::commit(self.store.as_ref(), batch, index)
        };
        self.committed(staged).await
    }

    /// Waits for a staged batch to be durable, then lets its events out.
    async fn committed(&self, staged: Staged) -> Result<(), ManagerError> {
        if let Err(e) = staged.commit.await {
            if matches!(
                e,
                cube_store::StoreError::Fenced | cube_store::StoreError::Unavailable { .. }
            ) {
                // Memory is now ahead of the store: only a fresh copy may act again.
                self.fenced.cancel();
            }
            return Err(e.into());
        }
        if staged.writes > 0 {
            self.metrics.commit.observe(staged.began.elapsed().as_secs_f64());
            self.metrics.batch.observe(staged.writes as f64);
        }
        if let Some(index) = staged.index {
            self.events.published(index);
        }
        Ok(())
    }

    /// The text of `GET /metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        let mut snapshot = {
            let state = self.lock();
            let (tasks, pending) = state.census();
            let mut nodes: Vec<(NodeState, usize)> = Vec::new();
            for n in state.nodes() {
                match nodes.iter_mut().find(|(s, _)| *s == n.node.state) {
                    Some((_, count)) => *count += 1,
                    None => nodes.push((n.node.state, 1)),
                }
            }
            let mut deployments: Vec<(cube_core::deployment::DeploymentStatus, usize)> = Vec::new();
            for d in state.deployments() {
                match deployments.iter_mut().find(|(s, _)| *s == d.status) {
                    Some((_, count)) => *count += 1,
                    None => deployments.push((d.status, 1)),
                }
            }
            metrics::Snapshot {
                tasks: tasks.into_iter().collect(),
                pending,
                nodes,
                deployments,
                ..Default::default()
            }
        };
        snapshot.subscribers = self.events.subscribers();
        snapshot.exec_sessions = self.exec_sessions.load(std::sync::atomic::Ordering::Relaxed);
        snapshot.event_index = self.events.current();
        let role = self.role();
        snapshot.acting = role.acting();
        snapshot.epoch = role.epoch();
        snapshot.stale = self.is_stale();
        self.metrics.render(&snapshot)
    }

    /// The API's request metrics (the router records them).
    pub(crate) fn http_metrics(&self) -> cube_http::metrics::HttpMetrics {
        self.metrics.http.clone()
    }

    /// Runs `f` on the state for `by`, persists what it changed with its events and performs
    /// the follow-up calls.
    async fn change<R>(
        self: &Arc<Self>,
        by: Actor,
        f: impl FnOnce(&mut State, &mut Effects) -> R,
    ) -> Result<R, ManagerError> {
        let mut effects = Effects::default();
        let (result, staged) = {
            let mut state = self.lock();
            let result = f(&mut state, &mut effects);
            (result, self.stage(&mut state, &mut effects, &by)?)
        };
        self.finish(staged, effects).await?;
        Ok(result)
    }

    /// Accepts a task: stored durably as `pending` before this returns, then placed at once.
    pub async fn submit(
        self: &Arc<Self>,
        id: Option<TaskId>,
        spec: TaskSpec,
    ) -> Result<(Task, bool), ManagerError> {
        let id = id.unwrap_or_else(|| TaskId::from_uuid(uuid::Uuid::now_v7()));
        let task = Task::new(id, spec, self.clock.now());
        self.change(Actor::Api, |s, e| s.submit(task, e)).await?.ok_or(ManagerError::Conflict(id))
    }

    /// Asks a task to stop.
    pub(crate) async fn stop(self: &Arc<Self>, id: TaskId) -> Result<Task, ManagerError> {
        self.change(Actor::Api, |s, e| s.stop(id, self.clock.now(), e))
            .await?
            .ok_or(ManagerError::TaskNotFound(id))
    }

    /// Creates or updates a service (durable before this returns); `true` if it was created.
    pub(crate) async fn put_service(
        self: &Arc<Self>,
        spec: ServiceSpec,
        check_index: Option<u64>,
    ) -> Result<(ServiceView, bool), ManagerError> {
        let name = spec.name.clone();
        let now = self.clock.now();
        let (service, _, created) = self
            .change(Actor::Api, |s, e| {
                s.put_service(spec, check_index, now, &mut uuid::Uuid::now_v7, e)
            })
            .await?
            .map_err(|r| refusal(r, &name))?;
        let view = self.service_view(&name).unwrap_or_else(|| self.view_of(&service));
        Ok((view, created))
    }

    /// What an update to `spec` would do, without doing it.
    pub(crate) fn plan_service(&self, spec: &ServiceSpec) -> ServicePlanView {
        let plan = self.lock().plan_service(spec);
        ServicePlanView {
            change: plan.change.to_owned(),
            version: plan.version,
            modify_index: plan.modify_index,
            diff: plan
                .diff
                .into_iter()
                .map(|(field, old, new)| FieldChange { field, old, new })
                .collect(),
            rollout: plan.rollout,
            placements: plan
                .placements
                .into_iter()
                .map(|(slot, explanation)| PlannedInstance {
                    slot,
                    node: explanation.chosen.as_ref().map(|c| c.node),
                    explanation,
                })
                .collect(),
        }
    }

    /// Changes a service's count.
    pub(crate) async fn scale_service(
        self: &Arc<Self>,
        name: &str,
        count: u32,
    ) -> Result<ServiceView, ManagerError> {
        let now = self.clock.now();
        self.change(Actor::Api, |s, e| {
            s.scale_service(name, count, now, &mut uuid::Uuid::now_v7, e)
        })
        .await?
        .map_err(|r| refusal(r, name))?;
        self.service_view(name).ok_or_else(|| ManagerError::ServiceNotFound(name.to_owned()))
    }

    /// Restores the spec of an earlier version as a new one.
    pub(crate) async fn revert_service(
        self: &Arc<Self>,
        name: &str,
        version: u64,
    ) -> Result<ServiceView, ManagerError> {
        let now = self.clock.now();
        self.change(Actor::Api, |s, e| {
            s.revert_service(name, version, now, &mut uuid::Uuid::now_v7, e)
        })
        .await?
        .map_err(|r| refusal(r, name))?;
        self.service_view(name).ok_or_else(|| ManagerError::ServiceNotFound(name.to_owned()))
    }

    /// Removes a service, stopping its instances.
    pub(crate) async fn remove_service(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<ServiceView, ManagerError> {
        let now = self.clock.now();
        let service = self
            .change(Actor::Api, |s, e| s.remove_service(name, now, e))
            .await?
            .map_err(|r| refusal(r, name))?;
        Ok(self.view_of(&service))
    }

    /// One service with its counts and deployment.
    pub(crate) fn service_view(&self, name: &str) -> Option<ServiceView> {
        let state = self.lock();
        let entry = state.service(name)?;
        Some(view(&state, entry, self.clock.now()))
    }

    /// What `node`'s ingress forwards, once the endpoints changed after `applied` (the index
    /// it has applied, which the manager records) or `wait` has passed. Only durable changes
    /// are answered.
    pub(crate) async fn ingress_feed(
        &self,
        node: NodeId,
        applied: Option<u64>,
        wait: Duration,
    ) -> Result<IngressFeed, ManagerError> {
        {
            let mut state = self.lock();
            if state.node(node).is_none() {
                return Err(ManagerError::NodeNotFound(node.to_string()));
            }
            if let Some(applied) = applied {
                state.ingress_applied(node, applied);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let durable = self.events.current();
            {
                let state = self.lock();
                let index = state.endpoints_index();
                let newer = applied.is_none_or(|a| index > a);
                if (newer && index <= durable) || tokio::time::Instant::now() >= deadline {
                    return Ok(IngressFeed { index, services: state.all_endpoints() });
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.wait_past(durable, left).await && self.shutdown.is_cancelled() {
                // Answer what there is: a graceful stop waits for every open request.
                let state = self.lock();
                return Ok(IngressFeed {
                    index: state.endpoints_index(),
                    services: state.all_endpoints(),
                });
            }
        }
    }

    /// Waits until something newer than `index` is durable (true), `timeout` passes or the
    /// manager is stopping (false): a blocking request must not hold up a graceful stop.
    pub(crate) async fn wait_past(&self, index: u64, timeout: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            newer = self.events.wait_past(index, timeout) => newer,
        }
    }

    /// A service's endpoints.
    pub(crate) fn service_endpoints(
        &self,
        name: &str,
    ) -> Option<cube_core::endpoints::ServiceEndpoints> {
        self.lock().endpoints(name)
    }

    fn view_of(&self, service: &Service) -> ServiceView {
        let counts = InstanceCounts { desired: service.spec.count, ..InstanceCounts::default() };
        ServiceView::new(service, counts, None)
    }

    /// Every service, by name.
    pub(crate) fn services(&self) -> Vec<ServiceView> {
        let state = self.lock();
        let now = self.clock.now();
        state.services().map(|e| view(&state, e, now)).collect()
    }

    /// A service's version history, oldest first.
    pub(crate) fn service_versions(&self, name: &str) -> Result<Vec<Version>, ManagerError> {
        let state = self.lock();
        let entry =
            state.service(name).ok_or_else(|| ManagerError::ServiceNotFound(name.to_owned()))?;
        Ok(entry.service.versions.clone())
    }

    /// One deployment.
    pub(crate) fn deployment(&self, id: DeploymentId) -> Result<Deployment, ManagerError> {
        self.lock().deployment(id).cloned().ok_or(ManagerError::DeploymentNotFound(id))
    }

    /// Promotes, pauses, resumes or fails a deployment.
    pub(crate) async fn deployment_action(
        self: &Arc<Self>,
        id: DeploymentId,
        action: DeploymentAction,
    ) -> Result<Deployment, ManagerError> {
        let now = self.clock.now();
        self.change(Actor::Api, |s, e| {
            s.deployment_action(id, action, now, &mut uuid::Uuid::now_v7, e)
        })
        .await?
        .map_err(|r| match r {
            Refusal::Transition(source) => ManagerError::DeploymentRefused { id, source },
            _ => ManagerError::DeploymentNotFound(id),
        })
    }

    /// Event streams open now.
    pub fn event_subscribers(&self) -> usize {
        self.events.subscribers()
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Option<Task> {
        self.lock().task(id).cloned()
    }

    /// Tasks matching `filter`, oldest first, as shared snapshots (the lock is held only to
    /// take the handles, not to copy 100k records).
    pub(crate) fn tasks(&self, filter: &TaskFilter) -> Vec<Arc<Task>> {
        self.lock().task_handles(|t| {
            filter.state.is_none_or(|s| t.state == s)
                && filter.node.is_none_or(|n| t.node == Some(n))
        })
    }

    /// All nodes with their usage.
    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        let state = self.lock();
        state
            .nodes()
            .map(|n| {
                let u = state.usage(n.node.id);
                let mut info = NodeInfo::new(&n.node, n.stats.clone(), u.reserved, u.count);
                info.ingress = state.ingress_listeners(n.node.id);
                info
            })
            .collect()
    }

    /// One node, by id or unique name.
    pub(crate) fn node(&self, key: &str) -> Result<NodeInfo, ManagerError> {
        let nodes = self.nodes();
        let mut matches = nodes.into_iter().filter(|n| n.id.to_string() == key || n.name == key);
        match (matches.next(), matches.next()) {
            (Some(n), None) => Ok(n),
            _ => Err(ManagerError::NodeNotFound(key.to_owned())),
        }
    }

    /// Starts draining a node (by id or unique name).
    pub(crate) async fn drain(
        self: &Arc<Self>,
        key: &str,
        deadline: Option<Duration>,
    ) -> Result<NodeInfo, ManagerError> {
        let id = self.node(key)?.id;
        let now = self.clock.now();
        self.change(Actor::Api, |s, e| s.drain(id, deadline, now, e))
            .await?
            .ok_or_else(|| ManagerError::NodeNotFound(key.to_owned()))?;
        self.node(key)
    }

    /// Turns new work on a node on or off (on also ends a drain).
    pub(crate) async fn set_eligible(
        self: &Arc<Self>,
        key: &str,
        eligible: bool,
    ) -> Result<NodeInfo, ManagerError> {
        let id = self.node(key)?.id;
        self.change(Actor::Api, |s, e| s.set_eligible(id, eligible, e))
            .await?
            .ok_or_else(|| ManagerError::NodeNotFound(key.to_owned()))?;
        self.node(key)
    }

    /// The output of a task, streamed from the node that ran it last.
    pub(crate) async fn logs(
        &self,
        id: TaskId,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<cube_http::client::LogStream, ManagerError> {
        let (node, address) = {
            let state = self.lock();
            let task = state.task(id).ok_or(ManagerError::TaskNotFound(id))?;
            // A task placed again keeps no node until it lands; its last node is in its history.
            let node = task.node.or_else(|| task.events.iter().rev().find_map(|e| e.node));
            let node = node.ok_or(ManagerError::NeverRan(id))?;
            let address = state.node(node).map(|n| n.node.address.clone());
            (node, address)
        };
        let address = address.ok_or_else(|| ManagerError::NodeNotFound(node.to_string()))?;
        let client = self.client(node, &address);
        client.logs(id, follow, tail).await.map_err(|e| match e {
            ClientError::Api { error, .. } => ManagerError::Remote(error),
            source => ManagerError::NodeUnreachable { node, source },
        })
    }

    /// A worker registers (on every start).
    pub(crate) async fn register(
        self: &Arc<Self>,
        req: RegisterRequest,
    ) -> Result<HeartbeatResponse, ManagerError> {
        let now = self.clock.now();
        let node = Node {
            id: req.node_id,
            name: req.name,
            address: req.address,
            labels: req.labels,
            capacity: req.capacity,
            drivers: req.drivers,
            allows: req.allows,
            state: NodeState::Ready,
            registered_at: now,
            last_heartbeat: Some(now),
            eligible: true,
            drain: None,
        };
        tracing::info!(
            node = %node.id,
            name = %node.name,
            address = %node.address,
            "node registered"
        );
        let reports: Vec<Report> = req.tasks.into_iter().map(report).collect();
        let stop = self
            .change(Actor::Node { node: node.id }, |s, e| {
                s.register(node, &reports, now, self.clock.instant(), e)
            })
            .await?;
        Ok(self.heartbeat_response(stop, false))
    }

    /// A worker heartbeats.
    pub(crate) async fn heartbeat(
        self: &Arc<Self>,
        node: NodeId,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ManagerError> {
        self.metrics.heartbeats.inc();
        let now = self.clock.now();
        let beat = Beat {
            stats: req.stats,
            reports: req.tasks.into_iter().map(report).collect(),
            active: req.active.map(|active| {
                active
                    .into_iter()
                    .map(|a| ActiveCopy { id: a.id, generation: a.generation })
                    .collect()
            }),
            ingress: req.ingress,
        };
        let stop = self
            .change(Actor::Node { node }, |s, e| {
                s.heartbeat(node, &beat, now, self.clock.instant(), e)
            })
            .await?;
        Ok(match stop {
            Some(stop) => self.heartbeat_response(stop, false),
            None => self.heartbeat_response(Vec::new(), true),
        })
    }

    fn heartbeat_response(&self, stop: Vec<TaskId>, register: bool) -> HeartbeatResponse {
        HeartbeatResponse {
            heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            stop,
            register,
            epoch: self.role().epoch(),
        }
    }

    /// A client for the worker at `address`, carrying this leader's epoch.
    /// A client for node `node` at `address`: over mutual TLS if it enrolled with a
    /// certificate, else as configured (the cluster token, `--tls-ca`).
    fn client(&self, node: NodeId, address: &str) -> Client {
        let http = match self.cluster_http.get() {
            Some(cluster) if self.certified(node) => cluster,
            _ => &self.http,
        };
        http.with_base(address).with_epoch(self.role().epoch())
    }

    /// What this manager may do now.
    pub(crate) fn role(&self) -> ha::Role {
        self.role.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this manager may send commands to workers now: always alone; as a leader only
    /// while its term holds by its own clock (so a leader that was paused sends nothing
    /// before it notices it may have been replaced); never as a follower.
    fn may_command(&self) -> bool {
        self.role().acting()
    }

    /// Sends a placed task to its node, retrying with backoff; gives the task back to the
    /// placement queue if the node cannot take it.
    ///
    /// Boxed with an explicit `Send` bound: dispatch and stop calls spawn each other indirectly
    /// (a failed dispatch changes state, which may dispatch again), and the compiler cannot
    /// infer `Send` through that cycle on its own.
    fn dispatch(self: Arc<Self>, d: Dispatch) -> BoxFuture {
        Box::pin(async move { self.dispatch_inner(d).await })
    }

    async fn dispatch_inner(self: Arc<Self>, d: Dispatch) {
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        let mut last_error = String::from("no attempt made");
        for attempt in 1..=CALL_ATTEMPTS {
            if !self.may_command() {
                // No longer the leader: the next one sends it (its records say where).
                return;
            }
            let target = self.lock().current_dispatch(&d);
            let Some((address, spec)) = target else {
                // Things moved on (stopped, node lost, placed again): nothing to send.
                self.lock().dispatch_done(d.task);
                return;
            };
            let client = self.client(d.node, &address);
            match client.submit_generation(Some(d.task), Some(d.generation), &spec).await {
                Ok(_) => {
                    tracing::debug!(
                        task = %d.task,
                        node = %d.node,
                        attempt,
                        "task handed to its node"
                    );
                    self.lock().dispatch_done(d.task);
                    return;
                }
                Err(e) => {
                    last_error = Chain(&e).to_string();
                    // 409: the node still runs an older placement of this task; it frees up
                    // once the node stops that copy (fencing).
                    let retry = e.is_transient() || e.code() == Some(ErrorCode::Conflict);
                    tracing::debug!(
                        task = %d.task,
                        node = %d.node,
                        attempt,
                        error = %Chain(&e),
                        retry,
                        "dispatch failed"
                    );
                    if !retry {
                        break;
                    }
                }
            }
            if attempt < CALL_ATTEMPTS {
                self.metrics.dispatch_retries.inc();
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
        self.metrics.dispatch_failures.inc();
        tracing::warn!(
            task = %d.task,
            node = %d.node,
            error = %last_error,
            "giving up handing the task to its node; placing it again"
        );
        let result = self
            .change(Actor::Manager, |s, e| s.dispatch_failed(&d, &last_error, self.clock.now(), e))
            .await;
        if let Err(e) = result {
            tracing::error!(
                task = %d.task,
                error = %Chain(&e),
                "cannot record the failed dispatch"
            );
        }
    }

    /// Tells a node to stop a task, retrying with backoff. If the node never got the task, the
    /// task is finished here; if the node stays unreachable, its next heartbeat (fencing) or
    /// its expiry finishes the job.
    fn send_stop(self: Arc<Self>, s: StopCall) -> BoxFuture {
        Box::pin(async move { self.send_stop_inner(s).await })
    }

    async fn send_stop_inner(self: Arc<Self>, s: StopCall) {
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        for attempt in 1..=CALL_ATTEMPTS {
            if !self.may_command() {
                return;
            }
            let address = self.lock().node(s.node).map(|n| n.node.address.clone());
            let Some(client) = address.map(|a| self.client(s.node, &a)) else { return };
            match client.stop(s.task).await {
                Ok(_) => return,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    let result = self
                        .change(Actor::Manager, |st, ef| {
                            st.stop_unknown_on_node(s.task, s.node, self.clock.now(), ef)
                        })
                        .await;
                    if let Err(e) = result {
                        tracing::error!(
                            task = %s.task,
                            error = %Chain(&e),
                            "cannot record the stop"
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(
                        task = %s.task,
                        node = %s.node,
                        attempt,
                        error = %Chain(&e),
                        "stop call failed"
                    );
                    if !e.is_transient() {
                        return;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
        tracing::warn!(
            task = %s.task,
            node = %s.node,
            "node unreachable for a stop; fencing will stop the task when it returns"
        );
    }

    /// Places pending tasks whenever something may have made room, until shutdown.
    async fn placement_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.kick.notified() => {}
                () = self.shutdown.cancelled() => return,
            }
            let mut effects = Effects::default();
            let commit = {
                let mut state = self.lock();
                let started = std::time::Instant::now();
                let pass = state.place_pending(self.clock.now(), &mut effects);
                if pass.tried > 0 {
                    self.metrics.scheduling.observe(started.elapsed().as_secs_f64());
                    self.metrics.placed(pass.placed, pass.tried - pass.placed);
                }
                // Placement itself must not wake the loop again (new instances a plan starts
                // as a result do).
                effects.kick = false;
                self.stage(&mut state, &mut effects, &Actor::Manager)
            };
            let result = match commit {
                Ok(commit) => self.finish(commit, effects).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(error = %Chain(&e), "cannot persist placements");
            }
        }
    }

    /// Marks silent nodes down and moves their tasks, until shutdown.
    /// Sends the held stops of instances the ingresses have let go of
    /// (`State::release_leaving`). No record changes: their stop was committed already.
    async fn leaving_loop(self: Arc<Self>) {
        let mut ticker = Ticker::new(LEAVING_CHECK, self.shutdown.clone());
        while ticker.tick().await {
            let stops = self.lock().release_leaving(self.clock.instant());
            for s in stops {
                tracing::debug!(task = %s.task, "every ingress let go of it: stopping");
                self.tracker.spawn(Arc::clone(&self).send_stop(s));
            }
        }
    }

    async fn liveness_loop(self: Arc<Self>) {
        let period = (self.config.node_ttl / 10).max(Duration::from_millis(50));
        let mut ticker = Ticker::new(period, self.shutdown.clone());
        while ticker.tick().await {
            let ttl = self.config.node_ttl;
            let result = self
                .change(Actor::Manager, |s, e| {
                    let down = s.expire_nodes(ttl, self.clock.now(), self.clock.instant(), e);
                    self.metrics.missed.inc_by(down.len() as u64);
                    for node in &down {
                        tracing::warn!(
                            node = %node,
                            "node missed its heartbeats: marked down, moving its tasks"
                        );
                    }
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %Chain(&e), "cannot persist node expiry");
            }
        }
    }

    /// Plans services again when their plans asked to be (an instance turning healthy, a
    /// deadline, a replacement delay), until shutdown.
    async fn services_loop(self: Arc<Self>) {
        // Every service once at start-up: a restarted manager resumes rollouts (and the timers
        // they wait on) from its records, even if nothing else happens.
        let now = self.clock.now();
        if let Err(e) = self.change(Actor::Manager, |s, e| s.wake_services(now, e)).await {
            tracing::error!(error = %Chain(&e), "cannot persist service plans");
        }
        loop {
            let next = self.lock().next_wake();
            let wait = next.map(|at| {
                let now = self.clock.now();
                at.duration_since(now).try_into().unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                () = sleep_or_forever(wait) => {}
                () = self.services_kick.notified() => continue,
                () = self.shutdown.cancelled() => return,
            }
            let now = self.clock.now();
            if let Err(e) = self.change(Actor::Manager, |s, e| s.wake_services(now, e)).await {
                tracing::error!(error = %Chain(&e), "cannot persist service plans");
            }
        }
    }

    /// Forgets finished tasks once they are older than `gc_after`, like Nomad's periodic
    /// job GC: without it a long-lived cluster's state, memory and restart time only grow.
    async fn gc_loop(self: Arc<Self>, retain: Duration) {
        let mut ticker = Ticker::new(cube_rt::sweep_period(retain), self.shutdown.clone());
        while ticker.tick().await {
            // Bounded batches keep each hold of the state lock short; a large backlog (e.g.
            // after lowering the retention) drains over consecutive passes.
            loop {
                match self.collect_garbage(retain, GC_BATCH).await {
                    Ok(n) if n == GC_BATCH => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(
                            error = %Chain(&e),
                            "cannot delete finished tasks; retrying on the next pass"
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Deletes events beyond the history's retention, once a minute.
    async fn history_loop(self: Arc<Self>) {
        let mut ticker = Ticker::new(Duration::from_secs(60), self.shutdown.clone());
        while ticker.tick().await {
            let this = Arc::clone(&self);
            let pruned = tokio::task::spawn_blocking(move || {
                this.events.prune(this.store.as_ref(), this.clock.now())
            })
            .await;
            match pruned {
                Ok(Ok(Some((n, commit)))) => match commit.await {
                    Ok(()) => tracing::debug!(events = n, "pruned the event history"),
                    Err(e) => tracing::error!(error = %Chain(&e), "cannot prune the event history"),
                },
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %Chain(&e), "cannot read the event history"),
                Err(e) => tracing::error!(error = %e, "pruning the event history panicked"),
            }
        }
    }

    /// Forgets up to `limit` tasks that finished more than `retain` ago: deleted from memory
    /// and then from the store. Returns how many. If the delete is lost in a crash, the records
    /// come back on restart and are collected again.
    pub(crate) async fn collect_garbage(
        &self,
        retain: Duration,
        limit: usize,
    ) -> Result<usize, ManagerError> {
        // A retention reaching before the representable past collects nothing.
        let Ok(cutoff) = self.clock.now().checked_sub(retain) else { return Ok(0) };
        let (doomed, commit) = {
            let mut state = self.lock();
            let doomed = state.collect_garbage(cutoff, limit);
            if doomed.is_empty() {
                return Ok(0);
            }
            let mut batch = Batch::new();
            let mut changes = Vec::with_capacity(doomed.len());
            for id in &doomed {
                batch.delete(Table::Tasks, id.to_string());
                let (kind, object) = (EventType::TaskDeleted, EventObject::Task(None));
                changes.push(events::Change { kind, key: id.to_string(), object });
            }
            let index =
                self.events.stage(changes, self.clock.now(), &Actor::Manager, &mut batch)?;
            (doomed, Staged::commit(self.store.as_ref(), batch, index))
        };
        self.committed(commit).await?;
        tracing::info!(tasks = doomed.len(), retain = ?retain, "garbage-collected finished tasks");
        Ok(doomed.len())
    }

    /// Starts acting: the loops that place, watch liveness, plan services and collect
    /// garbage (until this manager's shutdown), and the work a previous run or leader left
    /// unfinished.
    fn act(self: &Arc<Self>) {
        self.tracker.spawn(Arc::clone(self).placement_loop());
        self.tracker.spawn(Arc::clone(self).liveness_loop());
        self.tracker.spawn(Arc::clone(self).leaving_loop());
        self.tracker.spawn(Arc::clone(self).services_loop());
        self.tracker.spawn(Arc::clone(self).history_loop());
        self.tracker.spawn(Arc::clone(self).audit_loop(self.config.audit_retention));
        if let Some(retain) = self.config.gc_after {
            self.tracker.spawn(Arc::clone(self).gc_loop(retain));
        }
        self.resume();
    }

    /// Resumes work a previous run left unfinished: placements not yet confirmed by their node
    /// are sent again, stops not yet confirmed are sent again, and pending tasks are placed.
    fn resume(self: &Arc<Self>) {
        let (dispatches, stops) = {
            let mut state = self.lock();
            let dispatches = state.scheduled();
            for d in &dispatches {
                state.dispatch_started(d.task);
            }
            (dispatches, state.stopping())
        };
        if !dispatches.is_empty() || !stops.is_empty() {
            tracing::info!(
                dispatches = dispatches.len(),
                stops = stops.len(),
                "resuming unfinished work"
            );
        }
        for d in dispatches {
            let this = Arc::clone(self);
            self.tracker.spawn(this.dispatch(d));
        }
        for s in stops {
            let this = Arc::clone(self);
            self.tracker.spawn(this.send_stop(s));
        }
        self.kick.notify_one();
    }
}

/// The state and event history `source` holds. Reads the source: call from a blocking
/// context.
fn load_state(
    config: &ManagerConfig,
    source: &dyn Store,
    clock: &Clock,
) -> Result<(State, events::EventLog), ManagerError> {
    let started = std::time::Instant::now();
    let tasks: Vec<Task> =
        cube_store::load_json(source, Table::Tasks)?.into_iter().map(|(_, t)| t).collect();
    let nodes: Vec<Node> =
        cube_store::load_json(source, Table::Nodes)?.into_iter().map(|(_, n)| n).collect();
    let services: Vec<Service> =
        cube_store::load_json(source, Table::Services)?.into_iter().map(|(_, s)| s).collect();
    let deployments: Vec<Deployment> =
        cube_store::load_json(source, Table::Deployments)?.into_iter().map(|(_, d)| d).collect();

    let floor = services.iter().map(|s| s.modify_index).max().unwrap_or(0);
    let events = events::EventLog::load(source, config.history, floor)?;
    let decoded = started.elapsed();
    let mut state = State::new(Scheduler::new(config.scheduler));
    let (task_count, node_count) = (tasks.len(), nodes.len());
    // Every node gets a full TTL from now to heartbeat again: after a restart or a failover,
    // nobody is called down for the time the manager was away.
    state.load(tasks, nodes, clock.instant());
    state.load_services(services, deployments);
    // A node's ingress that applied endpoints before the restart is answered again.
    state.set_endpoints_index(events.current());
    if task_count + node_count > 0 {
        tracing::info!(
            tasks = task_count,
            nodes = node_count,
            decode_ms = decoded.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state loaded"
        );
    }
    Ok((state, events))
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The rules' view of a task a worker reports: converted here, at the edge, so `state` is written
/// against domain values rather than the wire.
fn report(view: TaskView) -> Report {
    Report {
        id: view.id,
        generation: view.generation,
        state: view.state,
        events: view.events,
        handle: view.handle,
        host_ports: view.host_ports,
        exit_code: view.exit_code,
        restart_count: view.restart_count,
        healthy: view.healthy,
    }
}

/// A service's view: its record, its instance counts, its current deployment.
fn view(state: &State, entry: &state::ServiceEntry, now: jiff::Timestamp) -> ServiceView {
    let counts = state.counts(entry, now);
    let instances = InstanceCounts {
        desired: entry.service.spec.count,
        running: counts.running,
        healthy: counts.healthy,
        versions: counts
            .versions
            .iter()
            .map(|&(version, running, healthy)| VersionCounts { version, running, healthy })
            .collect(),
    };
    let deployment = entry.service.deployment.and_then(|id| state.deployment(id)).cloned();
    ServiceView::new(&entry.service, instances, deployment)
}

/// How often held stops are looked at: a leaving instance is stopped at most this long after
/// the last ingress let go of it.
const LEAVING_CHECK: Duration = Duration::from_millis(100);

/// A refused service request as the manager's error.
fn refusal(r: Refusal, name: &str) -> ManagerError {
    match r {
        Refusal::IndexMismatch(current) => {
            ManagerError::IndexMismatch { name: name.to_owned(), current }
        }
        Refusal::NoVersion(version) => {
            ManagerError::VersionNotFound { name: name.to_owned(), version }
        }
        Refusal::PortTaken { port, by } => ManagerError::PortTaken { port, by },
        Refusal::NoService | Refusal::NoDeployment | Refusal::Transition(_) => {
            ManagerError::ServiceNotFound(name.to_owned())
        }
    }
}

/// A started manager.
#[derive(Debug)]
pub struct RunningManager {
    /// The address the API is bound to.
    pub addr: SocketAddr,
    /// The manager.
    pub manager: Arc<Manager>,
    /// The address of the token-free metrics listener, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    /// The address of the cluster port (mutual TLS for workers), when it has one.
    pub cluster_addr: Option<SocketAddr>,
    /// The worker join token, when this start made the cluster's CA (shown once).
    pub join_token: Option<cube_pki::JoinToken>,
    server: Server,
    metrics_server: Option<Server>,
}

impl RunningManager {
    /// Waits for the server and every background task to stop (after shutdown).
    pub async fn wait(self) -> Result<(), ManagerError> {
        let served = self.server.wait().await;
        if let Some(metrics) = self.metrics_server {
            metrics.wait().await?;
        }
        self.manager.tracker.close();
        self.manager.tracker.wait().await;
        Ok(served?)
    }
}

/// Starts a manager: loads state, starts the loops and the API. Stops when `shutdown` is
/// cancelled.
pub async fn start(
    config: ManagerConfig,
    store: Arc<dyn Store>,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<RunningManager, ManagerError> {
    let loaded = {
        let (config, store, shutdown) = (config.clone(), Arc::clone(&store), shutdown.clone());
        tokio::task::spawn_blocking(move || Manager::new(config, store, clock, shutdown))
            .await
            .map_err(|source| ManagerError::Panicked { what: "loading state", source })?
    };
    let manager = loaded?;
    let join_token = manager.ensure_pki().await?;
    let listener = Listener::bind(config.listen).await?.with_limits(config.security.limits);
    let addr = listener.addr();
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(Listener::bind(at).await?),
        None => None,
    };
    let cluster_listener = match config.cluster_listen {
        Some(at) => Some(Listener::bind(at).await?.with_limits(config.security.limits)),
        None => None,
    };
    manager.act();
    let router = api::router(Arc::clone(&manager));
    let cluster_addr = cluster_listener.as_ref().map(Listener::addr);
    if let Some(l) = cluster_listener {
        pki::spawn_cluster_port(
            l,
            router.clone(),
            Arc::clone(&config.cluster),
            shutdown.clone(),
            &manager.tracker,
        );
    }
    let server = listener.spawn(router, shutdown.clone(), config.security.tls.clone());
    let metrics_addr = metrics_listener.as_ref().map(Listener::addr);
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = %l.addr(), "serving /metrics without a token");
        l.spawn(api::metrics_router(Arc::clone(&manager)), shutdown, None)
    });
    tracing::info!(
        %addr,
        scheduler = %config.scheduler,
        ttl = ?config.node_ttl,
        "manager API listening"
    );
    Ok(RunningManager {
        addr,
        manager,
        metrics_addr,
        cluster_addr,
        join_token,
        server,
        metrics_server,
    })
}

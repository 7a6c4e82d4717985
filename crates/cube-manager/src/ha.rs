//! Highly available managers on etcd.
//!
//! Every manager keeps the whole state in memory and answers reads from it; one of them, the
//! leader elected on an etcd lease, acts (places, dispatches, watches liveness, runs
//! deployments, collects garbage). A manager is, in turn:
//!
//! - a **follower**: a [`Manager`] built from a snapshot of etcd and fed by the watch of every
//!   change after it (`replicate`); it answers reads (marked stale while its feed is broken),
//!   passes every other request to the leader, and campaigns;
//! - the **leader**, once elected: a fresh [`Manager`] built from a snapshot read after the
//!   election (so it holds everything the previous leader committed), whose writes are etcd
//!   transactions guarded by its term's fence and whose calls to workers carry the term's
//!   epoch and are made only while the term holds by its own clock;
//! - a follower again when its term ends (the lease could not be renewed in time, or a write
//!   was fenced): its loops stop, it takes a new snapshot and follows. It never needs a
//!   restart. On shutdown the leader resigns, so the next one is elected at once.
//!
//! The API listener stays the same throughout; each request goes to the manager of the
//! moment (`Current`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cube_api::{ApiError, ErrorCode};
use cube_core::deployment::Deployment;
use cube_core::service::Service;
use cube_core::{Chain, DeploymentId, Node, NodeId, Task, TaskId};
use cube_etcd::{Etcd, EtcdConfig, EtcdError, EtcdStore, LeaderInfo, Validity};
use cube_http::auth::{Caller, Grant};
use cube_http::mtls::Peer;
use cube_http::server::{HttpError, Listener, Server};
use cube_rt::{Backoff, Clock};
use cube_store::Table;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Effects;
use crate::{Manager, ManagerConfig, ManagerError, api};

/// Who leads, on every answer.
pub(crate) const LEADER_HEADER: &str = "x-cube-leader";
/// On a follower's answers while its copy may be behind.
pub(crate) const STALE_HEADER: &str = "x-cube-stale";
/// On a request a follower passed on, so it is never passed on again.
const FORWARDED_HEADER: &str = "x-cube-forwarded";
/// On the refusal of a request that was passed on already.
const REFUSED_HEADER: &str = "x-cube-not-leader";
/// How long a write waits for a leader before it is refused.
const NO_LEADER_WAIT: Duration = Duration::from_secs(5);
/// The largest body a follower passes on (a node's registration carries all its tasks).
const FORWARD_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// What a manager may do.
#[derive(Clone, Debug)]
pub(crate) enum Role {
    /// The only manager, on its own store: always acts.
    Single,
    /// The elected leader: acts while its term holds.
    Leader {
        /// The term's epoch.
        epoch: u64,
        /// Whether the term still holds.
        term: Validity,
        /// Where this manager answers.
        url: String,
    },
    /// A follower: serves reads, passes the rest to `leader`.
    Follower {
        /// Who leads, as the election says.
        leader: watch::Receiver<Option<LeaderInfo>>,
    },
}

impl Role {
    /// The epoch calls to workers carry (a leader's only).
    pub(crate) fn epoch(&self) -> Option<u64> {
        match self {
            Role::Leader { epoch, .. } => Some(*epoch),
            Role::Single | Role::Follower { .. } => None,
        }
    }

    /// Whether it may act (send commands to workers) now.
    pub(crate) fn acting(&self) -> bool {
        match self {
            Role::Single => true,
            Role::Leader { term, .. } => term.valid(),
            Role::Follower { .. } => false,
        }
    }

    /// Where the leader answers, when known.
    fn leader_url(&self) -> Option<String> {
        match self {
            Role::Single => None,
            Role::Leader { url, .. } => Some(url.clone()),
            Role::Follower { leader } => leader.borrow().as_ref().map(|l| l.url.clone()),
        }
    }
}

/// How a highly available manager finds etcd and the others.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// etcd, and where the cluster's keys live there.
    pub etcd: EtcdConfig,
    /// The URL other managers and clients reach this one at (announced while it leads;
    /// default: the scheme and the address the API is bound to).
    pub advertise: Option<String>,
    /// The election lease's TTL (5 s by default): a leader that could not renew it for 60%
    /// of it stops acting.
    pub ttl: Duration,
}

/// A started highly available manager.
#[derive(Debug)]
pub struct ReplicatedManager {
    /// The address the API is bound to.
    pub addr: SocketAddr,
    /// The address of the token-free metrics listener, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    /// The address of the cluster port (mutual TLS for workers), when it has one.
    pub cluster_addr: Option<SocketAddr>,
    server: Server,
    metrics_server: Option<Server>,
    tracker: TaskTracker,
}

impl ReplicatedManager {
    /// Waits until everything stopped (after shutdown; the leader resigned first).
    pub async fn wait(self) -> Result<(), ManagerError> {
        let served = self.server.wait().await;
        if let Some(metrics) = self.metrics_server {
            metrics.wait().await?;
        }
        self.tracker.close();
        self.tracker.wait().await;
        Ok(served?)
    }
}

/// The manager of the moment, and the routers serving it.
#[derive(Clone)]
struct Current {
    api: Arc<RwLock<Router>>,
    metrics: Arc<RwLock<Router>>,
}

impl Current {
    fn new(manager: &Arc<Manager>) -> Self {
        Self {
            api: Arc::new(RwLock::new(api::router(Arc::clone(manager)))),
            metrics: Arc::new(RwLock::new(api::metrics_router(Arc::clone(manager)))),
        }
    }

    fn set(&self, manager: &Arc<Manager>) {
        *self.api.write().unwrap_or_else(|e| e.into_inner()) = api::router(Arc::clone(manager));
        *self.metrics.write().unwrap_or_else(|e| e.into_inner()) =
            api::metrics_router(Arc::clone(manager));
    }

    /// A router passing every request to the current one of `which`.
    fn router(which: Arc<RwLock<Router>>) -> Router {
        Router::new().fallback_service(tower::service_fn(move |req: Request| {
            let router = which.read().unwrap_or_else(|e| e.into_inner()).clone();
            tower::ServiceExt::oneshot(router, req)
        }))
    }
}

/// Connects to etcd (waiting, with a line now and then, while it cannot be reached), then
/// serves as a follower and campaigns. Refuses at once an etcd prefix that holds another
/// cluster's data or a newer format's.
pub async fn start_replicated(
    config: ManagerConfig,
    ha: HaConfig,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<ReplicatedManager, ManagerError> {
    let etcd = connect(&ha.etcd, &shutdown).await?;
    let store = Arc::new(etcd.store());
    let listener = Listener::bind(config.listen).await?.with_limits(config.security.limits);
    let addr = listener.addr();
    let mut ha = ha;
    let advertise =
        ha.advertise.clone().unwrap_or_else(|| format!("{}://{addr}", config.security.scheme()));
    ha.advertise = Some(advertise.clone());
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(Listener::bind(at).await?),
        None => None,
    };
    let cluster_listener = match config.cluster_listen {
        Some(at) => Some(Listener::bind(at).await?.with_limits(config.security.limits)),
        None => None,
    };
    let tracker = TaskTracker::new();
    let (leader_tx, leader_rx) = watch::channel(None);
    tracker.spawn({
        let (etcd, shutdown) = (etcd.clone(), shutdown.clone());
        async move { etcd.follow_leader(leader_tx, shutdown).await }
    });
    let follower = loop {
        match follower(&config, &etcd, &store, &clock, &shutdown, &leader_rx).await {
            Ok(f) => break f,
            Err(e) if shutdown.is_cancelled() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot read the cluster's state from etcd; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let current = Current::new(&follower);
    let server = listener.spawn(
        Current::router(Arc::clone(&current.api)),
        shutdown.clone(),
        config.security.tls.clone(),
    );
    let metrics_addr = metrics_listener.as_ref().map(Listener::addr);
    let metrics_server = metrics_listener
        .map(|l| l.spawn(Current::router(Arc::clone(&current.metrics)), shutdown.clone(), None));
    let cluster_addr = cluster_listener.as_ref().map(Listener::addr);
    let cluster_url = cluster_addr.map(|a| format!("https://{a}"));
    if let Some(l) = cluster_listener {
        crate::pki::spawn_cluster_port(
            l,
            Current::router(Arc::clone(&current.api)),
            Arc::clone(&config.cluster),
            shutdown.clone(),
            &tracker,
        );
    }
    tracing::info!(%addr, %advertise, prefix = %ha.etcd.prefix, "manager API listening (following)");
    let supervisor = Supervisor {
        config,
        ha,
        advertise,
        cluster_url,
        etcd,
        store,
        clock,
        shutdown,
        leader: leader_rx,
        current,
    };
    tracker.spawn(supervisor.run(follower));
    Ok(ReplicatedManager { addr, metrics_addr, cluster_addr, server, metrics_server, tracker })
}

async fn connect(config: &EtcdConfig, shutdown: &CancellationToken) -> Result<Etcd, ManagerError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let began = std::time::Instant::now();
    loop {
        match Etcd::connect(config.clone()).await {
            Ok(etcd) => return Ok(etcd),
            Err(
                e @ (EtcdError::OtherCluster { .. }
                | EtcdError::NewerFormat { .. }
                | EtcdError::BadClusterRecord { .. }
                | EtcdError::TlsFile { .. }),
            ) => {
                return Err(ManagerError::Etcd(e));
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), waited_s = began.elapsed().as_secs(), "waiting for etcd");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return Err(ManagerError::Etcd(EtcdError::LeadershipLost { reason: "stopped before etcd answered" })),
        }
    }
}

/// A follower built from a snapshot of etcd, fed from the snapshot's revision on.
async fn follower(
    config: &ManagerConfig,
    etcd: &Etcd,
    store: &Arc<EtcdStore>,
    clock: &Clock,
    shutdown: &CancellationToken,
    leader: &watch::Receiver<Option<LeaderInfo>>,
) -> Result<Arc<Manager>, ManagerError> {
    let snapshot = etcd.snapshot().await.map_err(ManagerError::Etcd)?;
    let revision = snapshot.revision;
    let role = Role::Follower { leader: leader.clone() };
    let manager = build(config, snapshot, store, clock, shutdown.child_token(), role).await?;
    manager.tracker.spawn(Arc::clone(&manager).replicate(etcd.clone(), revision));
    Ok(manager)
}

/// A manager holding `snapshot`, writing to `store`.
async fn build(
    config: &ManagerConfig,
    snapshot: cube_etcd::Snapshot,
    store: &Arc<EtcdStore>,
    clock: &Clock,
    shutdown: CancellationToken,
    role: Role,
) -> Result<Arc<Manager>, ManagerError> {
    let (config, store, clock) = (config.clone(), Arc::clone(store), clock.clone());
    tokio::task::spawn_blocking(move || {
        let source = snapshot.into_store();
        Manager::with_role(config, &source, store, clock, shutdown, role)
    })
    .await
    .map_err(|source| ManagerError::Panicked { what: "loading state", source })?
}

/// Campaigns, leads, follows again, until shutdown.
struct Supervisor {
    config: ManagerConfig,
    ha: HaConfig,
    advertise: String,
    /// Where this manager's cluster port answers nodes.
    cluster_url: Option<String>,
    etcd: Etcd,
    store: Arc<EtcdStore>,
    clock: Clock,
    shutdown: CancellationToken,
    leader: watch::Receiver<Option<LeaderInfo>>,
    current: Current,
}

impl Supervisor {
    async fn run(self, mut following: Arc<Manager>) {
        let info = LeaderInfo {
            id: self.config.name.clone(),
            url: self.advertise.clone(),
            cluster_url: self.cluster_url.clone(),
            epoch: 0,
        };
        let candidate = self.etcd.candidate(info, self.ha.ttl);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let term = match candidate.campaign(&self.shutdown).await {
                Ok(term) => term,
                Err(_) if self.shutdown.is_cancelled() => break,
                Err(e) => {
                    tracing::debug!(error = %Chain(&e), "campaign failed; campaigning again");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            backoff.reset();
            let epoch = term.epoch;
            self.store.set_fence(Some(term.fence.clone()));
            // Read after the election: everything the previous leader committed is in it (its
            // later writes are fenced).
            let role = Role::Leader { epoch, term: term.validity(), url: self.advertise.clone() };
            let snapshot = self.etcd.snapshot().await.map_err(ManagerError::Etcd);
            let leading = match snapshot {
                Ok(s) => {
                    build(
                        &self.config,
                        s,
                        &self.store,
                        &self.clock,
                        self.shutdown.child_token(),
                        role,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let leading = match leading {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "elected but cannot read the state; resigning");
                    self.store.set_fence(None);
                    term.resign().await;
                    continue;
                }
            };
            // The first leader of a cluster makes its CA (under its fence, like every write).
            match leading.ensure_pki().await {
                Ok(Some(_)) => tracing::info!(
                    "made the cluster's CA: `cube token rotate worker` prints a join token"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %Chain(&e), "cannot make the cluster's CA"),
            }
            leading.act();
            self.current.set(&leading);
            retire(&following).await;
            tracing::info!(epoch, "elected leader: acting");
            let ended = term.ended();
            tokio::select! {
                () = ended.cancelled() => {}
                () = self.shutdown.cancelled() => {}
                () = leading.fenced.cancelled() => {}
            }
            // Stop acting first: nothing more is written or sent under this term.
            self.store.set_fence(None);
            leading.set_role(Role::Follower { leader: self.leader.clone() });
            leading.stale.store(true, std::sync::atomic::Ordering::Relaxed);
            retire(&leading).await;
            if self.shutdown.is_cancelled() {
                term.resign().await;
                tracing::info!(epoch, "resigned the leadership");
                return;
            }
            tracing::warn!(epoch, "lost the leadership: following again");
            drop(term);
            following = loop {
                match follower(
                    &self.config,
                    &self.etcd,
                    &self.store,
                    &self.clock,
                    &self.shutdown,
                    &self.leader,
                )
                .await
                {
                    Ok(f) => break f,
                    Err(_) if self.shutdown.is_cancelled() => return,
                    Err(e) => {
                        // The deposed manager keeps answering reads, marked stale, meanwhile.
                        tracing::warn!(error = %Chain(&e), "cannot read the cluster's state from etcd; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                            () = self.shutdown.cancelled() => return,
                        }
                    }
                }
            };
            self.current.set(&following);
        }
        retire(&following).await;
    }
}

/// Stops a manager's loops and calls and waits for them (its API answers what it holds).
async fn retire(manager: &Arc<Manager>) {
    manager.shutdown.cancel();
    manager.tracker.close();
    manager.tracker.wait().await;
}

impl Manager {
    /// Changes what this manager may do.
    pub(crate) fn set_role(&self, role: Role) {
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// For `GET /v1/health`: whether this manager leads, where the leader answers and its
    /// epoch (all `None` for a manager on its own store).
    pub(crate) fn leadership(&self) -> (Option<bool>, Option<String>, Option<u64>) {
        let role = self.role();
        match &role {
            Role::Single => (None, None, None),
            Role::Leader { epoch, .. } => (Some(role.acting()), role.leader_url(), Some(*epoch)),
            Role::Follower { .. } => (Some(false), role.leader_url(), None),
        }
    }

    /// Whether a follower's copy may be behind.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A follower's feed: applies every change after `revision` as it comes, until
    /// shutdown; while etcd cannot be reached, marks the copy stale and tries again; after a
    /// compaction took the history it needs, reads a new snapshot.
    async fn replicate(self: Arc<Self>, etcd: Etcd, mut revision: i64) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        while !self.shutdown.is_cancelled() {
            let opened = tokio::select! {
                f = etcd.feed(revision) => f,
                () = self.shutdown.cancelled() => return,
            };
            let mut feed = match opened {
                Ok(feed) => feed,
                Err(e) => {
                    self.stale.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(error = %Chain(&e), "cannot watch etcd");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = feed.next() => n,
                    () = self.shutdown.cancelled() => return,
                };
                match next {
                    Ok((changes, at)) => {
                        self.apply(changes);
                        revision = at;
                        self.stale.store(false, std::sync::atomic::Ordering::Relaxed);
                        backoff.reset();
                    }
                    Err(EtcdError::Compacted { compacted }) => {
                        tracing::warn!(
                            revision,
                            compacted,
                            "etcd compacted past this copy: reading a snapshot"
                        );
                        match self.reload(&etcd).await {
                            Ok(at) => revision = at,
                            Err(e) => tracing::warn!(error = %Chain(&e), "cannot read a snapshot"),
                        }
                        break;
                    }
                    Err(e) => {
                        self.stale.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(error = %Chain(&e), "lost the watch of etcd");
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                            () = self.shutdown.cancelled() => return,
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Applies the records a feed brought, then lets readers see their events.
    fn apply(&self, changes: Vec<cube_etcd::Change>) {
        let mut effects = Effects::default();
        let mut lines = Vec::new();
        let mut pruned = Vec::new();
        {
            let mut state = self.lock();
            let now = self.clock.instant();
            for change in changes {
                let (table, key) = (change.table, change.key);
                match (table, change.value) {
                    (Table::Tasks, Some(v)) => match serde_json::from_slice::<Task>(&v) {
                        Ok(task) => state.replicate_task(task, &mut effects),
                        Err(e) => undecodable(table, &key, &e),
                    },
                    (Table::Tasks, None) => {
                        if let Ok(id) = key.parse::<TaskId>() {
                            state.replicate_task_deleted(id, &mut effects);
                        }
                    }
                    (Table::Nodes, Some(v)) => match serde_json::from_slice::<Node>(&v) {
                        Ok(node) => state.replicate_node(node, now, &mut effects),
                        Err(e) => undecodable(table, &key, &e),
                    },
                    (Table::Nodes, None) => {
                        if let Ok(id) = key.parse::<NodeId>() {
                            state.replicate_node_deleted(id, &mut effects);
                        }
                    }
                    (Table::Services, Some(v)) => match serde_json::from_slice::<Service>(&v) {
                        Ok(service) => state.replicate_service(service, &mut effects),
                        Err(e) => undecodable(table, &key, &e),
                    },
                    (Table::Services, None) => state.replicate_service_deleted(&key, &mut effects),
                    (Table::Deployments, Some(v)) => {
                        match serde_json::from_slice::<Deployment>(&v) {
                            Ok(d) => state.replicate_deployment(d),
                            Err(e) => undecodable(table, &key, &e),
                        }
                    }
                    (Table::Deployments, None) => {
                        if let Ok(id) = key.parse::<DeploymentId>() {
                            state.replicate_deployment_deleted(id);
                        }
                    }
                    (Table::Events, Some(v)) => lines.push(v),
                    (Table::Events, None) => pruned.push(key),
                    (Table::Tokens, Some(v)) => match serde_json::from_slice(&v) {
                        Ok(token) => self.tokens_mut().put(token),
                        Err(e) => undecodable(table, &key, &e),
                    },
                    (Table::Tokens, None) => self.tokens_mut().remove(&key),
                    // Read from the store when asked for; its events came with them.
                    (Table::Audit, _) => {}
                    (Table::Meta, Some(v)) if key == crate::pki::PKI_KEY => {
                        match serde_json::from_slice(&v) {
                            Ok(record) => {
                                if let Err(e) = self.set_pki(record) {
                                    tracing::error!(error = %Chain(&e), "cannot take the cluster's CA");
                                }
                            }
                            Err(e) => undecodable(table, &key, &e),
                        }
                    }
                    // The event index follows from the events themselves.
                    (Table::Meta, _) => {}
                }
            }
            state.replicated(&effects);
        }
        for line in lines {
            if let Err(e) = self.events.replicate(line) {
                tracing::error!(error = %Chain(&e), "cannot decode a replicated event");
            }
        }
        for key in pruned {
            self.events.replicate_pruned(&key);
        }
    }

    /// Replaces the copy with a new snapshot; returns its revision.
    async fn reload(self: &Arc<Self>, etcd: &Etcd) -> Result<i64, ManagerError> {
        let snapshot = etcd.snapshot().await.map_err(ManagerError::Etcd)?;
        let revision = snapshot.revision;
        let this = Arc::clone(self);
        let loaded = tokio::task::spawn_blocking(move || {
            let source = snapshot.into_store();
            let (state, events) = crate::load_state(&this.config, &source, &this.clock)?;
            let tokens = cube_store::load_json(&source, Table::Tokens)?.into_iter().map(|(_, t)| t);
            Ok::<_, ManagerError>((
                state,
                events,
                crate::tokens::Tokens::new(tokens),
                crate::pki::load(&source)?,
            ))
        })
        .await
        .map_err(|source| ManagerError::Panicked { what: "loading state", source })??;
        let (state, events, tokens, pki) = loaded;
        let mut held = self.lock();
        *held = state;
        // Everything the feed would have brought: users' tokens and the CA's record (a node
        // removed meanwhile must be refused here too).
        *self.tokens_mut() = tokens;
        if let Some(record) = pki {
            self.set_pki(record)?;
        }
        drop(held);
        self.events.reset(events);
        Ok(revision)
    }
}

fn undecodable(table: Table, key: &str, e: &serde_json::Error) {
    tracing::error!(table = table.name(), key, error = %e, "a replicated record is not valid; skipped");
}

/// Every request passes here first: a manager that acts (alone or as the leader) serves it; a
/// follower serves reads from its copy and passes everything else to the leader. Every answer
/// says who leads.
pub(crate) async fn route(
    State(m): State<Arc<Manager>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let role = m.role();
    let mut response = match &role {
        Role::Single | Role::Leader { .. } => next.run(req).await,
        Role::Follower { leader } => {
            if serves_locally(&req) {
                let mut response = next.run(req).await;
                if m.is_stale() {
                    response.headers_mut().insert(STALE_HEADER, HeaderValue::from_static("true"));
                }
                response
            } else {
                forward(&m, leader.clone(), req).await
            }
        }
    };
    if let Some(url) = role.leader_url()
        && !response.headers().contains_key(LEADER_HEADER)
        && let Ok(value) = HeaderValue::from_str(&url)
    {
        response.headers_mut().insert(LEADER_HEADER, value);
    }
    response
}

/// Whether a follower answers `req` itself: reads of the state, except the node's endpoint
/// feed (its long poll acknowledges to the leader) and exec sessions (relayed by the leader).
fn serves_locally(req: &Request) -> bool {
    let path = req.uri().path();
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && !(path.starts_with("/v1/nodes/") && path.ends_with("/endpoints"))
        && !path.ends_with("/exec")
}

/// Passes `req` to the leader, waiting up to 5 s for one while there is none (or it cannot
/// be reached); then 503 `no_leader` with `Retry-After`.
async fn forward(
    m: &Manager,
    mut leader: watch::Receiver<Option<LeaderInfo>>,
    req: Request,
) -> Response {
    if req.headers().contains_key(FORWARDED_HEADER) {
        // Passed on by a follower that took this manager for the leader (or by this manager
        // itself, elected an instant before it took over): never passed on twice; the
        // follower that sent it tries again.
        let mut refused = no_leader("this manager does not lead (yet)");
        refused.headers_mut().insert(REFUSED_HEADER, HeaderValue::from_static("1"));
        return refused;
    }
    if req.uri().path().ends_with("/exec") {
        let url = leader.borrow().as_ref().map(|l| l.url.clone());
        return match url {
            Some(url) => HttpError(ApiError::new(
                ErrorCode::NoLeader,
                format!("exec sessions are relayed by the leader: connect to {url}"),
            ))
            .into_response(),
            None => no_leader("no leader to relay the session"),
        };
    }
    // A node that proved itself with its certificate is passed on over the leader's cluster
    // port, under this manager's certificate, naming the node.
    let for_node = match (req.extensions().get::<Peer>(), req.extensions().get::<Caller>()) {
        (Some(_), Some(caller)) if caller.grant == Grant::Node => Some(caller.name.clone()),
        _ => None,
    };
    // A join carries the join secret: between managers too, only over mutual TLS.
    let via_cluster = for_node.is_some() || req.uri().path() == crate::api::JOIN_PATH;
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, FORWARD_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return HttpError(ApiError::new(ErrorCode::PayloadTooLarge, "request body too large"))
                .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    // A browser's origin was checked against this manager's host (`cube_http::auth`); the
    // leader, seeing another host, would take the page for another site's.
    headers.remove(axum::http::header::ORIGIN);
    headers.remove("sec-fetch-site");
    headers.insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
    headers.remove(cube_http::auth::NODE_HEADER);
    if let Some(node) = &for_node
        && let Ok(value) = HeaderValue::from_str(node)
    {
        headers.insert(cube_http::auth::NODE_HEADER, value);
    }
    let deadline = tokio::time::Instant::now() + NO_LEADER_WAIT;
    loop {
        let target = leader.borrow_and_update().clone();
        let target = match (via_cluster, target) {
            (true, Some(t)) => match (&t.cluster_url, m.manager_http.get()) {
                (Some(url), Some(cluster)) => Some(cluster.with_base(url)),
                _ => None,
            },
            (false, Some(t)) => Some(m.http.with_base(&t.url)),
            (_, None) => None,
        };
        if let Some(client) = target {
            match client.forward(parts.method.clone(), &path, headers.clone(), body.clone()).await {
                Ok(answer) if answer.headers().contains_key(REFUSED_HEADER) => {
                    // Not the leader after all (yet): ask again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tokio::time::Instant::now() >= deadline {
                        return no_leader("no leader answered within 5 s");
                    }
                    continue;
                }
                Ok(answer) => return relay(answer),
                Err(e) => {
                    tracing::debug!(leader = %client.base(), error = %Chain(&e), "cannot reach the leader");
                }
            }
        }
        // Checked here, not by a timeout around the wait below: an attempt that fails at once
        // (a refused connection) must not be able to keep this loop from ever ending.
        if tokio::time::Instant::now() >= deadline {
            return no_leader("no leader answered within 5 s");
        }
        let retry = (tokio::time::Instant::now() + FORWARD_RETRY).min(deadline);
        if next_leader(&mut leader, retry).await == Election::Unfollowed {
            // Stopping: answer now, so the caller tries another manager instead of holding
            // this one's shutdown up.
            return no_leader("this manager is stopping");
        }
    }
}

/// A leader that could not be reached is tried again this often while waiting.
const FORWARD_RETRY: Duration = Duration::from_millis(500);

/// What waiting on the election found.
#[derive(Debug, PartialEq, Eq)]
enum Election {
    /// A leader was named, or it is time to try again.
    Followed,
    /// Nobody follows the election any more (the manager is stopping): no leader will be
    /// named.
    Unfollowed,
}

/// Waits until the election names a leader (again) or `retry` comes.
async fn next_leader(
    leader: &mut watch::Receiver<Option<LeaderInfo>>,
    retry: tokio::time::Instant,
) -> Election {
    match tokio::time::timeout_at(retry, leader.changed()).await {
        Ok(Ok(())) | Err(_) => Election::Followed,
        Ok(Err(_)) => Election::Unfollowed,
    }
}

/// The leader's answer, as this manager's.
fn relay(answer: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = answer.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = axum::body::Body::from_stream(answer.bytes_stream());
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "content-length",
        "host",
    ] {
        headers.remove(name);
    }
}

/// 503 `no_leader` (with `Retry-After`).
fn no_leader(why: &str) -> Response {
    HttpError(ApiError::new(ErrorCode::NoLeader, format!("no leader: {why}; retry")))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(url: &str) -> LeaderInfo {
        LeaderInfo { id: "m".into(), url: url.into(), cluster_url: None, epoch: 1 }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_leader_ends_at_once_when_the_election_is_no_longer_followed() {
        let (tx, mut rx) = watch::channel(Some(info("http://a")));
        drop(tx);
        let began = tokio::time::Instant::now();
        assert_eq!(next_leader(&mut rx, began + FORWARD_RETRY).await, Election::Unfollowed);
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_leader_that_is_not_named_ends_at_the_retry() {
        let (tx, mut rx) = watch::channel(Some(info("http://a")));
        let began = tokio::time::Instant::now();
        assert_eq!(next_leader(&mut rx, began + FORWARD_RETRY).await, Election::Followed);
        assert_eq!(began.elapsed(), FORWARD_RETRY);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_leader_ends_when_one_is_named() {
        let (tx, mut rx) = watch::channel(None);
        let began = tokio::time::Instant::now();
        let named = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Some(info("http://b")));
            tx
        });
        assert_eq!(next_leader(&mut rx, began + FORWARD_RETRY).await, Election::Followed);
        assert_eq!(began.elapsed(), Duration::from_millis(100));
        assert_eq!(rx.borrow().as_ref().map(|l| l.url.clone()), Some("http://b".to_owned()));
        drop(named.await);
    }
}

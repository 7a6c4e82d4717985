//! Cube's ingress: a node listens on every published service port and forwards each
//! connection to a healthy instance of its service, anywhere in the cluster (its own node's
//! first; otherwise the one with the fewest open connections).
//!
//! - `balance`: which instance a connection goes to (pure).
//! - [`Ingress`]: the listeners, kept in step with the manager's endpoints by
//!   [`Ingress::apply`], and the forwarding of connections.
//!
//! A connect that fails before a byte was forwarded is retried on another instance, so an
//! instance that died costs no connection that had not reached it. An instance removed from
//! the endpoints gets no new connection from the moment the change is applied; its open
//! connections go on until they end ([`Ingress::open_connections`] counts them, so the manager
//! can wait for them before it stops the instance).

mod balance;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use cube_core::endpoints::{IngressListener, ServiceEndpoints};
use cube_core::{NodeId, TaskId};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use balance::{Backend, Route, pick, routes};

/// How long a connect to an instance may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Instances tried for one connection.
const ATTEMPTS: usize = 3;
/// How long an instance that refused a connect is passed over (while others are left), so
/// one that died costs one failed connect, not one per connection, until the manager's
/// endpoints drop it.
const COOLDOWN: Duration = Duration::from_secs(5);

/// A node's ingress.
#[derive(Clone, Debug)]
pub struct Ingress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeId,
    /// The address the listeners bind.
    ip: IpAddr,
    routes: RwLock<Arc<BTreeMap<u16, Route>>>,
    listeners: Mutex<BTreeMap<u16, Listening>>,
    /// Open connections per instance.
    load: Mutex<HashMap<TaskId, usize>>,
    /// Breaks ties between equally loaded instances.
    turn: AtomicUsize,
    /// Instances whose last connect failed, and when.
    refused: Mutex<HashMap<TaskId, tokio::time::Instant>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Listening {
    status: IngressListener,
    /// Cancels the accept loop (`None`: the port could not be bound).
    stop: Option<CancellationToken>,
}

impl Ingress {
    /// An ingress of `node` listening on `ip`; everything stops when `shutdown` is cancelled.
    pub fn new(node: NodeId, ip: IpAddr, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                ip,
                routes: RwLock::new(Arc::new(BTreeMap::new())),
                listeners: Mutex::new(BTreeMap::new()),
                load: Mutex::new(HashMap::new()),
                turn: AtomicUsize::new(0),
                refused: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// Serves `services`' endpoints from now on: new connections go only to them, ports no
    /// longer published stop listening (their open connections go on), new ones are bound.
    pub fn apply(&self, services: &[ServiceEndpoints]) {
        let routes = Arc::new(routes(services));
        *self.inner.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&routes);
        let mut listeners = self.inner.listeners();
        listeners.retain(|port, l| {
            let keep =
                routes.get(port).is_some_and(|r| r.service == l.status.service) && l.stop.is_some();
            if !keep && let Some(stop) = &l.stop {
                stop.cancel();
            }
            keep
        });
        for (port, route) in routes.iter() {
            if listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.inner.ip, *port);
            let mut status = IngressListener {
                port: *port,
                service: route.service.clone(),
                address: addr.to_string(),
                error: None,
            };
            // Binding a port is immediate; a std listener keeps this synchronous under the
            // lock, then tokio takes it over.
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std);
            let stop = match bound {
                Ok(listener) => {
                    let stop = self.inner.shutdown.child_token();
                    let inner = Arc::clone(&self.inner);
                    self.inner.tracker.spawn(accept_loop(inner, listener, *port, stop.clone()));
                    tracing::info!(port, service = %route.service, %addr, "ingress listening");
                    Some(stop)
                }
                Err(e) => {
                    let why = bind_error(&e);
                    tracing::warn!(port, service = %route.service, %addr, error = %why, "ingress cannot listen");
                    status.error = Some(why);
                    None
                }
            };
            listeners.insert(*port, Listening { status, stop });
        }
    }

    /// The published ports as this node serves them.
    pub fn listeners(&self) -> Vec<IngressListener> {
        self.inner.listeners().values().map(|l| l.status.clone()).collect()
    }

    /// Connections open to each instance through this ingress.
    pub fn open_connections(&self) -> HashMap<TaskId, usize> {
        self.inner.load().clone()
    }

    /// Waits until every listener and connection has ended (after the shutdown token was
    /// cancelled).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    fn listeners(&self) -> MutexGuard<'_, BTreeMap<u16, Listening>> {
        // Each holder leaves the map whole; a panic cannot leave it half-changed.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self) -> MutexGuard<'_, HashMap<TaskId, usize>> {
        self.load.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self) -> MutexGuard<'_, HashMap<TaskId, tokio::time::Instant>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Instances that refused a connect within the cooldown (forgetting older refusals).
    fn cooling(&self) -> Vec<TaskId> {
        let mut refused = self.refused();
        refused.retain(|_, at| at.elapsed() < COOLDOWN);
        refused.keys().copied().collect()
    }

    fn route(&self, port: u16) -> Option<Route> {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).get(&port).cloned()
    }
}

/// Why a port cannot be listened on, in words.
fn bind_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "the port is already in use on this node".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "the port is privileged and the worker may not bind it".to_owned()
        }
        _ => e.to_string(),
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, port: u16, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let inner2 = Arc::clone(&inner);
                inner.tracker.spawn(forward(inner2, client, peer, port));
            }
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather than spin.
                tracing::warn!(port, error = %e, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One open connection to an instance, counted while it lives.
struct Open<'a> {
    inner: &'a Inner,
    task: TaskId,
}

impl<'a> Open<'a> {
    fn new(inner: &'a Inner, task: TaskId) -> Self {
        *inner.load().entry(task).or_default() += 1;
        Self { inner, task }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut load = self.inner.load();
        if let Some(n) = load.get_mut(&self.task) {
            *n -= 1;
            if *n == 0 {
                load.remove(&self.task);
            }
        }
    }
}

/// Forwards one client connection (layer 4): to a chosen instance, trying another when a
/// connect fails, then bytes both ways until either side closes.
async fn forward(inner: Arc<Inner>, mut client: TcpStream, peer: SocketAddr, port: u16) {
    let mut tried = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(route) = inner.route(port) else { return };
        let turn = inner.turn.fetch_add(1, Ordering::Relaxed);
        let backend = {
            let cooling = inner.cooling();
            let load = inner.load();
            let load = |t| load.get(&t).copied().unwrap_or(0);
            let avoid: Vec<TaskId> = tried.iter().chain(&cooling).copied().collect();
            pick(&route, inner.node, load, &avoid, turn)
                .or_else(|| pick(&route, inner.node, load, &tried, turn))
                .cloned()
        };
        let Some(backend) = backend else {
            tracing::debug!(port, %peer, "no instance to forward to");
            return;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&backend.addr)).await {
            Ok(Ok(mut upstream)) => {
                inner.refused().remove(&backend.task);
                let _open = Open::new(&inner, backend.task);
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                tokio::select! {
                    () = inner.shutdown.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(port, task = %backend.task, addr = %backend.addr, error = %e, "connect refused; trying another instance");
            }
            Err(_) => {
                tracing::debug!(port, task = %backend.task, addr = %backend.addr, "connect timed out; trying another instance");
            }
        }
        inner.refused().insert(backend.task, tokio::time::Instant::now());
        tried.push(backend.task);
    }
}

//! Cube's ingress: a node listens on every published service port and forwards each
//! connection to a healthy instance of its service, anywhere in the cluster (its own node's
//! first; otherwise the one with the fewest open connections).
//!
//! - `balance`: which instance a connection or request goes to (pure).
//! - [`Ingress`]: the listeners, kept in step with the manager's endpoints by
//!   [`Ingress::apply`].
//! - `tcp`: layer 4, a connection to one instance, whatever the protocol.
//! - `http_proxy`: layer 7, each request of a kept-alive connection to an instance of its own.
//!
//! A connect that fails before a byte was forwarded is retried on another instance, so an
//! instance that died costs no connection (or request) that had not reached it. An instance
//! removed from the endpoints gets nothing new from the moment the change is applied; what it
//! has open goes on until it ends ([`Ingress::open_connections`] counts it, so the manager can
//! wait for it before it stops the instance).

mod balance;
mod http_proxy;
mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use cube_core::endpoints::{IngressListener, ServiceEndpoints};
use cube_core::service::IngressMode;
use cube_core::{NodeId, TaskId};
use tokio::net::{TcpListener, TcpSocket};
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
    /// A second address each port is listened on, for the node's own containers (their
    /// bridge's gateway), shared with the other ingresses of this host.
    containers: Option<IpAddr>,
    routes: RwLock<Arc<BTreeMap<u16, Route>>>,
    listeners: Mutex<BTreeMap<u16, Listening>>,
    /// Open connections per instance.
    load: Mutex<HashMap<TaskId, usize>>,
    /// Breaks ties between equally loaded instances.
    turn: AtomicUsize,
    /// Instances whose last connect failed, and when.
    refused: Mutex<HashMap<TaskId, tokio::time::Instant>>,
    /// The pooled client of `http` routes.
    upstream: http_proxy::Upstream,
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
        Self::with_container_address(node, ip, None, shutdown)
    }

    /// [`Ingress::new`], also listening on `containers` (where the node's containers reach
    /// it) unless that is `None` or covered by `ip` already.
    pub fn with_container_address(
        node: NodeId,
        ip: IpAddr,
        containers: Option<IpAddr>,
        shutdown: CancellationToken,
    ) -> Self {
        let containers = containers.filter(|c| *c != ip && !ip.is_unspecified());
        Self {
            inner: Arc::new(Inner {
                node,
                ip,
                containers,
                routes: RwLock::new(Arc::new(BTreeMap::new())),
                listeners: Mutex::new(BTreeMap::new()),
                load: Mutex::new(HashMap::new()),
                turn: AtomicUsize::new(0),
                refused: Mutex::new(HashMap::new()),
                upstream: http_proxy::upstream(),
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
                    if let Some(ip) = self.inner.containers {
                        self.listen_for_containers(SocketAddr::new(ip, *port), &stop);
                    }
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

    /// Listens on `addr` for the node's containers too, until `stop`. Every ingress of this
    /// host listens on the same gateway address, so the socket is shared (`SO_REUSEPORT`):
    /// any of them forwards alike. A failure is logged: the node still serves the port.
    fn listen_for_containers(&self, addr: SocketAddr, stop: &CancellationToken) {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            s.listen(1024)
        });
        match bound {
            Ok(listener) => {
                let inner = Arc::clone(&self.inner);
                let port = addr.port();
                self.inner.tracker.spawn(accept_loop(inner, listener, port, stop.clone()));
                tracing::debug!(%addr, "ingress listening for containers");
            }
            Err(e) => {
                tracing::warn!(%addr, error = %bind_error(&e), "containers cannot reach this published port");
            }
        }
    }

    /// The published ports as this node serves them.
    pub fn listeners(&self) -> Vec<IngressListener> {
        self.inner.listeners().values().map(|l| l.status.clone()).collect()
    }

    /// Connections (`tcp`) and requests (`http`) open to each instance through this ingress.
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

    /// The instance of `port`'s service the next connection or request goes to: not one in
    /// `tried`, and not one that refused a connect lately unless nothing else is left.
    fn choose(&self, port: u16, tried: &[TaskId]) -> Option<Backend> {
        let route = self.route(port)?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let cooling = self.cooling();
        let load = self.load();
        let load = |t| load.get(&t).copied().unwrap_or(0);
        let avoid: Vec<TaskId> = tried.iter().chain(&cooling).copied().collect();
        pick(&route, self.node, load, &avoid, turn)
            .or_else(|| pick(&route, self.node, load, tried, turn))
            .cloned()
    }

    /// Notes that `task` refused a connect (or answered one).
    fn connected(&self, task: TaskId, ok: bool) {
        if ok {
            self.refused().remove(&task);
        } else {
            self.refused().insert(task, tokio::time::Instant::now());
        }
    }
}

/// One connection or request open to an instance, counted while it lives.
struct Open {
    inner: Arc<Inner>,
    task: TaskId,
}

impl Open {
    fn new(inner: &Arc<Inner>, task: TaskId) -> Self {
        *inner.load().entry(task).or_default() += 1;
        Self { inner: Arc::clone(inner), task }
    }
}

impl Drop for Open {
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
                // The mode is the route's when the connection arrives; it keeps it.
                let Some(route) = inner.route(port) else { continue };
                let inner2 = Arc::clone(&inner);
                match route.mode {
                    IngressMode::Tcp => {
                        inner.tracker.spawn(tcp::forward(inner2, client, peer, port));
                    }
                    IngressMode::Http => {
                        let stop = stop.clone();
                        inner.tracker.spawn(http_proxy::serve(inner2, client, peer, port, stop));
                    }
                }
            }
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather than spin.
                tracing::warn!(port, error = %e, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

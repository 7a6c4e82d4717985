//! Server plumbing shared by the worker and manager APIs, so both answer every bad request the
//! same way: a JSON [`ErrorBody`], never a plain-text rejection and never a 500 for bad input.
//!
//! Handlers fail with [`HttpError`], the [`ApiError`] of the contract as an HTTP response.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, authenticate};
use crate::conns::{Connections, Limits};
use crate::mtls::{Peer, Revocations};
use crate::tls::{ServerTls, TlsListener};
use cube_api::openapi::{self, Api, Method, Operation};
use cube_api::{ApiError, ErrorBody, ErrorCode};

/// Largest request body accepted (1 MiB): a task spec is a few KiB at most.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// An [`ApiError`] answered as an HTTP response: its code's status and the JSON envelope. (The
/// contract crate knows nothing of axum, so the response lives here.)
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Without a leader, a second is about what an election takes.
        let retry = (self.0.code == ErrorCode::NoLeader)
            .then_some([(axum::http::header::RETRY_AFTER, "1")]);
        (status, retry, axum::Json(ErrorBody { error: self.0 })).into_response()
    }
}

/// The raw request body, limited to [`BODY_LIMIT`]; an oversized body is a JSON 413.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(HttpError(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is larger than {BODY_LIMIT} bytes"),
                )))
            }
            Err(rejection) => Err(HttpError(ApiError::new(
                ErrorCode::InvalidJson,
                format!("could not read request body: {}", rejection.body_text()),
            ))),
        }
    }
}

/// Query parameters; malformed ones are a JSON 400.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                HttpError(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("bad query string: {}", e.body_text()),
                ))
            })
    }
}

/// An exec request: its parsed query and the WebSocket upgrade. A malformed query, then a
/// request that is not an upgrade, is a JSON 400 (the query first, so a plain GET learns what
/// is wrong with it).
pub struct ExecUpgrade(pub cube_api::exec::ExecQuery, pub axum::extract::ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for ExecUpgrade {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = cube_api::exec::ExecQuery::parse(parts.uri.query().unwrap_or(""))?;
        let upgrade = axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("an exec is a WebSocket: {} (cube exec opens one)", e.body_text()),
            )
        })?;
        Ok(Self(query, upgrade))
    }
}

/// A router whose every route is an [`Operation`] of the contract: what it serves is what its
/// OpenAPI document (`GET /v1/openapi.json`, added by [`Routes::finish`]) says, by
/// construction.
pub struct Routes<S> {
    router: Router<S>,
    operations: Vec<&'static Operation>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self { router: Router::new(), operations: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `operation` with `handler`.
    pub fn route<H, T>(self, operation: &'static Operation, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let method = on(filter(operation.method), handler);
        self.add(operation, method)
    }

    /// Serves `operation` with `handler`, taking bodies up to `limit` bytes (instead of
    /// [`BODY_LIMIT`]).
    pub fn route_limited<H, T>(
        self,
        operation: &'static Operation,
        handler: H,
        limit: usize,
    ) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let method = on(filter(operation.method), handler)
            .layer(axum::extract::DefaultBodyLimit::max(limit));
        self.add(operation, method)
    }

    fn add(mut self, operation: &'static Operation, method: MethodRouter<S>) -> Self {
        // Each operation checks its own access: the route cannot be served without it. Its
        // answer says which operation it was (for the audit log, outside the router).
        let method =
            method.layer(middleware::from_fn(move |req: Request, next: Next| async move {
                let mut response = crate::auth::authorize(operation.access, req, next).await;
                response.extensions_mut().insert(Served(operation));
                response
            }));
        // Routing the same path again adds methods to it.
        self.router = self.router.route(operation.path, method);
        self.operations.push(operation);
        self
    }

    /// The router, with `GET /v1/openapi.json` answering the document of what it serves.
    pub fn finish(self, api: Api) -> Router<S> {
        let mut operations = self.operations;
        operations.push(&openapi::OPENAPI);
        let document = Bytes::from(openapi::document(api, &operations).to_string());
        let serve = move || {
            let document = document.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], document) }
        };
        let access = openapi::OPENAPI.access;
        let method = on(filter(openapi::OPENAPI.method), serve).layer(middleware::from_fn(
            move |req: Request, next: Next| crate::auth::authorize(access, req, next),
        ));
        self.router.route(openapi::OPENAPI.path, method)
    }
}

/// In the extensions of an answer: the operation that answered it (whatever the outcome, a
/// refusal included).
#[derive(Clone, Copy, Debug)]
pub struct Served(pub &'static Operation);

fn filter(method: Method) -> MethodFilter {
    match method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// Parses an id from a path segment, answering 400 (not 404) for something that is not an id.
pub fn parse_id<T>(raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse::<T>().map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
}

/// Adds what every Cube API router needs: JSON 404/405 answers, the body limit, authentication
/// by `auth` (before anything else looks at the request; each route then checks its caller's
/// access), request logs, and request metrics when `metrics` is given (counting refused requests
/// too).
pub fn finish_router(
    router: Router,
    auth: Authenticator,
    metrics: Option<crate::metrics::HttpMetrics>,
) -> Router {
    let router = router
        .fallback(|| async { HttpError(ApiError::new(ErrorCode::NotFound, "no such endpoint")) })
        .method_not_allowed_fallback(|| async {
            HttpError(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint",
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT));
    let router = router.layer(middleware::from_fn_with_state(auth, authenticate));
    let router = router.layer(middleware::from_fn(log_request));
    match metrics {
        Some(metrics) => {
            router.layer(middleware::from_fn_with_state(metrics, crate::metrics::record))
        }
        None => router,
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if status >= 500 {
        tracing::warn!(%method, %path, status, micros, "request failed");
    } else {
        tracing::debug!(%method, %path, status, micros, "request");
    }
    response
}

/// Why an API server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be listened on (in use, not local, no permission).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
    /// The server's task panicked (a bug).
    #[error("the API server panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// A bound listener: its address is known (and can be announced, or handed to the router)
/// before anything is served.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    addr: SocketAddr,
    limits: Limits,
}

impl Listener {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let bind_error = |source| ServerError::Bind { addr, source };
        let inner = TcpListener::bind(addr).await.map_err(bind_error)?;
        let bound = inner.local_addr().map_err(bind_error)?;
        Ok(Self { inner, addr: bound, limits: Limits::default() })
    }

    /// The same, holding clients to `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address bound (with the port the OS chose).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` here (over TLS when `tls` is given) until `shutdown` is cancelled, then
    /// finishes in-flight requests and returns. Connections are bounded by `limits`.
    pub async fn serve(
        self,
        router: Router,
        shutdown: CancellationToken,
        tls: Option<ServerTls>,
    ) -> Result<(), ServerError> {
        let limits = self.limits;
        match tls {
            Some(tls) => {
                let listener = TlsListener::new(self.inner, &tls).map_err(ServerError::Serve)?;
                let revoked = tls.revocations().cloned();
                let identify = |io: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>| {
                    let leaf = io.get_ref().1.peer_certificates()?.first()?;
                    cube_pki::inspect(leaf).ok().map(|info| Peer(info.identity))
                };
                serve_connections(listener, router, shutdown, limits, identify, revoked).await;
            }
            None => serve_connections(self.inner, router, shutdown, limits, |_| None, None).await,
        }
        Ok(())
    }

    /// [`Listener::serve`] on a task of its own.
    pub fn spawn(
        self,
        router: Router,
        shutdown: CancellationToken,
        tls: Option<ServerTls>,
    ) -> Server {
        let addr = self.addr;
        Server { addr, task: tokio::spawn(self.serve(router, shutdown, tls)) }
    }
}

/// The accept loop: every connection takes a slot ([`crate::conns`]), is served by hyper (HTTP/1
/// with upgrades, so exec's WebSockets pass) with a header read timeout, and is closed when it
/// is evicted for a newer one (or, for a node in `revoked`, revoked). `identify` says who the
/// peer is, from its client certificate. On shutdown: stop accepting, let in-flight requests
/// finish.
async fn serve_connections<L, F>(
    mut listener: L,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
    identify: F,
    revoked: Option<Revocations>,
) where
    F: Fn(&L::Io) -> Option<Peer>,
    L: axum::serve::Listener,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let connections = Connections::new(limits.max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let peer = identify(&io);
        let (io, slot) = connections.admit(io);
        // A node's connection ends when the node is revoked; anyone else's never does so.
        let revoked = match (&peer, revoked.clone()) {
            (Some(Peer(cube_pki::Identity::Node(id))), Some(r)) => {
                let id = id.clone();
                futures_util::future::Either::Left(async move { r.revoked(&id).await })
            }
            _ => futures_util::future::Either::Right(std::future::pending::<()>()),
        };
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(peer.clone());
                }
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = graceful
            .watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
        let silent = limits.header_read_timeout;
        tokio::spawn(async move {
            tokio::select! {
                // Errors are the client's (a reset, a timeout, bad HTTP): nothing to report.
                _ = connection => {}
                () = slot.evicted.cancelled() => {}
                () = slot.silent_for(silent) => {}
                () = revoked => tracing::info!("closed a removed node's connection"),
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An API server serving on a task of its own.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until it has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(ServerError::Panicked)?
    }
}

//! A typed HTTP client for the worker and manager APIs.
//!
//! Every request has a timeout. Errors say which address was tried and what kind of failure it
//! was ([`Unreachable`]: refused, timed out, no such host, TLS, bad URL...), decided from the
//! error's types, never from its text; when the server answered with the error envelope they
//! carry its [`ApiError`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cube_api::events::StreamLine;
use cube_api::types::{
    HealthView, HeartbeatRequest, HeartbeatResponse, LogsQuery, NodeInfo, NodeStats,
    RegisterRequest, TaskFilter, TaskView,
};
use cube_api::types::{RevertRequest, ScaleRequest, ServicePlanView, ServiceView};
use cube_api::{ApiError, ErrorBody, ErrorCode};
use cube_core::deployment::Deployment;
use cube_core::service::{ServiceSpec, Version};
use cube_core::{DeploymentId, TaskId, TaskSpec};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Token;
use crate::tls::ClientTls;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or did not answer in time.
    #[error("cannot reach {url}: {kind}")]
    Unreachable {
        /// URL that was tried.
        url: String,
        /// What kind of failure.
        kind: Unreachable,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an API error.
    #[error("{url}: {} ({})", error.message, status)]
    Api {
        /// URL that was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The error body.
        error: ApiError,
    },
    /// The server answered 2xx with a body that is not the expected JSON.
    #[error("{url}: unexpected response (status {status})")]
    Decode {
        /// URL that was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Why the body does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// The server answered with an error that is not the API's envelope (not a Cube server?).
    #[error("{url}: unexpected response (status {status}): {body}")]
    NotCube {
        /// URL that was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The HTTP client could not be built (bad TLS settings).
    #[error("cannot build an HTTP client")]
    Build(#[source] reqwest::Error),
    /// The cluster's mutual TLS could not be set up from the agent's certificate.
    #[error("cannot set up mutual TLS with the cluster's CA")]
    ClusterTls(#[source] crate::tls::TlsError),
}

/// Why a server could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// Nothing listens at the address.
    #[error("connection refused")]
    Refused,
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The host name does not resolve.
    #[error("cannot resolve the host name")]
    Dns,
    /// The TLS handshake failed (an untrusted certificate, or a server that does not speak
    /// TLS).
    #[error("TLS handshake failed")]
    Tls,
    /// The address is not a valid URL.
    #[error("not a valid URL (expected e.g. http://127.0.0.1:5555)")]
    InvalidUrl,
    /// Connecting failed otherwise (no route, connection reset during connect).
    #[error("cannot connect")]
    Connect,
    /// The connection broke after it was made.
    #[error("the connection failed")]
    Broken,
}

impl Unreachable {
    /// Classifies a reqwest error by the types in its cause chain.
    fn of(e: &reqwest::Error) -> Self {
        if e.is_builder() {
            return Unreachable::InvalidUrl;
        }
        if e.is_timeout() {
            return Unreachable::Timeout;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cause {
            if err.is::<ResolveError>() {
                return Unreachable::Dns;
            }
            if err.is::<rustls::Error>() {
                return Unreachable::Tls;
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Unreachable::Refused,
                    std::io::ErrorKind::TimedOut => return Unreachable::Timeout,
                    _ => {}
                }
                // An io::Error's `source` skips the error it wraps (often another io::Error
                // around the TLS error): descend into the wrapped one instead.
                if let Some(inner) = io.get_ref() {
                    cause = Some(inner);
                    continue;
                }
            }
            cause = err.source();
        }
        if e.is_connect() { Unreachable::Connect } else { Unreachable::Broken }
    }
}

/// A host name that did not resolve (from Cube's resolver, so the client can tell it apart).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}")]
pub struct ResolveError {
    /// The name looked up.
    pub host: String,
    /// The resolver's error.
    #[source]
    pub source: std::io::Error,
}

/// The system resolver (`getaddrinfo` on a blocking thread, as reqwest's own), reporting
/// failures as [`ResolveError`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port on every address.
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.collect::<Vec<std::net::SocketAddr>>());
            match found {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(source) => Err(Box::new(ResolveError { host, source }) as _),
            }
        })
    }
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            ClientError::Unreachable { .. }
            | ClientError::Decode { .. }
            | ClientError::NotCube { .. }
            | ClientError::Build(_)
            | ClientError::ClusterTls(_) => None,
        }
    }

    /// Whether the request may succeed if retried (network trouble or a 503).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { kind, .. } => match kind {
                Unreachable::Refused
                | Unreachable::Timeout
                | Unreachable::Dns
                | Unreachable::Connect
                | Unreachable::Broken => true,
                Unreachable::Tls | Unreachable::InvalidUrl => false,
            },
            ClientError::Api { status, .. } => *status == 503,
            ClientError::Decode { .. }
            | ClientError::NotCube { .. }
            | ClientError::Build(_)
            | ClientError::ClusterTls(_) => false,
        }
    }

    fn unreachable(url: &str, source: reqwest::Error) -> Self {
        ClientError::Unreachable { url: url.to_owned(), kind: Unreachable::of(&source), source }
    }

    /// The error a non-2xx answer stands for: the API's envelope, or whatever else it was.
    fn from_answer(url: String, status: StatusCode, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => ClientError::Api { url, status: status.as_u16(), error: body.error },
            Err(_) => ClientError::NotCube {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(body).chars().take(200).collect(),
            },
        }
    }
}

/// Body of `POST /v1/tasks`: a spec with an optional id.
#[derive(Debug, Serialize)]
struct SubmitBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
    #[serde(flatten)]
    spec: &'a TaskSpec,
}

/// A client for one Cube server (worker or manager).
#[derive(Clone, Debug)]
pub struct Client {
    bases: Arc<Bases>,
    http: reqwest::Client,
    /// For streams (followed logs): no overall timeout, only a connect timeout.
    streaming: reqwest::Client,
    /// Sent as `Authorization: Bearer` on every request when set.
    token: Option<Token>,
    /// Sent as `X-Cube-Epoch` on every request when set: the leader's epoch, on a highly
    /// available manager's calls to workers.
    epoch: Option<u64>,
}

/// The servers a client may talk to (several highly available managers: any of them answers,
/// and passes writes to the leader), and the one it talks to now.
#[derive(Debug)]
struct Bases {
    list: Vec<String>,
    current: AtomicUsize,
}

impl Bases {
    fn new(spec: &str) -> Self {
        let list: Vec<String> = spec
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        let list = if list.is_empty() { vec![String::new()] } else { list };
        Self { list, current: AtomicUsize::new(0) }
    }

    fn current(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.list.len();
        &self.list[i]
    }

    /// Moves on from `failed` to the next one (unless another call did already).
    fn next_after(&self, failed: &str) {
        let i = self.current.load(Ordering::Relaxed) % self.list.len();
        if self.list[i] == failed {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.list.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Talks to `leader` from now on, if it is one of the list (the leader answers without a
    /// hop).
    fn prefer(&self, leader: &str) {
        let leader = leader.trim_end_matches('/');
        if let Some(i) = self.list.iter().position(|b| b == leader) {
            self.current.store(i, Ordering::Relaxed);
        }
    }
}

/// The header carrying a leader's epoch on its calls to workers.
pub const EPOCH_HEADER: &str = "x-cube-epoch";

/// A stream of raw log bytes.
pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, ClientError>> + Send>>;

/// A WebSocket opened by [`Client::websocket`].
pub type WebSocket = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

/// The lines of `GET /v1/events` as they arrive (ends when the server closes the stream).
pub type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<StreamLine, ClientError>> + Send>>;

/// Result of a submit: the task and whether it was newly created (201) or already known (200).
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The task as stored by the server.
    pub task: TaskView,
    /// `true` for 201 Created, `false` for an idempotent repeat (200).
    pub created: bool,
    /// The manager's `X-Cube-Index` before the submit: its events come after it.
    pub index: Option<u64>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:5556`), with a per-request `timeout`.
    /// `base` may list several servers separated by commas (highly available managers): a
    /// request that cannot connect to one is tried on the next, and answers naming the leader
    /// (`X-Cube-Leader`) make it the one asked first.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_tls(base, timeout, None)
    }

    /// A client for `base` that, for `https://` addresses, trusts only the CA certificates of
    /// `tls` (the system's roots when `None`).
    pub fn with_tls(
        base: impl Into<String>,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        Self::built(base, timeout, |builder| match tls {
            Some(tls) => builder.tls_certs_only(tls.certificates()),
            None => builder,
        })
    }

    /// A client for `base` whose two reqwest clients (with and without an overall timeout)
    /// are both made by `configure` from the common builder.
    fn built(
        base: impl Into<String>,
        timeout: Duration,
        configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Result<Self, ClientError> {
        let bases = Arc::new(Bases::new(&base.into()));
        let connect = timeout.min(Duration::from_secs(3));
        // Cube's APIs never redirect; the UI's forms answer 303, which a follower passing
        // one on must hand back to the browser, not follow.
        let builder = || {
            configure(
                crate::tls::http_client_builder()
                    .connect_timeout(connect)
                    .redirect(reqwest::redirect::Policy::none()),
            )
        };
        let http = builder().timeout(timeout).build().map_err(ClientError::Build)?;
        let streaming = builder().build().map_err(ClientError::Build)?;
        Ok(Self { bases, http, streaming, token: None, epoch: None })
    }

    /// A client for `base` over mutual TLS on the cluster's CA ([`crate::mtls`]): it presents
    /// the agent's certificate and accepts only a peer of the role the configuration expects.
    pub fn with_cluster_tls(
        base: impl Into<String>,
        timeout: Duration,
        tls: &rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        Self::built(base, timeout, |builder| builder.tls_backend_preconfigured(tls.clone()))
    }

    /// This client, sending `token` with every request (none if `None`).
    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// Sends a request received from someone else on to this client's base (a follower
    /// manager passing a write to its leader): the method, path with query, headers and body
    /// as they came, without this client's own token; no overall timeout, so long polls pass.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: reqwest::header::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base(), path_and_query);
        let request = self.streaming.request(method, &url).headers(headers).body(body);
        request.send().await.map_err(|e| ClientError::unreachable(&url, e))
    }

    /// The same client, sending `epoch` as `X-Cube-Epoch` on every request.
    pub fn with_epoch(mut self, epoch: Option<u64>) -> Self {
        self.epoch = epoch;
        self
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t.secret()),
            None => request,
        };
        match self.epoch {
            Some(epoch) => request.header(EPOCH_HEADER, epoch),
            None => request,
        }
    }

    /// `GET /v1/tasks/{id}/logs`: the task's output, the last `tail` lines only if given, and
    /// with `follow` kept open for new output until the task finishes.
    pub async fn logs(
        &self,
        id: TaskId,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, ClientError> {
        use futures_util::StreamExt;
        let url = format!("{}/v1/tasks/{id}/logs", self.base());
        let query = LogsQuery { follow, tail };
        let response = self.open_stream(&url, &query).await?;
        Ok(Box::pin(
            response
                .bytes_stream()
                .map(move |chunk| chunk.map_err(|e| ClientError::unreachable(&url, e))),
        ))
    }

    /// `GET /v1/events`: the events after `index` (`None`: from now) of the given topics
    /// (`Task`, `Service:web`, ...; none: every topic), then every new one, line by line.
    /// An index older than the history is an [`ClientError::Api`] with code `gone`.
    pub async fn events(
        &self,
        index: Option<u64>,
        topics: &[String],
    ) -> Result<EventStream, ClientError> {
        use futures_util::StreamExt;
        let url = format!("{}/v1/events", self.base());
        let mut query: Vec<(&str, String)> = topics.iter().map(|t| ("topic", t.clone())).collect();
        if let Some(index) = index {
            query.push(("index", index.to_string()));
        }
        let response = self.open_stream(&url, &query).await?;
        let chunks = response.bytes_stream().boxed();
        let lines = futures_util::stream::unfold(
            (chunks, Vec::<u8>::new(), url),
            |(mut chunks, mut buf, url)| async move {
                loop {
                    if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let parsed =
                            serde_json::from_slice::<StreamLine>(&line[..end]).map_err(|source| {
                                ClientError::Decode { url: url.clone(), status: 200, source }
                            });
                        return Some((parsed, (chunks, buf, url)));
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            let e = ClientError::unreachable(&url, e);
                            return Some((Err(e), (chunks, Vec::new(), url)));
                        }
                        None => return None,
                    }
                }
            },
        );
        Ok(Box::pin(lines))
    }

    /// Opens a WebSocket to `path_and_query` (an exec session): a GET upgraded on a
    /// connection of its own, with this client's token and TLS settings; an error answer
    /// (404, 409, ...) is decoded like any other.
    pub async fn websocket(&self, path_and_query: &str) -> Result<WebSocket, ClientError> {
        use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
        let url = format!("{}{path_and_query}", self.base());
        let key = generate_key();
        let response = self
            .authorize(self.streaming.get(&url))
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, "websocket")
            .header(reqwest::header::SEC_WEBSOCKET_VERSION, "13")
            .header(reqwest::header::SEC_WEBSOCKET_KEY, &key)
            .send()
            .await
            .map_err(|e| ClientError::unreachable(&url, e))?;
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(ClientError::from_answer(url, status, &bytes));
        }
        let accept = response.headers().get(reqwest::header::SEC_WEBSOCKET_ACCEPT);
        if accept.and_then(|a| a.to_str().ok()) != Some(derive_accept_key(key.as_bytes()).as_str())
        {
            return Err(ClientError::NotCube {
                url,
                status: status.as_u16(),
                body: "a 101 answer that is not a WebSocket handshake".into(),
            });
        }
        let upgraded = response.upgrade().await.map_err(|e| ClientError::unreachable(&url, e))?;
        Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
            upgraded,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await)
    }

    /// Starts a streamed GET of `url` (no overall timeout); an error answer is decoded.
    async fn open_stream<Q: Serialize + ?Sized>(
        &self,
        url: &str,
        query: &Q,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self
            .authorize(self.streaming.get(url).query(query))
            .send()
            .await
            .map_err(|e| ClientError::unreachable(url, e))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(ClientError::from_answer(url.to_owned(), status, &bytes));
        }
        Ok(response)
    }

    /// A client for another server that shares this one's connection pools and timeouts (a
    /// manager talking to thousands of workers must not hold a pool per worker).
    pub fn with_base(&self, base: impl Into<String>) -> Self {
        Self {
            bases: Arc::new(Bases::new(&base.into())),
            http: self.http.clone(),
            streaming: self.streaming.clone(),
            token: self.token.clone(),
            epoch: self.epoch,
        }
    }

    /// The base URL asked now.
    pub fn base(&self) -> &str {
        self.bases.current()
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<HealthView, ClientError> {
        self.call(Method::GET, "/v1/health", None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/tasks`.
    pub async fn submit(
        &self,
        id: Option<TaskId>,
        spec: &TaskSpec,
    ) -> Result<Submitted, ClientError> {
        self.submit_generation(id, None, spec).await
    }

    /// `POST /v1/tasks` with a placement generation (manager to worker).
    pub async fn submit_generation(
        &self,
        id: Option<TaskId>,
        generation: Option<u32>,
        spec: &TaskSpec,
    ) -> Result<Submitted, ClientError> {
        let body = SubmitBody { id, generation, spec };
        let (status, task, index) =
            self.call_indexed(Method::POST, "/v1/tasks", Some(&body)).await?;
        Ok(Submitted { task, created: status == StatusCode::CREATED, index })
    }

    /// `GET /v1/tasks?state=..&node=..` (filters are manager-only).
    pub async fn tasks_filtered(&self, filter: &TaskFilter) -> Result<Vec<TaskView>, ClientError> {
        self.tasks_at(filter).await.map(|(tasks, _)| tasks)
    }

    /// [`Client::tasks_filtered`], with the answer's `X-Cube-Index` (later changes have
    /// higher indexes).
    pub async fn tasks_at(
        &self,
        filter: &TaskFilter,
    ) -> Result<(Vec<TaskView>, Option<u64>), ClientError> {
        let url = format!("{}/v1/tasks", self.base());
        let request = self.authorize(self.http.get(&url).query(filter));
        self.send_indexed(url, request).await.map(|(_, v, index)| (v, index))
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.call(Method::GET, "/v1/nodes", None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/nodes/{id}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/nodes/{id}/drain`.
    pub async fn drain(
        &self,
        node: &str,
        deadline: Option<Duration>,
    ) -> Result<NodeInfo, ClientError> {
        let path = format!("/v1/nodes/{node}/drain");
        let body = cube_api::types::DrainRequest { deadline };
        self.call(Method::POST, &path, Some(&body)).await.map(|(_, v)| v)
    }

    /// `POST /v1/nodes/{id}/eligibility`.
    pub async fn set_eligible(&self, node: &str, eligible: bool) -> Result<NodeInfo, ClientError> {
        let path = format!("/v1/nodes/{node}/eligibility");
        let body = cube_api::types::EligibilityRequest { eligible };
        self.call(Method::POST, &path, Some(&body)).await.map(|(_, v)| v)
    }

    /// `GET /v1/audit`.
    pub async fn audit(
        &self,
        query: &cube_api::auth::AuditQuery,
    ) -> Result<Vec<cube_api::auth::AuditRecord>, ClientError> {
        let url = format!("{}/v1/audit", self.base());
        let request = self.authorize(self.http.get(&url).query(query));
        self.send_indexed(url, request).await.map(|(_, v, _)| v)
    }

    /// `GET /v1/tokens`.
    pub async fn tokens(&self) -> Result<Vec<cube_api::auth::TokenView>, ClientError> {
        self.call(Method::GET, "/v1/tokens", None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/tokens`: the new token, with its secret (shown this once).
    pub async fn create_token(
        &self,
        request: &cube_api::auth::TokenRequest,
    ) -> Result<cube_api::auth::CreatedToken, ClientError> {
        self.call(Method::POST, "/v1/tokens", Some(request)).await.map(|(_, v)| v)
    }

    /// `DELETE /v1/tokens/{name}`.
    pub async fn revoke_token(&self, name: &str) -> Result<cube_api::auth::TokenView, ClientError> {
        self.call(Method::DELETE, &format!("/v1/tokens/{name}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// `DELETE /v1/nodes/{id}`.
    pub async fn remove_node(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/nodes/{node}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/cluster/join` (on a client made with [`crate::mtls::pinned_config`]).
    pub async fn join(
        &self,
        req: &cube_api::cluster::JoinRequest,
    ) -> Result<cube_api::cluster::Enrolment, ClientError> {
        self.call(Method::POST, "/v1/cluster/join", Some(req)).await.map(|(_, v)| v)
    }

    /// `POST /v1/cluster/renew`.
    pub async fn renew(
        &self,
        req: &cube_api::cluster::RenewRequest,
    ) -> Result<cube_api::cluster::Enrolment, ClientError> {
        self.call(Method::POST, "/v1/cluster/renew", Some(req)).await.map(|(_, v)| v)
    }

    /// `POST /v1/cluster/join-token`.
    pub async fn rotate_join_token(&self) -> Result<cube_api::cluster::JoinTokenView, ClientError> {
        self.call(Method::POST, "/v1/cluster/join-token", None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/nodes/register`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<HeartbeatResponse, ClientError> {
        self.call(Method::POST, "/v1/nodes/register", Some(req)).await.map(|(_, v)| v)
    }

    /// `POST /v1/nodes/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        node: cube_core::NodeId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/v1/nodes/{node}/heartbeat");
        self.call(Method::POST, &path, Some(req)).await.map(|(_, v)| v)
    }

    /// `GET /v1/tasks`.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, ClientError> {
        self.call(Method::GET, "/v1/tasks", None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn task(&self, id: TaskId) -> Result<TaskView, ClientError> {
        self.call(Method::GET, &format!("/v1/tasks/{id}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// The manager's current index (the `X-Cube-Index` of its health answer): where a
    /// stream "from now" starts.
    pub async fn index(&self) -> Result<u64, ClientError> {
        let (_, _, index) =
            self.call_indexed::<(), HealthView>(Method::GET, "/v1/health", None).await?;
        Ok(index.unwrap_or(0))
    }

    /// [`Client::stop`], with the manager's `X-Cube-Index` before the request (its events come
    /// after it).
    pub async fn stop_at(&self, id: TaskId) -> Result<(TaskView, Option<u64>), ClientError> {
        let path = format!("/v1/tasks/{id}");
        self.call_indexed(Method::DELETE, &path, None::<&()>).await.map(|(_, v, i)| (v, i))
    }

    /// `DELETE /v1/tasks/{id}`: asks for the task to stop; returns the task as of the request.
    pub async fn stop(&self, id: TaskId) -> Result<TaskView, ClientError> {
        self.call(Method::DELETE, &format!("/v1/tasks/{id}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// `PUT /v1/services/{name}` (`check_index`: compare-and-set on the modify index); `true`
    /// if the service was created.
    pub async fn put_service(
        &self,
        spec: &ServiceSpec,
        check_index: Option<u64>,
    ) -> Result<(ServiceView, bool), ClientError> {
        let (view, created, _) = self.put_service_at(spec, check_index).await?;
        Ok((view, created))
    }

    /// [`Client::put_service`], with the manager's `X-Cube-Index` before the change (its
    /// events come after it).
    pub async fn put_service_at(
        &self,
        spec: &ServiceSpec,
        check_index: Option<u64>,
    ) -> Result<(ServiceView, bool, Option<u64>), ClientError> {
        let mut path = format!("/v1/services/{}", spec.name);
        if let Some(index) = check_index {
            path.push_str(&format!("?check_index={index}"));
        }
        let (status, view, index) = self.call_indexed(Method::PUT, &path, Some(spec)).await?;
        Ok((view, status == StatusCode::CREATED, index))
    }

    /// `POST /v1/services/{name}/plan`: what an update would do.
    pub async fn plan(&self, spec: &ServiceSpec) -> Result<ServicePlanView, ClientError> {
        let path = format!("/v1/services/{}/plan", spec.name);
        self.call(Method::POST, &path, Some(spec)).await.map(|(_, v)| v)
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        self.call(Method::GET, "/v1/services", None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceView, ClientError> {
        self.call(Method::GET, &format!("/v1/services/{name}"), None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/nodes/{id}/endpoints`: what `node`'s ingress forwards, once the endpoints
    /// changed after `applied` (which tells the manager this node applied it) or `wait`
    /// passed. The client's timeout must be longer than `wait`.
    pub async fn ingress_feed(
        &self,
        node: cube_core::NodeId,
        applied: Option<u64>,
        wait: Duration,
    ) -> Result<cube_api::types::IngressFeed, ClientError> {
        let mut path = format!("/v1/nodes/{node}/endpoints?wait={}ms", wait.as_millis());
        if let Some(index) = applied {
            path.push_str(&format!("&index={index}"));
        }
        self.call(Method::GET, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/services/{name}/endpoints`: the instances its published ports reach.
    pub async fn service_endpoints(
        &self,
        name: &str,
    ) -> Result<cube_core::endpoints::ServiceEndpoints, ClientError> {
        let path = format!("/v1/services/{name}/endpoints");
        self.call(Method::GET, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `DELETE /v1/services/{name}`: stops every instance.
    pub async fn remove_service(&self, name: &str) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{name}");
        self.call(Method::DELETE, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/services/{name}/scale`.
    pub async fn scale(&self, name: &str, count: u32) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{name}/scale");
        self.call(Method::POST, &path, Some(&ScaleRequest { count })).await.map(|(_, v)| v)
    }

    /// `GET /v1/services/{name}/versions`, oldest first.
    pub async fn service_versions(&self, name: &str) -> Result<Vec<Version>, ClientError> {
        let path = format!("/v1/services/{name}/versions");
        self.call(Method::GET, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/services/{name}/revert`.
    pub async fn revert(&self, name: &str, version: u64) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{name}/revert");
        self.call(Method::POST, &path, Some(&RevertRequest { version })).await.map(|(_, v)| v)
    }

    /// `GET /v1/deployments/{id}`.
    pub async fn deployment(&self, id: DeploymentId) -> Result<Deployment, ClientError> {
        let path = format!("/v1/deployments/{id}");
        self.call(Method::GET, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `POST /v1/deployments/{id}/{action}`: `promote`, `pause`, `resume` or `fail`.
    pub async fn deployment_action(
        &self,
        id: DeploymentId,
        action: &str,
    ) -> Result<Deployment, ClientError> {
        let path = format!("/v1/deployments/{id}/{action}");
        self.call(Method::POST, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        self.call(Method::GET, "/v1/stats", None::<&()>).await.map(|(_, v)| v)
    }

    /// Any JSON call: `body` is sent as JSON when given; a non-2xx answer becomes
    /// [`ClientError::Api`].
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        self.call_indexed(method, path, body).await.map(|(status, value, _)| (status, value))
    }

    /// [`Client::call`], with the answer's `X-Cube-Index` (the manager's index before it acted).
    pub async fn call_indexed<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, T, Option<u64>), ClientError> {
        let mut tries = self.bases.list.len();
        loop {
            let base = self.base().to_owned();
            let url = format!("{base}{path}");
            let mut request = self.authorize(self.http.request(method.clone(), &url));
            if let Some(body) = body {
                request = request.json(body);
            }
            match self.send_indexed(url, request).await {
                // That server is gone, or hangs (a paused manager): the next one may answer.
                // After a timeout the request may have been served; Cube's writes may be
                // repeated (a submit carries its id, the rest set what they set).
                Err(ClientError::Unreachable {
                    kind:
                        Unreachable::Refused
                        | Unreachable::Connect
                        | Unreachable::Dns
                        | Unreachable::Timeout,
                    ..
                }) if tries > 1 => {
                    tries -= 1;
                    self.bases.next_after(&base);
                }
                answer => return answer,
            }
        }
    }

    /// Sends `request` to `url` and decodes a 2xx answer as `T`, with the answer's
    /// `X-Cube-Index`.
    async fn send_indexed<T: DeserializeOwned>(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T, Option<u64>), ClientError> {
        let response = request.send().await.map_err(|e| ClientError::unreachable(&url, e))?;
        if self.bases.list.len() > 1
            && let Some(leader) = response.headers().get("x-cube-leader")
            && let Ok(leader) = leader.to_str()
        {
            self.bases.prefer(leader);
        }
        let status = response.status();
        let index = response
            .headers()
            .get("x-cube-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response.bytes().await.map_err(|e| ClientError::unreachable(&url, e))?;
        if !status.is_success() {
            return Err(ClientError::from_answer(url, status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map(|v| (status, v, index))
            .map_err(|source| ClientError::Decode { url, status: status.as_u16(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_classified_by_kind() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let timeout = Duration::from_secs(5);
        let kind = |e: ClientError| match e {
            ClientError::Unreachable { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        let refused = Client::new(&closed, timeout).unwrap().health().await.unwrap_err();
        assert!(refused.is_transient());
        assert_eq!(kind(refused), Unreachable::Refused);
        let dns = Client::new("http://no-such-host.invalid:1", timeout).unwrap();
        assert_eq!(kind(dns.health().await.unwrap_err()), Unreachable::Dns);
        let bad = Client::new("not a url", timeout).unwrap().health().await.unwrap_err();
        assert!(!bad.is_transient());
        assert_eq!(kind(bad), Unreachable::InvalidUrl);
    }
}

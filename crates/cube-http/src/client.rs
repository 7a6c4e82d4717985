//! A typed HTTP client for the worker and manager APIs.
//!
//! Every request has a timeout; errors say which address was tried and carry the server's
//! [`ApiError`] when it answered with one.

use std::time::Duration;

use cube_core::{TaskId, TaskSpec};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Token;
use crate::tls::ClientTls;
use cube_api::types::{
    HealthView, HeartbeatRequest, HeartbeatResponse, NodeInfo, NodeStats, RegisterRequest,
    TaskFilter, TaskView,
};
use cube_api::{ApiError, ErrorBody, ErrorCode};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or did not answer in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// URL that was tried.
        url: String,
        /// Why (connection refused, timeout...).
        reason: String,
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
    /// The server answered with something that is not the expected JSON.
    #[error("{url}: unexpected response (status {status}): {reason}")]
    Decode {
        /// URL that was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// What went wrong.
        reason: String,
    },
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            ClientError::Unreachable { .. } | ClientError::Decode { .. } => None,
        }
    }

    /// Whether the request may succeed if retried (network trouble or a 503).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status == 503,
            ClientError::Decode { .. } => false,
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
    base: String,
    http: reqwest::Client,
    /// For streams (followed logs): no overall timeout, only a connect timeout.
    streaming: reqwest::Client,
    /// Sent as `Authorization: Bearer` on every request when set.
    token: Option<Token>,
}

/// A stream of raw log bytes.
pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, ClientError>> + Send>>;

/// Result of a submit: the task and whether it was newly created (201) or already known (200).
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The task as stored by the server.
    pub task: TaskView,
    /// `true` for 201 Created, `false` for an idempotent repeat (200).
    pub created: bool,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:5556`), with a per-request `timeout`.
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
        let base = base.into().trim_end_matches('/').to_owned();
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: base.clone(),
            reason: e.to_string(),
        };
        let connect = timeout.min(Duration::from_secs(3));
        let builder = || {
            let builder = crate::tls::http_client_builder().connect_timeout(connect);
            match tls {
                Some(tls) => builder.tls_certs_only(tls.certificates()),
                None => builder,
            }
        };
        let http = builder().timeout(timeout).build().map_err(unreachable)?;
        let streaming = builder().build().map_err(unreachable)?;
        Ok(Self { base, http, streaming, token: None })
    }

    /// This client, sending `token` with every request (none if `None`).
    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t.secret()),
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
        let mut url = format!("{}/v1/tasks/{id}/logs?follow={follow}", self.base);
        if let Some(n) = tail {
            url.push_str(&format!("&tail={n}"));
        }
        let response = self
            .authorize(self.streaming.get(&url))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: describe(&e) })?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api { url, status: status.as_u16(), error: body.error },
                Err(_) => ClientError::Decode {
                    url,
                    status: status.as_u16(),
                    reason: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        Ok(Box::pin(response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| ClientError::Unreachable { url: url.clone(), reason: describe(&e) })
        })))
    }

    /// A client for another server that shares this one's connection pools and timeouts (a
    /// manager talking to thousands of workers must not hold a pool per worker).
    pub fn with_base(&self, base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http: self.http.clone(),
            streaming: self.streaming.clone(),
            token: self.token.clone(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
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
        let (status, task) = self.call(Method::POST, "/v1/tasks", Some(&body)).await?;
        Ok(Submitted { task, created: status == StatusCode::CREATED })
    }

    /// `GET /v1/tasks?state=..&node=..` (filters are manager-only).
    pub async fn tasks_filtered(&self, filter: &TaskFilter) -> Result<Vec<TaskView>, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = filter.state {
            query.push(format!("state={s}"));
        }
        if let Some(n) = filter.node {
            query.push(format!("node={n}"));
        }
        let path = if query.is_empty() {
            "/v1/tasks".to_owned()
        } else {
            format!("/v1/tasks?{}", query.join("&"))
        };
        self.call(Method::GET, &path, None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.call(Method::GET, "/v1/nodes", None::<&()>).await.map(|(_, v)| v)
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/nodes/{id}"), None::<&()>).await.map(|(_, v)| v)
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

    /// `DELETE /v1/tasks/{id}`: asks for the task to stop; returns the task as of the request.
    pub async fn stop(&self, id: TaskId) -> Result<TaskView, ClientError> {
        self.call(Method::DELETE, &format!("/v1/tasks/{id}"), None::<&()>).await.map(|(_, v)| v)
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
        let url = format!("{}{}", self.base, path);
        let mut request = self.authorize(self.http.request(method, &url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: describe(&e) })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: describe(&e) })?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map(|v| (status, v)).map_err(|e| ClientError::Decode {
                url,
                status: status.as_u16(),
                reason: e.to_string(),
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => {
                    Err(ClientError::Api { url, status: status.as_u16(), error: body.error })
                }
                Err(_) => Err(ClientError::Decode {
                    url,
                    status: status.as_u16(),
                    reason: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                }),
            }
        }
    }
}

/// A one-line reason for a reqwest error, including its source chain (reqwest's own message is
/// often just "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

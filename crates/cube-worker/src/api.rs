//! The worker's HTTP API (v1). Handlers parse, call the [`Agent`], and map its errors; they never
//! touch drivers directly.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cube_api::openapi::{self, Api, worker as w};
use cube_api::types::{HealthView, LogsQuery, NodeStats, TaskSubmission, TaskView};
use cube_api::{ApiError, ErrorCode};
use cube_core::{Chain, TaskId};
use cube_http::server::{Body, HttpError, Query, Routes, parse_id};
use tokio::sync::watch;

use crate::WorkerError;
use crate::agent::Agent;
use crate::host::{HostSnapshot, node_stats};

/// State shared by the handlers.
#[derive(Clone, Debug)]
pub(crate) struct ApiState {
    /// The task table.
    pub agent: Arc<Agent>,
    /// Latest host metrics.
    pub host: watch::Receiver<HostSnapshot>,
    /// Required on every request but health checks, when set.
    pub token: Option<cube_http::auth::Token>,
    /// What the worker measured.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The highest leader epoch seen: commands of older leaders are refused.
    pub epochs: Arc<crate::epoch::Epochs>,
}

/// The router for `/v1/...`.
pub(crate) fn router(state: ApiState) -> Router {
    let token = state.token.clone();
    let http_metrics = state.metrics.http.clone();
    let routes = Routes::new()
        .route(&openapi::HEALTH, health)
        .route(&w::STATS, stats)
        .route(&w::LIST_TASKS, list_tasks)
        .route(&w::SUBMIT_TASK, submit_task)
        .route(&w::GET_TASK, get_task)
        .route(&w::STOP_TASK, stop_task)
        .route(&w::TASK_LOGS, task_logs)
        .route(&w::EXEC, exec_task)
        .route(&openapi::METRICS, metrics)
        .finish(Api::Worker)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state.epochs), admit_epoch))
        .with_state(state);
    cube_http::server::finish_router(
        routes,
        std::sync::Arc::new(cube_http::auth::ClusterToken(token)),
        Some(http_metrics),
    )
}

/// A request carrying a leader's epoch (`X-Cube-Epoch`) is served only if no newer leader's
/// epoch was seen; a newer one is recorded first. Requests without one (a single manager, a
/// user) pass.
async fn admit_epoch(
    axum::extract::State(epochs): axum::extract::State<Arc<crate::epoch::Epochs>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let epoch = req
        .headers()
        .get(cube_http::client::EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(epoch) = epoch
        && let Err(e) = epochs.admit(epoch).await
    {
        tracing::warn!(error = %e, path = %req.uri().path(), "refused a command of a replaced leader");
        return HttpError(e.into()).into_response();
    }
    next.run(req).await
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match &e {
            WorkerError::NotFound(id) => ApiError::not_found("task", id),
            WorkerError::StaleLeader { .. } => ApiError::new(ErrorCode::StaleLeader, e.to_string()),
            // The spec is fine, but not for this node: the same answer as any spec it cannot
            // take, never worth retrying here.
            WorkerError::NotAllowed { .. } => ApiError::new(ErrorCode::InvalidSpec, e.to_string()),
            WorkerError::Conflict(_)
            | WorkerError::Stale { .. }
            | WorkerError::Busy { .. }
            | WorkerError::NotRunning { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            WorkerError::Store(_) => {
                let message = Chain(&e).to_string();
                tracing::error!(error = %message, "store failure while serving a request");
                ApiError::new(ErrorCode::Unavailable, message)
            }
            WorkerError::Transition(_)
            | WorkerError::File { .. }
            | WorkerError::BadNodeId { .. }
            | WorkerError::ProcessUser { .. }
            | WorkerError::Host(_)
            | WorkerError::Server(_)
            | WorkerError::Pki(_)
            | WorkerError::ClusterTls(_)
            | WorkerError::NoJoinToken
            | WorkerError::Join { .. }
            | WorkerError::JoinCancelled
            | WorkerError::OtherCa
            | WorkerError::OtherNodeId { .. }
            | WorkerError::Panicked { .. } => {
                let message = Chain(&e).to_string();
                tracing::error!(error = %message, "internal error while serving a request");
                ApiError::internal(message)
            }
        }
    }
}

impl From<WorkerError> for HttpError {
    fn from(e: WorkerError) -> Self {
        HttpError(e.into())
    }
}

async fn health(State(s): State<ApiState>) -> axum::Json<HealthView> {
    axum::Json(HealthView {
        status: "ok".into(),
        role: "worker".into(),
        node_id: Some(s.agent.node_id()),
        name: s.agent.name().to_owned(),
        version: env!("CARGO_PKG_VERSION").into(),
        leading: None,
        leader: None,
        epoch: None,
    })
}

async fn stats(State(s): State<ApiState>) -> axum::Json<NodeStats> {
    let host = s.host.borrow().clone();
    axum::Json(node_stats(&host, s.agent.table()))
}

/// `GET /v1/tasks/{id}/exec?command=...`: a command in the task's environment, over a
/// WebSocket (`cube_api::exec`). The task must be running; a bad query, an unknown task or a
/// finished one is refused before the upgrade.
async fn exec_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    cube_http::server::ExecUpgrade(query, upgrade): cube_http::server::ExecUpgrade,
) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let target = s.agent.exec_target(id)?;
    let agent = Arc::clone(&s.agent);
    Ok(upgrade.on_upgrade(move |socket| agent.serve_exec(socket, target, query)))
}

/// `GET /metrics`: Prometheus metrics (the cluster token guards it like every route).
async fn metrics(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    cube_http::metrics::response(&headers, s.metrics.render(&s.agent.table().census()))
}

/// A router serving only `GET /metrics`, without a token: for `--metrics-listen`.
pub(crate) fn metrics_router(agent: Arc<Agent>, metrics: Arc<crate::metrics::Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let (agent, metrics) = (Arc::clone(&agent), Arc::clone(&metrics));
            async move {
                cube_http::metrics::response(&headers, metrics.render(&agent.table().census()))
            }
        }),
    )
}

async fn list_tasks(State(s): State<ApiState>) -> axum::Json<Vec<TaskView>> {
    axum::Json(s.agent.table().list().iter().map(TaskView::from).collect())
}

async fn get_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskView>, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let task = s.agent.table().get(id).ok_or_else(|| ApiError::not_found("task", id))?;
    Ok(axum::Json(TaskView::from(&task)))
}

async fn submit_task(State(s): State<ApiState>, Body(body): Body) -> Result<Response, HttpError> {
    let submission = TaskSubmission::parse(&body)?;
    let (task, created) =
        s.agent.submit(submission.id, submission.generation, submission.spec).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(TaskView::from(&task))).into_response())
}

async fn stop_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let task = s.agent.stop(id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(TaskView::from(&task))).into_response())
}

async fn task_logs(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    if s.agent.table().get(id).is_none() {
        return Err(ApiError::not_found("task", id).into());
    }
    let body = axum::body::Body::from_stream(crate::logs::stream(
        Arc::clone(s.agent.table()),
        id,
        s.agent.log_path(id),
        q.follow,
        q.tail,
    ));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

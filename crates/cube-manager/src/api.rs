//! The manager's HTTP API (v1): tasks and nodes for users, registration and heartbeats for
//! workers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cube_api::types::{
    DrainRequest, EligibilityRequest, HealthView, HeartbeatRequest, HeartbeatResponse, LogsQuery,
    NodeInfo, RegisterRequest, RevertRequest, ScaleRequest, ServicePlanView, ServiceQuery,
    ServiceView, TaskFilter, TaskSubmission, TaskView,
};
use cube_api::{ApiError, ErrorCode};
use cube_core::deployment::Deployment;
use cube_core::service::Version;
use cube_core::{DeploymentId, NodeId, TaskId};

use crate::state::DeploymentAction;
use cube_http::server::{Body, HttpError, Query, parse_id};

use crate::{Manager, ManagerError};

type Shared = Arc<Manager>;

/// Registrations and heartbeats carry a node's tasks (a registration all of them), so they may
/// be much larger than a user's request.
const NODE_BODY_LIMIT: usize = 256 * 1024 * 1024;

impl From<ManagerError> for HttpError {
    fn from(e: ManagerError) -> Self {
        HttpError(e.into())
    }
}

/// The router for `/v1/...`.
pub fn router(manager: Arc<Manager>) -> Router {
    let token = manager.config().security.token.clone();
    let routes = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", get(list_tasks).post(submit_task))
        .route("/v1/tasks/{id}", get(get_task).delete(stop_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{name}", get(get_service).put(put_service).delete(remove_service))
        .route("/v1/services/{name}/scale", post(scale_service))
        .route("/v1/services/{name}/plan", post(plan_service))
        .route("/v1/services/{name}/versions", get(service_versions))
        .route("/v1/services/{name}/revert", post(revert_service))
        .route("/v1/deployments/{id}", get(get_deployment))
        .route("/v1/deployments/{id}/{action}", post(deployment_action))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/register", post(register).layer(DefaultBodyLimit::max(NODE_BODY_LIMIT)))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/nodes/{id}/drain", post(drain_node))
        .route("/v1/nodes/{id}/eligibility", post(node_eligibility))
        .route(
            "/v1/nodes/{id}/heartbeat",
            post(heartbeat).layer(DefaultBodyLimit::max(NODE_BODY_LIMIT)),
        )
        .with_state(manager);
    cube_http::server::finish_router(routes, token)
}

async fn health(State(m): State<Shared>) -> axum::Json<HealthView> {
    axum::Json(HealthView {
        status: "ok".into(),
        role: "manager".into(),
        node_id: None,
        name: m.config().name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn submit_task(State(m): State<Shared>, Body(body): Body) -> Result<Response, HttpError> {
    let submission = TaskSubmission::parse(&body)?;
    let (task, created) = m.submit(submission.id, submission.spec).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(TaskView::from(&task))).into_response())
}

/// Lists at least this long are encoded on a blocking thread, not on the async runtime.
const BLOCKING_LIST_LEN: usize = 256;

async fn list_tasks(
    State(m): State<Shared>,
    Query(filter): Query<TaskFilter>,
) -> Result<Response, HttpError> {
    let tasks = m.tasks(&filter);
    let small = tasks.len() < BLOCKING_LIST_LEN;
    let encode = move || {
        let views: Vec<TaskView> = tasks.iter().map(|t| TaskView::from(&**t)).collect();
        serde_json::to_vec(&views)
    };
    // 100k tasks are ~180 MB of JSON and take seconds to encode: that must not stall the
    // runtime threads that serve submits and heartbeats.
    let body = if small {
        encode()
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| ApiError::internal(format!("encoding the task list failed: {e}")))?
    }
    .map_err(|e| ApiError::internal(format!("cannot encode the task list: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_task(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskView>, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let task = m.task(id).ok_or_else(|| ApiError::not_found("task", id))?;
    Ok(axum::Json(TaskView::from(&task)))
}

async fn stop_task(State(m): State<Shared>, Path(id): Path<String>) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let task = m.stop(id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(TaskView::from(&task))).into_response())
}

async fn list_services(State(m): State<Shared>) -> axum::Json<Vec<ServiceView>> {
    axum::Json(m.services())
}

async fn get_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
) -> Result<axum::Json<ServiceView>, HttpError> {
    let view = m.service_view(&name).ok_or_else(|| ApiError::not_found("service", &name))?;
    Ok(axum::Json(view))
}

/// Creates (201) or updates (200) a service; the same spec again is a 200 that changes nothing.
async fn put_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<ServiceQuery>,
    Body(body): Body,
) -> Result<Response, HttpError> {
    let spec = cube_api::types::parse_service(&body, &name)?;
    let (view, created) = m.put_service(spec, query.check_index).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(view)).into_response())
}

/// A dry run: what `PUT` with this body would do.
async fn plan_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<ServicePlanView>, HttpError> {
    let spec = cube_api::types::parse_service(&body, &name)?;
    Ok(axum::Json(m.plan_service(&spec)))
}

async fn remove_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, HttpError> {
    let view = m.remove_service(&name).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

async fn scale_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<ServiceView>, HttpError> {
    let req: ScaleRequest = parse_json(&body)?;
    Ok(axum::Json(m.scale_service(&name, req.count).await?))
}

async fn service_versions(
    State(m): State<Shared>,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<Version>>, HttpError> {
    Ok(axum::Json(m.service_versions(&name)?))
}

async fn revert_service(
    State(m): State<Shared>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<ServiceView>, HttpError> {
    let req: RevertRequest = parse_json(&body)?;
    Ok(axum::Json(m.revert_service(&name, req.version).await?))
}

async fn get_deployment(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<axum::Json<Deployment>, HttpError> {
    let id: DeploymentId = parse_id(&id)?;
    Ok(axum::Json(m.deployment(id)?))
}

async fn deployment_action(
    State(m): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> Result<axum::Json<Deployment>, HttpError> {
    let id: DeploymentId = parse_id(&id)?;
    let action = match action.as_str() {
        "promote" => DeploymentAction::Promote,
        "pause" => DeploymentAction::Pause,
        "resume" => DeploymentAction::Resume,
        "fail" => DeploymentAction::Fail,
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no deployment action {other:?} (promote, pause, resume or fail)"),
            )
            .into());
        }
    };
    Ok(axum::Json(m.deployment_action(id, action).await?))
}

async fn list_nodes(State(m): State<Shared>) -> axum::Json<Vec<NodeInfo>> {
    axum::Json(m.nodes())
}

async fn get_node(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<axum::Json<NodeInfo>, HttpError> {
    Ok(axum::Json(m.node(&id)?))
}

async fn drain_node(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<NodeInfo>, HttpError> {
    let req: DrainRequest =
        if body.is_empty() { DrainRequest::default() } else { parse_json(&body)? };
    Ok(axum::Json(m.drain(&id, req.deadline).await?))
}

async fn node_eligibility(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<NodeInfo>, HttpError> {
    let req: EligibilityRequest = parse_json(&body)?;
    Ok(axum::Json(m.set_eligible(&id, req.eligible).await?))
}

async fn register(
    State(m): State<Shared>,
    Body(body): Body,
) -> Result<axum::Json<HeartbeatResponse>, HttpError> {
    let req: RegisterRequest = parse_json(&body)?;
    Ok(axum::Json(m.register(req).await?))
}

async fn heartbeat(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<HeartbeatResponse>, HttpError> {
    let id: NodeId = parse_id(&id)?;
    let req: HeartbeatRequest = parse_json(&body)?;
    Ok(axum::Json(m.heartbeat(id, req).await?))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidJson, format!("request body is not valid: {e}"))
    })
}

/// Streams the task's output from the node it was placed on.
async fn task_logs(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let stream = m.logs(id, q.follow, q.tail).await?;
    let body = axum::body::Body::from_stream(stream);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

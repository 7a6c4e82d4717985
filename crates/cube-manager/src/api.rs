//! The manager's HTTP API (v1): tasks and nodes for users, registration and heartbeats for
//! workers.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cube_api::events::{Topic, TopicFilter};
use cube_api::openapi::{self, Api, manager as m};
use cube_api::types::{
    DrainRequest, EligibilityRequest, HealthView, HeartbeatRequest, HeartbeatResponse, IngressFeed,
    LogsQuery, NodeInfo, RegisterRequest, RevertRequest, ScaleRequest, ServicePlanView,
    ServiceQuery, ServiceView, TaskFilter, TaskSubmission, TaskView,
};
use cube_api::{ApiError, ErrorCode};
use cube_core::deployment::Deployment;
use cube_core::service::Version;
use cube_core::{DeploymentId, NodeId, TaskId};

use crate::events::Framing;
use crate::state::DeploymentAction;
use cube_api::auth::{AuditQuery, AuditRecord, TokenRequest, TokenView};
use cube_api::cluster::{Enrolment, JoinRequest, JoinTokenView, RenewRequest};
use cube_http::auth::{Caller, Grant};
use cube_http::server::{Body, HttpError, Query, Routes, parse_id};

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

/// The path of a worker's join.
pub(crate) const JOIN_PATH: &str = m::JOIN.path;

/// The router for `/v1/...`.
pub fn router(manager: Arc<Manager>) -> Router {
    let auth = manager.authenticator();
    let http_metrics = manager.http_metrics();
    let routes =
        Routes::new()
            .route(&openapi::HEALTH, health)
            .route(&m::LIST_TASKS, list_tasks)
            .route(&m::SUBMIT_TASK, submit_task)
            .route(&m::GET_TASK, get_task)
            .route(&m::STOP_TASK, stop_task)
            .route(&m::TASK_LOGS, task_logs)
            .route(&m::EXEC, exec_task)
            .route(&m::LIST_SERVICES, list_services)
            .route(&m::GET_SERVICE, get_service)
            .route(&m::PUT_SERVICE, put_service)
            .route(&m::REMOVE_SERVICE, remove_service)
            .route(&m::SCALE_SERVICE, scale_service)
            .route(&m::PLAN_SERVICE, plan_service)
            .route(&m::SERVICE_VERSIONS, service_versions)
            .route(&m::SERVICE_ENDPOINTS, service_endpoints)
            .route(&m::REVERT_SERVICE, revert_service)
            .route(&m::GET_DEPLOYMENT, get_deployment)
            .route(&m::DEPLOYMENT_ACTION, deployment_action)
            .route(&m::LIST_NODES, list_nodes)
            .route_limited(&m::REGISTER, register, NODE_BODY_LIMIT)
            .route(&m::GET_NODE, get_node)
            .route(&m::DRAIN_NODE, drain_node)
            .route(&m::NODE_ELIGIBILITY, node_eligibility)
            .route(&m::REMOVE_NODE, remove_node)
            .route(&m::JOIN, join_cluster)
            .route(&m::RENEW, renew_certificate)
            .route(&m::ROTATE_JOIN_TOKEN, rotate_join_token)
            .route_limited(&m::HEARTBEAT, heartbeat, NODE_BODY_LIMIT)
            .route(&m::NODE_ENDPOINTS, ingress_feed)
            .route(&m::EVENTS, events)
            .route(&m::AUDIT, audit_log)
            .route(&m::LIST_TOKENS, list_tokens)
            .route(&m::CREATE_TOKEN, create_token)
            .route(&m::REVOKE_TOKEN, revoke_token)
            .route(&openapi::METRICS, metrics)
            .finish(Api::Manager)
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), crate::audit::audit))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), with_index))
            // The web UI: outside the API's contract (HTML, not JSON) and its blocking queries,
            // audited like it, and routed by the HA layer like every request.
            .merge(crate::ui::router().layer(axum::middleware::from_fn_with_state(
                Arc::clone(&manager),
                crate::audit::audit,
            )))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), crate::ha::route))
            .with_state(manager);
    cube_http::server::finish_router(routes, auth, Some(http_metrics))
}

/// `GET /metrics`: Prometheus metrics (the cluster token guards it like every route).
async fn metrics(State(m): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    cube_http::metrics::response(&headers, m.metrics_text())
}

/// A router serving only `GET /metrics`, without a token: for `--metrics-listen`.
pub fn metrics_router(manager: Arc<Manager>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(manager)
}

/// The index answers carry (`X-Cube-Index`).
const INDEX_HEADER: &str = "x-cube-index";
/// A blocking query's wait when it names none, and the longest it may ask for.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Every answer carries the newest durable index in `X-Cube-Index`, read before the handler
/// looks at the state (so the state it answers from is at least that new, and a blocking
/// query from that index never misses a change). A GET with `?index=N` is a blocking query:
/// it is answered once something newer than `N` is durable, or when its `wait` (default 5 m,
/// at most 10 m, plus up to 1/16 of jitter so clients that started together spread out)
/// has passed.
async fn with_index(
    State(m): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The event stream, logs and the ingress feed take `index` in a sense of their own.
    let path = req.uri().path();
    let blocking = req.method() == axum::http::Method::GET
        && path != "/v1/events"
        && !path.ends_with("/logs")
        && !(path.starts_with("/v1/nodes/") && path.ends_with("/endpoints"));
    if blocking && let Some(query) = req.uri().query() {
        match blocking_query(query) {
            Ok(Some((index, wait))) => {
                let jitter = wait.mul_f64(fastrand::f64() / 16.0);
                m.wait_past(index, wait + jitter).await;
            }
            Ok(None) => {}
            Err(e) => return HttpError(e).into_response(),
        }
    }
    let index = m.events.current();
    let mut response = next.run(req).await;
    response.headers_mut().insert(INDEX_HEADER, axum::http::HeaderValue::from(index));
    response
}

/// A query string's pairs, in order (none without one); 400 for one that does not decode.
pub(crate) fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("bad query string: {e}")))
}

/// `index` and `wait` of a blocking query (`None` without `index`).
fn blocking_query(query: &str) -> Result<Option<(u64, Duration)>, ApiError> {
    let pairs = query_pairs(Some(query))?;
    let mut index = None;
    let mut wait = None;
    for (k, v) in pairs {
        match k.as_str() {
            "index" => index = Some(parse_index(&v)?),
            "wait" => wait = Some(parse_wait(&v)?),
            _ => {}
        }
    }
    match (index, wait) {
        (Some(index), wait) => Ok(Some((index, wait.unwrap_or(DEFAULT_WAIT)))),
        (None, Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "wait needs index: ?index=N&wait=D answers once something newer than N exists",
        )),
        (None, None) => Ok(None),
    }
}

fn parse_index(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("index {raw:?} is not an index (a whole number, e.g. from X-Cube-Index)"),
        )
    })
}

fn parse_wait(raw: &str) -> Result<Duration, ApiError> {
    let wait = cube_core::units::parse_duration(raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("wait: {e}")))?;
    if wait > MAX_WAIT {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("wait {raw} is longer than the longest a query may block (10m)"),
        ));
    }
    Ok(wait)
}

/// `GET /v1/events?index=N&topic=T[:key]...`: the events after `N` (without `index`: from
/// now; with SSE also from `Last-Event-ID`), then every new one. NDJSON, or SSE when the
/// client accepts `text/event-stream`. An index older than the history is a 410 naming the
/// indexes it holds, before any event.
async fn events(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, HttpError> {
    let pairs = query_pairs(query.as_deref())?;
    let mut index = None;
    let mut filters = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "index" => index = Some(parse_index(&v)?),
            "topic" => filters.push(TopicFilter::parse(&v)?),
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown parameter {other:?}: expected index and topic"),
                )
                .into());
            }
        }
    }
    let accepts = |what: &str| {
        headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(what)))
    };
    let framing = if accepts("text/event-stream") { Framing::Sse } else { Framing::Ndjson };
    if index.is_none() && framing == Framing::Sse {
        index = headers
            .get("last-event-id")
            .map(|v| parse_index(v.to_str().unwrap_or_default()))
            .transpose()?;
    }
    if filters.iter().any(|f| f.topic.is_none()) {
        filters.clear();
    }
    // The audit log is an admin's: other roles get every other topic.
    if by.role() != Some(cube_api::auth::Role::Admin) {
        if filters.iter().any(|f| f.topic == Some(Topic::Audit)) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the Audit topic needs the `admin` role; `{}` does not have it", by.name),
            )
            .into());
        }
        if filters.is_empty() {
            filters = Topic::ALL
                .into_iter()
                .filter(|t| *t != Topic::Audit)
                .map(|t| TopicFilter { topic: Some(t), key: None })
                .collect();
        }
    }
    let after = index.unwrap_or_else(|| m.events.current());
    if let Err(bounds) = m.events.check_start(after) {
        return Err(ApiError {
            code: ErrorCode::Gone,
            message: format!(
                "index {after} is older than the event history, which holds {}..={}: read the \
                 state again and resume from its X-Cube-Index",
                bounds.oldest, bounds.current
            ),
            details: Vec::new(),
            index: Some(Box::new(bounds)),
        }
        .into());
    }
    let content_type = match framing {
        Framing::Ndjson => "application/x-ndjson",
        Framing::Sse => "text/event-stream",
    };
    let stream = crate::events::follow(Arc::clone(&m), after, filters, framing);
    let headers = [
        (axum::http::header::CONTENT_TYPE, content_type),
        (axum::http::header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, axum::body::Body::from_stream(stream)).into_response())
}

async fn health(State(m): State<Shared>) -> axum::Json<HealthView> {
    let (leading, leader, epoch) = m.leadership();
    axum::Json(HealthView {
        status: "ok".into(),
        role: "manager".into(),
        node_id: None,
        name: m.config().name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        leading,
        leader,
        epoch,
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

/// The instances every node's ingress may forward the service's published ports to.
async fn service_endpoints(
    State(m): State<Shared>,
    Path(name): Path<String>,
) -> Result<axum::Json<cube_core::endpoints::ServiceEndpoints>, HttpError> {
    let endpoints =
        m.service_endpoints(&name).ok_or_else(|| ApiError::not_found("service", &name))?;
    Ok(axum::Json(endpoints))
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
    let action = DeploymentAction::named(&action).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no deployment action {action:?} (promote, pause, resume or fail)"),
        )
    })?;
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

async fn audit_log(
    State(m): State<Shared>,
    Query(query): Query<AuditQuery>,
) -> Result<axum::Json<Vec<AuditRecord>>, HttpError> {
    let records = tokio::task::spawn_blocking(move || m.audit_log(&query))
        .await
        .map_err(|source| ManagerError::Panicked { what: "reading the audit log", source })??;
    Ok(axum::Json(records))
}

async fn list_tokens(State(m): State<Shared>) -> axum::Json<Vec<TokenView>> {
    axum::Json(m.list_tokens())
}

async fn create_token(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Body(body): Body,
) -> Result<Response, HttpError> {
    let request: TokenRequest = parse_json(&body)?;
    let created = m.create_token(request, &by).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn revoke_token(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<axum::Json<TokenView>, HttpError> {
    Ok(axum::Json(m.revoke_token(&name, &by).await?))
}

async fn node_eligibility(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<NodeInfo>, HttpError> {
    let req: EligibilityRequest = parse_json(&body)?;
    Ok(axum::Json(m.set_eligible(&id, req.eligible).await?))
}

/// A node's credentials act for that node only; the cluster token for any. A removed node is
/// refused whatever it presents.
fn acting_for(m: &Manager, caller: &Caller, node: NodeId) -> Result<(), ManagerError> {
    if m.removed(node) {
        return Err(ManagerError::NodeRemoved(node));
    }
    if caller.grant == Grant::Node && *caller.name != *node.to_string() {
        return Err(ManagerError::OtherNode { caller: caller.name.to_string(), node });
    }
    Ok(())
}

async fn register(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Body(body): Body,
) -> Result<axum::Json<HeartbeatResponse>, HttpError> {
    let req: RegisterRequest = parse_json(&body)?;
    acting_for(&m, &by, req.node_id)?;
    Ok(axum::Json(m.register(req).await?))
}

async fn heartbeat(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<HeartbeatResponse>, HttpError> {
    let id: NodeId = parse_id(&id)?;
    acting_for(&m, &by, id)?;
    let req: HeartbeatRequest = parse_json(&body)?;
    Ok(axum::Json(m.heartbeat(id, req).await?))
}

async fn remove_node(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<axum::Json<NodeInfo>, HttpError> {
    Ok(axum::Json(m.remove_node(&id).await?))
}

/// `POST /v1/cluster/join`: open (the secret is the credential). Its answer carries the
/// enrolled node as its caller, for the audit log.
async fn join_cluster(State(m): State<Shared>, Body(body): Body) -> Result<Response, HttpError> {
    let request: JoinRequest = parse_json(&body)?;
    let asked = request.node_id;
    let outcome = m.join(request).await;
    let who = match (&outcome, asked) {
        (Ok(enrolment), _) => enrolment.node_id.to_string(),
        (Err(_), Some(id)) => id.to_string(),
        (Err(_), None) => "unknown node".to_owned(),
    };
    let mut response = match outcome {
        Ok(enrolment) => axum::Json(enrolment).into_response(),
        Err(e) => HttpError::from(e).into_response(),
    };
    response.extensions_mut().insert(Caller { name: who.into(), grant: Grant::Node });
    Ok(response)
}

async fn renew_certificate(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Body(body): Body,
) -> Result<axum::Json<Enrolment>, HttpError> {
    let request: RenewRequest = parse_json(&body)?;
    Ok(axum::Json(m.renew(&by, &request.csr).await?))
}

async fn rotate_join_token(
    State(m): State<Shared>,
) -> Result<axum::Json<JoinTokenView>, HttpError> {
    let token = m.rotate_join_token().await?;
    Ok(axum::Json(JoinTokenView { token: token.to_string() }))
}

/// `GET /v1/nodes/{id}/endpoints?index=N&wait=D`: the node's ingress feed. Its own blocking
/// query: it waits for an endpoint change after `N` (not for any change), and `N` is also the
/// node's acknowledgement of what its ingress applied.
async fn ingress_feed(
    State(m): State<Shared>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<axum::Json<IngressFeed>, HttpError> {
    let node: NodeId = parse_id(&id)?;
    acting_for(&m, &by, node)?;
    let pairs = query_pairs(query.as_deref())?;
    let (mut index, mut wait) = (None, DEFAULT_WAIT);
    for (k, v) in pairs {
        match k.as_str() {
            "index" => index = Some(parse_index(&v)?),
            "wait" => wait = parse_wait(&v)?,
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown parameter {other:?}: expected index and wait"),
                )
                .into());
            }
        }
    }
    Ok(axum::Json(m.ingress_feed(node, index, wait).await?))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidJson, format!("request body is not valid: {e}"))
    })
}

/// `GET /v1/tasks/{id}/exec?command=...`: a command in the task's environment over a
/// WebSocket, through its node (`cube_api::exec`). The node's end is opened first, so a task
/// that does not run (409), an unknown one (404) or a bad query (400) is an HTTP error.
async fn exec_task(
    State(m): State<Shared>,
    Path(id): Path<String>,
    cube_http::server::ExecUpgrade(query, upgrade): cube_http::server::ExecUpgrade,
) -> Result<Response, HttpError> {
    let id: TaskId = parse_id(&id)?;
    let connected = m.exec_connect(id, query).await?;
    Ok(upgrade.on_upgrade(move |socket| m.serve_exec(socket, connected)))
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

//! The web UI at `/ui`: the pages of `cube-ui`, filled from this manager's state, the
//! buttons that act through the same methods as the API, and the live stream that keeps an
//! open page current.
//!
//! Authentication is the API's (`cube_http::auth`): a browser signs in once and its token
//! travels in an `HttpOnly`, `SameSite=Strict` cookie that only `/ui` paths accept; every
//! form carries the session's CSRF token, checked here before anything changes. Each action
//! answers with the API operation it performed, so the audit log records it like the API's.
//!
//! On a follower the pages and the live stream are served from its copy of the state and the
//! forms are passed to the leader, like every other request (`ha::route`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cube_api::ApiError;
use cube_api::events::{Event, Topic};
use cube_api::openapi::{Operation, manager as m};
use cube_api::types::{FieldChange, TaskFilter, TaskView};
use cube_core::{DeploymentId, NodeId, TaskId, TaskState};
use cube_http::auth::{BrowserSession, Caller, SESSION_COOKIE};
use cube_http::server::Served;
use cube_ui::{Section, Viewer};
use futures_util::StreamExt as _;
use maud::Markup;
use strum::VariantArray as _;

use crate::state::DeploymentAction;
use crate::{Manager, ManagerError};

type Shared = Arc<Manager>;

/// Services the overview lists (those short of healthy instances first).
const OVERVIEW_SERVICES: usize = 20;
/// Nodes the overview lists (those down first).
const OVERVIEW_NODES: usize = 20;
/// Events the overview lists.
const OVERVIEW_EVENTS: usize = 20;
/// Log lines a task page shows before following.
const LOG_TAIL: usize = 200;
/// How long a task page waits for its node to send the tail of the log.
const LOG_TAIL_WAIT: Duration = Duration::from_millis(750);
/// A live stream renders at most this often, however fast the cluster changes.
const LIVE_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// A live stream with nothing to say sends a comment this often (proxies drop silent ones).
const LIVE_KEEPALIVE: Duration = Duration::from_secs(20);

/// The UI's routes (authentication and the HA routing are the API router's layers).
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/ui", get(show))
        .route("/ui/", get(show))
        .route("/ui/services", get(show))
        .route("/ui/services/{name}", get(show))
        .route("/ui/tasks", get(show))
        .route("/ui/tasks/{id}", get(show))
        .route("/ui/nodes", get(show))
        .route("/ui/nodes/{id}", get(show))
        .route("/ui/live", get(live))
        .route("/ui/tasks/{id}/logs", get(follow_logs))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/services/{name}/scale", post(scale))
        .route("/ui/services/{name}/revert", post(revert))
        .route("/ui/deployments/{id}/{action}", post(deployment_action))
        .route("/ui/nodes/{id}/drain", post(drain))
        .route("/ui/nodes/{id}/eligibility", post(eligibility))
}

/// A page of the UI, as its URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Page {
    Overview,
    Services { page: usize },
    Service(String),
    Tasks(cube_ui::tasks::Filter),
    Task(TaskId),
    Nodes { page: usize },
    Node(String),
}

impl Page {
    /// The page at `path` with `query`.
    fn parse(path: &str, query: Option<&str>) -> Result<Page, Problem> {
        let pairs = crate::api::query_pairs(query)?;
        let get = |key: &str| {
            pairs.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
        };
        let page = match get("page") {
            Some(p) => p
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| Problem::bad(format!("page {p:?} is not a page number")))?,
            None => 1,
        };
        let segments: Vec<&str> =
            path.trim_start_matches("/ui").split('/').filter(|s| !s.is_empty()).collect();
        Ok(match segments.as_slice() {
            [] => Page::Overview,
            ["services"] => Page::Services { page },
            ["services", name] => Page::Service((*name).to_owned()),
            ["tasks"] => {
                let state = get("state")
                    .map(|s| {
                        TaskState::VARIANTS
                            .iter()
                            .copied()
                            .find(|v| v.to_string() == s)
                            .ok_or_else(|| Problem::bad(format!("no task state {s:?}")))
                    })
                    .transpose()?;
                let node = get("node")
                    .map(|n| n.parse::<NodeId>().map_err(|e| Problem::bad(format!("node: {e}"))))
                    .transpose()?;
                let service = get("service").map(str::to_owned);
                Page::Tasks(cube_ui::tasks::Filter { state, node, service, page })
            }
            ["tasks", id] => {
                Page::Task(id.parse().map_err(|e| Problem::bad(format!("task id: {e}")))?)
            }
            ["nodes"] => Page::Nodes { page },
            ["nodes", id] => Page::Node((*id).to_owned()),
            _ => return Err(Problem::not_found("no such page")),
        })
    }
}

/// What a page renders to: its title, its section and its live part.
struct Rendered {
    title: String,
    section: Section,
    live: Markup,
}

impl Manager {
    /// Node names by id.
    fn node_names(&self) -> BTreeMap<NodeId, String> {
        self.lock().nodes().map(|n| (n.node.id, n.node.name.clone())).collect()
    }

    /// The live part of `page` as `viewer` sees it, from the state now.
    fn render(&self, page: &Page, viewer: &Viewer) -> Result<Rendered, Problem> {
        let now = self.clock.now();
        Ok(match page {
            Page::Overview => {
                let mut nodes = self.nodes();
                let nodes_total = nodes.len();
                let nodes_down =
                    nodes.iter().filter(|n| n.state != cube_core::NodeState::Ready).count();
                // Those down first; then as registered.
                nodes.sort_by_key(|n| n.state == cube_core::NodeState::Ready);
                nodes.truncate(OVERVIEW_NODES);
                let (census, _) = self.lock().census();
                let tasks: Vec<(TaskState, usize)> = TaskState::VARIANTS
                    .iter()
                    .map(|s| (*s, census.get(s).copied().unwrap_or(0)))
                    .collect();
                let mut services = self.services();
                let services_total = services.len();
                let deployments_active = services
                    .iter()
                    .filter(|s| s.deployment.as_ref().is_some_and(|d| !d.status.is_terminal()))
                    .count();
                // Those short of healthy instances first; then by name.
                services.sort_by_key(|s| s.instances.healthy >= s.instances.desired);
                services.truncate(OVERVIEW_SERVICES);
                let events = self.recent_events();
                let overview = cube_ui::overview::Overview {
                    nodes: &nodes,
                    nodes_total,
                    nodes_down,
                    tasks: &tasks,
                    services: &services,
                    services_total,
                    deployments_active,
                    events: &events,
                    now,
                };
                Rendered {
                    title: "Overview".into(),
                    section: Section::Overview,
                    live: cube_ui::overview::live(&overview),
                }
            }
            Page::Services { page } => {
                let services = self.services();
                let total = services.len();
                let shown = page_of(services, *page, cube_ui::services::PER_PAGE);
                Rendered {
                    title: "Services".into(),
                    section: Section::Services,
                    live: cube_ui::services::list(&shown, *page, total),
                }
            }
            Page::Service(name) => {
                let service = self
                    .service_view(name)
                    .ok_or_else(|| Problem::not_found(format!("no service {name:?}")))?;
                let mut instances: Vec<TaskView> = self
                    .lock()
                    .task_handles(|t| {
                        t.instance.as_ref().is_some_and(|i| i.service == *name)
                            && !t.state.is_terminal()
                    })
                    .iter()
                    .map(|t| TaskView::from(&**t))
                    .collect();
                instances.sort_by_key(|t| t.instance.as_ref().map(|i| (i.version, i.slot)));
                let versions = self.service_versions(name).map_err(Problem::from)?;
                let mut with_diffs: Vec<(cube_core::service::Version, Vec<FieldChange>)> =
                    Vec::with_capacity(versions.len());
                for (i, v) in versions.iter().enumerate() {
                    let changes = match i.checked_sub(1).and_then(|p| versions.get(p)) {
                        Some(before) => crate::state::spec_diff(&before.spec, &v.spec)
                            .into_iter()
                            .map(|(field, old, new)| FieldChange { field, old, new })
                            .collect(),
                        None => Vec::new(),
                    };
                    with_diffs.push((v.clone(), changes));
                }
                with_diffs.reverse();
                let nodes = self.node_names();
                let detail = cube_ui::services::Detail {
                    service: &service,
                    instances: &instances,
                    versions: &with_diffs,
                    nodes: &nodes,
                    now,
                };
                Rendered {
                    title: format!("Service {name}"),
                    section: Section::Services,
                    live: cube_ui::services::detail(&detail, viewer),
                }
            }
            Page::Tasks(filter) => {
                let api_filter = TaskFilter { state: filter.state, node: filter.node };
                let mut handles = self.tasks(&api_filter);
                if let Some(service) = &filter.service {
                    handles.retain(|t| t.instance.as_ref().is_some_and(|i| i.service == *service));
                }
                let total = handles.len();
                // Newest first: what changed last is what people look for.
                let shown: Vec<TaskView> =
                    page_of(handles.iter().rev(), filter.page, cube_ui::tasks::PER_PAGE)
                        .into_iter()
                        .map(|t| TaskView::from(&**t))
                        .collect();
                let nodes = self.node_names();
                let list =
                    cube_ui::tasks::List { tasks: &shown, total, filter, nodes: &nodes, now };
                Rendered {
                    title: "Tasks".into(),
                    section: Section::Tasks,
                    live: cube_ui::tasks::list(&list),
                }
            }
            Page::Task(id) => {
                let task =
                    self.task(*id).ok_or_else(|| Problem::not_found(format!("no task {id}")))?;
                let view = TaskView::from(&task);
                let nodes = self.node_names();
                Rendered {
                    title: format!("Task {}", view.name),
                    section: Section::Tasks,
                    live: cube_ui::tasks::detail(&view, &nodes, now),
                }
            }
            Page::Nodes { page } => {
                let nodes = self.nodes();
                let total = nodes.len();
                let shown = page_of(nodes, *page, cube_ui::nodes::PER_PAGE);
                Rendered {
                    title: "Nodes".into(),
                    section: Section::Nodes,
                    live: cube_ui::nodes::list(&shown, *page, total, now),
                }
            }
            Page::Node(key) => {
                let node = self.node(key).map_err(Problem::from)?;
                let tasks: Vec<TaskView> = self
                    .tasks(&TaskFilter { state: None, node: Some(node.id) })
                    .iter()
                    .rev()
                    .filter(|t| !t.state.is_terminal())
                    .take(cube_ui::nodes::TASKS_SHOWN)
                    .map(|t| TaskView::from(&**t))
                    .collect();
                let names = self.node_names();
                Rendered {
                    title: format!("Node {}", node.name),
                    section: Section::Nodes,
                    live: cube_ui::nodes::detail(&node, &tasks, &names, viewer, now),
                }
            }
        })
    }

    /// The newest events of tasks, nodes, services and deployments (the audit log is an
    /// admin's; endpoint and exec records are of no use on the overview).
    fn recent_events(&self) -> Vec<Event> {
        let topics = [Topic::Task, Topic::Node, Topic::Service, Topic::Deployment];
        self.events
            .recent(OVERVIEW_EVENTS, &topics)
            .iter()
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()
    }
}

/// Page `page` (from 1) of `items`, `per_page` to a page.
fn page_of<T>(items: impl IntoIterator<Item = T>, page: usize, per_page: usize) -> Vec<T> {
    items.into_iter().skip(page.saturating_sub(1).saturating_mul(per_page)).take(per_page).collect()
}

/// The viewer a request's caller and session make.
fn viewer(caller: &Caller, session: &BrowserSession) -> Viewer {
    Viewer {
        name: caller.name.to_string(),
        role: caller.role().map_or_else(|| "node".to_owned(), |r| r.to_string()),
        csrf: session.csrf.clone(),
        may_deploy: caller.may(m::DEPLOYMENT_ACTION.access).is_ok()
            && caller.may(m::SCALE_SERVICE.access).is_ok(),
        may_manage_nodes: caller.may(m::DRAIN_NODE.access).is_ok(),
        signed_in: session.cookie,
    }
}

/// Every page needs the `read` role (a node's certificate opens none).
fn may_read(caller: &Caller) -> Result<(), Problem> {
    caller.may(m::LIST_TASKS.access).map_err(|why| Problem::new(StatusCode::FORBIDDEN, why))
}

/// A refusal or failure, shown as a page.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    message: String,
    viewer: Option<Viewer>,
    operation: Option<&'static Operation>,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), viewer: None, operation: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn seen_by(mut self, viewer: &Viewer) -> Self {
        self.viewer = Some(viewer.clone());
        self
    }
}

impl From<ManagerError> for Problem {
    fn from(e: ManagerError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, e.message)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let html = cube_ui::problem(self.viewer.as_ref(), title, &self.message, "/ui");
        let mut response = (self.status, html_headers(), html.into_string()).into_response();
        if let Some(op) = self.operation {
            response.extensions_mut().insert(Served(op));
        }
        response
    }
}

fn html_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        // Nothing but this server's own files: no inline script, no other site.
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                 frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
        ),
    ]
}

/// `GET /ui/...`: a whole page.
async fn show(
    State(m): State<Shared>,
    Extension(caller): Extension<Caller>,
    Extension(session): Extension<BrowserSession>,
    uri: axum::http::Uri,
) -> Result<Response, Problem> {
    may_read(&caller)?;
    let viewer = viewer(&caller, &session);
    let page = Page::parse(uri.path(), uri.query()).map_err(|p| p.seen_by(&viewer))?;
    let began = Instant::now();
    let rendered = m.render(&page, &viewer).map_err(|p| p.seen_by(&viewer))?;
    let render = began.elapsed();
    let rest = match &page {
        Page::Task(id) => cube_ui::tasks::logs(*id, &log_tail(&m, *id).await),
        _ => cube_ui::nothing(),
    };
    let began = Instant::now();
    let html =
        cube_ui::page(&rendered.title, Some(rendered.section), Some(&viewer), rendered.live, rest)
            .into_string();
    // How long the page took to make, apart from waiting for a node's log: for the browser's
    // developer tools and the benchmark.
    let render = render + began.elapsed();
    let timing = format!("render;dur={:.3}", render.as_secs_f64() * 1000.0);
    let mut response = (html_headers(), html).into_response();
    if let Ok(value) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", value);
    }
    Ok(response)
}

/// The last lines of a task's output, or why there are none.
async fn log_tail(m: &Manager, id: TaskId) -> String {
    let read = async {
        let mut stream = m.logs(id, false, Some(LOG_TAIL)).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => return Ok::<_, ManagerError>(format!("(the log broke off: {e})")),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(LOG_TAIL_WAIT, read).await {
        Ok(Ok(text)) if text.is_empty() => "(no output yet)".to_owned(),
        Ok(Ok(text)) => text,
        Ok(Err(e)) => format!("(no log: {})", ApiError::from(e).message),
        Err(_) => "(the node did not send the log in time; follow to try again)".to_owned(),
    }
}

/// `GET /ui/live?page=URL`: the page's live part, rendered again and sent (SSE event
/// `live`) whenever a committed change altered it.
async fn live(
    State(m): State<Shared>,
    Extension(caller): Extension<Caller>,
    Extension(session): Extension<BrowserSession>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    may_read(&caller)?;
    let pairs = crate::api::query_pairs(query.as_deref())?;
    let target = pairs
        .iter()
        .find(|(k, _)| k == "page")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| Problem::bad("live needs ?page=URL of the page"))?;
    let (path, page_query) =
        target.split_once('?').map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
    let page = Page::parse(path, page_query)?;
    let viewer = viewer(&caller, &session);
    let changes = m.events.watch();
    let shutdown = m.shutdown.clone();
    let auth = m.authenticator();
    let stream = futures_util::stream::unfold(
        LiveState {
            m,
            page,
            viewer,
            session,
            auth,
            changes,
            last: None,
            rendered_at: None,
            shutdown,
            ended: false,
        },
        |mut s| async move {
            if s.ended {
                return None;
            }
            let chunk = s.next().await?;
            Some((Ok::<Bytes, std::convert::Infallible>(chunk), s))
        },
    );
    let headers =
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, axum::body::Body::from_stream(stream)).into_response())
}

struct LiveState {
    m: Shared,
    page: Page,
    viewer: Viewer,
    /// Checked again before each render and keep-alive: a revoked token's page stops.
    session: BrowserSession,
    auth: cube_http::auth::Authenticator,
    changes: tokio::sync::watch::Receiver<u64>,
    last: Option<String>,
    rendered_at: Option<Instant>,
    shutdown: tokio_util::sync::CancellationToken,
    /// The last chunk was sent: the stream ends after it.
    ended: bool,
}

impl LiveState {
    /// The next chunk to send: a changed live part, a keep-alive, `signed-out` (the token no
    /// longer opens the page: the last chunk), or `None` to end (the manager stops, or this
    /// manager's role changed: the browser reconnects to the next).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let chunk = self.change().await?;
            if !self.session.still_may(self.auth.as_ref(), m::LIST_TASKS.access) {
                self.ended = true;
                return Some(Bytes::from_static(b"event: signed-out\ndata: \n\n"));
            }
            if let Some(keepalive) = chunk {
                return Some(keepalive);
            }
            self.rendered_at = Some(Instant::now());
            let html = match self.m.render(&self.page, &self.viewer) {
                Ok(r) => r.live.into_string(),
                Err(p) => cube_ui::problem_part(&p.message).into_string(),
            };
            if self.last.as_ref() == Some(&html) {
                continue;
            }
            let chunk = format!("event: live\n{}\n", cube_ui::sse_data(&html));
            self.last = Some(html);
            return Some(Bytes::from(chunk));
        }
    }

    /// Waits for something to render (`Some(None)`: at once for the first render), or for the
    /// keep-alive (`Some(Some(comment))`); `None` to end.
    async fn change(&mut self) -> Option<Option<Bytes>> {
        if self.last.is_none() {
            return Some(None);
        }
        tokio::select! {
            changed = tokio::time::timeout(LIVE_KEEPALIVE, self.changes.changed()) => match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => return Some(Some(Bytes::from_static(b": still here\n\n"))),
            },
            () = self.shutdown.cancelled() => return None,
        }
        // Many changes in a burst make one render.
        if let Some(at) = self.rendered_at {
            let wait = LIVE_MIN_INTERVAL.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.shutdown.cancelled() => return None,
                }
            }
        }
        self.changes.borrow_and_update();
        Some(None)
    }
}

/// `GET /ui/tasks/{id}/logs`: the task's output as it comes, a line per SSE event `line`,
/// then `end`.
async fn follow_logs(
    State(m): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.may(m::TASK_LOGS.access).map_err(|why| Problem::new(StatusCode::FORBIDDEN, why))?;
    let id: TaskId = id.parse().map_err(|e| Problem::bad(format!("task id: {e}")))?;
    let logs = m.logs(id, true, Some(LOG_TAIL)).await.map_err(Problem::from)?;
    let events = lines(logs)
        .map(|line| {
            let text = String::from_utf8_lossy(&line);
            Bytes::from(format!(
                "event: line\n{}\n",
                cube_ui::sse_data(text.trim_end_matches('\r'))
            ))
        })
        .chain(futures_util::stream::once(async { Bytes::from_static(b"event: end\ndata: \n\n") }))
        .map(Ok::<Bytes, std::convert::Infallible>);
    let headers =
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, axum::body::Body::from_stream(events)).into_response())
}

/// The lines of a log as its chunks arrive (a last line without its line break too); ends
/// where the log ends or breaks off.
fn lines(logs: cube_http::client::LogStream) -> impl futures_util::Stream<Item = Vec<u8>> + Send {
    futures_util::stream::unfold(
        (logs, Vec::new(), false),
        |(mut logs, mut buffer, mut done)| async move {
            loop {
                if let Some(at) = buffer.iter().position(|b| *b == b'\n') {
                    let rest = buffer.split_off(at + 1);
                    let mut line = std::mem::replace(&mut buffer, rest);
                    line.pop();
                    return Some((line, (logs, buffer, done)));
                }
                if done {
                    return (!buffer.is_empty())
                        .then(|| (std::mem::take(&mut buffer), (logs, Vec::new(), true)));
                }
                match logs.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a followed log broke off");
                        done = true;
                    }
                    None => done = true,
                }
            }
        },
    )
}

/// `GET /ui/assets/{file}`: the stylesheet and the script.
async fn asset(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let Some((body, kind, tag)) = cube_ui::assets::get(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tag_value = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == tag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag_value)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, tag_value),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui/sign-in?next=URL`.
async fn sign_in_page(RawQuery(query): RawQuery) -> Response {
    let next = next_of(query.as_deref());
    (html_headers(), cube_ui::sign_in(None, &next).into_string()).into_response()
}

/// Where to go after signing in, from a query's `next`.
fn next_of(query: Option<&str>) -> String {
    let pairs = crate::api::query_pairs(query).unwrap_or_default();
    safe_next(pairs.into_iter().find(|(k, _)| k == "next").map(|(_, v)| v))
}

/// `next` if it is a UI path; never another site.
fn safe_next(next: Option<String>) -> String {
    next.filter(|v| v.starts_with("/ui") && !v.starts_with("//") && !v.contains('\\'))
        .unwrap_or_else(|| "/ui".to_owned())
}

/// The bytes a cookie value may hold as is (RFC 6265 `cookie-octet`).
fn cookie_safe(value: &str) -> bool {
    value.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// `POST /ui/sign-in` (form: `token`, `next`): the token is checked as the API checks it; a
/// good one is kept in the session cookie.
async fn sign_in(State(m): State<Shared>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.trim().to_owned());
    let token = field("token").unwrap_or_default();
    let next = safe_next(field("next"));
    let refuse = |status: StatusCode, why: &str| {
        (status, html_headers(), cube_ui::sign_in(Some(why), &next).into_string()).into_response()
    };
    if token.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Enter a token.");
    }
    if !cookie_safe(&token) {
        return refuse(StatusCode::BAD_REQUEST, "That token has characters a browser cannot keep.");
    }
    match m.authenticator().authenticate(Some(token.as_bytes())) {
        Ok(caller) if caller.may(m::LIST_TASKS.access).is_ok() => {}
        Ok(_) => return refuse(StatusCode::FORBIDDEN, "That token may not read the cluster."),
        Err(_) => return refuse(StatusCode::UNAUTHORIZED, "Wrong token."),
    }
    let secure = if m.config().security.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
    let mut response = see_other(&next);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /ui/sign-out`: forgets the session cookie.
async fn sign_out(form: Submitted) -> Result<Response, Problem> {
    checked_form(&form.session, &form.body)?;
    let mut response = see_other("/ui/sign-in");
    let cookie = format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A form's fields, once its CSRF token proved it came from one of this session's pages.
fn checked_form(
    session: &BrowserSession,
    body: &[u8],
) -> Result<BTreeMap<String, String>, Problem> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| Problem::bad(format!("the form is not valid: {e}")))?;
    let presented =
        form.iter().find(|(k, _)| k == cube_ui::CSRF_FIELD).map_or("", |(_, v)| v.as_str());
    if !session.csrf_matches(presented) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this form did not come from one of your pages (reload the page and try again)",
        ));
    }
    Ok(form.into_iter().collect())
}

/// What a button's form brings: who sent it, their session, and the form's body.
struct Submitted {
    caller: Caller,
    session: BrowserSession,
    body: Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Submitted {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let caller = req.extensions().get::<Caller>().cloned();
        let session = req.extensions().get::<BrowserSession>().cloned();
        // Authentication puts both on every UI request; without them, fail closed.
        let (Some(caller), Some(session)) = (caller, session) else {
            return Err(Problem::new(StatusCode::UNAUTHORIZED, "no session").into_response());
        };
        let body = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        Ok(Self { caller, session, body })
    }
}

/// Runs an action of `operation` for `caller` from a form: its access checked as the API's
/// route checks it, then `act`; back to `back` when done, a problem page if not. Either way
/// the answer names the operation, for the audit log.
async fn act<F, Fut>(
    submitted: Submitted,
    operation: &'static Operation,
    back: String,
    act: F,
) -> Response
where
    F: FnOnce(BTreeMap<String, String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Problem>>,
{
    let Submitted { caller, session, body } = &submitted;
    let outcome = async {
        caller.may(operation.access).map_err(|why| Problem::new(StatusCode::FORBIDDEN, why))?;
        let form = checked_form(session, body)?;
        act(form).await
    }
    .await;
    let mut response = match outcome {
        Ok(()) => see_other(&back),
        Err(mut problem) => {
            problem.viewer = Some(viewer(caller, session));
            problem.into_response()
        }
    };
    response.extensions_mut().insert(Served(operation));
    response
}

fn field<'f>(form: &'f BTreeMap<String, String>, name: &str) -> Result<&'f str, Problem> {
    form.get(name)
        .map(String::as_str)
        .ok_or_else(|| Problem::bad(format!("the form has no {name}")))
}

async fn scale(State(m): State<Shared>, Path(name): Path<String>, form: Submitted) -> Response {
    let back = format!("/ui/services/{name}");
    act(form, &m::SCALE_SERVICE, back, |form| async move {
        let count = field(&form, "count")?;
        let count: u32 = count
            .parse()
            .map_err(|_| Problem::bad(format!("{count:?} is not a number of instances")))?;
        m.scale_service(&name, count).await?;
        Ok(())
    })
    .await
}

async fn revert(State(m): State<Shared>, Path(name): Path<String>, form: Submitted) -> Response {
    let back = format!("/ui/services/{name}");
    act(form, &m::REVERT_SERVICE, back, |form| async move {
        let version = field(&form, "version")?;
        let version: u64 =
            version.parse().map_err(|_| Problem::bad(format!("{version:?} is not a version")))?;
        m.revert_service(&name, version).await?;
        Ok(())
    })
    .await
}

async fn deployment_action(
    State(m): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    form: Submitted,
) -> Response {
    // Back to the service's page (unknown deployment: the services list).
    let parsed: Option<DeploymentId> = id.parse().ok();
    let service = parsed.and_then(|id| m.deployment(id).ok()).map(|d| d.service);
    let back = service.map_or_else(|| "/ui/services".to_owned(), |s| format!("/ui/services/{s}"));
    act(form, &m::DEPLOYMENT_ACTION, back, |_| async move {
        let id = parsed.ok_or_else(|| Problem::bad(format!("{id:?} is not a deployment id")))?;
        let action = DeploymentAction::named(&action)
            .ok_or_else(|| Problem::not_found(format!("no deployment action {action:?}")))?;
        m.deployment_action(id, action).await?;
        Ok(())
    })
    .await
}

async fn drain(State(m): State<Shared>, Path(id): Path<String>, form: Submitted) -> Response {
    let back = format!("/ui/nodes/{id}");
    act(form, &m::DRAIN_NODE, back, |_| async move {
        m.drain(&id, None).await?;
        Ok(())
    })
    .await
}

async fn eligibility(State(m): State<Shared>, Path(id): Path<String>, form: Submitted) -> Response {
    let back = format!("/ui/nodes/{id}");
    act(form, &m::NODE_ELIGIBILITY, back, |form| async move {
        let eligible = match field(&form, "eligible")? {
            "true" => true,
            "false" => false,
            other => return Err(Problem::bad(format!("eligible is true or false, not {other:?}"))),
        };
        m.set_eligible(&id, eligible).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_pages() {
        assert_eq!(Page::parse("/ui", None).unwrap(), Page::Overview);
        assert_eq!(Page::parse("/ui/", None).unwrap(), Page::Overview);
        assert_eq!(
            Page::parse("/ui/services", Some("page=3")).unwrap(),
            Page::Services { page: 3 }
        );
        assert_eq!(Page::parse("/ui/services/web", None).unwrap(), Page::Service("web".into()));
        let Page::Tasks(f) =
            Page::parse("/ui/tasks", Some("state=running&service=web&node=")).unwrap()
        else {
            panic!("not the task list")
        };
        assert_eq!(
            (f.state, f.service.as_deref(), f.node, f.page),
            (Some(TaskState::Running), Some("web"), None, 1)
        );
        assert_eq!(Page::parse("/ui/nodes", None).unwrap(), Page::Nodes { page: 1 });
        assert_eq!(Page::parse("/ui/tasks", Some("state=asleep")).unwrap_err().status, 400);
        assert_eq!(Page::parse("/ui/tasks/xyz", None).unwrap_err().status, 400);
        assert_eq!(Page::parse("/ui/services", Some("page=0")).unwrap_err().status, 400);
        assert_eq!(Page::parse("/ui/elsewhere/x/y", None).unwrap_err().status, 404);
    }

    #[test]
    fn after_signing_in_a_browser_goes_only_to_a_ui_page() {
        assert_eq!(
            next_of(Some("next=%2Fui%2Ftasks%3Fstate%3Drunning")),
            "/ui/tasks?state=running"
        );
        assert_eq!(next_of(Some("next=https%3A%2F%2Fevil.example%2F")), "/ui");
        assert_eq!(next_of(Some("next=%2F%2Fevil.example")), "/ui");
        assert_eq!(next_of(None), "/ui");
    }

    #[test]
    fn tokens_a_cookie_cannot_hold_are_refused() {
        assert!(cookie_safe("cube_0123abcdEF-xyz"));
        assert!(!cookie_safe("a b"));
        assert!(!cookie_safe("a;b"));
        assert!(!cookie_safe("a\"b"));
    }
}

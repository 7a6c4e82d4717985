//! The OpenAPI 3.1 document of the manager's and the worker's APIs.
//!
//! Every route is an [`Operation`] below: its method, path, parameters and the bodies it takes
//! and answers, named by their Rust types, whose JSON Schemas are derived from the same serde
//! attributes that encode them (schemars). The servers register their handlers *through* these
//! operations (`cube_http::server::Routes`) and build the document from what they registered,
//! so a route cannot be served without being documented, nor documented without being served.
//!
//! Schemas describe what the API accepts (schemars' deserialize contract): a field with a
//! default is optional, although answers always carry it.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value, json};

use cube_core::deployment::Deployment;
use cube_core::service::{ServiceSpec, Version};
use cube_core::spec::TaskSpec;
use cube_core::{DeploymentId, NodeId, TaskId};

use crate::ErrorBody;
use crate::auth::{AuditRecord, CreatedToken, Role, TokenRequest, TokenView};
use crate::cluster::{Enrolment, JoinRequest, JoinTokenView, RenewRequest};
use crate::events::{Event, IndexBounds, StreamLine};
use crate::types::{
    DrainRequest, EligibilityRequest, HealthView, HeartbeatRequest, HeartbeatResponse, IngressFeed,
    NodeInfo, NodeStats, RegisterRequest, RevertRequest, ScaleRequest, ServicePlanView,
    ServiceView, TaskSubmission, TaskView,
};

/// Builds the schema of a type, registering the named types it refers to.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// [`SchemaFn`] of `T`: a `$ref` to `#/components/schemas/<T>` for a named type.
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// An HTTP method an operation answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
}

impl Method {
    /// Every method, for checks that a path answers no other.
    pub const ALL: [Method; 4] = [Method::Get, Method::Post, Method::Put, Method::Delete];

    /// The method's name in upper case, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }
}

/// What a request or an answer carries.
#[derive(Clone, Copy, Debug)]
pub enum Content {
    /// One JSON value.
    Json(SchemaFn),
    /// The event stream: NDJSON lines of this schema, or the same as server-sent events
    /// (`Accept: text/event-stream`).
    Stream(SchemaFn),
    /// Text of this media type.
    Text(&'static str),
    /// The connection becomes a WebSocket (`101 Switching Protocols`).
    WebSocket,
}

/// One documented answer.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// Its status code.
    pub status: u16,
    /// When it is sent.
    pub description: &'static str,
    /// Its body.
    pub content: Content,
}

/// A path or query parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Its schema.
    pub schema: SchemaFn,
    /// Whether it must be given (path parameters always must).
    pub required: bool,
}

/// Who may call an operation (when the server requires credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks).
    Open,
    /// A user's token with at least this role, or the cluster token.
    Role(Role),
    /// A worker: a node's credentials, or the cluster token. A user's token never.
    Node,
}

/// One route and method: what the router serves and the document says.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    /// `operationId`: unique in a document.
    pub id: &'static str,
    /// The method.
    pub method: Method,
    /// The path template, in axum's and OpenAPI's shared syntax (`/v1/tasks/{id}`).
    pub path: &'static str,
    /// A one-line summary.
    pub summary: &'static str,
    /// The group it is listed under.
    pub tag: &'static str,
    /// Parameters in the path, in the template's order.
    pub path_params: &'static [Param],
    /// Parameters in the query string.
    pub query: &'static [Param],
    /// Whether it is a blocking query (`?index=N&wait=D`).
    pub blocking: bool,
    /// The request body, if it takes one, and whether it may be left out.
    pub request: Option<(Content, bool)>,
    /// The answers it gives on success, and the errors worth naming (every operation may also
    /// answer the error envelope, the document's `default`).
    pub replies: &'static [Reply],
    /// Who may call it.
    pub access: Access,
}

/// Which API a document describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `cube manager` (and `cube dev`).
    Manager,
    /// `cube worker`.
    Worker,
}

/// A request body for `POST /v1/tasks`: a task spec, with the `id` and `generation` the
/// manager sends its workers.
impl JsonSchema for TaskSubmission {
    fn schema_name() -> Cow<'static, str> {
        "TaskSubmission".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = TaskSpec::json_schema(generator);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "id".into(),
                json!({
                    "description": "The task's id (the manager sends its own); absent: one is \
                                    assigned. Submitting the same id and spec again is a no-op.",
                    "type": ["string", "null"],
                    "format": "uuid",
                }),
            );
            props.insert(
                "generation".into(),
                json!({
                    "description": "The placement's generation (sent by the manager).",
                    "type": ["integer", "null"],
                    "minimum": 0,
                }),
            );
        }
        schema
    }
}

/// The body of `PUT /v1/services/{name}` and `POST .../plan`: a service spec whose `name` may
/// be left out (the path gives it).
struct ServiceBody;

impl JsonSchema for ServiceBody {
    fn schema_name() -> Cow<'static, str> {
        "ServiceBody".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = ServiceSpec::json_schema(generator);
        if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| r != "name");
        }
        schema
    }
}

/// The deployment actions of `POST /v1/deployments/{id}/{action}`.
struct DeploymentActionName;

impl JsonSchema for DeploymentActionName {
    fn schema_name() -> Cow<'static, str> {
        "DeploymentAction".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": ["promote", "pause", "resume", "fail"],
            "description": "promote: let the canaries' rollout proceed; pause: stop moving; \
                            resume: move again; fail: give up (and revert, if the strategy \
                            says so).",
        })
    }
}

/// A topic filter of the event stream: `Topic`, `Topic:key` or `*`.
struct TopicParam;

impl JsonSchema for TopicParam {
    fn schema_name() -> Cow<'static, str> {
        "TopicFilter".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(\\*|(Task|Node|Service|Deployment|Exec|Endpoints)(:.+)?)$",
            "examples": ["Task", "Service:web", "*"],
        })
    }
}

/// The text the metrics routes answer.
const METRICS_MEDIA: &str = "text/plain; version=0.0.4";

const TASK_ID: &[Param] = &[required("id", "The task's id.", schema_of::<TaskId>)];
const NODE_ID: &[Param] = &[required("id", "The node's id, or its name.", schema_of::<String>)];
const NODE_UUID: &[Param] = &[required("id", "The node's id.", schema_of::<NodeId>)];
const SERVICE_NAME: &[Param] = &[required("name", "The service's name.", schema_of::<String>)];
const TOKEN_NAME: &[Param] = &[required("name", "The token's name.", schema_of::<String>)];
const DEPLOYMENT_ID: &[Param] =
    &[required("id", "The deployment's id.", schema_of::<DeploymentId>)];

const AUDIT_QUERY: &[Param] = &[
    optional(
        "since",
        "Only records at or after this time (RFC 3339).",
        schema_of::<cube_core::schema::Rfc3339>,
    ),
    optional(
        "who",
        "Only what this caller did (a token's name, `cluster`, a node's id).",
        schema_of::<String>,
    ),
    optional("limit", "At most this many, the newest (default 1000).", schema_of::<u32>),
];

const LIST_QUERY: &[Param] = &[
    optional("state", "Only tasks in this state.", schema_of::<cube_core::TaskState>),
    optional("node", "Only tasks placed on this node.", schema_of::<NodeId>),
];
const LOGS_QUERY: &[Param] = &[
    optional(
        "follow",
        "Keep the answer open and send new output as it is written.",
        schema_of::<bool>,
    ),
    optional("tail", "Only the last N lines already written.", schema_of::<u64>),
];
const EXEC_QUERY: &[Param] = &[
    required(
        "command",
        "The command, one parameter per argument, in order.",
        schema_of::<Vec<String>>,
    ),
    optional("tty", "Run it on a terminal.", schema_of::<bool>),
    optional("stdin", "Forward standard input (the stdin channel).", schema_of::<bool>),
    optional("width", "The terminal's first width, in columns (with height).", schema_of::<u16>),
    optional("height", "The terminal's first height, in rows (with width).", schema_of::<u16>),
];
const EVENTS_QUERY: &[Param] = &[
    optional(
        "index",
        "Send the events after this index (absent: only new ones). An index older \
                      than the history is a 410 naming the oldest and the current index.",
        schema_of::<u64>,
    ),
    optional(
        "topic",
        "Only these topics (repeat it; absent: every topic).",
        schema_of::<Vec<TopicParam>>,
    ),
];
const FEED_QUERY: &[Param] = &[
    optional(
        "index",
        "The index this node's ingress has applied: answer once the endpoints changed after \
         it (absent: at once).",
        schema_of::<u64>,
    ),
    optional(
        "wait",
        "How long to wait for a change (default 5m, at most 10m).",
        schema_of::<cube_core::schema::DurationText>,
    ),
];
const SERVICE_PUT_QUERY: &[Param] = &[optional(
    "check_index",
    "Apply only if the service's modify_index is still this (0: only if it does \
                  not exist); otherwise 409.",
    schema_of::<u64>,
)];

const fn required(name: &'static str, description: &'static str, schema: SchemaFn) -> Param {
    Param { name, description, schema, required: true }
}

const fn optional(name: &'static str, description: &'static str, schema: SchemaFn) -> Param {
    Param { name, description, schema, required: false }
}

const fn ok(content: Content) -> Reply {
    Reply { status: 200, description: "Done.", content }
}

const fn json(status: u16, description: &'static str, schema: SchemaFn) -> Reply {
    Reply { status, description, content: Content::Json(schema) }
}

const fn error(status: u16, description: &'static str) -> Reply {
    Reply { status, description, content: Content::Json(schema_of::<ErrorBody>) }
}

const NOT_FOUND: Reply = error(404, "No such object.");
const BAD_INPUT: Reply = error(400, "The input is invalid; `details` names each bad field.");
const CONFLICT: Reply = error(409, "The change conflicts with the current state.");

const fn op(
    id: &'static str,
    method: Method,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
) -> Operation {
    Operation {
        id,
        method,
        path,
        summary,
        tag,
        path_params: &[],
        query: &[],
        blocking: false,
        request: None,
        replies: &[],
        // Reading needs the least role, changing things the next; the operations that need
        // more (or a node's credentials) say so.
        access: match method {
            Method::Get => Access::Role(Role::Read),
            Method::Post | Method::Put | Method::Delete => Access::Role(Role::Operate),
        },
    }
}

/// `GET /v1/health` of both agents.
pub const HEALTH: Operation = Operation {
    replies: &[ok(Content::Json(schema_of::<HealthView>))],
    access: Access::Open,
    ..op("health", Method::Get, "/v1/health", "agent", "Whether the agent answers; no token needed")
};

/// `GET /v1/openapi.json` of both agents.
pub const OPENAPI: Operation = Operation {
    replies: &[ok(Content::Json(schema_of::<Value>))],
    ..op("openapi", Method::Get, "/v1/openapi.json", "agent", "This document")
};

/// `GET /metrics` of both agents.
pub const METRICS: Operation = Operation {
    replies: &[Reply {
        status: 200,
        description: "Prometheus text (0.0.4), or OpenMetrics when the Accept header asks for \
                      application/openmetrics-text.",
        content: Content::Text(METRICS_MEDIA),
    }],
    ..op("metrics", Method::Get, "/metrics", "agent", "Prometheus metrics")
};

/// The operations of the manager's API, by route.
pub mod manager {
    use super::*;

    /// `GET /v1/tasks`
    pub const LIST_TASKS: Operation = Operation {
        query: LIST_QUERY,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<Vec<TaskView>>)), BAD_INPUT],
        ..op("listTasks", Method::Get, "/v1/tasks", "tasks", "Tasks, newest first")
    };
    /// `POST /v1/tasks`
    pub const SUBMIT_TASK: Operation = Operation {
        request: Some((Content::Json(schema_of::<TaskSubmission>), false)),
        replies: &[
            json(201, "Accepted: the task is pending placement.", schema_of::<TaskView>),
            json(200, "The same id and spec were submitted before.", schema_of::<TaskView>),
            BAD_INPUT,
            error(409, "The id is taken by a different spec."),
        ],
        ..op("submitTask", Method::Post, "/v1/tasks", "tasks", "Run a task")
    };
    /// `GET /v1/tasks/{id}`
    pub const GET_TASK: Operation = Operation {
        path_params: TASK_ID,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<TaskView>)), NOT_FOUND],
        ..op("getTask", Method::Get, "/v1/tasks/{id}", "tasks", "One task with its history")
    };
    /// `DELETE /v1/tasks/{id}`
    pub const STOP_TASK: Operation = Operation {
        path_params: TASK_ID,
        replies: &[json(202, "The stop is under way.", schema_of::<TaskView>), NOT_FOUND],
        ..op("stopTask", Method::Delete, "/v1/tasks/{id}", "tasks", "Stop a task")
    };
    /// `GET /v1/tasks/{id}/logs`
    pub const TASK_LOGS: Operation = Operation {
        path_params: TASK_ID,
        query: LOGS_QUERY,
        replies: &[
            ok(Content::Text("text/plain; charset=utf-8")),
            NOT_FOUND,
            error(409, "The task has not been placed yet."),
        ],
        ..op("taskLogs", Method::Get, "/v1/tasks/{id}/logs", "tasks", "A task's output")
    };
    /// `GET /v1/tasks/{id}/exec`
    pub const EXEC: Operation = Operation {
        access: Access::Role(Role::Exec),
        path_params: TASK_ID,
        query: EXEC_QUERY,
        replies: &[
            Reply {
                status: 101,
                description: "A WebSocket of binary frames, each led by its channel byte: 0 \
                              stdin, 1 stdout, 2 stderr, 3 control (JSON: exit or error), 4 \
                              resize (JSON), 5 stdin closed.",
                content: Content::WebSocket,
            },
            BAD_INPUT,
            NOT_FOUND,
            error(409, "The task is not running."),
        ],
        ..op("execTask", Method::Get, "/v1/tasks/{id}/exec", "tasks", "Run a command in a task")
    };
    /// `GET /v1/services`
    pub const LIST_SERVICES: Operation = Operation {
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<Vec<ServiceView>>))],
        ..op("listServices", Method::Get, "/v1/services", "services", "Services")
    };
    /// `GET /v1/services/{name}`
    pub const GET_SERVICE: Operation = Operation {
        path_params: SERVICE_NAME,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<ServiceView>)), NOT_FOUND],
        ..op("getService", Method::Get, "/v1/services/{name}", "services", "One service")
    };
    /// `PUT /v1/services/{name}`
    pub const PUT_SERVICE: Operation = Operation {
        path_params: SERVICE_NAME,
        query: SERVICE_PUT_QUERY,
        request: Some((Content::Json(schema_of::<ServiceBody>), false)),
        replies: &[
            json(201, "Registered: its first deployment has started.", schema_of::<ServiceView>),
            json(200, "Updated (or unchanged).", schema_of::<ServiceView>),
            BAD_INPUT,
            error(409, "check_index no longer matches."),
        ],
        ..op("putService", Method::Put, "/v1/services/{name}", "services", "Register or update")
    };
    /// `DELETE /v1/services/{name}`
    pub const REMOVE_SERVICE: Operation = Operation {
        path_params: SERVICE_NAME,
        replies: &[
            json(202, "Its instances are being stopped.", schema_of::<ServiceView>),
            NOT_FOUND,
        ],
        ..op("removeService", Method::Delete, "/v1/services/{name}", "services", "Remove")
    };
    /// `POST /v1/services/{name}/scale`
    pub const SCALE_SERVICE: Operation = Operation {
        path_params: SERVICE_NAME,
        request: Some((Content::Json(schema_of::<ScaleRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<ServiceView>)), BAD_INPUT, NOT_FOUND],
        ..op("scaleService", Method::Post, "/v1/services/{name}/scale", "services", "Scale")
    };
    /// `POST /v1/services/{name}/plan`
    pub const PLAN_SERVICE: Operation = Operation {
        // A dry run: it changes nothing, so whoever may read may ask.
        access: Access::Role(Role::Read),
        path_params: SERVICE_NAME,
        request: Some((Content::Json(schema_of::<ServiceBody>), false)),
        replies: &[ok(Content::Json(schema_of::<ServicePlanView>)), BAD_INPUT],
        ..op(
            "planService",
            Method::Post,
            "/v1/services/{name}/plan",
            "services",
            "What a PUT would change, without changing it",
        )
    };
    /// `GET /v1/services/{name}/versions`
    pub const SERVICE_VERSIONS: Operation = Operation {
        path_params: SERVICE_NAME,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<Vec<Version>>)), NOT_FOUND],
        ..op(
            "serviceVersions",
            Method::Get,
            "/v1/services/{name}/versions",
            "services",
            "Every version kept, newest first",
        )
    };
    /// `GET /v1/services/{name}/endpoints`
    pub const SERVICE_ENDPOINTS: Operation = Operation {
        path_params: SERVICE_NAME,
        blocking: true,
        replies: &[
            ok(Content::Json(schema_of::<cube_core::endpoints::ServiceEndpoints>)),
            NOT_FOUND,
        ],
        ..op(
            "serviceEndpoints",
            Method::Get,
            "/v1/services/{name}/endpoints",
            "services",
            "The instances the ingress forwards the published ports to",
        )
    };
    /// `POST /v1/services/{name}/revert`
    pub const REVERT_SERVICE: Operation = Operation {
        path_params: SERVICE_NAME,
        request: Some((Content::Json(schema_of::<RevertRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<ServiceView>)), BAD_INPUT, NOT_FOUND],
        ..op(
            "revertService",
            Method::Post,
            "/v1/services/{name}/revert",
            "services",
            "Deploy an earlier version again",
        )
    };
    /// `GET /v1/deployments/{id}`
    pub const GET_DEPLOYMENT: Operation = Operation {
        path_params: DEPLOYMENT_ID,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<Deployment>)), NOT_FOUND],
        ..op("getDeployment", Method::Get, "/v1/deployments/{id}", "services", "A deployment")
    };
    /// `POST /v1/deployments/{id}/{action}`
    pub const DEPLOYMENT_ACTION: Operation = Operation {
        path_params: &[
            DEPLOYMENT_ID[0],
            required("action", "What to do.", schema_of::<DeploymentActionName>),
        ],
        replies: &[
            ok(Content::Json(schema_of::<Deployment>)),
            NOT_FOUND,
            error(409, "The deployment cannot do that now (it finished, or has no canaries)."),
        ],
        ..op(
            "deploymentAction",
            Method::Post,
            "/v1/deployments/{id}/{action}",
            "services",
            "Promote, pause, resume or fail a deployment",
        )
    };
    /// `GET /v1/nodes`
    pub const LIST_NODES: Operation = Operation {
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<Vec<NodeInfo>>))],
        ..op("listNodes", Method::Get, "/v1/nodes", "nodes", "Nodes")
    };
    /// `GET /v1/nodes/{id}`
    pub const GET_NODE: Operation = Operation {
        path_params: NODE_ID,
        blocking: true,
        replies: &[ok(Content::Json(schema_of::<NodeInfo>)), NOT_FOUND],
        ..op("getNode", Method::Get, "/v1/nodes/{id}", "nodes", "One node")
    };
    /// `POST /v1/nodes/{id}/drain`
    pub const DRAIN_NODE: Operation = Operation {
        access: Access::Role(Role::Admin),
        path_params: NODE_ID,
        request: Some((Content::Json(schema_of::<DrainRequest>), true)),
        replies: &[ok(Content::Json(schema_of::<NodeInfo>)), BAD_INPUT, NOT_FOUND],
        ..op(
            "drainNode",
            Method::Post,
            "/v1/nodes/{id}/drain",
            "nodes",
            "Move a node's tasks away and place nothing new on it",
        )
    };
    /// `POST /v1/nodes/{id}/eligibility`
    pub const NODE_ELIGIBILITY: Operation = Operation {
        access: Access::Role(Role::Admin),
        path_params: NODE_ID,
        request: Some((Content::Json(schema_of::<EligibilityRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<NodeInfo>)), BAD_INPUT, NOT_FOUND],
        ..op(
            "nodeEligibility",
            Method::Post,
            "/v1/nodes/{id}/eligibility",
            "nodes",
            "Whether new tasks may be placed on a node",
        )
    };
    /// `POST /v1/nodes/register`
    pub const REGISTER: Operation = Operation {
        access: Access::Node,
        request: Some((Content::Json(schema_of::<RegisterRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<HeartbeatResponse>)), BAD_INPUT, CONFLICT],
        ..op(
            "registerNode",
            Method::Post,
            "/v1/nodes/register",
            "workers",
            "A worker joins (or rejoins) with its tasks",
        )
    };
    /// `POST /v1/nodes/{id}/heartbeat`
    pub const HEARTBEAT: Operation = Operation {
        access: Access::Node,
        path_params: NODE_UUID,
        request: Some((Content::Json(schema_of::<HeartbeatRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<HeartbeatResponse>)), BAD_INPUT],
        ..op(
            "heartbeat",
            Method::Post,
            "/v1/nodes/{id}/heartbeat",
            "workers",
            "A worker's periodic report: its stats and its tasks' changes",
        )
    };
    /// `GET /v1/nodes/{id}/endpoints`
    pub const NODE_ENDPOINTS: Operation = Operation {
        access: Access::Node,
        path_params: NODE_UUID,
        query: FEED_QUERY,
        replies: &[ok(Content::Json(schema_of::<IngressFeed>)), BAD_INPUT, NOT_FOUND],
        ..op(
            "ingressFeed",
            Method::Get,
            "/v1/nodes/{id}/endpoints",
            "workers",
            "A node's ingress: every published service's endpoints, once newer than index",
        )
    };
    /// `DELETE /v1/nodes/{id}`
    pub const REMOVE_NODE: Operation = Operation {
        access: Access::Role(Role::Admin),
        path_params: NODE_ID,
        replies: &[ok(Content::Json(schema_of::<NodeInfo>)), NOT_FOUND],
        ..op(
            "removeNode",
            Method::Delete,
            "/v1/nodes/{id}",
            "nodes",
            "Remove a node: its tasks are placed elsewhere and its certificate is refused from now on",
        )
    };
    /// `POST /v1/cluster/join`
    pub const JOIN: Operation = Operation {
        access: Access::Open,
        request: Some((Content::Json(schema_of::<JoinRequest>), false)),
        replies: &[
            ok(Content::Json(schema_of::<Enrolment>)),
            BAD_INPUT,
            error(401, "The join token's secret is not this cluster's."),
            error(403, "The node was removed, or its id belongs to another key."),
        ],
        ..op(
            "joinCluster",
            Method::Post,
            "/v1/cluster/join",
            "workers",
            "A worker with a join token gets its certificate (on the cluster port, over TLS)",
        )
    };
    /// `POST /v1/cluster/renew`
    pub const RENEW: Operation = Operation {
        access: Access::Node,
        request: Some((Content::Json(schema_of::<RenewRequest>), false)),
        replies: &[ok(Content::Json(schema_of::<Enrolment>)), BAD_INPUT],
        ..op(
            "renewCertificate",
            Method::Post,
            "/v1/cluster/renew",
            "workers",
            "A node renews its certificate with the one it has",
        )
    };
    /// `POST /v1/cluster/join-token`
    pub const ROTATE_JOIN_TOKEN: Operation = Operation {
        access: Access::Role(Role::Admin),
        replies: &[ok(Content::Json(schema_of::<JoinTokenView>))],
        ..op(
            "rotateJoinToken",
            Method::Post,
            "/v1/cluster/join-token",
            "tokens",
            "Replace the worker join token (the old one stops admitting; joined workers stay)",
        )
    };
    /// `GET /v1/events`
    pub const EVENTS: Operation = Operation {
        query: EVENTS_QUERY,
        replies: &[
            Reply {
                status: 200,
                description: "One JSON line per event (application/x-ndjson), heartbeats every \
                              10 s, and a `lagged` notice before a subscriber that fell behind \
                              is disconnected. With Accept: text/event-stream, the same lines \
                              as server-sent events whose `id:` is the index (EventSource \
                              resumes with Last-Event-ID).",
                content: Content::Stream(schema_of::<StreamLine>),
            },
            BAD_INPUT,
            error(410, "The index is older than the history (`error.index` has the bounds)."),
        ],
        ..op("events", Method::Get, "/v1/events", "events", "The event stream")
    };
    /// `GET /v1/audit`
    pub const AUDIT: Operation = Operation {
        access: Access::Role(Role::Admin),
        query: AUDIT_QUERY,
        replies: &[ok(Content::Json(schema_of::<Vec<AuditRecord>>)), BAD_INPUT],
        ..op("audit", Method::Get, "/v1/audit", "audit", "Who changed what, when, and the answer")
    };
    /// `GET /v1/tokens`
    pub const LIST_TOKENS: Operation = Operation {
        access: Access::Role(Role::Admin),
        replies: &[ok(Content::Json(schema_of::<Vec<TokenView>>))],
        ..op(
            "listTokens",
            Method::Get,
            "/v1/tokens",
            "tokens",
            "Users' tokens (never their secrets)",
        )
    };
    /// `POST /v1/tokens`
    pub const CREATE_TOKEN: Operation = Operation {
        access: Access::Role(Role::Admin),
        request: Some((Content::Json(schema_of::<TokenRequest>), false)),
        replies: &[
            json(
                201,
                "Made: the secret is in this answer and never again.",
                schema_of::<CreatedToken>,
            ),
            BAD_INPUT,
            error(409, "A token of that name exists (revoke it first)."),
        ],
        ..op("createToken", Method::Post, "/v1/tokens", "tokens", "Make a named token with a role")
    };
    /// `DELETE /v1/tokens/{name}`
    pub const REVOKE_TOKEN: Operation = Operation {
        access: Access::Role(Role::Admin),
        path_params: TOKEN_NAME,
        replies: &[ok(Content::Json(schema_of::<TokenView>)), NOT_FOUND],
        ..op("revokeToken", Method::Delete, "/v1/tokens/{name}", "tokens", "Revoke a token at once")
    };
}

/// The operations of the worker's API (called by the manager), by route.
pub mod worker {
    use super::*;

    /// `GET /v1/stats`
    pub const STATS: Operation = Operation {
        replies: &[ok(Content::Json(schema_of::<NodeStats>))],
        ..op("stats", Method::Get, "/v1/stats", "node", "Host metrics and reservations")
    };
    /// `GET /v1/tasks`
    pub const LIST_TASKS: Operation = Operation {
        replies: &[ok(Content::Json(schema_of::<Vec<TaskView>>))],
        ..op("listTasks", Method::Get, "/v1/tasks", "tasks", "The node's tasks")
    };
    /// `POST /v1/tasks`
    pub const SUBMIT_TASK: Operation = Operation {
        request: Some((Content::Json(schema_of::<TaskSubmission>), false)),
        replies: &[
            json(201, "Accepted: the task is starting.", schema_of::<TaskView>),
            json(200, "The same id and spec were submitted before.", schema_of::<TaskView>),
            BAD_INPUT,
            error(409, "The id is taken by a different spec, or an older generation."),
        ],
        ..op("submitTask", Method::Post, "/v1/tasks", "tasks", "Start a task")
    };
    /// `GET /v1/tasks/{id}`
    pub const GET_TASK: Operation = Operation {
        path_params: TASK_ID,
        replies: &[ok(Content::Json(schema_of::<TaskView>)), NOT_FOUND],
        ..op("getTask", Method::Get, "/v1/tasks/{id}", "tasks", "One task")
    };
    /// `DELETE /v1/tasks/{id}`
    pub const STOP_TASK: Operation = Operation {
        path_params: TASK_ID,
        replies: &[json(202, "The stop is under way.", schema_of::<TaskView>), NOT_FOUND],
        ..op("stopTask", Method::Delete, "/v1/tasks/{id}", "tasks", "Stop a task")
    };
    /// `GET /v1/tasks/{id}/logs`
    pub const TASK_LOGS: Operation = Operation {
        path_params: TASK_ID,
        query: LOGS_QUERY,
        replies: &[ok(Content::Text("text/plain; charset=utf-8")), NOT_FOUND],
        ..op("taskLogs", Method::Get, "/v1/tasks/{id}/logs", "tasks", "A task's output")
    };
    /// `GET /v1/tasks/{id}/exec`
    pub const EXEC: Operation = manager::EXEC;
}

/// The document of `api` with `operations` (those its router registered).
pub fn document(api: Api, operations: &[&Operation]) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    // Named in every document: the error envelope and the event (which the stream's lines
    // refer to) and the index bounds a 410 carries.
    let error = generator.subschema_for::<ErrorBody>();
    generator.subschema_for::<Event>();
    generator.subschema_for::<IndexBounds>();

    let mut paths = Map::new();
    for operation in operations {
        let entry =
            paths.entry(operation.path.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(entry) = entry {
            entry.insert(
                operation.method.key().to_owned(),
                describe(api, operation, &error, &mut generator),
            );
        }
    }
    let schemas = generator.take_definitions(true);
    let (title, description) = match api {
        Api::Manager => (
            "Cube manager API",
            "The cluster's API: tasks, services, deployments, nodes and the event stream, plus \
             the routes workers call. Every answer carries the newest durable index in \
             X-Cube-Index. See docs/api.md.",
        ),
        Api::Worker => (
            "Cube worker API",
            "A node's API, called by the manager: its tasks, their output and exec, and host \
             stats. See docs/api.md.",
        ),
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The cluster token (CUBE_TOKEN), when the agent has one.",
                },
            },
        },
    })
}

/// One operation object.
fn describe(
    api: Api,
    operation: &Operation,
    error: &Schema,
    generator: &mut SchemaGenerator,
) -> Value {
    let mut parameters = Vec::new();
    for p in operation.path_params {
        parameters.push(parameter(p, "path", generator));
    }
    for p in operation.query {
        parameters.push(parameter(p, "query", generator));
    }
    if operation.blocking {
        parameters.push(json!({
            "name": "index",
            "in": "query",
            "description": "A blocking query: answer once something newer than this index is \
                            durable (or the wait has passed).",
            "schema": {"type": "integer", "minimum": 0},
        }));
        parameters.push(json!({
            "name": "wait",
            "in": "query",
            "description": "How long a blocking query may wait (default 5m, at most 10m, plus \
                            up to 1/16 of jitter). Needs index.",
            "schema": generator.subschema_for::<cube_core::schema::DurationText>(),
        }));
    }
    let mut responses = Map::new();
    for reply in operation.replies {
        let mut response = Map::new();
        response.insert("description".into(), reply.description.into());
        if let Some(content) = content(reply.content, generator) {
            response.insert("content".into(), content);
        }
        if api == Api::Manager {
            response.insert(
                "headers".into(),
                json!({"X-Cube-Index": {
                    "description": "The newest durable index.",
                    "schema": {"type": "integer", "minimum": 0},
                }}),
            );
        }
        responses.insert(reply.status.to_string(), Value::Object(response));
    }
    responses.insert(
        "default".into(),
        json!({
            "description": "An error: the one envelope every route answers with.",
            "content": {"application/json": {"schema": error}},
        }),
    );
    let mut object = Map::new();
    object.insert("operationId".into(), operation.id.into());
    object.insert("summary".into(), operation.summary.into());
    object.insert("tags".into(), json!([operation.tag]));
    object.insert("parameters".into(), Value::Array(parameters));
    if let Some((body, optional)) = operation.request
        && let Some(content) = content(body, generator)
    {
        object.insert("requestBody".into(), json!({"required": !optional, "content": content}));
    }
    object.insert("responses".into(), Value::Object(responses));
    object.insert(
        "security".into(),
        match operation.access {
            Access::Open => json!([]),
            Access::Role(_) | Access::Node => json!([{"token": []}]),
        },
    );
    match operation.access {
        Access::Open => {}
        Access::Role(role) => {
            object.insert("x-cube-role".into(), role.to_string().into());
        }
        Access::Node => {
            object.insert("x-cube-role".into(), "node".into());
        }
    }
    Value::Object(object)
}

fn parameter(p: &Param, location: &str, generator: &mut SchemaGenerator) -> Value {
    let schema = (p.schema)(generator);
    let mut object = json!({
        "name": p.name,
        "in": location,
        "description": p.description,
        "required": p.required || location == "path",
        "schema": schema,
    });
    if schema.get("type").is_some_and(|t| t == "array")
        && let Value::Object(o) = &mut object
    {
        // Repeated: `?command=sh&command=-c`.
        o.insert("style".into(), "form".into());
        o.insert("explode".into(), true.into());
    }
    object
}

fn content(content: Content, generator: &mut SchemaGenerator) -> Option<Value> {
    match content {
        Content::WebSocket => None,
        Content::Json(schema) => Some(json!({"application/json": {"schema": schema(generator)}})),
        Content::Stream(schema) => {
            let line = schema(generator);
            Some(json!({
                "application/x-ndjson": {"schema": line},
                "text/event-stream": {"schema": {"type": "string"}},
            }))
        }
        Content::Text(media) => Some(json!({(media): {"schema": {"type": "string"}}})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_id_is_unique_and_every_schema_it_names_is_defined() {
        let ops = [
            &HEALTH,
            &manager::LIST_TASKS,
            &manager::SUBMIT_TASK,
            &manager::EVENTS,
            &manager::PUT_SERVICE,
            &manager::DEPLOYMENT_ACTION,
        ];
        let doc = document(Api::Manager, &ops);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["ErrorBody", "TaskView", "TaskSubmission", "StreamLine", "Event"] {
            assert!(schemas.contains_key(name), "{name} is in components: {schemas:?}");
        }
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(schemas.contains_key(name), "{name} is referred to but not defined");
        }
        assert_eq!(doc["paths"]["/v1/tasks"].as_object().unwrap().len(), 2);
        assert_eq!(doc["paths"]["/v1/health"]["get"]["security"], json!([]));
    }
}

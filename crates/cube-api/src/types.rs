//! JSON bodies of the v1 API. Field names here are a compatibility promise: add fields, never
//! rename or remove them (see `docs/api.md`).

use std::collections::BTreeMap;

use cube_core::deployment::Deployment;
use cube_core::node::Drain;
use cube_core::service::{Service, ServiceSpec};
/// Host figures are domain values (the scheduler reads them) that also travel on the wire.
pub use cube_core::stats::{CpuStats, DiskStats, LoadStats, MemoryStats, NodeStats, TaskCounts};
use cube_core::{
    DesiredState, DriverHandle, DriverKind, Explanation, FieldError, HostPort, InstanceOf, Node,
    NodeId, NodeState, Resources, Task, TaskEvent, TaskId, TaskSpec, TaskState,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// A task as returned by `GET /v1/tasks[/{id}]` on the worker and the manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskView {
    /// Task id.
    pub id: TaskId,
    /// Task name (from the spec).
    pub name: String,
    /// Observed state: `pending`, `scheduled`, `running`, `restarting`, `completed`, `failed`.
    pub state: TaskState,
    /// Desired state: `running` or `stopped`.
    pub desired_state: DesiredState,
    /// Driver (from the spec).
    pub driver: DriverKind,
    /// Node the task is placed on.
    pub node: Option<NodeId>,
    /// Container id or pid of the workload.
    pub handle: Option<DriverHandle>,
    /// Published ports as bound on the host.
    pub host_ports: Vec<HostPort>,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// Why the task is in its state.
    pub reason: Option<String>,
    /// Restarts on the current node.
    pub restart_count: u32,
    /// When it was accepted.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// When the workload last started.
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub finished_at: Option<Timestamp>,
    /// When anything changed last.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// The spec as submitted (with defaults filled in).
    pub spec: TaskSpec,
    /// History, oldest first.
    pub events: Vec<TaskEvent>,
    /// Placement generation (incremented at each placement by the manager).
    #[serde(default)]
    pub generation: u32,
    /// Latest health-check result (`null` before the first check or without one).
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Times the task was moved to another node after its restarts ran out.
    #[serde(default)]
    pub reschedule_count: u32,
    /// Why the task is on its node, or why it cannot be placed (manager only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Explanation>,
    /// The service, version and slot of an instance (absent for a bare task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceOf>,
    /// The instance that replaced this one in its slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<TaskId>,
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> Self {
        Self {
            id: t.id,
            name: t.spec.name.clone(),
            state: t.state,
            desired_state: t.desired,
            driver: t.spec.driver,
            node: t.node,
            handle: t.handle.clone(),
            host_ports: t.host_ports.clone(),
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            restart_count: t.restart_count,
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            updated_at: t.updated_at,
            spec: t.spec.clone(),
            events: t.events.clone(),
            generation: t.generation,
            healthy: t.healthy,
            reschedule_count: t.reschedule_count,
            placement: t.placement.clone(),
            instance: t.instance.clone(),
            replaced_by: t.replaced_by,
        }
    }
}

/// A parsed `POST /v1/tasks` body: a task spec, optionally with the id to use.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSubmission {
    /// Id chosen by the caller (the manager sends its ids to workers); `None` = assign one.
    pub id: Option<TaskId>,
    /// Placement generation (sent by the manager; absent from users).
    pub generation: Option<u32>,
    /// The validated spec.
    pub spec: TaskSpec,
}

impl TaskSubmission {
    /// Parses and validates a body. Syntax and type errors name the field and position;
    /// validation lists every problem at once.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(ErrorCode::InvalidJson, format!("request body is not valid JSON: {e}"))
        })?;
        let object = value.as_object_mut().ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidJson,
                "request body must be a JSON object (a task spec)",
            )
        })?;
        let id = match object.remove("id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                Some(s.parse::<TaskId>().map_err(|e| ApiError {
                    code: ErrorCode::InvalidSpec,
                    message: e.to_string(),
                    details: vec![FieldError { field: "id".into(), message: e.to_string() }],
                    index: None,
                })?)
            }
            Some(other) => {
                let message = format!("must be a UUID string, not {other}");
                return Err(ApiError {
                    code: ErrorCode::InvalidSpec,
                    message: format!("id: {message}"),
                    details: vec![FieldError { field: "id".into(), message }],
                    index: None,
                });
            }
        };
        let generation = match object.remove("generation") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().and_then(|g| u32::try_from(g).ok()).ok_or_else(|| ApiError {
                    code: ErrorCode::InvalidSpec,
                    message: "generation: must be a non-negative integer".into(),
                    details: vec![FieldError {
                        field: "generation".into(),
                        message: "must be a non-negative integer".into(),
                    }],
                    index: None,
                })?)
            }
        };
        // A malformed constraint would end deserialization at the first one; take them out
        // and report them with the validation problems, so a caller sees every problem at once.
        let constraint_problems = take_bad_constraints(object);
        let spec = parse_spec_value(value)?;
        let mut problems = spec.validate().err().unwrap_or_default();
        problems.extend(constraint_problems);
        if !problems.is_empty() {
            return Err(ApiError::invalid_spec(problems));
        }
        Ok(Self { id, generation, spec })
    }
}

/// Removes the entries of `constraints` that do not parse, returning a problem for each.
fn take_bad_constraints(
    object: &mut serde_json::Map<String, serde_json::Value>,
) -> Vec<FieldError> {
    let Some(serde_json::Value::Array(items)) = object.get_mut("constraints") else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut index = 0;
    items.retain(|item| {
        let i = index;
        index += 1;
        let Some(text) = item.as_str() else { return true };
        match text.parse::<cube_core::constraint::Constraint>() {
            Ok(_) => true,
            Err(e) => {
                problems.push(FieldError {
                    field: format!("constraints[{i}]"),
                    message: e.to_string(),
                });
                false
            }
        }
    });
    problems
}

/// Deserializes a spec from JSON, turning serde's error into a field-named [`ApiError`].
pub fn parse_spec_value(value: serde_json::Value) -> Result<TaskSpec, ApiError> {
    serde_path_to_error::deserialize::<_, TaskSpec>(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_owned() } else { path };
        let message = e.into_inner().to_string();
        ApiError {
            code: ErrorCode::InvalidSpec,
            message: format!("invalid task spec: {field}: {message}"),
            details: vec![FieldError { field, message }],
            index: None,
        }
    })
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HealthView {
    /// Always `ok` when the server answers.
    pub status: String,
    /// `worker` or `manager`.
    pub role: String,
    /// Node id (workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// Node or manager name.
    pub name: String,
    /// Cube version.
    pub version: String,
    /// Highly available managers only: whether this one leads now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading: Option<bool>,
    /// Highly available managers only: where the leader answers, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Highly available managers only: the leader's epoch, when this one leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Query of `GET /v1/tasks/{id}/logs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogsQuery {
    /// Keep the response open and send new output until the task finishes.
    #[serde(default)]
    pub follow: bool,
    /// Only the last this many lines.
    #[serde(default)]
    pub tail: Option<usize>,
}

/// Query of `GET /v1/tasks` on the manager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskFilter {
    /// Only tasks in this state.
    #[serde(default)]
    pub state: Option<TaskState>,
    /// Only tasks placed on this node.
    #[serde(default)]
    pub node: Option<NodeId>,
}

/// `POST /v1/nodes/register`: a worker introduces itself (on every start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegisterRequest {
    /// The worker's stable id.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Base URL of its API, as the manager should call it.
    pub address: String,
    /// Labels for placement constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources it offers.
    pub capacity: Resources,
    /// Drivers it can run.
    pub drivers: Vec<DriverKind>,
    /// What it lets tasks ask for beyond the defaults (its `--allow-*` settings); absent from
    /// workers that predate them.
    #[serde(default, skip_serializing_if = "cube_core::Allows::is_nothing")]
    pub allows: cube_core::Allows,
    /// Every task it knows, so the manager can reconcile (tasks it lost are placed again,
    /// tasks it should not run are stopped).
    #[serde(default)]
    pub tasks: Vec<TaskView>,
}

/// `GET /v1/nodes/{id}/endpoints`: what a node's ingress forwards, as of `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngressFeed {
    /// The event index of the newest endpoint change this reflects. Asking again with
    /// `?index=` this answers once something newer exists, and tells the manager this node's
    /// ingress has applied it.
    pub index: u64,
    /// Every service that publishes ports, with its endpoints.
    pub services: Vec<cube_core::endpoints::ServiceEndpoints>,
}

/// Answer to a registration or heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatResponse {
    /// Heartbeat period the manager expects, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Tasks the worker must stop: stopped by the user, or moved elsewhere while the worker was
    /// unreachable (fencing).
    #[serde(default)]
    pub stop: Vec<TaskId>,
    /// The manager does not know this node (it lost its state): register again.
    #[serde(default)]
    pub register: bool,
    /// The answering leader's epoch, with highly available managers: the worker keeps the
    /// highest it has seen and refuses commands of lower ones (absent with one manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl HeartbeatResponse {
    /// Used when the manager names no interval (`heartbeat_interval_ms` 0).
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The heartbeat period the manager asked for.
    pub fn interval(&self) -> std::time::Duration {
        match self.heartbeat_interval_ms {
            0 => Self::DEFAULT_INTERVAL,
            ms => std::time::Duration::from_millis(ms),
        }
    }
}

/// `POST /v1/nodes/{id}/heartbeat`: liveness, stats and task changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatRequest {
    /// Latest host metrics (periodic heartbeats only).
    #[serde(default)]
    pub stats: Option<NodeStats>,
    /// Tasks that changed since the last acknowledged heartbeat.
    #[serde(default)]
    pub tasks: Vec<TaskView>,
    /// Every task that is not finished on the worker, with its generation (periodic heartbeats
    /// only: the manager checks them against its own records, which costs a lookup per task).
    #[serde(default)]
    pub active: Option<Vec<ActiveTask>>,
    /// The node's ingress (periodic beats of a worker joined to a manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<cube_core::endpoints::IngressReport>,
}

/// A task that is not finished on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActiveTask {
    /// Task id.
    pub id: TaskId,
    /// Placement generation it runs under.
    pub generation: u32,
}

/// A node as returned by `GET /v1/nodes[/{id}]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Worker API address.
    pub address: String,
    /// `ready` or `down`.
    pub state: NodeState,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Drivers.
    pub drivers: Vec<DriverKind>,
    /// What its worker lets tasks ask for beyond the defaults (`cube worker --allow-*`).
    #[serde(default, skip_serializing_if = "cube_core::Allows::is_nothing")]
    pub allows: cube_core::Allows,
    /// First registration.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub registered_at: Timestamp,
    /// Last heartbeat.
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub last_heartbeat: Option<Timestamp>,
    /// Latest stats.
    pub stats: Option<NodeStats>,
    /// Resources offered.
    pub capacity: Resources,
    /// Resources reserved by tasks placed there and not finished.
    pub reserved: Resources,
    /// Capacity minus reserved.
    pub free: Resources,
    /// Tasks placed there and not finished.
    pub task_count: u32,
    /// Whether new work may go there.
    #[serde(default = "yes")]
    pub eligible: bool,
    /// Its drain, in progress or done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// Its ingress's listeners, one per published port, as its last heartbeat reported them
    /// (a listener with an `error` cannot serve its port on this node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<cube_core::endpoints::IngressListener>,
}

fn yes() -> bool {
    true
}

/// Body of `POST /v1/nodes/{id}/drain`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// After this long, what is left on the node is stopped (`None`: wait for room elsewhere).
    #[serde(default, with = "cube_core::units::option_duration_serde")]
    #[schemars(with = "Option<cube_core::schema::DurationText>")]
    pub deadline: Option<std::time::Duration>,
}

/// Body of `POST /v1/nodes/{id}/eligibility`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EligibilityRequest {
    /// Whether new work may go there (`true` also ends a drain).
    pub eligible: bool,
}

impl NodeInfo {
    /// Builds the view of `node` with its usage.
    pub fn new(
        node: &Node,
        stats: Option<NodeStats>,
        reserved: Resources,
        task_count: u32,
    ) -> Self {
        Self {
            id: node.id,
            name: node.name.clone(),
            address: node.address.clone(),
            state: node.state,
            labels: node.labels.clone(),
            drivers: node.drivers.clone(),
            allows: node.allows.clone(),
            registered_at: node.registered_at,
            last_heartbeat: node.last_heartbeat,
            stats,
            capacity: node.capacity,
            reserved,
            free: node.capacity.saturating_sub(reserved),
            task_count,
            eligible: node.eligible,
            drain: node.drain.clone(),
            ingress: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_takes_an_optional_id() {
        let s = TaskSubmission::parse(
            br#"{"id": "01900000-0000-7000-8000-000000000001", "name": "a", "driver": "process",
                 "command": "sleep", "args": ["1"]}"#,
        )
        .unwrap();
        assert_eq!(s.id.unwrap().to_string(), "01900000-0000-7000-8000-000000000001");
        assert_eq!(s.spec.name, "a");
        let s = TaskSubmission::parse(br#"{"name": "a", "driver": "process", "command": "x"}"#)
            .unwrap();
        assert_eq!(s.id, None);
        let s = TaskSubmission::parse(
            br#"{"generation": 3, "name": "a", "driver": "process", "command": "x"}"#,
        )
        .unwrap();
        assert_eq!(s.generation, Some(3));
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        let err = TaskSubmission::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err.message.contains("line 1"), "{}", err.message);
        assert_eq!(TaskSubmission::parse(b"[1]").unwrap_err().code, ErrorCode::InvalidJson);
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = TaskSubmission::parse(
            br#"{"name": "a", "driver": "docker", "image": "i", "resources": {"memory": -5}}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSpec);
        assert_eq!(err.details[0].field, "resources.memory");
        assert!(err.details[0].message.contains("must not be negative"), "{err:?}");
    }

    #[test]
    fn validation_errors_are_all_listed() {
        let err =
            TaskSubmission::parse(br#"{"name": "", "driver": "docker", "image": ""}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSpec);
        let fields: Vec<&str> = err.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["name", "image"]);
        assert!(err.message.contains("2 problems"), "{}", err.message);
    }

    #[test]
    fn a_bad_constraint_is_listed_with_the_other_problems() {
        let err = TaskSubmission::parse(
            br#"{"name": "x", "driver": "docker", "image": "",
                 "constraints": ["node.name == a", "zone = a"]}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = err.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["image", "constraints[1]"]);
        assert!(err.details[1].message.contains("expected `<attribute> == <value>`"), "{err:?}");
    }

    #[test]
    fn bad_ids_are_rejected() {
        let err = TaskSubmission::parse(
            br#"{"id": 7, "name": "a", "driver": "process", "command": "x"}"#,
        )
        .unwrap_err();
        assert_eq!(err.details[0].field, "id");
    }
}

/// A service as `GET /v1/services[/{name}]` and `PUT /v1/services/{name}` return it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// The current version.
    pub version: u64,
    /// The change index of its last change (what `?check_index=` compares with).
    pub modify_index: u64,
    /// The current spec.
    pub spec: ServiceSpec,
    /// When it was created.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// How many instances run and are healthy, in all and per version.
    pub instances: InstanceCounts,
    /// The deployment of the current version (absent when it needed none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
}

impl ServiceView {
    /// The view of `service` with its counts and deployment.
    pub fn new(
        service: &Service,
        instances: InstanceCounts,
        deployment: Option<Deployment>,
    ) -> Self {
        Self {
            name: service.spec.name.clone(),
            version: service.version,
            modify_index: service.modify_index,
            spec: service.spec.clone(),
            created_at: service.created_at,
            updated_at: service.updated_at,
            instances,
            deployment,
        }
    }
}

/// Instance counts of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceCounts {
    /// Instances wanted (`count`).
    pub desired: u32,
    /// Instances running.
    pub running: u32,
    /// Instances healthy: running with every check passing for `min_healthy_time`.
    pub healthy: u32,
    /// The same per version, oldest first (versions with no running instance left out).
    pub versions: Vec<VersionCounts>,
}

/// Instance counts of one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionCounts {
    /// The version.
    pub version: u64,
    /// Instances running.
    pub running: u32,
    /// Instances healthy.
    pub healthy: u32,
}

/// `POST /v1/services/{name}/plan`: what an update would do, without doing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServicePlanView {
    /// `create`, `none`, `in_place` (count, strategy or rules only: nothing restarts) or
    /// `destructive` (the template changed: instances are replaced by a rollout).
    pub change: String,
    /// The version the update would make.
    pub version: u64,
    /// The service's modify index now (pass it as `check_index` to apply exactly this plan).
    pub modify_index: u64,
    /// Every changed field.
    pub diff: Vec<FieldChange>,
    /// What the rollout would do, in words.
    pub rollout: String,
    /// Each new instance: where it would go, or why no node can take it.
    pub placements: Vec<PlannedInstance>,
}

/// One changed field of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldChange {
    /// Dotted path, e.g. `task.env.GREETING` or `task.args[1]`.
    pub field: String,
    /// The value now (absent: the field is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    /// The value after the update (absent: the field goes away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<serde_json::Value>,
}

/// A new instance in a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlannedInstance {
    /// Its slot.
    pub slot: u32,
    /// The node it would go to (absent: none can take it; see `explanation.rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The scheduler's explanation: scores, and every rejected node with its reason.
    pub explanation: Explanation,
}

/// Query of `PUT /v1/services/{name}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    /// Only if the service's `modify_index` is this (`0`: only if it does not exist).
    #[serde(default)]
    pub check_index: Option<u64>,
}

/// Body of `POST /v1/services/{name}/scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The new count.
    pub count: u32,
}

/// Body of `POST /v1/services/{name}/revert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The version whose spec to restore.
    pub version: u64,
}

/// Parses and validates a service body for `PUT /v1/services/{name}`: the name may be left out
/// (the path gives it) but must match if present. Syntax and type errors name the field;
/// validation lists every problem at once.
pub fn parse_service(body: &[u8], name: &str) -> Result<ServiceSpec, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidJson, format!("request body is not valid JSON: {e}"))
    })?;
    let object = value.as_object_mut().ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidJson, "request body must be a JSON object (a service spec)")
    })?;
    let mut problems = Vec::new();
    match object.get("name") {
        None => {
            object.insert("name".into(), serde_json::Value::String(name.to_owned()));
        }
        Some(serde_json::Value::String(n)) if n == name => {}
        Some(other) => problems.push(FieldError {
            field: "name".into(),
            message: format!("{other} differs from the name in the path ({name:?})"),
        }),
    }
    if let Some(task) = object.get_mut("task").and_then(|t| t.as_object_mut()) {
        problems.extend(
            take_bad_constraints(task)
                .into_iter()
                .map(|p| FieldError { field: format!("task.{}", p.field), message: p.message }),
        );
    }
    let spec = serde_path_to_error::deserialize::<_, ServiceSpec>(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_owned() } else { path };
        let message = e.into_inner().to_string();
        ApiError {
            code: ErrorCode::InvalidSpec,
            message: format!("invalid service spec: {field}: {message}"),
            details: vec![FieldError { field, message }],
            index: None,
        }
    })?;
    problems.extend(spec.validate().err().unwrap_or_default());
    if problems.is_empty() { Ok(spec) } else { Err(ApiError::invalid_spec(problems)) }
}

//! The manager's event stream (`GET /v1/events`): one JSON object per line (NDJSON), or the
//! same objects as Server-Sent Events.
//!
//! Every committed change of a task, node, service or deployment is an [`Event`] with its own
//! cluster-wide `index`: indexes increase by one per change, so a client that saw index `N`
//! resumes with `?index=N` and misses nothing and sees nothing twice. Besides events the stream
//! carries [`Notice`]s: a heartbeat with the current index while nothing happens, and a last
//! line saying where to resume when the manager drops a subscriber that fell behind.

use cube_core::deployment::Deployment;
use cube_core::{DesiredState, HostPort, InstanceOf, NodeId, Task, TaskEvent, TaskId, TaskState};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::types::{NodeInfo, ServiceView};

/// One change, as the stream sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// Its place in the cluster's history: one more than the change before it.
    pub index: u64,
    /// When it was committed.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub at: Timestamp,
    /// What happened, from the record's point of view.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The record's key: task id, node id, service name or deployment id.
    pub key: String,
    /// Who asked for the change.
    pub by: Actor,
    /// The record after the change (`topic` and `object`; `object` is `null` for a deletion).
    #[serde(flatten)]
    pub object: EventObject,
}

impl Event {
    /// Its topic.
    pub fn topic(&self) -> Topic {
        match self.object {
            EventObject::Task(_) => Topic::Task,
            EventObject::Node(_) => Topic::Node,
            EventObject::Service(_) => Topic::Service,
            EventObject::Deployment(_) => Topic::Deployment,
            EventObject::Exec(_) => Topic::Exec,
            EventObject::Endpoints(_) => Topic::Endpoints,
            EventObject::Audit(_) => Topic::Audit,
        }
    }
}

/// The record an event is about, after the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "topic", content = "object")]
pub enum EventObject {
    /// A task, without its spec (which never changes: `GET /v1/tasks/{id}` has it) and with
    /// only the history entry the change added.
    Task(Option<Box<TaskSummary>>),
    /// A node.
    Node(Option<Box<NodeInfo>>),
    /// A service with its counts.
    Service(Option<Box<ServiceView>>),
    /// A deployment.
    Deployment(Option<Box<Deployment>>),
    /// A command run in a task (keyed by the task id).
    Exec(Option<Box<crate::exec::ExecRecord>>),
    /// The endpoints of a service with published ports (keyed by its name; `null` once it
    /// publishes nothing).
    Endpoints(Option<Box<cube_core::endpoints::ServiceEndpoints>>),
    /// A mutation through the API: who, with which role, what, how it was answered (keyed by
    /// who).
    Audit(Option<Box<cube_core::access::AuditRecord>>),
}

/// What events are about; `?topic=` selects them.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
pub enum Topic {
    /// Tasks (keyed by task id).
    Task,
    /// Nodes (keyed by node id).
    Node,
    /// Services (keyed by name).
    Service,
    /// Deployments (keyed by deployment id).
    Deployment,
    /// Commands run in tasks (keyed by task id).
    Exec,
    /// Services' endpoints (keyed by service name).
    Endpoints,
    /// The audit log: every mutation through the API (keyed by who made it).
    Audit,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 7] = [
        Topic::Task,
        Topic::Node,
        Topic::Service,
        Topic::Deployment,
        Topic::Exec,
        Topic::Endpoints,
        Topic::Audit,
    ];

    /// Its name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Topic::Task => "Task",
            Topic::Node => "Node",
            Topic::Service => "Service",
            Topic::Deployment => "Deployment",
            Topic::Exec => "Exec",
            Topic::Endpoints => "Endpoints",
            Topic::Audit => "Audit",
        }
    }
}

/// One `?topic=` value: `Task` (every task), `Service:web` (one key), or `*` (everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    /// The topic (`None`: every topic).
    pub topic: Option<Topic>,
    /// Only this key (`None`: every key).
    pub key: Option<String>,
}

impl TopicFilter {
    /// Parses `Topic[:key]` or `*`.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        if raw == "*" {
            return Ok(Self { topic: None, key: None });
        }
        let (name, key) = match raw.split_once(':') {
            Some((name, key)) if !key.is_empty() && key != "*" => (name, Some(key.to_owned())),
            Some((name, _)) => (name, None),
            None => (raw, None),
        };
        let topic = Topic::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "unknown topic {name:?}: expected one of {}, optionally with :KEY, or *",
                    Topic::ALL.map(Topic::name).join(", ")
                ),
            )
        })?;
        Ok(Self { topic: Some(topic), key })
    }

    /// Whether an event of `topic` about `key` passes.
    pub fn admits(&self, topic: Topic, key: &str) -> bool {
        self.topic.is_none_or(|t| t == topic) && self.key.as_deref().is_none_or(|k| k == key)
    }
}

/// What happened. Task types follow the history entry the change added; node, service and
/// deployment types follow the record's state after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EventType {
    /// Accepted, waiting for a node.
    TaskSubmitted,
    /// Placed on a node.
    TaskPlaced,
    /// Its workload runs.
    TaskRunning,
    /// Its checks pass.
    TaskHealthy,
    /// A check failed.
    TaskUnhealthy,
    /// It will start again on its node.
    TaskRestarting,
    /// It exited successfully for good.
    TaskCompleted,
    /// It failed for good.
    TaskFailed,
    /// Someone asked it to stop.
    TaskStopRequested,
    /// It stopped as asked.
    TaskStopped,
    /// Its node lost it; it waits for another.
    TaskRequeued,
    /// Its node lost it; its service replaces it.
    TaskLost,
    /// No node can take it now.
    TaskUnplaceable,
    /// Anything else about it changed.
    TaskUpdated,
    /// Forgotten after its retention.
    TaskDeleted,
    /// A new node joined.
    NodeRegistered,
    /// A node is up and takes work.
    NodeReady,
    /// A node missed its heartbeats for the TTL.
    NodeDown,
    /// A node is being drained.
    NodeDraining,
    /// A node's drain finished.
    NodeDrained,
    /// A node takes no new work.
    NodeIneligible,
    /// A node was removed from the cluster (`cube node rm`).
    NodeRemoved,
    /// A service was created.
    ServiceRegistered,
    /// A service changed.
    ServiceUpdated,
    /// A service was removed.
    ServiceDeleted,
    /// A deployment is under way (started, or moved on).
    DeploymentProgress,
    /// A deployment is paused.
    DeploymentPaused,
    /// A deployment finished.
    DeploymentSuccessful,
    /// A deployment failed.
    DeploymentFailed,
    /// A deployment was cancelled by a newer one.
    DeploymentCancelled,
    /// A command started in a task.
    ExecStarted,
    /// A command in a task ended (its exit code, or why it failed).
    ExecEnded,
    /// A service's endpoints changed: an instance joined or left them, or its ports did.
    EndpointsUpdated,
    /// A mutation through the API was answered (the audit log).
    Audited,
}

/// Who asked for a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A client of the API.
    Api,
    /// A worker, reporting what happened on its node.
    Node {
        /// The node.
        node: NodeId,
    },
    /// The manager itself: placement, liveness, rollouts, drains, garbage collection.
    Manager,
}

/// A task as its events carry it: everything but the spec, the placement explanation and the
/// history before this change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskSummary {
    /// Task id.
    pub id: TaskId,
    /// Task name.
    pub name: String,
    /// Observed state.
    pub state: TaskState,
    /// Desired state.
    pub desired_state: DesiredState,
    /// Node it is placed on.
    pub node: Option<NodeId>,
    /// Placement generation.
    pub generation: u32,
    /// Latest health-check result.
    pub healthy: Option<bool>,
    /// Published ports as bound on the host.
    pub host_ports: Vec<HostPort>,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// Why it is in its state.
    pub reason: Option<String>,
    /// Restarts on the current node.
    pub restart_count: u32,
    /// When the workload last started.
    #[serde(default)]
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub started_at: Option<Timestamp>,
    /// The service, version and slot of an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceOf>,
    /// The instance that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<TaskId>,
    /// When anything changed last.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// The newest entry of its history.
    pub last_event: Option<TaskEvent>,
}

impl From<&Task> for TaskSummary {
    fn from(t: &Task) -> Self {
        Self {
            id: t.id,
            name: t.spec.name.clone(),
            state: t.state,
            desired_state: t.desired,
            node: t.node,
            generation: t.generation,
            healthy: t.healthy,
            host_ports: t.host_ports.clone(),
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            restart_count: t.restart_count,
            started_at: t.started_at,
            instance: t.instance.clone(),
            replaced_by: t.replaced_by,
            updated_at: t.updated_at,
            last_event: t.events.last().cloned(),
        }
    }
}

/// A stream line that is not an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Notice {
    /// Which notice.
    #[serde(rename = "type")]
    pub kind: NoticeType,
    /// `Heartbeat`: the current index. `Lagged`: the index to resume from.
    pub index: u64,
}

/// Kinds of [`Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum NoticeType {
    /// Nothing happened for a while (sent every 10 s, so idle proxies keep the stream open).
    Heartbeat,
    /// The subscriber fell too far behind and is disconnected: resume with `?index=` this.
    Lagged,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum StreamLine {
    /// A change.
    Event(Box<Event>),
    /// A heartbeat or the last line before a disconnect.
    Notice(Notice),
}

/// The oldest and the newest index the manager's history holds, sent with a `410` for an index
/// older than the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IndexBounds {
    /// The first index still held (`?index=` one less than this resumes from it).
    pub oldest: u64,
    /// The newest index.
    pub current: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_parse_and_admit() {
        let all = TopicFilter::parse("*").unwrap();
        assert!(all.admits(Topic::Node, "n"));
        let tasks = TopicFilter::parse("Task").unwrap();
        assert!(tasks.admits(Topic::Task, "x") && !tasks.admits(Topic::Node, "x"));
        let web = TopicFilter::parse("Service:web").unwrap();
        assert!(web.admits(Topic::Service, "web") && !web.admits(Topic::Service, "api"));
        assert_eq!(TopicFilter::parse("Service:*").unwrap().key, None);
        let e = TopicFilter::parse("Tasks").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("Task, Node, Service, Deployment, Exec"), "{}", e.message);
    }

    #[test]
    fn lines_tell_events_from_notices() {
        let line = r#"{"type":"Heartbeat","index":7}"#;
        let parsed: StreamLine = serde_json::from_str(line).unwrap();
        assert_eq!(parsed, StreamLine::Notice(Notice { kind: NoticeType::Heartbeat, index: 7 }));
        let event = Event {
            index: 8,
            at: Timestamp::UNIX_EPOCH,
            kind: EventType::ServiceDeleted,
            key: "web".into(),
            by: Actor::Api,
            object: EventObject::Service(None),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"index":8,"at":"1970-01-01T00:00:00Z","type":"ServiceDeleted","key":"web","by":{"kind":"api"},"topic":"Service","object":null}"#
        );
        let back: StreamLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, StreamLine::Event(Box::new(event)));
    }
}

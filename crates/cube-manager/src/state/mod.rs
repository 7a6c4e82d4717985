//! The manager's cluster state and every rule that changes it, without I/O.
//!
//! [`State`] holds tasks, nodes, the queue of tasks waiting for a node, and per-node usage kept
//! in step with every task change. Its methods take the current time and return [`Effects`]:
//! which records changed (to persist) and which calls to make to workers (dispatches, stops).
//! The async [`crate::Manager`] applies them. Keeping the rules here makes them testable as
//! plain functions. The rules are split by concern:
//!
//! - `accounting`: [`State::modify`], the one way a task changes, keeping the pending queue,
//!   per-node usage and the node → tasks index in step;
//! - `placement`: submit, stop, place, dispatch outcomes;
//! - `membership`: registration, heartbeats, fencing, node expiry;
//! - `reports`: merging what workers report by replaying their triggers;
//! - `gc`: forgetting finished tasks;
//! - `services`: services, their deployments, and the rollout planner applied to them;
//! - `drain`: draining nodes and their eligibility;
//! - `endpoints`: each published service's endpoints, recomputed after every change;
//! - `plan`: dry runs of service updates;
//! - `replica`: a follower's copy of the records another manager wrote, kept in step with
//!   its derived indexes.
//!
//! **Invariant:** tasks are only changed through [`State::modify`] (the one exception, an
//! unplaceable task's derived reason, touches neither the queue nor the usage).

mod accounting;
mod drain;
mod endpoints;
mod gc;
mod membership;
mod placement;
mod plan;
pub(crate) use plan::spec_diff;
mod replica;
mod reports;
mod services;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cube_core::deployment::Deployment;
use cube_core::stats::NodeStats;
use cube_core::{
    Bytes, DeploymentId, DesiredState, Millicores, Node, NodeId, Protocol, Resources, Scheduler,
    Task, TaskEvent, TaskId, TaskState, Trigger,
};
use jiff::Timestamp;

pub use reports::{ActiveCopy, Beat, Report};
pub use services::{DeploymentAction, Refusal, ServiceEntry};

/// A task placed on a node, to be sent there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The task.
    pub task: TaskId,
    /// Its placement generation.
    pub generation: u32,
    /// The node.
    pub node: NodeId,
}

/// A stop to send to the node running a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopCall {
    /// The task.
    pub task: TaskId,
    /// The node running it.
    pub node: NodeId,
}

/// What a state change requires of the outside world.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tasks whose records changed (to persist).
    pub tasks: BTreeSet<TaskId>,
    /// The newest history entry of each changed task before this change (`None`: it had
    /// none, or is new): what the change added is what came after it.
    pub history_before: BTreeMap<TaskId, Option<TaskEvent>>,
    /// Nodes whose records changed (to persist).
    pub nodes: BTreeSet<NodeId>,
    /// Nodes removed (to delete).
    pub removed_nodes: BTreeSet<NodeId>,
    /// Tasks to send to nodes.
    pub dispatch: Vec<Dispatch>,
    /// Stops to send to nodes.
    pub stop: Vec<StopCall>,
    /// Capacity or pending work changed: run placement.
    pub kick: bool,
    /// Services whose records changed (to persist).
    pub services: BTreeSet<String>,
    /// Services removed (to delete).
    pub removed_services: BTreeSet<String>,
    /// Services created by this change.
    pub created_services: BTreeSet<String>,
    /// Services whose spec this change changed: their `modify_index` becomes the index of
    /// the change's event.
    pub stamp: BTreeSet<String>,
    /// Deployments whose records changed (to persist).
    pub deployments: BTreeSet<DeploymentId>,
    /// Services whose instances changed: to plan again before the change is committed.
    pub reconcile: BTreeSet<String>,
}

/// A node as the manager tracks it.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    /// The durable record.
    pub node: Node,
    /// Latest stats (not persisted: the next heartbeat brings fresh ones).
    pub stats: Option<NodeStats>,
    /// When the last heartbeat arrived, on the manager's monotonic clock.
    pub last_seen: Instant,
    /// `node.name`, shared by every placement explanation that names the node.
    name: Arc<str>,
}

impl NodeEntry {
    fn new(node: Node, last_seen: Instant) -> Self {
        let name = Arc::from(node.name.as_str());
        Self { node, stats: None, last_seen, name }
    }
}

/// What tasks placed on one node and not finished hold there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of their resources.
    pub reserved: Resources,
    /// Their host ports.
    pub ports: BTreeSet<(u16, Protocol)>,
    /// Their number.
    pub count: u32,
    /// Which they are: node events (expiry, re-registration) look here instead of scanning
    /// every task.
    pub tasks: BTreeSet<TaskId>,
}

/// The usage of a node nothing is placed on.
static NO_USAGE: Usage = Usage {
    reserved: Resources { cpu: Millicores(0), memory: Bytes(0), disk: Bytes(0) },
    ports: BTreeSet::new(),
    count: 0,
    tasks: BTreeSet::new(),
};

/// The cluster as the manager knows it.
#[derive(Debug)]
pub struct State {
    /// Behind a pointer: a `Task` is ~800 bytes, and B-tree nodes filled in id (= time) order
    /// stay about half full, so storing tasks inline cost ~500 more bytes per task. An `Arc`
    /// so readers (a full `GET /v1/tasks`) take cheap handles under the lock and do the heavy
    /// work after releasing it; a change copies a task only while such a handle is alive.
    tasks: BTreeMap<TaskId, Arc<Task>>,
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// Tasks waiting for a node, oldest first.
    pending: BTreeSet<TaskId>,
    usage: BTreeMap<NodeId, Usage>,
    /// Tasks whose dispatch to a node is in flight.
    dispatching: HashSet<TaskId>,
    /// Waiting tasks not tried since they started waiting. A task found unplaceable is tried
    /// again only once capacity may have appeared (`retry_all`), so a backlog of unplaceable
    /// tasks costs nothing per new submission.
    fresh: BTreeSet<TaskId>,
    /// Capacity may have appeared (a node joined or came back, a task left a node, stats
    /// arrived): the next placement pass tries every waiting task.
    retry_all: bool,
    /// Scheduler runs so far (a task tried once counts once).
    attempts: u64,
    scheduler: Scheduler,
    services: BTreeMap<String, ServiceEntry>,
    deployments: BTreeMap<DeploymentId, Deployment>,
    /// Services to plan at the next change whatever happened (at start-up: all of them).
    due: BTreeSet<String>,
    /// Nodes being drained and not yet empty.
    draining: BTreeSet<NodeId>,
    /// The endpoints of each service that publishes ports (written only by
    /// `refresh_endpoints`).
    endpoints: BTreeMap<String, cube_core::endpoints::ServiceEndpoints>,
    /// The event index of the newest endpoint change (written only by `set_endpoints_index`).
    endpoints_index: u64,
    /// The endpoint index each node's ingress has applied (written only by
    /// `ingress_applied`, from the node's own requests).
    ingress_acks: BTreeMap<NodeId, u64>,
    /// What each node's ingress last reported, and when (written only by
    /// `ingress_reported`, from the node's heartbeats).
    ingress_reports: BTreeMap<NodeId, (cube_core::endpoints::IngressReport, Instant)>,
    /// Instances whose stop waits for the ingresses (written only by `hold_stops` and
    /// `release_leaving`).
    leaving: BTreeMap<TaskId, endpoints::Leaving>,
}

impl State {
    /// An empty cluster placing with `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            tasks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            pending: BTreeSet::new(),
            usage: BTreeMap::new(),
            dispatching: HashSet::new(),
            fresh: BTreeSet::new(),
            retry_all: false,
            attempts: 0,
            scheduler,
            services: BTreeMap::new(),
            deployments: BTreeMap::new(),
            due: BTreeSet::new(),
            draining: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            endpoints_index: 0,
            ingress_acks: BTreeMap::new(),
            ingress_reports: BTreeMap::new(),
            leaving: BTreeMap::new(),
        }
    }

    /// Loads records (at start-up). Nodes get a full TTL from `now` to heartbeat again.
    pub fn load(&mut self, tasks: Vec<Task>, nodes: Vec<Node>, now: Instant) {
        for node in nodes {
            if node.drain.as_ref().is_some_and(|d| d.drained_at.is_none()) {
                self.draining.insert(node.id);
            }
            self.nodes.insert(node.id, NodeEntry::new(node, now));
        }
        for mut task in tasks {
            let id = task.id;
            // Decoding gave every explanation its own copy of each node name; share them again
            // so a restarted manager is as small as one that never stopped.
            if let Some(p) = &mut task.placement {
                let names =
                    p.chosen.iter_mut().chain(&mut p.candidates).map(|s| (s.node, &mut s.name));
                for (node, name) in
                    names.chain(p.rejected.iter_mut().map(|r| (r.node, &mut r.name)))
                {
                    if let Some(entry) = self.nodes.get(&node)
                        && *entry.name == **name
                    {
                        *name = Arc::clone(&entry.name);
                    }
                }
            }
            self.tasks.insert(id, Arc::new(task));
            self.account(id, None);
        }
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|t| &**t)
    }

    /// All tasks, oldest first.
    #[cfg(test)]
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }

    /// Shared handles to the tasks matching `keep`, oldest first: cheap to take under the
    /// manager's lock, to be read after it is released.
    pub fn task_handles(&self, keep: impl Fn(&Task) -> bool) -> Vec<Arc<Task>> {
        self.tasks.values().filter(|t| keep(t)).cloned().collect()
    }

    /// Number of tasks.
    #[cfg(test)]
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&NodeEntry> {
        self.nodes.get(&id)
    }

    /// All nodes, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// What tasks hold on `node`. Borrowed: it includes the node's task index, and placement
    /// reads every node's usage on every pass.
    pub fn usage(&self, node: NodeId) -> &Usage {
        self.usage.get(&node).unwrap_or(&NO_USAGE)
    }

    /// How many tasks are in each state, and how many wait for a node.
    pub fn census(&self) -> (BTreeMap<TaskState, usize>, usize) {
        let mut by_state = BTreeMap::new();
        for t in self.tasks.values() {
            *by_state.entry(t.state).or_default() += 1;
        }
        (by_state, self.pending.len())
    }

    /// How many times the scheduler was asked to place a task.
    #[cfg(test)]
    pub fn placement_attempts(&self) -> u64 {
        self.attempts
    }

    /// Tasks waiting for a node.
    #[cfg(test)]
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Something may have made room: placement should look at waiting tasks again.
    fn capacity_changed(&mut self, effects: &mut Effects) {
        self.retry_all = true;
        effects.kick = true;
    }

    fn node_name(&self, id: NodeId) -> String {
        self.nodes.get(&id).map(|n| n.node.name.clone()).unwrap_or_else(|| id.to_string())
    }
}

/// A task whose node lost it: stopped if that was wanted, placed again if it is a bare task;
/// a service instance is lost for good, and its service replaces it in its slot.
fn requeue_or_stop(t: &mut Task, now: Timestamp, reason: String) {
    if t.desired == DesiredState::Stopped {
        apply(t, Trigger::Stopped, now, reason);
    } else if t.instance.is_some() {
        apply(t, Trigger::Lost, now, reason);
    } else {
        apply(t, Trigger::Requeue, now, reason);
    }
}

/// Applies a trigger; an invalid one is a bug, logged rather than applied.
fn apply(t: &mut Task, trigger: Trigger, now: Timestamp, reason: impl Into<String>) {
    if let Err(e) = t.apply(trigger, now, reason) {
        tracing::error!(task = %t.id, error = %e, "manager attempted an invalid transition");
    }
}

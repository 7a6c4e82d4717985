//! The manager's cluster state and every rule that changes it, without I/O.
//!
//! [`State`] holds tasks, nodes, the queue of tasks waiting for a node, and per-node usage kept
//! in step with every task change. Its methods take the current time and return [`Effects`]:
//! which records changed (to persist) and which calls to make to workers (dispatches, stops).
//! The async [`crate::Manager`] applies them. Keeping the rules here makes them testable as
//! plain functions.
//!
//! **Invariant:** tasks are only changed through [`State::modify`], which keeps `pending` and the
//! usage counters consistent with the tasks themselves.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use cube_api::types::{ActiveTask, HeartbeatRequest, NodeStats, TaskView};
use cube_core::scheduler::NodeLoad;
use cube_core::{
    Decision, DesiredState, Node, NodeId, NodeState, NodeView, Protocol, Resources, Scheduler,
    Task, TaskId, TaskState, Trigger,
};
use jiff::Timestamp;

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
    /// Nodes whose records changed (to persist).
    pub nodes: BTreeSet<NodeId>,
    /// Tasks to send to nodes.
    pub dispatch: Vec<Dispatch>,
    /// Stops to send to nodes.
    pub stop: Vec<StopCall>,
    /// Capacity or pending work changed: run placement.
    pub kick: bool,
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
}

/// Resources held on one node by tasks placed there and not finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of their resources.
    pub reserved: Resources,
    /// Their host ports.
    pub ports: BTreeSet<(u16, Protocol)>,
    /// Their number.
    pub count: u32,
}

/// The cluster as the manager knows it.
#[derive(Debug)]
pub struct State {
    tasks: BTreeMap<TaskId, Task>,
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// Tasks waiting for a node, oldest first.
    pending: BTreeSet<TaskId>,
    usage: BTreeMap<NodeId, Usage>,
    /// Tasks whose dispatch to a node is in flight.
    dispatching: HashSet<TaskId>,
    scheduler: Scheduler,
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
            scheduler,
        }
    }

    /// Loads records (at start-up). Nodes get a full TTL from `now` to heartbeat again.
    pub fn load(&mut self, tasks: Vec<Task>, nodes: Vec<Node>, now: Instant) {
        for node in nodes {
            self.nodes.insert(node.id, NodeEntry { node, stats: None, last_seen: now });
        }
        for task in tasks {
            let id = task.id;
            self.tasks.insert(id, task);
            self.account(id, None);
        }
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    /// All tasks, oldest first.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Number of tasks.
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

    /// What tasks hold on `node`.
    pub fn usage(&self, node: NodeId) -> Usage {
        self.usage.get(&node).cloned().unwrap_or_default()
    }

    /// Tasks waiting for a node.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Marks a dispatch finished (successfully or not).
    pub fn dispatch_done(&mut self, id: TaskId) {
        self.dispatching.remove(&id);
    }

    /// Changes task `id` with `f`, keeping `pending` and usage consistent. Returns `f`'s result.
    pub fn modify<R>(
        &mut self,
        id: TaskId,
        effects: &mut Effects,
        f: impl FnOnce(&mut Task) -> R,
    ) -> Option<R> {
        let before = self.tasks.get(&id).map(contribution)?;
        let result = self.tasks.get_mut(&id).map(f)?;
        self.account(id, Some(before));
        effects.tasks.insert(id);
        Some(result)
    }

    /// Updates `pending` and usage after task `id` changed from contribution `before`.
    fn account(&mut self, id: TaskId, before: Option<Contribution>) {
        let Some(task) = self.tasks.get(&id) else { return };
        let after = contribution(task);
        let waiting = task.state == TaskState::Pending && task.desired == DesiredState::Running;
        if waiting {
            self.pending.insert(id);
        } else {
            self.pending.remove(&id);
        }
        if let Some(Some((node, res, ports))) = before
            && let Some(u) = self.usage.get_mut(&node)
        {
            {
                u.reserved = Resources {
                    cpu: u.reserved.cpu.saturating_sub(res.cpu),
                    memory: u.reserved.memory.saturating_sub(res.memory),
                    disk: u.reserved.disk.saturating_sub(res.disk),
                };
                for p in &ports {
                    u.ports.remove(p);
                }
                u.count = u.count.saturating_sub(1);
            }
        }
        if let Some((node, res, ports)) = after {
            let u = self.usage.entry(node).or_default();
            u.reserved = u.reserved.saturating_add(res);
            u.ports.extend(ports);
            u.count += 1;
        }
    }

    /// Accepts a new task (state `pending`): `Some((task, true))`. An id seen before with the
    /// same spec is returned as it is (`Some((task, false))`); with another spec it is refused
    /// (`None`).
    pub fn submit(&mut self, task: Task, effects: &mut Effects) -> Option<(Task, bool)> {
        if let Some(existing) = self.tasks.get(&task.id) {
            return (existing.spec == task.spec).then(|| (existing.clone(), false));
        }
        let id = task.id;
        self.tasks.insert(id, task.clone());
        self.account(id, None);
        effects.tasks.insert(id);
        effects.kick = true;
        Some((task, true))
    }

    /// Asks a task to stop. A task not placed yet completes at once; a placed one is stopped by
    /// its node.
    pub fn stop(&mut self, id: TaskId, now: Timestamp, effects: &mut Effects) -> Option<Task> {
        let task = self.tasks.get(&id)?;
        if task.desired == DesiredState::Stopped || task.state.is_terminal() {
            return Some(task.clone());
        }
        let node = task.node;
        self.modify(id, effects, |t| {
            t.desired = DesiredState::Stopped;
            t.note(now, "stop requested");
            if t.state == TaskState::Pending {
                apply(t, Trigger::Stopped, now, "stopped before it was placed");
            }
        });
        if let Some(node) = node {
            effects.stop.push(StopCall { task: id, node });
        }
        effects.kick = true;
        self.tasks.get(&id).cloned()
    }

    /// A node could not be told to stop a task it never received: the task is done.
    pub fn stop_unknown_on_node(
        &mut self,
        id: TaskId,
        node: NodeId,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        let Some(t) = self.tasks.get(&id) else { return };
        if t.node == Some(node) && !t.state.is_terminal() && t.desired == DesiredState::Stopped {
            self.modify(id, effects, |t| {
                apply(t, Trigger::Stopped, now, "stopped before it reached its node")
            });
            effects.kick = true;
        }
    }

    /// A dispatch failed for good: place the task again (unless things moved on meanwhile).
    pub fn dispatch_failed(
        &mut self,
        d: &Dispatch,
        reason: &str,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        self.dispatching.remove(&d.task);
        let Some(t) = self.tasks.get(&d.task) else { return };
        if t.generation != d.generation || t.node != Some(d.node) || t.state != TaskState::Scheduled
        {
            return;
        }
        let name = self.node_name(d.node);
        self.modify(d.task, effects, |t| {
            apply(t, Trigger::Requeue, now, format!("could not hand the task to {name}: {reason}"))
        });
        effects.kick = true;
    }

    /// Places waiting tasks, oldest first. Unplaceable ones stay pending with the reason.
    pub fn place_pending(&mut self, now: Timestamp, effects: &mut Effects) {
        if self.pending.is_empty() {
            return;
        }
        let mut views: Vec<NodeView> = self.nodes.values().map(|n| self.node_view(n)).collect();
        let ids: Vec<TaskId> = self.pending.iter().copied().collect();
        for id in ids {
            let Some(task) = self.tasks.get(&id) else { continue };
            match self.scheduler.place(&task.spec, &views, &task.failed_nodes) {
                Decision::Place { node, explanation } => {
                    let resources = task.spec.resources;
                    let ports: Vec<(u16, Protocol)> = task
                        .spec
                        .ports
                        .iter()
                        .filter(|p| p.host != 0)
                        .map(|p| (p.host, p.protocol))
                        .collect();
                    let name =
                        explanation.chosen.as_ref().map(|c| c.name.clone()).unwrap_or_default();
                    let score = explanation.chosen.as_ref().map(|c| c.score).unwrap_or_default();
                    let generation = self.modify(id, effects, |t| {
                        t.node = Some(node);
                        t.generation += 1;
                        t.placement = Some(explanation);
                        apply(
                            t,
                            Trigger::Place,
                            now,
                            format!("placed on {name} (score {score:.4})"),
                        );
                        t.generation
                    });
                    if let Some(v) = views.iter_mut().find(|v| v.id == node) {
                        v.reserved = v.reserved.saturating_add(resources);
                        v.used_ports.extend(ports);
                        v.task_count += 1;
                    }
                    if let Some(generation) = generation {
                        self.dispatching.insert(id);
                        effects.dispatch.push(Dispatch { task: id, generation, node });
                    }
                }
                Decision::Unplaceable { explanation } => {
                    let reason = explanation.unplaceable_reason();
                    if task.reason.as_deref() != Some(reason.as_str()) {
                        self.modify(id, effects, |t| {
                            t.reason = Some(reason.clone());
                            t.placement = Some(explanation);
                            t.note(now, format!("cannot place: {reason}"));
                        });
                    }
                }
            }
        }
    }

    fn node_view(&self, n: &NodeEntry) -> NodeView {
        let usage = self.usage(n.node.id);
        NodeView {
            id: n.node.id,
            name: n.node.name.clone(),
            ready: n.node.state == NodeState::Ready,
            labels: n.node.labels.clone(),
            drivers: n.node.drivers.clone(),
            capacity: n.node.capacity,
            reserved: usage.reserved,
            used_ports: usage.ports,
            task_count: usage.count,
            load: n.stats.as_ref().map(|s| NodeLoad {
                cpu_busy: s.cpu.busy_fraction,
                memory_used: if s.memory.total_bytes == 0 {
                    0.0
                } else {
                    s.memory.used_bytes as f64 / s.memory.total_bytes as f64
                },
            }),
        }
    }

    fn node_name(&self, id: NodeId) -> String {
        self.nodes.get(&id).map(|n| n.node.name.clone()).unwrap_or_else(|| id.to_string())
    }

    /// A worker (re)registers with everything it knows. Returns the tasks it must stop.
    pub fn register(
        &mut self,
        node: Node,
        reports: &[TaskView],
        now: Timestamp,
        mono: Instant,
        effects: &mut Effects,
    ) -> Vec<TaskId> {
        let id = node.id;
        let rejoined = match self.nodes.get_mut(&id) {
            Some(entry) => {
                let was_down = entry.node.state == NodeState::Down;
                entry.node = Node { registered_at: entry.node.registered_at, ..node };
                entry.node.state = NodeState::Ready;
                entry.node.last_heartbeat = Some(now);
                entry.last_seen = mono;
                was_down
            }
            None => {
                let mut node = node;
                node.state = NodeState::Ready;
                node.registered_at = now;
                node.last_heartbeat = Some(now);
                self.nodes.insert(id, NodeEntry { node, stats: None, last_seen: mono });
                false
            }
        };
        if rejoined {
            tracing::info!(node = %id, "node is back");
        }
        effects.nodes.insert(id);
        effects.kick = true;
        for r in reports {
            self.sync_report(id, r, now, effects);
        }
        // Tasks this node should run but does not know: it lost them (e.g. restarted without a
        // durable store). A dispatch still in flight is not lost, just not there yet.
        let known: HashSet<TaskId> = reports.iter().map(|r| r.id).collect();
        let lost: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                t.node == Some(id)
                    && t.state.is_active_on_node()
                    && !known.contains(&t.id)
                    && !self.dispatching.contains(&t.id)
            })
            .map(|t| t.id)
            .collect();
        let name = self.node_name(id);
        for t in lost {
            self.modify(t, effects, |t| {
                requeue_or_stop(t, now, format!("node {name} no longer has the task"))
            });
        }
        let active: Vec<ActiveTask> = reports
            .iter()
            .filter(|r| !r.state.is_terminal())
            .map(|r| ActiveTask { id: r.id, generation: r.generation })
            .collect();
        self.fence(id, &active)
    }

    /// A heartbeat. Returns `None` if the node is unknown (it must register), else the tasks it
    /// must stop.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        req: &HeartbeatRequest,
        now: Timestamp,
        mono: Instant,
        effects: &mut Effects,
    ) -> Option<Vec<TaskId>> {
        let entry = self.nodes.get_mut(&node)?;
        entry.last_seen = mono;
        entry.node.last_heartbeat = Some(now);
        if entry.stats.is_none() && req.stats.is_some() {
            // First stats: the E-PVM scheduler could not score this node before.
            effects.kick = true;
        }
        if req.stats.is_some() {
            entry.stats = req.stats.clone();
        }
        if entry.node.state == NodeState::Down {
            entry.node.state = NodeState::Ready;
            effects.nodes.insert(node);
            effects.kick = true;
            tracing::info!(node = %node, "node is back");
        }
        for r in &req.tasks {
            self.sync_report(node, r, now, effects);
        }
        Some(self.fence(node, &req.active))
    }

    /// Tasks `node` runs that it must not: unknown here, finished or stopped here, or placed
    /// elsewhere (or under another generation) while the node was away.
    fn fence(&self, node: NodeId, active: &[ActiveTask]) -> Vec<TaskId> {
        active
            .iter()
            .filter(|a| match self.tasks.get(&a.id) {
                None => true,
                Some(t) => {
                    t.node != Some(node)
                        || t.generation != a.generation
                        || t.desired == DesiredState::Stopped
                        || t.state.is_terminal()
                }
            })
            .map(|a| a.id)
            .collect()
    }

    /// Merges a worker's report of a task into the manager's record by replaying the worker's
    /// history through the state machine. Reports about copies that no longer count (another
    /// node, an older generation) are ignored; [`State::fence`] stops those copies.
    pub fn sync_report(
        &mut self,
        node: NodeId,
        r: &TaskView,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        let Some(t) = self.tasks.get(&r.id) else { return };
        if t.node != Some(node) || t.generation != r.generation || t.state.is_terminal() {
            return;
        }
        let mut events: Vec<_> =
            r.events.iter().filter(|e| t.synced_until.is_none_or(|s| e.at > s)).collect();
        if events.is_empty() {
            return;
        }
        events.sort_by_key(|e| e.at);
        let name = self.node_name(node);
        let mut requeued = false;
        self.modify(r.id, effects, |t| {
            for e in events {
                t.synced_until = Some(e.at);
                if e.from == e.to {
                    if e.reason != "submitted" && e.reason != "stop requested" {
                        t.note_at(e.at, now, e.reason.clone());
                    }
                    continue;
                }
                let Some(trigger) = worker_trigger(e.from, e.to, t.desired) else { continue };
                if e.to == TaskState::Failed && t.may_reschedule() {
                    t.reschedule_count += 1;
                    t.failed_nodes.push(node);
                    apply(t, Trigger::Requeue, now, format!("rescheduling after failing on {name}: {}", e.reason));
                    requeued = true;
                    return;
                }
                if let Err(err) = t.apply(trigger, e.at, e.reason.clone()) {
                    tracing::debug!(task = %t.id, error = %err, "worker event does not apply; skipped");
                }
            }
            t.handle = r.handle.clone();
            t.host_ports = r.host_ports.clone();
            t.exit_code = r.exit_code;
            t.restart_count = r.restart_count;
            t.healthy = r.healthy;
        });
        let finished = self.tasks.get(&r.id).is_some_and(|t| !t.state.is_active_on_node());
        if requeued || finished {
            effects.kick = true;
        }
    }

    /// Marks nodes whose last heartbeat is older than `ttl` as down and places their tasks
    /// again. Returns the nodes marked down.
    pub fn expire_nodes(
        &mut self,
        ttl: Duration,
        now: Timestamp,
        mono: Instant,
        effects: &mut Effects,
    ) -> Vec<NodeId> {
        let expired: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| {
                n.node.state == NodeState::Ready
                    && mono.saturating_duration_since(n.last_seen) > ttl
            })
            .map(|n| n.node.id)
            .collect();
        for id in &expired {
            if let Some(entry) = self.nodes.get_mut(id) {
                entry.node.state = NodeState::Down;
                effects.nodes.insert(*id);
            }
            let name = self.node_name(*id);
            let reason = format!("node {name} is down (no heartbeat for {}s)", ttl.as_secs_f32());
            let tasks: Vec<TaskId> = self
                .tasks
                .values()
                .filter(|t| t.node == Some(*id) && t.state.is_active_on_node())
                .map(|t| t.id)
                .collect();
            for t in tasks {
                self.modify(t, effects, |t| requeue_or_stop(t, now, reason.clone()));
            }
            effects.kick = true;
        }
        expired
    }

    /// Tasks placed but not yet confirmed by their node, to dispatch again after a restart.
    pub fn scheduled(&self) -> Vec<Dispatch> {
        self.tasks
            .values()
            .filter(|t| t.state == TaskState::Scheduled && t.desired == DesiredState::Running)
            .filter_map(|t| Some(Dispatch { task: t.id, generation: t.generation, node: t.node? }))
            .collect()
    }

    /// Stops requested but not yet confirmed, to send again after a restart.
    pub fn stopping(&self) -> Vec<StopCall> {
        self.tasks
            .values()
            .filter(|t| t.desired == DesiredState::Stopped && !t.state.is_terminal())
            .filter_map(|t| Some(StopCall { task: t.id, node: t.node? }))
            .collect()
    }

    /// Records a dispatch as in flight.
    pub fn dispatch_started(&mut self, id: TaskId) {
        self.dispatching.insert(id);
    }
}

/// A task's hold on a node: (node, resources, host ports) while it is placed and not finished.
type Contribution = Option<(NodeId, Resources, Vec<(u16, Protocol)>)>;

fn contribution(t: &Task) -> Contribution {
    if !t.state.is_active_on_node() {
        return None;
    }
    let ports = t.spec.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol)).collect();
    Some((t.node?, t.spec.resources, ports))
}

/// The trigger that reproduces a worker's transition on the manager's record.
fn worker_trigger(from: TaskState, to: TaskState, desired: DesiredState) -> Option<Trigger> {
    use TaskState as S;
    Some(match (from, to) {
        (_, S::Running) => Trigger::Started,
        (S::Running, S::Restarting) => Trigger::Exited { success: false, retry: true },
        (_, S::Restarting) => Trigger::StartFailed { retry: true },
        (S::Running, S::Failed) => Trigger::Exited { success: false, retry: false },
        (_, S::Failed) => Trigger::StartFailed { retry: false },
        (S::Running, S::Completed) if desired == DesiredState::Running => {
            Trigger::Exited { success: true, retry: false }
        }
        (_, S::Completed) => Trigger::Stopped,
        (_, S::Pending | S::Scheduled) => return None,
    })
}

fn requeue_or_stop(t: &mut Task, now: Timestamp, reason: String) {
    if t.desired == DesiredState::Stopped {
        apply(t, Trigger::Stopped, now, reason);
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

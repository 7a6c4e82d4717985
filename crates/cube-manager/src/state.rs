//! The manager's cluster state and every rule that changes it, without I/O.
//!
//! [`State`] holds tasks, nodes, the queue of tasks waiting for a node, and per-node usage kept
//! in step with every task change. Its methods take the current time and return [`Effects`]:
//! which records changed (to persist) and which calls to make to workers (dispatches, stops).
//! The async [`crate::Manager`] applies them. Keeping the rules here makes them testable as
//! plain functions.
//!
//! **Invariant:** tasks are only changed through [`State::modify`], which keeps `pending` and the
//! usage counters consistent with the tasks themselves (the one exception, an unplaceable task's
//! reason, touches neither).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cube_core::scheduler::NodeLoad;
use cube_core::stats::NodeStats;
use cube_core::{
    Decision, DesiredState, DriverHandle, EventKind, HostPort, Node, NodeId, NodeSet, NodeState,
    NodeView, Note, Protocol, Resources, Scheduler, Task, TaskEvent, TaskId, TaskSpec, TaskState,
    Trigger, transition,
};
use jiff::Timestamp;

/// What a worker says about one of its tasks (the domain side of a reported `TaskView`,
/// converted at the manager's edge).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The task.
    pub id: TaskId,
    /// The placement generation the worker runs it under.
    pub generation: u32,
    /// Its state on the worker.
    pub state: TaskState,
    /// The worker's history of it, oldest first.
    pub events: Vec<TaskEvent>,
    /// How the worker finds the workload.
    pub handle: Option<DriverHandle>,
    /// Ports the workload publishes.
    pub host_ports: Vec<HostPort>,
    /// Exit code of its last run.
    pub exit_code: Option<i64>,
    /// Restarts on that worker so far.
    pub restart_count: u32,
    /// Latest health-check result.
    pub healthy: Option<bool>,
}

/// A copy of a task a worker runs (not finished there), with its placement generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveCopy {
    /// The task.
    pub id: TaskId,
    /// The generation the copy runs under.
    pub generation: u32,
}

/// A heartbeat as the rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Beat {
    /// Fresh host stats (periodic beats only).
    pub stats: Option<NodeStats>,
    /// Tasks that changed on the worker.
    pub reports: Vec<Report>,
    /// Every unfinished copy on the worker (periodic beats only), to fence against.
    pub active: Option<Vec<ActiveCopy>>,
}

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
    /// `node.name`, shared by every placement explanation that names the node.
    name: Arc<str>,
}

impl NodeEntry {
    fn new(node: Node, last_seen: Instant) -> Self {
        let name = Arc::from(node.name.as_str());
        Self { node, stats: None, last_seen, name }
    }
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
        }
    }

    /// Loads records (at start-up). Nodes get a full TTL from `now` to heartbeat again.
    pub fn load(&mut self, tasks: Vec<Task>, nodes: Vec<Node>, now: Instant) {
        for node in nodes {
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
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }

    /// Shared handles to the tasks matching `keep`, oldest first: cheap to take under the
    /// manager's lock, to be read after it is released.
    pub fn task_handles(&self, keep: impl Fn(&Task) -> bool) -> Vec<Arc<Task>> {
        self.tasks.values().filter(|t| keep(t)).cloned().collect()
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

    /// How many times the scheduler was asked to place a task.
    pub fn placement_attempts(&self) -> u64 {
        self.attempts
    }

    /// Tasks waiting for a node.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Something may have made room: placement should look at waiting tasks again.
    fn capacity_changed(&mut self, effects: &mut Effects) {
        self.retry_all = true;
        effects.kick = true;
    }

    /// Whether `d` is still the task's current placement, not yet confirmed: placed there
    /// under that generation, waiting to run and wanted running.
    fn is_current(&self, d: &Dispatch) -> bool {
        self.tasks.get(&d.task).is_some_and(|t| {
            t.generation == d.generation
                && t.node == Some(d.node)
                && t.state == TaskState::Scheduled
                && t.desired == DesiredState::Running
        })
    }

    /// Where to send `d` and what, while it is current: the node's address and the spec.
    pub fn current_dispatch(&self, d: &Dispatch) -> Option<(String, TaskSpec)> {
        if !self.is_current(d) {
            return None;
        }
        let task = self.tasks.get(&d.task)?;
        let node = self.nodes.get(&d.node)?;
        Some((node.node.address.clone(), task.spec.clone()))
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
        let before = self.tasks.get(&id).map(|t| contribution(t))?;
        let result = self.tasks.get_mut(&id).map(|t| f(Arc::make_mut(t)))?;
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
            if self.pending.insert(id) {
                self.fresh.insert(id);
            }
        } else {
            self.pending.remove(&id);
            self.fresh.remove(&id);
        }
        if matches!(before, Some(Some(_)))
            && before.as_ref().and_then(|b| b.as_ref()) != after.as_ref()
        {
            // The task released (some of) what it held on its node.
            self.retry_all = true;
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
            return (existing.spec == task.spec).then(|| ((**existing).clone(), false));
        }
        let id = task.id;
        self.tasks.insert(id, Arc::new(task.clone()));
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
            return Some((**task).clone());
        }
        let node = task.node;
        self.modify(id, effects, |t| {
            t.desired = DesiredState::Stopped;
            t.note(now, Note::StopRequested, "stop requested");
            if t.state == TaskState::Pending {
                apply(t, Trigger::Stopped, now, "stopped before it was placed");
            }
        });
        if let Some(node) = node {
            effects.stop.push(StopCall { task: id, node });
        }
        self.capacity_changed(effects);
        self.tasks.get(&id).map(|t| (**t).clone())
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
            self.capacity_changed(effects);
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
        if !self.is_current(d) {
            return;
        }
        let name = self.node_name(d.node);
        self.modify(d.task, effects, |t| {
            apply(t, Trigger::Requeue, now, format!("could not hand the task to {name}: {reason}"))
        });
        self.capacity_changed(effects);
    }

    /// Places waiting tasks, oldest first. Unplaceable ones stay pending with the reason.
    pub fn place_pending(&mut self, now: Timestamp, effects: &mut Effects) {
        if self.pending.is_empty() {
            return;
        }
        let ids: Vec<TaskId> = if std::mem::take(&mut self.retry_all) {
            self.fresh.clear();
            self.pending.iter().copied().collect()
        } else {
            std::mem::take(&mut self.fresh).into_iter().collect()
        };
        if ids.is_empty() {
            return;
        }
        let mut views = NodeSet::new(self.nodes.values().map(|n| self.node_view(n)).collect());
        for id in ids {
            let Some(task) = self.tasks.get(&id) else { continue };
            self.attempts += 1;
            match self.scheduler.place(&task.spec, &views, &task.failed_nodes) {
                Decision::Place { node, index, explanation } => {
                    views.assign(index, &task.spec);
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
                    if let Some(generation) = generation {
                        self.dispatching.insert(id);
                        effects.dispatch.push(Dispatch { task: id, generation, node });
                    }
                }
                Decision::Unplaceable { explanation } => {
                    let reason = explanation.unplaceable_reason();
                    if task.reason.as_deref() != Some(reason.as_str())
                        && let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut)
                    {
                        // Derived, not persisted: the reason changes neither the task's state
                        // nor its accounting, and after a restart the first pass recomputes it.
                        // Writing it would cost an fsync per waiting task per capacity change.
                        t.reason = Some(reason.clone());
                        t.placement = Some(explanation);
                        t.note(now, Note::Unplaceable, format!("cannot place: {reason}"));
                    }
                }
            }
        }
    }

    fn node_view(&self, n: &NodeEntry) -> NodeView {
        let usage = self.usage(n.node.id);
        NodeView {
            id: n.node.id,
            name: Arc::clone(&n.name),
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
        reports: &[Report],
        now: Timestamp,
        mono: Instant,
        effects: &mut Effects,
    ) -> Vec<TaskId> {
        let id = node.id;
        let rejoined = match self.nodes.get_mut(&id) {
            Some(entry) => {
                let was_down = entry.node.state == NodeState::Down;
                if entry.node.name != node.name {
                    entry.name = Arc::from(node.name.as_str());
                }
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
                self.nodes.insert(id, NodeEntry::new(node, mono));
                false
            }
        };
        if rejoined {
            tracing::info!(node = %id, "node is back");
        }
        effects.nodes.insert(id);
        self.capacity_changed(effects);
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
        let active: Vec<ActiveCopy> = reports
            .iter()
            .filter(|r| !r.state.is_terminal())
            .map(|r| ActiveCopy { id: r.id, generation: r.generation })
            .collect();
        self.fence(id, &active)
    }

    /// A heartbeat. Returns `None` if the node is unknown (it must register), else the tasks it
    /// must stop.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        req: &Beat,
        now: Timestamp,
        mono: Instant,
        effects: &mut Effects,
    ) -> Option<Vec<TaskId>> {
        let entry = self.nodes.get_mut(&node)?;
        entry.last_seen = mono;
        entry.node.last_heartbeat = Some(now);
        // First stats: the E-PVM scheduler could not score this node before.
        let mut room = entry.stats.is_none() && req.stats.is_some();
        if req.stats.is_some() {
            entry.stats = req.stats.clone();
        }
        if entry.node.state == NodeState::Down {
            entry.node.state = NodeState::Ready;
            effects.nodes.insert(node);
            room = true;
            tracing::info!(node = %node, "node is back");
        }
        if room {
            self.capacity_changed(effects);
        }
        for r in &req.reports {
            self.sync_report(node, r, now, effects);
        }
        Some(req.active.as_deref().map(|a| self.fence(node, a)).unwrap_or_default())
    }

    /// Tasks `node` runs that it must not: unknown here, finished or stopped here, or placed
    /// elsewhere (or under another generation) while the node was away.
    fn fence(&self, node: NodeId, active: &[ActiveCopy]) -> Vec<TaskId> {
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
    pub fn sync_report(&mut self, node: NodeId, r: &Report, now: Timestamp, effects: &mut Effects) {
        let Some(t) = self.tasks.get(&r.id) else { return };
        if t.node != Some(node) || t.generation != r.generation || t.state.is_terminal() {
            return;
        }
        let events = unsynced(&r.events, t.synced_until, t.synced_same);
        if events.is_empty() {
            return;
        }
        let name = self.node_name(node);
        let mut requeued = false;
        self.modify(r.id, effects, |t| {
            for e in events {
                if t.synced_until == Some(e.at) {
                    t.synced_same += 1;
                } else {
                    t.synced_until = Some(e.at);
                    t.synced_same = 1;
                }
                let trigger = match e.kind {
                    EventKind::Transition(trigger) if trigger.observed_on_node() => trigger,
                    // The worker's own acceptance of the placement the manager made.
                    EventKind::Transition(_) => continue,
                    EventKind::Note(note) => {
                        if mirrored(note) {
                            t.note_at(e.at, now, note, e.reason.clone());
                        }
                        continue;
                    }
                };
                if transition(t.state, trigger) == Ok(TaskState::Failed) && t.may_reschedule() {
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
            self.capacity_changed(effects);
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
            self.capacity_changed(effects);
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

    /// Forgets up to `limit` tasks that finished at or before `cutoff` and returns them (the
    /// caller deletes their records). A finished task holds no resources on any node, so usage
    /// is unchanged; a worker still running a copy of a forgotten task is told to stop it by
    /// [`State::fence`], as for any task unknown here.
    pub fn collect_garbage(&mut self, cutoff: Timestamp, limit: usize) -> Vec<TaskId> {
        let doomed: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.finished_by(cutoff))
            .map(|t| t.id)
            .take(limit)
            .collect();
        for id in &doomed {
            self.tasks.remove(id);
            self.pending.remove(id);
            self.fresh.remove(id);
            self.dispatching.remove(id);
        }
        doomed
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

/// The entries of a worker's history not merged yet, oldest first: those after `until`, and of
/// those stamped exactly `until`, all but the first `same` (already merged).
fn unsynced(events: &[TaskEvent], until: Option<Timestamp>, same: u32) -> Vec<&TaskEvent> {
    let mut sorted: Vec<&TaskEvent> = events.iter().collect();
    // Stable: entries sharing a timestamp keep their order.
    sorted.sort_by_key(|e| e.at);
    let Some(until) = until else { return sorted };
    let mut skipped = 0;
    sorted.retain(|e| {
        if e.at > until {
            return true;
        }
        if e.at == until && skipped >= same {
            return true;
        }
        if e.at == until {
            skipped += 1;
        }
        false
    });
    sorted
}

/// Whether the manager copies a worker's note into its own history. Submission and stop
/// requests it records itself, when they happen here.
fn mirrored(note: Note) -> bool {
    match note {
        Note::Submitted | Note::StopRequested => false,
        Note::HealthPassing
        | Note::Unhealthy
        | Note::RestartScheduled
        | Note::Readopted
        | Note::Unplaceable
        | Note::Other => true,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cube_core::stats::{CpuStats, DiskStats, LoadStats, MemoryStats, TaskCounts};
    use cube_core::{Bytes, DriverKind, Millicores, SchedulerKind, TaskSpec};
    use uuid::Uuid;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn node(n: u128, name: &str, memory_mib: u64) -> Node {
        Node {
            id: NodeId::from_uuid(Uuid::from_u128(n)),
            name: name.into(),
            address: format!("http://{name}"),
            labels: Default::default(),
            capacity: Resources {
                cpu: Millicores::cores(2),
                memory: Bytes::mib(memory_mib),
                disk: Bytes::gib(10),
            },
            drivers: vec![DriverKind::Process],
            state: NodeState::Ready,
            registered_at: at(0),
            last_heartbeat: None,
        }
    }

    fn spec(memory_mib: u64) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "name": "t", "driver": "process", "command": "sleep", "args": ["100"],
            "resources": {"memory": format!("{memory_mib}MiB")},
            "restart": {"mode": "on-failure", "max_attempts": 1, "reschedule_attempts": 1}
        }))
        .unwrap()
    }

    fn task(n: u128, memory_mib: u64) -> Task {
        Task::new(TaskId::from_uuid(Uuid::from_u128(n)), spec(memory_mib), at(0))
    }

    fn stats() -> NodeStats {
        NodeStats {
            collected_at: at(0),
            memory: MemoryStats { total_bytes: 100, available_bytes: 50, used_bytes: 50 },
            cpu: CpuStats { cores: 2, busy_fraction: 0.1, interval_ms: 1000 },
            load: LoadStats { one: 0.0, five: 0.0, fifteen: 0.0 },
            disk: DiskStats { path: "/".into(), total_bytes: 1, free_bytes: 1 },
            tasks: TaskCounts::default(),
            reserved: Resources::default(),
        }
    }

    /// A cluster with the given nodes registered.
    fn cluster(nodes: &[Node]) -> (State, Instant) {
        let mut s = State::new(Scheduler::new(SchedulerKind::Spread));
        let mono = Instant::now();
        for n in nodes {
            s.register(n.clone(), &[], at(0), mono, &mut Effects::default());
        }
        (s, mono)
    }

    const STARTED: EventKind = EventKind::Transition(Trigger::Started);
    const FAILED: EventKind =
        EventKind::Transition(Trigger::Exited { success: false, retry: false });

    /// What the worker would report for `t` after `steps` (what happened, in words), one per
    /// second from its last known event on.
    fn report(t: &Task, steps: &[(EventKind, &str)]) -> Report {
        let mut w = t.clone();
        let base = w.events.last().map_or(at(0), |e| e.at).as_second() - 1_800_000_000;
        for (i, (kind, reason)) in steps.iter().enumerate() {
            let when = at(base + 10 + i as i64);
            match *kind {
                EventKind::Transition(trigger) => {
                    w.apply(trigger, when, *reason).unwrap();
                }
                EventKind::Note(note) => w.note(when, note, *reason),
            }
        }
        Report {
            id: w.id,
            generation: w.generation,
            state: w.state,
            events: w.events,
            handle: w.handle,
            host_ports: w.host_ports,
            exit_code: w.exit_code,
            restart_count: w.restart_count,
            healthy: w.healthy,
        }
    }

    #[test]
    fn loaded_explanations_share_node_names_with_the_nodes() {
        let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
        let mut e = Effects::default();
        s.submit(task(1, 100), &mut e);
        s.place_pending(at(1), &mut e);
        // Through JSON, as after a restart: every name is a copy of its own.
        let records: Vec<Task> = s
            .tasks()
            .map(|t| serde_json::from_value(serde_json::to_value(t).unwrap()).unwrap())
            .collect();
        let nodes = vec![node(1, "w1", 1024)];
        let mut restarted = State::new(Scheduler::new(SchedulerKind::Spread));
        restarted.load(records, nodes, Instant::now());
        let id = TaskId::from_uuid(Uuid::from_u128(1));
        let chosen =
            restarted.task(id).unwrap().placement.as_ref().unwrap().chosen.clone().unwrap();
        let entry = restarted.node(chosen.node).unwrap();
        assert!(Arc::ptr_eq(&chosen.name, &entry.name), "the name is the node's own");
    }

    #[test]
    fn garbage_collection_forgets_only_tasks_finished_by_the_cutoff() {
        let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
        let mut e = Effects::default();
        for n in 1..=3 {
            s.submit(task(n, 100), &mut e);
        }
        s.place_pending(at(1), &mut e);
        let (old, young) =
            (TaskId::from_uuid(Uuid::from_u128(1)), TaskId::from_uuid(Uuid::from_u128(2)));
        s.stop(old, at(2), &mut e);
        s.stop_unknown_on_node(old, NodeId::from_uuid(Uuid::from_u128(1)), at(3), &mut e);
        s.stop(young, at(2), &mut e);
        s.stop_unknown_on_node(young, NodeId::from_uuid(Uuid::from_u128(1)), at(30), &mut e);
        let usage = s.usage(NodeId::from_uuid(Uuid::from_u128(1)));
        assert_eq!(usage.count, 1, "only the third task still holds its node");

        assert_eq!(s.collect_garbage(at(10), 100), [old]);
        assert!(s.task(old).is_none());
        assert_eq!(s.task_count(), 2);
        assert_eq!(s.usage(NodeId::from_uuid(Uuid::from_u128(1))), usage, "usage is untouched");
        assert!(s.collect_garbage(at(10), 100).is_empty(), "nothing else finished by then");
        assert_eq!(s.collect_garbage(at(1_000), 100), [young], "the running task stays");
    }

    #[test]
    fn submitted_tasks_are_placed_and_dispatched() {
        let (mut s, _) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
        let mut e = Effects::default();
        s.submit(task(10, 100), &mut e).unwrap();
        s.submit(task(11, 100), &mut e).unwrap();
        assert!(e.kick);
        let mut e = Effects::default();
        s.place_pending(at(1), &mut e);
        assert_eq!(e.dispatch.len(), 2);
        let nodes: BTreeSet<NodeId> = e.dispatch.iter().map(|d| d.node).collect();
        assert_eq!(nodes.len(), 2, "spread puts one on each node");
        assert_eq!(s.pending_count(), 0);
        let t = s.task(TaskId::from_uuid(Uuid::from_u128(10))).unwrap();
        assert_eq!((t.state, t.generation), (TaskState::Scheduled, 1));
        assert!(t.placement.as_ref().unwrap().chosen.is_some());
        assert_eq!(s.usage(e.dispatch[0].node).reserved.memory, Bytes::mib(100));
    }

    #[test]
    fn unplaceable_tasks_wait_with_reasons_until_a_node_fits() {
        let (mut s, mono) = cluster(&[node(1, "w1", 512), node(2, "w2", 512)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 1024), &mut Effects::default()).unwrap();
        let mut e = Effects::default();
        s.place_pending(at(1), &mut e);
        assert!(e.dispatch.is_empty());
        let t = s.task(id).unwrap();
        assert_eq!(t.state, TaskState::Pending);
        assert_eq!(
            t.reason.as_deref(),
            Some(
                "no node fits: w1: needs 1.0GiB memory, 512MiB free; w2: needs 1.0GiB memory, 512MiB free"
            )
        );
        let mut e = Effects::default();
        s.register(node(3, "big", 2048), &[], at(2), mono, &mut e);
        assert!(e.kick, "a new node wakes placement");
        let mut e = Effects::default();
        s.place_pending(at(3), &mut e);
        assert_eq!(e.dispatch[0].node, NodeId::from_uuid(Uuid::from_u128(3)));
    }

    #[test]
    fn an_unplaceable_backlog_is_retried_only_when_capacity_may_have_appeared() {
        let (mut s, mono) = cluster(&[node(1, "w1", 512)]);
        for n in 10..12 {
            s.submit(task(n, 1024), &mut Effects::default()).unwrap();
        }
        let mut e = Effects::default();
        s.place_pending(at(1), &mut e);
        assert_eq!(s.placement_attempts(), 2, "both tried");
        assert!(e.tasks.is_empty(), "a reason is derived state, not written to the store");
        let t = s.task(TaskId::from_uuid(Uuid::from_u128(10))).unwrap();
        assert!(t.reason.as_ref().unwrap().starts_with("no node fits"));
        s.submit(task(12, 1024), &mut Effects::default()).unwrap();
        s.place_pending(at(2), &mut Effects::default());
        assert_eq!(s.placement_attempts(), 3, "only the new one is tried");
        s.place_pending(at(3), &mut Effects::default());
        assert_eq!(s.placement_attempts(), 3, "nothing changed, nothing tried");
        s.register(node(2, "big", 4096), &[], at(4), mono, &mut Effects::default());
        let mut e = Effects::default();
        s.place_pending(at(5), &mut e);
        assert_eq!(e.dispatch.len(), 3, "a new node: the whole backlog is tried and placed");
    }

    #[test]
    fn worker_reports_are_replayed_through_the_state_machine() {
        let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 0), &mut Effects::default()).unwrap();
        s.place_pending(at(1), &mut Effects::default());
        let placed = s.task(id).unwrap().clone();
        let r = report(
            &placed,
            &[
                (STARTED, "started (pid 7)"),
                (EventKind::Note(Note::HealthPassing), "health check passing"),
            ],
        );
        s.sync_report(placed.node.unwrap(), &r, at(20), &mut Effects::default());
        let t = s.task(id).unwrap();
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.started_at, Some(at(11)), "the worker's time of the event");
        let reasons: Vec<&str> = t.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons.last(), Some(&"health check passing"));
        // The same report again changes nothing.
        let before = t.events.len();
        s.sync_report(placed.node.unwrap(), &r, at(21), &mut Effects::default());
        assert_eq!(s.task(id).unwrap().events.len(), before);
    }

    #[test]
    fn entries_sharing_a_timestamp_merge_even_when_reports_split_them() {
        // On a coarse or virtual clock a start and an exit can share a timestamp, and the
        // worker may report them in two heartbeats.
        let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 0), &mut Effects::default()).unwrap();
        s.place_pending(at(1), &mut Effects::default());
        let placed = s.task(id).unwrap().clone();
        let mut w = placed.clone();
        w.apply(Trigger::Started, at(5), "started").unwrap();
        let as_report = |w: &Task| Report {
            id: w.id,
            generation: w.generation,
            state: w.state,
            events: w.events.clone(),
            handle: None,
            host_ports: vec![],
            exit_code: None,
            restart_count: 0,
            healthy: None,
        };
        s.sync_report(placed.node.unwrap(), &as_report(&w), at(6), &mut Effects::default());
        assert_eq!(s.task(id).unwrap().state, TaskState::Running);
        w.apply(Trigger::Exited { success: false, retry: false }, at(5), "exited with code 1")
            .unwrap();
        s.sync_report(placed.node.unwrap(), &as_report(&w), at(6), &mut Effects::default());
        assert_eq!(s.task(id).unwrap().state, TaskState::Pending, "failed, so rescheduled");
    }

    #[test]
    fn exhausted_restarts_reschedule_elsewhere_once_then_fail() {
        let (mut s, _) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 0), &mut Effects::default()).unwrap();
        s.place_pending(at(1), &mut Effects::default());
        let first = s.task(id).unwrap().clone();
        let r = report(&first, &[(STARTED, "started"), (FAILED, "exited with code 1")]);
        let mut e = Effects::default();
        s.sync_report(first.node.unwrap(), &r, at(20), &mut e);
        let t = s.task(id).unwrap();
        assert_eq!(t.state, TaskState::Pending, "rescheduled");
        assert_eq!(t.failed_nodes, vec![first.node.unwrap()]);
        assert!(e.kick);
        s.place_pending(at(21), &mut Effects::default());
        let second = s.task(id).unwrap().clone();
        assert_ne!(second.node, first.node, "placed away from the node it failed on");
        assert_eq!(second.generation, 2);
        let r = report(&second, &[(STARTED, "started"), (FAILED, "exited with code 1")]);
        s.sync_report(second.node.unwrap(), &r, at(30), &mut Effects::default());
        let t = s.task(id).unwrap();
        assert_eq!(t.state, TaskState::Failed, "no reschedules left");
        assert_eq!(t.reason.as_deref(), Some("exited with code 1"));
    }

    #[test]
    fn silent_nodes_go_down_and_their_tasks_move() {
        let (mut s, mono) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
        for n in 10..14 {
            s.submit(task(n, 0), &mut Effects::default()).unwrap();
        }
        s.place_pending(at(1), &mut Effects::default());
        let w1 = NodeId::from_uuid(Uuid::from_u128(1));
        let w2 = NodeId::from_uuid(Uuid::from_u128(2));
        let stopped = s.tasks().find(|t| t.node == Some(w1)).map(|t| t.id).unwrap();
        s.stop(stopped, at(2), &mut Effects::default());
        // w2 keeps heartbeating, w1 falls silent.
        let later = mono + Duration::from_secs(6);
        let hb = Beat { stats: Some(stats()), reports: vec![], active: Some(vec![]) };
        s.heartbeat(w2, &hb, at(6), later, &mut Effects::default()).unwrap();
        let mut e = Effects::default();
        let down = s.expire_nodes(Duration::from_secs(5), at(6), later, &mut e);
        assert_eq!(down, vec![w1]);
        assert_eq!(s.node(w1).unwrap().node.state, NodeState::Down);
        assert_eq!(
            s.task(stopped).unwrap().state,
            TaskState::Completed,
            "a stop in flight completes"
        );
        assert_eq!(s.pending_count(), 1, "the other task on w1 waits for placement");
        let mut e = Effects::default();
        s.place_pending(at(7), &mut e);
        assert!(e.dispatch.iter().all(|d| d.node == w2));
        assert_eq!(s.usage(w1).count, 0);
    }

    #[test]
    fn a_returning_node_is_told_to_stop_copies_that_moved() {
        let (mut s, mono) = cluster(&[node(1, "w1", 1024)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 0), &mut Effects::default()).unwrap();
        s.place_pending(at(1), &mut Effects::default());
        let w1 = NodeId::from_uuid(Uuid::from_u128(1));
        let later = mono + Duration::from_secs(6);
        s.expire_nodes(Duration::from_secs(5), at(6), later, &mut Effects::default());
        s.register(node(2, "w2", 1024), &[], at(6), later, &mut Effects::default());
        s.place_pending(at(7), &mut Effects::default());
        assert_eq!(s.task(id).unwrap().generation, 2);
        // w1 comes back still running generation 1.
        let active = [ActiveCopy { id, generation: 1 }];
        let hb = Beat { stats: None, reports: vec![], active: Some(active.to_vec()) };
        let stop = s.heartbeat(w1, &hb, at(8), later, &mut Effects::default()).unwrap();
        assert_eq!(stop, vec![id]);
        assert_eq!(s.node(w1).unwrap().node.state, NodeState::Ready);
        // And a node the manager never heard of must register.
        let stranger = NodeId::from_uuid(Uuid::from_u128(99));
        assert!(s.heartbeat(stranger, &hb, at(8), later, &mut Effects::default()).is_none());
    }

    #[test]
    fn a_node_that_lost_its_tasks_gets_them_placed_again() {
        let (mut s, mono) = cluster(&[node(1, "w1", 1024)]);
        let id = TaskId::from_uuid(Uuid::from_u128(10));
        s.submit(task(10, 0), &mut Effects::default()).unwrap();
        s.place_pending(at(1), &mut Effects::default());
        let placed = s.task(id).unwrap().clone();
        s.sync_report(
            placed.node.unwrap(),
            &report(&placed, &[(STARTED, "started")]),
            at(2),
            &mut Effects::default(),
        );
        s.dispatch_done(id);
        // The worker restarts with an empty store and registers knowing nothing.
        let stop = s.register(node(1, "w1", 1024), &[], at(3), mono, &mut Effects::default());
        assert!(stop.is_empty());
        assert_eq!(s.task(id).unwrap().state, TaskState::Pending);
    }
}

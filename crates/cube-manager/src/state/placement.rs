//! Placement: accepting and stopping tasks, placing waiting ones, and what happens to a
//! placement on its way to its node.

use std::collections::HashMap;
use std::sync::Arc;

use cube_core::scheduler::{NodeLoad, Siblings};
use cube_core::{
    Decision, DesiredState, NodeId, NodeSet, NodeState, NodeView, Note, Task, TaskId, TaskSpec,
    TaskState, Trigger,
};
use jiff::Timestamp;

use super::{Dispatch, Effects, NodeEntry, State, StopCall, apply};

/// What one placement pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Tasks the scheduler was asked about.
    pub tried: usize,
    /// Of those, placed on a node.
    pub placed: usize,
}

impl State {
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

    /// Records a dispatch as in flight.
    pub fn dispatch_started(&mut self, id: TaskId) {
        self.dispatching.insert(id);
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
    pub fn place_pending(&mut self, now: Timestamp, effects: &mut Effects) -> Pass {
        let mut pass = Pass::default();
        if self.pending.is_empty() {
            return pass;
        }
        let ids: Vec<TaskId> = if std::mem::take(&mut self.retry_all) {
            self.fresh.clear();
            self.pending.iter().copied().collect()
        } else {
            std::mem::take(&mut self.fresh).into_iter().collect()
        };
        if ids.is_empty() {
            return pass;
        }
        let mut views = NodeSet::new(self.nodes.values().map(|n| self.node_view(n)).collect());
        // Where each service's instances are, built once per pass and kept up to date as
        // instances are placed.
        let mut groups: HashMap<(String, u64), Siblings> = HashMap::new();
        for id in ids {
            let Some(task) = self.tasks.get(&id) else { continue };
            self.attempts += 1;
            pass.tried += 1;
            let group = task.instance.as_ref().map(|of| {
                groups.entry((of.service.clone(), of.version)).or_insert_with(|| self.siblings(of))
            });
            let decision = self.scheduler.place_among(
                &task.spec,
                &views,
                &task.failed_nodes,
                group.as_deref(),
            );
            match decision {
                Decision::Place { node, index, explanation } => {
                    views.assign(index, &task.spec);
                    if let Some(group) = group {
                        *group.spread.entry(node).or_default() += 1;
                        group.occupied.insert(node);
                    }
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
                    pass.placed += 1;
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
                        if let Some(of) = &t.instance {
                            // A rollout decides what to do about an instance with no room.
                            effects.reconcile.insert(of.service.clone());
                        }
                    }
                }
            }
        }
        pass
    }

    pub(super) fn node_view(&self, n: &NodeEntry) -> NodeView {
        let usage = self.usage(n.node.id);
        NodeView {
            id: n.node.id,
            name: Arc::clone(&n.name),
            ready: n.node.state == NodeState::Ready,
            eligible: n.node.eligible,
            labels: n.node.labels.clone(),
            drivers: n.node.drivers.clone(),
            allows: n.node.allows.clone(),
            capacity: n.node.capacity,
            reserved: usage.reserved,
            used_ports: usage.ports.clone(),
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
}

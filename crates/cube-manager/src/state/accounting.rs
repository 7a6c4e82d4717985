//! The one way a task changes: [`State::modify`], which keeps the pending queue, per-node usage
//! and the node → tasks index consistent with the tasks themselves.

use std::sync::Arc;

use cube_core::{DesiredState, NodeId, Protocol, Resources, Task, TaskId, TaskState};

use super::{Effects, State};

impl State {
    /// Changes task `id` with `f`, keeping `pending`, usage and the node index consistent.
    /// Returns `f`'s result.
    pub fn modify<R>(
        &mut self,
        id: TaskId,
        effects: &mut Effects,
        f: impl FnOnce(&mut Task) -> R,
    ) -> Option<R> {
        let task = self.tasks.get(&id)?;
        let before = hold(task);
        effects.history_before.entry(id).or_insert_with(|| task.events.last().cloned());
        let result = self.tasks.get_mut(&id).map(|t| f(Arc::make_mut(t)))?;
        self.account(id, before);
        effects.tasks.insert(id);
        if let Some(of) = self.tasks.get(&id).and_then(|t| t.instance.as_ref()) {
            // Whatever changed an instance may change what its service must do next.
            effects.reconcile.insert(of.service.clone());
        }
        Some(result)
    }

    /// Updates `pending`, usage and the node index after task `id` changed; `before` is what it
    /// held until then (nothing for a task just added).
    pub(super) fn account(&mut self, id: TaskId, before: Option<Hold>) {
        // A task just removed (a follower applying a delete) holds nothing and waits for
        // nothing.
        let task = self.tasks.get(&id);
        let after = task.and_then(|t| hold(t));
        let waiting = task
            .is_some_and(|t| t.state == TaskState::Pending && t.desired == DesiredState::Running);
        if waiting {
            if self.pending.insert(id) {
                self.fresh.insert(id);
            }
        } else {
            self.pending.remove(&id);
            self.fresh.remove(&id);
        }
        if before.is_some() && before != after {
            // The task released (some of) what it held on its node.
            self.retry_all = true;
        }
        if let Some(held) = before
            && let Some(u) = self.usage.get_mut(&held.node)
        {
            u.reserved = u.reserved.saturating_sub(held.resources);
            for p in &held.ports {
                u.ports.remove(p);
            }
            u.count = u.count.saturating_sub(1);
            u.tasks.remove(&id);
        }
        if let Some(holds) = after {
            let u = self.usage.entry(holds.node).or_default();
            u.reserved = u.reserved.saturating_add(holds.resources);
            u.ports.extend(holds.ports);
            u.count += 1;
            u.tasks.insert(id);
        }
    }

    /// Tasks placed on `node` and not finished there, from the index (no scan of all tasks).
    pub(super) fn tasks_on(&self, node: NodeId) -> Vec<TaskId> {
        self.usage.get(&node).map(|u| u.tasks.iter().copied().collect()).unwrap_or_default()
    }
}

/// What a task placed on a node and not finished holds there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Hold {
    node: NodeId,
    resources: Resources,
    /// Its fixed host ports.
    ports: Vec<(u16, Protocol)>,
}

pub(super) fn hold(t: &Task) -> Option<Hold> {
    if !t.state.is_active_on_node() {
        return None;
    }
    let ports = t.spec.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol)).collect();
    Some(Hold { node: t.node?, resources: t.spec.resources, ports })
}

//! Membership: workers registering and heartbeating, fencing the copies a returning worker
//! must not run, and nodes going down when they fall silent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cube_core::{DesiredState, Node, NodeId, NodeState, TaskId};
use jiff::Timestamp;

use super::{ActiveCopy, Beat, Effects, NodeEntry, Report, State, requeue_or_stop};

impl State {
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
                // What the operator decided about the node outlives the worker's restarts.
                entry.node = Node {
                    registered_at: entry.node.registered_at,
                    eligible: entry.node.eligible,
                    drain: entry.node.drain.take(),
                    ..node
                };
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
            .tasks_on(id)
            .into_iter()
            .filter(|t| !known.contains(t) && !self.dispatching.contains(t))
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
        if let Some(report) = &req.ingress {
            self.ingress_reported(node, report.clone(), mono);
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
                        || (t.desired == DesiredState::Stopped && !self.is_leaving(a.id))
                        || t.state.is_terminal()
                }
            })
            .map(|a| a.id)
            .collect()
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
            for t in self.tasks_on(*id) {
                self.modify(t, effects, |t| requeue_or_stop(t, now, reason.clone()));
            }
            self.capacity_changed(effects);
        }
        expired
    }

    /// Forgets node `id` (an admin removed it): its tasks are placed again elsewhere. `None`
    /// if there is no such node.
    pub fn remove_node(
        &mut self,
        id: NodeId,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Option<Node> {
        if !self.nodes.contains_key(&id) {
            return None;
        }
        let name = self.node_name(id);
        let reason = format!("node {name} was removed from the cluster");
        for t in self.tasks_on(id) {
            self.modify(t, effects, |t| requeue_or_stop(t, now, reason.clone()));
        }
        let entry = self.nodes.remove(&id)?;
        self.draining.remove(&id);
        effects.nodes.remove(&id);
        effects.removed_nodes.insert(id);
        self.capacity_changed(effects);
        Some(entry.node)
    }
}

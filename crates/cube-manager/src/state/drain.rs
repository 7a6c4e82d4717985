//! Draining nodes, and whether a node takes new work.
//!
//! A draining node is ineligible: placement skips it. Its bare tasks are placed elsewhere at
//! once; its service instances are replaced elsewhere by their services, within each
//! service's budgets (the planner sees them as `draining`), and stopped once their replacement
//! is healthy. At the drain's deadline whatever is left is stopped. The node is drained once
//! nothing runs there; it stays ineligible until eligibility is turned on again.

use std::time::Duration;

use cube_core::node::Drain;
use cube_core::{DesiredState, Node, NodeId, Trigger};
use jiff::Timestamp;

use super::{Effects, State, StopCall, apply};

impl State {
    /// Whether `node` is being drained (or was).
    pub(super) fn draining_node(&self, node: Option<NodeId>) -> bool {
        node.and_then(|n| self.nodes.get(&n)).is_some_and(|e| e.node.drain.is_some())
    }

    /// Starts draining `node`; `deadline`: after this long, what is left is stopped. Draining
    /// a draining node again sets its deadline anew.
    pub fn drain(
        &mut self,
        node: NodeId,
        deadline: Option<Duration>,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Option<Node> {
        let entry = self.nodes.get_mut(&node)?;
        entry.node.eligible = false;
        let started_at = entry.node.drain.as_ref().map_or(now, |d| d.started_at);
        entry.node.drain = Some(Drain {
            started_at,
            deadline: deadline.map(|d| now.checked_add(d).unwrap_or(Timestamp::MAX)),
            drained_at: None,
        });
        effects.nodes.insert(node);
        self.draining.insert(node);
        let name = self.node_name(node);
        for id in self.tasks_on(node) {
            let Some(t) = self.tasks.get(&id) else { continue };
            if t.desired == DesiredState::Stopped {
                continue;
            }
            match &t.instance {
                // Its service replaces it within its budgets.
                Some(of) => {
                    effects.reconcile.insert(of.service.clone());
                }
                // A bare task moves at once: stopped here, placed again elsewhere.
                None => {
                    effects.stop.push(StopCall { task: id, node });
                    self.modify(id, effects, |t| {
                        apply(t, Trigger::Requeue, now, format!("node {name} is draining"));
                    });
                }
            }
        }
        self.capacity_changed(effects);
        self.advance_drains(now, effects);
        self.nodes.get(&node).map(|e| e.node.clone())
    }

    /// Turns new work on `node` on or off. On also ends a drain.
    pub fn set_eligible(
        &mut self,
        node: NodeId,
        eligible: bool,
        effects: &mut Effects,
    ) -> Option<Node> {
        let entry = self.nodes.get_mut(&node)?;
        entry.node.eligible = eligible;
        if eligible {
            entry.node.drain = None;
            self.draining.remove(&node);
            self.capacity_changed(effects);
        }
        effects.nodes.insert(node);
        self.nodes.get(&node).map(|e| e.node.clone())
    }

    /// Stops what is left on drains past their deadline, and marks emptied nodes drained.
    pub fn advance_drains(&mut self, now: Timestamp, effects: &mut Effects) {
        if self.draining.is_empty() {
            return;
        }
        let nodes: Vec<NodeId> = self.draining.iter().copied().collect();
        for node in nodes {
            let Some(drain) = self.nodes.get(&node).and_then(|e| e.node.drain.clone()) else {
                self.draining.remove(&node);
                continue;
            };
            if drain.deadline.is_some_and(|d| d <= now) {
                for id in self.tasks_on(node) {
                    let reason = "the node's drain deadline passed".to_owned();
                    self.stop_for_drain(id, node, reason, now, effects);
                }
            }
            if self.usage(node).count == 0
                && let Some(entry) = self.nodes.get_mut(&node)
                && let Some(d) = &mut entry.node.drain
            {
                d.drained_at = Some(now);
                effects.nodes.insert(node);
                self.draining.remove(&node);
                tracing::info!(node = %node, "node drained");
            }
        }
    }
}

//! A follower's state: the records as the leader wrote them, applied one by one as the store's
//! feed brings them. Nothing is decided here (no placement, no plan, no event): the derived
//! indexes (the queue, per-node usage, each service's instances, the endpoints) are kept in
//! step so that reads answer exactly as the leader would.

use std::sync::Arc;
use std::time::Instant;

use cube_core::deployment::Deployment;
use cube_core::service::Service;
use cube_core::{DeploymentId, Node, NodeId, Task, TaskId};

use super::accounting::hold;
use super::{Effects, NodeEntry, ServiceEntry, State};

impl State {
    /// A task record as stored: added, or replacing the one held.
    pub fn replicate_task(&mut self, task: Task, effects: &mut Effects) {
        let id = task.id;
        let before = self.tasks.get(&id).and_then(|t| hold(t));
        if let Some(of) = &task.instance
            && let Some(entry) = self.services.get_mut(&of.service)
            && task.created_at >= entry.service.created_at
        {
            entry.instances.insert(id);
        }
        self.tasks.insert(id, Arc::new(task));
        self.account(id, before);
        effects.tasks.insert(id);
    }

    /// A task record deleted (forgotten after its retention).
    pub fn replicate_task_deleted(&mut self, id: TaskId, effects: &mut Effects) {
        let Some(task) = self.tasks.remove(&id) else { return };
        if let Some(of) = &task.instance
            && let Some(entry) = self.services.get_mut(&of.service)
        {
            entry.instances.remove(&id);
            effects.services.insert(of.service.clone());
        }
        self.account(id, hold(&task));
        self.dispatching.remove(&id);
    }

    /// A node record as stored (`now`: when it was read; a follower tracks no heartbeats).
    pub fn replicate_node(&mut self, node: Node, now: Instant, effects: &mut Effects) {
        let id = node.id;
        if node.drain.as_ref().is_some_and(|d| d.drained_at.is_none()) {
            self.draining.insert(id);
        } else {
            self.draining.remove(&id);
        }
        match self.nodes.get_mut(&id) {
            Some(entry) if entry.node.name == node.name => entry.node = node,
            _ => {
                self.nodes.insert(id, NodeEntry::new(node, now));
            }
        }
        effects.nodes.insert(id);
    }

    /// A node record deleted.
    pub fn replicate_node_deleted(&mut self, id: NodeId, effects: &mut Effects) {
        self.nodes.remove(&id);
        self.draining.remove(&id);
        effects.nodes.insert(id);
    }

    /// A service record as stored.
    pub fn replicate_service(&mut self, service: Service, effects: &mut Effects) {
        let name = service.spec.name.clone();
        match self.services.get_mut(&name) {
            Some(entry) if entry.service.created_at == service.created_at => {
                entry.service = service;
            }
            _ => {
                // New, or a new service of an old name: its instances are the tasks made since.
                let instances = self.instances_since(&name, service.created_at);
                self.services
                    .insert(name.clone(), ServiceEntry { service, instances, wake_at: None });
            }
        }
        effects.services.insert(name);
    }

    /// A service record deleted.
    pub fn replicate_service_deleted(&mut self, name: &str, effects: &mut Effects) {
        if self.services.remove(name).is_some() {
            effects.removed_services.insert(name.to_owned());
        }
    }

    /// A deployment record as stored.
    pub fn replicate_deployment(&mut self, deployment: Deployment) {
        self.deployments.insert(deployment.id, deployment);
    }

    /// A deployment record deleted.
    pub fn replicate_deployment_deleted(&mut self, id: DeploymentId) {
        self.deployments.remove(&id);
    }

    /// After a feed's changes: the endpoints of the services they touched, rebuilt (a
    /// follower announces nothing; the leader's events say what changed).
    pub fn replicated(&mut self, effects: &Effects) {
        self.refresh_endpoints(effects, false);
    }
}

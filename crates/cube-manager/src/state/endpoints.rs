//! Each published service's endpoints (`cube_core::endpoints`), kept in step with the tasks,
//! nodes and services they derive from. [`State::refresh_endpoints`] is their only writer: it
//! runs on every staged change, recomputes the services the change touched, and says which
//! changed (each becomes an `EndpointsUpdated` event).

use std::collections::{BTreeMap, BTreeSet};

use cube_core::endpoints::{ServiceEndpoints, service_endpoints};
use cube_core::{Node, NodeId};

use super::{Effects, State};

impl State {
    /// A service's endpoints (`None`: no such service; empty when it publishes nothing).
    pub fn endpoints(&self, service: &str) -> Option<ServiceEndpoints> {
        let entry = self.services.get(service)?;
        Some(self.endpoints.get(service).cloned().unwrap_or_else(|| ServiceEndpoints {
            service: service.to_owned(),
            ports: entry.service.spec.ports.clone(),
            endpoints: Vec::new(),
        }))
    }

    /// The event index of the newest endpoint change (at start-up: the index the state was
    /// loaded at).
    pub fn endpoints_index(&self) -> u64 {
        self.endpoints_index
    }

    /// The change staged at `index` changed endpoints.
    pub fn set_endpoints_index(&mut self, index: u64) {
        self.endpoints_index = self.endpoints_index.max(index);
    }

    /// Every published service's endpoints, by name.
    pub fn all_endpoints(&self) -> Vec<ServiceEndpoints> {
        self.endpoints.values().cloned().collect()
    }

    /// `node`'s ingress has applied the endpoints as of `index`.
    pub fn ingress_applied(&mut self, node: NodeId, index: u64) {
        let acked = self.ingress_acks.entry(node).or_default();
        *acked = (*acked).max(index);
    }

    /// The service publishing `port`, other than `except`.
    pub fn publisher_of(&self, port: u16, except: &str) -> Option<&str> {
        self.services
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .find(|(_, e)| e.service.spec.ports.iter().any(|p| p.publish == port))
            .map(|(name, _)| name.as_str())
    }

    /// Recomputes the endpoints of the services `effects` touched (all of them with `all`, at
    /// start-up) and returns those that changed: the new endpoints, or `None` for a service
    /// that no longer publishes anything.
    pub fn refresh_endpoints(
        &mut self,
        effects: &Effects,
        all: bool,
    ) -> Vec<(String, Option<ServiceEndpoints>)> {
        let mut touched: BTreeSet<String> = if all {
            self.services.keys().chain(self.endpoints.keys()).cloned().collect()
        } else {
            effects.services.iter().chain(&effects.removed_services).cloned().collect()
        };
        let nodes_tasks = effects.nodes.iter().flat_map(|n| &self.usage(*n).tasks);
        for id in effects.tasks.iter().chain(nodes_tasks) {
            if let Some(of) = self.tasks.get(id).and_then(|t| t.instance.as_ref()) {
                touched.insert(of.service.clone());
            }
        }
        let nodes: BTreeMap<NodeId, &Node> =
            self.nodes.iter().map(|(id, e)| (*id, &e.node)).collect();
        let mut changed = Vec::new();
        for name in touched {
            let new = self.services.get(&name).filter(|e| !e.service.spec.ports.is_empty()).map(
                |entry| {
                    let tasks = entry.instances.iter().filter_map(|id| self.tasks.get(id));
                    service_endpoints(&name, &entry.service.spec.ports, tasks.map(|t| &**t), &nodes)
                },
            );
            if new.as_ref() == self.endpoints.get(&name) {
                continue;
            }
            match &new {
                Some(e) => self.endpoints.insert(name.clone(), e.clone()),
                None => self.endpoints.remove(&name),
            };
            changed.push((name, new));
        }
        changed
    }
}

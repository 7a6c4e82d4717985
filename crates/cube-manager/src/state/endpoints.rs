//! Each published service's endpoints (`cube_core::endpoints`), kept in step with the tasks,
//! nodes and services they derive from. [`State::refresh_endpoints`] is their only writer: it
//! runs on every staged change, recomputes the services the change touched, and says which
//! changed (each becomes an `EndpointsUpdated` event) and which instances left them.
//!
//! **Leaving before stopping.** An instance asked to stop while it is an endpoint leaves the
//! endpoints in that same change, but its stop is held ([`State::hold_stops`]): first every
//! ready node's ingress must have applied the change (its feed request says so), then the
//! connections those ingresses still have open to it must end (their heartbeats say so), or
//! the service's `drain_timeout` pass; only then is the stop sent
//! ([`State::release_leaving`]). A node that does not apply the change within
//! `drain_timeout` does not hold it longer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cube_core::endpoints::{IngressReport, ServiceEndpoints, service_endpoints};
use cube_core::node::NodeState;
use cube_core::{DesiredState, NodeId, TaskId};

use super::{Effects, State, StopCall};

/// What a staged change did to the endpoints.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Services whose endpoints changed: the new ones, or `None` once it publishes nothing.
    pub changed: Vec<(String, Option<ServiceEndpoints>)>,
    /// Instances that were endpoints before the change and are not after it.
    pub left: BTreeSet<TaskId>,
}

/// An instance whose stop waits for the ingresses to let go of it.
#[derive(Clone, Debug)]
pub struct Leaving {
    node: NodeId,
    /// The endpoint index of the change that took it out.
    index: u64,
    since: Instant,
    /// When every ready node had applied `index`.
    applied: Option<Instant>,
    drain_timeout: Duration,
}

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

    /// What `node`'s ingress reported in its last periodic heartbeat, received at `at`.
    pub fn ingress_reported(&mut self, node: NodeId, report: IngressReport, at: Instant) {
        self.ingress_reports.insert(node, (report, at));
    }

    /// `node`'s ingress listeners, as its last report gave them.
    pub fn ingress_listeners(&self, node: NodeId) -> Vec<cube_core::endpoints::IngressListener> {
        self.ingress_reports.get(&node).map(|(r, _)| r.listeners.clone()).unwrap_or_default()
    }

    /// Whether `task`'s stop is held until the ingresses let go of it.
    pub fn is_leaving(&self, task: TaskId) -> bool {
        self.leaving.contains_key(&task)
    }

    /// Takes out of `effects` the stops of instances that `left` the endpoints in the change
    /// staged at endpoint index `index`, to be sent by [`State::release_leaving`].
    pub fn hold_stops(
        &mut self,
        left: &BTreeSet<TaskId>,
        index: u64,
        mono: Instant,
        effects: &mut Effects,
    ) {
        let mut held = Vec::new();
        effects.stop.retain(|s| {
            let hold = left.contains(&s.task);
            if hold {
                held.push(s.clone());
            }
            !hold
        });
        for s in held {
            let drain_timeout = self
                .tasks
                .get(&s.task)
                .and_then(|t| t.instance.as_ref())
                .and_then(|of| self.services.get(&of.service))
                .map_or(cube_core::service::DEFAULT_DRAIN_TIMEOUT, |e| {
                    e.service.spec.drain_timeout
                });
            let leaving =
                Leaving { node: s.node, index, since: mono, applied: None, drain_timeout };
            self.leaving.insert(s.task, leaving);
        }
    }

    /// The held stops to send now: of instances every ready node's ingress has let go of,
    /// with no connection left open to them, or whose time is up.
    pub fn release_leaving(&mut self, mono: Instant) -> Vec<StopCall> {
        if self.leaving.is_empty() {
            return Vec::new();
        }
        let ready: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.node.state == NodeState::Ready)
            .map(|n| n.node.id)
            .collect();
        let mut released = Vec::new();
        for (task, l) in &mut self.leaving {
            if l.applied.is_none()
                && ready.iter().all(|n| self.ingress_acks.get(n).is_some_and(|a| *a >= l.index))
            {
                l.applied = Some(mono);
            }
            let go = match l.applied {
                // Only a report made after the node applied the change counts: an older one
                // may predate a connection opened just before.
                Some(applied) => {
                    let drained = ready.iter().all(|n| {
                        self.ingress_reports.get(n).is_some_and(|(report, at)| {
                            *at > applied && !report.open.contains_key(task)
                        })
                    });
                    drained || mono.saturating_duration_since(applied) >= l.drain_timeout
                }
                None => mono.saturating_duration_since(l.since) >= l.drain_timeout,
            };
            if go {
                released.push((*task, l.node));
            }
        }
        let mut stops = Vec::new();
        for (task, node) in released {
            self.leaving.remove(&task);
            let wanted = self
                .tasks
                .get(&task)
                .is_some_and(|t| t.desired == DesiredState::Stopped && !t.state.is_terminal());
            if wanted {
                stops.push(StopCall { task, node });
            }
        }
        stops
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
    pub fn refresh_endpoints(&mut self, effects: &Effects, all: bool) -> Refreshed {
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
        let node = |id: NodeId| self.nodes.get(&id).map(|e| &e.node);
        let mut refreshed = Refreshed::default();
        for name in touched {
            let new = self.services.get(&name).filter(|e| !e.service.spec.ports.is_empty()).map(
                |entry| {
                    let tasks = entry.instances.iter().filter_map(|id| self.tasks.get(id));
                    service_endpoints(&name, &entry.service.spec.ports, tasks.map(|t| &**t), node)
                },
            );
            if new.as_ref() == self.endpoints.get(&name) {
                continue;
            }
            let old = match &new {
                Some(e) => self.endpoints.insert(name.clone(), e.clone()),
                None => self.endpoints.remove(&name),
            };
            let now: BTreeSet<TaskId> =
                new.iter().flat_map(|e| &e.endpoints).map(|e| e.task).collect();
            refreshed.left.extend(
                old.iter().flat_map(|e| &e.endpoints).map(|e| e.task).filter(|t| !now.contains(t)),
            );
            refreshed.changed.push((name, new));
        }
        refreshed
    }
}

//! A service's endpoints: the instances every node's ingress may send the service's published
//! ports to. Pure: derived from the task and node records, so the manager recomputes them
//! after any change and they need no storage of their own.
//!
//! An instance is an endpoint while it runs, is meant to keep running (a stop, of any cause,
//! takes it out first), passes its health checks when it has any, and its node is ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeState};
use crate::service::ServicePort;
use crate::spec::Protocol;
use crate::{DesiredState, NodeId, Task, TaskId, TaskState};

/// One instance an ingress may forward to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    /// The instance.
    pub task: TaskId,
    /// Its node (an ingress prefers the instances on its own node).
    pub node: NodeId,
    /// The service version it runs.
    pub version: u64,
    /// Where each published target port of it is reachable.
    pub addresses: Vec<EndpointAddress>,
}

/// Where one target port of an instance is reachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EndpointAddress {
    /// The service's target port (the container's).
    pub target: u16,
    /// The host to connect to: the address the engine bound, or its node's when it bound
    /// every address.
    pub host: String,
    /// The host port.
    pub port: u16,
}

impl Endpoint {
    /// Where `target` is reachable (`host:port`), if this instance serves it.
    pub fn address(&self, target: u16) -> Option<&EndpointAddress> {
        self.addresses.iter().find(|a| a.target == target)
    }
}

/// A service's published ports and its endpoints, in task id order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceEndpoints {
    /// The service.
    pub service: String,
    /// Its published ports.
    pub ports: Vec<ServicePort>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One published port as a node's ingress serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngressListener {
    /// The published port.
    pub port: u16,
    /// The service publishing it.
    pub service: String,
    /// The address it listens on (`host:port`).
    pub address: String,
    /// Why it cannot listen (the port is taken, or privileged without the rights); `None`
    /// while it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a node's ingress says of itself in its periodic heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngressReport {
    /// Its listeners, one per published port.
    #[serde(default)]
    pub listeners: Vec<IngressListener>,
    /// Connections open through it, per instance (instances with none left out): the manager
    /// stops an instance that left the endpoints once no node has any open to it.
    #[serde(default)]
    pub open: BTreeMap<TaskId, u32>,
}

/// The endpoint `task` is, if it is one: `ports` are the service's published ports and `node`
/// the record of the node it runs on.
pub fn endpoint(task: &Task, node: Option<&Node>, ports: &[ServicePort]) -> Option<Endpoint> {
    let node = node.filter(|n| n.state == NodeState::Ready)?;
    let serving = task.state == TaskState::Running
        && task.desired == DesiredState::Running
        && (task.spec.health.is_none() || task.healthy == Some(true));
    if !serving || Some(node.id) != task.node {
        return None;
    }
    let version = task.instance.as_ref()?.version;
    let addresses: Vec<EndpointAddress> = ports
        .iter()
        .filter_map(|p| {
            let bound = task
                .host_ports
                .iter()
                .find(|h| h.container_port == p.target && h.protocol == Protocol::Tcp)?;
            Some(EndpointAddress {
                target: p.target,
                host: reachable_host(&bound.host_ip, &node.address),
                port: bound.host_port,
            })
        })
        .collect();
    // An instance that serves none of the ports (it has not reported them yet) is no use.
    (!addresses.is_empty()).then_some(Endpoint { task: task.id, node: node.id, version, addresses })
}

/// The endpoints of a service whose instances are `tasks`; `node` looks a node up by id.
pub fn service_endpoints<'a, 'n>(
    service: &str,
    ports: &[ServicePort],
    tasks: impl IntoIterator<Item = &'a Task>,
    node: impl Fn(NodeId) -> Option<&'n Node>,
) -> ServiceEndpoints {
    let mut endpoints: Vec<Endpoint> = if ports.is_empty() {
        Vec::new()
    } else {
        tasks.into_iter().filter_map(|t| endpoint(t, t.node.and_then(&node), ports)).collect()
    };
    endpoints.sort_by_key(|e| e.task);
    ServiceEndpoints { service: service.to_owned(), ports: ports.to_vec(), endpoints }
}

/// The host to reach a port the engine bound on `bound`: that address, unless it is every
/// address (`0.0.0.0`, `::` or empty), then the host of the node's API address.
fn reachable_host(bound: &str, node_address: &str) -> String {
    if !matches!(bound, "" | "0.0.0.0" | "::" | "[::]") {
        return bound.to_owned();
    }
    let rest = node_address.split_once("://").map_or(node_address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        // `[::1]:5556`
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::IngressMode;
    use crate::{HostPort, InstanceOf};
    use jiff::Timestamp;
    use uuid::Uuid;

    fn node(n: u128, state: NodeState) -> Node {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::from_u128(n), "name": format!("w{n}"),
            "address": format!("http://10.0.0.{n}:5556"), "capacity": {}, "drivers": ["docker"],
            "state": state, "registered_at": "2026-12-02T00:00:00Z",
        }))
        .unwrap()
    }

    fn instance(n: u128, node: u128, port: u16) -> Task {
        let spec = serde_json::from_value(serde_json::json!({
            "name": "web", "driver": "docker", "image": "httpd", "ports": [{"container": 80}],
        }))
        .unwrap();
        let mut t = Task::new(TaskId::from_uuid(Uuid::from_u128(n)), spec, Timestamp::UNIX_EPOCH);
        t.state = TaskState::Running;
        t.node = Some(NodeId::from_uuid(Uuid::from_u128(node)));
        t.instance = Some(InstanceOf { service: "web".into(), version: 2, slot: 0 });
        t.host_ports = vec![HostPort {
            container_port: 80,
            host_port: port,
            protocol: Protocol::Tcp,
            host_ip: "0.0.0.0".into(),
        }];
        t
    }

    const PORTS: &[ServicePort] =
        &[ServicePort { target: 80, publish: 8080, mode: IngressMode::Tcp }];

    #[test]
    fn running_instances_on_ready_nodes_are_endpoints_at_their_nodes_address() {
        let (ready, down) = (node(1, NodeState::Ready), node(2, NodeState::Down));
        let nodes = BTreeMap::from([(ready.id, &ready), (down.id, &down)]);
        let mut stopping = instance(12, 1, 32002);
        stopping.desired = DesiredState::Stopped;
        let mut starting = instance(13, 1, 32003);
        starting.state = TaskState::Scheduled;
        let tasks = [instance(11, 1, 32001), stopping, starting, instance(14, 2, 32004)];
        let e = service_endpoints("web", PORTS, &tasks, |n| nodes.get(&n).copied());
        assert_eq!(e.endpoints.len(), 1, "{e:?}");
        let only = &e.endpoints[0];
        assert_eq!(only.task, tasks[0].id);
        assert_eq!(only.version, 2);
        assert_eq!(
            only.address(80),
            Some(&EndpointAddress { target: 80, host: "10.0.0.1".into(), port: 32001 })
        );
        assert!(
            service_endpoints("web", &[], &tasks, |n| nodes.get(&n).copied()).endpoints.is_empty()
        );
    }

    #[test]
    fn an_instance_with_checks_is_an_endpoint_only_while_healthy() {
        let ready = node(1, NodeState::Ready);
        let nodes = BTreeMap::from([(ready.id, &ready)]);
        let mut t = instance(11, 1, 32001);
        t.spec.health =
            Some(serde_json::from_value(serde_json::json!({"type": "tcp", "port": 80})).unwrap());
        for (healthy, is_endpoint) in [(None, false), (Some(false), false), (Some(true), true)] {
            t.healthy = healthy;
            let e = service_endpoints("web", PORTS, [&t], |n| nodes.get(&n).copied());
            assert_eq!(e.endpoints.len() == 1, is_endpoint, "healthy {healthy:?}");
        }
    }

    #[test]
    fn the_host_is_the_bound_address_or_the_nodes() {
        assert_eq!(reachable_host("127.0.0.1", "http://10.0.0.1:5556"), "127.0.0.1");
        assert_eq!(reachable_host("0.0.0.0", "http://10.0.0.1:5556"), "10.0.0.1");
        assert_eq!(reachable_host("::", "https://[fd00::1]:5556/"), "fd00::1");
        assert_eq!(reachable_host("", "http://w1.example:5556"), "w1.example");
    }
}

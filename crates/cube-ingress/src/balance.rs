//! Which instance a connection goes to. Pure: the routes are built from the manager's
//! endpoints, and a pick sees the ingress's own count of open connections per instance.

use std::collections::BTreeMap;

use cube_core::endpoints::ServiceEndpoints;
use cube_core::service::IngressMode;
use cube_core::{NodeId, TaskId};

/// An instance a published port may be forwarded to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance.
    pub task: TaskId,
    /// Its node.
    pub node: NodeId,
    /// Where to connect (`host:port`).
    pub addr: String,
}

/// One published port: its service and where its connections may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The service publishing it.
    pub service: String,
    /// The instances' port.
    pub target: u16,
    /// How connections are forwarded.
    pub mode: IngressMode,
    /// Its instances, in task id order.
    pub backends: Vec<Backend>,
}

/// The routes of every published port, from the services' endpoints.
pub fn routes(services: &[ServiceEndpoints]) -> BTreeMap<u16, Route> {
    let mut routes = BTreeMap::new();
    for s in services {
        for p in &s.ports {
            let backends = s
                .endpoints
                .iter()
                .filter_map(|e| {
                    let a = e.address(p.target)?;
                    let addr = if a.host.contains(':') {
                        format!("[{}]:{}", a.host, a.port)
                    } else {
                        format!("{}:{}", a.host, a.port)
                    };
                    Some(Backend { task: e.task, node: e.node, addr })
                })
                .collect();
            let route =
                Route { service: s.service.clone(), target: p.target, mode: p.mode, backends };
            routes.insert(p.publish, route);
        }
    }
    routes
}

/// The backend for the next connection: among those not in `skip` (tried already and
/// refused), the ones on `local` if there are any, then the fewest open connections (`load`),
/// ties broken in turn by `turn` so an idle service still spreads its connections.
pub fn pick<'a>(
    route: &'a Route,
    local: NodeId,
    load: impl Fn(TaskId) -> usize,
    skip: &[TaskId],
    turn: usize,
) -> Option<&'a Backend> {
    let open: Vec<&Backend> = route.backends.iter().filter(|b| !skip.contains(&b.task)).collect();
    let here: Vec<&Backend> = open.iter().copied().filter(|b| b.node == local).collect();
    let pool = if here.is_empty() { open } else { here };
    let least = pool.iter().map(|b| load(b.task)).min()?;
    let tied: Vec<&Backend> = pool.into_iter().filter(|b| load(b.task) == least).collect();
    tied.get(turn % tied.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn backend(task: u128, node: u128) -> Backend {
        Backend {
            task: TaskId::from_uuid(Uuid::from_u128(task)),
            node: NodeId::from_uuid(Uuid::from_u128(node)),
            addr: format!("10.0.0.{node}:{}", 30000 + task),
        }
    }

    fn route(backends: Vec<Backend>) -> Route {
        Route { service: "web".into(), target: 80, mode: IngressMode::Tcp, backends }
    }

    fn node(n: u128) -> NodeId {
        NodeId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn local_instances_first_then_the_least_loaded() {
        let r = route(vec![backend(1, 1), backend(2, 2), backend(3, 2)]);
        let none = |_| 0;
        assert_eq!(pick(&r, node(1), none, &[], 7).unwrap().task, r.backends[0].task);
        // From a node without instances: the least loaded, whichever its node.
        let load = |t: TaskId| if t == r.backends[0].task { 0 } else { 3 };
        assert_eq!(pick(&r, node(9), load, &[], 1).unwrap().task, r.backends[0].task);
        // Ties go round.
        let picked: Vec<TaskId> =
            (0..4).map(|turn| pick(&r, node(2), none, &[], turn).unwrap().task).collect();
        assert_eq!(
            picked,
            [r.backends[1].task, r.backends[2].task, r.backends[1].task, r.backends[2].task]
        );
    }

    #[test]
    fn a_refused_instance_is_skipped_and_nothing_is_left_to_pick_from_none() {
        let r = route(vec![backend(1, 1), backend(2, 2)]);
        let first = r.backends[0].task;
        assert_eq!(pick(&r, node(1), |_| 0, &[first], 0).unwrap().task, r.backends[1].task);
        assert!(pick(&r, node(1), |_| 0, &[first, r.backends[1].task], 0).is_none());
        assert!(pick(&route(vec![]), node(1), |_| 0, &[], 0).is_none());
    }

    #[test]
    fn routes_follow_the_published_ports() {
        let e: ServiceEndpoints = serde_json::from_value(serde_json::json!({
            "service": "web",
            "ports": [{"target": 80, "publish": 8080}, {"target": 443, "publish": 8443}],
            "endpoints": [{"task": Uuid::from_u128(1), "node": Uuid::from_u128(1), "version": 1,
                           "addresses": [{"target": 80, "host": "10.0.0.1", "port": 31000},
                                         {"target": 443, "host": "fd00::1", "port": 31001}]}],
        }))
        .unwrap();
        let routes = routes(&[e]);
        assert_eq!(routes[&8080].backends[0].addr, "10.0.0.1:31000");
        assert_eq!(routes[&8443].backends[0].addr, "[fd00::1]:31001");
        assert_eq!(routes[&8443].target, 443);
    }
}

//! A worker node as the manager records it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::spec::{NetworkMode, capability_name};
use crate::{DriverKind, NodeId, Resources, TaskSpec};

/// Liveness of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[derive(strum::Display, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating; accepts tasks.
    Ready,
    /// Missed heartbeats for longer than the TTL; its tasks were placed elsewhere.
    Down,
}

/// A registered worker node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    /// Stable id (the worker keeps it in its data directory).
    pub id: NodeId,
    /// Human name.
    pub name: String,
    /// Base URL of the worker API, e.g. `http://10.0.0.5:5556`.
    pub address: String,
    /// Labels for placement constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources the node offers to tasks.
    pub capacity: Resources,
    /// Drivers the node can run.
    pub drivers: Vec<DriverKind>,
    /// Liveness.
    pub state: NodeState,
    /// First registration.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub registered_at: Timestamp,
    /// Last heartbeat received.
    #[serde(default)]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub last_heartbeat: Option<Timestamp>,
    /// Whether new work may be placed here (`cube node eligibility`; off while draining).
    #[serde(default = "eligible_by_default")]
    pub eligible: bool,
    /// A drain in progress or done (`cube node drain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// What its worker lets tasks ask for beyond the defaults (nothing in records written
    /// before workers said).
    #[serde(default, skip_serializing_if = "Allows::is_nothing")]
    pub allows: Allows,
}

fn eligible_by_default() -> bool {
    true
}

/// A node being emptied: no new work, its service instances replaced elsewhere within each
/// service's budgets, its bare tasks placed elsewhere, whatever is left stopped at the
/// deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Drain {
    /// When it began.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub started_at: Timestamp,
    /// When what is left is stopped (`None`: never; it waits for room elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub deadline: Option<Timestamp>,
    /// When the node was found empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub drained_at: Option<Timestamp>,
}

/// What a worker lets its tasks ask for beyond the safe defaults, from its own configuration
/// (`cube worker --allow-*`): the manager places a task only where everything it asks for is
/// allowed, and the worker checks again when the task arrives. Whether process tasks run at
/// all is the node's `drivers` (`--driver process`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Allows {
    /// Host users process tasks may name in `user` (`--allow-user`), besides the worker's
    /// default (listed too, when the worker can switch users).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Privileged containers (`--allow-privileged`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Host path prefixes containers may mount (`--allow-host-mounts`); `/` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_mounts: Vec<String>,
    /// Containers on the host network (`--allow-host-network`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Capabilities containers may add (`--allow-cap-add`), without the `CAP_` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
}

/// Something a task asks for that a node does not allow. Indexes point into the spec, so the
/// scheduler can keep it per node cheaply and put it into words only when it shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The process driver is off (`--driver process`).
    ProcessDisabled,
    /// A process task names a user the worker does not allow (`--allow-user`).
    User,
    /// A privileged container (`--allow-privileged`).
    Privileged,
    /// `mounts[i]`'s source is under no allowed prefix (`--allow-host-mounts`).
    HostMount(usize),
    /// The host network (`--allow-host-network`).
    HostNetwork,
    /// `cap_add[i]` is not allowed (`--allow-cap-add`).
    CapAdd(usize),
}

impl Refusal {
    /// What is refused and the worker setting that would allow it, e.g. "privileged
    /// containers are not allowed (start the worker with --allow-privileged)".
    pub fn describe(self, spec: &TaskSpec) -> String {
        match self {
            Refusal::ProcessDisabled => {
                "does not enable the process driver (start its worker with --driver process)".into()
            }
            Refusal::User => {
                let user = spec.user.as_deref().unwrap_or_default();
                format!(
                    "process tasks may not run as user {user} (start the worker with --allow-user {user})"
                )
            }
            Refusal::Privileged => {
                "privileged containers are not allowed (start the worker with --allow-privileged)"
                    .into()
            }
            Refusal::HostMount(i) => {
                let source = spec.mounts.get(i).map_or("", |m| m.source.as_str());
                format!(
                    "host mount of {source} is not allowed (start the worker with --allow-host-mounts {source} or a parent)"
                )
            }
            Refusal::HostNetwork => {
                "the host network is not allowed (start the worker with --allow-host-network)"
                    .into()
            }
            Refusal::CapAdd(i) => {
                let cap = spec.cap_add.get(i).map(|c| capability_name(c)).unwrap_or_default();
                format!(
                    "adding capability {cap} is not allowed (start the worker with --allow-cap-add {cap})"
                )
            }
        }
    }
}

impl Allows {
    /// Whether it allows nothing beyond the defaults.
    pub fn is_nothing(&self) -> bool {
        *self == Allows::default()
    }

    /// The first thing `spec` asks for that this does not allow (the driver is checked
    /// separately, against the node's drivers).
    pub fn refusal(&self, spec: &TaskSpec) -> Option<Refusal> {
        match spec.driver {
            DriverKind::Process => {
                let user = spec.user.as_deref()?;
                (!self.users.iter().any(|u| u == user)).then_some(Refusal::User)
            }
            DriverKind::Docker => {
                if spec.privileged && !self.privileged {
                    return Some(Refusal::Privileged);
                }
                if spec.network == NetworkMode::Host && !self.host_network {
                    return Some(Refusal::HostNetwork);
                }
                if let Some(i) = spec.mounts.iter().position(|m| !self.mount_allowed(&m.source)) {
                    return Some(Refusal::HostMount(i));
                }
                let allowed = |cap: &String| {
                    let cap = capability_name(cap);
                    self.cap_add.iter().any(|a| capability_name(a) == cap)
                };
                spec.cap_add.iter().position(|c| !allowed(c)).map(Refusal::CapAdd)
            }
        }
    }

    /// Whether `source` (a clean absolute path) is one of the allowed prefixes or below one,
    /// component by component (`/data` allows `/data/x`, not `/database`).
    pub fn mount_allowed(&self, source: &str) -> bool {
        self.host_mounts.iter().any(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            prefix.is_empty()
                || source == prefix
                || source.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> TaskSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn nothing_beyond_the_defaults_is_allowed_by_default() {
        let none = Allows::default();
        let plain = spec(serde_json::json!({"name": "a", "driver": "docker", "image": "i",
            "user": "1000", "read_only_rootfs": true, "cap_drop": ["ALL"]}));
        assert_eq!(none.refusal(&plain), None, "dropping and confining is always allowed");
        let p = spec(serde_json::json!({"name": "a", "driver": "process", "command": "x"}));
        assert_eq!(none.refusal(&p), None, "the default user needs no permission");

        let root = spec(
            serde_json::json!({"name": "a", "driver": "process", "command": "x", "user": "root"}),
        );
        assert_eq!(none.refusal(&root), Some(Refusal::User));
        assert_eq!(
            Refusal::User.describe(&root),
            "process tasks may not run as user root (start the worker with --allow-user root)"
        );
        let users = Allows { users: vec!["root".into()], ..Allows::default() };
        assert_eq!(users.refusal(&root), None);

        let greedy = spec(serde_json::json!({"name": "a", "driver": "docker", "image": "i",
            "privileged": true, "network": "host", "cap_add": ["cap_net_admin"],
            "mounts": [{"source": "/data/x", "target": "/x"}, {"source": "/etc", "target": "/e"}]}));
        assert_eq!(none.refusal(&greedy), Some(Refusal::Privileged));
        let mut allows = Allows { privileged: true, ..Allows::default() };
        assert_eq!(allows.refusal(&greedy), Some(Refusal::HostNetwork));
        allows.host_network = true;
        assert_eq!(allows.refusal(&greedy), Some(Refusal::HostMount(0)));
        allows.host_mounts = vec!["/data/".into()];
        assert_eq!(allows.refusal(&greedy), Some(Refusal::HostMount(1)));
        assert_eq!(
            Refusal::HostMount(1).describe(&greedy),
            "host mount of /etc is not allowed (start the worker with --allow-host-mounts /etc or a parent)"
        );
        allows.host_mounts.push("/etc".into());
        assert_eq!(allows.refusal(&greedy), Some(Refusal::CapAdd(0)));
        assert_eq!(
            Refusal::CapAdd(0).describe(&greedy),
            "adding capability NET_ADMIN is not allowed (start the worker with --allow-cap-add NET_ADMIN)"
        );
        allows.cap_add = vec!["NET_ADMIN".into()];
        assert_eq!(allows.refusal(&greedy), None);
    }

    #[test]
    fn mount_prefixes_match_whole_components() {
        let allows = Allows { host_mounts: vec!["/data".into()], ..Allows::default() };
        assert!(allows.mount_allowed("/data"));
        assert!(allows.mount_allowed("/data/a/b"));
        assert!(!allows.mount_allowed("/database"));
        assert!(!allows.mount_allowed("/"));
        let any = Allows { host_mounts: vec!["/".into()], ..Allows::default() };
        assert!(any.mount_allowed("/etc/shadow"));
    }

    #[test]
    fn a_record_without_allows_reads_as_allowing_nothing() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "name": "w1",
            "address": "http://w1", "capacity": {}, "drivers": ["docker"], "state": "ready",
            "registered_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        assert!(node.allows.is_nothing());
        let json = serde_json::to_value(&node).unwrap();
        assert!(json.get("allows").is_none(), "nothing allowed is written as nothing");
    }
}

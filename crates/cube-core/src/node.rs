//! A worker node as the manager records it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{DriverKind, NodeId, Resources};

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

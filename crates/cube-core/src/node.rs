//! A worker node as the manager records it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{DriverKind, NodeId, Resources};

/// Liveness of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[derive(strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating; accepts tasks.
    Ready,
    /// Missed heartbeats for longer than the TTL; its tasks were placed elsewhere.
    Down,
}

/// A registered worker node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub registered_at: Timestamp,
    /// Last heartbeat received.
    #[serde(default)]
    pub last_heartbeat: Option<Timestamp>,
}

//! What a worker reports about its host: memory, CPU, load, disk and its tasks by state.
//!
//! Domain values (the manager's schedulers read them) that also travel on the wire as the body
//! of `GET /v1/stats` and inside heartbeats, so their field names are a compatibility promise.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{Resources, TaskState};

/// `GET /v1/stats` on a worker: host metrics and what the node's tasks reserve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeStats {
    /// When the figures were read.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub collected_at: Timestamp,
    /// Memory from `/proc/meminfo`.
    pub memory: MemoryStats,
    /// CPU from `/proc/stat`, as a rate over the last sampling interval.
    pub cpu: CpuStats,
    /// Load averages from `/proc/loadavg`.
    pub load: LoadStats,
    /// The filesystem holding the worker's data directory.
    pub disk: DiskStats,
    /// Tasks known to the node, by state.
    pub tasks: TaskCounts,
    /// Sum of the resources of tasks that are placed and not finished.
    pub reserved: Resources,
}

/// Memory figures, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemoryStats {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`.
    pub available_bytes: u64,
    /// `MemTotal - MemAvailable`.
    pub used_bytes: u64,
}

/// CPU figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CpuStats {
    /// Logical CPUs.
    pub cores: u32,
    /// Fraction of all CPU time that was busy during the last interval, in [0, 1].
    pub busy_fraction: f64,
    /// Length of that interval, in milliseconds (0 until two samples exist).
    pub interval_ms: u64,
}

/// Load averages.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoadStats {
    /// 1-minute load average.
    pub one: f64,
    /// 5-minute load average.
    pub five: f64,
    /// 15-minute load average.
    pub fifteen: f64,
}

/// Disk figures of one filesystem, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiskStats {
    /// A path on the filesystem measured.
    pub path: String,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Space available to unprivileged users.
    pub free_bytes: u64,
}

/// Task counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskCounts {
    /// All tasks the node knows.
    pub total: u64,
    /// Pending or scheduled.
    pub starting: u64,
    /// Running.
    pub running: u64,
    /// Restarting.
    pub restarting: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
}

impl TaskCounts {
    /// Counts one task in `state`.
    pub fn add(&mut self, state: TaskState) {
        self.total += 1;
        match state {
            TaskState::Pending | TaskState::Scheduled => self.starting += 1,
            TaskState::Running => self.running += 1,
            TaskState::Restarting => self.restarting += 1,
            TaskState::Completed => self.completed += 1,
            TaskState::Failed => self.failed += 1,
        }
    }
}

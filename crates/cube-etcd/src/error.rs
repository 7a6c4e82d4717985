//! The crate's one error type. `Display` says what failed, `#[source]` why.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the etcd backend. Callers decide on the variant: etcd unreachable or slow
/// (retry), data that belongs to another cluster or a newer Cube (refuse to start), a
/// compacted watch (load a snapshot again), a lost leadership.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be connected to.
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A request failed.
    #[error("etcd: cannot {operation}")]
    Request {
        /// What was asked, e.g. `read the cluster record`.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A request got no answer in time.
    #[error("etcd: {operation}: no answer within {after:?}")]
    Timeout {
        /// What was asked.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The prefix holds another cluster's data.
    #[error(
        "etcd prefix {prefix} holds cluster {found:?}, not {expected:?}: give this manager the \
         other cluster's name (--etcd-cluster) or a prefix of its own (--etcd-prefix)"
    )]
    OtherCluster {
        /// The prefix.
        prefix: String,
        /// The cluster its record names.
        found: String,
        /// The cluster this manager belongs to.
        expected: String,
    },
    /// The prefix holds data in a format newer than this version reads.
    #[error(
        "etcd prefix {prefix} holds data format {found}, newer than this Cube reads \
         ({supported}): run a newer cube"
    )]
    NewerFormat {
        /// The prefix.
        prefix: String,
        /// The format recorded.
        found: u32,
        /// The newest format this version reads.
        supported: u32,
    },
    /// The cluster record is not one Cube wrote.
    #[error("etcd key {key} is not a Cube cluster record")]
    BadClusterRecord {
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A TLS file could not be read.
    #[error("{}: cannot read", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The watch's start revision was compacted away: load a snapshot again.
    #[error("etcd compacted the history up to revision {compacted}, past the watch's start")]
    Compacted {
        /// The compaction revision.
        compacted: i64,
    },
    /// The watch ended (the server cancelled it or the stream closed).
    #[error("etcd watch ended: {reason}")]
    WatchEnded {
        /// What the server said, if anything.
        reason: String,
    },
    /// The election's lease ran out, or could not be renewed in time.
    #[error("leadership lost: {reason}")]
    LeadershipLost {
        /// Why.
        reason: &'static str,
    },
}

//! Cube's test kit (not part of the product): what tests and benchmarks share.
//!
//! - [`cluster`]: an in-process cluster (a manager and N workers on the fake driver and
//!   in-memory stores) on a virtual clock, for the many fast tests of the orchestration logic:
//!   restart backoff, stop-vs-exit races, unhealthy kills, node expiry, rescheduling, garbage
//!   collection, each in milliseconds of wall time.
//! - [`process`]: real `cube` processes on OS-chosen loopback ports, killed and cleaned up
//!   after (containers, process tasks) even when the test failed: the proof that the runtime
//!   works, for the multi-process tests and `cube-bench`.
//! - [`etcd`]: real etcd clusters (Debian's `etcd-server`) of one or more members on OS-chosen
//!   loopback ports, for the tests of highly available managers.
//! - [`browser`]: a headless Chromium (Debian's `chromium` and `chromium-driver`) driven over
//!   WebDriver with `fantoccini`, reaching loopback only, for the web UI's tests and benchmarks.
//! - [`wait`]: waiting on conditions with a deadline, never sleeping as synchronisation.

pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod process;
pub mod wait;

pub use cluster::{Cluster, ClusterConfig};

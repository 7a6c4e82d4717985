//! Host figures from `/proc` and `statvfs` (what `GET /v1/stats` and heartbeats report; not the
//! Prometheus kind of metrics).
//!
//! A sampler loop reads the host every interval on a blocking thread and publishes a snapshot;
//! `GET /v1/stats` serves the latest one. CPU busy time is the difference between two samples
//! of `/proc/stat` divided by the interval's total ticks: a rate over a real interval, not the
//! average since boot that the book reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cube_core::Bytes;
use cube_core::stats::{CpuStats, DiskStats, LoadStats, MemoryStats, NodeStats};
use cube_rt::Ticker;
use futures_util::future::BoxFuture;
use jiff::Timestamp;
use procfs::{Current, CurrentSI};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::table::TaskTable;

/// One reading of the host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HostSnapshot {
    /// When it was read.
    pub collected_at: Timestamp,
    /// Memory.
    pub memory: MemoryStats,
    /// CPU over the last interval.
    pub cpu: CpuStats,
    /// Load averages.
    pub load: LoadStats,
    /// The data directory's filesystem.
    pub disk: DiskStats,
}

/// Cumulative CPU tick counters from one read of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTicks {
    /// Ticks spent busy (everything but idle and iowait).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// Busy fraction between two readings, in [0, 1]; 0 when no time passed.
fn busy_fraction(before: CpuTicks, after: CpuTicks) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let busy = after.busy.saturating_sub(before.busy).min(total);
    if total == 0 {
        return 0.0;
    }
    // Tick counts over one interval are far below 2^52, so these conversions are exact.
    busy as f64 / total as f64
}

fn read_cpu() -> Result<(CpuTicks, u32), procfs::ProcError> {
    let stats = procfs::KernelStats::current()?;
    let t = &stats.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    // Guest time is already counted in user/nice, so it is not added again.
    let busy = t.user
        + t.nice
        + t.system
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    let cores = u32::try_from(stats.cpu_time.len()).unwrap_or(u32::MAX);
    Ok((CpuTicks { busy, total: busy + idle }, cores))
}

/// Reads memory figures from `/proc/meminfo`.
fn read_memory() -> Result<MemoryStats, procfs::ProcError> {
    let m = procfs::Meminfo::current()?;
    let available = m.mem_available.unwrap_or(m.mem_free);
    Ok(MemoryStats {
        total_bytes: m.mem_total,
        available_bytes: available,
        used_bytes: m.mem_total.saturating_sub(available),
    })
}

fn read_load() -> Result<LoadStats, procfs::ProcError> {
    let l = procfs::LoadAverage::current()?;
    Ok(LoadStats { one: f64::from(l.one), five: f64::from(l.five), fifteen: f64::from(l.fifteen) })
}

/// Size and free space of the filesystem holding `path`.
fn read_disk(path: &Path) -> std::io::Result<DiskStats> {
    let s = rustix::fs::statvfs(path)?;
    Ok(DiskStats {
        path: path.display().to_string(),
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// Why the host could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file of `/proc` could not be read or parsed.
    #[error("cannot read {file}")]
    Proc {
        /// The file, e.g. `/proc/stat`.
        file: &'static str,
        /// What procfs reported.
        #[source]
        source: procfs::ProcError,
    },
    /// The data directory's filesystem could not be measured.
    #[error("cannot measure the filesystem of {}", path.display())]
    Disk {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The sampler's thread panicked (a bug).
    #[error("the host sampler panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

fn proc(file: &'static str) -> impl FnOnce(procfs::ProcError) -> HostError {
    move |source| HostError::Proc { file, source }
}

struct Sampler {
    data_dir: PathBuf,
    last: Option<(CpuTicks, std::time::Instant)>,
}

impl Sampler {
    fn sample(&mut self) -> Result<HostSnapshot, HostError> {
        let now = std::time::Instant::now();
        let (ticks, cores) = read_cpu().map_err(proc("/proc/stat"))?;
        let cpu = match self.last {
            Some((before, at)) => CpuStats {
                cores,
                busy_fraction: busy_fraction(before, ticks),
                interval_ms: u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX),
            },
            None => CpuStats { cores, busy_fraction: 0.0, interval_ms: 0 },
        };
        self.last = Some((ticks, now));
        Ok(HostSnapshot {
            collected_at: Timestamp::now(),
            memory: read_memory().map_err(proc("/proc/meminfo"))?,
            cpu,
            load: read_load().map_err(proc("/proc/loadavg"))?,
            disk: read_disk(&self.data_dir)
                .map_err(|source| HostError::Disk { path: self.data_dir.clone(), source })?,
        })
    }
}

/// Where a worker's host figures come from.
#[derive(Clone, Debug)]
pub(crate) enum HostSource {
    /// Read from `/proc` every interval.
    Sampled(Duration),
    /// Always these (tests: the figures of a machine that does not exist).
    #[cfg_attr(not(any(test, feature = "fake-driver")), allow(dead_code))]
    Fixed(HostSnapshot),
}

/// Takes a first reading and returns the receiver, which always holds the latest snapshot, and
/// the loop that keeps it fresh (to spawn; it ends when `shutdown` is cancelled).
pub(crate) async fn start(
    source: HostSource,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) -> Result<(watch::Receiver<HostSnapshot>, BoxFuture<'static, ()>), HostError> {
    let interval = match source {
        HostSource::Fixed(snapshot) => {
            // Nothing refreshes fixed figures; a receiver keeps the value after its sender.
            let (_, rx) = watch::channel(snapshot);
            return Ok((rx, Box::pin(std::future::ready(()))));
        }
        HostSource::Sampled(interval) => interval,
    };
    let mut sampler = Sampler { data_dir, last: None };
    let (first, mut sampler) = tokio::task::spawn_blocking(move || (sampler.sample(), sampler))
        .await
        .map_err(HostError::Panicked)?;
    let (tx, rx) = watch::channel(first?);
    let refresh = Box::pin(async move {
        let mut ticker = Ticker::new(interval, shutdown);
        ticker.tick().await; // The first tick is immediate; we just sampled.
        while ticker.tick().await {
            let result = tokio::task::spawn_blocking(move || (sampler.sample(), sampler)).await;
            match result {
                Ok((Ok(snapshot), s)) => {
                    sampler = s;
                    tx.send_replace(snapshot);
                }
                Ok((Err(e), s)) => {
                    sampler = s;
                    tracing::warn!(error = %cube_core::Chain(&e), "reading host metrics failed");
                }
                Err(e) => {
                    tracing::error!(error = %cube_core::Chain(&e), "host metrics sampler died");
                    return;
                }
            }
        }
    });
    Ok((rx, refresh))
}

/// The node's stats: host figures plus what its tasks hold.
pub(crate) fn node_stats(host: &HostSnapshot, table: &TaskTable) -> NodeStats {
    let (tasks, reserved) = table.usage();
    NodeStats {
        collected_at: host.collected_at,
        memory: host.memory,
        cpu: host.cpu,
        load: host.load,
        disk: host.disk.clone(),
        tasks,
        reserved,
    }
}

impl HostSnapshot {
    /// An idle machine with `cores` CPUs, `memory` and `disk`, read at `at`.
    #[cfg_attr(not(any(test, feature = "fake-driver")), allow(dead_code))]
    pub(crate) fn idle(cores: u32, memory: Bytes, disk: Bytes, at: Timestamp) -> Self {
        Self {
            collected_at: at,
            memory: MemoryStats {
                total_bytes: memory.get(),
                available_bytes: memory.get(),
                used_bytes: 0,
            },
            cpu: CpuStats { cores, busy_fraction: 0.0, interval_ms: 1000 },
            load: LoadStats { one: 0.0, five: 0.0, fifteen: 0.0 },
            disk: DiskStats { path: "/".into(), total_bytes: disk.get(), free_bytes: disk.get() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_fraction_is_a_rate_between_samples() {
        let a = CpuTicks { busy: 1_000, total: 10_000 };
        let b = CpuTicks { busy: 1_150, total: 10_200 };
        assert!((busy_fraction(a, b) - 0.75).abs() < 1e-9);
        assert_eq!(busy_fraction(a, a), 0.0, "no time passed");
        // Counters never run backwards, but a bogus reading must not yield a fraction > 1.
        assert_eq!(busy_fraction(a, CpuTicks { busy: 5_000, total: 10_100 }), 1.0);
    }

    #[test]
    fn host_reads_are_consistent() {
        let m = read_memory().unwrap();
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
        assert_eq!(m.used_bytes, m.total_bytes - m.available_bytes);
        let d = read_disk(Path::new("/")).unwrap();
        assert!(d.total_bytes >= d.free_bytes && d.total_bytes > 0);
        let (ticks, cores) = read_cpu().unwrap();
        assert!(cores >= 1 && ticks.total >= ticks.busy);
    }
}

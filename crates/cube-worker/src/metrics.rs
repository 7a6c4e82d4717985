//! Host metrics from `/proc` and `statvfs`.
//!
//! A sampler loop reads the host every interval on a blocking thread and publishes a snapshot;
//! `GET /v1/stats` serves the latest one. CPU busy time is the difference between two samples
//! of `/proc/stat` divided by the interval's total ticks: a rate over a real interval, not the
//! average since boot that the book reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cube_api::types::{CpuStats, DiskStats, LoadStats, MemoryStats};
use jiff::Timestamp;
use procfs::{Current, CurrentSI};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One reading of the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSnapshot {
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
pub struct CpuTicks {
    /// Ticks spent busy (everything but idle and iowait).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// Busy fraction between two readings, in [0, 1]; 0 when no time passed.
pub fn busy_fraction(before: CpuTicks, after: CpuTicks) -> f64 {
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
pub fn read_memory() -> Result<MemoryStats, procfs::ProcError> {
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
pub fn read_disk(path: &Path) -> std::io::Result<DiskStats> {
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

/// Takes a first reading and starts the sampler loop, which stops when `shutdown` is cancelled.
/// The receiver always holds the latest snapshot.
pub async fn start_sampler(
    data_dir: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<HostSnapshot>, HostError> {
    let mut sampler = Sampler { data_dir, last: None };
    let (first, mut sampler) = tokio::task::spawn_blocking(move || (sampler.sample(), sampler))
        .await
        .map_err(HostError::Panicked)?;
    let (tx, rx) = watch::channel(first?);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // The first tick is immediate; we just sampled.
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
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
    Ok(rx)
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

//! Output: human-readable lines on stdout, warnings on stderr, the JSON results file, and the
//! small statistics every benchmark reports.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// A line of the tool's own output.
#[allow(clippy::print_stdout)]
pub fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// A warning on stderr.
#[allow(clippy::print_stderr)]
pub fn warn(line: &str) {
    eprintln!("{line}");
}

/// Writes `value` as pretty JSON to `path` (creating its directory), if a path was given.
pub fn write_json(path: Option<&Path>, value: &serde_json::Value) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    say(&format!("results written to {}", path.display()));
    Ok(())
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises `samples` (any order).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ns: Vec<u128> = samples.iter().map(Duration::as_nanos).collect();
        ns.sort_unstable();
        let n = ns.len();
        if n == 0 {
            return Self::default();
        }
        let ms = |v: u128| v as f64 / 1e6;
        // Nearest-rank percentile.
        let pick = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            ms(ns[rank - 1])
        };
        let sum: u128 = ns.iter().sum();
        Self {
            n,
            min_ms: ms(ns[0]),
            p50_ms: pick(0.50),
            p90_ms: pick(0.90),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            max_ms: ms(ns[n - 1]),
            mean_ms: ms(sum) / n as f64,
        }
    }

    /// `p50 1.23 ms, p90 ..., p99 ..., max ...`.
    pub fn line(&self) -> String {
        format!(
            "n {}, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.n, self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Median of some numbers (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The current time, for results files.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

//! The worker's Prometheus metrics (`GET /metrics`): what its runners and drivers did, and
//! its tasks by state (read from the task table at each scrape). Every label takes one of a
//! fixed set of values; no label carries a task id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strum::VariantArray;

use cube_core::{DriverKind, TaskState};
use cube_http::metrics::HttpMetrics;

/// Labels of a workload start.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StartLabels {
    driver: &'static str,
    result: &'static str,
}

/// A `driver` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DriverLabel {
    driver: &'static str,
}

/// A `result` label: `ok` or `error` (`pass` or `fail` for checks).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    result: &'static str,
}

/// A `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn start_histogram() -> Histogram {
    // 1 ms to ~4 min: a process starts in milliseconds, an image pull may take minutes.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Health-check results, shared with every [`crate::health::Monitor`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Checks(Family<ResultLabel, Counter>);

impl Checks {
    /// Counts one probe.
    pub(crate) fn record(&self, passed: bool) {
        let result = if passed { "pass" } else { "fail" };
        self.0.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Image pulls, shared with the docker driver.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pulls(Family<ResultLabel, Counter>);

impl Pulls {
    /// Counts one pull.
    pub(crate) fn record(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.0.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Every metric of the worker.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests served by the API.
    pub http: HttpMetrics,
    starts: Family<StartLabels, Counter>,
    start_seconds: Family<DriverLabel, Histogram, fn() -> Histogram>,
    /// Restarts scheduled by the restart policy.
    pub restarts: Counter,
    /// Health-check results.
    pub checks: Checks,
    /// Image pulls.
    pub pulls: Pulls,
    tasks: Family<StateLabel, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let starts = Family::<StartLabels, Counter>::default();
        registry.register(
            "cube_worker_starts",
            "Workload starts, by driver and result",
            starts.clone(),
        );
        let start_seconds = Family::new_with_constructor(start_histogram as fn() -> Histogram);
        registry.register(
            "cube_worker_start_duration_seconds",
            "Time for a driver to start a workload (an image pull included)",
            start_seconds.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "cube_worker_restarts",
            "Restarts scheduled by restart policies",
            restarts.clone(),
        );
        let checks = Checks::default();
        registry.register(
            "cube_worker_health_checks",
            "Health probes, by result",
            checks.0.clone(),
        );
        let pulls = Pulls::default();
        registry.register("cube_worker_image_pulls", "Image pulls, by result", pulls.0.clone());
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register("cube_worker_tasks", "Tasks this worker holds, by state", tasks.clone());
        // Every label value written from the start: the series set never changes.
        for &driver in DriverKind::VARIANTS {
            let driver = driver.into();
            for result in ["ok", "error"] {
                drop(starts.get_or_create(&StartLabels { driver, result }));
            }
            drop(start_seconds.get_or_create(&DriverLabel { driver }));
        }
        for result in ["pass", "fail"] {
            drop(checks.0.get_or_create(&ResultLabel { result }));
        }
        for result in ["ok", "error"] {
            drop(pulls.0.get_or_create(&ResultLabel { result }));
        }
        Self { registry, http, starts, start_seconds, restarts, checks, pulls, tasks }
    }

    /// Records a start by `driver` that took `seconds`.
    pub(crate) fn started(&self, driver: DriverKind, ok: bool, seconds: f64) {
        let driver = driver.into();
        let result = if ok { "ok" } else { "error" };
        self.starts.get_or_create(&StartLabels { driver, result }).inc();
        self.start_seconds.get_or_create(&DriverLabel { driver }).observe(seconds);
    }

    /// The text of a scrape, with `tasks` (how many per state).
    pub(crate) fn render(&self, tasks: &[(TaskState, usize)]) -> String {
        for &state in TaskState::VARIANTS {
            let n = tasks.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.tasks.get_or_create(&StateLabel { state: state.into() }).set(n);
        }
        cube_http::metrics::encode(&self.registry)
    }
}

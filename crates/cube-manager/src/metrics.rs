//! The manager's Prometheus metrics (`GET /metrics`).
//!
//! Counters and histograms are updated where things happen; gauges of the state (tasks by
//! state, nodes, deployments, subscribers) are read from it at each scrape, so they can never
//! drift from it. Every label takes one of a fixed set of values: the series count does not
//! depend on the number of tasks, nodes or services.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strum::VariantArray;

use cube_core::deployment::DeploymentStatus;
use cube_core::{NodeState, TaskState};
use cube_http::metrics::HttpMetrics;

/// A `state` label (of a task or a node).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    state: &'static str,
}

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    result: &'static str,
}

/// A `status` label of a deployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    status: &'static str,
}

/// Every metric of the manager.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests served by the API.
    pub http: HttpMetrics,
    placements: Family<ResultLabel, Counter>,
    /// One placement pass (all the tasks it tried).
    pub scheduling: Histogram,
    /// Heartbeats received from workers.
    pub heartbeats: Counter,
    /// Nodes marked down for missing their heartbeats.
    pub missed: Counter,
    /// Dispatches retried after a failed attempt.
    pub dispatch_retries: Counter,
    /// Dispatches given up (the task is placed again).
    pub dispatch_failures: Counter,
    /// From handing a batch to the store to its being durable.
    pub commit: Histogram,
    /// Writes per committed batch.
    pub batch: Histogram,
    tasks: Family<StateLabel, Gauge>,
    pending: Gauge,
    nodes: Family<StateLabel, Gauge>,
    deployments: Family<StatusLabel, Gauge>,
    subscribers: Gauge,
    event_index: Gauge,
    exec_sessions: Gauge,
    acting: Gauge,
    epoch: Gauge,
    stale: Gauge,
}

/// What a scrape reads from the state.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Tasks per state.
    pub tasks: Vec<(TaskState, usize)>,
    /// Tasks waiting for a node.
    pub pending: usize,
    /// Nodes per state.
    pub nodes: Vec<(NodeState, usize)>,
    /// Deployments per status.
    pub deployments: Vec<(DeploymentStatus, usize)>,
    /// Event streams open.
    pub subscribers: usize,
    /// The newest durable event index.
    pub event_index: u64,
    /// Exec sessions open.
    pub exec_sessions: usize,
    /// Whether this manager acts (alone, or as the leader whose term holds).
    pub acting: bool,
    /// The leader's epoch, when this manager leads.
    pub epoch: Option<u64>,
    /// Whether a follower's copy may be behind (etcd unreachable).
    pub stale: bool,
}

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let placements = Family::<ResultLabel, Counter>::default();
        registry.register(
            "cube_placements",
            "Scheduler decisions: placed, or unplaceable for now",
            placements.clone(),
        );
        let scheduling = Histogram::new(exponential_buckets(0.00005, 4.0, 10));
        registry.register(
            "cube_scheduling_pass_duration_seconds",
            "Time of one placement pass over the waiting tasks",
            scheduling.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "cube_heartbeats",
            "Heartbeats received from workers",
            heartbeats.clone(),
        );
        let missed = Counter::default();
        registry.register(
            "cube_nodes_missed_heartbeats",
            "Times a node was marked down for missing its heartbeats for the TTL",
            missed.clone(),
        );
        let dispatch_retries = Counter::default();
        registry.register(
            "cube_dispatch_retries",
            "Attempts to hand a task to its node that failed and were retried",
            dispatch_retries.clone(),
        );
        let dispatch_failures = Counter::default();
        registry.register(
            "cube_dispatch_failures",
            "Tasks whose node could not be reached in time (placed again)",
            dispatch_failures.clone(),
        );
        let commit = Histogram::new(exponential_buckets(0.0001, 3.0, 10));
        registry.register(
            "cube_store_commit_duration_seconds",
            "From handing a change to the store to its being durable",
            commit.clone(),
        );
        let batch = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register(
            "cube_store_commit_writes",
            "Writes (records and events) per committed change",
            batch.clone(),
        );
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register("cube_tasks", "Tasks the manager knows, by state", tasks.clone());
        let pending = Gauge::default();
        registry.register("cube_tasks_pending", "Tasks waiting for a node", pending.clone());
        let nodes = Family::<StateLabel, Gauge>::default();
        registry.register("cube_nodes", "Nodes, by state", nodes.clone());
        let deployments = Family::<StatusLabel, Gauge>::default();
        registry.register("cube_deployments", "Deployments, by status", deployments.clone());
        let subscribers = Gauge::default();
        registry.register("cube_event_subscribers", "Event streams open", subscribers.clone());
        let event_index = Gauge::default();
        registry.register(
            "cube_event_index",
            "The newest durable change index",
            event_index.clone(),
        );
        // Both results from the first scrape, zero or not.
        for result in ["placed", "unplaceable"] {
            drop(placements.get_or_create(&ResultLabel { result }));
        }
        let exec_sessions = Gauge::default();
        registry.register(
            "cube_exec_sessions",
            "Exec sessions passing through the manager",
            exec_sessions.clone(),
        );
        let acting = Gauge::default();
        registry.register(
            "cube_manager_acting",
            "1 while this manager acts: alone on its store, or as the leader whose term holds",
            acting.clone(),
        );
        let epoch = Gauge::default();
        registry.register(
            "cube_manager_epoch",
            "The epoch of this manager's term as the leader (0 when it does not lead)",
            epoch.clone(),
        );
        let stale = Gauge::default();
        registry.register(
            "cube_manager_stale",
            "1 while a follower cannot reach etcd, so what it serves may be behind",
            stale.clone(),
        );
        Self {
            registry,
            http,
            placements,
            scheduling,
            heartbeats,
            missed,
            dispatch_retries,
            dispatch_failures,
            commit,
            batch,
            tasks,
            pending,
            nodes,
            deployments,
            subscribers,
            event_index,
            exec_sessions,
            acting,
            epoch,
            stale,
        }
    }

    /// Records a placement pass.
    pub(crate) fn placed(&self, placed: usize, unplaceable: usize) {
        self.placements.get_or_create(&ResultLabel { result: "placed" }).inc_by(placed as u64);
        self.placements
            .get_or_create(&ResultLabel { result: "unplaceable" })
            .inc_by(unplaceable as u64);
    }

    /// The text of a scrape, with the gauges set from `snapshot`. Every state, status and
    /// result is written, zero or not, so the set of series is the same in every scrape.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> String {
        for &state in TaskState::VARIANTS {
            let n = snapshot.tasks.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.tasks.get_or_create(&StateLabel { state: state.into() }).set(int(n));
        }
        for &state in NodeState::VARIANTS {
            let n = snapshot.nodes.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.nodes.get_or_create(&StateLabel { state: state.into() }).set(int(n));
        }
        for &status in DeploymentStatus::VARIANTS {
            let n = snapshot.deployments.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            self.deployments.get_or_create(&StatusLabel { status: status.into() }).set(int(n));
        }
        self.pending.set(int(snapshot.pending));
        self.subscribers.set(int(snapshot.subscribers));
        self.exec_sessions.set(int(snapshot.exec_sessions));
        self.event_index.set(i64::try_from(snapshot.event_index).unwrap_or(i64::MAX));
        self.acting.set(i64::from(snapshot.acting));
        self.epoch.set(snapshot.epoch.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
        self.stale.set(i64::from(snapshot.stale));
        cube_http::metrics::encode(&self.registry)
    }
}

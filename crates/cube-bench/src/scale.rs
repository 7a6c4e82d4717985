//! Scale: `cube-bench sim-nodes` (thousands of simulated nodes against one manager, or a
//! simulator serving an existing manager) and `cube-bench scale-up` (from nothing to N
//! containers running, the Cube side of the Swarm comparison).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cube_api::types::TaskFilter;
use cube_core::{DriverKind, NodeState, TaskId, TaskSpec, TaskState};
use futures_util::StreamExt;
use serde_json::json;

use crate::lab::{Lab, own_cpu_seconds};
use crate::latency::IMAGE;
use crate::load::{fill, wait_for};
use crate::out::{mib, say};
use crate::sim::SimCluster;

/// Options of `cube-bench sim-nodes`.
#[derive(Debug, Args)]
pub struct SimNodesArgs {
    /// Serve simulated nodes for this manager until interrupted (the simulator as a tool),
    /// instead of benchmarking a manager started here.
    #[arg(long)]
    pub manager: Option<String>,
    /// Simulated nodes; when benchmarking, one measurement per value (fresh manager each).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize])]
    pub nodes: Vec<usize>,
    /// Tasks submitted per measurement.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: u64,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Heartbeat interval the benchmark's manager asks of its nodes.
    #[arg(long, default_value = "1s", value_parser = cube_core::units::parse_duration)]
    pub heartbeat_interval: Duration,
    /// The benchmark's manager node TTL.
    #[arg(long, default_value = "5s", value_parser = cube_core::units::parse_duration)]
    pub node_ttl: Duration,
    /// The benchmark's manager scheduler.
    #[arg(long, default_value = "spread")]
    pub scheduler: String,
}

/// Runs `sim-nodes`; returns the JSON results (benchmark mode).
pub async fn sim_nodes(lab: &Lab, args: &SimNodesArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(url) = &args.manager {
        return serve(url, args.nodes.first().copied().unwrap_or(100)).await;
    }
    let mut rounds = Vec::new();
    for (i, &n) in args.nodes.iter().enumerate() {
        let hb = format!("{}ms", args.heartbeat_interval.as_millis());
        let ttl = format!("{}ms", args.node_ttl.as_millis());
        let manager = lab
            .manager(
                &format!("manager-{i}"),
                &["--heartbeat-interval", &hb, "--node-ttl", &ttl, "--scheduler", &args.scheduler],
            )
            .await?;
        let sim = SimCluster::start(&manager.url, n).await?;
        let registered = sim.register_time;
        wait_for(Duration::from_secs(60), Duration::from_millis(100), "nodes ready", || async {
            let nodes = manager.client.nodes().await.ok()?;
            (nodes.iter().filter(|x| x.state == NodeState::Ready).count() == n).then_some(())
        })
        .await?;
        // Cost of the nodes alone: their heartbeats over a few seconds.
        let window = Duration::from_secs(3);
        let (cpu0, beats0) =
            (manager.process.cpu_seconds()?, sim.counters.heartbeats.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        let idle_cpu = (manager.process.cpu_seconds()? - cpu0) / window.as_secs_f64();
        let beats = (sim.counters.heartbeats.load(Ordering::Relaxed) - beats0) as f64
            / window.as_secs_f64();
        let cpu0 = manager.process.cpu_seconds()?;
        let own0 = own_cpu_seconds();
        let (submit, running) =
            fill(&manager.url, &sim, args.tasks, args.tasks, args.clients).await?;
        let load_cpu = (manager.process.cpu_seconds()? - cpu0) / running.as_secs_f64();
        let own_cpu = (own_cpu_seconds() - own0) / running.as_secs_f64();
        let nodes = manager.client.nodes().await?;
        let down = nodes.iter().filter(|x| x.state == NodeState::Down).count();
        let rss = manager.process.rss_bytes()?;
        let errors = sim.counters.heartbeat_errors.load(Ordering::Relaxed);
        say(&format!(
            "sim-nodes: {n} nodes registered in {:.2} s ({:.0}/s); heartbeats {beats:.0}/s cost \
             the idle manager {:.0}% CPU",
            registered.as_secs_f64(),
            n as f64 / registered.as_secs_f64(),
            idle_cpu * 100.0
        ));
        say(&format!(
            "  {} tasks submitted in {:.2} s, all running after {:.2} s ({:.0} tasks/s end to \
             end); manager CPU {:.0}%, simulator+client CPU {:.0}%, RSS {:.1} MiB; {down} nodes \
             down, {errors} failed heartbeats",
            args.tasks,
            submit.as_secs_f64(),
            running.as_secs_f64(),
            args.tasks as f64 / running.as_secs_f64(),
            load_cpu * 100.0,
            own_cpu * 100.0,
            mib(rss),
        ));
        rounds.push(json!({
            "nodes": n,
            "register_s": registered.as_secs_f64(),
            "heartbeats_per_s": beats,
            "idle_manager_cpu_percent": idle_cpu * 100.0,
            "tasks": args.tasks,
            "submit_s": submit.as_secs_f64(),
            "all_running_s": running.as_secs_f64(),
            "running_per_s": args.tasks as f64 / running.as_secs_f64(),
            "manager_cpu_percent": load_cpu * 100.0,
            "bench_cpu_percent": own_cpu * 100.0,
            "manager_rss_mib": mib(rss),
            "nodes_down": down,
            "heartbeat_errors": errors,
        }));
        sim.stop().await;
    }
    Ok(json!({
        "bench": "sim-nodes",
        "heartbeat_interval_s": args.heartbeat_interval.as_secs_f64(),
        "node_ttl_s": args.node_ttl.as_secs_f64(),
        "scheduler": args.scheduler,
        "clients": args.clients,
        "rounds": rounds,
    }))
}

/// The simulator as a tool: registers `count` nodes with `manager` and serves them until
/// interrupted.
async fn serve(manager: &str, count: usize) -> anyhow::Result<serde_json::Value> {
    let sim = SimCluster::start(manager, count).await?;
    say(&format!(
        "{count} simulated nodes registered with {manager} in {:.2} s; serving until Ctrl-C \
         (benchmark tool: they accept tasks and report them running, nothing runs)",
        sim.register_time.as_secs_f64()
    ));
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let c = &sim.counters;
        say(&format!(
            "  accepted {}, running reported {}, stopped {}, heartbeats {} ({} failed)",
            c.accepted.load(Ordering::Relaxed),
            c.running_acked.load(Ordering::Relaxed),
            c.stopped_acked.load(Ordering::Relaxed),
            c.heartbeats.load(Ordering::Relaxed),
            c.heartbeat_errors.load(Ordering::Relaxed),
        ));
    }
    sim.stop().await;
    Ok(json!({"bench": "sim-nodes", "served": count}))
}

/// Options of `cube-bench scale-up`.
#[derive(Debug, Args)]
pub struct ScaleUpArgs {
    /// Containers to run.
    #[arg(long)]
    pub tasks: usize,
    /// Interval of the polls for "all running" (the Swarm side polls as often).
    #[arg(long, default_value = "100ms", value_parser = cube_core::units::parse_duration)]
    pub poll: Duration,
    /// Submits in flight at once.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
}

/// Runs `scale-up`: from nothing (no manager, no worker) to `tasks` containers of the test
/// image running `sleep 3600`, timed; then stops them through the API.
pub async fn scale_up(lab: &Lab, args: &ScaleUpArgs) -> anyhow::Result<serde_json::Value> {
    let spec: TaskSpec = serde_json::from_value(json!({
        "name": "scale", "driver": "docker", "image": IMAGE, "command": "sleep", "args": ["3600"],
        "stop_grace": "2s"
    }))?;
    let began = Instant::now();
    let manager = lab.manager("manager", &[]).await?;
    let worker = lab.worker(&manager, "w1", &[]).await?;
    let client = &manager.client;
    let node = wait_for(Duration::from_secs(20), Duration::from_millis(10), "the node", || async {
        client.nodes().await.ok()?.into_iter().find(|n| n.id == worker.node_id)
    })
    .await?;
    if !node.drivers.contains(&DriverKind::Docker) {
        bail!("the worker has no docker driver: no Docker engine answers");
    }
    let up = began.elapsed();
    let results: Vec<_> = futures_util::stream::iter(0..args.tasks)
        .map(|_| client.submit(None, &spec))
        .buffer_unordered(args.clients.max(1))
        .collect()
        .await;
    let mut ids: Vec<TaskId> = Vec::with_capacity(args.tasks);
    for r in results {
        ids.push(r.context("submit")?.task.id);
    }
    let filter = TaskFilter { state: Some(TaskState::Running), node: None };
    let timeout = Duration::from_secs(120 + 2 * args.tasks as u64);
    wait_for(timeout, args.poll, "all containers running", || async {
        (client.tasks_filtered(&filter).await.ok()?.len() == args.tasks).then_some(())
    })
    .await?;
    let seconds = began.elapsed().as_secs_f64();
    say(&format!(
        "scale-up: {} containers running {seconds:.2} s after starting from nothing (manager and \
         worker up after {:.2} s)",
        args.tasks,
        up.as_secs_f64()
    ));
    // Stop them through the API: the worker stops and removes them a few at a time.
    let stops: Vec<_> = futures_util::stream::iter(ids.iter().copied())
        .map(|id| client.stop(id))
        .buffer_unordered(8)
        .collect()
        .await;
    for s in stops {
        s.context("stop")?;
    }
    wait_for(
        Duration::from_secs(300),
        Duration::from_millis(200),
        "containers stopped",
        || async {
            let tasks = client.tasks().await.ok()?;
            tasks.iter().all(|t| t.state.is_terminal()).then_some(())
        },
    )
    .await?;
    drop(worker);
    say(&format!("RESULT seconds={seconds:.3}"));
    Ok(json!({"bench": "scale-up", "tasks": args.tasks, "seconds": seconds,
              "cluster_up_s": up.as_secs_f64()}))
}

//! `cube-bench rollout`: a service of N instances on one real worker is updated (an
//! environment variable changes) and the rollout is timed from the `PUT` to the deployment's
//! `successful`, with the number of healthy instances sampled every 100 ms. From the instances'
//! own histories: how long each took to start (placed → running, what the node spends), and so
//! what Cube itself adds per batch beyond that.
//!
//! `--driver process`: `sleep` instances without a check, `min_healthy_time = 0`: the rollout's
//! pure cost. `--driver docker`: the busybox httpd with an HTTP check, the Cube side of
//! `scripts/bench-swarm-rollout.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cube_core::deployment::DeploymentStatus;
use cube_core::service::ServiceSpec;
use cube_core::{EventKind, Trigger};
use serde_json::json;

use crate::lab::Lab;
use crate::latency::IMAGE;
use crate::load::wait_for;
use crate::out::{median, say};

/// Options of `cube-bench rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Instances of the service.
    #[arg(long, default_value_t = 10)]
    pub replicas: u32,
    /// Instances replaced at once (`max_surge`).
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// `process` (sleep, no check) or `docker` (busybox httpd with an HTTP check).
    #[arg(long, default_value = "process")]
    pub driver: String,
    /// Repetitions (each one more update of the same service).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn spec(args: &RolloutArgs, version: usize) -> anyhow::Result<ServiceSpec> {
    let task = match args.driver.as_str() {
        "process" => json!({"name": "web", "driver": "process", "command": "sleep",
            "args": ["3600"], "env": {"V": version.to_string()}, "stop_grace": "1s"}),
        "docker" => json!({"name": "web", "driver": "docker", "image": IMAGE, "command": "httpd",
            "args": ["-f", "-p", "80", "-h", "/www"], "env": {"V": version.to_string()},
            "stop_grace": "1s", "ports": [{"container": 80}],
            "resources": {"memory": "16MiB"},
            "health": {"type": "http", "port": 80, "path": "/", "interval": "1s",
                       "timeout": "1s", "failure_threshold": 3}}),
        other => bail!("unknown driver {other:?}: process or docker"),
    };
    Ok(serde_json::from_value(json!({
        "name": "web", "count": args.replicas, "task": task,
        "update": {"max_surge": args.parallel, "max_unavailable": 0, "min_healthy_time": "0s",
                   "healthy_deadline": "2m", "progress_deadline": "5m"}
    }))?)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &RolloutArgs) -> anyhow::Result<serde_json::Value> {
    say(&format!(
        "rollout: {} {} instances, {} at a time start-first, min_healthy_time 0",
        args.replicas, args.driver, args.parallel
    ));
    let manager = lab.manager("manager", &[]).await?;
    let worker = lab.worker(&manager, "w1", &[]).await?;
    let client = manager.client.clone();
    wait_for(Duration::from_secs(20), Duration::from_millis(10), "the node", || async {
        client.nodes().await.ok()?.into_iter().find(|n| n.id == worker.node_id)
    })
    .await?;
    client.put_service(&spec(args, 0)?, None).await.context("create the service")?;
    settle(&client, Duration::from_secs(120)).await?;

    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let fewest = Arc::new(AtomicU32::new(u32::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (client, fewest, stop) = (client.clone(), Arc::clone(&fewest), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut samples = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Ok(s) = client.service("web").await {
                        fewest.fetch_min(s.instances.healthy, Ordering::Relaxed);
                        samples += 1;
                    }
                }
                samples
            })
        };
        let began = Instant::now();
        let (view, _) = client.put_service(&spec(args, run)?, None).await.context("update")?;
        let deployment = view.deployment.context("no deployment")?.id;
        let d =
            wait_for(Duration::from_secs(600), Duration::from_millis(2), "the rollout", || async {
                let d = client.deployment(deployment).await.ok()?;
                d.status.is_terminal().then_some(d)
            })
            .await?;
        let seconds = began.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.await.unwrap_or(0);
        if d.status != DeploymentStatus::Successful {
            bail!("the rollout ended {}: {}", d.status, d.description);
        }
        // What the node spent starting each new instance: placed -> running.
        let tasks = client.tasks().await?;
        let starts: Vec<f64> = tasks
            .iter()
            .filter(|t| t.instance.as_ref().is_some_and(|i| i.version == view.version))
            .filter_map(|t| {
                let at = |trigger: Trigger| {
                    t.events.iter().find(|e| e.kind == EventKind::Transition(trigger)).map(|e| e.at)
                };
                let (placed, running) = (at(Trigger::Place)?, at(Trigger::Started)?);
                Some(running.duration_since(placed).as_secs_f64())
            })
            .collect();
        let batches = args.replicas.div_ceil(args.parallel.max(1));
        let start = median(&starts);
        let per_batch = seconds / f64::from(batches);
        let cost_ms = (per_batch - start) * 1000.0;
        let fewest = fewest.load(Ordering::Relaxed);
        say(&format!(
            "  run {run}: {seconds:.3} s for {batches} batches ({:.0} ms each: {:.0} ms the \
             instance's start, {cost_ms:.0} ms Cube's own); fewest healthy in {samples} samples: \
             {fewest}",
            per_batch * 1000.0,
            start * 1000.0
        ));
        runs.push(json!({"seconds": seconds, "batches": batches, "start_ms": start * 1000.0,
                         "cost_per_batch_ms": cost_ms, "samples": samples,
                         "fewest_healthy": fewest}));
        settle(&client, Duration::from_secs(60)).await?;
    }
    client.remove_service("web").await.context("remove the service")?;
    wait_for(Duration::from_secs(120), Duration::from_millis(100), "instances stopped", || async {
        let tasks = client.tasks().await.ok()?;
        tasks.iter().all(|t| t.state.is_terminal()).then_some(())
    })
    .await?;
    drop(worker);
    let med = |key: &str| median(&runs.iter().filter_map(|r| r[key].as_f64()).collect::<Vec<_>>());
    let fewest = runs.iter().filter_map(|r| r["fewest_healthy"].as_u64()).min().unwrap_or(0);
    say(&format!(
        "RESULT seconds={:.3} cost_per_batch_ms={:.1} fewest_healthy={fewest}",
        med("seconds"),
        med("cost_per_batch_ms")
    ));
    Ok(json!({
        "bench": "rollout", "driver": args.driver, "replicas": args.replicas,
        "parallel": args.parallel, "runs": runs, "median_seconds": med("seconds"),
        "median_cost_per_batch_ms": med("cost_per_batch_ms"), "median_start_ms": med("start_ms"),
        "fewest_healthy": fewest,
    }))
}

/// Waits until the service's deployment has ended and every old instance has stopped.
async fn settle(client: &cube_http::client::Client, within: Duration) -> anyhow::Result<()> {
    wait_for(within, Duration::from_millis(10), "the service settled", || async {
        let s = client.service("web").await.ok()?;
        let done = s.deployment.as_ref()?.status == DeploymentStatus::Successful
            && s.instances.running == s.instances.desired;
        let tasks = client.tasks().await.ok()?;
        let stopping = tasks
            .iter()
            .any(|t| t.desired_state == cube_core::DesiredState::Stopped && !t.state.is_terminal());
        (done && !stopping).then_some(())
    })
    .await
}

//! `cube-bench failover`: three real workers; the one running every task is killed with
//! SIGKILL. Measured from the kill: the node marked `down` (detect) and every task running on
//! another node (replaced). Then the killed worker is started again and the time until the
//! manager has fenced (stopped) its old copies is measured, and leftover copies are counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use cube_core::{DriverHandle, DriverKind, NodeState, TaskId, TaskSpec, TaskState};
use serde_json::json;

use crate::lab::{Lab, alive};
use crate::latency::IMAGE;
use crate::load::wait_for;
use crate::out::{median, say};

/// Options of `cube-bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Tasks on the worker that is killed.
    #[arg(long, default_value_t = 30)]
    pub tasks: usize,
    /// Driver of the tasks: process or docker.
    #[arg(long, default_value = "process")]
    pub driver: String,
    /// The manager's node TTL (a node silent this long is down).
    #[arg(long, default_value = "5s", value_parser = cube_core::units::parse_duration)]
    pub node_ttl: Duration,
    /// The manager's heartbeat interval.
    #[arg(long, default_value = "1s", value_parser = cube_core::units::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Repetitions (each on a fresh cluster).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

fn spec(driver: DriverKind, i: usize) -> anyhow::Result<TaskSpec> {
    let mut v = json!({"name": format!("f{i}"), "driver": driver, "command": "sleep",
                       "args": ["3600"], "stop_grace": "2s"});
    if driver == DriverKind::Docker {
        v["image"] = json!(IMAGE);
    }
    Ok(serde_json::from_value(v)?)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &FailoverArgs) -> anyhow::Result<serde_json::Value> {
    let driver = match args.driver.as_str() {
        "process" => DriverKind::Process,
        "docker" => DriverKind::Docker,
        other => bail!("unknown driver {other:?}: process or docker"),
    };
    say(&format!(
        "failover: {} {driver} tasks on a worker killed with SIGKILL; node TTL {:?}, heartbeat \
         every {:?}",
        args.tasks, args.node_ttl, args.heartbeat_interval
    ));
    let mut runs = Vec::new();
    for run in 0..args.runs {
        runs.push(one_run(lab, args, driver, run).await?);
    }
    let med = |key: &str| median(&runs.iter().filter_map(|r| r[key].as_f64()).collect::<Vec<_>>());
    Ok(json!({
        "bench": "failover",
        "driver": driver,
        "tasks": args.tasks,
        "node_ttl_s": args.node_ttl.as_secs_f64(),
        "heartbeat_interval_s": args.heartbeat_interval.as_secs_f64(),
        "runs": runs,
        "median_detect_s": med("detect_s"),
        "median_replaced_s": med("replaced_s"),
        "median_fenced_s": med("fenced_s"),
    }))
}

async fn one_run(
    lab: &Lab,
    args: &FailoverArgs,
    driver: DriverKind,
    run: usize,
) -> anyhow::Result<serde_json::Value> {
    let ttl = format!("{}ms", args.node_ttl.as_millis());
    let hb = format!("{}ms", args.heartbeat_interval.as_millis());
    let manager = lab
        .manager(
            &format!("manager-{run}"),
            &["--scheduler", "spread", "--node-ttl", &ttl, "--heartbeat-interval", &hb],
        )
        .await?;
    let client = &manager.client;
    let mut victim = lab.worker(&manager, &format!("victim-{run}"), &[]).await?;
    let mut ids = Vec::new();
    for i in 0..args.tasks {
        ids.push(client.submit(None, &spec(driver, i)?).await?.task.id);
    }
    let timeout = Duration::from_secs(30 + args.tasks as u64);
    let tasks = wait_for(timeout, Duration::from_millis(50), "all tasks running", || async {
        let tasks = client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == args.tasks)
            .then_some(tasks)
    })
    .await?;
    let old: HashMap<TaskId, Option<DriverHandle>> =
        tasks.iter().map(|t| (t.id, t.handle.clone())).collect();
    let _w2 = lab.worker(&manager, &format!("w2-{run}"), &[]).await?;
    let _w3 = lab.worker(&manager, &format!("w3-{run}"), &[]).await?;
    wait_for(Duration::from_secs(20), Duration::from_millis(50), "three nodes ready", || async {
        let nodes = client.nodes().await.ok()?;
        (nodes.iter().filter(|n| n.state == NodeState::Ready && n.stats.is_some()).count() == 3)
            .then_some(())
    })
    .await?;

    let victim_id = victim.node_id;
    let killed = Instant::now();
    victim.kill9();
    let mut detect = None;
    let deadline = killed + args.node_ttl * 3 + Duration::from_secs(60);
    let replaced = loop {
        if detect.is_none()
            && client.node(&victim_id.to_string()).await.is_ok_and(|n| n.state == NodeState::Down)
        {
            detect = Some(killed.elapsed());
        }
        if let Ok(tasks) = client.tasks().await {
            let elsewhere = tasks
                .iter()
                .filter(|t| t.state == TaskState::Running && t.node != Some(victim_id))
                .count();
            if elsewhere == args.tasks {
                break killed.elapsed();
            }
        }
        if Instant::now() > deadline {
            bail!("the tasks were not running elsewhere {:?} after the kill", deadline - killed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detect = detect.unwrap_or(replaced);
    say(&format!(
        "  run {}: node down after {:.2} s; all {} tasks running elsewhere after {:.2} s",
        run + 1,
        detect.as_secs_f64(),
        args.tasks,
        replaced.as_secs_f64()
    ));

    // The victim returns: its old copies must be stopped (fencing).
    let back = Instant::now();
    victim.restart(lab.bin())?;
    let old_copy_alive = |h: &Option<DriverHandle>| match h {
        Some(DriverHandle::Process { pid, .. }) => alive(*pid),
        Some(DriverHandle::Container { id }) => std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", id])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true"),
        None => false,
    };
    let fenced =
        wait_for(Duration::from_secs(60), Duration::from_millis(50), "fencing", || async {
            (!old.values().any(old_copy_alive)).then(|| back.elapsed())
        })
        .await?;
    let tasks = client.tasks().await?;
    let running = tasks.iter().filter(|t| t.state == TaskState::Running).count();
    let leftover = old.values().filter(|h| old_copy_alive(h)).count();
    say(&format!(
        "      victim restarted: old copies stopped after {:.2} s; {running} tasks running, \
         {leftover} duplicate copies",
        fenced.as_secs_f64()
    ));

    // Stop everything through the API, so containers go the way the engine likes.
    for id in &ids {
        client.stop(*id).await?;
    }
    wait_for(Duration::from_secs(120), Duration::from_millis(100), "tasks to stop", || async {
        let tasks = client.tasks().await.ok()?;
        tasks.iter().all(|t| t.state.is_terminal()).then_some(())
    })
    .await?;
    Ok(json!({
        "detect_s": detect.as_secs_f64(),
        "replaced_s": replaced.as_secs_f64(),
        "fenced_s": fenced.as_secs_f64(),
        "running_after": running,
        "duplicates": leftover,
    }))
}

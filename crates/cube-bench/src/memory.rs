//! `cube-bench memory`: the manager's resident memory (`VmRSS`) idle, then with 10k and 100k
//! tasks placed on simulated nodes and reported running (the realistic record: placement
//! explanation, history, node), and the size of its store on disk.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::lab::{Lab, Manager};
use crate::load::fill;
use crate::out::{mib, say};
use crate::sim::SimCluster;

/// Options of `cube-bench memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Task counts at which to measure (cumulative).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000])]
    pub tasks: Vec<u64>,
    /// Simulated nodes the tasks are placed on.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Time left for the manager to settle before each reading.
    #[arg(long, default_value = "3s", value_parser = cube_core::units::parse_duration)]
    pub settle: Duration,
    /// Keep the manager's data directory here afterwards (for `cube-bench restart
    /// --data-dir`); it is emptied first.
    #[arg(long)]
    pub keep_store: Option<std::path::PathBuf>,
}

/// Size of the manager's redb file, in bytes.
pub fn store_bytes(manager: &Manager) -> u64 {
    std::fs::metadata(manager.data.join("manager.redb")).map(|m| m.len()).unwrap_or(0)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &MemoryArgs) -> anyhow::Result<serde_json::Value> {
    let mut manager = match &args.keep_store {
        Some(dir) => {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("cannot empty {}", dir.display()))?;
            }
            Manager::start(lab.bin(), dir, lab.path(), "manager", &[]).await?
        }
        None => lab.manager("manager", &[]).await?,
    };
    tokio::time::sleep(args.settle).await;
    let idle = manager.process.rss_bytes()?;
    say(&format!("memory: manager idle RSS {:.1} MiB", mib(idle)));
    let sim = SimCluster::start(&manager.url, args.nodes).await?;
    tokio::time::sleep(args.settle).await;
    let with_nodes = manager.process.rss_bytes()?;
    say(&format!("  with {} simulated nodes: {:.1} MiB", args.nodes, mib(with_nodes)));
    let mut points = Vec::new();
    let mut total = 0u64;
    let mut sample_id = None;
    for &target in &args.tasks {
        let (submit, running) =
            fill(&manager.url, &sim, target.saturating_sub(total), target, args.clients).await?;
        total = target;
        tokio::time::sleep(args.settle).await;
        let rss = manager.process.rss_bytes()?;
        let per_task = rss.saturating_sub(with_nodes) as f64 / total as f64;
        let store = store_bytes(&manager);
        say(&format!(
            "  {total:>7} tasks running: RSS {:.1} MiB ({per_task:.0} B/task above idle with \
             nodes), store {:.1} MiB; submitted in {:.1} s, all running after {:.1} s",
            mib(rss),
            mib(store),
            submit.as_secs_f64(),
            running.as_secs_f64()
        ));
        points.push(json!({
            "tasks": total,
            "rss_mib": mib(rss),
            "bytes_per_task": per_task,
            "store_mib": mib(store),
            "submit_s": submit.as_secs_f64(),
            "all_running_s": running.as_secs_f64(),
        }));
        if sample_id.is_none() {
            // One node's tasks, not the whole list: the reading must not disturb the next.
            let filter =
                cube_api::types::TaskFilter { state: None, node: sim.nodes.first().map(|n| n.id) };
            sample_id = manager.client.tasks_filtered(&filter).await?.first().map(|t| t.id);
        }
    }
    // Marginal cost between the first and last reading, free of fixed overheads.
    let marginal = match (points.first(), points.last()) {
        (Some(a), Some(b)) if args.tasks.len() > 1 => {
            let (ta, tb) = (a["tasks"].as_f64().unwrap_or(0.0), b["tasks"].as_f64().unwrap_or(0.0));
            let (ra, rb) =
                (a["rss_mib"].as_f64().unwrap_or(0.0), b["rss_mib"].as_f64().unwrap_or(0.0));
            Some((rb - ra) * 1024.0 * 1024.0 / (tb - ta))
        }
        _ => None,
    };
    if let Some(m) = marginal {
        say(&format!("  marginal: {m:.0} B/task"));
    }
    sim.stop().await;
    if let (Some(dir), Some(id)) = (&args.keep_store, sample_id) {
        // The restart benchmark asks for this task first.
        std::fs::write(dir.join("bench-task-id"), id.to_string())?;
        manager.kill9();
        say(&format!("  store kept in {} (manager killed with SIGKILL)", dir.display()));
    }
    Ok(json!({
        "bench": "memory",
        "nodes": args.nodes,
        "idle_rss_mib": mib(idle),
        "with_nodes_rss_mib": mib(with_nodes),
        "points": points,
        "marginal_bytes_per_task": marginal,
    }))
}

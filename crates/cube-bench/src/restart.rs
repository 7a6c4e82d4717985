//! `cube-bench restart`: a manager with 100k tasks in its redb store is killed with SIGKILL
//! and started again. Measured from the process spawn: its listening line (store opened and
//! checked, state loaded), the first `200` of `GET /v1/tasks/{id}`, and the last byte of a full
//! `GET /v1/tasks`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cube_core::TaskId;
use serde_json::json;

use crate::lab::{Lab, Manager};
use crate::load::fill;
use crate::memory::store_bytes;
use crate::out::{median, mib, say};
use crate::sim::SimCluster;

/// Options of `cube-bench restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Use the manager data directory left by `cube-bench memory --keep-store DIR` instead of
    /// filling a new one (it is reused in place).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Tasks to load into a new store (placed on simulated nodes), without `--data-dir`.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,
    /// Simulated nodes for a new store.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Restarts measured.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One restart.
#[derive(Debug)]
struct Timing {
    listening: Duration,
    first_get: Duration,
    full_list: Duration,
    listed: usize,
}

/// Times a manager that was just (re)started: first GET of `probe`, then the full list.
async fn time_start(manager: &Manager, probe: TaskId) -> anyhow::Result<Timing> {
    let listening = manager.listening - manager.spawned;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match manager.client.task(probe).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                bail!("GET /v1/tasks/{probe} never succeeded: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    let first_get = manager.spawned.elapsed();
    let http = cube_http::tls::http_client_builder().timeout(Duration::from_secs(300)).build()?;
    let body = http
        .get(format!("{}/v1/tasks", manager.url))
        .send()
        .await
        .context("GET /v1/tasks")?
        .error_for_status()?
        .bytes()
        .await?;
    let full_list = manager.spawned.elapsed();
    let listed = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)
        .context("GET /v1/tasks is not a JSON array")?
        .len();
    Ok(Timing { listening, first_get, full_list, listed })
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &RestartArgs) -> anyhow::Result<serde_json::Value> {
    let mut sim = None;
    let (mut manager, probe, first) = match &args.data_dir {
        Some(dir) => {
            let probe: TaskId = std::fs::read_to_string(dir.join("bench-task-id"))
                .with_context(|| {
                    format!(
                        "{} holds no store from `cube-bench memory --keep-store`",
                        dir.display()
                    )
                })?
                .trim()
                .parse()?;
            // This start is already a restart after a SIGKILL: measure it too.
            let manager = Manager::start(lab.bin(), dir, lab.path(), "manager", &[]).await?;
            let first = time_start(&manager, probe).await?;
            (manager, probe, Some(first))
        }
        None => {
            let manager = lab.manager("manager", &[]).await?;
            let s = SimCluster::start(&manager.url, args.nodes).await?;
            say(&format!(
                "restart: loading {} tasks onto {} simulated nodes",
                args.tasks, args.nodes
            ));
            fill(&manager.url, &s, args.tasks, args.tasks, 64).await?;
            let filter =
                cube_api::types::TaskFilter { state: None, node: s.nodes.first().map(|n| n.id) };
            let probe = manager
                .client
                .tasks_filtered(&filter)
                .await?
                .first()
                .map(|t| t.id)
                .context("no task on the first node")?;
            sim = Some(s);
            (manager, probe, None)
        }
    };
    let mut timings: Vec<Timing> = first.into_iter().collect();
    while timings.len() < args.runs {
        manager.kill9();
        manager.restart()?;
        timings.push(time_start(&manager, probe).await?);
    }
    let store = store_bytes(&manager);
    say(&format!(
        "restart: store {:.1} MiB, {} tasks",
        mib(store),
        timings.first().map_or(0, |t| t.listed)
    ));
    for (i, t) in timings.iter().enumerate() {
        say(&format!(
            "  run {}: listening after {:.2} s, first GET /v1/tasks/{{id}} after {:.2} s, full \
             GET /v1/tasks ({} tasks) after {:.2} s",
            i + 1,
            t.listening.as_secs_f64(),
            t.first_get.as_secs_f64(),
            t.listed,
            t.full_list.as_secs_f64()
        ));
    }
    let med = |f: fn(&Timing) -> Duration| {
        median(&timings.iter().map(|t| f(t).as_secs_f64()).collect::<Vec<_>>())
    };
    if let Some(s) = sim {
        s.stop().await;
    }
    Ok(json!({
        "bench": "restart",
        "tasks": timings.first().map_or(0, |t| t.listed),
        "store_mib": mib(store),
        "with_sim_nodes": args.data_dir.is_none(),
        "runs": timings.iter().map(|t| json!({
            "listening_s": t.listening.as_secs_f64(),
            "first_get_s": t.first_get.as_secs_f64(),
            "full_list_s": t.full_list.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "median_listening_s": med(|t| t.listening),
        "median_first_get_s": med(|t| t.first_get),
        "median_full_list_s": med(|t| t.full_list),
    }))
}

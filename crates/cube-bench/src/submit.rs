//! `cube-bench submit`: durable submits per second and their latency with 1, 8 and 64
//! concurrent clients, each client count against a fresh manager.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use serde_json::json;

use crate::lab::{Lab, own_cpu_seconds};
use crate::load::{Until, load_spec, submit_load};
use crate::out::{Summary, mib, say};
use crate::sim::SimCluster;

/// Options of `cube-bench submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Concurrent clients; one measurement per value, each against a fresh manager.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    pub clients: Vec<usize>,
    /// Measured time per client count.
    #[arg(long, default_value = "5s", value_parser = cube_core::units::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each measurement.
    #[arg(long, default_value = "1s", value_parser = cube_core::units::parse_duration)]
    pub warmup: Duration,
    /// The manager's store: `redb` (durable: every answer waits for an fsync) or `memory`.
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// Simulated nodes that take the tasks while the submits run (0: no node, tasks stay
    /// pending and the placement loop only records why).
    #[arg(long, default_value_t = 0)]
    pub sim_nodes: usize,
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &SubmitArgs) -> anyhow::Result<serde_json::Value> {
    let body = Bytes::from(serde_json::to_vec(&load_spec("submit-bench"))?);
    let mut rounds = Vec::new();
    say(&format!(
        "submit: POST /v1/tasks, store {}, {} simulated nodes, {:?} per client count",
        args.store, args.sim_nodes, args.duration
    ));
    for (i, &clients) in args.clients.iter().enumerate() {
        let manager = lab.manager(&format!("manager-{i}"), &["--store", &args.store]).await?;
        let sim = if args.sim_nodes > 0 {
            Some(SimCluster::start(&manager.url, args.sim_nodes).await?)
        } else {
            None
        };
        let warm = submit_load(&manager.url, body.clone(), clients, Until::Time(args.warmup)).await;
        if warm.ok == 0 {
            anyhow::bail!(
                "no submit succeeded during the warm-up: {}",
                warm.first_error.unwrap_or_default()
            );
        }
        let cpu_manager = manager.process.cpu_seconds()?;
        let cpu_self = own_cpu_seconds();
        let load =
            submit_load(&manager.url, body.clone(), clients, Until::Time(args.duration)).await;
        let manager_cpu = manager.process.cpu_seconds()? - cpu_manager;
        let client_cpu = own_cpu_seconds() - cpu_self;
        let seconds = load.elapsed.as_secs_f64();
        let rate = load.ok as f64 / seconds;
        let latency = Summary::of(&load.latencies);
        let rss = manager.process.rss_bytes()?;
        say(&format!(
            "  {clients:>3} clients: {rate:>8.0} submits/s ({} ok, {} errors in {seconds:.1} s); \
             {}; manager CPU {:.0}%, generator CPU {:.0}%",
            load.ok,
            load.errors,
            latency.line(),
            100.0 * manager_cpu / seconds,
            100.0 * client_cpu / seconds,
        ));
        if let Some(e) = &load.first_error {
            say(&format!("      first error: {e}"));
        }
        rounds.push(json!({
            "clients": clients,
            "submits": load.ok,
            "errors": load.errors,
            "seconds": seconds,
            "per_second": rate,
            "latency": latency,
            "manager_cpu_percent": 100.0 * manager_cpu / seconds,
            "generator_cpu_percent": 100.0 * client_cpu / seconds,
            "manager_rss_mib": mib(rss),
            "sim_running_acked": sim.as_ref().map(SimCluster::running_acked),
        }));
        if let Some(sim) = sim {
            sim.stop().await;
        }
    }
    Ok(json!({
        "bench": "submit",
        "store": args.store,
        "sim_nodes": args.sim_nodes,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "rounds": rounds,
    }))
}

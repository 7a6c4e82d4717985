//! `cube-bench`: Cube's benchmark harness. A benchmark tool, not part of the product.
//!
//! Every subcommand starts real `cube manager` and `cube worker` processes (the release binary)
//! on loopback ports chosen by the OS, each in its own scratch data directory, measures one
//! thing, prints what it saw and writes a JSON results file (`--json`). Processes, containers
//! labelled with the benchmark's node ids and process tasks are cleaned up even when a
//! benchmark fails. `report` turns the JSON files into the tables of `BENCHMARKS.md`.
//!
//! `scripts/bench.sh` runs the whole suite; see `BENCHMARKS.md`.

mod failover;
mod ha;
mod ingress;
mod lab;
mod latency;
mod load;
mod memory;
mod observe;
mod out;
mod report;
mod restart;
mod rollout;
mod scale;
mod security;
mod sim;
mod submit;
mod ui;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Cube's benchmark harness: a benchmark tool, not part of the product.
///
/// Starts real `cube` processes on loopback ports chosen by the OS, each in a scratch data
/// directory, measures, prints the figures and writes them as JSON. Everything it started is
/// cleaned up, even on failure. `scripts/bench.sh` runs the whole suite and rewrites the
/// tables of BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "cube-bench", version)]
struct Cli {
    /// The `cube` binary under test [default: `cube` next to this tool, i.e. target/release].
    #[arg(long, env = "CUBE_BIN", global = true)]
    cube_bin: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Durable submits per second and their latency with 1, 8 and 64 concurrent clients.
    Submit(submit::SubmitArgs),
    /// Submit -> running for the process and docker drivers, with a raw create+start floor.
    Latency(latency::LatencyArgs),
    /// Manager resident memory idle and with 10k and 100k tasks.
    Memory(memory::MemoryArgs),
    /// Time from a worker's kill -9 to all its tasks running elsewhere.
    Failover(failover::FailoverArgs),
    /// Manager restart time with 100k tasks in its store.
    Restart(restart::RestartArgs),
    /// A service of N instances updated start-first: rollout time, Cube's cost per batch, and
    /// the fewest healthy instances sampled every 100 ms.
    Rollout(rollout::RolloutArgs),
    /// Event delivery latency, idle subscribers' memory, a scrape with 10k tasks, exec times.
    Observe(observe::ObserveArgs),
    /// Managers on etcd: submits beside etcd's floor (1 and 3 members), leader failover and
    /// handover times, memory and restart with 100k tasks.
    Ha(ha::HaArgs),
    /// Node identity by mutual TLS and users' roles beside the shared cluster token: join
    /// time, submits per second, API and submit -> running latency.
    Security(security::SecurityArgs),
    /// The web UI with 1,000 services and 10,000 tasks: each page's server render time and
    /// size, and the time from a committed change to its appearance in an open page, measured
    /// in a headless Chromium.
    Ui(ui::UiArgs),
    /// Requests through Cube's ingress in each mode beside the host port and nginx (L4, L7),
    /// and memory per idle connection.
    Ingress(ingress::IngressArgs),
    /// Simulated nodes (a benchmark tool, like kwok): thousands of nodes that accept tasks
    /// without running them. Benchmarks a manager of its own, or serves `--manager URL`.
    SimNodes(scale::SimNodesArgs),
    /// From nothing to N containers running (the Cube side of scripts/bench-swarm.sh).
    ScaleUp(scale::ScaleUpArgs),
    /// Rewrites the tables of BENCHMARKS.md from the JSON results.
    Report(report::ReportArgs),
}

fn default_cube_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("cube")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/cube"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out::warn(&format!("error: cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&cli) => r,
            // Returning drops the benchmark's future, and with it every process and container
            // it started.
            () = interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Background tasks (simulated nodes, servers) must not outlive the cleanup.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            out::warn(&format!("error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Report(args) = &cli.command {
        return report::run(args);
    }
    let bin = cli.cube_bin.clone().unwrap_or_else(default_cube_bin);
    let mut lab = lab::Lab::new(&bin)?;
    let started = out::now();
    let mut results = match &cli.command {
        Command::Submit(a) => submit::run(&lab, a).await,
        Command::Latency(a) => latency::run(&lab, a).await,
        Command::Memory(a) => memory::run(&lab, a).await,
        Command::Failover(a) => failover::run(&lab, a).await,
        Command::Restart(a) => restart::run(&lab, a).await,
        Command::Rollout(a) => rollout::run(&lab, a).await,
        Command::Observe(a) => observe::run(&lab, a).await,
        Command::Ingress(a) => ingress::run(&lab, a).await,
        Command::Ha(a) => ha::run(&lab, a).await,
        Command::Security(a) => security::run(&lab, a).await,
        Command::Ui(a) => ui::run(&lab, a).await,
        Command::SimNodes(a) => scale::sim_nodes(&lab, a).await,
        Command::ScaleUp(a) => scale::scale_up(&lab, a).await,
        Command::Report(_) => unreachable_report(),
    }?;
    lab.finish();
    if let Some(obj) = results.as_object_mut() {
        obj.insert("started_at".into(), started.into());
        obj.insert("finished_at".into(), out::now().into());
        obj.insert("cube_bin".into(), bin.display().to_string().into());
    }
    out::write_json(cli.json.as_deref(), &results).context("writing results")
}

fn unreachable_report() -> anyhow::Result<serde_json::Value> {
    Err(anyhow::anyhow!("report is handled before any process starts"))
}

//! `cube-bench security`: what node identity by mutual TLS and role checks cost, side by side
//! with the same cluster on the shared cluster token, in the same run.
//!
//! Two setups, measured in turn (`--rounds` times each, interleaved, so a slow moment of the
//! machine hits both):
//!
//! - **token**: `cube manager --token T`; the worker joins with `--manager URL --token T` (plain
//!   HTTP both ways); the client sends the cluster token (no table lookup, no role check).
//! - **mtls+roles**: the same manager; the worker joins with `--join` and the join token (mutual
//!   TLS both ways); the client sends a user's `operate` token (digest lookup, role check).
//!
//! Each setup: durable submits per second with `--clients` clients before any node joined (the
//! tasks stay pending: the API's cost, not the scheduler's); `GET /v1/tasks` latency, sequential;
//! submit → running of a process task, sequential, which crosses the manager↔worker link twice
//! (dispatch, report). Join time: a fresh worker's spawn → its node `ready`, `--joins` times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use cube_core::{NodeState, TaskState};
use cube_http::client::Client;
use serde_json::json;

use crate::lab::{CubeProcess, Lab, Manager, own_cpu_seconds};
use crate::load::{Until, submit_load_as, wait_for};
use crate::out::{Summary, say};

/// Options of `cube-bench security`.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// Rounds of each setup, interleaved.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Fresh workers joined one after another for the join time.
    #[arg(long, default_value_t = 20)]
    pub joins: usize,
    /// Sequential `GET /v1/tasks` per round.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Sequential process tasks per round (submit → running).
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Concurrent clients of the submit measurement.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured submit time per round.
    #[arg(long, default_value = "5s", value_parser = cube_core::units::parse_duration)]
    pub duration: Duration,
}

const ADMIN: &str = "cube-bench-admin-token-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Token,
    Mtls,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Token => "token",
            Setup::Mtls => "mtls+roles",
        }
    }
}

/// What the manager printed before it listened.
fn printed(manager: &Manager, prefix: &str) -> anyhow::Result<String> {
    let log = std::fs::read_to_string(&manager.process.log)?;
    log.lines()
        .find_map(|l| l.split(prefix).nth(1))
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("the manager printed no `{prefix}` line"))
}

/// A worker started with `--join`; its node id from its data directory.
fn joined_worker(
    lab: &Lab,
    name: &str,
    cluster: &str,
    token: &str,
) -> anyhow::Result<(CubeProcess, String)> {
    let data: PathBuf = lab.path().join(name);
    let data_s = data.to_string_lossy().into_owned();
    let args: Vec<String> = [
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_s,
        "--name",
        name,
        "--join",
        cluster,
        "--token",
        token,
        "--driver",
        "process",
    ]
    .map(str::to_owned)
    .to_vec();
    let process = CubeProcess::spawn(lab.bin(), &args, &lab.path().join(format!("{name}.log")))?;
    let id = std::fs::read_to_string(Path::new(&data).join("node-id"))?.trim().to_owned();
    Ok((process, id))
}

async fn ready(client: &Client, node: &str) -> Option<()> {
    let nodes = client.nodes().await.ok()?;
    nodes.iter().any(|n| n.id.to_string() == node && n.state == NodeState::Ready).then_some(())
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &SecurityArgs) -> anyhow::Result<serde_json::Value> {
    say(&format!(
        "security: the cluster token beside mutual TLS + a user's role, {} rounds each",
        args.rounds
    ));
    let joins = join_times(lab, args).await?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        for setup in [Setup::Token, Setup::Mtls] {
            rounds.push(one_round(lab, args, setup, round).await?);
        }
    }
    Ok(json!({ "join": joins, "rounds": rounds }))
}

async fn join_times(lab: &Lab, args: &SecurityArgs) -> anyhow::Result<serde_json::Value> {
    let manager = lab.manager("join-manager", &["--token", ADMIN]).await?;
    let admin = manager.client.clone().with_token(Some(ADMIN.parse()?));
    let (token, cluster) =
        (printed(&manager, "worker join token: ")?, printed(&manager, "cluster port: ")?);
    let mut times = Vec::with_capacity(args.joins);
    for i in 0..args.joins {
        let began = Instant::now();
        let (mut worker, node) = joined_worker(lab, &format!("join-{i}"), &cluster, &token)?;
        wait_for(Duration::from_secs(10), Duration::from_millis(2), "the node ready", || {
            ready(&admin, &node)
        })
        .await?;
        times.push(began.elapsed());
        worker.kill9();
    }
    let summary = Summary::of(&times);
    say(&format!("  join (spawn -> node ready, {} workers): {}", args.joins, summary.line()));
    Ok(json!(summary))
}

async fn one_round(
    lab: &Lab,
    args: &SecurityArgs,
    setup: Setup,
    round: usize,
) -> anyhow::Result<serde_json::Value> {
    let name = format!("{}-{round}", setup.name().replace('+', "-"));
    let manager = lab.manager(&format!("{name}-manager"), &["--token", ADMIN]).await?;
    let admin = manager.client.clone().with_token(Some(ADMIN.parse()?));
    let bearer = match setup {
        Setup::Token => ADMIN.to_owned(),
        Setup::Mtls => {
            let request = cube_api::auth::TokenRequest {
                name: "bench".into(),
                role: cube_api::auth::Role::Operate,
                expires_in: None,
            };
            admin.create_token(&request).await?.secret
        }
    };
    let client = manager.client.clone().with_token(Some(bearer.parse()?));

    // Submits: no node yet, so the tasks stay pending.
    let pending = json!({
        "name": "pending", "driver": "process", "command": "sleep", "args": ["3600"],
        "resources": {"cpu": "10m", "memory": "8MiB"}
    });
    let body = Bytes::from(serde_json::to_vec(&pending)?);
    let warm = submit_load_as(
        &manager.url,
        Some(&bearer),
        body.clone(),
        args.clients,
        Until::Time(Duration::from_secs(1)),
    )
    .await;
    anyhow::ensure!(warm.ok > 0, "no submit succeeded: {}", warm.first_error.unwrap_or_default());
    let cpu = (manager.process.cpu_seconds()?, own_cpu_seconds());
    let load =
        submit_load_as(&manager.url, Some(&bearer), body, args.clients, Until::Time(args.duration))
            .await;
    let seconds = load.elapsed.as_secs_f64();
    let rate = load.ok as f64 / seconds;
    let manager_cpu = (manager.process.cpu_seconds()? - cpu.0) / seconds;
    let submits = Summary::of(&load.latencies);
    // Stop them, so the worker has nothing to take.
    for task in admin.tasks().await? {
        admin.stop(task.id).await?;
    }

    // A worker.
    // Either kind is killed when dropped, at the end of the round.
    let (_plain, _joined, node) = match setup {
        Setup::Token => {
            let w = lab.worker(&manager, &format!("{name}-worker"), &["--token", ADMIN]).await?;
            let node = w.node_id.to_string();
            (Some(w), None, node)
        }
        Setup::Mtls => {
            let (token, cluster) =
                (printed(&manager, "worker join token: ")?, printed(&manager, "cluster port: ")?);
            let (process, node) = joined_worker(lab, &format!("{name}-worker"), &cluster, &token)?;
            (None, Some(process), node)
        }
    };
    wait_for(Duration::from_secs(10), Duration::from_millis(5), "the node ready", || {
        ready(&admin, &node)
    })
    .await?;

    // Reads.
    let mut reads = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let began = Instant::now();
        client
            .tasks_filtered(&cube_api::types::TaskFilter {
                state: Some(TaskState::Running),
                node: None,
            })
            .await?;
        reads.push(began.elapsed());
    }
    let reads = Summary::of(&reads);

    // Submit -> running: dispatch to the worker and its report, over the link under test.
    let spec: cube_core::TaskSpec = serde_json::from_value(json!({
        "name": "probe", "driver": "process", "command": "sleep", "args": ["3600"],
        "resources": {"cpu": "10m", "memory": "8MiB"}
    }))?;
    let mut starts = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let began = Instant::now();
        let id = client.submit(None, &spec).await?.task.id;
        wait_for(Duration::from_secs(10), Duration::from_millis(1), "the task running", || {
            let client = client.clone();
            async move { (client.task(id).await.ok()?.state == TaskState::Running).then_some(()) }
        })
        .await?;
        starts.push(began.elapsed());
        client.stop(id).await?;
    }
    let starts = Summary::of(&starts);
    say(&format!(
        "  {:<10} round {round}: {rate:>6.0} submits/s ({} clients, manager CPU {:.0}%); \
         submit {}; GET {}; submit->running {}",
        setup.name(),
        args.clients,
        100.0 * manager_cpu,
        submits.line(),
        reads.line(),
        starts.line(),
    ));
    Ok(json!({
        "setup": setup.name(),
        "round": round,
        "clients": args.clients,
        "submits_per_s": rate,
        "submit": submits,
        "manager_cpu": manager_cpu,
        "get_tasks": reads,
        "submit_to_running": starts,
    }))
}

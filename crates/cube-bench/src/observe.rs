//! `cube-bench observe`: what watching and reaching a cluster costs.
//!
//! - **Events:** tasks submitted at a steady rate; for each, the time from its commit (the
//!   event's `at`, stamped when the change is handed to the store) to its `TaskSubmitted`
//!   event arriving at a subscriber on loopback.
//! - **Idle subscribers:** the manager's resident memory before and after opening N idle
//!   streams, per stream.
//! - **Scrapes:** `GET /metrics` of a manager holding 10,000 tasks: time and size.
//! - **Exec:** `cube exec ID -- true` for a process task and a container, and beside it the
//!   engine's own `docker exec CONTAINER true`, each run N times.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use cube_api::events::{EventType, StreamLine};
use cube_core::{DriverHandle, TaskSpec, TaskState};
use futures_util::StreamExt;
use serde_json::json;

use crate::lab::Lab;
use crate::latency::IMAGE;
use crate::load::wait_for;
use crate::out::{Summary, say, warn};

/// Options of `cube-bench observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Changes per second for the event latency.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of changes at that rate.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Idle subscribers opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Tasks the manager holds for the scrape figure.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Runs of each exec.
    #[arg(long, default_value_t = 30)]
    pub execs: usize,
    /// Skip the container exec (no engine).
    #[arg(long)]
    pub skip_docker: bool,
}

fn waiting_spec(i: usize) -> anyhow::Result<TaskSpec> {
    // No node has the label: the task stays pending, and every change is a submit.
    Ok(serde_json::from_value(json!({"name": format!("t{i}"), "driver": "process",
        "command": "sleep", "constraints": ["node.labels.zone == nowhere"]}))?)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &ObserveArgs) -> anyhow::Result<serde_json::Value> {
    let manager = lab.manager("manager", &[]).await?;
    let client = manager.client.clone();

    // Events: commit -> delivered, at a steady rate.
    say(&format!(
        "observe: {} changes/s for {} s, commit -> event latency",
        args.rate, args.seconds
    ));
    let total = (args.rate * args.seconds) as usize;
    let mut stream = client.events(None, &["Task".to_owned()]).await.context("subscribe")?;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            match stream.next().await {
                Some(Ok(StreamLine::Event(e))) if e.kind == EventType::TaskSubmitted => {
                    let lag = jiff::Timestamp::now().duration_since(e.at);
                    latencies.push(Duration::try_from(lag).unwrap_or_default());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::anyhow!("stream failed: {e}")),
                None => return Err(anyhow::anyhow!("stream ended")),
            }
        }
        Ok(latencies)
    });
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let client = client.clone();
        let spec = waiting_spec(i)?;
        inflight.spawn(async move { client.submit(None, &spec).await.map(|_| ()) });
    }
    while let Some(r) = inflight.join_next().await {
        r.context("a submit panicked")?.context("submit")?;
    }
    let sent_in = began.elapsed();
    let latencies = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("events did not all arrive")?
        .context("the reader panicked")??;
    let events = Summary::of(&latencies);
    let achieved = total as f64 / sent_in.as_secs_f64();
    say(&format!("  {achieved:.0} changes/s achieved; commit -> event: {}", events.line()));

    // Idle subscribers.
    say(&format!("observe: {} idle subscribers", args.subscribers));
    let before = manager.process.rss_bytes()?;
    let mut streams = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        streams.push(client.events(None, &[]).await.context("subscribe")?);
    }
    // Measured once the manager holds every one of them.
    let http = reqwest::Client::new();
    let want = format!("\ncube_event_subscribers {}\n", args.subscribers);
    wait_for(Duration::from_secs(30), Duration::from_millis(50), "every subscriber", || async {
        let text = http.get(format!("{}/metrics", manager.url)).send().await.ok()?;
        text.text().await.ok()?.contains(&want).then_some(())
    })
    .await?;
    let after = manager.process.rss_bytes()?;
    drop(streams);
    let per_subscriber = after.saturating_sub(before) as f64 / args.subscribers as f64;
    say(&format!(
        "  manager RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per subscriber",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_subscriber / 1024.0
    ));

    // A scrape with many tasks.
    let have = total;
    say(&format!("observe: scrape with {} tasks", args.tasks.max(have)));
    for chunk in (have..args.tasks).collect::<Vec<_>>().chunks(64) {
        let submits =
            chunk.iter().map(|i| {
                let client = client.clone();
                async move {
                    client.submit(None, &waiting_spec(*i)?).await.map(|_| ()).context("submit")
                }
            });
        for r in futures_util::future::join_all(submits).await {
            r?;
        }
    }
    let mut scrapes = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let text = http.get(format!("{}/metrics", manager.url)).send().await?.text().await?;
        scrapes.push(started.elapsed());
        bytes = text.len();
    }
    let scrape = Summary::of(&scrapes);
    say(&format!("  {} bytes; {}", bytes, scrape.line()));

    // Exec.
    let worker = lab.worker(&manager, "w1", &[]).await?;
    let node = worker.node_id;
    wait_for(Duration::from_secs(20), Duration::from_millis(10), "the node", || async {
        client.nodes().await.ok()?.into_iter().find(|n| n.id == node)
    })
    .await?;
    let process = start(
        &client,
        json!({"name": "p", "driver": "process", "command": "sleep",
        "args": ["600"]}),
    )
    .await?;
    let bin = lab.bin().to_owned();
    let url = Arc::new(manager.url.clone());
    let cube_exec = |task: String| {
        let (bin, url) = (bin.clone(), Arc::clone(&url));
        move || timed(Command::new(&bin).args(["--addr", &url, "exec", &task, "--", "true"]))
    };
    let process_exec = repeat(args.execs, cube_exec(process.0.clone())).await?;
    say(&format!("  cube exec (process): {}", process_exec.line()));
    let (container_exec, docker_exec) = if args.skip_docker {
        (None, None)
    } else {
        let container = start(
            &client,
            json!({"name": "c", "driver": "docker", "image": IMAGE,
            "command": "sleep", "args": ["600"], "stop_grace": "1s"}),
        )
        .await?;
        let Some(id) = container.1 else { anyhow::bail!("the container task has no container") };
        let cube = repeat(args.execs, cube_exec(container.0.clone())).await?;
        let docker =
            repeat(args.execs, move || timed(Command::new("docker").args(["exec", &id, "true"])))
                .await?;
        say(&format!("  cube exec (docker):  {}", cube.line()));
        say(&format!("  docker exec:         {}", docker.line()));
        client.stop(container.0.parse()?).await?;
        (Some(cube), Some(docker))
    };
    drop(worker);
    Ok(json!({
        "rate": args.rate,
        "achieved_rate": achieved,
        "events": events,
        "subscribers": args.subscribers,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_subscriber": per_subscriber,
        "scrape_tasks": args.tasks.max(have),
        "scrape": scrape,
        "scrape_bytes": bytes,
        "exec_process": process_exec,
        "exec_container": container_exec,
        "docker_exec": docker_exec,
    }))
}

/// Submits a task and waits for it to run: its id, and its container id if it has one.
async fn start(
    client: &cube_http::client::Client,
    spec: serde_json::Value,
) -> anyhow::Result<(String, Option<String>)> {
    let spec: TaskSpec = serde_json::from_value(spec)?;
    let id = client.submit(None, &spec).await?.task.id;
    let task = wait_for(Duration::from_secs(60), Duration::from_millis(20), "running", || async {
        let t = client.task(id).await.ok()?;
        (t.state == TaskState::Running).then_some(t)
    })
    .await?;
    let container = match task.handle {
        Some(DriverHandle::Container { id }) => Some(id),
        _ => None,
    };
    Ok((id.to_string(), container))
}

/// Runs a command to its end; how long it took (a failure is an error).
fn timed(command: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = command.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    let took = started.elapsed();
    if !status.success() {
        warn(&format!("{command:?} exited {status}"));
        anyhow::bail!("{command:?} failed");
    }
    Ok(took)
}

/// `n` runs of `f` on a blocking thread, one after the other.
async fn repeat<F>(n: usize, f: F) -> anyhow::Result<Summary>
where
    F: Fn() -> anyhow::Result<Duration> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let samples = (0..n).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Summary::of(&samples))
    })
    .await?
}

//! `cube-bench latency`: submit → running, as a client sees it, for the process driver and
//! the docker driver, with a raw create + start of the same image through the Engine API
//! (bollard), measured in the same run and interleaved with the Cube samples, as the floor.
//!
//! Each sample: send `POST /v1/tasks`, then poll `GET /v1/tasks/{id}` every `--poll` until it
//! says `running`. The task's own history splits the time into segments: the answer to the
//! submit (`ack`), waiting for placement (`queue`: created → placed, manager clock), handing
//! the task to its node and starting it (`start`: placed → running as the worker saw it), and
//! the report reaching the manager and the client's poll (`report`). Samples are sequential on
//! an idle one-node cluster; each task is stopped (and gone) before the next is sent.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StopContainerOptions,
};
use clap::Args;
use cube_api::types::{TaskFilter, TaskView};
use cube_core::{DriverKind, TaskId, TaskSpec, TaskState, Timestamp};
use cube_http::client::Client;
use serde_json::json;

use crate::lab::{Lab, docker_answers, process};
use crate::load::wait_for;
use crate::out::{Summary, say};

/// The image of every container benchmark.
pub const IMAGE: &str = "cube-test/busybox:latest";

/// Options of `cube-bench latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Sequential process-driver samples.
    #[arg(long, default_value_t = 200)]
    pub process_samples: usize,
    /// Process tasks submitted at once for the burst measurement (0 = skip).
    #[arg(long, default_value_t = 50)]
    pub burst: usize,
    /// Sequential docker-driver samples (each paired with one raw create + start).
    #[arg(long, default_value_t = 30)]
    pub docker_samples: usize,
    /// Skip the docker part.
    #[arg(long)]
    pub skip_docker: bool,
    /// Interval of the client's polls for `running`.
    #[arg(long, default_value = "1ms", value_parser = cube_core::units::parse_duration)]
    pub poll: Duration,
}

/// One submit → running measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    total: Duration,
    ack: Duration,
    queue: Duration,
    start: Duration,
    report: Duration,
}

fn between(a: Timestamp, b: Timestamp) -> Duration {
    Duration::from_secs_f64(b.duration_since(a).as_secs_f64().max(0.0))
}

fn process_spec(name: &str) -> anyhow::Result<TaskSpec> {
    Ok(serde_json::from_value(json!({
        "name": name, "driver": "process", "command": "sleep", "args": ["3600"],
        "stop_grace": "2s"
    }))?)
}

fn docker_spec(name: &str) -> anyhow::Result<TaskSpec> {
    Ok(serde_json::from_value(json!({
        "name": name, "driver": "docker", "image": IMAGE, "command": "sleep", "args": ["3600"],
        "stop_grace": "2s"
    }))?)
}

/// Submits `spec` and polls until it runs.
async fn measure(
    client: &Client,
    spec: &TaskSpec,
    poll: Duration,
) -> anyhow::Result<(TaskId, Sample)> {
    let t0 = Instant::now();
    let submitted = client.submit(None, spec).await?;
    let ack = t0.elapsed();
    let id = submitted.task.id;
    let deadline = t0 + Duration::from_secs(60);
    let task = loop {
        let t = client.task(id).await?;
        if t.state == TaskState::Running {
            break t;
        }
        if t.state.is_terminal() {
            bail!("task {id} ended {} before running: {}", t.state, t.reason.unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("task {id} not running after 60 s (state {})", t.state);
        }
        tokio::time::sleep(poll).await;
    };
    let total = t0.elapsed();
    let seen = Timestamp::now();
    let transition_to =
        |s: TaskState| task.events.iter().find(|e| e.to == s && e.from != e.to).map(|e| e.at);
    let placed = transition_to(TaskState::Scheduled).unwrap_or(task.created_at);
    let started = transition_to(TaskState::Running).unwrap_or(seen);
    Ok((
        id,
        Sample {
            total,
            ack,
            queue: between(task.created_at, placed),
            start: between(placed, started),
            report: between(started, seen),
        },
    ))
}

/// Stops a task and waits until it is finished (its workload gone).
async fn stop_and_wait(client: &Client, id: TaskId) -> anyhow::Result<()> {
    client.stop(id).await?;
    wait_for(Duration::from_secs(60), Duration::from_millis(5), "a task to stop", || async {
        client.task(id).await.ok()?.state.is_terminal().then_some(())
    })
    .await
}

fn segments(samples: &[Sample]) -> serde_json::Value {
    let pick = |f: fn(&Sample) -> Duration| Summary::of(&samples.iter().map(f).collect::<Vec<_>>());
    json!({
        "total": pick(|s| s.total),
        "ack": pick(|s| s.ack),
        "queue": pick(|s| s.queue),
        "start": pick(|s| s.start),
        "report": pick(|s| s.report),
    })
}

fn print_segments(label: &str, samples: &[Sample]) {
    let p50 =
        |f: fn(&Sample) -> Duration| Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).p50_ms;
    say(&format!(
        "  {label}: {}\n      p50 segments: ack {:.2} ms, queue {:.2} ms, start {:.2} ms, \
         report+poll {:.2} ms",
        Summary::of(&samples.iter().map(|s| s.total).collect::<Vec<_>>()).line(),
        p50(|s| s.ack),
        p50(|s| s.queue),
        p50(|s| s.start),
        p50(|s| s.report),
    ));
}

/// Removes the floor's containers (labelled `cube-bench=floor`) when dropped.
struct FloorContainers;

impl Drop for FloorContainers {
    fn drop(&mut self) {
        process::remove_containers("label=cube-bench=floor");
    }
}

/// Creates and starts a container of the same image and command as the Cube task, with the
/// options the docker driver uses (engine init, no restart policy, labels); returns the time
/// create + start took, then stops and removes it.
async fn floor_sample(docker: &Docker) -> anyhow::Result<Duration> {
    let name = format!("cube-bench-floor-{}", uuid::Uuid::now_v7().simple());
    let body = ContainerCreateBody {
        image: Some(IMAGE.to_owned()),
        cmd: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
        env: Some(vec!["CUBE_BENCH=floor".to_owned()]),
        labels: Some(HashMap::from([("cube-bench".to_owned(), "floor".to_owned())])),
        host_config: Some(HostConfig {
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions { name: Some(name), ..Default::default() };
    let t0 = Instant::now();
    let id = docker.create_container(Some(options), body).await.context("floor: create")?.id;
    docker.start_container(&id, None).await.context("floor: start")?;
    let took = t0.elapsed();
    let stop = StopContainerOptions { t: Some(2), signal: None };
    let _ = docker.stop_container(&id, Some(stop)).await;
    let remove = RemoveContainerOptions { force: true, ..Default::default() };
    docker.remove_container(&id, Some(remove)).await.context("floor: remove")?;
    Ok(took)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &LatencyArgs) -> anyhow::Result<serde_json::Value> {
    let manager = lab.manager("manager", &[]).await?;
    let worker = lab.worker(&manager, "w1", &[]).await?;
    let node = wait_for(Duration::from_secs(20), Duration::from_millis(20), "the node", || async {
        manager.client.nodes().await.ok()?.into_iter().find(|n| n.id == worker.node_id)
    })
    .await?;
    let client = &manager.client;
    say(&format!(
        "latency: submit -> running on an idle one-node cluster, polling every {:?}",
        args.poll
    ));

    // Process driver: warm up, then sequential samples.
    for i in 0..3 {
        let (id, _) = measure(client, &process_spec(&format!("warm{i}"))?, args.poll).await?;
        stop_and_wait(client, id).await?;
    }
    let mut process = Vec::with_capacity(args.process_samples);
    for i in 0..args.process_samples {
        let (id, s) = measure(client, &process_spec(&format!("p{i}"))?, args.poll).await?;
        process.push(s);
        stop_and_wait(client, id).await?;
    }
    print_segments("process", &process);

    let burst = if args.burst > 0 { Some(burst(client, args.burst).await?) } else { None };

    // Docker driver, interleaved with the raw floor.
    let docker_result = if args.skip_docker {
        json!({"skipped": "--skip-docker"})
    } else if !node.drivers.contains(&DriverKind::Docker) || !docker_answers() {
        say("  docker: skipped (no Docker engine answers)");
        json!({"skipped": "no Docker engine answers"})
    } else {
        let _cleanup = FloorContainers;
        let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
        docker.inspect_image(IMAGE).await.with_context(|| {
            format!("image {IMAGE} missing: build it with scripts/build-test-image.sh")
        })?;
        for i in 0..2 {
            let (id, _) = measure(client, &docker_spec(&format!("warm{i}"))?, args.poll).await?;
            stop_and_wait(client, id).await?;
            floor_sample(&docker).await?;
        }
        let mut cube = Vec::with_capacity(args.docker_samples);
        let mut floor = Vec::with_capacity(args.docker_samples);
        for i in 0..args.docker_samples {
            let (id, s) = measure(client, &docker_spec(&format!("d{i}"))?, args.poll).await?;
            cube.push(s);
            stop_and_wait(client, id).await?;
            floor.push(floor_sample(&docker).await?);
        }
        print_segments("docker", &cube);
        let floor_summary = Summary::of(&floor);
        let cube_summary = Summary::of(&cube.iter().map(|s| s.total).collect::<Vec<_>>());
        say(&format!("  raw create+start (floor): {}", floor_summary.line()));
        say(&format!(
            "  docker overhead over the floor: p50 {:+.1} ms, p99 {:+.1} ms",
            cube_summary.p50_ms - floor_summary.p50_ms,
            cube_summary.p99_ms - floor_summary.p99_ms
        ));
        json!({
            "segments": segments(&cube),
            "floor": floor_summary,
            "overhead_p50_ms": cube_summary.p50_ms - floor_summary.p50_ms,
            "overhead_p99_ms": cube_summary.p99_ms - floor_summary.p99_ms,
        })
    };
    drop(worker);
    Ok(json!({
        "bench": "latency",
        "poll_ms": args.poll.as_secs_f64() * 1e3,
        "process": {"segments": segments(&process)},
        "burst": burst,
        "docker": docker_result,
    }))
}

/// Submits `count` process tasks at once and records when each is first seen running.
async fn burst(client: &Client, count: usize) -> anyhow::Result<serde_json::Value> {
    let specs: Vec<TaskSpec> =
        (0..count).map(|i| process_spec(&format!("burst{i}"))).collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let submits =
        futures_util::future::join_all(specs.iter().map(|s| client.submit(None, s))).await;
    let mut ids = HashSet::new();
    for s in submits {
        ids.insert(s?.task.id);
    }
    let mut seen: HashMap<TaskId, Duration> = HashMap::new();
    let filter = TaskFilter { state: Some(TaskState::Running), node: None };
    let deadline = t0 + Duration::from_secs(60);
    while seen.len() < ids.len() {
        let running: Vec<TaskView> = client.tasks_filtered(&filter).await?;
        let now = t0.elapsed();
        for t in running {
            if ids.contains(&t.id) {
                seen.entry(t.id).or_insert(now);
            }
        }
        if Instant::now() > deadline {
            bail!("burst: only {} of {count} tasks running after 60 s", seen.len());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = seen.values().max().copied().unwrap_or_default();
    let per_task = Summary::of(&seen.values().copied().collect::<Vec<_>>());
    say(&format!(
        "  burst of {count} process tasks: all running after {:.1} ms; per task {}",
        all.as_secs_f64() * 1e3,
        per_task.line()
    ));
    for s in futures_util::future::join_all(ids.iter().map(|id| client.stop(*id))).await {
        s?;
    }
    wait_for(Duration::from_secs(60), Duration::from_millis(20), "the burst to stop", || async {
        let tasks = client.tasks_filtered(&filter).await.ok()?;
        (!tasks.iter().any(|t| ids.contains(&t.id))).then_some(())
    })
    .await?;
    Ok(json!({"tasks": count, "all_running_ms": all.as_secs_f64() * 1e3, "per_task": per_task}))
}

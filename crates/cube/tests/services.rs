//! Services on real workers (separate `cube` processes on OS-chosen loopback ports) and the
//! real Docker engine: placement, a rolling update sampled for availability, a failing update
//! and its revert through `cube deploy --wait`, no room for a surge instance, and a worker and
//! the manager killed in the middle of a rollout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod cli_support;
mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use cli_support::cube;
use common::{TEST_IMAGE, TestManager, TestWorker, docker_lock, docker_ready, wait_until};
use cube_api::types::{ServiceView, TaskView};
use cube_core::deployment::{DeploymentStatus, Reason};
use cube_core::service::ServiceSpec;
use cube_core::{DesiredState, EventKind, TaskState, Trigger};
use cube_http::client::Client;
use serde_json::{Value, json};

/// busybox httpd behind an HTTP check; `path` is what the check asks for (a missing file makes
/// every instance of that version unhealthy).
fn web(count: u32, greeting: &str, path: &str) -> Value {
    json!({
        "name": "web", "count": count,
        "task": {"name": "web", "driver": "docker", "image": TEST_IMAGE,
                 "command": "httpd", "args": ["-f", "-p", "80", "-h", "/www"],
                 "env": {"GREETING": greeting}, "stop_grace": "1s",
                 "ports": [{"container": 80}],
                 "health": {"type": "http", "port": 80, "path": path, "interval": "300ms",
                            "timeout": "1s", "failure_threshold": 2}},
        "update": {"min_healthy_time": "1s", "healthy_deadline": "30s",
                   "progress_deadline": "1m"}
    })
}

fn service_spec(value: Value) -> ServiceSpec {
    serde_json::from_value(value).unwrap()
}

async fn three_workers(m: &TestManager) -> Vec<TestWorker> {
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(m.worker(name, &["--memory", "1GiB"]).await);
    }
    wait_until(Duration::from_secs(10), "three nodes", || async {
        (m.client.nodes().await.ok()?.len() == 3).then_some(())
    })
    .await;
    workers
}

async fn instances(client: &Client) -> Vec<TaskView> {
    let tasks = client.tasks().await.unwrap();
    tasks.into_iter().filter(|t| t.instance.as_ref().is_some_and(|i| i.service == "web")).collect()
}

fn live(tasks: &[TaskView]) -> Vec<&TaskView> {
    tasks
        .iter()
        .filter(|t| t.desired_state == DesiredState::Running && !t.state.is_terminal())
        .collect()
}

async fn ended(client: &Client, within: Duration) -> ServiceView {
    wait_until(within, "the deployment ended", || async {
        let s = client.service("web").await.ok()?;
        s.deployment.as_ref()?.status.is_terminal().then_some(s)
    })
    .await
}

/// Samples every 100 ms until stopped: the fewest healthy instances the manager reported, and
/// the fewest instances that answered HTTP on their host port.
struct Sampler {
    stop: Arc<AtomicBool>,
    healthy: Arc<AtomicU32>,
    answering: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<u32>,
}

impl Sampler {
    fn start(client: Client) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicU32::new(u32::MAX));
        let answering = Arc::new(AtomicU32::new(u32::MAX));
        let (s, h, a) = (Arc::clone(&stop), Arc::clone(&healthy), Arc::clone(&answering));
        let task = tokio::spawn(async move {
            let http =
                reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
            let mut samples = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(view) = client.service("web").await else { continue };
                h.fetch_min(view.instances.healthy, Ordering::Relaxed);
                let tasks = instances(&client).await;
                let mut up = 0;
                for t in tasks.iter().filter(|t| t.state == TaskState::Running) {
                    let Some(port) = t.host_ports.iter().find(|p| p.container_port == 80) else {
                        continue;
                    };
                    let url = format!("http://127.0.0.1:{}/", port.host_port);
                    if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                        up += 1;
                    }
                }
                a.fetch_min(up, Ordering::Relaxed);
                samples += 1;
            }
            samples
        });
        Sampler { stop, healthy, answering, task }
    }

    /// (samples, fewest healthy, fewest answering).
    async fn finish(self) -> (u32, u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await.unwrap();
        (samples, self.healthy.load(Ordering::Relaxed), self.answering.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_service_spreads_and_rolls_out_without_a_moment_below_count() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let names = m.node_names().await;

    let (created, was_new) =
        m.client.put_service(&service_spec(web(3, "one", "/")), None).await.unwrap();
    assert!(was_new);
    assert_eq!(created.version, 1);
    let view = ended(&m.client, Duration::from_secs(60)).await;
    assert_eq!(view.deployment.unwrap().status, DeploymentStatus::Successful);
    let first = instances(&m.client).await;
    let nodes: BTreeSet<String> = first.iter().map(|t| names[&t.node.unwrap()].clone()).collect();
    assert_eq!(nodes.len(), 3, "one instance per node: {first:#?}");
    assert_eq!(view.instances.healthy, 3);

    let sampler = Sampler::start(m.client.clone());
    let (updated, _) = m.client.put_service(&service_spec(web(3, "two", "/")), None).await.unwrap();
    assert_eq!(updated.version, 2);
    let view = ended(&m.client, Duration::from_secs(90)).await;
    let (samples, healthy, answering) = sampler.finish().await;
    eprintln!("{samples} samples: at least {healthy} healthy, {answering} answering");
    assert!(samples >= 10, "the rollout was sampled ({samples} samples)");
    assert_eq!(view.deployment.as_ref().unwrap().status, DeploymentStatus::Successful);
    assert!(healthy >= 3, "never fewer than 3 healthy instances (saw {healthy})");
    assert!(answering >= 3, "never fewer than 3 instances answering (saw {answering})");

    let tasks = instances(&m.client).await;
    let now = live(&tasks);
    assert_eq!(now.len(), 3);
    assert!(
        now.iter().all(|t| t.instance.as_ref().unwrap().version == 2 && t.healthy == Some(true))
    );
    wait_until(Duration::from_secs(30), "the old instances completed", || async {
        let tasks = instances(&m.client).await;
        let done = first.iter().all(|old| {
            tasks.iter().any(|t| {
                t.id == old.id
                    && t.state == TaskState::Completed
                    && t.replaced_by.is_some()
                    && t.events.iter().any(|e| e.reason.starts_with("replaced by "))
            })
        });
        done.then_some(())
    })
    .await;
    m.client.remove_service("web").await.unwrap();
    wait_until(Duration::from_secs(30), "every instance stopped", || async {
        live(&instances(&m.client).await).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_update_is_reverted_and_deploy_wait_says_why() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = file("good.json", web(3, "one", "/"));
    let bad = file("bad.json", web(3, "two", "/missing"));
    let url = m.url.clone();
    let deploy = move |path: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            cube(&["--addr", &url, "deploy", &path, "--wait", "--timeout", "2m"], &[])
        })
    };

    let out = deploy(good).await.unwrap();
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("service web created at version 1"), "{out:#?}");
    let good_ids: BTreeSet<_> = live(&instances(&m.client).await).iter().map(|t| t.id).collect();

    let sampler = Sampler::start(m.client.clone());
    let out = deploy(bad).await.unwrap();
    assert_eq!(out.code, 3, "{out:#?}");
    let line = out.stderr.lines().last().unwrap();
    assert!(
        line.starts_with("error: deployment failed: task web/") && line.contains("unhealthy"),
        "{out:#?}"
    );
    assert!(line.contains("404") && line.ends_with("reverting to version 1"), "{line}");

    let view = ended(&m.client, Duration::from_secs(60)).await;
    let (_, healthy, answering) = sampler.finish().await;
    let revert = view.deployment.as_ref().unwrap();
    assert!(revert.revert);
    assert_eq!((view.version, revert.status), (3, DeploymentStatus::Successful));
    assert!(healthy >= 3 && answering >= 3, "no healthy instance stopped: {healthy} {answering}");
    // The revert began with the failure: one commit moved both.
    let failed = m.client.service_versions("web").await.unwrap();
    let v2 = failed.iter().find(|v| v.version == 2).unwrap();
    let v3 = failed.iter().find(|v| v.version == 3).unwrap();
    let d2 = m.client.deployment(v2.deployment.unwrap()).await.unwrap();
    let gap = v3.created_at.duration_since(d2.updated_at);
    assert!(
        gap.abs() < jiff::SignedDuration::from_secs(1),
        "revert started {gap:?} after the failure"
    );
    assert_eq!(d2.reason, Reason::Unhealthy);
    let now: BTreeSet<_> = live(&instances(&m.client).await).iter().map(|t| t.id).collect();
    assert_eq!(now, good_ids, "the good instances kept running throughout");

    let history = cube(&["--addr", &m.url, "service", "history", "web"], &[]).success();
    let rows: Vec<&str> = history.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{history:#?}");
    assert!(
        rows[0].starts_with("3 ")
            && rows[0].contains("successful")
            && rows[0].contains("revert to version 1")
    );
    assert!(rows[1].starts_with("2 ") && rows[1].contains("failed"));
    assert!(rows[2].starts_with("1 ") && rows[2].contains("successful"));
    m.client.remove_service("web").await.unwrap();
}

/// Sleepers without a check: healthy after running a second.
fn sleepers(count: u32, version: &str, update: Value) -> ServiceSpec {
    let mut update = update;
    update["min_healthy_time"] = json!("1s");
    service_spec(json!({
        "name": "web", "count": count,
        "task": {"name": "web", "driver": "process", "command": "sleep", "args": ["3600"],
                 "env": {"V": version}, "stop_grace": "1s", "resources": {"memory": "300MiB"}},
        "update": update
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_worker_and_the_manager_killed_midway() {
    let mut m = TestManager::start(&["--node-ttl", "2s"]).await;
    let mut workers = three_workers(&m).await;
    m.client.put_service(&sleepers(3, "1", json!({})), None).await.unwrap();
    ended(&m.client, Duration::from_secs(30)).await;

    m.client.put_service(&sleepers(3, "2", json!({})), None).await.unwrap();
    wait_until(Duration::from_secs(30), "the rollout under way", || async {
        let s = m.client.service("web").await.ok()?;
        s.instances.versions.iter().any(|v| v.version == 2 && v.healthy >= 1).then_some(())
    })
    .await;
    workers[2].kill9();
    m.kill9();
    m.restart().await;
    let view = ended(&m.client, Duration::from_secs(90)).await;
    assert_eq!(view.deployment.as_ref().unwrap().status, DeploymentStatus::Successful);
    let tasks = instances(&m.client).await;
    let now = live(&tasks);
    assert_eq!(now.len(), 3, "{now:#?}");
    assert!(now.iter().all(|t| t.instance.as_ref().unwrap().version == 2));
    let slots: BTreeSet<u32> = now.iter().map(|t| t.instance.as_ref().unwrap().slot).collect();
    assert_eq!(slots.len(), 3);
    // What the live workers really run: each instance once, nothing else of the service.
    let mut running: HashMap<cube_core::TaskId, usize> = HashMap::new();
    for w in &workers[..2] {
        for t in w.client.tasks().await.unwrap() {
            if t.state == TaskState::Running {
                *running.entry(t.id).or_default() += 1;
            }
        }
    }
    let expected: HashMap<_, _> = now.iter().map(|t| (t.id, 1)).collect();
    assert_eq!(running, expected, "exactly the 3 instances run, each once");
    m.client.remove_service("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_for_a_surge_instance_replaces_stopping_first_or_waits_and_fails() {
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &["--memory", "1GiB"]).await;
    wait_until(Duration::from_secs(10), "one node", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    // Three 300MiB instances on a 1GiB node: no room for a fourth.
    m.client.put_service(&sleepers(3, "1", json!({})), None).await.unwrap();
    ended(&m.client, Duration::from_secs(30)).await;
    m.client.put_service(&sleepers(3, "2", json!({})), None).await.unwrap();
    let view = ended(&m.client, Duration::from_secs(60)).await;
    let d = view.deployment.as_ref().unwrap();
    assert_eq!(d.status, DeploymentStatus::Successful);
    let stopped_first = instances(&m.client)
        .await
        .iter()
        .filter(|t| t.events.iter().any(|e| e.reason.starts_with("no room for a replacement")))
        .count();
    assert_eq!(stopped_first, 3, "each replaced stopping first");

    let wait = json!({"on_no_room": "wait", "healthy_deadline": "4s", "progress_deadline": "6s",
                      "auto_revert": false});
    let (view, _) = m.client.put_service(&sleepers(3, "3", wait), None).await.unwrap();
    let id = view.deployment.unwrap().id;
    wait_until(Duration::from_secs(10), "waiting for room, saying so", || async {
        let d = m.client.deployment(id).await.ok()?;
        (d.reason == Reason::NoCapacity && d.description.contains("needs 300MiB memory"))
            .then_some(())
    })
    .await;
    let d = wait_until(Duration::from_secs(20), "failed at the progress deadline", || async {
        let d = m.client.deployment(id).await.ok()?;
        d.status.is_terminal().then_some(d)
    })
    .await;
    assert_eq!((d.status, d.reason), (DeploymentStatus::Failed, Reason::ProgressDeadline));
    assert_eq!(m.client.service("web").await.unwrap().instances.healthy, 3, "nothing was stopped");
    m.client.remove_service("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_host_port_with_surge_never_fails_on_port_in_use() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &[]).await;
    wait_until(Duration::from_secs(10), "one node", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let with_port = |greeting: &str| {
        let mut v = web(1, greeting, "/");
        v["task"]["ports"] = json!([{"container": 80, "host": port}]);
        service_spec(v)
    };
    m.client.put_service(&with_port("one"), None).await.unwrap();
    assert_eq!(
        ended(&m.client, Duration::from_secs(60)).await.deployment.unwrap().status,
        DeploymentStatus::Successful
    );
    let (view, _) = m.client.put_service(&with_port("two"), None).await.unwrap();
    let id = view.deployment.unwrap().id;
    let view = ended(&m.client, Duration::from_secs(60)).await;
    assert_eq!(view.deployment.as_ref().unwrap().status, DeploymentStatus::Successful);
    let d = m.client.deployment(id).await.unwrap();
    assert_eq!(d.id, view.deployment.unwrap().id);
    let tasks = instances(&m.client).await;
    // The scheduler saw the port taken and said so; no start ever failed on it.
    let started_failed = |t: &TaskView| {
        t.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Transition(Trigger::StartFailed { .. })))
    };
    assert!(tasks.iter().all(|t| !started_failed(t) && t.state != TaskState::Failed), "{tasks:#?}");
    assert!(tasks.iter().any(|t| t.events.iter().any(|e| e.reason.contains("already in use"))));
    let now = live(&tasks);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].host_ports[0].host_port, port);
    m.client.remove_service("web").await.unwrap();
    wait_until(Duration::from_secs(30), "stopped", || async {
        live(&instances(&m.client).await).is_empty().then_some(())
    })
    .await;
}

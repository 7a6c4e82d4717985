//! Services on real workers (separate `cube` processes on OS-chosen loopback ports) and the
//! real Docker engine: placement, a rolling update sampled for availability, a failing update
//! and its revert through `cube deploy --wait`, no room for a surge instance, a worker and the
//! manager killed in the middle of a rollout; and, with the process driver, canaries, scaling,
//! compare-and-set updates, plans and node drains through the API and the CLI; and a worker in
//! a network namespace of its own whose link is cut (`on_disconnect.stop_after`).
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
use cube_core::{DesiredState, EventKind, NodeId, TaskState, Trigger};
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

fn per_node(tasks: &[&TaskView]) -> Vec<usize> {
    let mut nodes: std::collections::BTreeMap<NodeId, usize> = Default::default();
    for t in tasks {
        *nodes.entry(t.node.unwrap()).or_default() += 1;
    }
    nodes.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_scaling_check_index_and_plans_on_real_workers() {
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let c = &m.client;
    let (created, _) =
        c.put_service(&sleepers(3, "1", json!({"canary": 1})), Some(0)).await.unwrap();
    assert_eq!(
        ended(c, Duration::from_secs(60)).await.deployment.unwrap().status,
        DeploymentStatus::Successful
    );

    // check_index: 0 on an existing service, or a stale index, is refused.
    let e = c.put_service(&sleepers(3, "2", json!({"canary": 1})), Some(0)).await.unwrap_err();
    assert_eq!(e.code(), Some(cube_api::ErrorCode::Conflict));
    let stale = created.modify_index + 100;
    let e = c.put_service(&sleepers(3, "2", json!({"canary": 1})), Some(stale)).await.unwrap_err();
    assert_eq!(e.code(), Some(cube_api::ErrorCode::Conflict));

    // A plan through the CLI: the diff, and where each new instance would go.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, serde_json::to_vec(&sleepers(3, "2", json!({"canary": 1}))).unwrap())
        .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (url, f) = (m.url.clone(), file.clone());
    let plan = tokio::task::spawn_blocking(move || cube(&["--addr", &url, "plan", &f], &[]))
        .await
        .unwrap()
        .success();
    assert!(plan.stdout.contains("destructive update to version 2"), "{plan:#?}");
    assert!(plan.stdout.contains("~ task.env.V: \"1\" => \"2\""), "{plan:#?}");
    assert_eq!(plan.stdout.matches("  web/").count(), 3, "{plan:#?}");
    assert_eq!(instances(c).await.len(), 3, "a plan changes nothing");

    // The canary waits for promotion beside the old instances.
    let (view, _) = c
        .put_service(&sleepers(3, "2", json!({"canary": 1})), Some(created.modify_index))
        .await
        .unwrap();
    let id = view.deployment.unwrap().id;
    wait_until(Duration::from_secs(30), "waiting for promotion", || async {
        (c.deployment(id).await.ok()?.reason == Reason::NeedsPromotion).then_some(())
    })
    .await;
    let versions: Vec<u64> =
        live(&instances(c).await).iter().map(|t| t.instance.as_ref().unwrap().version).collect();
    assert_eq!((versions.len(), versions.iter().filter(|v| **v == 2).count()), (4, 1));
    let (url, promote) = (m.url.clone(), id.to_string());
    let out = tokio::task::spawn_blocking(move || {
        cube(&["--addr", &url, "deployment", "promote", &promote], &[])
    })
    .await
    .unwrap()
    .success();
    assert!(out.stdout.contains("Promoted:"), "{out:#?}");
    let view = ended(c, Duration::from_secs(60)).await;
    assert_eq!(view.deployment.unwrap().status, DeploymentStatus::Successful);
    let first: BTreeSet<_> = live(&instances(c).await).iter().map(|t| t.id).collect();
    assert_eq!(first.len(), 3);

    // Scale 3 -> 5 -> 2: only the difference starts and stops, spread kept, no deployment.
    let scaled = c.scale("web", 5).await.unwrap();
    assert_eq!((scaled.version, scaled.deployment.as_ref().map(|d| d.id)), (2, Some(id)));
    wait_until(Duration::from_secs(30), "five healthy", || async {
        (c.service("web").await.ok()?.instances.healthy == 5).then_some(())
    })
    .await;
    let tasks = instances(c).await;
    let five = live(&tasks);
    assert!(first.iter().all(|id| five.iter().any(|t| t.id == *id)), "the first three kept");
    let mut spread = per_node(&five);
    spread.sort_unstable();
    assert_eq!(spread, [1, 2, 2]);
    c.scale("web", 2).await.unwrap();
    wait_until(Duration::from_secs(30), "two left", || async {
        let tasks = instances(c).await;
        let slots: BTreeSet<u32> =
            live(&tasks).iter().map(|t| t.instance.as_ref().unwrap().slot).collect();
        (slots == BTreeSet::from([0, 1])
            && tasks.iter().filter(|t| t.state == TaskState::Running).count() == 2)
            .then_some(())
    })
    .await;
    let view = c.service("web").await.unwrap();
    assert_eq!((view.version, view.deployment.map(|d| d.id)), (2, Some(id)), "no new deployment");
    c.remove_service("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_over_healthy_first_and_its_bare_tasks_move() {
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let c = &m.client;
    let names = m.node_names().await;
    let name_of = |id: NodeId| names[&id].clone();
    // w3 takes nothing while the service starts, so one of the others holds two instances.
    let w3 = names.iter().find(|(_, n)| *n == "w3").map(|(id, _)| *id).unwrap();
    c.set_eligible(&w3.to_string(), false).await.unwrap();
    c.put_service(&sleepers(3, "1", json!({})), None).await.unwrap();
    ended(c, Duration::from_secs(60)).await;
    let tasks = instances(c).await;
    let crowded = tasks
        .iter()
        .map(|t| t.node.unwrap())
        .find(|n| tasks.iter().filter(|t| t.node == Some(*n)).count() == 2)
        .unwrap();
    let leaving: BTreeSet<_> =
        tasks.iter().filter(|t| t.node == Some(crowded)).map(|t| t.id).collect();
    // A bare task there too: the only eligible node while it is placed.
    let other = names.keys().copied().find(|n| *n != crowded && *n != w3).unwrap();
    c.set_eligible(&other.to_string(), false).await.unwrap();
    let bare = c
        .submit(
            None,
            &common::spec(json!({"name": "bare", "driver": "process", "command": "sleep",
                "args": ["3600"], "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = common::wait_state(c, bare, TaskState::Running, Duration::from_secs(10)).await;
    assert_eq!(t.node, Some(crowded));
    c.set_eligible(&other.to_string(), true).await.unwrap();
    c.set_eligible(&w3.to_string(), true).await.unwrap();

    let url = m.url.clone();
    let node = name_of(crowded);
    let out =
        tokio::task::spawn_blocking(move || cube(&["--addr", &url, "node", "drain", &node], &[]))
            .await
            .unwrap()
            .success();
    assert!(out.stdout.contains("draining"), "{out:#?}");
    let fewest = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let drained = wait_until(Duration::from_secs(60), "the node drained", || {
        let fewest = std::sync::Arc::clone(&fewest);
        async move {
            let s = c.service("web").await.ok()?;
            fewest.fetch_min(s.instances.healthy, std::sync::atomic::Ordering::Relaxed);
            let n = c.node(&crowded.to_string()).await.ok()?;
            n.drain.as_ref()?.drained_at.is_some().then_some(n)
        }
    })
    .await;
    assert!(!drained.eligible);
    let fewest = fewest.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fewest, 3, "replacements healthy before the old instances stopped");
    let tasks = instances(c).await;
    for id in &leaving {
        let t = tasks.iter().find(|t| t.id == *id).unwrap();
        assert_eq!(t.state, TaskState::Completed);
        let by = tasks.iter().find(|r| Some(r.id) == t.replaced_by).unwrap();
        assert_ne!(by.node, Some(crowded));
    }
    let t = common::wait_state(c, bare, TaskState::Running, Duration::from_secs(10)).await;
    assert_ne!(t.node, Some(crowded), "the bare task moved");
    let out = cube(&["--addr", &m.url, "node"], &[]).success();
    assert!(out.stdout.contains("ready (drained)"), "{out:#?}");
    c.remove_service("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_by_the_network_stops_its_instance_and_is_replaced() {
    let Some(net) = common::NetNs::create() else { return };
    const TOKEN: &str = "netns-cluster-token-0123456789";
    let token = || Some(TOKEN.parse().unwrap());
    // The manager listens on the host end of the link: the namespaced worker reaches it there,
    // the other workers over the host's own routes, which the cut leaves alone.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("{}:0", net.host);
    let mut m = TestManager::start_on(dir, &listen, &["--token", TOKEN, "--node-ttl", "2s"]).await;
    m.client = m.client.clone().with_token(token());
    let joined = ["--manager", &m.url, "--token", TOKEN, "--memory", "1GiB"];
    let mut far =
        TestWorker::start_in_netns(&net, &[&joined[..], &["--name", "far"]].concat()).await;
    far.client = far.client.clone().with_token(token());
    let _near = [m.worker("near1", &joined[2..]).await, m.worker("near2", &joined[2..]).await];
    wait_until(Duration::from_secs(10), "three nodes", || async {
        (m.client.nodes().await.ok()?.len() == 3).then_some(())
    })
    .await;
    let (stop_after, ttl) = (Duration::from_secs(3), Duration::from_secs(2));
    let mut spec = sleepers(3, "1", json!({}));
    spec.on_disconnect = cube_core::service::OnDisconnect::StopAfter(stop_after);
    m.client.put_service(&spec, None).await.unwrap();
    ended(&m.client, Duration::from_secs(30)).await;
    let far_id: NodeId = far.node_id.parse().unwrap();
    let tasks = instances(&m.client).await;
    let old = live(&tasks).into_iter().find(|t| t.node == Some(far_id)).unwrap().clone();
    let Some(cube_core::DriverHandle::Process { pid, .. }) = old.handle else {
        panic!("a process instance has a pid: {old:#?}")
    };
    assert!(common::alive(pid));

    net.cut();
    let cut = std::time::Instant::now();
    // Until the cut-off copy has exited and its replacement runs: when each happened.
    let mut stopped: Option<(std::time::Duration, jiff::Timestamp)> = None;
    let replacement = wait_until(Duration::from_secs(30), "stopped and replaced", || {
        if stopped.is_none() && !common::alive(pid) {
            stopped = Some((cut.elapsed(), jiff::Timestamp::now()));
        }
        let client = m.client.clone();
        let (slot, old_id, done) = (old.instance.as_ref().unwrap().slot, old.id, stopped.is_some());
        async move {
            let tasks = instances(&client).await;
            let new = tasks.into_iter().find(|t| {
                t.id != old_id
                    && t.instance.as_ref().is_some_and(|i| i.slot == slot)
                    && t.state == TaskState::Running
            })?;
            done.then_some(new)
        }
    })
    .await;
    let (stopped_after, stopped_at) = stopped.unwrap();
    // The worker counts from its last answered heartbeat (at most an interval before the cut),
    // and looks every 250 ms.
    assert!(
        stopped_after >= stop_after - Duration::from_secs(1)
            && stopped_after <= stop_after + Duration::from_secs(2),
        "the cut-off copy stopped {stopped_after:?} after the cut"
    );
    assert_ne!(replacement.node, Some(far_id));
    // The replacement was placed at its creation: from then until the old copy had exited.
    let overlap = stopped_at.duration_since(replacement.created_at).max(jiff::SignedDuration::ZERO);
    eprintln!(
        "cut-off copy stopped {stopped_after:?} after the cut; the copies overlapped {overlap:?} \
         (bound: stop_after {stop_after:?} + TTL {ttl:?})"
    );
    assert!(overlap <= jiff::SignedDuration::try_from(stop_after + ttl).unwrap());
    let lost = m.client.task(old.id).await.unwrap();
    assert_eq!(lost.replaced_by, Some(replacement.id), "{lost:#?}");

    // Healed: the worker tells what it did, and exactly three instances run, none on it.
    net.heal();
    let copy = wait_until(Duration::from_secs(20), "the healed worker answering", || async {
        far.client.task(old.id).await.ok()
    })
    .await;
    assert!(
        copy.events.iter().any(|e| e.reason.starts_with("no contact with the manager for 3s")),
        "{:?}",
        copy.events
    );
    wait_until(Duration::from_secs(20), "the far node ready again", || async {
        let n = m.client.node(&far_id.to_string()).await.ok()?;
        (n.state == cube_core::NodeState::Ready).then_some(())
    })
    .await;
    let view = m.client.service("web").await.unwrap();
    assert_eq!(view.instances.healthy, 3);
    let tasks = instances(&m.client).await;
    let now = live(&tasks);
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|t| t.node != Some(far_id)), "{now:#?}");
    m.client.remove_service("web").await.unwrap();
}

//! A real manager with real workers (separate `cube` processes on OS-chosen loopback ports):
//! placement by each scheduler, node loss and fencing, restarts, rescheduling, unplaceable
//! tasks and unreachable workers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    TEST_IMAGE, TestManager, TestWorker, alive, docker_lock, docker_ready, spec, wait_state,
    wait_until,
};
use cube_api::types::TaskView;
use cube_core::{DriverHandle, NodeId, TaskId, TaskState};
use serde_json::json;

fn sleeper(name: &str, memory: &str) -> cube_core::TaskSpec {
    spec(json!({"name": name, "driver": "process", "command": "sleep", "args": ["3600"],
                "resources": {"memory": memory}, "stop_grace": "1s"}))
}

/// Tasks per node name, among running tasks.
fn per_node(tasks: &[TaskView], names: &HashMap<NodeId, String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Running) {
        *counts.entry(names[&t.node.unwrap()].clone()).or_default() += 1;
    }
    counts
}

fn pid(t: &TaskView) -> u32 {
    match t.handle {
        Some(DriverHandle::Process { pid, .. }) => pid,
        ref other => panic!("task {} has no process handle: {other:?}", t.id),
    }
}

/// Starts a manager with `scheduler` and three workers offering 1GiB each.
async fn three_nodes(scheduler: &str) -> (TestManager, Vec<TestWorker>) {
    let m = TestManager::start(&["--scheduler", scheduler]).await;
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(m.worker(name, &["--memory", "1GiB"]).await);
    }
    wait_until(Duration::from_secs(10), "three nodes ready", || async {
        let nodes = m.client.nodes().await.ok()?;
        (nodes
            .iter()
            .filter(|n| n.state == cube_core::NodeState::Ready && n.stats.is_some())
            .count()
            == 3)
            .then_some(())
    })
    .await;
    (m, workers)
}

/// Submits `count` more sleepers one after another and waits until all tasks run.
async fn submit_and_wait(m: &TestManager, count: usize, memory: &str) -> Vec<TaskView> {
    let before = m.client.tasks().await.unwrap().len();
    for i in 0..count {
        m.client.submit(None, &sleeper(&format!("s{}", before + i), memory)).await.unwrap();
    }
    let count = before + count;
    wait_until(Duration::from_secs(30), "all tasks running", || async {
        let tasks = m.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == count).then_some(tasks)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_lands_ten_on_each_of_three_nodes() {
    let (m, _workers) = three_nodes("round-robin").await;
    let tasks = submit_and_wait(&m, 30, "0B").await;
    let counts = per_node(&tasks, &m.node_names().await);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_with_docker_tasks_lands_ten_on_each_node() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, workers) = three_nodes("round-robin").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let s = spec(json!({"name": format!("c{i}"), "driver": "docker", "image": TEST_IMAGE,
                            "command": "sleep", "args": ["3600"], "stop_grace": "1s"}));
        ids.push(m.client.submit(None, &s).await.unwrap().task.id);
    }
    let tasks = wait_until(Duration::from_secs(120), "thirty containers running", || async {
        let tasks = m.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 30).then_some(tasks)
    })
    .await;
    let counts: Vec<usize> = per_node(&tasks, &m.node_names().await).into_values().collect();
    assert_eq!(counts, [10, 10, 10], "{counts:?}");
    for w in &workers {
        assert_eq!(w.containers(None).len(), 10, "one container per task on {}", w.node_id);
    }
    for id in ids {
        m.client.stop(id).await.unwrap();
    }
    wait_until(Duration::from_secs(120), "containers removed", || async {
        workers.iter().all(|w| w.containers(None).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_fills_one_node_before_the_next() {
    let (m, _workers) = three_nodes("binpack").await;
    // 100MiB tasks on 1GiB nodes: ten fit on one node.
    let first = submit_and_wait(&m, 10, "100MiB").await;
    let names = m.node_names().await;
    let counts = per_node(&first, &names);
    assert_eq!(counts.len(), 1, "the first ten share one node: {counts:?}");
    let tasks = submit_and_wait(&m, 15, "100MiB").await;
    let mut counts: Vec<usize> = per_node(&tasks, &names).into_values().collect();
    counts.sort_unstable();
    assert_eq!(counts, [5, 10, 10], "two full nodes, then the third");
    // The node list shows what is reserved.
    let full = m.client.nodes().await.unwrap().into_iter().filter(|n| n.task_count == 10).count();
    assert_eq!(full, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_keeps_nodes_even() {
    let (m, _workers) = three_nodes("spread").await;
    let names;
    {
        let tasks = submit_and_wait(&m, 7, "10MiB").await;
        names = m.node_names().await;
        let mut counts: Vec<usize> = per_node(&tasks, &names).into_values().collect();
        counts.sort_unstable();
        assert_eq!(counts, [2, 2, 3]);
    }
    let tasks = submit_and_wait(&m, 23, "10MiB").await;
    let counts: Vec<usize> = per_node(&tasks, &names).into_values().collect();
    assert_eq!(counts, [10, 10, 10], "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epvm_places_by_marginal_cost_and_explains_it() {
    let (m, _workers) = three_nodes("epvm").await;
    let tasks = submit_and_wait(&m, 12, "64MiB").await;
    for t in &tasks {
        let p = t.placement.as_ref().expect("placement explanation kept");
        assert_eq!(p.scheduler, cube_core::SchedulerKind::Epvm);
        let chosen = p.chosen.as_ref().unwrap();
        assert_eq!(Some(chosen.node), t.node);
        assert!(p.candidates.iter().all(|c| c.score.is_finite() && c.score > 0.0));
        let best = p.candidates.iter().map(|c| c.score).fold(f64::INFINITY, f64::min);
        assert_eq!(chosen.score, best, "the winner has the lowest marginal cost");
    }
    // Equal nodes, equal tasks: the job-count term spreads them.
    let counts: Vec<usize> = per_node(&tasks, &m.node_names().await).into_values().collect();
    assert_eq!(counts, [4, 4, 4], "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_goes_down_its_tasks_move_and_it_is_fenced_when_it_returns() {
    let m = TestManager::start(&[
        "--scheduler",
        "spread",
        "--node-ttl",
        "5s",
        "--heartbeat-interval",
        "1s",
    ])
    .await;
    let mut victim = m.worker("victim", &[]).await;
    let tasks = submit_and_wait(&m, 10, "0B").await;
    let old_pids: HashMap<TaskId, u32> = tasks.iter().map(|t| (t.id, pid(t))).collect();
    let _w2 = m.worker("w2", &[]).await;
    let _w3 = m.worker("w3", &[]).await;
    wait_until(Duration::from_secs(10), "three nodes", || async {
        (m.client.nodes().await.ok()?.len() == 3).then_some(())
    })
    .await;

    victim.kill9();
    let victim_id: NodeId = victim.node_id.parse().unwrap();
    wait_until(Duration::from_secs(7), "the node is down within TTL + one heartbeat", || async {
        let n = m.client.node(&victim_id.to_string()).await.ok()?;
        (n.state == cube_core::NodeState::Down).then_some(())
    })
    .await;
    let moved = wait_until(
        Duration::from_secs(10),
        "all ten tasks running elsewhere within TTL + 5s",
        || async {
            let tasks = m.client.tasks().await.ok()?;
            (tasks
                .iter()
                .filter(|t| t.state == TaskState::Running && t.node != Some(victim_id))
                .count()
                == 10)
                .then_some(tasks)
        },
    )
    .await;
    for t in &moved {
        assert_eq!(t.generation, 2, "placed a second time");
        assert!(t.events.iter().any(|e| e.reason.contains("victim is down")), "history says why");
        assert!(alive(pid(t)));
    }
    // The old copies still run on the victim's host: nobody could stop them.
    assert!(old_pids.values().all(|p| alive(*p)));

    // The victim comes back: it re-adopts its processes, and the manager tells it to stop them.
    victim.restart().await;
    wait_until(Duration::from_secs(10), "the old copies are stopped (fencing)", || async {
        old_pids.values().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let tasks = m.client.tasks().await.unwrap();
    assert_eq!(tasks.iter().filter(|t| t.state == TaskState::Running).count(), 10);
    for t in &tasks {
        assert_ne!(t.node, Some(victim_id));
        assert!(alive(pid(t)), "exactly one copy of {} runs", t.id);
    }
    let victim_tasks = victim.client.tasks().await.unwrap();
    assert!(victim_tasks.iter().all(|t| t.state.is_terminal()), "the victim keeps no live copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_task_backs_off_and_fails_with_its_reason() {
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &[]).await;
    let id = m
        .client
        .submit(
            None,
            &spec(json!({"name": "crash", "driver": "process", "command": "sh", "args": ["-c", "exit 1"],
                         "restart": {"mode": "on-failure", "max_attempts": 5, "initial_backoff": "200ms",
                                     "max_backoff": "2s", "reschedule_attempts": 0}})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&m.client, id, TaskState::Failed, Duration::from_secs(30)).await;
    assert_eq!(t.reason.as_deref(), Some("exited with code 1"));
    assert_eq!(t.restart_count, 5);
    let starts: Vec<_> = t
        .events
        .iter()
        .filter(|e| e.to == TaskState::Running && e.from != e.to)
        .map(|e| e.at)
        .collect();
    assert_eq!(starts.len(), 6, "one run and five restarts");
    let gaps: Vec<i64> =
        starts.windows(2).map(|w| w[1].duration_since(w[0]).as_millis() as i64).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "delays grow: {gaps:?}");
    assert!(gaps[3] >= 1500, "the fourth delay is 1.6s: {gaps:?}");
    let notes: Vec<&str> =
        t.events.iter().map(|e| e.reason.as_str()).filter(|r| r.starts_with("restart ")).collect();
    assert_eq!(notes.first(), Some(&"restart 1/5 in 200ms"));
    assert_eq!(notes.last(), Some(&"restart 5/5 in 2s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_restarts_move_the_task_to_another_node() {
    let m = TestManager::start(&["--scheduler", "spread"]).await;
    let _w1 = m.worker("w1", &[]).await;
    let _w2 = m.worker("w2", &[]).await;
    wait_until(Duration::from_secs(10), "two nodes", || async {
        (m.client.nodes().await.ok()?.len() == 2).then_some(())
    })
    .await;
    let id = m
        .client
        .submit(
            None,
            &spec(json!({"name": "crash", "driver": "process", "command": "sh", "args": ["-c", "exit 2"],
                         "restart": {"mode": "on-failure", "max_attempts": 1, "initial_backoff": "100ms",
                                     "reschedule_attempts": 1}})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&m.client, id, TaskState::Failed, Duration::from_secs(20)).await;
    assert_eq!(t.reschedule_count, 1);
    assert_eq!(t.generation, 2);
    let placed_on: Vec<_> = t
        .events
        .iter()
        .filter(|e| e.to == TaskState::Scheduled && e.from != e.to)
        .map(|e| e.node)
        .collect();
    assert_eq!(placed_on.len(), 2);
    assert_ne!(placed_on[0], placed_on[1], "the second placement avoided the node it failed on");
    assert!(t.events.iter().any(|e| e.reason.starts_with("rescheduling after failing on")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_task_waits_with_reasons_until_a_big_enough_node_joins() {
    let m = TestManager::start(&[]).await;
    let _small1 = m.worker("small1", &["--memory", "512MiB"]).await;
    let _small2 = m.worker("small2", &["--memory", "512MiB"]).await;
    wait_until(Duration::from_secs(10), "two nodes", || async {
        (m.client.nodes().await.ok()?.len() == 2).then_some(())
    })
    .await;
    let id = m.client.submit(None, &sleeper("big", "1GiB")).await.unwrap().task.id;
    let t = wait_until(Duration::from_secs(5), "a reason per node", || async {
        let t = m.client.task(id).await.ok()?;
        t.reason.as_ref().is_some_and(|r| r.contains("small2")).then_some(t)
    })
    .await;
    assert_eq!(t.state, TaskState::Pending);
    assert_eq!(
        t.reason.as_deref(),
        Some(
            "no node fits: small1: needs 1.0GiB memory, 512MiB free; small2: needs 1.0GiB memory, 512MiB free"
        )
    );
    let rejected = &t.placement.as_ref().unwrap().rejected;
    assert_eq!(rejected.len(), 2);

    let _big = m.worker("big", &["--memory", "2GiB"]).await;
    let t = wait_until(
        Duration::from_secs(10),
        "placed on the new node without any user action",
        || async {
            let t = m.client.task(id).await.ok()?;
            (t.state == TaskState::Running).then_some(t)
        },
    )
    .await;
    assert_eq!(&*t.placement.unwrap().chosen.unwrap().name, "big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_meant_for_an_unreachable_worker_are_placed_again_not_lost() {
    let m = TestManager::start(&[
        "--scheduler",
        "round-robin",
        "--worker-timeout",
        "500ms",
        "--node-ttl",
        "3s",
    ])
    .await;
    let frozen = m.worker("frozen", &[]).await;
    let _healthy = m.worker("healthy", &[]).await;
    wait_until(Duration::from_secs(10), "two nodes", || async {
        (m.client.nodes().await.ok()?.len() == 2).then_some(())
    })
    .await;
    // SIGSTOP: the node still accepts TCP connections but never answers.
    std::process::Command::new("kill")
        .args(["-STOP", &frozen.process.pid().to_string()])
        .status()
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(m.client.submit(None, &sleeper(&format!("t{i}"), "0B")).await.unwrap().task.id);
    }
    let healthy_id =
        m.client.nodes().await.unwrap().into_iter().find(|n| n.name == "healthy").unwrap().id;
    let tasks =
        wait_until(Duration::from_secs(30), "all six running on the healthy node", || async {
            let tasks = m.client.tasks().await.ok()?;
            (tasks
                .iter()
                .filter(|t| t.state == TaskState::Running && t.node == Some(healthy_id))
                .count()
                == 6)
                .then_some(tasks)
        })
        .await;
    assert_eq!(tasks.len(), 6, "nothing lost, nothing duplicated");
    let moved = tasks.iter().filter(|t| t.generation > 1).count();
    assert!(moved >= 1, "some tasks were first placed on the frozen node");
    std::process::Command::new("kill")
        .args(["-CONT", &frozen.process.pid().to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_is_restarted_per_policy() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &[]).await;
    // Serves /health for two seconds, then the file disappears and the check starts failing.
    let script =
        "mkdir -p /w; echo ok > /w/health; (sleep 2; rm /w/health) & exec httpd -f -p 80 -h /w";
    let id = m
        .client
        .submit(
            None,
            &spec(json!({"name": "sickly", "driver": "docker", "image": TEST_IMAGE,
                         "command": "sh", "args": ["-c", script], "ports": [{"container": 80}],
                         "health": {"type": "http", "port": 80, "path": "/health", "interval": "300ms",
                                    "timeout": "1s", "failure_threshold": 2},
                         "restart": {"mode": "on-failure", "max_attempts": 1, "initial_backoff": "100ms",
                                     "reschedule_attempts": 0},
                         "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&m.client, id, TaskState::Failed, Duration::from_secs(30)).await;
    let reasons: Vec<&str> = t.events.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"health check passing"), "{reasons:?}");
    let unhealthy =
        reasons.iter().filter(|r| r.starts_with("unhealthy: GET http://127.0.0.1:")).count();
    assert!(unhealthy >= 2, "each run turned unhealthy: {reasons:?}");
    assert!(reasons.contains(&"restart 1/1 in 100ms"), "{reasons:?}");
    assert_eq!(t.restart_count, 1);
    assert_eq!(t.healthy, Some(false));
    assert!(t.reason.unwrap().starts_with("unhealthy:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_api_rejects_bad_input_with_json_errors() {
    let m = TestManager::start(&[]).await;
    let base = &m.url;
    let bad_spec =
        br#"{"name": "x", "driver": "docker", "image": "", "constraints": ["zone = a"]}"#.to_vec();
    let checks = [
        (
            reqwest::Method::POST,
            format!("{base}/v1/tasks"),
            Some(b"{nope".to_vec()),
            400,
            "invalid_json",
        ),
        (reqwest::Method::POST, format!("{base}/v1/tasks"), Some(bad_spec), 400, "invalid_spec"),
        (
            reqwest::Method::GET,
            format!("{base}/v1/tasks/01900000-0000-7000-8000-0000000000ff"),
            None,
            404,
            "not_found",
        ),
        (
            reqwest::Method::DELETE,
            format!("{base}/v1/tasks/01900000-0000-7000-8000-0000000000ff"),
            None,
            404,
            "not_found",
        ),
        (
            reqwest::Method::GET,
            format!("{base}/v1/tasks?state=sleeping"),
            None,
            400,
            "invalid_argument",
        ),
        (reqwest::Method::GET, format!("{base}/v1/nodes/nobody"), None, 404, "not_found"),
        (
            reqwest::Method::POST,
            format!("{base}/v1/nodes/not-a-uuid/heartbeat"),
            Some(b"{}".to_vec()),
            400,
            "invalid_argument",
        ),
    ];
    for (method, url, body, status, code) in checks {
        let (got, json) = common::raw(method.clone(), &url, body).await;
        assert_eq!(
            (got, json["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {url}: {json}"
        );
    }
    // Several problems are listed at once.
    let (_, json) = common::raw(
        reqwest::Method::POST,
        &format!("{base}/v1/tasks"),
        Some(
            br#"{"name": "x", "driver": "docker", "image": "", "constraints": ["zone = a"]}"#
                .to_vec(),
        ),
    )
    .await;
    let fields: Vec<&str> = json["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["image", "constraints[0]"]);
    assert!(m.client.tasks().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_submitted_one_after_another_each_start() {
    // How fast they start is a benchmark (`cube-bench latency`), not a test.
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &[]).await;
    wait_until(Duration::from_secs(10), "node ready", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    for i in 0..20 {
        let id = m.client.submit(None, &sleeper(&format!("lat{i}"), "0B")).await.unwrap().task.id;
        wait_state(&m.client, id, TaskState::Running, Duration::from_secs(5)).await;
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, cube_http::client::ClientError>) -> bool {
    matches!(r, Err(cube_http::client::ClientError::Api { status: 404, .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_garbage_collected_everywhere_and_stay_gone() {
    let mut m = TestManager::start(&["--gc-after", "2s"]).await;
    let w = m.worker("w1", &["--gc-after", "2s"]).await;
    let done = m
        .client
        .submit(
            None,
            &spec(json!({"name": "once", "driver": "process", "command": "sh",
                                    "args": ["-c", "echo finished"]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let keep = m.client.submit(None, &sleeper("keeper", "0B")).await.unwrap().task.id;
    wait_state(&m.client, done, TaskState::Completed, Duration::from_secs(20)).await;
    wait_state(&m.client, keep, TaskState::Running, Duration::from_secs(20)).await;
    let log_dir = w.dir.path().join("data").join("tasks").join(done.to_string());

    wait_until(Duration::from_secs(30), "the finished task forgotten by both", || async {
        let gone = is_not_found(m.client.task(done).await)
            && is_not_found(w.client.task(done).await)
            && !log_dir.exists();
        gone.then_some(())
    })
    .await;
    // The running task is untouched, however old it gets.
    assert_eq!(m.client.task(keep).await.unwrap().state, TaskState::Running);
    assert_eq!(w.client.task(keep).await.unwrap().state, TaskState::Running);

    // The deletion was durable: a restarted manager does not bring the record back.
    m.kill9();
    m.restart().await;
    assert!(is_not_found(m.client.task(done).await));
    assert_eq!(m.client.task(keep).await.unwrap().state, TaskState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_token_guards_every_api_and_nodes_use_it_with_each_other() {
    const TOKEN: &str = "cluster-token-0123456789abcdef";
    let m = TestManager::start(&["--token", TOKEN]).await;
    let w = m.worker("w1", &["--token", TOKEN]).await;
    let with =
        |c: &cube_http::client::Client, t: &str| c.clone().with_token(Some(t.parse().unwrap()));

    // Without the token, or with another one: 401 with the JSON error, on both servers.
    for c in [m.client.clone(), w.client.clone(), with(&m.client, "another-token-0123456789")] {
        match c.tasks().await {
            Err(cube_http::client::ClientError::Api { status: 401, error, .. }) => {
                assert_eq!(error.code, cube_api::ErrorCode::Unauthorized);
            }
            other => panic!("expected 401 from {}: {other:?}", c.base()),
        }
    }
    // Health checks stay open (load balancers and probes carry no secrets).
    assert!(m.client.health().await.is_ok());

    // With it, everything works, including what the manager and the worker say to each other:
    // registration and heartbeats (the node is ready), dispatch (the task runs), the logs proxy.
    let client = with(&m.client, TOKEN);
    let s = spec(json!({"name": "guarded", "driver": "process", "command": "sh",
                        "args": ["-c", "echo guarded; sleep 3600"], "stop_grace": "1s"}));
    let id = client.submit(None, &s).await.unwrap().task.id;
    wait_state(&client, id, TaskState::Running, Duration::from_secs(20)).await;
    assert_eq!(client.nodes().await.unwrap()[0].state, cube_core::NodeState::Ready);
    let logs = wait_until(Duration::from_secs(10), "the task's output via the manager", || async {
        use futures_util::StreamExt;
        let mut stream = client.logs(id, false, None).await.ok()?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.ok()?);
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        out.contains("guarded").then_some(out)
    })
    .await;
    assert_eq!(logs.trim(), "guarded");
    assert_eq!(with(&w.client, TOKEN).task(id).await.unwrap().state, TaskState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_cluster_works_and_clients_must_trust_its_ca() {
    const TOKEN: &str = "tls-cluster-token-0123456789";
    let certs_dir = tempfile::tempdir().unwrap();
    let tls = common::TlsFiles::create(certs_dir.path());
    let (ca, cert, key) =
        (tls.ca.to_str().unwrap(), tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let secure = ["--token", TOKEN, "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
    let m = TestManager::start(&secure).await;
    assert!(m.url.starts_with("https://127.0.0.1:"), "{}", m.url);
    let w = m.worker("w1", &secure).await;
    assert!(w.process.url.starts_with("https://"), "{}", w.process.url);

    // A client that does not trust the CA gets nowhere, token or not; nor does plain HTTP.
    let untrusting = cube_http::client::Client::new(&m.url, Duration::from_secs(5))
        .unwrap()
        .with_token(Some(TOKEN.parse().unwrap()));
    assert!(
        matches!(
            untrusting.tasks().await,
            Err(cube_http::client::ClientError::Unreachable {
                kind: cube_http::client::Unreachable::Tls,
                ..
            })
        ),
        "an unknown CA must fail the handshake"
    );
    let plain =
        cube_http::client::Client::new(m.url.replace("https", "http"), Duration::from_secs(5))
            .unwrap()
            .with_token(Some(TOKEN.parse().unwrap()));
    assert!(plain.tasks().await.is_err(), "plain HTTP is not served");

    // Trusting the CA, with the token: the manager and the worker reach each other over TLS
    // (registration, heartbeats, dispatch, the logs proxy).
    let client = m.client.clone().with_token(Some(TOKEN.parse().unwrap()));
    let s = spec(json!({"name": "sealed", "driver": "process", "command": "sh",
                        "args": ["-c", "echo sealed; sleep 3600"], "stop_grace": "1s"}));
    let id = client.submit(None, &s).await.unwrap().task.id;
    wait_state(&client, id, TaskState::Running, Duration::from_secs(20)).await;
    let node = &client.nodes().await.unwrap()[0];
    assert!(node.address.starts_with("https://"), "the worker advertises HTTPS: {}", node.address);
    wait_until(Duration::from_secs(10), "the task's output via the manager", || async {
        use futures_util::StreamExt;
        let mut stream = client.logs(id, false, None).await.ok()?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.ok()?);
        }
        String::from_utf8_lossy(&out).contains("sealed").then_some(())
    })
    .await;

    // The CLI takes the CA with --tls-ca (or CUBE_TLS_CA).
    let out = std::process::Command::new(common::cube_bin())
        .args(["--addr", &m.url, "-o", "json", "status", &id.to_string()])
        .env("CUBE_TOKEN", TOKEN)
        .env("CUBE_TLS_CA", ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["state"], "running");
}

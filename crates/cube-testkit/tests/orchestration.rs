//! The orchestration logic, end to end through a real manager and real workers in one process,
//! on the fake driver and a virtual clock: what used to be testable only by spawning `cube` and
//! waiting on the wall clock, now in milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cube_api::types::TaskView;
use cube_core::{EventKind, Note, TaskState, Trigger};
use cube_testkit::{Cluster, ClusterConfig};
use serde_json::json;

fn starts(t: &TaskView) -> Vec<jiff::Timestamp> {
    t.events
        .iter()
        .filter(|e| e.kind == EventKind::Transition(Trigger::Started))
        .map(|e| e.at)
        .collect()
}

fn gaps(times: &[jiff::Timestamp]) -> Vec<Duration> {
    times.windows(2).map(|w| Duration::try_from(w[1].duration_since(w[0])).unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_crashing_task_restarts_with_doubling_backoff_then_fails() {
    let cluster = Cluster::start(1).await;
    let id = cluster
        .submit(json!({"name": "crash", "driver": "process", "command": "x",
            "env": {"FAKE_RUN_FOR": "0s", "FAKE_EXIT_CODE": "1"},
            "restart": {"mode": "on-failure", "max_attempts": 3, "initial_backoff": "1s",
                        "max_backoff": "4s", "reschedule_attempts": 0}}))
        .await;
    let t = cluster
        .wait_for(Duration::from_secs(30), "the task failed", |c| async move {
            let t = c.task(id).await.ok()?;
            (t.state == TaskState::Failed).then_some(t)
        })
        .await;
    assert_eq!(t.reason.as_deref(), Some("exited with code 1"));
    assert_eq!(t.restart_count, 3);
    assert_eq!(cluster.fake(0).starts(id), 4, "the first run and three restarts");
    let delays: Vec<u64> =
        gaps(&starts(&t)).iter().map(Duration::as_millis).map(|ms| ms as u64).collect();
    assert_eq!(delays, [1000, 2000, 4000], "1s, doubled, capped at 4s");
    let scheduled =
        t.events.iter().filter(|e| e.kind == EventKind::Note(Note::RestartScheduled)).count();
    assert_eq!(scheduled, 3);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_loses_its_tasks_to_the_others_and_is_fenced_when_it_returns() {
    let mut cluster = Cluster::start(2).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            cluster
                .submit(json!({"name": format!("t{i}"), "driver": "process", "command": "x"}))
                .await,
        );
    }
    cluster
        .wait_for(Duration::from_secs(10), "four tasks running", |c| async move {
            let tasks = c.tasks().await.ok()?;
            (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 4).then_some(())
        })
        .await;
    let w0 = cluster.node_id(0);
    let on_w0: Vec<_> = cluster
        .client()
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.node == Some(w0))
        .map(|t| t.id)
        .collect();
    assert_eq!(on_w0.len(), 2, "spread: two on each");

    // w0 falls silent; its workloads run on.
    cluster.stop_worker(0).await;
    let silent_since = tokio::time::Instant::now();
    cluster
        .wait_for(Duration::from_secs(15), "w0's tasks running on w1", |c| async move {
            let tasks = c.tasks().await.ok()?;
            tasks.iter().all(|t| t.state == TaskState::Running && t.node != Some(w0)).then_some(())
        })
        .await;
    let moved_after = silent_since.elapsed();
    assert!(moved_after > Duration::from_secs(5), "not before the 5 s TTL ({moved_after:?})");
    assert!(moved_after < Duration::from_secs(7), "soon after it ({moved_after:?})");
    let node = cluster.client().node(&w0.to_string()).await.unwrap();
    assert_eq!(node.state, cube_core::NodeState::Down);
    assert_eq!(cluster.fake(0).running().len(), 2, "the old copies still run on w0");
    assert_eq!(cluster.fake(1).running().len(), 4);

    // w0 comes back with its old copies: the manager fences them.
    cluster.start_worker(0).await;
    cluster
        .wait_for(Duration::from_secs(10), "w0's old copies stopped", |_| async {
            cluster.fake(0).running().is_empty().then_some(())
        })
        .await;
    let mut running = cluster.fake(1).running();
    running.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(running, expected, "every task runs exactly once");
    let node = cluster.client().node(&w0.to_string()).await.unwrap();
    assert_eq!(node.state, cube_core::NodeState::Ready);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_task_is_killed_restarted_and_fails_when_restarts_run_out() {
    let cluster = Cluster::start(1).await;
    let id = cluster
        .submit(json!({"name": "sick", "driver": "process", "command": "x",
            "env": {"FAKE_UNHEALTHY_AFTER": "5s"},
            "health": {"type": "exec", "command": ["check"], "interval": "1s", "timeout": "1s",
                       "failure_threshold": 3},
            "restart": {"mode": "on-failure", "max_attempts": 1, "initial_backoff": "1s",
                        "reschedule_attempts": 0}}))
        .await;
    let t = cluster
        .wait_for(Duration::from_secs(60), "the task failed", |c| async move {
            let t = c.task(id).await.ok()?;
            (t.state == TaskState::Failed).then_some(t)
        })
        .await;
    assert!(t.reason.as_deref().unwrap().starts_with("unhealthy: "), "{:?}", t.reason);
    assert_eq!(cluster.fake(0).starts(id), 2, "killed, restarted once, killed again");
    assert!(cluster.fake(0).running().is_empty(), "the killed workloads are gone");
    let kinds: Vec<EventKind> = t.events.iter().map(|e| e.kind).collect();
    let count = |k: EventKind| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count(EventKind::Note(Note::HealthPassing)), 2);
    assert_eq!(count(EventKind::Note(Note::Unhealthy)), 2);
    assert_eq!(count(EventKind::Transition(Trigger::Started)), 2);
    // Healthy for 5 s, then three failed probes a second apart: killed 7 s after each start.
    let starts = starts(&t);
    let killed: Vec<_> = t
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Note(Note::Unhealthy))
        .map(|e| e.at)
        .collect();
    let lived: Vec<Duration> = starts
        .iter()
        .zip(&killed)
        .map(|(s, k)| Duration::try_from(k.duration_since(*s)).unwrap())
        .collect();
    assert_eq!(lived, [Duration::from_secs(7), Duration::from_secs(7)]);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_races_with_the_exit_wins() {
    let cluster = Cluster::start(1).await;
    // Ignores SIGTERM, and exits by itself (code 1) two seconds in: while the worker waits out
    // its 10 s grace period.
    let id = cluster
        .submit(json!({"name": "racer", "driver": "process", "command": "x", "stop_grace": "10s",
            "env": {"FAKE_STOP": "hang", "FAKE_RUN_FOR": "3s", "FAKE_EXIT_CODE": "1"},
            "restart": {"mode": "on-failure"}}))
        .await;
    cluster
        .wait_for(Duration::from_secs(5), "running", |c| async move {
            (c.task(id).await.ok()?.state == TaskState::Running).then_some(())
        })
        .await;
    cluster.pass(Duration::from_secs(1)).await;
    cluster.drive(cluster.client().stop(id)).await.unwrap();
    let t = cluster
        .wait_for(Duration::from_secs(15), "finished", |c| async move {
            let t = c.task(id).await.ok()?;
            t.state.is_terminal().then_some(t)
        })
        .await;
    assert_eq!(t.state, TaskState::Completed, "the stop wins: no restart, no failure");
    assert_eq!(t.reason.as_deref(), Some("stopped on request (exited with code 1)"));
    assert_eq!(t.exit_code, Some(1));
    assert_eq!(cluster.fake(0).starts(id), 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn exhausted_restarts_move_the_task_to_another_node_once() {
    let cluster = Cluster::start(2).await;
    let id = cluster
        .submit(json!({"name": "flaky", "driver": "process", "command": "x",
            "env": {"FAKE_RUN_FOR": "1s", "FAKE_EXIT_CODE": "2"},
            "restart": {"mode": "on-failure", "max_attempts": 1, "initial_backoff": "1s",
                        "reschedule_attempts": 1}}))
        .await;
    let t = cluster
        .wait_for(Duration::from_secs(60), "failed for good", |c| async move {
            let t = c.task(id).await.ok()?;
            (t.state == TaskState::Failed).then_some(t)
        })
        .await;
    assert_eq!(t.reschedule_count, 1);
    assert_eq!(t.generation, 2, "placed twice");
    assert_eq!(
        (cluster.fake(0).starts(id), cluster.fake(1).starts(id)),
        (2, 2),
        "two runs on each node"
    );
    let requeued =
        t.events.iter().filter(|e| e.kind == EventKind::Transition(Trigger::Requeue)).count();
    assert_eq!(requeued, 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn finished_tasks_are_forgotten_everywhere_after_a_day() {
    let day = Duration::from_secs(24 * 3600);
    let cluster = Cluster::with(ClusterConfig {
        workers: 1,
        gc_after: Some(day),
        // A day of heartbeats every second would be 86,400 requests; a calm cluster is enough.
        heartbeat_interval: Duration::from_secs(600),
        node_ttl: Duration::from_secs(3600),
        ..ClusterConfig::default()
    })
    .await;
    let id = cluster
        .submit(json!({"name": "once", "driver": "process", "command": "x",
            "env": {"FAKE_RUN_FOR": "1s", "FAKE_OUTPUT": "done\n"}}))
        .await;
    cluster
        .wait_for(Duration::from_secs(10), "completed", |c| async move {
            (c.task(id).await.ok()?.state == TaskState::Completed).then_some(())
        })
        .await;
    let log_dir = cluster.data_dir(0).join("tasks").join(id.to_string());
    assert!(log_dir.exists());
    let worker = cluster.worker_client(0);

    // Ten-minute steps through the quiet day (each step costs wall time); finer ones around
    // the deadline.
    cluster.pass_in_steps(day - Duration::from_secs(120), Duration::from_secs(600)).await;
    assert_eq!(cluster.task(id).await.state, TaskState::Completed, "kept for the day");
    assert!(worker.task(id).await.is_ok());

    cluster.pass_in_steps(Duration::from_secs(300), Duration::from_secs(30)).await;
    let gone = |r: Result<TaskView, cube_http::client::ClientError>| matches!(r, Err(e) if e.code() == Some(cube_api::ErrorCode::NotFound));
    assert!(gone(cluster.client().task(id).await), "forgotten by the manager");
    assert!(gone(worker.task(id).await), "and by the worker");
    assert!(!log_dir.exists(), "with its log");
    cluster.shutdown().await;
}

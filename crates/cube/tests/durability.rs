//! Durability: what the API acknowledged survives SIGKILL of the manager or a worker, workers
//! re-adopt their workloads, and a damaged data file is refused with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TEST_IMAGE, TestManager, TestWorker, docker_lock, docker_ready, spec, wait_until};
use cube_core::{DriverHandle, TaskId, TaskState};
use serde_json::json;

/// A task id chosen by the client, so a retried submit is recognised as the same task.
fn client_id(i: usize) -> TaskId {
    format!("01900000-0000-7000-8000-{i:012x}").parse().unwrap()
}

/// The crash harness: `clients` concurrent clients submit `total` tasks (each retried with its
/// own id until acknowledged) while the manager is SIGKILLed `kills` times at moments spread
/// over the run (with jitter) and restarted on the same port. Returns the acknowledged ids.
async fn submit_through_manager_crashes(
    m: &mut TestManager,
    total: usize,
    clients: usize,
    kills: usize,
) -> BTreeSet<TaskId> {
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (next, acked, client) = (Arc::clone(&next), Arc::clone(&acked), m.client.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let s =
                    spec(json!({"name": format!("c{i}"), "driver": "process", "command": "sleep",
                                    "args": ["3600"], "stop_grace": "1s"}));
                let id = client_id(i);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match client.submit(Some(id), &s).await {
                        Ok(_) => break,
                        // The manager is down or restarting: try again, same id.
                        Err(e) if e.is_transient() && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("submit {i} failed for good: {e}"),
                    }
                }
                acked.lock().unwrap().insert(id);
            }
        }));
    }
    // Seeded: the same "random" kill moments in every run.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for k in 0..kills {
        let target = (k + 1) * total / (kills + 1);
        wait_until(Duration::from_secs(120), "submissions progressing", || async {
            (acked.lock().unwrap().len() >= target).then_some(())
        })
        .await;
        // Jitter, so the kill lands at a different point of the submit traffic each time.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        m.kill9();
        eprintln!("killed the manager after {} acknowledged submits", acked.lock().unwrap().len());
        m.restart().await;
    }
    for h in handles {
        h.await.unwrap();
    }
    acked.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_when_the_manager_is_killed_five_times() {
    let mut m = TestManager::start(&["--node-ttl", "10s"]).await;
    let w1 = m.worker("w1", &[]).await;
    let w2 = m.worker("w2", &[]).await;
    wait_until(Duration::from_secs(10), "two nodes", || async {
        (m.client.nodes().await.ok()?.len() == 2).then_some(())
    })
    .await;
    let acked = submit_through_manager_crashes(&mut m, 2000, 8, 5).await;
    assert_eq!(acked.len(), 2000);

    let tasks = wait_until(Duration::from_secs(180), "every acknowledged task running", || async {
        let tasks = m.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 2000).then_some(tasks)
    })
    .await;
    let ids: BTreeSet<TaskId> = tasks.iter().map(|t| t.id).collect();
    assert_eq!(tasks.len(), 2000, "no task stored twice or invented");
    assert_eq!(ids, acked, "exactly the acknowledged tasks exist");

    // On the workers: each task runs exactly once, as one live process.
    let mut copies: HashMap<TaskId, usize> = HashMap::new();
    let mut pids = BTreeSet::new();
    for w in [&w1, &w2] {
        for t in w.client.tasks().await.unwrap() {
            if t.state == TaskState::Running {
                *copies.entry(t.id).or_default() += 1;
                if let Some(DriverHandle::Process { pid, .. }) = t.handle {
                    assert!(pids.insert(pid));
                }
            }
        }
    }
    assert_eq!(copies.len(), 2000);
    assert!(copies.values().all(|c| *c == 1), "no task runs twice");
    // Stop them all so the workers' cleanup has little to do.
    for id in &ids {
        m.client.stop(*id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_readopts_its_containers_without_restarting_them() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let mut w = TestWorker::start(&[]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = spec(json!({"name": format!("keep{i}"), "driver": "docker", "image": TEST_IMAGE,
                            "command": "sleep", "args": ["3600"], "stop_grace": "1s"}));
        ids.push(w.client.submit(None, &s).await.unwrap().task.id);
    }
    let before = wait_until(Duration::from_secs(60), "twenty containers running", || async {
        let tasks = w.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 20).then_some(tasks)
    })
    .await;
    let containers: BTreeMap<TaskId, String> = before
        .iter()
        .map(|t| match &t.handle {
            Some(DriverHandle::Container { id }) => (t.id, id.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let started_at = |id: &str| {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.State.StartedAt}}", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let start_times: BTreeMap<&String, String> =
        containers.values().map(|c| (c, started_at(c))).collect();

    w.kill9();
    w.restart().await;

    let after =
        wait_until(Duration::from_secs(20), "the same twenty tasks running again", || async {
            let tasks = w.client.tasks().await.ok()?;
            (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 20).then_some(tasks)
        })
        .await;
    for t in &after {
        assert_eq!(
            t.handle,
            Some(DriverHandle::Container { id: containers[&t.id].clone() }),
            "same container"
        );
        assert!(t.events.iter().any(|e| e.reason.starts_with("re-adopted after a worker restart")));
    }
    for (c, at) in &start_times {
        assert_eq!(&started_at(c), at, "container {c} was not restarted");
    }
    let mut running = w.containers(None);
    running.sort();
    let mut expected: Vec<String> = containers.values().cloned().collect();
    expected.sort();
    assert_eq!(running, expected, "no extra container exists");
    // Stop through the API so the engine sees a calm shutdown.
    for id in &ids {
        w.client.stop(*id).await.unwrap();
    }
    wait_until(Duration::from_secs(60), "containers removed", || async {
        w.containers(None).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_while_the_worker_was_down_reaches_the_log_once() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let mut w = TestWorker::start(&[]).await;
    // Numbered lines, 20 a second; the container runs on while the worker is down.
    let s = spec(json!({"name": "counter", "driver": "docker", "image": TEST_IMAGE,
        "command": "sh", "args": ["-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done"],
        "stop_grace": "1s"}));
    let id = w.client.submit(None, &s).await.unwrap().task.id;
    common::wait_state(&w.client, id, TaskState::Running, Duration::from_secs(30)).await;
    let log = w.dir.path().join("data/tasks").join(id.to_string()).join("output.log");
    let lines = |log: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .collect()
    };
    wait_until(Duration::from_secs(10), "the first lines copied", || async {
        (lines(&log).len() >= 10).then_some(())
    })
    .await;

    w.kill9();
    let copied_before = lines(&log).len();
    // Two seconds of output nobody copies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.restart().await;
    // Wait on the highest line number, not the count: lines copied twice must not make the
    // wait end before the final check's threshold is reached.
    wait_until(Duration::from_secs(10), "copying resumed", || async {
        let highest = lines(&log).into_iter().max().unwrap_or(0);
        (highest > copied_before as u64 + 40).then_some(())
    })
    .await;
    w.client.stop(id).await.unwrap();
    common::wait_state(&w.client, id, TaskState::Completed, Duration::from_secs(20)).await;

    let got = lines(&log);
    // Every line reached the file, in order; the few written just before the kill may come
    // twice (the cursor is saved every half second), never more.
    let mut expected = 0;
    let mut repeated = 0;
    for n in &got {
        if *n == expected {
            expected += 1;
        } else if *n < expected {
            repeated += 1;
        } else {
            panic!("line {expected} is missing (next was {n}); the log holds {got:?}");
        }
    }
    assert!(expected > copied_before as u64 + 40, "{expected} lines in all");
    assert!(repeated <= 20, "{repeated} lines copied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_serves_ten_thousand_stored_tasks() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Write the state a busy manager would have left behind, straight into its store.
        let store = cube_store::RedbStore::open(dir.path().join("data/manager.redb")).unwrap();
        let s =
            spec(json!({"name": "stored", "driver": "process", "command": "sleep", "args": ["1"]}));
        let now = cube_core::Timestamp::now();
        let mut commits = Vec::new();
        for chunk in (0..10_000).collect::<Vec<usize>>().chunks(1000) {
            let mut batch = cube_store::Batch::new();
            for i in chunk {
                let task = cube_core::Task::new(client_id(*i), s.clone(), now);
                batch.put(cube_store::Table::Tasks, task.id.to_string(), &task).unwrap();
            }
            commits.push(cube_store::Store::commit(&store, batch));
        }
        for c in commits {
            c.await.unwrap();
        }
    }
    let m = TestManager::start_in(dir, &[]).await;
    let tasks = m.client.tasks().await.unwrap();
    assert_eq!(tasks.len(), 10_000);
    assert!(tasks.iter().all(|t| t.state == TaskState::Pending), "nothing to run them on yet");
}

#[test]
fn damaged_data_files_are_refused_with_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("manager", "manager.redb", vec![0x42u8; 10_000]),
        ("worker", "worker.redb", b"not a database at all".to_vec()),
    ];
    for (role, file, bytes) in cases {
        let data = dir.path().join(role);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(file), bytes).unwrap();
        let out = std::process::Command::new(common::cube_bin())
            .args([role, "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()])
            .env("CUBE_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role} must refuse a damaged file");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(file), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A truncated real database.
    let data = dir.path().join("truncated");
    drop(cube_store::RedbStore::open(data.join("manager.redb")).unwrap());
    let bytes = std::fs::read(data.join("manager.redb")).unwrap();
    std::fs::write(data.join("manager.redb"), &bytes[..bytes.len() / 2]).unwrap();
    let out = std::process::Command::new(common::cube_bin())
        .args(["manager", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()])
        .env("CUBE_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: ") && stderr.contains("truncated"), "{stderr}");
}

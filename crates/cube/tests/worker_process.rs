//! The worker with the process driver: real child processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::{TestWorker, alive, spec, wait_state, wait_until};
use cube_core::{DriverHandle, TaskState};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_runs_in_its_own_group_and_stops() {
    let w = TestWorker::start(&[]).await;
    let submitted_at = Instant::now();
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "sleeper", "driver": "process", "command": "sleep",
                                    "args": ["300"], "env": {"GREETING": "hi"}, "workdir": "/tmp",
                                    "stop_grace": "2s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&w.client, id, TaskState::Running, Duration::from_secs(2)).await;
    eprintln!("process submit->running: {:?}", submitted_at.elapsed());
    let Some(DriverHandle::Process { pid, start_ticks }) = t.handle else {
        panic!("no pid: {:?}", t.handle)
    };
    assert!(alive(pid));
    assert!(start_ticks > 0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(fields[2], pid.to_string(), "the task leads its own process group");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("GREETING=hi"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/tmp")
    );

    w.client.stop(id).await.unwrap();
    let t = wait_until(Duration::from_secs(3), "process stopped and task completed", || async {
        let t = w.client.task(id).await.ok()?;
        (t.state == TaskState::Completed && !alive(pid)).then_some(t)
    })
    .await;
    assert!(t.reason.unwrap().starts_with("stopped on request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_grace() {
    let w = TestWorker::start(&[]).await;
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "stubborn", "driver": "process", "command": "sh",
                                    "args": ["-c", "trap '' TERM; while true; do sleep 1; done"],
                                    "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    wait_state(&w.client, id, TaskState::Running, Duration::from_secs(2)).await;
    let stop_at = Instant::now();
    w.client.stop(id).await.unwrap();
    let t = wait_state(&w.client, id, TaskState::Completed, Duration::from_secs(3)).await;
    assert!(stop_at.elapsed() >= Duration::from_millis(900));
    assert!(t.reason.unwrap().contains("killed by signal 9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_missing_commands_fail_with_reasons() {
    let w = TestWorker::start(&[]).await;
    let exit3 = w
        .client
        .submit(
            None,
            &spec(json!({"name": "exit3", "driver": "process", "command": "sh",
                                    "args": ["-c", "echo out; echo err >&2; exit 3"]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let missing = w
        .client
        .submit(
            None,
            &spec(
                json!({"name": "missing", "driver": "process", "command": "no-such-command-xyz"}),
            ),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&w.client, exit3, TaskState::Failed, Duration::from_secs(5)).await;
    assert_eq!(t.exit_code, Some(3));
    let log = std::fs::read_to_string(
        w.dir.path().join("data/tasks").join(exit3.to_string()).join("output.log"),
    )
    .unwrap();
    assert_eq!(log, "out\nerr\n");

    let t = wait_state(&w.client, missing, TaskState::Failed, Duration::from_secs(5)).await;
    let reason = t.reason.unwrap();
    // Run as nobody, a directory of the worker's PATH it may not search (root's home) turns
    // "not found" into "permission denied" (execvp's rule); either way the reason says why.
    assert!(
        reason.contains("no-such-command-xyz")
            && (reason.contains("No such file") || reason.contains("Permission denied")),
        "{reason}"
    );
    assert_eq!(w.client.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_keep_running_when_the_worker_shuts_down() {
    let mut w = TestWorker::start(&[]).await;
    let id = w
        .client
        .submit(None, &spec(json!({"name": "survivor", "driver": "process", "command": "sleep", "args": ["300"]})))
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&w.client, id, TaskState::Running, Duration::from_secs(2)).await;
    let Some(DriverHandle::Process { pid, .. }) = t.handle else { panic!() };
    let status = w.process.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{}", w.process.logs());
    assert!(alive(pid), "the workload outlives the agent");
    assert!(w.process.logs().contains("SIGTERM received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_process_tasks_all_run_once() {
    let w = TestWorker::start(&[]).await;
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let client = w.client.clone();
            tokio::spawn(async move {
                let s = spec(json!({"name": format!("p{i}"), "driver": "process", "command": "sleep", "args": ["300"]}));
                client.submit(None, &s).await.unwrap().task.id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    let tasks = wait_until(Duration::from_secs(20), "50 process tasks running", || async {
        let tasks = w.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 50).then_some(tasks)
    })
    .await;
    let mut pids: Vec<u32> = tasks
        .iter()
        .filter_map(|t| match t.handle {
            Some(DriverHandle::Process { pid, .. }) => Some(pid),
            _ => None,
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 50, "one process per task");
    assert!(pids.iter().all(|p| alive(*p)));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_worker_deletes_finished_tasks_and_their_logs() {
    let w = TestWorker::start(&["--gc-after", "1s"]).await;
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "once", "driver": "process", "command": "echo",
                                    "args": ["bye"]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let task_dir = w.dir.path().join("data").join("tasks").join(id.to_string());
    wait_state(&w.client, id, TaskState::Completed, Duration::from_secs(5)).await;
    wait_until(Duration::from_secs(20), "record and log directory deleted", || async {
        let gone = matches!(
            w.client.task(id).await,
            Err(cube_http::client::ClientError::Api { status: 404, .. })
        ) && !task_dir.exists();
        gone.then_some(())
    })
    .await;
}

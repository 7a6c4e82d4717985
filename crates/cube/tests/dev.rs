//! `cube dev`: the one-process local cluster keeps its state across restarts and re-adopts the
//! workloads it left running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::{CubeProcess, spec, wait_state, wait_until};
use cube_core::{DriverHandle, TaskState};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dev_cluster_still_lists_and_runs_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev").to_str().unwrap().to_owned();
    let args = ["dev", "--listen", "127.0.0.1:0", "--data-dir", &data];
    let mut dev = CubeProcess::start(&args, dir.path());
    let client = dev.client();
    let s =
        spec(json!({"name": "keeper", "driver": "process", "command": "sleep", "args": ["3600"],
                        "stop_grace": "1s"}));
    let id = client.submit(None, &s).await.unwrap().task.id;
    let before = wait_state(&client, id, TaskState::Running, Duration::from_secs(10)).await;
    let Some(DriverHandle::Process { pid, .. }) = before.handle else {
        panic!("{:?}", before.handle)
    };

    assert!(dev.terminate().success(), "clean exit on SIGTERM:\n{}", dev.logs());
    let mut dev = CubeProcess::start(&args, dir.path());
    let client = dev.client();
    let after =
        wait_until(Duration::from_secs(10), "the earlier task listed and running", || async {
            let tasks = client.tasks().await.ok()?;
            tasks.into_iter().find(|t| t.id == id && t.state == TaskState::Running)
        })
        .await;
    assert_eq!(after.handle, before.handle, "the same process, re-adopted, not restarted");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    client.stop(id).await.unwrap();
    wait_state(&client, id, TaskState::Completed, Duration::from_secs(10)).await;
    assert!(dev.terminate().success());
}

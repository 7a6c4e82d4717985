//! Upgrades: a `cube dev` directory written by the first released format opens, and its tasks
//! run, under this version.
//!
//! `fixtures/dev-v1` is a real `cube dev` data directory (manager and worker stores, node id,
//! task logs) written by commit 445fdfd with five tasks: `keeper` (running, on-failure, exec
//! health check, a constraint), `done` (completed), `crash` (failed after two restarts), `box`
//! (a docker container that completed) and `stopped` (stopped by the user). The keeper's
//! process is long gone, so the worker finds it vanished and restarts it per its policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{CubeProcess, kill_process_tasks, wait_state, wait_until};
use cube_core::{DriverHandle, TaskId, TaskState};

const KEEPER: &str = "01a23366-e31c-75bd-b5bb-eec9eadf6452";
const DONE: &str = "01a23366-e352-7369-b538-8cae788c1c7f";
const CRASH: &str = "01a23366-e386-7127-b8f0-fd816558b26f";
const BOX: &str = "01a23366-e3c2-7163-9ca0-ac522e02a76b";
const STOPPED: &str = "01a23366-e405-73bb-9a27-4d515bfb4e3a";
const NODE: &str = "01a23366-dcdb-727c-8136-845a4bf16d52";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn id(s: &str) -> TaskId {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_dev_directory_opens_and_runs_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-v1"), &data);
    let data_s = data.to_str().unwrap().to_owned();
    // The fixture's finished tasks are older than any retention: keep them.
    let args = ["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_s, "--gc-after", "never"];
    let mut dev = CubeProcess::start(&args, dir.path());
    let client = dev.client();

    let all = wait_until(Duration::from_secs(20), "the five v1 tasks listed", || async {
        let tasks = client.tasks().await.ok()?;
        (tasks.len() == 5).then_some(tasks)
    })
    .await;
    let ids: Vec<String> = all.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, [KEEPER, DONE, CRASH, BOX, STOPPED]);

    // The keeper's process vanished while nothing ran: restarted once, per its policy.
    let keeper = wait_until(Duration::from_secs(20), "the keeper running again", || async {
        let t = client.task(id(KEEPER)).await.ok()?;
        (t.state == TaskState::Running && t.restart_count == 1 && t.healthy == Some(true))
            .then_some(t)
    })
    .await;
    assert!(matches!(keeper.handle, Some(DriverHandle::Process { .. })), "{:?}", keeper.handle);
    let reasons: Vec<&str> = keeper.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        &reasons[..4],
        ["submitted", "placed on vm (score 0.0314)", "started (pid 26496)", "health check passing"],
        "the v1 history is kept"
    );
    assert_eq!(keeper.spec.constraints.len(), 1);

    let done = client.task(id(DONE)).await.unwrap();
    assert_eq!((done.state, done.exit_code), (TaskState::Completed, Some(0)));
    let crash = client.task(id(CRASH)).await.unwrap();
    assert_eq!(
        (crash.state, crash.exit_code, crash.restart_count),
        (TaskState::Failed, Some(3), 2)
    );
    assert_eq!(crash.reason.as_deref(), Some("exited with code 3"));
    let boxed = client.task(id(BOX)).await.unwrap();
    assert_eq!(boxed.state, TaskState::Completed);
    assert!(matches!(boxed.handle, Some(DriverHandle::Container { .. })), "{:?}", boxed.handle);
    let stopped = client.task(id(STOPPED)).await.unwrap();
    assert_eq!(stopped.reason.as_deref(), Some("stopped on request (killed by signal 15)"));

    // Output written by the v1 worker is still served.
    use futures_util::StreamExt;
    let mut logs = client.logs(id(DONE), false, None).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&text), "all done\n");

    // The worker kept its node id.
    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.id.to_string()).collect::<Vec<_>>(), [NODE]);

    client.stop(id(KEEPER)).await.unwrap();
    wait_state(&client, id(KEEPER), TaskState::Completed, Duration::from_secs(10)).await;
    assert!(dev.terminate().success(), "clean exit on SIGTERM:\n{}", dev.logs());
    kill_process_tasks(&data.join("worker"));
}

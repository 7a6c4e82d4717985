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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_service_answers_on_its_port_and_keeps_answering_through_an_update() {
    if !common::docker_ready() {
        return;
    }
    let _serial = common::docker_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev").to_str().unwrap().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_arg = port.to_string();
    let args =
        ["dev", "--listen", "127.0.0.1:0", "--data-dir", &data, "--demo", "--demo-port", &port_arg];
    let mut dev = CubeProcess::start(&args, dir.path());
    let client = dev.client();
    let url = format!("http://127.0.0.1:{port}/");
    wait_until(Duration::from_secs(90), "the demo's URL printed", || async {
        dev.logs()
            .contains(&format!("demo service demo answers at {url} (3 instances)"))
            .then_some(())
    })
    .await;

    // Eight clients on kept-alive connections while the README's update rolls out.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        load.spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = Vec::new();
            while !stop.is_cancelled() {
                let answer = http.get(&url).send().await.and_then(|r| r.error_for_status());
                answers.push(match answer {
                    Ok(r) => r.text().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                });
            }
            answers
        });
    }
    let file = include_str!("../../../examples/demo-service.toml");
    let mut v2: cube_core::service::ServiceSpec =
        toml::from_str(&file.replace("VERSION = \"1\"", "VERSION = \"2\"")).unwrap();
    v2.ports[0].publish = port;
    client.put_service(&v2, None).await.unwrap();
    let done = wait_until(Duration::from_secs(120), "the update rolled out", || async {
        let d = client.service("demo").await.ok()?.deployment?;
        (d.version == 2 && d.status != cube_core::deployment::DeploymentStatus::Running)
            .then_some(d)
    })
    .await;
    assert_eq!(done.status, cube_core::deployment::DeploymentStatus::Successful, "{done:?}");
    // The deployment succeeds once every new instance is healthy; the last old one may still
    // be draining then, and answers until its stop (which follows every ingress leaving it).
    wait_until(Duration::from_secs(60), "the old instances stopped", || async {
        let tasks = client.tasks().await.ok()?;
        let old =
            |t: &&cube_api::types::TaskView| t.instance.as_ref().is_some_and(|i| i.version == 1);
        tasks.iter().filter(|t| old(t)).all(|t| t.state.is_terminal()).then_some(())
    })
    .await;
    stop.cancel();
    let answers: Vec<Vec<Result<String, String>>> = load.join_all().await;
    let failed: Vec<&String> = answers.iter().flatten().filter_map(|a| a.as_ref().err()).collect();
    let sent: usize = answers.iter().map(Vec::len).sum();
    eprintln!("demo update: {sent} requests, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    for client_answers in &answers {
        let first = client_answers.first().unwrap().as_ref().unwrap();
        let last = client_answers.last().unwrap().as_ref().unwrap();
        assert!(first.starts_with("hello from cube: version 1, instance "), "{first}");
        assert!(last.starts_with("hello from cube: version 2, instance "), "{last}");
    }

    // A restart keeps what the user made of the demo.
    assert!(dev.terminate().success(), "{}", dev.logs());
    let mut dev = CubeProcess::start(&args, dir.path());
    let client = dev.client();
    wait_until(Duration::from_secs(30), "the demo left as it was", || async {
        dev.logs().contains(&format!("demo service demo is deployed already: {url}")).then_some(())
    })
    .await;
    assert_eq!(client.service("demo").await.unwrap().version, 2);
    client.remove_service("demo").await.unwrap();
    wait_until(Duration::from_secs(60), "the demo's instances gone", || async {
        let tasks = client.tasks().await.ok()?;
        tasks.iter().all(|t| t.state.is_terminal()).then_some(())
    })
    .await;
    assert!(dev.terminate().success());
}

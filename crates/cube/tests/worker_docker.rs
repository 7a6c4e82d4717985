//! The worker with the docker driver, against the real Docker engine and the test image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::{TEST_IMAGE, TestWorker, docker_lock, docker_ready, spec, wait_state, wait_until};
use cube_core::{DriverHandle, TaskState};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_task_runs_is_labelled_and_stops_within_grace() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;
    let sub = w
        .client
        .submit(
            None,
            &spec(json!({"name": "sleeper", "driver": "docker", "image": TEST_IMAGE,
                         "command": "sleep", "args": ["300"], "stop_grace": "2s",
                         "resources": {"memory": "64MiB", "cpu": 0.5}})),
        )
        .await
        .unwrap();
    assert!(sub.created);
    let id = sub.task.id;
    let task =
        wait_until(Duration::from_secs(2), "task running and its container labelled", || async {
            let t = w.client.task(id).await.ok()?;
            (t.state == TaskState::Running && w.containers(Some(&id.to_string())).len() == 1)
                .then_some(t)
        })
        .await;

    let containers = w.containers(Some(&id.to_string()));
    assert_eq!(task.handle, Some(DriverHandle::Container { id: containers[0].clone() }));
    // Limits reach the engine.
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}}",
            &containers[0],
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "67108864 500000000 no");

    let stopped = w.client.stop(id).await.unwrap();
    assert_eq!(stopped.desired_state, cube_core::DesiredState::Stopped);
    wait_until(Duration::from_secs(3), "container removed and task completed", || async {
        let t = w.client.task(id).await.ok()?;
        (t.state == TaskState::Completed && w.containers(Some(&id.to_string())).is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_ignoring_sigterm_is_killed_after_the_grace_period() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "stubborn", "driver": "docker", "image": TEST_IMAGE,
                         "command": "sh", "args": ["-c", "trap '' TERM; while true; do sleep 1; done"],
                         "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    wait_state(&w.client, id, TaskState::Running, Duration::from_secs(5)).await;
    let stop_at = Instant::now();
    w.client.stop(id).await.unwrap();
    let t = wait_until(Duration::from_secs(2), "container gone within grace + 1s", || async {
        let t = w.client.task(id).await.ok()?;
        (t.state == TaskState::Completed && w.containers(Some(&id.to_string())).is_empty())
            .then_some(t)
    })
    .await;
    assert!(
        stop_at.elapsed() >= Duration::from_millis(900),
        "SIGTERM was ignored, so the grace period must pass"
    );
    assert_eq!(t.exit_code, Some(137), "killed by SIGKILL: {:?}", t.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_containers_and_missing_images_fail_with_reasons() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;
    let exit3 = w
        .client
        .submit(
            None,
            &spec(json!({"name": "exit3", "driver": "docker", "image": TEST_IMAGE,
                                    "command": "sh", "args": ["-c", "echo bye; exit 3"]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let missing_at = Instant::now();
    let missing = w
        .client
        .submit(
            None,
            &spec(json!({"name": "missing", "driver": "docker", "image": "does-not-exist:1"})),
        )
        .await
        .unwrap()
        .task
        .id;

    let t = wait_state(&w.client, missing, TaskState::Failed, Duration::from_secs(5)).await;
    assert!(missing_at.elapsed() < Duration::from_secs(5));
    let reason = t.reason.unwrap();
    assert!(reason.contains("does-not-exist:1"), "reason names the image: {reason}");

    let t = wait_state(&w.client, exit3, TaskState::Failed, Duration::from_secs(10)).await;
    assert_eq!(t.exit_code, Some(3));
    assert_eq!(t.reason.as_deref(), Some("exited with code 3"));
    assert!(w.containers(Some(&exit3.to_string())).is_empty(), "exited container is removed");
    let log = std::fs::read_to_string(
        w.dir.path().join("data/tasks").join(exit3.to_string()).join("output.log"),
    )
    .unwrap();
    assert_eq!(log, "bye\n", "container output is kept after removal");

    // The worker keeps serving.
    assert_eq!(w.client.health().await.unwrap().status, "ok");
    assert_eq!(w.client.tasks().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_answers_http_from_the_host() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "web", "driver": "docker", "image": TEST_IMAGE,
                                    "command": "httpd", "args": ["-f", "-p", "80", "-h", "/www"],
                                    "ports": [{"container": 80}]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = wait_state(&w.client, id, TaskState::Running, Duration::from_secs(5)).await;
    assert_eq!(t.host_ports.len(), 1, "{:?}", t.host_ports);
    let port = t.host_ports[0].host_port;
    assert_eq!(t.host_ports[0].container_port, 80);
    assert_ne!(port, 0);
    let body =
        wait_until(Duration::from_secs(5), "httpd answering on the host port", || async move {
            let resp = cube_http::tls::http_client_builder()
                .build()
                .ok()?
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .ok()?;
            resp.status().is_success().then_some(())?;
            resp.text().await.ok()
        })
        .await;
    assert!(body.contains("cube test image"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submissions_all_run_exactly_once() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;
    let started = Instant::now();
    let submissions = (0..50).map(|i| {
        let client = w.client.clone();
        tokio::spawn(async move {
            let s =
                spec(json!({"name": format!("many-{i}"), "driver": "docker", "image": TEST_IMAGE,
                                "command": "sleep", "args": ["300"], "stop_grace": "1s"}));
            client.submit(None, &s).await.unwrap().task.id
        })
    });
    let mut ids = Vec::new();
    for s in submissions {
        ids.push(s.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    wait_until(Duration::from_secs(90), "all 50 tasks running", || async {
        let tasks = w.client.tasks().await.ok()?;
        (tasks.iter().filter(|t| t.state == TaskState::Running).count() == 50).then_some(())
    })
    .await;
    eprintln!("50 docker tasks running after {:?}", started.elapsed());
    let containers = w.containers(None);
    assert_eq!(containers.len(), 50, "one container per task, none twice");
    for id in &ids {
        assert_eq!(w.containers(Some(&id.to_string())).len(), 1, "task {id}");
    }

    // And all of them stop concurrently through the API.
    let stops: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, id) = (w.client.clone(), *id);
            tokio::spawn(async move { client.stop(id).await.unwrap() })
        })
        .collect();
    for s in stops {
        s.await.unwrap();
    }
    wait_until(Duration::from_secs(90), "all 50 tasks completed and removed", || async {
        let tasks = w.client.tasks().await.ok()?;
        (tasks.iter().all(|t| t.state == TaskState::Completed) && w.containers(None).is_empty())
            .then_some(())
    })
    .await;
}

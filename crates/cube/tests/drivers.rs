//! Drivers that cannot be abused: what a container or a process task gets by default, what a
//! worker refuses unless its own flags allow it, and the reasons, against real `cube`
//! processes and the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::{
    TEST_IMAGE, TestManager, TestWorker, docker_lock, docker_ready, raw, spec, wait_state,
    wait_until,
};
use cube_core::{TaskId, TaskState};
use cube_http::client::Client;
use serde_json::json;

/// The whole output of task `id` once it contains `needle`.
async fn output_containing(client: &Client, id: TaskId, needle: &str) -> String {
    wait_until(Duration::from_secs(20), &format!("{needle:?} in the output of {id}"), || async {
        use futures_util::StreamExt;
        let mut stream = client.logs(id, false, None).await.ok()?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.ok()?);
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        out.contains(needle).then_some(out)
    })
    .await
}

/// `docker inspect --format` of a container.
fn inspect(container: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The reason task `id` is pending with, once it contains `needle`.
async fn pending_reason(client: &Client, id: TaskId, needle: &str) -> String {
    wait_until(
        Duration::from_secs(20),
        &format!("task {id} unplaceable for {needle:?}"),
        || async {
            let t = client.task(id).await.ok()?;
            let reason = t.reason.unwrap_or_default();
            (t.state == TaskState::Pending && reason.contains(needle)).then_some(reason)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_no_new_privileges_and_the_confinement_their_spec_asks_for() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let w = TestWorker::start(&[]).await;

    // A plain container: no-new-privileges, nothing privileged, no host network or mounts.
    let plain = w
        .client
        .submit(
            None,
            &spec(json!({"name": "plain", "driver": "docker", "image": TEST_IMAGE,
                         "command": "sleep", "args": ["300"], "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    // A confined one: read-only root, every capability dropped, an unprivileged user.
    let script = "grep CapEff /proc/self/status; id -u; \
                  touch /probe 2>&1 || echo rootfs-is-read-only; \
                  echo done; sleep 300";
    let confined = w
        .client
        .submit(
            None,
            &spec(json!({"name": "confined", "driver": "docker", "image": TEST_IMAGE,
                         "command": "sh", "args": ["-c", script], "stop_grace": "1s",
                         "read_only_rootfs": true, "cap_drop": ["ALL"], "user": "1234"})),
        )
        .await
        .unwrap()
        .task
        .id;
    for id in [plain, confined] {
        wait_state(&w.client, id, TaskState::Running, Duration::from_secs(20)).await;
    }

    let plain_container = w.containers(Some(&plain.to_string())).remove(0);
    assert_eq!(
        inspect(
            &plain_container,
            "{{.HostConfig.SecurityOpt}} {{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}} \
             {{.HostConfig.CapAdd}} {{len .Mounts}} {{.HostConfig.ReadonlyRootfs}}"
        ),
        "[no-new-privileges] false default [] 0 false"
    );

    let container = w.containers(Some(&confined.to_string())).remove(0);
    assert_eq!(
        inspect(
            &container,
            "{{.HostConfig.SecurityOpt}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} \
             {{.Config.User}}"
        ),
        "[no-new-privileges] true [ALL] 1234"
    );
    // And the workload feels it: no capabilities, its user, a root it cannot write.
    let out = output_containing(&w.client, confined, "done").await;
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("1234"), "{out}");
    assert!(out.contains("rootfs-is-read-only"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");

    for id in [plain, confined] {
        w.client.stop(id).await.unwrap();
    }
    wait_until(Duration::from_secs(10), "both containers removed", || async {
        w.containers(None).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_what_its_flags_do_not_allow_with_a_reason_naming_the_flag() {
    // A standalone worker has no manager to place for it: it checks every task itself.
    let w = TestWorker::start_without_process(&[]).await;
    let url = format!("{}/v1/tasks", w.process.url);
    let refused = [
        (
            json!({"name": "p", "driver": "process", "command": "true"}),
            "does not enable the process driver (start its worker with --driver process)",
        ),
        (
            json!({"name": "c", "driver": "docker", "image": TEST_IMAGE, "privileged": true}),
            "--allow-privileged",
        ),
        (
            json!({"name": "c", "driver": "docker", "image": TEST_IMAGE,
                   "mounts": [{"source": "/etc", "target": "/host-etc"}]}),
            "--allow-host-mounts /etc",
        ),
        (
            json!({"name": "c", "driver": "docker", "image": TEST_IMAGE, "network": "host"}),
            "--allow-host-network",
        ),
        (
            json!({"name": "c", "driver": "docker", "image": TEST_IMAGE,
                   "cap_add": ["NET_ADMIN"]}),
            "--allow-cap-add NET_ADMIN",
        ),
    ];
    for (body, needle) in refused {
        let bytes = serde_json::to_vec(&body).unwrap();
        let (status, json) = raw(reqwest::Method::POST, &url, Some(bytes)).await;
        assert_eq!(status, 400, "{body}: {json}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
        assert!(message.starts_with("node "), "the message names the node: {message}");
    }
    assert!(w.client.tasks().await.unwrap().is_empty(), "nothing refused was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_asking_for_more_than_any_node_allows_stay_pending_with_the_setting_named() {
    let m = TestManager::start(&[]).await;
    let _w = m.worker_without_process("w1", &[]).await;
    wait_until(Duration::from_secs(10), "w1 registered", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;

    let submit = |body: serde_json::Value| {
        let client = m.client.clone();
        async move { client.submit(None, &spec(body)).await.unwrap().task.id }
    };
    let process = submit(json!({"name": "p", "driver": "process", "command": "true"})).await;
    let reason = pending_reason(&m.client, process, "--driver process").await;
    assert!(
        reason.contains(
            "w1: does not enable the process driver (start its worker with --driver process)"
        ),
        "{reason}"
    );
    let mount = submit(json!({"name": "m", "driver": "docker", "image": TEST_IMAGE,
                              "mounts": [{"source": "/etc", "target": "/host-etc"}]}))
    .await;
    let reason = pending_reason(&m.client, mount, "--allow-host-mounts /etc").await;
    assert!(reason.contains("w1: host mount of /etc is not allowed"), "{reason}");
    let privileged =
        submit(json!({"name": "r", "driver": "docker", "image": TEST_IMAGE, "privileged": true}))
            .await;
    let reason = pending_reason(&m.client, privileged, "--allow-privileged").await;
    assert!(reason.contains("w1: privileged containers are not allowed"), "{reason}");

    // The placement explanation says it per node, with a kind for programs.
    let task = m.client.task(privileged).await.unwrap();
    let rejected = &task.placement.expect("an unplaceable task keeps its explanation").rejected;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].kind, cube_core::scheduler::RejectionKind::NotAllowed);
    // The node says what it allows: nothing beyond the defaults.
    let node = m.client.nodes().await.unwrap().remove(0);
    assert!(!node.drivers.contains(&cube_core::DriverKind::Process));
    assert!(node.allows.is_nothing(), "{:?}", node.allows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_run_as_nobody_unless_the_worker_allows_their_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching users needs a worker running as root");
        return;
    }
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &["--allow-user", "root"]).await;
    wait_until(Duration::from_secs(10), "w1 registered", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    let node = m.client.nodes().await.unwrap().remove(0);
    assert_eq!(node.allows.users, ["nobody", "root"], "the default is listed first");

    let script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME";
    let by_default = m
        .client
        .submit(
            None,
            &spec(json!({"name": "who", "driver": "process", "command": "sh",
                                    "args": ["-c", script]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let out = output_containing(&m.client, by_default, "uid=").await;
    assert_eq!(out.trim(), "uid=65534 gid=65534 groups=65534 home=/nonexistent");
    wait_state(&m.client, by_default, TaskState::Completed, Duration::from_secs(10)).await;

    let as_root = m
        .client
        .submit(
            None,
            &spec(json!({"name": "root", "driver": "process", "command": "sh",
                                    "args": ["-c", script], "user": "root"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let out = output_containing(&m.client, as_root, "uid=").await;
    assert!(out.starts_with("uid=0 gid=0"), "{out}");

    let other = m
        .client
        .submit(
            None,
            &spec(json!({"name": "d", "driver": "process", "command": "true",
                                    "user": "daemon"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let reason = pending_reason(&m.client, other, "--allow-user daemon").await;
    assert!(reason.contains("w1: process tasks may not run as user daemon"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_mount_prefix_cannot_be_left_through_a_symlink() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let allowed = tempfile::tempdir().unwrap();
    let root = allowed.path().to_str().unwrap().to_owned();
    std::fs::create_dir(allowed.path().join("data")).unwrap();
    std::fs::write(allowed.path().join("data/hello"), "from the host\n").unwrap();
    std::os::unix::fs::symlink("/etc", allowed.path().join("etc")).unwrap();
    let w = TestWorker::start_without_process(&["--allow-host-mounts", &root]).await;

    // A symlink below the prefix pointing out of it is refused, naming where it leads.
    let url = format!("{}/v1/tasks", w.process.url);
    let escape = json!({"name": "e", "driver": "docker", "image": TEST_IMAGE,
                        "mounts": [{"source": format!("{root}/etc"), "target": "/x"}]});
    let (status, json) =
        raw(reqwest::Method::POST, &url, Some(serde_json::to_vec(&escape).unwrap())).await;
    assert_eq!(status, 400, "{json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("resolves to /etc, which is not allowed"), "{message}");

    // A real directory below it is mounted, read-only when asked.
    let id = w
        .client
        .submit(
            None,
            &spec(json!({"name": "m", "driver": "docker", "image": TEST_IMAGE, "command": "sh",
                         "args": ["-c", "cat /data/hello; touch /data/new 2>&1; echo done"],
                         "mounts": [{"source": format!("{root}/data"), "target": "/data",
                                     "read_only": true}]})),
        )
        .await
        .unwrap()
        .task
        .id;
    let out = output_containing(&w.client, id, "done").await;
    assert!(out.contains("from the host"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!allowed.path().join("data/new").exists());
}

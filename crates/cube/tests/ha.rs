//! Highly available managers on a real etcd (Debian's `etcd-server`, one or three members on
//! OS-chosen loopback ports), real `cube` processes, real failures: the leader killed or
//! paused, etcd members killed, a follower restarted, a prefix of another cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{CubeProcess, TestManager, TestWorker, spec, wait_until};
use cube_core::{TaskId, TaskState};
use cube_http::client::Client;
use cube_testkit::etcd::{EtcdCluster, etcd_available};

/// Whether etcd tests can run: skipped without etcd locally, a failure under CI.
fn etcd_ready() -> bool {
    if etcd_available() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "HA test cannot run under CI: etcd-server missing");
    eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
    false
}

/// etcd, managers on it, and workers that know every manager.
struct Ha {
    etcd: EtcdCluster,
    managers: Vec<TestManager>,
    workers: Vec<TestWorker>,
}

impl Ha {
    async fn start(members: usize, managers: usize, workers: usize) -> Ha {
        let etcd = EtcdCluster::start(members).unwrap();
        let list = etcd.endpoint_list();
        let mut ha = Ha { etcd, managers: Vec::new(), workers: Vec::new() };
        for i in 0..managers {
            let name = format!("m{i}");
            let args = ["--store", "etcd", "--etcd", &list, "--name", &name];
            ha.managers.push(TestManager::start(&args).await);
        }
        ha.leader(Duration::from_secs(15)).await;
        for i in 0..workers {
            let urls = ha.urls();
            let name = format!("w{i}");
            let args = ["--manager", &urls, "--name", &name];
            ha.workers.push(TestWorker::start(&args).await);
        }
        let client = ha.client();
        wait_until(Duration::from_secs(20), "every worker registered", || async {
            (client.nodes().await.ok()?.len() == workers).then_some(())
        })
        .await;
        ha
    }

    /// Every manager's URL, comma-separated.
    fn urls(&self) -> String {
        self.managers.iter().map(|m| m.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// A client that knows every manager.
    fn client(&self) -> Client {
        Client::new(self.urls(), Duration::from_secs(10)).unwrap()
    }

    /// The index of the manager that leads, once one does (among those in `among`).
    async fn leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        wait_until(timeout, "a leader", || async {
            for &i in among {
                let health = self.managers[i].client.health().await;
                if health.is_ok_and(|h| h.leading == Some(true)) {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    async fn leader(&self, timeout: Duration) -> usize {
        let all: Vec<usize> = (0..self.managers.len()).collect();
        self.leader_among(&all, timeout).await
    }
}

fn sleeper(name: &str) -> cube_core::TaskSpec {
    spec(
        serde_json::json!({"name": name, "driver": "process", "command": "sleep", "args": ["600"]}),
    )
}

/// How many times each task started on each worker, from the workers' own records.
async fn starts(workers: &[TestWorker]) -> BTreeMap<TaskId, Vec<(String, usize)>> {
    let mut starts: BTreeMap<TaskId, Vec<(String, usize)>> = BTreeMap::new();
    for w in workers {
        for t in w.client.tasks().await.unwrap() {
            let n = t
                .events
                .iter()
                .filter(|e| e.kind == cube_core::EventKind::Transition(cube_core::Trigger::Started))
                .count();
            starts.entry(t.id).or_default().push((w.node_id.clone(), n));
        }
    }
    starts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_7_s_losing_no_acknowledged_write_and_starting_nothing_twice()
 {
    if !etcd_ready() {
        return;
    }
    let mut ha = Ha::start(1, 3, 2).await;
    let client = ha.client();

    // A service rolling out slowly (each new instance must stay healthy for 2 s) while the
    // leader dies.
    let service = |version: &str| -> cube_core::service::ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web", "count": 3,
            "task": {"name": "web", "driver": "process", "command": "sleep", "args": ["600"],
                     "env": {"VERSION": version}},
            "update": {"min_healthy_time": "2s"},
        }))
        .unwrap()
    };
    client.put_service(&service("1"), None).await.unwrap();
    wait_until(Duration::from_secs(30), "3 instances running", || async {
        let s = client.service("web").await.ok()?;
        (s.deployment?.status == cube_core::deployment::DeploymentStatus::Successful).then_some(())
    })
    .await;
    client.put_service(&service("2"), None).await.unwrap();

    // Eight clients submitting with ids of their own (a retried submit is the same task).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (client, stop) = (ha.client(), stop.clone());
        load.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0usize;
            let mut n = 0;
            while !stop.is_cancelled() {
                let id = TaskId::from_uuid(uuid::Uuid::now_v7());
                let spec = sleeper(&format!("load-{c}-{n}"));
                n += 1;
                // Retried until acknowledged: a failover answers 503 for a while.
                loop {
                    match client.submit_generation(Some(id), None, &spec).await {
                        Ok(_) => {
                            acknowledged.push(id);
                            break;
                        }
                        Err(e) if e.is_transient() && !stop.is_cancelled() => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (acknowledged, refused)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let old = ha.leader(Duration::from_secs(5)).await;
    let killed = Instant::now();
    ha.managers[old].kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = ha.leader_among(&others, Duration::from_secs(15)).await;
    // Acting: a task submitted now runs.
    let probe = ha.managers[new].client.submit(None, &sleeper("probe")).await.unwrap();
    common::wait_state(
        &ha.managers[new].client,
        probe.task.id,
        TaskState::Running,
        Duration::from_secs(10),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("leader killed: m{new} acting after {took:?}");
    assert!(took < Duration::from_secs(7), "failover took {took:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for (a, r) in load.join_all().await {
        acknowledged.extend(a);
        refused += r;
    }
    eprintln!("{} submits acknowledged, {refused} answered 503 and retried", acknowledged.len());
    assert!(acknowledged.len() > 20, "the load ran throughout");

    // Every acknowledged task is there and runs; none started twice, on any worker.
    let new_client = &ha.managers[new].client;
    let known: BTreeSet<TaskId> = new_client.tasks().await.unwrap().iter().map(|t| t.id).collect();
    let lost: Vec<&TaskId> = acknowledged.iter().filter(|id| !known.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    for id in &acknowledged {
        common::wait_state(new_client, *id, TaskState::Running, Duration::from_secs(30)).await;
    }
    let starts = starts(&ha.workers).await;
    for id in &acknowledged {
        let on = &starts[id];
        assert_eq!(on.len(), 1, "task {id} is on several workers: {on:?}");
        assert_eq!(on[0].1, 1, "task {id} started {} times", on[0].1);
    }

    // The rollout finishes under the new leader.
    let done = wait_until(Duration::from_secs(60), "the rollout done", || async {
        let d = new_client.service("web").await.ok()?.deployment?;
        (d.version == 2 && d.status != cube_core::deployment::DeploymentStatus::Running)
            .then_some(d)
    })
    .await;
    assert_eq!(done.status, cube_core::deployment::DeploymentStatus::Successful, "{done:?}");
    drop(ha.etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_finds_itself_deposed_and_nothing_it_does_after_takes_effect() {
    if !etcd_ready() {
        return;
    }
    let ha = Ha::start(1, 2, 2).await;
    let client = ha.client();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(client.submit(None, &sleeper(&format!("t{i}"))).await.unwrap().task.id);
    }
    for id in &ids {
        common::wait_state(&client, *id, TaskState::Running, Duration::from_secs(15)).await;
    }
    let old = ha.leader(Duration::from_secs(5)).await;
    let pid = ha.managers[old].process.pid();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
        assert!(status.unwrap().success());
    };
    // Paused for 10 s: its nodes' heartbeats go unanswered all that time, so when it wakes up
    // its liveness loop would call every node down and move their tasks, if it could.
    signal("-STOP");
    let other = 1 - old;
    ha.leader_among(&[other], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal("-CONT");
    wait_until(Duration::from_secs(10), "the old leader following", || async {
        let h = ha.managers[old].client.health().await.ok()?;
        (h.leading == Some(false) && h.leader.as_deref() == Some(ha.managers[other].url.as_str()))
            .then_some(())
    })
    .await;
    let logs = ha.managers[old].process.logs();
    assert!(logs.contains("stepping down"), "{logs}");
    // Give anything it might still send a moment, then check nothing happened.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = &ha.managers[other].client;
    for n in leader.nodes().await.unwrap() {
        assert_eq!(n.state, cube_core::NodeState::Ready, "node {} was called down", n.name);
    }
    for id in &ids {
        let t = leader.task(*id).await.unwrap();
        assert_eq!((t.state, t.reschedule_count), (TaskState::Running, 0), "{t:?}");
    }
    let starts = starts(&ha.workers).await;
    for id in &ids {
        assert_eq!(starts[id].len(), 1, "{id}: {:?}", starts[id]);
        assert_eq!(starts[id][0].1, 1, "{id} started again");
    }
    // Both managers answer the same, and the deposed one passes writes on.
    let id = ha.managers[old].client.submit(None, &sleeper("after")).await.unwrap().task.id;
    common::wait_state(leader, id, TaskState::Running, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_keep_serving_when_one_of_three_etcd_members_dies() {
    if !etcd_ready() {
        return;
    }
    let mut ha = Ha::start(3, 2, 1).await;
    let client = ha.client();
    let first = client.submit(None, &sleeper("before")).await.unwrap().task.id;
    common::wait_state(&client, first, TaskState::Running, Duration::from_secs(15)).await;
    ha.etcd.kill(0);
    let began = Instant::now();
    let second = wait_until(Duration::from_secs(15), "a submit with a member down", || async {
        client.submit(None, &sleeper("after")).await.ok().map(|s| s.task.id)
    })
    .await;
    eprintln!("first submit with a member down after {:?}", began.elapsed());
    common::wait_state(&client, second, TaskState::Running, Duration::from_secs(15)).await;
    // Every manager's copy follows, the one watching through the dead member too.
    for m in &ha.managers {
        wait_until(Duration::from_secs(5), "every copy current", || async {
            m.client.task(second).await.ok().filter(|t| t.state == TaskState::Running)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_gone_writes_get_503_reads_say_stale_and_everything_resumes_when_it_returns() {
    if !etcd_ready() {
        return;
    }
    let mut ha = Ha::start(1, 2, 1).await;
    let client = ha.client();
    let first = client.submit(None, &sleeper("before")).await.unwrap().task.id;
    common::wait_state(&client, first, TaskState::Running, Duration::from_secs(15)).await;
    // The metrics say who acts: exactly one manager, in a term with an epoch.
    let leader = ha.leader(Duration::from_secs(5)).await;
    let follower = 1 - leader;
    let leading = metrics(&ha.managers[leader]).await;
    assert!(leading.contains("\ncube_manager_acting 1\n"), "{leading}");
    assert!(!leading.contains("\ncube_manager_epoch 0\n"), "{leading}");
    let following = metrics(&ha.managers[follower]).await;
    assert!(following.contains("\ncube_manager_acting 0\n"), "{following}");
    assert!(following.contains("\ncube_manager_stale 0\n"), "{following}");
    ha.etcd.kill(0);

    // Writes: refused with 503 (and Retry-After) once the leader stepped down.
    for m in &ha.managers {
        // 503 throughout: `unavailable` while the leader still tries etcd, then `no_leader`
        // once it stepped down.
        wait_until(Duration::from_secs(20), "a write refused for want of a leader", || async {
            match m.client.submit(None, &sleeper("during")).await {
                Err(cube_http::client::ClientError::Api { status: 503, error, .. }) => {
                    (error.code == cube_api::ErrorCode::NoLeader).then_some(())
                }
                Err(cube_http::client::ClientError::Api { status, .. }) => panic!("{status}"),
                Ok(s) => panic!("accepted without etcd: {s:?}"),
                Err(_) => None,
            }
        })
        .await;
    }
    // Reads: every manager answers from what it holds, and says it may be stale.
    let http = reqwest::Client::new();
    for m in &ha.managers {
        let answer = http.get(format!("{}/v1/tasks", m.url)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers().get("x-cube-stale").map(|v| v.to_str().unwrap()), Some("true"));
        let tasks: Vec<serde_json::Value> = answer.json().await.unwrap();
        assert!(tasks.iter().any(|t| t["id"] == first.to_string()));
        let text = metrics(m).await;
        assert!(text.contains("\ncube_manager_acting 0\n"), "{text}");
        assert!(text.contains("\ncube_manager_stale 1\n"), "{text}");
    }

    ha.etcd.restart(0).unwrap();
    let id = wait_until(Duration::from_secs(30), "a write accepted again", || async {
        client.submit(None, &sleeper("after")).await.ok().map(|s| s.task.id)
    })
    .await;
    common::wait_state(&client, id, TaskState::Running, Duration::from_secs(15)).await;
    for m in &mut ha.managers {
        let pid = m.process.pid();
        assert!(cube_testkit::process::alive(pid), "{} died: {}", m.url, m.process.logs());
    }
}

/// A manager's `GET /metrics`.
async fn metrics(m: &TestManager) -> String {
    reqwest::get(format!("{}/metrics", m.url)).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_etcd_and_serves() {
    if !etcd_ready() {
        return;
    }
    let mut ha = Ha::start(1, 2, 1).await;
    let leader = ha.leader(Duration::from_secs(5)).await;
    let follower = 1 - leader;
    ha.managers[follower].kill9();
    let client = ha.managers[leader].client.clone();
    let id = client.submit(None, &sleeper("while-away")).await.unwrap().task.id;
    common::wait_state(&client, id, TaskState::Running, Duration::from_secs(15)).await;
    ha.managers[follower].restart().await;
    let back = &ha.managers[follower].client;
    let t = wait_until(Duration::from_secs(10), "the follower serving the task", || async {
        back.task(id).await.ok().filter(|t| t.state == TaskState::Running)
    })
    .await;
    assert_eq!(t.node, client.task(id).await.unwrap().node);
    // And it follows what happens next, and passes writes on.
    let next = back.submit(None, &sleeper("via-follower")).await.unwrap().task.id;
    common::wait_state(back, next, TaskState::Running, Duration::from_secs(15)).await;

    // Its web UI too: pages from its copy, a button's form passed to the leader.
    let url = ha.managers[follower].url.clone();
    let spec = serde_json::json!({"name": "web", "count": 0,
        "task": {"name": "web", "driver": "process", "command": "sleep", "args": ["600"]}});
    client.put_service(&serde_json::from_value(spec).unwrap(), None).await.unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build();
    let http = http.unwrap();
    let page = wait_until(Duration::from_secs(10), "the service on the follower's UI", || async {
        let answer = http.get(format!("{url}/ui/services/web")).send().await.ok()?;
        (answer.status() == 200).then_some(answer.text().await.ok()?)
    })
    .await;
    let at = page.find(r#"name="csrf" value=""#).unwrap() + 19;
    let form = format!("csrf={}&count=1", &page[at..at + 32]);
    let scaled = http
        .post(format!("{url}/ui/services/web/scale"))
        .header("origin", &url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(scaled.status(), 303, "{}", scaled.text().await.unwrap());
    assert_eq!(client.service("web").await.unwrap().spec.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_refuses_another_clusters_or_a_newer_formats_prefix_with_one_line() {
    if !etcd_ready() {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let list = etcd.endpoint_list();
    let dir = tempfile::tempdir().unwrap();
    let _blue = CubeProcess::start(
        &[
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd",
            "--etcd",
            &list,
            "--etcd-cluster",
            "blue",
        ],
        dir.path(),
    );
    let refused = |args: &[&str]| {
        let out = std::process::Command::new(common::cube_bin())
            .args(["manager", "--listen", "127.0.0.1:0", "--store", "etcd", "--etcd", &list])
            .args(args)
            .env("CUBE_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let other = refused(&["--etcd-cluster", "green"]);
    assert_eq!(other.lines().count(), 1, "{other}");
    assert!(other.contains("holds cluster \"blue\", not \"green\""), "{other}");

    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    raw.put("/future/cluster", r#"{"cluster":"cube","format":7}"#, None).await.unwrap();
    let newer = refused(&["--etcd-prefix", "/future"]);
    assert_eq!(newer.lines().count(), 1, "{newer}");
    assert!(newer.contains("holds data format 7, newer than this Cube reads"), "{newer}");
}

//! Operating services on real workers (separate `cube` processes, process driver): canaries and
//! promotion, scaling in place, compare-and-set updates, plans, and a node drain, through the
//! HTTP API and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod cli_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cli_support::cube;
use common::{TestManager, TestWorker, wait_until};
use cube_api::types::{ServiceView, TaskView};
use cube_core::deployment::{DeploymentStatus, Reason};
use cube_core::service::ServiceSpec;
use cube_core::{DesiredState, NodeId, TaskState};
use cube_http::client::Client;
use serde_json::{Value, json};

fn sleepers(count: u32, version: &str, update: Value) -> ServiceSpec {
    let mut update = update;
    update["min_healthy_time"] = json!("500ms");
    serde_json::from_value(json!({
        "name": "web", "count": count,
        "task": {"name": "web", "driver": "process", "command": "sleep", "args": ["3600"],
                 "env": {"V": version}, "stop_grace": "1s"},
        "update": update
    }))
    .unwrap()
}

async fn three_workers(m: &TestManager) -> Vec<TestWorker> {
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(m.worker(name, &[]).await);
    }
    wait_until(Duration::from_secs(10), "three nodes", || async {
        (m.client.nodes().await.ok()?.len() == 3).then_some(())
    })
    .await;
    workers
}

async fn instances(client: &Client) -> Vec<TaskView> {
    let tasks = client.tasks().await.unwrap();
    tasks.into_iter().filter(|t| t.instance.as_ref().is_some_and(|i| i.service == "web")).collect()
}

fn live(tasks: &[TaskView]) -> Vec<&TaskView> {
    tasks
        .iter()
        .filter(|t| t.desired_state == DesiredState::Running && !t.state.is_terminal())
        .collect()
}

async fn ended(client: &Client) -> ServiceView {
    wait_until(Duration::from_secs(60), "the deployment ended", || async {
        let s = client.service("web").await.ok()?;
        s.deployment.as_ref()?.status.is_terminal().then_some(s)
    })
    .await
}

fn per_node(tasks: &[&TaskView]) -> Vec<usize> {
    let mut nodes: std::collections::BTreeMap<NodeId, usize> = Default::default();
    for t in tasks {
        *nodes.entry(t.node.unwrap()).or_default() += 1;
    }
    nodes.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_scaling_check_index_and_plans_on_real_workers() {
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let c = &m.client;
    let (created, _) =
        c.put_service(&sleepers(3, "1", json!({"canary": 1})), Some(0)).await.unwrap();
    assert_eq!(ended(c).await.deployment.unwrap().status, DeploymentStatus::Successful);

    // check_index: 0 on an existing service, or a stale index, is refused.
    let e = c.put_service(&sleepers(3, "2", json!({"canary": 1})), Some(0)).await.unwrap_err();
    assert_eq!(e.code(), Some(cube_api::ErrorCode::Conflict));
    let stale = created.modify_index + 100;
    let e = c.put_service(&sleepers(3, "2", json!({"canary": 1})), Some(stale)).await.unwrap_err();
    assert_eq!(e.code(), Some(cube_api::ErrorCode::Conflict));

    // A plan through the CLI: the diff, and where each new instance would go.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, serde_json::to_vec(&sleepers(3, "2", json!({"canary": 1}))).unwrap())
        .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (url, f) = (m.url.clone(), file.clone());
    let plan = tokio::task::spawn_blocking(move || cube(&["--addr", &url, "plan", &f], &[]))
        .await
        .unwrap()
        .success();
    assert!(plan.stdout.contains("destructive update to version 2"), "{plan:#?}");
    assert!(plan.stdout.contains("~ task.env.V: \"1\" => \"2\""), "{plan:#?}");
    assert_eq!(plan.stdout.matches("  web/").count(), 3, "{plan:#?}");
    assert_eq!(instances(c).await.len(), 3, "a plan changes nothing");

    // The canary waits for promotion beside the old instances.
    let (view, _) = c
        .put_service(&sleepers(3, "2", json!({"canary": 1})), Some(created.modify_index))
        .await
        .unwrap();
    let id = view.deployment.unwrap().id;
    wait_until(Duration::from_secs(30), "waiting for promotion", || async {
        (c.deployment(id).await.ok()?.reason == Reason::NeedsPromotion).then_some(())
    })
    .await;
    let versions: Vec<u64> =
        live(&instances(c).await).iter().map(|t| t.instance.as_ref().unwrap().version).collect();
    assert_eq!((versions.len(), versions.iter().filter(|v| **v == 2).count()), (4, 1));
    let (url, promote) = (m.url.clone(), id.to_string());
    let out = tokio::task::spawn_blocking(move || {
        cube(&["--addr", &url, "deployment", "promote", &promote], &[])
    })
    .await
    .unwrap()
    .success();
    assert!(out.stdout.contains("Promoted:"), "{out:#?}");
    let view = ended(c).await;
    assert_eq!(view.deployment.unwrap().status, DeploymentStatus::Successful);
    let first: BTreeSet<_> = live(&instances(c).await).iter().map(|t| t.id).collect();
    assert_eq!(first.len(), 3);

    // Scale 3 -> 5 -> 2: only the difference starts and stops, spread kept, no deployment.
    let scaled = c.scale("web", 5).await.unwrap();
    assert_eq!((scaled.version, scaled.deployment.as_ref().map(|d| d.id)), (2, Some(id)));
    wait_until(Duration::from_secs(30), "five healthy", || async {
        (c.service("web").await.ok()?.instances.healthy == 5).then_some(())
    })
    .await;
    let tasks = instances(c).await;
    let five = live(&tasks);
    assert!(first.iter().all(|id| five.iter().any(|t| t.id == *id)), "the first three kept");
    let mut spread = per_node(&five);
    spread.sort_unstable();
    assert_eq!(spread, [1, 2, 2]);
    c.scale("web", 2).await.unwrap();
    wait_until(Duration::from_secs(30), "two left", || async {
        let tasks = instances(c).await;
        let slots: BTreeSet<u32> =
            live(&tasks).iter().map(|t| t.instance.as_ref().unwrap().slot).collect();
        (slots == BTreeSet::from([0, 1])
            && tasks.iter().filter(|t| t.state == TaskState::Running).count() == 2)
            .then_some(())
    })
    .await;
    let view = c.service("web").await.unwrap();
    assert_eq!((view.version, view.deployment.map(|d| d.id)), (2, Some(id)), "no new deployment");
    c.remove_service("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_over_healthy_first_and_its_bare_tasks_move() {
    let m = TestManager::start(&[]).await;
    let _workers = three_workers(&m).await;
    let c = &m.client;
    let names = m.node_names().await;
    let name_of = |id: NodeId| names[&id].clone();
    // w3 takes nothing while the service starts, so one of the others holds two instances.
    let w3 = names.iter().find(|(_, n)| *n == "w3").map(|(id, _)| *id).unwrap();
    c.set_eligible(&w3.to_string(), false).await.unwrap();
    c.put_service(&sleepers(3, "1", json!({})), None).await.unwrap();
    ended(c).await;
    let tasks = instances(c).await;
    let crowded = tasks
        .iter()
        .map(|t| t.node.unwrap())
        .find(|n| tasks.iter().filter(|t| t.node == Some(*n)).count() == 2)
        .unwrap();
    let leaving: BTreeSet<_> =
        tasks.iter().filter(|t| t.node == Some(crowded)).map(|t| t.id).collect();
    // A bare task there too: the only eligible node while it is placed.
    let other = names.keys().copied().find(|n| *n != crowded && *n != w3).unwrap();
    c.set_eligible(&other.to_string(), false).await.unwrap();
    let bare = c
        .submit(
            None,
            &common::spec(json!({"name": "bare", "driver": "process", "command": "sleep",
                "args": ["3600"], "stop_grace": "1s"})),
        )
        .await
        .unwrap()
        .task
        .id;
    let t = common::wait_state(c, bare, TaskState::Running, Duration::from_secs(10)).await;
    assert_eq!(t.node, Some(crowded));
    c.set_eligible(&other.to_string(), true).await.unwrap();
    c.set_eligible(&w3.to_string(), true).await.unwrap();

    let url = m.url.clone();
    let node = name_of(crowded);
    let out =
        tokio::task::spawn_blocking(move || cube(&["--addr", &url, "node", "drain", &node], &[]))
            .await
            .unwrap()
            .success();
    assert!(out.stdout.contains("draining"), "{out:#?}");
    let fewest = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let drained = wait_until(Duration::from_secs(60), "the node drained", || {
        let fewest = std::sync::Arc::clone(&fewest);
        async move {
            let s = c.service("web").await.ok()?;
            fewest.fetch_min(s.instances.healthy, std::sync::atomic::Ordering::Relaxed);
            let n = c.node(&crowded.to_string()).await.ok()?;
            n.drain.as_ref()?.drained_at.is_some().then_some(n)
        }
    })
    .await;
    assert!(!drained.eligible);
    let fewest = fewest.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fewest, 3, "replacements healthy before the old instances stopped");
    let tasks = instances(c).await;
    for id in &leaving {
        let t = tasks.iter().find(|t| t.id == *id).unwrap();
        assert_eq!(t.state, TaskState::Completed);
        let by = tasks.iter().find(|r| Some(r.id) == t.replaced_by).unwrap();
        assert_ne!(by.node, Some(crowded));
    }
    let t = common::wait_state(c, bare, TaskState::Running, Duration::from_secs(10)).await;
    assert_ne!(t.node, Some(crowded), "the bare task moved");
    let out = cube(&["--addr", &m.url, "node"], &[]).success();
    assert!(out.stdout.contains("ready (drained)"), "{out:#?}");
    c.remove_service("web").await.unwrap();
}

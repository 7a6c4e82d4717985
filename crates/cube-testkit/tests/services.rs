//! Services end to end through a real manager and workers in one process, on the fake driver
//! and a virtual clock: placement of instances, health-gated rolling updates, failure and
//! revert, canaries, scaling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cube_api::types::{ServiceView, TaskView};
use cube_core::deployment::{DeploymentStatus, Reason};
use cube_core::service::ServiceSpec;
use cube_core::{DesiredState, TaskState};
use cube_testkit::Cluster;
use serde_json::{Value, json};

/// A web service of `count` instances whose exec check passes (unless `FAKE_UNHEALTHY_AFTER`
/// says otherwise), healthy after 2 s.
fn web(count: u32, env: Value) -> ServiceSpec {
    serde_json::from_value(json!({
        "name": "web", "count": count,
        "task": {"name": "web", "driver": "process", "command": "web", "env": env,
                 "health": {"type": "exec", "command": ["check"], "interval": "500ms",
                            "failure_threshold": 2}},
        "update": {"min_healthy_time": "2s", "healthy_deadline": "1m",
                   "progress_deadline": "2m"}
    }))
    .unwrap()
}

async fn put(cluster: &Cluster, spec: &ServiceSpec) -> ServiceView {
    cluster.drive(cluster.client().put_service(spec, None)).await.unwrap().0
}

async fn service(cluster: &Cluster) -> ServiceView {
    cluster.drive(cluster.client().service("web")).await.unwrap()
}

async fn instances(cluster: &Cluster) -> Vec<TaskView> {
    let tasks = cluster.drive(cluster.client().tasks()).await.unwrap();
    tasks.into_iter().filter(|t| t.instance.as_ref().is_some_and(|i| i.service == "web")).collect()
}

fn live(tasks: &[TaskView]) -> Vec<&TaskView> {
    tasks
        .iter()
        .filter(|t| t.desired_state == DesiredState::Running && !t.state.is_terminal())
        .collect()
}

/// Waits until the current deployment is over, sampling the healthy count on every step;
/// returns the service and the fewest healthy instances seen.
async fn roll(cluster: &Cluster, within: Duration) -> (ServiceView, u32) {
    let fewest = Arc::new(AtomicU32::new(u32::MAX));
    let view = cluster
        .wait_for(within, "the deployment ended", |c| {
            let fewest = Arc::clone(&fewest);
            async move {
                let s = c.service("web").await.ok()?;
                fewest.fetch_min(s.instances.healthy, Ordering::Relaxed);
                let d = s.deployment.as_ref()?;
                d.status.is_terminal().then_some(s)
            }
        })
        .await;
    (view, fewest.load(Ordering::Relaxed))
}

#[tokio::test(start_paused = true)]
async fn a_service_lands_one_instance_per_node_and_turns_healthy() {
    let cluster = Cluster::start(3).await;
    let created = put(&cluster, &web(3, json!({}))).await;
    assert_eq!((created.version, created.instances.desired), (1, 3));
    let (view, _) = roll(&cluster, Duration::from_secs(30)).await;
    let d = view.deployment.as_ref().unwrap();
    assert_eq!((d.status, d.reason), (DeploymentStatus::Successful, Reason::AllHealthy));
    assert_eq!((view.instances.running, view.instances.healthy), (3, 3));
    let tasks = instances(&cluster).await;
    let nodes: BTreeSet<_> = tasks.iter().map(|t| t.node.unwrap()).collect();
    assert_eq!(nodes.len(), 3, "one per node");
    let slots: BTreeSet<u32> = tasks.iter().map(|t| t.instance.as_ref().unwrap().slot).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_never_drops_below_count_and_names_each_replacement() {
    let cluster = Cluster::start(3).await;
    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let old: BTreeSet<_> = instances(&cluster).await.iter().map(|t| t.id).collect();

    let updated = put(&cluster, &web(3, json!({"VERSION": "2"}))).await;
    assert_eq!(updated.version, 2);
    let (view, fewest) = roll(&cluster, Duration::from_secs(60)).await;
    assert_eq!(view.deployment.as_ref().unwrap().status, DeploymentStatus::Successful);
    assert_eq!(fewest, 3, "never fewer than 3 healthy instances");
    let tasks = instances(&cluster).await;
    let now = live(&tasks);
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|t| t.instance.as_ref().unwrap().version == 2));
    cluster
        .wait_for(Duration::from_secs(10), "old instances completed", |c| {
            let old = old.clone();
            async move {
                let tasks = c.tasks().await.ok()?;
                let done = tasks
                    .iter()
                    .filter(|t| old.contains(&t.id))
                    .all(|t| t.state == TaskState::Completed && t.replaced_by.is_some());
                done.then_some(())
            }
        })
        .await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_fails_the_deployment_and_the_revert_restores_the_last_good_spec() {
    let cluster = Cluster::start(3).await;
    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let good: BTreeSet<_> = instances(&cluster).await.iter().map(|t| t.id).collect();

    let bad = put(&cluster, &web(3, json!({"FAKE_UNHEALTHY_AFTER": "0s"}))).await;
    let failed = bad.deployment.unwrap().id;
    let d = cluster
        .wait_for(Duration::from_secs(30), "the deployment failed", |c| async move {
            let d = c.deployment(failed).await.ok()?;
            (d.status == DeploymentStatus::Failed).then_some(d)
        })
        .await;
    assert_eq!(d.reason, Reason::Unhealthy);
    assert!(d.description.starts_with("task web/0: unhealthy"), "{}", d.description);
    assert!(d.description.ends_with("reverting to version 1"), "{}", d.description);

    let (view, fewest) = roll(&cluster, Duration::from_secs(30)).await;
    let revert = view.deployment.as_ref().unwrap();
    assert!(revert.revert);
    assert_eq!((view.version, revert.status), (3, DeploymentStatus::Successful));
    assert_eq!(fewest, 3, "no healthy instance was stopped");
    let now: BTreeSet<_> = live(&instances(&cluster).await).iter().map(|t| t.id).collect();
    assert_eq!(now, good, "the good instances were kept, not restarted");

    let versions = cluster.drive(cluster.client().service_versions("web")).await.unwrap();
    let outcomes: Vec<_> = versions.iter().map(|v| (v.version, v.outcome, v.reverts)).collect();
    assert_eq!(
        outcomes,
        [
            (1, Some(DeploymentStatus::Successful), None),
            (2, Some(DeploymentStatus::Failed), None),
            (3, Some(DeploymentStatus::Successful), Some(1)),
        ]
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_canary_waits_for_promotion_then_the_rollout_proceeds() {
    let cluster = Cluster::start(3).await;
    let mut spec = web(3, json!({}));
    spec.update.canary = 1;
    put(&cluster, &spec).await;
    roll(&cluster, Duration::from_secs(30)).await;

    spec.task.env.insert("VERSION".into(), "2".into());
    let view = put(&cluster, &spec).await;
    let id = view.deployment.unwrap().id;
    cluster
        .wait_for(Duration::from_secs(30), "waiting for promotion", |c| async move {
            let d = c.deployment(id).await.ok()?;
            (d.reason == Reason::NeedsPromotion).then_some(())
        })
        .await;
    cluster.pass(Duration::from_secs(5)).await;
    let versions: Vec<u64> = live(&instances(&cluster).await)
        .iter()
        .map(|t| t.instance.as_ref().unwrap().version)
        .collect();
    assert_eq!(versions.iter().filter(|v| **v == 2).count(), 1, "one canary: {versions:?}");
    assert_eq!(versions.len(), 4);

    cluster.drive(cluster.client().deployment_action(id, "promote")).await.unwrap();
    let (view, fewest) = roll(&cluster, Duration::from_secs(60)).await;
    assert_eq!(view.deployment.unwrap().status, DeploymentStatus::Successful);
    assert_eq!(fewest, 3);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn scaling_starts_and_stops_only_the_difference_without_a_deployment() {
    let cluster = Cluster::start(3).await;
    put(&cluster, &web(3, json!({}))).await;
    let (before, _) = roll(&cluster, Duration::from_secs(30)).await;
    let first: BTreeSet<_> = instances(&cluster).await.iter().map(|t| t.id).collect();

    let scaled = cluster.drive(cluster.client().scale("web", 5)).await.unwrap();
    assert_eq!(scaled.version, 1);
    assert_eq!(scaled.deployment, before.deployment, "no new deployment");
    cluster
        .wait_for(Duration::from_secs(30), "five healthy", |c| async move {
            (c.service("web").await.ok()?.instances.healthy == 5).then_some(())
        })
        .await;
    let five = instances(&cluster).await;
    assert!(
        first.iter().all(|id| five.iter().any(|t| t.id == *id && t.state == TaskState::Running))
    );
    let per_node: Vec<usize> = (0..3)
        .map(|i| five.iter().filter(|t| t.node == Some(cluster.node_id(i))).count())
        .collect();
    assert!(per_node.iter().all(|n| (1..=2).contains(n)), "spread kept: {per_node:?}");

    cluster.drive(cluster.client().scale("web", 2)).await.unwrap();
    cluster
        .wait_for(Duration::from_secs(30), "two left", |c| async move {
            let s = c.service("web").await.ok()?;
            (s.instances.running == 2).then_some(())
        })
        .await;
    let left: Vec<u32> = live(&instances(&cluster).await)
        .iter()
        .map(|t| t.instance.as_ref().unwrap().slot)
        .collect();
    assert_eq!(left.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([0, 1]));
    assert_eq!(service(&cluster).await.version, 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_instance_on_a_lost_node_is_replaced_by_a_new_task_elsewhere() {
    let mut cluster = Cluster::start(3).await;
    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let w0 = cluster.node_id(0);
    let lost = instances(&cluster).await.into_iter().find(|t| t.node == Some(w0)).unwrap();
    cluster.stop_worker(0).await;
    let replacement = cluster
        .wait_for(Duration::from_secs(30), "a replacement healthy elsewhere", |c| {
            let lost = lost.clone();
            async move {
                let tasks = c.tasks().await.ok()?;
                let old = tasks.iter().find(|t| t.id == lost.id)?;
                let by = old.replaced_by?;
                let new = tasks.iter().find(|t| t.id == by)?;
                (old.state == TaskState::Failed
                    && new.state == TaskState::Running
                    && c.service("web").await.ok()?.instances.healthy == 3)
                    .then(|| new.clone())
            }
        })
        .await;
    assert_ne!(replacement.node, Some(w0));
    assert_eq!(replacement.instance.as_ref().unwrap().slot, lost.instance.as_ref().unwrap().slot);
    let old = cluster.task(lost.id).await;
    assert!(old.reason.as_deref().unwrap_or_default().contains("is down"), "{:?}", old.reason);

    // The node comes back: its copy is stopped (fenced), so the slot runs once.
    assert_eq!(cluster.fake(0).running(), [lost.id], "still running on the lost node");
    cluster.start_worker(0).await;
    cluster
        .wait_for(Duration::from_secs(30), "the old copy fenced", |_| async {
            cluster.fake(0).running().is_empty().then_some(())
        })
        .await;
    let running: usize = (0..3).map(|i| cluster.fake(i).running().len()).sum();
    assert_eq!(running, 3, "exactly count workloads run");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rollout_survives_a_worker_and_a_manager_lost_midway() {
    let mut cluster = Cluster::start(3).await;
    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    put(&cluster, &web(3, json!({"VERSION": "2"}))).await;
    // Somewhere in the middle: one new instance healthy.
    cluster
        .wait_for(Duration::from_secs(30), "one new instance healthy", |c| async move {
            let s = c.service("web").await.ok()?;
            s.instances.versions.iter().any(|v| v.version == 2 && v.healthy >= 1).then_some(())
        })
        .await;
    cluster.stop_worker(2).await;
    cluster.restart_manager().await;
    let (view, _) = roll(&cluster, Duration::from_secs(120)).await;
    assert_eq!(view.deployment.as_ref().unwrap().status, DeploymentStatus::Successful);
    assert_eq!((view.instances.running, view.instances.healthy), (3, 3));
    let tasks = instances(&cluster).await;
    let now = live(&tasks);
    assert_eq!(now.len(), 3);
    let slots: BTreeSet<u32> = now.iter().map(|t| t.instance.as_ref().unwrap().slot).collect();
    assert_eq!(slots.len(), 3, "one instance per slot");
    assert!(now.iter().all(|t| t.instance.as_ref().unwrap().version == 2));
    let running: usize = (0..2).map(|i| cluster.fake(i).running().len()).sum();
    assert_eq!(running, 3, "exactly count workloads on the live workers");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn check_index_makes_updates_compare_and_set() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let spec = web(1, json!({}));
    let (created, _) = cluster.drive(client.put_service(&spec, Some(0))).await.unwrap();
    let e = cluster.drive(client.put_service(&spec, Some(0))).await.unwrap_err();
    assert_eq!(e.code(), Some(cube_api::ErrorCode::Conflict));
    assert!(e.to_string().contains("modify index"), "{e}");

    let index = created.modify_index;
    let a = web(1, json!({"VERSION": "a"}));
    let b = web(1, json!({"VERSION": "b"}));
    let (ra, rb) = cluster
        .drive(async {
            tokio::join!(client.put_service(&a, Some(index)), client.put_service(&b, Some(index)))
        })
        .await;
    assert_eq!(u8::from(ra.is_ok()) + u8::from(rb.is_ok()), 1, "exactly one wins: {ra:?} {rb:?}");
    let loser = ra.err().or(rb.err()).unwrap();
    assert_eq!(loser.code(), Some(cube_api::ErrorCode::Conflict));
    assert_eq!(service(&cluster).await.version, 2);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_services_are_refused_listing_every_problem() {
    let cluster = Cluster::start(1).await;
    let body = json!({"name": "web", "count": 2,
        "task": {"name": "web", "driver": "process", "command": ""},
        "update": {"max_surge": 0, "max_unavailable": 0, "healthy_deadline": "1m",
                   "progress_deadline": "30s"}});
    let e = cluster
        .drive(cluster.client().call::<_, Value>(
            reqwest::Method::PUT,
            "/v1/services/web",
            Some(&body),
        ))
        .await
        .unwrap_err();
    let cube_http::client::ClientError::Api { error, status, .. } = e else { panic!("{e:?}") };
    assert_eq!(status, 400);
    let fields: Vec<&str> = error.details.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields[..2], ["update", "update.progress_deadline"]);
    assert!(fields[2..].iter().all(|f| *f == "task.command"), "{fields:?}");
    assert!(
        cluster.drive(cluster.client().services()).await.unwrap().is_empty(),
        "nothing changed"
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_drained_node_hands_its_instances_over_healthy_first_and_its_bare_tasks_move() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let w2 = cluster.node_id(2).to_string();
    cluster.drive(client.set_eligible(&w2, false)).await.unwrap();
    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let tasks = instances(&cluster).await;
    let count_on = |n| tasks.iter().filter(|t| t.node == Some(n)).count();
    let (crowded, other) = match (cluster.node_id(0), cluster.node_id(1)) {
        (a, b) if count_on(a) == 2 => (a, b),
        (a, b) => (b, a),
    };
    assert_eq!(count_on(crowded), 2);
    let leaving: BTreeSet<_> =
        tasks.iter().filter(|t| t.node == Some(crowded)).map(|t| t.id).collect();
    // A bare task on the crowded node too: the only eligible one while it is placed.
    cluster.drive(client.set_eligible(&other.to_string(), false)).await.unwrap();
    let bare = cluster.submit(json!({"name": "bare", "driver": "process", "command": "x"})).await;
    cluster
        .wait_for(Duration::from_secs(10), "the bare task running", |c| async move {
            let t = c.task(bare).await.ok()?;
            (t.state == TaskState::Running).then_some(())
        })
        .await;
    assert_eq!(cluster.task(bare).await.node, Some(crowded));
    cluster.drive(client.set_eligible(&other.to_string(), true)).await.unwrap();
    cluster.drive(client.set_eligible(&w2, true)).await.unwrap();

    let fewest = Arc::new(AtomicU32::new(u32::MAX));
    cluster.drive(client.drain(&crowded.to_string(), None)).await.unwrap();
    let drained = cluster
        .wait_for(Duration::from_secs(60), "the node drained", |c| {
            let fewest = Arc::clone(&fewest);
            async move {
                let s = c.service("web").await.ok()?;
                fewest.fetch_min(s.instances.healthy, Ordering::Relaxed);
                let n = c.node(&crowded.to_string()).await.ok()?;
                n.drain.as_ref()?.drained_at.is_some().then_some(n)
            }
        })
        .await;
    assert!(!drained.eligible);
    assert_eq!(drained.task_count, 0);
    assert_eq!(fewest.load(Ordering::Relaxed), 3, "replacements healthy before the old stopped");
    let tasks = instances(&cluster).await;
    for id in &leaving {
        let t = tasks.iter().find(|t| t.id == *id).unwrap();
        assert_eq!(t.state, TaskState::Completed);
        let by = tasks.iter().find(|r| Some(r.id) == t.replaced_by).unwrap();
        assert_ne!(by.node, Some(crowded));
    }
    assert_eq!(live(&tasks).len(), 3);
    let moved = cluster.task(bare).await;
    assert_ne!(moved.node, Some(crowded), "the bare task was placed elsewhere");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_plan_shows_the_diff_and_where_new_instances_would_go_or_why_not() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let created = cluster.drive(client.plan(&web(3, json!({})))).await.unwrap();
    assert_eq!((created.change.as_str(), created.modify_index), ("create", 0));
    assert_eq!(created.placements.len(), 3);
    let nodes: BTreeSet<_> = created.placements.iter().map(|p| p.node.unwrap()).collect();
    assert_eq!(nodes.len(), 3, "spread in the plan too");

    put(&cluster, &web(3, json!({}))).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let before = instances(&cluster).await;
    let plan = cluster.drive(client.plan(&web(3, json!({"GREETING": "hi"})))).await.unwrap();
    assert_eq!((plan.change.as_str(), plan.version), ("destructive", 2));
    assert_eq!(plan.diff.len(), 1);
    assert_eq!(plan.diff[0].field, "task.env.GREETING");
    assert_eq!((plan.diff[0].old.clone(), plan.diff[0].new.clone()), (None, Some(json!("hi"))));
    assert!(plan.rollout.starts_with("replaces 3 instances"), "{}", plan.rollout);
    assert!(plan.placements.iter().all(|p| p.node.is_some()));
    assert_eq!(instances(&cluster).await.len(), before.len(), "a plan changes nothing");

    let mut huge = web(3, json!({}));
    huge.task.resources.memory = cube_core::Bytes::gib(2);
    let plan = cluster.drive(client.plan(&huge)).await.unwrap();
    assert!(plan.placements.iter().all(|p| p.node.is_none()));
    let rejected = &plan.placements[0].explanation.rejected;
    assert_eq!(rejected.len(), 3, "a reason per node");
    assert!(rejected.iter().all(|r| r.reason.starts_with("needs 2.0GiB memory")), "{rejected:?}");

    let scale = cluster.drive(client.plan(&web(5, json!({})))).await.unwrap();
    assert_eq!((scale.change.as_str(), scale.version, scale.placements.len()), ("in_place", 1, 2));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_worker_stops_its_instance_before_the_replacement_starts() {
    let mut cluster = Cluster::start(2).await;
    let mut spec = web(1, json!({}));
    spec.on_disconnect = cube_core::service::OnDisconnect::StopAfter(Duration::from_secs(3));
    put(&cluster, &spec).await;
    roll(&cluster, Duration::from_secs(30)).await;
    let old = instances(&cluster).await.remove(0);
    let node = (0..2).find(|&i| Some(cluster.node_id(i)) == old.node).unwrap();
    let other = 1 - node;
    cluster.partition_worker(node).await;
    let cut = tokio::time::Instant::now();
    // The cut-off worker stops its copy after 3 s; the manager replaces it after the 5 s TTL.
    let stopped = cluster
        .wait_for(Duration::from_secs(10), "the cut-off copy stopped", |_| async {
            cluster.fake(node).running().is_empty().then(tokio::time::Instant::now)
        })
        .await;
    assert!(cluster.fake(other).running().is_empty(), "no replacement yet: no overlap");
    let started = cluster
        .wait_for(Duration::from_secs(20), "the replacement running", |_| async {
            (!cluster.fake(other).running().is_empty()).then(tokio::time::Instant::now)
        })
        .await;
    let (stop_s, start_s) = ((stopped - cut).as_secs_f64(), (started - cut).as_secs_f64());
    assert!((3.0..4.5).contains(&stop_s), "stopped {stop_s:.2}s after the cut");
    assert!(start_s > stop_s, "the copies never overlapped ({stop_s:.2}s, {start_s:.2}s)");
    let worker_copy = cluster.drive(cluster.worker_client(node).task(old.id)).await.unwrap();
    assert!(
        worker_copy.events.iter().any(|e| e.reason.starts_with("no contact with the manager")),
        "{:?}",
        worker_copy.events
    );
    cluster.heal_worker(node).await;
    cluster
        .wait_for(Duration::from_secs(20), "one healthy instance", |c| async move {
            (c.service("web").await.ok()?.instances.healthy == 1).then_some(())
        })
        .await;
    let running: usize = (0..2).map(|i| cluster.fake(i).running().len()).sum();
    assert_eq!(running, 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_manager_keeps_the_deadlines_of_a_waiting_rollout() {
    let mut cluster = Cluster::start(2).await;
    let mut spec = web(1, json!({}));
    spec.update.auto_revert = false;
    put(&cluster, &spec).await;
    roll(&cluster, Duration::from_secs(30)).await;
    // The new version's check never gets a say (a long grace period): only the healthy
    // deadline, a timer, can end the rollout, and a restarted manager must still keep it
    // although nothing else happens.
    if let Some(health) = spec.task.health.as_mut() {
        health.grace_period = Duration::from_secs(600);
    }
    let id = put(&cluster, &spec).await.deployment.unwrap().id;
    cluster
        .wait_for(Duration::from_secs(10), "the new instance running", |c| async move {
            let s = c.service("web").await.ok()?;
            (s.instances.running == 2).then_some(())
        })
        .await;
    cluster.restart_manager().await;
    let d = cluster
        .wait_for(Duration::from_secs(90), "failed at the healthy deadline", |c| async move {
            let d = c.deployment(id).await.ok()?;
            d.status.is_terminal().then_some(d)
        })
        .await;
    assert_eq!((d.status, d.reason), (DeploymentStatus::Failed, Reason::Unhealthy));
    assert!(d.description.contains("not healthy within 1m"), "{}", d.description);
    cluster.shutdown().await;
}

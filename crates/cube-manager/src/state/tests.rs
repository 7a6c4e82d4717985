use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use cube_core::stats::{CpuStats, DiskStats, LoadStats, MemoryStats, TaskCounts};
use cube_core::{Bytes, DriverKind, Millicores, SchedulerKind, TaskSpec};
use cube_core::{EventKind, NodeState, Note, TaskState};
use uuid::Uuid;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn node(n: u128, name: &str, memory_mib: u64) -> Node {
    Node {
        id: NodeId::from_uuid(Uuid::from_u128(n)),
        name: name.into(),
        address: format!("http://{name}"),
        labels: Default::default(),
        capacity: Resources {
            cpu: Millicores::cores(2),
            memory: Bytes::mib(memory_mib),
            disk: Bytes::gib(10),
        },
        drivers: vec![DriverKind::Process],
        state: NodeState::Ready,
        registered_at: at(0),
        last_heartbeat: None,
        eligible: true,
        drain: None,
        allows: Default::default(),
    }
}

fn spec(memory_mib: u64) -> TaskSpec {
    serde_json::from_value(serde_json::json!({
        "name": "t", "driver": "process", "command": "sleep", "args": ["100"],
        "resources": {"memory": format!("{memory_mib}MiB")},
        "restart": {"mode": "on-failure", "max_attempts": 1, "reschedule_attempts": 1}
    }))
    .unwrap()
}

fn task(n: u128, memory_mib: u64) -> Task {
    Task::new(TaskId::from_uuid(Uuid::from_u128(n)), spec(memory_mib), at(0))
}

fn stats() -> NodeStats {
    NodeStats {
        collected_at: at(0),
        memory: MemoryStats { total_bytes: 100, available_bytes: 50, used_bytes: 50 },
        cpu: CpuStats { cores: 2, busy_fraction: 0.1, interval_ms: 1000 },
        load: LoadStats { one: 0.0, five: 0.0, fifteen: 0.0 },
        disk: DiskStats { path: "/".into(), total_bytes: 1, free_bytes: 1 },
        tasks: TaskCounts::default(),
        reserved: Resources::default(),
    }
}

/// A cluster with the given nodes registered.
fn cluster(nodes: &[Node]) -> (State, Instant) {
    let mut s = State::new(Scheduler::new(SchedulerKind::Spread));
    let mono = Instant::now();
    for n in nodes {
        s.register(n.clone(), &[], at(0), mono, &mut Effects::default());
    }
    (s, mono)
}

const STARTED: EventKind = EventKind::Transition(Trigger::Started);
const FAILED: EventKind = EventKind::Transition(Trigger::Exited { success: false, retry: false });

/// What the worker would report for `t` after `steps` (what happened, in words), one per
/// second from its last known event on.
fn report(t: &Task, steps: &[(EventKind, &str)]) -> Report {
    let mut w = t.clone();
    let base = w.events.last().map_or(at(0), |e| e.at).as_second() - 1_800_000_000;
    for (i, (kind, reason)) in steps.iter().enumerate() {
        let when = at(base + 10 + i as i64);
        match *kind {
            EventKind::Transition(trigger) => {
                w.apply(trigger, when, *reason).unwrap();
            }
            EventKind::Note(note) => w.note(when, note, *reason),
        }
    }
    Report {
        id: w.id,
        generation: w.generation,
        state: w.state,
        events: w.events,
        handle: w.handle,
        host_ports: w.host_ports,
        exit_code: w.exit_code,
        restart_count: w.restart_count,
        healthy: w.healthy,
    }
}

#[test]
fn loaded_explanations_share_node_names_with_the_nodes() {
    let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
    let mut e = Effects::default();
    s.submit(task(1, 100), &mut e);
    s.place_pending(at(1), &mut e);
    // Through JSON, as after a restart: every name is a copy of its own.
    let records: Vec<Task> = s
        .tasks()
        .map(|t| serde_json::from_value(serde_json::to_value(t).unwrap()).unwrap())
        .collect();
    let nodes = vec![node(1, "w1", 1024)];
    let mut restarted = State::new(Scheduler::new(SchedulerKind::Spread));
    restarted.load(records, nodes, Instant::now());
    let id = TaskId::from_uuid(Uuid::from_u128(1));
    let chosen = restarted.task(id).unwrap().placement.as_ref().unwrap().chosen.clone().unwrap();
    let entry = restarted.node(chosen.node).unwrap();
    assert!(Arc::ptr_eq(&chosen.name, &entry.name), "the name is the node's own");
}

#[test]
fn garbage_collection_forgets_only_tasks_finished_by_the_cutoff() {
    let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
    let mut e = Effects::default();
    for n in 1..=3 {
        s.submit(task(n, 100), &mut e);
    }
    s.place_pending(at(1), &mut e);
    let (old, young) =
        (TaskId::from_uuid(Uuid::from_u128(1)), TaskId::from_uuid(Uuid::from_u128(2)));
    s.stop(old, at(2), &mut e);
    s.stop_unknown_on_node(old, NodeId::from_uuid(Uuid::from_u128(1)), at(3), &mut e);
    s.stop(young, at(2), &mut e);
    s.stop_unknown_on_node(young, NodeId::from_uuid(Uuid::from_u128(1)), at(30), &mut e);
    let usage = s.usage(NodeId::from_uuid(Uuid::from_u128(1))).clone();
    assert_eq!(usage.count, 1, "only the third task still holds its node");

    assert_eq!(s.collect_garbage(at(10), 100), [old]);
    assert!(s.task(old).is_none());
    assert_eq!(s.task_count(), 2);
    assert_eq!(*s.usage(NodeId::from_uuid(Uuid::from_u128(1))), usage, "usage is untouched");
    assert!(s.collect_garbage(at(10), 100).is_empty(), "nothing else finished by then");
    assert_eq!(s.collect_garbage(at(1_000), 100), [young], "the running task stays");
}

#[test]
fn submitted_tasks_are_placed_and_dispatched() {
    let (mut s, _) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
    let mut e = Effects::default();
    s.submit(task(10, 100), &mut e).unwrap();
    s.submit(task(11, 100), &mut e).unwrap();
    assert!(e.kick);
    let mut e = Effects::default();
    s.place_pending(at(1), &mut e);
    assert_eq!(e.dispatch.len(), 2);
    let nodes: BTreeSet<NodeId> = e.dispatch.iter().map(|d| d.node).collect();
    assert_eq!(nodes.len(), 2, "spread puts one on each node");
    assert_eq!(s.pending_count(), 0);
    let t = s.task(TaskId::from_uuid(Uuid::from_u128(10))).unwrap();
    assert_eq!((t.state, t.generation), (TaskState::Scheduled, 1));
    assert!(t.placement.as_ref().unwrap().chosen.is_some());
    assert_eq!(s.usage(e.dispatch[0].node).reserved.memory, Bytes::mib(100));
}

#[test]
fn unplaceable_tasks_wait_with_reasons_until_a_node_fits() {
    let (mut s, mono) = cluster(&[node(1, "w1", 512), node(2, "w2", 512)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 1024), &mut Effects::default()).unwrap();
    let mut e = Effects::default();
    s.place_pending(at(1), &mut e);
    assert!(e.dispatch.is_empty());
    let t = s.task(id).unwrap();
    assert_eq!(t.state, TaskState::Pending);
    assert_eq!(
        t.reason.as_deref(),
        Some(
            "no node fits: w1: needs 1.0GiB memory, 512MiB free; w2: needs 1.0GiB memory, 512MiB free"
        )
    );
    let mut e = Effects::default();
    s.register(node(3, "big", 2048), &[], at(2), mono, &mut e);
    assert!(e.kick, "a new node wakes placement");
    let mut e = Effects::default();
    s.place_pending(at(3), &mut e);
    assert_eq!(e.dispatch[0].node, NodeId::from_uuid(Uuid::from_u128(3)));
}

#[test]
fn an_unplaceable_backlog_is_retried_only_when_capacity_may_have_appeared() {
    let (mut s, mono) = cluster(&[node(1, "w1", 512)]);
    for n in 10..12 {
        s.submit(task(n, 1024), &mut Effects::default()).unwrap();
    }
    let mut e = Effects::default();
    s.place_pending(at(1), &mut e);
    assert_eq!(s.placement_attempts(), 2, "both tried");
    assert!(e.tasks.is_empty(), "a reason is derived state, not written to the store");
    let t = s.task(TaskId::from_uuid(Uuid::from_u128(10))).unwrap();
    assert!(t.reason.as_ref().unwrap().starts_with("no node fits"));
    s.submit(task(12, 1024), &mut Effects::default()).unwrap();
    s.place_pending(at(2), &mut Effects::default());
    assert_eq!(s.placement_attempts(), 3, "only the new one is tried");
    s.place_pending(at(3), &mut Effects::default());
    assert_eq!(s.placement_attempts(), 3, "nothing changed, nothing tried");
    s.register(node(2, "big", 4096), &[], at(4), mono, &mut Effects::default());
    let mut e = Effects::default();
    s.place_pending(at(5), &mut e);
    assert_eq!(e.dispatch.len(), 3, "a new node: the whole backlog is tried and placed");
}

#[test]
fn worker_reports_are_replayed_through_the_state_machine() {
    let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 0), &mut Effects::default()).unwrap();
    s.place_pending(at(1), &mut Effects::default());
    let placed = s.task(id).unwrap().clone();
    let r = report(
        &placed,
        &[
            (STARTED, "started (pid 7)"),
            (EventKind::Note(Note::HealthPassing), "health check passing"),
        ],
    );
    s.sync_report(placed.node.unwrap(), &r, at(20), &mut Effects::default());
    let t = s.task(id).unwrap();
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.started_at, Some(at(11)), "the worker's time of the event");
    let reasons: Vec<&str> = t.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons.last(), Some(&"health check passing"));
    // The same report again changes nothing.
    let before = t.events.len();
    s.sync_report(placed.node.unwrap(), &r, at(21), &mut Effects::default());
    assert_eq!(s.task(id).unwrap().events.len(), before);
}

#[test]
fn entries_sharing_a_timestamp_merge_even_when_reports_split_them() {
    // On a coarse or virtual clock a start and an exit can share a timestamp, and the
    // worker may report them in two heartbeats.
    let (mut s, _) = cluster(&[node(1, "w1", 1024)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 0), &mut Effects::default()).unwrap();
    s.place_pending(at(1), &mut Effects::default());
    let placed = s.task(id).unwrap().clone();
    let mut w = placed.clone();
    w.apply(Trigger::Started, at(5), "started").unwrap();
    let as_report = |w: &Task| Report {
        id: w.id,
        generation: w.generation,
        state: w.state,
        events: w.events.clone(),
        handle: None,
        host_ports: vec![],
        exit_code: None,
        restart_count: 0,
        healthy: None,
    };
    s.sync_report(placed.node.unwrap(), &as_report(&w), at(6), &mut Effects::default());
    assert_eq!(s.task(id).unwrap().state, TaskState::Running);
    w.apply(Trigger::Exited { success: false, retry: false }, at(5), "exited with code 1").unwrap();
    s.sync_report(placed.node.unwrap(), &as_report(&w), at(6), &mut Effects::default());
    assert_eq!(s.task(id).unwrap().state, TaskState::Pending, "failed, so rescheduled");
}

#[test]
fn exhausted_restarts_reschedule_elsewhere_once_then_fail() {
    let (mut s, _) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 0), &mut Effects::default()).unwrap();
    s.place_pending(at(1), &mut Effects::default());
    let first = s.task(id).unwrap().clone();
    let r = report(&first, &[(STARTED, "started"), (FAILED, "exited with code 1")]);
    let mut e = Effects::default();
    s.sync_report(first.node.unwrap(), &r, at(20), &mut e);
    let t = s.task(id).unwrap();
    assert_eq!(t.state, TaskState::Pending, "rescheduled");
    assert_eq!(t.failed_nodes, vec![first.node.unwrap()]);
    assert!(e.kick);
    s.place_pending(at(21), &mut Effects::default());
    let second = s.task(id).unwrap().clone();
    assert_ne!(second.node, first.node, "placed away from the node it failed on");
    assert_eq!(second.generation, 2);
    let r = report(&second, &[(STARTED, "started"), (FAILED, "exited with code 1")]);
    s.sync_report(second.node.unwrap(), &r, at(30), &mut Effects::default());
    let t = s.task(id).unwrap();
    assert_eq!(t.state, TaskState::Failed, "no reschedules left");
    assert_eq!(t.reason.as_deref(), Some("exited with code 1"));
}

#[test]
fn silent_nodes_go_down_and_their_tasks_move() {
    let (mut s, mono) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
    for n in 10..14 {
        s.submit(task(n, 0), &mut Effects::default()).unwrap();
    }
    s.place_pending(at(1), &mut Effects::default());
    let w1 = NodeId::from_uuid(Uuid::from_u128(1));
    let w2 = NodeId::from_uuid(Uuid::from_u128(2));
    let stopped = s.tasks().find(|t| t.node == Some(w1)).map(|t| t.id).unwrap();
    s.stop(stopped, at(2), &mut Effects::default());
    // w2 keeps heartbeating, w1 falls silent.
    let later = mono + Duration::from_secs(6);
    let hb = Beat { stats: Some(stats()), reports: vec![], active: Some(vec![]), ingress: None };
    s.heartbeat(w2, &hb, at(6), later, &mut Effects::default()).unwrap();
    let mut e = Effects::default();
    let down = s.expire_nodes(Duration::from_secs(5), at(6), later, &mut e);
    assert_eq!(down, vec![w1]);
    assert_eq!(s.node(w1).unwrap().node.state, NodeState::Down);
    assert_eq!(s.task(stopped).unwrap().state, TaskState::Completed, "a stop in flight completes");
    assert_eq!(s.pending_count(), 1, "the other task on w1 waits for placement");
    let mut e = Effects::default();
    s.place_pending(at(7), &mut e);
    assert!(e.dispatch.iter().all(|d| d.node == w2));
    assert_eq!(s.usage(w1).count, 0);
}

#[test]
fn a_returning_node_is_told_to_stop_copies_that_moved() {
    let (mut s, mono) = cluster(&[node(1, "w1", 1024)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 0), &mut Effects::default()).unwrap();
    s.place_pending(at(1), &mut Effects::default());
    let w1 = NodeId::from_uuid(Uuid::from_u128(1));
    let later = mono + Duration::from_secs(6);
    s.expire_nodes(Duration::from_secs(5), at(6), later, &mut Effects::default());
    s.register(node(2, "w2", 1024), &[], at(6), later, &mut Effects::default());
    s.place_pending(at(7), &mut Effects::default());
    assert_eq!(s.task(id).unwrap().generation, 2);
    // w1 comes back still running generation 1.
    let active = [ActiveCopy { id, generation: 1 }];
    let hb = Beat { stats: None, reports: vec![], active: Some(active.to_vec()), ingress: None };
    let stop = s.heartbeat(w1, &hb, at(8), later, &mut Effects::default()).unwrap();
    assert_eq!(stop, vec![id]);
    assert_eq!(s.node(w1).unwrap().node.state, NodeState::Ready);
    // And a node the manager never heard of must register.
    let stranger = NodeId::from_uuid(Uuid::from_u128(99));
    assert!(s.heartbeat(stranger, &hb, at(8), later, &mut Effects::default()).is_none());
}

#[test]
fn a_node_that_lost_its_tasks_gets_them_placed_again() {
    let (mut s, mono) = cluster(&[node(1, "w1", 1024)]);
    let id = TaskId::from_uuid(Uuid::from_u128(10));
    s.submit(task(10, 0), &mut Effects::default()).unwrap();
    s.place_pending(at(1), &mut Effects::default());
    let placed = s.task(id).unwrap().clone();
    s.sync_report(
        placed.node.unwrap(),
        &report(&placed, &[(STARTED, "started")]),
        at(2),
        &mut Effects::default(),
    );
    s.dispatch_done(id);
    // The worker restarts with an empty store and registers knowing nothing.
    let stop = s.register(node(1, "w1", 1024), &[], at(3), mono, &mut Effects::default());
    assert!(stop.is_empty());
    assert_eq!(s.task(id).unwrap().state, TaskState::Pending);
}

#[test]
fn the_node_index_always_matches_a_scan_of_the_tasks() {
    let (mut s, mono) = cluster(&[node(1, "w1", 1024), node(2, "w2", 1024)]);
    let scan = |s: &State, n: NodeId| -> BTreeSet<TaskId> {
        s.tasks()
            .filter(|t| t.node == Some(n) && t.state.is_active_on_node())
            .map(|t| t.id)
            .collect()
    };
    let check = |s: &State| {
        for n in [1, 2].map(|n| NodeId::from_uuid(Uuid::from_u128(n))) {
            assert_eq!(s.usage(n).tasks, scan(s, n), "node {n}");
        }
    };
    for n in 10..16 {
        s.submit(task(n, 10), &mut Effects::default()).unwrap();
    }
    s.place_pending(at(1), &mut Effects::default());
    check(&s);
    let first = TaskId::from_uuid(Uuid::from_u128(10));
    s.stop(first, at(2), &mut Effects::default());
    let placed = s.task(first).unwrap().node.unwrap();
    s.stop_unknown_on_node(first, placed, at(3), &mut Effects::default());
    check(&s);
    let w2 = NodeId::from_uuid(Uuid::from_u128(2));
    let hb = Beat { stats: Some(stats()), reports: vec![], active: Some(vec![]), ingress: None };
    let later = mono + Duration::from_secs(6);
    s.heartbeat(w2, &hb, at(6), later, &mut Effects::default()).unwrap();
    s.expire_nodes(Duration::from_secs(5), at(6), later, &mut Effects::default());
    check(&s);
    s.place_pending(at(7), &mut Effects::default());
    check(&s);
    assert!(s.usage(NodeId::from_uuid(Uuid::from_u128(1))).tasks.is_empty());
}

#[test]
fn a_leaving_instance_is_stopped_once_every_ingress_let_go_of_it_or_its_time_is_up() {
    use cube_core::endpoints::IngressReport;
    let (n1, n2) = (node(1, "a", 1024), node(2, "b", 1024));
    let (mut s, mono) = cluster(&[n1.clone(), n2.clone()]);
    let mut t = task(10, 1);
    t.state = TaskState::Running;
    t.desired = DesiredState::Stopped;
    t.node = Some(n1.id);
    s.load(vec![t.clone()], vec![], mono);
    let stop = StopCall { task: t.id, node: n1.id };
    let left = BTreeSet::from([t.id]);

    // Held: the stop leaves the effects, and fencing does not stop it behind our back.
    let mut effects = Effects { stop: vec![stop.clone()], ..Effects::default() };
    s.hold_stops(&left, 7, mono, &mut effects);
    assert!(effects.stop.is_empty());
    assert!(s.is_leaving(t.id));
    assert!(s.release_leaving(mono).is_empty(), "no node applied index 7 yet");

    // One node applied it, the other not yet: still held.
    s.ingress_applied(n1.id, 7);
    assert!(s.release_leaving(mono + Duration::from_secs(1)).is_empty());
    // Both applied it; a report made after that still shows a connection open to it.
    s.ingress_applied(n2.id, 8);
    assert!(s.release_leaving(mono + Duration::from_secs(2)).is_empty());
    let open = IngressReport { open: [(t.id, 1)].into(), ..IngressReport::default() };
    s.ingress_reported(n1.id, open, mono + Duration::from_secs(3));
    s.ingress_reported(n2.id, IngressReport::default(), mono + Duration::from_secs(3));
    assert!(s.release_leaving(mono + Duration::from_secs(3)).is_empty(), "a connection is open");
    // The connection ended: released.
    s.ingress_reported(n1.id, IngressReport::default(), mono + Duration::from_secs(4));
    assert_eq!(s.release_leaving(mono + Duration::from_secs(4)), vec![stop.clone()]);
    assert!(!s.is_leaving(t.id));

    // A node that never applies the change holds the stop for drain_timeout (10 s) at most.
    let mut effects = Effects { stop: vec![stop.clone()], ..Effects::default() };
    s.hold_stops(&left, 9, mono + Duration::from_secs(5), &mut effects);
    assert!(s.release_leaving(mono + Duration::from_secs(14)).is_empty());
    assert_eq!(s.release_leaving(mono + Duration::from_secs(15)), vec![stop]);
}

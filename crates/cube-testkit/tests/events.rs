//! The manager's event stream and blocking queries, through real HTTP on the fake driver and a
//! virtual clock: every change once and in order, resuming after a restart, a history that
//! says 410 rather than skip, heartbeats, bad input, and clients that go away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cube_api::ErrorCode;
use cube_api::events::{Actor, Event, EventObject, EventType, NoticeType, StreamLine};
use cube_http::client::{Client, EventStream};
use cube_testkit::{Cluster, ClusterConfig};
use futures_util::StreamExt;
use serde_json::json;

fn sleeper(name: &str) -> serde_json::Value {
    json!({"name": name, "driver": "process", "command": "x"})
}

/// Reads events until `done` says the collection is complete.
async fn collect(
    cluster: &Cluster,
    stream: &mut EventStream,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut events = Vec::new();
    while !done(&events) {
        match cluster.drive(stream.next()).await {
            Some(Ok(StreamLine::Event(e))) => events.push(*e),
            Some(Ok(StreamLine::Notice(_))) => {}
            Some(Err(e)) => panic!("stream failed: {e}"),
            None => panic!("stream ended after {} events", events.len()),
        }
    }
    events
}

async fn open(cluster: &Cluster, index: Option<u64>, topics: &[&str]) -> EventStream {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    cluster.drive(cluster.client().events(index, &topics)).await.unwrap()
}

fn running(events: &[Event], n: usize) -> bool {
    events.iter().filter(|e| e.kind == EventType::TaskRunning).count() == n
}

#[tokio::test(start_paused = true)]
async fn every_change_is_one_event_in_index_order_with_what_and_who() {
    let cluster = Cluster::start(2).await;
    let mut stream = open(&cluster, Some(0), &[]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(cluster.submit(sleeper(&format!("t{i}"))).await);
    }
    let events = collect(&cluster, &mut stream, |e| running(e, 20)).await;
    let indexes: Vec<u64> = events.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=events.len() as u64).collect::<Vec<_>>(), "contiguous from 1");

    // Both nodes registered first, by themselves.
    let nodes: Vec<&Event> =
        events.iter().filter(|e| matches!(e.object, EventObject::Node(_))).collect();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|e| e.kind == EventType::NodeRegistered
        && matches!(e.by, Actor::Node { node } if node.to_string() == e.key)));
    // Each task: submitted by the API, placed by the manager, running as its node said.
    for id in &ids {
        // Updates that added no history (the node confirming the placement) aside.
        let of: Vec<&Event> = events
            .iter()
            .filter(|e| e.key == id.to_string() && e.kind != EventType::TaskUpdated)
            .collect();
        let kinds: Vec<EventType> = of.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventType::TaskSubmitted, EventType::TaskPlaced, EventType::TaskRunning],
            "{of:#?}"
        );
        assert_eq!(of[0].by, Actor::Api);
        assert_eq!(of[1].by, Actor::Manager);
        assert!(matches!(of[2].by, Actor::Node { .. }));
        let EventObject::Task(Some(t)) = &of[2].object else { panic!("{:?}", of[2]) };
        assert_eq!(t.state, cube_core::TaskState::Running);
        assert!(t.last_event.is_some());
    }

    // A topic filter with a key: one task's stop only.
    let id = ids[3];
    let mut one = open(&cluster, Some(*indexes.last().unwrap()), &[&format!("Task:{id}")]).await;
    cluster.drive(cluster.client().stop(id)).await.unwrap();
    cluster.drive(cluster.client().stop(ids[4])).await.unwrap();
    let stopped =
        collect(&cluster, &mut one, |e| e.last().is_some_and(|e| e.kind == EventType::TaskStopped))
            .await;
    assert!(stopped.iter().all(|e| e.key == id.to_string()), "{stopped:#?}");
    assert_eq!(stopped[0].kind, EventType::TaskStopRequested);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn services_and_deployments_are_events_too() {
    let cluster = Cluster::start(2).await;
    let mut stream = open(&cluster, None, &["Service:web", "Deployment"]).await;
    let spec: cube_core::service::ServiceSpec = serde_json::from_value(json!({
        "name": "web", "count": 2,
        "task": {"name": "web", "driver": "process", "command": "x"},
        "update": {"min_healthy_time": "1s"}
    }))
    .unwrap();
    let (view, _) = cluster.drive(cluster.client().put_service(&spec, None)).await.unwrap();
    let events = collect(&cluster, &mut stream, |e| {
        e.iter().any(|e| e.kind == EventType::DeploymentSuccessful)
    })
    .await;
    assert_eq!(events[0].kind, EventType::ServiceRegistered);
    assert_eq!(events[0].by, Actor::Api);
    assert_eq!(view.modify_index, events[0].index, "modify_index is the change's index");
    // The deployment's end changes the record (the version's outcome), not its spec.
    let updated: Vec<&Event> =
        events.iter().filter(|e| e.kind == EventType::ServiceUpdated).collect();
    assert!(updated.iter().all(|e| e.by == Actor::Manager), "{updated:#?}");
    let EventObject::Service(Some(last)) = &updated.last().unwrap().object else { panic!() };
    assert_eq!(last.modify_index, view.modify_index);
    assert!(
        events
            .iter()
            .all(|e| matches!(e.object, EventObject::Service(_) | EventObject::Deployment(_)))
    );
    assert!(events.iter().any(|e| e.kind == EventType::DeploymentProgress));
    cluster.drive(cluster.client().remove_service("web")).await.unwrap();
    let gone =
        collect(&cluster, &mut stream, |e| e.iter().any(|e| e.kind == EventType::ServiceDeleted))
            .await;
    assert!(matches!(gone.last().unwrap().object, EventObject::Service(None)));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_manager_resumes_the_stream_from_a_stored_index() {
    let mut cluster = Cluster::start(1).await;
    let mut stream = open(&cluster, Some(0), &[]).await;
    for i in 0..5 {
        cluster.submit(sleeper(&format!("a{i}"))).await;
    }
    let before = collect(&cluster, &mut stream, |e| running(e, 5)).await;
    let seen = before.last().unwrap().index;
    drop(stream);
    // Changes the watcher did not see, then a restart, then more.
    for i in 0..3 {
        cluster.submit(sleeper(&format!("b{i}"))).await;
    }
    cluster.restart_manager().await;
    for i in 0..3 {
        cluster.submit(sleeper(&format!("c{i}"))).await;
    }
    let mut resumed = open(&cluster, Some(seen), &[]).await;
    let after = collect(&cluster, &mut resumed, |e| running(e, 6)).await;
    let indexes: Vec<u64> = after.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (seen + 1..=seen + after.len() as u64).collect::<Vec<_>>());
    let names: Vec<String> = after
        .iter()
        .filter(|e| e.kind == EventType::TaskSubmitted)
        .filter_map(|e| match &e.object {
            EventObject::Task(Some(t)) => Some(t.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["b0", "b1", "b2", "c0", "c1", "c2"]);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_index_older_than_the_history_is_gone_never_skipped() {
    let history = cube_manager::History { events: 10, age: Duration::from_secs(60) };
    let cluster = Cluster::with(ClusterConfig { workers: 1, history, ..Default::default() }).await;
    for i in 0..20 {
        cluster.submit(sleeper(&format!("t{i}"))).await;
    }
    // Past the age, and a pass of the pruner (once a minute).
    cluster.pass_in_steps(Duration::from_secs(130), Duration::from_secs(1)).await;
    let topics: Vec<String> = Vec::new();
    let err = match cluster.drive(cluster.client().events(Some(0), &topics)).await {
        Ok(_) => panic!("index 0 should be gone"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(ErrorCode::Gone));
    let cube_http::client::ClientError::Api { status, error, .. } = err else { panic!() };
    assert_eq!(status, 410);
    let bounds = error.index.unwrap();
    assert!(bounds.oldest > 1 && bounds.current >= bounds.oldest + 9, "{bounds:?}");
    // From just before the oldest: everything kept, in order.
    let mut stream = open(&cluster, Some(bounds.oldest - 1), &[]).await;
    let events =
        collect(&cluster, &mut stream, |e| e.last().is_some_and(|e| e.index == bounds.current))
            .await;
    assert_eq!(events[0].index, bounds.oldest);
    assert_eq!(events.len() as u64, bounds.current - bounds.oldest + 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_beats_every_ten_seconds_with_the_current_index() {
    let cluster = Cluster::start(1).await;
    cluster.submit(sleeper("t")).await;
    cluster.pass(Duration::from_secs(2)).await;
    let mut stream = open(&cluster, None, &["Deployment"]).await;
    let started = tokio::time::Instant::now();
    let line = cluster.drive(stream.next()).await.unwrap().unwrap();
    let StreamLine::Notice(notice) = line else { panic!("{line:?}") };
    assert_eq!(notice.kind, NoticeType::Heartbeat);
    let waited = started.elapsed();
    assert!((Duration::from_secs(10)..Duration::from_secs(11)).contains(&waited), "{waited:?}");
    let tasks = cluster.drive(cluster.client().tasks()).await.unwrap();
    assert_eq!(tasks[0].state, cube_core::TaskState::Running);
    assert!(notice.index >= 4, "registered, submitted, placed, running: {notice:?}");
    cluster.shutdown().await;
}

async fn raw(client: &Client, path_and_query: &str) -> (u16, Option<u64>, serde_json::Value) {
    let url = format!("{}{path_and_query}", client.base());
    let response = reqwest::get(&url).await.unwrap();
    let status = response.status().as_u16();
    let index =
        response.headers().get("x-cube-index").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, index, body)
}

#[tokio::test(start_paused = true)]
async fn blocking_queries_answer_at_the_next_change_or_at_their_wait() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().clone();
    let (status, index, _) = cluster.drive(raw(&client, "/v1/tasks")).await;
    assert_eq!(status, 200);
    let index = index.expect("every answer carries X-Cube-Index");

    // Nothing happens: the query answers after its wait, give or take its jitter.
    let started = tokio::time::Instant::now();
    let (status, same, _) =
        cluster.drive(raw(&client, &format!("/v1/tasks?index={index}&wait=30s"))).await;
    let waited = started.elapsed();
    assert_eq!((status, same), (200, Some(index)));
    assert!(
        (Duration::from_secs(30)..Duration::from_millis(32_000)).contains(&waited),
        "{waited:?}"
    );

    // A change: it answers with it.
    let path = format!("/v1/tasks?index={index}&wait=5m");
    let query = raw(&client, &path);
    let submit = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.client().submit(None, &serde_json::from_value(sleeper("t")).unwrap()).await
    };
    let started = tokio::time::Instant::now();
    let ((status, newer, body), submitted) =
        cluster.drive(async { tokio::join!(query, submit) }).await;
    submitted.unwrap();
    assert_eq!(status, 200);
    assert!(newer.unwrap() > index);
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(body.as_array().unwrap().len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_queries_are_refused_with_the_error_envelope() {
    let cluster = Cluster::start(0).await;
    let client = cluster.client().clone();
    for (path, says) in [
        ("/v1/events?topic=Tasks", "unknown topic \"Tasks\""),
        ("/v1/events?index=minus-one", "is not an index"),
        ("/v1/events?since=3", "unknown parameter \"since\""),
        ("/v1/tasks?index=x", "is not an index"),
        ("/v1/tasks?index=1&wait=11m", "longer than the longest"),
        ("/v1/tasks?index=1&wait=soon", "wait:"),
        ("/v1/nodes?wait=1m", "wait needs index"),
    ] {
        let (status, _, body) = cluster.drive(raw(&client, path)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
    }
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn clients_that_go_away_mid_stream_leave_nothing_behind() {
    let cluster = Cluster::start(1).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(open(&cluster, Some(0), &[]).await);
    }
    for s in &mut streams {
        let line = cluster.drive(s.next()).await;
        assert!(matches!(line, Some(Ok(StreamLine::Event(_)))));
    }
    assert_eq!(cluster.manager().event_subscribers(), 10);
    drop(streams);
    // The manager notices at its next write to each of them at the latest.
    cluster.submit(sleeper("t")).await;
    cluster
        .wait_for(Duration::from_secs(15), "every subscription gone", |_| async {
            (cluster.manager().event_subscribers() == 0).then_some(())
        })
        .await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn server_sent_events_resume_from_last_event_id() {
    let cluster = Cluster::start(0).await;
    for i in 0..3 {
        cluster.submit(sleeper(&format!("t{i}"))).await;
    }
    let url = format!("{}/v1/events", cluster.client().base());
    let request = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .send();
    let response = cluster.drive(request).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = cluster.drive(body.next()).await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(frames[0].starts_with("id: 2\ndata: {\"index\":2,"), "{text}");
    assert!(frames[1].starts_with("id: 3\ndata: {\"index\":3,"), "{text}");
    cluster.shutdown().await;
}

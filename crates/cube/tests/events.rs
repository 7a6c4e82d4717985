//! The event stream of a real `cube manager` process: a burst of 10,000 changes seen exactly
//! once and in order by a steady watcher and by one whose connection is cut every 0.5 s, and a
//! stream resumed across a SIGKILL and restart of the manager with nothing missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestManager;
use cube_api::events::{Event, StreamLine};
use cube_core::{TaskId, TaskSpec};
use cube_http::client::Client;
use futures_util::StreamExt;

fn spec(name: &str) -> TaskSpec {
    common::spec(serde_json::json!({"name": name, "driver": "process", "command": "sleep",
                                    "args": ["1"]}))
}

/// Submits `n` tasks, 16 at a time; their ids.
async fn burst(client: &Client, n: usize) -> Vec<TaskId> {
    let mut ids = Vec::with_capacity(n);
    let specs: Vec<TaskSpec> = (0..n).map(|i| spec(&format!("t{i}"))).collect();
    for chunk in specs.chunks(16) {
        let submits = chunk.iter().map(|s| client.submit(None, s));
        for r in futures_util::future::join_all(submits).await {
            ids.push(r.unwrap().task.id);
        }
    }
    ids
}

/// The manager's current index, from `X-Cube-Index`.
async fn current_index(url: &str) -> u64 {
    let response = reqwest::get(format!("{url}/v1/health")).await.unwrap();
    response.headers()["x-cube-index"].to_str().unwrap().parse().unwrap()
}

/// Reads from `after` until index `until` (`u64::MAX` until it is known), reconnecting
/// whenever the stream ends; with `cut_every`, drops the connection that often and resumes
/// from the last index seen. Returns the events and how many connections it took.
async fn watch(
    client: Client,
    after: u64,
    until: Arc<AtomicU64>,
    cut_every: Option<Duration>,
) -> (Vec<Event>, u32) {
    let mut events: Vec<Event> = Vec::new();
    let mut connections = 0;
    let mut last = after;
    let done = |last: u64| last >= until.load(Ordering::Relaxed);
    while !done(last) {
        let mut stream = client.events(Some(last), &[]).await.unwrap();
        connections += 1;
        let opened = Instant::now();
        while !done(last) {
            let cut = cut_every.is_some_and(|d| opened.elapsed() >= d);
            if cut {
                break;
            }
            // Wakes up now and then to see whether the end is known yet.
            match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                Ok(Some(Ok(StreamLine::Event(e)))) => {
                    last = e.index;
                    events.push(*e);
                }
                Ok(Some(Ok(StreamLine::Notice(_)))) | Err(_) => {}
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                // Ended by the server: resume.
                Ok(None) => break,
            }
        }
    }
    (events, connections)
}

fn assert_exactly_once(events: &[Event], from: u64, until: u64, ids: &[TaskId]) {
    let indexes: Vec<u64> = events.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (from..=until).collect::<Vec<_>>(), "every index once, in order");
    let keys: BTreeSet<String> = events.iter().map(|e| e.key.clone()).collect();
    let want: BTreeSet<String> = ids.iter().map(ToString::to_string).collect();
    assert!(want.is_subset(&keys), "every submitted task has its event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_changes_is_seen_once_in_order_even_through_cut_connections() {
    let m = TestManager::start(&[]).await;
    let start = current_index(&m.url).await;
    let until = Arc::new(AtomicU64::new(u64::MAX));
    let steady = tokio::spawn(watch(m.client.clone(), start, Arc::clone(&until), None));
    let cut_every = Some(Duration::from_millis(500));
    let cut = tokio::spawn(watch(m.client.clone(), start, Arc::clone(&until), cut_every));
    let began = Instant::now();
    let ids = burst(&m.client, 10_000).await;
    let end = current_index(&m.url).await;
    eprintln!("10,000 submits in {:?}; index {start} -> {end}", began.elapsed());
    assert!(end - start >= 10_000);
    until.store(end, Ordering::Relaxed);
    let (events, _) = steady.await.unwrap();
    assert_exactly_once(&events, start + 1, end, &ids);
    let (events, connections) = cut.await.unwrap();
    assert_exactly_once(&events, start + 1, end, &ids);
    eprintln!("the cut watcher used {connections} connections");
    assert!(connections > 2, "its connection was cut ({connections})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_across_a_killed_and_restarted_manager_with_nothing_missing() {
    let mut m = TestManager::start(&[]).await;
    let start = current_index(&m.url).await;
    let first = burst(&m.client, 50).await;
    let seen = current_index(&m.url).await;
    let (events, _) = watch(m.client.clone(), start, Arc::new(AtomicU64::new(seen)), None).await;
    assert_exactly_once(&events, start + 1, seen, &first);
    // Acknowledged changes the watcher has not read, then SIGKILL.
    let unseen = burst(&m.client, 50).await;
    m.kill9();
    m.restart().await;
    let more = burst(&m.client, 10).await;
    let end = current_index(&m.url).await;
    let (events, _) = watch(m.client.clone(), seen, Arc::new(AtomicU64::new(end)), None).await;
    let after: Vec<TaskId> = unseen.into_iter().chain(more).collect();
    assert_exactly_once(&events, seen + 1, end, &after);
    // The restarted manager's history still reaches back to the start.
    let (events, _) = watch(m.client.clone(), start, Arc::new(AtomicU64::new(end)), None).await;
    assert_eq!(events.len() as u64, end - start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_events_prints_each_change_and_refuses_bad_topics() {
    let m = TestManager::start(&[]).await;
    let ids = burst(&m.client, 3).await;
    let mut child = std::process::Command::new(common::cube_bin())
        .args(["--addr", &m.url, "events", "--index", "0", "-o", "json", "--topic", "Task"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().take(3).map(Result::unwrap).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Submitted concurrently: in whatever order they were committed.
    let keys: BTreeSet<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Event>(l).unwrap())
        .inspect(|e| assert_eq!(e.kind, cube_api::events::EventType::TaskSubmitted))
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ids.iter().map(ToString::to_string).collect::<BTreeSet<_>>());

    let out = std::process::Command::new(common::cube_bin())
        .args(["--addr", &m.url, "events", "--topic", "Tasks"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("unknown topic \"Tasks\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_status_watch_prints_each_change_after_the_list() {
    let m = TestManager::start(&[]).await;
    let _w = m.worker("w1", &[]).await;
    let before = burst(&m.client, 1).await;
    let mut child = std::process::Command::new(common::cube_bin())
        .args(["--addr", &m.url, "status", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut read_until = |done: &dyn Fn(&str) -> bool| loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("a line in time");
        lines.push(line.clone());
        if done(&line) {
            break;
        }
    };
    // The list first: a header and the task submitted before.
    let short = before[0].short();
    read_until(&|l| l.contains(&short));
    // Then a line per change of a new one, up to running.
    let id = m.client.submit(None, &spec("watched")).await.unwrap().task.id.short();
    read_until(&|l| l.contains(&id) && l.contains("running"));
    child.kill().unwrap();
    child.wait().unwrap();
    let of_new: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    assert!(of_new.iter().any(|l| l.contains("pending")), "{lines:#?}");
    assert!(of_new.iter().any(|l| l.contains("scheduled")), "{lines:#?}");
}

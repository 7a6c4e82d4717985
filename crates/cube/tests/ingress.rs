//! The ingress of real workers (separate `cube` processes) in front of real containers: a
//! published port answers on every node and spreads over the instances.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod cli_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TEST_IMAGE, TestManager, TestWorker, docker_lock, docker_ready, wait_until};
use cube_core::service::ServiceSpec;
use serde_json::json;

/// A port free on loopback now (chosen by the OS, then released for the ingress to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

/// busybox httpd answering `/` with the container's host name at once, and `/cgi-bin/slow`
/// with it after 200 ms (so a rollout always finds requests in flight).
const SERVE: &str = "mkdir -p /w/cgi-bin && hostname > /w/index.html && \
    printf '#!/bin/sh\\nsleep 0.2\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\nhostname\\n' > /w/cgi-bin/slow && \
    chmod +x /w/cgi-bin/slow && exec httpd -f -p 80 -h /w";

/// `count` busybox httpd instances (`SERVE`), one per node, published on `publish`.
fn web(count: u32, publish: u16, mode: &str) -> ServiceSpec {
    serde_json::from_value(json!({
        "name": "web", "count": count, "distinct_nodes": true,
        "task": {"name": "web", "driver": "docker", "image": TEST_IMAGE,
                 "command": "sh",
                 "args": ["-c", SERVE],
                 "stop_grace": "1s", "ports": [{"container": 80}],
                 "health": {"type": "http", "port": 80, "path": "/", "interval": "300ms",
                            "timeout": "1s", "failure_threshold": 2}},
        "ports": [{"target": 80, "publish": publish, "mode": mode}],
        "update": {"min_healthy_time": "1s", "healthy_deadline": "30s", "progress_deadline": "1m"}
    }))
    .unwrap()
}

/// A manager and three workers whose ingresses listen on 127.0.0.1, .2 and .3 (one loopback
/// address each, as three hosts would have).
async fn cluster() -> (TestManager, Vec<TestWorker>) {
    let m = TestManager::start(&[]).await;
    let mut workers = Vec::new();
    for i in 1..=3 {
        let addr = format!("127.0.0.{i}");
        workers.push(m.worker(&format!("w{i}"), &["--ingress-addr", &addr]).await);
    }
    (m, workers)
}

/// One request on a new connection; the answer's body.
async fn get(http: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
    let response = http.get(url).send().await?.error_for_status()?;
    Ok(response.text().await?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_answers_on_every_node_and_spreads_over_the_instances() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _workers) = cluster().await;
    let publish = free_port();
    m.client.put_service(&web(3, publish, "tcp"), None).await.unwrap();
    let nodes: Vec<String> = (1..=3).map(|i| format!("http://127.0.0.{i}:{publish}/")).collect();
    // No connection reuse: each request is a connection of its own, balanced on its own.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    wait_until(Duration::from_secs(60), "3 endpoints, every node answering", || async {
        let e = m.client.service_endpoints("web").await.ok()?;
        if e.endpoints.len() != 3 {
            return None;
        }
        for url in &nodes {
            get(&http, url).await.ok()?;
        }
        Some(())
    })
    .await;

    let mut answers: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for round in 0..100 {
        for url in &nodes {
            let body =
                get(&http, url).await.unwrap_or_else(|e| panic!("round {round}: {url}: {e}"));
            *answers.entry(url.clone()).or_default().entry(body).or_default() += 1;
        }
    }
    let instances: BTreeSet<&String> = answers.values().flat_map(|a| a.keys()).collect();
    assert_eq!(instances.len(), 3, "300 requests reached all three instances: {answers:?}");
    for (url, seen) in &answers {
        // Each node forwards to its own instance first.
        assert_eq!(seen.len(), 1, "{url} sent everything to its local instance: {seen:?}");
        assert_eq!(seen.values().sum::<u32>(), 100);
    }
    eprintln!("answers by node: {answers:?}");
}

/// `clients` loops, each sending requests on a new connection to the nodes in turn until
/// `stop`; the number of requests sent and the failures (connection errors, resets, 5xx).
async fn load(
    urls: Vec<String>,
    clients: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, Vec<String>) {
    load_counting(urls, clients, stop, Default::default(), false).await
}

/// [`load`], each client keeping its connections to the nodes alive between requests.
async fn load_kept_alive(
    urls: Vec<String>,
    clients: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, Vec<String>) {
    load_counting(urls, clients, stop, Default::default(), true).await
}

/// [`load`] (or [`load_kept_alive`]), counting answered requests in `answered` as they come.
async fn load_counting(
    urls: Vec<String>,
    clients: usize,
    stop: tokio_util::sync::CancellationToken,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    kept_alive: bool,
) -> (u64, Vec<String>) {
    let mut loops = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (urls, stop, answered) = (urls.clone(), stop.clone(), answered.clone());
        loops.spawn(async move {
            let idle = if kept_alive { usize::MAX } else { 0 };
            let http = reqwest::Client::builder().pool_max_idle_per_host(idle).build().unwrap();
            let (mut sent, mut failed) = (0u64, Vec::new());
            let mut i = c;
            while !stop.is_cancelled() {
                let url = &urls[i % urls.len()];
                i += 1;
                sent += 1;
                match get(&http, url).await {
                    Ok(_) => {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => failed.push(format!("{url}: {e:?}")),
                }
            }
            (sent, failed)
        });
    }
    let mut total = (0, Vec::new());
    while let Some(r) = loops.join_next().await {
        let (sent, failed) = r.unwrap();
        total.0 += sent;
        total.1.extend(failed);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_load_fails_no_request() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _workers) = cluster().await;
    let (spec, slow) = serving(&m, false, "tcp").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(slow, 32, stop.clone()));
    roll(&m, spec).await;
    no_failures("rolling update under load (tcp)", stop, traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_kept_alive_http_load_fails_no_request() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _workers) = cluster().await;
    let (spec, slow) = serving(&m, false, "http").await;
    // The ingress, not the instance, keeps connections alive: busybox closes each one.
    let http = reqwest::Client::new();
    let answer = http.get(&slow[0]).send().await.unwrap();
    assert!(answer.headers().get("connection").is_none(), "{:?}", answer.headers());
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load_kept_alive(slow, 32, stop.clone()));
    roll(&m, spec).await;
    no_failures("rolling update under kept-alive load (http)", stop, traffic).await;
}

/// Rolls the service out to a second version and waits for the rollout to succeed.
async fn roll(m: &TestManager, mut spec: ServiceSpec) {
    spec.task.env.insert("VERSION".into(), "2".into());
    let (view, _) = m.client.put_service(&spec, None).await.unwrap();
    assert_eq!(view.version, 2);
    let done = wait_until(Duration::from_secs(120), "the rollout done", || async {
        let s = m.client.service("web").await.ok()?;
        let d = s.deployment?;
        (d.version == 2 && d.status != cube_core::deployment::DeploymentStatus::Running)
            .then_some(d)
    })
    .await;
    assert_eq!(done.status, cube_core::deployment::DeploymentStatus::Successful, "{done:?}");
}

/// Stops the load and checks that it ran throughout and that no request failed.
async fn no_failures(
    what: &str,
    stop: tokio_util::sync::CancellationToken,
    traffic: tokio::task::JoinHandle<(u64, Vec<String>)>,
) {
    stop.cancel();
    let (sent, failed) = traffic.await.unwrap();
    eprintln!("{what}: {sent} requests, {} failed", failed.len());
    assert!(sent > 100, "the load ran throughout: {sent}");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {:#?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_on_one_node_is_reported_there_and_the_others_serve() {
    // No instance is needed: a published port is listened on as soon as it is published.
    let (m, _workers) = cluster().await;
    let taken = std::net::TcpListener::bind(("127.0.0.2", 0)).unwrap();
    let publish = taken.local_addr().unwrap().port();
    m.client.put_service(&web(0, publish, "tcp"), None).await.unwrap();
    let nodes =
        wait_until(Duration::from_secs(20), "every node reporting its listener", || async {
            let nodes = m.client.nodes().await.ok()?;
            nodes.iter().all(|n| n.ingress.len() == 1).then_some(nodes)
        })
        .await;
    for n in &nodes {
        let l = &n.ingress[0];
        assert_eq!((l.port, l.service.as_str()), (publish, "web"));
        match n.name.as_str() {
            "w2" => assert_eq!(l.error.as_deref(), Some("the port is already in use on this node")),
            _ => {
                assert_eq!(l.error, None, "{n:?}");
                std::net::TcpStream::connect(&l.address).unwrap();
            }
        }
    }
    let url = m.url.clone();
    let status = tokio::task::spawn_blocking(move || {
        cli_support::cube(&["--addr", &url, "service", "status", "web"], &[]).success()
    })
    .await
    .unwrap();
    let expected = format!(
        "node w2 does not serve :{publish} (127.0.0.2:{publish}): the port is already in use"
    );
    assert!(status.stdout.contains(&expected), "{}", status.stdout);
    let url = m.url.clone();
    let node = tokio::task::spawn_blocking(move || {
        cli_support::cube(&["--addr", &url, "node", "w2"], &[]).success()
    })
    .await
    .unwrap();
    assert!(node.stdout.contains("NOT LISTENING: the port is already in use"), "{}", node.stdout);
    drop(taken);
}

/// A 3-instance service published over the 3 workers, answering on every node; the slow
/// URLs of each node.
async fn serving(m: &TestManager, spread: bool, mode: &str) -> (ServiceSpec, Vec<String>) {
    let publish = free_port();
    let mut spec = web(3, publish, mode);
    spec.distinct_nodes = spread;
    m.client.put_service(&spec, None).await.unwrap();
    let urls: Vec<String> = (1..=3).map(|i| format!("http://127.0.0.{i}:{publish}/")).collect();
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(60), "3 endpoints, every node answering", || async {
        let e = m.client.service_endpoints("web").await.ok()?;
        if e.endpoints.len() != 3 {
            return None;
        }
        for url in &urls {
            get(&http, url).await.ok()?;
        }
        Some(())
    })
    .await;
    let slow: Vec<String> = urls.iter().map(|u| format!("{u}cgi-bin/slow")).collect();
    assert_eq!(get(&http, &slow[0]).await.unwrap().len(), 12, "a container's host name");
    (spec, slow)
}

/// Waits until the service has `n` endpoints and no instance is leaving or stopping.
async fn settled(m: &TestManager, n: usize) {
    wait_until(Duration::from_secs(60), &format!("{n} instances, nothing stopping"), || async {
        let e = m.client.service_endpoints("web").await.ok()?;
        let tasks = m.client.tasks().await.ok()?;
        let live = tasks
            .iter()
            .filter(|t| t.instance.as_ref().is_some_and(|i| i.service == "web"))
            .filter(|t| !t.state.is_terminal())
            .count();
        (e.endpoints.len() == n && live == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_and_up_again_under_load_fails_no_request() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _workers) = cluster().await;
    let (_, slow) = serving(&m, false, "tcp").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(slow, 32, stop.clone()));
    m.client.scale("web", 1).await.unwrap();
    settled(&m, 1).await;
    m.client.scale("web", 3).await.unwrap();
    settled(&m, 3).await;
    no_failures("scale 3 -> 1 -> 3 under load", stop, traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_under_load_fails_no_request() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, workers) = cluster().await;
    let (_, slow) = serving(&m, false, "tcp").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(slow, 32, stop.clone()));
    m.client.drain(&workers[0].node_id, None).await.unwrap();
    wait_until(Duration::from_secs(60), "the node drained", || async {
        let node = m.client.node(&workers[0].node_id).await.ok()?;
        node.drain?.drained_at
    })
    .await;
    settled(&m, 3).await;
    no_failures("drain under load", stop, traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_costs_at_most_the_requests_in_flight_on_it() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, workers) = cluster().await;
    let (_, slow) = serving(&m, false, "tcp").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let clients = 32;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = tokio::spawn(load_counting(slow, clients, stop.clone(), answered.clone(), false));
    // Once every client has been answered a few times, SIGKILL one instance.
    wait_until(Duration::from_secs(30), "the load running", || async {
        let n = answered.load(std::sync::atomic::Ordering::Relaxed);
        (n >= 3 * clients as u64).then_some(())
    })
    .await;
    let victim = m.client.service_endpoints("web").await.unwrap().endpoints[0].clone();
    let worker = workers.iter().find(|w| w.node_id == victim.node.to_string()).unwrap();
    let container = worker.containers(Some(&victim.task.to_string())).pop().unwrap();
    let killed = std::process::Command::new("docker")
        .args(["kill", "--signal", "KILL", &container])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    // Its check fails, it leaves the endpoints, and a replacement takes its place.
    wait_until(Duration::from_secs(60), "the killed instance out of the endpoints", || async {
        let e = m.client.service_endpoints("web").await.ok()?;
        e.endpoints.iter().all(|e| e.task != victim.task).then_some(())
    })
    .await;
    settled(&m, 3).await;
    stop.cancel();
    let (sent, failed) = traffic.await.unwrap();
    eprintln!(
        "SIGKILL of an instance under load: {sent} requests, {} failed (those in flight on it)",
        failed.len()
    );
    assert!(sent > 100, "the load ran throughout: {sent}");
    // Each client has one request in flight at a time, so at most `clients` were on the
    // killed instance; a connect to it after the kill is refused and retried elsewhere.
    assert!(
        failed.len() <= clients,
        "{} of {sent} failed, more than were in flight: {:#?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

/// The whole output of a task that ran to its end (its state `Completed`).
async fn output_of(m: &TestManager, spec: serde_json::Value) -> String {
    use futures_util::StreamExt;
    let spec = serde_json::from_value(spec).unwrap();
    let id = m.client.submit(None, &spec).await.unwrap().task.id;
    let state = wait_until(Duration::from_secs(60), "the task finished", || async {
        let t = m.client.task(id).await.ok()?;
        t.state.is_terminal().then_some(t.state)
    })
    .await;
    let mut stream = m.client.logs(id, false, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(state, cube_core::TaskState::Completed, "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_and_a_container_reach_a_service_through_their_nodes_ingress() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _workers) = cluster().await;
    let (spec, _) = serving(&m, false, "http").await;
    let publish = spec.ports[0].publish;
    let hostnames: BTreeSet<String> = {
        let tasks = m.client.tasks().await.unwrap();
        let running = tasks.iter().filter(|t| t.state == cube_core::TaskState::Running);
        running
            .filter_map(|t| match t.handle.as_ref()? {
                cube_core::DriverHandle::Container { id } => Some(id[..12].to_owned()),
                _ => None,
            })
            .collect()
    };
    // A process shares its node's network: `CUBE_INGRESS_HOST` is the ingress's address.
    let process = output_of(&m, json!({
        "name": "ask-process", "driver": "process", "command": "bash",
        "args": ["-c", format!("exec 3<>/dev/tcp/$CUBE_INGRESS_HOST/{publish} && \
                                printf 'GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n' >&3 && cat <&3")],
    }))
    .await;
    assert!(process.starts_with("HTTP/1.0 200 OK\r\n"), "{process}");
    // A container reaches it at `cube.internal` (its bridge's gateway, where every ingress of
    // the host listens too), also named by `CUBE_INGRESS_HOST`.
    let container = output_of(
        &m,
        json!({
            "name": "ask-container", "driver": "docker", "image": TEST_IMAGE, "command": "sh",
            "args": ["-c", format!("wget -qO- http://cube.internal:{publish}/ && \
                                    wget -qO- http://$CUBE_INGRESS_HOST:{publish}/")],
        }),
    )
    .await;
    let answers: Vec<&str> = process.lines().last().into_iter().chain(container.lines()).collect();
    assert_eq!(answers.len(), 3, "{process}\n{container}");
    for answer in answers {
        assert!(hostnames.contains(answer.trim()), "{answer:?} is one of {hostnames:?}");
    }
}

//! The ingress of real workers (separate `cube` processes) in front of real containers: a
//! published port answers on every node and spreads over the instances.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

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

/// `count` busybox httpd instances, one per node, each answering `/` with its container's
/// host name, published on `publish`.
fn web(count: u32, publish: u16, mode: &str) -> ServiceSpec {
    serde_json::from_value(json!({
        "name": "web", "count": count, "distinct_nodes": true,
        "task": {"name": "web", "driver": "docker", "image": TEST_IMAGE,
                 "command": "sh",
                 "args": ["-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"],
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

//! The worker's HTTP contract: status codes, the error shape, idempotency and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::{TestWorker, raw, spec, wait_until};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_listing_the_problems_and_starts_nothing() {
    let w = TestWorker::start(&[]).await;
    let url = format!("{}/v1/tasks", w.process.url);
    let cases: [(&str, &[u8], &str, &[&str]); 6] = [
        ("malformed JSON", b"{\"name\": ", "invalid_json", &[]),
        ("not an object", b"[]", "invalid_json", &[]),
        (
            "negative memory",
            br#"{"name": "a", "driver": "docker", "image": "x", "resources": {"memory": -1}}"#,
            "invalid_spec",
            &["resources.memory"],
        ),
        (
            "empty image",
            br#"{"name": "a", "driver": "docker", "image": ""}"#,
            "invalid_spec",
            &["image"],
        ),
        ("unknown driver", br#"{"name": "a", "driver": "lxc"}"#, "invalid_spec", &["driver"]),
        (
            "several problems at once",
            br#"{"name": "", "driver": "docker", "image": " ", "ports": [{"container": 0}]}"#,
            "invalid_spec",
            &["name", "image", "ports[0].container"],
        ),
    ];
    for (what, body, code, fields) in cases {
        let (status, json) = raw(Method::POST, &url, Some(body.to_vec())).await;
        assert_eq!(status, 400, "{what}: {json}");
        assert_eq!(json["error"]["code"], code, "{what}: {json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
        let got: Vec<&str> = json["error"]["details"]
            .as_array()
            .map(|d| d.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(got, fields, "{what}: {json}");
    }
    assert!(w.client.tasks().await.unwrap().is_empty(), "nothing was accepted");
    let data = w.dir.path().join("data/tasks");
    assert!(
        !data.exists() || std::fs::read_dir(&data).unwrap().next().is_none(),
        "nothing was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_same_spec_is_idempotent_and_a_different_spec_conflicts() {
    let w = TestWorker::start(&[]).await;
    let id: cube_core::TaskId = "01900000-0000-7000-8000-0000000000aa".parse().unwrap();
    let s = spec(json!({"name": "once", "driver": "process", "command": "sleep", "args": ["300"]}));
    let first = w.client.submit(Some(id), &s).await.unwrap();
    assert!(first.created);
    assert_eq!(first.task.id, id);
    let again = w.client.submit(Some(id), &s).await.unwrap();
    assert!(!again.created, "a repeat answers 200, not 201");
    let mut other = s.clone();
    other.args = vec!["301".into()];
    let err = w.client.submit(Some(id), &other).await.unwrap_err();
    assert_eq!(err.code(), Some(cube_api::ErrorCode::Conflict));
    wait_until(Duration::from_secs(2), "running", || async {
        (w.client.task(id).await.ok()?.state == cube_core::TaskState::Running).then_some(())
    })
    .await;
    let tasks = w.client.tasks().await.unwrap();
    assert_eq!(tasks.len(), 1);
    // Started exactly once: one "started" entry in its history.
    let starts = tasks[0].events.iter().filter(|e| e.to == cube_core::TaskState::Running).count();
    assert_eq!(starts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_routes_methods_and_huge_bodies_get_json_errors() {
    let w = TestWorker::start(&[]).await;
    let base = &w.process.url;
    let unknown = "01900000-0000-7000-8000-0000000000ff";
    let checks = [
        (Method::GET, format!("{base}/v1/tasks/{unknown}"), None, 404, "not_found"),
        (Method::DELETE, format!("{base}/v1/tasks/{unknown}"), None, 404, "not_found"),
        (Method::GET, format!("{base}/v1/tasks/not-a-uuid"), None, 400, "invalid_argument"),
        (Method::GET, format!("{base}/v1/nope"), None, 404, "not_found"),
        (Method::PUT, format!("{base}/v1/tasks"), None, 405, "method_not_allowed"),
        (
            Method::POST,
            format!("{base}/v1/tasks"),
            Some(vec![b' '; 2 * 1024 * 1024]),
            413,
            "payload_too_large",
        ),
    ];
    for (method, url, body, status, code) in checks {
        let (got, json) = raw(method.clone(), &url, body).await;
        assert_eq!(
            (got, json["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {url}: {json}"
        );
    }
    assert_eq!(w.client.health().await.unwrap().role, "worker");
}

fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_proc_and_cpu_rises_under_load() {
    let w = TestWorker::start(&[]).await;
    let stats = w.client.stats().await.unwrap();
    let total = meminfo_kib("MemTotal") * 1024;
    let available = meminfo_kib("MemAvailable") * 1024;
    assert_eq!(stats.memory.total_bytes, total);
    let off = (stats.memory.available_bytes as f64 - available as f64).abs() / total as f64;
    assert!(off < 0.01, "available within 1% of /proc/meminfo ({off})");
    assert_eq!(stats.memory.used_bytes, stats.memory.total_bytes - stats.memory.available_bytes);
    assert!(stats.disk.total_bytes > 0 && stats.disk.free_bytes <= stats.disk.total_bytes);
    assert!(stats.cpu.cores >= 1);
    assert!((0.0..=1.0).contains(&stats.cpu.busy_fraction));

    // Let the machine settle to a baseline, then load every core and watch the rate rise.
    let baseline =
        wait_until(Duration::from_secs(5), "a CPU sample over a real interval", || async {
            let s = w.client.stats().await.ok()?;
            (s.cpu.interval_ms > 0).then_some(s.cpu.busy_fraction)
        })
        .await;
    let cores = stats.cpu.cores as usize;
    let busy: Vec<_> = (0..cores)
        .map(|_| {
            std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap()
        })
        .collect();
    let loaded =
        wait_until(Duration::from_secs(10), "CPU busy fraction rising under load", || async {
            let s = w.client.stats().await.ok()?;
            // Above 80% (from a baseline below that unless tests running beside this one
            // already kept the machine as busy: the rate cannot rise above 100%).
            (s.cpu.busy_fraction > 0.8).then_some(s.cpu.busy_fraction)
        })
        .await;
    for mut b in busy {
        b.kill().unwrap();
        b.wait().unwrap();
    }
    assert!(loaded <= 1.0);
    assert!(loaded > baseline || baseline > 0.8, "{loaded} after a baseline of {baseline}");

    let s = spec(json!({"name": "r", "driver": "process", "command": "sleep", "args": ["300"],
                        "resources": {"cpu": "250m", "memory": "128MiB"}}));
    w.client.submit(None, &s).await.unwrap();
    let stats = wait_until(Duration::from_secs(2), "task counted", || async {
        let s = w.client.stats().await.ok()?;
        (s.tasks.running == 1).then_some(s)
    })
    .await;
    assert_eq!(stats.tasks.total, 1);
    assert_eq!(stats.reserved.cpu, cube_core::Millicores(250));
    assert_eq!(stats.reserved.memory, cube_core::Bytes::mib(128));
}

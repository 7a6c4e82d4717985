//! `GET /metrics` of a real manager and a real worker: valid for `promtool check metrics`
//! (Debian's `prometheus` package), guarded by the token unless served on `--metrics-listen`,
//! and with as many series at 10,000 tasks as at 10.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestManager, TestWorker, wait_until};
use cube_core::TaskSpec;
use cube_http::client::Client;

/// Whether promtool can run; under CI its absence is a failure, never a silent skip.
fn promtool_ready() -> bool {
    let ok = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "promtool missing under CI (Debian: prometheus)");
        eprintln!("skipping: promtool not found (Debian package prometheus)");
    }
    ok
}

/// `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scrape: the text, how long it took, and how many series it holds.
async fn scrape(url: &str, token: &str) -> (String, Duration, usize) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let response = http.get(format!("{url}/metrics")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let took = started.elapsed();
    let series = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    (text, took, series)
}

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn spec(value: serde_json::Value) -> TaskSpec {
    common::spec(value)
}

/// Submits `n` tasks of `spec` to `client`, 32 at a time.
async fn submit(client: &Client, spec: &TaskSpec, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let submits = chunk.iter().map(|_| client.submit(None, spec));
        for r in futures_util::future::join_all(submits).await {
            r.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_agents_pass_promtool_with_the_same_series_at_ten_and_ten_thousand_tasks() {
    if !promtool_ready() {
        return;
    }
    const TOKEN: &str = "metrics-token-0123456789abcdef";
    let token = Some(TOKEN.parse().unwrap());
    let m = TestManager::start(&["--token", TOKEN, "--store", "memory"]).await;
    let manager = m.client.clone().with_token(token.clone());
    // A worker of its own (no manager), so its tasks are only the ones sent to it here.
    let w = TestWorker::start(&["--token", TOKEN, "--store", "memory"]).await;
    let worker = w.client.clone().with_token(token);

    // Tasks the manager cannot place (no node has the label), and tasks the worker fails to
    // start at once (no such program): every state's count moves, no label value does.
    let waiting =
        spec(serde_json::json!({"name": "waits", "driver": "process", "command": "sleep",
                                "constraints": ["node.labels.zone == nowhere"]}));
    let failing = spec(serde_json::json!({"name": "fails", "driver": "process",
                                          "command": "/nonexistent/cube-test"}));
    submit(&manager, &waiting, 10).await;
    submit(&worker, &failing, 10).await;
    let failed = |n: usize| {
        let worker = worker.clone();
        async move {
            let tasks = worker.tasks().await.ok()?;
            (tasks.iter().filter(|t| t.state == cube_core::TaskState::Failed).count() == n)
                .then_some(())
        }
    };
    wait_until(Duration::from_secs(30), "10 failed on the worker", || failed(10)).await;
    // A first scrape of each, so the scrapes' own route is counted from the start.
    scrape(&m.url, TOKEN).await;
    scrape(&w.process.url, TOKEN).await;
    let (manager_10, _, manager_series_10) = scrape(&m.url, TOKEN).await;
    let (worker_10, _, worker_series_10) = scrape(&w.process.url, TOKEN).await;
    promtool_check("manager with 10 tasks", &manager_10);
    promtool_check("worker with 10 tasks", &worker_10);
    assert_eq!(sample(&manager_10, "cube_tasks{state=\"pending\"}"), 10.0);
    assert_eq!(sample(&worker_10, "cube_worker_tasks{state=\"failed\"}"), 10.0);
    assert_eq!(
        sample(&worker_10, "cube_worker_starts_total{driver=\"process\",result=\"error\"}"),
        10.0
    );

    submit(&manager, &waiting, 9_990).await;
    submit(&worker, &failing, 9_990).await;
    wait_until(Duration::from_secs(120), "10,000 failed on the worker", || failed(10_000)).await;
    let (manager_10k, took_m, manager_series_10k) = scrape(&m.url, TOKEN).await;
    let (worker_10k, took_w, worker_series_10k) = scrape(&w.process.url, TOKEN).await;
    promtool_check("manager with 10,000 tasks", &manager_10k);
    promtool_check("worker with 10,000 tasks", &worker_10k);
    assert_eq!(sample(&manager_10k, "cube_tasks{state=\"pending\"}"), 10_000.0);
    assert_eq!(sample(&manager_10k, "cube_tasks_pending"), 10_000.0);
    assert_eq!(sample(&worker_10k, "cube_worker_tasks{state=\"failed\"}"), 10_000.0);
    assert_eq!(manager_series_10k, manager_series_10, "the manager's series do not grow");
    assert_eq!(worker_series_10k, worker_series_10, "the worker's series do not grow");
    eprintln!(
        "10,000 tasks: manager scrape {took_m:?}, {} bytes, {manager_series_10k} series; \
         worker scrape {took_w:?}, {} bytes, {worker_series_10k} series",
        manager_10k.len(),
        worker_10k.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_unless_served_on_their_own_address() {
    const TOKEN: &str = "metrics-token-0123456789abcdef";
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let m = TestManager::start(&["--token", TOKEN, "--metrics-listen", &listen]).await;
    let http = reqwest::Client::new();
    let refused = http.get(format!("{}/metrics", m.url)).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let (text, _, _) = scrape(&m.url, TOKEN).await;
    assert!(
        text.contains(
            "cube_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"} 1"
        ),
        "{text}"
    );
    // Prometheus asks for OpenMetrics and gets it.
    let open = http
        .get(format!("http://{listen}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));
    // Nothing else is served there.
    let other = http.get(format!("http://{listen}/v1/tasks")).send().await.unwrap();
    assert_eq!(other.status(), 404);
}

/// A sample's value, 0 when the series does not exist yet.
fn count(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_deploy_wait_follow_the_stream_instead_of_polling() {
    const TOKEN: &str = "metrics-token-0123456789abcdef";
    let m = TestManager::start(&["--token", TOKEN]).await;
    let _w = m.worker("w1", &["--token", TOKEN]).await;
    wait_until(Duration::from_secs(10), "the node", || async {
        let c = m.client.clone().with_token(Some(TOKEN.parse().unwrap()));
        (c.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    let get = |route: &str| {
        format!("cube_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"200\"}}")
    };
    let cube = |args: Vec<String>| {
        let url = m.url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(common::cube_bin())
                .args(["--addr", &url])
                .args(&args)
                .env("CUBE_TOKEN", TOKEN)
                .output()
                .unwrap()
        })
    };

    let (before, _, _) = scrape(&m.url, TOKEN).await;
    let started = Instant::now();
    let args = ["run", "--driver", "process", "--wait", "--", "sleep", "300"];
    let out = cube(args.map(str::to_owned).to_vec()).await.unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let (after, _, _) = scrape(&m.url, TOKEN).await;
    let delta = |series: &str| count(&after, series) - count(&before, series);
    assert_eq!(delta(&get("/v1/events")), 1.0, "one stream for the whole wait");
    assert_eq!(delta(&get("/v1/tasks/{id}")), 1.0, "the task read once, at the end");
    eprintln!("cube run --wait took {took:?} with one stream and one read");
    assert!(took >= Duration::from_secs(1), "it waited for the task to stay up");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    let service = serde_json::json!({
        "name": "web", "count": 2,
        "task": {"name": "web", "driver": "process", "command": "sleep", "args": ["300"]},
        "update": {"min_healthy_time": "1s"}
    });
    std::fs::write(&file, serde_json::to_vec(&service).unwrap()).unwrap();
    let (before, _, _) = scrape(&m.url, TOKEN).await;
    let args = vec!["deploy".to_owned(), file.to_str().unwrap().to_owned(), "--wait".to_owned()];
    let out = cube(args).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("successful"), "{out:?}");
    let (after, _, _) = scrape(&m.url, TOKEN).await;
    let delta = |series: &str| count(&after, series) - count(&before, series);
    assert_eq!(delta(&get("/v1/events")), 1.0);
    assert_eq!(delta(&get("/v1/deployments/{id}")), 0.0, "the deployment is never polled");
    assert!(delta(&get("/v1/services/{name}")) <= 1.0, "read once, before the change");
}

//! `cube-bench ui`: the web UI of a manager holding many services and tasks.
//!
//! - **Render:** every page `GET` N times in turn; the server's own render time (its
//!   `Server-Timing: render` header: the state read and the HTML made, without the wait for a
//!   node's log on a task page), the whole answer's time on loopback, and its bytes.
//! - **Change → page:** a real headless Chromium keeps a service's page open; the service is
//!   scaled through the API, one change at a time, and a `MutationObserver` in the page stamps
//!   when the new count appears. The figure is that stamp minus the moment the API
//!   acknowledged the change (so it is committed), both read from this host's clock.
//! - **Idle tab:** the requests the open page makes over a quiet stretch (resource timing
//!   entries; the live stream is one open request, made before).
//!
//! The tasks run on simulated nodes (`sim`), which report them running without running
//! anything: the manager holds the state of a large cluster on one machine.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use cube_core::service::ServiceSpec;
use cube_testkit::browser::{Browser, BrowserOptions};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::lab::Lab;
use crate::load::wait_for;
use crate::out::{Summary, say, warn};
use crate::sim::SimCluster;

/// Options of `cube-bench ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Services in the manager.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Instances of each.
    #[arg(long, default_value_t = 10)]
    pub instances: u32,
    /// Simulated nodes they run on.
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Requests of each page.
    #[arg(long, default_value_t = 50)]
    pub renders: usize,
    /// Changes watched in the browser.
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
}

fn service(i: usize, count: u32) -> anyhow::Result<ServiceSpec> {
    let name = format!("svc-{i:04}");
    Ok(serde_json::from_value(json!({
        "name": name, "count": count,
        "task": {"name": name, "driver": "process", "command": "sleep", "args": ["3600"],
                 "resources": {"cpu": "10m", "memory": "16MiB"}},
        "update": {"min_healthy_time": "0s"}
    }))?)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &UiArgs) -> anyhow::Result<serde_json::Value> {
    let manager = lab.manager("manager", &[]).await?;
    let client = manager.client.clone();
    let sim = SimCluster::start(&manager.url, args.nodes).await?;
    let tasks = args.services as u64 * u64::from(args.instances);
    say(&format!(
        "ui: {} services of {} instances ({tasks} tasks) on {} simulated nodes",
        args.services, args.instances, args.nodes
    ));
    for chunk in (0..args.services).collect::<Vec<_>>().chunks(32) {
        let puts = chunk.iter().map(|i| {
            let client = client.clone();
            async move {
                client.put_service(&service(*i, args.instances)?, None).await.context("put")?;
                anyhow::Ok(())
            }
        });
        for r in futures_util::future::join_all(puts).await {
            r?;
        }
    }
    wait_for(Duration::from_secs(600), Duration::from_millis(200), "every task running", || {
        let acked = sim.running_acked();
        async move { (acked >= tasks).then_some(()) }
    })
    .await?;

    // Server render time and size of each page.
    let some_task =
        client.tasks().await?.into_iter().find(|t| t.instance.is_some()).context("no instance")?;
    let node = client.nodes().await?.into_iter().next().context("no node")?;
    let pages = [
        ("Overview", "/ui".to_owned()),
        ("Services (page 1 of 10)", "/ui/services".to_owned()),
        ("A service (10 instances, 1 version)", "/ui/services/svc-0500".to_owned()),
        ("Tasks (page 1 of 100)", "/ui/tasks".to_owned()),
        ("Tasks: running, page 50", "/ui/tasks?state=running&page=50".to_owned()),
        ("A task (placement, timeline, log)", format!("/ui/tasks/{}", some_task.id)),
        ("Nodes", "/ui/nodes".to_owned()),
        ("A node (its 500 tasks)", format!("/ui/nodes/{}", node.id)),
    ];
    let http = reqwest::Client::new();
    let mut rendered = Vec::new();
    for (name, path) in &pages {
        let mut server = Vec::with_capacity(args.renders);
        let mut total = Vec::with_capacity(args.renders);
        let mut bytes = 0;
        for _ in 0..args.renders {
            let began = Instant::now();
            let answer = http.get(format!("{}{path}", manager.url)).send().await?;
            anyhow::ensure!(answer.status().is_success(), "{path}: {}", answer.status());
            let timing = answer
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("render;dur="))
                .and_then(|v| v.parse::<f64>().ok())
                .context("no Server-Timing")?;
            let body = answer.bytes().await?;
            total.push(began.elapsed());
            server.push(Duration::from_secs_f64(timing / 1000.0));
            bytes = body.len();
        }
        let server = Summary::of(&server);
        let total = Summary::of(&total);
        say(&format!("  {name}: {bytes} bytes; render {}", server.line()));
        // Ids in paths shown as `{id}`: the table names the page, not this run's task.
        let template =
            path.replace(&some_task.id.to_string(), "{id}").replace(&node.id.to_string(), "{id}");
        rendered.push(json!({"page": name, "path": template, "bytes": bytes,
            "render": server, "answer": total}));
    }

    // What an open page of an unchanged service is sent while the cluster around it changes
    // (every heartbeat is a change): its live part is rendered again, and sent only if it
    // differs.
    let quiet = Duration::from_secs(10);
    let stream = http
        .get(format!("{}/ui/live?page=%2Fui%2Fservices%2Fsvc-0001", manager.url))
        .send()
        .await?;
    let mut stream = stream.bytes_stream();
    let mut received = String::new();
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        received.push_str(&String::from_utf8_lossy(&chunk?));
    }
    drop(stream);
    let pushes = received.matches("event: live\n").count().saturating_sub(1);
    say(&format!(
        "  an unchanged service's open page: {pushes} updates sent in {} s",
        quiet.as_secs()
    ));

    // Change -> page, in a real browser.
    let browser = match Browser::start(BrowserOptions::default()).await {
        Ok(Some(b)) => Some(b),
        Ok(None) => {
            warn(
                "ui: no Chromium (apt-get install chromium chromium-driver): change -> page skipped",
            );
            None
        }
        Err(e) => return Err(e).context("starting Chromium"),
    };
    let mut live = json!(null);
    if let Some(browser) = browser {
        let c = browser.client();
        c.goto(&format!("{}/ui/services/svc-0000", manager.url)).await?;
        browser.wait_for_text("#live-dot.on", "", Duration::from_secs(10)).await?;
        let observe = "window.__seen = {}; \
            const note = () => { const el = document.querySelector('[data-desired]'); \
              if (el && !(el.dataset.desired in window.__seen)) window.__seen[el.dataset.desired] = Date.now(); }; \
            new MutationObserver(note).observe(document.getElementById('live'), {childList: true, subtree: true}); \
            note(); return true;";
        c.execute(observe, vec![]).await?;
        let requests = "return performance.getEntriesByType('resource').length;";
        let mut lags = Vec::with_capacity(args.changes);
        for i in 0..args.changes {
            let count = args.instances + 1 + u32::try_from(i)?;
            client.scale("svc-0000", count).await?;
            let acked = epoch_ms()?;
            let script = format!("return window.__seen['{count}'] || null;");
            let seen = wait_for(
                Duration::from_secs(10),
                Duration::from_millis(5),
                "the change on the page",
                || {
                    let script = script.clone();
                    async move { c.execute(&script, vec![]).await.ok()?.as_f64() }
                },
            )
            .await?;
            lags.push(Duration::from_secs_f64(((seen - acked).max(0.0)) / 1000.0));
        }
        let lag = Summary::of(&lags);
        say(&format!("  change -> page ({} changes): {}", args.changes, lag.line()));
        // An idle tab: no change for a while, then count what it asked for.
        let before = c.execute(requests, vec![]).await?.as_u64().unwrap_or(0);
        tokio::time::sleep(quiet).await;
        let after = c.execute(requests, vec![]).await?.as_u64().unwrap_or(0);
        say(&format!("  idle tab: {} requests in {} s", after - before, quiet.as_secs()));
        live = json!({"changes": args.changes, "lag": lag, "idle_requests": after - before,
            "idle_seconds": quiet.as_secs()});
        browser.close().await?;
    }
    sim.stop().await;
    Ok(json!({
        "quiet_pushes": pushes,
        "quiet_seconds": quiet.as_secs(),
        "services": args.services,
        "instances": args.instances,
        "tasks": tasks,
        "nodes": args.nodes,
        "renders": args.renders,
        "pages": rendered,
        "live": live,
    }))
}

fn epoch_ms() -> anyhow::Result<f64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() * 1000.0)
}

//! The submit load generator: `clients` concurrent loops, each sending `POST /v1/tasks` and
//! waiting for the answer before the next (closed loop, like `wrk -c`), for a time or a count.
//!
//! The body is serialised once and sent as bytes, and only the status is checked, so the
//! generator spends as little of the shared CPUs as it can; the manager still parses and
//! validates every body and answers with the full task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::out::say;
use crate::sim::SimCluster;

/// A task spec for load: a container that sleeps, with a small reservation.
pub fn load_spec(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "driver": "docker", "image": "cube-test/busybox:latest",
        "command": "sleep", "args": ["3600"],
        "resources": {"cpu": "10m", "memory": "8MiB"}
    })
}

/// What a load run observed.
#[derive(Debug, Default)]
pub struct Load {
    /// Latency of each successful submit.
    pub latencies: Vec<Duration>,
    /// Submits answered 201.
    pub ok: u64,
    /// Submits that failed (any other answer or no answer).
    pub errors: u64,
    /// The first failure, in words.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// When a load run stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// After this long (requests in flight finish and count).
    Time(Duration),
    /// After this many requests were sent.
    Count(u64),
}

/// Runs `clients` closed loops of `POST {manager}/v1/tasks` with `body` until `until`.
pub async fn submit_load(manager: &str, body: Bytes, clients: usize, until: Until) -> Load {
    submit_load_as(manager, None, body, clients, until).await
}

/// [`submit_load`], each request carrying `bearer` as its token.
pub async fn submit_load_as(
    manager: &str,
    bearer: Option<&str>,
    body: Bytes,
    clients: usize,
    until: Until,
) -> Load {
    let bearer = bearer.map(|b| format!("Bearer {b}"));
    let http = match cube_http::tls::http_client_builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Load { errors: 1, first_error: Some(e.to_string()), ..Load::default() };
        }
    };
    let url = format!("{manager}/v1/tasks");
    let issued = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut joins = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (http, url, body, issued) = (http.clone(), url.clone(), body.clone(), issued.clone());
        let bearer = bearer.clone();
        joins.push(tokio::spawn(async move {
            let mut load = Load::default();
            loop {
                let more = match until {
                    Until::Time(d) => began.elapsed() < d,
                    Until::Count(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                };
                if !more {
                    break;
                }
                let sent = Instant::now();
                let mut request =
                    http.post(&url).header("content-type", "application/json").body(body.clone());
                if let Some(b) = &bearer {
                    request = request.header("authorization", b);
                }
                let result = request.send().await;
                let outcome = match result {
                    Ok(response) => {
                        let status = response.status();
                        // Read the answer: the connection is reused only once it is drained.
                        match response.bytes().await {
                            Ok(_) if status.as_u16() == 201 => Ok(()),
                            Ok(b) => Err(format!(
                                "status {status}: {}",
                                String::from_utf8_lossy(&b).chars().take(200).collect::<String>()
                            )),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        load.ok += 1;
                        load.latencies.push(sent.elapsed());
                    }
                    Err(e) => {
                        load.errors += 1;
                        load.first_error.get_or_insert(e);
                    }
                }
            }
            load
        }));
    }
    let mut total = Load::default();
    for join in joins {
        match join.await {
            Ok(l) => {
                total.ok += l.ok;
                total.errors += l.errors;
                total.latencies.extend(l.latencies);
                if total.first_error.is_none() {
                    total.first_error = l.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(e.to_string());
            }
        }
    }
    total.elapsed = began.elapsed();
    total
}

/// Submits `count` load tasks with `clients` loops and waits until the simulated nodes have
/// had `target` running reports acknowledged by the manager. Returns (submit time, time from
/// the first submit until `target` tasks run).
pub async fn fill(
    manager: &str,
    sim: &SimCluster,
    count: u64,
    target: u64,
    clients: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let body = Bytes::from(serde_json::to_vec(&load_spec("load"))?);
    let began = Instant::now();
    let load = submit_load(manager, body, clients, Until::Count(count)).await;
    let submitted = began.elapsed();
    if load.errors > 0 {
        bail!(
            "{} of {count} submits failed; first: {}",
            load.errors,
            load.first_error.unwrap_or_default()
        );
    }
    // Generous: the pipeline runs at thousands of tasks per second.
    let deadline = began + Duration::from_secs(60) + Duration::from_millis(count * 2);
    let mut last_report = Instant::now();
    loop {
        let running = sim.running_acked();
        if running >= target {
            return Ok((submitted, began.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("only {running} of {target} tasks reported running before the deadline");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            say(&format!("  ... {running} of {target} tasks running"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` saying
/// `what`.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    cube_testkit::wait::poll_until(timeout, every, what, check)
        .await
        .context("benchmark condition never held")
}

//! Health checks, run by the worker next to the task (not by the manager across the network,
//! as the book did: a partition between manager and worker must not look like a sick task).
//!
//! A [`Monitor`] probes a running workload every interval and tells its runner when its health
//! changes: healthy when a probe passes (the first time, or again), unhealthy once
//! `failure_threshold` consecutive probes failed after the grace period. It records nothing
//! itself; the runner does.

use std::sync::Arc;
use std::time::Duration;

use cube_core::{Chain, DriverHandle, HealthCheck, HostPort, Probe, Protocol, TaskSpec};
use cube_rt::Ticker;
use tokio_util::sync::CancellationToken;

use crate::driver::Drivers;

/// A change of a workload's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HealthChange {
    /// A probe passed, and the last reported change was not "healthy".
    Healthy,
    /// Enough consecutive probes failed: why, with the count.
    Unhealthy(String),
}

/// Probes one running workload.
pub(crate) struct Monitor {
    /// The spec's check (copied out: it is read on every probe).
    check: HealthCheck,
    spec: TaskSpec,
    handle: DriverHandle,
    host_ports: Vec<HostPort>,
    drivers: Arc<Drivers>,
    http: reqwest::Client,
    /// Failures before this are not counted.
    grace_until: tokio::time::Instant,
    ticker: Ticker,
    failures: u32,
    healthy: Option<bool>,
    checks: crate::metrics::Checks,
}

impl Monitor {
    /// A monitor of the workload `handle` (publishing `host_ports`) of a task with `spec`;
    /// `None` when the spec has no health check.
    pub(crate) fn new(
        spec: TaskSpec,
        handle: DriverHandle,
        host_ports: Vec<HostPort>,
        drivers: Arc<Drivers>,
        http: reqwest::Client,
        checks: crate::metrics::Checks,
    ) -> Option<Self> {
        let check = *spec.health.clone()?;
        let grace_until = tokio::time::Instant::now() + check.grace_period;
        // The runner stops watching on shutdown; the ticker itself needs no signal.
        let ticker = Ticker::new(check.interval, CancellationToken::new());
        Some(Self {
            check,
            spec,
            handle,
            host_ports,
            drivers,
            http,
            grace_until,
            ticker,
            failures: 0,
            healthy: None,
            checks,
        })
    }

    /// Probes until the workload's health changes. Cancel-safe: dropping the future loses at
    /// most the probe in flight, never a counted failure.
    pub(crate) async fn next_change(&mut self) -> HealthChange {
        tokio::time::sleep_until(self.grace_until).await;
        loop {
            self.ticker.tick().await;
            let result = match tokio::time::timeout(self.check.timeout, self.probe()).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "timed out after {}",
                    cube_core::units::format_duration(self.check.timeout)
                )),
            };
            self.checks.record(result.is_ok());
            match result {
                Ok(()) => {
                    self.failures = 0;
                    if self.healthy != Some(true) {
                        self.healthy = Some(true);
                        return HealthChange::Healthy;
                    }
                }
                Err(reason) => {
                    self.failures += 1;
                    tracing::debug!(%reason, failures = self.failures, "health probe failed");
                    if self.failures >= self.check.failure_threshold {
                        self.healthy = Some(false);
                        return HealthChange::Unhealthy(format!(
                            "unhealthy: {reason} ({} consecutive failures)",
                            self.failures
                        ));
                    }
                }
            }
        }
    }

    /// The host port that reaches `port` (a container port for docker, a host port otherwise).
    fn host_port(&self, port: u16) -> Result<u16, String> {
        match self.handle {
            DriverHandle::Process { .. } => Ok(port),
            DriverHandle::Container { .. } => self
                .host_ports
                .iter()
                .find(|p| p.container_port == port && p.protocol == Protocol::Tcp)
                .map(|p| p.host_port)
                .ok_or_else(|| format!("container port {port}/tcp is not published")),
        }
    }

    /// One probe.
    async fn probe(&self) -> Result<(), String> {
        match self.check.probe().ok_or_else(|| "health check is incomplete".to_owned())? {
            Probe::Http { port, path } => {
                let port = self.host_port(port)?;
                let url = format!("http://127.0.0.1:{port}{path}");
                let response = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", Chain(&e).root()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("GET {url} answered {status}"))
                }
            }
            Probe::Tcp { port } => {
                let port = self.host_port(port)?;
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect to port {port}: {e}"))
            }
            Probe::Exec { command } => {
                let code = self
                    .drivers
                    .exec(&self.handle, &self.spec, command)
                    .await
                    .map_err(|e| Chain(&e).to_string())?;
                if code == 0 {
                    Ok(())
                } else {
                    Err(format!("{:?} exited with {code}", command.join(" ")))
                }
            }
        }
    }
}

/// A client for HTTP probes: no connection reuse (each probe should see a fresh connection, as
/// a new user would) and no proxies.
pub(crate) fn http_client() -> reqwest::Client {
    cube_http::tls::http_client_builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

//! Health checks, run by the worker next to the task (not by the manager across the network,
//! as the book did: a partition between manager and worker must not look like a sick task).
//!
//! [`watch`] probes a running task every interval and returns once the task is unhealthy
//! (`failure_threshold` consecutive failures after the grace period). Changes between healthy
//! and unhealthy are recorded in the task's history.

use std::time::Duration;

use cube_core::{DriverHandle, HealthCheck, HostPort, Note, Probe, Protocol, TaskId};
use jiff::Timestamp;

use crate::agent::Agent;
use crate::driver::Drivers;

/// Where a probe connects: the task's published host ports (docker) or the host itself.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The workload.
    pub handle: DriverHandle,
    /// Published ports (docker); empty for processes, whose ports are host ports already.
    pub host_ports: Vec<HostPort>,
    /// Environment for exec probes of process tasks.
    pub env: Vec<(String, String)>,
}

impl Target {
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
}

/// Probes until the task is unhealthy; returns the reason. Runs forever for a healthy task, so
/// callers race it against the task's other events.
pub(crate) async fn watch(
    agent: &Agent,
    id: TaskId,
    check: &HealthCheck,
    target: &Target,
    http: &reqwest::Client,
) -> String {
    if !check.grace_period.is_zero() {
        tokio::time::sleep(check.grace_period).await;
    }
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut healthy: Option<bool> = None;
    loop {
        ticker.tick().await;
        let result =
            match tokio::time::timeout(check.timeout, probe(check, target, http, &agent.drivers))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "timed out after {}",
                    cube_core::units::format_duration(check.timeout)
                )),
            };
        match result {
            Ok(()) => {
                failures = 0;
                if healthy != Some(true) {
                    healthy = Some(true);
                    agent
                        .update(id, |t| {
                            t.healthy = Some(true);
                            t.note(Timestamp::now(), Note::HealthPassing, "health check passing");
                        })
                        .await;
                }
            }
            Err(reason) => {
                failures += 1;
                tracing::debug!(task = %id, %reason, failures, "health probe failed");
                if failures >= check.failure_threshold {
                    let reason = format!("unhealthy: {reason} ({failures} consecutive failures)");
                    agent
                        .update(id, |t| {
                            t.healthy = Some(false);
                            t.note(Timestamp::now(), Note::Unhealthy, reason.clone());
                        })
                        .await;
                    return reason;
                }
            }
        }
    }
}

/// One probe.
async fn probe(
    check: &HealthCheck,
    target: &Target,
    http: &reqwest::Client,
    drivers: &Drivers,
) -> Result<(), String> {
    match check.probe().ok_or_else(|| "health check is incomplete".to_owned())? {
        Probe::Http { port, path } => {
            let port = target.host_port(port)?;
            let url = format!("http://127.0.0.1:{port}{path}");
            let response = http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", root_cause(&e)))?;
            let status = response.status();
            if status.is_success() { Ok(()) } else { Err(format!("GET {url} answered {status}")) }
        }
        Probe::Tcp { port } => {
            let port = target.host_port(port)?;
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("connect to port {port}: {e}"))
        }
        Probe::Exec { command } => {
            let code = match &target.handle {
                DriverHandle::Container { id } => {
                    let docker = drivers.docker.as_ref().map_err(|e| e.to_string())?;
                    docker.exec(id, command).await.map_err(|e| cube_core::Chain(&e).to_string())?
                }
                DriverHandle::Process { .. } => {
                    let (program, args) = command.split_first().ok_or("empty command")?;
                    let status = tokio::process::Command::new(program)
                        .args(args)
                        .envs(target.env.iter().cloned())
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status()
                        .await
                        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
                    status.code().map(i64::from).unwrap_or(-1)
                }
            };
            if code == 0 {
                Ok(())
            } else {
                Err(format!("{:?} exited with {code}", command.join(" ")))
            }
        }
    }
}

/// The innermost error message (reqwest wraps "connection refused" in two layers).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
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

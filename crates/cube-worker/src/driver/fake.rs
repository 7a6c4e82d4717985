//! The fake driver: workloads that exist only in memory and do what their spec scripts, so the
//! worker's logic (restart backoff, stop-vs-exit races, unhealthy kills, re-adoption) can be
//! tested without containers or processes, under tokio's paused clock. Modelled on Nomad's
//! `drivers/mock`.
//!
//! It is compiled only for this crate's tests and with the `fake-driver` feature, and only
//! [`crate::Platform::fake`] uses it: no command line, job file or API request can select it.
//! It takes every task, whatever its driver kind, and hands out handles of that kind
//! (`process` pids and `docker` container ids that exist nowhere).
//!
//! A workload's script is its spec's environment (every key optional):
//!
//! | Variable | Effect |
//! |---|---|
//! | `FAKE_RUN_FOR` | runs this long (e.g. `5s`), then exits; forever when unset |
//! | `FAKE_EXIT_CODE` | the code it exits with then (default 0) |
//! | `FAKE_START_ERROR` | every start fails with this message |
//! | `FAKE_START_FAILURES` | the first N starts fail, later ones succeed |
//! | `FAKE_START_DELAY` | a start takes this long |
//! | `FAKE_STOP` | `hang`: ignores the polite stop and dies only when killed after its grace |
//! | `FAKE_UNHEALTHY_AFTER` | exec health probes pass until it has run this long, then fail |
//! | `FAKE_OUTPUT` | written to the task's log when it starts |
//!
//! Workloads outlive the worker that started them, as containers do: a test can stop a worker
//! and start another one on the same [`FakeDriver`], which finds them again.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cube_core::units::parse_duration;
use cube_core::{DriverHandle, DriverKind, HostPort, NodeId, TaskId, TaskSpec};
use tokio::sync::{oneshot, watch};

use super::output::open_log;
use super::{Driver, DriverError, ExitInfo, ExitWatch, Owned, StartRequest, Started, wait_exit};

/// SIGTERM and SIGKILL, as a stopped or killed workload reports them.
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Scripted in-memory workloads (see the module documentation). Clones share the workloads.
#[derive(Clone, Debug, Default)]
pub struct FakeDriver {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u32,
    workloads: HashMap<DriverHandle, Workload>,
    /// Starts attempted per task, successful or not.
    starts: HashMap<TaskId, u32>,
}

#[derive(Debug)]
struct Workload {
    task: TaskId,
    node: NodeId,
    started: tokio::time::Instant,
    script: Script,
    /// The host ports it "bound": its spec's, each given a free port when the spec names none.
    host_ports: Vec<HostPort>,
    /// `Some` once it has exited.
    exit: watch::Sender<Option<ExitInfo>>,
}

#[derive(Clone, Debug, Default)]
struct Script {
    run_for: Option<Duration>,
    exit_code: i64,
    start_error: Option<String>,
    start_failures: u32,
    start_delay: Option<Duration>,
    hang_on_stop: bool,
    unhealthy_after: Option<Duration>,
    output: Option<String>,
}

impl Script {
    fn of(spec: &TaskSpec) -> Result<Self, String> {
        let env = &spec.env;
        let duration = |key: &str| -> Result<Option<Duration>, String> {
            env.get(key).map(|v| parse_duration(v).map_err(|e| format!("{key}: {e}"))).transpose()
        };
        let number = |key: &str| -> Result<Option<i64>, String> {
            env.get(key)
                .map(|v| v.parse::<i64>().map_err(|e| format!("{key}: {v:?}: {e}")))
                .transpose()
        };
        Ok(Self {
            run_for: duration("FAKE_RUN_FOR")?,
            exit_code: number("FAKE_EXIT_CODE")?.unwrap_or(0),
            start_error: env.get("FAKE_START_ERROR").cloned(),
            start_failures: number("FAKE_START_FAILURES")?
                .map_or(0, |n| u32::try_from(n).unwrap_or(0)),
            start_delay: duration("FAKE_START_DELAY")?,
            hang_on_stop: env.get("FAKE_STOP").is_some_and(|v| v == "hang"),
            unhealthy_after: duration("FAKE_UNHEALTHY_AFTER")?,
            output: env.get("FAKE_OUTPUT").cloned(),
        })
    }
}

/// The `i`th host port of the `n`th workload: from 30000, 8 per workload, wrapping.
fn fake_port(n: u32, i: usize) -> u16 {
    let slot = (u64::from(n) * 8 + i as u64) % 30000;
    30000 + u16::try_from(slot).unwrap_or(0)
}

fn start_failed(spec: &TaskSpec, message: String) -> DriverError {
    let program = spec.command.clone().or_else(|| spec.image.clone()).unwrap_or_default();
    DriverError::Spawn { program, source: std::io::Error::other(message) }
}

impl FakeDriver {
    /// A driver with no workloads.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Tests only; a panic elsewhere must not hide this driver's state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tasks whose workloads run now, one entry per workload (a task listed twice runs twice).
    pub fn running(&self) -> Vec<TaskId> {
        let inner = self.lock();
        let mut tasks: Vec<TaskId> = inner
            .workloads
            .values()
            .filter(|w| w.exit.borrow().is_none())
            .map(|w| w.task)
            .collect();
        tasks.sort();
        tasks
    }

    /// How many times task `id` was started (successfully or not).
    pub fn starts(&self, id: TaskId) -> u32 {
        self.lock().starts.get(&id).copied().unwrap_or(0)
    }

    /// Makes task `id`'s running workloads exit with `code`, as if they crashed. Returns how
    /// many there were.
    pub fn crash(&self, id: TaskId, code: i64) -> usize {
        let inner = self.lock();
        let mut crashed = 0;
        for w in inner.workloads.values().filter(|w| w.task == id) {
            if finish(&w.exit, ExitInfo { code: Some(code), ..ExitInfo::default() }) {
                crashed += 1;
            }
        }
        crashed
    }

    /// An exit watch of a workload's exit.
    fn watch(exit: &watch::Sender<Option<ExitInfo>>) -> ExitWatch {
        let mut rx = exit.subscribe();
        let (tx, watch) = oneshot::channel();
        tokio::spawn(async move {
            // The sender lives as long as the workload's entry; if it went, so did the workload.
            let info = match rx.wait_for(Option::is_some).await {
                Ok(info) => (*info).clone().unwrap_or_default(),
                Err(_) => {
                    ExitInfo { error: Some("workload removed".into()), ..ExitInfo::default() }
                }
            };
            let _ = tx.send(info);
        });
        watch
    }

    fn workload<R>(&self, handle: &DriverHandle, f: impl FnOnce(&Workload) -> R) -> Option<R> {
        self.lock().workloads.get(handle).map(f)
    }
}

/// Records an exit unless there was one already; whether this call made it exit.
fn finish(exit: &watch::Sender<Option<ExitInfo>>, info: ExitInfo) -> bool {
    exit.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(info);
        true
    })
}

impl Driver for FakeDriver {
    async fn start(&self, req: &StartRequest) -> Result<Started, DriverError> {
        let script = Script::of(&req.spec).map_err(|e| start_failed(&req.spec, e))?;
        if let Some(delay) = script.start_delay {
            tokio::time::sleep(delay).await;
        }
        let attempt = {
            let mut inner = self.lock();
            let starts = inner.starts.entry(req.task_id).or_default();
            *starts += 1;
            *starts
        };
        if let Some(message) = &script.start_error {
            return Err(start_failed(&req.spec, message.clone()));
        }
        if attempt <= script.start_failures {
            return Err(start_failed(&req.spec, format!("scripted start failure {attempt}")));
        }
        if let Some(text) = &script.output {
            let mut log = open_log(&req.log_path).await?;
            log.write_all(text.as_bytes())
                .map_err(|source| DriverError::File { path: req.log_path.clone(), source })?;
        }
        let (exit, _) = watch::channel(None);
        let handle = {
            let mut inner = self.lock();
            inner.next += 1;
            let n = inner.next;
            let handle = match req.spec.driver {
                DriverKind::Docker => DriverHandle::Container { id: format!("fake-{n}") },
                DriverKind::Process => DriverHandle::Process { pid: n, start_ticks: 0 },
            };
            if let Some(run_for) = script.run_for {
                let exit = exit.clone();
                let code = script.exit_code;
                tokio::spawn(async move {
                    tokio::time::sleep(run_for).await;
                    finish(&exit, ExitInfo { code: Some(code), ..ExitInfo::default() });
                });
            }
            let watch = Self::watch(&exit);
            let host_ports: Vec<HostPort> = req
                .spec
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| HostPort {
                    container_port: p.container,
                    // Distinct per workload, as an engine's would be.
                    host_port: if p.host != 0 { p.host } else { fake_port(n, i) },
                    protocol: p.protocol,
                    host_ip: "0.0.0.0".into(),
                })
                .collect();
            inner.workloads.insert(
                handle.clone(),
                Workload {
                    task: req.task_id,
                    node: req.node_id,
                    started: tokio::time::Instant::now(),
                    script,
                    host_ports: host_ports.clone(),
                    exit,
                },
            );
            (handle, watch, host_ports)
        };
        Ok(Started { handle: handle.0, host_ports: handle.2, exit: handle.1 })
    }

    async fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> Result<ExitInfo, DriverError> {
        let Some((sender, hang)) =
            self.workload(handle, |w| (w.exit.clone(), w.script.hang_on_stop))
        else {
            return Ok(wait_exit(exit).await);
        };
        if hang {
            // Ignores the polite signal; killed once the grace period is over.
            if tokio::time::timeout(grace, wait_exit(exit)).await.is_ok() {
                return Ok(sender.borrow().clone().unwrap_or_default());
            }
            finish(&sender, ExitInfo { signal: Some(SIGKILL), ..ExitInfo::default() });
        } else {
            finish(&sender, ExitInfo { signal: Some(SIGTERM), ..ExitInfo::default() });
        }
        Ok(wait_exit(exit).await)
    }

    async fn cleanup(&self, handle: &DriverHandle) -> Result<(), DriverError> {
        let mut inner = self.lock();
        if let Some(w) = inner.workloads.get(handle) {
            // Removing a workload that still runs kills it first, as a forced `docker rm`.
            finish(&w.exit, ExitInfo { signal: Some(SIGKILL), ..ExitInfo::default() });
            inner.workloads.remove(handle);
        }
        Ok(())
    }

    async fn recover(&self, handle: &DriverHandle) -> Result<Option<Started>, DriverError> {
        let found = self.workload(handle, |w| {
            w.exit.borrow().is_none().then(|| Started {
                handle: handle.clone(),
                host_ports: w.host_ports.clone(),
                exit: Self::watch(&w.exit),
            })
        });
        Ok(found.flatten())
    }

    async fn exec(
        &self,
        handle: &DriverHandle,
        _spec: &TaskSpec,
        _command: &[String],
    ) -> Result<i64, DriverError> {
        let healthy = self.workload(handle, |w| {
            w.exit.borrow().is_none()
                && w.script.unhealthy_after.is_none_or(|after| w.started.elapsed() < after)
        });
        Ok(if healthy == Some(true) { 0 } else { 1 })
    }

    async fn owned(&self, node: NodeId) -> Result<Vec<Owned>, DriverError> {
        let inner = self.lock();
        Ok(inner
            .workloads
            .iter()
            .filter(|(_, w)| w.node == node)
            .map(|(handle, w)| Owned {
                handle: handle.clone(),
                task: Some(w.task),
                running: w.exit.borrow().is_none(),
            })
            .collect())
    }

    async fn reattach_output(
        &self,
        _handle: &DriverHandle,
        _log_path: &Path,
    ) -> Result<(), DriverError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: &[(&str, &str)]) -> StartRequest {
        let env: HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "fake", "driver": "process", "command": "anything", "env": env,
        }))
        .unwrap();
        StartRequest {
            task_id: TaskId::from_uuid(uuid::Uuid::from_u128(1)),
            name: "fake".into(),
            node_id: NodeId::from_uuid(uuid::Uuid::from_u128(2)),
            spec,
            log_path: std::env::temp_dir().join("cube-fake-driver-test.log"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_scripted_workload_runs_for_its_time_then_exits_with_its_code() {
        let fake = FakeDriver::new();
        let before = tokio::time::Instant::now();
        let mut started = fake
            .start(&request(&[("FAKE_RUN_FOR", "30s"), ("FAKE_EXIT_CODE", "3")]))
            .await
            .unwrap();
        assert_eq!(fake.running().len(), 1);
        let info = wait_exit(&mut started.exit).await;
        assert_eq!(info.code, Some(3));
        assert_eq!(before.elapsed(), Duration::from_secs(30));
        assert!(fake.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_start_failures_then_success() {
        let fake = FakeDriver::new();
        let req = request(&[("FAKE_START_FAILURES", "2")]);
        assert!(fake.start(&req).await.is_err());
        assert!(fake.start(&req).await.is_err());
        assert!(fake.start(&req).await.is_ok());
        assert_eq!(fake.starts(req.task_id), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_workload_is_killed_after_its_grace() {
        let fake = FakeDriver::new();
        let mut started = fake.start(&request(&[("FAKE_STOP", "hang")])).await.unwrap();
        let before = tokio::time::Instant::now();
        let info = fake.stop(&started.handle, Duration::from_secs(5), &mut started.exit).await;
        assert_eq!(info.unwrap().signal, Some(SIGKILL));
        assert_eq!(before.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_fail_once_the_workload_turns_unhealthy() {
        let fake = FakeDriver::new();
        let req = request(&[("FAKE_UNHEALTHY_AFTER", "10s")]);
        let started = fake.start(&req).await.unwrap();
        assert_eq!(fake.exec(&started.handle, &req.spec, &[]).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.exec(&started.handle, &req.spec, &[]).await.unwrap(), 1);
        let found = fake.recover(&started.handle).await.unwrap();
        assert!(found.is_some(), "still running, so a restarted worker finds it");
    }
}

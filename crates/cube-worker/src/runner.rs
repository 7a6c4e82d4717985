//! The task runner: one async task per Cube task, owning its workload's lifecycle on this node.
//!
//! A runner starts the workload, then waits for whichever comes first: the workload exits, the
//! desired state becomes `stopped`, its health check fails, or the worker shuts down. Exits go
//! through the restart policy (with exponential backoff); stops signal the workload and wait
//! out its grace period. On worker shutdown a runner returns at once and leaves its workload
//! running, as Nomad and Swarm agents do: the workload must not depend on the agent's uptime.
//!
//! Runners are independent, so a task stuck pulling an image or failing in a loop never delays
//! any other task. A runner reaches its own task's record only (a [`TaskSlot`]) and is the one
//! writer of that record's observed state on this node.

use std::sync::Arc;

use cube_core::{Chain, DesiredState, DriverHandle, NodeId, Note, Task, Trigger};
use cube_rt::Clock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::driver::output::TaskFiles;
use crate::driver::{Drivers, ExitInfo, StartRequest, Started, wait_exit};
use crate::health::{HealthChange, Monitor};
use crate::table::TaskSlot;

/// What every runner of a worker shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// This node.
    pub node_id: NodeId,
    /// The drivers.
    pub drivers: Arc<Drivers>,
    /// Where task output goes.
    pub files: TaskFiles,
    /// Shared by HTTP health probes.
    pub http: reqwest::Client,
    /// Where time comes from.
    pub clock: Clock,
    /// Cancelled when the worker shuts down.
    pub shutdown: CancellationToken,
    /// What the runners measure.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What tasks may ask for beyond the defaults, as advertised to the manager.
    pub allows: cube_core::Allows,
}

impl Context {
    /// What a driver needs to start `task`.
    fn start_request(&self, task: &Task) -> StartRequest {
        StartRequest {
            task_id: task.id,
            name: task.spec.name.clone(),
            node_id: self.node_id,
            spec: task.spec.clone(),
            log_path: self.files.log(task.id),
        }
    }
}

/// Where a runner picks up its task.
#[derive(Debug)]
pub(crate) enum Begin {
    /// Start the workload.
    Start,
    /// The workload already runs (found again after a worker restart): watch it.
    Adopt(Started),
    /// The task was waiting to restart: wait out the delay, then start.
    Backoff,
}

/// What ended the supervision of a running workload.
enum Outcome {
    Exited(ExitInfo),
    StopRequested,
    Unhealthy(String),
    Shutdown,
}

/// What a runner does after a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Start the workload again (the backoff is already waited out).
    Restart,
    /// The task is finished here.
    Done,
    /// The worker is shutting down; the workload (if any) keeps running.
    Shutdown,
}

/// Runs the slot's task until it reaches a terminal state or the worker shuts down.
pub(crate) async fn run(
    ctx: Arc<Context>,
    slot: TaskSlot,
    mut control: watch::Receiver<DesiredState>,
    begin: Begin,
) {
    let runner = Runner { ctx, slot };
    let first = match begin {
        Begin::Start => Next::Restart,
        Begin::Adopt(started) => runner.supervise(started, &mut control, true).await,
        Begin::Backoff => runner.backoff(&mut control).await,
    };
    if first != Next::Restart {
        return;
    }
    while runner.run_once(&mut control).await == Next::Restart {}
}

struct Runner {
    ctx: Arc<Context>,
    slot: TaskSlot,
}

impl Runner {
    /// Starts the workload once and supervises it to its end.
    async fn run_once(&self, control: &mut watch::Receiver<DesiredState>) -> Next {
        let Some(task) = self.slot.get() else { return Next::Done };
        if task.desired == DesiredState::Stopped {
            self.record(Trigger::Stopped, "stopped before it ran".into()).await;
            return Next::Done;
        }
        let request = self.ctx.start_request(&task);
        let began = tokio::time::Instant::now();
        let started = tokio::select! {
            result = self.ctx.drivers.start(&request) => result,
            () = self.ctx.shutdown.cancelled() => return Next::Shutdown,
        };
        let seconds = began.elapsed().as_secs_f64();
        self.ctx.metrics.started(task.spec.driver, started.is_ok(), seconds);
        match started {
            Ok(started) => self.supervise(started, control, false).await,
            Err(e) => {
                let reason = Chain(&e).to_string();
                tracing::warn!(task = %self.slot.id(), %reason, "task failed to start");
                let now = self.ctx.clock.now();
                let retry = self
                    .slot
                    .update(|t| {
                        let retry = t.should_restart(false);
                        apply(t, Trigger::StartFailed { retry }, now, reason);
                        retry
                    })
                    .await
                    .unwrap_or(false);
                if retry { self.backoff(control).await } else { Next::Done }
            }
        }
    }

    /// Records the start (unless `adopted`), then waits for the workload's end.
    async fn supervise(
        &self,
        mut started: Started,
        control: &mut watch::Receiver<DesiredState>,
        adopted: bool,
    ) -> Next {
        let id = self.slot.id();
        let handle = started.handle.clone();
        let now = self.ctx.clock.now();
        if adopted {
            self.slot
                .update(|t| {
                    t.host_ports = started.host_ports.clone();
                    t.note(
                        now,
                        Note::Readopted,
                        format!("re-adopted after a worker restart ({})", handle.short()),
                    );
                })
                .await;
            tracing::info!(task = %id, handle = %handle.short(), "task re-adopted");
        } else {
            self.slot
                .update(|t| {
                    t.handle = Some(handle.clone());
                    t.host_ports = started.host_ports.clone();
                    t.healthy = None;
                    apply(t, Trigger::Started, now, format!("started ({})", handle.short()));
                })
                .await;
            tracing::info!(task = %id, handle = %handle.short(), "task running");
        }

        let mut monitor = self.slot.get().and_then(|t| {
            Monitor::new(
                t.spec,
                handle.clone(),
                started.host_ports.clone(),
                Arc::clone(&self.ctx.drivers),
                self.ctx.http.clone(),
                self.ctx.metrics.checks.clone(),
            )
        });
        let outcome = loop {
            tokio::select! {
                info = wait_exit(&mut started.exit) => break Outcome::Exited(info),
                () = stop_requested(control) => break Outcome::StopRequested,
                change = next_change(&mut monitor) => {
                    let now = self.ctx.clock.now();
                    match change {
                        HealthChange::Healthy => {
                            self.slot.update(|t| {
                                t.healthy = Some(true);
                                t.note(now, Note::HealthPassing, "health check passing");
                            }).await;
                        }
                        HealthChange::Unhealthy(reason) => {
                            self.slot.update(|t| {
                                t.healthy = Some(false);
                                t.note(now, Note::Unhealthy, reason.clone());
                            }).await;
                            break Outcome::Unhealthy(reason);
                        }
                    }
                }
                () = self.ctx.shutdown.cancelled() => break Outcome::Shutdown,
            }
        };
        match outcome {
            Outcome::Shutdown => Next::Shutdown,
            Outcome::StopRequested => {
                let info = self.stop_workload(&handle, &mut started).await;
                let now = self.ctx.clock.now();
                self.slot
                    .update(|t| {
                        t.exit_code = info.code;
                        let reason = format!("stopped on request ({})", info.describe());
                        apply(t, Trigger::Stopped, now, reason);
                    })
                    .await;
                tracing::info!(task = %id, "task stopped");
                Next::Done
            }
            Outcome::Unhealthy(reason) => {
                // An unhealthy workload is killed and counts as a failed run.
                let info = self.stop_workload(&handle, &mut started).await;
                let retry = self.record_end(info.code, false, reason.clone()).await;
                tracing::info!(task = %id, %reason, retry, "task killed: unhealthy");
                if retry { self.backoff(control).await } else { Next::Done }
            }
            Outcome::Exited(info) => {
                self.cleanup(&handle).await;
                let reason = info.describe();
                let retry = self.record_end(info.code, info.success(), reason.clone()).await;
                tracing::info!(task = %id, %reason, retry, "task exited");
                if retry { self.backoff(control).await } else { Next::Done }
            }
        }
    }

    /// Stops a running workload within its task's grace period and releases it.
    async fn stop_workload(&self, handle: &DriverHandle, started: &mut Started) -> ExitInfo {
        let grace = self.slot.get().map(|t| t.spec.stop_grace).unwrap_or_default();
        let info = match self.ctx.drivers.stop(handle, grace, &mut started.exit).await {
            Ok(info) => info,
            Err(e) => {
                let reason = Chain(&e).to_string();
                tracing::error!(task = %self.slot.id(), error = %reason, "stopping task failed");
                ExitInfo { error: Some(format!("stop failed: {reason}")), ..ExitInfo::default() }
            }
        };
        self.cleanup(handle).await;
        info
    }

    /// Records the end of a run that nobody asked for and returns whether the restart policy
    /// wants another one. If a stop request raced with the end, the stop wins: the user asked
    /// for it.
    async fn record_end(&self, code: Option<i64>, success: bool, reason: String) -> bool {
        let now = self.ctx.clock.now();
        self.slot
            .update(|t| {
                t.exit_code = code;
                if t.desired == DesiredState::Stopped {
                    apply(t, Trigger::Stopped, now, format!("stopped on request ({reason})"));
                    return false;
                }
                let retry = t.should_restart(success);
                apply(t, Trigger::Exited { success, retry }, now, reason);
                retry
            })
            .await
            .unwrap_or(false)
    }

    /// Waits out the restart delay: [`Next::Restart`] to start again now, [`Next::Done`] if
    /// the task was stopped meanwhile (recorded as completed), [`Next::Shutdown`].
    async fn backoff(&self, control: &mut watch::Receiver<DesiredState>) -> Next {
        let now = self.ctx.clock.now();
        let Some(delay) = self
            .slot
            .update(|t| {
                let delay = t.restart_delay();
                t.note(
                    now,
                    Note::RestartScheduled,
                    format!(
                        "restart {}/{} in {}",
                        t.restart_count + 1,
                        t.spec.restart.max_attempts,
                        cube_core::units::format_duration(delay)
                    ),
                );
                delay
            })
            .await
        else {
            return Next::Done;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {
                self.slot.update(|t| t.restart_count += 1).await;
                self.ctx.metrics.restarts.inc();
                Next::Restart
            }
            () = stop_requested(control) => {
                let reason = "stopped on request while waiting to restart";
                self.record(Trigger::Stopped, reason.into()).await;
                Next::Done
            }
            () = self.ctx.shutdown.cancelled() => Next::Shutdown,
        }
    }

    async fn cleanup(&self, handle: &DriverHandle) {
        if let Err(e) = self.ctx.drivers.cleanup(handle).await {
            tracing::warn!(
                task = %self.slot.id(),
                handle = %handle.short(),
                error = %Chain(&e),
                "cleanup after exit failed"
            );
        }
    }

    async fn record(&self, trigger: Trigger, reason: String) {
        let now = self.ctx.clock.now();
        self.slot.update(|t| apply(t, trigger, now, reason)).await;
    }
}

/// The monitor's next change, or never for a task without a health check.
async fn next_change(monitor: &mut Option<Monitor>) -> HealthChange {
    match monitor {
        Some(m) => m.next_change().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the desired state is `stopped` (immediately if it already is).
async fn stop_requested(control: &mut watch::Receiver<DesiredState>) {
    if control.wait_for(|d| *d == DesiredState::Stopped).await.is_err() {
        // The sender lives as long as the task's entry, which outlives its runner; if it is
        // gone anyway, no stop can ever arrive.
        std::future::pending::<()>().await;
    }
}

/// Applies a trigger; an invalid one is a bug in the runner, logged rather than applied.
fn apply(task: &mut Task, trigger: Trigger, now: jiff::Timestamp, reason: String) {
    if let Err(e) = task.apply(trigger, now, reason) {
        tracing::error!(task = %task.id, error = %e, "runner attempted an invalid transition");
    }
}

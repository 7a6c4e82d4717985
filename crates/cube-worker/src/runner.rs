//! The task runner: one async task per Cube task, owning its workload's lifecycle on this node.
//!
//! A runner starts the workload, then waits for whichever comes first: the workload exits, the
//! desired state becomes `stopped`, or the worker shuts down. Exits go through the restart
//! policy (with exponential backoff); stops signal the workload and wait out its grace period.
//! On worker shutdown a runner returns at once and leaves its workload running, as Nomad and
//! Swarm agents do: the workload must not depend on the agent's uptime.
//!
//! Runners are independent, so a task stuck pulling an image or failing in a loop never delays
//! any other task.

use std::sync::Arc;

use cube_core::{DesiredState, DriverHandle, Note, TaskId, Trigger};
use jiff::Timestamp;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::driver::{ExitInfo, Started, wait_exit};
use crate::health;

/// What ended the supervision of a running workload.
enum Outcome {
    Exited(ExitInfo),
    StopRequested,
    Unhealthy(String),
    Shutdown,
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

/// Runs task `id` until it reaches a terminal state or the worker shuts down.
pub(crate) async fn run(
    agent: Arc<Agent>,
    id: TaskId,
    mut control: watch::Receiver<DesiredState>,
    begin: Begin,
) {
    match begin {
        Begin::Start => {}
        Begin::Adopt(started) => match supervise(&agent, id, started, &mut control, true).await {
            Some(true) => {}
            Some(false) | None => return,
        },
        Begin::Backoff => {
            if !backoff(&agent, id, &mut control).await {
                return;
            }
        }
    }
    loop {
        let Some(task) = agent.get(id) else { return };
        if task.desired == DesiredState::Stopped {
            record(&agent, id, Trigger::Stopped, "stopped before it ran".into()).await;
            return;
        }
        let request = agent.start_request(&task);
        let started = tokio::select! {
            result = agent.drivers.start(&request) => result,
            () = agent.shutdown.cancelled() => return,
        };
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                let reason = cube_core::Chain(&e).to_string();
                tracing::warn!(task = %id, %reason, "task failed to start");
                let retry = agent
                    .update(id, |t| {
                        let retry = t.should_restart(false);
                        apply(t, Trigger::StartFailed { retry }, reason);
                        retry
                    })
                    .await
                    .unwrap_or(false);
                if retry && backoff(&agent, id, &mut control).await {
                    continue;
                }
                return;
            }
        };
        match supervise(&agent, id, started, &mut control, false).await {
            Some(true) => continue,
            Some(false) | None => return,
        }
    }
}

/// Records the start (unless `adopted`), then waits for the workload's end. Returns
/// `Some(true)` when the task should be started again, `Some(false)` when it is finished, `None`
/// on shutdown.
async fn supervise(
    agent: &Arc<Agent>,
    id: TaskId,
    mut started: Started,
    control: &mut watch::Receiver<DesiredState>,
    adopted: bool,
) -> Option<bool> {
    let handle = started.handle.clone();
    if adopted {
        agent
            .update(id, |t| {
                t.host_ports = started.host_ports.clone();
                t.note(
                    Timestamp::now(),
                    Note::Readopted,
                    format!("re-adopted after a worker restart ({})", handle.short()),
                );
            })
            .await;
        tracing::info!(task = %id, handle = %handle.short(), "task re-adopted");
    } else {
        agent
            .update(id, |t| {
                t.handle = Some(handle.clone());
                t.host_ports = started.host_ports.clone();
                t.healthy = None;
                apply(t, Trigger::Started, format!("started ({})", handle.short()));
            })
            .await;
        tracing::info!(task = %id, handle = %handle.short(), "task running");
    }

    let spec = agent.get(id).map(|t| t.spec);
    let check = spec.as_ref().and_then(|s| s.health.clone());
    let target = health::Target {
        handle: handle.clone(),
        host_ports: started.host_ports.clone(),
        env: spec.map(|s| s.env.into_iter().collect()).unwrap_or_default(),
    };
    let health = async {
        match &check {
            Some(check) => health::watch(agent, id, check, &target, &agent.health_http).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        info = wait_exit(&mut started.exit) => Outcome::Exited(info),
        () = stop_requested(control) => Outcome::StopRequested,
        reason = health => Outcome::Unhealthy(reason),
        () = agent.shutdown.cancelled() => Outcome::Shutdown,
    };
    match outcome {
        Outcome::Shutdown => None,
        Outcome::StopRequested => {
            let info = stop_workload(agent, id, &handle, &mut started).await;
            agent
                .update(id, |t| {
                    t.exit_code = info.code;
                    apply(t, Trigger::Stopped, format!("stopped on request ({})", info.describe()));
                })
                .await;
            tracing::info!(task = %id, "task stopped");
            Some(false)
        }
        Outcome::Unhealthy(reason) => {
            // An unhealthy workload is killed and counts as a failed run.
            let info = stop_workload(agent, id, &handle, &mut started).await;
            let retry = record_end(agent, id, info.code, false, reason.clone()).await;
            tracing::info!(task = %id, %reason, retry, "task killed: unhealthy");
            Some(retry && backoff(agent, id, control).await)
        }
        Outcome::Exited(info) => {
            cleanup(agent, id, &handle).await;
            let reason = info.describe();
            let retry = record_end(agent, id, info.code, info.success(), reason.clone()).await;
            tracing::info!(task = %id, %reason, retry, "task exited");
            Some(retry && backoff(agent, id, control).await)
        }
    }
}

/// Stops a running workload within its task's grace period and releases it.
async fn stop_workload(
    agent: &Agent,
    id: TaskId,
    handle: &DriverHandle,
    started: &mut Started,
) -> ExitInfo {
    let grace = agent.get(id).map(|t| t.spec.stop_grace).unwrap_or_default();
    let info = match agent.drivers.stop(handle, grace, &mut started.exit).await {
        Ok(info) => info,
        Err(e) => {
            tracing::error!(task = %id, error = %cube_core::Chain(&e), "stopping task failed");
            ExitInfo { error: Some(format!("stop failed: {e}")), ..ExitInfo::default() }
        }
    };
    cleanup(agent, id, handle).await;
    info
}

/// Records the end of a run that nobody asked for and returns whether the restart policy wants
/// another one. If a stop request raced with the end, the stop wins: the user asked for it.
async fn record_end(
    agent: &Agent,
    id: TaskId,
    code: Option<i64>,
    success: bool,
    reason: String,
) -> bool {
    agent
        .update(id, |t| {
            t.exit_code = code;
            if t.desired == DesiredState::Stopped {
                apply(t, Trigger::Stopped, format!("stopped on request ({reason})"));
                return false;
            }
            let retry = t.should_restart(success);
            apply(t, Trigger::Exited { success, retry }, reason);
            retry
        })
        .await
        .unwrap_or(false)
}

/// Waits out the restart delay. Returns `true` to restart now, `false` if the task was stopped
/// (it is then recorded as completed) or the worker is shutting down.
async fn backoff(
    agent: &Arc<Agent>,
    id: TaskId,
    control: &mut watch::Receiver<DesiredState>,
) -> bool {
    let Some(delay) = agent
        .update(id, |t| {
            let delay = t.restart_delay();
            t.note(
                Timestamp::now(),
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
        return false;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => {
            agent.update(id, |t| t.restart_count += 1).await;
            true
        }
        () = stop_requested(control) => {
            record(agent, id, Trigger::Stopped, "stopped on request while waiting to restart".into()).await;
            false
        }
        () = agent.shutdown.cancelled() => false,
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

async fn cleanup(agent: &Agent, id: TaskId, handle: &DriverHandle) {
    if let Err(e) = agent.drivers.cleanup(handle).await {
        tracing::warn!(task = %id, handle = %handle.short(), error = %cube_core::Chain(&e), "cleanup after exit failed");
    }
}

async fn record(agent: &Agent, id: TaskId, trigger: Trigger, reason: String) {
    agent.update(id, |t| apply(t, trigger, reason)).await;
}

/// Applies a trigger; an invalid one is a bug in the runner, logged rather than applied.
fn apply(task: &mut cube_core::Task, trigger: Trigger, reason: String) {
    if let Err(e) = task.apply(trigger, Timestamp::now(), reason) {
        tracing::error!(task = %task.id, error = %cube_core::Chain(&e), "runner attempted an invalid transition");
    }
}

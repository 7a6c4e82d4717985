//! The worker's agent: accepts tasks into the [`TaskTable`], hands each to its own runner,
//! stops them on request, takes back what a previous run left after a restart, and forgets
//! finished tasks after their retention.
//!
//! API answers are sent only after the change they report is durable.

use std::path::PathBuf;
use std::sync::Arc;

use cube_core::service::OnDisconnect;
use cube_core::{
    Chain, DesiredState, DriverKind, NodeId, Refusal, Task, TaskId, TaskSpec, TaskState, Trigger,
};
use cube_store::StoreError;
use jiff::Timestamp;
use tokio_util::task::TaskTracker;

use crate::WorkerError;
use crate::runner::{self, Begin, Context};
use crate::table::{Admitted, TaskSlot, TaskTable};

/// What [`Agent::recover`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Workloads found running and watched again.
    pub adopted: usize,
    /// Workloads that were gone.
    pub vanished: usize,
    /// Tasks that had not started and were started.
    pub restarted: usize,
    /// Workloads labelled for this node that no task owned, removed.
    pub unowned: usize,
}

/// The worker's tasks and their runners.
#[derive(Debug)]
pub(crate) struct Agent {
    name: String,
    ctx: Arc<Context>,
    table: Arc<TaskTable>,
    runners: TaskTracker,
    /// When the manager last answered (on the monotonic clock); the agent's start until then.
    contact: std::sync::Mutex<std::time::Instant>,
}

/// Why [`Agent::submit`] stored nothing. Boxed: a task record is large, and this is the rare
/// path.
enum Refused {
    /// The same placement again: the record as it is.
    Repeat(Box<Task>),
    Error(WorkerError),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Error(e.into())
    }
}

impl Agent {
    /// An agent with no tasks yet, named `name`, over `table`.
    pub(crate) fn new(name: String, ctx: Arc<Context>, table: Arc<TaskTable>) -> Arc<Self> {
        let contact = std::sync::Mutex::new(ctx.clock.instant());
        Arc::new(Self { name, ctx, table, runners: TaskTracker::new(), contact })
    }

    /// The manager answered just now.
    pub(crate) fn contacted(&self) {
        *self.contact.lock().unwrap_or_else(|e| e.into_inner()) = self.ctx.clock.instant();
    }

    /// Stops every task whose `on_disconnect` says to once the manager has been out of reach
    /// for that long, so that a singleton the manager replaces elsewhere does not run twice
    /// through a partition. Returns how many it asked to stop.
    pub(crate) async fn stop_disconnected(&self) -> usize {
        let since = *self.contact.lock().unwrap_or_else(|e| e.into_inner());
        let silent = self.ctx.clock.instant().saturating_duration_since(since);
        let due: Vec<(TaskId, std::time::Duration)> = self
            .table
            .list()
            .iter()
            .filter(|t| t.desired == DesiredState::Running && !t.state.is_terminal())
            .filter_map(|t| match t.spec.on_disconnect {
                OnDisconnect::StopAfter(after) if silent >= after => Some((t.id, after)),
                OnDisconnect::StopAfter(_) | OnDisconnect::Keep => None,
            })
            .collect();
        for (id, after) in &due {
            let now = self.ctx.clock.now();
            let reason = format!(
                "no contact with the manager for {}: stopped (on_disconnect)",
                cube_core::units::format_duration(*after)
            );
            match self.table.request_stop(*id, now, &reason) {
                Ok(Some((_, Some(commit)))) => {
                    if let Err(e) = commit.await {
                        tracing::error!(task = %id, error = %Chain(&e), "cannot record the stop");
                    }
                    tracing::warn!(task = %id, %reason, "task stopped: manager out of reach");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(task = %id, error = %Chain(&e), "cannot stop task"),
            }
        }
        due.len()
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> NodeId {
        self.ctx.node_id
    }

    /// This node's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The task table.
    pub(crate) fn table(&self) -> &Arc<TaskTable> {
        &self.table
    }

    /// Drivers usable on this node.
    pub(crate) fn drivers(&self) -> Vec<DriverKind> {
        self.ctx.drivers.available()
    }

    /// The file holding a task's output.
    pub(crate) fn log_path(&self, id: TaskId) -> PathBuf {
        self.ctx.files.log(id)
    }

    /// Accepts a task. With an id that is already known:
    /// - same generation, same spec: an idempotent repeat (`Ok((task, false))`, nothing started
    ///   twice); same generation, other spec: a conflict;
    /// - a newer generation (the manager placed the task here again): replaces a finished
    ///   record, but is refused while the older placement is still running (the manager retries
    ///   once it has stopped);
    /// - an older generation: a stale placement, refused.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        id: Option<TaskId>,
        generation: Option<u32>,
        spec: TaskSpec,
    ) -> Result<(Task, bool), WorkerError> {
        // The manager placed it here because this node said it allows all of it; check again
        // (a standalone worker, or a manager that knew an older configuration).
        if let Some(reason) = self.refusal(&spec).await {
            tracing::warn!(name = %spec.name, %reason, "task refused");
            return Err(WorkerError::NotAllowed { node: self.name.clone(), reason });
        }
        let id = id.unwrap_or_else(|| TaskId::from_uuid(uuid::Uuid::now_v7()));
        let now = self.ctx.clock.now();
        let admitted = self.table.admit(id, |existing| {
            if let Some(old) = existing {
                let generation = generation.unwrap_or(old.generation);
                if generation == old.generation {
                    return Err(if old.spec == spec {
                        Refused::Repeat(Box::new(old.clone()))
                    } else {
                        Refused::Error(WorkerError::Conflict(id))
                    });
                }
                if generation < old.generation {
                    let current = old.generation;
                    return Err(Refused::Error(WorkerError::Stale { id, generation, current }));
                }
                if !old.state.is_terminal() {
                    let generation = old.generation;
                    return Err(Refused::Error(WorkerError::Busy { id, generation }));
                }
            }
            let mut task = Task::new(id, spec, now);
            task.generation = generation.unwrap_or(0);
            task.node = Some(self.ctx.node_id);
            let reason = match generation {
                Some(g) => format!("accepted by node {} (generation {g})", self.name),
                None => format!("accepted by node {}", self.name),
            };
            task.apply(Trigger::Place, now, reason).map_err(|e| Refused::Error(e.into()))?;
            Ok(task)
        });
        let Admitted { task, control, commit } = match admitted {
            Ok(admitted) => admitted,
            Err(Refused::Repeat(task)) => return Ok((*task, false)),
            Err(Refused::Error(e)) => return Err(e),
        };
        self.spawn_runner(id, control, Begin::Start);
        commit.await?;
        tracing::info!(
            task = %id,
            name = %task.spec.name,
            driver = %task.spec.driver,
            "task accepted"
        );
        Ok((task, true))
    }

    /// What `spec` asks for that this node does not allow, in words naming the setting.
    async fn refusal(&self, spec: &TaskSpec) -> Option<String> {
        if spec.driver == DriverKind::Process && !self.drivers().contains(&DriverKind::Process) {
            return Some(Refusal::ProcessDisabled.describe(spec));
        }
        let allows = &self.ctx.allows;
        if let Some(refusal) = allows.refusal(spec) {
            return Some(refusal.describe(spec));
        }
        // A symlink below an allowed prefix must not lead out of it: check where each source
        // really is. (A missing source is left to the engine, which refuses it.)
        for m in &spec.mounts {
            if let Ok(real) = tokio::fs::canonicalize(&m.source).await {
                let real = real.to_string_lossy();
                if !allows.mount_allowed(&real) {
                    return Some(format!(
                        "host mount of {} resolves to {real}, which is not allowed (start the worker with --allow-host-mounts {real} or a parent)",
                        m.source
                    ));
                }
            }
        }
        None
    }

    fn spawn_runner(
        &self,
        id: TaskId,
        control: tokio::sync::watch::Receiver<cube_core::DesiredState>,
        begin: Begin,
    ) {
        let slot = TaskSlot::new(Arc::clone(&self.table), id);
        self.runners.spawn(runner::run(Arc::clone(&self.ctx), slot, control, begin));
    }

    /// Takes back the tasks a previous run of this worker recorded: running workloads are found
    /// again (container by id, process by pid and start time), their output copied from where
    /// it stopped, and watched without being restarted; vanished ones are recorded as such and
    /// restarted only if their policy says so; tasks that had not started yet are started.
    /// Then workloads labelled for this node that no task owns are stopped and removed. Call
    /// once, before serving.
    pub(crate) async fn recover(self: &Arc<Self>, tasks: Vec<Task>) -> Recovery {
        let mut report = Recovery::default();
        for mut task in tasks {
            let id = task.id;
            let begin = self.recovery_of(&mut task, &mut report).await;
            let admitted = self.table.admit(id, |_| Ok::<_, StoreError>(task));
            match admitted {
                Ok(Admitted { control, commit, .. }) => {
                    if let Some(begin) = begin {
                        self.spawn_runner(id, control, begin);
                    }
                    if let Err(e) = commit.await {
                        tracing::error!(
                            task = %id,
                            error = %Chain(&e),
                            "cannot persist task state"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(task = %id, error = %Chain(&e), "cannot encode task state")
                }
            }
        }
        report.unowned = self.remove_unowned().await;
        report
    }

    /// Where the runner of a recovered task picks up, recording what happened while the worker
    /// was away; `None` for a finished task.
    async fn recovery_of(&self, task: &mut Task, report: &mut Recovery) -> Option<Begin> {
        let id = task.id;
        match (task.handle.clone(), task.state) {
            (_, TaskState::Completed | TaskState::Failed) => None,
            (_, TaskState::Restarting) => Some(Begin::Backoff),
            (Some(handle), TaskState::Running) => match self.ctx.drivers.recover(&handle).await {
                Ok(Some(started)) => {
                    if let Err(e) =
                        self.ctx.drivers.reattach_output(&handle, &self.ctx.files.log(id)).await
                    {
                        tracing::warn!(
                            task = %id,
                            error = %Chain(&e),
                            "cannot resume copying the workload's output"
                        );
                    }
                    report.adopted += 1;
                    Some(Begin::Adopt(started))
                }
                outcome => {
                    let why = match outcome {
                        Err(e) => format!(
                            "workload could not be found again after a worker restart: {}",
                            Chain(&e)
                        ),
                        Ok(_) => "workload vanished while the worker was down".to_owned(),
                    };
                    report.vanished += 1;
                    let retry = task.should_restart(false);
                    let now = self.ctx.clock.now();
                    if let Err(e) = task.apply(Trigger::Exited { success: false, retry }, now, why)
                    {
                        tracing::error!(task = %id, error = %e, "cannot record vanished task");
                    }
                    retry.then_some(Begin::Backoff)
                }
            },
            (_, TaskState::Pending | TaskState::Scheduled | TaskState::Running) => {
                report.restarted += 1;
                Some(Begin::Start)
            }
        }
    }

    /// Stops and removes workloads labelled for this node that no live task owns.
    async fn remove_unowned(&self) -> usize {
        let found = match self.ctx.drivers.owned(self.ctx.node_id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot list this node's workloads");
                return 0;
            }
        };
        let mut removed = 0;
        for w in found {
            let owned = w
                .task
                .and_then(|t| self.table.get(t))
                .is_some_and(|t| !t.state.is_terminal() && t.handle.as_ref() == Some(&w.handle));
            if owned {
                continue;
            }
            match self.ctx.drivers.cleanup(&w.handle).await {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(
                        workload = %w.handle.short(),
                        task = ?w.task,
                        running = w.running,
                        "removed a Cube workload no task owns"
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        workload = %w.handle.short(),
                        error = %Chain(&e),
                        "cannot remove unowned workload"
                    )
                }
            }
        }
        removed
    }

    /// The running workload of task `id`, for an exec: refused for an unknown task or one that
    /// does not run.
    pub(crate) fn exec_target(&self, id: TaskId) -> Result<Task, WorkerError> {
        let task = self.table.get(id).ok_or(WorkerError::NotFound(id))?;
        match (&task.handle, task.state) {
            (Some(_), cube_core::TaskState::Running) => Ok(task),
            (_, state) => Err(WorkerError::NotRunning { id, state }),
        }
    }

    /// Serves an exec session on `socket` until it ends or the worker shuts down (which ends
    /// its command); tracked with the runners, so a stopping worker waits for it.
    pub(crate) async fn serve_exec(
        self: Arc<Self>,
        socket: axum::extract::ws::WebSocket,
        task: Task,
        query: cube_api::exec::ExecQuery,
    ) {
        let this = Arc::clone(&self);
        let session = self.runners.spawn(async move {
            let session = this.session(&task, &query).await;
            crate::exec::serve(socket, session, this.ctx.shutdown.clone()).await;
        });
        let _ = session.await;
    }

    /// Starts `query`'s command in `task`'s workload (from [`Agent::exec_target`]).
    async fn session(
        &self,
        task: &Task,
        query: &cube_api::exec::ExecQuery,
    ) -> Result<crate::driver::Session, crate::driver::DriverError> {
        let req = crate::driver::SessionRequest {
            task_id: task.id,
            name: task.spec.name.clone(),
            command: query.command.clone(),
            tty: query.tty,
            stdin: query.stdin,
            size: query.size.map(|s| (s.width, s.height)),
        };
        let handle = task.handle.as_ref().ok_or(crate::driver::DriverError::NoSessions)?;
        tracing::info!(task = %task.id, command = ?query.command, tty = query.tty, "exec");
        self.ctx.drivers.session(handle, &task.spec, &req).await
    }

    /// Asks a task to stop. Stopping a finished task is a no-op that returns it as it is.
    pub(crate) async fn stop(&self, id: TaskId) -> Result<Task, WorkerError> {
        let now = self.ctx.clock.now();
        let (task, commit) =
            self.table.request_stop(id, now, "stop requested")?.ok_or(WorkerError::NotFound(id))?;
        if let Some(commit) = commit {
            commit.await?;
            tracing::info!(task = %id, "stop requested");
        }
        Ok(task)
    }

    /// Forgets tasks that finished at or before `cutoff`: their records, then their log
    /// directories. A task whose runner has not returned yet is kept, and so is one whose
    /// final state the manager has not acknowledged when `keep_unreported` is set (a worker
    /// with a manager); a standalone worker has nobody to report to. Returns how many.
    pub(crate) async fn collect_garbage(&self, cutoff: Timestamp, keep_unreported: bool) -> usize {
        let Some((doomed, commit)) = self.table.forget(cutoff, keep_unreported) else { return 0 };
        if let Err(e) = commit.await {
            // The records come back on restart and are collected again; keep their logs.
            tracing::error!(error = %Chain(&e), "cannot delete finished tasks");
            return 0;
        }
        for id in &doomed {
            let dir = self.ctx.files.dir(*id);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(
                        task = %id,
                        dir = %dir.display(),
                        error = %e,
                        "cannot remove task directory"
                    )
                }
            }
        }
        tracing::info!(tasks = doomed.len(), "garbage-collected finished tasks and their logs");
        doomed.len()
    }

    /// Waits until every runner has returned (after `shutdown` was cancelled).
    pub(crate) async fn wait_runners(&self) {
        self.runners.close();
        self.runners.wait().await;
    }
}

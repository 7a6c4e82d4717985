//! The worker's task table: accepts tasks, hands each to its own runner, and records every
//! observed change durably.
//!
//! **Invariant:** the in-memory table is the source of truth for reads; every change to it is
//! handed to the [`Store`] while the table lock is held (so the store sees changes in the same
//! order) and awaited after the lock is released (so a slow disk never blocks readers).
//! API answers are sent only after the change they report is durable.
//!
//! Every change also marks the task *dirty* and wakes the reporter, which pushes dirty tasks to
//! the manager at once instead of waiting for the next heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use cube_api::types::{ActiveTask, NodeStats, TaskCounts};
use cube_core::{
    DesiredState, DriverHandle, NodeId, Note, Resources, Task, TaskId, TaskSpec, TaskState, Trigger,
};
use cube_store::{Batch, Commit, Store, Table};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WorkerError;
use crate::driver::{Drivers, StartRequest};
use crate::metrics::HostSnapshot;
use crate::runner;

/// What [`Agent::recover`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Workloads found running and watched again.
    pub adopted: usize,
    /// Workloads that were gone.
    pub vanished: usize,
    /// Tasks that had not started and were started.
    pub restarted: usize,
    /// Containers labelled for this node that no task owned, removed.
    pub unowned: usize,
}

/// The worker's tasks and what they need to run.
#[derive(Debug)]
pub struct Agent {
    node_id: NodeId,
    name: String,
    data_dir: PathBuf,
    pub(crate) drivers: Drivers,
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    changed: Notify,
    runners: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Shared by HTTP health probes.
    pub(crate) health_http: reqwest::Client,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, Entry>,
    /// Tasks changed since the manager last acknowledged them.
    dirty: BTreeSet<TaskId>,
}

#[derive(Debug)]
struct Entry {
    task: Task,
    /// Tells the task's runner about desired-state changes.
    control: watch::Sender<DesiredState>,
}

impl Agent {
    /// An agent with no tasks yet.
    pub fn new(
        node_id: NodeId,
        name: String,
        data_dir: PathBuf,
        drivers: Drivers,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            name,
            data_dir,
            drivers,
            store,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            runners: TaskTracker::new(),
            shutdown,
            health_http: crate::health::http_client(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drivers usable on this node.
    pub fn drivers(&self) -> Vec<cube_core::DriverKind> {
        self.drivers.available()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock except on bugs; the table is still consistent
        // entry by entry, so keep serving rather than poisoning the whole worker.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a task. With an id that is already known:
    /// - same generation, same spec: an idempotent repeat (`Ok((task, false))`, nothing started
    ///   twice); same generation, other spec: a conflict;
    /// - a newer generation (the manager placed the task here again): replaces a finished
    ///   record, but is refused while the older placement is still running (the manager retries
    ///   once it has stopped);
    /// - an older generation: a stale placement, refused.
    pub async fn submit(
        self: &Arc<Self>,
        id: Option<TaskId>,
        generation: Option<u32>,
        spec: TaskSpec,
    ) -> Result<(Task, bool), WorkerError> {
        let id = id.unwrap_or_else(|| TaskId::from_uuid(uuid::Uuid::now_v7()));
        let now = Timestamp::now();
        let (task, commit) = {
            let mut inner = self.lock();
            if let Some(existing) = inner.tasks.get(&id) {
                let old = &existing.task;
                let generation = generation.unwrap_or(old.generation);
                if generation == old.generation {
                    return if old.spec == spec {
                        Ok((old.clone(), false))
                    } else {
                        Err(WorkerError::Conflict(id))
                    };
                }
                if generation < old.generation {
                    return Err(WorkerError::Stale { id, generation, current: old.generation });
                }
                if !old.state.is_terminal() {
                    return Err(WorkerError::Busy { id, generation: old.generation });
                }
            }
            let mut task = Task::new(id, spec, now);
            task.generation = generation.unwrap_or(0);
            task.node = Some(self.node_id);
            let reason = match generation {
                Some(g) => format!("accepted by node {} (generation {g})", self.name),
                None => format!("accepted by node {}", self.name),
            };
            task.apply(Trigger::Place, now, reason)?;
            let commit = self.store.commit(task_batch(&task)?);
            let (control, control_rx) = watch::channel(DesiredState::Running);
            inner.tasks.insert(id, Entry { task: task.clone(), control });
            inner.dirty.insert(id);
            self.runners.spawn(runner::run(Arc::clone(self), id, control_rx, runner::Begin::Start));
            (task, commit)
        };
        self.changed.notify_one();
        commit.await?;
        tracing::info!(task = %id, name = %task.spec.name, driver = %task.spec.driver, "task accepted");
        Ok((task, true))
    }

    /// Takes back the tasks a previous run of this worker recorded: running workloads are found
    /// again (container by id, process by pid and start time) and watched without being
    /// restarted; vanished ones are recorded as such and restarted only if their policy says
    /// so; tasks that had not started yet are started. Then containers labelled for this node
    /// that no task owns are stopped and removed. Call once, before serving.
    pub async fn recover(self: &Arc<Self>, tasks: Vec<Task>) -> Recovery {
        let mut report = Recovery::default();
        let now_secs = i32::try_from(Timestamp::now().as_second()).unwrap_or(0);
        for mut task in tasks {
            let now = Timestamp::now();
            let id = task.id;
            let begin = if task.state.is_terminal() {
                None
            } else {
                match (task.handle.clone(), task.state) {
                    (Some(handle), TaskState::Running) => match self.drivers.recover(&handle).await
                    {
                        Ok(Some(started)) => {
                            if let (Ok(docker), DriverHandle::Container { id: cid }) =
                                (&self.drivers.docker, &handle)
                                && let Err(e) =
                                    docker.resume_logs(cid, &self.log_path(id), now_secs).await
                            {
                                tracing::warn!(task = %id, error = %cube_core::Chain(&e), "cannot resume copying container logs");
                            }
                            report.adopted += 1;
                            Some(runner::Begin::Adopt(started))
                        }
                        outcome => {
                            let why = match outcome {
                                Err(e) => format!(
                                    "workload could not be found again after a worker restart: {e}"
                                ),
                                Ok(_) => "workload vanished while the worker was down".to_owned(),
                            };
                            report.vanished += 1;
                            let retry = task.should_restart(false);
                            if let Err(e) =
                                task.apply(Trigger::Exited { success: false, retry }, now, why)
                            {
                                tracing::error!(task = %id, error = %cube_core::Chain(&e), "cannot record vanished task");
                            }
                            retry.then_some(runner::Begin::Backoff)
                        }
                    },
                    (_, TaskState::Restarting) => Some(runner::Begin::Backoff),
                    (_, TaskState::Pending | TaskState::Scheduled | TaskState::Running) => {
                        report.restarted += 1;
                        Some(runner::Begin::Start)
                    }
                    (_, TaskState::Completed | TaskState::Failed) => None,
                }
            };
            let commit = task_batch(&task).map(|b| self.store.commit(b));
            {
                let mut inner = self.lock();
                let (control, control_rx) = watch::channel(task.desired);
                inner.tasks.insert(id, Entry { task, control });
                inner.dirty.insert(id);
                if let Some(begin) = begin {
                    self.runners.spawn(runner::run(Arc::clone(self), id, control_rx, begin));
                }
            }
            persist(id, commit).await;
        }
        report.unowned = self.remove_unowned_containers().await;
        self.changed.notify_one();
        report
    }

    /// Stops and removes containers labelled for this node that no live task owns.
    async fn remove_unowned_containers(&self) -> usize {
        let Ok(docker) = &self.drivers.docker else { return 0 };
        let containers = match docker.list_managed(self.node_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %cube_core::Chain(&e), "cannot list this node's containers");
                return 0;
            }
        };
        let mut removed = 0;
        for c in containers {
            let owned = c.task_id.and_then(|t| self.get(t)).is_some_and(|t| {
                !t.state.is_terminal()
                    && t.handle == Some(DriverHandle::Container { id: c.id.clone() })
            });
            if owned {
                continue;
            }
            let handle = DriverHandle::Container { id: c.id.clone() };
            match self.drivers.cleanup(&handle).await {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(container = %c.id, task = ?c.task_id, running = c.running, "removed a Cube container no task owns");
                }
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %cube_core::Chain(&e), "cannot remove unowned container")
                }
            }
        }
        removed
    }

    /// Asks a task to stop. Stopping a finished task is a no-op that returns it as it is.
    pub async fn stop(&self, id: TaskId) -> Result<Task, WorkerError> {
        let now = Timestamp::now();
        let (task, commit) = {
            let mut inner = self.lock();
            let entry = inner.tasks.get_mut(&id).ok_or(WorkerError::NotFound(id))?;
            if entry.task.desired == DesiredState::Stopped || entry.task.state.is_terminal() {
                return Ok(entry.task.clone());
            }
            entry.task.desired = DesiredState::Stopped;
            entry.task.note(now, Note::StopRequested, "stop requested");
            let commit = self.store.commit(task_batch(&entry.task)?);
            entry.control.send_replace(DesiredState::Stopped);
            let task = entry.task.clone();
            inner.dirty.insert(id);
            (task, commit)
        };
        self.changed.notify_one();
        commit.await?;
        tracing::info!(task = %id, "stop requested");
        Ok(task)
    }

    /// One task.
    pub fn get(&self, id: TaskId) -> Option<Task> {
        self.lock().tasks.get(&id).map(|e| e.task.clone())
    }

    /// All tasks, oldest first (ids are time-ordered).
    pub fn list(&self) -> Vec<Task> {
        self.lock().tasks.values().map(|e| e.task.clone()).collect()
    }

    /// Tasks that are not finished, with their generations.
    pub fn active(&self) -> Vec<ActiveTask> {
        self.lock()
            .tasks
            .values()
            .filter(|e| !e.task.state.is_terminal())
            .map(|e| ActiveTask { id: e.task.id, generation: e.task.generation })
            .collect()
    }

    /// Takes the tasks changed since the last call (the reporter sends them to the manager).
    pub fn take_dirty(&self) -> Vec<Task> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty.iter().filter_map(|id| inner.tasks.get(id).map(|e| e.task.clone())).collect()
    }

    /// Marks tasks changed again (their report did not reach the manager).
    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.lock().dirty.extend(ids);
    }

    /// Resolves when some task changed since the last time it resolved.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Task counts by state and the resources reserved by tasks placed here and not finished.
    pub fn usage(&self) -> (TaskCounts, Resources) {
        let inner = self.lock();
        let mut counts = TaskCounts::default();
        let mut reserved = Resources::default();
        for e in inner.tasks.values() {
            counts.add(e.task.state);
            if e.task.state.is_active_on_node() {
                reserved = reserved.saturating_add(e.task.spec.resources);
            }
        }
        (counts, reserved)
    }

    /// The node's stats: host metrics plus task counts and reservations.
    pub fn stats(&self, host: &HostSnapshot) -> NodeStats {
        let (tasks, reserved) = self.usage();
        NodeStats {
            collected_at: host.collected_at,
            memory: host.memory,
            cpu: host.cpu,
            load: host.load,
            disk: host.disk.clone(),
            tasks,
            reserved,
        }
    }

    /// Changes a task with `f` and persists it; returns what `f` returned, or `None` when the
    /// task is unknown. Store failures are logged: the workload's state is a fact either way.
    pub(crate) async fn update<R>(&self, id: TaskId, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let (result, commit) = {
            let mut inner = self.lock();
            let entry = inner.tasks.get_mut(&id)?;
            let result = f(&mut entry.task);
            let commit = task_batch(&entry.task).map(|b| self.store.commit(b));
            inner.dirty.insert(id);
            (result, commit)
        };
        self.changed.notify_one();
        persist(id, commit).await;
        Some(result)
    }

    /// What a driver needs to start `task`.
    pub(crate) fn start_request(&self, task: &Task) -> StartRequest {
        StartRequest {
            task_id: task.id,
            name: task.spec.name.clone(),
            node_id: self.node_id,
            spec: task.spec.clone(),
            log_path: self.log_path(task.id),
        }
    }

    /// The directory holding what the worker keeps for a task (its log).
    fn task_dir(&self, id: TaskId) -> PathBuf {
        self.data_dir.join("tasks").join(id.to_string())
    }

    /// The file holding a task's output.
    pub fn log_path(&self, id: TaskId) -> PathBuf {
        self.task_dir(id).join("output.log")
    }

    /// Forgets tasks that finished at or before `cutoff`: their records, then their log
    /// directories. A task whose runner has not returned yet is kept, and so is one whose
    /// final state the manager has not acknowledged when `keep_unreported` is set (a worker
    /// with a manager); a standalone worker has nobody to report to. Returns how many.
    pub async fn collect_garbage(&self, cutoff: Timestamp, keep_unreported: bool) -> usize {
        let (doomed, commit) = {
            let mut inner = self.lock();
            let doomed: Vec<TaskId> = inner
                .tasks
                .iter()
                .filter(|(id, e)| {
                    e.task.finished_by(cutoff)
                        && e.control.is_closed()
                        && !(keep_unreported && inner.dirty.contains(id))
                })
                .map(|(id, _)| *id)
                .collect();
            if doomed.is_empty() {
                return 0;
            }
            let mut batch = Batch::new();
            for id in &doomed {
                inner.tasks.remove(id);
                inner.dirty.remove(id);
                batch.delete(Table::Tasks, id.to_string());
            }
            (doomed, self.store.commit(batch))
        };
        if let Err(e) = commit.await {
            // The records come back on restart and are collected again; keep their logs.
            tracing::error!(error = %cube_core::Chain(&e), "cannot delete finished tasks");
            return 0;
        }
        for id in &doomed {
            let dir = self.task_dir(*id);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(task = %id, dir = %dir.display(), error = %cube_core::Chain(&e), "cannot remove task directory")
                }
            }
        }
        tracing::info!(tasks = doomed.len(), "garbage-collected finished tasks and their logs");
        doomed.len()
    }

    /// Waits until every runner has returned (after `shutdown` was cancelled).
    pub async fn wait_runners(&self) {
        self.runners.close();
        self.runners.wait().await;
    }
}

async fn persist(id: TaskId, commit: Result<Commit, cube_store::StoreError>) {
    match commit {
        Ok(commit) => {
            if let Err(e) = commit.await {
                tracing::error!(task = %id, error = %cube_core::Chain(&e), "cannot persist task state");
            }
        }
        Err(e) => {
            tracing::error!(task = %id, error = %cube_core::Chain(&e), "cannot encode task state")
        }
    }
}

fn task_batch(task: &Task) -> Result<Batch, cube_store::StoreError> {
    let mut batch = Batch::new();
    batch.put(Table::Tasks, task.id.to_string(), task)?;
    Ok(batch)
}

//! The worker's task table: accepts tasks, hands each to its own runner, and records every
//! observed change durably.
//!
//! **Invariant:** the in-memory table is the source of truth for reads; every change to it is
//! handed to the [`Store`] while the table lock is held (so the store sees changes in the same
//! order) and awaited after the lock is released (so a slow disk never blocks readers).
//! API answers are sent only after the change they report is durable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use cube_api::types::TaskCounts;
use cube_core::{DesiredState, NodeId, Resources, Task, TaskId, TaskSpec};
use cube_store::{Batch, Store, Table};
use jiff::Timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WorkerError;
use crate::driver::{Drivers, StartRequest};
use crate::runner;

/// The worker's tasks and what they need to run.
#[derive(Debug)]
pub struct Agent {
    node_id: NodeId,
    name: String,
    data_dir: PathBuf,
    pub(crate) drivers: Drivers,
    store: Arc<dyn Store>,
    tasks: Mutex<BTreeMap<TaskId, Entry>>,
    runners: TaskTracker,
    pub(crate) shutdown: CancellationToken,
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
            tasks: Mutex::new(BTreeMap::new()),
            runners: TaskTracker::new(),
            shutdown,
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

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TaskId, Entry>> {
        // Nothing panics while holding this lock except on bugs; the table is still consistent
        // entry by entry, so keep serving rather than poisoning the whole worker.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a task. With an id that is already known: the same spec is an idempotent repeat
    /// (`Ok((task, false))`, nothing started twice), a different spec is a conflict.
    pub async fn submit(
        self: &Arc<Self>,
        id: Option<TaskId>,
        spec: TaskSpec,
    ) -> Result<(Task, bool), WorkerError> {
        let id = id.unwrap_or_else(|| TaskId::from_uuid(uuid::Uuid::now_v7()));
        let now = Timestamp::now();
        let (task, commit) = {
            let mut tasks = self.lock();
            if let Some(existing) = tasks.get(&id) {
                return if existing.task.spec == spec {
                    Ok((existing.task.clone(), false))
                } else {
                    Err(WorkerError::Conflict(id))
                };
            }
            let mut task = Task::new(id, spec, now);
            task.node = Some(self.node_id);
            task.apply(
                cube_core::Trigger::Place,
                now,
                format!("accepted by node {}", self.name),
            )?;
            let commit = self.store.commit(task_batch(&task)?);
            let (control, control_rx) = watch::channel(DesiredState::Running);
            tasks.insert(
                id,
                Entry {
                    task: task.clone(),
                    control,
                },
            );
            self.runners
                .spawn(runner::run(Arc::clone(self), id, control_rx));
            (task, commit)
        };
        commit.await?;
        tracing::info!(task = %id, name = %task.spec.name, driver = %task.spec.driver, "task accepted");
        Ok((task, true))
    }

    /// Asks a task to stop. Stopping a finished task is a no-op that returns it as it is.
    pub async fn stop(&self, id: TaskId) -> Result<Task, WorkerError> {
        let now = Timestamp::now();
        let (task, commit) = {
            let mut tasks = self.lock();
            let entry = tasks.get_mut(&id).ok_or(WorkerError::NotFound(id))?;
            if entry.task.desired == DesiredState::Stopped || entry.task.state.is_terminal() {
                return Ok(entry.task.clone());
            }
            entry.task.desired = DesiredState::Stopped;
            entry.task.note(now, "stop requested");
            let commit = self.store.commit(task_batch(&entry.task)?);
            entry.control.send_replace(DesiredState::Stopped);
            (entry.task.clone(), commit)
        };
        commit.await?;
        tracing::info!(task = %id, "stop requested");
        Ok(task)
    }

    /// One task.
    pub fn get(&self, id: TaskId) -> Option<Task> {
        self.lock().get(&id).map(|e| e.task.clone())
    }

    /// All tasks, oldest first (ids are time-ordered).
    pub fn list(&self) -> Vec<Task> {
        self.lock().values().map(|e| e.task.clone()).collect()
    }

    /// Task counts by state and the resources reserved by tasks placed here and not finished.
    pub fn usage(&self) -> (TaskCounts, Resources) {
        let tasks = self.lock();
        let mut counts = TaskCounts::default();
        let mut reserved = Resources::default();
        for e in tasks.values() {
            counts.add(e.task.state);
            if e.task.state.is_active_on_node() {
                reserved = reserved.saturating_add(e.task.spec.resources);
            }
        }
        (counts, reserved)
    }

    /// Changes a task with `f` and persists it; returns what `f` returned, or `None` when the
    /// task is unknown. Store failures are logged: the workload's state is a fact either way.
    pub(crate) async fn update<R>(&self, id: TaskId, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let (result, commit) = {
            let mut tasks = self.lock();
            let entry = tasks.get_mut(&id)?;
            let result = f(&mut entry.task);
            let commit = task_batch(&entry.task).map(|b| self.store.commit(b));
            (result, commit)
        };
        match commit {
            Ok(commit) => {
                if let Err(e) = commit.await {
                    tracing::error!(task = %id, error = %e, "cannot persist task state");
                }
            }
            Err(e) => tracing::error!(task = %id, error = %e, "cannot encode task state"),
        }
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

    /// The file holding a task's output.
    pub fn log_path(&self, id: TaskId) -> PathBuf {
        self.data_dir
            .join("tasks")
            .join(id.to_string())
            .join("output.log")
    }

    /// Waits until every runner has returned (after `shutdown` was cancelled).
    pub async fn wait_runners(&self) {
        self.runners.close();
        self.runners.wait().await;
    }
}

fn task_batch(task: &Task) -> Result<Batch, cube_store::StoreError> {
    let mut batch = Batch::new();
    batch.put(Table::Tasks, task.id.to_string(), task)?;
    Ok(batch)
}

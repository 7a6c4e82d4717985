//! The worker's task table: every task it knows, with write-through persistence and dirty
//! tracking for the reporter.
//!
//! **Invariant:** the in-memory table is the source of truth for reads; every change to it is
//! handed to the [`Store`] while the table lock is held (so the store sees changes in the same
//! order) and awaited after the lock is released (so a slow disk never blocks readers).
//!
//! Every change also marks the task *dirty* and wakes the reporter, which pushes dirty tasks to
//! the manager at once instead of waiting for the next heartbeat. A runner reaches its own
//! entry only, through a [`TaskSlot`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cube_core::stats::TaskCounts;
use cube_core::{DesiredState, Note, Resources, Task, TaskId};
use cube_store::{Batch, Commit, Store, StoreError, Table};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

/// The tasks of this node.
#[derive(Debug)]
pub(crate) struct TaskTable {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    changed: Notify,
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

/// A record [`TaskTable::admit`] stored: start its runner with `control`, answer once
/// `commit` is done.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The record.
    pub task: Task,
    /// The runner's end of the desired-state channel.
    pub control: watch::Receiver<DesiredState>,
    /// The write, to await.
    pub commit: Commit,
}

impl TaskTable {
    /// An empty table over `store`.
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { store, inner: Mutex::new(Inner::default()), changed: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock except on bugs; the table is still consistent
        // entry by entry, so keep serving rather than poisoning the whole worker.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the record `decide` makes for `id`, shown (under the lock, so concurrent admits
    /// of one id are ordered) the record the id has now, if any; `decide` refuses with an error
    /// to keep that one. A stored record replaces any earlier one.
    pub(crate) fn admit<E: From<StoreError>>(
        &self,
        id: TaskId,
        decide: impl FnOnce(Option<&Task>) -> Result<Task, E>,
    ) -> Result<Admitted, E> {
        let admitted = {
            let mut inner = self.lock();
            let task = decide(inner.tasks.get(&id).map(|e| &e.task))?;
            let commit = self.store.commit(task_batch(&task)?);
            let (control, rx) = watch::channel(task.desired);
            inner.tasks.insert(id, Entry { task: task.clone(), control });
            inner.dirty.insert(id);
            Admitted { task, control: rx, commit }
        };
        self.changed.notify_one();
        Ok(admitted)
    }

    /// Asks task `id` to stop: records the request and tells its runner. `None` for an unknown
    /// task; the record and, when it changed, the write to await.
    pub(crate) fn request_stop(
        &self,
        id: TaskId,
        now: Timestamp,
        reason: &str,
    ) -> Result<Option<(Task, Option<Commit>)>, StoreError> {
        let result = {
            let mut inner = self.lock();
            let Some(entry) = inner.tasks.get_mut(&id) else { return Ok(None) };
            if entry.task.desired == DesiredState::Stopped || entry.task.state.is_terminal() {
                return Ok(Some((entry.task.clone(), None)));
            }
            entry.task.desired = DesiredState::Stopped;
            entry.task.note(now, Note::StopRequested, reason);
            let commit = self.store.commit(task_batch(&entry.task)?);
            entry.control.send_replace(DesiredState::Stopped);
            let task = entry.task.clone();
            inner.dirty.insert(id);
            (task, Some(commit))
        };
        self.changed.notify_one();
        Ok(Some(result))
    }

    /// One task.
    pub(crate) fn get(&self, id: TaskId) -> Option<Task> {
        self.lock().tasks.get(&id).map(|e| e.task.clone())
    }

    /// All tasks, oldest first (ids are time-ordered).
    pub(crate) fn list(&self) -> Vec<Task> {
        self.lock().tasks.values().map(|e| e.task.clone()).collect()
    }

    /// How many tasks are in each state.
    pub(crate) fn census(&self) -> Vec<(cube_core::TaskState, usize)> {
        let mut counts: Vec<(cube_core::TaskState, usize)> = Vec::new();
        for e in self.lock().tasks.values() {
            match counts.iter_mut().find(|(s, _)| *s == e.task.state) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.task.state, 1)),
            }
        }
        counts
    }

    /// Tasks that are not finished, with their generations.
    pub(crate) fn active(&self) -> Vec<(TaskId, u32)> {
        self.lock()
            .tasks
            .values()
            .filter(|e| !e.task.state.is_terminal())
            .map(|e| (e.task.id, e.task.generation))
            .collect()
    }

    /// Takes the tasks changed since the last call (the reporter sends them to the manager).
    pub(crate) fn take_dirty(&self) -> Vec<Task> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty.iter().filter_map(|id| inner.tasks.get(id).map(|e| e.task.clone())).collect()
    }

    /// Marks tasks changed again (their report did not reach the manager).
    pub(crate) fn mark_dirty(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.lock().dirty.extend(ids);
    }

    /// Resolves when some task changed since the last time it resolved.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Task counts by state and the resources reserved by tasks placed here and not finished.
    pub(crate) fn usage(&self) -> (TaskCounts, Resources) {
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

    /// Changes task `id` with `f` and persists it; returns what `f` returned, or `None` when the
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

    /// Forgets tasks that finished at or before `cutoff` and whose runners have returned, and,
    /// when `keep_unreported` is set, whose final state the manager has acknowledged. Returns
    /// them and the delete to await.
    pub(crate) fn forget(
        &self,
        cutoff: Timestamp,
        keep_unreported: bool,
    ) -> Option<(Vec<TaskId>, Commit)> {
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
            return None;
        }
        let mut batch = Batch::new();
        for id in &doomed {
            inner.tasks.remove(id);
            inner.dirty.remove(id);
            batch.delete(Table::Tasks, id.to_string());
        }
        Some((doomed, self.store.commit(batch)))
    }
}

/// One task's entry, as its runner sees it.
#[derive(Clone, Debug)]
pub(crate) struct TaskSlot {
    table: Arc<TaskTable>,
    id: TaskId,
}

impl TaskSlot {
    /// The slot of task `id`.
    pub(crate) fn new(table: Arc<TaskTable>, id: TaskId) -> Self {
        Self { table, id }
    }

    /// The task.
    pub(crate) fn id(&self) -> TaskId {
        self.id
    }

    /// The record, unless it was forgotten.
    pub(crate) fn get(&self) -> Option<Task> {
        self.table.get(self.id)
    }

    /// Changes the record with `f` and persists it (see [`TaskTable::update`]).
    pub(crate) async fn update<R>(&self, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        self.table.update(self.id, f).await
    }
}

async fn persist(id: TaskId, commit: Result<Commit, StoreError>) {
    match commit {
        Ok(commit) => {
            if let Err(e) = commit.await {
                tracing::error!(
                    task = %id,
                    error = %cube_core::Chain(&e),
                    "cannot persist task state"
                );
            }
        }
        Err(e) => {
            tracing::error!(task = %id, error = %cube_core::Chain(&e), "cannot encode task state")
        }
    }
}

fn task_batch(task: &Task) -> Result<Batch, StoreError> {
    let mut batch = Batch::new();
    batch.put(Table::Tasks, task.id.to_string(), task)?;
    Ok(batch)
}

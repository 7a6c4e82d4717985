//! Forgetting finished tasks after their retention.

use cube_core::TaskId;
use jiff::Timestamp;

use super::State;

impl State {
    /// Forgets up to `limit` tasks that finished at or before `cutoff` and returns them (the
    /// caller deletes their records). A finished task holds no resources on any node, so usage
    /// is unchanged; a worker still running a copy of a forgotten task is told to stop it by
    /// [`State::fence`], as for any task unknown here.
    pub fn collect_garbage(&mut self, cutoff: Timestamp, limit: usize) -> Vec<TaskId> {
        let doomed: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.finished_by(cutoff))
            .map(|t| t.id)
            .take(limit)
            .collect();
        for id in &doomed {
            if let Some(of) = self.tasks.get(id).and_then(|t| t.instance.as_ref())
                && let Some(entry) = self.services.get_mut(&of.service)
            {
                entry.instances.remove(id);
            }
            self.tasks.remove(id);
            self.pending.remove(id);
            self.fresh.remove(id);
            self.dispatching.remove(id);
        }
        doomed
    }
}

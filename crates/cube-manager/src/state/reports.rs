//! Merging what workers report: their history is replayed through the state machine, by the
//! triggers they recorded.

use cube_core::stats::NodeStats;
use cube_core::{
    DriverHandle, EventKind, HostPort, NodeId, Note, TaskEvent, TaskId, TaskState, Trigger,
    transition,
};
use jiff::Timestamp;

use super::{Effects, State, apply};

/// What a worker says about one of its tasks (the domain side of a reported `TaskView`,
/// converted at the manager's edge).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The task.
    pub id: TaskId,
    /// The placement generation the worker runs it under.
    pub generation: u32,
    /// Its state on the worker.
    pub state: TaskState,
    /// The worker's history of it, oldest first.
    pub events: Vec<TaskEvent>,
    /// How the worker finds the workload.
    pub handle: Option<DriverHandle>,
    /// Ports the workload publishes.
    pub host_ports: Vec<HostPort>,
    /// Exit code of its last run.
    pub exit_code: Option<i64>,
    /// Restarts on that worker so far.
    pub restart_count: u32,
    /// Latest health-check result.
    pub healthy: Option<bool>,
}

/// A copy of a task a worker runs (not finished there), with its placement generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveCopy {
    /// The task.
    pub id: TaskId,
    /// The generation the copy runs under.
    pub generation: u32,
}

/// A heartbeat as the rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Beat {
    /// Fresh host stats (periodic beats only).
    pub stats: Option<NodeStats>,
    /// Tasks that changed on the worker.
    pub reports: Vec<Report>,
    /// Every unfinished copy on the worker (periodic beats only), to fence against.
    pub active: Option<Vec<ActiveCopy>>,
    /// The node's ingress (periodic beats only).
    pub ingress: Option<cube_core::endpoints::IngressReport>,
}

impl State {
    /// Merges a worker's report of a task into the manager's record by replaying the worker's
    /// history through the state machine. Reports about copies that no longer count (another
    /// node, an older generation) are ignored; [`State::fence`] stops those copies.
    pub fn sync_report(&mut self, node: NodeId, r: &Report, now: Timestamp, effects: &mut Effects) {
        let Some(t) = self.tasks.get(&r.id) else { return };
        if t.node != Some(node) || t.generation != r.generation || t.state.is_terminal() {
            return;
        }
        let events = unsynced(&r.events, t.synced_until, t.synced_same);
        if events.is_empty() {
            return;
        }
        let name = self.node_name(node);
        let mut requeued = false;
        self.modify(r.id, effects, |t| {
            for e in events {
                if t.synced_until == Some(e.at) {
                    t.synced_same += 1;
                } else {
                    t.synced_until = Some(e.at);
                    t.synced_same = 1;
                }
                let trigger = match e.kind {
                    EventKind::Transition(trigger) if trigger.observed_on_node() => trigger,
                    // The worker's own acceptance of the placement the manager made.
                    EventKind::Transition(_) => continue,
                    EventKind::Note(note) => {
                        if mirrored(note) {
                            t.note_at(e.at, now, note, e.reason.clone());
                        }
                        continue;
                    }
                };
                if transition(t.state, trigger) == Ok(TaskState::Failed) && t.may_reschedule() {
                    t.reschedule_count += 1;
                    t.failed_nodes.push(node);
                    apply(
                        t,
                        Trigger::Requeue,
                        now,
                        format!("rescheduling after failing on {name}: {}", e.reason),
                    );
                    requeued = true;
                    return;
                }
                if let Err(err) = t.apply(trigger, e.at, e.reason.clone()) {
                    tracing::debug!(
                        task = %t.id,
                        error = %err,
                        "worker event does not apply; skipped"
                    );
                }
            }
            t.handle = r.handle.clone();
            t.host_ports = r.host_ports.clone();
            t.exit_code = r.exit_code;
            t.restart_count = r.restart_count;
            t.healthy = r.healthy;
        });
        let finished = self.tasks.get(&r.id).is_some_and(|t| !t.state.is_active_on_node());
        if requeued || finished {
            self.capacity_changed(effects);
        }
    }
}

/// The entries of a worker's history not merged yet, oldest first: those after `until`, and of
/// those stamped exactly `until`, all but the first `same` (already merged).
fn unsynced(events: &[TaskEvent], until: Option<Timestamp>, same: u32) -> Vec<&TaskEvent> {
    let mut sorted: Vec<&TaskEvent> = events.iter().collect();
    // Stable: entries sharing a timestamp keep their order.
    sorted.sort_by_key(|e| e.at);
    let Some(until) = until else { return sorted };
    let mut skipped = 0;
    sorted.retain(|e| {
        if e.at > until {
            return true;
        }
        if e.at == until && skipped >= same {
            return true;
        }
        if e.at == until {
            skipped += 1;
        }
        false
    });
    sorted
}

/// Whether the manager copies a worker's note into its own history. Submission and stop
/// requests it records itself, when they happen here.
fn mirrored(note: Note) -> bool {
    match note {
        Note::Submitted | Note::StopRequested => false,
        Note::HealthPassing
        | Note::Unhealthy
        | Note::RestartScheduled
        | Note::Readopted
        | Note::Unplaceable
        | Note::Other => true,
    }
}

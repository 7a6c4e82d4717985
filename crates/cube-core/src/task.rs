//! A task record: its spec, desired and observed state, where and how it runs, and its history.
//!
//! All changes of observed state go through [`Task::apply`], which asks the state machine first,
//! so a record can only ever hold a state reachable by valid moves, and every move is logged in
//! [`Task::events`] with its trigger, time, node and reason. The clock is a parameter, never
//! read here.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Note, TaskEvent};
use crate::ids::{NodeId, TaskId};
use crate::scheduler::Explanation;
use crate::spec::{Protocol, RestartMode, TaskSpec};
use crate::state::{DesiredState, InvalidTransition, TaskState, Trigger, transition};

/// At most this many history entries are kept per task; older ones are dropped (the first,
/// "submitted", entry is always kept) so a crash-looping task cannot grow without bound.
pub const MAX_EVENTS: usize = 100;

/// One task as a node or the manager knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Task {
    /// Stable id.
    pub id: TaskId,
    /// What to run.
    pub spec: TaskSpec,
    /// What was asked for.
    pub desired: DesiredState,
    /// What is observed.
    pub state: TaskState,
    /// The node it is placed on, if any.
    pub node: Option<NodeId>,
    /// How to find the running workload again (container id or pid).
    pub handle: Option<DriverHandle>,
    /// Host ports published for the task (docker driver).
    pub host_ports: Vec<HostPort>,
    /// Exit code of the last run, when it exited.
    pub exit_code: Option<i64>,
    /// Why the task is in its state (last error, exit reason, why it is pending).
    pub reason: Option<String>,
    /// Restarts on the current node so far.
    pub restart_count: u32,
    /// When the task was accepted.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// When the workload last started running.
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub started_at: Option<Timestamp>,
    /// When the task reached a terminal state.
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub finished_at: Option<Timestamp>,
    /// When anything in the record last changed.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// History of transitions and notable happenings, oldest first.
    pub events: Vec<TaskEvent>,
    /// Placement generation: incremented each time the manager places the task, so a worker
    /// can tell a new placement from a repeat of an old one.
    #[serde(default)]
    pub generation: u32,
    /// Why the task is where it is (or why it is not placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Explanation>,
    /// Times the manager moved the task to another node after its restarts ran out.
    #[serde(default)]
    pub reschedule_count: u32,
    /// Nodes where the task used up its restarts (avoided when placing it again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<NodeId>,
    /// Result of the latest health check: `None` until one has run (or without a check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Manager bookkeeping: time of the last worker history entry already merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub synced_until: Option<Timestamp>,
    /// Manager bookkeeping: how many worker entries stamped exactly `synced_until` are merged
    /// (several can share a timestamp, and a report may end between them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub synced_same: u32,
    /// The service, version and slot this task is an instance of (`None`: a bare task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceOf>,
    /// The instance that took this one's slot when it was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<TaskId>,
}

/// What makes a task an instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceOf {
    /// The service's name.
    pub service: String,
    /// The service version whose template it runs.
    pub version: u64,
    /// Its slot, `0..count`.
    pub slot: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Enough to find a running workload again after the agent restarts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DriverHandle {
    /// A Docker container.
    Container {
        /// Full container id.
        id: String,
    },
    /// A host process.
    Process {
        /// Process id (also its process group id).
        pid: u32,
        /// Start time in clock ticks after boot (from `/proc/<pid>/stat`), so a recycled pid is
        /// not mistaken for our process.
        start_ticks: u64,
    },
}

impl DriverHandle {
    /// A short human form: the first 12 hex digits of a container id, or `pid 1234`.
    pub fn short(&self) -> String {
        match self {
            DriverHandle::Container { id } => id.chars().take(12).collect(),
            DriverHandle::Process { pid, .. } => format!("pid {pid}"),
        }
    }
}

/// A published port as bound on the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostPort {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the host.
    pub host_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Host address the port is bound to (`0.0.0.0` = all).
    pub host_ip: String,
}

impl Task {
    /// A new task in state `pending`, desired `running`.
    pub fn new(id: TaskId, spec: TaskSpec, now: Timestamp) -> Self {
        Self {
            id,
            spec,
            desired: DesiredState::Running,
            state: TaskState::Pending,
            node: None,
            handle: None,
            host_ports: Vec::new(),
            exit_code: None,
            reason: None,
            restart_count: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            events: vec![TaskEvent {
                at: now,
                from: TaskState::Pending,
                to: TaskState::Pending,
                node: None,
                kind: EventKind::Note(Note::Submitted),
                reason: "submitted".into(),
            }],
            generation: 0,
            placement: None,
            reschedule_count: 0,
            failed_nodes: Vec::new(),
            healthy: None,
            synced_until: None,
            synced_same: 0,
            instance: None,
            replaced_by: None,
        }
    }

    /// Applies a trigger through the state machine, records it in the history and keeps the
    /// timestamps in step. On error nothing changes.
    pub fn apply(
        &mut self,
        trigger: Trigger,
        now: Timestamp,
        reason: impl Into<String>,
    ) -> Result<TaskState, InvalidTransition> {
        let from = self.state;
        let to = transition(from, trigger)?;
        let reason = reason.into();
        let node = self.node;
        self.state = to;
        self.updated_at = now;
        match to {
            TaskState::Running => {
                self.started_at = Some(now);
                self.exit_code = None;
                self.reason = None;
            }
            TaskState::Completed | TaskState::Failed => {
                self.finished_at = Some(now);
                self.reason = Some(reason.clone());
                // Nothing listens on them any more; the handle stays, for the history.
                self.host_ports.clear();
            }
            TaskState::Restarting => {
                self.reason = Some(reason.clone());
                self.host_ports.clear();
            }
            TaskState::Pending | TaskState::Scheduled => {
                self.reason = Some(reason.clone());
            }
        }
        if to == TaskState::Pending {
            // A requeued task starts afresh on its next node.
            self.node = None;
            self.handle = None;
            self.host_ports.clear();
            self.restart_count = 0;
            self.healthy = None;
            self.synced_until = None;
            self.synced_same = 0;
        }
        let kind = EventKind::Transition(trigger);
        self.push_event(TaskEvent { at: now, from, to, node, kind, reason });
        Ok(to)
    }

    /// Records something notable that does not change the state (a health change, a stop
    /// request, a restart delay), with `reason` in words.
    pub fn note(&mut self, now: Timestamp, note: Note, reason: impl Into<String>) {
        self.note_at(now, now, note, reason);
    }

    /// Records a note that happened at `at` (e.g. on a worker), changing the record at `now`.
    pub fn note_at(
        &mut self,
        at: Timestamp,
        now: Timestamp,
        note: Note,
        reason: impl Into<String>,
    ) {
        self.updated_at = now;
        self.push_event(TaskEvent {
            at,
            from: self.state,
            to: self.state,
            node: self.node,
            kind: EventKind::Note(note),
            reason: reason.into(),
        });
    }

    fn push_event(&mut self, event: TaskEvent) {
        if self.events.len() >= MAX_EVENTS {
            // Keep the first entry (submission) and drop the oldest after it.
            self.events.remove(1);
        }
        self.events.push(event);
    }

    /// Whether the restart policy allows another attempt after an exit (`success` = status 0)
    /// given the restarts already made on this node.
    pub fn should_restart(&self, success: bool) -> bool {
        let policy = &self.spec.restart;
        let wanted = match policy.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => !success,
            RestartMode::Always => true,
        };
        wanted && self.desired == DesiredState::Running && self.restart_count < policy.max_attempts
    }

    /// Whether the manager may move the task to another node now that its restarts on this
    /// node are used up.
    pub fn may_reschedule(&self) -> bool {
        // A service instance is replaced by a new task in its slot instead, so the old one keeps
        // its own history.
        self.instance.is_none()
            && self.spec.restart.mode != RestartMode::Never
            && self.desired == DesiredState::Running
            && self.reschedule_count < self.spec.restart.reschedule_attempts
    }

    /// Whether the task finished (completed or failed) at or before `cutoff`, so that garbage
    /// collection may forget it. Active tasks are never collectable, however old.
    pub fn finished_by(&self, cutoff: Timestamp) -> bool {
        self.state.is_terminal() && self.finished_at.unwrap_or(self.updated_at) <= cutoff
    }

    /// Delay before the next restart: the initial backoff doubled per restart already made,
    /// capped at the maximum.
    pub fn restart_delay(&self) -> Duration {
        let policy = &self.spec.restart;
        let factor = 1u32.checked_shl(self.restart_count).unwrap_or(u32::MAX);
        policy
            .initial_backoff
            .checked_mul(factor)
            .map_or(policy.max_backoff, |d| d.min(policy.max_backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DriverKind, RestartPolicy};
    use uuid::Uuid;

    fn spec(mode: RestartMode) -> TaskSpec {
        TaskSpec {
            name: "t".into(),
            driver: DriverKind::Process,
            image: None,
            command: Some("sleep".into()),
            args: vec!["1".into()],
            env: Default::default(),
            workdir: None,
            resources: Default::default(),
            ports: vec![],
            restart: RestartPolicy {
                mode,
                max_attempts: 3,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(5),
                reschedule_attempts: 1,
            },
            health: None,
            constraints: vec![],
            stop_grace: Duration::from_secs(1),
            on_disconnect: Default::default(),
            user: None,
            read_only_rootfs: false,
            cap_drop: vec![],
            cap_add: vec![],
            privileged: false,
            mounts: vec![],
            network: Default::default(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn task(mode: RestartMode) -> Task {
        Task::new(TaskId::from_uuid(Uuid::nil()), spec(mode), at(0))
    }

    #[test]
    fn only_tasks_finished_by_the_cutoff_are_collectable() {
        let mut t = task(RestartMode::Never);
        t.apply(Trigger::Place, at(1), "placed").unwrap();
        t.apply(Trigger::Started, at(2), "started").unwrap();
        assert!(!t.finished_by(at(1_000)), "a running task is never collectable");
        t.apply(Trigger::Exited { success: true, retry: false }, at(10), "exit code 0").unwrap();
        t.note(at(20), Note::Other, "a later note does not make it younger");
        assert!(!t.finished_by(at(9)));
        assert!(t.finished_by(at(10)));
        assert!(t.finished_by(at(11)));
    }

    #[test]
    fn apply_records_history_and_timestamps() {
        let mut t = task(RestartMode::Never);
        t.apply(Trigger::Place, at(1), "placed").unwrap();
        t.apply(Trigger::Started, at(2), "started").unwrap();
        t.host_ports = vec![HostPort {
            container_port: 80,
            host_port: 32768,
            protocol: crate::Protocol::Tcp,
            host_ip: "0.0.0.0".into(),
        }];
        t.apply(Trigger::Exited { success: false, retry: false }, at(3), "exit code 3").unwrap();
        assert!(t.host_ports.is_empty(), "a finished task publishes nothing");
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.started_at, Some(at(2)));
        assert_eq!(t.finished_at, Some(at(3)));
        assert_eq!(t.reason.as_deref(), Some("exit code 3"));
        let moves: Vec<(TaskState, TaskState)> = t.events.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(
            moves,
            [
                (TaskState::Pending, TaskState::Pending),
                (TaskState::Pending, TaskState::Scheduled),
                (TaskState::Scheduled, TaskState::Running),
                (TaskState::Running, TaskState::Failed),
            ]
        );
    }

    #[test]
    fn invalid_triggers_change_nothing() {
        let mut t = task(RestartMode::Never);
        let before = t.clone();
        assert!(t.apply(Trigger::Started, at(1), "too early").is_err());
        assert_eq!(t, before);
    }

    #[test]
    fn restart_policy_decisions() {
        let never = task(RestartMode::Never);
        assert!(!never.should_restart(false));
        let mut on_failure = task(RestartMode::OnFailure);
        assert!(on_failure.should_restart(false));
        assert!(!on_failure.should_restart(true));
        on_failure.restart_count = 3;
        assert!(!on_failure.should_restart(false), "attempts exhausted");
        let mut always = task(RestartMode::Always);
        assert!(always.should_restart(true));
        always.desired = DesiredState::Stopped;
        assert!(!always.should_restart(true), "a stop request wins");
    }

    #[test]
    fn restart_delay_doubles_and_caps() {
        let mut t = task(RestartMode::OnFailure);
        let delays: Vec<u64> = (0..6)
            .map(|n| {
                t.restart_count = n;
                t.restart_delay().as_secs()
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
        t.restart_count = 40;
        assert_eq!(t.restart_delay(), Duration::from_secs(5), "no overflow");
    }

    #[test]
    fn history_is_bounded_and_keeps_the_first_entry() {
        let mut t = task(RestartMode::Always);
        for i in 0..(MAX_EVENTS as i64 * 2) {
            t.note(at(i), Note::Other, format!("note {i}"));
        }
        assert_eq!(t.events.len(), MAX_EVENTS);
        assert_eq!(t.events[0].reason, "submitted");
        assert_eq!(t.events.last().unwrap().reason, format!("note {}", MAX_EVENTS * 2 - 1));
    }

    #[test]
    fn requeue_clears_placement() {
        let mut t = task(RestartMode::Never);
        t.node = Some(NodeId::from_uuid(Uuid::nil()));
        t.apply(Trigger::Place, at(1), "placed").unwrap();
        t.handle = Some(DriverHandle::Process { pid: 7, start_ticks: 1 });
        t.restart_count = 2;
        t.apply(Trigger::Requeue, at(2), "node lost").unwrap();
        assert_eq!((t.node, t.handle.as_ref(), t.restart_count), (None, None, 0));
    }
}

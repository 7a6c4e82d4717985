//! A task's history: what happened to it, as a type, with the words for people beside it.
//!
//! Every entry says *what* happened as an [`EventKind`]: either the [`Trigger`] of a state
//! transition, exactly as it was applied, or a [`Note`] that changes no state. The `reason` is
//! free text for people and never decides anything. So a manager replays a worker's history by
//! applying the worker's own triggers through the one `transition` function, and rewording a
//! message changes nobody's behaviour.
//!
//! On the wire and in the store an entry reads
//! `{"at": …, "from": "running", "to": "restarting", "node": …, "kind": "exited",
//! "success": false, "retry": true, "reason": "exited with code 1"}`; `success` and `retry`
//! appear only with the kinds whose trigger carries them. Records written before kinds existed
//! have no `kind`: a transition's trigger is then recovered from its states (the only
//! information those records hold), and a note reads as [`Note::Other`].

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::NodeId;
use crate::state::{TaskState, Trigger};

/// One entry of a task's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// When it happened.
    pub at: Timestamp,
    /// State before (equal to `to` for notes).
    pub from: TaskState,
    /// State after.
    pub to: TaskState,
    /// Node involved, if any.
    pub node: Option<NodeId>,
    /// What happened.
    pub kind: EventKind,
    /// What happened, in words (for people only).
    pub reason: String,
}

/// What a history entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A state transition, with the trigger that caused it.
    Transition(Trigger),
    /// Something notable that changes no state.
    Note(Note),
}

/// Notable happenings that are not transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// The task was accepted (the first entry of every history).
    Submitted,
    /// Someone asked for the task to stop.
    StopRequested,
    /// The health check passes (again).
    HealthPassing,
    /// The health check failed often enough that the workload counts as unhealthy.
    Unhealthy,
    /// The workload ended and will be started again after a delay.
    RestartScheduled,
    /// A restarted worker found the workload still running and watches it again.
    Readopted,
    /// No node can take the task now.
    Unplaceable,
    /// A note whose kind was not recorded (written before kinds existed).
    Other,
}

/// Every note, for exhaustive tests.
pub const ALL_NOTES: [Note; 8] = [
    Note::Submitted,
    Note::StopRequested,
    Note::HealthPassing,
    Note::Unhealthy,
    Note::RestartScheduled,
    Note::Readopted,
    Note::Unplaceable,
    Note::Other,
];

impl TaskEvent {
    /// The trigger, when the entry is a transition.
    pub fn trigger(&self) -> Option<Trigger> {
        match self.kind {
            EventKind::Transition(t) => Some(t),
            EventKind::Note(_) => None,
        }
    }
}

/// The `kind` field's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "TaskEventKind")]
enum KindName {
    Placed,
    Started,
    StartFailed,
    Exited,
    Stopped,
    Requeued,
    Lost,
    Submitted,
    StopRequested,
    HealthPassing,
    Unhealthy,
    RestartScheduled,
    Readopted,
    Unplaceable,
    /// Also what a kind this version does not know (written by a newer one) reads as.
    #[serde(other)]
    Note,
}

/// The flat form stored and sent: `kind` plus the trigger's decisions, when it has any.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Flat<R> {
    #[schemars(with = "crate::schema::Rfc3339")]
    at: Timestamp,
    from: TaskState,
    to: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<KindName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<bool>,
    reason: R,
}

impl EventKind {
    fn flat(self) -> (KindName, Option<bool>, Option<bool>) {
        use Trigger as T;
        match self {
            EventKind::Transition(T::Place) => (KindName::Placed, None, None),
            EventKind::Transition(T::Started) => (KindName::Started, None, None),
            EventKind::Transition(T::StartFailed { retry }) => {
                (KindName::StartFailed, None, Some(retry))
            }
            EventKind::Transition(T::Exited { success, retry }) => {
                (KindName::Exited, Some(success), Some(retry))
            }
            EventKind::Transition(T::Stopped) => (KindName::Stopped, None, None),
            EventKind::Transition(T::Requeue) => (KindName::Requeued, None, None),
            EventKind::Transition(T::Lost) => (KindName::Lost, None, None),
            EventKind::Note(Note::Submitted) => (KindName::Submitted, None, None),
            EventKind::Note(Note::StopRequested) => (KindName::StopRequested, None, None),
            EventKind::Note(Note::HealthPassing) => (KindName::HealthPassing, None, None),
            EventKind::Note(Note::Unhealthy) => (KindName::Unhealthy, None, None),
            EventKind::Note(Note::RestartScheduled) => (KindName::RestartScheduled, None, None),
            EventKind::Note(Note::Readopted) => (KindName::Readopted, None, None),
            EventKind::Note(Note::Unplaceable) => (KindName::Unplaceable, None, None),
            EventKind::Note(Note::Other) => (KindName::Note, None, None),
        }
    }

    /// The kind of a stored entry. `to` stands in for a decision the entry did not record (a
    /// retry leads to `restarting`).
    fn from_flat(
        name: KindName,
        success: Option<bool>,
        retry: Option<bool>,
        to: TaskState,
    ) -> Self {
        let retry = retry.unwrap_or(to == TaskState::Restarting);
        match name {
            KindName::Placed => EventKind::Transition(Trigger::Place),
            KindName::Started => EventKind::Transition(Trigger::Started),
            KindName::StartFailed => EventKind::Transition(Trigger::StartFailed { retry }),
            KindName::Exited => EventKind::Transition(Trigger::Exited {
                success: success.unwrap_or(to == TaskState::Completed),
                retry,
            }),
            KindName::Stopped => EventKind::Transition(Trigger::Stopped),
            KindName::Requeued => EventKind::Transition(Trigger::Requeue),
            KindName::Lost => EventKind::Transition(Trigger::Lost),
            KindName::Submitted => EventKind::Note(Note::Submitted),
            KindName::StopRequested => EventKind::Note(Note::StopRequested),
            KindName::HealthPassing => EventKind::Note(Note::HealthPassing),
            KindName::Unhealthy => EventKind::Note(Note::Unhealthy),
            KindName::RestartScheduled => EventKind::Note(Note::RestartScheduled),
            KindName::Readopted => EventKind::Note(Note::Readopted),
            KindName::Unplaceable => EventKind::Note(Note::Unplaceable),
            KindName::Note => EventKind::Note(Note::Other),
        }
    }

    /// The kind of an entry written before kinds were recorded: a transition's trigger follows
    /// from its two states (the only thing such an entry holds besides its text, which decides
    /// nothing); an entry that changed no state is a note.
    fn legacy(from: TaskState, to: TaskState) -> Self {
        use TaskState as S;
        let trigger = match (from, to) {
            _ if from == to => return EventKind::Note(Note::Other),
            (_, S::Scheduled) => Trigger::Place,
            (_, S::Running) => Trigger::Started,
            (S::Running, S::Restarting) => Trigger::Exited { success: false, retry: true },
            (_, S::Restarting) => Trigger::StartFailed { retry: true },
            (S::Running, S::Failed) => Trigger::Exited { success: false, retry: false },
            (_, S::Failed) => Trigger::StartFailed { retry: false },
            // A run that ended by itself and one stopped on request both complete; either
            // trigger reaches the same state.
            (S::Running, S::Completed) => Trigger::Exited { success: true, retry: false },
            (_, S::Completed) => Trigger::Stopped,
            (_, S::Pending) => Trigger::Requeue,
        };
        EventKind::Transition(trigger)
    }
}

/// Written in its flat form.
impl schemars::JsonSchema for TaskEvent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TaskEvent".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Flat::<String>::json_schema(generator)
    }
}

impl Serialize for TaskEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (kind, success, retry) = self.kind.flat();
        Flat {
            at: self.at,
            from: self.from,
            to: self.to,
            node: self.node,
            kind: Some(kind),
            success,
            retry,
            reason: self.reason.as_str(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flat = Flat::<String>::deserialize(deserializer)?;
        let kind = match flat.kind {
            Some(name) => EventKind::from_flat(name, flat.success, flat.retry, flat.to),
            None => EventKind::legacy(flat.from, flat.to),
        };
        Ok(TaskEvent {
            at: flat.at,
            from: flat.from,
            to: flat.to,
            node: flat.node,
            kind,
            reason: flat.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ALL_TRIGGERS, transition};
    use strum::VariantArray;

    fn event(from: TaskState, to: TaskState, kind: EventKind) -> TaskEvent {
        TaskEvent {
            at: Timestamp::from_second(1_800_000_000).unwrap(),
            from,
            to,
            node: None,
            kind,
            reason: "words".into(),
        }
    }

    #[test]
    fn every_kind_round_trips_through_json() {
        let mut kinds: Vec<EventKind> =
            ALL_TRIGGERS.into_iter().map(EventKind::Transition).collect();
        kinds.extend(ALL_NOTES.into_iter().map(EventKind::Note));
        for &from in TaskState::VARIANTS {
            for kind in &kinds {
                let to = match kind {
                    EventKind::Transition(t) => match transition(from, *t) {
                        Ok(to) => to,
                        Err(_) => continue,
                    },
                    EventKind::Note(_) => from,
                };
                let e = event(from, to, *kind);
                let json = serde_json::to_string(&e).unwrap();
                assert_eq!(serde_json::from_str::<TaskEvent>(&json).unwrap(), e, "{json}");
            }
        }
    }

    #[test]
    fn the_json_names_the_kind_and_the_trigger_decisions() {
        let e = event(
            TaskState::Running,
            TaskState::Restarting,
            EventKind::Transition(Trigger::Exited { success: false, retry: true }),
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"at": "2027-01-15T08:00:00Z", "from": "running", "to": "restarting",
                "kind": "exited", "success": false, "retry": true, "reason": "words"})
        );
        let note = event(TaskState::Running, TaskState::Running, EventKind::Note(Note::Readopted));
        assert_eq!(serde_json::to_value(&note).unwrap()["kind"], "readopted");
    }

    #[test]
    fn entries_without_a_kind_get_the_trigger_their_states_imply() {
        // Every move the table allows, written as an entry of an earlier version: the recovered
        // trigger must make the same move.
        for &from in TaskState::VARIANTS {
            for trigger in ALL_TRIGGERS {
                let Ok(to) = transition(from, trigger) else { continue };
                if from == to {
                    // Such an entry cannot be told from a note; either leaves the state as it is.
                    continue;
                }
                let json = serde_json::json!({"at": "2027-01-15T08:00:00Z", "from": from,
                    "to": to, "reason": "exited with code 1"});
                let e: TaskEvent = serde_json::from_value(json).unwrap();
                let recovered = e.trigger().unwrap_or_else(|| panic!("{from} -> {to} is a move"));
                assert_eq!(transition(from, recovered), Ok(to), "{from} + {trigger:?}");
            }
        }
        let json = serde_json::json!({"at": "2027-01-15T08:00:00Z", "from": "running",
            "to": "running", "reason": "health check passing"});
        let e: TaskEvent = serde_json::from_value(json).unwrap();
        assert_eq!(e.kind, EventKind::Note(Note::Other), "the text decides nothing");
    }

    #[test]
    fn a_kind_from_a_newer_version_reads_as_a_note() {
        let json = serde_json::json!({"at": "2027-01-15T08:00:00Z", "from": "running",
            "to": "running", "kind": "teleported", "reason": "?"});
        let e: TaskEvent = serde_json::from_value(json).unwrap();
        assert_eq!(e.kind, EventKind::Note(Note::Other));
    }
}

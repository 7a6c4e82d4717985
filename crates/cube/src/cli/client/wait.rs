//! `--wait`: follows a task on the manager's event stream until it gets where the user wants
//! it or never will, with a spinner on a terminal. Nothing is polled: the answer to the submit
//! (or the stop) says from which index the task's events come, a dropped stream is resumed
//! from the last one seen, and the full record is read once at the end.

use std::io::IsTerminal;
use std::time::Duration;

use cube_api::events::{EventObject, TaskSummary};
use cube_api::types::TaskView;
use cube_core::{DesiredState, TaskState};
use indicatif::{ProgressBar, ProgressStyle};
use jiff::Timestamp;
use tokio::time::Instant;

use super::api::Api;
use super::follow::Follower;

/// A task without a health check counts as running once it has stayed up this long, so a task
/// that crashes at once is not reported as started.
pub(super) const STABLE: Duration = Duration::from_secs(1);
/// How long a task may wait for a node before `--wait` reads why.
const UNPLACED: Duration = Duration::from_secs(1);

/// What to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Goal {
    /// Running (and healthy, if it has a health check), or finished with exit code 0.
    Running,
    /// Finished: `completed` or `failed`.
    Stopped,
}

/// How a wait ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The task got there.
    Reached(TaskView),
    /// The task cannot get there any more; why.
    Failed(TaskView, String),
    /// The deadline passed first; the task as last seen and a description.
    TimedOut(Option<TaskView>, String),
}

/// Exit code of a `--wait` that did not end well.
pub(super) const WAIT_FAILED: u8 = 3;

/// Ends a wait that did not reach its goal: the task as JSON (when asked for and known), one
/// error line, exit code [`WAIT_FAILED`].
pub(super) fn unreached(
    output: crate::cli::Output,
    task: Option<&TaskView>,
    line: &str,
) -> anyhow::Result<std::process::ExitCode> {
    if let (crate::cli::Output::Json, Some(task)) = (output, task) {
        super::format::emit_json(task)?;
    }
    super::format::error_line(line);
    Ok(std::process::ExitCode::from(WAIT_FAILED))
}

/// Follows `task` (as the submit or stop answered it, with the index its events follow) until
/// `goal` is reached, cannot be reached, or `timeout` passes.
pub(super) async fn wait(
    api: &Api,
    task: TaskView,
    index: u64,
    goal: Goal,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let spinner = Spinner::new();
    let deadline = Instant::now() + timeout;
    let id = task.id;
    let mut follower = Follower::new(api, index, vec![format!("Task:{id}")]);
    let mut view = task;
    // Since when the task has been seen running, for this start of it.
    let mut up_since: Option<(Option<Timestamp>, Instant)> = None;
    // Why a waiting task has no node is worked out anew on every placement pass and never
    // stored, so no event carries it: a task still waiting a while after its last event is
    // read once to say why (once per event, so this is no polling).
    let mut explain_at = Some(Instant::now() + UNPLACED);
    loop {
        spinner.show(&progress(&view));
        if let Some(outcome) = judge(&view, goal, &mut up_since) {
            spinner.clear();
            return Ok(finished(api, outcome).await);
        }
        // Woken by the next event, when a task seen running has stayed up long enough, or
        // when a waiting task should say why.
        let mut until = match up_since {
            Some((_, since)) => deadline.min(since + STABLE),
            None => deadline,
        };
        let unplaced =
            view.state == TaskState::Pending && view.desired_state == DesiredState::Running;
        if let Some(at) = explain_at.filter(|_| unplaced) {
            until = until.min(at);
        }
        let trouble = |why: &str| spinner.show(why);
        match follower.next(Some(until), &trouble).await? {
            Some(event) => match event.object {
                EventObject::Task(Some(summary)) if summary.updated_at >= view.updated_at => {
                    apply(&mut view, &summary);
                    explain_at = Some(Instant::now() + UNPLACED);
                }
                EventObject::Task(None) => {
                    spinner.clear();
                    let why = format!("task {id} was forgotten (its retention ended)");
                    return Ok(Outcome::Failed(view, why));
                }
                _ => {}
            },
            None if Instant::now() >= deadline => {
                spinner.clear();
                let what = match goal {
                    Goal::Running => "to run",
                    Goal::Stopped => "to stop",
                };
                let why = format!(
                    "gave up after {} waiting for task {id} {what}: it is {}",
                    cube_core::units::format_duration(timeout),
                    progress(&view)
                );
                return Ok(Outcome::TimedOut(Some(view), why));
            }
            None if unplaced && explain_at.is_some_and(|at| Instant::now() >= at) => {
                explain_at = None;
                if let Ok(fresh) = api.task(id).await {
                    view = fresh;
                }
            }
            None => {}
        }
    }
}

/// The outcome with the task's full record (its history included), read once now.
async fn finished(api: &Api, outcome: Outcome) -> Outcome {
    let fresh = |seen: TaskView| async move { api.task(seen.id).await.unwrap_or(seen) };
    match outcome {
        Outcome::Reached(t) => Outcome::Reached(fresh(t).await),
        Outcome::Failed(t, why) => Outcome::Failed(fresh(t).await, why),
        timed_out @ Outcome::TimedOut(..) => timed_out,
    }
}

/// Takes what an event says about the task into the view the wait judges.
fn apply(view: &mut TaskView, s: &TaskSummary) {
    view.state = s.state;
    view.desired_state = s.desired_state;
    view.node = s.node;
    view.generation = s.generation;
    view.healthy = s.healthy;
    view.host_ports.clone_from(&s.host_ports);
    view.exit_code = s.exit_code;
    view.reason.clone_from(&s.reason);
    view.restart_count = s.restart_count;
    view.started_at = s.started_at;
    view.updated_at = s.updated_at;
    if let Some(e) = &s.last_event {
        view.events.push(e.clone());
    }
}

/// Decides whether the wait is over.
fn judge(
    task: &TaskView,
    goal: Goal,
    up_since: &mut Option<(Option<Timestamp>, Instant)>,
) -> Option<Outcome> {
    match goal {
        Goal::Stopped => task.state.is_terminal().then(|| Outcome::Reached(task.clone())),
        Goal::Running => match task.state {
            TaskState::Running => {
                if task.spec.health.is_some() {
                    return (task.healthy == Some(true)).then(|| Outcome::Reached(task.clone()));
                }
                let since = match up_since {
                    Some((started, since)) if *started == task.started_at => *since,
                    _ => {
                        let now = Instant::now();
                        *up_since = Some((task.started_at, now));
                        now
                    }
                };
                (since.elapsed() >= STABLE).then(|| Outcome::Reached(task.clone()))
            }
            TaskState::Completed
                if task.desired_state == DesiredState::Running && task.exit_code == Some(0) =>
            {
                Some(Outcome::Reached(task.clone()))
            }
            TaskState::Completed => {
                let why = if task.desired_state == DesiredState::Stopped {
                    "it was stopped".to_owned()
                } else {
                    ended(task)
                };
                Some(Outcome::Failed(task.clone(), why))
            }
            TaskState::Failed => Some(Outcome::Failed(task.clone(), ended(task))),
            TaskState::Pending | TaskState::Scheduled | TaskState::Restarting => {
                *up_since = None;
                None
            }
        },
    }
}

/// Why a task ended: its reason and exit code.
fn ended(task: &TaskView) -> String {
    let mut why = task.reason.clone().unwrap_or_else(|| task.state.to_string());
    if let Some(code) = task.exit_code
        && !why.contains("exit")
    {
        why.push_str(&format!(" (exit code {code})"));
    }
    let restarts = task.restart_count;
    if restarts > 0 {
        why.push_str(&format!(
            ", after {restarts} restart{}",
            if restarts == 1 { "" } else { "s" }
        ));
    }
    why
}

/// What the task is doing, for the spinner: `pending: no node fits: ...`.
fn progress(task: &TaskView) -> String {
    let mut text = format!("{} ({}) {}", task.id.short(), task.name, task.state);
    let detail = match task.state {
        TaskState::Pending => task
            .placement
            .as_ref()
            .filter(|p| p.chosen.is_none())
            .map(cube_core::Explanation::unplaceable_reason)
            .or_else(|| task.reason.clone()),
        TaskState::Running if task.spec.health.is_some() => Some(match task.healthy {
            Some(true) => "healthy".to_owned(),
            Some(false) => "unhealthy".to_owned(),
            None => "waiting for the first health check".to_owned(),
        }),
        TaskState::Restarting => Some(format!(
            "after {} restart{}: {}",
            task.restart_count,
            if task.restart_count == 1 { "" } else { "s" },
            task.reason.clone().unwrap_or_default()
        )),
        _ => task.reason.clone(),
    };
    if let Some(detail) = detail.filter(|d| !d.is_empty()) {
        text.push_str(": ");
        text.push_str(&super::format::truncate(&detail, 100));
    }
    text
}

/// A spinner with a message on stderr, only when stderr is a terminal.
pub(super) struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub(super) fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::default_spinner().template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(bar))
    }

    pub(super) fn show(&self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_owned());
        }
    }

    pub(super) fn clear(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }

    /// Prints `line` on stderr, above the spinner when there is one.
    #[allow(clippy::print_stderr)]
    pub(super) fn line(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

//! The rollout planner: what to do next for one service, given its instances as they are.
//!
//! The caller (the manager) describes the target ([`Target`]: version, count, strategy), the
//! deployment rolling it out, if any ([`Rollout`]), and every instance ([`Instance`]: slot,
//! whether its template is the target's, where it stands), and gets a [`Plan`]: instances to
//! start and stop, the deployment's next move or what it waits for, and when to look again if
//! nothing else happens first. The planner keeps no memory: applying the plan and planning again
//! on every change converges the service, and a restarted manager resumes a rollout from its
//! records alone.
//!
//! The rules, each answering a complaint users of the anchors keep filing:
//!
//! - **Slots.** Instance `k` of a service lives in slot `k` (`0..count`). A rollout gives each
//!   slot an instance of the target template; the old instance of a slot is stopped only once
//!   the new one is healthy (surge), or first when the `max_unavailable` budget allows it.
//! - **Templates, not version numbers, decide what is out of date.** An instance whose template
//!   equals the target's is current whatever version it was started under; it is relabelled,
//!   never restarted. A revert to the last good spec therefore keeps the instances that already
//!   run it, and a change of the strategy alone restarts nothing.
//! - **Healthy** means running with every check passing (or, without checks, running) for
//!   `min_healthy_time`. A new instance fails the deployment when it exits, fails its checks or
//!   is not healthy `healthy_deadline` after it was placed: there is no monitor window shorter
//!   than the check (moby#35498).
//! - **Every wait says what it waits for** ([`Step::Note`]) and every wait has a deadline
//!   (`progress_deadline`, restarted each time an instance turns healthy): a deployment never
//!   sits in `running` silently (moby#35564).
//! - **No room for a surge instance** is not a deadlock (k8s#116891): with
//!   [`OnNoRoom::StopFirst`] one instance at a time is replaced stopping first, and the
//!   deployment says so; with [`OnNoRoom::Wait`] it waits, saying why, until the deadline.
//! - **A revert** skips canaries, runs start-first, never stops a healthy instance to make
//!   room (nomad#10882, nomad#3836), and pauses instead of failing when it fails, so a revert is
//!   never reverted.
//! - **Lost instances are replaced** in their slot, with a capped exponential delay after
//!   instances of that slot that ended by themselves, so a crash-looping service does not churn
//!   the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::TaskId;
use crate::deployment::{DeploymentStatus, DeploymentTrigger, Reason};
use crate::service::{OnNoRoom, UpdateStrategy};
use crate::units::format_duration;

/// Delay before replacing an instance whose predecessor in the slot ended by itself; doubled
/// per further such end, up to [`REPLACE_BACKOFF_MAX`].
pub const REPLACE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay before a replacement.
pub const REPLACE_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Ends of a slot's instances older than this no longer lengthen its replacement delay.
const BACKOFF_MEMORY: Duration = Duration::from_secs(3600);

/// What the service should become.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The service's name (instances are called `name/slot` in descriptions).
    pub service: &'a str,
    /// The version rolled out.
    pub version: u64,
    /// Instances wanted.
    pub count: u32,
    /// How to get there.
    pub update: &'a UpdateStrategy,
}

/// The deployment of the target version, as the planner needs it.
#[derive(Clone, Copy, Debug)]
pub struct Rollout {
    /// Where it stands.
    pub status: DeploymentStatus,
    /// It restores an earlier version's spec.
    pub revert: bool,
    /// Its canaries were promoted.
    pub promoted: bool,
    /// When it began: instances created since are its new instances.
    pub started_at: Timestamp,
    /// When it last made progress (began, or an instance turned healthy).
    pub last_progress: Timestamp,
}

/// One instance of the service.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Its task.
    pub task: TaskId,
    /// Its slot.
    pub slot: u32,
    /// The version it carries.
    pub version: u64,
    /// Its template is the target's: it needs no replacement.
    pub current: bool,
    /// When its task was created.
    pub created_at: Timestamp,
    /// Where it stands.
    pub phase: Phase,
    /// The first sign of trouble since it was created (an exit, a failed check), in words.
    pub failure: Option<String>,
    /// Its node is draining: it is replaced elsewhere (within the strategy's budgets) and then
    /// stopped, with or without a deployment.
    pub draining: bool,
}

/// Where an instance stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a node; once placement was tried and failed, why no node fits.
    Pending {
        /// Why no node can take it, if placement found none.
        no_room: Option<NoRoom>,
    },
    /// On a node, not running yet (starting, or waiting out a restart delay).
    Starting {
        /// When it was placed.
        placed_at: Timestamp,
    },
    /// Running.
    Running {
        /// When it was placed.
        placed_at: Timestamp,
        /// Since when its checks pass continuously (or, without checks, since when it runs).
        healthy_since: Option<Timestamp>,
    },
    /// Asked to stop, not stopped yet.
    Stopping,
    /// Finished.
    Ended {
        /// When.
        at: Timestamp,
        /// How.
        cause: EndCause,
    },
}

/// How an instance finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// Someone (a user or a rollout) asked it to stop.
    Stopped,
    /// It ended by itself (exited, failed to start, or its restarts ran out).
    Exited,
    /// Its node was lost.
    Lost,
}

/// Why no node can take an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRoom {
    /// A static host port of the template is taken wherever the instance could go.
    pub port_conflict: Option<u16>,
    /// The placement's explanation in one line.
    pub reason: String,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to create, of the target version.
    pub start: Vec<Start>,
    /// Instances to stop.
    pub stop: Vec<Stop>,
    /// Current instances carrying an older version number: to be labelled with the target's.
    pub relabel: Vec<TaskId>,
    /// The deployment's next move, or what it waits for.
    pub step: Option<Step>,
    /// The deployment made progress at this time (an instance turned healthy): record it.
    pub progress_at: Option<Timestamp>,
    /// Plan again at this time if nothing changes before (an instance turns healthy, a deadline
    /// passes, a replacement delay ends).
    pub wake_at: Option<Timestamp>,
}

/// A new instance to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Its slot.
    pub slot: u32,
    /// A canary, waiting for promotion beside the slot's old instance.
    pub canary: bool,
}

/// An instance to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Its task.
    pub task: TaskId,
    /// Why.
    pub why: StopWhy,
}

/// Why an instance is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// Its replacement in the slot is healthy.
    Replaced {
        /// The replacement.
        by: TaskId,
    },
    /// Making way for its replacement within the `max_unavailable` budget.
    Unavailable,
    /// Making way for its replacement: there is no room for both (`on_no_room = stop_first`).
    StopFirst,
    /// Its slot is above the count.
    ScaledDown,
    /// Its slot has a better instance.
    Surplus,
    /// A new instance of a deployment that failed.
    Abandoned,
}

/// A deployment's next move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Move it through the deployment state machine, saying why.
    Move(DeploymentTrigger, Reason, String),
    /// It stays running; this is what it waits for.
    Note(Reason, String),
}

impl Instance {
    fn live(&self) -> bool {
        match self.phase {
            Phase::Pending { .. } | Phase::Starting { .. } | Phase::Running { .. } => true,
            Phase::Stopping | Phase::Ended { .. } => false,
        }
    }

    /// When it is (or will be) healthy for `min`, if its checks pass.
    fn healthy_at(&self, min: Duration) -> Option<Timestamp> {
        match self.phase {
            Phase::Running { healthy_since: Some(since), .. } => Some(add(since, min)),
            Phase::Pending { .. }
            | Phase::Starting { .. }
            | Phase::Running { healthy_since: None, .. }
            | Phase::Stopping
            | Phase::Ended { .. } => None,
        }
    }

    fn healthy(&self, min: Duration, now: Timestamp) -> bool {
        self.healthy_at(min).is_some_and(|at| at <= now)
    }

    fn placed_at(&self) -> Option<Timestamp> {
        match self.phase {
            Phase::Starting { placed_at } | Phase::Running { placed_at, .. } => Some(placed_at),
            Phase::Pending { .. } | Phase::Stopping | Phase::Ended { .. } => None,
        }
    }

    /// A ranking for choosing which of two instances in one slot to keep: healthy, then
    /// running, then placed, then newest.
    fn rank(&self, min: Duration, now: Timestamp) -> (u8, Timestamp) {
        let stage = match self.phase {
            _ if self.healthy(min, now) => 4,
            Phase::Running { .. } => 3,
            Phase::Starting { .. } => 2,
            Phase::Pending { .. } => 1,
            Phase::Stopping | Phase::Ended { .. } => 0,
        };
        (stage, self.created_at)
    }
}

fn add(at: Timestamp, d: Duration) -> Timestamp {
    // A duration too large for a timestamp means "never" in every use here.
    at.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// The live instances of one slot: the best current one and the best old one (others are
/// surplus and stopped).
#[derive(Default)]
struct Slot<'a> {
    current: Option<&'a Instance>,
    old: Option<&'a Instance>,
}

/// How far a pass may go beyond or below `count`.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Instances allowed above `count`.
    surge: u32,
    /// Slots allowed without a healthy instance.
    unavailable: u32,
    /// A new instance without room may replace its old one stopping first.
    stop_first: bool,
    /// Never stop a healthy instance to make room (a revert).
    spare_healthy: bool,
}

/// Builds the plan. `rollout` is the deployment of `target.version`, if any.
pub fn plan(
    target: &Target<'_>,
    rollout: Option<&Rollout>,
    instances: &[Instance],
    now: Timestamp,
) -> Plan {
    Planner::new(target, now).run(rollout, instances)
}

struct Planner<'t> {
    target: &'t Target<'t>,
    now: Timestamp,
    min: Duration,
    plan: Plan,
}

impl<'t> Planner<'t> {
    fn new(target: &'t Target<'t>, now: Timestamp) -> Self {
        Self { target, now, min: target.update.min_healthy_time, plan: Plan::default() }
    }

    fn name(&self, slot: u32) -> String {
        format!("{}/{slot}", self.target.service)
    }

    fn wake(&mut self, at: Timestamp) {
        if at > self.now && self.plan.wake_at.is_none_or(|w| at < w) {
            self.plan.wake_at = Some(at);
        }
    }

    fn stop(&mut self, task: TaskId, why: StopWhy) {
        self.plan.stop.push(Stop { task, why });
    }

    fn run(mut self, rollout: Option<&Rollout>, instances: &[Instance]) -> Plan {
        let n = self.target.count;
        for i in instances {
            if i.live() && i.current && i.version != self.target.version {
                self.plan.relabel.push(i.task);
            }
        }
        let slots = self.slots(instances);
        match rollout.map(|r| (r, r.status)) {
            Some((r, DeploymentStatus::Running)) => self.roll(r, &slots, instances),
            Some((_, DeploymentStatus::Paused)) => self.fill(&slots, instances, false),
            Some((_, DeploymentStatus::Failed | DeploymentStatus::Cancelled)) => {
                self.settle(&slots, instances, true);
                self.migrate(&slots, instances);
            }
            Some((_, DeploymentStatus::Successful)) | None => {
                self.settle(&slots, instances, false);
                self.migrate(&slots, instances);
            }
        }
        debug_assert!(self.plan.start.iter().all(|s| s.slot < n));
        self.plan
    }

    /// Groups live instances by slot, stopping those above the count and all but the best
    /// current and the best old instance of each slot.
    fn slots<'a>(&mut self, instances: &'a [Instance]) -> BTreeMap<u32, Slot<'a>> {
        let (min, now) = (self.min, self.now);
        let mut slots: BTreeMap<u32, Slot<'a>> = BTreeMap::new();
        let mut surplus = Vec::new();
        for i in instances.iter().filter(|i| i.live()) {
            if i.slot >= self.target.count {
                self.stop(i.task, StopWhy::ScaledDown);
                continue;
            }
            let slot = slots.entry(i.slot).or_default();
            let current = i.current && !i.draining;
            let place = if current { &mut slot.current } else { &mut slot.old };
            match place {
                Some(kept) if kept.rank(min, now) >= i.rank(min, now) => surplus.push(i.task),
                Some(kept) => {
                    surplus.push(kept.task);
                    *place = Some(i);
                }
                None => *place = Some(i),
            }
        }
        for task in surplus {
            self.stop(task, StopWhy::Surplus);
        }
        slots
    }

    /// When a new instance may start in `slot`: now, or after the delay that follows
    /// instances of the slot ending by themselves.
    fn may_start(&mut self, slot: u32, instances: &[Instance]) -> bool {
        let mut ends: Vec<(Timestamp, EndCause)> = instances
            .iter()
            .filter(|i| i.slot == slot)
            .filter_map(|i| match i.phase {
                Phase::Ended { at, cause } => Some((at, cause)),
                _ => None,
            })
            .collect();
        ends.sort_by_key(|e| std::cmp::Reverse(e.0));
        let Some(&(last, _)) = ends.first() else { return true };
        let forget = self.now.checked_sub(BACKOFF_MEMORY).unwrap_or(Timestamp::MIN);
        let failures = ends
            .iter()
            .take_while(|(at, cause)| *cause == EndCause::Exited && *at >= forget)
            .count();
        if failures == 0 {
            return true;
        }
        let delay =
            REPLACE_BACKOFF.saturating_mul(1 << (failures - 1).min(16)).min(REPLACE_BACKOFF_MAX);
        let at = add(last, delay);
        if at <= self.now {
            true
        } else {
            self.wake(at);
            false
        }
    }

    /// Starts an instance in every empty slot (old instances stay); with `finish`, also
    /// resolves slots holding an old and a current instance.
    fn fill(&mut self, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance], finish: bool) {
        for slot in 0..self.target.count {
            let s = slots.get(&slot);
            let (current, old) = (s.and_then(|s| s.current), s.and_then(|s| s.old));
            match (current, old) {
                (None, None) => {
                    if self.may_start(slot, instances) {
                        self.plan.start.push(Start { slot, canary: false });
                    }
                }
                // A draining instance is migrated, not settled.
                (Some(_), Some(o)) if o.draining => {}
                (Some(c), Some(o)) if finish => {
                    if c.healthy(self.min, self.now) {
                        self.stop(o.task, StopWhy::Replaced { by: c.task });
                    } else {
                        self.stop(c.task, StopWhy::Abandoned);
                    }
                }
                (Some(c), Some(_)) => {
                    if let Some(at) = c.healthy_at(self.min) {
                        self.wake(at);
                    }
                }
                (Some(_), None) | (None, Some(_)) => {}
            }
        }
    }

    /// No deployment moves: keep `count` instances. After a failed or cancelled deployment
    /// (`failed`), a slot holding both an old and a new instance keeps the healthy one.
    fn settle(&mut self, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance], failed: bool) {
        // Without a failed deployment an old and a current instance share a slot only after a
        // change that needed no rollout (the strategy alone): the current one replaces the old
        // once healthy, and is kept either way.
        if failed {
            self.fill(slots, instances, true);
            return;
        }
        self.fill(slots, instances, false);
        for s in slots.values() {
            if let (Some(c), Some(o)) = (s.current, s.old)
                && !o.draining
                && c.healthy(self.min, self.now)
            {
                self.stop(o.task, StopWhy::Replaced { by: c.task });
            }
        }
    }

    /// A running deployment.
    fn roll(&mut self, r: &Rollout, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance]) {
        if let Some(failure) = self.failure(r, instances) {
            let (trigger, reason) = if r.revert {
                (DeploymentTrigger::Pause, Reason::RevertFailed)
            } else {
                (DeploymentTrigger::Fail, failure.0)
            };
            self.plan.step = Some(Step::Move(trigger, reason, failure.1));
            return;
        }
        let canaries = if r.revert || r.promoted { 0 } else { self.target.update.canary };
        if canaries > 0 {
            self.canaries(canaries, slots, instances);
        } else {
            self.replace(r, slots, instances);
        }
    }

    /// Why the deployment has failed, if it has; records its progress and deadlines.
    fn failure(&mut self, r: &Rollout, instances: &[Instance]) -> Option<(Reason, String)> {
        let u = self.target.update;
        let mut progress = r.last_progress;
        let mut failed = None;
        let new = instances.iter().filter(|i| i.current && i.created_at >= r.started_at);
        for i in new {
            let name = self.name(i.slot);
            if let Some(at) = i.healthy_at(self.min) {
                if at <= self.now {
                    progress = progress.max(at);
                    continue;
                }
                self.wake(at);
            }
            let trouble = match (&i.failure, &i.phase) {
                (Some(why), _) => Some(why.clone()),
                (None, Phase::Ended { cause: EndCause::Exited, .. }) => Some("ended".into()),
                (None, Phase::Pending { .. } | Phase::Starting { .. } | Phase::Running { .. }) => {
                    match i.placed_at() {
                        Some(placed) if add(placed, u.healthy_deadline) <= self.now => {
                            Some(format!(
                                "not healthy within {} of being placed",
                                format_duration(u.healthy_deadline)
                            ))
                        }
                        Some(placed) => {
                            self.wake(add(placed, u.healthy_deadline));
                            None
                        }
                        None => None,
                    }
                }
                (None, Phase::Stopping | Phase::Ended { .. }) => None,
            };
            if let Some(why) = trouble
                && failed.is_none()
            {
                failed = Some((Reason::Unhealthy, format!("task {name}: {why}")));
            }
        }
        if progress > r.last_progress {
            self.plan.progress_at = Some(progress);
        }
        if failed.is_some() {
            return failed;
        }
        let deadline = add(progress, u.progress_deadline);
        if deadline <= self.now {
            return Some((
                Reason::ProgressDeadline,
                format!(
                    "no instance turned healthy within the progress deadline ({})",
                    format_duration(u.progress_deadline)
                ),
            ));
        }
        self.wake(deadline);
        None
    }

    /// Before promotion: canaries in the first slots, beside their old instances.
    fn canaries(&mut self, canaries: u32, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance]) {
        let canaries = canaries.min(self.target.count);
        let mut healthy = 0;
        let mut waiting = None;
        for slot in 0..self.target.count {
            let s = slots.get(&slot);
            match (s.and_then(|s| s.current), s.and_then(|s| s.old)) {
                (Some(c), _) if c.healthy(self.min, self.now) => {
                    if slot < canaries {
                        healthy += 1;
                    }
                }
                (Some(c), _) => {
                    if slot < canaries && waiting.is_none() {
                        waiting = Some(self.waiting_on(c));
                    }
                }
                (None, None) => {
                    // An empty slot is filled whatever the phase; a canary only if it is one.
                    if self.may_start(slot, instances) {
                        self.plan.start.push(Start { slot, canary: false });
                    }
                    if slot < canaries && waiting.is_none() {
                        waiting = Some((Reason::Placing, format!("placing {}", self.name(slot))));
                    }
                }
                (None, Some(_)) if slot < canaries => {
                    if self.may_start(slot, instances) {
                        self.plan.start.push(Start { slot, canary: true });
                    }
                    if waiting.is_none() {
                        let text = format!("placing canary {}", self.name(slot));
                        waiting = Some((Reason::Placing, text));
                    }
                }
                (None, Some(_)) => {}
            }
        }
        self.plan.step = Some(if healthy == canaries {
            if self.target.update.auto_promote {
                Step::Move(
                    DeploymentTrigger::Promote,
                    Reason::WaitingHealth,
                    format!("{canaries} canaries healthy; promoted automatically"),
                )
            } else {
                Step::Note(
                    Reason::NeedsPromotion,
                    format!("{canaries} canaries healthy; promote the deployment to continue"),
                )
            }
        } else {
            let (reason, text) = waiting.unwrap_or((Reason::WaitingHealth, String::new()));
            Step::Note(reason, text)
        });
    }

    /// What a new instance that is not healthy yet waits for, in words.
    fn waiting_on(&self, i: &Instance) -> (Reason, String) {
        let name = self.name(i.slot);
        match &i.phase {
            Phase::Pending { no_room: Some(no_room) } => match no_room.port_conflict {
                Some(port) => (
                    Reason::PortConflict,
                    format!("{name}: host port {port} is taken on every node that fits"),
                ),
                None => (Reason::NoCapacity, format!("{name}: {}", no_room.reason)),
            },
            Phase::Pending { no_room: None } => (Reason::Placing, format!("placing {name}")),
            Phase::Starting { .. } => (Reason::WaitingHealth, format!("{name} starting")),
            Phase::Running { healthy_since: None, .. } => {
                (Reason::WaitingHealth, format!("{name} running; waiting for its checks to pass"))
            }
            Phase::Running { healthy_since: Some(_), .. } => (
                Reason::WaitingHealth,
                format!("{name} passing its checks; healthy after {}", format_duration(self.min)),
            ),
            Phase::Stopping | Phase::Ended { .. } => {
                (Reason::WaitingHealth, format!("{name} stopping"))
            }
        }
    }

    /// After promotion (or without canaries): replace old instances within the budgets.
    fn replace(&mut self, r: &Rollout, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance]) {
        let u = self.target.update;
        let n = self.target.count;
        let mut budget = Budget {
            surge: u.max_surge.rounded_up(n),
            unavailable: u.max_unavailable.rounded_down(n),
            stop_first: u.on_no_room == OnNoRoom::StopFirst,
            spare_healthy: false,
        };
        if r.revert {
            // Start-first, whatever the strategy says: a revert never trades a healthy
            // instance for room.
            budget = Budget {
                surge: budget.surge.max(1),
                unavailable: 0,
                spare_healthy: true,
                ..budget
            };
        }
        let (done, waiting) = self.advance(slots, instances, budget, false);
        self.plan.step = Some(if done && self.plan.stop.is_empty() {
            Step::Move(
                DeploymentTrigger::Complete,
                Reason::AllHealthy,
                format!("all {n} instances of version {} healthy", self.target.version),
            )
        } else {
            let (reason, text) = waiting.unwrap_or_else(|| {
                (Reason::WaitingHealth, "waiting for old instances to stop".into())
            });
            Step::Note(reason, text)
        });
    }

    /// Without a moving deployment: instances on draining nodes are replaced elsewhere within
    /// the strategy's budgets, and stopped once their replacement is healthy. Without room they
    /// stay until the drain's deadline stops them.
    fn migrate(&mut self, slots: &BTreeMap<u32, Slot<'_>>, instances: &[Instance]) {
        if !slots.values().any(|s| s.old.is_some_and(|o| o.draining)) {
            return;
        }
        let u = self.target.update;
        let n = self.target.count;
        let budget = Budget {
            surge: u.max_surge.rounded_up(n),
            unavailable: u.max_unavailable.rounded_down(n),
            stop_first: false,
            spare_healthy: false,
        };
        self.advance(slots, instances, budget, true);
    }

    /// Moves every slot (or, with `draining_only`, every slot whose old instance is on a
    /// draining node) towards one healthy current instance, within `budget`. Returns whether
    /// every slot is there, and what the first one still moving waits for.
    fn advance(
        &mut self,
        slots: &BTreeMap<u32, Slot<'_>>,
        instances: &[Instance],
        budget: Budget,
        draining_only: bool,
    ) -> (bool, Option<(Reason, String)>) {
        let n = self.target.count;
        let stopping: Vec<TaskId> = self.plan.stop.iter().map(|s| s.task).collect();
        let mut live = slots
            .values()
            .flat_map(|s| [s.current, s.old])
            .flatten()
            .filter(|i| !stopping.contains(&i.task))
            .count() as u32;
        let mut available =
            (0..n).filter(|k| slots.get(k).is_some_and(|s| self.slot_healthy(s))).count() as u32;
        let mut waiting = None;
        let mut done = true;
        for slot in 0..n {
            let s = slots.get(&slot);
            let (current, old) = (s.and_then(|s| s.current), s.and_then(|s| s.old));
            if draining_only && !old.is_some_and(|o| o.draining) {
                continue;
            }
            match (current, old) {
                (Some(c), old) if c.healthy(self.min, self.now) => {
                    if let Some(o) = old {
                        self.stop(o.task, StopWhy::Replaced { by: c.task });
                        live -= 1;
                        done = false;
                    }
                }
                (Some(c), old) => {
                    done = false;
                    if let Some(at) = c.healthy_at(self.min) {
                        self.wake(at);
                    }
                    let wait = self.waiting_on(c);
                    let no_room = matches!(c.phase, Phase::Pending { no_room: Some(_) });
                    match old {
                        Some(o) if no_room && budget.stop_first => {
                            let healthy = o.healthy(self.min, self.now);
                            // One beyond the budget at a time, and never a healthy instance
                            // in a revert.
                            if n - available <= budget.unavailable
                                && !(budget.spare_healthy && healthy)
                            {
                                self.stop(o.task, StopWhy::StopFirst);
                                live -= 1;
                                available -= u32::from(healthy);
                                waiting.get_or_insert((
                                    Reason::StopFirst,
                                    format!(
                                        "no room for a new instance beside {} ({}); replacing \
                                         one at a time, stopping first",
                                        self.name(slot),
                                        wait.1
                                    ),
                                ));
                            }
                        }
                        Some(_) | None => {}
                    }
                    waiting.get_or_insert(wait);
                }
                (None, Some(o)) => {
                    done = false;
                    if live < n + budget.surge {
                        if self.may_start(slot, instances) {
                            self.plan.start.push(Start { slot, canary: false });
                            live += 1;
                        }
                        waiting.get_or_insert((
                            Reason::Placing,
                            format!("placing {}", self.name(slot)),
                        ));
                    } else {
                        let healthy = o.healthy(self.min, self.now);
                        if available - u32::from(healthy) + budget.unavailable >= n {
                            self.stop(o.task, StopWhy::Unavailable);
                            available -= u32::from(healthy);
                            if self.may_start(slot, instances) {
                                self.plan.start.push(Start { slot, canary: false });
                            }
                        }
                    }
                }
                (None, None) => {
                    done = false;
                    if self.may_start(slot, instances) {
                        self.plan.start.push(Start { slot, canary: false });
                        live += 1;
                    }
                    waiting
                        .get_or_insert((Reason::Placing, format!("placing {}", self.name(slot))));
                }
            }
        }
        (done, waiting)
    }

    fn slot_healthy(&self, s: &Slot<'_>) -> bool {
        [s.current, s.old].into_iter().flatten().any(|i| i.healthy(self.min, self.now))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::deployment::transition;
    use crate::service::Amount;

    const TICK: Duration = Duration::from_secs(1);

    /// A toy cluster the plans are applied to, one second per step: a started instance is
    /// placed when there is room, runs the next second, and passes its checks at once unless
    /// its template is broken (then its check fails after three seconds).
    struct World {
        now: Timestamp,
        service: &'static str,
        version: u64,
        count: u32,
        update: UpdateStrategy,
        /// Template of each version (equal numbers = equal templates).
        templates: BTreeMap<u64, u32>,
        broken: BTreeSet<u32>,
        rollout: Option<Rollout>,
        instances: Vec<Instance>,
        /// Instances a node set can hold at once (placed, running or stopping).
        room: usize,
        next: u128,
        /// Every stop the plans asked for, with the instance's version.
        stops: Vec<(u64, StopWhy)>,
        /// Every note and move the deployment went through.
        steps: Vec<Step>,
        /// Fewest slots with a healthy instance seen at any step of a rollout.
        min_available: u32,
        /// What the last plan was made from, and the wake-up it asked for.
        last: Option<(String, Option<Timestamp>)>,
    }

    impl World {
        /// A service at version 1, `count` instances, healthy.
        fn new(count: u32, update: UpdateStrategy) -> Self {
            let mut w = World {
                now: Timestamp::from_second(1_900_000_000).unwrap(),
                service: "web",
                version: 1,
                count,
                update,
                templates: BTreeMap::from([(1, 1)]),
                broken: BTreeSet::new(),
                rollout: None,
                instances: Vec::new(),
                room: 100,
                next: 1,
                stops: Vec::new(),
                steps: Vec::new(),
                min_available: u32::MAX,
                last: None,
            };
            w.run_until(|w| w.available() == count, 30);
            w.min_available = u32::MAX;
            w
        }

        fn template(&self, version: u64) -> u32 {
            self.templates[&version]
        }

        /// A new version with `template`, rolled out by a new deployment (or, for an equal
        /// template, none).
        fn update_to(&mut self, template: u32, revert: bool) {
            let changed = template != self.template(self.version);
            self.version += 1;
            self.templates.insert(self.version, template);
            self.rollout = changed.then_some(Rollout {
                status: DeploymentStatus::Running,
                revert,
                promoted: false,
                started_at: self.now,
                last_progress: self.now,
            });
        }

        fn target(&self) -> Target<'_> {
            Target {
                service: self.service,
                version: self.version,
                count: self.count,
                update: &self.update,
            }
        }

        fn healthy(&self, i: &Instance) -> bool {
            i.healthy(self.update.min_healthy_time, self.now)
        }

        fn available(&self) -> u32 {
            (0..self.count)
                .filter(|&k| self.instances.iter().any(|i| i.slot == k && self.healthy(i)))
                .count() as u32
        }

        fn holds_room(i: &Instance) -> bool {
            matches!(i.phase, Phase::Starting { .. } | Phase::Running { .. } | Phase::Stopping)
        }

        fn plan(&self) -> Plan {
            let current = self.template(self.version);
            let instances: Vec<Instance> = self
                .instances
                .iter()
                .map(|i| Instance { current: self.template(i.version) == current, ..i.clone() })
                .collect();
            plan(&self.target(), self.rollout.as_ref(), &instances, self.now)
        }

        /// Plans, applies the plan, and moves the world one second on.
        fn step(&mut self) -> Plan {
            let plan = self.plan();
            // The planner must never depend on being asked again: with nothing changed and
            // before the wake-up it asked for, it has nothing to do.
            let inputs = format!(
                "{:?} {:?} {} {} {:?}",
                self.instances, self.rollout, self.version, self.count, self.update
            );
            if self
                .last
                .as_ref()
                .is_some_and(|(i, wake)| *i == inputs && wake.is_none_or(|w| self.now < w))
            {
                let idle = plan.start.is_empty()
                    && plan.stop.is_empty()
                    && plan.relabel.is_empty()
                    && !matches!(plan.step, Some(Step::Move(..)));
                assert!(idle, "acted without a change or a wake-up: {plan:?}");
            }
            self.last = Some((inputs, plan.wake_at));
            for id in &plan.relabel {
                let version = self.version;
                self.instances
                    .iter_mut()
                    .filter(|i| i.task == *id)
                    .for_each(|i| i.version = version);
            }
            for s in &plan.stop {
                let i = self.instances.iter_mut().find(|i| i.task == s.task).unwrap();
                assert!(i.live(), "stopping {i:?} twice");
                i.phase = Phase::Stopping;
                self.stops.push((i.version, s.why));
            }
            for s in &plan.start {
                let task = TaskId::from_uuid(uuid::Uuid::from_u128(self.next));
                self.next += 1;
                self.instances.push(Instance {
                    task,
                    slot: s.slot,
                    version: self.version,
                    current: true,
                    created_at: self.now,
                    phase: Phase::Pending { no_room: None },
                    failure: None,
                    draining: false,
                });
            }
            if let Some(r) = &mut self.rollout {
                if let Some(at) = plan.progress_at {
                    r.last_progress = at;
                }
                match &plan.step {
                    Some(Step::Move(trigger, ..)) => {
                        r.status = transition(r.status, *trigger).unwrap();
                        if *trigger == DeploymentTrigger::Promote {
                            r.promoted = true;
                        }
                    }
                    Some(Step::Note(..)) | None => {}
                }
                if let Some(step) = &plan.step
                    && self.steps.last() != Some(step)
                {
                    self.steps.push(step.clone());
                }
            }
            if let Some(wake) = plan.wake_at {
                assert!(wake > self.now, "a wake-up in the past");
            }
            self.now = add(self.now, TICK);
            self.advance();
            if self.rollout.is_some_and(|r| r.status == DeploymentStatus::Running) {
                self.min_available = self.min_available.min(self.available());
            }
            plan
        }

        fn advance(&mut self) {
            let now = self.now;
            let mut held = self.instances.iter().filter(|i| Self::holds_room(i)).count();
            for i in &mut self.instances {
                let broken = self.broken.contains(&self.templates[&i.version]);
                i.phase = match i.phase.clone() {
                    Phase::Stopping => {
                        held -= 1;
                        Phase::Ended { at: now, cause: EndCause::Stopped }
                    }
                    Phase::Pending { .. } if held < self.room => {
                        held += 1;
                        Phase::Starting { placed_at: now }
                    }
                    Phase::Pending { .. } => Phase::Pending {
                        no_room: Some(NoRoom {
                            port_conflict: None,
                            reason: "no node fits: w1: needs 1GiB memory".into(),
                        }),
                    },
                    Phase::Starting { placed_at } => {
                        Phase::Running { placed_at, healthy_since: (!broken).then_some(now) }
                    }
                    Phase::Running { placed_at, healthy_since }
                        if broken && add(placed_at, Duration::from_secs(3)) <= now =>
                    {
                        i.failure.get_or_insert("http check :80/ got 503".into());
                        Phase::Running { placed_at, healthy_since }
                    }
                    other => other,
                };
            }
        }

        fn run_until(&mut self, mut done: impl FnMut(&World) -> bool, steps: usize) {
            for _ in 0..steps {
                if done(self) {
                    return;
                }
                self.step();
            }
            panic!("not done after {steps} steps: {:#?}", self.instances);
        }

        fn status(&self) -> Option<DeploymentStatus> {
            self.rollout.map(|r| r.status)
        }

        fn live(&self) -> Vec<&Instance> {
            self.instances.iter().filter(|i| i.live()).collect()
        }

        fn reasons(&self) -> Vec<Reason> {
            self.steps
                .iter()
                .map(|s| match s {
                    Step::Move(_, r, _) | Step::Note(r, _) => *r,
                })
                .collect()
        }
    }

    fn strategy(f: impl FnOnce(&mut UpdateStrategy)) -> UpdateStrategy {
        let mut u =
            UpdateStrategy { min_healthy_time: Duration::from_secs(2), ..Default::default() };
        f(&mut u);
        u
    }

    fn over(w: &World) -> bool {
        w.status().is_some_and(DeploymentStatus::is_terminal)
    }

    #[test]
    fn a_new_service_starts_one_instance_per_slot() {
        let w = World::new(3, strategy(|_| {}));
        let slots: BTreeSet<u32> = w.live().iter().map(|i| i.slot).collect();
        assert_eq!(slots, BTreeSet::from([0, 1, 2]));
        assert_eq!(w.live().len(), 3);
    }

    #[test]
    fn a_rolling_update_keeps_every_slot_healthy_and_names_each_replacement() {
        let mut w = World::new(3, strategy(|_| {}));
        w.update_to(2, false);
        let mut most = 0;
        while !over(&w) {
            w.step();
            most = most.max(w.live().len());
        }
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert_eq!(w.min_available, 3, "max_unavailable 0: never a slot without a healthy one");
        assert_eq!(most, 4, "one surge instance at a time");
        assert!(w.live().iter().all(|i| i.version == 2 && w.healthy(i)));
        assert_eq!(w.live().len(), 3);
        let old: Vec<StopWhy> = w.stops.iter().map(|s| s.1).collect();
        assert_eq!(old.len(), 3);
        assert!(old.iter().all(|s| matches!(s, StopWhy::Replaced { .. })), "{old:?}");
        assert!(w.reasons().contains(&Reason::WaitingHealth));
        assert_eq!(w.reasons().last(), Some(&Reason::AllHealthy));
    }

    #[test]
    fn surge_is_never_exceeded() {
        let mut w = World::new(4, strategy(|u| u.max_surge = Amount::Percent(50)));
        w.update_to(2, false);
        let mut most = 0;
        while !over(&w) {
            w.step();
            most = most.max(w.live().len());
            assert!(w.now < add(Timestamp::from_second(1_900_000_100).unwrap(), TICK));
        }
        assert_eq!(most, 6, "count 4 + 50% surge");
        assert_eq!(w.min_available, 4);
    }

    #[test]
    fn max_unavailable_alone_replaces_stopping_first_within_the_budget() {
        let mut w = World::new(
            4,
            strategy(|u| {
                u.max_surge = Amount::Count(0);
                u.max_unavailable = Amount::Count(1);
            }),
        );
        w.update_to(2, false);
        let mut most = 0;
        while !over(&w) {
            w.step();
            most = most.max(w.live().len());
        }
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert_eq!(most, 4, "no surge");
        assert_eq!(w.min_available, 3);
        assert!(w.stops.iter().all(|s| s.1 == StopWhy::Unavailable));
    }

    #[test]
    fn a_failing_check_fails_the_deployment_naming_the_task_and_the_check() {
        let mut w = World::new(3, strategy(|_| {}));
        w.broken.insert(2);
        w.update_to(2, false);
        w.run_until(over, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Failed));
        let Some(Step::Move(DeploymentTrigger::Fail, Reason::Unhealthy, text)) = w.steps.last()
        else {
            panic!("{:?}", w.steps);
        };
        assert_eq!(text, "task web/0: http check :80/ got 503");
        assert_eq!(w.min_available, 3, "no healthy old instance was stopped");
    }

    #[test]
    fn a_revert_keeps_the_good_instances_and_stops_only_the_failed_ones() {
        let mut w = World::new(3, strategy(|_| {}));
        w.broken.insert(2);
        w.update_to(2, false);
        w.run_until(over, 30);
        let before: BTreeSet<TaskId> =
            w.live().iter().filter(|i| i.version == 1).map(|i| i.task).collect();
        assert_eq!(before.len(), 3);
        w.update_to(1, true);
        w.stops.clear();
        w.run_until(over, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        let after: BTreeSet<TaskId> = w.live().iter().map(|i| i.task).collect();
        assert_eq!(after, before, "the version-1 instances were kept, not restarted");
        assert!(w.live().iter().all(|i| i.version == 3), "relabelled to the revert's version");
        assert!(w.stops.iter().all(|s| s.0 == 2), "only the failed instance stopped");
        assert_eq!(w.min_available, 3);
    }

    #[test]
    fn a_failed_revert_pauses_instead_of_failing() {
        let mut w = World::new(2, strategy(|_| {}));
        // The last good spec is broken now (say its image was lost).
        w.broken.insert(3);
        w.update_to(3, true);
        w.run_until(over_or_paused, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Paused));
        assert_eq!(w.reasons().last(), Some(&Reason::RevertFailed));
        // Paused: nothing moves, the healthy old instances keep serving.
        let live = w.live().len();
        for _ in 0..10 {
            let plan = w.step();
            assert!(plan.start.is_empty() && plan.stop.is_empty(), "{plan:?}");
        }
        assert_eq!(w.live().len(), live);
        assert_eq!(w.available(), 2);
    }

    fn over_or_paused(w: &World) -> bool {
        over(w) || w.status() == Some(DeploymentStatus::Paused)
    }

    #[test]
    fn an_instance_never_healthy_fails_at_the_healthy_deadline() {
        let mut w = World::new(
            1,
            strategy(|u| {
                u.healthy_deadline = Duration::from_secs(20);
                u.progress_deadline = Duration::from_secs(60);
            }),
        );
        // Runs, but its check never passes and never fails outright.
        w.update_to(2, false);
        w.broken.insert(2);
        let mut plan = w.step();
        while !over(&w) {
            w.instances.iter_mut().for_each(|i| i.failure = None);
            plan = w.step();
        }
        let Some(Step::Move(DeploymentTrigger::Fail, Reason::Unhealthy, text)) = &plan.step else {
            panic!("{plan:?}");
        };
        assert_eq!(text, "task web/0: not healthy within 20s of being placed");
        let placed = w.instances.iter().filter_map(Instance::placed_at).max().unwrap();
        assert_eq!(w.now, add(add(placed, Duration::from_secs(20)), TICK));
    }

    #[test]
    fn canaries_wait_for_promotion_then_roll() {
        let mut w = World::new(3, strategy(|u| u.canary = 1));
        w.update_to(2, false);
        w.run_until(|w| w.reasons().last() == Some(&Reason::NeedsPromotion), 20);
        // One canary beside the three old instances, and it stays so.
        for _ in 0..5 {
            w.step();
        }
        let versions: Vec<u64> = w.live().iter().map(|i| i.version).collect();
        assert_eq!(versions, [1, 1, 1, 2]);
        assert_eq!(w.status(), Some(DeploymentStatus::Running));
        let r = w.rollout.as_mut().unwrap();
        r.status = transition(r.status, DeploymentTrigger::Promote).unwrap();
        r.promoted = true;
        w.run_until(over, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert_eq!(w.min_available, 3);
        assert!(w.live().iter().all(|i| i.version == 2));
    }

    #[test]
    fn auto_promote_promotes_healthy_canaries() {
        let mut w = World::new(
            2,
            strategy(|u| {
                u.canary = 2;
                u.auto_promote = true;
            }),
        );
        w.update_to(2, false);
        let mut most = 0;
        while !over(&w) {
            w.step();
            most = most.max(w.live().len());
        }
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert_eq!(most, 4, "canary = count is blue/green: both versions side by side");
        assert!(w.steps.iter().any(|s| matches!(s, Step::Move(DeploymentTrigger::Promote, ..))));
    }

    #[test]
    fn a_revert_skips_canaries() {
        let mut w = World::new(2, strategy(|u| u.canary = 1));
        w.update_to(2, true);
        w.run_until(over, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert!(!w.reasons().contains(&Reason::NeedsPromotion));
    }

    #[test]
    fn scaling_starts_and_stops_only_the_difference() {
        let mut w = World::new(3, strategy(|_| {}));
        let first: BTreeSet<TaskId> = w.live().iter().map(|i| i.task).collect();
        w.count = 5;
        let plan = w.step();
        assert_eq!(
            plan.start,
            [Start { slot: 3, canary: false }, Start { slot: 4, canary: false }]
        );
        assert!(plan.stop.is_empty());
        w.run_until(|w| w.available() == 5, 10);
        w.count = 2;
        let plan = w.step();
        let stopped: BTreeSet<u32> = plan
            .stop
            .iter()
            .map(|s| w.instances.iter().find(|i| i.task == s.task).unwrap().slot)
            .collect();
        assert_eq!(stopped, BTreeSet::from([2, 3, 4]));
        assert!(plan.stop.iter().all(|s| s.why == StopWhy::ScaledDown));
        let kept: BTreeSet<TaskId> = w.live().iter().map(|i| i.task).collect();
        assert!(kept.is_subset(&first));
        assert!(w.rollout.is_none(), "no deployment for a count change");
    }

    #[test]
    fn no_room_for_a_surge_instance_replaces_one_at_a_time_stopping_first() {
        let mut w = World::new(3, strategy(|_| {}));
        w.room = 3;
        w.update_to(2, false);
        w.run_until(over, 60);
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert!(w.reasons().contains(&Reason::StopFirst), "{:?}", w.steps);
        assert_eq!(w.min_available, 2, "one at a time");
        assert!(w.stops.iter().all(|s| s.1 == StopWhy::StopFirst));
    }

    #[test]
    fn no_room_with_wait_says_so_and_fails_at_the_progress_deadline() {
        let mut w = World::new(
            3,
            strategy(|u| {
                u.on_no_room = OnNoRoom::Wait;
                u.healthy_deadline = Duration::from_secs(20);
                u.progress_deadline = Duration::from_secs(40);
            }),
        );
        w.room = 3;
        let began = w.now;
        w.update_to(2, false);
        w.run_until(over, 60);
        assert_eq!(w.status(), Some(DeploymentStatus::Failed));
        assert!(w.reasons().contains(&Reason::NoCapacity), "{:?}", w.steps);
        assert_eq!(w.reasons().last(), Some(&Reason::ProgressDeadline));
        assert_eq!(w.now, add(add(began, Duration::from_secs(40)), TICK));
        assert_eq!(w.min_available, 3, "nothing was stopped");
    }

    #[test]
    fn a_revert_without_room_never_stops_a_healthy_instance() {
        let mut w = World::new(2, strategy(|_| {}));
        w.room = 2;
        w.update_to(2, true);
        for _ in 0..20 {
            w.step();
        }
        assert_eq!(w.status(), Some(DeploymentStatus::Running));
        assert!(w.stops.is_empty());
        assert_eq!(w.reasons().last(), Some(&Reason::NoCapacity));
    }

    #[test]
    fn a_lost_instance_is_replaced_at_once_and_a_crashing_one_after_a_growing_delay() {
        let mut w = World::new(1, strategy(|_| {}));
        let end = |w: &mut World, cause: EndCause| {
            let now = w.now;
            let i = w.instances.iter_mut().find(|i| i.live()).unwrap();
            i.phase = Phase::Ended { at: now, cause };
        };
        end(&mut w, EndCause::Lost);
        assert_eq!(w.step().start.len(), 1, "a lost node is not the instance's fault");
        w.run_until(|w| w.available() == 1, 10);
        let mut delays = Vec::new();
        for _ in 0..4 {
            end(&mut w, EndCause::Exited);
            let ended = w.now;
            let plan = w.step();
            assert!(plan.start.is_empty());
            let wake = plan.wake_at.unwrap();
            w.run_until(|w| !w.live().is_empty(), 100);
            delays.push((wake.as_second() - ended.as_second()) as u64);
            w.run_until(|w| w.available() == 1, 10);
        }
        assert_eq!(delays, [1, 2, 4, 8]);
    }

    #[test]
    fn surplus_instances_of_one_slot_keep_the_healthy_one() {
        let mut w = World::new(2, strategy(|_| {}));
        // A superseded rollout left a starting version-2 instance beside a healthy version-1
        // one; version 3 arrives.
        w.update_to(2, false);
        w.step();
        w.update_to(3, false);
        let plan = w.step();
        let surplus: Vec<u64> = plan
            .stop
            .iter()
            .filter(|s| s.why == StopWhy::Surplus)
            .map(|s| w.instances.iter().find(|i| i.task == s.task).unwrap().version)
            .collect();
        assert_eq!(surplus, [2]);
        w.run_until(over, 30);
        assert_eq!(w.status(), Some(DeploymentStatus::Successful));
        assert_eq!(w.min_available, 2);
    }

    #[test]
    fn a_strategy_change_alone_restarts_nothing() {
        let mut w = World::new(2, strategy(|_| {}));
        let before: BTreeSet<TaskId> = w.live().iter().map(|i| i.task).collect();
        w.update_to(1, false);
        assert!(w.rollout.is_none());
        let plan = w.step();
        assert_eq!(plan.relabel.len(), 2);
        assert!(plan.start.is_empty() && plan.stop.is_empty());
        let after: BTreeSet<TaskId> = w.live().iter().map(|i| i.task).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn instances_on_a_draining_node_move_within_the_budget_before_they_stop() {
        let mut w = World::new(3, strategy(|_| {}));
        let leaving: Vec<TaskId> = w.live().iter().take(2).map(|i| i.task).collect();
        for i in w.instances.iter_mut().filter(|i| leaving.contains(&i.task)) {
            i.draining = true;
        }
        let mut fewest = 3;
        let mut most = 0;
        while w.instances.iter().any(|i| leaving.contains(&i.task) && i.live()) {
            let plan = w.step();
            assert!(plan.step.is_none(), "no deployment moves");
            fewest = fewest.min(w.available());
            most = most.max(w.live().len());
            assert!(w.now < add(Timestamp::from_second(1_900_000_060).unwrap(), TICK));
        }
        w.run_until(|w| w.available() == 3 && w.live().len() == 3, 10);
        assert_eq!(fewest, 3, "max_unavailable 0: replacements healthy before the old stop");
        assert_eq!(most, 4, "one at a time with max_surge 1");
        let why: Vec<StopWhy> = w.stops.iter().map(|s| s.1).collect();
        assert!(why.iter().all(|s| matches!(s, StopWhy::Replaced { .. })), "{why:?}");
        assert_eq!(why.len(), 2);
    }
}

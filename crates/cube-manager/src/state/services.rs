//! Services: their records, and keeping each one at its count and moving its deployment by the
//! rollout planner ([`cube_core::rollout`]).
//!
//! Every change that touches an instance (a report, a placement, a stop) marks its service in
//! [`Effects::reconcile`]; [`State::reconcile`] then plans each marked service and applies the
//! plan in the same change, so what the planner decides is durable with what caused it. Timers
//! (an instance turning healthy, a deadline, a replacement delay) are the planner's `wake_at`,
//! which the manager's service loop waits for.

use std::collections::BTreeSet;
use std::time::Duration;

use cube_core::deployment::{Deployment, DeploymentStatus, DeploymentTrigger, Reason};
use cube_core::rollout::{self, EndCause, Instance, NoRoom, Phase, Plan, Rollout, StopWhy};
use cube_core::scheduler::{RejectionKind, Siblings};
use cube_core::service::{Change, Service, ServiceSpec};
use cube_core::{
    DeploymentId, DesiredState, EventKind, InstanceOf, NodeId, Note, Task, TaskId, TaskState,
    Trigger,
};
use jiff::Timestamp;

use super::{Effects, State, StopCall, apply};

/// Plans of one service applied in one change at most this many times: enough for a failure,
/// its revert and the revert's first placements; anything more waits for the next change.
const ROUNDS: usize = 8;

/// Makes new ids (the rules draw no random numbers themselves).
pub type Ids<'a> = &'a mut dyn FnMut() -> uuid::Uuid;

/// A service as the manager tracks it.
#[derive(Clone, Debug)]
pub struct ServiceEntry {
    /// The durable record.
    pub service: Service,
    /// Its instances, current and past (an index over the tasks).
    pub instances: BTreeSet<TaskId>,
    /// When its plan asked to be looked at again.
    pub wake_at: Option<Timestamp>,
}

/// Why a service request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such service.
    NoService,
    /// `check_index` did not match; the current index (`None`: the service does not exist).
    IndexMismatch(Option<u64>),
    /// No such deployment.
    NoDeployment,
    /// The deployment's status does not allow this.
    Transition(cube_core::deployment::InvalidDeploymentTransition),
    /// The history has no such version.
    NoVersion(u64),
    /// Another service publishes this port.
    PortTaken {
        /// The port.
        port: u16,
        /// The service publishing it.
        by: String,
    },
}

/// Instance counts of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Running instances.
    pub running: u32,
    /// Healthy instances (checks passing for `min_healthy_time`).
    pub healthy: u32,
    /// Per version: (version, running, healthy), oldest first.
    pub versions: Vec<(u64, u32, u32)>,
}

/// A user's request about a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentAction {
    /// Let the canaries' rollout proceed.
    Promote,
    /// Stop moving.
    Pause,
    /// Move again.
    Resume,
    /// Give up (and revert, if the strategy says so).
    Fail,
}

impl DeploymentAction {
    /// The action a URL names (`/v1/deployments/{id}/{action}`, and the UI's buttons).
    pub fn named(word: &str) -> Option<Self> {
        match word {
            "promote" => Some(Self::Promote),
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "fail" => Some(Self::Fail),
            _ => None,
        }
    }
}

impl State {
    /// One service.
    /// Stamps the index of the commit that changed `name`'s spec.
    pub fn stamp_service(&mut self, name: &str, index: u64) {
        if let Some(entry) = self.services.get_mut(name) {
            entry.service.stamp(index);
        }
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name)
    }

    /// All services, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    /// One deployment.
    /// Every deployment.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// One deployment.
    pub fn deployment(&self, id: DeploymentId) -> Option<&Deployment> {
        self.deployments.get(&id)
    }

    /// Refuses a spec publishing a port another service publishes: every node's ingress
    /// listens on each published port, so two services cannot share one.
    fn check_ports(&self, spec: &ServiceSpec) -> Result<(), Refusal> {
        for p in &spec.ports {
            if let Some(by) = self.publisher_of(p.publish, &spec.name) {
                return Err(Refusal::PortTaken { port: p.publish, by: by.to_owned() });
            }
        }
        Ok(())
    }

    /// Loads service and deployment records (at start-up, after the tasks).
    pub fn load_services(&mut self, services: Vec<Service>, deployments: Vec<Deployment>) {
        for d in deployments {
            self.deployments.insert(d.id, d);
        }
        for service in services {
            let name = service.spec.name.clone();
            let instances = self.instances_since(&name, service.created_at);
            self.reconcile_later(&name);
            self.services.insert(name, ServiceEntry { service, instances, wake_at: None });
        }
        // Derived: rebuilt, not announced.
        self.refresh_endpoints(&Effects::default(), true);
    }

    /// The tasks that are instances of service `name` created at `created_at`: a task of an
    /// earlier service of the same name is not an instance of this one.
    pub(super) fn instances_since(&self, name: &str, created_at: Timestamp) -> BTreeSet<TaskId> {
        self.tasks
            .values()
            .filter(|t| t.created_at >= created_at)
            .filter(|t| t.instance.as_ref().is_some_and(|i| i.service == name))
            .map(|t| t.id)
            .collect()
    }

    /// Marks a service to be planned again at the next change (at start-up: every service).
    fn reconcile_later(&mut self, name: &str) {
        self.due.insert(name.to_owned());
    }

    /// Services whose wake-up time has come, or that were marked at start-up, are planned.
    pub fn wake_services(&mut self, now: Timestamp, effects: &mut Effects) {
        for (name, entry) in &self.services {
            if entry.wake_at.is_some_and(|at| at <= now) {
                effects.reconcile.insert(name.clone());
            }
        }
        effects.reconcile.extend(std::mem::take(&mut self.due));
    }

    /// The earliest time a service asked to be planned again.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.services.values().filter_map(|e| e.wake_at).min()
    }

    /// Creates or updates a service. `check_index`: only if the service's modify index is
    /// this (`0`: only if it does not exist).
    pub fn put_service(
        &mut self,
        spec: ServiceSpec,
        check_index: Option<u64>,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) -> Result<(Service, Change, bool), Refusal> {
        let name = spec.name.clone();
        self.check_ports(&spec)?;
        let current = self.services.get(&name).map(|e| e.service.modify_index);
        let created = current.is_none();
        if let Some(want) = check_index
            && current.unwrap_or(0) != want
        {
            return Err(Refusal::IndexMismatch(current));
        }
        let change = match self.services.get_mut(&name) {
            Some(entry) => entry.service.update(spec, now, None),
            None => {
                let service = Service::new(spec, now);
                let entry = ServiceEntry { service, instances: BTreeSet::new(), wake_at: None };
                self.services.insert(name.clone(), entry);
                effects.created_services.insert(name.clone());
                Change::Version { rollout: true }
            }
        };
        if change != Change::None {
            effects.stamp.insert(name.clone());
        }
        self.after_change(&name, change, false, now, ids, effects);
        let service =
            self.services.get(&name).map(|e| e.service.clone()).ok_or(Refusal::NoService)?;
        Ok((service, change, created))
    }

    /// Changes only the count.
    pub fn scale_service(
        &mut self,
        name: &str,
        count: u32,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) -> Result<Service, Refusal> {
        let entry = self.services.get(name).ok_or(Refusal::NoService)?;
        let spec = ServiceSpec { count, ..entry.service.spec.clone() };
        self.put_service(spec, None, now, ids, effects).map(|(s, ..)| s)
    }

    /// Makes a new version with the spec of `version` (the current count kept), rolled out
    /// start-first without canaries. A spec equal to the current one changes nothing.
    pub fn revert_service(
        &mut self,
        name: &str,
        version: u64,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) -> Result<(Service, Change), Refusal> {
        let entry = self.services.get(name).ok_or(Refusal::NoService)?;
        let old = entry.service.versions.iter().find(|v| v.version == version);
        let old = old.ok_or(Refusal::NoVersion(version))?;
        let spec = ServiceSpec { count: entry.service.spec.count, ..old.spec.clone() };
        self.check_ports(&spec)?;
        let change = self.revert_to(name, spec, version, now, ids, effects);
        let service =
            self.services.get(name).map(|e| e.service.clone()).ok_or(Refusal::NoService)?;
        Ok((service, change))
    }

    fn revert_to(
        &mut self,
        name: &str,
        spec: ServiceSpec,
        version: u64,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) -> Change {
        let Some(entry) = self.services.get_mut(name) else { return Change::None };
        let change = entry.service.update(spec, now, Some(version));
        if change != Change::None {
            effects.stamp.insert(name.to_owned());
        }
        self.after_change(name, change, true, now, ids, effects);
        change
    }

    /// Removes a service: every instance is stopped and its deployment cancelled.
    pub fn remove_service(
        &mut self,
        name: &str,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Result<Service, Refusal> {
        let entry = self.services.remove(name).ok_or(Refusal::NoService)?;
        if let Some(id) = entry.service.deployment {
            self.move_deployment(
                id,
                DeploymentTrigger::Cancel,
                Reason::ServiceRemoved,
                "the service was removed".into(),
                now,
                effects,
            );
        }
        for id in &entry.instances {
            self.stop_instance(*id, "its service was removed".into(), None, now, effects);
        }
        effects.removed_services.insert(name.to_owned());
        effects.services.remove(name);
        effects.reconcile.remove(name);
        Ok(entry.service)
    }

    /// Promotes, pauses, resumes or fails a deployment on a user's request.
    pub fn deployment_action(
        &mut self,
        id: DeploymentId,
        action: DeploymentAction,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) -> Result<Deployment, Refusal> {
        let d = self.deployments.get(&id).ok_or(Refusal::NoDeployment)?;
        let (trigger, reason, text) = match action {
            DeploymentAction::Promote => {
                (DeploymentTrigger::Promote, Reason::WaitingHealth, "promoted by a user")
            }
            DeploymentAction::Pause => (DeploymentTrigger::Pause, Reason::User, "paused by a user"),
            DeploymentAction::Resume => {
                (DeploymentTrigger::Resume, Reason::WaitingHealth, "resumed by a user")
            }
            DeploymentAction::Fail => {
                (DeploymentTrigger::Fail, Reason::UserFailed, "failed by a user")
            }
        };
        cube_core::deployment::transition(d.status, trigger).map_err(Refusal::Transition)?;
        let service = d.service.clone();
        self.move_deployment(id, trigger, reason, text.into(), now, effects);
        if trigger == DeploymentTrigger::Fail {
            self.revert_after_failure(&service, id, now, ids, effects);
        }
        effects.reconcile.insert(service);
        self.deployments.get(&id).cloned().ok_or(Refusal::NoDeployment)
    }

    /// Where the live instances of `of`'s service run, for placing `of`.
    pub(super) fn siblings(&self, of: &InstanceOf) -> Siblings {
        let mut siblings = Siblings::default();
        let Some(entry) = self.services.get(&of.service) else { return siblings };
        siblings.distinct = entry.service.spec.distinct_nodes;
        for t in entry.instances.iter().filter_map(|id| self.tasks.get(id)) {
            let (Some(node), Some(other)) = (t.node, &t.instance) else { continue };
            if t.state.is_terminal() || t.desired == DesiredState::Stopped {
                continue;
            }
            siblings.occupied.insert(node);
            if other.version == of.version {
                *siblings.spread.entry(node).or_default() += 1;
            }
        }
        siblings
    }

    /// Instance counts of a service.
    pub fn counts(&self, entry: &ServiceEntry, now: Timestamp) -> Counts {
        let min = entry.service.spec.update.min_healthy_time;
        let mut counts = Counts::default();
        for t in entry.instances.iter().filter_map(|id| self.tasks.get(id)) {
            let Some(of) = &t.instance else { continue };
            if t.state != TaskState::Running || t.desired != DesiredState::Running {
                continue;
            }
            let healthy = healthy_since(t).is_some_and(|s| add(s, min) <= now);
            counts.running += 1;
            counts.healthy += u32::from(healthy);
            match counts.versions.iter_mut().find(|v| v.0 == of.version) {
                Some(v) => {
                    v.1 += 1;
                    v.2 += u32::from(healthy);
                }
                None => counts.versions.push((of.version, 1, u32::from(healthy))),
            }
        }
        counts.versions.sort_unstable();
        counts
    }

    /// After a service's spec changed: a new version with a new template gets a deployment
    /// (cancelling the one before); the service is planned either way.
    fn after_change(
        &mut self,
        name: &str,
        change: Change,
        revert: bool,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) {
        let Some(entry) = self.services.get(name) else { return };
        let version = entry.service.version;
        match change {
            Change::None => return,
            Change::Resized => {}
            Change::Version { rollout } => {
                let before = self
                    .deployments
                    .values()
                    .filter(|d| d.service == name && !d.status.is_terminal())
                    .map(|d| d.id)
                    .collect::<Vec<_>>();
                for id in before {
                    self.move_deployment(
                        id,
                        DeploymentTrigger::Cancel,
                        Reason::Superseded,
                        format!("superseded by version {version}"),
                        now,
                        effects,
                    );
                }
                if rollout {
                    let id = DeploymentId::from_uuid(ids());
                    let previous_version = (version > 1).then(|| version - 1);
                    let mut d = Deployment::new(id, name, version, previous_version, now);
                    d.revert = revert;
                    // A revert skips canaries, and a first version has nothing to compare
                    // canaries with.
                    d.promoted = revert || previous_version.is_none();
                    effects.deployments.insert(id);
                    self.deployments.insert(id, d);
                    if let Some(entry) = self.services.get_mut(name) {
                        entry.service.deployment = Some(id);
                        if let Some(v) = entry.service.current_mut() {
                            v.deployment = Some(id);
                        }
                    }
                }
            }
        }
        effects.services.insert(name.to_owned());
        effects.reconcile.insert(name.to_owned());
    }

    /// Moves a deployment, recording the outcome in its version's history entry.
    fn move_deployment(
        &mut self,
        id: DeploymentId,
        trigger: DeploymentTrigger,
        reason: Reason,
        text: String,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        let Some(d) = self.deployments.get_mut(&id) else { return };
        if d.apply(trigger, reason, text, now).is_err() {
            return;
        }
        effects.deployments.insert(id);
        let (status, service, version) = (d.status, d.service.clone(), d.version);
        if status.is_terminal()
            && let Some(entry) = self.services.get_mut(&service)
            && let Some(v) = entry.service.versions.iter_mut().find(|v| v.version == version)
        {
            v.outcome = Some(status);
            effects.services.insert(service);
        }
    }

    /// After a deployment failed: revert to the last good version, if the strategy says so and
    /// this was not a revert itself.
    fn revert_after_failure(
        &mut self,
        name: &str,
        failed: DeploymentId,
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) {
        let Some(entry) = self.services.get(name) else { return };
        let Some(d) = self.deployments.get(&failed) else { return };
        if d.revert || !entry.service.spec.update.auto_revert {
            return;
        }
        let Some(good) = entry.service.last_good() else { return };
        let (version, spec) =
            (good.version, ServiceSpec { count: entry.service.spec.count, ..good.spec.clone() });
        let description = format!("{}; reverting to version {version}", d.description);
        if let Some(d) = self.deployments.get_mut(&failed) {
            d.description = description;
        }
        self.revert_to(name, spec, version, now, ids, effects);
    }

    /// Plans every service marked in `effects.reconcile` and applies the plans, until none is
    /// left (or each was planned [`ROUNDS`] times).
    pub fn reconcile(&mut self, now: Timestamp, ids: Ids<'_>, effects: &mut Effects) {
        let mut rounds: std::collections::BTreeMap<String, usize> = Default::default();
        while let Some(name) = effects.reconcile.pop_first() {
            let round = rounds.entry(name.clone()).or_default();
            *round += 1;
            if *round > ROUNDS {
                continue;
            }
            self.reconcile_one(&name, now, ids, effects);
        }
    }

    fn reconcile_one(&mut self, name: &str, now: Timestamp, ids: Ids<'_>, effects: &mut Effects) {
        let Some(entry) = self.services.get(name) else { return };
        let service = &entry.service;
        let current = &service.spec.task;
        let instances: Vec<Instance> = entry
            .instances
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .filter_map(|t| {
                let current = service.template(t.instance.as_ref()?.version) == Some(current);
                instance_view(t, current, self.draining_node(t.node))
            })
            .collect();
        let deployment = service.deployment.and_then(|id| self.deployments.get(&id));
        let rollout = deployment.map(|d| Rollout {
            status: d.status,
            revert: d.revert,
            promoted: d.promoted,
            started_at: d.created_at,
            last_progress: d.last_progress.unwrap_or(d.created_at),
        });
        let target = rollout::Target {
            service: name,
            version: service.version,
            count: service.spec.count,
            update: &service.spec.update,
        };
        let plan = rollout::plan(&target, rollout.as_ref(), &instances, now);
        let deployment = deployment.map(|d| d.id);
        self.apply_plan(name, deployment, plan, &instances, now, ids, effects);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_plan(
        &mut self,
        name: &str,
        deployment: Option<DeploymentId>,
        plan: Plan,
        instances: &[Instance],
        now: Timestamp,
        ids: Ids<'_>,
        effects: &mut Effects,
    ) {
        let Some(entry) = self.services.get_mut(name) else { return };
        entry.wake_at = plan.wake_at;
        let (version, count, mut template) =
            (entry.service.version, entry.service.spec.count, entry.service.spec.task.clone());
        // What an instance does without the manager is the service's rule, carried by each
        // instance to its worker (a template's own setting wins).
        if template.on_disconnect.is_keep() {
            template.on_disconnect = entry.service.spec.on_disconnect;
        }
        for id in plan.relabel {
            self.modify(id, effects, |t| {
                if let Some(of) = &mut t.instance {
                    of.version = version;
                }
            });
        }
        for stop in plan.stop {
            let reason = match stop.why {
                StopWhy::Replaced { by } => format!("replaced by {by} (version {version})"),
                StopWhy::Unavailable => {
                    format!("stopped within max_unavailable to make way for version {version}")
                }
                StopWhy::StopFirst => format!(
                    "no room for a replacement beside it: stopped first to make way for version \
                     {version}"
                ),
                StopWhy::ScaledDown => format!("scaled down to {count}"),
                StopWhy::Surplus => "its slot has a better instance".into(),
                StopWhy::Abandoned => "its deployment failed".into(),
            };
            let by = match stop.why {
                StopWhy::Replaced { by } => Some(by),
                _ => None,
            };
            self.stop_instance(stop.task, reason, by, now, effects);
        }
        for start in plan.start {
            let id = TaskId::from_uuid(ids());
            let mut task = Task::new(id, template.clone(), now);
            task.instance =
                Some(InstanceOf { service: name.to_owned(), version, slot: start.slot });
            // Prefer another node than the one where the slot's last instance failed.
            task.failed_nodes = instances
                .iter()
                .filter(|i| i.slot == start.slot)
                .filter(|i| matches!(i.phase, Phase::Ended { cause: EndCause::Exited, .. }))
                .filter_map(|i| self.tasks.get(&i.task)?.events.iter().rev().find_map(|e| e.node))
                .collect();
            let canary = if start.canary { " (canary)" } else { "" };
            task.events[0].reason =
                format!("submitted: {name}/{} version {version}{canary}", start.slot);
            if let Some(entry) = self.services.get_mut(name) {
                entry.instances.insert(id);
            }
            self.submit(task, effects);
            // Instances of the slot that ended by themselves or with their node say what
            // replaced them.
            let ended: Vec<TaskId> = instances
                .iter()
                .filter(|i| i.slot == start.slot)
                .filter(|i| {
                    matches!(i.phase, Phase::Ended { cause: EndCause::Exited | EndCause::Lost, .. })
                })
                .filter(|i| self.tasks.get(&i.task).is_some_and(|t| t.replaced_by.is_none()))
                .map(|i| i.task)
                .collect();
            for old in ended {
                self.modify(old, effects, |t| t.replaced_by = Some(id));
            }
        }
        let Some(id) = deployment else { return };
        if let Some(at) = plan.progress_at
            && let Some(d) = self.deployments.get_mut(&id)
        {
            d.last_progress = Some(at);
            effects.deployments.insert(id);
        }
        match plan.step {
            Some(rollout::Step::Move(trigger, reason, text)) => {
                self.move_deployment(id, trigger, reason, text, now, effects);
                if trigger == DeploymentTrigger::Fail {
                    self.revert_after_failure(name, id, now, ids, effects);
                }
                effects.reconcile.insert(name.to_owned());
            }
            Some(rollout::Step::Note(reason, text)) => {
                if let Some(d) = self.deployments.get_mut(&id)
                    && d.status == DeploymentStatus::Running
                    && (d.reason != reason || d.description != text)
                {
                    d.note(reason, text, now);
                    effects.deployments.insert(id);
                }
            }
            None => {}
        }
    }

    /// Stops task `id` on draining `node` (an instance or a bare task alike).
    pub(super) fn stop_for_drain(
        &mut self,
        id: TaskId,
        node: NodeId,
        reason: String,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        if self.tasks.get(&id).is_some_and(|t| t.node == Some(node)) {
            self.stop_instance(id, reason, None, now, effects);
        }
    }

    /// Stops an instance for `reason`, recording its replacement.
    fn stop_instance(
        &mut self,
        id: TaskId,
        reason: String,
        by: Option<TaskId>,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.desired == DesiredState::Stopped || task.state.is_terminal() {
            return;
        }
        let node = task.node;
        self.modify(id, effects, |t| {
            t.desired = DesiredState::Stopped;
            t.replaced_by = by;
            t.note(now, Note::StopRequested, reason.clone());
            if t.state == TaskState::Pending {
                apply(t, Trigger::Stopped, now, format!("stopped before it was placed: {reason}"));
            }
        });
        if let Some(node) = node {
            effects.stop.push(StopCall { task: id, node });
        }
        self.capacity_changed(effects);
    }
}

fn add(at: Timestamp, d: Duration) -> Timestamp {
    at.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// Since when a running task counts as passing: its last passing check of this run, or its
/// start when it has no check.
fn healthy_since(t: &Task) -> Option<Timestamp> {
    if t.state != TaskState::Running {
        return None;
    }
    let started = t.started_at?;
    if t.spec.health.is_none() {
        return Some(started);
    }
    if t.healthy != Some(true) {
        return None;
    }
    t.events
        .iter()
        .rev()
        .take_while(|e| e.at >= started)
        .find(|e| e.kind == EventKind::Note(Note::HealthPassing))
        .map(|e| e.at)
        .or(Some(started))
}

/// How the planner sees a task of the service.
fn instance_view(t: &Task, current: bool, draining: bool) -> Option<Instance> {
    let of = t.instance.as_ref()?;
    let placed_at = || {
        t.events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Transition(Trigger::Place))
            .map_or(t.updated_at, |e| e.at)
    };
    let phase = if t.state.is_terminal() {
        let lost = t.events.last().is_some_and(|e| e.kind == EventKind::Transition(Trigger::Lost));
        let cause = if t.desired == DesiredState::Stopped {
            EndCause::Stopped
        } else if lost {
            EndCause::Lost
        } else {
            EndCause::Exited
        };
        Phase::Ended { at: t.finished_at.unwrap_or(t.updated_at), cause }
    } else if t.desired == DesiredState::Stopped {
        Phase::Stopping
    } else {
        match t.state {
            TaskState::Pending => Phase::Pending {
                no_room: t.placement.as_ref().filter(|p| p.chosen.is_none()).map(|p| {
                    // A static host port is the obstacle when it is the reason on every node
                    // that would otherwise do.
                    let port = t.spec.ports.iter().find(|p| p.host != 0).map(|p| p.host);
                    let ports = !p.rejected.is_empty()
                        && p.rejected
                            .iter()
                            .all(|r| matches!(r.kind, RejectionKind::Port | RejectionKind::Down))
                        && p.rejected.iter().any(|r| r.kind == RejectionKind::Port);
                    NoRoom { port_conflict: port.filter(|_| ports), reason: p.unplaceable_reason() }
                }),
            },
            TaskState::Scheduled | TaskState::Restarting => {
                Phase::Starting { placed_at: placed_at() }
            }
            TaskState::Running => {
                Phase::Running { placed_at: placed_at(), healthy_since: healthy_since(t) }
            }
            TaskState::Completed | TaskState::Failed => return None,
        }
    };
    let failure = t.events.iter().find_map(|e| match e.kind {
        EventKind::Transition(Trigger::Exited { .. } | Trigger::StartFailed { .. })
        | EventKind::Note(Note::Unhealthy) => Some(e.reason.clone()),
        EventKind::Transition(_) | EventKind::Note(_) => None,
    });
    Some(Instance {
        task: t.id,
        slot: of.slot,
        version: of.version,
        current,
        created_at: t.created_at,
        phase,
        failure,
        draining,
    })
}

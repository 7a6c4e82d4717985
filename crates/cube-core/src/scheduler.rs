//! Schedulers: choose a node for a task, and explain the choice.
//!
//! Every scheduler runs the book's three phases:
//! 1. **candidates**: keep the nodes that *can* run the task (ready, driver, what the worker
//!    allows, constraints, CPU, memory, disk, host ports), recording why each other node was
//!    rejected;
//! 2. **score**: give each candidate a cost (lower is better);
//! 3. **pick**: the lowest cost wins; ties go to the first node in id order.
//!
//! The result is a [`Decision`] carrying an [`Explanation`] (chosen node, runner-up scores,
//! rejection reasons) that is stored with the task: the answer to "why is my task here and not
//! there". An unplaceable task is a decision too, not an error.
//!
//! Kinds: `round-robin` (rotate over nodes), `binpack` (fill the fullest node that fits),
//! `spread` (fewest tasks, then least used) and `epvm` (the book's E-PVM marginal cost, with
//! its bugs fixed: the CPU term counts, reservations are included, a node without stats never
//! wins, and the paper's doubling job ceiling is implemented).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::node::{Allows, Refusal};
use crate::{Bytes, CoreError, DriverKind, Millicores, NodeId, Protocol, Resources, TaskSpec};

/// Which scheduler to use. Named in kebab case (`round-robin`) everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[derive(strum::VariantArray, strum::VariantNames)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = CoreError, parse_err_fn = unknown_scheduler)]
pub enum SchedulerKind {
    /// Rotate over the nodes that fit.
    RoundRobin,
    /// E-PVM opportunity cost (memory, CPU and job count).
    Epvm,
    /// Prefer the node that is fullest after placement.
    Binpack,
    /// Prefer the node with the fewest tasks, then the least used.
    Spread,
}

fn unknown_scheduler(input: &str) -> CoreError {
    CoreError::unknown_name::<SchedulerKind>("scheduler", input)
}

/// What the scheduler knows about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Node name (for explanations; shared, as every explanation that names the node keeps it).
    pub name: Arc<str>,
    /// Whether the node is up and accepting tasks.
    pub ready: bool,
    /// Whether new work may go there (not draining, eligibility on).
    pub eligible: bool,
    /// Labels for constraints.
    pub labels: BTreeMap<String, String>,
    /// Drivers the node can run.
    pub drivers: Vec<DriverKind>,
    /// What its worker lets tasks ask for beyond the defaults.
    pub allows: Allows,
    /// What the node offers.
    pub capacity: Resources,
    /// What tasks placed there (and not finished) reserve.
    pub reserved: Resources,
    /// Host ports taken by those tasks.
    pub used_ports: BTreeSet<(u16, Protocol)>,
    /// Number of those tasks.
    pub task_count: u32,
    /// Observed load, when the node has reported stats.
    pub load: Option<NodeLoad>,
}

/// Observed load of a node, from its latest stats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeLoad {
    /// Busy CPU fraction of the host, in [0, 1].
    pub cpu_busy: f64,
    /// Used memory fraction of the host, in [0, 1].
    pub memory_used: f64,
}

/// The nodes a scheduler chooses among (in a stable order, e.g. by id), with the aggregates
/// scoring needs kept in step as tasks are assigned, so no decision rescans the whole cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSet {
    nodes: Vec<NodeView>,
    /// Most tasks on any node (E-PVM's job ceiling depends on it).
    busiest: u32,
}

impl NodeSet {
    /// A set of `nodes`.
    pub fn new(nodes: Vec<NodeView>) -> Self {
        let busiest = nodes.iter().map(|n| n.task_count).max().unwrap_or(0);
        Self { nodes, busiest }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// Records that a task needing `spec` was placed on node number `index` (from
    /// [`Decision::Place`]), before the next decision.
    pub fn assign(&mut self, index: usize, spec: &TaskSpec) {
        if let Some(n) = self.nodes.get_mut(index) {
            n.reserved = n.reserved.saturating_add(spec.resources);
            n.used_ports
                .extend(spec.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol)));
            n.task_count += 1;
            self.busiest = self.busiest.max(n.task_count);
        }
    }
}

/// A node and its cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScoredNode {
    /// Node id.
    pub node: NodeId,
    /// Node name (shared with the node's [`NodeView`]: each placed task keeps several).
    pub name: Arc<str>,
    /// Cost (lower is better).
    pub score: f64,
}

/// A node that cannot take the task, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rejection {
    /// Node id.
    pub node: NodeId,
    /// Node name.
    pub name: Arc<str>,
    /// Why, e.g. "needs 512MiB memory, 200MiB free".
    pub reason: String,
    /// Why, as a kind for programs (`other` in records written before kinds existed).
    #[serde(default)]
    pub kind: RejectionKind,
}

/// Why a node cannot take a task, for programs (the sentence is for people).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
#[derive(strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RejectionKind {
    /// The node is down.
    Down,
    /// It lacks the task's driver.
    Driver,
    /// A placement constraint is not met.
    Constraint,
    /// Not enough free CPU, memory or disk.
    Resources,
    /// A static host port of the task is taken there.
    Port,
    /// The task already failed there.
    FailedHere,
    /// E-PVM needs stats the node has not reported yet.
    NoStats,
    /// It already runs an instance of the task's service (`distinct_nodes`).
    Distinct,
    /// It takes no new work (draining, or eligibility off).
    Ineligible,
    /// The task asks for something its worker does not allow (a user, privileges, a host
    /// mount, the host network, a capability); the reason names the worker setting.
    NotAllowed,
    /// Not recorded.
    #[default]
    Other,
}

/// Where the other instances of a service run, for placing one more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Siblings {
    /// Per node: instances of the same version. Nodes with fewer are preferred, whatever the
    /// scheduler, so a service spreads over its nodes.
    pub spread: std::collections::HashMap<NodeId, u32>,
    /// Nodes holding any live instance of the service.
    pub occupied: std::collections::HashSet<NodeId>,
    /// Never two instances on one node: occupied nodes are refused.
    pub distinct: bool,
}

/// Score added per same-version sibling on a node: larger than any scheduler's own score, so
/// spreading a service comes first and the scheduler decides among equals.
const SIBLING_COST: f64 = 1e6;

/// Why a task was (or could not be) placed where it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Explanation {
    /// The scheduler that decided.
    pub scheduler: SchedulerKind,
    /// The winner, if any.
    pub chosen: Option<ScoredNode>,
    /// The best-scoring candidates, winner first (at most [`MAX_EXPLAINED`]).
    pub candidates: Vec<ScoredNode>,
    /// Nodes that could not take the task (at most [`MAX_REJECTIONS`] of them).
    pub rejected: Vec<Rejection>,
    /// How many nodes were rejected in all.
    #[serde(default)]
    pub rejected_total: usize,
}

/// Candidates kept in an explanation.
pub const MAX_EXPLAINED: usize = 5;

impl Explanation {
    /// One line saying why nothing fits, e.g. "no node fits: w1: needs 512MiB memory, 200MiB
    /// free; w2: node is down".
    pub fn unplaceable_reason(&self) -> String {
        if self.rejected.is_empty() {
            return "no nodes registered".to_owned();
        }
        let reasons: Vec<String> =
            self.rejected.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect();
        let more = self.rejected_total.saturating_sub(self.rejected.len());
        let more = if more > 0 { format!("; and {more} more nodes") } else { String::new() };
        format!("no node fits: {}{more}", reasons.join("; "))
    }
}

/// The scheduler's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Place the task on `node`.
    Place {
        /// The chosen node.
        node: NodeId,
        /// Its position in the [`NodeSet`] (for [`NodeSet::assign`]).
        index: usize,
        /// Why.
        explanation: Explanation,
    },
    /// No node can take the task now.
    Unplaceable {
        /// Why not, per node.
        explanation: Explanation,
    },
}

/// A scheduler with its (small) state: the round-robin cursor.
#[derive(Clone, Debug)]
pub struct Scheduler {
    kind: SchedulerKind,
    /// Round-robin position.
    cursor: usize,
    /// Where the next sampled scan starts (large clusters only).
    offset: usize,
}

/// Clusters up to this size are scored in full.
pub const FULL_SCORING_MAX_NODES: usize = 128;
/// Feasible nodes scored per placement in larger clusters.
pub const SAMPLE_SIZE: usize = 64;
/// Rejections kept in an explanation (the total is counted separately).
pub const MAX_REJECTIONS: usize = 32;

/// Lieb's square-ice constant: the base the book's E-PVM uses for its exponential costs.
pub const LIEB: f64 = 1.539_600_717_839_002;
/// The book's CPU capacity divisor (2^0.8): a host is "full" at about 80% busy.
pub const EPVM_CPU_CAPACITY: f64 = 1.741_101_126_592_248;

impl Scheduler {
    /// A scheduler of `kind`.
    pub fn new(kind: SchedulerKind) -> Self {
        Self { kind, cursor: 0, offset: 0 }
    }

    /// Which kind it is.
    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// Chooses a node for `spec` among `nodes` (in a stable order, e.g. by id). Nodes in
    /// `avoid` (where the task already failed) are used only if nothing else fits.
    pub fn place(&mut self, spec: &TaskSpec, set: &NodeSet, avoid: &[NodeId]) -> Decision {
        self.place_among(spec, set, avoid, None)
    }

    /// [`Scheduler::place`] for an instance of a service whose other instances are
    /// `siblings`: spread over nodes first, and never beside one with `distinct`.
    pub fn place_among(
        &mut self,
        spec: &TaskSpec,
        set: &NodeSet,
        avoid: &[NodeId],
        siblings: Option<&Siblings>,
    ) -> Decision {
        let nodes = set.nodes();
        let constraints = &spec.constraints;
        let n = nodes.len();
        // Small clusters are scored in full. Large ones score a bounded sample of feasible
        // nodes, starting where the previous placement stopped (kube-scheduler's
        // percentageOfNodesToScore, Nomad's limit iterator): placement cost stops growing with
        // the cluster, at the price of sometimes missing the very best node.
        let (start, limit) = if n <= FULL_SCORING_MAX_NODES {
            (0, usize::MAX)
        } else {
            (self.offset % n, SAMPLE_SIZE)
        };
        // (node index, why), in the order found; only the kept ones are put into words.
        let mut rejected: Vec<(usize, Reject)> = Vec::new();
        let mut rejected_total = 0;
        let mut feasible = Vec::new();
        let mut examined = 0;
        for k in 0..n {
            let i = (start + k) % n;
            examined += 1;
            let distinct =
                siblings.is_some_and(|s| s.distinct && s.occupied.contains(&nodes[i].id));
            let verdict =
                if distinct { Err(Reject::Distinct) } else { check(spec, constraints, &nodes[i]) };
            match verdict {
                Ok(()) => {
                    feasible.push(i);
                    if feasible.len() >= limit {
                        break;
                    }
                }
                Err(reason) => {
                    rejected_total += 1;
                    if rejected.len() < MAX_REJECTIONS {
                        rejected.push((i, reason));
                    }
                }
            }
        }
        if limit != usize::MAX {
            self.offset = (start + examined) % n;
        }
        // Prefer nodes the task has not failed on; fall back to them rather than not running.
        if feasible.iter().any(|i| !avoid.contains(&nodes[*i].id)) {
            feasible.retain(|&i| {
                let keep = !avoid.contains(&nodes[i].id);
                if !keep {
                    rejected_total += 1;
                    rejected.push((i, Reject::FailedHere));
                }
                keep
            });
        }
        // Scored in node order so ties go to the first node; round-robin counts from its cursor.
        feasible.sort_unstable();
        let max_jobs = epvm_max_jobs(set.busiest);
        let mut scored: Vec<(usize, f64)> = Vec::with_capacity(feasible.len());
        for &i in &feasible {
            match self.score(spec, nodes, i, max_jobs) {
                Ok(score) => {
                    let same =
                        siblings.and_then(|s| s.spread.get(&nodes[i].id)).copied().unwrap_or(0);
                    scored.push((i, score + f64::from(same) * SIBLING_COST));
                }
                Err(reason) => {
                    rejected_total += 1;
                    rejected.push((i, reason));
                }
            }
        }
        // Stable sort: equal scores keep node order, so ties go to the first node.
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        let candidates: Vec<ScoredNode> = scored
            .iter()
            .take(MAX_EXPLAINED)
            .map(|&(i, score)| ScoredNode { node: nodes[i].id, name: nodes[i].name.clone(), score })
            .collect();
        // A placed task needs only a glimpse of the rejections; an unplaceable one needs them.
        let keep = if scored.is_empty() { MAX_REJECTIONS } else { MAX_EXPLAINED };
        let mut rejected: Vec<Rejection> = rejected
            .into_iter()
            .take(keep)
            .map(|(i, r)| Rejection {
                node: nodes[i].id,
                name: nodes[i].name.clone(),
                reason: r.describe(spec),
                kind: r.kind(),
            })
            .collect();
        rejected.sort_by(|a, b| a.name.cmp(&b.name));
        let explanation = |chosen| Explanation {
            scheduler: self.kind,
            chosen,
            candidates,
            rejected,
            rejected_total,
        };
        match scored.first() {
            Some(&(i, _)) => {
                let chosen = Some(ScoredNode {
                    node: nodes[i].id,
                    name: nodes[i].name.clone(),
                    score: scored[0].1,
                });
                let decision = Decision::Place {
                    node: nodes[i].id,
                    index: i,
                    explanation: explanation(chosen),
                };
                if self.kind == SchedulerKind::RoundRobin {
                    self.cursor = (i + 1) % nodes.len();
                }
                decision
            }
            None => Decision::Unplaceable { explanation: explanation(None) },
        }
    }

    /// The cost of placing `spec` on `nodes[i]` (lower is better), or why the node cannot be
    /// scored.
    fn score(
        &self,
        spec: &TaskSpec,
        nodes: &[NodeView],
        i: usize,
        max_jobs: f64,
    ) -> Result<f64, Reject> {
        let node = &nodes[i];
        let req = &spec.resources;
        match self.kind {
            SchedulerKind::RoundRobin => {
                // Distance from the cursor around the ring of all nodes.
                let n = nodes.len();
                Ok(((i + n - self.cursor % n) % n) as f64)
            }
            SchedulerKind::Binpack => {
                // Fullest after placement first; among equals, the one with more tasks.
                let fill = utilization_after(node, req);
                Ok(1.0 - fill - f64::from(node.task_count) * 1e-9)
            }
            SchedulerKind::Spread => {
                // Fewest tasks first; among equals, the least used.
                Ok(f64::from(node.task_count) + utilization_after(node, req) * 0.5)
            }
            SchedulerKind::Epvm => {
                let load = node.load.ok_or(Reject::NoStats)?;
                Ok(epvm_cost(node, load, req, max_jobs))
            }
        }
    }
}

/// The paper's job ceiling: the smallest power of two at least as large as the busiest node's
/// job count after one more placement (the book fixed it at 4).
pub fn epvm_max_jobs(busiest: u32) -> f64 {
    f64::from(busiest.saturating_add(1).next_power_of_two())
}

/// E-PVM marginal cost of adding a task needing `req` to `node`:
///
/// ```text
/// mem  = L^(mem_after) - L^(mem_before)          mem_x = host used fraction + reserved/capacity
/// cpu  = L^(cpu_after) - L^(cpu_before)          cpu_x = (host busy + reserved/capacity) / 2^0.8
/// jobs = L^((n+1)/max_jobs) - L^(n/max_jobs)     counted once per resource, as in the book
/// cost = mem + jobs + cpu + jobs
/// ```
pub fn epvm_cost(node: &NodeView, load: NodeLoad, req: &Resources, max_jobs: f64) -> f64 {
    let mem_cap = node.capacity.memory.get().max(1) as f64;
    let cpu_cap = node.capacity.cpu.get().max(1) as f64;
    let mem_before = load.memory_used + node.reserved.memory.get() as f64 / mem_cap;
    let mem_after = mem_before + req.memory.get() as f64 / mem_cap;
    let cpu_before = (load.cpu_busy + node.reserved.cpu.get() as f64 / cpu_cap) / EPVM_CPU_CAPACITY;
    let cpu_after = cpu_before + (req.cpu.get() as f64 / cpu_cap) / EPVM_CPU_CAPACITY;
    let n = f64::from(node.task_count);
    let jobs = LIEB.powf((n + 1.0) / max_jobs) - LIEB.powf(n / max_jobs);
    let mem = LIEB.powf(mem_after) - LIEB.powf(mem_before);
    let cpu = LIEB.powf(cpu_after) - LIEB.powf(cpu_before);
    mem + jobs + cpu + jobs
}

/// Mean of the CPU and memory fractions in use after placing `req` (dimensions the node does
/// not offer are left out).
fn utilization_after(node: &NodeView, req: &Resources) -> f64 {
    let mut fractions = Vec::with_capacity(2);
    if node.capacity.cpu.get() > 0 {
        fractions.push(
            (node.reserved.cpu.get() + req.cpu.get()) as f64 / node.capacity.cpu.get() as f64,
        );
    }
    if node.capacity.memory.get() > 0 {
        fractions.push(
            (node.reserved.memory.get() + req.memory.get()) as f64
                / node.capacity.memory.get() as f64,
        );
    }
    if fractions.is_empty() { 0.0 } else { fractions.iter().sum::<f64>() / fractions.len() as f64 }
}

/// Why a node cannot take a task. Cheap to build; turned into words only for the rejections an
/// explanation keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    Down,
    Driver(DriverKind),
    /// Index of the constraint not met.
    Constraint(usize),
    Cpu {
        need: Millicores,
        free: Millicores,
    },
    Memory {
        need: Bytes,
        free: Bytes,
    },
    Disk {
        need: Bytes,
        free: Bytes,
    },
    Port(u16, Protocol),
    FailedHere,
    NoStats,
    Distinct,
    Ineligible,
    NotAllowed(Refusal),
}

impl Reject {
    fn kind(self) -> RejectionKind {
        match self {
            Reject::Down => RejectionKind::Down,
            Reject::Driver(_) => RejectionKind::Driver,
            Reject::Constraint(_) => RejectionKind::Constraint,
            Reject::Cpu { .. } | Reject::Memory { .. } | Reject::Disk { .. } => {
                RejectionKind::Resources
            }
            Reject::Port(..) => RejectionKind::Port,
            Reject::FailedHere => RejectionKind::FailedHere,
            Reject::NoStats => RejectionKind::NoStats,
            Reject::Distinct => RejectionKind::Distinct,
            Reject::Ineligible => RejectionKind::Ineligible,
            Reject::NotAllowed(_) => RejectionKind::NotAllowed,
        }
    }

    fn describe(self, spec: &TaskSpec) -> String {
        match self {
            Reject::Down => "node is down".into(),
            // Off unless the worker enables it, so the reason says how.
            Reject::Driver(DriverKind::Process) => Refusal::ProcessDisabled.describe(spec),
            Reject::Driver(d) => format!("{d} driver not available"),
            Reject::Constraint(i) => match spec.constraints.get(i) {
                Some(c) => format!("constraint not met: {c}"),
                None => "constraint not met".into(),
            },
            Reject::Cpu { need, free } => {
                format!("needs {} CPU, {} free", show_cpu(need), show_cpu(free))
            }
            Reject::Memory { need, free } => {
                format!("needs {} memory, {} free", need.human(), free.human())
            }
            Reject::Disk { need, free } => {
                format!("needs {} disk, {} free", need.human(), free.human())
            }
            Reject::Port(port, proto) => {
                format!("host port {port}/{proto} already in use")
            }
            Reject::FailedHere => "the task already failed on this node".into(),
            Reject::NoStats => "no stats reported yet".into(),
            Reject::Distinct => "already runs an instance of this service (distinct_nodes)".into(),
            Reject::Ineligible => "node is ineligible (draining, or eligibility off)".into(),
            Reject::NotAllowed(r) => r.describe(spec),
        }
    }
}

/// Feasibility: can `node` run `spec` at all?
fn check(spec: &TaskSpec, constraints: &[Constraint], node: &NodeView) -> Result<(), Reject> {
    if !node.ready {
        return Err(Reject::Down);
    }
    if !node.eligible {
        return Err(Reject::Ineligible);
    }
    if !node.drivers.contains(&spec.driver) {
        return Err(Reject::Driver(spec.driver));
    }
    if let Some(refusal) = node.allows.refusal(spec) {
        return Err(Reject::NotAllowed(refusal));
    }
    if let Some(i) = constraints.iter().position(|c| !c.matches(node.id, &node.name, &node.labels))
    {
        return Err(Reject::Constraint(i));
    }
    let req = &spec.resources;
    let free = node.capacity.cpu.saturating_sub(node.reserved.cpu);
    if req.cpu > free {
        return Err(Reject::Cpu { need: req.cpu, free });
    }
    let free = node.capacity.memory.saturating_sub(node.reserved.memory);
    if req.memory > free {
        return Err(Reject::Memory { need: req.memory, free });
    }
    let free = node.capacity.disk.saturating_sub(node.reserved.disk);
    if req.disk > free {
        return Err(Reject::Disk { need: req.disk, free });
    }
    for p in spec.ports.iter().filter(|p| p.host != 0) {
        if node.used_ports.contains(&(p.host, p.protocol)) {
            return Err(Reject::Port(p.host, p.protocol));
        }
    }
    Ok(())
}

fn show_cpu(m: Millicores) -> String {
    format!("{}m", m.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortSpec, RestartPolicy};
    use std::time::Duration;
    use uuid::Uuid;

    fn node(n: u128, name: &str) -> NodeView {
        NodeView {
            id: NodeId::from_uuid(Uuid::from_u128(n)),
            name: name.into(),
            ready: true,
            eligible: true,
            labels: BTreeMap::new(),
            drivers: vec![DriverKind::Docker, DriverKind::Process],
            allows: Allows::default(),
            capacity: Resources {
                cpu: Millicores::cores(2),
                memory: Bytes::gib(1),
                disk: Bytes::gib(10),
            },
            reserved: Resources::default(),
            used_ports: BTreeSet::new(),
            task_count: 0,
            load: Some(NodeLoad { cpu_busy: 0.0, memory_used: 0.0 }),
        }
    }

    fn spec(cpu: u64, mem_mib: u64) -> TaskSpec {
        TaskSpec {
            name: "t".into(),
            driver: DriverKind::Process,
            image: None,
            command: Some("sleep".into()),
            args: vec![],
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu: Millicores(cpu),
                memory: Bytes::mib(mem_mib),
                disk: Bytes(0),
            },
            ports: vec![],
            restart: RestartPolicy::default(),
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

    /// Places `count` tasks, updating the node views as the manager would, and returns how many
    /// landed on each node.
    fn run(
        kind: SchedulerKind,
        nodes: &mut Vec<NodeView>,
        spec: &TaskSpec,
        count: usize,
    ) -> Vec<u32> {
        let mut s = Scheduler::new(kind);
        let mut set = NodeSet::new(std::mem::take(nodes));
        for _ in 0..count {
            match s.place(spec, &set, &[]) {
                Decision::Place { index, .. } => set.assign(index, spec),
                Decision::Unplaceable { explanation } => {
                    panic!("{}", explanation.unplaceable_reason())
                }
            }
        }
        *nodes = set.nodes().to_vec();
        nodes.iter().map(|n| n.task_count).collect()
    }

    fn set(nodes: &[NodeView]) -> NodeSet {
        NodeSet::new(nodes.to_vec())
    }

    fn three() -> Vec<NodeView> {
        vec![node(1, "w1"), node(2, "w2"), node(3, "w3")]
    }

    #[test]
    fn round_robin_rotates_evenly() {
        assert_eq!(run(SchedulerKind::RoundRobin, &mut three(), &spec(0, 0), 30), [10, 10, 10]);
    }

    #[test]
    fn round_robin_skips_nodes_that_do_not_fit() {
        let mut nodes = three();
        nodes[1].ready = false;
        assert_eq!(run(SchedulerKind::RoundRobin, &mut nodes, &spec(0, 0), 10), [5, 0, 5]);
    }

    #[test]
    fn binpack_fills_one_node_before_the_next() {
        // 1GiB nodes, 100MiB tasks: ten fit per node.
        let mut nodes = three();
        let counts = run(SchedulerKind::Binpack, &mut nodes, &spec(0, 100), 10);
        assert_eq!(counts, [10, 0, 0]);
        let counts = run(SchedulerKind::Binpack, &mut nodes, &spec(0, 100), 5);
        assert_eq!(counts, [10, 5, 0]);
    }

    #[test]
    fn spread_keeps_nodes_even() {
        assert_eq!(run(SchedulerKind::Spread, &mut three(), &spec(100, 10), 30), [10, 10, 10]);
        let mut nodes = three();
        nodes[0].task_count = 4;
        assert_eq!(run(SchedulerKind::Spread, &mut nodes, &spec(0, 0), 8), [4, 4, 4]);
    }

    #[test]
    fn epvm_cost_matches_hand_computation() {
        // Node: 2 cores, 1GiB; host 25% memory used, 40% CPU busy; 256MiB and 500m reserved by
        // 3 tasks. Task: 256MiB, 500m. Busiest node has 3 tasks -> max_jobs = 4.
        let mut n = node(1, "w1");
        n.reserved = Resources { cpu: Millicores(500), memory: Bytes::mib(256), disk: Bytes(0) };
        n.task_count = 3;
        let load = NodeLoad { cpu_busy: 0.4, memory_used: 0.25 };
        let req = Resources { cpu: Millicores(500), memory: Bytes::mib(256), disk: Bytes(0) };
        // mem: before 0.25 + 0.25 = 0.5, after 0.75.
        // cpu: before (0.4 + 0.25)/1.7411011 = 0.3733270, after + 0.25/1.7411011 = 0.5169143.
        // mem  = L^0.75 - L^0.5             = 0.1413464
        // cpu  = L^0.5169143 - L^0.3733270  = 0.0750946
        // jobs = L^(4/4) - L^(3/4)          = 0.1574479 (twice)
        // total                             = 0.5313367
        let got = epvm_cost(&n, load, &req, 4.0);
        assert!((got - 0.531_336_7).abs() < 1e-6, "hand-computed total: {got}");
        assert_eq!(epvm_max_jobs(n.task_count), 4.0);
        assert_eq!(epvm_max_jobs(4), 8.0, "doubles once a node exceeds the ceiling");
    }

    #[test]
    fn epvm_cpu_term_counts() {
        // Same memory and job count; the busier CPU must cost more (the book's CPU terms
        // cancelled out).
        let idle = NodeLoad { cpu_busy: 0.1, memory_used: 0.2 };
        let busy = NodeLoad { cpu_busy: 0.9, memory_used: 0.2 };
        let req = Resources { cpu: Millicores(1000), memory: Bytes::mib(100), disk: Bytes(0) };
        let n = node(1, "w1");
        assert!(epvm_cost(&n, busy, &req, 1.0) > epvm_cost(&n, idle, &req, 1.0));
        // And the scheduler picks the idle one.
        let mut nodes = three();
        nodes[0].load = Some(busy);
        nodes[1].load = Some(idle);
        nodes[2].load = Some(busy);
        let Decision::Place { node, explanation, .. } =
            Scheduler::new(SchedulerKind::Epvm).place(&spec(1000, 100), &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(node, nodes[1].id);
        assert_eq!(explanation.candidates.len(), 3);
        assert!(explanation.candidates[0].score < explanation.candidates[1].score);
    }

    #[test]
    fn epvm_never_picks_a_node_without_stats() {
        let mut nodes = three();
        nodes[0].load = None;
        nodes[1].load = Some(NodeLoad { cpu_busy: 0.95, memory_used: 0.9 });
        nodes[2].load = None;
        let Decision::Place { node, explanation, .. } =
            Scheduler::new(SchedulerKind::Epvm).place(&spec(0, 0), &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(node, nodes[1].id);
        let reasons: Vec<&str> = explanation.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["no stats reported yet", "no stats reported yet"]);
        let mut none = three();
        none.iter_mut().for_each(|n| n.load = None);
        assert!(matches!(
            Scheduler::new(SchedulerKind::Epvm).place(&spec(0, 0), &set(&none), &[]),
            Decision::Unplaceable { .. }
        ));
    }

    #[test]
    fn unplaceable_tasks_get_a_reason_per_node() {
        let mut nodes = three();
        nodes[0].reserved.memory = Bytes::mib(824);
        nodes[1].ready = false;
        nodes[2].labels.insert("zone".into(), "b".into());
        let mut s = spec(0, 512);
        s.constraints = vec!["node.labels.zone == b".parse().unwrap()];
        nodes[2].capacity.memory = Bytes::mib(256);
        let Decision::Unplaceable { explanation } =
            Scheduler::new(SchedulerKind::Spread).place(&s, &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(
            explanation.unplaceable_reason(),
            "no node fits: w1: constraint not met: node.labels.zone == b; w2: node is down; \
             w3: needs 512MiB memory, 256MiB free"
        );
    }

    #[test]
    fn feasibility_checks_cpu_disk_ports_and_drivers() {
        let mut n = node(1, "w1");
        n.used_ports.insert((8080, Protocol::Tcp));
        n.drivers = vec![DriverKind::Process];
        let mut s = spec(3000, 0);
        assert_eq!(check(&s, &[], &n).unwrap_err().describe(&s), "needs 3000m CPU, 2000m free");
        s.resources.cpu = Millicores(0);
        s.resources.disk = Bytes::gib(20);
        assert_eq!(
            check(&s, &[], &n).unwrap_err().describe(&s),
            "needs 20.0GiB disk, 10.0GiB free"
        );
        s.resources.disk = Bytes(0);
        s.ports = vec![PortSpec { container: 80, host: 8080, protocol: Protocol::Tcp }];
        assert_eq!(
            check(&s, &[], &n).unwrap_err().describe(&s),
            "host port 8080/tcp already in use"
        );
        s.ports.clear();
        s.driver = DriverKind::Docker;
        assert_eq!(check(&s, &[], &n).unwrap_err().describe(&s), "docker driver not available");
    }

    #[test]
    fn nodes_that_do_not_allow_what_a_task_asks_for_are_rejected_naming_the_setting() {
        let mut nodes = three();
        nodes[0].drivers = vec![DriverKind::Docker];
        nodes[1].allows.privileged = true;
        nodes[2].allows.host_mounts = vec!["/srv".into()];
        let mut process = spec(0, 0);
        process.user = Some("root".into());
        let Decision::Unplaceable { explanation } =
            Scheduler::new(SchedulerKind::Spread).place(&process, &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(
            explanation.unplaceable_reason(),
            "no node fits: w1: does not enable the process driver (start its worker with \
             --driver process); w2: process tasks may not run as user root (start the worker \
             with --allow-user root); w3: process tasks may not run as user root (start the \
             worker with --allow-user root)"
        );
        assert_eq!(explanation.rejected[0].kind, RejectionKind::Driver);
        assert_eq!(explanation.rejected[1].kind, RejectionKind::NotAllowed);

        let mut container: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "c", "driver": "docker", "image": "i", "privileged": true,
            "mounts": [{"source": "/srv/data", "target": "/data"}]
        }))
        .unwrap();
        let Decision::Unplaceable { explanation } =
            Scheduler::new(SchedulerKind::Spread).place(&container, &set(&nodes), &[])
        else {
            panic!()
        };
        let reasons: Vec<&str> = explanation.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "privileged containers are not allowed (start the worker with --allow-privileged)",
                "host mount of /srv/data is not allowed (start the worker with \
                 --allow-host-mounts /srv/data or a parent)",
                "privileged containers are not allowed (start the worker with --allow-privileged)",
            ]
        );
        // The node that allows what is left takes it.
        container.privileged = false;
        let Decision::Place { node, explanation, .. } =
            Scheduler::new(SchedulerKind::Spread).place(&container, &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(node, nodes[2].id);
        assert_eq!(explanation.rejected_total, 2);
    }

    #[test]
    fn large_clusters_score_a_bounded_sample_that_moves_on() {
        let mut nodes: Vec<NodeView> =
            (0..1000u128).map(|i| node(i + 1, &format!("n{i}"))).collect();
        // Every other node is full: the sample keeps scanning until it has enough feasible ones.
        for n in nodes.iter_mut().step_by(2) {
            n.reserved.memory = n.capacity.memory;
        }
        let mut s = Scheduler::new(SchedulerKind::Binpack);
        let Decision::Place { explanation: first, .. } = s.place(&spec(0, 10), &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(first.candidates.len(), MAX_EXPLAINED);
        assert_eq!(first.rejected.len(), MAX_EXPLAINED, "a placed task keeps a few rejections");
        assert_eq!(first.rejected_total, SAMPLE_SIZE, "half of the examined nodes were full");
        let Decision::Place { node: second, .. } = s.place(&spec(0, 10), &set(&nodes), &[]) else {
            panic!()
        };
        let first_chosen = first.chosen.unwrap().node;
        assert_ne!(second, first_chosen, "the next placement samples other nodes");
        // Nothing fits anywhere: every node is examined and the reason counts them all.
        let Decision::Unplaceable { explanation } = s.place(&spec(0, 4096), &set(&nodes), &[])
        else {
            panic!()
        };
        assert_eq!(explanation.rejected_total, 1000);
        let reason = explanation.unplaceable_reason();
        assert!(reason.ends_with("; and 968 more nodes"), "{reason}");
    }

    #[test]
    fn failed_nodes_are_avoided_while_others_fit() {
        let nodes = three();
        let avoid = [nodes[0].id, nodes[1].id];
        let Decision::Place { node, .. } =
            Scheduler::new(SchedulerKind::Binpack).place(&spec(0, 0), &set(&nodes), &avoid)
        else {
            panic!()
        };
        assert_eq!(node, nodes[2].id);
        let all: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        assert!(
            matches!(
                Scheduler::new(SchedulerKind::Binpack).place(&spec(0, 0), &set(&nodes), &all),
                Decision::Place { .. }
            ),
            "falls back rather than leaving the task pending"
        );
    }

    #[test]
    fn instances_of_a_service_spread_first_and_distinct_nodes_is_a_hard_rule() {
        let nodes = three();
        // Binpack would pack every task on the first node; a service's instances still spread.
        let siblings = Siblings {
            spread: [(nodes[0].id, 1), (nodes[1].id, 1)].into_iter().collect(),
            occupied: [nodes[0].id, nodes[1].id].into_iter().collect(),
            distinct: false,
        };
        let place = |siblings: &Siblings| {
            Scheduler::new(SchedulerKind::Binpack).place_among(
                &spec(0, 0),
                &set(&nodes),
                &[],
                Some(siblings),
            )
        };
        let Decision::Place { node, .. } = place(&siblings) else { panic!() };
        assert_eq!(node, nodes[2].id);

        let distinct =
            Siblings { occupied: nodes.iter().map(|n| n.id).collect(), distinct: true, ..siblings };
        let Decision::Unplaceable { explanation } = place(&distinct) else { panic!() };
        assert!(explanation.rejected.iter().all(|r| r.kind == RejectionKind::Distinct));
        assert_eq!(
            explanation.rejected[0].reason,
            "already runs an instance of this service (distinct_nodes)"
        );
    }
}

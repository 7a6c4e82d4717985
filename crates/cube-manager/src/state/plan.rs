//! Dry runs of a service update (`POST /v1/services/{name}/plan`): what would change, field by
//! field, whether instances would be replaced, and where each new instance would go or why it
//! could not, from the scheduler's own explanations. Nothing is changed.

use cube_core::scheduler::Siblings;
use cube_core::service::ServiceSpec;
use cube_core::{DesiredState, Explanation, InstanceOf, NodeSet};

use super::State;

/// What an update would do.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    /// `create`, `none`, `in_place` (count, strategy or rules only) or `destructive` (the
    /// template changed: instances are replaced).
    pub change: &'static str,
    /// The version it would make (the current one when only the count changes).
    pub version: u64,
    /// The current modify index, for `check_index`.
    pub modify_index: u64,
    /// Changed fields: (dotted path, old value, new value); `None` for absent.
    pub diff: Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)>,
    /// What the rollout would do, in words.
    pub rollout: String,
    /// New instances, in slot order, with where each would go or why it cannot.
    pub placements: Vec<(u32, Explanation)>,
}

impl State {
    /// Plans an update of a service to `spec` (or its creation) without changing anything.
    pub fn plan_service(&self, spec: &ServiceSpec) -> ServicePlan {
        let current = self.services.get(&spec.name);
        let (change, version, modify_index) = match current {
            None => ("create", 1, 0),
            Some(e) if e.service.spec == *spec => {
                ("none", e.service.version, e.service.modify_index)
            }
            Some(e) if e.service.spec.differs_only_in_count(spec) => {
                ("in_place", e.service.version, e.service.modify_index)
            }
            Some(e) if e.service.spec.task == spec.task => {
                ("in_place", e.service.version + 1, e.service.modify_index)
            }
            Some(e) => ("destructive", e.service.version + 1, e.service.modify_index),
        };
        let diff = match current {
            Some(e) => diff(&to_json(&e.service.spec), &to_json(spec)),
            None => Vec::new(),
        };
        let running = current.map_or(0, |e| {
            e.instances
                .iter()
                .filter_map(|id| self.tasks.get(id))
                .filter(|t| t.desired == DesiredState::Running && !t.state.is_terminal())
                .count() as u32
        });
        // The slots that would get a new instance.
        let new: Vec<u32> = match change {
            "create" | "destructive" => (0..spec.count).collect(),
            _ => (running.min(spec.count)..spec.count).collect(),
        };
        let u = &spec.update;
        let rollout = match change {
            "none" => "nothing changes".to_owned(),
            "in_place" if new.is_empty() && spec.count < running => {
                format!(
                    "stops {} instances (slots {} and up); nothing else restarts",
                    running - spec.count,
                    spec.count
                )
            }
            "in_place" if new.is_empty() => {
                "relabels the running instances; nothing restarts".to_owned()
            }
            "in_place" => format!("starts {} more instances; nothing restarts", new.len()),
            "create" => {
                format!("starts {} instances; the deployment ends once all are healthy", spec.count)
            }
            _ => {
                let canaries = if u.canary > 0 {
                    format!(
                        "first {} canaries beside the old instances, then waits for {}; ",
                        u.canary,
                        if u.auto_promote { "them to be healthy" } else { "promote" }
                    )
                } else {
                    String::new()
                };
                format!(
                    "replaces {running} instances: {canaries}up to {} extra at a time, at most {} \
                     below {} healthy; each new instance must pass its checks for {}; on failure \
                     {}",
                    u.max_surge.rounded_up(spec.count),
                    u.max_unavailable.rounded_down(spec.count),
                    spec.count,
                    cube_core::units::format_duration(u.min_healthy_time),
                    if u.auto_revert { "reverts to the last good version" } else { "stops" },
                )
            }
        };
        // Where the new instances would go, placed one after another on a copy of the nodes as
        // they are now (an old instance still holds its room until its replacement is healthy).
        let mut views = NodeSet::new(self.nodes.values().map(|n| self.node_view(n)).collect());
        let mut scheduler = self.scheduler.clone();
        let mut siblings = Siblings { distinct: spec.distinct_nodes, ..Siblings::default() };
        if current.is_some() {
            let of = InstanceOf { service: spec.name.clone(), version, slot: 0 };
            siblings = Siblings { distinct: spec.distinct_nodes, ..self.siblings(&of) };
            if change == "destructive" {
                // New instances spread among themselves; the old ones still count as occupied.
                siblings.spread.clear();
            }
        }
        let placements = new
            .into_iter()
            .map(|slot| match scheduler.place_among(&spec.task, &views, &[], Some(&siblings)) {
                cube_core::Decision::Place { node, index, explanation } => {
                    views.assign(index, &spec.task);
                    *siblings.spread.entry(node).or_default() += 1;
                    siblings.occupied.insert(node);
                    (slot, explanation)
                }
                cube_core::Decision::Unplaceable { explanation } => (slot, explanation),
            })
            .collect();
        ServicePlan { change, version, modify_index, diff, rollout, placements }
    }
}

fn to_json(spec: &ServiceSpec) -> serde_json::Value {
    // A spec is plain data: encoding cannot fail.
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

/// What changed from one version's spec to the next, field by field (the version history's
/// diffs).
pub(crate) fn spec_diff(
    old: &ServiceSpec,
    new: &ServiceSpec,
) -> Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> {
    diff(&to_json(old), &to_json(new))
}

/// The leaves that differ between `old` and `new`, as dotted paths (`task.env.GREETING`,
/// `task.args[1]`).
fn diff(
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> {
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out
}

fn walk(
    path: &str,
    old: Option<&serde_json::Value>,
    new: Option<&serde_json::Value>,
    out: &mut Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)>,
) {
    use serde_json::Value;
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (old, new) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                walk(&join(k), a.get(k), b.get(k), out);
            }
        }
        // An empty table is left out of the encoding: a new or removed one is its fields.
        (None, Some(Value::Object(b))) => {
            for (k, v) in b {
                walk(&join(k), None, Some(v), out);
            }
        }
        (Some(Value::Object(a)), None) => {
            for (k, v) in a {
                walk(&join(k), Some(v), None, out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) => out.push((path.to_owned(), a.cloned(), b.cloned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_diff_names_each_changed_leaf() {
        let old = json!({"count": 3, "task": {"env": {"A": "1", "B": "2"}, "args": ["x", "y"]}});
        let new = json!({"count": 3, "task": {"env": {"A": "9", "C": "3"}, "args": ["x", "z"],
                         "health": {"type": "tcp"}}});
        let d = diff(&old, &new);
        let paths: Vec<&str> = d.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            paths,
            ["task.args[1]", "task.env.A", "task.env.B", "task.env.C", "task.health.type"]
        );
        assert_eq!(d[2], ("task.env.B".into(), Some(json!("2")), None));
        assert_eq!(d[3], ("task.env.C".into(), None, Some(json!("3"))));
    }
}

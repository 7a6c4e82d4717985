//! `/ui/tasks` and `/ui/tasks/{id}`.

use std::collections::BTreeMap;

use cube_api::types::TaskView;
use cube_core::scheduler::Explanation;
use cube_core::{DesiredState, EventKind, NodeId, TaskId, TaskState};
use jiff::Timestamp;
use maud::{Markup, html};
use strum::VariantArray as _;

use crate::{pager, state, when};

/// Tasks shown per page of the list.
pub const PER_PAGE: usize = 100;

/// The list's filters, as its query string carries them (`?state=running&node=…&service=…&page=2`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks on this node.
    pub node: Option<NodeId>,
    /// Only instances of this service.
    pub service: Option<String>,
    /// The page, from 1.
    pub page: usize,
}

impl Filter {
    /// The list's URL with these filters on page `page`.
    pub fn href(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(s) = self.state {
            pairs.push(("state", s.to_string()));
        }
        if let Some(n) = self.node {
            pairs.push(("node", n.to_string()));
        }
        if let Some(s) = &self.service {
            pairs.push(("service", s.clone()));
        }
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        if query.is_empty() {
            "/ui/tasks".to_owned()
        } else {
            format!("/ui/tasks?{}", query.join("&"))
        }
    }
}

/// Percent-encodes what a query value may not hold as is.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Tasks as a table.
pub fn table(tasks: &[TaskView], nodes: &BTreeMap<NodeId, String>, now: Timestamp) -> Markup {
    html! {
        @if tasks.is_empty() {
            p.muted { "No tasks." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Task" } th { "State" } th { "Node" } th { "Instance of" }
                        th { "Why" } th { "Updated" }
                    }
                }
                tbody {
                    @for t in tasks {
                        tr data-task=(t.id) {
                            td { a href={ "/ui/tasks/" (t.id) } { (t.name) } " " span.muted { code { (t.id.short()) } } }
                            td {
                                (state(&t.state.to_string()))
                                @if t.healthy == Some(false) { " " (state("unhealthy")) }
                                @if t.desired_state == DesiredState::Stopped && !t.state.is_terminal() { " " span.muted { "stopping" } }
                            }
                            td { (node_link(t.node, nodes)) }
                            td { @if let Some(i) = &t.instance {
                                a href={ "/ui/services/" (i.service) } { (i.service) } " v" (i.version) " #" (i.slot)
                            } }
                            td.muted { (t.reason.as_deref().unwrap_or("")) }
                            td { (when(t.updated_at, now)) }
                        }
                    }
                }
            }
        }
    }
}

fn node_link(node: Option<NodeId>, nodes: &BTreeMap<NodeId, String>) -> Markup {
    html! {
        @match node {
            Some(id) => a href={ "/ui/nodes/" (id) } { (nodes.get(&id).map_or_else(|| id.short(), Clone::clone)) },
            None => span.muted { "–" },
        }
    }
}

/// What the list shows: one page of the tasks `filter` admits, `total` of them in all.
#[derive(Debug)]
pub struct List<'a> {
    /// This page's tasks.
    pub tasks: &'a [TaskView],
    /// How many match in all.
    pub total: usize,
    /// The filters.
    pub filter: &'a Filter,
    /// Node names by id (for the node filter too).
    pub nodes: &'a BTreeMap<NodeId, String>,
    /// Now, for ages.
    pub now: Timestamp,
}

/// The list's live part.
pub fn list(l: &List<'_>) -> Markup {
    let f = l.filter;
    html! {
        h1 { "Tasks" }
        form.filters method="get" action="/ui/tasks" {
            label { "State"
                select name="state" {
                    option value="" selected[f.state.is_none()] { "any" }
                    @for s in TaskState::VARIANTS {
                        option value=(s) selected[f.state == Some(*s)] { (s) }
                    }
                }
            }
            label { "Node"
                select name="node" {
                    option value="" selected[f.node.is_none()] { "any" }
                    @for (id, name) in l.nodes {
                        option value=(id) selected[f.node == Some(*id)] { (name) }
                    }
                }
            }
            label { "Service"
                input type="text" name="service" value=(f.service.as_deref().unwrap_or("")) placeholder="any";
            }
            button type="submit" { "Filter" }
        }
        section.panel {
            (table(l.tasks, l.nodes, l.now))
            (pager(f.page, PER_PAGE, l.total, |p| f.href(p)))
        }
    }
}

/// A task page's live part.
pub fn detail(t: &TaskView, nodes: &BTreeMap<NodeId, String>, now: Timestamp) -> Markup {
    html! {
        h1 { "Task " (t.name) " " span.muted { code { (t.id.short()) } } }
        section.panel aria-labelledby="facts-h" {
            h2 #facts-h { "Now" }
            dl.facts {
                dt { "State" } dd data-state=(t.state) { (state(&t.state.to_string())) " (desired " (format!("{:?}", t.desired_state).to_lowercase()) ")" }
                @if let Some(h) = t.healthy {
                    dt { "Health" } dd { (state(if h { "healthy" } else { "unhealthy" })) }
                }
                dt { "Node" } dd { (node_link(t.node, nodes)) }
                @if let Some(i) = &t.instance {
                    dt { "Instance of" } dd { a href={ "/ui/services/" (i.service) } { (i.service) } " v" (i.version) ", slot " (i.slot) }
                }
                dt { "Driver" } dd { (t.driver) }
                @if let Some(image) = &t.spec.image { dt { "Image" } dd { code { (image) } } }
                @if let Some(command) = &t.spec.command {
                    dt { "Command" } dd { code { (command) @for a in &t.spec.args { " " (a) } } }
                }
                dt { "Reserves" } dd {
                    @let r = &t.spec.resources;
                    @if r.cpu.0 == 0 && r.memory.0 == 0 { span.muted { "nothing (no reservation, no limit)" } }
                    @else { (crate::cpu(r.cpu.0)) " CPU, " (crate::bytes(r.memory.0)) " memory" }
                }
                @if let Some(reason) = &t.reason { dt { "Why" } dd { (reason) } }
                @if let Some(code) = t.exit_code { dt { "Exit code" } dd { (code) } }
                dt { "Restarts" } dd { (t.restart_count) ", moved " (t.reschedule_count) " times" }
                dt { "Id" } dd { code { (t.id) } }
            }
        }
        section.panel aria-labelledby="placement-h" {
            h2 #placement-h { "Placement" }
            @match &t.placement {
                Some(e) => (placement(e, nodes)),
                None => p.muted { "Not placed by this manager's scheduler yet." },
            }
        }
        section.panel aria-labelledby="timeline-h" {
            h2 #timeline-h { "Timeline" }
            table {
                thead { tr { th { "When" } th { "What" } th { "State" } th { "Node" } th { "Why" } } }
                tbody {
                    @for e in t.events.iter().rev() {
                        tr {
                            td { (when(e.at, now)) }
                            td { @match &e.kind {
                                EventKind::Transition(trigger) => (format!("{trigger:?}")),
                                EventKind::Note(note) => span.muted { (format!("{note:?}")) },
                            } }
                            td { @if e.from != e.to { (state(&e.from.to_string())) " → " } (state(&e.to.to_string())) }
                            td { (node_link(e.node, nodes)) }
                            td.muted { (e.reason) }
                        }
                    }
                }
            }
        }
    }
}

/// The scheduler's explanation: every node it looked at, scored or rejected with why.
pub fn placement(e: &Explanation, nodes: &BTreeMap<NodeId, String>) -> Markup {
    let chosen = e.chosen.as_ref().map(|c| c.node);
    let more = e.rejected_total.saturating_sub(e.rejected.len());
    let name =
        |id: &NodeId, fallback: &str| nodes.get(id).cloned().unwrap_or_else(|| fallback.to_owned());
    html! {
        p { "Scheduler " code { (e.scheduler) } ": "
            @match &e.chosen {
                Some(c) => { "placed on " strong { (name(&c.node, &c.name)) } "." },
                None => { "no node can take it now." },
            }
        }
        table #placement-table aria-label="Every node the scheduler considered" {
            thead { tr { th { "Node" } th { "Verdict" } th.num { "Score" } th { "Why" } } }
            tbody {
                @for c in &e.candidates {
                    tr.chosen[chosen == Some(c.node)] data-node=(c.node) {
                        td { a href={ "/ui/nodes/" (c.node) } { (name(&c.node, &c.name)) } }
                        td { @if chosen == Some(c.node) { span.state.s-running { "chosen" } } @else { "candidate" } }
                        td.num { (format!("{:.3}", c.score)) }
                        td.muted { @if chosen == Some(c.node) { "best score" } @else { "fits, scored lower" } }
                    }
                }
                @for r in &e.rejected {
                    tr data-node=(r.node) {
                        td { a href={ "/ui/nodes/" (r.node) } { (name(&r.node, &r.name)) } }
                        td { span.state.s-failed { "rejected" } }
                        td.num { "–" }
                        td { (r.reason) }
                    }
                }
            }
        }
        @if more > 0 { p.muted { "And " (more) " more nodes rejected." } }
    }
}

/// The part of a task page the event stream leaves alone: task `id`'s logs, followed on
/// request.
pub fn logs(id: TaskId, tail: &str) -> Markup {
    html! {
        section.panel aria-labelledby="logs-h" {
            h2 #logs-h { "Logs" }
            p { button #follow-logs type="button" aria-pressed="false" aria-controls="logs" hidden { "Follow" }
                " " span.muted { "The last lines; follow to see new ones as they come." } }
            pre #logs .logs data-follow={ "/ui/tasks/" (id) "/logs" } tabindex="0" aria-label="Logs" { (tail) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placement_table_has_every_node_with_its_verdict() {
        let chosen = "01a24242-6086-7784-b4f4-abac46d26fd5";
        let other = "01a24242-6086-7784-b4f4-abac46d26fd6";
        let full = "01a24242-6086-7784-b4f4-abac46d26fd7";
        let e: Explanation = serde_json::from_value(serde_json::json!({
            "scheduler": "spread",
            "chosen": {"node": chosen, "name": "w1", "score": 0.25},
            "candidates": [{"node": chosen, "name": "w1", "score": 0.25},
                           {"node": other, "name": "w2", "score": 0.5}],
            "rejected": [{"node": full, "name": "w3", "reason": "needs 512MiB memory, 200MiB free",
                          "kind": "resources"}],
            "rejected_total": 4
        }))
        .unwrap();
        let html = placement(&e, &BTreeMap::new()).into_string();
        assert!(
            html.contains(
                r#"<tr class="chosen" data-node="01a24242-6086-7784-b4f4-abac46d26fd5">"#
            ),
            "{html}"
        );
        assert!(html.contains("needs 512MiB memory, 200MiB free"), "{html}");
        assert!(html.contains("And 3 more nodes rejected."), "{html}");
        assert_eq!(
            html.matches("<tr ").count() + html.matches("<tr>").count(),
            4,
            "a header and 3 nodes: {html}"
        );
    }

    #[test]
    fn filters_make_bookmarkable_urls() {
        let f = Filter {
            state: Some(TaskState::Running),
            node: None,
            service: Some("a b&c".into()),
            page: 1,
        };
        assert_eq!(f.href(1), "/ui/tasks?state=running&service=a%20b%26c");
        assert_eq!(f.href(3), "/ui/tasks?state=running&service=a%20b%26c&page=3");
        assert_eq!(Filter::default().href(1), "/ui/tasks");
    }
}

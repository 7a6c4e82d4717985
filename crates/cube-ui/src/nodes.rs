//! `/ui/nodes` and `/ui/nodes/{id}`.

use std::collections::BTreeMap;

use cube_api::types::{NodeInfo, TaskView};
use cube_core::NodeId;
use jiff::Timestamp;
use maud::{Markup, html};

use crate::{Viewer, bar, bytes, cpu, csrf, percent, state, when};

/// Nodes as a table: state, reservations against capacity as bars, live stats.
pub fn table(nodes: &[NodeInfo], now: Timestamp) -> Markup {
    html! {
        @if nodes.is_empty() {
            p.muted { "No nodes. " code { "cube worker --manager URL" } " adds one." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Node" } th { "State" } th { "CPU reserved" } th { "Memory reserved" }
                        th { "CPU busy" } th { "Memory used" } th.num { "Tasks" } th { "Heartbeat" }
                    }
                }
                tbody {
                    @for n in nodes {
                        tr data-node=(n.id) {
                            td { a href={ "/ui/nodes/" (n.id) } { (n.name) } }
                            td { (state(&n.state.to_string()))
                                @if !n.eligible { " " span.muted { "ineligible" } }
                                @if n.drain.is_some() { " " span.muted { "draining" } } }
                            td { (cpu_bar(n)) }
                            td { (memory_bar(n)) }
                            td { (busy(n)) }
                            td { (used(n)) }
                            td.num { (n.task_count) }
                            td { @match n.last_heartbeat { Some(at) => span { (when(at, now)) }, None => span.muted { "never" } } }
                        }
                    }
                }
            }
        }
    }
}

fn cpu_bar(n: &NodeInfo) -> Markup {
    let (r, c) = (n.reserved.cpu.0, n.capacity.cpu.0);
    bar("CPU reserved", r as f64, c as f64, &format!("{} of {} cores", cpu(r), cpu(c)))
}

fn memory_bar(n: &NodeInfo) -> Markup {
    let (r, c) = (n.reserved.memory.0, n.capacity.memory.0);
    bar("Memory reserved", r as f64, c as f64, &format!("{} of {}", bytes(r), bytes(c)))
}

fn busy(n: &NodeInfo) -> Markup {
    match &n.stats {
        Some(s) => bar("CPU busy", s.cpu.busy_fraction, 1.0, &percent(s.cpu.busy_fraction)),
        None => html! { span.muted { "–" } },
    }
}

fn used(n: &NodeInfo) -> Markup {
    match &n.stats {
        Some(s) => bar(
            "Memory used",
            s.memory.used_bytes as f64,
            s.memory.total_bytes as f64,
            &format!("{} of {}", bytes(s.memory.used_bytes), bytes(s.memory.total_bytes)),
        ),
        None => html! { span.muted { "–" } },
    }
}

/// Nodes shown per page of the list.
pub const PER_PAGE: usize = 100;

/// The list's live part: page `page` (from 1) of `total` nodes.
pub fn list(nodes: &[NodeInfo], page: usize, total: usize, now: Timestamp) -> Markup {
    html! {
        h1 { "Nodes" }
        section.panel {
            (table(nodes, now))
            (crate::pager(page, PER_PAGE, total, |p| format!("/ui/nodes?page={p}")))
        }
    }
}

/// Tasks a node's page lists (the newest); the task list filtered by node has them all.
pub const TASKS_SHOWN: usize = 100;

/// A node page's live part: the node and the newest of its unfinished tasks (`tasks`, at
/// most [`TASKS_SHOWN`]; `n.task_count` in all).
pub fn detail(
    n: &NodeInfo,
    tasks: &[TaskView],
    names: &BTreeMap<NodeId, String>,
    viewer: &Viewer,
    now: Timestamp,
) -> Markup {
    let act = |what: &str| format!("/ui/nodes/{}/{what}", n.id);
    html! {
        h1 { "Node " (n.name) }
        div.grid {
            section.panel aria-labelledby="facts-h" {
                h2 #facts-h { "Now" }
                dl.facts {
                    dt { "State" } dd { (state(&n.state.to_string())) }
                    dt { "Eligible" } dd data-eligible=(n.eligible) { @if n.eligible { "yes" } @else { "no: no new work goes here" } }
                    dt { "Drain" } dd { @match &n.drain {
                        Some(d) => { @if let Some(done) = d.drained_at { "drained " (when(done, now)) } @else { "in progress since " (when(d.started_at, now)) } },
                        None => span.muted { "none" },
                    } }
                    dt { "Address" } dd { code { (n.address) } }
                    dt { "Drivers" } dd { @for (i, d) in n.drivers.iter().enumerate() { @if i > 0 { ", " } (d) } }
                    dt { "Registered" } dd { (when(n.registered_at, now)) }
                    dt { "Heartbeat" } dd { @match n.last_heartbeat { Some(at) => (when(at, now)), None => "never" } }
                    dt { "Id" } dd { code { (n.id) } }
                }
                @if viewer.may_manage_nodes {
                    div {
                        @if n.drain.is_none() {
                            form.inline method="post" action=(act("drain")) {
                                (csrf(viewer)) button type="submit" { "Drain" }
                            }
                        }
                        form.inline method="post" action=(act("eligibility")) {
                            (csrf(viewer))
                            input type="hidden" name="eligible" value=(!n.eligible);
                            button type="submit" { @if n.eligible { "Make ineligible" } @else { "Make eligible" } }
                        }
                    }
                }
            }
            section.panel aria-labelledby="use-h" {
                h2 #use-h { "Capacity and use" }
                dl.facts {
                    dt { "CPU reserved" } dd { (cpu_bar(n)) }
                    dt { "Memory reserved" } dd { (memory_bar(n)) }
                    dt { "CPU busy" } dd { (busy(n)) }
                    dt { "Memory used" } dd { (used(n)) }
                    @if let Some(s) = &n.stats {
                        dt { "Load" } dd { (format!("{:.2} {:.2} {:.2}", s.load.one, s.load.five, s.load.fifteen)) }
                        dt { "Disk free" } dd { (bytes(s.disk.free_bytes)) " of " (bytes(s.disk.total_bytes)) }
                    }
                }
            }
            section.panel aria-labelledby="labels-h" {
                h2 #labels-h { "Labels" }
                @if n.labels.is_empty() { p.muted { "None." } }
                dl.facts { @for (k, v) in &n.labels { dt { code { (k) } } dd { code { (v) } } } }
            }
        }
        section.panel aria-labelledby="tasks-h" {
            h2 #tasks-h { "Tasks on this node" }
            (crate::tasks::table(tasks, names, now))
            @if (n.task_count as usize) > tasks.len() {
                p { a href={ "/ui/tasks?node=" (n.id) } { "All " (n.task_count) " tasks on " (n.name) } }
            }
        }
    }
}

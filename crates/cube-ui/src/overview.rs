//! `/ui`: the cluster at a glance.

use cube_api::events::{Actor, Event, EventObject};
use cube_api::types::{NodeInfo, ServiceView};
use cube_core::TaskState;
use jiff::Timestamp;
use maud::{Markup, html};

use crate::{nodes, services, state, when};

/// What the overview shows.
#[derive(Debug)]
pub struct Overview<'a> {
    /// Nodes to list: those down first (at most a screenful).
    pub nodes: &'a [NodeInfo],
    /// How many nodes there are in all.
    pub nodes_total: usize,
    /// How many of them are down.
    pub nodes_down: usize,
    /// Tasks per state (every state, zero or not).
    pub tasks: &'a [(TaskState, usize)],
    /// Services to list: those short of healthy instances first (at most a screenful).
    pub services: &'a [ServiceView],
    /// How many services there are in all.
    pub services_total: usize,
    /// Deployments running or paused.
    pub deployments_active: usize,
    /// The newest events, newest first.
    pub events: &'a [Event],
    /// Now, for ages.
    pub now: Timestamp,
}

/// The overview's live part.
pub fn live(o: &Overview<'_>) -> Markup {
    let down = o.nodes_down;
    let ready = o.nodes_total.saturating_sub(down);
    let total_tasks: usize = o.tasks.iter().map(|(_, n)| n).sum();
    html! {
        h1 { "Overview" }
        ul.counts aria-label="Cluster" {
            li { span.n { (ready) } span.k { "nodes ready" } }
            li { span.n { (down) } span.k { "nodes down" } }
            li { span.n { (o.services_total) } span.k { "services" } }
            li { span.n { (o.deployments_active) } span.k { "deployments in progress" } }
            li { span.n { (total_tasks) } span.k { "tasks" } }
        }
        div.grid {
            section.panel aria-labelledby="tasks-h" {
                h2 #tasks-h { "Tasks by state" }
                table {
                    thead { tr { th { "State" } th.num { "Tasks" } } }
                    tbody {
                        @for (s, n) in o.tasks {
                            tr {
                                td { a href={ "/ui/tasks?state=" (s) } { (state(&s.to_string())) } }
                                td.num { (n) }
                            }
                        }
                    }
                }
            }
            section.panel aria-labelledby="events-h" {
                h2 #events-h { "Recent events" }
                (events(o.events, o.now))
            }
        }
        section.panel aria-labelledby="nodes-h" {
            h2 #nodes-h { "Nodes" }
            (nodes::table(o.nodes, o.now))
            @if o.nodes_total > o.nodes.len() {
                p { a href="/ui/nodes" { "All " (o.nodes_total) " nodes" } }
            }
        }
        section.panel aria-labelledby="services-h" {
            h2 #services-h { "Services" }
            (services::table(o.services))
            @if o.services_total > o.services.len() {
                p { a href="/ui/services" { "All " (o.services_total) " services" } }
            }
        }
    }
}

/// Events as a table, newest first.
pub fn events(events: &[Event], now: Timestamp) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "Nothing yet." }
        } @else {
            table {
                thead { tr { th { "When" } th { "What" } th { "Of" } th { "By" } } }
                tbody {
                    @for e in events {
                        tr {
                            td { (when(e.at, now)) }
                            td { (format!("{:?}", e.kind)) }
                            td {
                                @match link(e) {
                                    Some(href) => a href=(href) { (label(e)) },
                                    None => (label(e)),
                                }
                            }
                            td.muted { (actor(&e.by)) }
                        }
                    }
                }
            }
        }
    }
}

/// Where an event's record is shown, if anywhere.
fn link(e: &Event) -> Option<String> {
    match &e.object {
        EventObject::Task(Some(_)) => Some(format!("/ui/tasks/{}", e.key)),
        EventObject::Node(Some(_)) => Some(format!("/ui/nodes/{}", e.key)),
        EventObject::Service(Some(_)) => Some(format!("/ui/services/{}", e.key)),
        EventObject::Deployment(Some(d)) => Some(format!("/ui/services/{}", d.service)),
        _ => None,
    }
}

/// A record's name for people.
fn label(e: &Event) -> String {
    match &e.object {
        EventObject::Task(Some(t)) => t.name.clone(),
        EventObject::Node(Some(n)) => n.name.clone(),
        EventObject::Deployment(Some(d)) => format!("{} v{}", d.service, d.version),
        _ => e.key.clone(),
    }
}

fn actor(by: &Actor) -> String {
    match by {
        Actor::Api => "API".to_owned(),
        Actor::Node { node } => format!("node {}", node.short()),
        Actor::Manager => "manager".to_owned(),
    }
}

//! `/ui/services` and `/ui/services/{name}`.

use std::collections::BTreeMap;

use cube_api::types::{FieldChange, ServiceView, TaskView};
use cube_core::NodeId;
use cube_core::deployment::{Deployment, DeploymentStatus, Reason};
use cube_core::service::Version;
use jiff::Timestamp;
use maud::{Markup, html};

use crate::{Viewer, csrf, json, pager, state, when};

/// Services shown per page of the list.
pub const PER_PAGE: usize = 100;

/// Services as a table: name, version, healthy of desired, deployment.
pub fn table(services: &[ServiceView]) -> Markup {
    html! {
        @if services.is_empty() {
            p.muted { "No services. " code { "cube service run NAME --file service.toml" } " deploys one." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Service" } th.num { "Version" } th.num { "Healthy" } th.num { "Running" }
                        th.num { "Desired" } th { "Deployment" }
                    }
                }
                tbody {
                    @for s in services {
                        tr data-service=(s.name) {
                            td { a href={ "/ui/services/" (s.name) } { (s.name) } }
                            td.num { (s.version) }
                            td.num data-healthy=(s.instances.healthy) { (s.instances.healthy) }
                            td.num { (s.instances.running) }
                            td.num { (s.instances.desired) }
                            td { (deployment_cell(s.deployment.as_ref())) }
                        }
                    }
                }
            }
        }
    }
}

fn deployment_cell(d: Option<&Deployment>) -> Markup {
    html! {
        @match d {
            Some(d) => { (state(&d.status.to_string())) " " span.muted { (d.description) } },
            None => span.muted { "–" },
        }
    }
}

/// The list's live part: page `page` (from 1) of `total` services.
pub fn list(services: &[ServiceView], page: usize, total: usize) -> Markup {
    html! {
        h1 { "Services" }
        section.panel {
            (table(services))
            (pager(page, PER_PAGE, total, |p| format!("/ui/services?page={p}")))
        }
    }
}

/// What a service's page shows.
#[derive(Debug)]
pub struct Detail<'a> {
    /// The service.
    pub service: &'a ServiceView,
    /// Its instances that have not finished, by version then slot.
    pub instances: &'a [TaskView],
    /// Its versions, newest first, each with what changed from the one before.
    pub versions: &'a [(Version, Vec<FieldChange>)],
    /// Node names by id.
    pub nodes: &'a BTreeMap<NodeId, String>,
    /// Now, for ages.
    pub now: Timestamp,
}

/// A service page's live part.
pub fn detail(d: &Detail<'_>, viewer: &Viewer) -> Markup {
    let s = d.service;
    let action = |what: &str| format!("/ui/services/{}/{what}", s.name);
    html! {
        h1 { "Service " (s.name) }
        section.panel aria-labelledby="state-h" {
            h2 #state-h { "Now" }
            dl.facts {
                dt { "Version" } dd { (s.version) }
                dt { "Instances" } dd {
                    span data-healthy=(s.instances.healthy) { (s.instances.healthy) } " healthy, "
                    (s.instances.running) " running, "
                    span data-desired=(s.instances.desired) { (s.instances.desired) } " desired"
                }
                @if let Some(image) = &s.spec.task.image {
                    dt { "Image" } dd { code { (image) } }
                } @else if let Some(command) = &s.spec.task.command {
                    dt { "Command" } dd { code { (command) @for a in &s.spec.task.args { " " (a) } } }
                }
                dt { "Updated" } dd { (when(s.updated_at, d.now)) }
            }
            @if viewer.may_deploy {
                form.inline method="post" action=(action("scale")) {
                    (csrf(viewer))
                    label for="count" { "Instances" }
                    input #count type="number" name="count" min="0" value=(s.spec.count);
                    button type="submit" { "Scale" }
                }
            }
        }
        @if let Some(dep) = &s.deployment {
            (deployment(dep, s, viewer, d.now))
        }
        section.panel aria-labelledby="instances-h" {
            h2 #instances-h { "Instances" }
            (by_version(s))
            (crate::tasks::table(d.instances, d.nodes, d.now))
        }
        section.panel aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            (versions(d.versions, s, viewer, d.now))
        }
    }
}

fn by_version(s: &ServiceView) -> Markup {
    html! {
        @if !s.instances.versions.is_empty() {
            table aria-label="Instances by version" {
                thead { tr { th { "Version" } th.num { "Running" } th.num { "Healthy" } } }
                tbody {
                    @for v in &s.instances.versions {
                        tr { td { "v" (v.version) } td.num { (v.running) } td.num { (v.healthy) } }
                    }
                }
            }
        }
    }
}

fn deployment(dep: &Deployment, s: &ServiceView, viewer: &Viewer, now: Timestamp) -> Markup {
    let current = s.instances.versions.iter().find(|v| v.version == dep.version);
    let healthy = current.map_or(0, |v| v.healthy);
    let act = |what: &str| format!("/ui/deployments/{}/{what}", dep.id);
    let canaries = s.spec.update.canary;
    let awaiting_promotion =
        !dep.promoted && canaries > 0 && dep.status == DeploymentStatus::Running;
    html! {
        section.panel aria-labelledby="deployment-h" data-deployment=(dep.id) data-status=(dep.status) {
            h2 #deployment-h { "Deployment of v" (dep.version) }
            dl.facts {
                dt { "Status" } dd { (state(&dep.status.to_string())) " " code { (dep.reason) } }
                dt { "Why" } dd { (dep.description) }
                dt { "Progress" } dd {
                    (crate::bar("Healthy instances of the new version", f64::from(healthy),
                        f64::from(s.spec.count.max(1)), &format!("{healthy} of {} healthy", s.spec.count)))
                }
                @if canaries > 0 {
                    dt { "Canaries" } dd { (canaries) @if dep.promoted { ", promoted" } }
                }
                dt { "Began" } dd { (when(dep.created_at, now)) }
            }
            @if viewer.may_deploy && !dep.status.is_terminal() {
                div {
                    @if awaiting_promotion {
                        // Promoting before the canaries are healthy is allowed (a forced
                        // promotion); the button stands out once they are.
                        form.inline method="post" action=(act("promote")) {
                            (csrf(viewer))
                            button.primary[dep.reason == Reason::NeedsPromotion] type="submit" { "Promote" }
                        }
                    }
                    @if dep.status == DeploymentStatus::Running {
                        form.inline method="post" action=(act("pause")) {
                            (csrf(viewer)) button type="submit" { "Pause" }
                        }
                    }
                    @if dep.status == DeploymentStatus::Paused {
                        form.inline method="post" action=(act("resume")) {
                            (csrf(viewer)) button type="submit" { "Resume" }
                        }
                    }
                    form.inline method="post" action=(act("fail")) {
                        (csrf(viewer)) button.danger type="submit" { "Fail and roll back" }
                    }
                }
            }
        }
    }
}

fn versions(
    versions: &[(Version, Vec<FieldChange>)],
    s: &ServiceView,
    viewer: &Viewer,
    now: Timestamp,
) -> Markup {
    html! {
        table {
            thead { tr { th { "Version" } th { "Made" } th { "Outcome" } th { "Changes" } th { span.visually-hidden { "Actions" } } } }
            tbody {
                @for (v, changes) in versions {
                    tr {
                        td { "v" (v.version) @if let Some(r) = v.reverts { " " span.muted { "(revert to v" (r) ")" } } }
                        td { (when(v.created_at, now)) }
                        td { @match v.outcome { Some(o) => (state(&o.to_string())), None => span.muted { "–" } } }
                        td.diff {
                            @if changes.is_empty() { span.muted { "first version" } }
                            @for c in changes {
                                div {
                                    code { (c.field) } " "
                                    @if let Some(old) = &c.old { span.old { (json(old)) } }
                                    " → "
                                    @if let Some(new) = &c.new { span.new { (json(new)) } } @else { span.muted { "removed" } }
                                }
                            }
                        }
                        td {
                            @if viewer.may_deploy && v.version != s.version {
                                form.inline method="post" action={ "/ui/services/" (s.name) "/revert" } {
                                    (csrf(viewer))
                                    input type="hidden" name="version" value=(v.version);
                                    button type="submit" { "Revert to v" (v.version) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(may_deploy: bool) -> Viewer {
        Viewer {
            name: "t".into(),
            role: "operate".into(),
            csrf: "c".into(),
            may_deploy,
            may_manage_nodes: false,
            signed_in: true,
        }
    }

    /// A service in the middle of an update with a canary, waiting for promotion.
    fn canarying() -> ServiceView {
        serde_json::from_value(serde_json::json!({
            "name": "web", "version": 2, "modify_index": 7,
            "spec": {"name": "web", "count": 3, "update": {"canary": 1},
                     "task": {"name": "web", "driver": "process", "command": "sleep"}},
            "created_at": "2026-12-04T12:00:00Z", "updated_at": "2026-12-04T12:05:00Z",
            "instances": {"desired": 3, "running": 4, "healthy": 4,
                          "versions": [{"version": 1, "running": 3, "healthy": 3},
                                       {"version": 2, "running": 1, "healthy": 1}]},
            "deployment": {"id": "01a24242-60c5-7320-80f6-259a81b4c52c", "service": "web",
                           "version": 2, "previous": 1, "status": "running",
                           "reason": "needs_promotion", "description": "1 canary healthy: promote it",
                           "created_at": "2026-12-04T12:05:00Z", "updated_at": "2026-12-04T12:05:03Z"}
        }))
        .unwrap()
    }

    fn page(service: &ServiceView, viewer: &Viewer) -> String {
        let versions: Vec<(Version, Vec<FieldChange>)> = vec![(
            serde_json::from_value(serde_json::json!({
                "version": 1, "spec": service.spec, "created_at": "2026-12-04T12:00:00Z",
                "outcome": "successful"}))
            .unwrap(),
            vec![FieldChange {
                field: "task.env.V".into(),
                old: Some("1".into()),
                new: Some("2".into()),
            }],
        )];
        let d = Detail {
            service,
            instances: &[],
            versions: &versions,
            nodes: &BTreeMap::new(),
            now: "2026-12-04T12:05:10Z".parse().unwrap(),
        };
        detail(&d, viewer).into_string()
    }

    #[test]
    fn a_canary_waiting_for_promotion_offers_promote_pause_and_fail_to_who_may_deploy() {
        let html = page(&canarying(), &viewer(true));
        for button in [
            ">Promote</button>",
            ">Pause</button>",
            ">Fail and roll back</button>",
            ">Scale</button>",
            ">Revert to v1</button>",
        ] {
            assert!(html.contains(button), "{button} missing: {html}");
        }
        assert!(!html.contains(">Resume</button>"));
        assert!(html.contains("1 canary healthy: promote it"));
        assert!(html.contains("<code>task.env.V</code>"), "the version's diff: {html}");
    }

    #[test]
    fn a_reader_sees_the_same_page_without_a_button() {
        let html = page(&canarying(), &viewer(false));
        assert!(!html.contains("<button"), "{html}");
        assert!(!html.contains("<form"), "{html}");
        assert!(html.contains("needs_promotion"));
    }

    #[test]
    fn a_finished_deployment_offers_nothing_but_scale_and_revert() {
        let mut s = canarying();
        if let Some(d) = s.deployment.as_mut() {
            d.status = DeploymentStatus::Successful;
        }
        let html = page(&s, &viewer(true));
        assert!(!html.contains(">Promote</button>") && !html.contains(">Pause</button>"));
        assert!(html.contains(">Scale</button>"));
    }
}

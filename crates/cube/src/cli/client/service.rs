//! `cube deploy`, `cube service ...` and `cube deployment ...`: services, their versions and
//! their rollouts.

use std::process::ExitCode;
use std::time::Duration;

use cube_api::events::EventObject;
use cube_api::types::{ServicePlanView, ServiceView};
use cube_core::DeploymentId;
use cube_core::deployment::{Deployment, DeploymentStatus};
use cube_core::endpoints::ServiceEndpoints;
use cube_core::service::IngressMode;
use cube_core::service::Version;
use jiff::Timestamp;

use super::api::Api;
use super::follow::Follower;
use super::format::{self, Details};
use super::wait::{Spinner, WAIT_FAILED};
use super::{DeployArgs, DeploymentCommand, PlanArgs, ServiceCommand, file};
use crate::cli::Output;

/// Runs `cube deploy`.
pub(super) async fn deploy(
    api: &Api,
    args: DeployArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let spec = file::load_service(&args.file)?;
    if args.dry_run {
        format::emit_json(&spec)?;
        return Ok(ExitCode::SUCCESS);
    }
    let before = api.client().service(&spec.name).await.ok();
    let (view, created, index) =
        api.client().put_service_at(&spec, args.check_index).await.map_err(|e| api.error(&e))?;
    let started = view.deployment.as_ref().filter(|d| {
        before.as_ref().is_none_or(|b| b.deployment.as_ref().map(|d| d.id) != Some(d.id))
    });
    if output == Output::Json && !args.wait {
        format::emit_json(&view)?;
    }
    if output == Output::Table {
        let what = match (created, started, &before) {
            (true, _, _) => format!("service {} created at version {}", view.name, view.version),
            (false, Some(_), _) => {
                format!("service {} updated to version {}", view.name, view.version)
            }
            (false, None, Some(b))
                if b.version == view.version && b.spec.count != view.spec.count =>
            {
                format!(
                    "service {} resized to {} (version {}, no rollout)",
                    view.name, view.spec.count, view.version
                )
            }
            (false, None, Some(b)) if b.version != view.version => format!(
                "service {} updated to version {} (only the strategy changed: nothing restarts)",
                view.name, view.version
            ),
            (false, None, _) => {
                format!("service {} unchanged at version {}", view.name, view.version)
            }
        };
        format::emit(&what)?;
        if let Some(d) = started {
            format::emit(&format!("deployment {}", d.id))?;
        }
    }
    if started.is_none() || !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow(api, view, index.unwrap_or(0), args.timeout, output).await
}

/// Runs `cube plan`.
pub(super) async fn plan(api: &Api, args: PlanArgs, output: Output) -> anyhow::Result<ExitCode> {
    let spec = file::load_service(&args.file)?;
    let plan = api.client().plan(&spec).await.map_err(|e| api.error(&e))?;
    match output {
        Output::Json => format::emit_json(&plan)?,
        Output::Table => format::emit(&plan_text(&spec.name, &plan))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_text(name: &str, plan: &ServicePlanView) -> String {
    let show = |v: &Option<serde_json::Value>| {
        v.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)
    };
    let mut lines = Vec::new();
    let what = match plan.change.as_str() {
        "create" => format!("service {name}: new, version 1"),
        "none" => format!("service {name}: no change (version {})", plan.version),
        "in_place" => format!(
            "service {name}: in-place update to version {} (nothing restarts)",
            plan.version
        ),
        _ => format!(
            "service {name}: destructive update to version {} (instances are replaced)",
            plan.version
        ),
    };
    lines.push(what);
    for c in &plan.diff {
        let line = match (&c.old, &c.new) {
            (None, _) => format!("  + {}: {}", c.field, show(&c.new)),
            (_, None) => format!("  - {}: {}", c.field, show(&c.old)),
            _ => format!("  ~ {}: {} => {}", c.field, show(&c.old), show(&c.new)),
        };
        lines.push(line);
    }
    lines.push(format!("Rollout: {}", plan.rollout));
    for p in &plan.placements {
        match &p.explanation.chosen {
            Some(c) => {
                lines.push(format!("  {name}/{} -> {} (score {:.4})", p.slot, c.name, c.score))
            }
            None => {
                lines.push(format!("  {name}/{}: cannot be placed", p.slot));
                for r in &p.explanation.rejected {
                    lines.push(format!("      {}: {}", r.name, r.reason));
                }
                let more =
                    p.explanation.rejected_total.saturating_sub(p.explanation.rejected.len());
                if more > 0 {
                    lines.push(format!("      and {more} more nodes"));
                }
            }
        }
    }
    lines.push(format!(
        "Modify index: {} (cube deploy --check-index {} applies exactly this)",
        plan.modify_index, plan.modify_index
    ));
    lines.join("\n")
}

/// Follows a deployment on the event stream until it ends: exit 0 when it succeeded,
/// [`WAIT_FAILED`] with the reason otherwise. `view` is the service as the change answered it,
/// `index` the index the change's events follow.
async fn follow(
    api: &Api,
    view: ServiceView,
    index: u64,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let Some(mut d) = view.deployment.clone() else { return Ok(ExitCode::SUCCESS) };
    let spinner = Spinner::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let topics = vec![format!("Deployment:{}", d.id), format!("Service:{}", view.name)];
    let mut follower = Follower::new(api, index, topics);
    let mut service = view;
    let mut last: Option<(DeploymentStatus, String)> = None;
    loop {
        let now = (d.status, d.description.clone());
        if last.as_ref() != Some(&now) {
            spinner.line(&format!("{}: {} ({})", d.status, d.description, d.reason));
            last = Some(now);
        }
        spinner.show(&progress(&service, &d));
        if let Some(code) = ended(&d, output)? {
            spinner.clear();
            return Ok(code);
        }
        let trouble = |why: &str| spinner.show(why);
        match follower.next(Some(deadline), &trouble).await? {
            Some(event) => match event.object {
                EventObject::Deployment(Some(next)) if next.id == d.id => d = *next,
                EventObject::Service(Some(next)) => service = *next,
                EventObject::Service(None) => {
                    spinner.clear();
                    format::error_line(&format!("service {} was removed", service.name));
                    return Ok(ExitCode::from(WAIT_FAILED));
                }
                _ => {}
            },
            None => {
                spinner.clear();
                format::error_line(&format!(
                    "deployment {} still running after {}: {}",
                    d.id,
                    cube_core::units::format_duration(timeout),
                    last.map(|l| l.1).unwrap_or_default()
                ));
                return Ok(ExitCode::from(WAIT_FAILED));
            }
        }
    }
}

/// The exit code once the deployment is over (or paused, which needs a person).
fn ended(d: &Deployment, output: Output) -> anyhow::Result<Option<ExitCode>> {
    let code = match d.status {
        DeploymentStatus::Running => return Ok(None),
        DeploymentStatus::Successful => ExitCode::SUCCESS,
        DeploymentStatus::Failed | DeploymentStatus::Cancelled => {
            format::error_line(&format!("deployment {}: {}", d.status, d.description));
            ExitCode::from(WAIT_FAILED)
        }
        DeploymentStatus::Paused => {
            format::error_line(&format!(
                "deployment paused ({}): resume it with `cube deployment resume {}`",
                d.description, d.id
            ));
            ExitCode::from(WAIT_FAILED)
        }
    };
    if output == Output::Json {
        format::emit_json(d)?;
    }
    Ok(Some(code))
}

fn progress(v: &ServiceView, d: &Deployment) -> String {
    let new = v.instances.versions.iter().find(|c| c.version == d.version);
    format!(
        "{}/{} healthy on version {} ({} running in all)",
        new.map_or(0, |c| c.healthy),
        v.instances.desired,
        d.version,
        v.instances.running
    )
}

/// Runs `cube service ...`.
pub(super) async fn service(
    api: &Api,
    command: ServiceCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = api.client();
    match command {
        ServiceCommand::Ls => {
            let services = client.services().await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&services)?,
                Output::Table if services.is_empty() => {
                    format::note("no services: create one with `cube deploy FILE`")
                }
                Output::Table => format::emit(&list(&services, format::colour_stdout()))?,
            }
        }
        ServiceCommand::Status { name } => {
            let view = client.service(&name).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&view)?,
                Output::Table => {
                    let mut text = detail(&view, Timestamp::now());
                    if !view.spec.ports.is_empty() {
                        let e = client.service_endpoints(&name).await.map_err(|e| api.error(&e))?;
                        text.push_str("\n\n");
                        text.push_str(&endpoints(&e, format::colour_stdout()));
                        let nodes = client.nodes().await.map_err(|e| api.error(&e))?;
                        text.push_str(&not_listening(&name, &nodes));
                    }
                    format::emit(&text)?
                }
            }
        }
        ServiceCommand::Scale { name, count } => {
            let view = client.scale(&name, count).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&view)?,
                Output::Table => format::emit(&format!(
                    "service {name} scaled to {count} (version {}, no rollout)",
                    view.version
                ))?,
            }
        }
        ServiceCommand::History { name } => {
            let versions = client.service_versions(&name).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&versions)?,
                Output::Table => format::emit(&history(&versions, Timestamp::now()))?,
            }
        }
        ServiceCommand::Revert { name, version } => {
            let before = client.service(&name).await.map_err(|e| api.error(&e))?;
            let view = client.revert(&name, version).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&view)?,
                Output::Table if view.version == before.version => format::emit(&format!(
                    "service {name} already runs the spec of version {version}: nothing to do"
                ))?,
                Output::Table => format::emit(&format!(
                    "service {name}: version {} restores the spec of version {version}",
                    view.version
                ))?,
            }
        }
        ServiceCommand::Rm { name } => {
            let view = client.remove_service(&name).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&view)?,
                Output::Table => {
                    format::emit(&format!("service {name} removed; stopping its instances"))?
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `cube deployment ...`.
pub(super) async fn deployment(
    api: &Api,
    command: DeploymentCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let (target, action) = match &command {
        DeploymentCommand::Status { target } => (target, None),
        DeploymentCommand::Promote { target } => (target, Some("promote")),
        DeploymentCommand::Pause { target } => (target, Some("pause")),
        DeploymentCommand::Resume { target } => (target, Some("resume")),
        DeploymentCommand::Fail { target } => (target, Some("fail")),
    };
    let id = resolve_deployment(api, target).await?;
    let client = api.client();
    let d = match action {
        None => client.deployment(id).await,
        Some(action) => client.deployment_action(id, action).await,
    }
    .map_err(|e| api.error(&e))?;
    match output {
        Output::Json => format::emit_json(&d)?,
        Output::Table => format::emit(&deployment_detail(&d, Timestamp::now()))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A deployment id, or a service name standing for its current deployment.
async fn resolve_deployment(api: &Api, target: &str) -> anyhow::Result<DeploymentId> {
    if let Ok(id) = target.parse::<DeploymentId>() {
        return Ok(id);
    }
    let view = api.client().service(target).await.map_err(|e| api.error(&e))?;
    view.deployment.map(|d| d.id).ok_or_else(|| {
        anyhow::anyhow!("service {target} has no deployment for its current version")
    })
}

fn list(services: &[ServiceView], colour: bool) -> String {
    let mut table =
        format::table(&["NAME", "VERSION", "HEALTHY", "RUNNING", "DESIRED", "DEPLOYMENT"], colour);
    for s in services {
        let deployment = s
            .deployment
            .as_ref()
            .map_or_else(|| "-".to_owned(), |d| format!("{} ({})", d.status, d.reason));
        table.add_row(vec![
            s.name.clone(),
            s.version.to_string(),
            s.instances.healthy.to_string(),
            s.instances.running.to_string(),
            s.instances.desired.to_string(),
            deployment,
        ]);
    }
    format::render(&table)
}

fn detail(v: &ServiceView, now: Timestamp) -> String {
    let mut d = Details::default();
    d.row("Name", v.name.clone())
        .row("Version", v.version.to_string())
        .row("Modify index", v.modify_index.to_string())
        .row(
            "Instances",
            format!(
                "{} healthy, {} running, {} desired",
                v.instances.healthy, v.instances.running, v.instances.desired
            ),
        );
    for c in &v.instances.versions {
        d.row(
            &format!("  version {}", c.version),
            format!("{} healthy, {} running", c.healthy, c.running),
        );
    }
    d.row("Created", format::when(v.created_at, now))
        .row("Updated", format::when(v.updated_at, now));
    let mut text = d.render();
    if let Some(dep) = &v.deployment {
        text.push_str("\n\nDeployment:\n");
        text.push_str(&format::indent(&deployment_detail(dep, now)));
    }
    text
}

/// The nodes whose ingress cannot serve one of `service`'s ports, and why.
fn not_listening(service: &str, nodes: &[cube_api::types::NodeInfo]) -> String {
    let mut text = String::new();
    for n in nodes {
        for l in n.ingress.iter().filter(|l| l.service == service) {
            if let Some(why) = &l.error {
                text.push_str(&format!(
                    "\nnode {} does not serve :{} ({}): {why}",
                    n.name, l.port, l.address
                ));
            }
        }
    }
    text
}

/// The published ports, then one row per endpoint and target port.
fn endpoints(e: &ServiceEndpoints, colour: bool) -> String {
    let mut text = String::from("Published:\n");
    for p in &e.ports {
        let mode = match p.mode {
            IngressMode::Tcp => "tcp",
            IngressMode::Http => "http",
        };
        text.push_str(&format!("  :{} -> {} ({mode}) on every node\n", p.publish, p.target));
    }
    if e.endpoints.is_empty() {
        text.push_str("\nEndpoints: none (no instance is running and healthy)");
        return text;
    }
    let mut table = format::table(&["ENDPOINT", "NODE", "VERSION", "TARGET", "ADDRESS"], colour);
    for endpoint in &e.endpoints {
        for a in &endpoint.addresses {
            table.add_row(vec![
                endpoint.task.short(),
                endpoint.node.short(),
                endpoint.version.to_string(),
                a.target.to_string(),
                format!("{}:{}", a.host, a.port),
            ]);
        }
    }
    text.push_str("\nEndpoints:\n");
    text.push_str(&format::render(&table));
    text
}

fn deployment_detail(d: &Deployment, now: Timestamp) -> String {
    let mut details = Details::default();
    details
        .row("Id", d.id.to_string())
        .row("Service", format!("{} version {}", d.service, d.version))
        .row("Status", d.status.to_string())
        .row("Reason", d.reason.to_string())
        .row("Description", d.description.clone())
        .row("Revert", if d.revert { "yes" } else { "no" })
        .row("Promoted", if d.promoted { "yes" } else { "no" })
        .row("Started", format::when(d.created_at, now))
        .row("Updated", format::when(d.updated_at, now));
    details.render()
}

fn history(versions: &[Version], now: Timestamp) -> String {
    let mut table = format::table(&["VERSION", "CREATED", "OUTCOME", "NOTE"], false);
    for v in versions.iter().rev() {
        let outcome = match (v.deployment, v.outcome) {
            (_, Some(outcome)) => outcome.to_string(),
            (Some(_), None) => "running".to_owned(),
            (None, None) => "in place".to_owned(),
        };
        let note = v.reverts.map_or_else(String::new, |r| format!("revert to version {r}"));
        table.add_row(vec![v.version.to_string(), format::ago(v.created_at, now), outcome, note]);
    }
    format::render(&table)
}

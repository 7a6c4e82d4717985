//! `cube run`: submit a task from a file or from flags, and optionally wait for it.

use std::collections::HashMap;
use std::process::ExitCode;

use cube_api::types::TaskView;
use cube_core::{DriverKind, NodeId, RestartMode, TaskSpec};
use serde_json::{Map, Value, json};

use super::api::Api;
use super::format::{self, Details};
use super::wait::{self, Goal, Outcome};
use super::{RunArgs, file};
use crate::cli::Output;

/// Runs `cube run`.
pub(super) async fn run(api: &Api, args: RunArgs, output: Output) -> anyhow::Result<ExitCode> {
    let spec = match &args.file {
        Some(path) => file::load(path)?,
        None => one_off(&args)?,
    };
    if args.dry_run {
        match output {
            Output::Json => format::emit_json(&spec)?,
            Output::Table => format::emit(
                toml::to_string_pretty(&spec)
                    .map_err(|e| anyhow::anyhow!("cannot write the spec as TOML: {e}"))?
                    .trim_end(),
            )?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (task, index) = api.submit(&spec).await?;
    if !args.wait {
        match output {
            Output::Json => format::emit_json(&task)?,
            Output::Table if args.quiet => format::emit(&task.id.to_string())?,
            Output::Table => format::emit(&format!("submitted task {}", task.id))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if output == Output::Table {
        // The id first, so it is known even if the wait is interrupted.
        if args.quiet {
            format::emit(&task.id.to_string())?;
        } else {
            format::emit(&format!("submitted task {}", task.id))?;
        }
    }
    let outcome = wait::wait(api, task, index, Goal::Running, args.timeout).await?;
    let names = node_names(api).await;
    match outcome {
        Outcome::Reached(task) => {
            match output {
                Output::Json => format::emit_json(&task)?,
                Output::Table if args.quiet => {}
                Output::Table => format::emit(&summary(&task, &names))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed(task, why) => {
            let place = task
                .node
                .or_else(|| task.events.iter().rev().find_map(|e| e.node))
                .map(|n| format!(" on node {}", node_name(&names, n)))
                .unwrap_or_default();
            let line = format!("task {} ({}) failed{place}: {why}", task.id, task.name);
            wait::unreached(output, Some(&task), &line)
        }
        Outcome::TimedOut(task, why) => wait::unreached(output, task.as_ref(), &why),
    }
}

/// Node names by id (empty when the nodes cannot be listed: names are a nicety here).
pub(super) async fn node_names(api: &Api) -> HashMap<NodeId, String> {
    api.nodes().await.unwrap_or_default().into_iter().map(|n| (n.id, n.name)).collect()
}

/// A node's name, or its short id when unknown.
pub(super) fn node_name(names: &HashMap<NodeId, String>, id: NodeId) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.short())
}

/// `0.0.0.0:32768->80/tcp, ...` as `docker ps` writes ports.
pub(super) fn ports(task: &TaskView) -> String {
    task.host_ports
        .iter()
        .map(|p| format!("{}:{}->{}/{}", p.host_ip, p.host_port, p.container_port, p.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `cube run --wait` prints once the task runs.
fn summary(task: &TaskView, names: &HashMap<NodeId, String>) -> String {
    let mut state = task.state.to_string();
    match (task.healthy, task.exit_code) {
        (Some(true), _) => state.push_str(" (healthy)"),
        (_, Some(code)) if task.state.is_terminal() => {
            state.push_str(&format!(" (exit code {code})"))
        }
        _ => {}
    }
    let mut details = Details::default();
    details
        .row("ID", task.id.to_string())
        .row("Name", task.name.clone())
        .row("State", state)
        .row("Node", format::or_dash(task.node.map(|n| node_name(names, n))));
    if !task.host_ports.is_empty() {
        details.row("Ports", ports(task));
    }
    details.render()
}

/// The spec of a one-off task described by flags.
fn one_off(args: &RunArgs) -> anyhow::Result<TaskSpec> {
    let driver = match (args.driver, &args.image) {
        (Some(driver), _) => driver,
        (None, Some(_)) => DriverKind::Docker,
        (None, None) => anyhow::bail!(
            "nothing to run: give a task file (cube run FILE), or a one-off task with \
             --image IMAGE [-- COMMAND...] or --driver process -- COMMAND..."
        ),
    };
    let (command, command_args) = match args.command.split_first() {
        Some((command, rest)) => (Some(command.clone()), rest.to_vec()),
        None => (None, Vec::new()),
    };
    if driver == DriverKind::Process && command.is_none() {
        anyhow::bail!(
            "a process task needs a command after --, e.g. cube run --driver process -- sleep 60"
        );
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => derive_name(args.image.as_deref(), command.as_deref()),
    };
    let mut spec = Map::new();
    spec.insert("name".into(), json!(name));
    spec.insert("driver".into(), json!(driver));
    if let Some(image) = &args.image {
        spec.insert("image".into(), json!(image));
    }
    if let Some(command) = command {
        spec.insert("command".into(), json!(command));
    }
    spec.insert("args".into(), json!(command_args));
    spec.insert(
        "env".into(),
        json!(args.env.iter().cloned().collect::<std::collections::BTreeMap<String, String>>()),
    );
    if let Some(workdir) = &args.workdir {
        spec.insert("workdir".into(), json!(workdir));
    }
    let mut resources = Map::new();
    if let Some(cpu) = args.cpu {
        resources.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = args.memory {
        resources.insert("memory".into(), json!(memory));
    }
    spec.insert("resources".into(), Value::Object(resources));
    spec.insert("ports".into(), json!(args.ports));
    spec.insert("restart".into(), json!({ "mode": args.restart.unwrap_or(RestartMode::Never) }));
    spec.insert("constraints".into(), json!(args.constraints));
    // Through serde so the defaults (restart attempts, stop grace...) come from cube-core.
    let spec: TaskSpec = serde_json::from_value(Value::Object(spec))
        .map_err(|e| anyhow::anyhow!("invalid task: {e}"))?;
    file::check(&spec).map_err(|problems| anyhow::anyhow!("{problems}"))?;
    Ok(spec)
}

/// A valid task name from the image (`cube-test/busybox:latest` → `busybox`) or the command
/// (`/usr/bin/python3` → `python3`).
fn derive_name(image: Option<&str>, command: Option<&str>) -> String {
    let base = match (image, command) {
        (Some(image), _) => {
            let image = image.split('@').next().unwrap_or(image);
            let last = image.rsplit('/').next().unwrap_or(image);
            last.split(':').next().unwrap_or(last)
        }
        (None, Some(command)) => command.rsplit('/').next().unwrap_or(command),
        (None, None) => "",
    };
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(cube_core::spec::MAX_NAME_LEN)
        .collect();
    if cleaned.is_empty() { "task".to_owned() } else { cleaned }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn names_come_from_the_image_or_command() {
        assert_eq!(derive_name(Some("cube-test/busybox:latest"), Some("httpd")), "busybox");
        assert_eq!(derive_name(Some("localhost:5000/a/web-app@sha256:abc"), None), "web-app");
        assert_eq!(derive_name(None, Some("/usr/bin/python3")), "python3");
        assert_eq!(derive_name(None, Some("./_run me")), "run-me");
        assert_eq!(derive_name(None, Some("+++")), "task");
        assert_eq!(derive_name(None, None), "task");
    }
}

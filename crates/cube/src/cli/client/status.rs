//! `cube status`: the task list, or one task explained (placement and history).

use std::collections::HashMap;
use std::process::ExitCode;

use comfy_table::Cell;
use cube_api::events::EventObject;
use cube_api::types::{TaskFilter, TaskView};
use cube_core::units::format_duration;
use cube_core::{DriverHandle, DriverKind, Explanation, NodeId, ProbeKind, RestartMode};
use jiff::Timestamp;

use super::StatusArgs;
use super::api::Api;
use super::format::{self, Details};
use super::run::{node_name, node_names, ports};
use crate::cli::Output;

/// Longest reason shown in the task list.
const REASON_WIDTH: usize = 40;
/// Longest image or command shown in the task list.
const WORKLOAD_WIDTH: usize = 32;

/// Runs `cube status`.
pub(super) async fn status(
    api: &Api,
    args: StatusArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match &args.id {
        Some(id) => detail(api, id, output).await?,
        None => list(api, &args, output).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(api: &Api, args: &StatusArgs, output: Output) -> anyhow::Result<()> {
    let node = match &args.node {
        Some(given) => Some(api.resolve_node(given).await?.id),
        None => None,
    };
    let filter = TaskFilter { state: args.state, node };
    let (tasks, index) = api.client().tasks_at(&filter).await.map_err(|e| api.error(&e))?;
    let names = node_names(api).await;
    if output == Output::Json {
        format::emit_json(&tasks)?;
    } else if tasks.is_empty() {
        let filtered = args.state.is_some() || args.node.is_some();
        format::note(if filtered {
            "no tasks match"
        } else {
            "no tasks yet: submit one with `cube run`"
        });
    } else {
        format::emit(&task_table(&tasks, &names, Timestamp::now(), format::colour_stdout()))?;
    }
    if args.watch {
        watch(api, &filter, index.unwrap_or(0), &names, output).await?;
    }
    Ok(())
}

/// Follows task changes after `index`: a line each (the event as JSON with `-o json`).
async fn watch(
    api: &Api,
    filter: &TaskFilter,
    index: u64,
    names: &HashMap<NodeId, String>,
    output: Output,
) -> anyhow::Result<()> {
    let mut follower = super::follow::Follower::new(api, index, vec!["Task".to_owned()]);
    let trouble = |why: &str| format::note(why);
    let colour = format::colour_stdout();
    while let Some(event) = follower.next(None, &trouble).await? {
        let EventObject::Task(summary) = &event.object else { continue };
        let shown = summary.as_ref().is_none_or(|t| {
            filter.state.is_none_or(|s| s == t.state)
                && filter.node.is_none_or(|n| t.node == Some(n))
        });
        if !shown {
            continue;
        }
        if output == Output::Json {
            let line = serde_json::to_string(&event)
                .map_err(|e| anyhow::anyhow!("cannot encode JSON output: {e}"))?;
            format::emit(&line)?;
            continue;
        }
        let line = match summary {
            Some(t) => format!(
                "{}  {:<12} {:<20} {:<10} {:<12} {}",
                event.at.strftime("%H:%M:%S"),
                t.id.short(),
                format::truncate(&t.name, 20),
                format::state_text(t.state, colour),
                format::or_dash(t.node.map(|n| node_name(names, n))),
                format::truncate(t.reason.as_deref().unwrap_or(""), REASON_WIDTH)
            ),
            None => format!("{}  {:<12} forgotten", event.at.strftime("%H:%M:%S"), event.key),
        };
        format::emit(&line)?;
    }
    Ok(())
}

/// The task list as a table.
fn task_table(
    tasks: &[TaskView],
    names: &HashMap<NodeId, String>,
    now: Timestamp,
    colour: bool,
) -> String {
    let mut table = format::table(
        &[
            "ID",
            "NAME",
            "STATE",
            "NODE",
            "RESTARTS",
            "CREATED",
            "DRIVER",
            "IMAGE/COMMAND",
            "REASON",
        ],
        colour,
    );
    for t in tasks {
        table.add_row(vec![
            Cell::new(t.id.short()),
            Cell::new(&t.name),
            format::state_cell(t.state, colour),
            Cell::new(format::or_dash(t.node.map(|n| node_name(names, n)))),
            Cell::new(t.restart_count),
            Cell::new(format::ago(t.created_at, now)),
            Cell::new(t.driver),
            Cell::new(format::truncate(&workload(t), WORKLOAD_WIDTH)),
            Cell::new(format::truncate(t.reason.as_deref().unwrap_or(""), REASON_WIDTH)),
        ]);
    }
    format::render(&table)
}

/// The image (docker) or command line (process) of a task.
fn workload(t: &TaskView) -> String {
    match (t.driver, &t.spec.image) {
        (DriverKind::Docker, Some(image)) => image.clone(),
        _ => format::shell_words(&t.spec.argv()),
    }
}

async fn detail(api: &Api, given: &str, output: Output) -> anyhow::Result<()> {
    let id = api.resolve_task(given).await?;
    let task = api.task(id).await?;
    if output == Output::Json {
        return format::emit_json(&task);
    }
    let names = node_names(api).await;
    format::emit(&task_detail(&task, &names, Timestamp::now(), format::colour_stdout()))
}

/// Everything about one task, in sections.
fn task_detail(
    t: &TaskView,
    names: &HashMap<NodeId, String>,
    now: Timestamp,
    colour: bool,
) -> String {
    let spec = &t.spec;
    let mut d = Details::default();
    d.row("ID", t.id.to_string())
        .row("Name", t.name.clone())
        .row("State", format!("{} (desired: {})", format::state_text(t.state, colour), desired(t)));
    d.row(
        "Node",
        format::or_dash(t.node.map(|n| format!("{} ({})", node_name(names, n), n.short()))),
    );
    d.row("Driver", t.driver.to_string());
    if let Some(image) = &spec.image {
        d.row("Image", image.clone());
    }
    d.row("Command", format::or_dash(Some(format::shell_words(&spec.argv()))));
    if !spec.env.is_empty() {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        d.row("Environment", env.join(" "));
    }
    if let Some(workdir) = &spec.workdir {
        d.row("Workdir", workdir.clone());
    }
    let r = spec.resources;
    d.row(
        "Resources",
        if r == cube_core::Resources::default() {
            "none reserved".to_owned()
        } else {
            format!(
                "cpu {}, memory {}, disk {}",
                format::cores(r.cpu),
                format::human_bytes(r.memory.get()),
                format::human_bytes(r.disk.get())
            )
        },
    );
    if !spec.ports.is_empty() || !t.host_ports.is_empty() {
        let declared: Vec<String> =
            spec.ports.iter().map(|p| format!("{}/{}", p.container, p.protocol)).collect();
        let bound = ports(t);
        d.row("Ports", if bound.is_empty() { declared.join(", ") } else { bound });
    }
    if !spec.constraints.is_empty() {
        let written: Vec<&str> = spec.constraints.iter().map(|c| c.as_written()).collect();
        d.row("Constraints", written.join(", "));
    }
    d.row("Restart policy", restart_policy(t));
    d.row(
        "Restarts",
        format!(
            "{} on this node, moved to another placement {}",
            t.restart_count,
            times(t.reschedule_count)
        ),
    );
    d.row("Health", health(t));
    d.row("Exit code", format::or_dash(t.exit_code.map(|c| c.to_string())));
    d.row("Reason", format::or_dash(t.reason.clone()));
    d.row(
        "Handle",
        format::or_dash(t.handle.as_ref().map(|h| match h {
            DriverHandle::Container { id } => {
                format!("container {}", h.short().get(..12).unwrap_or(id))
            }
            DriverHandle::Process { .. } => h.short(),
        })),
    );
    d.row("Created", format::when(t.created_at, now));
    d.row("Started", format::or_dash(t.started_at.map(|at| format::when(at, now))));
    d.row("Finished", format::or_dash(t.finished_at.map(|at| format::when(at, now))));
    d.row("Updated", format::when(t.updated_at, now));

    let mut out = d.render();
    out.push_str("\n\nPlacement:\n");
    out.push_str(&format::indent(&match &t.placement {
        Some(p) => placement(p, colour),
        None => "not recorded (placed before explanations were kept, or by a worker directly)"
            .to_owned(),
    }));
    out.push_str("\n\nEvents:\n");
    out.push_str(&format::indent(&events(t, names, now, colour)));
    out
}

/// `once`, `twice`, `3 times`.
fn times(n: u32) -> String {
    match n {
        0 => "0 times".to_owned(),
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

fn desired(t: &TaskView) -> &'static str {
    match t.desired_state {
        cube_core::DesiredState::Running => "running",
        cube_core::DesiredState::Stopped => "stopped",
    }
}

fn restart_policy(t: &TaskView) -> String {
    let r = &t.spec.restart;
    let mode = match r.mode {
        RestartMode::Never => return "never".to_owned(),
        RestartMode::OnFailure => "on-failure",
        RestartMode::Always => "always",
    };
    format!(
        "{mode}, up to {} restarts, backoff {} to {}, {} reschedule{}",
        r.max_attempts,
        format_duration(r.initial_backoff),
        format_duration(r.max_backoff),
        r.reschedule_attempts,
        if r.reschedule_attempts == 1 { "" } else { "s" }
    )
}

fn health(t: &TaskView) -> String {
    let Some(h) = &t.spec.health else { return "no check".to_owned() };
    let status = match t.healthy {
        Some(true) => "healthy",
        Some(false) => "unhealthy",
        None => "not checked yet",
    };
    let probe = match h.kind {
        ProbeKind::Http => format!(
            "http :{}{}",
            h.port.map(|p| p.to_string()).unwrap_or_default(),
            h.path.as_deref().unwrap_or("/")
        ),
        ProbeKind::Tcp => format!("tcp :{}", h.port.map(|p| p.to_string()).unwrap_or_default()),
        ProbeKind::Exec => format!("exec {}", format::shell_words(&h.command)),
    };
    format!(
        "{status} ({probe} every {}, {} failures to fail)",
        format_duration(h.interval),
        h.failure_threshold
    )
}

/// The scheduler's explanation: the winner, the runners-up and the rejected nodes.
fn placement(p: &Explanation, colour: bool) -> String {
    let mut d = Details::default();
    d.row("Scheduler", p.scheduler.to_string());
    match &p.chosen {
        Some(c) => d.row("Chosen", format!("{} (score {})", c.name, score(c.score))),
        None => d.row("Chosen", format!("none: {}", p.unplaceable_reason())),
    };
    let mut out = d.render();
    if !p.candidates.is_empty() {
        let mut table = format::table(&["CANDIDATE", "ID", "SCORE", ""], colour);
        for c in &p.candidates {
            let chosen = p.chosen.as_ref().is_some_and(|w| w.node == c.node);
            table.add_row(vec![
                Cell::new(&c.name),
                Cell::new(c.node.short()),
                Cell::new(score(c.score)),
                Cell::new(if chosen { "chosen" } else { "" }),
            ]);
        }
        out.push_str("\n\n");
        out.push_str(&format::render(&table));
    }
    if !p.rejected.is_empty() {
        let mut table = format::table(&["REJECTED", "ID", "REASON"], colour);
        for r in &p.rejected {
            table.add_row(vec![
                Cell::new(&r.name),
                Cell::new(r.node.short()),
                Cell::new(&r.reason),
            ]);
        }
        out.push_str("\n\n");
        out.push_str(&format::render(&table));
    }
    out
}

/// Scores are costs (lower is better); four decimals tell them apart.
fn score(value: f64) -> String {
    format!("{value:.4}")
}

/// The history, oldest first.
fn events(t: &TaskView, names: &HashMap<NodeId, String>, now: Timestamp, colour: bool) -> String {
    if t.events.is_empty() {
        return "none".to_owned();
    }
    let mut table = format::table(&["TIME", "CHANGE", "NODE", "REASON"], colour);
    for e in &t.events {
        let change =
            if e.from == e.to { e.to.to_string() } else { format!("{} → {}", e.from, e.to) };
        table.add_row(vec![
            Cell::new(format::ago(e.at, now)),
            Cell::new(change),
            Cell::new(format::or_dash(e.node.map(|n| node_name(names, n)))),
            Cell::new(&e.reason),
        ]);
    }
    format::render(&table)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn task() -> TaskView {
        serde_json::from_value(serde_json::json!({
            "id": "01900000-0000-7000-8000-0000000000aa",
            "name": "web", "state": "running", "desired_state": "running", "driver": "docker",
            "node": "01900000-0000-7000-8000-0000000000bb",
            "handle": {"kind": "container", "id": "0123456789abcdef0123"},
            "host_ports": [{"container_port": 80, "host_port": 32768, "protocol": "tcp",
                            "host_ip": "0.0.0.0"}],
            "exit_code": null, "reason": "started", "restart_count": 1,
            "created_at": "2024-05-01T11:55:00Z", "started_at": "2024-05-01T11:59:00Z",
            "finished_at": null, "updated_at": "2024-05-01T11:59:00Z",
            "spec": {"name": "web", "driver": "docker", "image": "cube-test/busybox:latest",
                     "command": "httpd", "args": ["-f", "-p", "80"],
                     "ports": [{"container": 80}],
                     "restart": {"mode": "on-failure"},
                     "health": {"type": "http", "port": 80}},
            "events": [
                {"at": "2024-05-01T11:55:00Z", "from": "pending", "to": "scheduled",
                 "node": "01900000-0000-7000-8000-0000000000bb", "reason": "placed by spread"},
                {"at": "2024-05-01T11:59:00Z", "from": "scheduled", "to": "running",
                 "node": "01900000-0000-7000-8000-0000000000bb", "reason": "started"}
            ],
            "healthy": true,
            "placement": {"scheduler": "spread",
                          "chosen": {"node": "01900000-0000-7000-8000-0000000000bb",
                                     "name": "w1", "score": 0.25},
                          "candidates": [{"node": "01900000-0000-7000-8000-0000000000bb",
                                          "name": "w1", "score": 0.25},
                                         {"node": "01900000-0000-7000-8000-0000000000cc",
                                          "name": "w2", "score": 0.5}],
                          "rejected": [{"node": "01900000-0000-7000-8000-0000000000dd",
                                        "name": "w3", "reason": "node is down"}]}
        }))
        .unwrap()
    }

    fn names() -> HashMap<NodeId, String> {
        HashMap::from([("01900000-0000-7000-8000-0000000000bb".parse().unwrap(), "w1".to_owned())])
    }

    #[test]
    fn the_list_has_one_row_per_task() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let text = task_table(&[task()], &names(), now, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("ID "), "{text}");
        for word in
            ["0000000000aa", "web", "running", "w1", "5m ago", "docker", "cube-test/busybox"]
        {
            assert!(lines[1].contains(word), "{word} missing: {text}");
        }
        assert!(!text.contains('\x1b'), "no colour when off");
    }

    #[test]
    fn the_detail_explains_placement_and_history() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let text = task_detail(&task(), &names(), now, false);
        for word in [
            "ID:",
            "01900000-0000-7000-8000-0000000000aa",
            "running (desired: running)",
            "w1 (0000000000bb)",
            "0.0.0.0:32768->80/tcp",
            "healthy (http :80/ every 10s",
            "container 0123456789ab",
            "Scheduler:  spread",
            "w1 (score 0.2500)",
            "w2",
            "0.5000",
            "node is down",
            "pending → scheduled",
            "placed by spread",
            "1m ago",
        ] {
            assert!(text.contains(word), "{word:?} missing:\n{text}");
        }
    }
}

//! `cube node`: the worker nodes, their capacity, reservations and latest stats.

use std::process::ExitCode;

use comfy_table::{Cell, Color};
use cube_api::types::{NodeInfo, NodeStats, TaskFilter, TaskView};
use cube_core::{NodeState, Resources};
use jiff::Timestamp;

use super::api::Api;
use super::format::{self, Details};
use super::{NodeAction, NodeArgs};
use crate::cli::Output;

/// Runs `cube node`.
pub(super) async fn node(api: &Api, args: NodeArgs, output: Output) -> anyhow::Result<ExitCode> {
    if let Some(action) = args.action {
        return node_action(api, action, output).await;
    }
    match &args.id {
        None => {
            let nodes = api.nodes().await?;
            match output {
                Output::Json => format::emit_json(&nodes)?,
                Output::Table if nodes.is_empty() => {
                    format::note(
                        "no nodes have registered: start one with `cube worker --join ADDR --token TOKEN`",
                    );
                }
                Output::Table => {
                    format::emit(&node_table(&nodes, Timestamp::now(), format::colour_stdout()))?
                }
            }
        }
        Some(given) => {
            let node = api.resolve_node(given).await?;
            match output {
                Output::Json => format::emit_json(&node)?,
                Output::Table => {
                    let tasks = api
                        .tasks(&TaskFilter { state: None, node: Some(node.id) })
                        .await
                        .unwrap_or_default();
                    format::emit(&node_detail(
                        &node,
                        &tasks,
                        Timestamp::now(),
                        format::colour_stdout(),
                    ))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cube node drain` and `cube node eligibility`.
async fn node_action(api: &Api, action: NodeAction, output: Output) -> anyhow::Result<ExitCode> {
    let (given, line) = match &action {
        NodeAction::Drain { node, .. } => (node, "draining"),
        NodeAction::Eligibility { node, setting } if setting == "on" => (node, "eligible"),
        NodeAction::Eligibility { node, .. } => (node, "ineligible"),
        NodeAction::Rm { node } => (node, "removed"),
    };
    let id = api.resolve_node(given).await?.id.to_string();
    let client = api.client();
    let node = match action {
        NodeAction::Drain { deadline, .. } => client.drain(&id, deadline).await,
        NodeAction::Eligibility { setting, .. } => client.set_eligible(&id, setting == "on").await,
        NodeAction::Rm { .. } => client.remove_node(&id).await,
    }
    .map_err(|e| api.error(&e))?;
    match output {
        Output::Json => format::emit_json(&node)?,
        Output::Table => format::emit(&format!("node {} {line}", node.name))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What the STATE column says: liveness, and whether the node takes new work.
fn state_text(n: &NodeInfo) -> String {
    match (&n.drain, n.eligible) {
        (Some(d), _) if d.drained_at.is_some() => format!("{} (drained)", n.state),
        (Some(_), _) => format!("{} (draining)", n.state),
        (None, false) => format!("{} (ineligible)", n.state),
        (None, true) => n.state.to_string(),
    }
}

fn state_cell(n: &NodeInfo, colour: bool) -> Cell {
    let cell = Cell::new(state_text(n));
    match n.state {
        _ if !colour => cell,
        NodeState::Ready if n.eligible => cell.fg(Color::Green),
        NodeState::Ready => cell.fg(Color::Yellow),
        NodeState::Down => cell.fg(Color::Red),
    }
}

/// `0.5/2` cores.
fn cpu_use(reserved: Resources, capacity: Resources) -> String {
    format!("{}/{}", format::cores(reserved.cpu), format::cores(capacity.cpu))
}

/// `64MiB/15.5GiB`.
fn memory_use(reserved: Resources, capacity: Resources) -> String {
    format!(
        "{}/{}",
        format::human_bytes(reserved.memory.get()),
        format::human_bytes(capacity.memory.get())
    )
}

fn cpu_busy(stats: Option<&NodeStats>) -> String {
    format::or_dash(
        stats.filter(|s| s.cpu.interval_ms > 0).map(|s| format::percent(s.cpu.busy_fraction)),
    )
}

fn memory_used(stats: Option<&NodeStats>) -> String {
    format::or_dash(stats.filter(|s| s.memory.total_bytes > 0).map(|s| {
        // Display only.
        #[allow(clippy::cast_precision_loss)]
        let fraction = s.memory.used_bytes as f64 / s.memory.total_bytes as f64;
        format::percent(fraction)
    }))
}

/// The node list as a table.
fn node_table(nodes: &[NodeInfo], now: Timestamp, colour: bool) -> String {
    let mut table = format::table(
        &[
            "NAME",
            "ID",
            "STATE",
            "ADDRESS",
            "TASKS",
            "CPU",
            "MEMORY",
            "CPU BUSY",
            "MEM USED",
            "LAST HEARTBEAT",
        ],
        colour,
    );
    for n in nodes {
        table.add_row(vec![
            Cell::new(&n.name),
            Cell::new(n.id.short()),
            state_cell(n, colour),
            Cell::new(&n.address),
            Cell::new(n.task_count),
            Cell::new(cpu_use(n.reserved, n.capacity)),
            Cell::new(memory_use(n.reserved, n.capacity)),
            Cell::new(cpu_busy(n.stats.as_ref())),
            Cell::new(memory_used(n.stats.as_ref())),
            Cell::new(format::or_dash(n.last_heartbeat.map(|at| format::ago(at, now)))),
        ]);
    }
    format::render(&table)
}

/// Everything about one node, and the tasks placed on it.
fn node_detail(n: &NodeInfo, tasks: &[TaskView], now: Timestamp, colour: bool) -> String {
    let mut d = Details::default();
    d.row("Name", n.name.clone())
        .row("ID", n.id.to_string())
        .row("State", state_text(n))
        .row("Eligible", if n.eligible { "yes" } else { "no (no new work)" })
        .row("Address", n.address.clone());
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    d.row("Labels", format::or_dash(Some(labels.join(", "))));
    let drivers: Vec<&str> = n.drivers.iter().map(|d| <&str>::from(*d)).collect();
    d.row("Drivers", format::or_dash(Some(drivers.join(", "))));
    if let Some(drain) = &n.drain {
        let status = match (drain.drained_at, drain.deadline) {
            (Some(at), _) => format!("drained {}", format::when(at, now)),
            (None, Some(deadline)) => format!(
                "draining since {}; what is left stops {}",
                format::when(drain.started_at, now),
                format::when(deadline, now)
            ),
            (None, None) => format!("draining since {}", format::when(drain.started_at, now)),
        };
        d.row("Drain", status);
    }
    d.row("Registered", format::when(n.registered_at, now));
    d.row("Last heartbeat", format::or_dash(n.last_heartbeat.map(|at| format::when(at, now))));
    d.row("Active tasks", n.task_count.to_string());
    let reserved = |reserved: String, capacity: String, free: String| {
        format!("{reserved} of {capacity} reserved, {free} free")
    };
    let bytes = |b: cube_core::Bytes| format::human_bytes(b.get());
    d.row(
        "CPU",
        reserved(
            format::cores(n.reserved.cpu),
            format!("{} cores", format::cores(n.capacity.cpu)),
            format::cores(n.free.cpu),
        ),
    );
    d.row(
        "Memory",
        reserved(bytes(n.reserved.memory), bytes(n.capacity.memory), bytes(n.free.memory)),
    );
    d.row("Disk", reserved(bytes(n.reserved.disk), bytes(n.capacity.disk), bytes(n.free.disk)));
    for l in &n.ingress {
        let status = match &l.error {
            None => format!("{} -> service {}", l.address, l.service),
            Some(why) => format!("{} -> service {}: NOT LISTENING: {why}", l.address, l.service),
        };
        d.row(&format!("Ingress :{}", l.port), status);
    }
    let mut out = d.render();
    out.push_str("\n\nStats:\n");
    out.push_str(&format::indent(&match &n.stats {
        Some(s) => stats(s, now),
        None => "none reported yet".to_owned(),
    }));
    out.push_str("\n\nTasks:\n");
    if tasks.is_empty() {
        out.push_str("  none");
    } else {
        let mut table = format::table(&["ID", "NAME", "STATE", "CREATED"], colour);
        for t in tasks {
            table.add_row(vec![
                Cell::new(t.id.short()),
                Cell::new(&t.name),
                format::state_cell(t.state, colour),
                Cell::new(format::ago(t.created_at, now)),
            ]);
        }
        out.push_str(&format::indent(&format::render(&table)));
    }
    out
}

/// The host metrics a worker last reported.
fn stats(s: &NodeStats, now: Timestamp) -> String {
    let mut d = Details::default();
    d.row("Collected", format::when(s.collected_at, now));
    d.row("CPU", format!("{} cores, {} busy", s.cpu.cores, cpu_busy(Some(s))));
    d.row(
        "Load",
        format!("{:.2} {:.2} {:.2} (1m 5m 15m)", s.load.one, s.load.five, s.load.fifteen),
    );
    d.row(
        "Memory",
        format!(
            "{} of {} used ({}), {} available",
            format::human_bytes(s.memory.used_bytes),
            format::human_bytes(s.memory.total_bytes),
            memory_used(Some(s)),
            format::human_bytes(s.memory.available_bytes)
        ),
    );
    d.row(
        "Disk",
        format!(
            "{} free of {} ({})",
            format::human_bytes(s.disk.free_bytes),
            format::human_bytes(s.disk.total_bytes),
            s.disk.path
        ),
    );
    let c = &s.tasks;
    d.row(
        "Tasks",
        format!(
            "{} running, {} starting, {} restarting, {} completed, {} failed",
            c.running, c.starting, c.restarting, c.completed, c.failed
        ),
    );
    d.render()
}

//! Client commands: they talk to a manager's HTTP API (`--addr`, `CUBE_ADDR`).
//!
//! - `run` (module `run`, with `file` for task files and `wait` for `--wait`): submit a task
//!   from a file or from flags, optionally waiting for it;
//! - `status`: list tasks, or explain one (placement and history);
//! - `stop`, `logs`, `node`: the rest of the day-to-day;
//! - `deploy`, `service`, `deployment` (module `service`): services and their rollouts;
//! - `events`: the manager's event stream.
//!
//! Every command prints tables for people (`--output table`) or the API's JSON for scripts
//! (`--output json`). Errors are one `error: ...` line on stderr. Task ids may be shortened to
//! any unique prefix of the full id or of the 12-digit short id the tables show (`api`).
//! User-facing documentation: `docs/cli.md` and `docs/job-files.md`.

mod api;
mod audit;
mod events;
mod exec;
mod file;
mod follow;
mod format;
mod logs;
mod node;
mod run;
mod service;
mod status;
mod stop;
mod token;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use cube_core::units::parse_duration;
use cube_core::{Bytes, DriverKind, Millicores, PortSpec, RestartMode, TaskState};

use super::GlobalArgs;

/// Commands that talk to a manager.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submit a task, from a task file or from flags, and print its id
    ///
    /// A task file is TOML (JSON when its name ends in .json) with the fields of a task spec
    /// (docs/job-files.md). Without a file, the flags describe a one-off task and everything
    /// after `--` is its command. With --wait, the command returns once the task runs (exit 0)
    /// or has failed (exit 3).
    ///
    /// Examples:
    ///   cube run examples/web.toml --wait
    ///   cube run --image cube-test/busybox:latest --port 80 -- httpd -f -p 80
    ///   cube run --driver process --name ticker -- sh -c 'while true; do date; sleep 1; done'
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// List tasks, or show one task in detail (placement and history)
    ///
    /// Examples:
    ///   cube status
    ///   cube status --state running --node worker-1
    ///   cube status 3f2a9c    (any unique prefix of an id)
    ///   cube status 3f2a9c -o json
    ///   cube status -w    (then a line per change, as it happens)
    #[command(verbatim_doc_comment, visible_alias = "ps")]
    Status(StatusArgs),
    /// Ask a task to stop (SIGTERM, then SIGKILL after its stop_grace).
    ///
    /// Example: cube stop 3f2a9c --wait
    Stop(StopArgs),
    /// Print a task's output (stdout and stderr), optionally following it.
    ///
    /// Example: cube logs 3f2a9c -f --tail 20
    Logs(LogsArgs),
    /// List the worker nodes, show one in detail, drain one or set its eligibility
    ///
    /// Examples:
    ///   cube node
    ///   cube node worker-1    (a name, an id or an id prefix)
    ///   cube node drain worker-1 --deadline 10m
    ///   cube node eligibility worker-1 on
    #[command(verbatim_doc_comment, visible_alias = "nodes")]
    Node(NodeArgs),
    /// Create or update a service from a service file, and optionally follow its rollout
    ///
    /// A service file is TOML (JSON when its name ends in .json): `name`, `count`, the task
    /// template under `[task]` and the rollout under `[update]` (docs/services.md). A change of
    /// the template rolls out as a deployment; a change of `count` alone resizes in place. With
    /// --wait, the command follows the rollout and exits 0 once it succeeded, 3 with the reason
    /// when it failed or was paused.
    ///
    /// Examples:
    ///   cube deploy examples/web-service.toml --wait
    ///   cube deploy web.toml --check-index 42    (only if nobody changed it since index 42)
    #[command(verbatim_doc_comment)]
    Deploy(DeployArgs),
    /// Show what `cube deploy FILE` would do, without doing it
    ///
    /// Prints the changed fields, whether instances would be replaced (destructive) or not
    /// (in place), what the rollout would do, and where each new instance would go or, for one
    /// no node can take, why not on each node. Nothing changes.
    ///
    /// Example: cube plan examples/web-service.toml
    Plan(PlanArgs),
    /// Services: list, show, scale, history, revert, remove
    ///
    /// Examples:
    ///   cube service ls
    ///   cube service status web
    ///   cube service scale web 5
    ///   cube service history web
    ///   cube service revert web 3
    ///   cube service rm web
    #[command(verbatim_doc_comment, subcommand, visible_alias = "services")]
    Service(ServiceCommand),
    /// A service's rollout: show it, promote its canaries, pause, resume or fail it
    ///
    /// Each takes a deployment id or a service name (its current deployment).
    ///
    /// Examples:
    ///   cube deployment status web
    ///   cube deployment promote web
    ///   cube deployment fail 0193a2c4-...
    #[command(verbatim_doc_comment, subcommand)]
    Deployment(DeploymentCommand),
    /// Run a command in a running task, on whichever node it runs
    ///
    /// The command runs in the task's environment: inside its container for docker tasks; on
    /// its node with its environment and working directory for process tasks (which have no
    /// isolation to share). `cube exec` exits with the command's exit code, or 255 when the
    /// session itself failed (the task does not run, the node is unreachable, the connection
    /// broke), with one line saying why.
    ///
    /// Examples:
    ///   cube exec 3f2a9c -- ls /www
    ///   cube exec -it 3f2a9c -- sh
    ///   tar c site | cube exec -i 3f2a9c -- tar x -C /www
    #[command(verbatim_doc_comment)]
    Exec(ExecArgs),
    /// Follow the cluster's changes as they are committed, one line each
    ///
    /// Every change to a task, node, service or deployment has an index; the stream starts
    /// after --index (default: now) and resumes by itself after a dropped connection. With
    /// -o json each line is the event as the API sends it (docs/events.md). Ctrl-C stops.
    ///
    /// Examples:
    ///   cube events
    ///   cube events --topic Service:web --topic Deployment
    ///   cube events --index 0 -o json | jq 'select(.type == "TaskFailed")'
    #[command(verbatim_doc_comment)]
    Events(EventsArgs),
    /// Users' tokens: make one with a role, list them, revoke one (needs the admin role)
    ///
    /// Roles, each allowing what the ones before it allow: read (every GET, events, logs),
    /// operate (run, stop, deploy, scale, revert, promote), exec (cube exec), admin (tokens,
    /// node drain and eligibility). The secret is printed once; only its digest is stored.
    /// Use it as CUBE_TOKEN. The cluster token keeps working as the admin token.
    ///
    /// Examples:
    ///   CUBE_TOKEN=$(cube token create ci --role operate --expires 90d) cube run job.toml
    ///   cube token create alice --role read
    ///   cube token ls
    ///   cube token revoke ci
    #[command(verbatim_doc_comment, subcommand, visible_alias = "tokens")]
    Token(TokenCommand),
    /// Who changed what, when, and how it was answered (needs the admin role)
    ///
    /// Every mutation through the API is recorded before it is answered: who (a token's name,
    /// `cluster` for the cluster token, a node's id), the role it acted with, the operation and
    /// its path, and the HTTP status (2xx done, 403 refused for lack of a role, 4xx refused,
    /// 5xx failed). Records are kept for the manager's --audit-retention (90 days by default)
    /// and are also `Audited` events in `cube events --topic Audit`.
    ///
    /// Examples:
    ///   cube audit --since 1h
    ///   cube audit --who ci --since 2026-12-01T00:00:00Z
    ///   cube audit -o json | jq 'select(.status >= 400)'
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
}

/// Options of `cube audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records since this long ago (1h, 7d) or this time (RFC 3339).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only what this caller did (a token's name, `cluster`, a node's id).
    #[arg(long, value_name = "NAME")]
    pub who: Option<String>,
    /// At most this many records, the newest.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// `cube token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints its secret (this once) on stdout.
    Create {
        /// Its name (a-z, 0-9, `-`, `_`, `.`): it names who acts in the audit log.
        name: String,
        /// What it may do: read, operate, exec or admin.
        #[arg(long)]
        role: cube_api::auth::Role,
        /// How long it is valid (e.g. 90d, 12h) [default: until revoked].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// List tokens (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke a token: its next request is refused.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// Replace the worker join token and print the new one: the old one admits nobody from
    /// now on; workers that joined keep their certificates.
    ///
    /// Example: cube token rotate worker
    Rotate {
        /// Which token: `worker`.
        #[arg(value_parser = ["worker"])]
        kind: String,
    },
}

/// Options of `cube exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Send standard input to the command (its end closes the command's stdin).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Run the command on a terminal: this one in raw mode, its size kept in step.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Task id (or a unique prefix of one).
    #[arg(value_name = "ID")]
    pub id: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Options of `cube events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only these: Task, Node, Service, Deployment, one key of one (Service:web), or *
    /// (repeatable; default: everything).
    #[arg(long = "topic", short = 't', value_name = "TOPIC[:KEY]")]
    pub topics: Vec<String>,
    /// Start after this index (0: from the first change; an index the history no longer
    /// holds is an error naming the oldest it does) [default: only new changes].
    #[arg(long, value_name = "N")]
    pub index: Option<u64>,
}

/// Options of `cube deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Service file: TOML, or JSON when the name ends in `.json`; `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Follow the rollout until it ends: exit 0 on success, 3 on failure.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Longest time --wait waits (e.g. 10m).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Only if the service's modify index is still N (0: only if it does not exist yet).
    #[arg(long, value_name = "N")]
    pub check_index: Option<u64>,
    /// Check the file and print the service with defaults filled in, without sending it.
    #[arg(long, conflicts_with_all = ["wait", "check_index"])]
    pub dry_run: bool,
}

/// Options of `cube plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Service file: TOML, or JSON when the name ends in `.json`; `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `cube service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services with their healthy, running and desired instances.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a service: instances per version and its current deployment.
    Status {
        /// The service.
        name: String,
    },
    /// Change the number of instances (in place: no rollout, healthy instances kept).
    Scale {
        /// The service.
        name: String,
        /// The new count.
        count: u32,
    },
    /// The last versions, newest first, with how their rollouts ended.
    History {
        /// The service.
        name: String,
    },
    /// Roll out the spec of an earlier version as a new version (start-first, no canaries).
    Revert {
        /// The service.
        name: String,
        /// The version whose spec to restore.
        version: u64,
    },
    /// Remove a service and stop its instances.
    #[command(visible_alias = "remove")]
    Rm {
        /// The service.
        name: String,
    },
}

/// `cube deployment` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Show a deployment: status, reason, what it waits for.
    Status {
        /// A deployment id, or a service name.
        target: String,
    },
    /// Let a rollout waiting on healthy canaries proceed.
    Promote {
        /// A deployment id, or a service name.
        target: String,
    },
    /// Stop a rollout where it is (instances are kept as they are).
    Pause {
        /// A deployment id, or a service name.
        target: String,
    },
    /// Let a paused rollout move again.
    Resume {
        /// A deployment id, or a service name.
        target: String,
    },
    /// Give a rollout up (it reverts when its strategy says `auto_revert`).
    Fail {
        /// A deployment id, or a service name.
        target: String,
    },
}

/// Options of `cube run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task file: TOML, or JSON when the name ends in `.json`; `-` reads standard input.
    #[arg(
        value_name = "FILE",
        conflicts_with_all = [
            "image", "driver", "name", "ports", "env", "memory", "cpu", "restart", "workdir",
            "constraints", "command",
        ]
    )]
    pub file: Option<PathBuf>,
    /// Container image of a one-off docker task.
    #[arg(long, value_name = "IMAGE", help_heading = "One-off task")]
    pub image: Option<String>,
    /// Driver of a one-off task [default: docker when --image is given].
    #[arg(long, value_name = "DRIVER", help_heading = "One-off task")]
    pub driver: Option<DriverKind>,
    /// Task name [default: derived from the image or the command].
    #[arg(long, value_name = "NAME", help_heading = "One-off task")]
    pub name: Option<String>,
    /// Publish a container port: CONTAINER, HOST:CONTAINER, with an optional /udp (repeatable).
    #[arg(
        long = "port",
        short = 'p',
        value_name = "PORT",
        value_parser = parse_port,
        help_heading = "One-off task"
    )]
    pub ports: Vec<PortSpec>,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(
        long,
        short = 'e',
        value_name = "KEY=VALUE",
        value_parser = parse_env,
        help_heading = "One-off task"
    )]
    pub env: Vec<(String, String)>,
    /// Memory to reserve (and, for docker, the limit), e.g. 64MiB.
    #[arg(long, value_name = "SIZE", help_heading = "One-off task")]
    pub memory: Option<Bytes>,
    /// CPU to reserve (and, for docker, the limit), in cores (0.5) or millicores (500m).
    #[arg(long, value_name = "CPU", help_heading = "One-off task")]
    pub cpu: Option<Millicores>,
    /// Restart policy: never, on-failure or always [default: never].
    #[arg(long, value_name = "MODE", help_heading = "One-off task")]
    pub restart: Option<RestartMode>,
    /// Working directory (absolute; inside the container for docker).
    #[arg(long, value_name = "DIR", help_heading = "One-off task")]
    pub workdir: Option<String>,
    /// A placement constraint such as `node.labels.zone == a` (repeatable).
    #[arg(long = "constraint", value_name = "EXPR", help_heading = "One-off task")]
    pub constraints: Vec<cube_core::constraint::Constraint>,
    /// Command and arguments of a one-off task, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Wait until the task runs (exit 0) or fails (exit 3), showing progress.
    ///
    /// "Runs" means: running and healthy when the task has a health check, otherwise running
    /// for a second without exiting.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Longest time --wait waits (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print only the task id.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Check the task and print it with defaults filled in, without submitting it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `cube status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show this task in detail (an id or a unique prefix of one).
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Only tasks in this state: pending, scheduled, running, restarting, completed, failed.
    #[arg(long, value_name = "STATE", conflicts_with = "id")]
    pub state: Option<TaskState>,
    /// Only tasks placed on this node (a name, an id or an id prefix).
    #[arg(long, value_name = "NODE", conflicts_with = "id")]
    pub node: Option<String>,
    /// After the list, print a line for every change of a task as it happens (Ctrl-C stops).
    #[arg(long, short = 'w', conflicts_with = "id")]
    pub watch: bool,
}

/// Options of `cube stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Task id (or a unique prefix of one).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Wait until the task has stopped.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Longest time --wait waits (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options of `cube logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id (or a unique prefix of one).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Keep printing new output until the task finishes (Ctrl-C to stop watching).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start with the last N lines only.
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
}

/// Options of `cube node`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// Show this node in detail (a name, an id or an id prefix).
    #[arg(value_name = "NODE")]
    pub id: Option<String>,
    /// Drain a node, or turn new work on it on or off.
    #[command(subcommand)]
    pub action: Option<NodeAction>,
}

/// `cube node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Empty a node: no new work; service instances replaced elsewhere (healthy first, within
    /// each service's max_unavailable), bare tasks placed elsewhere at once; after --deadline
    /// the rest are stopped. The node stays ineligible until `cube node eligibility NODE on`.
    ///
    /// Example: cube node drain worker-1 --deadline 10m
    Drain {
        /// The node (a name, an id or an id prefix).
        node: String,
        /// Stop what is still there after this long (default: wait for room elsewhere).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Let new work go to a node (`on`, which also ends a drain) or not (`off`).
    ///
    /// Example: cube node eligibility worker-1 off
    Eligibility {
        /// The node (a name, an id or an id prefix).
        node: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
    /// Remove a node from the cluster: its tasks are placed elsewhere, its certificate is
    /// refused at once (open connections closed), and its id never joins again.
    ///
    /// Example: cube node rm worker-1
    #[command(visible_alias = "remove")]
    Rm {
        /// The node (a name, an id or an id prefix).
        node: String,
    },
}

/// Runs a client command.
pub fn run(command: ClientCommand, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let api = api::Api::new(&global.addr, global.token()?, global.tls_ca.as_deref())?;
    let output = global.output;
    let runtime = super::agents::runtime()?;
    let result = runtime.block_on(async move {
        match command {
            ClientCommand::Run(args) => run::run(&api, args, output).await,
            ClientCommand::Status(args) => status::status(&api, args, output).await,
            ClientCommand::Stop(args) => stop::stop(&api, args, output).await,
            ClientCommand::Logs(args) => logs::logs(&api, args).await,
            ClientCommand::Node(args) => node::node(&api, args, output).await,
            ClientCommand::Deploy(args) => service::deploy(&api, args, output).await,
            ClientCommand::Plan(args) => service::plan(&api, args, output).await,
            ClientCommand::Service(command) => service::service(&api, command, output).await,
            ClientCommand::Deployment(command) => service::deployment(&api, command, output).await,
            ClientCommand::Events(args) => events::events(&api, args, output).await,
            ClientCommand::Exec(args) => exec::exec(&api, args).await,
            ClientCommand::Token(command) => token::token(&api, command, output).await,
            ClientCommand::Audit(args) => audit::audit(&api, args, output).await,
        }
    });
    // A read of standard input may still be blocked in a thread of the runtime (`cube exec -i`
    // ends when the command does, not when its input does): do not wait for it.
    runtime.shutdown_background();
    result
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `80`, `8080:80`, `53/udp`, `5353:53/udp`.
fn parse_port(s: &str) -> Result<PortSpec, String> {
    let bad = || format!("{s:?} is not CONTAINER, HOST:CONTAINER, or either with /tcp or /udp");
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, cube_core::Protocol::Tcp),
        Some((p, "udp")) => (p, cube_core::Protocol::Udp),
        Some(_) => return Err(bad()),
        None => (s, cube_core::Protocol::Tcp),
    };
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (h.parse::<u16>().map_err(|_| bad())?, c),
        None => (0, ports),
    };
    let container = container.parse::<u16>().map_err(|_| bad())?;
    if container == 0 {
        return Err("the container port must be between 1 and 65535".to_owned());
    }
    Ok(PortSpec { container, host, protocol })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn ports_parse_like_docker() {
        let p = parse_port("80").unwrap();
        assert_eq!((p.container, p.host, p.protocol), (80, 0, cube_core::Protocol::Tcp));
        let p = parse_port("8080:80").unwrap();
        assert_eq!((p.container, p.host), (80, 8080));
        let p = parse_port("5353:53/udp").unwrap();
        assert_eq!((p.container, p.host, p.protocol), (53, 5353, cube_core::Protocol::Udp));
        assert!(parse_port("80/sctp").is_err());
        assert!(parse_port("0").is_err());
        assert!(parse_port("x:80").is_err());
    }

    #[test]
    fn env_needs_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".to_owned(), "b=c".to_owned()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}

//! Command-line definition and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Cube: a small container orchestrator.
#[derive(Debug, Parser)]
#[command(name = "cube", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker node: it runs the tasks it is given (docker containers or host processes).
    ///
    /// The worker API listens on 127.0.0.1 by default. Anyone who can reach it can start
    /// containers, which is root on this host: only pass a non-loopback --listen address on a
    /// network you trust.
    ///
    /// Example: cube worker --listen 127.0.0.1:5556 --data-dir /var/lib/cube/worker
    Worker(WorkerArgs),
}

/// Options of `cube worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address and port the worker API listens on (port 0 picks a free port).
    #[arg(long, env = "CUBE_WORKER_LISTEN", default_value = "127.0.0.1:5556")]
    pub listen: SocketAddr,
    /// Node name shown in listings [default: the host name].
    #[arg(long, env = "CUBE_WORKER_NAME")]
    pub name: Option<String>,
    /// Directory for the node id, task logs and state.
    #[arg(long, env = "CUBE_WORKER_DATA_DIR", default_value = ".cube/worker")]
    pub data_dir: PathBuf,
    /// How often host metrics are sampled (e.g. 1s, 500ms).
    #[arg(long, env = "CUBE_WORKER_STATS_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Longest time an image pull may take before the task fails.
    #[arg(long, env = "CUBE_WORKER_PULL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub pull_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cube_core::units::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Worker(args) => {
            init_logging();
            runtime()?.block_on(worker(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUBE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let config = cube_worker::WorkerConfig {
        name: args.name.unwrap_or_else(host_name),
        data_dir: args.data_dir,
        listen: args.listen,
        stats_interval: args.stats_interval,
        pull_timeout: args.pull_timeout,
    };
    let store: Arc<dyn cube_store::Store> = Arc::new(cube_store::MemoryStore::new());
    let worker = cube_worker::start(config, store, shutdown).await?;
    announce(&format!("cube worker listening on http://{}", worker.addr));
    worker.wait().await?;
    tracing::info!("worker stopped; tasks keep running");
    Ok(())
}

/// Prints the one line tests and scripts wait for.
#[allow(clippy::print_stdout)]
fn announce(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Cancels `token` on SIGINT or SIGTERM.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
        token.cancel();
    });
}

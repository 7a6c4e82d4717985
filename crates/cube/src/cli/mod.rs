//! The `cube` command line: one binary for the agents (`worker`, `manager`, `dev`) and the
//! client commands that talk to a manager (`run`, `status`, `stop`, `logs`, `node`).
//!
//! Exit codes: 0 success; 1 error (one `error: ...` line on stderr); 2 bad usage (from clap);
//! 3 a waited-for task failed (`cube run --wait`).

pub mod agents;
pub mod client;

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Cube: a small container orchestrator.
///
/// Start a local cluster with `cube dev`, then run tasks on it with `cube run`.
#[derive(Debug, Parser)]
#[command(name = "cube", version, about, long_about = None)]
pub struct Cli {
    /// Options shared by the client commands.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Manager to talk to.
    #[arg(long, global = true, env = "CUBE_ADDR", default_value = "http://127.0.0.1:5555")]
    pub addr: String,
    /// Output format: `table` for people, `json` for scripts (stable, complete).
    #[arg(long, short = 'o', global = true, env = "CUBE_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The cluster token (16+ printable characters, e.g. `openssl rand -hex 32`). Client
    /// commands send it; `cube manager`, `cube worker` and `cube dev` require it on their APIs
    /// and send it to each other. Prefer the environment variable: other users can read
    /// command lines.
    #[arg(long, global = true, env = "CUBE_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub token: Option<cube_http::auth::Token>,
    /// Read the cluster token from this file (surrounding whitespace ignored), for secrets
    /// mounted by systemd, Kubernetes or Docker; it takes precedence over --token.
    #[arg(long, global = true, env = "CUBE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) to trust for `https://` addresses instead of the system's roots.
    /// Client commands use it to reach the manager; the agents use it to reach each other.
    #[arg(long, global = true, env = "CUBE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

fn parse_token(s: &str) -> Result<cube_http::auth::Token, String> {
    s.parse().map_err(|e: cube_http::auth::TokenError| e.to_string())
}

impl GlobalArgs {
    /// The cluster token, from `--token` or from `--token-file`.
    pub fn token(&self) -> anyhow::Result<Option<cube_http::auth::Token>> {
        let Some(path) = &self.token_file else { return Ok(self.token.clone()) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the token: {e}", path.display()))?;
        let token = text
            .trim()
            .parse()
            .map_err(|e: cube_http::auth::TokenError| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(token))
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, as the API returns it.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker node: it runs the tasks it is given (docker containers or host processes).
    ///
    /// Join a cluster by certificate: --join with the managers' cluster ports and --token with
    /// the join token the manager printed. The worker then speaks only mutual TLS with its
    /// managers and its API accepts nobody else; its certificate renews itself, and after an
    /// expiry it joins again with the token under the same node id (docs/security.md).
    ///
    /// The worker API listens on 127.0.0.1 by default. The older way, --manager with the
    /// cluster token (CUBE_TOKEN), still works; then anyone who can reach the API with the
    /// token can start containers, which is root on this host: a non-loopback --listen
    /// address needs the token, and --tls-cert/--tls-key keep it off the wire in clear text.
    ///
    /// Tasks get the least the worker can give: docker is on whenever an engine answers, host
    /// processes only with --driver process (run as nobody when the worker is root, unless a
    /// task names a user --allow-user allows); containers always get no-new-privileges and are
    /// never privileged, on the host network, given host mounts or added capabilities unless
    /// an --allow-* flag says so. A task asking for more is not placed here, and the reason
    /// names the flag.
    ///
    /// Examples:
    ///   cube worker --join 10.0.0.1:5557 --token CUBE-1-... --listen 10.0.0.5:5556
    ///   cube worker --listen 127.0.0.1:5556 --data-dir /var/lib/cube/worker
    ///   CUBE_TOKEN=... cube worker --manager http://10.0.0.1:5555 --listen 0.0.0.0:5556 \
    ///       --advertise http://10.0.0.5:5556 --label zone=a
    ///   cube worker --manager http://10.0.0.1:5555 --driver process --allow-user app
    ///   cube worker --manager http://10.0.0.1:5555 --allow-host-mounts /srv/data \
    ///       --allow-cap-add NET_BIND_SERVICE
    #[command(verbatim_doc_comment)]
    Worker(agents::WorkerArgs),
    /// Run the manager: it accepts tasks, places them on workers and heals the cluster.
    ///
    /// On its first start the manager makes the cluster's CA and prints a worker join token;
    /// workers join with `cube worker --join ADDR --token TOKEN` on its cluster port
    /// (--cluster-listen, port 5557 by default) over mutual TLS. `cube token rotate worker`
    /// prints a new token. The manager API listens on 127.0.0.1 by default: it starts
    /// workloads on every worker, so a non-loopback --listen address needs the cluster token
    /// (CUBE_TOKEN), the bootstrap admin.
    ///
    /// Example: cube manager --listen 127.0.0.1:5555 --scheduler spread
    Manager(agents::ManagerArgs),
    /// Run a local cluster: a manager and one worker in this process, with state in a data
    /// directory that survives restarts. Uses Docker when an engine answers; the process
    /// driver is always on (as `cube worker --driver process`).
    ///
    /// Example: cube dev --demo
    Dev(agents::DevArgs),
    /// Commands that talk to a manager.
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Print a shell completion script.
    ///
    /// Example: cube completion bash > /etc/bash_completion.d/cube
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Worker(args) => {
            agents::init_logging();
            let (security, join) = agents::worker_security(&cli.global, &args)?;
            agents::runtime()?.block_on(agents::worker(args, security, join))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manager(args) => {
            agents::init_logging();
            let security = agents::security(&cli.global, &args.exposure, args.listen)?;
            agents::runtime()?.block_on(agents::manager(args, security))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => {
            agents::init_logging();
            let security = agents::security(&cli.global, &args.exposure, args.listen)?;
            agents::runtime()?.block_on(agents::dev(args, security))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(command) => client::run(command, &cli.global),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cube", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

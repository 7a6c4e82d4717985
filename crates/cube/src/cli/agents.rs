//! The long-running commands: `cube worker`, `cube manager` and `cube dev` (both in one
//! process, for a local cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cube_core::units::parse_duration;
use cube_http::auth::Token;
use tokio_util::sync::CancellationToken;

/// Options of `cube dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the manager API listens on (the worker picks a free loopback port).
    #[arg(long, env = "CUBE_DEV_LISTEN", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,
    /// Directory for the cluster's state; it survives restarts of `cube dev`.
    #[arg(long, env = "CUBE_DEV_DATA_DIR", default_value = ".cube/dev")]
    pub data_dir: PathBuf,
    /// Placement strategy: round-robin, epvm, binpack or spread.
    #[arg(long, env = "CUBE_SCHEDULER", default_value = "spread")]
    pub scheduler: cube_core::SchedulerKind,
    /// Also deploy a demo once the cluster is up: with Docker, a 3-instance web service
    /// published on --demo-port (examples/demo-service.toml); without it, a chatty shell loop.
    #[arg(long)]
    pub demo: bool,
    /// The port the demo service is published on, on loopback.
    #[arg(long, env = "CUBE_DEMO_PORT", default_value_t = 8080, requires = "demo")]
    pub demo_port: u16,
    /// Finished tasks are forgotten, with their logs, this long after they finished (e.g. 24h,
    /// 30m), or `never`.
    #[arg(long, env = "CUBE_GC_AFTER", default_value = "24h", value_parser = parse_retention)]
    pub gc_after: Retention,
    /// What tasks may ask for beyond the defaults.
    #[command(flatten)]
    pub allow: AllowArgs,
    /// How the API is exposed: TLS, and whether it may go unauthenticated.
    #[command(flatten)]
    pub exposure: ExposureArgs,
}

/// Options of `cube manager`.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address and port the manager API listens on (port 0 picks a free port).
    #[arg(long, env = "CUBE_MANAGER_LISTEN", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,
    /// Placement strategy: round-robin, epvm, binpack or spread.
    #[arg(long, env = "CUBE_SCHEDULER", default_value = "spread")]
    pub scheduler: cube_core::SchedulerKind,
    /// How often workers heartbeat.
    #[arg(long, env = "CUBE_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is marked down and its tasks are placed elsewhere.
    #[arg(long, env = "CUBE_NODE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub node_ttl: Duration,
    /// Timeout of each call from the manager to a worker.
    #[arg(long, env = "CUBE_WORKER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub worker_timeout: Duration,
    /// Name shown in health checks.
    #[arg(long, env = "CUBE_MANAGER_NAME", default_value = "manager")]
    pub name: String,
    /// Directory for the manager's state.
    #[arg(long, env = "CUBE_MANAGER_DATA_DIR", default_value = ".cube/manager")]
    pub data_dir: PathBuf,
    /// Where state lives: redb (durable, in the data directory; one manager), memory (lost on
    /// exit), or etcd (several managers, one elected leader; see --etcd and docs/ha.md).
    #[arg(long, env = "CUBE_MANAGER_STORE", default_value = "redb")]
    pub store: ManagerStore,
    /// Finished tasks are forgotten this long after they finished (e.g. 24h, 30m), or `never`.
    /// Workers delete their logs on their own schedule (`cube worker --gc-after`).
    #[arg(long, env = "CUBE_MANAGER_GC_AFTER", default_value = "24h", value_parser = parse_retention)]
    pub gc_after: Retention,
    /// How long the audit log keeps a record of each mutation (e.g. 90d, 365d).
    #[arg(long, env = "CUBE_MANAGER_AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// Address of the cluster port, where workers started with `--join` reach this manager
    /// over mutual TLS [default: the --listen address's IP, port 5557; port 0 when --listen's
    /// port is 0].
    #[arg(long, env = "CUBE_MANAGER_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<SocketAddr>,
    /// How long node and manager certificates last (at least 10s); each renews between 50%
    /// and 80% of it.
    #[arg(long, env = "CUBE_MANAGER_CERT_LIFETIME", default_value = "90d", value_parser = parse_cert_lifetime)]
    pub cert_lifetime: Duration,
    /// With `--store etcd`: where etcd is and how to reach it.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// How the API is exposed: TLS, and whether it may go unauthenticated.
    #[command(flatten)]
    pub exposure: ExposureArgs,
}

/// Where a manager keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ManagerStore {
    /// Durable: a redb file in the data directory; survives crashes and restarts.
    Redb,
    /// In memory: for tests and throwaway runs; everything is lost on exit.
    Memory,
    /// etcd: the only source of truth of several managers, one of which leads.
    Etcd,
}

/// Options of a manager on etcd (`--store etcd`).
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(long = "etcd", env = "CUBE_ETCD", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Where this cluster's keys live in etcd.
    #[arg(long, env = "CUBE_ETCD_PREFIX", default_value = "/cube")]
    pub etcd_prefix: String,
    /// This cluster's name: a manager refuses a prefix holding another cluster's data.
    #[arg(long, env = "CUBE_ETCD_CLUSTER", default_value = "cube")]
    pub etcd_cluster: String,
    /// The CA certificate (PEM) that signed etcd's certificates, for https:// endpoints.
    #[arg(long, env = "CUBE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// This manager's client certificate (PEM), when etcd asks for one.
    #[arg(long, env = "CUBE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key (PEM) of --etcd-cert.
    #[arg(long, env = "CUBE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd's user, when its authentication is on (the password in CUBE_ETCD_PASSWORD).
    #[arg(long, env = "CUBE_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The password of --etcd-user (prefer the environment variable).
    #[arg(long, env = "CUBE_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// The URL other managers and clients reach this one at (default: the listen address).
    #[arg(long, env = "CUBE_MANAGER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The leader's lease: a leader that could not renew it for 60% of this stops acting;
    /// another is elected once it expired (2s at least).
    #[arg(long, env = "CUBE_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
}

impl EtcdArgs {
    fn config(&self) -> anyhow::Result<cube_etcd::EtcdConfig> {
        if self.endpoints.is_empty() {
            anyhow::bail!("--store etcd needs --etcd URL[,URL...] (etcd's client URLs)");
        }
        if self.lease_ttl < Duration::from_secs(2) {
            anyhow::bail!("--lease-ttl must be 2s or more (etcd's shortest lease)");
        }
        let mut config = cube_etcd::EtcdConfig::new(self.endpoints.clone());
        config.prefix = self.etcd_prefix.trim_end_matches('/').to_owned();
        config.cluster = self.etcd_cluster.clone();
        config.user = self.etcd_user.clone().zip(self.etcd_password.clone());
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            config.tls = Some(cube_etcd::TlsFiles {
                ca: self.etcd_ca.clone(),
                identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
                domain: None,
            });
        }
        Ok(config)
    }
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
    /// Manager to join (e.g. http://127.0.0.1:5555); without it the worker runs standalone.
    /// With the cluster token: the older way; prefer --join.
    #[arg(long, env = "CUBE_MANAGER", conflicts_with = "join")]
    pub manager: Option<String>,
    /// Join a cluster by certificate: the managers' cluster ports (ADDR[,ADDR...], e.g.
    /// 10.0.0.1:5557). With it, --token (CUBE_TOKEN) is the join token the manager printed
    /// (CUBE-1-...), needed to join and to join again after the certificate expired; from then
    /// on every call between this worker and its managers is mutual TLS, and only its managers
    /// may call this worker.
    #[arg(long, env = "CUBE_JOIN", value_name = "ADDRS")]
    pub join: Option<String>,
    /// URL the manager uses to reach this worker [default: `http://` (`https://` with
    /// --tls-cert) + the listen address].
    #[arg(long, env = "CUBE_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// A label for placement constraints, KEY=VALUE (repeatable).
    #[arg(long = "label", env = "CUBE_WORKER_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// CPU offered to tasks, in cores or millicores (e.g. 2, 500m) [default: all cores].
    #[arg(long, env = "CUBE_WORKER_CPU")]
    pub cpu: Option<cube_core::Millicores>,
    /// Memory offered to tasks (e.g. 4GiB) [default: all memory].
    #[arg(long, env = "CUBE_WORKER_MEMORY")]
    pub memory: Option<cube_core::Bytes>,
    /// Disk offered to tasks (e.g. 20GiB) [default: size of the data directory's filesystem].
    #[arg(long, env = "CUBE_WORKER_DISK")]
    pub disk: Option<cube_core::Bytes>,
    /// Where task state lives: redb (durable, in the data directory) or memory (lost on exit).
    #[arg(long, env = "CUBE_WORKER_STORE", default_value = "redb")]
    pub store: StoreKind,
    /// Address the ingress listens on for services' published ports [default: the
    /// --listen address]. Published ports are meant for clients, so this is often the node's
    /// public address while the API stays on a private one.
    #[arg(long, env = "CUBE_WORKER_INGRESS_ADDR")]
    pub ingress_addr: Option<std::net::IpAddr>,
    /// Finished tasks' records and logs are deleted this long after they finished (e.g. 24h,
    /// 30m), or `never`. With a manager, only once it has the task's final state.
    #[arg(long, env = "CUBE_WORKER_GC_AFTER", default_value = "24h", value_parser = parse_retention)]
    pub gc_after: Retention,
    /// A driver to enable besides docker, which is on whenever an engine answers: `process`
    /// runs tasks as host processes (repeatable, or comma-separated).
    #[arg(
        long = "driver",
        env = "CUBE_WORKER_DRIVERS",
        value_delimiter = ',',
        value_name = "DRIVER"
    )]
    pub drivers: Vec<cube_core::DriverKind>,
    /// What tasks may ask for beyond the defaults.
    #[command(flatten)]
    pub allow: AllowArgs,
    /// How the API is exposed: TLS, and whether it may go unauthenticated.
    #[command(flatten)]
    pub exposure: ExposureArgs,
}

/// What a worker lets tasks ask for beyond the defaults (shared by `worker` and `dev`). Each is
/// advertised to the manager, which places a task only where all it asks for is allowed.
#[derive(Debug, Args)]
pub struct AllowArgs {
    /// The host user process tasks run as unless their spec names an allowed one (when the
    /// worker runs as root; otherwise tasks run as the worker's own user). It must exist.
    #[arg(long, env = "CUBE_PROCESS_USER", default_value = cube_worker::DEFAULT_PROCESS_USER, value_name = "USER")]
    pub process_user: String,
    /// A host user process tasks may name in `user`, e.g. root (repeatable).
    #[arg(long = "allow-user", env = "CUBE_ALLOW_USERS", value_delimiter = ',', value_name = "USER", value_parser = parse_user)]
    pub allow_users: Vec<String>,
    /// Let tasks ask for privileged containers (`privileged = true`): root on this host.
    #[arg(long, env = "CUBE_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,
    /// Let containers mount host paths at or below this absolute path, e.g. /srv/data
    /// (repeatable; `/` allows any path).
    #[arg(long = "allow-host-mounts", env = "CUBE_ALLOW_HOST_MOUNTS", value_delimiter = ',', value_name = "PATH_PREFIX", value_parser = parse_mount_prefix)]
    pub allow_host_mounts: Vec<String>,
    /// Let containers join the host network (`network = "host"`).
    #[arg(long, env = "CUBE_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// A capability containers may add in `cap_add`, e.g. NET_BIND_SERVICE (repeatable).
    #[arg(long = "allow-cap-add", env = "CUBE_ALLOW_CAP_ADD", value_delimiter = ',', value_name = "CAP", value_parser = parse_capability)]
    pub allow_cap_add: Vec<String>,
}

impl AllowArgs {
    fn allows(&self) -> cube_core::Allows {
        cube_core::Allows {
            users: self.allow_users.clone(),
            privileged: self.allow_privileged,
            host_mounts: self.allow_host_mounts.clone(),
            host_network: self.allow_host_network,
            cap_add: self.allow_cap_add.clone(),
        }
    }
}

fn parse_user(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.contains(':') || s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} is not a user name or uid"));
    }
    Ok(s.to_owned())
}

fn parse_mount_prefix(s: &str) -> Result<String, String> {
    let trimmed = if s.len() > 1 { s.trim_end_matches('/') } else { s };
    if !cube_core::spec::is_clean_absolute_path(trimmed) {
        return Err(format!("{s:?} is not an absolute path without '.' or '..'"));
    }
    Ok(trimmed.to_owned())
}

fn parse_capability(s: &str) -> Result<String, String> {
    let name = cube_core::spec::capability_name(s);
    if name.is_empty()
        || name == "ALL"
        || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!("{s:?} is not a capability name (e.g. NET_ADMIN)"));
    }
    Ok(name)
}

/// How an agent's API is exposed (shared by `manager`, `worker` and `dev`).
#[derive(Debug, Args)]
pub struct ExposureArgs {
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, env = "CUBE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "CUBE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without a token: anyone who can reach the port can then
    /// start containers, i.e. run anything as root on this host.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Also serve Prometheus metrics (`GET /metrics`) on this address without the token, for
    /// a scraper that cannot send one (the API's own `/metrics` needs the token). Metrics
    /// reveal no secrets but do show what runs here: keep it on a network you trust.
    #[arg(long, env = "CUBE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Connections the API holds at once; past it, the one idle the longest is closed to make
    /// room, so idle or slow clients cannot starve the others.
    #[arg(long, env = "CUBE_MAX_CONNECTIONS", value_name = "N", default_value_t = cube_http::Limits::default().max_connections)]
    pub max_connections: usize,
}

/// The cluster port's port when --cluster-listen is not given.
const DEFAULT_CLUSTER_PORT: u16 = 5557;

/// A worker's security: with `--join`, the token is the join token and the API is mutual TLS
/// for its managers only (no token, no exposure check); otherwise as [`security`] says.
pub(crate) fn worker_security(
    global: &super::GlobalArgs,
    args: &WorkerArgs,
) -> anyhow::Result<(cube_http::Security, Option<cube_worker::Join>)> {
    let Some(managers) = &args.join else {
        return Ok((security(global, &args.exposure, args.listen)?, None));
    };
    if args.exposure.tls_cert.is_some() {
        anyhow::bail!("--join serves the cluster's own certificates: drop --tls-cert/--tls-key");
    }
    let token = global
        .token()?
        .map(|t| t.secret().parse::<cube_pki::JoinToken>())
        .transpose()
        .map_err(|_| anyhow::anyhow!("with --join, --token (CUBE_TOKEN) is the join token the manager printed (CUBE-1-...)"))?;
    let limits =
        cube_http::Limits { max_connections: args.exposure.max_connections, ..Default::default() };
    let security = cube_http::Security { limits, ..Default::default() };
    Ok((security, Some(cube_worker::Join { managers: managers.clone(), token })))
}

/// Loads an agent's token, certificate and CA (plain file reads: call it before the async
/// runtime starts) and refuses an unauthenticated API beyond loopback.
pub(crate) fn security(
    global: &super::GlobalArgs,
    exposure: &ExposureArgs,
    listen: SocketAddr,
) -> anyhow::Result<cube_http::Security> {
    let tls = match (&exposure.tls_cert, &exposure.tls_key) {
        (Some(cert), Some(key)) => Some(cube_http::tls::ServerTls::from_pem_files(cert, key)?),
        _ => None,
    };
    let tls_ca =
        global.tls_ca.as_deref().map(cube_http::tls::ClientTls::from_ca_file).transpose()?;
    let limits =
        cube_http::Limits { max_connections: exposure.max_connections, ..Default::default() };
    let security =
        cube_http::Security { token: global.token()?, tls, tls_ca, limits, cluster: None };
    check_exposure(listen, security.token.as_ref(), exposure.allow_unauthenticated)?;
    Ok(security)
}

/// Refuses to serve an unauthenticated API beyond loopback unless told to: the API starts
/// containers, so an open port is root on this host for anyone who reaches it (Docker now
/// refuses an unauthenticated TCP socket for the same reason).
fn check_exposure(
    listen: SocketAddr,
    token: Option<&Token>,
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    if listen.ip().is_loopback() || token.is_some() {
        return Ok(());
    }
    if allow_unauthenticated {
        tracing::warn!(
            %listen,
            "serving an unauthenticated API beyond loopback: anyone who reaches it can run anything as root here"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {listen} without a token: anyone who could reach it could start \
         containers (root on this host); set CUBE_TOKEN (or --token), or pass \
         --allow-unauthenticated on a network you trust"
    )
}

/// How long finished tasks are kept: a duration, or `never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// Shortest certificate lifetime: a renewal must fit in its window with time to retry.
const MIN_CERT_LIFETIME: Duration = Duration::from_secs(10);

fn parse_cert_lifetime(s: &str) -> Result<Duration, String> {
    match cube_core::units::parse_duration(s).map_err(|e| e.to_string())? {
        d if d < MIN_CERT_LIFETIME => Err("must be at least 10s".into()),
        d => Ok(d),
    }
}

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Retention(None));
    }
    match cube_core::units::parse_duration(s).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be longer than 0s (or `never`)".into()),
        d => Ok(Retention(Some(d))),
    }
}

/// Store implementations selectable on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Durable: a redb file in the data directory; survives crashes and restarts.
    Redb,
    /// In memory: for tests and throwaway runs; everything is lost on exit.
    Memory,
}

/// Opens the store of the given kind (`file` in `data_dir` for redb). Opening checks the whole
/// file, so it runs on a blocking thread.
async fn open_store(
    kind: StoreKind,
    data_dir: &std::path::Path,
    file: &str,
) -> anyhow::Result<Arc<dyn cube_store::Store>> {
    let path = data_dir.join(file);
    Ok(match kind {
        StoreKind::Memory => Arc::new(cube_store::MemoryStore::new()),
        StoreKind::Redb => {
            let started = std::time::Instant::now();
            let store =
                tokio::task::spawn_blocking(move || cube_store::RedbStore::open(path)).await??;
            tracing::debug!(
                path = %store.path().display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store opened and checked"
            );
            Arc::new(store)
        }
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn init_logging() {
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

/// `cube worker`.
pub(crate) async fn worker(
    args: WorkerArgs,
    security: cube_http::Security,
    join: Option<cube_worker::Join>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let store_kind = args.store;
    let platform = cube_worker::Platform::host(args.pull_timeout, args.stats_interval);
    let config = cube_worker::WorkerConfig {
        name: args.name.unwrap_or_else(host_name),
        data_dir: args.data_dir,
        listen: args.listen,
        manager: args.manager,
        join,
        advertise: args.advertise,
        labels: args.labels.into_iter().collect(),
        capacity: cube_worker::CapacityOverride {
            cpu: args.cpu,
            memory: args.memory,
            disk: args.disk,
        },
        gc_after: args.gc_after.0,
        security: security.clone(),
        metrics_listen: args.exposure.metrics_listen,
        ingress_ip: args.ingress_addr,
        process_driver: args.drivers.contains(&cube_core::DriverKind::Process),
        process_user: args.allow.process_user.clone(),
        allows: args.allow.allows(),
    };
    let scheme = if config.join.is_some() { "https" } else { security.scheme() };
    let store = open_store(store_kind, &config.data_dir, "worker.redb").await?;
    let worker = cube_worker::start(config, platform, store, shutdown).await?;
    announce(&format!("cube worker listening on {scheme}://{}", worker.addr()));
    worker.wait().await?;
    tracing::info!("worker stopped; tasks keep running");
    Ok(())
}

/// `cube manager`.
pub(crate) async fn manager(
    args: ManagerArgs,
    security: cube_http::Security,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let cluster = cube_manager::ClusterPort::new(&args.name, args.cert_lifetime);
    let config = cube_manager::ManagerConfig {
        name: args.name,
        listen: args.listen,
        scheduler: args.scheduler,
        heartbeat_interval: args.heartbeat_interval,
        node_ttl: args.node_ttl,
        worker_timeout: args.worker_timeout,
        gc_after: args.gc_after.0,
        security: security.clone(),
        history: cube_manager::History::default(),
        metrics_listen: args.exposure.metrics_listen,
        audit_retention: args.audit_retention,
        cluster_listen: Some(args.cluster_listen.unwrap_or_else(|| {
            let port = if args.listen.port() == 0 { 0 } else { DEFAULT_CLUSTER_PORT };
            SocketAddr::new(args.listen.ip(), port)
        })),
        cluster,
    };
    let kind = match args.store {
        ManagerStore::Redb => StoreKind::Redb,
        ManagerStore::Memory => StoreKind::Memory,
        ManagerStore::Etcd => {
            let ha = cube_manager::HaConfig {
                etcd: args.etcd.config()?,
                advertise: args.etcd.advertise.clone(),
                ttl: args.etcd.lease_ttl,
            };
            let clock = cube_rt::Clock::system();
            let running = cube_manager::start_replicated(config, ha, clock, shutdown).await?;
            if let Some(at) = running.cluster_addr {
                announce(&format!("cluster port: {at}"));
            }
            announce(&format!(
                "cube manager listening on {}://{}",
                security.scheme(),
                running.addr
            ));
            running.wait().await?;
            tracing::info!("manager stopped");
            return Ok(());
        }
    };
    let store = open_store(kind, &args.data_dir, "manager.redb").await?;
    let running = cube_manager::start(config, store, cube_rt::Clock::system(), shutdown).await?;
    if let Some(token) = &running.join_token {
        // Shown once: the manager keeps only its digest (`cube token rotate worker` makes another).
        announce(&format!("worker join token: {token}"));
    }
    if let Some(at) = running.cluster_addr {
        announce(&format!("cluster port: {at}"));
    }
    announce(&format!("cube manager listening on {}://{}", security.scheme(), running.addr));
    running.wait().await?;
    tracing::info!("manager stopped");
    Ok(())
}

/// `cube dev`: a manager and one worker in this process, sharing nothing but HTTP on loopback,
/// with durable state under one directory.
pub(crate) async fn dev(args: DevArgs, security: cube_http::Security) -> anyhow::Result<()> {
    if security.tls.is_some() && security.tls_ca.is_none() {
        // The in-process worker calls the manager over HTTPS like any other worker.
        tracing::warn!(
            "serving TLS without --tls-ca: the worker trusts only the system's roots, so a private certificate keeps it from registering"
        );
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let manager_dir = args.data_dir.join("manager");
    let worker_dir = args.data_dir.join("worker");
    let manager_store = open_store(StoreKind::Redb, &manager_dir, "manager.redb").await?;
    let manager_config = cube_manager::ManagerConfig {
        name: "dev".into(),
        listen: args.listen,
        scheduler: args.scheduler,
        gc_after: args.gc_after.0,
        security: security.clone(),
        metrics_listen: args.exposure.metrics_listen,
        ..cube_manager::ManagerConfig::default()
    };
    let clock = cube_rt::Clock::system();
    let manager = cube_manager::start(manager_config, manager_store, clock, shutdown.clone())
        .await
        .with_context(|| format!("cannot start the manager on {}", args.listen))?;
    let manager_url = format!("{}://{}", security.scheme(), manager.addr);
    let worker_store = open_store(StoreKind::Redb, &worker_dir, "worker.redb").await?;
    let worker_config = cube_worker::WorkerConfig {
        manager: Some(manager_url.clone()),
        gc_after: args.gc_after.0,
        security: security.clone(),
        // A local cluster runs what its user asks, processes included (as `nobody` under root).
        process_driver: true,
        process_user: args.allow.process_user.clone(),
        allows: args.allow.allows(),
        ..cube_worker::WorkerConfig::new(host_name(), worker_dir)
    };
    let platform = cube_worker::Platform::host(Duration::from_secs(300), Duration::from_secs(1));
    let worker =
        cube_worker::start(worker_config, platform, worker_store, shutdown.clone()).await?;
    let drivers = worker.drivers();
    let docker = drivers.contains(&cube_core::DriverKind::Docker);
    announce(&format!("cube dev listening on {manager_url}"));
    say(&format!("web UI: {manager_url}/ui"));
    say(&format!(
        "cube dev: a manager and one worker ({} driver{}) with state in {}\n{}",
        drivers.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
        if drivers.len() == 1 { "" } else { "s" },
        args.data_dir.display(),
        if docker { "" } else { "No Docker engine answers, so tasks run as host processes.\n" },
    ));
    say(&format!(
        "Next steps, in another terminal (with target/release on your PATH):\n  \
         cube run examples/{} --wait\n  cube status\n  cube logs <id> -f\n  cube node\n  \
         cube stop <id>\nCtrl-C stops the cluster; tasks keep running and are picked up again \
         by the next `cube dev`.",
        if docker { "web.toml" } else { "process.toml" }
    ));
    if args.demo {
        let demo = async {
            if docker {
                match security.client(&manager_url, Duration::from_secs(10)) {
                    Ok(client) => demo_service(&client, args.demo_port).await,
                    Err(e) => say(&format!("cannot deploy the demo: {e}")),
                }
            } else {
                demo_task(&manager.manager).await;
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = demo => {}
        }
    }
    let (m, w) = tokio::join!(manager.wait(), worker.wait());
    m?;
    w?;
    tracing::info!("cube dev stopped; tasks keep running");
    Ok(())
}

/// The demo service, as the README's tour updates it.
const DEMO_SERVICE: &str = include_str!("../../../../examples/demo-service.toml");

/// How long the demo waits for its instances before it leaves them to come up on their own.
const DEMO_WAIT: Duration = Duration::from_secs(60);

/// Deploys the demo service (unless a service of its name exists: a restarted `cube dev`
/// keeps what the user made of it) and says where it answers once its instances do.
async fn demo_service(client: &cube_http::client::Client, port: u16) {
    let mut spec: cube_core::service::ServiceSpec = match toml::from_str(DEMO_SERVICE) {
        Ok(spec) => spec,
        Err(e) => return tracing::error!(error = %e, "the demo service file is invalid"),
    };
    let name = spec.name.clone();
    let url = format!("http://127.0.0.1:{port}/");
    match client.service(&name).await {
        Ok(existing) => {
            let published = existing.spec.ports.first().map(|p| p.publish);
            let url = published.map(|p| format!("http://127.0.0.1:{p}/")).unwrap_or_default();
            return say(&format!("demo service {name} is deployed already: {url}"));
        }
        Err(e) if e.code() == Some(cube_api::ErrorCode::NotFound) => {}
        Err(e) => return say(&format!("cannot deploy the demo service: {e}")),
    }
    if let Some(p) = spec.ports.first_mut() {
        p.publish = port;
    }
    if let Err(e) = client.put_service(&spec, None).await {
        return say(&format!("cannot deploy the demo service: {e}"));
    }
    say(&format!("demo service {name}: {} instances starting, published on {url} ...", spec.count));
    let deadline = tokio::time::Instant::now() + DEMO_WAIT;
    let mut shown = usize::MAX;
    while tokio::time::Instant::now() < deadline {
        let nodes = client.nodes().await.unwrap_or_default();
        let refused = nodes.iter().flat_map(|n| &n.ingress).find(|l| l.port == port);
        if let Some(why) = refused.and_then(|l| l.error.as_deref()) {
            return say(&format!("demo service {name}: cannot listen on {url}: {why}"));
        }
        let ready = client.service_endpoints(&name).await.map(|e| e.endpoints.len()).unwrap_or(0);
        if ready >= spec.count as usize {
            return say(&format!(
                "demo service {name} answers at {url} ({ready} instances); try:\n  \
                 while sleep 0.2; do curl -s {url}; done\n  \
                 sed 's/VERSION = \"1\"/VERSION = \"2\"/' examples/demo-service.toml | cube deploy - --wait"
            ));
        }
        if ready != shown {
            say(&format!("demo service {name}: {ready} of {} instances healthy", spec.count));
            shown = ready;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(&format!("demo service {name}: still starting; `cube service status {name}` says why"));
}

/// Without Docker: a process task that prints a line a second, and where it runs.
async fn demo_task(manager: &Arc<cube_manager::Manager>) {
    let spec = serde_json::json!({
        "name": "demo-loop", "driver": "process", "command": "sh",
        "args": ["-c", "while true; do echo \"hello from cube at $(date)\"; sleep 1; done"],
        "restart": {"mode": "on-failure"}
    });
    let spec: cube_core::TaskSpec = match serde_json::from_value(spec) {
        Ok(s) => s,
        Err(e) => return tracing::error!(error = %e, "demo spec is invalid"),
    };
    let id = match manager.submit(None, spec).await {
        Ok((task, _)) => task.id,
        Err(e) => return tracing::error!(error = %e, "cannot submit the demo task"),
    };
    say(&format!("demo task {id} submitted"));
    // Report once it runs (or fails), giving up quietly after half a minute.
    for _ in 0..300 {
        if let Some(task) = manager.task(id) {
            match task.state {
                cube_core::TaskState::Running => {
                    return say(&format!("demo task {id} is running: cube logs {} -f", id.short()));
                }
                cube_core::TaskState::Failed => {
                    say(&format!("demo task {id} failed: {}", task.reason.unwrap_or_default()));
                    return;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A line of the command's own output.
#[allow(clippy::print_stdout)]
fn say(text: &str) {
    println!("{text}");
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
        let (Ok(mut int), Ok(mut term)) =
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
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

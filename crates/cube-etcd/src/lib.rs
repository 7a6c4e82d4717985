//! Cube's etcd backend, for managers that survive the loss of one: etcd is then the only
//! source of truth, every manager keeps its state in memory fed by a watch, and one of them,
//! elected on a lease, acts.
//!
//! - [`Etcd`]: the connection, and the cluster record under the prefix (a manager refuses
//!   data of another cluster or of a newer format).
//! - [`EtcdStore`]: a [`cube_store::Store`] whose every commit is a transaction guarded by the
//!   writer's leadership ([`Fence`]): a deposed leader's writes are refused (`Fenced`).
//! - [`Candidate`] and [`Term`]: the election (etcd's election API on a lease), with the
//!   keep-alive that ends a term before the lease can expire.
//! - [`Snapshot`] and [`Feed`]: every table at one revision, then every change after it.
//!
//! Layout under the prefix (default `/cube`): `<prefix>/cluster` (the cluster record),
//! `<prefix>/leader/…` (the election's keys), `<prefix>/<table>/<key>` (the records).
//! All etcd calls of Cube live in this crate.

mod election;
mod error;
mod feed;
mod store;

pub use election::{Candidate, LeaderInfo, Term, Validity};
pub use error::EtcdError;
pub use feed::{Change, Feed, Rows, Snapshot};
pub use store::{EtcdStore, Fence};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cube_store::Table;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

/// Rows read per request.
const PAGE: i64 = 1000;

/// The newest data format this version reads and writes under a prefix.
pub const FORMAT: u32 = 1;

/// How to reach etcd and where Cube's data lives there.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Where the cluster's keys live (no trailing `/`).
    pub prefix: String,
    /// The cluster's name: the data under the prefix must be this cluster's.
    pub cluster: String,
    /// etcd's user and password, when its authentication is on.
    pub user: Option<(String, String)>,
    /// TLS towards etcd (`https://` endpoints).
    pub tls: Option<TlsFiles>,
    /// Longest wait for one request.
    pub timeout: Duration,
    /// What one transaction may hold.
    pub limits: Limits,
}

impl EtcdConfig {
    /// The defaults for `endpoints`: prefix `/cube`, cluster `cube`, no auth, no TLS, 2 s per
    /// request, etcd's default transaction limits.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/cube".into(),
            cluster: "cube".into(),
            user: None,
            tls: None,
            timeout: Duration::from_secs(2),
            limits: Limits::default(),
        }
    }
}

/// TLS files for the connection to etcd.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// The CA that signed etcd's certificates (PEM).
    pub ca: Option<PathBuf>,
    /// This client's certificate and key (PEM), when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name etcd's certificate must carry, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

/// What one etcd transaction may hold: a commit larger than this is written as several
/// transactions in order (atomic each, not together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Writes per transaction (etcd's `--max-txn-ops`, 128 by default).
    pub ops: usize,
    /// Bytes of keys and values per transaction (etcd's `--max-request-bytes` is 1.5 MiB by
    /// default; this leaves room for the request's own framing).
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { ops: 128, bytes: 1024 * 1024 }
    }
}

/// What the cluster record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClusterRecord {
    cluster: String,
    format: u32,
}

/// A connection to etcd for one cluster's prefix. Cheap to clone.
///
/// One client per member, one of them in use: a request that cannot reach it (the member is
/// down, or cut off from its cluster's leader) is sent to the next. etcd-client's own balanced
/// channel fails requests while any one endpoint is down (etcd-client#39), so Cube does not
/// use it.
#[derive(Clone)]
pub struct Etcd {
    members: Arc<Members>,
    config: Arc<EtcdConfig>,
}

struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

/// Whether `e` means the member could not be reached or cannot serve now (so another may).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

impl Etcd {
    /// Connects, then checks the cluster record under the prefix, writing it when the prefix
    /// is empty: refuses another cluster's data and a newer format's.
    pub async fn connect(config: EtcdConfig) -> Result<Self, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            // Notice a dead connection within seconds, also while nothing is asked.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster refuses rather than answering from old data.
            .with_require_leader(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let endpoints = config.endpoints.join(",");
        let mut clients = Vec::with_capacity(config.endpoints.len());
        let mut last = None;
        for endpoint in &config.endpoints {
            // Connects lazily (no request is made, unless authentication needs a token).
            let connect = Client::connect([endpoint], Some(options.clone()));
            match tokio::time::timeout(config.timeout, connect).await {
                Ok(Ok(client)) => clients.push(client),
                Ok(Err(source)) => last = Some(source),
                Err(_) => {}
            }
        }
        if clients.is_empty() {
            return Err(match last {
                Some(source) => EtcdError::Connect { endpoints, source },
                None => EtcdError::Timeout { operation: "connect", after: config.timeout },
            });
        }
        let members = Arc::new(Members { clients, current: AtomicUsize::new(0) });
        let etcd = Self { members, config: Arc::new(config) };
        etcd.claim().await?;
        Ok(etcd)
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// Writes the cluster record if there is none; checks it otherwise.
    async fn claim(&self) -> Result<(), EtcdError> {
        let key = format!("{}/cluster", self.config.prefix);
        let ours = ClusterRecord { cluster: self.config.cluster.clone(), format: FORMAT };
        let value = serde_json::to_vec(&ours)
            .map_err(|source| EtcdError::BadClusterRecord { key: key.clone(), source })?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let answer = self
            .call("claim the prefix", |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        if answer.succeeded() {
            tracing::info!(prefix = %self.config.prefix, cluster = %ours.cluster, "claimed the etcd prefix");
            return Ok(());
        }
        let stored = answer.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let stored = stored.unwrap_or_default();
        let found: ClusterRecord = serde_json::from_slice(&stored)
            .map_err(|source| EtcdError::BadClusterRecord { key: key.clone(), source })?;
        if found.format > FORMAT {
            return Err(EtcdError::NewerFormat {
                prefix: self.config.prefix.clone(),
                found: found.format,
                supported: FORMAT,
            });
        }
        if found.cluster != ours.cluster {
            return Err(EtcdError::OtherCluster {
                prefix: self.config.prefix.clone(),
                found: found.cluster,
                expected: ours.cluster,
            });
        }
        Ok(())
    }

    /// A store writing under the prefix (call from within the runtime: it starts its writer).
    pub fn store(&self) -> EtcdStore {
        EtcdStore::new(self.clone())
    }

    /// A candidate for the leadership, announcing `info` while it leads.
    pub fn candidate(&self, info: LeaderInfo, ttl: Duration) -> Candidate {
        Candidate::new(self.clone(), info, ttl)
    }

    /// The election's name.
    fn election(&self) -> String {
        format!("{}/leader", self.config.prefix)
    }

    /// Where a table's keys start.
    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.config.prefix, table.name())
    }

    /// The etcd key of a record.
    fn key(&self, table: Table, key: &str) -> String {
        format!("{}/{}/{key}", self.config.prefix, table.name())
    }

    /// The table and key of an etcd key, if it is a record's.
    fn parse(&self, key: &[u8]) -> Option<(Table, String)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.config.prefix.as_str())?.strip_prefix('/')?;
        let (table, key) = rest.split_once('/')?;
        let table = Table::ALL.into_iter().find(|t| t.name() == table)?;
        Some((table, key.to_owned()))
    }

    /// A table's rows whose keys sort after `after` (`None`: from the start), at most
    /// `limit`, read a page at a time at one revision (`at`, or the newest when 0); returns
    /// the rows and that revision.
    async fn read(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
        at: i64,
    ) -> Result<(Rows, i64), EtcdError> {
        let prefix = self.table_prefix(table);
        let end = store::prefix_end(prefix.as_bytes());
        let mut from = match after {
            Some(k) => [self.key(table, k).as_bytes(), b"\0"].concat(),
            None => prefix.clone().into_bytes(),
        };
        let mut rows = Vec::new();
        let mut revision = at;
        while rows.len() < limit {
            let page = PAGE.min(i64::try_from(limit - rows.len()).unwrap_or(PAGE));
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                // Every page at the first one's revision: one consistent read.
                options = options.with_revision(revision);
            }
            let answer = self
                .call("read a table", |c| {
                    let (key, options) = (from.clone(), options.clone());
                    // A record may be large (a task's history, a placement over many nodes).
                    async move {
                        let mut kv = c.kv_client().max_decoding_message_size(usize::MAX);
                        kv.get(key, Some(options)).await
                    }
                })
                .await?;
            if revision == 0 {
                revision = answer.header().map_or(0, |h| h.revision());
            }
            for entry in answer.kvs() {
                let key = std::str::from_utf8(entry.key())
                    .ok()
                    .and_then(|k| k.strip_prefix(prefix.as_str()))
                    .unwrap_or_default()
                    .to_owned();
                rows.push((key, entry.value().to_vec()));
            }
            match answer.kvs().last() {
                Some(last) if answer.more() => from = [last.key(), b"\0"].concat(),
                _ => break,
            }
        }
        Ok((rows, revision))
    }

    /// The member client in use, and its place in the list.
    fn current(&self) -> (usize, Client) {
        let n = self.members.clients.len();
        let i = self.members.current.load(Ordering::Relaxed) % n;
        (i, self.members.clients[i].clone())
    }

    /// Member `i` could not be reached: use the next one (unless another request moved on
    /// already).
    fn failed(&self, i: usize) {
        let n = self.members.clients.len();
        if n > 1 {
            let _ = self.members.current.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Runs `request` on the member in use with the configured timeout; one that cannot be
    /// reached (or does not answer in time) is left for the next, each tried once. Only for
    /// requests that may be repeated: reads, and transactions whose writes are the same
    /// again.
    async fn call<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.members.clients.len() {
            let (i, client) = self.current();
            match tokio::time::timeout(self.config.timeout, request(client)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(source)) if unreachable(&source) => {
                    self.failed(i);
                    last = Some(EtcdError::Request { operation, source });
                }
                Ok(Err(source)) => return Err(EtcdError::Request { operation, source }),
                Err(_) => {
                    self.failed(i);
                    last = Some(EtcdError::Timeout { operation, after: self.config.timeout });
                }
            }
        }
        Err(last.unwrap_or(EtcdError::Timeout { operation, after: self.config.timeout }))
    }

    /// Runs `request` with the configured timeout.
    async fn timed<T>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.config.timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(EtcdError::Request { operation, source }),
            Err(_) => Err(EtcdError::Timeout { operation, after: self.config.timeout }),
        }
    }
}

fn tls_options(files: &TlsFiles) -> Result<etcd_client::TlsOptions, EtcdError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile { path: path.clone(), source })
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = &files.identity {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = &files.domain {
        tls = tls.domain_name(domain);
    }
    Ok(tls)
}

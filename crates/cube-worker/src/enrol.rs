//! A worker's identity in a cluster it joined with a join token: its key, kept for its life,
//! and its certificate from the cluster's CA, renewed before it expires.
//!
//! - First start: a key is made, the worker reaches the manager's cluster port with a client
//!   that accepts only a manager whose chain holds the CA the token pins, and sends the
//!   token's secret with a certificate request ([`enrol`]).
//! - Later starts: the stored certificate, if it is still valid; if it expired while the
//!   worker was away, the worker enrols again with the join token, under the same node id and
//!   key, so nothing else about the node changes (Swarm's nodes cannot: moby#24132).
//! - Running: [`renew_loop`] renews between 50 % and 80 % of the certificate's life with the
//!   certificate it has; new connections present the new one, open ones are not dropped.
//!
//! Files in `<data-dir>/pki/`: `node.key` (0600), `node.crt`, `ca.crt`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cube_api::cluster::{Enrolment, JoinRequest, RenewRequest};
use cube_core::{Chain, NodeId};
use cube_http::client::Client;
use cube_http::mtls::ClusterTls;
use cube_pki::{CaDigest, JoinToken, KeyedCert, NodeKey};
use cube_rt::Backoff;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;

/// How a worker joins a cluster by certificate (`cube worker --join ADDR --token T`).
#[derive(Clone, Debug)]
pub struct Join {
    /// The managers' cluster ports, comma-separated (`host:port`, or `https://host:port`).
    pub managers: String,
    /// The join token: needed to join, and to join again once the certificate expired.
    pub token: Option<JoinToken>,
}

impl Join {
    /// The managers as base URLs.
    pub(crate) fn bases(&self) -> String {
        self.managers
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| if m.contains("://") { m.to_owned() } else { format!("https://{m}") })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A certificate is renewed, or enrolled again, when less than this is left of it at start.
const MARGIN: Duration = Duration::from_secs(5);
/// Each join or renewal call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("pki") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn read(&self, name: &str) -> Result<Option<String>, WorkerError> {
        let path = self.path(name);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WorkerError::File { operation: "cannot read", path, source }),
        }
    }

    /// Writes `name` whole (a temporary file renamed over it), readable by its owner only.
    async fn write(&self, name: &str, text: &str) -> Result<(), WorkerError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(name);
        let (dir, text, tmp) =
            (self.dir.clone(), text.to_owned(), self.path(&format!(".{name}.tmp")));
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &target)
        })
        .await
        .map_err(|source| WorkerError::Panicked { what: "writing a certificate", source })?
        .map_err(|source| WorkerError::File { operation: "cannot write", path, source })
    }
}

/// This node's key and certificate: the stored ones if still valid, else a new enrolment.
/// Waits for a manager to answer (retrying with backoff); fails at once on a refusal.
pub(crate) async fn identity(
    data_dir: &Path,
    node: NodeId,
    join: &Join,
    shutdown: &CancellationToken,
) -> Result<(ClusterTls, NodeKey), WorkerError> {
    let files = Files::new(data_dir);
    let key = match files.read("node.key").await? {
        Some(pem) => NodeKey::from_pem(&pem).map_err(WorkerError::Pki)?,
        None => {
            let key = NodeKey::generate().map_err(WorkerError::Pki)?;
            files.write("node.key", &key.to_pem()).await?;
            key
        }
    };
    if let (Some(cert), Some(ca)) = (files.read("node.crt").await?, files.read("ca.crt").await?) {
        let info = cube_pki::inspect_pem(&cert).map_err(WorkerError::Pki)?;
        let pinned = join.token.as_ref().is_none_or(|t| CaDigest::of_pem(&ca) == Some(t.ca));
        let fresh = info.not_after > SystemTime::now() + MARGIN;
        if fresh && pinned {
            let own = KeyedCert { cert_pem: cert, key_pem: key.to_pem() };
            let tls = ClusterTls::new(&ca, &own).map_err(WorkerError::ClusterTls)?;
            return Ok((tls, key));
        }
        tracing::warn!(
            expired = !fresh,
            "this node's certificate is no longer usable; joining again with the join token"
        );
    }
    let Some(token) = &join.token else {
        return Err(WorkerError::NoJoinToken);
    };
    let enrolment = enrol(&join.bases(), token, &key, node, shutdown).await?;
    if enrolment.node_id != node {
        return Err(WorkerError::OtherNodeId { asked: node, got: enrolment.node_id });
    }
    store(&files, &enrolment).await?;
    let own = KeyedCert { cert_pem: enrolment.certificate, key_pem: key.to_pem() };
    let tls = ClusterTls::new(&enrolment.ca, &own).map_err(WorkerError::ClusterTls)?;
    tracing::info!(%node, expires_at = %enrolment.expires_at, "joined the cluster");
    Ok((tls, key))
}

async fn store(files: &Files, enrolment: &Enrolment) -> Result<(), WorkerError> {
    files.write("ca.crt", &enrolment.ca).await?;
    files.write("node.crt", &enrolment.certificate).await
}

/// Sends the join request to the managers at `bases` over a connection pinned to the token's
/// CA, retrying while none answers.
async fn enrol(
    bases: &str,
    token: &JoinToken,
    key: &NodeKey,
    node: NodeId,
    shutdown: &CancellationToken,
) -> Result<Enrolment, WorkerError> {
    let config = cube_http::mtls::pinned_config(token.ca).map_err(WorkerError::ClusterTls)?;
    let client = Client::with_cluster_tls(bases, CALL_TIMEOUT, &config)
        .map_err(|source| WorkerError::Join { source })?;
    let request = JoinRequest {
        secret: token.secret().to_owned(),
        csr: key.request().map_err(WorkerError::Pki)?,
        node_id: Some(node),
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempts = 0u32;
    loop {
        match client.join(&request).await {
            // The connection was pinned to the CA; so must be the CA the answer names.
            Ok(enrolment) if CaDigest::of_pem(&enrolment.ca) == Some(token.ca) => {
                return Ok(enrolment);
            }
            Ok(_) => return Err(WorkerError::OtherCa),
            Err(e) if e.is_transient() => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(10) {
                    tracing::warn!(error = %Chain(&e), attempts, "cannot reach a manager to join; retrying");
                }
            }
            // Refused (wrong token, removed node), or a manager whose CA is not the pinned one.
            Err(source) => return Err(WorkerError::Join { source }),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return Err(WorkerError::JoinCancelled),
        }
    }
}

/// Renews the certificate between 50 % and 80 % of its life, until `shutdown`. A renewal that
/// fails is retried; a certificate that expired meanwhile is replaced by joining again.
pub(crate) async fn renew_loop(
    tls: ClusterTls,
    key: NodeKey,
    data_dir: PathBuf,
    node: NodeId,
    join: Join,
    shutdown: CancellationToken,
) {
    let files = Files::new(&data_dir);
    let bases = join.bases();
    let client = tls
        .client_config(cube_http::mtls::Expect::Manager)
        .map_err(WorkerError::ClusterTls)
        .and_then(|config| {
            Client::with_cluster_tls(&bases, CALL_TIMEOUT, &config)
                .map_err(|source| WorkerError::Join { source })
        });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot renew this node's certificate");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tls.until_renewal()) => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            let renewed = match renew_once(&client, &tls, &key, &join, node, &shutdown).await {
                Ok(enrolment) => store(&files, &enrolment).await.map(|()| enrolment),
                Err(e) => Err(e),
            };
            match renewed {
                Ok(enrolment) => {
                    tracing::info!(expires_at = %enrolment.expires_at, "renewed this node's certificate");
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot renew this node's certificate; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

async fn renew_once(
    client: &Client,
    tls: &ClusterTls,
    key: &NodeKey,
    join: &Join,
    node: NodeId,
    shutdown: &CancellationToken,
) -> Result<Enrolment, WorkerError> {
    let (_, expires) = tls.validity();
    let enrolment = if expires <= SystemTime::now() {
        // Too late to renew with the certificate: join again, if the token is at hand.
        let token = join.token.as_ref().ok_or(WorkerError::NoJoinToken)?;
        enrol(&join.bases(), token, key, node, shutdown).await?
    } else {
        let request = RenewRequest { csr: key.request().map_err(WorkerError::Pki)? };
        client.renew(&request).await.map_err(|source| WorkerError::Join { source })?
    };
    let own = KeyedCert { cert_pem: enrolment.certificate.clone(), key_pem: key.to_pem() };
    tls.renew(&own).map_err(WorkerError::ClusterTls)?;
    Ok(enrolment)
}

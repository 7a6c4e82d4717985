//! TLS for the API, so the cluster token and task specs do not cross the network in clear
//! text. A server started with a certificate and key (PEM files) speaks only HTTPS; clients,
//! and the manager and workers calling each other, trust the CA given to them (or the
//! system's roots when none is given).
//!
//! rustls with the `ring` provider: pure Rust plus ring's small C/assembly core, no OpenSSL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::mtls::Revocations;

/// A client that never finishes its handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished but not yet taken by the server.
const ACCEPT_QUEUE: usize = 128;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{}: cannot read", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader reported (including I/O errors).
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A CA file could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A CA file holds something the HTTP client cannot use as certificates.
    #[error("{}: not a usable CA certificate", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What the client reported.
        #[source]
        source: reqwest::Error,
    },
    /// The file holds no certificate.
    #[error("{}: no certificate in the file (expected PEM)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate and key do not make a valid server configuration (e.g. they do not
    /// match).
    #[error("cannot use this certificate and key")]
    Config(#[source] rustls::Error),
    /// A PEM text (a cluster certificate or key) could not be read.
    #[error("cannot read the certificate or key")]
    Parse(#[source] rustls_pki_types::pem::Error),
    /// A cluster certificate names no Cube manager or node.
    #[error("not a certificate of this cluster")]
    Identity(#[source] cube_pki::PkiError),
    /// The CA cannot verify peers.
    #[error("cannot verify peers with this CA")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// A role's fixed certificate name is not a valid DNS name (a bug).
    #[error("a role's certificate name is not a DNS name")]
    NoCertificateName,
}

/// Makes `ring` the process's rustls provider (the HTTP client looks it up), once; a provider
/// installed before is kept.
pub(crate) fn install_provider() {
    // An error means a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder that can speak HTTPS. Build every HTTP client in Cube from this:
/// reqwest is built without a crypto provider of its own (ring is ours) and panics when it
/// finds none, and the builder's resolver reports a failed lookup as a typed
/// [`crate::client::ResolveError`], so callers can tell it from other connect failures.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder().dns_resolver(crate::client::Resolver)
}

/// A server's certificate chain and key, and for a cluster server ([`crate::mtls`]) the
/// nodes it no longer accepts.
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>, Option<Revocations>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads the certificate chain (leaf first) and the private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        install_provider();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|source| TlsError::Pem { path: cert.to_owned(), source })?
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Pem { path: cert.to_owned(), source })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert.to_owned() });
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|source| TlsError::Pem { path: key.to_owned(), source })?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
        Ok(Self(Arc::new(config), None))
    }

    /// A cluster server's configuration (client certificates verified by it).
    pub(crate) fn cluster(config: Arc<rustls::ServerConfig>, revoked: Revocations) -> Self {
        Self(config, Some(revoked))
    }

    /// The revocations of a cluster server.
    pub(crate) fn revocations(&self) -> Option<&Revocations> {
        self.1.as_ref()
    }
}

/// The CA certificates a client trusts instead of the system's roots.
#[derive(Clone)]
pub struct ClientTls(Vec<reqwest::Certificate>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({} CA certificates)", self.0.len())
    }
}

impl ClientTls {
    /// Loads one or more CA certificates from a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path)
            .map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|source| TlsError::Ca { path: path.to_owned(), source })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { path: path.to_owned() });
        }
        Ok(Self(certs))
    }

    pub(crate) fn certificates(&self) -> impl Iterator<Item = reqwest::Certificate> + '_ {
        self.0.iter().cloned()
    }
}

/// Accepts TCP connections and hands over those that completed a TLS handshake. Handshakes
/// run in their own tasks, so a slow or silent client delays nobody else.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `tls` on `listener`.
    pub fn new(listener: TcpListener, tls: &ServerTls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor =
            tokio::spawn(accept_loop(listener, TlsAcceptor::from(Arc::clone(&tls.0)), tx));
        Ok(Self { ready, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ready.closed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, as
                // axum's own TCP listener does.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped; never resolve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

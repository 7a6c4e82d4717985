//! Mutual TLS between managers and nodes, on the cluster's own CA ([`cube_pki`]).
//!
//! A [`ClusterTls`] holds the CA and this agent's certificate. Its certificate is behind a
//! lock that every new handshake reads, in both directions, so a renewal ([`ClusterTls::renew`])
//! takes effect on the next connection and drops none. Peers are verified by chain and by
//! role, not by address: a node must present a certificate naming [`cube_pki::NODE_NAME`], a
//! manager one naming [`cube_pki::MANAGER_NAME`] (the CA signs nothing else, and never a
//! manager's certificate for a node's request).
//!
//! A server using it learns who is at the other end of each connection: the request
//! extension [`Peer`], which the [`crate::auth::Authenticate`] of the server turns into a
//! caller. A node in the server's [`Revocations`] is refused at the handshake, and its open
//! connections are closed the moment it is revoked.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cube_pki::{Identity, KeyedCert};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::tls::{ServerTls, TlsError};

/// Who is at the other end of a connection, as its verified client certificate says: a
/// request extension on servers with [`ClusterTls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer(pub Identity);

/// A request extension marking the manager's cluster port: there, a caller without a
/// certificate is served only the open routes (a worker's join), or with a token that names
/// somebody; a server without a cluster token lets nobody in anonymously through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnClusterPort;

/// The nodes whose certificates are no longer accepted (removed nodes), shared by a server's
/// handshakes and its open connections.
#[derive(Clone, Debug)]
pub struct Revocations(Arc<watch::Sender<Arc<HashSet<String>>>>);

impl Default for Revocations {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Arc::default())))
    }
}

impl Revocations {
    /// Replaces the set of revoked node ids.
    pub fn set(&self, ids: HashSet<String>) {
        self.0.send_if_modified(|current| {
            if **current == ids {
                return false;
            }
            *current = Arc::new(ids);
            true
        });
    }

    /// Whether node `id` is revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.0.borrow().contains(id)
    }

    /// Resolves when node `id` is revoked (at once if it is).
    pub async fn revoked(&self, id: &str) {
        let mut changes = self.0.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail while we hold it.
        let _ = changes.wait_for(|ids| ids.contains(id)).await;
    }
}

/// Which clients a cluster server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    /// A manager's cluster port: nodes and managers with certificates, and callers without
    /// one (a node that joins, a user with a token).
    Anyone,
    /// A node's API: managers only.
    ManagersOnly,
}

/// Which role a client calling a peer expects that peer to prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A manager's certificate.
    Manager,
    /// A node's certificate.
    Node,
}

/// The cluster's CA and this agent's certificate.
#[derive(Clone)]
pub struct ClusterTls {
    ca: CertificateDer<'static>,
    roots: Arc<RootCertStore>,
    own: Arc<RwLock<Own>>,
}

struct Own {
    key: Arc<CertifiedKey>,
    identity: Identity,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("identity", &self.identity()).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This agent's certificate and key; its chain carries the CA too, so that a joining worker
/// can find the CA its token pins.
fn load(keyed: &KeyedCert, ca: &CertificateDer<'static>) -> Result<Own, TlsError> {
    let cert =
        CertificateDer::from_pem_slice(keyed.cert_pem.as_bytes()).map_err(TlsError::Parse)?;
    let info = cube_pki::inspect(&cert).map_err(TlsError::Identity)?;
    let key = PrivateKeyDer::from_pem_slice(keyed.key_pem.as_bytes()).map_err(TlsError::Parse)?;
    let signer = provider().key_provider.load_private_key(key).map_err(TlsError::Config)?;
    Ok(Own {
        key: Arc::new(CertifiedKey::new(vec![cert, ca.clone()], signer)),
        identity: info.identity,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

impl ClusterTls {
    /// The CA (PEM) and this agent's certificate with its key.
    pub fn new(ca_pem: &str, own: &KeyedCert) -> Result<Self, TlsError> {
        crate::tls::install_provider();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(TlsError::Parse)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(TlsError::Config)?;
        Ok(Self { own: Arc::new(RwLock::new(load(own, &ca)?)), ca, roots: Arc::new(roots) })
    }

    fn own(&self) -> std::sync::RwLockReadGuard<'_, Own> {
        // The value is replaced whole: a panicked writer cannot leave it half-written.
        self.own.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a renewed certificate: new handshakes present it, open connections stay.
    pub fn renew(&self, own: &KeyedCert) -> Result<(), TlsError> {
        let loaded = load(own, &self.ca)?;
        *self.own.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Who this agent's certificate says it is.
    pub fn identity(&self) -> Identity {
        self.own().identity.clone()
    }

    /// When this agent's certificate became valid and when it expires.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        let own = self.own();
        (own.not_before, own.not_after)
    }

    /// How long until this agent's certificate is due for renewal: a random point between
    /// 50 % and 80 % of its life ([`cube_pki::renewal_at`]), drawn anew at each call; zero if
    /// it is past.
    pub fn until_renewal(&self) -> std::time::Duration {
        let (from, to) = self.validity();
        let at = cube_pki::renewal_at(from, to, 0.5 + 0.3 * fastrand::f64());
        at.duration_since(SystemTime::now()).unwrap_or_default()
    }

    /// A client configuration presenting this agent's certificate and accepting only a peer
    /// of the role `expect` with a certificate of this CA.
    pub fn client_config(&self, expect: Expect) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = RoleVerifier::new(Arc::clone(&self.roots), expect)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(self.clone()));
        Ok(config)
    }

    /// A server configuration presenting this agent's certificate, accepting `clients` and
    /// refusing nodes in `revoked`.
    pub fn server(&self, clients: Clients, revoked: Revocations) -> Result<ServerTls, TlsError> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider());
        let inner = match clients {
            Clients::Anyone => builder.allow_unauthenticated(),
            Clients::ManagersOnly => builder,
        }
        .build()
        .map_err(TlsError::Verifier)?;
        let verifier = Admission { inner, clients, revoked: revoked.clone(), provider: provider() };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(self.clone()));
        // No session resumption: a resumed session skips the verifier, so a removed node (or
        // an expired certificate) could come back through a ticket from before.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls::cluster(Arc::new(config), revoked))
    }
}

impl rustls::client::ResolvesClientCert for ClusterTls {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.own().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for ClusterTls {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.own().key))
    }
}

/// The handshake signature checks of every verifier here: with the provider's algorithms, as
/// rustls's own verifiers do.
macro_rules! provider_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Verifies a server's chain against the CA and its role's name, whatever address it was
/// reached at.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RoleVerifier {
    /// Accepts a server whose chain ends in `roots` and whose certificate names `expect`'s role.
    fn new(roots: Arc<RootCertStore>, expect: Expect) -> Result<Self, TlsError> {
        let name = match expect {
            Expect::Manager => cube_pki::MANAGER_NAME,
            Expect::Node => cube_pki::NODE_NAME,
        };
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(TlsError::Verifier)?;
        let name = ServerName::try_from(name).map_err(|_| TlsError::NoCertificateName)?;
        Ok(Self { inner, name, provider: provider() })
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    provider_signatures!();
}

/// Verifies a client's chain against the CA, then its role, and that it is not revoked.
#[derive(Debug)]
struct Admission {
    inner: Arc<dyn ClientCertVerifier>,
    clients: Clients,
    revoked: Revocations,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for Admission {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |why: &str| Err(rustls::Error::General(why.to_owned()));
        match (cube_pki::inspect(end_entity).map(|i| i.identity), self.clients) {
            (Err(_), _) => refuse("the certificate names no Cube manager or node"),
            (Ok(Identity::Node(id)), _) if self.revoked.is_revoked(&id) => {
                refuse("this node was removed from the cluster")
            }
            (Ok(Identity::Node(_)), Clients::ManagersOnly) => {
                refuse("a node accepts only its managers")
            }
            (Ok(_), _) => Ok(verified),
        }
    }

    provider_signatures!();
}

/// A client configuration for joining: it accepts a manager whose chain holds the CA of
/// digest `pin` and whose certificate that CA issued for a manager. A worker sends its join
/// secret only over such a connection.
pub fn pinned_config(pin: cube_pki::CaDigest) -> Result<rustls::ClientConfig, TlsError> {
    crate::tls::install_provider();
    let verifier = PinVerifier { pin, provider: provider() };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

#[derive(Debug)]
struct PinVerifier {
    pin: cube_pki::CaDigest,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| cube_pki::CaDigest::of(c) == self.pin) else {
            return Err(rustls::Error::General(
                "the manager's CA is not the one the join token names".to_owned(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        RoleVerifier::new(Arc::new(roots), Expect::Manager)
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    provider_signatures!();
}

//! The cluster's CA on the manager's side: the stored [`PkiRecord`] (the CA, the join secret's
//! digest, each enrolled node's key, the removed nodes), the [`ClusterPort`] that serves
//! workers over mutual TLS, and the routes' work: join, renew, rotate the join token, remove
//! a node.
//!
//! The record is one value (`Table::Meta`, key `pki`), written only by the acting manager
//! under the state lock like every change; followers learn it from the store's feed. The CA
//! key lives in the store: whoever can read the store can mint certificates, exactly as whoever
//! can write it can already start tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use cube_api::cluster::{Enrolment, JoinRequest};
use cube_core::NodeId;
use cube_http::auth::Caller;
use cube_http::mtls::{Clients, ClusterTls, Revocations};
use cube_pki::{Authority, Identity, JoinToken};
use cube_store::{Batch, Table};

use crate::{Manager, ManagerError};

/// The record's key in `Table::Meta`.
pub(crate) const PKI_KEY: &str = "pki";
/// The record's format; a manager refuses a newer one.
const FORMAT: u32 = 1;

/// The cluster's CA and who enrolled with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PkiRecord {
    /// This record's format.
    pub(crate) format: u32,
    /// The CA's certificate (PEM).
    pub(crate) ca_cert: String,
    /// The CA's key (PKCS#8 PEM).
    pub(crate) ca_key: String,
    /// SHA-256 of the worker join token's secret (hex); the token itself is shown once.
    pub(crate) join_secret: String,
    /// Each enrolled node's key digest: a node re-enrolling under its id must hold that key.
    #[serde(default)]
    pub(crate) nodes: BTreeMap<NodeId, String>,
    /// Removed nodes: their certificates are refused, their ids never enrol again.
    #[serde(default)]
    pub(crate) removed: BTreeSet<NodeId>,
}

/// The cluster port's identity, shared by every [`Manager`] a process builds (a highly
/// available manager builds a new one at each change of role): this manager's certificate,
/// once the CA is known, and the revoked nodes.
pub struct ClusterPort {
    name: String,
    lifetime: Duration,
    known: watch::Sender<Option<Known>>,
    revocations: Revocations,
}

#[derive(Clone)]
struct Known {
    authority: Arc<Authority>,
    tls: ClusterTls,
}

impl std::fmt::Debug for ClusterPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPort")
            .field("name", &self.name)
            .field("lifetime", &self.lifetime)
            .field("ready", &self.known.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterPort {
    /// The port of manager `name`, issuing certificates for `lifetime` (nodes' and its own).
    pub fn new(name: &str, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            lifetime,
            known: watch::Sender::new(None),
            revocations: Revocations::default(),
        })
    }

    /// Takes the CA and the removed nodes of `record`; the first time, issues this manager's
    /// own certificate.
    pub(crate) fn learn(&self, record: &PkiRecord) -> Result<(), ManagerError> {
        self.revocations.set(record.removed.iter().map(ToString::to_string).collect());
        if self.known.borrow().is_some() {
            return Ok(());
        }
        let authority = Authority::from_pem(&record.ca_cert, &record.ca_key)?;
        let own = authority.issue(
            &Identity::Manager(self.name.clone()),
            SystemTime::now(),
            self.lifetime,
        )?;
        let tls = ClusterTls::new(authority.cert_pem(), &own).map_err(ManagerError::ClusterTls)?;
        self.known.send_replace(Some(Known { authority: Arc::new(authority), tls }));
        Ok(())
    }

    fn known(&self) -> Option<Known> {
        self.known.borrow().clone()
    }

    /// This manager's TLS, once the CA is known.
    pub(crate) fn tls(&self) -> Option<ClusterTls> {
        self.known().map(|k| k.tls)
    }

    /// The nodes refused.
    pub(crate) fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Waits for the CA; `None` if the port was dropped first.
    pub(crate) async fn ready(&self) -> Option<ClusterTls> {
        let mut known = self.known.subscribe();
        let known = known.wait_for(Option::is_some).await.ok()?;
        known.as_ref().map(|k| k.tls.clone())
    }

    /// Renews this manager's own certificate between 50 % and 80 % of its life, until
    /// `shutdown`.
    pub(crate) async fn renew_own(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let ready = tokio::select! {
            tls = self.ready() => tls,
            () = shutdown.cancelled() => None,
        };
        let Some(tls) = ready else { return };
        loop {
            tokio::select! {
                () = tokio::time::sleep(tls.until_renewal()) => {}
                () = shutdown.cancelled() => return,
            }
            let Some(known) = self.known() else { return };
            let renewed = known
                .authority
                .issue(&Identity::Manager(self.name.clone()), SystemTime::now(), self.lifetime)
                .map_err(ManagerError::from)
                .and_then(|own| tls.renew(&own).map_err(ManagerError::ClusterTls));
            match renewed {
                Ok(()) => tracing::info!("renewed this manager's certificate"),
                Err(e) => {
                    tracing::error!(error = %cube_core::Chain(&e), "cannot renew this manager's certificate");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The record `source` holds, if any (reads the store: call from a blocking context).
pub(crate) fn load(source: &dyn cube_store::Store) -> Result<Option<PkiRecord>, ManagerError> {
    let Some((_, value)) = source.load(Table::Meta)?.into_iter().find(|(key, _)| key == PKI_KEY)
    else {
        return Ok(None);
    };
    serde_json::from_slice(&value).map(Some).map_err(|source| {
        ManagerError::Store(cube_store::StoreError::Codec {
            table: Table::Meta.name(),
            key: PKI_KEY.to_owned(),
            source,
        })
    })
}

impl Manager {
    /// The PKI record, if the cluster has one yet.
    pub(crate) fn pki(&self) -> Option<PkiRecord> {
        self.pki.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes `record` as the cluster's (at load, after a change, from a leader's feed).
    pub(crate) fn set_pki(&self, record: PkiRecord) -> Result<(), ManagerError> {
        if record.format > FORMAT {
            return Err(ManagerError::PkiFormat(record.format));
        }
        self.config.cluster.learn(&record)?;
        if self.cluster_http.get().is_none()
            && let Some(tls) = self.config.cluster.tls()
        {
            let client = |expect, base| {
                let config = tls.client_config(expect).map_err(ManagerError::ClusterTls)?;
                cube_http::client::Client::with_cluster_tls(
                    base,
                    self.config.worker_timeout,
                    &config,
                )
                .map_err(ManagerError::Client)
            };
            let workers = client(cube_http::mtls::Expect::Node, "https://worker.invalid")?;
            let managers = client(cube_http::mtls::Expect::Manager, "https://manager.invalid")?;
            // Set once; a second caller racing here built the same clients.
            let _ = self.cluster_http.set(workers);
            let _ = self.manager_http.set(managers);
        }
        *self.pki.write().unwrap_or_else(|e| e.into_inner()) = Some(record);
        Ok(())
    }

    /// Whether node `id` enrolled with a certificate (then it is called over mutual TLS).
    pub(crate) fn certified(&self, id: NodeId) -> bool {
        self.pki
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|p| p.nodes.contains_key(&id))
    }

    /// Whether node `id` was removed (the cluster port's revocations follow the record).
    pub(crate) fn removed(&self, id: NodeId) -> bool {
        self.config.cluster.revocations().is_revoked(&id.to_string())
    }

    /// Changes the record and commits it, reading and writing it under the state lock, so
    /// concurrent changes (two joins) cannot overwrite each other and the store sees them in
    /// order. `change` answers what to return and whether it changed anything; it sees `None`
    /// while the cluster has no CA.
    async fn update_pki<T>(
        &self,
        change: impl FnOnce(Option<PkiRecord>) -> Result<(T, Option<PkiRecord>), ManagerError>,
    ) -> Result<T, ManagerError> {
        let (answer, staged) = {
            let _state = self.lock();
            let (answer, changed) = change(self.pki())?;
            let Some(record) = changed else { return Ok(answer) };
            let mut batch = Batch::new();
            batch.put(Table::Meta, PKI_KEY, &record)?;
            self.set_pki(record)?;
            (answer, crate::Staged::commit(self.store.as_ref(), batch, None))
        };
        self.committed(staged).await?;
        Ok(answer)
    }

    /// Makes the cluster's CA and join token if it has none; the new token, to show once.
    pub(crate) async fn ensure_pki(&self) -> Result<Option<JoinToken>, ManagerError> {
        if self.pki().is_some() {
            return Ok(None);
        }
        let authority = Authority::create(&self.config.name, SystemTime::now())?;
        let token = JoinToken::generate(authority.digest())?;
        let record = PkiRecord {
            format: FORMAT,
            ca_cert: authority.cert_pem().to_owned(),
            ca_key: authority.key_pem(),
            join_secret: token.secret_digest(),
            nodes: BTreeMap::new(),
            removed: BTreeSet::new(),
        };
        let made = self
            .update_pki(|current| match current {
                // Made meanwhile: keep that one.
                Some(_) => Ok((false, None)),
                None => Ok((true, Some(record))),
            })
            .await?;
        if !made {
            return Ok(None);
        }
        tracing::info!(ca = %authority.digest(), "made the cluster's certificate authority");
        Ok(Some(token))
    }

    fn authority(&self) -> Result<Arc<Authority>, ManagerError> {
        self.config.cluster.known().map(|k| k.authority).ok_or(ManagerError::NoCa)
    }

    fn enrolment(
        &self,
        node: NodeId,
        csr: &str,
        authority: &Authority,
    ) -> Result<Enrolment, ManagerError> {
        let issued = authority
            .sign_request(
                csr,
                &Identity::Node(node.to_string()),
                SystemTime::now(),
                self.config.cluster.lifetime,
            )
            .map_err(ManagerError::BadCsr)?;
        Ok(Enrolment {
            node_id: node,
            certificate: issued.cert_pem,
            ca: authority.cert_pem().to_owned(),
            expires_at: jiff::Timestamp::try_from(issued.not_after).unwrap_or(jiff::Timestamp::MAX),
        })
    }

    /// `POST /v1/cluster/join`: a worker with the join token's secret gets a certificate.
    pub(crate) async fn join(&self, request: JoinRequest) -> Result<Enrolment, ManagerError> {
        let authority = self.authority()?;
        let key = cube_pki::request_key_digest(&request.csr).map_err(ManagerError::BadCsr)?;
        // Enrolled (durably) before the certificate is handed out.
        let node = self
            .update_pki(|record| {
                let mut record = record.ok_or(ManagerError::NoCa)?;
                if !cube_pki::secret_matches(&record.join_secret, &request.secret) {
                    return Err(ManagerError::JoinRefused);
                }
                let node = match request.node_id {
                    Some(id) if record.removed.contains(&id) => {
                        return Err(ManagerError::NodeRemoved(id));
                    }
                    Some(id) if record.nodes.get(&id).is_some_and(|k| *k != key) => {
                        return Err(ManagerError::OtherKey(id));
                    }
                    Some(id) => id,
                    None => NodeId::from_uuid(uuid::Uuid::now_v7()),
                };
                if record.nodes.get(&node) == Some(&key) {
                    return Ok((node, None));
                }
                record.nodes.insert(node, key);
                Ok((node, Some(record)))
            })
            .await?;
        let enrolment = self.enrolment(node, &request.csr, &authority)?;
        tracing::info!(%node, "node enrolled");
        Ok(enrolment)
    }

    /// `POST /v1/cluster/renew`: a node renews its certificate with the one it has.
    pub(crate) async fn renew(
        &self,
        caller: &Caller,
        csr: &str,
    ) -> Result<Enrolment, ManagerError> {
        let authority = self.authority()?;
        let node: NodeId = caller.name.parse().map_err(|_| ManagerError::NotANode)?;
        let record = self.pki().ok_or(ManagerError::NoCa)?;
        if record.removed.contains(&node) {
            return Err(ManagerError::NodeRemoved(node));
        }
        let key = cube_pki::request_key_digest(csr).map_err(ManagerError::BadCsr)?;
        if record.nodes.get(&node) != Some(&key) {
            return Err(ManagerError::OtherKey(node));
        }
        let enrolment = self.enrolment(node, csr, &authority)?;
        tracing::debug!(%node, "node certificate renewed");
        Ok(enrolment)
    }

    /// `POST /v1/cluster/join-token`: a new join secret; the old one admits nobody from now on.
    pub(crate) async fn rotate_join_token(&self) -> Result<JoinToken, ManagerError> {
        let authority = self.authority()?;
        let token = JoinToken::generate(authority.digest())?;
        self.update_pki(|record| {
            let mut record = record.ok_or(ManagerError::NoCa)?;
            record.join_secret = token.secret_digest();
            Ok(((), Some(record)))
        })
        .await?;
        tracing::info!("worker join token replaced");
        Ok(token)
    }

    /// Removes node `key` (id or unique name): its certificate is refused from now on (its
    /// open connections closed), its id never enrols again, its tasks are placed elsewhere.
    pub(crate) async fn remove_node(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<cube_api::types::NodeInfo, ManagerError> {
        let info = self.node(key)?;
        let id = info.id;
        // Revoked first: whatever happens next, the node can no longer speak for itself.
        self.update_pki(|record| match record {
            Some(mut record) if !record.removed.contains(&id) => {
                record.removed.insert(id);
                record.nodes.remove(&id);
                Ok(((), Some(record)))
            }
            _ => Ok(((), None)),
        })
        .await?;
        let now = self.clock.now();
        self.change(cube_api::events::Actor::Api, |s, e| s.remove_node(id, now, e)).await?;
        tracing::info!(node = %id, name = %info.name, "node removed");
        Ok(info)
    }
}

/// Serves `router` on the cluster port once the CA is known (a highly available cluster's
/// first leader makes it), with mutual TLS; renews this manager's certificate meanwhile.
pub(crate) fn spawn_cluster_port(
    listener: cube_http::server::Listener,
    router: axum::Router,
    port: Arc<ClusterPort>,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    let addr = listener.addr();
    let router = router.layer(axum::Extension(cube_http::mtls::OnClusterPort));
    tracker.spawn(Arc::clone(&port).renew_own(shutdown.clone()));
    tracker.spawn(async move {
        let ready = tokio::select! {
            tls = port.ready() => tls,
            () = shutdown.cancelled() => None,
        };
        let Some(tls) = ready else { return };
        let server = match tls.server(Clients::Anyone, port.revocations().clone()) {
            Ok(server) => server,
            Err(e) => {
                tracing::error!(error = %cube_core::Chain(&e), "cannot serve the cluster port");
                return;
            }
        };
        tracing::info!(%addr, "cluster port listening (mutual TLS)");
        if let Err(e) = listener.serve(router, shutdown, Some(server)).await {
            tracing::error!(error = %cube_core::Chain(&e), "the cluster port failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record as the first format stored it: it must keep loading, and say the same again.
    const FORMAT_1: &str = r#"{"format":1,"ca_cert":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","ca_key":"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n","join_secret":"5d41402abc4b2a76b9719d911017c592ae6b4f5e1d4c0a2f8e9b7c6d5e4f3a2b","nodes":{"01a23ebb-28fb-72e5-946e-d42bbbae05be":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},"removed":["01a23ebb-53db-736d-a753-747c5fa48b82"]}"#;

    #[test]
    fn a_record_of_the_first_format_still_loads_and_says_the_same() {
        let record: PkiRecord = serde_json::from_str(FORMAT_1).unwrap();
        assert_eq!(record.format, 1);
        assert_eq!(record.nodes.len(), 1);
        assert_eq!(record.removed.len(), 1);
        let again: serde_json::Value = serde_json::to_value(&record).unwrap();
        let old: serde_json::Value = serde_json::from_str(FORMAT_1).unwrap();
        assert_eq!(again, old);
        // Before any node enrolled or was removed, the sets may be absent.
        let bare = r#"{"format":1,"ca_cert":"c","ca_key":"k","join_secret":"s"}"#;
        let bare: PkiRecord = serde_json::from_str(bare).unwrap();
        assert!(bare.nodes.is_empty() && bare.removed.is_empty());
    }

    #[test]
    fn a_port_learns_the_ca_once_and_follows_the_removed_nodes() {
        let authority = Authority::create("test", SystemTime::now()).unwrap();
        let mut record = PkiRecord {
            format: FORMAT,
            ca_cert: authority.cert_pem().to_owned(),
            ca_key: authority.key_pem(),
            join_secret: String::new(),
            nodes: BTreeMap::new(),
            removed: BTreeSet::new(),
        };
        let port = ClusterPort::new("m", Duration::from_secs(3600));
        assert!(port.tls().is_none());
        port.learn(&record).unwrap();
        let tls = port.tls().unwrap();
        assert_eq!(tls.identity(), Identity::Manager("m".into()));
        let id = NodeId::from_uuid(uuid::Uuid::now_v7());
        record.removed.insert(id);
        port.learn(&record).unwrap();
        assert!(port.revocations().is_revoked(&id.to_string()));
        // The same certificate: learning again issues nothing new.
        assert_eq!(port.tls().unwrap().validity(), tls.validity());
    }
}

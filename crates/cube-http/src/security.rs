//! How a Cube agent protects its API and reaches its peers: the cluster token it requires and
//! sends, the certificate it serves, and the CA it trusts. The manager and the worker take one
//! of these instead of three loose settings.

use std::time::Duration;

use crate::auth::Token;
use crate::client::{Client, ClientError};
use crate::tls::{ClientTls, ServerTls};

/// An agent's token and TLS settings; the default is plain HTTP without a token.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Required on the agent's API (but health checks) and sent to its peers.
    pub token: Option<Token>,
    /// Serve HTTPS with this certificate (plain HTTP when `None`).
    pub tls: Option<ServerTls>,
    /// CA to trust when calling `https://` peers (the system's roots when `None`).
    pub tls_ca: Option<ClientTls>,
    /// What clients may hold of the agent's API server.
    pub limits: crate::Limits,
    /// A worker that joined with a join token: its certificate on the cluster's CA, used
    /// for every call to its managers (mutual TLS) instead of the token and `tls_ca`.
    pub cluster: Option<crate::mtls::ClusterTls>,
}

impl Security {
    /// The scheme of this agent's own address: `https` when it serves TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() || self.cluster.is_some() { "https" } else { "http" }
    }

    /// A client for a peer at `base` that trusts the CA and sends the token (or, for a worker
    /// that joined, presents its certificate).
    pub fn client(
        &self,
        base: impl Into<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        if let Some(cluster) = &self.cluster {
            let config = cluster
                .client_config(crate::mtls::Expect::Manager)
                .map_err(ClientError::ClusterTls)?;
            return Client::with_cluster_tls(base, timeout, &config);
        }
        Ok(Client::with_tls(base, timeout, self.tls_ca.as_ref())?.with_token(self.token.clone()))
    }
}

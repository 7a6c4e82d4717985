//! The bodies of the cluster routes (`/v1/cluster/...`): how a worker joins with a join token
//! and renews its certificate, and how an admin replaces the join token.
//!
//! A worker's certificate is its identity on the manager's cluster port (mutual TLS): it
//! opens the node routes (register, heartbeat, the endpoint feed, renewal) and nothing else.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use cube_core::NodeId;

/// Body of `POST /v1/cluster/join`: the join token's secret and a certificate request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The secret part of the join token (after the CA's digest).
    pub secret: String,
    /// A PKCS#10 certificate request (PEM) for the node's key. Only its key is used: the
    /// manager decides what the certificate says.
    pub csr: String,
    /// The node's id, when it joined before (its certificate expired while it was away): it
    /// keeps its id if the request is for the key it held. Absent: a new node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("secret", &"<redacted>")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /v1/cluster/renew`: a certificate request for the node's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A PKCS#10 certificate request (PEM) for the key of the node's current certificate.
    pub csr: String,
}

/// Answer of a join or a renewal: the node's certificate and the CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Enrolment {
    /// The node's id (new, or the one it had).
    pub node_id: NodeId,
    /// Its certificate (PEM).
    pub certificate: String,
    /// The cluster's CA (PEM).
    pub ca: String,
    /// When the certificate expires; the node renews it between 50 % and 80 % of its life.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub expires_at: Timestamp,
}

/// Answer of `POST /v1/cluster/join-token`: the new worker join token, shown once (the
/// manager keeps only its digest). Workers that joined keep working.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinTokenView {
    /// `CUBE-1-<CA digest>-<secret>`.
    pub token: String,
}

impl std::fmt::Debug for JoinTokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokenView(<redacted>)")
    }
}

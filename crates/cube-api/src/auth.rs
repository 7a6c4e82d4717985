//! Users and what they may do: the roles of named API tokens, and the bodies of the token
//! routes (`/v1/tokens`).
//!
//! Roles are ordered: each one may do everything the ones before it may.
//!
//! | Role      | May                                                                    |
//! |-----------|------------------------------------------------------------------------|
//! | `read`    | every GET of tasks, services, deployments, nodes; events, logs, metrics |
//! | `operate` | also run and stop tasks; put, remove, scale, revert services; promote, pause, resume deployments |
//! | `exec`    | also open exec sessions in tasks                                       |
//! | `admin`   | also tokens, the audit log, draining nodes and their eligibility      |
//!
//! Workers are not users: their routes (register, heartbeat, the endpoint feed) take a node's
//! credentials, and a node's credentials open nothing else.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use cube_core::access::TokenRecord;

pub use cube_core::access::{AuditRecord, Role};

/// Body of `POST /v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token's name: 1 to 63 of `a-z`, `0-9`, `-`, `_` and `.`, starting with a letter or
    /// a digit. Names who acts in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How long it is valid (`30d`, `12h`); absent: until revoked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "cube_core::units::option_duration_serde"
    )]
    #[schemars(with = "Option<cube_core::schema::DurationText>")]
    pub expires_in: Option<Duration>,
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made.
    #[schemars(with = "cube_core::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// Who made it (a token's name, or `cluster` for the cluster token).
    pub created_by: String,
    /// When it stops being valid (`null`: never).
    #[serde(default)]
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked (`null`: it was not).
    #[serde(default)]
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub revoked_at: Option<Timestamp>,
}

impl From<&TokenRecord> for TokenView {
    fn from(r: &TokenRecord) -> Self {
        Self {
            name: r.name.clone(),
            role: r.role,
            created_at: r.created_at,
            created_by: r.created_by.clone(),
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// Answer of `POST /v1/tokens`: the token, with its secret, shown this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreatedToken {
    /// The token's record.
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret to send as `Authorization: Bearer <secret>`. Only its digest is stored: it
    /// cannot be shown again.
    pub secret: String,
}

pub use cube_core::access::valid_token_name;

/// Query of `GET /v1/audit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<cube_core::schema::Rfc3339>")]
    pub since: Option<Timestamp>,
    /// Only what this caller did (a token's name, `cluster`, a node's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// At most this many, the newest (default 1000, at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_duration_text() {
        let r: TokenRequest =
            serde_json::from_str(r#"{"name":"ci","role":"read","expires_in":"30d"}"#).unwrap();
        assert_eq!(r.expires_in, Some(Duration::from_secs(30 * 86_400)));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["expires_in"], "720h");
        assert!(serde_json::from_str::<TokenRequest>(r#"{"name":"ci","role":"root"}"#).is_err());
    }
}

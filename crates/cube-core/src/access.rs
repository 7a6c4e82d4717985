//! Who may do what: the roles of users' tokens, and the token records the manager stores.
//!
//! Roles are ordered, each allowing everything the ones before it allow: `read` (every GET,
//! events, logs), `operate` (also run, stop, deploy, scale, revert, promote), `exec` (also exec
//! into tasks), `admin` (also tokens, the audit log, node drain and eligibility). Which route
//! needs which role is declared with the route (`cube_api::openapi`).
//!
//! Every mutation is recorded as an [`AuditRecord`]: who, with which role, what, when, and
//! how it was answered.
//!
//! A token's secret is never stored: only its SHA-256 digest, computed by the manager (this
//! crate draws no random numbers and hashes nothing).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a user token may do (see the module's table). Ordered: `read < operate < exec < admin`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Every GET, events, logs.
    Read,
    /// Also run, stop, deploy, scale, revert, promote.
    Operate,
    /// Also exec into tasks.
    Exec,
    /// Also tokens, the audit log, node drain and eligibility.
    Admin,
}

/// A user's token as the manager stores it (table `tokens`, keyed by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name (see [`valid_token_name`]).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, in lower-case hex.
    pub digest: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// Who made it: a token's name, or `cluster`.
    pub created_by: String,
    /// When it stops being valid (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked (`None`: it was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// One mutation through the API, as the audit log keeps it (table `audit`, keyed by the index
/// of its `Audited` event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// When it was answered.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub at: Timestamp,
    /// Who: a user token's name, `cluster` for the cluster token, `anonymous` on a server that
    /// requires no credentials, or a node's id.
    pub who: String,
    /// The role it acted with (`null` for a node).
    #[serde(default)]
    pub role: Option<Role>,
    /// The operation (the OpenAPI `operationId`, e.g. `submitTask`).
    pub operation: String,
    /// The method and the path asked for (`POST /v1/tasks`).
    pub request: String,
    /// The HTTP status of the answer: 2xx done, 4xx refused, 5xx failed.
    pub status: u16,
}

/// Whether a token may be used now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// It may.
    Valid,
    /// Its `expires_at` has passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl TokenRecord {
    /// Whether it may be used at `now`.
    pub fn status(&self, now: Timestamp) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Valid
        }
    }
}

/// Whether `name` may name a token (see [`TokenRequest::name`]).
pub fn valid_token_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named_in_snake_case() {
        assert!(
            Role::Read < Role::Operate && Role::Operate < Role::Exec && Role::Exec < Role::Admin
        );
        assert_eq!(serde_json::to_string(&Role::Operate).unwrap(), "\"operate\"");
        assert_eq!("exec".parse::<Role>().unwrap(), Role::Exec);
        assert_eq!(Role::Admin.to_string(), "admin");
    }

    #[test]
    fn token_names_are_checked() {
        for ok in ["ci", "alice", "deploy-bot.prod", "a_b", "9lives"] {
            assert!(valid_token_name(ok), "{ok}");
        }
        for bad in ["", "-x", "Alice", "has space", "cluster/x", &"x".repeat(64)] {
            assert!(!valid_token_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_token_is_valid_until_it_expires_or_is_revoked() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut t = TokenRecord {
            name: "ci".into(),
            role: Role::Read,
            digest: "00".into(),
            created_at: at("2026-12-01T00:00:00Z"),
            created_by: "cluster".into(),
            expires_at: Some(at("2026-12-02T00:00:00Z")),
            revoked_at: None,
        };
        assert_eq!(t.status(at("2026-12-01T23:59:59Z")), TokenStatus::Valid);
        assert_eq!(t.status(at("2026-12-02T00:00:00Z")), TokenStatus::Expired);
        t.revoked_at = Some(at("2026-12-01T12:00:00Z"));
        assert_eq!(t.status(at("2026-12-01T13:00:00Z")), TokenStatus::Revoked);
    }
}

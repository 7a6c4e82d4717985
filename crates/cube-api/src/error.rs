//! The error shape of every endpoint: `{"error": {"code": "...", "message": "...", "details": [...]}}`.
//!
//! `code` is a stable machine-readable string; `message` is one human line; `details` lists
//! per-field problems when there are several (a spec with many mistakes).

use cube_core::FieldError;
use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not well-formed JSON, or has the wrong types (400).
    InvalidJson,
    /// The body parsed but the task spec is invalid (400).
    InvalidSpec,
    /// A path or query parameter is malformed (400).
    InvalidArgument,
    /// The request carries no token, or the wrong one, and the server requires one (401).
    Unauthorized,
    /// The credentials are valid but do not allow this: the message names the role (or
    /// identity) it needs (403).
    Forbidden,
    /// No such resource (404).
    NotFound,
    /// The method is not allowed on this path (405).
    MethodNotAllowed,
    /// What was asked for is no longer kept: an event index older than the history (410).
    Gone,
    /// The request conflicts with existing state, e.g. an id reused with another spec (409).
    Conflict,
    /// The body is larger than the server accepts (413).
    PayloadTooLarge,
    /// A dependency (the container engine, the store) is unavailable; retry later (503).
    Unavailable,
    /// Highly available managers have no leader now (a failover, or etcd unreachable); retry
    /// after the `Retry-After` the answer carries (503).
    NoLeader,
    /// A worker refused a command from a manager whose leadership ended: it has seen a newer
    /// leader's epoch (409).
    StaleLeader,
    /// A bug or an unexpected failure on the server (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidSpec | ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Gone => 410,
            ErrorCode::Conflict | ErrorCode::StaleLeader => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable | ErrorCode::NoLeader => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error as sent over the wire.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    thiserror::Error,
    schemars::JsonSchema
)]
#[error("{message}")]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// One human-readable line.
    pub message: String,
    /// Per-field problems, when the request had several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// With `gone` for an event index: the indexes the history holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Box<crate::events::IndexBounds>>,
}

/// The envelope: `{"error": ApiError}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

impl ApiError {
    /// An error with a code and message and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new(), index: None }
    }

    /// 404 for a resource `what` with id `id`.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} {id} not found"))
    }

    /// 500 with a message; the caller logs the cause.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// 400 listing every problem of an invalid spec.
    pub fn invalid_spec(details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("invalid task spec: {one}"),
            many => format!(
                "invalid task spec: {} problems: {}",
                many.len(),
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
        };
        Self { code: ErrorCode::InvalidSpec, message, details, index: None }
    }
}

//! The HTTP API shared by Cube's worker and manager, and the client both the manager and the
//! CLI use to talk to them.
//!
//! - [`types`]: JSON request and response bodies (the wire format; field names are stable).
//! - [`error`]: the one error shape every endpoint answers with.
//! - [`server`]: axum plumbing shared by the worker and manager servers (body limits, JSON
//!   errors for every rejection, request logs, graceful shutdown).
//! - [`client`]: a typed HTTP client with timeouts.
//! - [`auth`]: the cluster token every request carries when the server requires one.
//! - [`tls`]: HTTPS for servers (certificate and key) and clients (a CA to trust).
//! - [`security`]: an agent's token and TLS settings together.
//!
//! **Boundary:** this crate is the only one that defines JSON shapes sent over HTTP. Domain types
//! from `cube-core` that appear in bodies (the task spec, states, history entries) are part of
//! that promise too.

pub mod auth;
pub mod client;
pub mod error;
pub mod security;
pub mod server;
pub mod tls;
pub mod types;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use security::Security;

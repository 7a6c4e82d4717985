//! Cube's HTTP plumbing around the [`cube_api`] contract: what the worker and manager servers
//! share, and the client the manager, the workers and the CLI use to call them.
//!
//! - [`server`]: axum plumbing (body limits, JSON errors for every rejection, request logs,
//!   graceful shutdown).
//! - [`client`]: a typed HTTP client with timeouts, whose errors say what kind of failure
//!   happened.
//! - [`auth`]: who calls (the cluster token, users' tokens) and what each route lets them do.
//! - [`conns`]: the connections a server holds: bounded, idle ones closed first.
//! - [`tls`]: HTTPS for servers (certificate and key) and clients (a CA to trust).
//! - [`mtls`]: mutual TLS between managers and nodes on the cluster's CA ([`cube_pki`]).
//! - [`security`]: an agent's token and TLS settings together.
//! - [`metrics`]: request metrics and the Prometheus text of a registry.

pub mod auth;
pub mod client;
pub mod conns;
pub mod metrics;
pub mod mtls;
pub mod security;
pub mod server;
pub mod tls;

pub use conns::Limits;
pub use security::Security;

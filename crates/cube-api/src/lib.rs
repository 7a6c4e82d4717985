//! Cube's HTTP contract: what the worker and manager APIs send and receive.
//!
//! - [`auth`]: roles, and the bodies of the token routes.
//! - [`cluster`]: joining with a join token, renewing a node's certificate.
//! - [`types`]: JSON request and response bodies (the wire format; field names are stable).
//! - [`error`]: the one error envelope every endpoint answers with.
//! - [`events`]: the lines of the manager's event stream.
//! - [`exec`]: the frames of an exec session.
//! - [`openapi`]: every route, and the OpenAPI document built from them and these types.
//!
//! **Boundary:** this crate is the only one that defines JSON shapes sent over HTTP. Domain types
//! from `cube-core` that appear in bodies (the task spec, states, history entries, host stats)
//! are part of that promise too. It holds no server and no client (those are `cube-http`), so
//! anything may depend on the contract without pulling in axum or reqwest.

pub mod auth;
pub mod cluster;
pub mod error;
pub mod events;
pub mod exec;
pub mod openapi;
pub mod types;

pub use error::{ApiError, ErrorBody, ErrorCode};

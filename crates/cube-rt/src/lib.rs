//! Runtime helpers shared by Cube's agents (the manager and the worker), kept out of the pure
//! domain crate because they read the clock or draw random numbers.
//!
//! - [`Ticker`]: the clock of a periodic background loop that stops promptly on shutdown, and
//!   [`sweep_period`], the cadence of garbage-collection loops.
//! - [`Backoff`]: doubling, capped retry delays with jitter.
//! - [`Clock`]: where the agents read the time (the system's, or tokio's in tests).

mod backoff;
mod clock;
mod ticker;

pub use backoff::Backoff;
pub use clock::Clock;
pub use ticker::{Ticker, sweep_period};

//! Waiting on conditions, on the wall clock, for tests and benchmarks of real processes:
//! poll until a condition holds or a deadline passes, never sleep as synchronisation.

use std::future::Future;
use std::time::{Duration, Instant};

/// A condition that did not hold before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}")]
pub struct TimedOut {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub timeout: Duration,
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` saying what
/// never happened.
pub async fn poll_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut { what: what.to_owned(), timeout });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll_until`] every 50 ms, panicking (failing the test) with what never happened.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(timeout, Duration::from_millis(50), what, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

//! Runtime helpers shared by Cube's agents (the manager and the worker), kept out of the pure
//! domain crate because they read the clock.
//!
//! - [`Ticker`]: the clock of a periodic background loop that stops promptly on shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The clock of a periodic background loop that must stop promptly on shutdown: the first
/// tick is immediate, a late tick is delayed rather than bunched.
#[derive(Debug)]
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticker {
    /// Ticks every `period` until `shutdown` is cancelled.
    pub fn new(period: Duration, shutdown: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval, shutdown }
    }

    /// Waits for the next tick: `true`, or `false` once shutdown was asked for.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => !self.shutdown.is_cancelled(),
            () = self.shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ticker_ticks_at_once_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut ticker = Ticker::new(Duration::from_secs(3600), shutdown.clone());
        assert!(ticker.tick().await, "the first tick is immediate");
        shutdown.cancel();
        assert!(!ticker.tick().await, "a cancelled loop ends instead of waiting an hour");
    }
}

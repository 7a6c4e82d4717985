//! [`Ticker`]: the clock of periodic background loops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a garbage-collection loop looks for records finished more than `retain` ago: a
/// record outlives its retention by at most a quarter of it (and at most a minute), and a sweep
/// never runs more than ten times a second.
pub fn sweep_period(retain: Duration) -> Duration {
    (retain / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

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

    /// From now on ticks every `period` instead, the next one a full period from now (a
    /// heartbeat interval the manager changed).
    pub fn reset(&mut self, period: Duration) {
        if period != self.interval.period() {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.interval = interval;
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.interval.period()
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

    #[test]
    fn gc_sweeps_a_quarter_of_the_retention_within_bounds() {
        assert_eq!(sweep_period(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(sweep_period(Duration::from_millis(100)), Duration::from_millis(100));
        assert_eq!(sweep_period(Duration::from_secs(86_400)), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_ticker_ticks_at_once_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut ticker = Ticker::new(Duration::from_secs(3600), shutdown.clone());
        assert!(ticker.tick().await, "the first tick is immediate");
        shutdown.cancel();
        assert!(!ticker.tick().await, "a cancelled loop ends instead of waiting an hour");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_ticker_ticks_at_the_new_period() {
        let mut ticker = Ticker::new(Duration::from_secs(10), CancellationToken::new());
        assert!(ticker.tick().await);
        ticker.reset(Duration::from_secs(1));
        let before = tokio::time::Instant::now();
        assert!(ticker.tick().await);
        assert_eq!(before.elapsed(), Duration::from_secs(1));
        assert_eq!(ticker.period(), Duration::from_secs(1));
    }
}

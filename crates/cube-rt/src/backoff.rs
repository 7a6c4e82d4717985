//! [`Backoff`]: delays between retries that double up to a cap, with jitter.

use std::time::Duration;

/// Delays between attempts of something that may fail for a while (a call to a node, a
/// registration): the first delay, doubled after each attempt up to the cap, each drawn at
/// random from its upper half ("equal jitter"). The jitter matters at scale: a thousand workers
/// that lost their manager at the same instant must not retry in lockstep once it is back.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The next delay before jitter.
    next: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays from `first` doubling to at most `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self::with_rng(first, max, fastrand::Rng::new())
    }

    /// The same, with a seeded generator: the same seed gives the same delays (tests).
    pub fn seeded(first: Duration, max: Duration, seed: u64) -> Self {
        Self::with_rng(first, max, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(first: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self { first: first.min(max), max, next: first.min(max), rng }
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_starts_again_from_the_first_delay() {
        let mut b = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(2), 3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_double_to_the_cap_within_their_upper_half() {
        let mut b = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(2), 7);
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn jitter_spreads_retries_apart() {
        // A thousand clients backing off from the same moment: their first retries must not
        // land together.
        let mut firsts: Vec<Duration> = (0..1000)
            .map(|seed| {
                Backoff::seeded(Duration::from_secs(1), Duration::from_secs(5), seed).next_delay()
            })
            .collect();
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 900, "only {} distinct delays", firsts.len());
    }
}

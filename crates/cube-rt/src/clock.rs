//! [`Clock`]: where the agents read the time.

use jiff::Timestamp;

/// The agents' source of time: wall-clock timestamps for records and monotonic instants for
/// timeouts. Monotonic time always comes from tokio, so it follows a paused test clock; wall
/// time comes from the system, or, in tests, from tokio's clock as well, so a test can skip a
/// day of retention in milliseconds.
#[derive(Clone, Debug)]
pub struct Clock(Wall);

#[derive(Clone, Debug)]
enum Wall {
    System,
    /// `start` at `origin`, advancing with tokio's clock.
    Tokio {
        start: Timestamp,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// The system's clock (production).
    pub fn system() -> Self {
        Self(Wall::System)
    }

    /// Wall time that starts at `start` now and advances with tokio's clock, paused or not
    /// (tests).
    pub fn following_tokio(start: Timestamp) -> Self {
        Self(Wall::Tokio { start, origin: tokio::time::Instant::now() })
    }

    /// The current wall-clock time, in UTC.
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Wall::System => Timestamp::now(),
            Wall::Tokio { start, origin } => {
                let elapsed = jiff::SignedDuration::try_from(origin.elapsed())
                    .unwrap_or(jiff::SignedDuration::MAX);
                start.checked_add(elapsed).unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// The current monotonic time (tokio's, so a paused test clock applies).
    pub fn instant(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_advances_with_paused_time() {
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let clock = Clock::following_tokio(start);
        let before = clock.instant();
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert_eq!(clock.now(), start.checked_add(jiff::SignedDuration::from_hours(24)).unwrap());
        assert_eq!(clock.instant() - before, Duration::from_secs(86_400));
    }
}

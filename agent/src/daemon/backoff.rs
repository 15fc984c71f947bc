//! Jittered exponential backoff between reconnection attempts, so that a
//! fleet whose collector restarts does not reconnect in one wave.

use std::time::Duration;

/// Delays that double from `min` up to `max`, each drawn uniformly from
/// the upper half of the current step ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`, never waits more than `max`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.min(max),
            max,
            attempt: 0,
        }
    }

    /// Back to the first step (after a connection that lasted).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A fraction in [0, 1) from the random bits of a UUIDv7 (no extra crate).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 53) - 1);
    #[allow(clippy::cast_precision_loss)]
    let f = bits as f64 / (1u64 << 53) as f64;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_vary() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays
                .iter()
                .rev()
                .take(5)
                .all(|d| *d >= Duration::from_secs(1))
        );
        let distinct: std::collections::BTreeSet<_> = delays.iter().rev().take(10).collect();
        assert!(distinct.len() > 1, "no jitter: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

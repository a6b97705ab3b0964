//! The one back-off of every retry loop: the listener's reconnects, the
//! applier's retries, the supervisor's restarts, the claim give-back and
//! the LLM client's retries. Pure: the caller sleeps, and passes the
//! random number when it wants jitter.

use std::time::Duration;

/// How waits spread around the doubling curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the curve.
    None,
    /// Half fixed, half random: in `[wait / 2, wait)`. Retries of many
    /// missions spread out but none comes back at once.
    Equal,
    /// Within `± fraction` of the curve (the listener's reconnects).
    Spread(f64),
}

/// Waits that double from `first` after each failure, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: Jitter::None,
        }
    }

    pub const fn with_jitter(self, jitter: Jitter) -> Backoff {
        Backoff { jitter, ..self }
    }

    /// The wait after failed attempt number `attempt` (1-based) on the
    /// curve: `first * 2^(attempt - 1)`, at most `max`.
    pub fn curve(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << exponent).min(self.max)
    }

    /// [`Backoff::curve`] with the jitter applied, `random` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let wait = self.curve(attempt);
        let random = random.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::None => wait,
            Jitter::Equal => wait / 2 + (wait / 2).mul_f64(random),
            Jitter::Spread(fraction) => {
                let fraction = fraction.clamp(0.0, 1.0);
                wait.mul_f64(1.0 - fraction + 2.0 * fraction * random)
            }
        }
    }

    /// A retry loop's state, starting with no failure.
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            failed: 0,
        }
    }
}

/// The failures of one retry loop so far.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    failed: u32,
}

impl Attempts {
    /// Counts a failure; the wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failed = self.failed.saturating_add(1);
        self.backoff.delay(self.failed, rand::random())
    }

    /// A success: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.failed = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_curve_doubles_and_stops_at_max() {
        let b = Backoff::new(MS(100), MS(1000));
        let waits: Vec<u64> = (1..=6).map(|n| b.curve(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.curve(u32::MAX), MS(1000), "no overflow");
        assert_eq!(b.curve(0), MS(100));
    }

    #[test]
    fn equal_jitter_keeps_half_and_spread_stays_around_the_curve() {
        let equal = Backoff::new(MS(100), MS(1000)).with_jitter(Jitter::Equal);
        assert_eq!(equal.delay(1, 0.0), MS(50));
        assert_eq!(
            equal.delay(3, 0.999_999),
            MS(400) - Duration::from_nanos(200)
        );
        let spread = Backoff::new(MS(1000), MS(60_000)).with_jitter(Jitter::Spread(0.2));
        assert_eq!(spread.delay(1, 0.0), MS(800));
        assert_eq!(spread.delay(1, 0.5), MS(1000));
    }

    #[test]
    fn attempts_count_failures_and_reset_on_success() {
        let mut a = Backoff::new(MS(10), MS(40)).attempts();
        let waits: Vec<Duration> = (0..4).map(|_| a.failed()).collect();
        assert_eq!(waits, [MS(10), MS(20), MS(40), MS(40)]);
        assert_eq!(a.failures(), 4);
        a.succeeded();
        assert_eq!(a.failed(), MS(10));
    }

    proptest! {
        #[test]
        fn every_wait_is_within_its_jitter_band(
            first in 1u64..10_000, extra in 0u64..100_000, attempt in 0u32..100,
            random in 0.0f64..1.0, fraction in 0.0f64..1.0,
        ) {
            let b = Backoff::new(MS(first), MS(first + extra));
            let curve = b.curve(attempt);
            prop_assert!(curve >= MS(first) && curve <= MS(first + extra));
            let equal = b.with_jitter(Jitter::Equal).delay(attempt, random);
            prop_assert!(equal >= curve / 2 && equal <= curve);
            let spread = b.with_jitter(Jitter::Spread(fraction)).delay(attempt, random);
            prop_assert!(spread >= curve.mul_f64(1.0 - fraction) - Duration::from_nanos(1));
            prop_assert!(spread <= curve.mul_f64(1.0 + fraction) + Duration::from_nanos(1));
        }
    }
}

//! Wall-clock time as an input. Missions are due on the database's clock
//! (`nextRunAt` is compared with the time Postgres stamps), so the service
//! measures the offset between the database clock and its own and corrects
//! for it. Tests substitute a clock driven by tokio's paused time.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The time "now" as the scheduler sees it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The local clock corrected by the measured database offset.
#[derive(Debug, Default)]
pub struct DbClock {
    /// Database clock minus local clock, in microseconds.
    offset_micros: AtomicI64,
}

impl DbClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a measurement: the database said `db_time` for a query sent at
    /// `sent` and answered at `received` (local clock). The database read its
    /// clock somewhere in between; the midpoint is the best estimate.
    pub fn record_sample(
        &self,
        sent: DateTime<Utc>,
        db_time: DateTime<Utc>,
        received: DateTime<Utc>,
    ) -> chrono::Duration {
        let midpoint = sent + (received - sent) / 2;
        let offset = db_time - midpoint;
        self.offset_micros
            .store(offset.num_microseconds().unwrap_or(0), Ordering::Relaxed);
        offset
    }

    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }
}

impl Clock for DbClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}

/// A clock that advances with tokio's (possibly paused) time, for tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_utc: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// `now()` returns `start` at this instant and advances with tokio time.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        TokioClock {
            base_utc: start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.base;
        self.base_utc + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_uses_the_round_trip_midpoint() {
        let clock = DbClock::new();
        let sent: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let received = sent + chrono::Duration::milliseconds(10);
        let db = sent + chrono::Duration::milliseconds(2005);
        let offset = clock.record_sample(sent, db, received);
        assert_eq!(offset, chrono::Duration::milliseconds(2000));
        assert_eq!(clock.offset(), offset);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = TokioClock::starting_at(start);
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
    }
}

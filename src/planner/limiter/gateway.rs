//! [`GatewayLimiter`]: the async side of the limiter. A FIFO semaphore holds
//! `limit` permits; a decrease below what is in flight is paid back by
//! forgetting permits as they return. A `Retry-After` on a request refused
//! while nothing else was in flight pauses every new request; it is waited
//! out by the permit holders at the head of the line, so the order survives
//! it. A refusal beside other requests only shrinks the limit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{AimdLimit, LimitConfig, Response, Sample};

/// The async limiter in front of the gateway; cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayLimiter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Holds `limit` permits, minus `debt` not yet taken back.
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    core: AimdLimit,
    in_flight: usize,
    /// Permits to forget as they come back, after a decrease below in-flight.
    debt: usize,
    paused_until: Option<Instant>,
    overloads: u64,
}

/// Room for one request; [`GatewayPermit::record`] gives it back. Dropped
/// without a record (a cancelled request), it counts as [`Response::Other`].
#[derive(Debug)]
pub struct GatewayPermit {
    held: Option<Held>,
    round: u64,
    in_flight: usize,
    sent: Instant,
    waited: Duration,
}

impl GatewayLimiter {
    pub fn new(config: LimitConfig) -> GatewayLimiter {
        let core = AimdLimit::new(config);
        let shared = Shared {
            permits: Arc::new(Semaphore::new(core.limit())),
            state: Mutex::new(State {
                core,
                in_flight: 0,
                debt: 0,
                paused_until: None,
                overloads: 0,
            }),
        };
        GatewayLimiter {
            shared: Arc::new(shared),
        }
    }

    /// Waits for room (first come, first served) and any `Retry-After` pause.
    /// The permit's [`GatewayPermit::waited`] is the wait, for a histogram.
    pub async fn acquire(&self) -> GatewayPermit {
        let start = Instant::now();
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .expect("the limiter never closes its semaphore");
        // Given back through the debt also when this wait is cancelled.
        let held = Held {
            shared: Arc::clone(&self.shared),
            permit: Some(permit),
        };
        // Holding the permit keeps the queue's order across a pause.
        loop {
            let pause = self.shared.lock().paused_until;
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let mut state = self.shared.lock();
        state.in_flight += 1;
        GatewayPermit {
            held: Some(held),
            round: state.core.round(),
            in_flight: state.in_flight,
            sent: Instant::now(),
            waited: start.elapsed(),
        }
    }

    /// The current limit, for a gauge.
    pub fn limit(&self) -> usize {
        self.shared.lock().core.limit()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Overload answers recorded so far.
    pub fn overloads(&self) -> u64 {
        self.shared.lock().overloads
    }

    /// Until when new requests wait for a `Retry-After`, if they do.
    pub fn paused_until(&self) -> Option<Instant> {
        self.shared
            .lock()
            .paused_until
            .filter(|u| *u > Instant::now())
    }
}

impl GatewayPermit {
    /// How long [`GatewayLimiter::acquire`] waited for this permit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Reports how the request went and gives the room back.
    pub fn record(mut self, response: Response) {
        self.finish(response);
    }

    fn finish(&mut self, response: Response) {
        let Some(held) = self.held.take() else {
            return;
        };
        let sample = Sample {
            response,
            latency: self.sent.elapsed(),
            in_flight: self.in_flight,
            round: self.round,
        };
        held.shared.record(sample);
    }
}

impl Drop for GatewayPermit {
    fn drop(&mut self) {
        self.finish(Response::Other);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, sample: Sample) {
        let mut state = self.lock();
        // Refused with nothing else in flight, at sending or now: the
        // gateway is rate-limited or down, not just full, so everyone waits.
        let alone = sample.in_flight <= 1 && state.in_flight <= 1;
        state.in_flight = state.in_flight.saturating_sub(1);
        if sample.response.is_overload() {
            state.overloads += 1;
        }
        let before = state.core.limit();
        if let Some(pause) = state.core.on_sample(sample).filter(|_| alone) {
            let until = Instant::now() + pause;
            state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
        }
        let after = state.core.limit();
        if after < before {
            let cut = before - after;
            let forgotten = self.permits.forget_permits(cut);
            state.debt += cut - forgotten;
        } else if after > before {
            let grow = after - before;
            let repaid = grow.min(state.debt);
            state.debt -= repaid;
            self.permits.add_permits(grow - repaid);
        }
    }

    fn give_back(&self, permit: OwnedSemaphorePermit) {
        let mut state = self.lock();
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

/// A semaphore permit that goes back through the debt when dropped.
#[derive(Debug)]
struct Held {
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.give_back(permit);
        }
    }
}

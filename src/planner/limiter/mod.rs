//! Adaptive concurrency towards the LLM gateway (issue 9).
//!
//! How many LLM requests may be in flight moves between 1 and
//! `MANA_AI_MAX_CONCURRENT_RUNS` by what the gateway says. [`AimdLimit`] is
//! the pure core (no clock, no I/O); [`GatewayLimiter`] is the async wrapper
//! the LLM client calls: [`GatewayLimiter::acquire`] waits for room and
//! returns a [`GatewayPermit`], whose [`GatewayPermit::record`] reports how
//! the request went and gives the room back.
//!
//! # Algorithm: AIMD with a probe back-off, not a latency gradient
//!
//! - **Slow start**: from `initial`, +1 per success until the first overload
//!   (TCP slow start: the limit doubles per round of answers).
//! - **Additive increase**: then +1 after `limit` successes in a row (one
//!   round), counted only while the limit is in use (at least half of it in
//!   flight, as Netflix's `AIMDLimit` does): an idle client learns nothing.
//! - **Multiplicative decrease** on overload (429/503), a timeout, or a
//!   success slower than `slow_latency`: `limit × decrease` rounded up,
//!   at least 1 less, never below 1. Once per round: requests sent before the
//!   last decrease do not decrease again (TCP's one reduction per window), so
//!   a burst of 429s from one overshoot halves nothing twice.
//! - **Probe back-off near the ceiling**: the limit at which the last
//!   overload happened is remembered; growing back to it needs `probe_base`
//!   successes, doubling (up to `probe_cap`) each time the probe is refused
//!   again, reset once a probe holds. A gateway with a hard capacity K is thus
//!   probed at K+1 rarely, not every few rounds (as CUBIC plateaus near its
//!   last loss). With small K, plain AIMD would spend one 429 per round.
//!
//! Why not a latency gradient (Netflix `Gradient2`, TCP Vegas): they read a
//! queue from latency rising above a baseline. An LLM's latency is dominated
//! by the answer's length and varies tenfold between requests with no queue
//! at all, so the gradient would be noise; and the gateway says explicitly
//! when it is full (429/503, like ECN), which AIMD uses directly. Latency
//! still counts where it is unambiguous: past `slow_latency` a success is an
//! overload (Netflix `AIMDLimit`'s timeout rule).
//!
//! A `Retry-After` (capped at `retry_after_cap`) on a refusal of a request
//! sent alone (one in flight: the gateway is rate-limited or down, not just
//! full) pauses every new request until then; requests in flight go on. A
//! refusal while others were in flight says the gateway is full: the limit
//! shrinks and only the refused request waits its `Retry-After` (the LLM
//! client does that), so the others keep the gateway busy. Pausing everyone
//! on every such 429 cost the 08:00 burst about a second per refusal.
//!
//! # A 429 is not a failed attempt
//!
//! Record [`Response::Overload`], wait its `Retry-After` and acquire again:
//! the next permit comes once the gateway has room, so the request waits
//! instead of spending one of its attempts. The LLM client's retry loop
//! (`planner::llm`) does that, up to `max_overloads` times.

use std::time::Duration;

mod gateway;

pub use gateway::{GatewayLimiter, GatewayPermit};

/// Settings of an [`AimdLimit`]; [`LimitConfig::new`] fills in defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// `MANA_AI_MAX_CONCURRENT_RUNS`; at least 1.
    pub max: usize,
    /// Where slow start begins (clamped to 1..=max).
    pub initial: usize,
    /// Multiplicative decrease factor, in (0, 1).
    pub decrease: f64,
    /// A success slower than this counts as an overload (no pause).
    pub slow_latency: Option<Duration>,
    /// Successes needed to grow to a limit that was refused last time.
    pub probe_base: u32,
    /// The most that probe window doubles to.
    pub probe_cap: u32,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// Overloads one call absorbs before the last one counts as a failed
    /// attempt (the LLM client's retry loop).
    pub max_overloads: u32,
}

impl LimitConfig {
    pub fn new(max: usize) -> LimitConfig {
        LimitConfig {
            max: max.max(1),
            initial: 1,
            decrease: 0.75,
            slow_latency: None,
            probe_base: 32,
            probe_cap: 1024,
            retry_after_cap: Duration::from_secs(30),
            max_overloads: 100,
        }
    }
}

/// How one request to the gateway went, as far as capacity is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// An answer (any 2xx, also one whose body is unusable).
    Success,
    /// 429 or 503: the gateway is full; `retry_after` as it asked.
    Overload { retry_after: Option<Duration> },
    /// No answer in time.
    Timeout,
    /// Anything that says nothing about capacity (a 400, a refused connect).
    Other,
}

impl Response {
    /// Classifies an HTTP status: 429 and 503 are overload, 2xx success.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Response {
        match status {
            429 | 503 => Response::Overload { retry_after },
            200..=299 => Response::Success,
            _ => Response::Other,
        }
    }

    pub fn is_overload(self) -> bool {
        matches!(self, Response::Overload { .. })
    }
}

/// One finished request, as the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub response: Response,
    /// From sending to the answer.
    pub latency: Duration,
    /// Requests in flight when it was sent, itself included.
    pub in_flight: usize,
    /// [`AimdLimit::round`] when it was sent.
    pub round: u64,
}

/// The pure AIMD state (see the module documentation).
#[derive(Debug, Clone)]
pub struct AimdLimit {
    config: LimitConfig,
    limit: usize,
    slow_start: bool,
    successes: u32,
    /// The limit of the last overload, until a probe past it holds.
    ceiling: Option<usize>,
    probe_window: u32,
    /// Decreases so far: a sample sent in an earlier round decreases nothing.
    round: u64,
}

impl AimdLimit {
    pub fn new(config: LimitConfig) -> AimdLimit {
        let max = config.max.max(1);
        let config = LimitConfig { max, ..config };
        AimdLimit {
            limit: config.initial.clamp(1, max),
            probe_window: config.probe_base.max(1),
            config,
            slow_start: true,
            successes: 0,
            ceiling: None,
            round: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Folds one finished request in; returns the refusal's capped
    /// `Retry-After` (the async side decides who waits it out).
    pub fn on_sample(&mut self, sample: Sample) -> Option<Duration> {
        let pause = match sample.response {
            Response::Overload { retry_after } => {
                retry_after.map(|asked| asked.min(self.config.retry_after_cap))
            }
            _ => None,
        };
        let slow = self
            .config
            .slow_latency
            .is_some_and(|slow| sample.latency > slow);
        match sample.response {
            Response::Overload { .. } | Response::Timeout => self.decrease(sample.round),
            Response::Success if slow => self.decrease(sample.round),
            Response::Success => self.increase(sample.in_flight),
            Response::Other => {}
        }
        pause
    }

    fn increase(&mut self, in_flight: usize) {
        if in_flight * 2 < self.limit || self.limit >= self.config.max {
            return;
        }
        self.successes += 1;
        let near_ceiling = self.ceiling.is_some_and(|c| self.limit + 1 >= c);
        let needed = match () {
            _ if self.slow_start => 1,
            _ if near_ceiling => self.probe_window,
            _ => u32::try_from(self.limit).unwrap_or(u32::MAX),
        };
        if self.successes < needed {
            return;
        }
        self.successes = 0;
        self.limit += 1;
        if self.ceiling.is_some_and(|c| self.limit > c) {
            // A whole window at the old ceiling held: the gateway grew.
            self.ceiling = None;
            self.probe_window = self.config.probe_base.max(1);
        }
    }

    fn decrease(&mut self, sent_in: u64) {
        if sent_in < self.round {
            return;
        }
        if self.ceiling == Some(self.limit) {
            let doubled = self.probe_window.saturating_mul(2);
            self.probe_window = doubled.min(self.config.probe_cap.max(1));
        } else {
            self.probe_window = self.config.probe_base.max(1);
        }
        self.ceiling = Some(self.limit);
        let scaled = (self.limit as f64 * self.config.decrease.clamp(0.0, 1.0)).ceil() as usize;
        self.limit = scaled.min(self.limit - 1).max(1);
        self.slow_start = false;
        self.successes = 0;
        self.round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    const OVERLOAD: Response = Response::Overload { retry_after: None };

    fn sample(core: &AimdLimit, response: Response) -> Sample {
        Sample {
            response,
            latency: Duration::from_millis(300),
            in_flight: core.limit(),
            round: core.round(),
        }
    }

    /// `n` successes, each with the limit fully in use.
    fn succeed(core: &mut AimdLimit, n: usize) {
        for _ in 0..n {
            core.on_sample(sample(core, Response::Success));
        }
    }

    #[test]
    fn slow_start_then_overload_shrinks_and_never_leaves_the_bounds() {
        let mut core = AimdLimit::new(LimitConfig::new(32));
        assert_eq!(core.limit(), 1);
        succeed(&mut core, 7);
        assert_eq!(core.limit(), 8);
        core.on_sample(sample(&core, OVERLOAD));
        assert_eq!(core.limit(), 6);
        // Further refusals of requests sent in the same round decrease nothing.
        let stale = Sample {
            round: core.round() - 1,
            ..sample(&core, OVERLOAD)
        };
        core.on_sample(stale);
        assert_eq!(core.limit(), 6);
        for _ in 0..20 {
            core.on_sample(sample(&core, Response::Timeout));
        }
        assert_eq!(core.limit(), 1);
        succeed(&mut core, 100_000);
        assert_eq!(core.limit(), 32);
        succeed(&mut core, 10);
        assert_eq!(core.limit(), 32);
    }

    #[test]
    fn grows_back_one_per_round_of_success_and_probes_a_refused_limit_rarely() {
        let mut core = AimdLimit::new(LimitConfig {
            initial: 5,
            ..LimitConfig::new(32)
        });
        core.on_sample(sample(&core, OVERLOAD));
        assert_eq!(core.limit(), 4);
        // Back to 5 (the refused limit) only after `probe_base` successes.
        succeed(&mut core, 31);
        assert_eq!(core.limit(), 4);
        succeed(&mut core, 1);
        assert_eq!(core.limit(), 5);
        // Refused again: the next probe waits twice as long.
        core.on_sample(sample(&core, OVERLOAD));
        succeed(&mut core, 63);
        assert_eq!(core.limit(), 4);
        succeed(&mut core, 1);
        assert_eq!(core.limit(), 5);
        // This time it holds: a round at 5 and the ceiling is forgotten.
        succeed(&mut core, 64);
        assert_eq!(core.limit(), 6);
        succeed(&mut core, 6);
        assert_eq!(core.limit(), 7);
    }

    #[test]
    fn an_idle_client_does_not_grow_and_other_errors_change_nothing() {
        let mut core = AimdLimit::new(LimitConfig {
            initial: 8,
            ..LimitConfig::new(32)
        });
        for _ in 0..100 {
            let idle = Sample {
                in_flight: 1,
                ..sample(&core, Response::Success)
            };
            core.on_sample(idle);
        }
        assert_eq!(core.limit(), 8);
        core.on_sample(sample(&core, Response::Other));
        assert_eq!(core.limit(), 8);
        assert_eq!(Response::from_status(503, None), OVERLOAD);
        assert_eq!(Response::from_status(200, None), Response::Success);
        assert_eq!(Response::from_status(400, None), Response::Other);
    }

    #[test]
    fn a_slow_success_shrinks_and_retry_after_asks_for_a_capped_pause() {
        let mut core = AimdLimit::new(LimitConfig {
            initial: 10,
            slow_latency: Some(Duration::from_secs(5)),
            ..LimitConfig::new(32)
        });
        let slow = Sample {
            latency: Duration::from_secs(6),
            ..sample(&core, Response::Success)
        };
        assert_eq!(core.on_sample(slow), None);
        assert_eq!(core.limit(), 8);
        let asked = |secs| Response::Overload {
            retry_after: Some(Duration::from_secs(secs)),
        };
        let pause = core.on_sample(sample(&core, asked(2)));
        assert_eq!(pause, Some(Duration::from_secs(2)));
        let capped = core.on_sample(sample(&core, asked(3600)));
        assert_eq!(capped, Some(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_gateway_shrinks_the_limit_without_pausing_the_others() {
        let limiter = GatewayLimiter::new(LimitConfig {
            initial: 2,
            ..LimitConfig::new(8)
        });
        let (a, b) = (limiter.acquire().await, limiter.acquire().await);
        assert_eq!((limiter.in_flight(), a.waited()), (2, Duration::ZERO));
        let third = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await.waited() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "the limit is 2");
        a.record(Response::Overload {
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(limiter.limit(), 1);
        assert!(limiter.paused_until().is_none(), "refused beside another");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(b);
        let waited = third.await.unwrap();
        assert_eq!(waited, Duration::from_millis(200));
        assert_eq!((limiter.overloads(), limiter.in_flight()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_on_a_lone_request_pauses_every_new_one() {
        let limiter = GatewayLimiter::new(LimitConfig::new(8));
        let alone = limiter.acquire().await;
        alone.record(Response::Overload {
            retry_after: Some(Duration::from_secs(3)),
        });
        assert!(limiter.paused_until().is_some());
        assert_eq!(limiter.acquire().await.waited(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_cancelled_during_a_pause_gives_its_room_back() {
        let limiter = GatewayLimiter::new(LimitConfig {
            initial: 2,
            ..LimitConfig::new(8)
        });
        limiter.acquire().await.record(Response::Overload {
            retry_after: Some(Duration::from_secs(5)),
        });
        assert_eq!(limiter.limit(), 1);
        let cancelled = tokio::time::timeout(Duration::from_secs(1), limiter.acquire()).await;
        assert!(cancelled.is_err(), "paused for 5 s");
        let first = limiter.acquire().await;
        assert_eq!(first.waited(), Duration::from_secs(4));
        let second = tokio::time::timeout(Duration::from_secs(60), limiter.acquire()).await;
        assert!(second.is_err(), "the limit is 1");
        first.record(Response::Success);
        assert_eq!(limiter.acquire().await.waited(), Duration::ZERO);
        assert_eq!(limiter.in_flight(), 0);
    }

    /// A gateway that admits `capacity` requests at once and answers 429
    /// with `Retry-After: 1` beyond that; each answer takes 300 ms.
    struct SimGateway {
        capacity: usize,
        in_flight: AtomicUsize,
        requests: AtomicU64,
        refused: AtomicU64,
    }

    impl SimGateway {
        async fn request(&self) -> Response {
            self.requests.fetch_add(1, Ordering::SeqCst);
            if self.in_flight.fetch_add(1, Ordering::SeqCst) >= self.capacity {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.refused.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Response::Overload {
                    retry_after: Some(Duration::from_secs(1)),
                };
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Response::Success
        }
    }

    /// One request as the LLM client sends it: wait for room, send, and on
    /// an overload wait its `Retry-After` and try again. Returns the
    /// overloads it absorbed.
    async fn send(limiter: &GatewayLimiter, gateway: &SimGateway) -> u32 {
        let mut overloads = 0;
        loop {
            let permit = limiter.acquire().await;
            let response = gateway.request().await;
            permit.record(response);
            let Response::Overload { retry_after } = response else {
                return overloads;
            };
            overloads += 1;
            tokio::time::sleep(retry_after.unwrap_or_default()).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn converges_to_a_narrow_gateway_with_few_429s_and_no_lost_requests() {
        const RUNS: usize = 640;
        let gateway = Arc::new(SimGateway {
            capacity: 4,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let limiter = GatewayLimiter::new(LimitConfig::new(32));
        let started = Instant::now();
        let mut runs = tokio::task::JoinSet::new();
        // 32 runs at once (MANA_AI_MAX_CONCURRENT_RUNS), 20 requests each.
        for _ in 0..32 {
            let (gateway, limiter) = (gateway.clone(), limiter.clone());
            runs.spawn(async move {
                for _ in 0..RUNS / 32 {
                    assert!(send(&limiter, &gateway).await <= 5);
                }
            });
        }
        while let Some(run) = runs.join_next().await {
            run.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ideal = RUNS as f64 * 0.3 / 4.0;
        let refused = gateway.refused.load(Ordering::SeqCst);
        let requests = gateway.requests.load(Ordering::SeqCst);
        eprintln!(
            "elapsed {elapsed:.1} s (ideal {ideal:.1}), {refused} of {requests} refused, limit {}",
            limiter.limit()
        );
        assert_eq!(
            requests - refused,
            RUNS as u64,
            "every request answered once"
        );
        assert!(
            refused * 20 <= requests,
            "at most 5% refused: {refused} of {requests}"
        );
        assert!(
            elapsed <= ideal * 1.25,
            "{elapsed} s against ideal {ideal} s"
        );
        assert!((4..=5).contains(&limiter.limit()), "{}", limiter.limit());
    }
}

//! The LLM client's side of the adaptive limiter ([`crate::planner::limiter`]):
//! each request waits for room, reports how it went, and the metrics follow.

use std::future::Future;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::error::AttemptError;
use crate::planner::limiter::{GatewayLimiter, LimitConfig, Response};

/// Where the limiter's figures go.
#[derive(Debug, Clone)]
pub struct LimiterMetrics {
    /// `llm_concurrency_limit`: the current limit.
    pub limit: IntGauge,
    /// `llm_limiter_wait_seconds`: each request's wait for room.
    pub wait: Histogram,
    /// `llm_overloads_total`: answers 429 or 503.
    pub overloads: IntCounter,
}

impl LimiterMetrics {
    /// The limiter's figures in the process's registry.
    pub fn of(metrics: &crate::metrics::Metrics) -> LimiterMetrics {
        LimiterMetrics {
            limit: metrics.llm_concurrency_limit.clone(),
            wait: metrics.llm_limiter_wait.clone(),
            overloads: metrics.llm_overloads.clone(),
        }
    }
}

/// The limiter in front of the gateway, with its metrics.
#[derive(Debug)]
pub(super) struct Limited {
    pub limiter: GatewayLimiter,
    /// Overloads one call waits out before it counts one as a failed attempt.
    pub max_overloads: u32,
    metrics: Option<LimiterMetrics>,
}

impl Limited {
    pub fn new(config: LimitConfig, metrics: Option<LimiterMetrics>) -> Limited {
        let max_overloads = config.max_overloads;
        let limiter = GatewayLimiter::new(config);
        if let Some(m) = &metrics {
            m.limit.set(gauge(limiter.limit()));
        }
        Limited {
            limiter,
            max_overloads,
            metrics,
        }
    }

    /// Sends `attempt` once there is room, and tells the limiter how it went.
    pub async fn send<T, F>(&self, attempt: F) -> Result<T, AttemptError>
    where
        F: Future<Output = Result<T, AttemptError>>,
    {
        let permit = self.limiter.acquire().await;
        if let Some(m) = &self.metrics {
            m.wait.observe(permit.waited().as_secs_f64());
        }
        let result = attempt.await;
        let response = match &result {
            Ok(_) => Response::Success,
            Err(e) => e.response(),
        };
        permit.record(response);
        if let Some(m) = &self.metrics {
            if response.is_overload() {
                m.overloads.inc();
            }
            m.limit.set(gauge(self.limiter.limit()));
        }
        result
    }
}

fn gauge(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

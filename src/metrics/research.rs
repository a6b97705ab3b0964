//! The deep research job families (`run::deep`). Their one label,
//! `provider`, is the configured `MANA_AI_RESEARCH_PROVIDER` (a single
//! value, set at start by [`ResearchJobMetrics::start_provider`], which puts
//! its series at 0), never a value read from an answer.

use prometheus::{IntCounter, IntCounterVec, Registry};

/// `mana_ai_research_jobs_*`.
pub struct ResearchJobMetrics {
    /// Jobs mana-research accepted.
    pub submitted: IntCounterVec,
    /// Jobs first seen completed (their answer went to the planner).
    pub completed: IntCounterVec,
    /// Jobs that ended without an answer (failed, cancelled, unknown to
    /// mana-research, refused, pending too long) and submits refused.
    pub failed: IntCounterVec,
    /// Runs skipped because their mission's job was still pending.
    pub pending_skips: IntCounter,
}

/// Registers the families in `registry` (the `metrics!` table's constructor).
pub(super) fn research_jobs(registry: &Registry) -> ResearchJobMetrics {
    let by_provider =
        |name: &str, help: &str| super::counter_vec(registry, name, help, &["provider"]);
    ResearchJobMetrics {
        submitted: by_provider(
            "research_jobs_submitted_total",
            "Deep research jobs mana-research accepted, by provider",
        ),
        completed: by_provider(
            "research_jobs_completed_total",
            "Deep research jobs that completed (their answer went to the planner), by provider",
        ),
        failed: by_provider(
            "research_jobs_failed_total",
            "Deep research jobs that ended without an answer (failed, cancelled, 404/401 on poll, pending past MANA_AI_RESEARCH_JOB_MAX_HOURS) or whose submit failed, by provider; the run fell back to the news research",
        ),
        pending_skips: super::counter(
            registry,
            "research_jobs_pending_skips_total",
            "Runs not planned because the mission's deep research job was still pending (re-armed at MANA_AI_RESEARCH_POLL_SECS)",
        ),
    }
}

impl ResearchJobMetrics {
    /// Puts the provider's series at 0 (called at start with the configured one).
    pub fn start_provider(&self, provider: &str) {
        for family in [&self.submitted, &self.completed, &self.failed] {
            family.with_label_values(&[provider]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;

    #[test]
    fn the_families_are_present_once_the_provider_is_known() {
        let m = Metrics::new();
        m.research_jobs.start_provider("p1");
        let text = m.render();
        for line in [
            "mana_ai_research_jobs_submitted_total{provider=\"p1\"} 0",
            "mana_ai_research_jobs_completed_total{provider=\"p1\"} 0",
            "mana_ai_research_jobs_failed_total{provider=\"p1\"} 0",
            "mana_ai_research_jobs_pending_skips_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}

//! The planner's metric families (issue 19 item 5): tool calls by tool,
//! policy and outcome, rounds of a tool-calling plan, and the gateway's
//! errors by provider and kind. Every label is bounded: the tool to the
//! catalog in force (`other` otherwise), the rest to the lists below.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// `policy` of `tool_calls_total`: the agent's decision for the tool, or
/// `none` for a name that is no catalog tool.
pub const POLICIES: [&str; 4] = ["auto", "propose", "deny", "none"];
/// `outcome` of `tool_calls_total`.
pub const OUTCOMES: [&str; 3] = ["planned", "duplicate", "invalid"];
/// `provider` of `provider_errors_total`: mana-llm (its typed errors or its
/// resolved-model header), or any other OpenAI-compatible server.
pub const PROVIDERS: [&str; 2] = ["mana-llm", "openai-compatible"];
/// `kind` of `provider_errors_total`: mana-llm's kinds, `http` for an
/// error status without one, `transport` for no answer at all.
pub const KINDS: [&str; 9] = [
    "blocked",
    "truncated",
    "auth",
    "rate_limit",
    "capability",
    "no_healthy_provider",
    "unknown",
    "http",
    "transport",
];
/// The tool label of a name outside the catalog.
pub const OTHER_TOOL: &str = "other";

/// The planner's families; cheap to clone (the series are shared).
#[derive(Debug, Clone)]
pub struct PlannerMetrics {
    /// `tool_calls_total{tool,policy,outcome}`: each step or tool call the
    /// model proposed.
    pub tool_calls: IntCounterVec,
    /// `planner_rounds`: rounds of each tool-calling plan (1 to 5).
    pub rounds: Histogram,
    /// `provider_errors_total{provider,kind}`: failed LLM attempts.
    pub provider_errors: IntCounterVec,
}

/// Registers the families in `registry`, every known series at 0.
pub(super) fn planner_metrics(registry: &Registry) -> PlannerMetrics {
    let ns = |name: &str, help: &str| Opts::new(name, help).namespace(super::NAMESPACE);
    let tool_calls = IntCounterVec::new(
        ns("tool_calls_total", "Steps and tool calls the model proposed, by tool (catalog tools; others as other), the agent's policy for it and outcome (planned, duplicate, invalid)"),
        &["tool", "policy", "outcome"],
    )
    .expect("valid tool_calls_total");
    let rounds = Histogram::with_opts(
        HistogramOpts::new(
            "planner_rounds",
            "Rounds of each native tool-calling plan (at most MANA_AI_PLANNER_ROUNDS)",
        )
        .namespace(super::NAMESPACE)
        .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0]),
    )
    .expect("valid planner_rounds");
    let provider_errors = IntCounterVec::new(
        ns("provider_errors_total", "Failed LLM attempts by provider (mana-llm or openai-compatible) and kind (mana-llm's error kinds, http, transport)"),
        &["provider", "kind"],
    )
    .expect("valid provider_errors_total");
    for metric in [&tool_calls, &provider_errors] {
        registry
            .register(Box::new(metric.clone()))
            .expect("planner families register once");
    }
    registry
        .register(Box::new(rounds.clone()))
        .expect("planner_rounds registers once");
    for policy in POLICIES {
        for outcome in OUTCOMES {
            tool_calls
                .with_label_values(&[OTHER_TOOL, policy, outcome])
                .inc_by(0);
        }
    }
    for provider in PROVIDERS {
        for kind in KINDS {
            provider_errors
                .with_label_values(&[provider, kind])
                .inc_by(0);
        }
    }
    PlannerMetrics {
        tool_calls,
        rounds,
        provider_errors,
    }
}

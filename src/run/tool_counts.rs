//! `tool_calls_total{tool,policy,outcome}`: every call a tool-calling plan
//! judged, and every step of a plan that passed the parser. The tool label
//! is a catalog tool's name or `other` (a model's made-up name never becomes
//! a series); the policy is the agent's decision for that tool (`propose`
//! without an agent policy), `none` for a name outside the catalog.

use crate::metrics::planner::{PlannerMetrics, OTHER_TOOL};
use crate::planner::tool_calls::{CallOutcome, CallRecord};
use crate::planner::{AgentPolicy, Decision, PlannedIteration, ToolCatalog};

/// Where the counts go, and what bounds their labels.
pub(super) struct ToolCounts<'a> {
    pub metrics: &'a PlannerMetrics,
    pub catalog: &'a ToolCatalog,
    pub policy: Option<&'a AgentPolicy>,
}

impl ToolCounts<'_> {
    /// The judged calls of a tool-calling plan.
    pub fn calls(&self, calls: &[CallRecord]) {
        for call in calls {
            self.count(&call.name, call.outcome);
        }
    }

    /// The steps of a plan that passed the parser (JSON and text forms).
    pub fn steps(&self, plan: &PlannedIteration) {
        for step in &plan.steps {
            self.count(&step.tool_name, CallOutcome::Planned);
        }
    }

    fn count(&self, name: &str, outcome: CallOutcome) {
        let (tool, policy) = self.labels(name);
        self.metrics
            .tool_calls
            .with_label_values(&[tool, policy, outcome.as_str()])
            .inc();
    }

    /// The bounded `tool` and `policy` labels of a called name.
    fn labels<'n>(&'n self, name: &str) -> (&'n str, &'static str) {
        match self.catalog.get(name) {
            Some(tool) => {
                let decision = self
                    .policy
                    .map_or(Decision::Propose, |p| p.decision_for(tool));
                (tool.name.as_str(), decision.as_str())
            }
            None => (OTHER_TOOL, "none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_catalog_are_other_and_policies_follow_the_agent() {
        let metrics = crate::metrics::Metrics::new();
        let catalog = ToolCatalog::builtin();
        let policy = AgentPolicy::from_record(Some(&serde_json::json!({
            "tools": {"create_note": "auto", "create_task": "deny"}, "defaultForAi": "propose"
        })))
        .unwrap()
        .unwrap();
        let counts = ToolCounts {
            metrics: &metrics.planner,
            catalog: &catalog,
            policy: Some(&policy),
        };
        assert_eq!(counts.labels("create_note"), ("create_note", "auto"));
        assert_eq!(counts.labels("create_task"), ("create_task", "deny"));
        assert_eq!(counts.labels("launch_rocket"), ("other", "none"));
        let calls = [CallRecord {
            name: "launch_rocket".into(),
            outcome: CallOutcome::Invalid,
        }];
        counts.calls(&calls);
        let counter = metrics
            .planner
            .tool_calls
            .with_label_values(&["other", "none", "invalid"]);
        assert_eq!(counter.get(), 1);
    }
}

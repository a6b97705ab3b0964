//! Agent tool policy (contract section 6): which tools the planner may see.
//!
//! A tool's decision is `tools[name]`, else `defaultsByModule[module]`, else
//! `defaultForAi`; `deny` removes the tool from the prompt. `auto` and
//! `propose` both stay visible: the difference matters only to the webapp,
//! which executes or stages the proposal.
//!
//! The policy is a field of a browser-written record, so it may be anything.
//! A policy that is not of the documented shape is ignored as a whole (the
//! caller logs the reason and plans without it) rather than half-applied:
//! guessing which half the user meant is worse than the documented default.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::tools::{ToolCatalog, ToolSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Auto,
    /// Every catalog tool defaults to `propose` in the webapp.
    #[default]
    Propose,
    Deny,
}

impl Decision {
    /// Accepts the three documented words, ignoring case and surrounding
    /// blanks (a hand-edited record should not lose its policy over "Deny").
    fn parse(value: &Value) -> Option<Decision> {
        let word = value.as_str()?.trim();
        [Decision::Auto, Decision::Propose, Decision::Deny]
            .into_iter()
            .find(|d| word.eq_ignore_ascii_case(d.as_str()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Auto => "auto",
            Decision::Propose => "propose",
            Decision::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentPolicy {
    /// Per-tool decisions; the most specific rule.
    pub tools: HashMap<String, Decision>,
    /// Per-module decisions, consulted when a tool has no entry of its own.
    pub defaults_by_module: Option<HashMap<String, Decision>>,
    /// The fallback for everything else.
    pub default_for_ai: Decision,
}

/// Why an agent's `policy` field was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not a JSON object")]
    NotAnObject,
    #[error("policy.defaultForAi is missing or not one of auto|propose|deny")]
    BadDefault,
    #[error("policy.{0} is not an object")]
    MapNotObject(&'static str),
    #[error("policy.{map}[{key:?}] is not one of auto|propose|deny")]
    BadDecision { map: &'static str, key: String },
}

impl AgentPolicy {
    /// Reads the agent record's `policy` field. `None` and JSON `null` mean
    /// "no policy" (`Ok(None)`). On `Err` the caller treats the policy as
    /// absent and logs the reason; it must never fail the run.
    pub fn from_record(value: Option<&Value>) -> Result<Option<AgentPolicy>, PolicyError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => AgentPolicy::parse(v).map(Some),
        }
    }

    /// Strict parse of `{tools, defaultsByModule?, defaultForAi}`. A missing
    /// `tools` is read as `{}`: it adds no rule, so nothing is guessed.
    pub fn parse(value: &Value) -> Result<AgentPolicy, PolicyError> {
        let obj = value.as_object().ok_or(PolicyError::NotAnObject)?;
        let default_for_ai = obj
            .get("defaultForAi")
            .and_then(Decision::parse)
            .ok_or(PolicyError::BadDefault)?;
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => HashMap::new(),
            Some(v) => decision_map("tools", v)?,
        };
        let defaults_by_module = match obj.get("defaultsByModule") {
            None | Some(Value::Null) => None,
            Some(v) => Some(decision_map("defaultsByModule", v)?),
        };
        Ok(AgentPolicy {
            tools,
            defaults_by_module,
            default_for_ai,
        })
    }

    pub fn decision_for(&self, tool: &ToolSpec) -> Decision {
        if let Some(d) = self.tools.get(&tool.name) {
            return *d;
        }
        let by_module = self.defaults_by_module.as_ref();
        by_module
            .and_then(|m| m.get(&tool.module))
            .copied()
            .unwrap_or(self.default_for_ai)
    }
}

fn decision_map(
    map: &'static str,
    value: &Value,
) -> Result<HashMap<String, Decision>, PolicyError> {
    let obj: &Map<String, Value> = value.as_object().ok_or(PolicyError::MapNotObject(map))?;
    obj.iter()
        .map(|(key, v)| match Decision::parse(v) {
            Some(d) => Ok((key.clone(), d)),
            None => Err(PolicyError::BadDecision {
                map,
                key: key.clone(),
            }),
        })
        .collect()
}

/// The tools the planner may see: the catalog minus what the policy denies.
/// Without a policy every tool is visible (all catalog tools are `propose`).
pub fn filter_tools<'c>(
    catalog: &'c ToolCatalog,
    policy: Option<&AgentPolicy>,
) -> Vec<&'c ToolSpec> {
    let visible = |t: &&ToolSpec| match policy {
        None => true,
        Some(p) => p.decision_for(t) != Decision::Deny,
    };
    catalog.tools().iter().filter(visible).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, module: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            module: module.into(),
            description: "d".into(),
            parameters: vec![],
        }
    }

    #[test]
    fn tool_beats_module_beats_default() {
        let policy = AgentPolicy::parse(&json!({
            "tools": {"create_note": "auto", "create_task": "deny"},
            "defaultsByModule": {"notes": "deny", "todo": "auto"},
            "defaultForAi": "propose"
        }))
        .unwrap();
        assert_eq!(
            policy.decision_for(&tool("create_note", "notes")),
            Decision::Auto
        );
        assert_eq!(
            policy.decision_for(&tool("update_note", "notes")),
            Decision::Deny
        );
        assert_eq!(
            policy.decision_for(&tool("create_task", "todo")),
            Decision::Deny
        );
        assert_eq!(
            policy.decision_for(&tool("complete_task", "todo")),
            Decision::Auto
        );
        assert_eq!(
            policy.decision_for(&tool("log_mood", "mood")),
            Decision::Propose
        );
    }

    #[test]
    fn without_module_defaults_the_fallback_decides() {
        let policy = AgentPolicy::parse(&json!({"tools": {}, "defaultForAi": "Deny "})).unwrap();
        assert_eq!(policy.defaults_by_module, None);
        assert_eq!(policy.decision_for(&tool("x", "m")), Decision::Deny);
    }

    #[test]
    fn absent_policy_is_none_and_malformed_policy_has_a_reason() {
        assert_eq!(AgentPolicy::from_record(None), Ok(None));
        assert_eq!(AgentPolicy::from_record(Some(&Value::Null)), Ok(None));
        let cases = [
            (json!("deny"), PolicyError::NotAnObject),
            (json!({"tools": {}}), PolicyError::BadDefault),
            (json!({"defaultForAi": "maybe"}), PolicyError::BadDefault),
            (
                json!({"defaultForAi": "auto", "tools": []}),
                PolicyError::MapNotObject("tools"),
            ),
            (
                json!({"defaultForAi": "auto", "defaultsByModule": {"notes": 1}}),
                PolicyError::BadDecision {
                    map: "defaultsByModule",
                    key: "notes".into(),
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                AgentPolicy::from_record(Some(&value)),
                Err(expected),
                "{value}"
            );
        }
        let err = AgentPolicy::parse(&json!({"defaultForAi": "auto", "tools": {"a": "ask"}}));
        assert_eq!(
            err.unwrap_err().to_string(),
            "policy.tools[\"a\"] is not one of auto|propose|deny"
        );
    }

    #[test]
    fn deny_is_filtered_and_no_policy_keeps_everything() {
        let catalog = ToolCatalog::builtin();
        assert_eq!(filter_tools(&catalog, None).len(), catalog.len());
        let policy = AgentPolicy::parse(&json!({
            "tools": {"create_note": "propose"},
            "defaultsByModule": {"notes": "deny"},
            "defaultForAi": "auto"
        }))
        .unwrap();
        let names: Vec<_> = filter_tools(&catalog, Some(&policy))
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert!(names.contains(&"create_note"));
        assert!(!names.contains(&"update_note"));
        assert!(!names.contains(&"append_to_note"));
        assert_eq!(names.len(), catalog.len() - 3);
    }
}

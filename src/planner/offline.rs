//! The offline planner: what the demo (`mana-ai-demo`) uses when no LLM is configured.
//! It answers in the planner wire format with one plain, honest step, so the
//! whole run (parse, write-back, cadence) is exercised without a model.

use serde_json::json;

use super::{MissionView, ToolSpec};

/// A fenced JSON plan: one step with the first suitable allowed tool.
pub fn offline_answer(mission: &MissionView<'_>, tools: &[&ToolSpec]) -> String {
    let title = if mission.title.is_empty() {
        "Mission"
    } else {
        mission.title
    };
    let step = if tools.iter().any(|t| t.name == "create_note") {
        Some(json!({
            "summary": format!("Notiz zu „{title}“ anlegen"),
            "toolName": "create_note",
            "params": {"title": format!("{title}: nächster Schritt"), "content": format!("Ziel: {}", mission.objective)},
            "rationale": "Offline-Planer (kein LLM konfiguriert): hält das Ziel der Mission als Notiz fest.",
        }))
    } else if tools.iter().any(|t| t.name == "create_task") {
        Some(json!({
            "summary": format!("Aufgabe zu „{title}“ anlegen"),
            "toolName": "create_task",
            "params": {"title": format!("{title}: nächster Schritt")},
            "rationale": "Offline-Planer (kein LLM konfiguriert): macht aus dem Ziel eine Aufgabe.",
        }))
    } else {
        None
    };
    let plan = json!({
        "summary": "Offline-Planer: kein LLM konfiguriert, dies ist ein fester Beispielplan.",
        "steps": step.into_iter().collect::<Vec<_>>(),
    });
    format!("```json\n{plan:#}\n```")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{parse_plan, AnswerShape, ToolCatalog};

    #[test]
    fn the_offline_answer_passes_the_strict_parser() {
        let catalog = ToolCatalog::builtin();
        let tools: Vec<&ToolSpec> = catalog.tools().iter().collect();
        let mission = MissionView {
            title: "Lesen",
            objective: "Mehr lesen",
            ..Default::default()
        };
        let answer = offline_answer(&mission, &tools);
        let plan = parse_plan(&answer, AnswerShape::FreeText, |n| catalog.get(n)).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].tool_name, "create_note");
        assert!(plan.summary.contains("Offline"));
    }
}

//! The user message: the mission, its inputs, its history.

use std::fmt::Write;

use super::super::history::render_history;
use super::super::text::clip;
use super::{
    Prompt, PromptInput, ResolvedInput, MAX_CONCEPT_CHARS, MAX_INPUTS_TOTAL_CHARS, MAX_INPUT_CHARS,
    MAX_NAME_CHARS, MAX_OBJECTIVE_CHARS,
};

/// The mission, its inputs and history; the closing line asks for the
/// answer in a JSON block (see [`Prompt::user_for_tools`] for the other).
pub(super) fn user_message(input: &PromptInput<'_>) -> String {
    let mission = &input.mission;
    let mut out = String::with_capacity(16 * 1024);
    let _ = writeln!(
        out,
        "# Mission: {}\n",
        or_none(&clip(mission.title, MAX_NAME_CHARS))
    );
    let _ = writeln!(
        out,
        "## Konzept\n{}\n",
        or_none(&clip(mission.concept, MAX_CONCEPT_CHARS))
    );
    let _ = writeln!(
        out,
        "## Ziel\n{}\n",
        or_none(&clip(mission.objective, MAX_OBJECTIVE_CHARS))
    );
    out.push_str("## Eingaben\n");
    render_inputs(&mut out, input.inputs);
    out.push_str("## Bisherige Iterationen (die letzten drei, älteste zuerst)\n");
    render_history(&mut out, mission.iterations, mission.iteration_count);
    out.push_str(CLOSING_JSON);
    out
}

/// The user message's last line, for answers in JSON.
const CLOSING_JSON: &str =
    "Plane jetzt die nächste Iteration und antworte nur mit dem json-Codeblock.\n";
/// The user message's last line, for native tool calling.
const CLOSING_TOOLS: &str = "Plane jetzt die nächste Iteration: rufe für jeden Schritt ein \
Werkzeug auf und antworte zum Schluss ohne Werkzeugaufruf mit einer kurzen Zusammenfassung.\n";

impl Prompt {
    /// The user message for native tool calling: the same mission, asked
    /// for tool calls instead of a JSON block.
    pub fn user_for_tools(&self) -> String {
        let body = self.user.strip_suffix(CLOSING_JSON).unwrap_or(&self.user);
        format!("{body}{CLOSING_TOOLS}")
    }
}

fn render_inputs(out: &mut String, inputs: &[ResolvedInput]) {
    if inputs.is_empty() {
        out.push_str("(keine)\n\n");
        return;
    }
    let mut budget = MAX_INPUTS_TOTAL_CHARS;
    for input in inputs {
        let module = clip(&input.module, MAX_NAME_CHARS);
        let table = clip(&input.table, MAX_NAME_CHARS);
        let title = clip(&input.title, MAX_NAME_CHARS);
        let _ = writeln!(out, "### {module}/{table}: {}", or_none(&title));
        if budget == 0 {
            out.push_str("(ausgelassen: die Eingaben sind insgesamt zu umfangreich)\n\n");
            continue;
        }
        let content = clip(&input.content, MAX_INPUT_CHARS.min(budget));
        budget = budget.saturating_sub(content.chars().count());
        let content = if content.trim().is_empty() {
            "(leer)"
        } else {
            &content
        };
        let _ = writeln!(out, "{content}\n");
    }
}

fn or_none(s: &str) -> &str {
    if s.trim().is_empty() {
        "(keine Angabe)"
    } else {
        s
    }
}

//! The "earlier iterations" section of the user message.
//!
//! Iterations are MissionIteration JSON written by browsers and by older
//! runners (contract section 3), so every field is read defensively: a
//! missing field drops its line, a wrong type reads as missing, and nothing
//! here can panic. Only the last [`MAX_ITERATIONS`] are shown: enough for the
//! model to see what the user accepted, rejected and said, without the
//! history of a year-old mission flooding the context.

use std::fmt::Write;

use serde_json::Value;

use super::text::clip;

/// How many of the newest iterations the model sees.
pub const MAX_ITERATIONS: usize = 3;
/// Steps listed per iteration; the planner proposes at most 5, so more
/// means a foreign writer and the rest is only counted.
pub const MAX_STEPS_SHOWN: usize = 10;
/// The user's feedback is the most important text here; it gets the most room.
pub const MAX_FEEDBACK_CHARS: usize = 1_000;
/// Iteration summary, error message, step summary, note body.
pub const MAX_ITERATION_TEXT_CHARS: usize = 400;
/// A step's params as compact JSON: enough to recognise a repeated proposal.
pub const MAX_PARAMS_CHARS: usize = 300;
/// Short codes: timestamps, statuses, tool names.
const MAX_CODE_CHARS: usize = 60;

/// Appends the last three iterations (oldest first) to `out`; `iterations`
/// are the last of a history of `total` (at least `iterations.len()`).
pub fn render_history(out: &mut String, iterations: &[Value], total: usize) {
    let shown = iterations.len();
    let total = total.max(shown);
    if shown == 0 {
        out.push_str("Noch keine Iterationen: dies ist der erste Lauf der Mission.\n");
        return;
    }
    let first = shown.saturating_sub(MAX_ITERATIONS);
    let skipped = total - shown;
    for (offset, iteration) in iterations[first..].iter().enumerate() {
        render_iteration(out, skipped + first + offset + 1, total, iteration);
    }
}

fn render_iteration(out: &mut String, number: usize, total: usize, iteration: &Value) {
    let _ = write!(out, "### Iteration {number} von {total}");
    if !iteration.is_object() {
        out.push_str(" (unlesbar)\n\n");
        return;
    }
    if let Some(started) = text(iteration, "startedAt") {
        let _ = write!(out, ", begonnen {}", clip(started, MAX_CODE_CHARS));
    }
    let status = text(iteration, "overallStatus").map_or("unbekannt".into(), overall_label);
    let _ = writeln!(out, ", Status: {status}");
    if let Some(summary) = text(iteration, "summary") {
        let _ = writeln!(
            out,
            "Zusammenfassung: {}",
            clip(summary, MAX_ITERATION_TEXT_CHARS)
        );
    }
    if let Some(steps) = iteration.get("plan").and_then(Value::as_array) {
        render_steps(out, steps);
    }
    match text(iteration, "userFeedback") {
        Some(feedback) => {
            let _ = writeln!(
                out,
                "Feedback des Nutzers: {}",
                clip(feedback, MAX_FEEDBACK_CHARS)
            );
        }
        None => out.push_str("Feedback des Nutzers: keines\n"),
    }
    let error = iteration
        .get("errorDetails")
        .and_then(|e| text(e, "message"));
    if let Some(message) = error {
        let _ = writeln!(out, "Fehler: {}", clip(message, MAX_ITERATION_TEXT_CHARS));
    }
    out.push('\n');
}

fn render_steps(out: &mut String, steps: &[Value]) {
    if steps.is_empty() {
        out.push_str("Schritte: keine\n");
        return;
    }
    out.push_str("Schritte:\n");
    for (i, step) in steps.iter().take(MAX_STEPS_SHOWN).enumerate() {
        let _ = write!(out, "{}. ", i + 1);
        if !step.is_object() {
            out.push_str("(unlesbar)\n");
            continue;
        }
        let status = text(step, "status").map_or("unbekannt".into(), step_label);
        let _ = write!(out, "[{status}] ");
        render_intent(out, step.get("intent"));
        if let Some(summary) = text(step, "summary") {
            let _ = write!(out, " – {}", clip(summary, MAX_ITERATION_TEXT_CHARS));
        }
        out.push('\n');
    }
    if steps.len() > MAX_STEPS_SHOWN {
        let _ = writeln!(
            out,
            "… und {} weitere Schritte",
            steps.len() - MAX_STEPS_SHOWN
        );
    }
}

fn render_intent(out: &mut String, intent: Option<&Value>) {
    let Some(intent) = intent else {
        out.push_str("(ohne Aktion)");
        return;
    };
    match text(intent, "kind") {
        Some("toolCall") => {
            let tool = text(intent, "toolName").unwrap_or("?");
            let _ = write!(out, "{}", clip(tool, MAX_CODE_CHARS));
            if let Some(params) = intent.get("params").filter(|p| p.is_object()) {
                let json = params.to_string();
                let _ = write!(out, " {}", clip(&json, MAX_PARAMS_CHARS));
            }
        }
        Some("note") => {
            let body = text(intent, "body").unwrap_or("");
            let _ = write!(out, "Notiz: {}", clip(body, MAX_ITERATION_TEXT_CHARS));
        }
        _ => out.push_str("(unbekannte Aktion)"),
    }
}

/// A non-blank string field, or `None` for missing, blank or non-string.
fn text<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    let s = value.get(key)?.as_str()?;
    (!s.trim().is_empty()).then_some(s)
}

fn overall_label(status: &str) -> String {
    let label = match status {
        "running" => "läuft",
        "awaiting-review" => "wartet auf Prüfung",
        "approved" => "angenommen",
        "rejected" => "abgelehnt",
        "failed" => "fehlgeschlagen",
        other => return clip(other, MAX_CODE_CHARS).into_owned(),
    };
    label.to_owned()
}

fn step_label(status: &str) -> String {
    let label = match status {
        "planned" => "geplant",
        "staged" => "vorgemerkt",
        "approved" => "angenommen",
        "rejected" => "abgelehnt",
        "skipped" => "übersprungen",
        "failed" => "fehlgeschlagen",
        other => return clip(other, MAX_CODE_CHARS).into_owned(),
    };
    label.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(iterations: &[Value]) -> String {
        let mut out = String::new();
        render_history(&mut out, iterations, iterations.len());
        out
    }

    #[test]
    fn the_last_three_of_a_long_history_are_numbered_in_it() {
        let last: Vec<Value> = (8..=10).map(iteration).collect();
        let mut out = String::new();
        render_history(&mut out, &last, 10);
        for n in 8..=10 {
            assert!(out.contains(&format!("### Iteration {n} von 10")), "{out}");
        }
        assert!(!out.contains("Iteration 1 von"), "{out}");
    }

    fn iteration(n: usize) -> Value {
        json!({
            "id": format!("it-{n}"),
            "startedAt": "2025-01-01T08:00:00.000Z",
            "overallStatus": "rejected",
            "summary": format!("Plan {n}"),
            "userFeedback": format!("Feedback {n}"),
            "plan": [
                {"id": "s1", "summary": "Aufgabe anlegen", "status": "rejected",
                 "intent": {"kind": "toolCall", "toolName": "create_task", "params": {"title": "Milch"}}},
                {"id": "s2", "summary": "Merken", "status": "approved",
                 "intent": {"kind": "note", "body": "Nur ein Hinweis"}}
            ]
        })
    }

    #[test]
    fn only_the_last_three_iterations_are_shown() {
        let all: Vec<_> = (1..=5).map(iteration).collect();
        let out = render(&all);
        assert!(!out.contains("Plan 1") && !out.contains("Plan 2"), "{out}");
        for n in 3..=5 {
            assert!(out.contains(&format!("### Iteration {n} von 5")), "{out}");
            assert!(
                out.contains(&format!("Feedback des Nutzers: Feedback {n}")),
                "{out}"
            );
        }
        assert!(out.contains("Status: abgelehnt"));
        assert!(
            out.contains("1. [abgelehnt] create_task {\"title\":\"Milch\"} – Aufgabe anlegen"),
            "{out}"
        );
        assert!(
            out.contains("2. [angenommen] Notiz: Nur ein Hinweis – Merken"),
            "{out}"
        );
    }

    #[test]
    fn malformed_iterations_do_not_panic() {
        let odd = vec![
            json!(42),
            json!({"plan": "nope", "overallStatus": 7, "userFeedback": ["x"]}),
            json!({"plan": [null, {"intent": {"kind": "toolCall", "params": [1]}}, {"intent": 3}],
                   "errorDetails": {"message": "LLM timeout"}, "overallStatus": "failed"}),
        ];
        let out = render(&odd);
        assert!(out.contains("### Iteration 1 von 3 (unlesbar)"), "{out}");
        assert!(out.contains("Status: unbekannt"), "{out}");
        assert!(out.contains("1. (unlesbar)"), "{out}");
        assert!(out.contains("2. [unbekannt] ?"), "{out}");
        assert!(out.contains("3. [unbekannt] (unbekannte Aktion)"), "{out}");
        assert!(out.contains("Fehler: LLM timeout"), "{out}");
        assert!(out.contains("Feedback des Nutzers: keines"), "{out}");
    }

    #[test]
    fn no_iterations_says_first_run() {
        assert!(render(&[]).contains("erste Lauf"));
    }

    #[test]
    fn long_plans_and_feedback_are_capped() {
        let steps: Vec<_> = (0..25).map(|_| json!({"status": "planned"})).collect();
        let it = json!({"plan": steps, "userFeedback": "f".repeat(5_000)});
        let out = render(&[it]);
        assert!(out.contains("… und 15 weitere Schritte"), "{out}");
        assert!(out.len() < 3_000, "{}", out.len());
    }
}

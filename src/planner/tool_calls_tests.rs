use super::*;
use crate::planner::tools::{BuiltinCatalog, ToolCatalog};

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn the_tools_array_lists_the_allowed_tools_with_a_rationale() {
    let catalog = ToolCatalog::builtin_named(BuiltinCatalog::Current);
    let allowed = ["create_invoice", "create_task"].map(|n| catalog.get(n).unwrap());
    let tools = tools_array(&allowed, 4000);
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["create_invoice", "create_task"]);
    let invoice = &tools[0]["function"]["parameters"];
    assert_eq!(invoice["properties"]["lines"]["type"], "array");
    assert!(invoice["properties"]["lines"]["description"].is_string());
    assert_eq!(invoice["properties"]["rationale"]["minLength"], 1);
    assert_eq!(
        invoice["required"],
        json!(["clientName", "lines", "rationale"])
    );
    assert_eq!(tools[1]["type"], "function");
}

#[test]
fn calls_are_checked_against_the_allowed_set_and_the_parameters() {
    let catalog = ToolCatalog::builtin();
    let allowed = [catalog.get("create_task").unwrap()];
    let step = check_call(
        &call("1", "create_task", r#"{"title": "A", "rationale": " r "}"#),
        &allowed,
    )
    .unwrap();
    assert_eq!((step.rationale.as_str(), step.params.len()), ("r", 1));
    let problem =
        |name: &str, args: &str| check_call(&call("1", name, args), &allowed).unwrap_err();
    assert_eq!(
        problem("create_note", r#"{"rationale": "r"}"#),
        CallProblem::UnknownTool
    );
    assert_eq!(problem("create_task", "[1]"), CallProblem::NotAnObject);
    assert_eq!(problem("create_task", "{"), CallProblem::NotAnObject);
    assert_eq!(
        problem("create_task", r#"{"title": "A"}"#),
        CallProblem::NoRationale
    );
    assert!(matches!(
        problem("create_task", r#"{"rationale": "r"}"#),
        CallProblem::Param(ParamProblem::Missing { .. })
    ));
    let deep = format!(
        "{{\"title\": \"A\", \"rationale\": \"r\", \"x\": {}1{}}}",
        "[".repeat(20),
        "]".repeat(20)
    );
    assert_eq!(problem("create_task", &deep), CallProblem::TooDeep);
}

#[test]
fn rounds_collect_steps_answer_every_call_and_collapse_repeats() {
    let catalog = ToolCatalog::builtin();
    let allowed: Vec<&ToolSpec> = catalog.tools().iter().collect();
    let mut plan = ToolPlan::default();
    let task = r#"{"title": "A", "rationale": "r"}"#;
    let replies = plan.take_round(
        &[
            call("a", "create_task", task),
            call("b", "nope", "{}"),
            call("c", "create_task", task),
        ],
        &allowed,
    );
    let ids: Vec<&str> = replies
        .iter()
        .map(|r| r["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(replies[0]["content"]
        .as_str()
        .unwrap()
        .contains("vorgemerkt"));
    assert!(replies[1]["content"]
        .as_str()
        .unwrap()
        .starts_with("Fehler"));
    let outcomes: Vec<CallOutcome> = plan.calls.iter().map(|c| c.outcome).collect();
    assert_eq!(
        outcomes,
        [
            CallOutcome::Planned,
            CallOutcome::Invalid,
            CallOutcome::Duplicate
        ]
    );
    for n in 0..6 {
        let args = format!(r#"{{"title": "T{n}", "rationale": "r"}}"#);
        plan.take_round(&[call("x", "create_task", &args)], &allowed);
    }
    assert!(plan.is_full());
    assert_eq!(plan.calls.last().unwrap().outcome, CallOutcome::Invalid);
    let done = plan.finish("  Fertig.  ");
    assert_eq!((done.steps.len(), done.duplicates_dropped), (MAX_STEPS, 1));
    assert_eq!(done.summary, "Fertig.");
}

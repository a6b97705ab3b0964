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
    assert_eq!(invoice["properties"]["lines"]["items"], json!({}));
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
    // Cut short: an opening brace and nothing else.
    assert_eq!(problem("create_task", "\u{7b}"), CallProblem::NotAnObject);
    assert_eq!(
        problem("create_task", r#"{"title": "A"}"#),
        CallProblem::NoRationale
    );
    assert!(matches!(
        problem("create_task", r#"{"rationale": "r"}"#),
        CallProblem::Param(ParamProblem::Missing { .. })
    ));
    let nested = (0..20).fold(json!(1), |inner, _| json!([inner]));
    let deep = json!({"title": "A", "rationale": "r", "x": nested}).to_string();
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

mod invariants {
    use super::*;
    use proptest::prelude::*;

    fn arb_call() -> impl Strategy<Value = ToolCall> {
        let names = prop::sample::select(vec![
            "create_task",
            "create_note",
            "nope",
            "add_tag_to_note",
        ]);
        let args = prop::sample::select(vec![
            r#"{"title": "A", "rationale": "r"}"#,
            r#"{"title": "B", "rationale": "r"}"#,
            r#"{"content": "C", "rationale": "r"}"#,
            r#"{"noteId": "n", "tag": "t", "rationale": "r"}"#,
            r#"{"title": "A"}"#,
            "not json",
            "",
        ]);
        ("[a-z]{1,4}", names, args).prop_map(|(id, name, args)| ToolCall {
            id,
            name: name.to_string(),
            arguments: args.to_string(),
        })
    }

    proptest! {
        /// Whatever the model calls over whatever rounds: every call gets one
        /// answer with its id, the plan has at most five steps, no two steps
        /// are the same call, and every step's tool was allowed.
        #[test]
        fn rounds_answer_every_call_and_keep_the_plan_bounded(
            rounds in prop::collection::vec(prop::collection::vec(arb_call(), 0..6), 1..6)
        ) {
            let catalog = ToolCatalog::builtin();
            let allowed: Vec<&ToolSpec> = ["create_task", "create_note"]
                .iter()
                .map(|n| catalog.get(n).unwrap())
                .collect();
            let mut plan = ToolPlan::default();
            let mut calls = 0;
            for round in &rounds {
                let replies = plan.take_round(round, &allowed);
                prop_assert_eq!(replies.len(), round.len());
                for (reply, call) in replies.iter().zip(round) {
                    prop_assert_eq!(reply["tool_call_id"].as_str(), Some(call.id.as_str()));
                    prop_assert_eq!(&reply["role"], "tool");
                }
                calls += round.len();
            }
            prop_assert_eq!(plan.calls.len(), calls);
            let done = plan.finish("");
            prop_assert!(done.steps.len() <= MAX_STEPS);
            for (i, a) in done.steps.iter().enumerate() {
                prop_assert!(allowed.iter().any(|t| t.name == a.tool_name));
                prop_assert!(!a.rationale.is_empty());
                prop_assert!(done.steps[i + 1..].iter().all(|b| !a.same_call(b)));
            }
        }
    }
}

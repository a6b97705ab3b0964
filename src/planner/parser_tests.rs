use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn allowed() -> HashSet<String> {
    ["create_task", "create_note"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn parse_as(text: &str, shape: AnswerShape) -> Result<PlannedIteration, ParseError> {
    let allowed = allowed();
    let catalog = crate::planner::ToolCatalog::builtin();
    parse_plan(text, shape, |name| {
        catalog.get(name).filter(|_| allowed.contains(name))
    })
}

fn parse(text: &str) -> Result<PlannedIteration, ParseError> {
    parse_as(text, AnswerShape::FreeText)
}

fn parse_json(text: &str) -> Result<PlannedIteration, ParseError> {
    parse_as(text, AnswerShape::Json)
}

#[test]
fn declared_parameters_of_the_wrong_type_are_a_parse_failure() {
    let current =
        crate::planner::ToolCatalog::builtin_named(crate::planner::BuiltinCatalog::Current);
    let plan = |lines: &str| {
        format!(
            r#"{{"steps": [{{"toolName": "create_invoice", "params": {{"clientName": "Ada", "lines": {lines}}}, "rationale": "r"}}]}}"#
        )
    };
    let parse = |text: &str| parse_plan(text, AnswerShape::Json, |n| current.get(n));
    let ok = parse(&plan(r#"[{"description": "Beratung", "quantity": 1}]"#)).unwrap();
    assert_eq!(ok.steps[0].params["lines"][0]["quantity"], 1);
    let e = parse(&plan(r#""eine Position""#)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "steps[0]: parameter `lines` is not of type array"
    );
    let e = parse_json(r#"{"steps": [{"toolName": "create_task", "params": {"priority": "sofort"}, "rationale": "r"}]}"#)
        .unwrap_err();
    assert!(
        matches!(e, ParseError::BadParam(0, ParamProblem::NotInEnum { .. })),
        "{e}"
    );
}

const PLAN: &str = r#"{"summary": "Woche planen", "steps": [
  {"summary": "Laufen", "toolName": "create_task", "params": {"title": "Laufen gehen"},
   "rationale": "  Bewegung steht im Ziel.  "},
  {"toolName": "create_note", "rationale": "Festhalten"}
]}"#;

fn expected() -> PlannedIteration {
    let params = json!({"title": "Laufen gehen"})
        .as_object()
        .unwrap()
        .clone();
    PlannedIteration {
        duplicates_dropped: 0,
        summary: "Woche planen".into(),
        steps: vec![
            PlannedStep {
                summary: "Laufen".into(),
                tool_name: "create_task".into(),
                params,
                rationale: "Bewegung steht im Ziel.".into(),
            },
            PlannedStep {
                summary: String::new(),
                tool_name: "create_note".into(),
                params: Map::new(),
                rationale: "Festhalten".into(),
            },
        ],
    }
}

#[test]
fn json_fence_bare_fence_and_bare_object_parse_alike() {
    for text in [
        format!("```json\n{PLAN}\n```"),
        format!("```JSON\n{PLAN}\n```"),
        format!("```\n{PLAN}\n```"),
        format!("```json {PLAN} ```"),
        format!("\n  {PLAN}  \n"),
    ] {
        assert_eq!(parse(&text), Ok(expected()), "{text}");
    }
}

#[test]
fn prose_around_the_fence_is_ignored() {
    let text = format!("Hier ist mein Plan:\n\n```json\n{PLAN}\n```\n\nViel Erfolg!");
    assert_eq!(parse(&text), Ok(expected()));
    // Only the first json block counts; other languages are skipped.
    let text = format!("```text\nBeispiel\n```\n```json\n{PLAN}\n```\n```json\n{{}}\n```");
    assert_eq!(parse(&text), Ok(expected()));
}

#[test]
fn an_empty_plan_is_allowed() {
    let plan = parse(r#"{"steps": []}"#).unwrap();
    assert_eq!(plan.summary, "");
    assert!(plan.steps.is_empty());
}

fn plan_with_step(step: Value) -> String {
    format!("```json\n{}\n```", json!({"summary": "s", "steps": [step]}))
}

#[test]
fn step_errors_name_the_step_and_the_reason() {
    let step = |v: Value| parse(&plan_with_step(v)).unwrap_err();
    assert_eq!(step(json!(3)), ParseError::StepNotObject(0));
    assert_eq!(
        step(json!({"rationale": "r"})),
        ParseError::MissingToolName(0)
    );
    let unknown = step(json!({"toolName": "delete_everything", "rationale": "r"}));
    assert_eq!(unknown, ParseError::UnknownTool(0));
    assert_eq!(
        unknown.to_string(),
        "steps[0] names a tool that is not available"
    );
    assert_eq!(
        step(json!({"toolName": "create_task"})),
        ParseError::MissingRationale(0)
    );
    assert_eq!(
        step(json!({"toolName": "create_task", "rationale": "  "})),
        ParseError::MissingRationale(0)
    );
    assert_eq!(
        step(json!({"toolName": "create_task", "rationale": 1})),
        ParseError::MissingRationale(0)
    );
    let params = json!({"toolName": "create_task", "rationale": "r", "params": "title=x"});
    assert_eq!(step(params), ParseError::ParamsNotObject(0));
    let summary = json!({"toolName": "create_task", "rationale": "r", "summary": ["x"]});
    assert_eq!(step(summary), ParseError::StepSummaryNotString(0));

    let second_bad = json!({"steps": [
        {"toolName": "create_task", "rationale": "r"},
        {"toolName": "create_task", "rationale": ""}
    ]});
    let err = parse(&second_bad.to_string()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "steps[1] has no non-empty string `rationale`"
    );
}

#[test]
fn steps_missing_or_not_an_array() {
    assert_eq!(parse(r#"{"summary": "s"}"#), Err(ParseError::StepsMissing));
    assert_eq!(parse(r#"{"steps": {}}"#), Err(ParseError::StepsNotArray));
}

#[test]
fn a_plan_must_be_an_object() {
    assert_eq!(parse(r#"```json [1, 2] ```"#), Err(ParseError::NotAnObject));
}

#[test]
fn the_summary_must_be_a_string() {
    assert_eq!(
        parse(r#"{"summary": 1, "steps": []}"#),
        Err(ParseError::SummaryNotString)
    );
}

#[test]
fn text_without_json_is_no_json() {
    assert_eq!(
        parse("Ich kann leider nicht helfen."),
        Err(ParseError::NoJson)
    );
    assert_eq!(parse(""), Err(ParseError::NoJson));
}

#[test]
fn an_unclosed_fence_is_refused() {
    // `\u{7b}` is an opening brace, written so to keep this test balanced.
    assert_eq!(
        parse("```json\n\u{7b}\"steps\": [] "),
        Err(ParseError::UnclosedFence)
    );
}

#[test]
fn broken_json_is_not_json() {
    assert!(matches!(
        parse("```json\n{steps: []}\n```"),
        Err(ParseError::NotJson { .. })
    ));
    assert!(matches!(
        parse("{\"steps\": [}"),
        Err(ParseError::NotJson { .. })
    ));
}

/// As llama-cpp-python 0.3 wrote them under a JSON grammar: raw line
/// breaks and tabs inside strings.
#[test]
fn raw_control_characters_inside_strings_read_as_escaped() {
    let answer = "{ \"summary\" : \"a\nb\", \"steps\": [{\"summary\": \"x\ty\", \
        \"toolName\": \"create_task\", \"params\": {\"title\": \"t\r\n\"}, \
        \"rationale\": \"r\u{1}\"}]}";
    let plan = parse(answer).unwrap();
    assert_eq!(plan.summary, "a\nb");
    assert_eq!(plan.steps[0].summary, "x\ty");
    assert_eq!(plan.steps[0].params["title"], "t\r\n");
    assert_eq!(plan.steps[0].rationale, "r\u{1}");
    // Between tokens a line break is whitespace, as always.
    assert!(parse("{\n\"steps\":\t[]\r\n}").is_ok());
    // A backslash before a raw control character is no valid escape.
    assert!(matches!(
        parse("{\"summary\": \"a\\\nb\", \"steps\": []}"),
        Err(ParseError::NotJson { .. })
    ));
}

/// A structured answer is JSON first: a fence quoted in a string is text.
#[test]
fn a_json_answer_may_quote_a_fence() {
    let answer = r#"{"summary": "```", "steps": [{"toolName": "create_task", "rationale": "r"}]}"#;
    assert_eq!(parse_json(answer).unwrap().summary, "```");
    assert_eq!(parse(answer), Err(ParseError::UnclosedFence));
    // Not a bare object: the fence rule still applies.
    assert_eq!(
        parse_json(&format!("Plan:\n```json\n{PLAN}\n```")),
        Ok(expected())
    );
    assert_eq!(parse_json("nichts"), Err(ParseError::NoJson));
}

#[test]
fn more_than_five_steps_are_too_many() {
    let step = json!({"toolName": "create_task", "rationale": "r"});
    let six = json!({"steps": vec![step; 6]});
    assert_eq!(
        parse(&six.to_string()),
        Err(ParseError::TooManySteps { count: 6, limit: 5 })
    );
}

#[test]
fn huge_answers_are_refused_up_front() {
    let huge = format!(
        "```json\n{{\"steps\": [], \"summary\": \"{}\"}}\n```",
        "x".repeat(10 * 1024 * 1024)
    );
    let err = parse(&huge).unwrap_err();
    assert!(matches!(
        err,
        ParseError::TooLarge {
            limit: MAX_ANSWER_BYTES,
            ..
        }
    ));
    assert!(err.to_string().contains("over the limit"));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!(
        "{{\"steps\": [], \"x\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(parse(&deep), Err(ParseError::NotJson { .. })));
}

#[test]
fn an_unknown_tool_name_is_quoted_short() {
    let name = "t".repeat(10_000);
    let err = parse(&plan_with_step(json!({"toolName": name, "rationale": "r"}))).unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse(&text);
    }

    /// Valid JSON is never touched, and a string written with raw control
    /// characters reads as the same string written with escapes.
    #[test]
    fn raw_controls_in_strings_read_like_their_escapes(text in "[\\x00-\\x1f a-z\"\\\\é]*") {
        let escaped = json!({"summary": text, "steps": []}).to_string();
        prop_assert!(matches!(escape_raw_controls(&escaped), Cow::Borrowed(_)));
        let raw = format!(
            "{{\"summary\": \"{}\", \"steps\": []}}",
            text.replace('\\', "\\\\").replace('"', "\\\"")
        );
        prop_assert_eq!(parse(&raw).unwrap().summary, text);
    }

    #[test]
    fn never_panics_on_fence_like_text(text in "(```|json|\\{|\\}|\\[|\\]|\"steps\"|:|,| |\n|é|toolName|\"rationale\"|\"x\")*") {
        let _ = parse(&text);
    }
}

#[test]
fn no_reason_quotes_the_answer() {
    let marker = "MARKER-7f3a";
    let answers = [
        format!("{marker} ohne Block"),
        format!(
            "```json\n{{\"steps\": [{{\"toolName\": \"{marker}\", \"rationale\": \"r\"}}]}}\n```"
        ),
        format!(
            "```json\n{{\"steps\": [{{\"toolName\": \"create_task\", \"{marker}\": 1}}]}}\n```"
        ),
        format!("```json\n{{\"steps\": {marker}}}\n```"),
        format!("```json\n{{\"summary\": \"{marker}\", \"steps\": [1]}}\n```"),
        format!("```json\n{{\"{marker}\": tru}}\n```"),
    ];
    for answer in answers {
        let reason = parse(&answer).unwrap_err().to_string();
        assert!(!reason.contains(marker), "{reason}");
        assert!(!reason.contains("MARKER"), "{reason}");
    }
}

/// `{"a":{"a":...{}}}` with `levels` objects.
fn nested(levels: usize) -> String {
    "{\"a\":".repeat(levels - 1) + "{}" + &"}".repeat(levels - 1)
}

#[test]
fn params_deeper_than_sixteen_levels_are_a_parse_failure() {
    let plan = |params: String| {
        format!(
            r#"{{"steps": [{{"toolName": "create_task", "params": {params}, "rationale": "r"}}]}}"#
        )
    };
    assert!(parse_json(&plan(nested(16))).is_ok());
    assert_eq!(
        parse_json(&plan(nested(17))),
        Err(ParseError::ParamsTooDeep(0))
    );
    let arrays = format!("{{\"a\": {}1{}}}", "[".repeat(16), "]".repeat(16));
    assert_eq!(parse_json(&plan(arrays)), Err(ParseError::ParamsTooDeep(0)));
}

#[test]
fn identical_steps_collapse_to_the_first_and_are_counted() {
    let text = r#"{"steps": [
      {"toolName": "create_task", "params": {"title": "A", "due": "x"}, "rationale": "one"},
      {"toolName": "create_task", "params": {"due": "x", "title": "A"}, "rationale": "two"},
      {"toolName": "create_task", "params": {"title": "B"}, "rationale": "three"},
      {"toolName": "create_note", "params": {"title": "A", "due": "x"}, "rationale": "four"},
      {"toolName": "create_task", "params": {"title": "A", "due": "x"}, "rationale": "five"}
    ]}"#;
    let plan = parse_json(text).unwrap();
    let rationales: Vec<&str> = plan.steps.iter().map(|s| s.rationale.as_str()).collect();
    assert_eq!(rationales, ["one", "three", "four"]);
    assert_eq!(plan.duplicates_dropped, 2);
}

//! The JSON schema of a plan, sent as structured output ([`super::structured`]).
//!
//! The contract's plan shape, made as tight as the catalog allows, because a
//! server that honours the schema (llama.cpp, Ollama, vLLM) constrains the
//! model's sampling to it and a small model writes exactly what it leaves
//! open:
//! - 1 to [`MAX_STEPS`] steps; each step is one of the allowed tools
//!   (`anyOf`, one branch per tool) and names its tool first (`toolName` a
//!   `const`), then its summary, then its `params`, which are that tool's
//!   declared parameters and nothing else (required ones required,
//!   enumerations as `enum`), then its rationale;
//! - every string has a length bound, so an answer cannot run on, and every
//!   summary and rationale at least one character (an empty one failed the
//!   parser after the server had let the model write it);
//! - properties are listed in the order the model should write them
//!   (grammar-constrained servers follow the schema's order; `serde_json`'s
//!   `preserve_order` keeps it). With the tool first, a grammar engine
//!   (llama.cpp) follows one branch from the step's first value on, instead
//!   of all of them while the model writes the summary.
//!
//! The strict parser still judges every answer: a server may ignore the
//! schema, and OpenAI's `strict: false` treats it as guidance only.

use serde_json::{json, Map, Value};

use super::parser::MAX_STEPS;
use super::tools::ParamType;
use super::tools::{ParamSpec, ToolSpec};

/// Longest summary (the plan's or a step's) the schema allows: a line the
/// user reads.
pub const MAX_SUMMARY_CHARS: usize = 100;
/// Longest rationale the schema allows: the prompt asks for one or two
/// sentences.
pub const MAX_RATIONALE_CHARS: usize = 200;
/// The JSON schema of a plan whose steps may use only `allowed` tools, in
/// their given order, string parameters bounded by `param_max_chars`
/// (`MANA_AI_PLAN_PARAM_MAX_CHARS`). `None` when no tool is allowed: a step
/// would have no valid shape, and the only valid plan then is one without
/// steps.
pub fn plan_schema(allowed: &[&ToolSpec], param_max_chars: usize) -> Option<Value> {
    if allowed.is_empty() {
        return None;
    }
    let steps: Vec<Value> = allowed
        .iter()
        .map(|tool| step_schema(tool, param_max_chars))
        .collect();
    Some(json!({
        "type": "object",
        "properties": {
            "summary": text(MAX_SUMMARY_CHARS),
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_STEPS,
                "items": {"anyOf": steps},
            },
        },
        "required": ["summary", "steps"],
        "additionalProperties": false,
    }))
}

/// The tools a plan schema's steps may call, in order (for tests and
/// diagnostics: which tools a request allowed).
pub fn step_tools(schema: &Value) -> Vec<&str> {
    let branches = schema["properties"]["steps"]["items"]["anyOf"].as_array();
    branches
        .into_iter()
        .flatten()
        .filter_map(|b| b["properties"]["toolName"]["const"].as_str())
        .collect()
}

/// One step that calls `tool`.
fn step_schema(tool: &ToolSpec, param_max_chars: usize) -> Value {
    json!({
        "type": "object",
        "properties": {
            "toolName": {"const": tool.name},
            "summary": text(MAX_SUMMARY_CHARS),
            "params": params_schema(tool, param_max_chars),
            "rationale": text(MAX_RATIONALE_CHARS),
        },
        "required": ["toolName", "summary", "params", "rationale"],
        "additionalProperties": false,
    })
}

/// The tool's declared parameters, in catalog order, and no others (also
/// the `parameters` of a tool in native tool calling).
pub fn params_schema(tool: &ToolSpec, param_max_chars: usize) -> Value {
    let properties: Map<String, Value> = tool
        .parameters
        .iter()
        .map(|p| (p.name.clone(), param_schema(p, param_max_chars)))
        .collect();
    let required: Vec<&str> = tool
        .parameters
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// One parameter: its enumeration, or its JSON type with strings bounded.
/// An array's items and an object's properties are not declared by the
/// webapp, so they are left open (the parser checks the type only). An
/// array still says `items` (open: `{}`): OpenAI refuses a function whose
/// array has none ("array schema missing items", HTTP 400), and mana-llm
/// passes the schema on to it.
fn param_schema(param: &ParamSpec, param_max_chars: usize) -> Value {
    match (&param.r#enum, param.r#type) {
        (Some(values), _) => json!({"type": "string", "enum": values}),
        (None, ParamType::String) => bounded_string(param_max_chars),
        (None, ParamType::Array) => json!({"type": "array", "items": {}}),
        (None, other) => json!({"type": other.as_str()}),
    }
}

/// The longest `maxLength` a parameter carries in a schema. A server that
/// constrains output turns `maxLength: n` into n nested optional
/// repetitions; llama-cpp-python 0.3.36 could not parse the grammar of the
/// v0.6 catalog with every string parameter at 4,000 and its server crashed
/// at the request (measured with `scripts/real-model-check.sh`). A bound
/// above this is left to the answer's token budget and the write-back's
/// field limit.
pub const GRAMMAR_MAX_LENGTH: usize = 500;

fn bounded_string(max: usize) -> Value {
    if max <= GRAMMAR_MAX_LENGTH {
        json!({"type": "string", "maxLength": max})
    } else {
        json!({"type": "string"})
    }
}

/// Text the user reads: at least one character.
fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tools::{BuiltinCatalog, ToolCatalog};

    fn branches(schema: &Value) -> &Vec<Value> {
        schema["properties"]["steps"]["items"]["anyOf"]
            .as_array()
            .expect("steps are an anyOf of tool branches")
    }

    #[test]
    fn one_branch_per_allowed_tool_in_order() {
        let catalog = ToolCatalog::builtin();
        let allowed: Vec<&ToolSpec> = catalog.tools().iter().skip(2).take(3).collect();
        let schema = plan_schema(&allowed, 400).unwrap();
        let steps = &schema["properties"]["steps"];
        assert_eq!(
            (&steps["minItems"], &steps["maxItems"]),
            (&json!(1), &json!(5))
        );
        let expected: Vec<&str> = allowed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(step_tools(&schema), expected);
        assert!(step_tools(&json!({})).is_empty());
        for branch in branches(&schema) {
            assert_eq!(
                branch["required"],
                json!(["toolName", "summary", "params", "rationale"])
            );
            assert_eq!(branch["additionalProperties"], json!(false));
        }
        assert_eq!(plan_schema(&[], 400), None);
    }

    #[test]
    fn params_are_the_tools_own_with_required_and_enums() {
        let catalog = ToolCatalog::builtin();
        let tool = catalog.get("create_task").unwrap();
        let schema = plan_schema(&[tool], 400).unwrap();
        let params = &branches(&schema)[0]["properties"]["params"];
        let names: Vec<&String> = params["properties"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["title", "dueDate", "priority", "description"]);
        assert_eq!(params["required"], json!(["title"]));
        assert_eq!(params["additionalProperties"], json!(false));
        assert_eq!(
            params["properties"]["priority"]["enum"],
            json!(["low", "medium", "high"])
        );
        let place = catalog.get("create_place").unwrap();
        let place = plan_schema(&[place], 400).unwrap();
        let latitude = &branches(&place)[0]["properties"]["params"]["properties"]["latitude"];
        assert_eq!(latitude, &json!({"type": "number"}));
    }

    #[test]
    fn every_string_is_bounded_within_what_grammars_take() {
        let catalog = ToolCatalog::builtin();
        let all: Vec<&ToolSpec> = catalog.tools().iter().collect();
        let schema = plan_schema(&all, GRAMMAR_MAX_LENGTH).unwrap();
        let mut strings = Vec::new();
        collect_strings(&schema, &mut strings);
        assert!(strings.len() > 100, "{}", strings.len());
        for s in strings {
            let max = s["maxLength"].as_u64();
            assert!(s.get("enum").is_some() || max.is_some(), "unbounded: {s}");
        }
        let branch = &branches(&schema)[0]["properties"];
        assert_eq!(branch["rationale"]["maxLength"], json!(MAX_RATIONALE_CHARS));
        assert_eq!(branch["rationale"]["minLength"], json!(1));
        assert_eq!(branch["summary"]["maxLength"], json!(MAX_SUMMARY_CHARS));
    }

    fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Object(map) => {
                if map.get("type") == Some(&json!("string")) {
                    out.push(value);
                }
                map.values().for_each(|v| collect_strings(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
            _ => {}
        }
    }

    /// Grammar-constrained servers make the model write properties in the
    /// schema's order: the tool comes first, the params after the summary.
    #[test]
    fn the_serialized_step_names_its_tool_first() {
        let catalog = ToolCatalog::builtin();
        let schema = plan_schema(&[catalog.get("create_note").unwrap()], 400).unwrap();
        let text = serde_json::to_string(&branches(&schema)[0]["properties"]).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        assert!(at("toolName") < at("summary"), "{text}");
        assert!(at("summary") < at("params"), "{text}");
        assert!(at("params") < at("rationale"), "{text}");
        let top = serde_json::to_string(&schema["properties"]).unwrap();
        assert!(top.find("\"summary\"") < top.find("\"steps\""), "{top}");
    }

    /// A long bound (the default 4,000) is no `maxLength` at all: a
    /// grammar of dozens of such strings does not parse in llama.cpp.
    #[test]
    fn a_bound_past_what_grammars_take_is_left_out_of_the_schema() {
        let catalog = ToolCatalog::builtin_named(BuiltinCatalog::V06);
        let tools: Vec<_> = catalog.tools().iter().collect();
        let schema = plan_schema(&tools, 4000).unwrap();
        let text = serde_json::to_string(&schema).unwrap();
        for branch in branches(&schema) {
            for (name, param) in branch["properties"]["params"]["properties"]
                .as_object()
                .unwrap()
            {
                let bound = param["maxLength"].as_u64().unwrap_or(0);
                assert!(bound as usize <= GRAMMAR_MAX_LENGTH, "{name}: {param}");
            }
        }
        assert!(!text.contains("\"maxLength\":4000"), "{text}");
    }

    #[test]
    fn arrays_and_objects_keep_their_type_arrays_say_items_and_strings_the_setting() {
        let catalog = ToolCatalog::builtin_named(BuiltinCatalog::Current);
        let tools = ["create_invoice", "update_website_block"].map(|n| catalog.get(n).unwrap());
        let schema = plan_schema(&tools, 300).unwrap();
        let params = |i: usize| branches(&schema)[i]["properties"]["params"]["properties"].clone();
        assert_eq!(params(0)["lines"], json!({"type": "array", "items": {}}));
        assert_eq!(params(0)["clientName"]["maxLength"], json!(300));
        assert_eq!(params(1)["patch"], json!({"type": "object"}));
        assert_eq!(schema["properties"]["summary"]["minLength"], json!(1));
        assert_eq!(
            branches(&schema)[0]["properties"]["summary"]["minLength"],
            json!(1)
        );
    }
}

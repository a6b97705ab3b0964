//! A tool's parameters: their JSON types, and the check of a step's or a
//! tool call's `params` against them.
//!
//! Two strengths of check, one rule set:
//! - [`check_types`] (the parser, for every answer form): each declared
//!   parameter that is present has its declared type (and, with an
//!   enumeration, one of its values); `null` reads as absent;
//! - [`check_call`] (native tool calling, where the model can correct a
//!   call): the types, and no parameter the tool does not declare, and every
//!   required one present.
//!
//! Problems never quote a value or a name the model made up: they go to logs
//! and to the user's `errorDetails`. A parameter name quoted is the catalog's.

use serde_json::{Map, Value};

use super::tools::{ParamSpec, ParamType, ToolSpec};

/// What is wrong with a step's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamProblem {
    #[error("parameter `{name}` is not of type {}", expected.as_str())]
    WrongType { name: String, expected: ParamType },
    #[error("parameter `{name}` is not one of its allowed values")]
    NotInEnum { name: String },
    #[error("required parameter `{name}` is missing")]
    Missing { name: String },
    #[error("a parameter the tool does not declare was given")]
    Undeclared,
}

/// The parser's check: every declared parameter that is present (and not
/// `null`) has its type and, with an enumeration, one of its values.
pub fn check_types(tool: &ToolSpec, params: &Map<String, Value>) -> Result<(), ParamProblem> {
    for spec in &tool.parameters {
        match params.get(&spec.name) {
            None | Some(Value::Null) => {}
            Some(value) => check_value(spec, value)?,
        }
    }
    Ok(())
}

/// The tool-calling check: [`check_types`], every required parameter
/// present, and no undeclared one.
pub fn check_call(tool: &ToolSpec, params: &Map<String, Value>) -> Result<(), ParamProblem> {
    if params.keys().any(|k| tool.param(k).is_none()) {
        return Err(ParamProblem::Undeclared);
    }
    let absent = |spec: &&ParamSpec| matches!(params.get(&spec.name), None | Some(Value::Null));
    if let Some(spec) = tool.parameters.iter().filter(|p| p.required).find(absent) {
        return Err(ParamProblem::Missing {
            name: spec.name.clone(),
        });
    }
    check_types(tool, params)
}

fn check_value(spec: &ParamSpec, value: &Value) -> Result<(), ParamProblem> {
    if !spec.r#type.admits(value) {
        return Err(ParamProblem::WrongType {
            name: spec.name.clone(),
            expected: spec.r#type,
        });
    }
    if let Some(values) = &spec.r#enum {
        if !values.iter().any(|v| value.as_str() == Some(v)) {
            return Err(ParamProblem::NotInEnum {
                name: spec.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tools::{BuiltinCatalog, ToolCatalog};
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn arrays_and_objects_are_checked_by_type() {
        let catalog = ToolCatalog::builtin_named(BuiltinCatalog::Current);
        let invoice = catalog.get("create_invoice").unwrap();
        let lines = json!([{"description": "Beratung", "quantity": 2, "unitPrice": 90}]);
        let good = params(json!({"clientName": "Ada", "lines": lines}));
        assert_eq!(check_call(invoice, &good), Ok(()));
        let bad = params(json!({"clientName": "Ada", "lines": "2x Beratung"}));
        let expected = ParamProblem::WrongType {
            name: "lines".into(),
            expected: ParamType::Array,
        };
        assert_eq!(check_types(invoice, &bad), Err(expected.clone()));
        assert_eq!(check_call(invoice, &bad), Err(expected));
        let block = catalog.get("update_website_block").unwrap();
        let patch = params(json!({"blockId": "b1", "patch": ["title"]}));
        assert!(matches!(
            check_types(block, &patch),
            Err(ParamProblem::WrongType {
                expected: ParamType::Object,
                ..
            })
        ));
        let patch = params(json!({"blockId": "b1", "patch": {"title": "Neu"}}));
        assert_eq!(check_call(block, &patch), Ok(()));
    }

    #[test]
    fn the_call_check_wants_required_and_declared_parameters_only() {
        let catalog = ToolCatalog::builtin_named(BuiltinCatalog::Current);
        let task = catalog.get("create_task").unwrap();
        let loose = params(json!({"title": "A", "due": "x"}));
        assert_eq!(check_types(task, &loose), Ok(()));
        assert_eq!(check_call(task, &loose), Err(ParamProblem::Undeclared));
        let missing = params(json!({"priority": "high"}));
        assert_eq!(check_types(task, &missing), Ok(()));
        let expected = ParamProblem::Missing {
            name: "title".into(),
        };
        assert_eq!(check_call(task, &missing), Err(expected));
        let nulls = params(json!({"title": "A", "dueDate": null}));
        assert_eq!(check_call(task, &nulls), Ok(()));
        let wrong = params(json!({"title": "A", "priority": "urgent"}));
        let e = check_types(task, &wrong).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter `priority` is not one of its allowed values"
        );
        let number = params(json!({"title": 3}));
        assert!(check_types(task, &number).is_err());
    }

    #[test]
    fn integers_are_numbers_and_types_name_themselves() {
        assert!(ParamType::Number.admits(&json!(3)));
        assert!(!ParamType::Integer.admits(&json!(3.5)));
        for t in ["string", "number", "integer", "boolean", "array", "object"] {
            let parsed: ParamType = serde_json::from_value(json!(t)).unwrap();
            assert_eq!(parsed.as_str(), t);
        }
        assert!(serde_json::from_value::<ParamType>(json!("date")).is_err());
    }
}

//! The planner's settings of issues 18 and 19: validated at start, errors
//! naming the variable.

use super::test_support::{config, URL};
use crate::planner::structured::StructuredMode;
use crate::planner::tools::{BuiltinCatalog, CatalogChoice};

#[test]
fn defaults_and_named_catalogs() {
    let c = config(&[URL]).unwrap();
    assert_eq!(c.planner.param_max_chars, 4000);
    assert_eq!(c.planner.planner_rounds, 5);
    assert_eq!(c.planner.tool_catalog, None);
    let named = |v: &str| {
        config(&[URL, ("MANA_AI_TOOL_CATALOG", v)])
            .unwrap()
            .planner
            .tool_catalog
    };
    assert_eq!(
        named("current"),
        Some(CatalogChoice::Builtin(BuiltinCatalog::Current))
    );
    assert_eq!(
        named("v0.6"),
        Some(CatalogChoice::Builtin(BuiltinCatalog::V06))
    );
    assert_eq!(
        named("/etc/tools.json"),
        Some(CatalogChoice::File("/etc/tools.json".into()))
    );
    assert_eq!(named("  "), None);
    let tools = config(&[URL, ("MANA_LLM_STRUCTURED", "tools")]).unwrap();
    assert_eq!(tools.planner.llm_structured, StructuredMode::Tools);
}

#[test]
fn out_of_range_values_name_the_variable() {
    for (var, value) in [
        ("MANA_AI_PLANNER_ROUNDS", "0"),
        ("MANA_AI_PLANNER_ROUNDS", "6"),
        ("MANA_AI_PLAN_PARAM_MAX_CHARS", "0"),
        ("MANA_AI_PLAN_PARAM_MAX_CHARS", "lots"),
        ("MANA_LLM_STRUCTURED", "functions"),
    ] {
        let e = config(&[URL, (var, value)]).unwrap_err();
        assert!(e.to_string().contains(var), "{var}={value}: {e}");
    }
}

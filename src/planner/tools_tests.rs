use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// (name, module, parameters without descriptions), in file order.
type Shape = (
    String,
    String,
    Vec<(String, String, bool, Option<Vec<String>>)>,
);

fn shape_of_value(tools: &Value) -> Vec<Shape> {
    let catalog = tools.as_array().expect("an array of tools");
    catalog
        .iter()
        .map(|t| {
            let params = t["parameters"].as_array().expect("parameters array");
            let params = params
                .iter()
                .map(|p| {
                    let en = p.get("enum").map(|e| {
                        let items = e.as_array().expect("enum array");
                        items
                            .iter()
                            .map(|v| v.as_str().unwrap().to_owned())
                            .collect()
                    });
                    let name = p["name"].as_str().unwrap().to_owned();
                    let ty = p["type"].as_str().unwrap().to_owned();
                    (name, ty, p["required"].as_bool().unwrap(), en)
                })
                .collect();
            let name = t["name"].as_str().unwrap().to_owned();
            (name, t["module"].as_str().unwrap().to_owned(), params)
        })
        .collect()
}

fn shape_of_catalog(catalog: &ToolCatalog) -> Vec<Shape> {
    let tools = catalog.tools().iter().map(|t| {
        let params = t.parameters.iter().map(|p| {
            let en = p.r#enum.clone();
            (p.name.clone(), p.r#type.as_str().to_owned(), p.required, en)
        });
        (t.name.clone(), t.module.clone(), params.collect())
    });
    tools.collect()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
    serde_json::from_str(&text).expect("the fixture is JSON")
}

#[test]
fn builtin_catalogs_match_the_webapps_tool_lists() {
    let cases = [
        (BuiltinCatalog::V06, "propose-tools.json", 31, 16),
        (
            BuiltinCatalog::Current,
            "propose-tools-current.json",
            62,
            25,
        ),
    ];
    for (which, file, tools, modules) in cases {
        let builtin = ToolCatalog::builtin_named(which);
        assert_eq!(shape_of_catalog(&builtin), shape_of_value(&fixture(file)));
        assert_eq!(builtin.len(), tools);
        let distinct: HashSet<_> = builtin.tools().iter().map(|t| &t.module).collect();
        assert_eq!(distinct.len(), modules);
        assert_eq!(builtin.origin(), format!("built-in {}", which.as_str()));
    }
    assert_eq!(
        ToolCatalog::builtin(),
        ToolCatalog::builtin_named(BuiltinCatalog::V06)
    );
}

#[test]
fn todays_catalog_has_array_and_object_parameters() {
    let current = ToolCatalog::builtin_named(BuiltinCatalog::Current);
    let ty = |tool: &str, param: &str| current.get(tool).unwrap().param(param).unwrap().r#type;
    assert_eq!(ty("create_invoice", "lines"), ParamType::Array);
    assert_eq!(ty("add_website_block", "props"), ParamType::Object);
    assert_eq!(ty("update_website_block", "patch"), ParamType::Object);
    // The 31 tools of v0.6 are unchanged, descriptions included.
    for tool in ToolCatalog::builtin().tools() {
        assert_eq!(current.get(&tool.name), Some(tool));
    }
}

#[test]
fn builtin_tools_and_parameters_are_described() {
    for which in [BuiltinCatalog::V06, BuiltinCatalog::Current] {
        for tool in ToolCatalog::builtin_named(which).tools() {
            assert!(!tool.description.trim().is_empty(), "{}", tool.name);
            for p in &tool.parameters {
                let described = p
                    .description
                    .as_deref()
                    .is_some_and(|d| !d.trim().is_empty());
                assert!(described, "{}.{}", tool.name, p.name);
            }
        }
    }
}

#[test]
fn the_catalog_in_force_follows_the_generation_unless_named() {
    let chosen = |choice: Option<&str>, generation| {
        let choice = choice.map(CatalogChoice::parse);
        ToolCatalog::chosen(choice.as_ref(), generation).map(|c| c.origin().to_string())
    };
    assert_eq!(chosen(None, Generation::V06).unwrap(), "built-in v0.6");
    assert_eq!(
        chosen(None, Generation::Current).unwrap(),
        "built-in current"
    );
    assert_eq!(
        chosen(Some("v0.6"), Generation::Current).unwrap(),
        "built-in v0.6"
    );
    assert_eq!(
        chosen(Some(" Current "), Generation::V06).unwrap(),
        "built-in current"
    );
    let missing = chosen(Some("/nonexistent/tools.json"), Generation::V06).unwrap_err();
    assert!(
        matches!(missing.problem, CatalogProblem::Unreadable(_)),
        "{missing}"
    );
    assert_eq!(
        CatalogChoice::parse("tools.json"),
        CatalogChoice::File(PathBuf::from("tools.json"))
    );
}

fn temp_file(contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("mana-ai-catalog-{}-{n}.json", std::process::id());
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn load(contents: &str) -> Result<ToolCatalog, CatalogError> {
    let path = temp_file(contents);
    let result = ToolCatalog::from_json_file(&path);
    std::fs::remove_file(&path).unwrap();
    result
}

const GOOD_TOOL: &str = r#"{"name":"a","module":"m","description":"d","parameters":[]}"#;

#[test]
fn loads_a_valid_file() {
    let catalog = load(&format!("[{GOOD_TOOL}]")).unwrap();
    assert_eq!((catalog.len(), catalog.origin()), (1, "file"));
    assert_eq!(catalog.get("a").unwrap().module, "m");
    // `parameters` may be left out for a tool without any.
    let catalog = load(r#"[{"name":"b","module":"m","description":"d"}]"#).unwrap();
    assert!(catalog.get("b").unwrap().parameters.is_empty());
}

#[test]
fn an_unreadable_file_names_the_path() {
    let path = std::env::temp_dir().join("mana-ai-catalog-does-not-exist.json");
    let err = ToolCatalog::from_json_file(&path).unwrap_err();
    assert!(matches!(err.problem, CatalogProblem::Unreadable(_)));
    assert!(
        err.to_string()
            .contains("mana-ai-catalog-does-not-exist.json"),
        "{err}"
    );
}

#[test]
fn bad_files_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        (r#"{"tools": []}"#, "must be a JSON array"),
        ("[]", "catalog is empty"),
        ("[1]", "tools[0] is not an object"),
        (
            r#"[{"module":"m","description":"d"}]"#,
            "tools[0] has no non-empty string `name`",
        ),
        (r#"[{"name":"a","description":"d"}]"#, "`module`"),
        (r#"[{"name":"a","module":"m"}]"#, "`description`"),
        (r#"[{"name":" ","module":"m","description":"d"}]"#, "`name`"),
        (
            &format!("[{GOOD_TOOL},{GOOD_TOOL}]"),
            "tool `a` appears more than once",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d","parameters":[{"type":"string"}]}]"#,
            "tool `a`: parameters[0] has no non-empty string `name`",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d","parameters":[{"name":"x"}]}]"#,
            "parameters[0] has no non-empty string `type`",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d",
                "parameters":[{"name":"x","type":"string"},{"name":"x","type":"number"}]}]"#,
            "parameter `x` appears more than once",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d",
                "parameters":[{"name":"x","type":"string","required":"yes"}]}]"#,
            "tool `a` is malformed",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d","parameters":{}}]"#,
            "tool `a` is malformed",
        ),
        (
            r#"[{"name":"a","module":"m","description":"d",
                "parameters":[{"name":"x","type":"date"}]}]"#,
            "unknown variant `date`",
        ),
    ];
    for (contents, expected) in cases {
        let err = load(contents).unwrap_err().to_string();
        assert!(err.contains(expected), "{contents}: {err}");
        assert!(err.starts_with("tool catalog "), "{err}");
    }
}

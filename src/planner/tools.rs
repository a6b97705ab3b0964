//! The tool catalog: which tools the planner may propose (contract section 6).
//!
//! The webapp owns the catalog. The built-in copy is `builtin_tools.json`,
//! the 31 `propose` tools of `fixtures/propose-tools.json` (the webapp's list) plus German
//! descriptions (the model reads them), embedded in the binary. A deployment
//! whose webapp has more tools points `MANA_AI_TOOL_CATALOG` at a JSON file of
//! the same shape; a bad file is a start-up error that names the problem,
//! never a catalog that silently lacks tools.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

const BUILTIN_JSON: &str = include_str!("builtin_tools.json");

/// One parameter of a tool, as the webapp declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    /// JSON type name the webapp expects: `string`, `number`, `boolean`, ...
    #[serde(rename = "type")]
    pub r#type: String,
    #[serde(default)]
    pub required: bool,
    /// Allowed values, when the parameter is an enumeration.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub r#enum: Option<Vec<String>>,
    /// German hint for the model (format, meaning); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One tool the planner may propose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    /// mana module the tool acts on (`todo`, `notes`, ...); policies key on it.
    pub module: String,
    /// German description for the model; required in catalog files.
    pub description: String,
    #[serde(default)]
    pub parameters: Vec<ParamSpec>,
}

/// A validated catalog: non-empty, unique tool names, every tool complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCatalog {
    tools: Vec<ToolSpec>,
}

/// Why a catalog file was refused.
#[derive(Debug, thiserror::Error)]
#[error("tool catalog {}: {problem}", path.display())]
pub struct CatalogError {
    pub path: PathBuf,
    pub problem: CatalogProblem,
}

/// What is wrong with a catalog text. Indexes are 0-based array positions.
#[derive(Debug, thiserror::Error)]
pub enum CatalogProblem {
    #[error("cannot read file: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("top level must be a JSON array of tools")]
    NotAnArray,
    #[error("catalog is empty: the planner would have no tool to propose")]
    Empty,
    #[error("tools[{index}] is not an object")]
    ToolNotObject { index: usize },
    #[error("tools[{index}] has no non-empty string `{field}`")]
    MissingToolField { index: usize, field: &'static str },
    #[error("tool `{name}` appears more than once")]
    DuplicateTool { name: String },
    #[error("tool `{tool}`: parameters[{index}] has no non-empty string `{field}`")]
    MissingParamField {
        tool: String,
        index: usize,
        field: &'static str,
    },
    #[error("tool `{tool}`: parameter `{param}` appears more than once")]
    DuplicateParam { tool: String, param: String },
    #[error("tool `{tool}` is malformed: {reason}")]
    InvalidTool { tool: String, reason: String },
}

impl ToolCatalog {
    /// The catalog compiled into the binary. Its validity is checked by a
    /// unit test, so the `expect` cannot fire in a released build.
    pub fn builtin() -> ToolCatalog {
        ToolCatalog::from_json_str(BUILTIN_JSON).expect("builtin_tools.json is a valid catalog")
    }

    /// Loads the catalog named by `MANA_AI_TOOL_CATALOG`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<ToolCatalog, CatalogError> {
        let path = path.as_ref();
        let fail = |problem| CatalogError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.into()))?;
        ToolCatalog::from_json_str(&text).map_err(fail)
    }

    /// Validates a catalog text. Required fields are checked by hand first so
    /// the error names the tool and the field instead of a serde position.
    pub fn from_json_str(text: &str) -> Result<ToolCatalog, CatalogProblem> {
        let value: Value = serde_json::from_str(text)?;
        let items = value.as_array().ok_or(CatalogProblem::NotAnArray)?;
        if items.is_empty() {
            return Err(CatalogProblem::Empty);
        }
        let mut seen = HashSet::new();
        let mut tools = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let tool = parse_tool(index, item)?;
            if !seen.insert(tool.name.clone()) {
                return Err(CatalogProblem::DuplicateTool { name: tool.name });
            }
            tools.push(tool);
        }
        Ok(ToolCatalog { tools })
    }

    /// Tools in catalog order (the order the prompt lists them in).
    pub fn tools(&self) -> &[ToolSpec] {
        &self.tools
    }

    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Always false for a validated catalog; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

fn parse_tool(index: usize, item: &Value) -> Result<ToolSpec, CatalogProblem> {
    let obj = item
        .as_object()
        .ok_or(CatalogProblem::ToolNotObject { index })?;
    for field in ["name", "module", "description"] {
        if !is_non_empty_str(obj.get(field)) {
            return Err(CatalogProblem::MissingToolField { index, field });
        }
    }
    let name = obj["name"].as_str().unwrap_or_default().to_owned();
    if let Some(Value::Array(params)) = obj.get("parameters") {
        let mut seen = HashSet::new();
        for (pi, param) in params.iter().enumerate() {
            for field in ["name", "type"] {
                if !is_non_empty_str(param.get(field)) {
                    return Err(CatalogProblem::MissingParamField {
                        tool: name,
                        index: pi,
                        field,
                    });
                }
            }
            let pname = param["name"].as_str().unwrap_or_default();
            if !seen.insert(pname) {
                return Err(CatalogProblem::DuplicateParam {
                    tool: name,
                    param: pname.to_owned(),
                });
            }
        }
    }
    // Everything else (wrong types of `required`, `enum`, `parameters`) is
    // reported with serde's own wording.
    ToolSpec::deserialize(item).map_err(|e| CatalogProblem::InvalidTool {
        tool: name,
        reason: e.to_string(),
    })
}

fn is_non_empty_str(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::String(s)) if !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
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
                (p.name.clone(), p.r#type.clone(), p.required, en)
            });
            (t.name.clone(), t.module.clone(), params.collect())
        });
        tools.collect()
    }

    #[test]
    fn builtin_matches_the_webapps_tool_list_fixture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/propose-tools.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
        let webapp: Value = serde_json::from_str(&text).expect("the fixture is JSON");
        let builtin = ToolCatalog::builtin();
        assert_eq!(shape_of_catalog(&builtin), shape_of_value(&webapp));
        assert_eq!(builtin.len(), 31);
        let modules: HashSet<_> = builtin.tools().iter().map(|t| &t.module).collect();
        assert_eq!(modules.len(), 16);
    }

    #[test]
    fn builtin_tools_and_parameters_are_described() {
        for tool in ToolCatalog::builtin().tools() {
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
        assert_eq!(catalog.len(), 1);
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
        ];
        for (contents, expected) in cases {
            let err = load(contents).unwrap_err().to_string();
            assert!(err.contains(expected), "{contents}: {err}");
            assert!(err.starts_with("tool catalog "), "{err}");
        }
    }
}

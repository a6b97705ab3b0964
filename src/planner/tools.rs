//! The tool catalog: which tools the planner may propose (contract section 6).
//!
//! The webapp owns the catalog. Two built-in copies are embedded in the
//! binary, each the webapp's list plus German descriptions (the model reads
//! them):
//! - `v0.6` (`builtin_tools.json`): the 31 `propose` tools of
//!   `fixtures/propose-tools.json`;
//! - `current` (`catalog_current.json`): today's 62 tools over 25 modules
//!   (`fixtures/propose-tools-current.json`), with `array` and `object`
//!   parameters.
//!
//! The one in force follows the database's generation unless
//! `MANA_AI_TOOL_CATALOG` names one (`v0.6`, `current`) or a JSON file of the
//! same shape; a bad file is a start-up error that names the problem, never a
//! catalog that silently lacks tools.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sync::generation::Generation;

const BUILTIN_JSON: &str = include_str!("builtin_tools.json");
const CURRENT_JSON: &str = include_str!("catalog_current.json");

/// The catalogs compiled into the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinCatalog {
    /// The 31 tools of mana v0.6.
    V06,
    /// Today's 62 tools.
    Current,
}

impl BuiltinCatalog {
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinCatalog::V06 => "v0.6",
            BuiltinCatalog::Current => "current",
        }
    }

    /// The catalog of the webapp that writes a database of `generation`.
    pub fn of(generation: Generation) -> BuiltinCatalog {
        match generation {
            Generation::V06 => BuiltinCatalog::V06,
            Generation::Current => BuiltinCatalog::Current,
        }
    }

    fn json(self) -> &'static str {
        match self {
            BuiltinCatalog::V06 => BUILTIN_JSON,
            BuiltinCatalog::Current => CURRENT_JSON,
        }
    }
}

/// `MANA_AI_TOOL_CATALOG`: a built-in catalog by name, or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChoice {
    Builtin(BuiltinCatalog),
    File(PathBuf),
}

impl CatalogChoice {
    /// `v0.6` and `current` name the built-in catalogs; anything else is a path.
    pub fn parse(value: &str) -> CatalogChoice {
        let word = value.trim();
        [BuiltinCatalog::V06, BuiltinCatalog::Current]
            .into_iter()
            .find(|b| word.eq_ignore_ascii_case(b.as_str()))
            .map_or_else(
                || CatalogChoice::File(PathBuf::from(value)),
                CatalogChoice::Builtin,
            )
    }
}

/// A parameter's JSON type, as the webapp declares it (`type` in the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    /// A JSON array (today's catalog: an invoice's lines).
    Array,
    /// A JSON object (today's catalog: a website block's props or patch).
    Object,
}

impl ParamType {
    /// The JSON Schema and catalog name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Number => "number",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }

    /// Whether `value` is of this type (an integer is also a number).
    pub fn admits(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Number => value.is_number(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Array => value.is_array(),
            ParamType::Object => value.is_object(),
        }
    }
}

/// One parameter of a tool, as the webapp declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    /// JSON type the webapp expects; an unknown type name refuses the catalog.
    #[serde(rename = "type")]
    pub r#type: ParamType,
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

impl ToolSpec {
    /// The declared parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// A validated catalog: non-empty, unique tool names, every tool complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCatalog {
    tools: Vec<ToolSpec>,
    /// Where it came from, for the start-up log and `/health`.
    origin: String,
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
        ToolCatalog::builtin_named(BuiltinCatalog::V06)
    }

    /// One of the catalogs compiled into the binary (both are checked by
    /// unit tests, so the `expect` cannot fire in a released build).
    pub fn builtin_named(which: BuiltinCatalog) -> ToolCatalog {
        let mut catalog =
            ToolCatalog::from_json_str(which.json()).expect("built-in catalogs are valid");
        catalog.origin = format!("built-in {}", which.as_str());
        catalog
    }

    /// The catalog `choice` names, else the built-in one of `generation`.
    pub fn chosen(
        choice: Option<&CatalogChoice>,
        generation: Generation,
    ) -> Result<ToolCatalog, CatalogError> {
        match choice {
            None => Ok(ToolCatalog::builtin_named(BuiltinCatalog::of(generation))),
            Some(CatalogChoice::Builtin(which)) => Ok(ToolCatalog::builtin_named(*which)),
            Some(CatalogChoice::File(path)) => ToolCatalog::from_json_file(path),
        }
    }

    /// `built-in v0.6`, `built-in current`, or `file` (a path is not shown:
    /// it may say more about the host than an operator wants on `/health`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Loads the catalog named by `MANA_AI_TOOL_CATALOG`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<ToolCatalog, CatalogError> {
        let path = path.as_ref();
        let fail = |problem| CatalogError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.into()))?;
        let mut catalog = ToolCatalog::from_json_str(&text).map_err(fail)?;
        catalog.origin = "file".to_string();
        Ok(catalog)
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
        Ok(ToolCatalog {
            tools,
            origin: "text".to_string(),
        })
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
#[path = "tools_tests.rs"]
mod tests;

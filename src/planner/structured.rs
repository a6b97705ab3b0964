//! Structured output: the two ways of asking a model server for a plan that
//! follows its JSON schema ([`super::schema`]), and which way a server takes
//! (learned once per URL).
//!
//! A server that honours the schema constrains the model's sampling to it,
//! so a small model cannot wander off into prose or a denied tool. The
//! strict parser still judges every answer: a server may ignore the schema.
//!
//! The two request forms:
//! - [`Form::JsonSchema`]: `{"type": "json_schema", "json_schema": {name,
//!   schema, strict}}`, OpenAI's form, also taken by vLLM and Ollama;
//! - [`Form::JsonObject`]: `{"type": "json_object", "schema": ...}`, the form
//!   of llama.cpp's servers (which answer the first one with HTTP 500).
//!
//! `strict` is `false`: OpenAI's strict mode demands that every property be
//! required, and most tools have optional parameters.
//!
//! In [`StructuredMode::Auto`] a call tries the forms in that order and then
//! free text, as long as the server has not yet accepted one: a refusal of a
//! form ([`is_form_refusal`]) sends the same request again at once in the
//! next form, without counting an attempt. The first form a server answers
//! with a 2xx is remembered for the life of the process (per endpoint URL,
//! across leadership terms) and logged once; a call in which every form was
//! refused remembers nothing, so the next call probes again.
//!
//! Native tool calling ([`Form::Tools`], see [`super::tool_calls`]) comes
//! before them for a gateway that said it is mana-llm (its
//! `X-Mana-LLM-Resolved` answer header, seen once per URL), and always in
//! [`StructuredMode::Tools`]. A server that ignores `tools` answers the
//! first round without a call; until a server has made one, such an answer
//! does not count: the call goes on in the next form and the server is
//! remembered as one that ignores tools, so auto never settles on a form
//! that yields empty plans. mana-llm's `capability` error (the model cannot
//! do this) moves an auto call on to the next form whenever there is one.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

use super::gateway_kind::GatewayKind;
use super::AnswerShape;

/// `MANA_LLM_STRUCTURED`: how the client asks for structured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StructuredMode {
    /// Learn per URL which form the server takes (json_schema, json_object, none).
    #[default]
    Auto,
    /// Always OpenAI's `json_schema` form.
    JsonSchema,
    /// Always the `json_object` + `schema` form.
    JsonObject,
    /// Never send `response_format`: free text, judged by the parser alone.
    Off,
    /// Always native tool calling.
    Tools,
}

impl StructuredMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StructuredMode::Auto => "auto",
            StructuredMode::JsonSchema => "json_schema",
            StructuredMode::JsonObject => "json_object",
            StructuredMode::Off => "off",
            StructuredMode::Tools => "tools",
        }
    }
}

impl FromStr for StructuredMode {
    type Err = String;

    fn from_str(s: &str) -> Result<StructuredMode, String> {
        let word = s.trim();
        [
            StructuredMode::Auto,
            StructuredMode::JsonSchema,
            StructuredMode::JsonObject,
            StructuredMode::Off,
            StructuredMode::Tools,
        ]
        .into_iter()
        .find(|m| word.eq_ignore_ascii_case(m.as_str()))
        .ok_or_else(|| format!("{s:?} is not one of auto|json_schema|json_object|off|tools"))
    }
}

/// One way of sending a request: native tool calling, with a
/// `response_format`, or as free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    Tools,
    JsonSchema,
    JsonObject,
    Text,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Tools => "tools",
            Form::JsonSchema => "json_schema",
            Form::JsonObject => "json_object",
            Form::Text => "text",
        }
    }

    /// The next form to try when a server refuses this one.
    pub fn next(self) -> Option<Form> {
        match self {
            Form::Tools => Some(Form::JsonSchema),
            Form::JsonSchema => Some(Form::JsonObject),
            Form::JsonObject => Some(Form::Text),
            Form::Text => None,
        }
    }

    /// How the parser reads an answer to this form.
    pub fn answer_shape(self) -> AnswerShape {
        match self {
            Form::Tools | Form::JsonSchema | Form::JsonObject => AnswerShape::Json,
            Form::Text => AnswerShape::FreeText,
        }
    }

    /// The request's `response_format` for `schema`; `None` for free text
    /// and tool calling.
    pub fn response_format(self, schema: &Value) -> Option<Value> {
        match self {
            Form::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": "mission_plan", "schema": schema, "strict": false},
            })),
            Form::JsonObject => Some(json!({"type": "json_object", "schema": schema})),
            Form::Text | Form::Tools => None,
        }
    }
}

/// Whether an HTTP status, answered to a form not yet known to work, means
/// "not this form": any 4xx or 5xx except those that say something else
/// (401/403 a bad key, 408/429 load, 502/503/504 a gateway or server away),
/// which keep their usual meaning (final, or retried).
pub fn is_form_refusal(status: u16) -> bool {
    matches!(status, 400..=599) && !matches!(status, 401 | 403 | 408 | 429 | 502 | 503 | 504)
}

/// Forms that servers accepted, per endpoint URL, for the life of the process.
fn learned() -> &'static Mutex<HashMap<String, Form>> {
    static LEARNED: OnceLock<Mutex<HashMap<String, Form>>> = OnceLock::new();
    LEARNED.get_or_init(Default::default)
}

/// What an endpoint showed about native tool calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSupport {
    /// It said it is mana-llm; no tool call seen yet.
    ManaLlm,
    /// It answered a tools request with a tool call.
    Works,
    /// It answered a tools request without one, or refused tools.
    Ignored,
}

fn tool_support_map() -> &'static Mutex<HashMap<String, ToolSupport>> {
    static SUPPORT: OnceLock<Mutex<HashMap<String, ToolSupport>>> = OnceLock::new();
    SUPPORT.get_or_init(Default::default)
}

/// What `endpoint` showed about tool calling, if anything.
pub fn tool_support(endpoint: &str) -> Option<ToolSupport> {
    let map = tool_support_map().lock().unwrap_or_else(|e| e.into_inner());
    map.get(endpoint).copied()
}

/// Records what `endpoint` showed; `ManaLlm` never overwrites what a tools
/// request found out.
pub fn note_tool_support(endpoint: &str, support: ToolSupport) {
    let mut map = tool_support_map().lock().unwrap_or_else(|e| e.into_inner());
    let old = map.get(endpoint).copied();
    if support == ToolSupport::ManaLlm && old.is_some() || old == Some(support) {
        return;
    }
    map.insert(endpoint.to_string(), support);
    drop(map);
    tracing::info!(tools = ?support, "LLM server's native tool calling noted for this process");
}

/// The form an endpoint is known to take, if a call has found it out.
pub fn known_form(endpoint: &str) -> Option<Form> {
    // A poisoned lock only means a panic elsewhere; the map itself is whole.
    let map = learned().lock().unwrap_or_else(|e| e.into_inner());
    map.get(endpoint).copied()
}

/// Records that `endpoint` answered `form` with a 2xx. Logs the first time
/// only; `refused` says what was refused before, for that one log line.
pub fn remember(endpoint: &str, form: Form, refused: &[(Form, u16)]) {
    let mut map = learned().lock().unwrap_or_else(|e| e.into_inner());
    if map.contains_key(endpoint) {
        return;
    }
    map.insert(endpoint.to_string(), form);
    drop(map);
    let refused: Vec<String> = refused
        .iter()
        .map(|(f, status)| format!("{} (HTTP {status})", f.as_str()))
        .collect();
    // The URL may carry credentials: it is not logged.
    tracing::info!(
        form = form.as_str(),
        refused = %refused.join(", "),
        "LLM server takes this structured-output form; remembered for this process"
    );
}

/// The form a call starts with: the learned one, else the first of the mode.
pub fn first_form(mode: StructuredMode, endpoint: &str) -> Form {
    match mode {
        StructuredMode::Off => Form::Text,
        StructuredMode::JsonSchema => Form::JsonSchema,
        StructuredMode::JsonObject => Form::JsonObject,
        StructuredMode::Tools => Form::Tools,
        StructuredMode::Auto => match tool_support(endpoint) {
            Some(ToolSupport::ManaLlm | ToolSupport::Works) => Form::Tools,
            _ => known_form(endpoint).unwrap_or(Form::JsonSchema),
        },
    }
}

/// The form of each request of one call, and the learning in auto mode.
#[derive(Debug)]
pub struct FormPicker<'a> {
    endpoint: &'a str,
    form: Form,
    auto: bool,
    /// Auto mode, a schema to send, and nothing learned for the endpoint yet.
    learning: bool,
    refused: Vec<(Form, u16)>,
}

impl<'a> FormPicker<'a> {
    /// Without a schema every request is free text (no tool is allowed,
    /// or the caller sends no plan request).
    pub fn new(
        mode: StructuredMode,
        endpoint: &'a str,
        has_schema: bool,
        has_tools: bool,
    ) -> FormPicker<'a> {
        let form = match first_form(mode, endpoint) {
            _ if !has_schema => Form::Text,
            Form::Tools if !has_tools => known_form(endpoint).unwrap_or(Form::JsonSchema),
            form => form,
        };
        let auto = mode == StructuredMode::Auto;
        let learning = has_schema && auto && known_form(endpoint).is_none();
        FormPicker {
            endpoint,
            form,
            auto,
            learning,
            refused: Vec::new(),
        }
    }

    pub fn form(&self) -> Form {
        self.form
    }

    /// Whether an answer `status` (mana-llm's `kind`, if any) to the current
    /// form means "not this form" here: auto mode with a next form, and
    /// either `capability`, or a refusal status while still learning (on
    /// tools: a 4xx) from a body that names no other kind.
    pub fn would_refuse(&self, status: u16, kind: Option<GatewayKind>) -> bool {
        // A tools request is refused only by a 4xx: a 5xx from a gateway
        // known to be mana-llm is a failure, not a verdict on tools.
        let probing = match self.form {
            Form::Tools => status < 500,
            _ => self.learning,
        };
        let refusal = match kind {
            Some(GatewayKind::Capability) => true,
            None | Some(GatewayKind::Unknown) => probing && is_form_refusal(status),
            Some(_) => false,
        };
        self.auto && self.form.next().is_some() && refusal
    }

    /// A tools request answered without a tool call, by a server not known
    /// to make them: `true` (auto mode) moves on to the next form and
    /// remembers the server ignores tools.
    pub fn tools_ignored(&mut self) -> bool {
        let known = tool_support(self.endpoint) == Some(ToolSupport::Works);
        if !self.auto || self.form != Form::Tools || known {
            return false;
        }
        note_tool_support(self.endpoint, ToolSupport::Ignored);
        self.form = self.after_tools();
        true
    }

    /// The form after tools: the learned one, else the first schema form.
    fn after_tools(&self) -> Form {
        known_form(self.endpoint).unwrap_or(Form::JsonSchema)
    }

    /// The server answered `status` to the current form. `true`: send the
    /// request again at once in the next form ([`FormPicker::would_refuse`]);
    /// `false`: handle it as usual.
    pub fn refused(&mut self, status: u16, kind: Option<GatewayKind>) -> bool {
        if !self.would_refuse(status, kind) {
            return false;
        }
        if self.form == Form::Tools {
            note_tool_support(self.endpoint, ToolSupport::Ignored);
            self.form = self.after_tools();
            return true;
        }
        let next = match self.form.next() {
            Some(next) => next,
            None => return false,
        };
        tracing::debug!(
            form = self.form.as_str(),
            status,
            next = next.as_str(),
            "LLM server refused a structured-output form"
        );
        self.refused.push((self.form, status));
        self.form = next;
        true
    }

    /// The server answered the current form with a 2xx; `mana_llm`: with
    /// mana-llm's header.
    pub fn accepted(&self, mana_llm: bool) {
        if mana_llm {
            note_tool_support(self.endpoint, ToolSupport::ManaLlm);
        }
        if self.form == Form::Tools {
            return;
        }
        if self.learning {
            remember(self.endpoint, self.form, &self.refused);
        }
    }
}

#[cfg(test)]
#[path = "structured_tests.rs"]
mod tests;

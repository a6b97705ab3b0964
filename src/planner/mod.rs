//! Planner: tool catalog, agent policy, prompt, strict parser, LLM and research
//! clients, and [`Planner`], the one interface a run asks for a plan.
//!
//! Everything here except the LLM and research clients is pure: it turns
//! records into a prompt and an answer into a plan, and is tested in place.

pub mod deep_research;
pub mod gateway_kind;
pub mod history;
pub mod limiter;
pub mod llm;
pub mod offline;
pub mod params;
pub mod parser;
pub mod policy;
pub mod prompt;
pub mod research;
pub mod research_trigger;
pub mod schema;
mod source;
pub mod structured;
mod text;
pub mod tool_calls;
pub mod tools;

pub use parser::{parse_plan, AnswerShape, ParseError, PlannedIteration, PlannedStep};
pub use policy::{filter_tools, AgentPolicy, Decision, PolicyError};
pub use prompt::{build_prompt, AgentContext, MissionView, Prompt, PromptInput, ResolvedInput};
pub use research_trigger::{needs_research, research_input, Article};
pub use source::Planner;
pub use tools::{
    BuiltinCatalog, CatalogChoice, CatalogError, CatalogProblem, ParamSpec, ParamType, ToolCatalog,
    ToolSpec,
};

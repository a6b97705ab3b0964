//! Planner: tool catalog, agent policy, prompt, strict parser, LLM and research clients.

pub mod llm;
pub mod research;

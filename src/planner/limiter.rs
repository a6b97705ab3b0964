//! Adaptive concurrency towards the LLM gateway (issue 9; filled in by the load work).

-- The model mana-llm resolved the planner's alias to (its
-- X-Mana-LLM-Resolved answer header), per run: which model wrote a plan.
-- NULL for runs before this migration, runs without an answer, and
-- gateways that do not send the header.
ALTER TABLE mana_ai.mission_runs ADD COLUMN resolved_model text;

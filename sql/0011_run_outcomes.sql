-- mission_runs.outcome as a closed set (issue 20): the strings of
-- `run_record::RunOutcome`, and nothing else. A test compares this list
-- with the type, so the two cannot drift; a build that adds an outcome adds
-- a migration that widens this check.
--
-- Rows older than this check may hold a string no build writes any more:
-- the constraint is added NOT VALID (it holds for every row written from
-- now on) and validated when the old rows allow it.

ALTER TABLE mana_ai.mission_runs
    ADD CONSTRAINT mission_runs_outcome_known CHECK (outcome IS NULL OR outcome IN ('written', 'failed', 'error', 'abandoned', 'skipped-paused', 'skipped-archived', 'skipped-concurrency', 'skipped-budget', 'skipped-missing-agent', 'skipped-bad-policy', 'skipped-encrypted', 'skipped-research-pending', 'resolving-inputs', 'calling-llm', 'parsing-response', 'finalizing'))
    NOT VALID;

DO $$
BEGIN
    ALTER TABLE mana_ai.mission_runs VALIDATE CONSTRAINT mission_runs_outcome_known;
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'mana_ai.mission_runs keeps rows with outcomes this build does not write; the check applies to new rows';
END
$$;

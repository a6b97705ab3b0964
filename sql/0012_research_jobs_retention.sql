-- Retention of research_jobs (src/retention.rs): the leader deletes the job
-- row of a mission not run for MANA_AI_RETENTION_DAYS (by its submit or
-- last poll, whichever is later): a mission deleted or paused meanwhile, or
-- a completed or dropped job whose slot is long past. A mission that runs
-- again later submits a new job. The table forces row-level security (each
-- user's jobs only in that user's scope), so, as for decrypt_audit
-- (migration 0007), two policies let exactly that delete through: only in a
-- transaction that set mana_ai.research_prune_days (the prune's own, SET
-- LOCAL), and only rows older than that many days and never younger than
-- one. Anywhere else the setting is unset or empty and both are false.
CREATE INDEX research_jobs_touched
    ON mana_ai.research_jobs (greatest(submitted_at, last_polled_at));

CREATE FUNCTION mana_ai.research_job_prunable(touched timestamptz) RETURNS boolean
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('mana_ai.research_prune_days', true), '') IS NOT NULL
        AND touched < pg_catalog.now() - pg_catalog.make_interval(days => greatest(1,
                 nullif(pg_catalog.current_setting('mana_ai.research_prune_days', true), '')::int4)),
        false)
$$;

CREATE POLICY research_jobs_prune_read ON mana_ai.research_jobs FOR SELECT
    USING (mana_ai.research_job_prunable(greatest(submitted_at, last_polled_at)));

CREATE POLICY research_jobs_prune ON mana_ai.research_jobs FOR DELETE
    USING (mana_ai.research_job_prunable(greatest(submitted_at, last_polled_at)));

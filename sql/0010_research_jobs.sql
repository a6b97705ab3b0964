-- Deep research jobs (src/run/deep; docs/interfaces.md section 6): at most one job per
-- mission at mana-research. `slot` is the nextRunAt of the run that submitted
-- it (or last polled it while pending): a completed or dropped job answers
-- for that slot only, and the next slot submits a new one. The answer itself
-- is never stored here; a retry of the same slot reads it again from
-- mana-research.
CREATE TABLE mana_ai.research_jobs (
    user_id        text        NOT NULL,
    mission_id     text        NOT NULL,
    slot           text        NOT NULL,
    task_id        text        NOT NULL,
    provider_id    text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('pending', 'completed', 'dropped')),
    submitted_at   timestamptz NOT NULL,
    last_polled_at timestamptz,
    PRIMARY KEY (user_id, mission_id)
);
-- Per user, like decrypt_audit: the runner reads and writes a user's jobs
-- only inside that user's scope (app.current_user_id).
ALTER TABLE mana_ai.research_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_ai.research_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY research_jobs_user_scope ON mana_ai.research_jobs
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));

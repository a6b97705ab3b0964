-- Retention (src/retention.rs): the leader deletes old rows in batches on
-- every safety sweep. These indexes find them without reading the tables
-- (token_usage has token_usage_ts already). The expression is the one the
-- prune uses: a row's latest claim, finish or retry time.
CREATE INDEX mission_runs_prunable
    ON mana_ai.mission_runs ((greatest(claimed_at, finished_at, retry_at)))
    WHERE state <> 'running';
CREATE INDEX dead_changes_dead_at ON mana_ai.dead_changes (dead_at);

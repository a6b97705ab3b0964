-- "Armable" (active, not deleted, with a nextRunAt: the timer wheel holds
-- exactly these missions) written once, as a stored generated column, so
-- that every query and index says `armable` instead of repeating the
-- predicate. The Rust side is `store::snapshots::armable`, which must stay
-- equal to this expression.
ALTER TABLE mana_ai.mission_snapshots
    ADD COLUMN armable boolean NOT NULL
    GENERATED ALWAYS AS (
        NOT deleted AND coalesce(state = 'active', false) AND next_run_at IS NOT NULL
    ) STORED;

-- The wheel rebuild (and the re-arming of an agent's missions) reads exactly
-- the armable missions from this index.
DROP INDEX mana_ai.mission_snapshots_armable;
CREATE INDEX mission_snapshots_armable
    ON mana_ai.mission_snapshots (user_id, mission_id) INCLUDE (next_run_at)
    WHERE armable;

-- "Every due mission now" (the runner's tick): `armable AND next_run_ts <= $1`.
-- next_run_ts is parsed from next_run_at, so it is NULL whenever that is.
DROP INDEX mana_ai.mission_snapshots_due;
CREATE INDEX mission_snapshots_due ON mana_ai.mission_snapshots (next_run_ts)
    WHERE armable AND next_run_ts IS NOT NULL;

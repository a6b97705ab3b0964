-- Snapshots of missions and agents: the LWW fold of their change rows,
-- maintained incrementally by the applier (one change at a time).
--
-- `record` is the folded record as the webapp would see it (contract
-- section 2); `fold_state` is what the incremental fold needs to stay equal
-- to a full replay (per-field stamps, the first row); the plain columns
-- (`deleted`, `state`, `next_run_at`, `agent_id`) are copies of record
-- fields so the timer wheel can be rebuilt with one indexed query.

CREATE TABLE mana_ai.mission_snapshots (
    user_id         text        NOT NULL,
    mission_id      text        NOT NULL,
    record          jsonb       NOT NULL,
    fold_state      jsonb       NOT NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    state           text,
    next_run_at     text,
    agent_id        text,
    change_count    bigint      NOT NULL DEFAULT 0,
    last_applied_at timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, mission_id)
);
COMMENT ON COLUMN mana_ai.mission_snapshots.last_applied_at IS
    'created_at of the newest change row folded into this snapshot';
COMMENT ON COLUMN mana_ai.mission_snapshots.change_count IS
    'change rows folded into this snapshot (each exactly once)';

-- The wheel rebuild reads exactly the armable missions from this index.
CREATE INDEX mission_snapshots_armable
    ON mana_ai.mission_snapshots (user_id, mission_id) INCLUDE (next_run_at)
    WHERE NOT deleted AND state = 'active' AND next_run_at IS NOT NULL;

CREATE TABLE mana_ai.agent_snapshots (
    user_id         text        NOT NULL,
    agent_id        text        NOT NULL,
    record          jsonb       NOT NULL,
    fold_state      jsonb       NOT NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    change_count    bigint      NOT NULL DEFAULT 0,
    last_applied_at timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, agent_id)
);

-- Changes the applier could not fold (poison): kept with the reason so an
-- operator can look, never retried automatically, never blocking the rows
-- behind them. record_id is cut to 200 characters (record_id_length keeps
-- the truth) because the ids that end up here are sometimes absurd.
CREATE TABLE mana_ai.dead_changes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id         bigint      NOT NULL,
    change_id        uuid        NOT NULL,
    user_id          text        NOT NULL,
    table_name       text        NOT NULL,
    record_id        text,
    record_id_length integer,
    reason           text        NOT NULL,
    detail           text        NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now()
);

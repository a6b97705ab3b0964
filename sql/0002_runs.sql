-- Mission runs: the durable claim of each due slot, token accounting and the
-- decrypt audit trail.

-- One row per (mission, slot); a slot is the nextRunAt the run was due at.
-- The write-back and `state = 'done'` commit in one transaction, guarded by
-- the claim token, so a slot yields at most one iteration; a run that died
-- leaves `running` behind for the next leader to take over.
CREATE TABLE mana_ai.mission_runs (
    user_id     text        NOT NULL,
    mission_id  text        NOT NULL,
    slot        text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('running', 'retry', 'done')),
    token       uuid        NOT NULL,
    claimed_by  uuid        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 1,
    failures    integer     NOT NULL DEFAULT 0,
    retry_at    timestamptz,
    outcome     text,
    last_error  text,
    iteration_id text,
    finished_at timestamptz,
    PRIMARY KEY (user_id, mission_id, slot)
);
CREATE INDEX mission_runs_recent ON mana_ai.mission_runs (user_id, mission_id, claimed_at DESC);

CREATE TABLE mana_ai.token_usage (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text        NOT NULL,
    agent_id    text,
    mission_id  text        NOT NULL,
    tokens_used bigint      NOT NULL,
    ts          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_usage_agent_window ON mana_ai.token_usage (user_id, agent_id, ts);
CREATE INDEX token_usage_ts ON mana_ai.token_usage (ts);

-- Append-only; users read their own rows through the audit API.
CREATE TABLE mana_ai.decrypt_audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text        NOT NULL,
    mission_id   text        NOT NULL,
    iteration_id text,
    table_name   text        NOT NULL,
    record_id    text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('ok', 'failed', 'scope-violation')),
    reason       text,
    ts           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decrypt_audit_user_ts ON mana_ai.decrypt_audit (user_id, ts DESC);
ALTER TABLE mana_ai.decrypt_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE mana_ai.decrypt_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY decrypt_audit_user_scope ON mana_ai.decrypt_audit
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));

-- Re-arming an agent's missions when the agent changes (unpaused, say).
CREATE INDEX mission_snapshots_agent ON mana_ai.mission_snapshots (user_id, agent_id)
    WHERE agent_id IS NOT NULL;

-- nextRunAt parsed by the applier (NULL when absent or unparseable), so
-- "every due mission now" is one indexed query.
ALTER TABLE mana_ai.mission_snapshots ADD COLUMN next_run_ts timestamptz;
CREATE INDEX mission_snapshots_due ON mana_ai.mission_snapshots (next_run_ts)
    WHERE NOT deleted AND state = 'active' AND next_run_ts IS NOT NULL;

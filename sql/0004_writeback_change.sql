-- The sync_changes row each write-back inserted, so the applier can tell the
-- service's own write-backs from rows that only claim its client_id (which
-- any writer may set): only the service writes mission_runs. An own
-- write-back's `iterations` is exempt from MANA_AI_MAX_FIELD_BYTES, since it
-- grows with every run and must never be set aside.
ALTER TABLE mana_ai.mission_runs ADD COLUMN change_id uuid;
CREATE UNIQUE INDEX mission_runs_change ON mana_ai.mission_runs (change_id)
    WHERE change_id IS NOT NULL;

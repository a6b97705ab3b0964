-- Retention of decrypt_audit (src/retention.rs): the leader deletes rows
-- older than MANA_AI_AUDIT_RETENTION_DAYS. The table forces row-level
-- security (each user reads only their own rows), so these two policies let
-- exactly that delete through: only in a transaction that set
-- mana_ai.audit_prune_days (the prune's own, SET LOCAL), and only rows older
-- than that many days and never younger than 30. Anywhere else the setting
-- is unset or empty and both policies are false.
CREATE INDEX decrypt_audit_ts ON mana_ai.decrypt_audit (ts);

-- Whether a row of that age may be pruned now: false unless the setting is
-- there (an unset setting must not fall back to the 30-day floor). One
-- expression without FROM, so the planner inlines it into the policies.
CREATE FUNCTION mana_ai.audit_prunable(ts timestamptz) RETURNS boolean
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('mana_ai.audit_prune_days', true), '') IS NOT NULL
        AND ts < pg_catalog.now() - pg_catalog.make_interval(days => greatest(30,
                 nullif(pg_catalog.current_setting('mana_ai.audit_prune_days', true), '')::int4)),
        false)
$$;

CREATE POLICY decrypt_audit_prune_read ON mana_ai.decrypt_audit FOR SELECT
    USING (mana_ai.audit_prunable(ts));

CREATE POLICY decrypt_audit_prune ON mana_ai.decrypt_audit FOR DELETE
    USING (mana_ai.audit_prunable(ts));

-- Retention of decrypt_audit (src/retention.rs): the leader deletes rows
-- older than MANA_AI_AUDIT_RETENTION_DAYS. The table forces row-level
-- security (each user reads only their own rows), so these two policies let
-- exactly that delete through: only in a transaction that set
-- mana_ai.audit_prune_days (the prune's own, SET LOCAL), and only rows older
-- than that many days and never younger than 30. Anywhere else the setting
-- is unset or empty and both policies are false.
CREATE INDEX decrypt_audit_ts ON mana_ai.decrypt_audit (ts);

CREATE POLICY decrypt_audit_prune_read ON mana_ai.decrypt_audit FOR SELECT
    USING (coalesce(
        nullif(current_setting('mana_ai.audit_prune_days', true), '') IS NOT NULL
        AND ts < now() - make_interval(days => greatest(30,
                 nullif(current_setting('mana_ai.audit_prune_days', true), '')::int4)),
        false));

CREATE POLICY decrypt_audit_prune ON mana_ai.decrypt_audit FOR DELETE
    USING (coalesce(
        nullif(current_setting('mana_ai.audit_prune_days', true), '') IS NOT NULL
        AND ts < now() - make_interval(days => greatest(30,
                 nullif(current_setting('mana_ai.audit_prune_days', true), '')::int4)),
        false));

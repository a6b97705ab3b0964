-- mana-ai DBA trigger kit: verify.
--
--   psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/verify.sql
--
-- Fails (exit status 3 under ON_ERROR_STOP) with a message naming everything
-- that is missing or wrong, one item each: every privilege the role lacks or
-- holds beyond what install.sql grants, the restrictive policy, a SUPERUSER
-- or BYPASSRLS role, and any kit object (schema, queue, install log, trigger
-- function) the role owns or is a member of the owner of. Prints
-- 'mana-ai triggers: ok' otherwise. Without service_role the grants, the
-- policy and the role are not checked. `mana-ai triggers verify` runs the
-- same checks for the role it connects as.

\set ON_ERROR_STOP 1
\if :{?service_role}
SELECT set_config('mana_ai.service_role', :'service_role', false);
\else
SELECT set_config('mana_ai.service_role', '', false);
\endif

-- @@body
DO $verify$
DECLARE
    svc text := coalesce(current_setting('mana_ai.service_role', true), '');
    missing text[] := '{}';
    wrong text[] := '{}';
    fn oid := to_regprocedure('mana_ai.enqueue_change()');
    queue regclass := to_regclass('mana_ai.change_queue');
    sync regclass := to_regclass('public.sync_changes');
    role_row pg_roles%ROWTYPE;
    chk record;
    held boolean;
    msg text := '';
BEGIN
    IF sync IS NULL THEN
        missing := missing || 'table public.sync_changes (wrong database?)'::text;
    ELSIF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = sync) THEN
        missing := missing || 'row-level security enabled on public.sync_changes'::text;
    END IF;
    IF to_regnamespace('mana_ai') IS NULL THEN
        missing := missing || 'schema mana_ai'::text;
    END IF;
    IF queue IS NULL THEN
        missing := missing || 'table mana_ai.change_queue'::text;
    ELSIF EXISTS (SELECT 1 FROM pg_sequence
                  WHERE seqrelid = pg_get_serial_sequence('mana_ai.change_queue', 'id')::regclass
                    AND seqcache <> 1) THEN
        -- Ids drawn in time order is what the claim's low-water mark relies on.
        wrong := wrong || 'the identity of mana_ai.change_queue.id caches values (CACHE must be 1)'::text;
    END IF;
    IF fn IS NULL THEN
        missing := missing || 'function mana_ai.enqueue_change()'::text;
    ELSE
        IF NOT (SELECT prosecdef FROM pg_proc WHERE oid = fn) THEN
            missing := missing || 'SECURITY DEFINER on mana_ai.enqueue_change()'::text;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE oid = fn
                       AND proconfig @> ARRAY['search_path=pg_catalog, pg_temp']) THEN
            missing := missing || 'pinned search_path on mana_ai.enqueue_change()'::text;
        END IF;
    END IF;
    IF sync IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_trigger t
        WHERE t.tgrelid = sync
          AND t.tgname = 'mana_ai_enqueue'
          AND t.tgfoid = fn
          AND t.tgenabled IN ('O', 'A')
          AND NOT t.tgisinternal
    ) THEN
        missing := missing || 'enabled trigger mana_ai_enqueue on public.sync_changes'::text;
    END IF;
    SELECT * INTO role_row FROM pg_roles WHERE rolname = svc;
    IF svc <> '' AND role_row.oid IS NULL THEN
        missing := missing || format('role %I', svc);
    ELSIF svc <> '' THEN
        IF role_row.rolsuper THEN
            wrong := wrong || format('role %I is SUPERUSER (mana-ai runs as NOSUPERUSER NOBYPASSRLS)', svc);
        END IF;
        IF role_row.rolbypassrls THEN
            wrong := wrong || format('role %I is BYPASSRLS (mana-ai runs as NOSUPERUSER NOBYPASSRLS)', svc);
        END IF;
        -- Each privilege on its own: what install.sql grants must be there,
        -- anything else on these objects must not.
        FOR chk IN
            SELECT o.kind, o.name, p.priv, p.priv = ANY (o.wanted) AS wanted
            FROM (VALUES
                ('schema', 'mana_ai', '{USAGE,CREATE}'::text[], '{USAGE,CREATE}'::text[]),
                ('table', 'mana_ai.change_queue', '{SELECT,DELETE}',
                 '{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'),
                ('table', 'mana_ai.install_log', '{}',
                 '{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'),
                ('table', 'public.sync_changes', '{SELECT,INSERT}',
                 '{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'),
                ('function', 'mana_ai.enqueue_change()', '{}', '{EXECUTE}')
            ) AS o(kind, name, wanted, every)
            CROSS JOIN LATERAL unnest(o.every) WITH ORDINALITY AS p(priv, n)
            WHERE CASE o.kind
                WHEN 'schema' THEN to_regnamespace(o.name) IS NOT NULL
                WHEN 'table' THEN to_regclass(o.name) IS NOT NULL
                ELSE to_regprocedure(o.name) IS NOT NULL
            END
              AND NOT role_row.rolsuper
            ORDER BY o.name, p.n
        LOOP
            IF chk.kind = 'schema' THEN
                held := has_schema_privilege(svc, chk.name, chk.priv);
            ELSIF chk.kind = 'function' THEN
                held := has_function_privilege(svc, chk.name, chk.priv);
            ELSIF chk.wanted OR chk.priv NOT IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES') THEN
                held := has_table_privilege(svc, chk.name, chk.priv);
            ELSE
                -- a grant on one column is an extra privilege too
                held := has_any_column_privilege(svc, chk.name, chk.priv);
            END IF;
            IF chk.wanted AND NOT held THEN
                missing := missing || format('privilege %s on %s %s for role %I', chk.priv, chk.kind, chk.name, svc);
            ELSIF held AND NOT chk.wanted THEN
                wrong := wrong || format('extra privilege %s on %s %s for role %I', chk.priv, chk.kind, chk.name, svc);
            END IF;
        END LOOP;
        IF sync IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_policy p
            WHERE p.polrelid = sync
              AND p.polname = 'mana_ai_writeback_only'
              AND NOT p.polpermissive
              AND p.polcmd = 'a'
              AND (role_row.oid = ANY (p.polroles) OR 0::oid = ANY (p.polroles))
              AND pg_get_expr(p.polwithcheck, p.polrelid) =
                  '((app_id = ''ai''::text) AND (table_name = ''aiMissions''::text) AND (client_id = ''mana-ai-runner''::text))'
        ) THEN
            missing := missing || format(
                'restrictive policy mana_ai_writeback_only on public.sync_changes for role %I (inserts only app_id ''ai'', table_name ''aiMissions'', client_id ''mana-ai-runner'')', svc);
        END IF;
        -- An owner of these could run code as the trigger's definer.
        FOR chk IN
            SELECT 'schema' AS kind, 'mana_ai' AS name, nspowner AS owner
            FROM pg_namespace WHERE nspname = 'mana_ai'
            UNION ALL
            SELECT 'table', format('%I.%I', n.nspname, c.relname), c.relowner
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid IN (queue, to_regclass('mana_ai.install_log'), sync)
            UNION ALL
            SELECT 'function', 'mana_ai.enqueue_change()', proowner FROM pg_proc WHERE oid = fn
            UNION ALL
            SELECT 'procedure', 'mana_ai.backfill_history(int)', proowner FROM pg_proc
            WHERE oid = to_regprocedure('mana_ai.backfill_history(int)')
        LOOP
            IF NOT role_row.rolsuper AND pg_has_role(svc, chk.owner, 'MEMBER') THEN
                wrong := wrong || format(
                    '%s %s is owned by %s, which is or includes the service role %I (an owner could run code as the trigger''s definer or drop the kit''s safeguards)',
                    chk.kind, chk.name, chk.owner::regrole, svc);
            END IF;
        END LOOP;
    END IF;
    IF cardinality(missing) > 0 THEN
        msg := 'missing: ' || array_to_string(missing, '; ');
    END IF;
    IF cardinality(wrong) > 0 THEN
        msg := concat_ws('; ', nullif(msg, ''), 'wrong: ' || array_to_string(wrong, '; '));
    END IF;
    IF msg <> '' THEN
        RAISE EXCEPTION 'mana-ai triggers not installed correctly; %', msg
            USING HINT = 'a superuser runs: psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/install.sql (it takes back ownership; extra privileges it leaves to you: REVOKE them)';
    END IF;
    -- Which generation the log is (the kit serves both; see sync::generation).
    RAISE NOTICE 'mana-ai triggers: ok; public.sync_changes is %', CASE
        WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = sync AND attname = 'field_meta' AND NOT attisdropped)
            THEN 'current (field_meta)'
        WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = sync AND attname = 'field_timestamps' AND NOT attisdropped)
            THEN 'v0.6 (field_timestamps)'
        ELSE 'of neither generation (no field_timestamps, no field_meta)' END;
END
$verify$;

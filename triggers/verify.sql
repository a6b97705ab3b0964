-- mana-ai DBA trigger kit: verify.
--
--   psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/verify.sql
--
-- Fails (exit status 3 under ON_ERROR_STOP) with a message naming everything
-- that is missing; prints 'mana-ai triggers: ok' otherwise. Without
-- service_role the grants are not checked. `mana-ai triggers verify` runs the
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
    fn oid := to_regprocedure('mana_ai.enqueue_change()');
    queue regclass := to_regclass('mana_ai.change_queue');
BEGIN
    IF to_regclass('public.sync_changes') IS NULL THEN
        missing := missing || 'table public.sync_changes (wrong database?)'::text;
    END IF;
    IF to_regnamespace('mana_ai') IS NULL THEN
        missing := missing || 'schema mana_ai'::text;
    END IF;
    IF queue IS NULL THEN
        missing := missing || 'table mana_ai.change_queue'::text;
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
    IF to_regclass('public.sync_changes') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_trigger t
        WHERE t.tgrelid = 'public.sync_changes'::regclass
          AND t.tgname = 'mana_ai_enqueue'
          AND t.tgfoid = fn
          AND t.tgenabled IN ('O', 'A')
          AND NOT t.tgisinternal
    ) THEN
        missing := missing || 'enabled trigger mana_ai_enqueue on public.sync_changes'::text;
    END IF;
    IF svc <> '' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = svc) THEN
            missing := missing || format('role %I', svc);
        ELSE
            IF to_regnamespace('mana_ai') IS NOT NULL
               AND NOT has_schema_privilege(svc, 'mana_ai', 'USAGE, CREATE') THEN
                missing := missing || format('USAGE, CREATE on schema mana_ai for %I', svc);
            END IF;
            IF queue IS NOT NULL AND NOT has_table_privilege(svc, queue, 'SELECT, DELETE') THEN
                missing := missing || format('SELECT, DELETE on mana_ai.change_queue for %I', svc);
            END IF;
            IF to_regclass('public.sync_changes') IS NOT NULL
               AND NOT has_table_privilege(svc, 'public.sync_changes', 'SELECT, INSERT') THEN
                missing := missing || format('SELECT, INSERT on public.sync_changes for %I', svc);
            END IF;
        END IF;
    END IF;
    IF cardinality(missing) > 0 THEN
        RAISE EXCEPTION 'mana-ai triggers not installed correctly; missing: %', array_to_string(missing, '; ')
            USING HINT = 'a superuser runs: psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/install.sql';
    END IF;
    RAISE NOTICE 'mana-ai triggers: ok';
END
$verify$;

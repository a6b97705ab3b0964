-- mana-ai DBA trigger kit: uninstall.
--
--   psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/uninstall.sql
--
-- Removes the trigger, its function, the backfill procedure, the queue, the
-- install log (and a backfill's staging table) and the
-- restrictive policy mana_ai_writeback_only, and revokes everything
-- install.sql granted: USAGE and CREATE on schema mana_ai, SELECT and INSERT
-- on public.sync_changes (the queue's grants go with the queue). Without
-- service_role it revokes from the roles the policy names and those that may
-- delete from the queue (whom install.sql granted). It keeps the service's
-- own tables (snapshots, audit, token usage) in schema mana_ai, out of the
-- role's reach; drop the schema yourself to remove those too:
-- DROP SCHEMA mana_ai CASCADE;  Re-installing later backfills history again.

\set ON_ERROR_STOP 1
\if :{?service_role}
SELECT set_config('mana_ai.service_role', :'service_role', false);
\else
SELECT set_config('mana_ai.service_role', '', false);
\endif

-- @@body
BEGIN;
DO $revoke$
DECLARE
    svc text := coalesce(current_setting('mana_ai.service_role', true), '');
    queue regclass := to_regclass('mana_ai.change_queue');
    sync regclass := to_regclass('public.sync_changes');
    role_name text;
BEGIN
    FOR role_name IN
        SELECT rolname FROM pg_roles WHERE rolname = svc
        UNION
        SELECT a.rolname FROM pg_policy p JOIN pg_roles a ON a.oid = ANY (p.polroles)
        WHERE p.polrelid = sync AND p.polname = 'mana_ai_writeback_only'
        UNION
        SELECT a.rolname
        FROM pg_class c
        CROSS JOIN LATERAL aclexplode(c.relacl) acl
        JOIN pg_roles a ON a.oid = acl.grantee
        WHERE c.oid = queue AND acl.privilege_type = 'DELETE' AND acl.grantee <> c.relowner
    LOOP
        IF to_regnamespace('mana_ai') IS NOT NULL THEN
            EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA mana_ai FROM %I', role_name);
        END IF;
        IF sync IS NOT NULL THEN
            EXECUTE format('REVOKE SELECT, INSERT ON public.sync_changes FROM %I', role_name);
        END IF;
        RAISE NOTICE 'uninstall.sql: revoked the grants of role %', quote_ident(role_name);
    END LOOP;
    IF sync IS NOT NULL THEN
        DROP POLICY IF EXISTS mana_ai_writeback_only ON public.sync_changes;
    END IF;
END
$revoke$;
DROP TRIGGER IF EXISTS mana_ai_enqueue ON public.sync_changes;
DROP FUNCTION IF EXISTS mana_ai.enqueue_change();
DROP PROCEDURE IF EXISTS mana_ai.backfill_history(int);
DROP TABLE IF EXISTS mana_ai.install_backfill;
DROP TABLE IF EXISTS mana_ai.change_queue;
DROP TABLE IF EXISTS mana_ai.install_log;
COMMIT;

-- mana-ai DBA trigger kit: install.
--
-- Run by a superuser in the mana_sync database:
--   psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/install.sql
--
-- What it does (re-running it changes nothing), in three steps:
--   * creates schema mana_ai and the durable change queue mana_ai.change_queue;
--   * creates the SECURITY DEFINER trigger function mana_ai.enqueue_change()
--     (pinned search_path) and the AFTER INSERT trigger mana_ai_enqueue on
--     public.sync_changes, which fires only for app_id='ai' missions and
--     agents: every other app's insert pays only for the WHEN test;
--   * on the first install, queues every existing mission/agent change once so
--     the service picks up history: first in chunks of 50,000 rows, each its
--     own transaction, while the sync server keeps writing (no lock on
--     sync_changes); then, in one short transaction that locks sync_changes
--     against inserts, it creates the trigger and queues what the chunks did
--     not see (mana_ai.install_backfill remembers what they queued), so no
--     change is missed and none is queued twice;
--   * grants <role> exactly what the service needs: USAGE and CREATE on schema
--     mana_ai (its migrations create its own tables there), SELECT and DELETE
--     on the queue, SELECT and INSERT on public.sync_changes (row-level
--     security still limits it to one user per transaction);
--   * adds the restrictive row-level policy mana_ai_writeback_only on
--     public.sync_changes: <role> may insert only write-back rows
--     (app_id 'ai', table_name 'aiMissions', client_id 'mana-ai-runner');
--   * takes back ownership of the kit's objects from <role> if it had any
--     (an owner of the queue or the trigger function could run code as the
--     trigger's definer).
--
-- The NOTIFY payload is empty: it is a wake-up hint, never data, so it stays
-- far below the 8000-byte limit whatever the ids, and Postgres folds the
-- notifications of one transaction into one.

\set ON_ERROR_STOP 1
\if :{?service_role}
SELECT set_config('mana_ai.service_role', :'service_role', false);
\else
\echo 'install.sql: name the service role: psql -v ON_ERROR_STOP=1 -v service_role=<role> -f triggers/install.sql'
SELECT set_config('mana_ai.service_role', '', false);
\endif

-- @@body: everything below is plain SQL; `mana-ai triggers install` runs it
-- after setting mana_ai.service_role itself.
BEGIN;

DO $check$
DECLARE
    svc text := current_setting('mana_ai.service_role', true);
BEGIN
    IF coalesce(svc, '') = '' THEN
        RAISE EXCEPTION 'install.sql: no service role given (psql -v service_role=<role>)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = svc) THEN
        RAISE EXCEPTION 'install.sql: role % does not exist; create it first: CREATE ROLE % LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD ''...''',
            quote_ident(svc), quote_ident(svc);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = svc AND (rolsuper OR rolbypassrls)) THEN
        RAISE WARNING 'install.sql: role % is SUPERUSER or BYPASSRLS; mana-ai should run as an ordinary role (NOSUPERUSER NOBYPASSRLS)', quote_ident(svc);
    END IF;
    IF to_regclass('public.sync_changes') IS NULL THEN
        RAISE EXCEPTION 'install.sql: table public.sync_changes not found: run this in the mana_sync database';
    END IF;
    -- The kit reads neither stamp column, so it serves both generations;
    -- which one this is, the DBA sees here (and the service at its start).
    RAISE NOTICE 'install.sql: public.sync_changes is %', CASE
        WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'public.sync_changes'::regclass AND attname = 'field_meta' AND NOT attisdropped)
            THEN 'current (field_meta)'
        WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'public.sync_changes'::regclass AND attname = 'field_timestamps' AND NOT attisdropped)
            THEN 'v0.6 (field_timestamps)'
        ELSE 'of neither generation (no field_timestamps, no field_meta)' END;
END
$check$;

CREATE SCHEMA IF NOT EXISTS mana_ai;

-- The durable record of work. NOTIFY only wakes the service; this table is
-- what it drains. No index but the key: the trigger's insert stays cheap and
-- ids of any length fit.
CREATE TABLE IF NOT EXISTS mana_ai.change_queue (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    change_id  uuid        NOT NULL,
    user_id    text        NOT NULL,
    table_name text        NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE mana_ai.change_queue IS
    'mana-ai: mission/agent changes waiting to be folded into snapshots (filled by trigger mana_ai_enqueue)';

-- What install.sql has done once (the history backfill).
CREATE TABLE IF NOT EXISTS mana_ai.install_log (
    step text PRIMARY KEY,
    done_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION mana_ai.enqueue_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO mana_ai.change_queue (change_id, user_id, table_name)
    VALUES (NEW.id, NEW.user_id, NEW.table_name);
    PERFORM pg_notify('mana_ai_changes', '');
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION mana_ai.enqueue_change() FROM PUBLIC;
COMMENT ON FUNCTION mana_ai.enqueue_change() IS
    'mana-ai: queue a mission/agent change and wake the service';

-- What the history backfill has queued so far (dropped when it is done;
-- kept by an interrupted install, whose re-run goes on where it stopped).
-- The installer runs the backfill, so the table must be exactly the one it
-- made: one it does not own, or with triggers or rules, is dropped first.
DO $staging$
DECLARE
    t regclass := to_regclass('mana_ai.install_backfill');
BEGIN
    IF t IS NOT NULL AND (
        (SELECT relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
                OR relkind <> 'r' OR relhastriggers OR relhasrules
         FROM pg_class WHERE oid = t)
    ) THEN
        RAISE NOTICE 'install.sql: dropping mana_ai.install_backfill, which this installer did not make';
        DROP TABLE mana_ai.install_backfill CASCADE;
    END IF;
END
$staging$;
CREATE TABLE IF NOT EXISTS mana_ai.install_backfill (change_id uuid PRIMARY KEY);

-- Queues the history of mission/agent changes not queued yet, in chunks of
-- `chunk` rows, committing after each (so it must be CALLed outside a
-- transaction block). Oldest first; the fold does not depend on the order.
-- A procedure that commits may not carry a SET clause, so it pins its
-- search_path itself, for each transaction.
CREATE OR REPLACE PROCEDURE mana_ai.backfill_history(chunk int)
    LANGUAGE plpgsql
AS $proc$
DECLARE
    n bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM mana_ai.install_log WHERE step = 'backfill') THEN
        RETURN;
    END IF;
    LOOP
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        WITH batch AS (
            SELECT c.id, c.user_id, c.table_name, c.created_at, c.cmin::text::bigint AS cmin, c.ctid
            FROM public.sync_changes c
            WHERE c.app_id = 'ai' AND c.table_name IN ('aiMissions', 'agents')
              AND NOT EXISTS (SELECT 1 FROM mana_ai.install_backfill b WHERE b.change_id = c.id)
            ORDER BY c.created_at, c.cmin::text::bigint, c.ctid
            LIMIT chunk
        ), remembered AS (
            INSERT INTO mana_ai.install_backfill (change_id) SELECT id FROM batch
        )
        INSERT INTO mana_ai.change_queue (change_id, user_id, table_name)
        SELECT id, user_id, table_name FROM batch ORDER BY created_at, cmin, ctid;
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        EXIT WHEN n < chunk;
    END LOOP;
END
$proc$;
REVOKE ALL ON PROCEDURE mana_ai.backfill_history(int) FROM PUBLIC;

-- The kit's objects belong to the installer, never to the service role: an
-- owner of the schema, the queue or the SECURITY DEFINER function could run
-- code as the function's owner on every sync_changes insert, and an owner of
-- the backfill procedure could run code as the installer.
DO $owners$
DECLARE
    svc text := current_setting('mana_ai.service_role');
    obj record;
BEGIN
    FOR obj IN
        SELECT 'SCHEMA' AS kind, 'mana_ai' AS name, nspowner AS owner
        FROM pg_namespace WHERE nspname = 'mana_ai'
        UNION ALL
        SELECT 'TABLE', oid::regclass::text, relowner FROM pg_class
        WHERE oid IN ('mana_ai.change_queue'::regclass, 'mana_ai.install_log'::regclass)
        UNION ALL
        SELECT 'FUNCTION', 'mana_ai.enqueue_change()', proowner FROM pg_proc
        WHERE oid = 'mana_ai.enqueue_change()'::regprocedure
        UNION ALL
        SELECT 'PROCEDURE', 'mana_ai.backfill_history(int)', proowner FROM pg_proc
        WHERE oid = to_regprocedure('mana_ai.backfill_history(int)')
    LOOP
        IF pg_has_role(svc, obj.owner, 'MEMBER') THEN
            RAISE NOTICE 'install.sql: % % was owned by %; now owned by %',
                lower(obj.kind), obj.name, obj.owner::regrole, current_user;
            EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, current_user);
        END IF;
    END LOOP;
END
$owners$;

COMMIT;

-- @@step: the bulk of the history, without a lock on sync_changes.
CALL mana_ai.backfill_history(50000);

-- @@step: the trigger and the rest of the history, under a short lock.
BEGIN;

-- Blocks concurrent inserts until COMMIT: every change is either committed
-- before (and queued by the chunks or just below) or after (and seen by the
-- trigger).
LOCK TABLE public.sync_changes IN SHARE ROW EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS mana_ai_enqueue ON public.sync_changes;
CREATE TRIGGER mana_ai_enqueue
    AFTER INSERT ON public.sync_changes
    FOR EACH ROW
    WHEN (NEW.app_id = 'ai' AND NEW.table_name IN ('aiMissions', 'agents'))
    EXECUTE FUNCTION mana_ai.enqueue_change();

INSERT INTO mana_ai.change_queue (change_id, user_id, table_name)
SELECT c.id, c.user_id, c.table_name
FROM public.sync_changes c
WHERE c.app_id = 'ai'
  AND c.table_name IN ('aiMissions', 'agents')
  AND NOT EXISTS (SELECT 1 FROM mana_ai.install_log WHERE step = 'backfill')
  AND NOT EXISTS (SELECT 1 FROM mana_ai.install_backfill b WHERE b.change_id = c.id)
ORDER BY c.created_at, c.cmin::text::bigint, c.ctid;  -- insertion order (see src/sync/fold.rs)
INSERT INTO mana_ai.install_log (step) VALUES ('backfill') ON CONFLICT DO NOTHING;
DROP TABLE mana_ai.install_backfill;

DO $grant$
DECLARE
    svc text := current_setting('mana_ai.service_role');
BEGIN
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA mana_ai TO %I', svc);
    EXECUTE format('GRANT SELECT, DELETE ON mana_ai.change_queue TO %I', svc);
    EXECUTE format('GRANT SELECT, INSERT ON public.sync_changes TO %I', svc);
END
$grant$;

-- What the service role may insert: its write-back rows and nothing else
-- (row-level security on sync_changes still limits it to one user). Roles
-- an earlier install named keep their place in the policy.
DO $policy$
DECLARE
    svc text := current_setting('mana_ai.service_role');
    roles text;
BEGIN
    SELECT string_agg(DISTINCT quote_ident(r.rolname), ', ') INTO roles
    FROM (
        SELECT svc AS rolname
        UNION ALL
        SELECT a.rolname
        FROM pg_policy p
        JOIN pg_roles a ON a.oid = ANY (p.polroles)
        WHERE p.polrelid = 'public.sync_changes'::regclass
          AND p.polname = 'mana_ai_writeback_only'
          AND NOT p.polpermissive AND p.polcmd = 'a'
    ) r;
    DROP POLICY IF EXISTS mana_ai_writeback_only ON public.sync_changes;
    EXECUTE format(
        $sql$CREATE POLICY mana_ai_writeback_only ON public.sync_changes
               AS RESTRICTIVE FOR INSERT TO %s
               WITH CHECK (app_id = 'ai' AND table_name = 'aiMissions' AND client_id = 'mana-ai-runner')$sql$,
        roles);
END
$policy$;

-- Wake a running service so it drains the backfill now.
SELECT pg_notify('mana_ai_changes', '');

COMMIT;

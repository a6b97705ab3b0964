-- mana-ai DBA trigger kit: uninstall.
--
--   psql -v ON_ERROR_STOP=1 -f triggers/uninstall.sql
--
-- Removes the trigger, its function, the queue and the install log. It keeps
-- the service's own tables (snapshots, audit, token usage) in schema mana_ai;
-- drop the schema yourself to remove those too:  DROP SCHEMA mana_ai CASCADE;
-- Re-installing later backfills history again.

\set ON_ERROR_STOP 1

-- @@body
BEGIN;
DROP TRIGGER IF EXISTS mana_ai_enqueue ON public.sync_changes;
DROP FUNCTION IF EXISTS mana_ai.enqueue_change();
DROP TABLE IF EXISTS mana_ai.change_queue;
DROP TABLE IF EXISTS mana_ai.install_log;
COMMIT;

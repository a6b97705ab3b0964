-- The fold now folds as the webapp does (contract section 2, issue 8): rows
-- of one transaction in insertion order, `deletedAt` a field that a newer
-- row may clear, the first row's stamps seeding every field they name,
-- numbers with every digit. Snapshots folded by the old rule can be wrong
-- in exactly those ways, and their `fold_state` has a new shape, so they are
-- rebuilt from `sync_changes`, not decoded.
--
-- The service role may not insert into mana_ai.change_queue (install.sql
-- grants it SELECT and DELETE) and sees one user at a time (forced RLS), so
-- this migration only lists the users to rebuild; the leader rebuilds them
-- at its next start, before it arms any mission (src/reactor/rebuild.rs),
-- one transaction per user, deleting each entry as it commits.

CREATE TABLE mana_ai.fold_rebuild (
    user_id   text        PRIMARY KEY,
    listed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mana_ai.fold_rebuild IS
    'mana-ai: users whose snapshots the leader rebuilds from sync_changes at its next start';

INSERT INTO mana_ai.fold_rebuild (user_id)
SELECT user_id FROM mana_ai.mission_snapshots
UNION
SELECT user_id FROM mana_ai.agent_snapshots;

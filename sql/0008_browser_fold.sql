-- The fold now folds as the browser folds (contract section 2, rewritten in
-- issue 18): an update key without a stamp changes nothing, an insert is
-- stamped with its own updatedAt/createdAt, a delete removes the record or
-- writes deletedAt by LWW. Snapshots folded by the rule before can differ in
-- exactly those ways, and their fold_state has another shape (it now carries
-- a version; a state without it is never folded into), so every user with a
-- snapshot is listed again for the rebuild from sync_changes that migration
-- 0003 introduced: the leader replays them at its next start, before it arms
-- any mission (src/reactor/rebuild.rs).

INSERT INTO mana_ai.fold_rebuild (user_id)
SELECT user_id FROM mana_ai.mission_snapshots
UNION
SELECT user_id FROM mana_ai.agent_snapshots
ON CONFLICT (user_id) DO NOTHING;

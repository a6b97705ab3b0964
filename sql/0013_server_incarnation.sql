-- The server's incarnation (src/reactor/low_water.rs): one row in an
-- UNLOGGED table, which Postgres empties whenever it recovers from a crash
-- (of the server, or of any one server process: the others are stopped and
-- the WAL on disk replayed, and the start time stays). The applier's
-- batches commit without waiting for the WAL flush, so such a crash loses
-- the last ones and brings their queue rows back below the claim's
-- low-water mark. The claim reads this row; when it is gone, the mark
-- starts again from the beginning of the queue and the applier writes a new
-- one. A clean restart keeps it (and changes the start time, which the
-- claim reads too).
CREATE UNLOGGED TABLE mana_ai.server_incarnation (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id  uuid    NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO mana_ai.server_incarnation DEFAULT VALUES;

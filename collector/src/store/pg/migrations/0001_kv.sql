-- The key-value trees of PgStorage (the sync `Tree` seam): one row per entry.
-- Rows are written only by flushes (one transaction each), read at open.
CREATE TABLE pikett_kv (
    tree  text  NOT NULL,
    key   bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tree, key)
);

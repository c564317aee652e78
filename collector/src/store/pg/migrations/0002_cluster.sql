-- Leadership among collectors (HA design step 6): one lease row with a fencing term, and
-- every node's heartbeat. All times are the database's clock (now()), never a node's.
-- Named pikett_* like every pikett table (the database may hold other tools' tables).
--
-- The lease: `holder` leads with `term` until `expires_at`. A node takes it only when it is
-- free (holder NULL, after a clean release), expired or its own already (an acquire that
-- committed after the node gave up on it), and then under term + 1; the holder renews it
-- with its term while it has not expired. The renewal updates only this row.
CREATE TABLE pikett_leader_lease (
    id         int         PRIMARY KEY CHECK (id = 1),
    holder     text,
    term       bigint      NOT NULL,
    expires_at timestamptz
);
INSERT INTO pikett_leader_lease (id, holder, term, expires_at) VALUES (1, NULL, 0, NULL);

-- What the fence locks: the lease's term, written only by an acquire (in the acquire's
-- transaction, after the lease row). Leader-only transactions start by locking this row
-- FOR SHARE with their term (the fence; it reads the lease row above without a lock), so a
-- new term cannot be taken while a transaction of an old one is open, while the leader's
-- renewals (of the lease row) never wait for its own fenced transactions.
CREATE TABLE pikett_leader_fence (
    id   int    PRIMARY KEY CHECK (id = 1),
    term bigint NOT NULL
);
INSERT INTO pikett_leader_fence (id, term) VALUES (1, 0);

-- One row per collector node, upserted by its heartbeat.
CREATE TABLE pikett_collectors (
    node         text PRIMARY KEY,
    addr         text NOT NULL DEFAULT '',
    version      text NOT NULL DEFAULT '',
    started_at   timestamptz,
    heartbeat_at timestamptz
);

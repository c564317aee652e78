-- The batches agents send and the host registry (HA design step 5), written by every
-- collector node at once: each stores what its agents send, in one transaction per group.
--
-- u64 values of the protocol (spool epochs, sequence numbers, counters) are stored in bigint
-- by bit-cast: equality is exact for every value, order only below 2^63, which sequence
-- numbers (counting from 1) and counters never reach. Epochs are only compared for equality.
-- All times are the database's clock (now()), never a node's.

-- One row per stored batch; the primary key is what tells a duplicate (a resend, or the same
-- batch stored by another node) across nodes: INSERT ... ON CONFLICT DO NOTHING.
CREATE TABLE pikett_batches (
    host              text        NOT NULL,
    epoch             bigint      NOT NULL,
    seq               bigint      NOT NULL,
    customer          text        NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    received_by       text        NOT NULL,
    -- The encoded pikett.v1.Batch, as received.
    payload           bytea       NOT NULL,
    -- Samples not kept for /metrics by the receiving node (the host was at its series limit).
    series_over_limit bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (host, epoch, seq)
);
-- Retention deletes by arrival, oldest first.
CREATE INDEX pikett_batches_received_at ON pikett_batches (received_at);

-- The highest sequence number stored per (host, spool epoch), raised with greatest(): what
-- the Welcome tells an agent, and where the evaluator looks for work.
-- Retention deletes the rows of old epochs (not the host's current one) once none of their
-- batches is left and the row was not raised since the cutoff.
CREATE TABLE pikett_batch_heads (
    host       text        NOT NULL,
    epoch      bigint      NOT NULL,
    last_seq   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, epoch)
);

-- The host registry. Several nodes update a row at once, so every write is SQL arithmetic
-- on the row (never a read-modify-write by a node). `version` counts the row's writes: a
-- node's in-memory mirror keeps the newest version it has seen of each row.
CREATE TABLE pikett_hosts (
    host_id         text        PRIMARY KEY,
    customer        text        NOT NULL,
    agent_version   text        NOT NULL,
    capabilities    text[]      NOT NULL DEFAULT '{}',
    min_interval_ms bigint      NOT NULL DEFAULT 0,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    spool_epoch     bigint      NOT NULL DEFAULT 0,
    last_seq        bigint      NOT NULL DEFAULT 0,
    batches         bigint      NOT NULL DEFAULT 0,
    retained        bigint      NOT NULL DEFAULT 0,
    spool_resets    bigint      NOT NULL DEFAULT 0,
    dropped_samples bigint      NOT NULL DEFAULT 0,
    dropped_other   bigint      NOT NULL DEFAULT 0,
    removed_at      timestamptz,
    version         bigint      NOT NULL DEFAULT 1
);

-- Agent statuses (checks only, never spooled): kept until the leader evaluates them.
CREATE TABLE pikett_agent_status (
    id                bigserial   PRIMARY KEY,
    host              text        NOT NULL,
    customer          text        NOT NULL,
    epoch             bigint      NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    received_by       text        NOT NULL,
    payload           bytea       NOT NULL,
    series_over_limit bigint      NOT NULL DEFAULT 0
);
CREATE INDEX pikett_agent_status_received_at ON pikett_agent_status (received_at);

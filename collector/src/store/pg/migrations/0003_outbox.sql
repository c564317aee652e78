-- The notification outbox shared by the collector nodes (HA design step 9): one row per
-- notification, keyed by its idempotency key (`FAULT/STEP`).
--
-- `entry` is the whole entry as JSON text (what the sled outbox stores; text, not jsonb, which
-- refuses a \u0000 escape); the columns beside it are what the queries select on. Times are
-- Unix microseconds of the leader's clock, like the entries' own: `next_attempt_us` comes from
-- the retry backoff, `claim_until_us` is compared only within one term, that is on one node.
--
-- Claims: the leader claims due rows (`claimed_by`, `claim_term`, `claim_until_us`,
-- `claim_token`) in a transaction fenced by its lease term, `FOR UPDATE SKIP LOCKED`; a claim
-- of an older term is taken over at once, one of the same term after `claim_until_us`. Each
-- claim has a token of its own (random), so a result is written only
-- `WHERE claimed_by = $me AND claim_term = $term AND claim_token = $token`, and ends the claim:
-- an attempt whose claim ran out and was claimed again by its own term records nothing. A row
-- is claimed while `claimed_by` is set; ending a claim keeps `claim_term` (the last term that
-- held it), so a late result is refused as its own term's or as an older term's.
CREATE TABLE pikett_outbox (
    id              text   PRIMARY KEY,
    state           text   NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'quarantined')),
    entry           text   NOT NULL,
    next_attempt_us bigint NOT NULL,
    finished_at_us  bigint,
    claimed_by      text,
    claim_term      bigint,
    claim_until_us  bigint,
    claim_token     bigint,
    enqueued_by     text   NOT NULL,
    enqueued_term   bigint NOT NULL
);
CREATE INDEX pikett_outbox_due ON pikett_outbox (next_attempt_us, id) WHERE state = 'pending';
CREATE INDEX pikett_outbox_finished ON pikett_outbox (finished_at_us) WHERE state IN ('delivered', 'failed');

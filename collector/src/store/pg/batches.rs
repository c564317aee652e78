//! [`BatchStore`] on PostgreSQL (migration 0004): the batches every collector node stores, the
//! per-(host, epoch) heads and the host registry, shared by the nodes of a cluster.
//!
//! - Storing ([`PgBatches::store_group`]): one transaction per group of the writer. The batch
//!   rows go in with `INSERT … ON CONFLICT DO NOTHING RETURNING`: what comes back is New,
//!   the rest Duplicate (stored before, by this node or another). The primary key decides, so
//!   two nodes storing the same batch at once get exactly one New: the second insert waits for
//!   the first's transaction and then conflicts (or, when that rolled back, inserts). Rows of
//!   every table are written in sorted key order, so two writers lock in the same order and do
//!   not deadlock each other. The heads and the hosts rows are raised by SQL arithmetic on the
//!   row (`+ n`, `greatest`), never read-modify-write in Rust: several nodes update one host.
//!   COMMIT runs with `synchronous_commit = on`: when the group's answer is Ok it is durable,
//!   and only then do agents get their acks. No NOTIFY: it would take a cluster-wide lock at
//!   COMMIT and serialize every node's commits; the leader polls (every 200 ms) and its own
//!   writer wakes it.
//! - Reading for the evaluator: one round trip for many streams ([`PgBatches::after_many`],
//!   a `LATERAL` read per stream), and seq-only reads for gap and late checks
//!   ([`PgBatches::seqs_many`]), which touch the primary key, never a payload.
//! - Retention ([`BatchStore::prune_before`]) deletes the oldest batches and lowers the
//!   `retained` of their hosts in the same short transaction, locking those host rows in
//!   `host_id` order first, as the writers do: no deadlock with a writer, and the host rows
//!   are held only for the update and the COMMIT. Then, each in a statement of its own, the
//!   statuses left behind and the heads rows of old epochs (no batch left, not the host's
//!   current epoch, not raised since the cutoff).
//! - The host registry is mirrored in memory (the trait's synchronous reads). A node updates
//!   its mirror from what its own writes returned and reloads it every second
//!   ([`PgBatches::spawn_refresh`]) for what other nodes wrote. Each row carries a `version`
//!   that every write raises, and the mirror keeps the highest version it has seen of each
//!   host, so a reload that read an older snapshot never undoes a newer local write.
//! - Times of the registry and of the batches are the database's clock (`now()`), in Unix
//!   milliseconds when read; `received_at` is the storing transaction's start.
//! - u64 values (epochs, sequence numbers, counters) are stored in `bigint` by bit-cast (see
//!   the migration): sequence numbers are compared in the database, which is exact below 2^63.
//!
//! Each kind of work has a session of its own (connected on first use, dropped after a
//! failure; see `conn::Session`): the writer, the readers of the mirror and the Welcome, the
//! evaluator's reads, and admin work (removal, retention), so a long retention step never
//! holds up an ack or an evaluation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pikett_core::hosts::HostRecord;
use tokio_postgres::Row;

use super::conn::Session;
use super::lease::fence;
use super::{PgConnect, db, migrate};
use crate::store::StoreError;
use crate::store::batch_store::{BatchStore, Outcome, Stored, WriteRequest};

/// How often [`PgBatches::spawn_refresh`]'s task re-reads the size of the batches table.
const SIZE_REFRESH: Duration = Duration::from_secs(30);

/// Unix milliseconds of a timestamptz expression.
macro_rules! ms {
    ($col:literal) => {
        concat!("floor(extract(epoch FROM ", $col, ") * 1000)::bigint")
    };
}

/// The columns of a `pikett_hosts` row as [`host_record`] reads them.
macro_rules! host_cols {
    () => {
        concat!(
            "host_id, customer, agent_version, capabilities, min_interval_ms, ",
            ms!("first_seen"),
            ", ",
            ms!("last_seen"),
            ", spool_epoch, last_seq, batches, retained, spool_resets, dropped_samples, dropped_other, coalesce(",
            ms!("removed_at"),
            ", 0), version"
        )
    };
}

/// The batch rows, in key order; RETURNING the new ones. The heads are raised from exactly
/// those (a data-modifying CTE runs to completion whether or not it is read).
const INSERT_BATCHES: &str = "WITH ins AS (\
       INSERT INTO pikett_batches (host, epoch, seq, customer, received_by, payload, series_over_limit) \
       SELECT b.host, b.epoch, b.seq, b.customer, $7, b.payload, b.series_over_limit \
       FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[], $6::int8[]) WITH ORDINALITY \
         AS b(host, epoch, seq, customer, payload, series_over_limit, n) \
       ORDER BY b.n \
       ON CONFLICT (host, epoch, seq) DO NOTHING \
       RETURNING host, epoch, seq), \
     heads AS (\
       INSERT INTO pikett_batch_heads AS hd (host, epoch, last_seq) \
       SELECT host, epoch, max(seq) FROM ins GROUP BY host, epoch ORDER BY host, epoch \
       ON CONFLICT (host, epoch) DO UPDATE SET last_seq = greatest(hd.last_seq, excluded.last_seq), \
         updated_at = now()) \
     SELECT host, epoch, seq FROM ins";

/// One row per host of the group, aggregated by the writer: the sender's fields, and of the
/// group's new batches (in request order) their count `new`, the epoch of the last one,
/// `switches` (epoch changes between them), the highest seq since the last change, and the
/// drop counts. For a host that exists, an epoch other than the host's at the first new batch
/// counts one more spool reset (when the host had batches) and starts `last_seq` afresh;
/// `$12` (the epoch of the first new batch) is read only when the group itself switched.
/// In an `UPDATE` every right-hand side sees the row as it was.
const UPSERT_HOSTS: &str = concat!(
    "INSERT INTO pikett_hosts AS h (host_id, customer, agent_version, capabilities, min_interval_ms, \
       spool_epoch, last_seq, batches, retained, spool_resets, dropped_samples, dropped_other) \
     SELECT u.host_id, u.customer, u.agent_version, ARRAY(SELECT jsonb_array_elements_text(u.caps::jsonb)), \
       u.min_interval_ms, u.epoch, u.last_seq, u.new, u.new, u.switches, u.dropped_samples, u.dropped_other \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], \
       $9::int8[], $10::int8[], $11::int8[]) \
       AS u(host_id, customer, agent_version, caps, min_interval_ms, epoch, last_seq, new, switches, \
         dropped_samples, dropped_other) \
     ORDER BY u.host_id \
     ON CONFLICT (host_id) DO UPDATE SET \
       customer = excluded.customer, agent_version = excluded.agent_version, \
       capabilities = excluded.capabilities, min_interval_ms = excluded.min_interval_ms, \
       last_seen = now(), removed_at = NULL, version = h.version + 1, \
       batches = h.batches + excluded.batches, retained = h.retained + excluded.retained, \
       dropped_samples = h.dropped_samples + excluded.dropped_samples, \
       dropped_other = h.dropped_other + excluded.dropped_other, \
       spool_resets = h.spool_resets + excluded.spool_resets + \
         CASE WHEN excluded.batches > 0 AND h.batches > 0 AND h.spool_epoch <> \
           CASE WHEN excluded.spool_resets = 0 THEN excluded.spool_epoch \
             ELSE (SELECT f.epoch FROM unnest($1::text[], $12::int8[]) AS f(host_id, epoch) \
                   WHERE f.host_id = excluded.host_id) END \
         THEN 1 ELSE 0 END, \
       spool_epoch = CASE WHEN excluded.batches > 0 THEN excluded.spool_epoch ELSE h.spool_epoch END, \
       last_seq = CASE WHEN excluded.batches = 0 THEN h.last_seq \
         WHEN excluded.spool_resets = 0 AND h.spool_epoch = excluded.spool_epoch \
           THEN greatest(h.last_seq, excluded.last_seq) \
         ELSE excluded.last_seq END \
     RETURNING ",
    host_cols!()
);

const INSERT_STATUSES: &str = "INSERT INTO pikett_agent_status \
       (host, customer, epoch, received_by, payload, series_over_limit) \
     SELECT s.host, s.customer, s.epoch, $6, s.payload, s.series_over_limit \
     FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::int8[]) WITH ORDINALITY \
       AS s(host, customer, epoch, payload, series_over_limit, n) \
     ORDER BY s.n";

const SELECT_HOSTS: &str = concat!("SELECT ", host_cols!(), " FROM pikett_hosts");

const REMOVE_HOST: &str = concat!(
    "UPDATE pikett_hosts SET removed_at = 'epoch'::timestamptz + $2::bigint * interval '1 millisecond', \
     version = version + 1 WHERE host_id = $1 RETURNING ",
    host_cols!()
);

const HEAD: &str = "SELECT last_seq FROM pikett_batch_heads WHERE host = $1 AND epoch = $2";
const HEADS: &str = "SELECT host, epoch, last_seq FROM pikett_batch_heads ORDER BY host, epoch";
const PAYLOAD: &str = "SELECT payload FROM pikett_batches WHERE host = $1 AND epoch = $2 AND seq = $3";
const AFTER: &str = concat!(
    "SELECT host, customer, epoch, seq, ",
    ms!("received_at"),
    ", payload, series_over_limit FROM pikett_batches \
     WHERE host = $1 AND epoch = $2 AND seq > $3 ORDER BY seq LIMIT $4"
);
/// [`AFTER`] for many streams at once: per row of the arrays (host, epoch, after, limit) the
/// batches above `after`, ascending; each row tagged with its array position (from 1).
const AFTER_MANY: &str = concat!(
    "SELECT c.i, x.host, x.customer, x.epoch, x.seq, ",
    ms!("x.received_at"),
    ", x.payload, x.series_over_limit \
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY AS c(host, epoch, after, lim, i) \
     CROSS JOIN LATERAL (\
       SELECT b.host, b.customer, b.epoch, b.seq, b.received_at, b.payload, b.series_over_limit \
       FROM pikett_batches b WHERE b.host = c.host AND b.epoch = c.epoch AND b.seq > c.after \
       ORDER BY b.seq LIMIT c.lim) x \
     ORDER BY c.i, x.seq"
);
/// The seqs stored in `lo..=hi` per row of the arrays (host, epoch, lo, hi), at most `$5` per
/// row, without payloads (the primary key answers); tagged with the array position (from 1).
const SEQS_MANY: &str = "SELECT c.i, x.seq \
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY AS c(host, epoch, lo, hi, i) \
     CROSS JOIN LATERAL (\
       SELECT b.seq FROM pikett_batches b \
       WHERE b.host = c.host AND b.epoch = c.epoch AND b.seq BETWEEN c.lo AND c.hi \
       ORDER BY b.seq LIMIT $5) x \
     ORDER BY c.i, x.seq";
const READ_STATUSES: &str = concat!(
    "SELECT id, host, customer, epoch, ",
    ms!("received_at"),
    ", payload, series_over_limit FROM pikett_agent_status ORDER BY id LIMIT $1"
);
const DELETE_STATUSES: &str = "DELETE FROM pikett_agent_status WHERE id = ANY($1::int8[])";
/// Deletes the oldest batches received before `$1` (Unix ms), at most `$2`; returns per host
/// how many went, by host.
const PRUNE_BATCHES: &str = "WITH old AS (\
       SELECT host, epoch, seq FROM pikett_batches \
       WHERE received_at < 'epoch'::timestamptz + $1::bigint * interval '1 millisecond' \
       ORDER BY received_at LIMIT $2), \
     gone AS (\
       DELETE FROM pikett_batches b USING old \
       WHERE b.host = old.host AND b.epoch = old.epoch AND b.seq = old.seq RETURNING b.host) \
     SELECT host, count(*) FROM gone GROUP BY host ORDER BY host";
/// Locks the host rows of a retention step in `host_id` order, the writers' order (the
/// rows of one `UPDATE … FROM` are locked in whatever order its join produces them).
const LOCK_HOSTS: &str = "SELECT host_id FROM pikett_hosts WHERE host_id = ANY($1::text[]) ORDER BY host_id FOR UPDATE";
/// Lowers the `retained` of each host `$1[i]` by `$2[i]`; returns the count and the new row.
const LOWER_RETAINED: &str = concat!(
    "UPDATE pikett_hosts h SET retained = greatest(h.retained - p.n, 0), version = h.version + 1 \
     FROM unnest($1::text[], $2::int8[]) AS p(host, n) WHERE h.host_id = p.host \
     RETURNING p.n, ",
    host_cols!()
);
/// Deletes at most `$2` heads rows of old epochs: no batch of the (host, epoch) left, not the
/// host's current epoch (its head is what the Welcome tells the agent), and not raised since
/// the cutoff `$1`. Locked in key order, the writers' order; a row a writer raises meanwhile
/// is re-checked (`updated_at`) and stays.
const PRUNE_HEADS: &str = "DELETE FROM pikett_batch_heads hd USING (\
       SELECT o.host, o.epoch FROM pikett_batch_heads o \
       WHERE o.updated_at < 'epoch'::timestamptz + $1::bigint * interval '1 millisecond' \
         AND NOT EXISTS (SELECT 1 FROM pikett_batches b WHERE b.host = o.host AND b.epoch = o.epoch) \
         AND NOT EXISTS (SELECT 1 FROM pikett_hosts h WHERE h.host_id = o.host AND h.spool_epoch = o.epoch) \
       ORDER BY o.host, o.epoch LIMIT $2 FOR UPDATE OF o) d \
     WHERE hd.host = d.host AND hd.epoch = d.epoch";
const PRUNE_STATUSES: &str = "DELETE FROM pikett_agent_status WHERE id IN \
       (SELECT id FROM pikett_agent_status \
        WHERE received_at < 'epoch'::timestamptz + $1::bigint * interval '1 millisecond' \
        ORDER BY id LIMIT $2)";
const TABLE_SIZE: &str = "SELECT pg_total_relation_size('pikett_batches')";

/// The highest sequence number stored for one spool of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub host: String,
    pub epoch: u64,
    pub last_seq: u64,
}

/// A stored batch or agent status, as the evaluator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBatch {
    pub host: String,
    pub customer: String,
    pub epoch: u64,
    /// The batch's sequence number; 0 for a status.
    pub seq: u64,
    /// A status's row id in `pikett_agent_status` (ascending in insert order, but a lower id
    /// may commit later); 0 for a batch.
    pub id: u64,
    /// When it was stored, Unix ms of the database's clock.
    pub received_ms: i64,
    /// The encoded `pikett.v1.Batch`, as received.
    pub payload: Vec<u8>,
    /// Samples the storing node did not keep for `/metrics` (see `WriteRequest`).
    pub series_over_limit: u64,
    /// An agent status (never spooled), not a stored batch.
    pub status: bool,
}

/// A host's row as mirrored: the record and the row's version.
struct Mirrored {
    version: i64,
    rec: HostRecord,
}

/// [`BatchStore`] on PostgreSQL; see the module doc. Share it through an `Arc`.
pub struct PgBatches {
    /// This node's name (`received_by`).
    node: String,
    writer: Session,
    reader: Session,
    evaluator: Session,
    admin: Session,
    hosts: RwLock<HashMap<String, Mirrored>>,
    /// `pg_total_relation_size` of the batches table, read at open and by the refresh task.
    payload_bytes: AtomicU64,
}

/// Bit-casts a u64 for a bigint column (see the module doc).
fn big(v: u64) -> i64 {
    v as i64
}

/// Reads back a bit-cast u64.
fn unbig(v: i64) -> u64 {
    v as u64
}

fn host_record(row: &Row, at: usize) -> Result<(i64, HostRecord), tokio_postgres::Error> {
    let rec = HostRecord {
        host_id: row.try_get(at)?,
        customer: row.try_get(at + 1)?,
        agent_version: row.try_get(at + 2)?,
        capabilities: row.try_get(at + 3)?,
        min_interval_ms: unbig(row.try_get(at + 4)?),
        first_seen_ms: row.try_get(at + 5)?,
        last_seen_ms: row.try_get(at + 6)?,
        spool_epoch: unbig(row.try_get(at + 7)?),
        last_seq: unbig(row.try_get(at + 8)?),
        batches: unbig(row.try_get(at + 9)?),
        retained: unbig(row.try_get(at + 10)?),
        spool_resets: unbig(row.try_get(at + 11)?),
        dropped_samples: unbig(row.try_get(at + 12)?),
        dropped_other: unbig(row.try_get(at + 13)?),
        removed_ms: row.try_get(at + 14)?,
        // Whether `agent/data-dropped` holds is the evaluator's to decide.
        last_drop_ms: 0,
    };
    Ok((row.try_get(at + 15)?, rec))
}

/// (host, epoch, seq) of a row.
fn batch_key(row: &Row) -> Result<(String, i64, i64), tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// A row of [`AFTER`] (host first), or of [`READ_STATUSES`] (the id first, no seq).
fn pending(row: &Row, status: bool) -> Result<PendingBatch, tokio_postgres::Error> {
    let at = usize::from(status);
    Ok(PendingBatch {
        host: row.try_get(at)?,
        customer: row.try_get(at + 1)?,
        epoch: unbig(row.try_get(at + 2)?),
        seq: if status { 0 } else { unbig(row.try_get(3)?) },
        id: if status { unbig(row.try_get(0)?) } else { 0 },
        received_ms: row.try_get(4)?,
        payload: row.try_get(5)?,
        series_over_limit: unbig(row.try_get(6)?),
        status,
    })
}

/// What a group does to one host's row, aggregated in request order (see [`UPSERT_HOSTS`]).
#[derive(Default)]
struct HostChange<'a> {
    customer: &'a str,
    agent_version: &'a str,
    capabilities: &'a [String],
    min_interval_ms: u64,
    new: i64,
    first_epoch: u64,
    epoch: u64,
    switches: i64,
    last_seq: u64,
    dropped_samples: u64,
    dropped_other: u64,
}

impl PgBatches {
    /// Runs the migrations, loads the hosts mirror and the table size; the sessions connect
    /// on first use.
    pub async fn open(connect: PgConnect, node: &str) -> Result<PgBatches, StoreError> {
        let mut client = connect.connect().await?;
        migrate::migrate(&mut client).await?;
        drop(client);
        let batches = PgBatches {
            node: node.to_string(),
            writer: Session::new(connect.clone()),
            reader: Session::new(connect.clone()),
            evaluator: Session::new(connect.clone()),
            admin: Session::new(connect),
            hosts: RwLock::new(HashMap::new()),
            payload_bytes: AtomicU64::new(0),
        };
        batches.refresh_hosts().await?;
        batches.refresh_size().await?;
        Ok(batches)
    }

    /// Stores a group of requests in one transaction; one [`Outcome`] per request, in order,
    /// with `data_dropped: None` (the evaluator decides that). Durable when it returns Ok.
    pub async fn store_group(&self, group: &[WriteRequest]) -> Result<Vec<Outcome>, StoreError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        // The batches, each key once (a key twice in one group: the second is a duplicate),
        // sorted by key: two writers then lock rows in the same order.
        let mut first_of_key: HashMap<(&str, i64, i64), usize> = HashMap::new();
        for (i, req) in group.iter().enumerate().filter(|(_, r)| !r.status) {
            first_of_key
                .entry((&req.sender.host_id, big(req.sender.spool_epoch), big(req.batch.head().seq)))
                .or_insert(i);
        }
        let mut keys: Vec<_> = first_of_key.iter().map(|(k, i)| (*k, *i)).collect();
        keys.sort_unstable();
        let mut b = BatchColumns::default();
        for &((host, epoch, seq), i) in &keys {
            let req = &group[i];
            b.host.push(host);
            b.epoch.push(epoch);
            b.seq.push(seq);
            b.customer.push(&req.sender.customer);
            b.payload.push(req.batch.bytes().to_vec());
            b.series_over_limit.push(big(req.series_over_limit));
        }
        let mut s = StatusColumns::default();
        for req in group.iter().filter(|r| r.status) {
            s.host.push(&req.sender.host_id);
            s.customer.push(&req.sender.customer);
            s.epoch.push(big(req.sender.spool_epoch));
            s.payload.push(req.batch.bytes().to_vec());
            s.series_over_limit.push(big(req.series_over_limit));
        }
        let node = self.node.as_str();
        let (new_keys, host_rows) = self
            .writer
            .with(async |client| {
                let what = "storing a group of batches (pikett_batches, pikett_hosts)";
                let tx = client.transaction().await.map_err(db(what))?;
                // Acks follow the answer: it must mean durable, whatever the server's default.
                tx.batch_execute("SET LOCAL synchronous_commit = on").await.map_err(db(what))?;
                let inserted = if b.host.is_empty() {
                    Vec::new()
                } else {
                    tx.query(
                        INSERT_BATCHES,
                        &[&b.host, &b.epoch, &b.seq, &b.customer, &b.payload, &b.series_over_limit, &node],
                    )
                    .await
                    .map_err(db("inserting batches into pikett_batches"))?
                };
                let mut new_keys = HashSet::with_capacity(inserted.len());
                for row in &inserted {
                    new_keys.insert(batch_key(row).map_err(db("reading the new rows of pikett_batches"))?);
                }
                let is_new = |i: usize, req: &WriteRequest| -> bool {
                    !req.status
                        && first_of_key.get(&(
                            req.sender.host_id.as_str(),
                            big(req.sender.spool_epoch),
                            big(req.batch.head().seq),
                        )) == Some(&i)
                        && new_keys.contains(&(
                            req.sender.host_id.clone(),
                            big(req.sender.spool_epoch),
                            big(req.batch.head().seq),
                        ))
                };
                let h = host_columns(group, is_new);
                let hosts = tx
                    .query(
                        UPSERT_HOSTS,
                        &[
                            &h.host_id,
                            &h.customer,
                            &h.agent_version,
                            &h.capabilities,
                            &h.min_interval_ms,
                            &h.epoch,
                            &h.last_seq,
                            &h.new,
                            &h.switches,
                            &h.dropped_samples,
                            &h.dropped_other,
                            &h.first_epoch,
                        ],
                    )
                    .await
                    .map_err(db("updating pikett_hosts"))?;
                if !s.host.is_empty() {
                    tx.execute(
                        INSERT_STATUSES,
                        &[&s.host, &s.customer, &s.epoch, &s.payload, &s.series_over_limit, &node],
                    )
                    .await
                    .map_err(db("inserting agent statuses into pikett_agent_status"))?;
                }
                tx.commit().await.map_err(db("committing a group of batches"))?;
                Ok((new_keys, hosts))
            })
            .await?;
        let outcomes = group
            .iter()
            .enumerate()
            .map(|(i, req)| {
                let key = (req.sender.host_id.as_str(), big(req.sender.spool_epoch), big(req.batch.head().seq));
                let stored = if req.status {
                    Stored::Status
                } else if first_of_key.get(&key) == Some(&i) && new_keys.contains(&(key.0.to_string(), key.1, key.2)) {
                    Stored::New
                } else {
                    Stored::Duplicate
                };
                Outcome { stored, data_dropped: None }
            })
            .collect();
        self.mirror_rows(&host_rows, 0, true)?;
        Ok(outcomes)
    }

    /// Puts rows read at column `at` into the mirror, each unless it has a newer version of
    /// the host; with `log`, says what changed that staff should hear of.
    fn mirror_rows(&self, rows: &[Row], at: usize, log: bool) -> Result<(), StoreError> {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for row in rows {
            let (version, rec) = host_record(row, at).map_err(db("reading a pikett_hosts row"))?;
            if let Some(old) = hosts.get(&rec.host_id) {
                if old.version >= version {
                    continue;
                }
                if log && old.rec.removed_ms != 0 && rec.removed_ms == 0 {
                    tracing::warn!(host_id = %rec.host_id, "a removed host reports again; it is monitored again");
                }
                if log && rec.spool_resets > old.rec.spool_resets {
                    tracing::warn!(
                        host_id = %rec.host_id,
                        old_epoch = old.rec.spool_epoch,
                        new_epoch = rec.spool_epoch,
                        "host sends from a new spool; its sequence numbers start again"
                    );
                }
            }
            hosts.insert(rec.host_id.clone(), Mirrored { version, rec });
        }
        Ok(())
    }

    /// Reloads the hosts mirror (other nodes write the registry too).
    pub async fn refresh_hosts(&self) -> Result<(), StoreError> {
        let rows = self
            .reader
            .with(async |client| Ok(client.query(SELECT_HOSTS, &[]).await.map_err(db("reading pikett_hosts"))?))
            .await?;
        self.mirror_rows(&rows, 0, false)
    }

    async fn refresh_size(&self) -> Result<(), StoreError> {
        let size: i64 = self
            .reader
            .with(async |client| {
                let row = client.query_one(TABLE_SIZE, &[]).await.map_err(db("reading the size of pikett_batches"))?;
                Ok(row.try_get(0).map_err(db("reading the size of pikett_batches"))?)
            })
            .await?;
        self.payload_bytes.store(u64::try_from(size).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Spawns the task that reloads the hosts mirror every `every` (and the table size every
    /// 30 s); it ends once the `PgBatches` is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut size_read = Instant::now();
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                match this.refresh_hosts().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("the hosts registry is read from PostgreSQL again");
                    }
                    Ok(()) => {}
                    // Once per outage, not every second.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot reload the hosts registry; answering from memory");
                    }
                    Err(_) => {}
                }
                if size_read.elapsed() >= SIZE_REFRESH {
                    size_read = Instant::now();
                    if let Err(e) = this.refresh_size().await {
                        tracing::debug!(error = %e, "cannot read the size of pikett_batches");
                    }
                }
            }
        })
    }

    /// Every (host, epoch) with its highest stored seq, by host and epoch.
    pub async fn heads(&self) -> Result<Vec<Head>, StoreError> {
        self.evaluator
            .with(async |client| {
                let what = "reading pikett_batch_heads";
                let rows = client.query(HEADS, &[]).await.map_err(db(what))?;
                rows.iter()
                    .map(|r| {
                        Ok(Head { host: r.try_get(0)?, epoch: unbig(r.try_get(1)?), last_seq: unbig(r.try_get(2)?) })
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(|e| db(what)(e).into())
            })
            .await
    }

    /// The stored batches of `host`'s spool `epoch` with seq above `after`, ascending, at
    /// most `limit`.
    pub async fn after(
        &self,
        host: &str,
        epoch: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PendingBatch>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.evaluator
            .with(async |client| {
                let what = "reading batches from pikett_batches";
                let rows = client.query(AFTER, &[&host, &big(epoch), &big(after), &limit]).await.map_err(db(what))?;
                rows.iter().map(|r| pending(r, false)).collect::<Result<Vec<_>, _>>().map_err(|e| db(what)(e).into())
            })
            .await
    }

    /// [`PgBatches::after`] for many streams in one round trip: per `(host, epoch, after,
    /// limit)` the stored batches above `after`, ascending, at most `limit`; one list per
    /// read, in the order of `reads`.
    pub async fn after_many(&self, reads: &[(&str, u64, u64, usize)]) -> Result<Vec<Vec<PendingBatch>>, StoreError> {
        let mut out: Vec<Vec<PendingBatch>> = reads.iter().map(|_| Vec::new()).collect();
        if reads.is_empty() {
            return Ok(out);
        }
        let hosts: Vec<&str> = reads.iter().map(|r| r.0).collect();
        let epochs: Vec<i64> = reads.iter().map(|r| big(r.1)).collect();
        let after: Vec<i64> = reads.iter().map(|r| big(r.2)).collect();
        let limits: Vec<i64> = reads.iter().map(|r| i64::try_from(r.3).unwrap_or(i64::MAX)).collect();
        let rows = self
            .evaluator
            .with(async |client| {
                let what = "reading batches from pikett_batches";
                Ok(client.query(AFTER_MANY, &[&hosts, &epochs, &after, &limits]).await.map_err(db(what))?)
            })
            .await?;
        for row in &rows {
            let what = "reading batches from pikett_batches";
            let i: i64 = row.try_get(0).map_err(db(what))?;
            let b = PendingBatch {
                host: row.try_get(1).map_err(db(what))?,
                customer: row.try_get(2).map_err(db(what))?,
                epoch: unbig(row.try_get(3).map_err(db(what))?),
                seq: unbig(row.try_get(4).map_err(db(what))?),
                id: 0,
                received_ms: row.try_get(5).map_err(db(what))?,
                payload: row.try_get(6).map_err(db(what))?,
                series_over_limit: unbig(row.try_get(7).map_err(db(what))?),
                status: false,
            };
            if let Some(list) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                list.push(b);
            }
        }
        Ok(out)
    }

    /// The seqs stored per `(host, epoch, lo, hi)` in `lo..=hi`, ascending, at most `limit`
    /// per range, in one round trip and without payloads (gap and late checks); one list per
    /// range, in the order of `ranges`.
    pub async fn seqs_many(&self, ranges: &[(&str, u64, u64, u64)], limit: usize) -> Result<Vec<Vec<u64>>, StoreError> {
        let mut out: Vec<Vec<u64>> = ranges.iter().map(|_| Vec::new()).collect();
        if ranges.is_empty() {
            return Ok(out);
        }
        let hosts: Vec<&str> = ranges.iter().map(|r| r.0).collect();
        let epochs: Vec<i64> = ranges.iter().map(|r| big(r.1)).collect();
        let lo: Vec<i64> = ranges.iter().map(|r| big(r.2)).collect();
        let hi: Vec<i64> = ranges.iter().map(|r| big(r.3)).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .evaluator
            .with(async |client| {
                let what = "reading sequence numbers from pikett_batches";
                Ok(client.query(SEQS_MANY, &[&hosts, &epochs, &lo, &hi, &limit]).await.map_err(db(what))?)
            })
            .await?;
        for row in &rows {
            let what = "reading sequence numbers from pikett_batches";
            let i: i64 = row.try_get(0).map_err(db(what))?;
            let seq: i64 = row.try_get(1).map_err(db(what))?;
            if let Some(list) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                list.push(unbig(seq));
            }
        }
        Ok(out)
    }

    /// At most `limit` agent statuses, by id, without taking them: the evaluator records
    /// which it consumed in its own storage, in the flush that commits their effect, and only
    /// then deletes them ([`PgBatches::delete_statuses`]), so none is lost to a crash.
    pub async fn read_statuses(&self, limit: usize) -> Result<Vec<PendingBatch>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.evaluator
            .with(async |client| {
                let what = "reading agent statuses from pikett_agent_status";
                let rows = client.query(READ_STATUSES, &[&limit]).await.map_err(db(what))?;
                rows.iter().map(|r| pending(r, true)).collect::<Result<Vec<_>, _>>().map_err(|e| db(what)(e).into())
            })
            .await
    }

    /// Deletes the agent statuses `ids` (those gone already are ignored) in a transaction
    /// fenced by the leader lease ([`StoreError::Fenced`] when `node` no longer leads with
    /// `term`: then nothing is deleted).
    pub async fn delete_statuses(&self, node: &str, term: i64, ids: &[u64]) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().map(|&id| big(id)).collect();
        self.evaluator
            .with(async |client| {
                let what = "deleting consumed agent statuses from pikett_agent_status";
                let tx = client.transaction().await.map_err(db(what))?;
                fence(&tx, node, term).await?;
                tx.execute(DELETE_STATUSES, &[&ids]).await.map_err(db(what))?;
                tx.commit().await.map_err(db(what))?;
                Ok(())
            })
            .await
    }

    fn mirror(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Mirrored>> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct BatchColumns<'a> {
    host: Vec<&'a str>,
    epoch: Vec<i64>,
    seq: Vec<i64>,
    customer: Vec<&'a str>,
    payload: Vec<Vec<u8>>,
    series_over_limit: Vec<i64>,
}

#[derive(Default)]
struct StatusColumns<'a> {
    host: Vec<&'a str>,
    customer: Vec<&'a str>,
    epoch: Vec<i64>,
    payload: Vec<Vec<u8>>,
    series_over_limit: Vec<i64>,
}

/// The parameters of [`UPSERT_HOSTS`], one row per host, by host id.
#[derive(Default)]
struct HostColumns<'a> {
    host_id: Vec<&'a str>,
    customer: Vec<&'a str>,
    agent_version: Vec<&'a str>,
    capabilities: Vec<String>,
    min_interval_ms: Vec<i64>,
    epoch: Vec<i64>,
    last_seq: Vec<i64>,
    new: Vec<i64>,
    switches: Vec<i64>,
    dropped_samples: Vec<i64>,
    dropped_other: Vec<i64>,
    first_epoch: Vec<i64>,
}

/// Aggregates the group per host, in request order, as `BatchLog::apply` walks it: the last
/// request's sender fields; of the new batches their count, epochs and highest seq.
fn host_columns<'a>(group: &'a [WriteRequest], is_new: impl Fn(usize, &WriteRequest) -> bool) -> HostColumns<'a> {
    let mut per_host: BTreeMap<&str, HostChange<'a>> = BTreeMap::new();
    for (i, req) in group.iter().enumerate() {
        let c = per_host.entry(&req.sender.host_id).or_default();
        c.customer = &req.sender.customer;
        c.agent_version = &req.sender.agent_version;
        c.capabilities = &req.sender.capabilities;
        c.min_interval_ms = req.sender.min_interval_ms;
        if !is_new(i, req) {
            continue;
        }
        let epoch = req.sender.spool_epoch;
        if c.new == 0 {
            c.first_epoch = epoch;
            c.epoch = epoch;
        } else if c.epoch != epoch {
            c.switches += 1;
            c.epoch = epoch;
            c.last_seq = 0;
        }
        c.new += 1;
        c.last_seq = c.last_seq.max(req.batch.head().seq);
        c.dropped_samples += req.batch.head().dropped_samples;
        c.dropped_other += req.batch.head().dropped_other;
    }
    let mut h = HostColumns::default();
    for (host, c) in per_host {
        h.host_id.push(host);
        h.customer.push(c.customer);
        h.agent_version.push(c.agent_version);
        // A JSON list: a text[] parameter cannot carry one list per row.
        h.capabilities.push(serde_json::to_string(c.capabilities).unwrap_or_else(|_| "[]".to_string()));
        h.min_interval_ms.push(big(c.min_interval_ms));
        h.epoch.push(big(c.epoch));
        h.last_seq.push(big(c.last_seq));
        h.new.push(c.new);
        h.switches.push(c.switches);
        h.dropped_samples.push(big(c.dropped_samples));
        h.dropped_other.push(big(c.dropped_other));
        h.first_epoch.push(big(c.first_epoch));
    }
    h
}

#[async_trait]
impl BatchStore for PgBatches {
    fn hosts(&self) -> Vec<HostRecord> {
        let mut v: Vec<_> = self.mirror().values().map(|m| m.rec.clone()).collect();
        v.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        v
    }
    fn host(&self, id: &str) -> Option<HostRecord> {
        self.mirror().get(id).map(|m| m.rec.clone())
    }
    fn batches_retained(&self) -> u64 {
        self.mirror().values().map(|m| m.rec.retained).sum()
    }
    fn batches_stored(&self) -> u64 {
        self.mirror().values().map(|m| m.rec.batches).sum()
    }
    fn payload_bytes(&self) -> u64 {
        self.payload_bytes.load(Ordering::Relaxed)
    }
    /// Read from `pikett_batch_heads`, not the mirror: another node may have stored more.
    async fn stored_up_to(&self, host: &str, epoch: u64) -> Result<u64, StoreError> {
        self.reader
            .with(async |client| {
                let what = "reading pikett_batch_heads";
                let row = client.query_opt(HEAD, &[&host, &big(epoch)]).await.map_err(db(what))?;
                Ok(match row {
                    Some(r) => unbig(r.try_get(0).map_err(db(what))?),
                    None => 0,
                })
            })
            .await
    }
    async fn remove_host(&self, host: &str, now_ms: i64) -> Result<bool, StoreError> {
        let rows = self
            .admin
            .with(async |client| {
                Ok(client.query(REMOVE_HOST, &[&host, &now_ms]).await.map_err(db("removing a host in pikett_hosts"))?)
            })
            .await?;
        self.mirror_rows(&rows, 0, false)?;
        Ok(!rows.is_empty())
    }
    async fn batch(&self, host: &str, epoch: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader
            .with(async |client| {
                let what = "reading a batch from pikett_batches";
                let row = client.query_opt(PAYLOAD, &[&host, &big(epoch), &big(seq)]).await.map_err(db(what))?;
                Ok(row.map(|r| r.try_get(0)).transpose().map_err(db(what))?)
            })
            .await
    }
    /// Also deletes agent statuses received before the cutoff (left when no leader took them)
    /// and the heads rows of old epochs whose batches are all gone (see [`PRUNE_HEADS`]).
    ///
    /// The batches and the `retained` of their hosts go in one short transaction (so
    /// `retained` stays exact), the host rows locked in `host_id` order after the delete and
    /// held only for the update and the COMMIT. The statuses and the heads go in statements
    /// of their own, so they add nothing to the time the host rows are held.
    async fn prune_before(&self, cutoff_ms: i64, max: usize) -> Result<usize, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let (removed, rows) = self
            .admin
            .with(async |client| {
                let what = "pruning pikett_batches";
                let tx = client.transaction().await.map_err(db(what))?;
                let gone = tx.query(PRUNE_BATCHES, &[&cutoff_ms, &max]).await.map_err(db(what))?;
                let mut hosts: Vec<String> = Vec::with_capacity(gone.len());
                let mut counts: Vec<i64> = Vec::with_capacity(gone.len());
                for row in &gone {
                    hosts.push(row.try_get(0).map_err(db(what))?);
                    counts.push(row.try_get(1).map_err(db(what))?);
                }
                let rows = if hosts.is_empty() {
                    Vec::new()
                } else {
                    let what = "lowering retained in pikett_hosts";
                    tx.execute(LOCK_HOSTS, &[&hosts]).await.map_err(db(what))?;
                    tx.query(LOWER_RETAINED, &[&hosts, &counts]).await.map_err(db(what))?
                };
                tx.commit().await.map_err(db("committing a retention step"))?;
                let removed: i64 = counts.iter().sum();
                Ok((removed, rows))
            })
            .await?;
        self.mirror_rows(&rows, 1, false)?;
        self.admin
            .with(async |client| {
                client.execute(PRUNE_STATUSES, &[&cutoff_ms, &max]).await.map_err(db("pruning pikett_agent_status"))?;
                client.execute(PRUNE_HEADS, &[&cutoff_ms, &max]).await.map_err(db("pruning pikett_batch_heads"))?;
                Ok(())
            })
            .await?;
        Ok(usize::try_from(removed).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::batch_suite::{BatchEngine, now_ms, request, status};
    use crate::store::pg::PgLease;
    use crate::store::pg::testing::{admin_client, fresh_database};
    use crate::store::{Lease, LeaseState};

    impl BatchEngine for PgBatches {
        fn store(&self) -> &dyn BatchStore {
            self
        }
        async fn store_group(&self, group: &[WriteRequest]) -> Vec<Outcome> {
            PgBatches::store_group(self, group).await.expect("storing a group in PostgreSQL")
        }
    }

    async fn pg_engine() -> PgBatches {
        let url = fresh_database().await;
        PgBatches::open(PgConnect::new(&url, None).unwrap(), "node-a").await.unwrap()
    }

    crate::store::batch_suite::batch_suite!(pg_engine);

    /// Two stores ("collectors") on one new database, and its URL.
    async fn two_nodes() -> (Arc<PgBatches>, Arc<PgBatches>, String) {
        let url = fresh_database().await;
        let a = PgBatches::open(PgConnect::new(&url, None).unwrap(), "node-a").await.unwrap();
        let b = PgBatches::open(PgConnect::new(&url, None).unwrap(), "node-b").await.unwrap();
        (Arc::new(a), Arc::new(b), url)
    }

    fn stored(out: &[Outcome]) -> Vec<Stored> {
        out.iter().map(|o| o.stored).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_storing_the_same_batch_at_once_get_one_new() {
        let (a, b, url) = two_nodes().await;
        for seq in 1..=20u64 {
            // Each node stores the key with a neighbour of its own, in either order.
            let ga = vec![request("web1", 7, seq), request("web1", 7, 1_000 + seq)];
            let gb = vec![request("web1", 7, 2_000 + seq), request("web1", 7, seq)];
            let (ra, rb) = {
                let (a, b) = (a.clone(), b.clone());
                let ta = tokio::spawn(async move { a.store_group(&ga).await });
                let tb = tokio::spawn(async move { b.store_group(&gb).await });
                (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap())
            };
            assert_eq!((ra[1].stored, rb[0].stored), (Stored::New, Stored::New), "the nodes' own keys");
            let both = [ra[0].stored, rb[1].stored];
            assert_eq!(both.iter().filter(|s| **s == Stored::New).count(), 1, "seq {seq}: {both:?}");
        }
        a.refresh_hosts().await.unwrap();
        b.refresh_hosts().await.unwrap();
        for s in [&a, &b] {
            let rec = s.host("web1").unwrap();
            assert_eq!((rec.batches, rec.retained, rec.last_seq), (60, 60, 2_020));
        }
        let admin = admin_client(&url).await;
        let rows: i64 = admin.query_one("SELECT count(*) FROM pikett_batches", &[]).await.unwrap().get(0);
        assert_eq!(rows, 60);
        let by: Vec<String> = admin
            .query("SELECT DISTINCT received_by FROM pikett_batches ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(by, ["node-a", "node-b"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counters_stay_exact_under_concurrent_groups_of_two_nodes() {
        let (a, b, _url) = two_nodes().await;
        let run = |s: Arc<PgBatches>, odd: u64| {
            tokio::spawn(async move {
                for g in 0..50u64 {
                    // Two batches per group; node a the odd numbers, node b the even ones.
                    let seqs = [4 * g + odd, 4 * g + odd + 2];
                    let mut group: Vec<_> = seqs.iter().map(|&seq| request("web1", 7, seq)).collect();
                    group[0].batch.modify(|b| b.dropped_samples = 1).unwrap();
                    let out = s.store_group(&group).await.unwrap();
                    assert_eq!(stored(&out), [Stored::New; 2]);
                }
            })
        };
        let (ta, tb) = (run(a.clone(), 1), run(b.clone(), 2));
        ta.await.unwrap();
        tb.await.unwrap();
        a.refresh_hosts().await.unwrap();
        let rec = a.host("web1").unwrap();
        assert_eq!((rec.batches, rec.retained, rec.last_seq, rec.dropped_samples), (200, 200, 200, 100));
        assert_eq!((rec.spool_epoch, rec.spool_resets), (7, 0));
        assert_eq!(a.stored_up_to("web1", 7).await.unwrap(), 200);
        assert_eq!(a.heads().await.unwrap(), [Head { host: "web1".into(), epoch: 7, last_seq: 200 }]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heads_after_and_statuses_for_the_evaluator() {
        let (a, _b, url) = two_nodes().await;
        let mut group: Vec<_> = [5, 1, 3, 2, 4].iter().map(|&seq| request("web1", 7, seq)).collect();
        group[0].series_over_limit = 9;
        group.push(request("web1", 9, 1));
        group.push(request("db1", 3, 8));
        group.push(status("web1", 9));
        let mut second = status("db1", 3);
        second.batch.modify(|b| b.created_unix_ms = 42).unwrap();
        group.push(second);
        a.store_group(&group).await.unwrap();
        let heads = a.heads().await.unwrap();
        let want = [("db1", 3, 8), ("web1", 7, 5), ("web1", 9, 1)].map(|(host, epoch, last_seq)| Head {
            host: host.into(),
            epoch,
            last_seq,
        });
        assert_eq!(heads, want);

        let after = a.after("web1", 7, 1, 3).await.unwrap();
        assert_eq!(after.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3, 4], "ascending, above 1, at most 3");
        let rest = a.after("web1", 7, 4, 100).await.unwrap();
        assert_eq!(rest.len(), 1);
        let five = &rest[0];
        assert_eq!((five.host.as_str(), five.customer.as_str(), five.epoch, five.seq), ("web1", "acme", 7, 5));
        assert_eq!((five.series_over_limit, five.status), (9, false));
        let batch: pikett_proto::v1::Batch = prost::Message::decode(five.payload.as_slice()).unwrap();
        assert_eq!(batch.seq, 5);
        let now = now_ms();
        assert!((now - 60_000..=now + 1_000).contains(&five.received_ms), "{}", five.received_ms);
        assert!(a.after("web1", 7, 5, 10).await.unwrap().is_empty());
        assert!(a.after("web1", 8, 0, 10).await.unwrap().is_empty());

        // Statuses: read by id without taking them; deleted fenced by the lease.
        let lease = PgLease::new(PgConnect::new(&url, None).unwrap());
        let term = match lease.try_acquire_or_renew("a", Duration::from_secs(30), None).await.unwrap() {
            LeaseState::Leader { term } => term,
            other => panic!("node a did not acquire: {other:?}"),
        };
        let first = a.read_statuses(1).await.unwrap();
        assert_eq!(first.len(), 1, "at most limit");
        assert_eq!((first[0].host.as_str(), first[0].epoch, first[0].seq, first[0].status), ("web1", 9, 0, true));
        let all = a.read_statuses(10).await.unwrap();
        assert_eq!(all.len(), 2, "reading takes nothing");
        assert_eq!(all[0], first[0]);
        assert!(all[0].id < all[1].id, "by id");
        assert_eq!((all[1].host.as_str(), all[1].seq), ("db1", 0));
        let b: pikett_proto::v1::Batch = prost::Message::decode(all[1].payload.as_slice()).unwrap();
        assert_eq!(b.created_unix_ms, 42);
        let ids = [all[0].id];
        let err = a.delete_statuses("a", term + 1, &ids).await.unwrap_err();
        assert!(matches!(&err, StoreError::Fenced { node, term: t } if node == "a" && *t == term + 1), "{err}");
        let err = a.delete_statuses("b", term, &ids).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert_eq!(a.read_statuses(10).await.unwrap().len(), 2, "a fenced delete deletes nothing");
        a.delete_statuses("a", term, &ids).await.unwrap();
        a.delete_statuses("a", term, &ids).await.unwrap(); // gone already: ignored
        let rest = a.read_statuses(10).await.unwrap();
        assert_eq!(rest, vec![all[1].clone()]);
        a.delete_statuses("a", term, &[rest[0].id]).await.unwrap();
        assert!(a.read_statuses(10).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_streams_are_read_in_one_query_and_seqs_without_payloads() {
        let (a, _b, _url) = two_nodes().await;
        let mut group: Vec<_> = [1, 2, 3, 5, 6].iter().map(|&seq| request("web1", 7, seq)).collect();
        group.extend([1, 2].iter().map(|&seq| request("db1", 3, seq)));
        group.push(request("web1", 9, 1));
        a.store_group(&group).await.unwrap();
        let reads = [("web1", 7, 1, 2), ("db1", 3, 0, 10), ("web1", 8, 0, 10), ("web1", 7, 2, 10), ("web1", 9, 1, 5)];
        let got = a.after_many(&reads).await.unwrap();
        let seqs: Vec<Vec<u64>> = got.iter().map(|l| l.iter().map(|b| b.seq).collect()).collect();
        assert_eq!(seqs, [vec![2, 3], vec![1, 2], vec![], vec![3, 5, 6], vec![]], "per read, in order, limited");
        for (read, list) in reads.iter().zip(&got) {
            for b in list {
                assert_eq!((b.host.as_str(), b.epoch), (read.0, read.1));
                assert_eq!(b.customer, "acme");
                let batch: pikett_proto::v1::Batch = prost::Message::decode(b.payload.as_slice()).unwrap();
                assert_eq!(batch.seq, b.seq);
                assert!(b.received_ms > 0 && !b.status);
            }
        }
        // One read each, as `after` answers it.
        for &(host, epoch, after, limit) in &reads {
            let one = a.after(host, epoch, after, limit).await.unwrap();
            let i = reads.iter().position(|r| *r == (host, epoch, after, limit)).unwrap();
            assert_eq!(one, got[i]);
        }
        assert!(a.after_many(&[]).await.unwrap().is_empty());

        let ranges = [("web1", 7, 4, 4), ("web1", 7, 2, 6), ("db1", 3, 1, 9), ("web1", 7, 1, 100)];
        let seqs = a.seqs_many(&ranges, 3).await.unwrap();
        assert_eq!(seqs, [vec![], vec![2, 3, 5], vec![1, 2], vec![1, 2, 3]]);
        assert!(a.seqs_many(&[], 3).await.unwrap().is_empty());
    }

    /// Retention locks the host rows in `host_id` order, as a writer does: a writer holding
    /// one host and then updating those after it is not deadlocked (nor made to wait for the
    /// retention step, which waits for it). (In hash order, h01 comes after several later
    /// hosts.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_locks_hosts_in_the_writers_order() {
        let (a, _b, url) = two_nodes().await;
        let hosts: Vec<String> = (0..20).map(|i| format!("h{i:02}")).collect();
        // Stored last first: the rows' physical order is not the key order.
        for h in hosts.iter().rev() {
            a.store_group(&[request(h, 7, 1)]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cutoff = now_ms();
        let mut writer = admin_client(&url).await;
        let observer = admin_client(&url).await;
        let tx = writer.transaction().await.unwrap();
        tx.execute("UPDATE pikett_hosts SET version = version + 1 WHERE host_id = 'h01'", &[]).await.unwrap();
        let prune = {
            let a = a.clone();
            tokio::spawn(async move { a.prune_before(cutoff, 1_000).await })
        };
        // Until the retention step waits for h01.
        let start = Instant::now();
        loop {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'pikett-collector' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "retention never waited for h01");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The rest in host order, as the writer's upsert does: none is held by retention.
        for h in &hosts[2..] {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [h];
            let update = tx.execute("UPDATE pikett_hosts SET version = version + 1 WHERE host_id = $1", &params);
            tokio::time::timeout(Duration::from_millis(500), update)
                .await
                .unwrap_or_else(|_| panic!("{h} is held by the retention step"))
                .unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(prune.await.unwrap().unwrap(), 20);
        assert_eq!(a.batches_retained(), 0);
        for h in &hosts {
            assert_eq!(a.host(h).unwrap().retained, 0, "{h}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_drops_the_heads_of_old_epochs_without_batches() {
        let (a, _b, url) = two_nodes().await;
        a.store_group(&[request("web1", 7, 1), request("web1", 7, 2)]).await.unwrap();
        a.store_group(&[request("db1", 3, 4)]).await.unwrap();
        // web1 moves to spool 9; db1 stays on 3.
        a.store_group(&[request("web1", 9, 1)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cutoff = now_ms();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A young batch of the old epoch keeps its head.
        a.store_group(&[request("web2", 5, 1)]).await.unwrap();
        a.store_group(&[request("web2", 6, 1)]).await.unwrap();
        let keys = |heads: Vec<Head>| heads.into_iter().map(|h| (h.host, h.epoch)).collect::<Vec<_>>();
        let all = keys(a.heads().await.unwrap());
        assert_eq!(all.len(), 5);
        // Only some of web1/7 pruned: its head stays while a batch of it is left.
        let admin = admin_client(&url).await;
        admin
            .execute(
                "UPDATE pikett_batches SET received_at = received_at - interval '1 hour' \
                 WHERE host = 'web1' AND epoch = 7 AND seq = 1",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(a.prune_before(cutoff, 1).await.unwrap(), 1);
        assert_eq!(keys(a.heads().await.unwrap()), all, "a head went with batches left");
        assert_eq!(a.prune_before(cutoff, 100).await.unwrap(), 3);
        let want: Vec<(String, u64)> =
            [("db1", 3), ("web1", 9), ("web2", 5), ("web2", 6)].iter().map(|(h, e)| (h.to_string(), *e)).collect();
        assert_eq!(keys(a.heads().await.unwrap()), want, "only web1/7: old, empty, not current");
        assert_eq!(a.stored_up_to("db1", 3).await.unwrap(), 4, "the current epoch's head stays");
    }

    /// A group whose session dies mid-transaction (waiting for a row another session
    /// holds) fails, leaves nothing behind, and stores everything when sent again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_stores_nothing_and_its_retry_stores_it() {
        let url = fresh_database().await;
        let a = PgBatches::open(PgConnect::new(&url, None).unwrap(), "node-a").await.unwrap();
        let mut admin = admin_client(&url).await;
        let holder = admin.transaction().await.unwrap();
        holder
            .execute(
                "INSERT INTO pikett_batches (host, epoch, seq, customer, received_by, payload) \
                 VALUES ('web1', 7, 2, 'acme', 'test', '')",
                &[],
            )
            .await
            .unwrap();
        let observer = admin_client(&url).await;
        let group = vec![request("web1", 7, 1), request("web1", 7, 2), status("web1", 7)];
        let store = a.store_group(&group);
        let kill = async {
            // The writer's session waits for the held row; end it from the server's side.
            let start = Instant::now();
            loop {
                let row = observer
                    .query_opt(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                         AND application_name = 'pikett-collector' AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .unwrap();
                if let Some(row) = row {
                    let pid: i32 = row.get(0);
                    let ended: bool =
                        observer.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
                    assert!(ended);
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "the writer never waited");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (stored_first, ()) = tokio::join!(store, kill);
        let err = stored_first.expect_err("the group's session was ended");
        assert!(err.to_string().contains("pikett_batches"), "{err}");
        holder.rollback().await.unwrap();
        for table in ["pikett_batches", "pikett_hosts", "pikett_batch_heads", "pikett_agent_status"] {
            let n: i64 = observer.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
            assert_eq!(n, 0, "{table} holds rows of a failed group");
        }
        assert!(a.host("web1").is_none());
        let out = a.store_group(&group).await.expect("the retry on a new session");
        assert_eq!(stored(&out), [Stored::New, Stored::New, Stored::Status]);
        let rec = a.host("web1").unwrap();
        assert_eq!((rec.batches, rec.last_seq), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_refresh_task_shows_what_another_node_wrote_and_ends_with_the_store() {
        let (a, b, _url) = two_nodes().await;
        b.store_group(&[request("web1", 7, 1)]).await.unwrap();
        assert!(a.host("web1").is_none(), "a's mirror is loaded at open and refreshed by the task");
        let task = a.spawn_refresh(Duration::from_millis(20));
        let start = Instant::now();
        while a.host("web1").is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "the mirror never showed b's host");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A local write is never undone by a refresh that read an older row.
        a.store_group(&[request("web1", 7, 2)]).await.unwrap();
        for _ in 0..5 {
            assert_eq!(a.host("web1").unwrap().batches, 2);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(a.payload_bytes() > 0);
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the task ended").unwrap();
    }
}

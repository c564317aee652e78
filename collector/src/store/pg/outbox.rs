//! The notification outbox's table `pikett_outbox` (migration 0003), shared by the collector
//! nodes: rows keyed by the notification id (the idempotency key), claimed by the leader in
//! transactions fenced by its lease term.
//!
//! This layer knows rows, not notifications: an entry is JSON text it stores and hands back
//! (`notify::outbox::PgStore` turns rows into entries and back). Times are Unix microseconds
//! of the caller's clock (see the migration).
//!
//! - Enqueue: fenced, `INSERT … ON CONFLICT (id) DO NOTHING`; a conflict answers the state of
//!   the row already there (a duplicate).
//! - Claim: fenced, `SELECT … FOR UPDATE SKIP LOCKED` of the due rows the caller may claim
//!   (unclaimed, claimed by an older term, or by its own term with the claim run out), then
//!   the `UPDATE` that claims them, in one statement. Two sessions claiming at once each get
//!   other rows: a row one locked is skipped by the other, and one it claimed no longer
//!   qualifies when the other re-reads it.
//! - Result and release: `… WHERE id = $1 AND claimed_by = $me AND claim_term = $term AND
//!   claim_token = $token`, no fence needed: a newer term that took the claim over, or a later
//!   claim of the same term (after the claim ran out), changed those columns, so 0 rows means
//!   refused and nothing changes; the row's `claim_term` then tells which. A result or a
//!   release ends the claim (`claimed_by` NULL) but keeps `claim_term`, the last term that held
//!   it, so a late result of an older term is still told apart from its own term's.
//!
//! One session per [`PgOutbox`], taken out of its slot for each request and put back only
//! after a success (like the lease's).

use super::conn::Session;
use super::lease::fence;
use super::{PgConnect, db};
use crate::store::StoreError;

/// One row as written: an entry and the columns the queries select on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The notification id (the idempotency key).
    pub id: String,
    /// `pending`, `delivered` or `failed`.
    pub state: &'static str,
    /// The whole entry, as JSON.
    pub entry: String,
    pub next_attempt_us: i64,
    pub finished_at_us: Option<i64>,
}

const INSERT: &str = "INSERT INTO pikett_outbox \
                      (id, state, entry, next_attempt_us, finished_at_us, enqueued_by, enqueued_term) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";
const STATE: &str = "SELECT state FROM pikett_outbox WHERE id = $1";
const GET: &str = "SELECT entry FROM pikett_outbox WHERE id = $1 AND state <> 'quarantined'";
const WITH_PREFIX: &str = "SELECT id, entry FROM pikett_outbox \
                           WHERE starts_with(id, $1) AND state <> 'quarantined' ORDER BY id";
const PENDING: &str = "SELECT id, entry FROM pikett_outbox WHERE state = 'pending' ORDER BY id";
/// Which rows the term in placeholder `$term` may claim at `$now` (the placeholders' names).
macro_rules! claimable {
    ($term:literal, $now:literal) => {
        concat!(
            "(claimed_by IS NULL OR claim_term < ",
            $term,
            " OR (claim_term = ",
            $term,
            " AND claim_until_us <= ",
            $now,
            "))"
        )
    };
}
/// $1 node, $2 term, $3 now, $4 claim until, $5 limit, $6 claim token.
const CLAIM: &str = concat!(
    "WITH due AS (SELECT id FROM pikett_outbox WHERE state = 'pending' AND next_attempt_us <= $3 AND ",
    claimable!("$2", "$3"),
    " ORDER BY next_attempt_us, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
     UPDATE pikett_outbox o SET claimed_by = $1, claim_term = $2, claim_until_us = $4, claim_token = $6 \
     FROM due WHERE o.id = due.id RETURNING o.id, o.entry"
);
/// $1 term, $2 now.
const NEXT: &str =
    concat!("SELECT min(next_attempt_us) FROM pikett_outbox WHERE state = 'pending' AND ", claimable!("$1", "$2"));
const RECORD: &str = "UPDATE pikett_outbox SET state = $4, entry = $5, next_attempt_us = $6, finished_at_us = $7, \
                      claimed_by = NULL, claim_until_us = NULL, claim_token = NULL \
                      WHERE id = $1 AND claimed_by = $2 AND claim_term = $3 AND claim_token = $8 \
                      AND state = 'pending'";
const HOLDER: &str = "SELECT claim_term FROM pikett_outbox WHERE id = $1";
const RELEASE: &str = "UPDATE pikett_outbox SET claimed_by = NULL, claim_until_us = NULL, claim_token = NULL \
                       WHERE id = $1 AND claimed_by = $2 AND claim_term = $3 AND claim_token = $4 \
                       AND state = 'pending'";
const QUARANTINE: &str = "UPDATE pikett_outbox SET state = 'quarantined', claimed_by = NULL, claim_term = NULL, \
                          claim_until_us = NULL, claim_token = NULL WHERE id = $1 AND state = 'pending'";
const PURGE: &str = "DELETE FROM pikett_outbox WHERE state IN ('delivered', 'failed') \
                     AND (finished_at_us IS NULL OR finished_at_us < $1)";

/// The outbox table on one session of its own (the schema is migrated by `PgStorage::open`).
pub struct PgOutbox {
    session: Session,
}

impl PgOutbox {
    /// Connects on first use.
    pub fn new(connect: PgConnect) -> PgOutbox {
        PgOutbox { session: Session::new(connect) }
    }

    /// Inserts `row` as enqueued by `node` under `term` (fenced), unless its id exists: then
    /// the existing row's state, and nothing changed.
    pub async fn insert(&self, node: &str, term: i64, row: &OutboxRow) -> Result<Option<String>, StoreError> {
        self.session
            .with(async |client| {
                let what = "enqueueing a notification";
                let tx = client.transaction().await.map_err(db(what))?;
                fence(&tx, node, term).await?;
                let n = tx
                    .execute(
                        INSERT,
                        &[&row.id, &row.state, &row.entry, &row.next_attempt_us, &row.finished_at_us, &node, &term],
                    )
                    .await
                    .map_err(db(what))?;
                let existing = if n == 1 {
                    None
                } else {
                    let state = tx.query_opt(STATE, &[&row.id]).await.map_err(db(what))?;
                    Some(match state {
                        Some(r) => r.try_get(0).map_err(db(what))?,
                        // Gone between the two statements (purged): a finished one.
                        None => "failed".to_string(),
                    })
                };
                tx.commit().await.map_err(db(what))?;
                Ok(existing)
            })
            .await
    }

    /// The entry of `id` (not quarantined).
    pub async fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.session
            .with(async |client| {
                let row = client.query_opt(GET, &[&id]).await.map_err(db("reading a notification"))?;
                Ok(row.map(|r| r.try_get(0)).transpose().map_err(db("reading a notification"))?)
            })
            .await
    }

    /// `(id, entry)` of the rows whose id starts with `prefix` (not quarantined), by id.
    pub async fn with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(WITH_PREFIX, &[&prefix], "reading a fault's notifications").await
    }

    /// `(id, entry)` of the pending rows, claimed or not, by id.
    pub async fn pending(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(PENDING, &[], "reading pending notifications").await
    }

    async fn rows(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &'static str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.session
            .with(async |client| {
                let rows = client.query(sql, params).await.map_err(db(what))?;
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(db(what))?)
            })
            .await
    }

    /// Claims for `node` under `term` (fenced), until `until_us`, at most `limit` pending rows
    /// due at `now_us` that it may claim; returns their `(id, entry)` (in no order) and the
    /// earliest next attempt of the rows it may claim later.
    pub async fn claim(
        &self,
        node: &str,
        term: i64,
        token: i64,
        now_us: i64,
        until_us: i64,
        limit: usize,
    ) -> Result<(Vec<(String, String)>, Option<i64>), StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.session
            .with(async |client| {
                let what = "claiming due notifications";
                let tx = client.transaction().await.map_err(db(what))?;
                fence(&tx, node, term).await?;
                let claimed =
                    tx.query(CLAIM, &[&node, &term, &now_us, &until_us, &limit, &token]).await.map_err(db(what))?;
                let next = tx.query_one(NEXT, &[&term, &now_us]).await.map_err(db(what))?;
                tx.commit().await.map_err(db(what))?;
                let claimed = claimed
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(db(what))?;
                Ok((claimed, next.try_get(0).map_err(db(what))?))
            })
            .await
    }

    /// Writes an attempt's result if `node` still holds the row's claim under `term` and
    /// `token`, and ends the claim; when the claim is not its own any more (nothing changed),
    /// `Err` with the term now holding the row's claim, if any.
    pub async fn record(
        &self,
        node: &str,
        term: i64,
        token: i64,
        row: &OutboxRow,
    ) -> Result<Result<(), Option<i64>>, StoreError> {
        self.session
            .with(async |client| {
                let what = "recording a notification's attempt";
                let n = client
                    .execute(
                        RECORD,
                        &[
                            &row.id,
                            &node,
                            &term,
                            &row.state,
                            &row.entry,
                            &row.next_attempt_us,
                            &row.finished_at_us,
                            &token,
                        ],
                    )
                    .await
                    .map_err(db(what))?;
                if n == 1 {
                    return Ok(Ok(()));
                }
                let holder = client.query_opt(HOLDER, &[&row.id]).await.map_err(db(what))?;
                let holder: Option<i64> = match holder {
                    Some(r) => r.try_get(0).map_err(db(what))?,
                    None => None,
                };
                Ok(Err(holder))
            })
            .await
    }

    /// Ends `node`'s claim under `term` and `token` on `id`, if it still holds it.
    pub async fn release(&self, node: &str, term: i64, token: i64, id: &str) -> Result<(), StoreError> {
        self.session
            .with(async |client| {
                client
                    .execute(RELEASE, &[&id, &node, &term, &token])
                    .await
                    .map_err(db("releasing a notification's claim"))?;
                Ok(())
            })
            .await
    }

    /// Sets an undecodable pending row aside (state `quarantined`, kept for inspection).
    pub async fn quarantine(&self, id: &str) -> Result<(), StoreError> {
        self.session
            .with(async |client| {
                client.execute(QUARANTINE, &[&id]).await.map_err(db("quarantining a notification"))?;
                Ok(())
            })
            .await
    }

    /// Removes finished rows finished before `before_us`; returns how many.
    pub async fn purge_finished(&self, before_us: i64) -> Result<usize, StoreError> {
        self.session
            .with(async |client| {
                let n = client.execute(PURGE, &[&before_us]).await.map_err(db("purging finished notifications"))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .await
    }
}

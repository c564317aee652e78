//! The PostgreSQL engine: [`Storage`] and [`Tree`] on a `pikett_kv(tree, key, value)` table, as a
//! write-behind journal (option A of the HA design).
//!
//! Every tree lives in memory (a `BTreeMap`), loaded from `pikett_kv` when the storage opens; reads
//! never leave the process. A write changes the map and records the key in the tree's
//! journal (the last write per key wins). [`Storage::flush`] writes the journals of all trees
//! in ONE transaction (batched `UNNEST` upserts and deletes) and forgets the journaled writes
//! only after COMMIT: a failed flush returns the error and keeps them for the next one. So the
//! contract of `store/mod.rs` holds exactly: visible at once, durable at flush, one flush for
//! every tree (the group commit). Unflushed writes die with the process (see
//! `suite::UnflushedOnDrop::Lost`).
//!
//! Why everything is loaded in [`PgStorage::open`]: `Tree` is synchronous and called from
//! async tasks, so it must never wait on the network, and `Storage::tree` is synchronous too
//! and called from async code at start-up, where blocking on a query would stall (or, on a
//! current-thread runtime, deadlock) the runtime. An async `open` that loads every tree in
//! one consistent snapshot makes `tree()` a map lookup. The price: the whole `pikett_kv` table is in
//! memory, which suits only bounded trees written by one node (the design's leader trees).
//!
//! A flush takes a consistent cut: writes hold the shared side of a lock while they change a
//! tree, the flush holds its exclusive side while it copies the journals, so one flush commits
//! a prefix of the write history across all trees, and a `WriteBatch` is never split.
//!
//! Another node's flushed writes reach this node's copy only through
//! [`PgStorage::refresh_tree`] (the trees several nodes must agree on, such as the agents'
//! identities, are refreshed periodically); this node's unflushed writes survive a refresh.
//!
//! The session is re-established by the next flush when it was lost (the journal was kept).
//! Re-sending a journal is harmless (upserts and deletes of final values; one writer per
//! tree), so a flush whose COMMIT went through but whose answer was lost is simply repeated;
//! a flush cancelled midway drops its session, whose open transaction the server rolls back.
//!
//! Every flush transaction first takes `pg_advisory_xact_lock(FLUSH_LOCK)`, so flushes of all
//! sessions run one after the other. Without it a flush whose COMMIT stalls while its
//! connection drops could commit AFTER a later flush on the new session: that one's DELETE of
//! a key the stalled flush inserted does not wait for the uncommitted insert (it does not see
//! the row), and the insert, committed last, resurrects the key. With the lock the later flush
//! waits (up to `lock_timeout`, then fails and keeps its journal) until the stalled one has
//! committed or rolled back.
//!
//! Statements carry at most 5,000 rows and 8 MiB of keys and values each (a bigger single row
//! goes alone), so each stays well inside `statement_timeout`. Tree names are PostgreSQL
//! `text`, which cannot hold NUL: `tree()` refuses such names rather than fail every flush.
//! A leader's storage is fenced ([`PgStorage::fence_with`]): every flush then first checks, in its
//! transaction, that the node still holds the leader lease with its term (`lease::fence`), so a
//! deposed leader's flush fails with [`StoreError::Fenced`] and commits nothing. Storage of a
//! node that is not the leader stays unfenced (it writes only keys of its own).

mod batches;
mod conn;
mod lease;
mod migrate;
/// A throwaway PostgreSQL for tests (also for the end-to-end tests, feature `pg-testing`).
#[cfg(any(test, feature = "pg-testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use tokio_postgres::{Client, IsolationLevel};

pub use batches::{Head, PendingBatch, PgBatches};
pub use conn::PgConnect;
pub use lease::{PgLease, fence};
pub use migrate::{LATEST as SCHEMA_VERSION, Migrated};

use self::tree::{Cut, Journal, PgTree, TreeData};
use super::{Storage, StoreError, Tree};

/// What went wrong with PostgreSQL, naming the step. tokio-postgres's own messages are vague
/// ("db error"); the server's reason is in their sources, so the messages carry the chain.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL URL: {0}")]
    Url(String),
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    #[error("PostgreSQL, {what}: {}", pikett_support::error_chain(source))]
    Db {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A flush's step failed; `rows` and `bytes` (of keys and values) are the step's statement,
    /// or the whole flush for its other steps.
    #[error("PostgreSQL, {what} ({rows} rows, {bytes} bytes): {}", pikett_support::error_chain(source))]
    Flush {
        what: &'static str,
        rows: usize,
        bytes: usize,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL, refreshing tree {tree}: {}", pikett_support::error_chain(source))]
    Refresh {
        tree: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("tree name {0:?} contains NUL, which PostgreSQL text cannot hold")]
    TreeName(String),
    #[error("PostgreSQL schema migration {version} failed: {}", pikett_support::error_chain(source))]
    Migration {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "table {table} exists but is not pikett's ({}): point the collector at another database",
        pikett_support::error_chain(source)
    )]
    NotOurs {
        table: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the database's schema version {found} is newer than this pikett-collector knows ({known}): \
         upgrade the collector, or point it at another database"
    )]
    SchemaTooNew { found: i32, known: i32 },
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |source| PgError::Db { what, source }
}

/// At most this many rows per statement of a flush (bounds one statement's parameters).
const ROWS_PER_STATEMENT: usize = 5_000;

/// At most this many bytes of keys and values per statement of a flush (a single bigger row
/// goes alone).
const BYTES_PER_STATEMENT: usize = 8 << 20;

/// The advisory lock key every flush transaction takes ("pikettf" in ASCII; the schema's is
/// "pikett"): see the module doc.
const FLUSH_LOCK: i64 = 0x70_696b_6574_7466;

/// How often `size_on_disk`'s figure is refreshed (it is synchronous: it answers from the
/// figure read after a flush).
const SIZE_REFRESH: Duration = Duration::from_secs(30);

/// [`Storage`] on a PostgreSQL database; see the module doc.
#[derive(Clone)]
pub struct PgStorage {
    inner: Arc<Inner>,
}

struct Inner {
    connect: PgConnect,
    /// The session; `None` after it was lost. The lock also orders flushes.
    session: tokio::sync::Mutex<Session>,
    trees: Mutex<HashMap<String, Arc<TreeData>>>,
    cut: Arc<Cut>,
    size: AtomicU64,
    /// The leader's (node, term) that every flush must still hold; `None`: unfenced.
    fence: Mutex<Option<(String, i64)>>,
    /// Set by [`PgStorage::close_for_writes`]: flushes do nothing from then on.
    closed: std::sync::atomic::AtomicBool,
}

struct Session {
    client: Option<Client>,
    size_read: Instant,
}

impl PgStorage {
    /// Connects, migrates the schema to this binary's version (refusing a newer one) and
    /// loads every tree.
    pub async fn open(connect: PgConnect) -> Result<PgStorage, StoreError> {
        let mut client = connect.connect().await?;
        migrate::migrate(&mut client).await?;
        let trees = load(&mut client).await?;
        let size = database_size(&client).await?;
        let trees = trees.into_iter().map(|(name, map)| (name, Arc::new(TreeData::new(map)))).collect();
        Ok(PgStorage {
            inner: Arc::new(Inner {
                connect,
                session: tokio::sync::Mutex::new(Session { client: Some(client), size_read: Instant::now() }),
                trees: Mutex::new(trees),
                cut: Arc::new(Cut::default()),
                size: AtomicU64::new(size),
                fence: Mutex::new(None),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The server process of the current session (tests end it to simulate a lost link).
    #[cfg(test)]
    pub(crate) async fn backend_pid(&self) -> Option<i32> {
        let session = self.inner.session.lock().await;
        let client = session.client.as_ref()?;
        client.query_one("SELECT pg_backend_pid()", &[]).await.ok().map(|r| r.get(0))
    }

    /// Whether the current session is known to be gone.
    #[cfg(test)]
    pub(crate) async fn session_closed(&self) -> bool {
        self.inner.session.lock().await.client.as_ref().is_none_or(Client::is_closed)
    }

    /// From now on every flush commits only while `node` holds the leader lease with `term`
    /// (checked in the flush's own transaction); otherwise it fails with
    /// [`StoreError::Fenced`] and keeps its journal.
    pub fn fence_with(&self, node: &str, term: i64) {
        *self.inner.fence.lock().unwrap_or_else(PoisonError::into_inner) = Some((node.to_string(), term));
    }

    /// Re-reads tree `name` from the database and replaces this node's copy with it, so it
    /// sees what other nodes flushed (a revocation, a used ticket). Keys this node wrote
    /// and has not flushed keep its own values (they are newer, and the next flush writes
    /// them). Fit for small trees only: it reads the whole tree.
    ///
    /// Holds the session lock, which every flush holds from copying the journals until it
    /// forgets them: a flush of this node cannot commit and forget a write between the read
    /// and the replace, so a value this node flushed is never replaced by the older one the
    /// read saw (nor a removed key brought back).
    pub async fn refresh_tree(&self, name: &str) -> Result<(), StoreError> {
        if name.contains('\0') {
            return Err(PgError::TreeName(name.to_string()).into());
        }
        let mut session = self.inner.session.lock().await;
        let client = match session.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.inner.connect.connect().await?,
        };
        let read = read_tree(&client, name).await;
        if !client.is_closed() {
            session.client = Some(client);
        }
        let rows = read?;
        let data =
            self.trees().entry(name.to_string()).or_insert_with(|| Arc::new(TreeData::new(BTreeMap::new()))).clone();
        data.refresh(rows);
        drop(session);
        Ok(())
    }

    /// A clean stop: after the last flush, nothing more is written (a flush returns at once,
    /// its writes are dropped as a crash would drop them), so the tasks still running while
    /// the lease is given up cannot fail on the fence of a term that ended on purpose.
    pub fn close_for_writes(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }

    fn trees(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TreeData>>> {
        self.inner.trees.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads every tree in one snapshot. The statement timeout is lifted for this read: the table
/// is as large as the trees, and it is read once.
async fn load(client: &mut Client) -> Result<HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>, PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("loading the trees"))?;
    tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(db("loading the trees"))?;
    let rows = tx
        .query_raw("SELECT tree, key, value FROM pikett_kv", std::iter::empty::<i32>())
        .await
        .map_err(db("loading the trees"))?;
    let mut trees: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>> = HashMap::new();
    futures::pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(db("loading the trees"))? {
        let name: String = row.try_get(0).map_err(db("reading a kv row"))?;
        trees
            .entry(name)
            .or_default()
            .insert(row.try_get(1).map_err(db("reading a kv row"))?, row.try_get(2).map_err(db("reading a kv row"))?);
    }
    tx.commit().await.map_err(db("loading the trees"))?;
    Ok(trees)
}

/// The rows of tree `name` (one statement: one snapshot).
async fn read_tree(client: &Client, name: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, PgError> {
    let e = |source| PgError::Refresh { tree: name.to_string(), source };
    let rows = client.query("SELECT key, value FROM pikett_kv WHERE tree = $1", &[&name]).await.map_err(e)?;
    rows.iter().map(|row| Ok((row.try_get(0).map_err(e)?, row.try_get(1).map_err(e)?))).collect()
}

async fn database_size(client: &Client) -> Result<u64, PgError> {
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(db("reading the database size"))?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// The copied journals of all trees as the columns of the flush's statements.
#[derive(Default)]
struct Changes<'a> {
    up_tree: Vec<&'a str>,
    up_key: Vec<&'a [u8]>,
    up_value: Vec<&'a [u8]>,
    del_tree: Vec<&'a str>,
    del_key: Vec<&'a [u8]>,
}

/// Writes the copied journals in one transaction, fenced by `fence` (node, term) when given.
async fn write(
    client: &mut Client,
    journals: &[(String, Journal)],
    fence: Option<&(String, i64)>,
) -> Result<(), StoreError> {
    let mut c = Changes::default();
    for (name, entries) in journals {
        for (key, value) in entries {
            match value {
                Some(v) => {
                    c.up_tree.push(name);
                    c.up_key.push(key);
                    c.up_value.push(v);
                }
                None => {
                    c.del_tree.push(name);
                    c.del_key.push(key);
                }
            }
        }
    }
    let up_sizes: Vec<usize> = c.up_key.iter().zip(&c.up_value).map(|(k, v)| k.len() + v.len()).collect();
    let del_sizes: Vec<usize> = c.del_key.iter().map(|k| k.len()).collect();
    let (rows, bytes) = (up_sizes.len() + del_sizes.len(), up_sizes.iter().chain(&del_sizes).sum::<usize>());
    let whole = |what| move |source| PgError::Flush { what, rows, bytes, source };
    let tx = client.transaction().await.map_err(whole("starting a flush"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FLUSH_LOCK]).await.map_err(whole("locking the flush"))?;
    if let Some((node, term)) = fence {
        lease::fence(&tx, node, *term).await?;
    }
    let upsert = "INSERT INTO pikett_kv (tree, key, value) \
                  SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                  ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value";
    for (r, bytes) in statements(&up_sizes) {
        tx.execute(upsert, &[&&c.up_tree[r.clone()], &&c.up_key[r.clone()], &&c.up_value[r.clone()]])
            .await
            .map_err(|source| PgError::Flush { what: "flushing writes", rows: r.len(), bytes, source })?;
    }
    let delete = "DELETE FROM pikett_kv USING unnest($1::text[], $2::bytea[]) AS d(tree, key) \
                  WHERE pikett_kv.tree = d.tree AND pikett_kv.key = d.key";
    for (r, bytes) in statements(&del_sizes) {
        tx.execute(delete, &[&&c.del_tree[r.clone()], &&c.del_key[r.clone()]])
            .await
            .map_err(|source| PgError::Flush { what: "flushing removals", rows: r.len(), bytes, source })?;
    }
    tx.commit().await.map_err(whole("committing a flush"))?;
    Ok(())
}

/// Splits rows of these sizes (bytes of key and value) into statements of at most
/// [`ROWS_PER_STATEMENT`] rows and [`BYTES_PER_STATEMENT`] bytes (a bigger row alone):
/// each statement's row range and bytes.
fn statements(sizes: &[usize]) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start == ROWS_PER_STATEMENT || bytes + size > BYTES_PER_STATEMENT) {
            out.push((start..i, bytes));
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push((start..sizes.len(), bytes));
    }
    out
}

#[async_trait]
impl Storage for PgStorage {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        if name.contains('\0') {
            return Err(PgError::TreeName(name.to_string()).into());
        }
        let data =
            self.trees().entry(name.to_string()).or_insert_with(|| Arc::new(TreeData::new(BTreeMap::new()))).clone();
        Ok(Arc::new(PgTree::new(data, self.inner.cut.clone())))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let mut session = self.inner.session.lock().await;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The cut: no write is halfway while the journals are copied.
        let (journals, upto) = {
            let _cut = self.inner.cut.exclusive();
            let upto = self.inner.cut.last_seq();
            let journals: Vec<_> = self
                .trees()
                .iter()
                .filter_map(|(name, data)| {
                    let entries = data.journal_copy();
                    (!entries.is_empty()).then(|| (name.clone(), entries))
                })
                .collect();
            (journals, upto)
        };
        if journals.is_empty() {
            return Ok(());
        }
        let mut client = match session.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.inner.connect.connect().await?,
        };
        let fence = self.inner.fence.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let written = write(&mut client, &journals, fence.as_ref()).await;
        if !client.is_closed() {
            session.client = Some(client);
        }
        written?;
        for data in self.trees().values() {
            data.forget_journal(upto);
        }
        if session.size_read.elapsed() >= SIZE_REFRESH {
            session.size_read = Instant::now();
            if let Some(client) = &session.client
                && let Ok(size) = database_size(client).await
            {
                self.inner.size.store(size, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Blocks on [`Storage::flush`]: the session's connection is a task of the runtime, which
    /// keeps running while this (blocking) thread waits.
    fn flush_blocking(&self) -> Result<(), StoreError> {
        tokio::runtime::Handle::current().block_on(self.flush())
    }

    /// The database's size (`pg_database_size`) as read at open and then at most every 30 s
    /// after a flush.
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.size.load(Ordering::Relaxed))
    }
}

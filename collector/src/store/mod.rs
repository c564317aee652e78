//! Storage: the one seam between the collector's services and a storage engine.
//!
//! Every service keeps its state in named [`Tree`]s (ordered maps of bytes to bytes) of one
//! [`Storage`]; [`Storage::flush`] makes every write to every tree so far durable at once,
//! which is what the group commit builds on. The embedded engine is sled
//! ([`sled_store::SledStorage`]); the second, [`pg::PgStorage`] (PostgreSQL, for high
//! availability), is built and tested but not selectable yet. Both pass the one shared test
//! suite, `suite.rs`, which is the contract's executable form.
//!
//! Architecture invariant: only this folder names an engine's types. Services see
//! `Arc<dyn Storage>` and `Arc<dyn Tree>`, never `sled::*`.

pub mod batch_files;
pub mod batch_store;
#[cfg(test)]
pub(crate) mod batch_suite;
pub mod pg;
pub mod sled_store;
#[cfg(test)]
pub(crate) mod suite;

use std::sync::Arc;

use async_trait::async_trait;

pub use sled_store::SledStorage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir {dir}: cannot open the database: {message}")]
    Open { dir: String, message: String },
    #[error("storage: {0}")]
    Engine(String),
    #[error(transparent)]
    Postgres(#[from] pg::PgError),
    /// A leader-only write under a term that no longer holds the lease (see [`Lease`]).
    #[error("fenced: node {node} no longer holds the leader lease of term {term}")]
    Fenced { node: String, term: i64 },
    /// A blocking storage task was cancelled: the runtime is shutting down (a failed start,
    /// or the end of a stop). Not a storage failure.
    #[error("storage: {0}: cancelled, the collector is stopping")]
    Stopping(String),
}

impl StoreError {
    /// The error of a blocking storage task (`what`) that did not return: cancelled by the
    /// runtime's shutdown ([`StoreError::Stopping`]) or panicked.
    pub fn from_join(what: &str, e: tokio::task::JoinError) -> StoreError {
        if e.is_cancelled() {
            StoreError::Stopping(what.to_string())
        } else {
            StoreError::Engine(format!("{what}: {e}"))
        }
    }
}

/// One key/value pair read from a [`Tree`].
pub type Entry = (Vec<u8>, Vec<u8>);

/// Writes to one tree applied atomically by [`Tree::apply`]: all of them or none.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }
}

/// An ordered map of bytes to bytes. Writes are visible to reads at once and durable after
/// the next [`Storage::flush`].
pub trait Tree: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError>;
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    /// Removes `key`; returns the value it had.
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies every write of `batch` atomically.
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// The entries whose key starts with `prefix`, in key order.
    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;
    /// How many entries there are (reads them all: for small trees).
    fn count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.iter() {
            item?;
            n += 1;
        }
        Ok(n)
    }
    /// Every entry, in key order.
    fn iter<'a>(&'a self) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a> {
        self.scan_prefix(&[])
    }
    /// The last entry whose key starts with `prefix` and is at least `from` (this default
    /// reads the whole prefix; sled starts at `from`). Forward only: sled's reverse iteration
    /// links a 1 MiB constant into the binary.
    fn last_with_prefix_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Entry>, StoreError> {
        let mut last = None;
        for item in self.scan_prefix(prefix) {
            let item = item?;
            if item.0.as_slice() >= from {
                last = Some(item);
            }
        }
        Ok(last)
    }
}

/// Removes the entries under `prefix` for which `gone(key, value)` holds, at most `max`,
/// in key order; returns how many went (retention's step). Not flushed.
pub fn remove_where(
    tree: &dyn Tree,
    prefix: &[u8],
    max: usize,
    mut gone: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<usize, StoreError> {
    let mut keys = Vec::new();
    for item in tree.scan_prefix(prefix) {
        if keys.len() >= max {
            break;
        }
        let (k, v) = item?;
        if gone(&k, &v) {
            keys.push(k);
        }
    }
    for k in &keys {
        tree.remove(k)?;
    }
    Ok(keys.len())
}

/// A storage engine: named trees and one flush for all of them.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Opens (or creates) the tree `name`.
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError>;
    /// Makes every write so far, to every tree, durable against a process crash.
    async fn flush(&self) -> Result<(), StoreError>;
    /// [`Storage::flush`] on the calling thread, for a caller already on one of the
    /// runtime's blocking threads (the group commit syncs the batch files and flushes the
    /// store in one hop). Engines should override it; the default blocks on `flush`, so it
    /// must not be called from an async task.
    fn flush_blocking(&self) -> Result<(), StoreError> {
        tokio::runtime::Handle::current().block_on(self.flush())
    }
    /// Bytes the store's files take on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// What a node publishes about itself in the cluster table (its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The node's configured gRPC `listen` address (may be a wildcard such as `0.0.0.0:9740`).
    pub addr: String,
    /// This binary's version.
    pub version: String,
}

/// The answer of [`Lease::try_acquire_or_renew`], as the database saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The caller holds the lease with this term until the database's `now() + ttl`.
    Leader { term: i64 },
    /// Someone else holds it (`leader`), or nobody does and the caller could not take it.
    Follower { leader: Option<String> },
}

/// One node's row of the cluster table; times are the database's, in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub addr: String,
    pub version: String,
    pub started_at_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
}

/// The lease and every node's heartbeat, read in one go; times are the database's clock on
/// PostgreSQL and the collector's own clock for the standalone (sled) setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The lease's holder as written (possibly expired: see [`Cluster::leader`]).
    pub holder: Option<String>,
    pub term: i64,
    pub expires_at_ms: Option<i64>,
    /// The database's `now()` when this was read.
    pub now_ms: i64,
    /// Every node that ever sent a heartbeat, by name.
    pub nodes: Vec<NodeRow>,
}

impl Cluster {
    /// The holder whose lease has not expired yet.
    pub fn leader(&self) -> Option<&str> {
        match (self.holder.as_deref(), self.expires_at_ms) {
            (Some(holder), Some(expires)) if expires > self.now_ms => Some(holder),
            _ => None,
        }
    }
}

/// Leadership among collectors: one lease with a fencing term, renewed on the database's
/// clock, plus the nodes' heartbeats. The decisions on top (the leader's own deadline,
/// stepping down) are in `services::leadership`; this is only what the database says.
#[async_trait]
pub trait Lease: Send + Sync {
    /// With `held = Some(term)`: renews the lease this node holds with `term` if it has not
    /// expired (fails to `Follower` when it lost it). With `None`: takes the lease if it is
    /// free, expired or this node's own already (taken by a request the node gave up on),
    /// under a new term (the previous term + 1). The caller gives up on a request after
    /// `ttl`: nothing of it may commit later (dropping a database request does not cancel it
    /// on the server), so implementations bound their statements by that.
    async fn try_acquire_or_renew(
        &self,
        node: &str,
        ttl: std::time::Duration,
        held: Option<i64>,
    ) -> Result<LeaseState, StoreError>;
    /// Records that `node` is alive (the database's `now()`), with its `info`.
    async fn heartbeat(&self, node: &str, info: &NodeInfo) -> Result<(), StoreError>;
    /// The lease and every node's last heartbeat.
    async fn cluster(&self) -> Result<Cluster, StoreError>;
    /// Gives the lease up at once if `node` still holds it with `term` (a clean shutdown), so
    /// another node takes over without waiting for the expiry. The term stays: the next
    /// holder's is higher.
    async fn release(&self, node: &str, term: i64) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[tokio::test]
    async fn a_cancelled_storage_task_is_stopping_and_a_panicked_one_a_failure() {
        let pending = tokio::spawn(std::future::pending::<()>());
        pending.abort();
        let cancelled = pending.await.unwrap_err();
        assert!(
            matches!(StoreError::from_join("retention step", cancelled), StoreError::Stopping(what) if what == "retention step")
        );
        let panicked = tokio::task::spawn_blocking(|| panic!("boom")).await.unwrap_err();
        let e = StoreError::from_join("retention step", panicked);
        assert!(matches!(e, StoreError::Engine(_)) && e.to_string().contains("retention step"), "{e}");
    }
}

//! The ingest log: every stored batch per host, and the host registry.
//!
//! Batches: the payload (encoded `pikett.v1.Batch`, as received) in the batch files
//! ([`BatchFiles`]: one file per time span, deleted whole by retention), and its place in
//! the tree `batch_index` (host_id, 0x00, spool epoch big-endian, seq big-endian →
//! [`Location`]); the tree `batch_by_time` holds the same keys in arrival order
//! (arrival time, key), for retention. The tree `batches` holds what versions before the batch files stored in
//! sled itself (same keys → the payload; from before epochs: host_id, 0x00, seq, read as
//! epoch 0): read and pruned, never written. `hosts` (host_id → JSON [`HostRecord`]).
//!
//! A batch is identified by (host, spool epoch, seq): an agent whose spool was wiped comes
//! back with a new epoch and sequence numbers from 1, which are new batches, not duplicates.
//! Batches are inserted by the group-commit writer (`services::writer`), which also flushes
//! them ([`BatchLog::flush`]: the batch files first, then the index).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pikett_core::hosts::HostRecord;

use crate::store::batch_files::{BatchFiles, Location};
pub use crate::store::batch_store::{BatchStore, Outcome, Sender, Stored, WriteRequest};
use crate::store::{Storage, StoreError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum BatchLogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage: corrupt host record {host}: {source}")]
    CorruptHost { host: String, source: serde_json::Error },
}

pub struct BatchLog {
    storage: Arc<dyn Storage>,
    files: Arc<BatchFiles>,
    index: Arc<dyn Tree>,
    /// The index in arrival order (arrival time, batch key → nothing), for retention.
    by_time: Arc<dyn Tree>,
    /// Batches stored in sled by earlier versions.
    legacy: Arc<dyn Tree>,
    hosts_tree: Arc<dyn Tree>,
    /// The host registry, mirrored in memory (read by every admin call).
    hosts: RwLock<HashMap<String, HostRecord>>,
    /// The newest arrival time given to a batch: arrival times never go back, even when
    /// the clock does, so readers of `by_time` that keep a position (remote write) never
    /// find a new batch sorted before what they have read.
    newest_received_ms: std::sync::atomic::AtomicI64,
}

fn batch_key(host: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 17);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The key batches of epoch 0 had before epochs existed.
fn legacy_batch_key(host: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 9);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A key of `batch_by_time`: arrival time (Unix ms, big-endian) then the batch key.
fn time_key(received_ms: i64, batch_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + batch_key.len());
    k.extend_from_slice(&received_ms.to_be_bytes());
    k.extend_from_slice(batch_key);
    k
}

/// What [`BatchLog::find`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    No,
    Stored,
    /// Indexed, but its payload is not intact (the entry was removed).
    Damaged,
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// Runs blocking store work from async code: on a multi-threaded runtime the worker thread
/// hands its other tasks on first; a current-thread runtime (tests) just runs it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[async_trait::async_trait]
impl BatchStore for BatchLog {
    fn hosts(&self) -> Vec<HostRecord> {
        BatchLog::hosts(self)
    }
    fn host(&self, id: &str) -> Option<HostRecord> {
        BatchLog::host(self, id)
    }
    fn batches_retained(&self) -> u64 {
        BatchLog::batches_retained(self)
    }
    fn batches_stored(&self) -> u64 {
        BatchLog::batches_stored(self)
    }
    fn payload_bytes(&self) -> u64 {
        self.files_size()
    }
    async fn remove_host(&self, host: &str, now_ms: i64) -> Result<bool, StoreError> {
        let known = BatchLog::remove_host(self, host, now_ms)?;
        if known {
            self.flush().await?;
        }
        Ok(known)
    }
    async fn batch(&self, host: &str, epoch: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        blocking(|| BatchLog::batch(self, host, epoch, seq))
    }
    async fn prune_before(&self, cutoff_ms: i64, max: usize) -> Result<usize, StoreError> {
        let n = blocking(|| BatchLog::prune_before(self, cutoff_ms, max))?;
        if n > 0 {
            self.flush().await?;
        }
        Ok(n)
    }
}

impl BatchLog {
    /// Opens the trees in `storage` and reads the host registry into memory.
    pub fn open(storage: Arc<dyn Storage>, files: BatchFiles) -> Result<BatchLog, BatchLogError> {
        let index = storage.tree("batch_index")?;
        let by_time = storage.tree("batch_by_time")?;
        let legacy = storage.tree("batches")?;
        let hosts_tree = storage.tree("hosts")?;
        let mut hosts = HashMap::new();
        for item in hosts_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).to_string();
            let rec: HostRecord = serde_json::from_slice(&v)
                .map_err(|source| BatchLogError::CorruptHost { host: host.clone(), source })?;
            hosts.insert(host, rec);
        }
        let newest_received_ms = hosts.values().map(|h| h.last_seen_ms).max().unwrap_or(0).into();
        Ok(BatchLog {
            storage,
            files: Arc::new(files),
            index,
            by_time,
            legacy,
            hosts_tree,
            hosts: RwLock::new(hosts),
            newest_received_ms,
        })
    }

    pub fn hosts(&self) -> Vec<HostRecord> {
        let mut v: Vec<_> = self.hosts.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        v
    }

    /// The hosts staff have not removed (lists, status, up/down).
    pub fn active_hosts(&self) -> Vec<HostRecord> {
        let mut hosts = self.hosts();
        hosts.retain(|h| h.removed_ms == 0);
        hosts
    }

    /// Marks `host` removed (decommissioned), durably once flushed; false when unknown.
    pub fn remove_host(&self, host: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        let Some(rec) = hosts.get_mut(host) else { return Ok(false) };
        rec.removed_ms = now_ms;
        let json = serde_json::to_vec(&*rec).expect("a HostRecord always serializes");
        self.hosts_tree.insert(host.as_bytes(), json)?;
        Ok(true)
    }

    pub fn host(&self, id: &str) -> Option<HostRecord> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Batches in the store now (see [`HostRecord::retained`]).
    pub fn batches_retained(&self) -> u64 {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).values().map(|h| h.retained).sum()
    }

    pub fn batches_stored(&self) -> u64 {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).values().map(|h| h.batches).sum()
    }

    /// The stored batch `seq` of `host`'s spool `epoch`, encoded.
    pub fn batch(&self, host: &str, epoch: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = batch_key(host, epoch, seq);
        if let Some(v) = self.index.get(&key)? {
            let loc = Location::decode(&v)
                .ok_or_else(|| StoreError::Engine(format!("batch_index: corrupt entry for {host} {epoch}/{seq}")))?;
            return self.files.read(&loc).map(Some);
        }
        match self.legacy.get(&key)? {
            None if epoch == 0 => self.legacy.get(&legacy_batch_key(host, seq)),
            found => Ok(found),
        }
    }

    /// (spool epoch, sequence number) of every batch stored for `host`, ascending.
    pub fn stored_seqs(&self, host: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.index.scan_prefix(&prefix).chain(self.legacy.scan_prefix(&prefix)) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            match rest.len() {
                16 => out.push((be_u64(rest), be_u64(&rest[8..]))),
                8 => out.push((0, be_u64(rest))),
                // Host ids contain no NUL, so `host\0` is this host's prefix alone; any other
                // length is not a batch key.
                _ => {}
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Whether the batch is stored. An index entry whose payload is not intact does not
    /// count: sled may make an index entry durable before the flush that syncs its payload,
    /// so after a power loss an unacknowledged batch can be indexed without its bytes; its
    /// resend is stored again instead of being answered as a duplicate.
    fn find(&self, host: &str, epoch: u64, seq: u64) -> Result<Found, StoreError> {
        let key = batch_key(host, epoch, seq);
        if let Some(v) = self.index.get(&key)? {
            if let Some(loc) = Location::decode(&v)
                && self.files.verify(&loc)
            {
                return Ok(Found::Stored);
            }
            tracing::warn!(
                host_id = %host, epoch, seq,
                "a stored batch's payload is missing or damaged (written just before a power loss?): storing the resent copy"
            );
            if let Some(loc) = Location::decode(&v) {
                self.by_time.remove(&time_key(loc.received_ms, &key))?;
            }
            self.index.remove(&key)?;
            return Ok(Found::Damaged);
        }
        let legacy = self.legacy.contains_key(&key)?
            || (epoch == 0 && self.legacy.contains_key(&legacy_batch_key(host, seq))?);
        Ok(if legacy { Found::Stored } else { Found::No })
    }

    /// Inserts a group of batches (not yet flushed). Runs on a blocking thread.
    pub(crate) fn apply(&self, group: &[WriteRequest], now_ms: i64) -> Result<Vec<Outcome>, StoreError> {
        let now_ms = self.newest_received_ms.fetch_max(now_ms, std::sync::atomic::Ordering::SeqCst).max(now_ms);
        let mut results = Vec::with_capacity(group.len());
        let mut changed: HashMap<String, HostRecord> = HashMap::new();
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for req in group {
            let (host, epoch, seq) = (&req.sender.host_id, req.sender.spool_epoch, req.batch.seq);
            let found = if req.status { Found::No } else { self.find(host, epoch, seq)? };
            let stored = if req.status {
                Stored::Status
            } else if found == Found::Stored {
                Stored::Duplicate
            } else {
                let key = batch_key(host, epoch, seq);
                let loc = self.files.append(&prost::Message::encode_to_vec(&req.batch), now_ms)?;
                self.index.insert(&key, loc.encode())?;
                self.by_time.insert(&time_key(loc.received_ms, &key), Vec::new())?;
                Stored::New
            };
            let rec = hosts.entry(req.sender.host_id.clone()).or_insert_with(|| HostRecord {
                host_id: req.sender.host_id.clone(),
                first_seen_ms: now_ms,
                ..Default::default()
            });
            if found == Found::Damaged {
                // Counted when first stored; counted again below.
                rec.retained = rec.retained.saturating_sub(1);
                rec.batches = rec.batches.saturating_sub(1);
            }
            rec.customer.clone_from(&req.sender.customer);
            rec.agent_version.clone_from(&req.sender.agent_version);
            rec.capabilities.clone_from(&req.sender.capabilities);
            rec.min_interval_ms = req.sender.min_interval_ms;
            rec.last_seen_ms = now_ms;
            if rec.removed_ms != 0 {
                tracing::warn!(host_id = %host, "a removed host reports again; it is monitored again");
                rec.removed_ms = 0;
            }
            let mut data_dropped = None;
            if stored == Stored::New {
                if rec.spool_epoch != epoch {
                    if rec.batches > 0 {
                        // A new spool: wiped state directory, re-imaged host, lost disk.
                        rec.spool_resets += 1;
                        tracing::warn!(
                            host_id = %host,
                            old_epoch = rec.spool_epoch,
                            new_epoch = epoch,
                            "host sends from a new spool; its sequence numbers start again"
                        );
                    }
                    rec.spool_epoch = epoch;
                    rec.last_seq = 0;
                }
                rec.batches += 1;
                rec.retained += 1;
                rec.last_seq = rec.last_seq.max(req.batch.seq);
                data_dropped = rec.record_drops(req.batch.dropped_samples, req.batch.dropped_other, now_ms);
            }
            changed.insert(rec.host_id.clone(), rec.clone());
            results.push(Outcome { stored, data_dropped });
        }
        // Written under the lock: retention updates the same records.
        for (id, rec) in changed {
            let json = serde_json::to_vec(&rec).expect("a HostRecord always serializes");
            self.hosts_tree.insert(id.as_bytes(), json)?;
        }
        drop(hosts);
        Ok(results)
    }

    /// Removes stored batches received before `cutoff_ms` (from before the batch files:
    /// created before it), oldest first, at most `max` in one call (small steps: ingest goes
    /// on between them). Once no batch received before the cutoff is left, deletes the batch
    /// files whose span ended by then. Returns how many batches went.
    pub fn prune_before(&self, cutoff_ms: i64, max: usize) -> Result<usize, StoreError> {
        // `batch_by_time` runs in arrival order across every host and epoch.
        let mut gone: HashMap<String, u64> = HashMap::new();
        let mut removed = 0;
        let mut old = Vec::new();
        for item in self.by_time.iter() {
            if old.len() >= max {
                break;
            }
            let (k, _) = item?;
            if k.len() < 8 || i64::from_be_bytes(k[..8].try_into().expect("8 bytes")) >= cutoff_ms {
                break;
            }
            old.push(k);
        }
        for k in &old {
            let key = &k[8..];
            self.index.remove(key)?;
            self.by_time.remove(k)?;
            if let Some(end) = key.iter().position(|&b| b == 0) {
                *gone.entry(String::from_utf8_lossy(&key[..end]).into_owned()).or_default() += 1;
            }
        }
        removed += old.len();
        if removed < max {
            removed += self.prune_legacy(cutoff_ms, max - removed)?;
        }
        if !gone.is_empty() {
            let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
            for (host, n) in gone {
                if let Some(rec) = hosts.get_mut(&host) {
                    rec.retained = rec.retained.saturating_sub(n);
                    let json = serde_json::to_vec(&*rec).expect("a HostRecord always serializes");
                    self.hosts_tree.insert(host.as_bytes(), json)?;
                }
            }
        }
        if removed < max {
            self.files.delete_before(cutoff_ms)?;
        }
        Ok(removed)
    }

    /// Batches earlier versions stored in sled, by their creation time, per host.
    fn prune_legacy(&self, cutoff_ms: i64, max: usize) -> Result<usize, StoreError> {
        let hosts: Vec<String> = self.hosts.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        let mut removed = 0;
        for host in hosts {
            let mut prefix = host.as_bytes().to_vec();
            prefix.push(0);
            let mut old = Vec::new();
            for item in self.legacy.scan_prefix(&prefix) {
                if removed + old.len() >= max {
                    break;
                }
                let (k, v) = item?;
                let created = prost::Message::decode(v.as_slice())
                    .map(|b: pikett_proto::v1::Batch| b.created_unix_ms)
                    .unwrap_or(0);
                // Keys run in sequence order within an epoch: the first young batch ends it
                // (these batches are no longer added to, so what this leaves is bounded).
                if created >= cutoff_ms {
                    break;
                }
                old.push(k);
            }
            for k in &old {
                self.legacy.remove(k)?;
            }
            removed += old.len();
            if removed >= max {
                break;
            }
        }
        Ok(removed)
    }

    /// Bytes the batch files take.
    pub fn files_size(&self) -> u64 {
        self.files.size()
    }

    /// The storage the log lives in, for the other services that keep state beside it.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Makes everything written so far durable (the group commit's flush).
    pub async fn flush(&self) -> Result<(), StoreError> {
        // The payloads before the index that points to them; both on one blocking thread
        // (one hop per group commit instead of one per step).
        let (files, storage) = (self.files.clone(), self.storage.clone());
        tokio::task::spawn_blocking(move || {
            files.sync()?;
            storage.flush_blocking()
        })
        .await
        .map_err(|e| StoreError::Engine(format!("syncing the batch files and the store: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStorage;
    use pikett_proto::v1 as pb;
    use tokio::sync::oneshot;

    fn request(host: &str, epoch: u64, seq: u64) -> (WriteRequest, oneshot::Receiver<Result<Stored, String>>) {
        let (reply, rx) = oneshot::channel();
        let sender = Arc::new(Sender {
            host_id: host.into(),
            customer: "acme".into(),
            agent_version: "test".into(),
            capabilities: Vec::new(),
            min_interval_ms: 1000,
            spool_epoch: epoch,
        });
        let batch = pb::Batch { seq, ..Default::default() };
        (WriteRequest { sender, batch, status: false, series_over_limit: 0, reply }, rx)
    }

    /// A log on a temporary store, with its batch files in a temporary directory (1 s spans).
    fn open(storage: Arc<dyn Storage>) -> (BatchLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), std::time::Duration::from_secs(1), true).unwrap();
        (BatchLog::open(storage, files).unwrap(), dir)
    }

    fn apply(log: &BatchLog, batches: &[(u64, u64)]) -> Vec<Stored> {
        let group: Vec<WriteRequest> = batches.iter().map(|(e, s)| request("web1", *e, *s).0).collect();
        log.apply(&group, 1_000).unwrap().into_iter().map(|o| o.stored).collect()
    }

    #[test]
    fn a_status_is_not_stored_and_drop_reports_are_counted_once() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage);
        let (mut dropping, _) = request("web1", 7, 1);
        dropping.batch.dropped_samples = 40;
        dropping.batch.dropped_other = 2;
        let (mut status, _) = request("web1", 7, 0);
        status.status = true;
        let out = log.apply(&[dropping], 1_000).unwrap();
        assert!(out[0].data_dropped.as_ref().is_some_and(|(warning, _)| *warning));
        // The same batch again (a resend) is a duplicate and counts nothing.
        let (mut again, _) = request("web1", 7, 1);
        again.batch.dropped_samples = 40;
        let out = log.apply(&[again, status], 2_000).unwrap();
        assert_eq!(out.iter().map(|o| o.stored).collect::<Vec<_>>(), vec![Stored::Duplicate, Stored::Status]);
        assert!(out.iter().all(|o| o.data_dropped.is_none()));
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.dropped_samples, rec.dropped_other, rec.batches, rec.last_seen_ms), (40, 2, 1, 2_000));
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(7, 1)], "a status was stored as a batch");
    }

    #[test]
    fn arrival_times_never_go_back_when_the_clock_does_nor_across_a_reopen() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage.clone());
        log.apply(&[request("web1", 7, 1).0], 5_000).unwrap();
        // The clock steps back 2 s: the next batch still arrives "at" 5 s, so a reader that
        // has read up to 5 s (remote write) finds it after its position, and retention
        // does not take it for an old one.
        log.apply(&[request("web1", 7, 2).0], 3_000).unwrap();
        assert_eq!(log.prune_before(4_500, 100).unwrap(), 0, "a batch got an arrival time before the newest");
        assert_eq!(log.host("web1").unwrap().last_seen_ms, 5_000);
        drop(log);
        let (reopened, _dir2) = open(storage);
        reopened.apply(&[request("web1", 7, 3).0], 1_000).unwrap();
        assert_eq!(reopened.prune_before(4_500, 100).unwrap(), 0, "a reopened log forgot the newest arrival time");
        assert_eq!(reopened.stored_seqs("web1").unwrap(), vec![(7, 1), (7, 2), (7, 3)]);
    }

    #[test]
    fn duplicates_are_per_spool_epoch_and_a_new_epoch_is_counted() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage);
        assert_eq!(apply(&log, &[(7, 1), (7, 2), (7, 3)]), vec![Stored::New; 3]);
        assert_eq!(apply(&log, &[(7, 2)]), vec![Stored::Duplicate]);
        // The same numbers from a new spool are new batches.
        assert_eq!(apply(&log, &[(9, 1), (9, 2)]), vec![Stored::New; 2]);
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.spool_epoch, rec.spool_resets, rec.last_seq, rec.batches), (9, 1, 2, 5));
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(7, 1), (7, 2), (7, 3), (9, 1), (9, 2)]);
    }

    #[test]
    fn old_batches_are_pruned_in_steps_young_ones_kept_and_their_files_deleted() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, dir) = open(storage);
        // Batch n arrives at n × 300 ms: spans [0, 1 s) hold 1–3, [1 s, 2 s) 4–6, …
        for seq in 1..=10 {
            let (r, _) = request("web1", 7, seq);
            log.apply(&[r], seq as i64 * 300).unwrap();
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 4);
        assert_eq!(log.prune_before(1_950, 4).unwrap(), 4, "one step removes at most max");
        assert_eq!(files(), 4, "files go only once the index holds nothing old");
        assert_eq!(log.prune_before(1_950, 100).unwrap(), 2);
        assert_eq!(files(), 3, "the span [0, 1 s) ended before the cutoff; [1 s, 2 s) did not");
        assert_eq!(log.prune_before(1_950, 100).unwrap(), 0);
        let kept: Vec<u64> = log.stored_seqs("web1").unwrap().into_iter().map(|(_, s)| s).collect();
        assert_eq!(kept, [7, 8, 9, 10]);
        assert_eq!(log.batches_retained(), 4, "the count follows what is stored");
        assert_eq!(log.host("web1").unwrap().batches, 10, "the total received stays");
        let b: pb::Batch = prost::Message::decode(log.batch("web1", 7, 7).unwrap().unwrap().as_slice()).unwrap();
        assert_eq!(b.seq, 7, "a kept batch reads back");
    }

    #[test]
    fn a_batch_indexed_without_its_payload_is_stored_again_when_resent() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, dir) = open(storage);
        assert_eq!(apply(&log, &[(7, 1)]), vec![Stored::New]);
        // A power loss took the file's bytes but not the index entry.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::write(f.unwrap().path(), b"").unwrap();
        }
        assert_eq!(apply(&log, &[(7, 1)]), vec![Stored::New], "the resend was answered as a duplicate");
        assert_eq!(apply(&log, &[(7, 1)]), vec![Stored::Duplicate]);
        let b: pb::Batch = prost::Message::decode(log.batch("web1", 7, 1).unwrap().unwrap().as_slice()).unwrap();
        assert_eq!(b.seq, 1);
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.batches, rec.retained), (1, 1), "counted twice");
        assert_eq!(log.prune_before(i64::MAX, 100).unwrap(), 1, "one entry in arrival order, not two");
        assert_eq!(log.batches_retained(), 0);
    }

    #[test]
    fn batches_of_a_new_spool_with_a_smaller_epoch_are_pruned_in_arrival_order() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, dir) = open(storage);
        // Epoch 9 first, then the spool is wiped and epoch 3 (sorting before 9) follows.
        for (epoch, seq, at) in [(9, 1, 100), (9, 2, 200), (3, 1, 1_500), (3, 2, 1_600)] {
            let (r, _) = request("web1", epoch, seq);
            log.apply(&[r], at).unwrap();
        }
        assert_eq!(log.prune_before(1_000, 100).unwrap(), 2);
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(3, 1), (3, 2)], "the old epoch stayed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the old epoch's file stayed");
        assert_eq!(log.batches_retained(), 2);
    }

    #[test]
    fn batches_stored_in_sled_by_earlier_versions_are_read_and_pruned() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let tree = storage.tree("batches").unwrap();
        for seq in 1..=3 {
            let b = pb::Batch { seq, created_unix_ms: seq as i64 * 100, ..Default::default() };
            tree.insert(&batch_key("web1", 7, seq), prost::Message::encode_to_vec(&b)).unwrap();
        }
        let (log, _dir) = open(storage);
        assert_eq!(apply(&log, &[(7, 3), (7, 4)]), vec![Stored::Duplicate, Stored::New]);
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(7, 1), (7, 2), (7, 3), (7, 4)]);
        assert!(log.batch("web1", 7, 2).unwrap().is_some());
        assert_eq!(log.prune_before(250, 100).unwrap(), 2, "by their creation time");
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(7, 3), (7, 4)]);
    }

    #[test]
    fn batches_stored_before_epochs_are_epoch_zero() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let tree = storage.tree("batches").unwrap();
        tree.insert(&legacy_batch_key("web1", 4), b"old".to_vec()).unwrap();
        let (log, _dir) = open(storage);
        assert_eq!(apply(&log, &[(0, 4), (0, 5)]), vec![Stored::Duplicate, Stored::New]);
        assert_eq!(log.batch("web1", 0, 4).unwrap().as_deref(), Some(b"old".as_slice()));
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(0, 4), (0, 5)]);
    }
}

//! The ingest log: every stored batch per host, and the host registry.
//!
//! Batches: the payload (encoded `pikett.v1.Batch`, as received) in the batch files
//! ([`BatchFiles`]: one file per time span, deleted whole by retention), and its place in
//! the tree `batch_index` (host_id, 0x00, spool epoch big-endian, seq big-endian →
//! [`Location`]); the tree `batch_by_time` lists the same keys in arrival order, for
//! retention and remote write: one entry per group commit (arrival time, 0x00, entry number
//! → the group's batch keys, at most 256 per entry), or, written by earlier versions, one
//! per batch (arrival time, key → nothing); [`arrivals`] reads both. The tree `batches` holds what versions before the batch files stored in
//! sled itself (same keys → the payload; from before epochs: host_id, 0x00, seq, read as
//! epoch 0): read and pruned, never written.
//!
//! The host registry is two trees: `hosts` (host_id → JSON [`HostRecord`]), written when a
//! host is new or what describes it changes (customer, agent version, capabilities,
//! interval), and `host_counters` (host_id → the record's counters and times in 81 bytes,
//! [`encode_counters`]), written with every batch and read over the JSON's copy of them. A
//! batch rewrote the whole JSON record before: about 350 bytes of sled log per batch,
//! serialized, for the ten numbers that change.
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
    /// `legacy` was empty when the log opened: it stays so (never written).
    legacy_empty: bool,
    /// Per host, a spool epoch and the highest sequence number `index` holds for it (read
    /// once per host and epoch, then kept up to date by [`BatchLog::apply`]): a batch above
    /// it is new without a lookup. Entries only ever leave the index, so "above the highest
    /// it held" stays "not in it".
    index_max: std::sync::Mutex<HashMap<String, (u64, u64)>>,
    hosts_tree: Arc<dyn Tree>,
    /// Each host's counters and times (see the module doc).
    counters_tree: Arc<dyn Tree>,
    /// The host registry, mirrored in memory (read by every admin call).
    hosts: RwLock<HashMap<String, HostRecord>>,
    /// The newest arrival time given to a batch: arrival times never go back, even when
    /// the clock does, so readers of `by_time` that keep a position (remote write) never
    /// find a new batch sorted before what they have read.
    newest_received_ms: std::sync::atomic::AtomicI64,
    /// The number of the next group entry of `by_time`: above every group entry's number at
    /// the newest arrival time found at open, so no entry is written over.
    next_group_entry: std::sync::atomic::AtomicU64,
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

/// A batch entry of `batch_by_time` (written by versions before group entries): arrival
/// time (Unix ms, big-endian) then the batch key, to nothing.
fn time_key(received_ms: i64, batch_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + batch_key.len());
    k.extend_from_slice(&received_ms.to_be_bytes());
    k.extend_from_slice(batch_key);
    k
}

/// The byte after the millisecond that marks a group entry of `batch_by_time`. A batch key
/// starts with its host id, which is never empty and never holds 0x00, so the two layouts
/// cannot be mistaken for each other.
const GROUP_MARK: u8 = 0;
const GROUP_KEY_LEN: usize = 8 + 1 + 8;
/// Most batch keys one group entry lists: a group of 4,096 batches is 16 entries of about
/// 10 KiB, each far below what sled keeps inline.
const KEYS_PER_GROUP_ENTRY: usize = 256;

/// A group entry's key: arrival time, [`GROUP_MARK`], then the entry's number (unique for
/// the millisecond: see [`BatchLog::next_group_entry`]).
pub(crate) fn group_key(received_ms: i64, n: u64) -> [u8; GROUP_KEY_LEN] {
    let mut k = [0u8; GROUP_KEY_LEN];
    k[..8].copy_from_slice(&received_ms.to_be_bytes());
    k[8] = GROUP_MARK;
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

/// A group entry's value: each batch key as its length (u16, big-endian) and its bytes.
pub(crate) fn encode_batch_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    for k in keys {
        // Host ids are bounded at ingest (253 bytes), so a batch key fits a u16.
        v.extend_from_slice(&(k.len() as u16).to_be_bytes());
        v.extend_from_slice(k);
    }
    v
}

/// One entry of `batch_by_time` in either layout: its arrival time and the batch keys it
/// lists (one for a batch entry); `None` when its key is too short to hold a time. A group
/// entry whose list is cut or damaged yields the keys before the damage (logged).
pub(crate) fn arrivals(key: &[u8], value: &[u8]) -> Option<(i64, Vec<Vec<u8>>)> {
    let ms = i64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    if key.get(8) != Some(&GROUP_MARK) {
        return Some((ms, vec![key[8..].to_vec()]));
    }
    let mut keys = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some(len) = rest.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else { break };
        let Some(listed) = rest.get(2..2 + len) else { break };
        keys.push(listed.to_vec());
        rest = &rest[2 + len..];
    }
    if !rest.is_empty() || key.len() != GROUP_KEY_LEN {
        tracing::warn!(
            received_ms = ms,
            len = value.len(),
            read = keys.len(),
            "batch_by_time: a damaged group entry; reading the batch keys before the damage"
        );
    }
    Some((ms, keys))
}

/// The layout version of a `host_counters` value.
const COUNTERS_V1: u8 = 1;
const COUNTERS_LEN: usize = 1 + 10 * 8;

/// A host record's counters and times, the part every batch changes: a version byte, then
/// ten 8-byte big-endian numbers in a fixed order.
fn encode_counters(r: &HostRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(COUNTERS_LEN);
    v.push(COUNTERS_V1);
    for n in [
        r.last_seen_ms as u64,
        r.batches,
        r.last_seq,
        r.dropped_samples,
        r.spool_epoch,
        r.spool_resets,
        r.dropped_other,
        r.last_drop_ms as u64,
        r.removed_ms as u64,
        r.retained,
    ] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

/// Sets `r`'s counters and times from an [`encode_counters`] value; `false` (and `r`
/// untouched) when the value is not one.
fn decode_counters(r: &mut HostRecord, v: &[u8]) -> bool {
    if v.len() != COUNTERS_LEN || v[0] != COUNTERS_V1 {
        return false;
    }
    let n = |i: usize| be_u64(&v[1 + i * 8..]);
    r.last_seen_ms = n(0) as i64;
    r.batches = n(1);
    r.last_seq = n(2);
    r.dropped_samples = n(3);
    r.spool_epoch = n(4);
    r.spool_resets = n(5);
    r.dropped_other = n(6);
    r.last_drop_ms = n(7) as i64;
    r.removed_ms = n(8) as i64;
    r.retained = n(9);
    true
}

/// The arrival time new groups start from and the number of the next group entry, for a
/// log whose hosts were last seen at `newest_seen`: an entry newer than that (its group
/// became durable, its hosts' counters did not) moves both on.
fn newest_arrival(by_time: &dyn Tree, newest_seen: i64) -> Result<(i64, u64), StoreError> {
    let Some((last, _)) = by_time.last_with_prefix_from(&[], &newest_seen.to_be_bytes())? else {
        return Ok((newest_seen, 0));
    };
    let Some(ms) = last.get(..8).map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes"))) else {
        return Ok((newest_seen, 0));
    };
    let newest = newest_seen.max(ms);
    let mut prefix = newest.to_be_bytes().to_vec();
    prefix.push(GROUP_MARK);
    let next = match by_time.last_with_prefix_from(&prefix, &prefix)? {
        Some((k, _)) if k.len() == GROUP_KEY_LEN => be_u64(&k[9..]).saturating_add(1),
        _ => 0,
    };
    Ok((newest, next))
}

/// A group entry of `batch_by_time`: its key and the batch keys it lists.
type GroupEntry = (Vec<u8>, Vec<Vec<u8>>);

/// What [`BatchLog::find`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    No,
    Stored,
    /// Indexed, but its payload is not intact (the entry was removed).
    Damaged,
    /// Indexed, but not counted by its host's record: its group did not complete before a
    /// crash (the entry was removed).
    Uncounted,
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
        let counters_tree = storage.tree("host_counters")?;
        let mut hosts = HashMap::new();
        for item in hosts_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).to_string();
            let rec: HostRecord = serde_json::from_slice(&v)
                .map_err(|source| BatchLogError::CorruptHost { host: host.clone(), source })?;
            hosts.insert(host, rec);
        }
        // The counters are newer than the JSON's copy of them (which versions before
        // `host_counters` kept up to date, so a store without them reads as it did).
        for item in counters_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).to_string();
            let rec =
                hosts.entry(host.clone()).or_insert_with(|| HostRecord { host_id: host.clone(), ..Default::default() });
            let mut counted = rec.clone();
            if !decode_counters(&mut counted, &v) {
                tracing::warn!(host_id = %host, len = v.len(), "ignoring a host_counters entry of an unknown layout");
            } else if counted.last_seen_ms >= rec.last_seen_ms {
                // Older than the JSON only when a version before `host_counters` ran since
                // (it kept the JSON up to date, and only the JSON).
                *rec = counted;
            }
        }
        let newest_seen = hosts.values().map(|h| h.last_seen_ms).max().unwrap_or(0);
        let (newest_received_ms, next_group_entry) = newest_arrival(by_time.as_ref(), newest_seen)?;
        let legacy_empty = legacy.iter().next().transpose()?.is_none();
        Ok(BatchLog {
            storage,
            files: Arc::new(files),
            index,
            by_time,
            legacy,
            legacy_empty,
            index_max: Default::default(),
            hosts_tree,
            counters_tree,
            hosts: RwLock::new(hosts),
            newest_received_ms: newest_received_ms.into(),
            next_group_entry: next_group_entry.into(),
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
        self.counters_tree.insert(host.as_bytes(), encode_counters(rec))?;
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

    /// Whether the batch is stored. An index entry does not count when
    /// - its payload is not intact: sled may make an index entry durable before the flush
    ///   that syncs its payload, so after a power loss an unacknowledged batch can be indexed
    ///   without its bytes ([`Found::Damaged`]);
    /// - no arrival entry lists it, or the host record does not count it: a crash kept the
    ///   entry but lost the writes of its group made after it (the arrival entry, the
    ///   counters, the fault engine's), so it was never acknowledged nor evaluated
    ///   ([`Found::Uncounted`]). The arrival entry tells for any epoch and order; the record's
    ///   highest sequence number also for an arrival entry kept without the counters.
    ///
    /// Either way the resend is stored again instead of being answered as a duplicate.
    /// `counted`: the host record's `last_seq` when `epoch` is its epoch (0 for a host not
    /// known), `None` when the record is of another epoch.
    /// `in_group`: the keys stored earlier in the group being applied (listed at its end).
    fn find(
        &self,
        host: &str,
        epoch: u64,
        seq: u64,
        counted: Option<u64>,
        in_group: &[Vec<u8>],
    ) -> Result<Found, StoreError> {
        if self.legacy_empty && seq > self.index_max(host, epoch, counted.unwrap_or(0))? {
            return Ok(Found::No);
        }
        let key = batch_key(host, epoch, seq);
        if let Some(v) = self.index.get(&key)? {
            let loc = Location::decode(&v);
            let listed = match loc {
                Some(loc) => in_group.contains(&key) || self.listed_at(loc.received_ms, &key)?,
                None => true,
            };
            let found = if !listed || counted.is_some_and(|last| seq > last) {
                Found::Uncounted
            } else if loc.is_some_and(|loc| self.files.verify(&loc)) {
                return Ok(Found::Stored);
            } else {
                Found::Damaged
            };
            if found == Found::Damaged {
                tracing::warn!(
                    host_id = %host, epoch, seq,
                    "a stored batch's payload is missing or damaged (written just before a power loss?): storing the resent copy"
                );
            } else {
                tracing::info!(
                    host_id = %host, epoch, seq,
                    "a batch indexed before a crash was never acknowledged: storing the resent copy"
                );
            }
            if let Some(loc) = loc {
                self.forget_arrival(loc.received_ms, &key)?;
            }
            self.index.remove(&key)?;
            return Ok(found);
        }
        let legacy = self.legacy.contains_key(&key)?
            || (epoch == 0 && self.legacy.contains_key(&legacy_batch_key(host, seq))?);
        Ok(if legacy { Found::Stored } else { Found::No })
    }

    /// Whether an entry of `by_time` at `received_ms` lists `key` (read for a batch found in
    /// the index: a resend, rare).
    fn listed_at(&self, received_ms: i64, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.by_time.contains_key(&time_key(received_ms, key))?
            || !self.group_entries_listing(received_ms, key)?.is_empty())
    }

    /// Removes `key` from `by_time`'s entries of `received_ms` (its resent copy is listed
    /// again where it arrives, and retention must not remove that copy's index entry with
    /// the first one's). Rare: a payload lost in a power loss, a group cut short by a crash.
    fn forget_arrival(&self, received_ms: i64, key: &[u8]) -> Result<(), StoreError> {
        self.by_time.remove(&time_key(received_ms, key))?;
        for (k, keys) in self.group_entries_listing(received_ms, key)? {
            let kept: Vec<&[u8]> = keys.iter().map(Vec::as_slice).filter(|listed| *listed != key).collect();
            if kept.is_empty() {
                self.by_time.remove(&k)?;
            } else {
                self.by_time.insert(&k, encode_batch_keys(kept))?;
            }
        }
        Ok(())
    }

    /// The group entries of `by_time` at `received_ms` that list `key`, with all they list.
    fn group_entries_listing(&self, received_ms: i64, key: &[u8]) -> Result<Vec<GroupEntry>, StoreError> {
        let mut prefix = received_ms.to_be_bytes().to_vec();
        prefix.push(GROUP_MARK);
        let mut found = Vec::new();
        for item in self.by_time.scan_prefix(&prefix) {
            let (k, v) = item?;
            if let Some((_, keys)) = arrivals(&k, &v)
                && keys.iter().any(|listed| listed == key)
            {
                found.push((k, keys));
            }
        }
        Ok(found)
    }

    /// At least the highest sequence number `index` holds for `host`'s spool `epoch` (0:
    /// none): the host record's `last_seq` for its epoch, or a higher one the index holds
    /// (indexed just before a crash, never acknowledged), found by reading forward from it.
    fn index_max(&self, host: &str, epoch: u64, hint: u64) -> Result<u64, StoreError> {
        let mut known = self.index_max.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(e, max)) = known.get(host)
            && e == epoch
        {
            return Ok(max);
        }
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        prefix.extend_from_slice(&epoch.to_be_bytes());
        let from = batch_key(host, epoch, hint.saturating_add(1));
        let max = match self.index.last_with_prefix_from(&prefix, &from)? {
            Some((k, _)) if k.len() == prefix.len() + 8 => be_u64(&k[prefix.len()..]).max(hint),
            _ => hint,
        };
        known.insert(host.to_string(), (epoch, max));
        Ok(max)
    }

    /// Records that `index` now holds `host`'s batch (`epoch`, `seq`).
    fn indexed(&self, host: &str, epoch: u64, seq: u64) {
        let mut known = self.index_max.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, max)) = known.get_mut(host)
            && *e == epoch
        {
            *max = (*max).max(seq);
        }
    }

    /// Inserts a group of batches (not yet flushed). Runs on a blocking thread.
    pub(crate) fn apply(&self, group: &[WriteRequest], now_ms: i64) -> Result<Vec<Outcome>, StoreError> {
        let now_ms = self.newest_received_ms.fetch_max(now_ms, std::sync::atomic::Ordering::SeqCst).max(now_ms);
        let mut results = Vec::with_capacity(group.len());
        // The changed hosts, and whether their JSON must be written too.
        let mut changed: HashMap<String, bool> = HashMap::new();
        // The keys of the batches stored, for the group's entries in `by_time` (written after
        // the index entries: a reader of `by_time` finds every batch it lists).
        let mut arrived: Vec<Vec<u8>> = Vec::new();
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for req in group {
            let (host, epoch, seq) = (&req.sender.host_id, req.sender.spool_epoch, req.batch.head().seq);
            let counted = match hosts.get(host.as_str()) {
                None => Some(0),
                Some(r) => (r.spool_epoch == epoch).then_some(r.last_seq),
            };
            let found = if req.status { Found::No } else { self.find(host, epoch, seq, counted, &arrived)? };
            let stored = if req.status {
                Stored::Status
            } else if found == Found::Stored {
                Stored::Duplicate
            } else {
                let key = batch_key(host, epoch, seq);
                // Stored as received: no decode into owned samples, no encode again.
                let loc = self.files.append(req.batch.bytes(), now_ms)?;
                self.index.insert(&key, loc.encode())?;
                self.indexed(host, epoch, seq);
                arrived.push(key);
                Stored::New
            };
            let mut is_new = false;
            let rec = hosts.entry(req.sender.host_id.clone()).or_insert_with(|| {
                is_new = true;
                HostRecord { host_id: req.sender.host_id.clone(), first_seen_ms: now_ms, ..Default::default() }
            });
            let describe = is_new
                || rec.customer != req.sender.customer
                || rec.agent_version != req.sender.agent_version
                || rec.capabilities != req.sender.capabilities
                || rec.min_interval_ms != req.sender.min_interval_ms;
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
                let head = req.batch.head();
                rec.last_seq = rec.last_seq.max(head.seq);
                data_dropped = rec.record_drops(head.dropped_samples, head.dropped_other, now_ms);
            }
            *changed.entry(rec.host_id.clone()).or_default() |= describe;
            results.push(Outcome { stored, data_dropped });
        }
        // One arrival entry per group (per 256 batches), not per batch: a sled record per
        // batch was a measurable share of the CPU per sample. All received at `now_ms`.
        for chunk in arrived.chunks(KEYS_PER_GROUP_ENTRY) {
            let n = self.next_group_entry.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.by_time.insert(&group_key(now_ms, n), encode_batch_keys(chunk.iter().map(Vec::as_slice)))?;
        }
        // Written under the lock: retention updates the same records. The JSON first, so a
        // host's counters are never durable without it.
        for (id, describe) in changed {
            let Some(rec) = hosts.get(&id) else { continue };
            if describe {
                let json = serde_json::to_vec(rec).expect("a HostRecord always serializes");
                self.hosts_tree.insert(id.as_bytes(), json)?;
            }
            self.counters_tree.insert(id.as_bytes(), encode_counters(rec))?;
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
        // Whole entries: a group entry lists up to 256 batches, so a step may pass `max` by
        // as many.
        let mut old = Vec::new();
        let mut listed = 0;
        for item in self.by_time.iter() {
            if listed >= max {
                break;
            }
            let (k, v) = item?;
            match arrivals(&k, &v) {
                Some((ms, _)) if ms >= cutoff_ms => break,
                Some((ms, keys)) => {
                    listed += keys.len().max(1);
                    old.push((k, ms, keys));
                }
                // A key too short to hold a time (never written): it sorts first; removed.
                None => {
                    tracing::warn!(len = k.len(), "batch_by_time: removing an entry of no known layout");
                    listed += 1;
                    old.push((k, i64::MIN, Vec::new()));
                }
            }
        }
        for (k, ms, keys) in &old {
            for key in keys {
                // Only the copy that arrived then: a batch stored again later (its first copy
                // damaged or uncounted, see `find`) keeps its index entry until its own
                // arrival entry is old.
                let Some(v) = self.index.get(key)? else { continue };
                if Location::decode(&v).is_some_and(|loc| loc.received_ms > *ms) {
                    continue;
                }
                self.index.remove(key)?;
                if let Some(end) = key.iter().position(|&b| b == 0) {
                    *gone.entry(String::from_utf8_lossy(&key[..end]).into_owned()).or_default() += 1;
                }
            }
            self.by_time.remove(k)?;
            removed += keys.len().max(1);
        }
        if removed < max {
            removed += self.prune_legacy(cutoff_ms, max - removed)?;
        }
        if !gone.is_empty() {
            let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
            for (host, n) in gone {
                if let Some(rec) = hosts.get_mut(&host) {
                    rec.retained = rec.retained.saturating_sub(n);
                    self.counters_tree.insert(host.as_bytes(), encode_counters(rec))?;
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
        .map_err(|e| StoreError::from_join("syncing the batch files and the store", e))?
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
        let batch = pikett_proto::received::ReceivedBatch::from_batch(&pb::Batch { seq, ..Default::default() });
        (WriteRequest { sender, batch, status: false, series_over_limit: 0, reply }, rx)
    }

    /// A log on a temporary store, with its batch files in a temporary directory (1 s spans).
    fn open(storage: Arc<dyn Storage>) -> (BatchLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), std::time::Duration::from_secs(1), true).unwrap();
        (BatchLog::open(storage, files).unwrap(), dir)
    }

    /// Opens a log on `storage` with its batch files in `dir` (1 s spans), as often as a
    /// test reopens it.
    fn opener<'a>(storage: &'a Arc<dyn Storage>, dir: &'a std::path::Path) -> impl Fn() -> BatchLog + 'a {
        move || {
            let files = BatchFiles::open(dir, std::time::Duration::from_secs(1), true).unwrap();
            BatchLog::open(storage.clone(), files).unwrap()
        }
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
        dropping.batch.modify(|b| b.dropped_samples = 40).unwrap();
        dropping.batch.modify(|b| b.dropped_other = 2).unwrap();
        let (mut status, _) = request("web1", 7, 0);
        status.status = true;
        let out = log.apply(&[dropping], 1_000).unwrap();
        assert!(out[0].data_dropped.as_ref().is_some_and(|(warning, _)| *warning));
        // The same batch again (a resend) is a duplicate and counts nothing.
        let (mut again, _) = request("web1", 7, 1);
        again.batch.modify(|b| b.dropped_samples = 40).unwrap();
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
    fn a_batch_writes_the_host_counters_and_the_json_only_when_the_host_description_changes() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage.clone());
        let hosts = storage.tree("hosts").unwrap();
        let json = || hosts.get(b"web1").unwrap().unwrap();
        log.apply(&[request("web1", 7, 1).0], 1_000).unwrap();
        let first = json();
        for seq in 2..=5 {
            log.apply(&[request("web1", 7, seq).0], seq as i64 * 1_000).unwrap();
        }
        assert_eq!(json(), first, "the JSON record was rewritten although nothing describing the host changed");
        // A new agent version is a new description.
        let (mut upgraded, _) = request("web1", 7, 6);
        Arc::get_mut(&mut upgraded.sender).unwrap().agent_version = "test-2".into();
        log.apply(&[upgraded], 6_000).unwrap();
        let rec: HostRecord = serde_json::from_slice(&json()).unwrap();
        assert_eq!(rec.agent_version, "test-2");
        log.prune_before(2_500, 100).unwrap();
        log.remove_host("web1", 7_000).unwrap();
        let expected = log.host("web1").unwrap();
        assert_eq!((expected.batches, expected.retained, expected.last_seq), (6, 4, 6));
        drop(log);
        let (reopened, _dir2) = open(storage);
        assert_eq!(reopened.host("web1").unwrap(), expected, "the counters did not survive a reopen");
    }

    #[test]
    fn a_registry_written_before_host_counters_reads_as_it_did_and_a_bad_counter_entry_is_ignored() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let old = HostRecord {
            host_id: "web1".into(),
            customer: "acme".into(),
            batches: 42,
            retained: 40,
            last_seq: 42,
            spool_epoch: 7,
            last_seen_ms: 9_000,
            ..Default::default()
        };
        storage.tree("hosts").unwrap().insert(b"web1", serde_json::to_vec(&old).unwrap()).unwrap();
        let mut newer = old.clone();
        newer.host_id = "web2".into();
        storage.tree("hosts").unwrap().insert(b"web2", serde_json::to_vec(&newer).unwrap()).unwrap();
        storage.tree("host_counters").unwrap().insert(b"web2", vec![9, 1, 2]).unwrap();
        // Counters older than the JSON: a version before them ran since and kept only the JSON.
        let mut stale = old.clone();
        stale.host_id = "web3".into();
        storage.tree("hosts").unwrap().insert(b"web3", serde_json::to_vec(&stale).unwrap()).unwrap();
        let mut behind = stale.clone();
        (behind.last_seen_ms, behind.batches, behind.last_seq) = (5_000, 30, 30);
        storage.tree("host_counters").unwrap().insert(b"web3", encode_counters(&behind)).unwrap();
        let (log, _dir) = open(storage);
        assert_eq!(log.host("web1").unwrap(), old);
        assert_eq!(log.host("web2").unwrap(), newer, "an entry of another layout must leave the JSON's counters");
        assert_eq!(log.host("web3").unwrap(), stale, "counters older than the JSON won");
        assert_eq!(apply(&log, &[(7, 43)]), vec![Stored::New]);
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.batches, rec.retained, rec.last_seq), (43, 41, 43));
    }

    #[test]
    fn a_batch_above_the_highest_indexed_is_new_and_the_highest_is_read_again_per_epoch_and_reopen() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let reopen = opener(&storage, dir.path());
        let log = reopen();
        assert_eq!(apply(&log, &[(7, 1), (7, 2), (7, 3)]), vec![Stored::New; 3]);
        drop(log);
        let log = reopen();
        assert_eq!(apply(&log, &[(7, 3), (7, 4), (7, 4)]), vec![Stored::Duplicate, Stored::New, Stored::Duplicate]);
        assert_eq!(
            apply(&log, &[(8, 1), (7, 2), (7, 5), (8, 1), (8, 2)]),
            vec![Stored::New, Stored::Duplicate, Stored::New, Stored::Duplicate, Stored::New]
        );
        // An entry the host record does not count (indexed just before a crash that lost the
        // record's write, never acknowledged nor evaluated): still found above the record's
        // highest, and its resend is stored again, counted once, listed in arrival order once.
        log.apply(&[request("web1", 7, 9).0], 2_000).unwrap();
        let before = counters_state(&storage);
        log.apply(&[request("web1", 7, 10).0], 2_100).unwrap();
        restore_counters(&storage, before);
        drop(log);
        let log = reopen();
        assert_eq!(log.host("web1").unwrap().last_seq, 9);
        assert_eq!(
            apply(&log, &[(7, 6), (7, 10), (7, 11), (7, 10)]),
            vec![Stored::New, Stored::New, Stored::New, Stored::Duplicate]
        );
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.batches, rec.retained, rec.last_seq), (11, 11, 11));
        let listed: Vec<u64> = arrival_entries(&storage).into_iter().flat_map(|(_, seqs)| seqs).collect();
        assert_eq!(listed.iter().filter(|&&s| s == 10).count(), 1, "{listed:?}");
        assert_eq!(log.prune_before(i64::MAX, 100).unwrap(), 11);
        assert_eq!(log.batches_retained(), 0);
        assert!(log.stored_seqs("web1").unwrap().is_empty());
    }

    #[test]
    fn a_damaged_group_entry_yields_the_batch_keys_before_the_damage() {
        let keys = [batch_key("web1", 7, 1), batch_key("web2", 7, 2)];
        let mut value = encode_batch_keys(keys.iter().map(Vec::as_slice));
        assert_eq!(arrivals(&group_key(5, 0), &value), Some((5, keys.to_vec())));
        value.truncate(value.len() - 3);
        assert_eq!(arrivals(&group_key(5, 0), &value), Some((5, keys[..1].to_vec())));
        assert_eq!(arrivals(&group_key(5, 0), &[0xff]), Some((5, Vec::new())));
        assert_eq!(arrivals(&time_key(5, &keys[1]), &[]), Some((5, vec![keys[1].clone()])));
        assert_eq!(arrivals(&[0, 1, 2], &[]), None);
    }

    #[test]
    fn counters_round_trip() {
        let rec = HostRecord {
            last_seen_ms: -5,
            batches: u64::MAX,
            last_seq: 3,
            dropped_samples: 4,
            spool_epoch: 5,
            spool_resets: 6,
            dropped_other: 7,
            last_drop_ms: i64::MAX,
            removed_ms: 9,
            retained: 10,
            ..Default::default()
        };
        let mut back = HostRecord::default();
        assert!(decode_counters(&mut back, &encode_counters(&rec)));
        assert_eq!(back, rec);
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

    /// Every entry of the host counters' tree.
    fn counters_state(storage: &Arc<dyn Storage>) -> Vec<crate::store::Entry> {
        storage.tree("host_counters").unwrap().iter().map(Result::unwrap).collect()
    }

    /// Puts the host counters back as `state` had them: a crash lost what came after.
    fn restore_counters(storage: &Arc<dyn Storage>, state: Vec<crate::store::Entry>) {
        let tree = storage.tree("host_counters").unwrap();
        for (k, _) in tree.iter().map(Result::unwrap).collect::<Vec<_>>() {
            tree.remove(&k).unwrap();
        }
        for (k, v) in state {
            tree.insert(&k, v).unwrap();
        }
    }

    /// `batch_by_time`'s entries, read as retention and remote write read them.
    fn arrival_entries(storage: &Arc<dyn Storage>) -> Vec<(i64, Vec<u64>)> {
        let tree = storage.tree("batch_by_time").unwrap();
        tree.iter()
            .map(|item| {
                let (k, v) = item.unwrap();
                let (ms, keys) = arrivals(&k, &v).expect("an entry of either layout");
                (ms, keys.iter().map(|k| be_u64(&k[k.len() - 8..])).collect())
            })
            .collect()
    }

    #[test]
    fn a_group_is_one_arrival_entry_per_256_batches_and_both_layouts_are_pruned() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage.clone());
        let by_time = storage.tree("batch_by_time").unwrap();
        // Two batches as an earlier version stored them: an arrival entry per batch.
        log.apply(&[request("web1", 7, 401).0, request("web1", 7, 402).0], 500).unwrap();
        by_time.remove(&group_key(500, 0)).unwrap().expect("the group's entry");
        for seq in [401, 402] {
            by_time.insert(&time_key(500, &batch_key("web1", 7, seq)), Vec::new()).unwrap();
        }
        let group: Vec<(u64, u64)> = (1..=300).map(|seq| (7, seq)).collect();
        assert_eq!(apply(&log, &group), vec![Stored::New; 300]);
        let entries = arrival_entries(&storage);
        let sizes: Vec<_> = entries.iter().map(|(ms, keys)| (*ms, keys.len())).collect();
        assert_eq!(sizes, [(500, 1), (500, 1), (1_000, 256), (1_000, 44)]);
        assert_eq!(entries[2..].iter().flat_map(|(_, k)| k.clone()).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
        // A group entry whose index entries a crash took (written first, see `apply`).
        by_time.insert(&group_key(600, 0), encode_batch_keys([batch_key("web1", 7, 500).as_slice()])).unwrap();
        assert_eq!(arrival_entries(&storage)[..3], [(500, vec![401]), (500, vec![402]), (600, vec![500])]);
        assert_eq!(log.batches_retained(), 302);
        // Steps of whole entries: a step may pass `max` by one entry's batches.
        assert_eq!(log.prune_before(2_000, 3).unwrap(), 3);
        assert_eq!(log.batches_retained(), 300, "a batch without an index entry was counted as removed");
        assert_eq!(log.prune_before(2_000, 3).unwrap(), 256);
        assert_eq!(log.prune_before(2_000, 100).unwrap(), 44);
        assert_eq!(log.batches_retained(), 0);
        assert!(arrival_entries(&storage).is_empty());
        assert!(log.stored_seqs("web1").unwrap().is_empty());
    }

    #[test]
    fn a_batch_stored_again_leaves_its_group_and_is_pruned_only_with_its_own_arrival() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, dir) = open(storage.clone());
        assert_eq!(apply(&log, &[(7, 1), (7, 2)]), vec![Stored::New; 2]);
        // A power loss damaged the payload of 1 only.
        let index = storage.tree("batch_index").unwrap();
        let loc = Location::decode(&index.get(&batch_key("web1", 7, 1)).unwrap().unwrap()).unwrap();
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        std::os::unix::fs::FileExt::write_at(
            &std::fs::OpenOptions::new().write(true).open(file).unwrap(),
            b"XXXX",
            loc.offset,
        )
        .unwrap();
        log.apply(&[request("web1", 7, 1).0], 3_000).unwrap();
        assert_eq!(arrival_entries(&storage), [(1_000, vec![2]), (3_000, vec![1])]);
        // An arrival entry still listing it (as if written again by an older version).
        let by_time = storage.tree("batch_by_time").unwrap();
        by_time.insert(&time_key(1_000, &batch_key("web1", 7, 1)), Vec::new()).unwrap();
        assert_eq!(log.prune_before(2_000, 100).unwrap(), 2);
        assert_eq!(log.stored_seqs("web1").unwrap(), vec![(7, 1)], "the copy of 3 s went with the entry of 1 s");
        assert_eq!(log.batches_retained(), 1);
        assert_eq!(log.prune_before(4_000, 100).unwrap(), 1);
        assert!(log.stored_seqs("web1").unwrap().is_empty());
    }

    #[test]
    fn a_batch_indexed_but_never_listed_is_stored_again_in_a_new_epoch_or_below_the_highest() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let reopen = opener(&storage, dir.path());
        let log = reopen();
        log.apply(&[request("web1", 7, 7).0], 1_000).unwrap();
        let before = counters_state(&storage);
        // Two groups a crash cut short after their index entries: one below the highest
        // sequence number, one the first of a new spool.
        log.apply(&[request("web1", 7, 5).0], 2_000).unwrap();
        log.apply(&[request("web1", 9, 1).0], 3_000).unwrap();
        drop(log);
        let by_time = storage.tree("batch_by_time").unwrap();
        for (k, _) in by_time.iter().map(Result::unwrap).collect::<Vec<_>>() {
            if arrivals(&k, &[]).unwrap().0 >= 2_000 {
                by_time.remove(&k).unwrap();
            }
        }
        restore_counters(&storage, before);
        let log = reopen();
        assert_eq!(log.host("web1").unwrap().spool_epoch, 7);
        assert_eq!(apply(&log, &[(7, 5), (9, 1), (9, 1)]), vec![Stored::New, Stored::New, Stored::Duplicate]);
        let rec = log.host("web1").unwrap();
        assert_eq!((rec.batches, rec.retained, rec.spool_epoch, rec.last_seq), (3, 3, 9, 1));
        assert_eq!(log.prune_before(i64::MAX, 100).unwrap(), 3);
        assert_eq!(log.batches_retained(), 0);
        assert!(log.stored_seqs("web1").unwrap().is_empty());
    }

    #[test]
    fn group_entries_are_never_written_over_across_a_reopen_even_ahead_of_the_hosts_counters() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let reopen = opener(&storage, dir.path());
        let log = reopen();
        log.apply(&[request("web1", 7, 1).0], 1_000).unwrap();
        let before = counters_state(&storage);
        log.apply(&[request("web1", 7, 2).0], 5_000).unwrap();
        // A crash kept the group's entry but not the host's counters (last seen at 1 s).
        restore_counters(&storage, before);
        drop(log);
        let log = reopen();
        // The clock is back at 2 s: the batch still arrives at 5 s, in an entry of its own.
        log.apply(&[request("web1", 7, 3).0], 2_000).unwrap();
        assert_eq!(arrival_entries(&storage), [(1_000, vec![1]), (5_000, vec![2]), (5_000, vec![3])]);
        assert_eq!(log.host("web1").unwrap().last_seen_ms, 5_000);
        drop(log);
        // A fresh log: its first entry of 5 s is number 0; a reopen goes on from 1.
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (log, _dir) = open(storage.clone());
        log.apply(&[request("web1", 7, 1).0], 5_000).unwrap();
        drop(log);
        let (log, _dir) = open(storage.clone());
        log.apply(&[request("web1", 7, 2).0], 5_000).unwrap();
        assert_eq!(arrival_entries(&storage), [(5_000, vec![1]), (5_000, vec![2])], "an entry was written over");
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

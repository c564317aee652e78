//! The durable spool: every batch is written here (and flushed) before it is
//! sent, and removed only when the collector acknowledges it.
//!
//! Layout in one sled tree, so that a batch and the sequence counter change
//! atomically: `b` + seq (big-endian u64) → encoded `pikett.v1.Batch`;
//! `m/next_seq`, `m/dropped_samples`, `m/dropped_other`, `m/epoch` → u64.
//! Probe state (log cursors, counters) lives in a second tree.
//!
//! The spool's epoch is its identity: a random non-zero number made when a new spool is
//! created, sent in every hello. A wiped or re-created spool starts its sequence numbers at
//! 1 again under a new epoch, so the collector does not take its batches for duplicates of
//! the old spool's. A spool from before epochs keeps epoch 0 (its batches may already be
//! stored at the collector under that identity).
//!
//! Only flushed batches are handed to the uplink ([`Spool::next_after`] stops at the last
//! flushed sequence number), so a batch the collector has seen is never lost to a crash
//! and its sequence number never given to another batch.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pikett_proto::v1 as pb;
use prost::Message;

use crate::probes::StateStore;

const NEXT_SEQ: &[u8] = b"m/next_seq";
const DROPPED_SAMPLES: &[u8] = b"m/dropped_samples";
const DROPPED_OTHER: &[u8] = b"m/dropped_other";
const EPOCH: &[u8] = b"m/epoch";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool_dir {dir}: cannot open the spool database: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error("spool_dir {dir}: not writable: {source}")]
    NotWritable { dir: PathBuf, source: std::io::Error },
    #[error("spool: {0}")]
    Storage(#[from] sled::Error),
    #[error("spool: fdatasync: {0}")]
    Sync(std::io::Error),
}

pub struct Spool {
    db: sled::Db,
    tree: sled::Tree,
    state: sled::Tree,
    max_bytes: u64,
    epoch: u64,
    /// sled's data file, `fdatasync`ed after every append's flush when set (`spool_fsync`).
    sync: Option<std::sync::Arc<std::fs::File>>,
    /// The highest sequence number known to be flushed: the uplink sends nothing above it.
    flushed: AtomicU64,
    /// Serialises appends and the cap enforcement (seq assignment must not race).
    inner: Mutex<Accounting>,
}

struct Accounting {
    used_bytes: u64,
}

fn batch_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'b';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..9]);
    u64::from_be_bytes(b)
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, sled::Error> {
    Ok(tree.get(key)?.map_or(0, |v| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[..8.min(v.len())]);
        u64::from_be_bytes(b)
    }))
}

impl Spool {
    /// Opens (or creates) the spool under `dir`, checking that it is writable. Appends are
    /// durable against a process crash; see [`Spool::open_with`] for a power loss.
    pub fn open(dir: &Path, max_bytes: u64, cache_bytes: u64) -> Result<Spool, SpoolError> {
        Self::open_with(dir, max_bytes, cache_bytes, false)
    }

    /// [`Spool::open`]; with `fsync`, every append is also `fdatasync`ed, so a spooled
    /// batch survives a power loss (sled's own flush is `sync_file_range`).
    pub fn open_with(dir: &Path, max_bytes: u64, cache_bytes: u64, fsync: bool) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
        // sled may open a read-only directory and fail only at the first flush: probe it now.
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
        let _ = std::fs::remove_file(&probe);
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| SpoolError::Open { dir: dir.to_owned(), source })?;
        let tree = db.open_tree("spool")?;
        let state = db.open_tree("probe_state")?;
        let mut used = 0u64;
        let mut newest = 0u64;
        for item in tree.scan_prefix(b"b") {
            let (k, v) = item?;
            used += v.len() as u64;
            newest = seq_of(&k);
        }
        let epoch = match tree.get(EPOCH)? {
            Some(_) => read_u64(&tree, EPOCH)?,
            // A spool that already assigned sequence numbers keeps the identity it had.
            None if read_u64(&tree, NEXT_SEQ)? > 1 => 0,
            None => {
                let epoch = rand::random_range(1..=u64::MAX);
                tree.insert(EPOCH, &epoch.to_be_bytes())?;
                db.flush()?;
                tracing::info!(epoch, "new spool");
                epoch
            }
        };
        let sync = if fsync {
            let file = std::fs::File::open(dir.join("db"))
                .map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
            Some(std::sync::Arc::new(file))
        } else {
            None
        };
        Ok(Spool {
            db,
            tree,
            state,
            max_bytes,
            epoch,
            sync,
            // What a restart finds on disk is as durable as the spool gets.
            flushed: AtomicU64::new(newest),
            inner: Mutex::new(Accounting { used_bytes: used }),
        })
    }

    /// Assigns the next sequence number, stores the batch durably (flushed) and
    /// returns its sequence number. Enforces `spool_max_bytes` afterwards.
    pub async fn append(&self, mut batch: pb::Batch) -> Result<u64, SpoolError> {
        let seq = {
            let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let seq = read_u64(&self.tree, NEXT_SEQ)?.max(1);
            batch.seq = seq;
            batch.dropped_samples += read_u64(&self.tree, DROPPED_SAMPLES)?;
            batch.dropped_other += read_u64(&self.tree, DROPPED_OTHER)?;
            let bytes = batch.encode_to_vec();
            let mut w = sled::Batch::default();
            w.insert(&batch_key(seq), bytes.as_slice());
            w.insert(NEXT_SEQ, &(seq + 1).to_be_bytes());
            w.insert(DROPPED_SAMPLES, &0u64.to_be_bytes());
            w.insert(DROPPED_OTHER, &0u64.to_be_bytes());
            self.tree.apply_batch(w)?;
            acc.used_bytes += bytes.len() as u64;
            if acc.used_bytes > self.max_bytes {
                self.enforce_cap(&mut acc, seq)?;
            }
            seq
        };
        self.db.flush_async().await?;
        if let Some(file) = &self.sync {
            let file = file.clone();
            let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
            if let Err(e) = synced.map_err(std::io::Error::other).and_then(|r| r) {
                return Err(SpoolError::Sync(e));
            }
        }
        // The flush covered every insert made before it started, this one included.
        self.flushed.fetch_max(seq, Ordering::AcqRel);
        Ok(seq)
    }

    /// The spool's identity (see the module documentation); 0 for a spool from before epochs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes sure no sequence number at or below `last_seq` is assigned again: the
    /// collector reported it has stored up to `last_seq` for this spool's epoch (a spool
    /// restored from an old copy, or a counter that went back, would otherwise reuse
    /// numbers the collector takes for duplicates).
    pub fn skip_past(&self, last_seq: u64) -> Result<bool, SpoolError> {
        let _acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if read_u64(&self.tree, NEXT_SEQ)?.max(1) > last_seq {
            return Ok(false);
        }
        tracing::warn!(
            last_seq,
            "the collector has stored sequence numbers this spool had not reached; skipping past them"
        );
        self.tree.insert(NEXT_SEQ, &(last_seq + 1).to_be_bytes())?;
        self.db.flush()?;
        Ok(true)
    }

    /// Drops the oldest samples first; then, if still over the cap, whole
    /// batches (checks, events) from the oldest, never the newest batch.
    fn enforce_cap(&self, acc: &mut Accounting, newest: u64) -> Result<(), SpoolError> {
        let mut dropped_samples = 0u64;
        let mut dropped_other = 0u64;
        for item in self.tree.scan_prefix(b"b") {
            if acc.used_bytes <= self.max_bytes {
                break;
            }
            let (k, v) = item?;
            // An unreadable batch is left for `next_after` to set aside.
            let Ok(mut batch) = pb::Batch::decode(v.as_ref()) else { continue };
            if batch.samples.is_empty() {
                continue;
            }
            dropped_samples += batch.samples.len() as u64;
            batch.samples.clear();
            let bytes = batch.encode_to_vec();
            acc.used_bytes = acc.used_bytes - v.len() as u64 + bytes.len() as u64;
            self.tree.insert(k, bytes)?;
        }
        for item in self.tree.scan_prefix(b"b") {
            if acc.used_bytes <= self.max_bytes {
                break;
            }
            let (k, v) = item?;
            if seq_of(&k) == newest {
                break;
            }
            let batch = pb::Batch::decode(v.as_ref()).unwrap_or_default();
            dropped_other += (batch.checks.len() + batch.events.len() + batch.inventory.len()) as u64;
            // The counts this batch carried of earlier drops must not be dropped with it.
            dropped_samples += batch.dropped_samples;
            dropped_other += batch.dropped_other;
            acc.used_bytes -= v.len() as u64;
            self.tree.remove(k)?;
        }
        if dropped_samples + dropped_other > 0 {
            tracing::warn!(dropped_samples, dropped_other, "spool full (spool_max_bytes): dropped the oldest data");
            let mut w = sled::Batch::default();
            w.insert(DROPPED_SAMPLES, &(read_u64(&self.tree, DROPPED_SAMPLES)? + dropped_samples).to_be_bytes());
            w.insert(DROPPED_OTHER, &(read_u64(&self.tree, DROPPED_OTHER)? + dropped_other).to_be_bytes());
            self.tree.apply_batch(w)?;
        }
        Ok(())
    }

    /// The first stored batch with a sequence number above `after`, encoded.
    pub fn next_after(&self, after: u64) -> Result<Option<(u64, pb::Batch)>, SpoolError> {
        let flushed = self.flushed.load(Ordering::Acquire);
        let mut after = after;
        while after < flushed {
            let Some(item) = self.tree.range(batch_key(after.saturating_add(1))..).next() else {
                return Ok(None);
            };
            let (k, v) = item?;
            if k.first() != Some(&b'b') {
                return Ok(None);
            }
            let seq = seq_of(&k);
            if seq > flushed {
                return Ok(None);
            }
            match pb::Batch::decode(v.as_ref()) {
                Ok(batch) => return Ok(Some((seq, batch))),
                Err(e) => {
                    // One unreadable batch must not stop delivery of the rest: set it aside
                    // (kept under `x` + seq for inspection) and go on with the next.
                    tracing::error!(seq, error = %e, "spooled batch cannot be decoded; set aside");
                    let mut aside = k.to_vec();
                    aside[0] = b'x';
                    let mut w = sled::Batch::default();
                    w.remove(k.clone());
                    w.insert(aside, v.clone());
                    self.tree.apply_batch(w)?;
                    let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                    acc.used_bytes = acc.used_bytes.saturating_sub(v.len() as u64);
                    after = seq;
                }
            }
        }
        Ok(None)
    }

    /// The collector has stored `seq`: forget it. Not flushed at once: if the
    /// agent dies first, the batch is re-sent and the collector ignores it.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = self.tree.remove(batch_key(seq))? {
            acc.used_bytes = acc.used_bytes.saturating_sub(old.len() as u64);
        }
        Ok(())
    }

    /// Batches waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.tree.scan_prefix(b"b").count()
    }

    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).used_bytes
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> Result<u64, SpoolError> {
        Ok(read_u64(&self.tree, NEXT_SEQ)?.max(1))
    }

    /// Probe state kept beside the spool.
    pub fn state_store(&self) -> SledState {
        SledState(self.state.clone())
    }

    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// [`StateStore`] on a sled tree of the spool database.
pub struct SledState(sled::Tree);

impl StateStore for SledState {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).ok().flatten().map(|v| v.to_vec())
    }
    fn save(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.insert(key, value).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a spool that this process just dropped: sled releases its file lock from a
    /// background thread, so a reopen right after a drop may briefly find it held.
    fn reopen(dir: &Path, max_bytes: u64) -> Spool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Spool::open(dir, max_bytes, 1 << 20) {
                Ok(spool) => return spool,
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the spool: {e}"),
            }
        }
    }

    fn batch_with_samples(n: usize) -> pb::Batch {
        pb::Batch {
            samples: (0..n)
                .map(|i| pb::Sample { name: format!("s{i}"), value: i as f64, ..Default::default() })
                .collect(),
            checks: vec![pb::CheckResult { name: "c".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn sequence_numbers_survive_reopen_and_acks_remove() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 1);
            assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 2);
            spool.ack(1).unwrap();
        }
        let spool = reopen(dir.path(), 1 << 20);
        assert_eq!(spool.pending(), 1);
        assert_eq!(spool.next_after(0).unwrap().unwrap().0, 2);
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn cap_drops_oldest_samples_first_and_reports_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch_with_samples(100).encoded_len() as u64;
        let spool = Spool::open(dir.path(), one * 3, 1 << 20).unwrap();
        for _ in 0..4 {
            spool.append(batch_with_samples(100)).await.unwrap();
        }
        assert!(spool.used_bytes() <= one * 3);
        // The oldest batch lost its samples but kept its check.
        let (seq, first) = spool.next_after(0).unwrap().unwrap();
        assert_eq!(seq, 1);
        assert!(first.samples.is_empty());
        assert_eq!(first.checks.len(), 1);
        // The next batch reports how many were dropped.
        let seq5 = spool.append(pb::Batch::default()).await.unwrap();
        let (_, fifth) = spool.next_after(seq5 - 1).unwrap().unwrap();
        assert_eq!(fifth.dropped_samples, 100);
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = Spool::open(&file.join("spool"), 1 << 20, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("not writable"), "{err}");
    }

    #[tokio::test]
    async fn a_new_spool_has_an_epoch_that_survives_reopen_and_a_wipe_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = {
            let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            spool.append(batch_with_samples(1)).await.unwrap();
            spool.epoch()
        };
        assert_ne!(epoch, 0);
        assert_eq!(reopen(dir.path(), 1 << 20).epoch(), epoch);
        std::fs::remove_dir_all(dir.path()).unwrap();
        let wiped = reopen(dir.path(), 1 << 20);
        assert_ne!(wiped.epoch(), epoch, "a re-created spool must not reuse the old identity");
        assert_eq!(wiped.next_seq().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_spool_from_before_epochs_keeps_epoch_zero() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            spool.append(batch_with_samples(1)).await.unwrap();
            // What an older agent left behind: a counter and no epoch.
            spool.tree.remove(EPOCH).unwrap();
            spool.flush().await.unwrap();
        }
        assert_eq!(reopen(dir.path(), 1 << 20).epoch(), 0);
    }

    #[tokio::test]
    async fn drop_counts_carried_by_a_dropped_batch_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about two of these small batches: older ones are dropped whole.
        let spool = Spool::open(dir.path(), 16, 1 << 20).unwrap();
        // A batch that reports earlier drops (as the first batch after a drop does).
        let mut reporting = batch_with_samples(0);
        reporting.dropped_samples = 500;
        reporting.dropped_other = 7;
        spool.append(reporting).await.unwrap();
        for _ in 0..4 {
            spool.append(batch_with_samples(0)).await.unwrap();
        }
        // The reporting batch was dropped whole; its counts travel on in the next one.
        let mut total = (0u64, 0u64);
        let mut after = 0;
        while let Some((seq, b)) = spool.next_after(after).unwrap() {
            total.0 += b.dropped_samples;
            total.1 += b.dropped_other;
            after = seq;
        }
        let next = spool.append(batch_with_samples(0)).await.unwrap();
        let (_, last) = spool.next_after(next - 1).unwrap().unwrap();
        total.0 += last.dropped_samples;
        total.1 += last.dropped_other;
        assert!(spool.pending() < 5, "nothing was dropped: the test proves nothing");
        assert_eq!(total.0, 500, "the reported sample drops were lost with their batch");
        assert!(total.1 >= 7, "the reported other drops were lost with their batch: {total:?}");
    }

    #[tokio::test]
    async fn with_fsync_appends_are_synced_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open_with(dir.path(), 1 << 20, 1 << 20, true).unwrap();
            assert!(spool.sync.is_some());
            assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 1);
        }
        assert_eq!(reopen(dir.path(), 1 << 20).pending(), 1);
    }

    #[tokio::test]
    async fn numbers_the_collector_has_are_never_assigned_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 1);
        assert!(!spool.skip_past(1).unwrap());
        assert!(spool.skip_past(40).unwrap());
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 41);
    }

    #[tokio::test]
    async fn only_flushed_batches_are_handed_out_and_an_unreadable_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 1);
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 2);
        assert_eq!(spool.append(batch_with_samples(1)).await.unwrap(), 3);
        // Batch 2 turns unreadable; batch 4 is inserted but its flush has not completed.
        spool.tree.insert(batch_key(2), b"\xff\xff not protobuf".as_slice()).unwrap();
        spool.tree.insert(batch_key(4), batch_with_samples(1).encode_to_vec()).unwrap();
        assert_eq!(spool.next_after(0).unwrap().unwrap().0, 1);
        assert_eq!(spool.next_after(1).unwrap().unwrap().0, 3, "the unreadable batch blocked the rest");
        assert!(spool.next_after(3).unwrap().is_none(), "an unflushed batch was handed to the uplink");
        assert!(spool.tree.get(batch_key(2)).unwrap().is_none());
        let mut aside = batch_key(2);
        aside[0] = b'x';
        assert!(spool.tree.get(aside).unwrap().is_some(), "the unreadable batch was not kept for inspection");
    }
}

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
//! The cap (`spool_max_bytes`) bounds the directory's size on disk. sled is log-structured
//! and, under the spool's churn at its cap, does not give space back on its own (measured:
//! BENCHMARKS.md "Spool at its cap"), so the spooled batches are held to a fifth of the cap
//! and, before the database's files outgrow the cap, the live data is copied into a fresh
//! database (a new generation, `db-N/`) that `CURRENT` then names: a crash at any point
//! leaves `CURRENT` naming a complete database. A spool from before generations lives in
//! `spool_dir` itself (generation 0).
//!
//! Only flushed batches are handed to the uplink ([`Spool::next_after`] stops at the last
//! flushed sequence number), so a batch the collector has seen is never lost to a crash
//! and its sequence number never given to another batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pikett_proto::v1 as pb;
use prost::Message;

use crate::probes::{StateStore, StateUpdate};

const NEXT_SEQ: &[u8] = b"m/next_seq";
const DROPPED_SAMPLES: &[u8] = b"m/dropped_samples";
const DROPPED_OTHER: &[u8] = b"m/dropped_other";
const EPOCH: &[u8] = b"m/epoch";
/// Probe state (log cursors, restart counters) lives in the spool tree under this prefix,
/// so a cursor can change in the same write as the batch holding the events it covers.
const STATE_PREFIX: &[u8] = b"p/";

/// The share of `spool_max_bytes` the spooled batches may fill. A fresh copy of the spool
/// takes sled about 2.5× its live bytes (measured, BENCHMARKS.md "Spool at its cap"); the old
/// files and the copy must fit in the cap together, with room to grow between compactions.
const LIVE_SHARE_PERCENT: u64 = 15;
/// The file naming the current database generation.
const CURRENT: &str = "CURRENT";
/// What sled keeps in its directory (removed with an old generation 0).
const SLED_FILES: [&str; 3] = ["conf", "db", "blobs"];
/// What one spooled batch costs beyond its encoded bytes (key, sled's per-entry header).
const ENTRY_OVERHEAD: u64 = 64;

/// How many bytes of batches a spool capped at `max_bytes` holds (see [`LIVE_SHARE_PERCENT`]).
pub fn live_budget(max_bytes: u64) -> u64 {
    max_bytes / 100 * LIVE_SHARE_PERCENT + max_bytes % 100 * LIVE_SHARE_PERCENT / 100
}

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
    #[error("spool: unusable after an earlier write error (disk full?); waiting to reopen it")]
    Broken,
    #[error(
        "spool_dir {dir}: the spool was replaced while the agent ran (epoch {was} is now {now}); restart the agent"
    )]
    Replaced { dir: PathBuf, was: u64, now: u64 },
}

/// The open database. Cloned out of the [`Spool`] for each operation (sled handles are
/// reference-counted), so that a broken database can be dropped and opened again.
#[derive(Clone)]
struct Handles {
    generation: u64,
    db: sled::Db,
    tree: sled::Tree,
    /// Where probe state lived before it moved into `tree` (read-only fallback).
    legacy_state: sled::Tree,
    /// sled's data file, `fdatasync`ed after every append's flush when set (`spool_fsync`).
    sync: Option<Arc<std::fs::File>>,
}

pub struct Spool {
    dir: PathBuf,
    cache_bytes: u64,
    fsync: bool,
    /// `None` only while [`Spool::recover`] reopens the database.
    handles: RwLock<Option<Handles>>,
    /// A write failed: sled refuses every write after an I/O error until it is reopened.
    broken: AtomicBool,
    max_bytes: u64,
    epoch: u64,
    /// The highest sequence number known to be flushed: the uplink sends nothing above it.
    flushed: AtomicU64,
    /// Serialises appends and the cap enforcement (seq assignment must not race).
    inner: Mutex<Accounting>,
}

#[derive(Default)]
struct Accounting {
    /// Encoded bytes of the spooled batches plus [`ENTRY_OVERHEAD`] each.
    used_bytes: u64,
    /// Every batch up to this sequence number has had its samples dropped (or had none):
    /// the cap's next sample drop starts after it, so eviction never re-reads the spool.
    stripped_through: u64,
    /// The files' size right after the last compaction: the next one waits until they have
    /// doubled, so a cap below sled's own minimum never makes every append compact.
    compacted_bytes: u64,
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

fn state_key(key: &str) -> Vec<u8> {
    let mut k = STATE_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, sled::Error> {
    Ok(tree.get(key)?.map_or(0, |v| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[..8.min(v.len())]);
        u64::from_be_bytes(b)
    }))
}

/// Whether the files must be compacted now: the old files and the new copy (about as large
/// as the last copy, or 3× the live bytes if that is more) must both fit in the cap, and
/// the files must have grown by a quarter since the last copy (so a cap below sled's own
/// minimum does not make every append compact).
fn needs_compaction(on_disk: u64, live: u64, last_copy: u64, max_bytes: u64) -> bool {
    let copy = last_copy.max(live.saturating_mul(3));
    on_disk.saturating_add(copy) > max_bytes && on_disk > last_copy + last_copy / 4 && live > 0
}

fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new().path(path).cache_capacity(cache_bytes).flush_every_ms(Some(500)).open()
}

fn generation_path(dir: &Path, generation: u64) -> PathBuf {
    if generation == 0 { dir.to_owned() } else { dir.join(format!("db-{generation}")) }
}

/// The generation `CURRENT` names; 0 (the database in `spool_dir` itself) without it.
fn current_generation(dir: &Path) -> Result<u64, SpoolError> {
    let current = dir.join(CURRENT);
    match std::fs::read_to_string(&current) {
        Ok(text) => {
            text.trim().strip_prefix("db-").and_then(|n| n.parse().ok()).ok_or_else(|| SpoolError::NotWritable {
                dir: current.clone(),
                source: std::io::Error::other(format!("names no spool generation: {:?}", text.trim())),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(SpoolError::NotWritable { dir: current, source }),
    }
}

/// Removes every generation but `keep` (what a compaction left behind, finished or not).
fn remove_other_generations(dir: &Path, keep: u64) {
    if keep != 0 {
        for name in SLED_FILES {
            let p = dir.join(name);
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale_generation = name.strip_prefix("db-").and_then(|n| n.parse::<u64>().ok()).is_some_and(|g| g != keep);
        let stale_snapshot = keep != 0 && name.starts_with("snap.");
        if stale_generation {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if stale_snapshot {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What [`Spool::open_handles`] finds on disk.
struct Opened {
    handles: Handles,
    epoch: u64,
    used_bytes: u64,
    newest: u64,
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
        let opened = Self::open_handles(dir, cache_bytes, fsync)?;
        Ok(Spool {
            dir: dir.to_owned(),
            cache_bytes,
            fsync,
            handles: RwLock::new(Some(opened.handles)),
            broken: AtomicBool::new(false),
            max_bytes,
            epoch: opened.epoch,
            // What a restart finds on disk is as durable as the spool gets.
            flushed: AtomicU64::new(opened.newest),
            inner: Mutex::new(Accounting { used_bytes: opened.used_bytes, ..Default::default() }),
        })
    }

    fn open_handles(dir: &Path, cache_bytes: u64, fsync: bool) -> Result<Opened, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
        // sled may open a read-only directory and fail only at the first flush: probe it now.
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
        let _ = std::fs::remove_file(&probe);
        let generation = current_generation(dir)?;
        remove_other_generations(dir, generation);
        let path = generation_path(dir, generation);
        let db = open_db(&path, cache_bytes).map_err(|source| SpoolError::Open { dir: dir.to_owned(), source })?;
        let tree = db.open_tree("spool")?;
        let legacy_state = db.open_tree("probe_state")?;
        let mut used_bytes = 0u64;
        let mut newest = 0u64;
        for item in tree.scan_prefix(b"b") {
            let (k, v) = item?;
            used_bytes += v.len() as u64 + ENTRY_OVERHEAD;
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
            let file = std::fs::File::open(path.join("db"))
                .map_err(|source| SpoolError::NotWritable { dir: dir.to_owned(), source })?;
            Some(Arc::new(file))
        } else {
            None
        };
        let handles = Handles { generation, db, tree, legacy_state, sync };
        Ok(Opened { handles, epoch, used_bytes, newest })
    }

    /// Copies the live data into a new generation and switches to it, giving back the
    /// space sled holds as garbage. Blocking; callers hold the accounting lock, so no
    /// write of the spool's own can land in the old generation after the copy.
    fn compact(&self, acc: &mut Accounting) -> Result<(), SpoolError> {
        let started = Instant::now();
        let old = self.handles()?;
        let before = old.db.size_on_disk()?;
        // The generation after the newest one on disk (CURRENT may be ahead of the handles
        // if an earlier switch failed half-way).
        let generation = old.generation.max(current_generation(&self.dir)?) + 1;
        let path = generation_path(&self.dir, generation);
        let copied = self.copy_into(&old, &path);
        let (db, tree, legacy_state, file) = match copied {
            Ok(parts) => parts,
            Err(e) => {
                // No room for the copy (or another I/O error): keep the current generation,
                // give the space back and try again only after more growth.
                let _ = std::fs::remove_dir_all(&path);
                acc.compacted_bytes = before;
                tracing::warn!(error = %e, "spool compaction failed; appending to the current files");
                return Ok(());
            }
        };
        // The switch: CURRENT names the new generation once it is complete on disk.
        let switched = (|| {
            let tmp = self.dir.join("CURRENT.tmp");
            std::fs::write(&tmp, format!("db-{generation}\n"))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
            std::fs::rename(&tmp, self.dir.join(CURRENT))
        })();
        if let Err(e) = switched {
            drop((db, tree, legacy_state));
            let _ = std::fs::remove_dir_all(&path);
            acc.compacted_bytes = before;
            tracing::warn!(error = %e, "spool compaction could not switch generations; appending to the current files");
            return Ok(());
        }
        // From the rename on, the new generation is the spool, whatever fails after it.
        if let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "spool directory sync after compaction failed");
        }
        let sync = if self.fsync { Some(Arc::new(file)) } else { None };
        let new = Handles { generation, db, tree, legacy_state, sync };
        let after = new.db.size_on_disk().unwrap_or(before);
        acc.compacted_bytes = after;
        *self.handles.write().unwrap_or_else(|p| p.into_inner()) = Some(new);
        drop(old);
        remove_other_generations(&self.dir, generation);
        tracing::info!(
            generation,
            before_bytes = before,
            after_bytes = after,
            ms = started.elapsed().as_millis() as u64,
            "spool compacted (its files had outgrown spool_max_bytes)"
        );
        Ok(())
    }

    /// Copies every entry of `old` into a new database at `path`, flushed and synced.
    #[allow(clippy::type_complexity)]
    fn copy_into(
        &self,
        old: &Handles,
        path: &Path,
    ) -> Result<(sled::Db, sled::Tree, sled::Tree, std::fs::File), SpoolError> {
        // A leftover of an interrupted compaction is not named by CURRENT: start over.
        let _ = std::fs::remove_dir_all(path);
        let db = open_db(path, self.cache_bytes).map_err(|source| SpoolError::Open { dir: path.to_owned(), source })?;
        let tree = db.open_tree("spool")?;
        let legacy_state = db.open_tree("probe_state")?;
        for (from, to) in [(&old.tree, &tree), (&old.legacy_state, &legacy_state)] {
            let mut w = sled::Batch::default();
            let mut n = 0;
            for item in from.iter() {
                let (k, v) = item?;
                w.insert(k, v);
                n += 1;
                if n % 1024 == 0 {
                    to.apply_batch(std::mem::take(&mut w))?;
                }
            }
            to.apply_batch(w)?;
        }
        db.flush()?;
        let file = std::fs::File::open(path.join("db")).map_err(SpoolError::Sync)?;
        file.sync_all().map_err(SpoolError::Sync)?;
        Ok((db, tree, legacy_state, file))
    }

    fn handles(&self) -> Result<Handles, SpoolError> {
        self.handles.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(SpoolError::Broken)
    }

    /// Passes a write's result through, remembering a failure: after an I/O error sled
    /// refuses every later write until the database is opened again ([`Spool::recover`]).
    fn written<T>(&self, r: Result<T, sled::Error>) -> Result<T, SpoolError> {
        r.map_err(|e| {
            if !self.broken.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, "spool write failed; the spool is reopened once writes work again");
            }
            SpoolError::Storage(e)
        })
    }

    /// True after a failed write, until [`Spool::recover`] succeeds.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Reopens a broken spool (blocking: call from a blocking thread). The same spool must
    /// come back: a different epoch means the directory was replaced under the agent.
    pub fn recover(&self) -> Result<(), SpoolError> {
        if !self.is_broken() {
            return Ok(());
        }
        // Still no room: keep the handles, so what is spooled can still be read and sent.
        let probe = self.dir.join(".write-test");
        if let Err(e) = std::fs::write(&probe, b"ok") {
            let _ = std::fs::remove_file(&probe);
            return Err(SpoolError::NotWritable { dir: self.dir.clone(), source: e });
        }
        let _ = std::fs::remove_file(&probe);
        let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = self.handles.write().unwrap_or_else(|p| p.into_inner());
        // Every clone must be gone before sled gives up its file lock (from a background
        // thread): other users hold theirs for one operation at most.
        drop(slot.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        let opened = loop {
            match Self::open_handles(&self.dir, self.cache_bytes, self.fsync) {
                Ok(o) => break o,
                Err(SpoolError::Open { source: sled::Error::Io(e), .. })
                    if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
                {
                    if Instant::now() > deadline {
                        return Err(SpoolError::Broken);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        if opened.epoch != self.epoch {
            return Err(SpoolError::Replaced { dir: self.dir.clone(), was: self.epoch, now: opened.epoch });
        }
        // What the reopened database holds is on disk, so it may be sent (a write that failed
        // may still have reached it: that batch is then spooled once more, never lost).
        self.flushed.fetch_max(opened.newest, Ordering::AcqRel);
        *acc = Accounting { used_bytes: opened.used_bytes, ..Default::default() };
        *slot = Some(opened.handles);
        self.broken.store(false, Ordering::Release);
        tracing::info!("spool reopened; spooling again");
        Ok(())
    }

    /// Assigns the next sequence number, stores the batch durably (flushed) and returns its
    /// sequence number; `state` (probe state such as log cursors) is written in the same
    /// atomic write. Enforces `spool_max_bytes` afterwards.
    pub async fn append(&self, batch: pb::Batch) -> Result<u64, SpoolError> {
        self.append_with_state(batch, &[]).await
    }

    /// [`Spool::append`] with probe-state changes that must be durable exactly when the
    /// batch is (a log cursor and the events read up to it).
    pub async fn append_with_state(&self, mut batch: pb::Batch, state: &[StateUpdate]) -> Result<u64, SpoolError> {
        if self.is_broken() {
            return Err(SpoolError::Broken);
        }
        let (h, seq) = {
            let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let mut h = self.handles()?;
            // The files outgrew the cap: copy the live data into a fresh generation first.
            // Only a spool that stayed at its cap gets here; the copy is at most half the cap.
            let on_disk = self.written(h.db.size_on_disk())?;
            if needs_compaction(on_disk, acc.used_bytes, acc.compacted_bytes, self.max_bytes) {
                self.compact(&mut acc)?;
                h = self.handles()?;
            }
            let seq = read_u64(&h.tree, NEXT_SEQ)?.max(1);
            batch.seq = seq;
            batch.dropped_samples += read_u64(&h.tree, DROPPED_SAMPLES)?;
            batch.dropped_other += read_u64(&h.tree, DROPPED_OTHER)?;
            let bytes = batch.encode_to_vec();
            let mut w = sled::Batch::default();
            w.insert(&batch_key(seq), bytes.as_slice());
            w.insert(NEXT_SEQ, &(seq + 1).to_be_bytes());
            w.insert(DROPPED_SAMPLES, &0u64.to_be_bytes());
            w.insert(DROPPED_OTHER, &0u64.to_be_bytes());
            for (key, value) in state {
                w.insert(state_key(key), value.as_slice());
            }
            self.written(h.tree.apply_batch(w))?;
            acc.used_bytes += bytes.len() as u64 + ENTRY_OVERHEAD;
            if acc.used_bytes > live_budget(self.max_bytes) {
                self.enforce_cap(&h.tree, &mut acc, seq)?;
            }
            (h, seq)
        };
        self.written(h.db.flush_async().await)?;
        if let Some(file) = &h.sync {
            let file = file.clone();
            let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
            if let Err(e) = synced.map_err(std::io::Error::other).and_then(|r| r) {
                self.broken.store(true, Ordering::Release);
                return Err(SpoolError::Sync(e));
            }
        }
        // The flush covered every insert made before it started, this one included.
        self.flushed.fetch_max(seq, Ordering::AcqRel);
        Ok(seq)
    }

    /// Writes probe-state changes on their own (a poll that produced no observations).
    pub fn put_state(&self, state: &[StateUpdate]) -> Result<(), SpoolError> {
        if self.is_broken() {
            return Err(SpoolError::Broken);
        }
        let _acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = self.handles()?;
        let mut w = sled::Batch::default();
        for (key, value) in state {
            w.insert(state_key(key), value.as_slice());
        }
        self.written(h.tree.apply_batch(w))
    }

    /// Drops counted elsewhere (observations the agent could not spool while its disk was
    /// full): reported with the next batch, like the cap's own drops.
    pub fn count_dropped(&self, samples: u64, other: u64) -> Result<(), SpoolError> {
        if samples + other == 0 {
            return Ok(());
        }
        let _acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = self.handles()?;
        let mut w = sled::Batch::default();
        w.insert(DROPPED_SAMPLES, &(read_u64(&h.tree, DROPPED_SAMPLES)? + samples).to_be_bytes());
        w.insert(DROPPED_OTHER, &(read_u64(&h.tree, DROPPED_OTHER)? + other).to_be_bytes());
        self.written(h.tree.apply_batch(w))
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
        let h = self.handles()?;
        if read_u64(&h.tree, NEXT_SEQ)?.max(1) > last_seq {
            return Ok(false);
        }
        tracing::warn!(
            last_seq,
            "the collector has stored sequence numbers this spool had not reached; skipping past them"
        );
        self.written(h.tree.insert(NEXT_SEQ, &(last_seq + 1).to_be_bytes()))?;
        self.written(h.db.flush())?;
        Ok(true)
    }

    /// Drops the oldest samples first; then, if still over the cap, whole batches (checks,
    /// events) from the oldest, never the newest batch. Amortised constant time per append:
    /// the sample pass resumes where the last one stopped, and a whole-batch drop removes
    /// what it visits.
    fn enforce_cap(&self, tree: &sled::Tree, acc: &mut Accounting, newest: u64) -> Result<(), SpoolError> {
        let budget = live_budget(self.max_bytes);
        let mut dropped_samples = 0u64;
        let mut dropped_other = 0u64;
        for item in tree.range(batch_key(acc.stripped_through.saturating_add(1))..) {
            if acc.used_bytes <= budget {
                break;
            }
            let (k, v) = item?;
            if k.first() != Some(&b'b') {
                break;
            }
            acc.stripped_through = seq_of(&k);
            // An unreadable batch is left for `next_after` to set aside.
            let Ok(mut batch) = pb::Batch::decode(v.as_ref()) else { continue };
            if batch.samples.is_empty() {
                continue;
            }
            dropped_samples += batch.samples.len() as u64;
            batch.samples.clear();
            let bytes = batch.encode_to_vec();
            acc.used_bytes = acc.used_bytes.saturating_sub(v.len() as u64) + bytes.len() as u64;
            self.written(tree.insert(k, bytes))?;
        }
        while acc.used_bytes > budget {
            let Some(item) = tree.scan_prefix(b"b").next() else { break };
            let (k, v) = item?;
            if seq_of(&k) == newest {
                break;
            }
            let batch = pb::Batch::decode(v.as_ref()).unwrap_or_default();
            dropped_other += (batch.checks.len() + batch.events.len() + batch.inventory.len()) as u64;
            // The counts this batch carried of earlier drops must not be dropped with it.
            dropped_samples += batch.dropped_samples + batch.samples.len() as u64;
            dropped_other += batch.dropped_other;
            acc.used_bytes = acc.used_bytes.saturating_sub(v.len() as u64 + ENTRY_OVERHEAD);
            self.written(tree.remove(k))?;
        }
        if dropped_samples + dropped_other > 0 {
            tracing::warn!(dropped_samples, dropped_other, "spool full (spool_max_bytes): dropped the oldest data");
            let mut w = sled::Batch::default();
            w.insert(DROPPED_SAMPLES, &(read_u64(tree, DROPPED_SAMPLES)? + dropped_samples).to_be_bytes());
            w.insert(DROPPED_OTHER, &(read_u64(tree, DROPPED_OTHER)? + dropped_other).to_be_bytes());
            self.written(tree.apply_batch(w))?;
        }
        Ok(())
    }

    /// The first stored batch with a sequence number above `after`, encoded.
    pub fn next_after(&self, after: u64) -> Result<Option<(u64, pb::Batch)>, SpoolError> {
        let h = self.handles()?;
        let flushed = self.flushed.load(Ordering::Acquire);
        let mut after = after;
        while after < flushed {
            let Some(item) = h.tree.range(batch_key(after.saturating_add(1))..).next() else {
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
                    let mut acc = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                    let h = self.handles()?;
                    // Under the lock: the cap or a compaction may have moved it meanwhile.
                    if h.tree.get(&k)?.is_some() {
                        let mut aside = k.to_vec();
                        aside[0] = b'x';
                        let mut w = sled::Batch::default();
                        w.remove(k.clone());
                        w.insert(aside, v.clone());
                        self.written(h.tree.apply_batch(w))?;
                        acc.used_bytes = acc.used_bytes.saturating_sub(v.len() as u64 + ENTRY_OVERHEAD);
                    }
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
        let h = self.handles()?;
        if let Some(old) = self.written(h.tree.remove(batch_key(seq)))? {
            acc.used_bytes = acc.used_bytes.saturating_sub(old.len() as u64 + ENTRY_OVERHEAD);
        }
        Ok(())
    }

    /// Batches waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.handles().map_or(0, |h| h.tree.scan_prefix(b"b").count())
    }

    /// Bytes the spooled batches take (counted against [`live_budget`]).
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).used_bytes
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> Result<u64, SpoolError> {
        Ok(read_u64(&self.handles()?.tree, NEXT_SEQ)?.max(1))
    }

    /// Probe state kept in the spool.
    pub fn state_store(self: &Arc<Self>) -> SpoolState {
        SpoolState(self.clone())
    }

    pub async fn flush(&self) -> Result<(), SpoolError> {
        let h = self.handles()?;
        self.written(h.db.flush_async().await)?;
        Ok(())
    }
}

/// [`StateStore`] in the spool database.
pub struct SpoolState(Arc<Spool>);

impl StateStore for SpoolState {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        let h = self.0.handles().ok()?;
        match h.tree.get(state_key(key)) {
            Ok(Some(v)) => Some(v.to_vec()),
            _ => h.legacy_state.get(key).ok().flatten().map(|v| v.to_vec()),
        }
    }
    fn save(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.put_state(&[(key.to_string(), value.to_vec())]).map_err(|e| e.to_string())
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

    /// The smallest cap whose live budget holds `live` bytes of batches.
    fn cap_holding(live: u64) -> u64 {
        let cap = live * 100 / LIVE_SHARE_PERCENT;
        (cap..).find(|c| live_budget(*c) >= live).unwrap()
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
        let one = batch_with_samples(100).encoded_len() as u64 + ENTRY_OVERHEAD;
        let spool = Spool::open(dir.path(), cap_holding(one * 3), 1 << 20).unwrap();
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
            spool.handles().unwrap().tree.remove(EPOCH).unwrap();
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
            assert!(spool.handles().unwrap().sync.is_some());
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
        spool.handles().unwrap().tree.insert(batch_key(2), b"\xff\xff not protobuf".as_slice()).unwrap();
        spool.handles().unwrap().tree.insert(batch_key(4), batch_with_samples(1).encode_to_vec()).unwrap();
        assert_eq!(spool.next_after(0).unwrap().unwrap().0, 1);
        assert_eq!(spool.next_after(1).unwrap().unwrap().0, 3, "the unreadable batch blocked the rest");
        assert!(spool.next_after(3).unwrap().is_none(), "an unflushed batch was handed to the uplink");
        assert!(spool.handles().unwrap().tree.get(batch_key(2)).unwrap().is_none());
        let mut aside = batch_key(2);
        aside[0] = b'x';
        assert!(
            spool.handles().unwrap().tree.get(aside).unwrap().is_some(),
            "the unreadable batch was not kept for inspection"
        );
    }

    #[tokio::test]
    async fn probe_state_is_written_with_its_batch_and_old_state_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Arc::new(Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap());
            let h = spool.handles().unwrap();
            h.legacy_state.insert("services/restarts", b"3".as_slice()).unwrap();
            let cursor = vec![("redfish/cursor/sel".to_string(), b"42".to_vec())];
            assert_eq!(spool.append_with_state(batch_with_samples(1), &cursor).await.unwrap(), 1);
        }
        let spool = Arc::new(reopen(dir.path(), 1 << 20));
        let state = spool.state_store();
        assert_eq!(state.load("redfish/cursor/sel").as_deref(), Some(b"42".as_slice()));
        assert_eq!(state.load("services/restarts").as_deref(), Some(b"3".as_slice()), "state from before the move");
        state.save("services/restarts", b"4").unwrap();
        assert_eq!(state.load("services/restarts").as_deref(), Some(b"4".as_slice()));
        assert_eq!(spool.pending(), 1);
    }

    #[tokio::test]
    async fn drops_counted_outside_the_spool_reach_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        spool.count_dropped(12, 3).unwrap();
        let seq = spool.append(batch_with_samples(1)).await.unwrap();
        let (_, b) = spool.next_after(seq - 1).unwrap().unwrap();
        assert_eq!((b.dropped_samples, b.dropped_other), (12, 3));
    }

    #[tokio::test]
    async fn compaction_keeps_the_files_within_the_cap_and_loses_no_kept_batch() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 4 << 20;
        let spool = Spool::open(dir.path(), cap, 1 << 20).unwrap();
        let batch = batch_with_samples(2_000);
        let rounds = 6 * cap / batch.encoded_len() as u64;
        let mut peak = 0;
        for _ in 0..rounds {
            spool.append(batch.clone()).await.unwrap();
            peak = peak.max(spool.handles().unwrap().db.size_on_disk().unwrap());
        }
        let h = spool.handles().unwrap();
        assert!(h.generation > 0, "never compacted");
        assert!(peak <= cap, "the files reached {peak} bytes with a cap of {cap}");
        drop(h);
        // The kept batches are whole and in order: the newest ones, each once.
        let mut seqs = Vec::new();
        let mut after = 0;
        while let Some((seq, _)) = spool.next_after(after).unwrap() {
            seqs.push(seq);
            after = seq;
        }
        assert_eq!(*seqs.last().unwrap(), rounds);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a kept batch went missing: {seqs:?}");
        let generation = spool.handles().unwrap().generation;
        let epoch = spool.epoch();
        drop(spool);
        // What CURRENT names is what a restart opens; a stray generation is removed.
        std::fs::create_dir_all(dir.path().join("db-999")).unwrap();
        let spool = reopen(dir.path(), cap);
        assert_eq!((spool.handles().unwrap().generation, spool.epoch()), (generation, epoch));
        assert_eq!(spool.pending(), seqs.len());
        assert!(!dir.path().join("db-999").exists());
        assert!(!dir.path().join("db").exists(), "generation 0's files were left behind");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// Whatever the mix of appends and acks, the accounting matches what is stored and
        /// the spool stays within its budget (plus the newest batch, which is never dropped).
        #[test]
        fn the_cap_holds_and_the_accounting_matches_the_store(
            ops in proptest::collection::vec((0usize..120, proptest::bool::ANY), 1..80)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let cap = cap_holding(8_000);
                let spool = Spool::open(dir.path(), cap, 1 << 20).unwrap();
                let mut acked = 0;
                for (samples, ack) in ops {
                    let seq = spool.append(batch_with_samples(samples)).await.unwrap();
                    if ack && seq > acked + 1 {
                        acked += 1;
                        spool.ack(acked).unwrap();
                    }
                    let h = spool.handles().unwrap();
                    let (mut stored, mut newest) = (0u64, 0u64);
                    for item in h.tree.scan_prefix(b"b") {
                        let (_, v) = item.unwrap();
                        stored += v.len() as u64 + ENTRY_OVERHEAD;
                        newest = v.len() as u64 + ENTRY_OVERHEAD;
                    }
                    assert_eq!(spool.used_bytes(), stored);
                    assert!(stored <= live_budget(cap) + newest, "{stored} > {} + {newest}", live_budget(cap));
                }
            });
        }
    }
}

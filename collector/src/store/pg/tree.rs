//! One tree of [`super::PgStorage`] in memory: the entries, the journal of writes not yet
//! flushed, and the cut that lets a flush copy every journal between two writes.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::{Entry, StoreError, Tree, WriteBatch};

/// Entries a scan copies per visit to the map: scans hold no lock between visits, so a
/// caller may write to the tree while it iterates (retention removes what it scans).
const SCAN_CHUNK: usize = 256;

/// Orders writes against a flush's copy of the journals. Every write holds the shared side
/// while it changes a tree and numbers its journal entries; the flush holds the exclusive
/// side while copying, so it sees each write whole or not at all.
#[derive(Default)]
pub(super) struct Cut {
    lock: RwLock<()>,
    seq: AtomicU64,
}

impl Cut {
    pub(super) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of the newest write (call under [`Cut::exclusive`]).
    pub(super) fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Journaled writes as a flush copies them: each key's newest value (`None`: removed).
pub(super) type Journal = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A journaled write: the write's number (for forgetting it after a flush) and the new value
/// (`None`: removed).
struct Pending {
    seq: u64,
    value: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    journal: BTreeMap<Vec<u8>, Pending>,
}

impl State {
    fn write(&mut self, seq: u64, key: &[u8], value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let old = match &value {
            Some(v) => self.map.insert(key.to_vec(), v.clone()),
            None => self.map.remove(key),
        };
        self.journal.insert(key.to_vec(), Pending { seq, value });
        old
    }
}

/// A tree's data, shared by every handle on it and by the storage's flush.
pub(super) struct TreeData(RwLock<State>);

impl TreeData {
    pub(super) fn new(map: BTreeMap<Vec<u8>, Vec<u8>>) -> TreeData {
        TreeData(RwLock::new(State { map, journal: BTreeMap::new() }))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The journal's writes, each key's newest (call under [`Cut::exclusive`]).
    pub(super) fn journal_copy(&self) -> Journal {
        self.read().journal.iter().map(|(k, p)| (k.clone(), p.value.clone())).collect()
    }

    /// Forgets the journaled writes numbered up to `upto`: they are committed. Later writes
    /// to the same keys stay for the next flush.
    pub(super) fn forget_journal(&self, upto: u64) {
        self.write().journal.retain(|_, p| p.seq > upto);
    }

    /// Replaces the entries with `rows` (the tree as the database holds it), except the keys
    /// with journaled writes: those are this node's newer writes, not flushed yet, and win.
    /// The caller holds the session lock, so no flush forgets a journaled write between the
    /// read of `rows` and this replace (which would bring back the old value).
    pub(super) fn refresh(&self, mut rows: BTreeMap<Vec<u8>, Vec<u8>>) {
        let mut state = self.write();
        for (key, pending) in &state.journal {
            match &pending.value {
                Some(v) => rows.insert(key.clone(), v.clone()),
                None => rows.remove(key),
            };
        }
        state.map = rows;
    }
}

/// A [`Tree`] handle of [`super::PgStorage`].
pub(super) struct PgTree {
    data: Arc<TreeData>,
    cut: Arc<Cut>,
}

impl PgTree {
    pub(super) fn new(data: Arc<TreeData>, cut: Arc<Cut>) -> PgTree {
        PgTree { data, cut }
    }

    fn write_one(&self, key: &[u8], value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let _cut = self.cut.shared();
        let seq = self.cut.next_seq();
        self.data.write().write(seq, key, value)
    }
}

impl Tree for PgTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.read().map.get(key).cloned())
    }

    fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.data.read().map.contains_key(key))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.write_one(key, Some(value));
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.write_one(key, None))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let _cut = self.cut.shared();
        let mut state = self.data.write();
        for (key, value) in batch.ops {
            let seq = self.cut.next_seq();
            state.write(seq, &key, value);
        }
        Ok(())
    }

    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a> {
        Box::new(Scan {
            data: &self.data,
            prefix: prefix.to_vec(),
            after: None,
            chunk: Vec::new().into_iter(),
            done: false,
        })
    }

    fn count(&self) -> Result<usize, StoreError> {
        Ok(self.data.read().map.len())
    }
}

/// A prefix scan in chunks of [`SCAN_CHUNK`], each read under a short read lock, resuming
/// after the last key returned: it sees the tree as it is at each chunk, like sled's.
struct Scan<'a> {
    data: &'a TreeData,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    chunk: std::vec::IntoIter<Entry>,
    done: bool,
}

impl Scan<'_> {
    fn refill(&mut self) {
        let state = self.data.read();
        let start = match &self.after {
            Some(after) => Bound::Excluded(after.as_slice()),
            None => Bound::Included(self.prefix.as_slice()),
        };
        let chunk: Vec<Entry> = state
            .map
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&self.prefix))
            .take(SCAN_CHUNK)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.done = chunk.len() < SCAN_CHUNK;
        self.after = chunk.last().map(|(k, _)| k.clone());
        self.chunk = chunk.into_iter();
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.chunk.next() {
            return Some(Ok(entry));
        }
        if self.done {
            return None;
        }
        self.refill();
        self.chunk.next().map(Ok)
    }
}

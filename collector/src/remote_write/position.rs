//! Where forwarding stands in the ingest log, and reading the log from there.
//!
//! The log's arrival-order index, the tree `batch_by_time` (`services::batches`), has keys
//! that start with `received_ms (i64, big-endian)`; an entry lists the batch keys
//! (`host ++ 0x00 ++ epoch (u64 BE) ++ seq (u64 BE)`) received then: a group entry those of
//! one group commit, an older batch entry one ([`arrivals`]). Within one process
//! `received_ms` never decreases from one group commit to the next, but several groups can
//! share a millisecond. So a position is the last millisecond reached plus the batches of
//! that millisecond already forwarded: a batch is after the position when its millisecond is
//! later, or equal and the batch is not among them. That stays exact while more groups of
//! the millisecond are still being written.
//!
//! [`Tree`] offers prefix scans only; the keys after a millisecond are the union of a few
//! thousand prefixes (each byte of the millisecond, each larger value), scanned lazily in
//! key order. An empty prefix costs one lookup in the index; see the test for the price.

use std::collections::BTreeSet;

use crate::services::batches::arrivals;
use crate::store::{Entry, StoreError, Tree};

/// The key of the forwarding position in the tree `remote_write`.
pub const KEY: &[u8] = b"position";
const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub ms: i64,
    /// Batch keys (without the millisecond) of `ms` already forwarded or skipped.
    pub done: BTreeSet<Vec<u8>>,
}

/// One batch listed in `batch_by_time` (a group entry lists several), taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub received_ms: i64,
    /// host ++ 0 ++ epoch ++ seq.
    pub batch_key: Vec<u8>,
}

impl LogEntry {
    /// (host, spool epoch, seq).
    pub fn batch(&self) -> Option<(String, u64, u64)> {
        let k = &self.batch_key;
        let end = k.iter().position(|&b| b == 0)?;
        let rest = &k[end + 1..];
        if rest.len() != 16 {
            return None;
        }
        let host = String::from_utf8(k[..end].to_vec()).ok()?;
        let epoch = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(rest[8..].try_into().ok()?);
        Some((host, epoch, seq))
    }
}

impl Position {
    /// Before every batch received at `ms` or later.
    pub fn at(ms: i64) -> Position {
        Position { ms, done: BTreeSet::new() }
    }

    /// Moves past `entry` (one that [`entries_after`] returned).
    pub fn advance(&mut self, entry: &LogEntry) {
        if entry.received_ms > self.ms {
            self.ms = entry.received_ms;
            self.done.clear();
        }
        self.done.insert(entry.batch_key.clone());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.ms.to_be_bytes());
        for k in &self.done {
            // Batch keys are at most 253 + 17 bytes: host ids are bounded at ingest.
            v.extend_from_slice(&(k.len() as u16).to_be_bytes());
            v.extend_from_slice(k);
        }
        v
    }

    pub fn decode(v: &[u8]) -> Option<Position> {
        if v.first() != Some(&VERSION) || v.len() < 9 {
            return None;
        }
        let ms = i64::from_be_bytes(v[1..9].try_into().ok()?);
        let mut done = BTreeSet::new();
        let mut rest = &v[9..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            done.insert(rest.get(2..2 + len)?.to_vec());
            rest = &rest[2 + len..];
        }
        Some(Position { ms, done })
    }
}

/// The entries of `by_time` after `pos`, in key order, read lazily.
pub fn entries_after<'a>(
    by_time: &'a dyn Tree,
    pos: &'a Position,
) -> impl Iterator<Item = Result<LogEntry, StoreError>> + 'a {
    let ms = pos.ms.to_be_bytes();
    // The same millisecond first, then every longer-lived prefix above it: from the last
    // byte (the next milliseconds) to the first (the next eras), each larger byte value.
    let later = (0..8).rev().flat_map(move |i| {
        (u16::from(ms[i]) + 1..=255).map(move |b| {
            let mut p = ms[..i].to_vec();
            p.push(b as u8);
            p
        })
    });
    std::iter::once(ms.to_vec()).chain(later).flat_map(move |prefix| by_time.scan_prefix(&prefix)).flat_map(
        move |item: Result<Entry, StoreError>| {
            let entries: Vec<Result<LogEntry, StoreError>> = match item {
                Err(e) => vec![Err(e)],
                // Not an entry of this index: nothing to forward.
                Ok((k, v)) => arrivals(&k, &v).map_or_else(Vec::new, |(received_ms, keys)| {
                    keys.into_iter()
                        .filter(|key| received_ms != pos.ms || !pos.done.contains(key))
                        .map(|batch_key| Ok(LogEntry { received_ms, batch_key }))
                        .collect()
                }),
            };
            entries
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStorage, Storage};

    fn key(ms: i64, host: &str, seq: u64) -> Vec<u8> {
        let mut k = ms.to_be_bytes().to_vec();
        k.extend_from_slice(host.as_bytes());
        k.push(0);
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn after(tree: &dyn Tree, pos: &Position) -> Vec<(i64, String, u64)> {
        entries_after(tree, pos)
            .map(|e| {
                let e = e.unwrap();
                let (host, _, seq) = e.batch().unwrap();
                (e.received_ms, host, seq)
            })
            .collect()
    }

    #[test]
    fn reads_everything_after_the_position_in_order_including_late_inserts_of_its_millisecond() {
        let storage = SledStorage::temporary().unwrap();
        let tree = storage.tree("batch_by_time").unwrap();
        // Around byte boundaries: 255 → 256, and a jump of days.
        for (ms, host, seq) in [(255, "b", 1), (256, "a", 2), (256, "c", 3), (1_000, "a", 4), (90_000_000_000, "a", 5)]
        {
            tree.insert(&key(ms, host, seq), Vec::new()).unwrap();
        }
        tree.insert(&key(100, "z", 9), Vec::new()).unwrap();
        let mut pos = Position::at(200);
        let all = after(tree.as_ref(), &pos);
        assert_eq!(all.iter().map(|e| e.2).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "{all:?}");
        // Forward up to "c" at 256; then "b" arrives in the same millisecond (same group).
        for e in entries_after(tree.as_ref(), &pos.clone()).take(3) {
            pos.advance(&e.unwrap());
        }
        tree.insert(&key(256, "b", 6), Vec::new()).unwrap();
        let rest = after(tree.as_ref(), &pos);
        assert_eq!(rest.iter().map(|e| e.2).collect::<Vec<_>>(), [6, 4, 5], "{rest:?}");
        let back = Position::decode(&pos.encode()).unwrap();
        assert_eq!(back, pos);
        assert!(Position::decode(b"\x02junk").is_none());
        assert!(Position::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9, 1]).is_none(), "a cut key is corrupt");
    }

    #[test]
    fn group_entries_are_read_batch_by_batch_after_the_older_entries_per_batch() {
        use crate::services::batches::{encode_batch_keys, group_key};
        let storage = SledStorage::temporary().unwrap();
        let tree = storage.tree("batch_by_time").unwrap();
        let batch = |host: &str, seq: u64| key(0, host, seq)[8..].to_vec();
        // An earlier version's entries per batch, then groups (two share a millisecond).
        tree.insert(&key(256, "a", 1), Vec::new()).unwrap();
        tree.insert(&group_key(256, 0), encode_batch_keys([batch("c", 2).as_slice(), batch("b", 3).as_slice()]))
            .unwrap();
        tree.insert(&group_key(300, 1), encode_batch_keys([batch("a", 4).as_slice()])).unwrap();
        let mut pos = Position::at(0);
        let all = after(tree.as_ref(), &pos);
        assert_eq!(all.iter().map(|e| e.2).collect::<Vec<_>>(), [2, 3, 1, 4], "{all:?}");
        // Forwarded up to "c" 2 in the group; then another group of the same millisecond.
        for e in entries_after(tree.as_ref(), &pos.clone()).take(1) {
            pos.advance(&e.unwrap());
        }
        tree.insert(&group_key(256, 2), encode_batch_keys([batch("d", 5).as_slice()])).unwrap();
        let rest = after(tree.as_ref(), &pos);
        assert_eq!(rest.iter().map(|e| (e.0, e.2)).collect::<Vec<_>>(), [(256, 3), (256, 5), (256, 1), (300, 4)]);
    }

    #[test]
    fn reading_an_empty_tail_is_cheap() {
        let storage = SledStorage::temporary().unwrap();
        let tree = storage.tree("batch_by_time").unwrap();
        for seq in 0..1_000 {
            tree.insert(&key(1_700_000_000_000 + seq as i64, "web", seq), Vec::new()).unwrap();
        }
        let pos = Position::at(1_700_000_001_000);
        let started = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(entries_after(tree.as_ref(), &pos).count(), 0);
        }
        // Polled once a second when caught up: a few ms each is fine; a full scan is not.
        let each = started.elapsed() / 20;
        assert!(each < std::time::Duration::from_millis(50), "{each:?} per empty read");
    }
}

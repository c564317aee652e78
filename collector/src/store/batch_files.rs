//! Batch files: the payloads of stored batches, appended to one file per time span
//! (`data_dir/batch-files/SPANSTART.log`), and deleted a whole file at a time when retention
//! has passed its span. Their index (which batch is where) lives in the [`super::Tree`]
//! `batch_index`.
//!
//! Why not in sled: sled 0.34 keeps large values as blob files and rewrites segments only
//! slowly, so deleting old batches did not give disk space back (a 4-minute soak with
//! 1-minute retention grew its data directory linearly to 660 MiB). A file per span is
//! given back exactly, at once, by `unlink`.
//!
//! Payloads are LZ4-compressed (block format, size prepended): a host's samples repeat
//! their names and labels in every batch, which LZ4 removes cheaply (see BENCHMARKS.md).
//!
//! Durability: a payload is written (`pwrite`) before its index entry, and [`BatchFiles::sync`]
//! runs before the store's flush, so an acknowledged batch's index never points to bytes
//! that did not reach the file. A write that fails half-way (disk full) leaves bytes no index
//! points to; the next write goes over them. Every index entry carries the payload's CRC-32:
//! a read of bytes that are not what was written says so instead of returning them.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::StoreError;

/// The folder of the batch files under the collector's `data_dir`.
pub const DIR: &str = "batch-files";

/// The span of one batch file for a batch retention of `keep`: a twelfth of it, between
/// 10 s and 1 h, so retention deletes old data in small slices (14 days: hourly files).
pub fn span_for(keep: Duration) -> Duration {
    (keep / 12).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

/// Where one payload is, and what it is: the value of its `batch_index` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Start (Unix ms) of the span whose file holds it.
    pub span_start_ms: i64,
    /// Length of that span (the file is named by both, so a changed span length never
    /// confuses which file ends when).
    pub span_ms: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    /// When the collector received it (retention counts from here).
    pub received_ms: i64,
}

impl Location {
    pub const ENCODED_LEN: usize = 36;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::ENCODED_LEN);
        v.extend_from_slice(&self.span_start_ms.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v.extend_from_slice(&self.received_ms.to_be_bytes());
        v.extend_from_slice(&self.span_ms.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<Location> {
        if v.len() != Self::ENCODED_LEN {
            return None;
        }
        let i64_at = |i: usize| i64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        Some(Location {
            span_start_ms: i64_at(0),
            offset: i64_at(8) as u64,
            len: u32_at(16),
            crc: u32_at(20),
            received_ms: i64_at(24),
            span_ms: u32_at(32),
        })
    }
}

struct Open {
    span_start_ms: i64,
    file: File,
    len: u64,
}

struct State {
    current: Option<Open>,
    /// Files written since the last sync (a span may end between two syncs).
    unsynced: Vec<File>,
    /// A file was created since the last sync: the directory needs a sync too.
    created: bool,
    /// The latest time appended at: a clock that steps back never reopens an older span
    /// (whose file retention may already have deleted).
    last_ms: i64,
}

/// The batch files of one data directory.
pub struct BatchFiles {
    dir: PathBuf,
    span_ms: i64,
    fsync: bool,
    state: Mutex<State>,
    /// Held for a whole [`BatchFiles::sync`]: a second caller waits for the first one's
    /// syncs instead of returning before they are done.
    syncing: Mutex<()>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

impl BatchFiles {
    /// Opens (creating) `dir`, with one file per `span`; `fsync`: [`Self::sync`] also
    /// `fdatasync`s (survives a power loss, not only a crash).
    pub fn open(dir: &Path, span: Duration, fsync: bool) -> Result<BatchFiles, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        Ok(BatchFiles {
            dir: dir.to_path_buf(),
            span_ms: (span.as_millis() as i64).max(1_000),
            fsync,
            state: Mutex::new(State { current: None, unsynced: Vec::new(), created: false, last_ms: i64::MIN }),
            syncing: Mutex::new(()),
        })
    }

    /// `START-END.log`, both in Unix ms.
    fn path(&self, span_start_ms: i64, span_ms: i64) -> PathBuf {
        self.dir.join(format!("{span_start_ms:020}-{:020}.log", span_start_ms + span_ms))
    }

    /// Writes `payload` received at `now_ms` (compressed); returns where it is. Not durable
    /// before [`Self::sync`].
    pub fn append(&self, payload: &[u8], now_ms: i64) -> Result<Location, StoreError> {
        let stored = lz4_flex::compress_prepend_size(payload);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = now_ms.max(st.last_ms);
        st.last_ms = now_ms;
        let span_start_ms = now_ms - now_ms.rem_euclid(self.span_ms);
        if st.current.as_ref().is_none_or(|c| c.span_start_ms != span_start_ms) {
            let path = self.path(span_start_ms, self.span_ms);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(false)
                .read(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_err("opening", &path, e))?;
            let len = file.metadata().map_err(|e| io_err("reading the size of", &path, e))?.len();
            if let Some(old) = st.current.take() {
                st.unsynced.push(old.file);
            }
            st.created = true;
            st.current = Some(Open { span_start_ms, file, len });
        }
        let current = st.current.as_mut().expect("opened above");
        let offset = current.len;
        current
            .file
            .write_all_at(&stored, offset)
            .map_err(|e| io_err("writing", &self.path(span_start_ms, self.span_ms), e))?;
        current.len += stored.len() as u64;
        Ok(Location {
            span_start_ms,
            span_ms: self.span_ms as u32,
            offset,
            len: stored.len() as u32,
            crc: crc32fast::hash(&stored),
            received_ms: now_ms,
        })
    }

    /// Makes every append so far durable: against a power loss with `fsync`, against a
    /// process crash always (the bytes are in the page cache once written).
    pub fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (files, current, created) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !self.fsync {
                // Files of ended spans are closed here either way: an open one would keep
                // the disk space of a deleted file.
                st.unsynced.clear();
                return Ok(());
            }
            let current = st.current.as_ref().map(|c| c.file.try_clone()).transpose();
            (std::mem::take(&mut st.unsynced), current, std::mem::take(&mut st.created))
        };
        let result = (|| {
            let current = current.map_err(|e| io_err("reopening", &self.dir, e))?;
            for f in files.iter().chain(current.iter()) {
                f.sync_data().map_err(|e| io_err("fdatasync in", &self.dir, e))?;
            }
            if created {
                // A new file's name is durable only once its directory is.
                File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err("fsync", &self.dir, e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Nothing counts as synced: the next call tries again.
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.unsynced.extend(files);
            st.created |= created;
        }
        result
    }

    /// Whether the bytes at `loc` are there and what was written (without decompressing).
    pub fn verify(&self, loc: &Location) -> bool {
        let path = self.path(loc.span_start_ms, i64::from(loc.span_ms));
        let mut buf = vec![0; loc.len as usize];
        File::open(&path).and_then(|f| f.read_exact_at(&mut buf, loc.offset)).is_ok()
            && crc32fast::hash(&buf) == loc.crc
    }

    /// The payload at `loc`; an error when it is not what was written.
    pub fn read(&self, loc: &Location) -> Result<Vec<u8>, StoreError> {
        let path = self.path(loc.span_start_ms, i64::from(loc.span_ms));
        let file = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset).map_err(|e| io_err("reading", &path, e))?;
        if crc32fast::hash(&buf) != loc.crc {
            return Err(StoreError::Engine(format!(
                "{}: the batch at offset {} does not match its checksum",
                path.display(),
                loc.offset
            )));
        }
        lz4_flex::decompress_size_prepended(&buf).map_err(|e| {
            StoreError::Engine(format!(
                "{}: the batch at offset {} cannot be decompressed: {e}",
                path.display(),
                loc.offset
            ))
        })
    }

    /// Deletes the files whose whole span ended at or before `cutoff_ms`; returns the bytes
    /// freed. The caller makes sure no index entry points into them any more.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut freed = 0;
        for ((start, end), path) in self.files()? {
            if end > cutoff_ms {
                continue;
            }
            let len = path.metadata().map(|m| m.len()).unwrap_or(0);
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.current.as_ref().is_some_and(|c| c.span_start_ms == start) {
                    st.current = None;
                }
            }
            match std::fs::remove_file(&path) {
                Ok(()) => freed += len,
                // Gone already (removed by hand): what was wanted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("deleting", &path, e)),
            }
        }
        Ok(freed)
    }

    /// The files by (span start, span end).
    fn files(&self) -> Result<BTreeMap<(i64, i64), PathBuf>, StoreError> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))? {
            let e = e.map_err(|e| io_err("listing", &self.dir, e))?;
            let name = e.file_name();
            let span = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.split_once('-'));
            if let Some((Ok(start), Ok(end))) = span.map(|(a, b)| (a.parse(), b.parse())) {
                out.insert((start, end), e.path());
            }
        }
        Ok(out)
    }

    /// Bytes the files take.
    pub fn size(&self) -> u64 {
        self.files().map(|f| f.values().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_and_whole_spans_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(10), true).unwrap();
        let a = files.append(b"first", 1_000).unwrap();
        let b = files.append(b"second", 9_999).unwrap();
        let c = files.append(b"third", 10_000).unwrap();
        files.sync().unwrap();
        assert_eq!((a.span_start_ms, b.span_start_ms, c.span_start_ms), (0, 0, 10_000));
        assert_eq!(b.offset, a.len as u64);
        assert_eq!(Location::decode(&b.encode()), Some(b));
        assert_eq!(files.read(&b).unwrap(), b"second");
        // The span [0, 10 s) ends at 10 s: kept for a cutoff before that, gone at it.
        assert_eq!(files.delete_before(9_999).unwrap(), 0);
        assert_eq!(files.delete_before(10_000).unwrap(), (a.len + b.len) as u64);
        assert!(files.read(&a).is_err());
        assert_eq!(files.read(&c).unwrap(), b"third");
    }

    #[test]
    fn bytes_that_are_not_what_was_written_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap();
        let loc = files.append(b"payload", 0).unwrap();
        let path = dir.path().join(format!("{:020}-{:020}.log", 0, 10_000));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = files.read(&loc).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn files_of_ended_spans_are_closed_at_the_next_sync_with_or_without_fsync() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let files = BatchFiles::open(dir.path(), Duration::from_secs(10), fsync).unwrap();
            files.append(b"a", 0).unwrap();
            files.append(b"b", 10_000).unwrap();
            assert_eq!(files.state.lock().unwrap().unsynced.len(), 1);
            files.sync().unwrap();
            assert_eq!(files.state.lock().unwrap().unsynced.len(), 0, "fsync {fsync}: a file stays open");
        }
    }

    #[test]
    fn a_file_is_deleted_by_its_own_span_end_after_the_span_length_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = BatchFiles::open(dir.path(), Duration::from_secs(3600), false).unwrap().append(b"a", 0).unwrap();
        let short = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap();
        assert_eq!(short.delete_before(3_599_999).unwrap(), 0, "the hourly file's span has not ended");
        assert_eq!(short.read(&a).unwrap(), b"a");
        assert!(short.delete_before(3_600_000).unwrap() > 0);
        assert!(!short.verify(&a));
    }

    #[test]
    fn a_clock_that_steps_back_appends_to_the_newest_span() {
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap();
        files.append(b"a", 25_000).unwrap();
        let b = files.append(b"b", 5_000).unwrap();
        assert_eq!(b.span_start_ms, 20_000);
        assert!(files.verify(&b));
    }

    #[test]
    fn a_reopened_file_is_appended_to_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let a = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap().append(b"one", 0).unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap();
        let b = files.append(b"two", 1).unwrap();
        assert_eq!(b.offset, a.len as u64);
        assert_eq!(files.read(&a).unwrap(), b"one");
        assert_eq!(files.read(&b).unwrap(), b"two");
    }
}

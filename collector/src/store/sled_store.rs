//! The embedded engine: sled, one database under `data_dir`, one sled tree per [`Tree`].
//!
//! sled's flush writes with `sync_file_range`, which survives a process crash but not a
//! power loss (it neither flushes the drive's cache nor waits for the file's metadata).
//! With `fsync` on (the collector's `store_fsync`, default), [`Storage::flush`] also
//! `fdatasync`s sled's data file afterwards, so a flushed write — an acknowledged batch —
//! survives a power loss too. sled's background thread syncs every 500 ms either way.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Entry, Storage, StoreError, Tree, WriteBatch};

fn engine_err(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// [`Storage`] on a sled database.
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
    /// sled's data file, synced after every flush when set.
    sync: Option<Arc<File>>,
}

impl SledStorage {
    /// Opens (or creates) the database in `dir` with a page cache of `cache_bytes`; flushes
    /// are `sync_file_range` only (survive a process crash).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStorage, StoreError> {
        Self::open_with(dir, cache_bytes, false)
    }

    /// [`Self::open`]; with `fsync`, every flush is followed by an `fdatasync` of the data
    /// file (survives a power loss).
    pub fn open_with(dir: &Path, cache_bytes: u64, fsync: bool) -> Result<SledStorage, StoreError> {
        let open_err =
            |e: &dyn std::fmt::Display| StoreError::Open { dir: dir.display().to_string(), message: e.to_string() };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| open_err(&e))?;
        let sync = if fsync { Some(Arc::new(File::open(dir.join("db")).map_err(|e| open_err(&e))?)) } else { None };
        Ok(SledStorage { db, sync })
    }

    /// A database that lives in memory only and is gone when dropped (for tests).
    pub fn temporary() -> Result<SledStorage, StoreError> {
        let db = sled::Config::new().temporary(true).open().map_err(engine_err)?;
        Ok(SledStorage { db, sync: None })
    }
}

#[async_trait]
impl Storage for SledStorage {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        Ok(Arc::new(SledTree(self.db.open_tree(name).map_err(engine_err)?)))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // One hop to a blocking thread for sled's flush and the sync together (sled's
        // `flush_async` would hop to its own thread pool first, then back, then again for
        // the sync).
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(|e| StoreError::from_join("flushing the store", e))?
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine_err)?;
        if let Some(file) = &self.sync {
            file.sync_data().map_err(|e| StoreError::Engine(format!("fdatasync: {e}")))?;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine_err)
    }
}

struct SledTree(sled::Tree);

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).map_err(engine_err)?.map(|v| v.to_vec()))
    }

    fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.0.contains_key(key).map_err(engine_err)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.0.insert(key, value).map_err(engine_err)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.remove(key).map_err(engine_err)?.map(|v| v.to_vec()))
    }

    fn apply(&self, mut batch: WriteBatch) -> Result<(), StoreError> {
        // One write is atomic by itself, and sled's batch costs more than a plain write
        // (the fault engine persists one record per ingested batch this way).
        if batch.ops.len() == 1
            && let Some((key, value)) = batch.ops.pop()
        {
            return match value {
                Some(v) => self.insert(&key, v),
                None => self.remove(&key).map(drop),
            };
        }
        let mut b = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(v) => b.insert(key, v),
                None => b.remove(key),
            }
        }
        self.0.apply_batch(b).map_err(engine_err)
    }

    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a> {
        Box::new(self.0.scan_prefix(prefix).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine_err)))
    }

    fn last_with_prefix_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Entry>, StoreError> {
        let mut last = None;
        for item in self.0.range(from..) {
            let (k, v) = item.map_err(engine_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            last = Some((k, v));
        }
        Ok(last.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}

/// Opens a database this process just dropped, for tests: sled releases its file lock from
/// a background thread, so a reopen right after a drop may briefly find it held.
#[cfg(test)]
pub(crate) fn reopen_for_test(dir: &Path) -> SledStorage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStorage::open(dir, 1 << 20) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared contract suite on a sled database in a temporary directory.
    struct SledEngine(tempfile::TempDir);

    impl crate::store::suite::Engine for SledEngine {
        const UNFLUSHED_ON_DROP: crate::store::suite::UnflushedOnDrop = crate::store::suite::UnflushedOnDrop::Kept;

        async fn open(&self) -> Arc<dyn Storage> {
            Arc::new(reopen_for_test(self.0.path()))
        }
    }

    async fn sled_engine() -> SledEngine {
        SledEngine(tempfile::tempdir().unwrap())
    }

    crate::store::suite::storage_suite!(sled_engine);

    #[tokio::test]
    async fn with_fsync_a_flush_syncs_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open_with(dir.path(), 1 << 20, true).unwrap();
        assert!(s.sync.is_some());
        s.tree("t").unwrap().insert(b"k", b"v".to_vec()).unwrap();
        s.flush().await.unwrap();
        drop(s);
        let s = reopen_for_test(dir.path());
        assert_eq!(s.tree("t").unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn an_unopenable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SledStorage::open(&file, 1 << 20).err().expect("a file is no database directory");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}

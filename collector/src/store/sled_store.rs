//! The embedded engine: sled, one database under `data_dir`, one sled tree per [`Tree`].
//!
//! sled's flush writes with `sync_file_range`; its background thread fsyncs every 500 ms
//! (`flush_every_ms`): a flushed write survives a process crash, and a power loss up to the
//! last fsync.

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
}

impl SledStorage {
    /// Opens (or creates) the database in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStorage, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open { dir: dir.display().to_string(), message: e.to_string() })?;
        Ok(SledStorage { db })
    }

    /// A database that lives in memory only and is gone when dropped (for tests).
    pub fn temporary() -> Result<SledStorage, StoreError> {
        let db = sled::Config::new().temporary(true).open().map_err(engine_err)?;
        Ok(SledStorage { db })
    }
}

#[async_trait]
impl Storage for SledStorage {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        Ok(Arc::new(SledTree(self.db.open_tree(name).map_err(engine_err)?)))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(engine_err)?;
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

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
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

    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_survive_reopening_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path(), 1 << 20).unwrap();
            let t = s.tree("t").unwrap();
            t.insert(b"a/1", b"one".to_vec()).unwrap();
            let mut b = WriteBatch::default();
            b.insert(b"a/2".to_vec(), b"two".to_vec());
            b.insert(b"b/1".to_vec(), b"x".to_vec());
            b.remove(b"a/1".to_vec());
            t.apply(b).unwrap();
            s.flush().await.unwrap();
        }
        let s = SledStorage::open(dir.path(), 1 << 20).unwrap();
        let t = s.tree("t").unwrap();
        assert_eq!(t.get(b"a/1").unwrap(), None);
        let a: Vec<_> = t.scan_prefix(b"a/").map(|e| e.unwrap()).collect();
        assert_eq!(a, vec![(b"a/2".to_vec(), b"two".to_vec())]);
        assert_eq!(t.len(), 2);
        assert!(t.contains_key(b"b/1").unwrap());
        assert_eq!(t.remove(b"b/1").unwrap(), Some(b"x".to_vec()));
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

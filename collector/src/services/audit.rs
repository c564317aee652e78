//! The audit log: every staff call that changes something, and every refused call, with
//! who, from where, what and how it ended. Tree `audit`: time (ms, big-endian) + a
//! counter → JSON [`AuditEntry`]. An entry is flushed before the call answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::store::{Storage, StoreError, Tree};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: i64,
    pub user: String,
    pub role: String,
    pub peer: String,
    pub call: String,
    /// The call's arguments, JSON.
    pub arguments: String,
    /// "ok", "refused: …" or "failed: …".
    pub outcome: String,
}

pub struct AuditLog {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
    counter: AtomicU64,
}

impl AuditLog {
    pub fn open(storage: Arc<dyn Storage>) -> Result<AuditLog, StoreError> {
        let tree = storage.tree("audit")?;
        Ok(AuditLog { storage, tree, counter: AtomicU64::new(rand::random::<u32>() as u64) })
    }

    /// Records `entry` durably.
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut key = (entry.time_ms as u64).to_be_bytes().to_vec();
        key.extend_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        self.tree.insert(&key, serde_json::to_vec(entry).expect("an audit entry serializes"))?;
        self.storage.flush().await
    }

    /// Removes entries older than `before_ms`, at most `max`; returns how many went.
    /// Makes removals durable (the log may live in another storage than the caller's).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.storage.flush().await
    }

    pub fn prune_before(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for item in self.tree.iter() {
            let (k, _) = item?;
            if old.len() >= max || k.len() < 8 || i64::from_be_bytes(k[..8].try_into().expect("8 bytes")) >= before_ms {
                break;
            }
            old.push(k);
        }
        for k in &old {
            self.tree.remove(k)?;
        }
        Ok(old.len())
    }

    /// Entries at or after `since_ms`, of `user` if given, oldest first, at most `limit`
    /// (the newest ones when there are more).
    pub fn list(&self, since_ms: i64, user: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            if k.len() < 8 || i64::from_be_bytes(k[..8].try_into().expect("8 bytes")) < since_ms {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&v) else { continue };
            if user.is_some_and(|u| u != entry.user) {
                continue;
            }
            out.push(entry);
        }
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStorage;

    fn entry(t: i64, user: &str) -> AuditEntry {
        AuditEntry {
            time_ms: t,
            user: user.into(),
            role: "engineer".into(),
            peer: "127.0.0.1".into(),
            call: "acknowledge".into(),
            arguments: "{\"id\":1}".into(),
            outcome: "ok".into(),
        }
    }

    #[tokio::test]
    async fn entries_come_back_in_order_filtered_by_time_and_user() {
        let log = AuditLog::open(Arc::new(SledStorage::temporary().unwrap())).unwrap();
        for (t, u) in [(30, "bob"), (10, "alice"), (20, "alice")] {
            log.record(&entry(t, u)).await.unwrap();
        }
        let all: Vec<i64> = log.list(0, None, 100).unwrap().iter().map(|e| e.time_ms).collect();
        assert_eq!(all, [10, 20, 30]);
        let alice: Vec<i64> = log.list(15, Some("alice"), 100).unwrap().iter().map(|e| e.time_ms).collect();
        assert_eq!(alice, [20]);
        assert_eq!(log.list(0, None, 1).unwrap()[0].time_ms, 30, "the newest when limited");
    }
}

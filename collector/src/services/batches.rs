//! The ingest log: every stored batch per host, and the host registry.
//!
//! Trees: `batches` (host_id, 0x00, seq big-endian → encoded `pikett.v1.Batch`),
//! `hosts` (host_id → JSON [`HostRecord`]). Batches are inserted by the group-commit
//! writer (`services::writer`), which also flushes them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pikett_core::hosts::HostRecord;
use tokio::sync::oneshot;

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
    batches: Arc<dyn Tree>,
    hosts_tree: Arc<dyn Tree>,
    /// The host registry, mirrored in memory (read by every admin call).
    hosts: RwLock<HashMap<String, HostRecord>>,
}

fn batch_key(host: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 9);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Who sent a batch (from the stream's hello).
#[derive(Debug, Clone)]
pub struct Sender {
    pub host_id: String,
    pub customer: String,
    pub agent_version: String,
    pub capabilities: Vec<String>,
    pub min_interval_ms: u64,
}

/// One batch to store, and where to say whether it was new.
pub struct WriteRequest {
    pub sender: Arc<Sender>,
    pub batch: pikett_proto::v1::Batch,
    pub reply: oneshot::Sender<Result<Stored, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    Duplicate,
}

impl BatchLog {
    /// Opens the trees in `storage` and reads the host registry into memory.
    pub fn open(storage: Arc<dyn Storage>) -> Result<BatchLog, BatchLogError> {
        let batches = storage.tree("batches")?;
        let hosts_tree = storage.tree("hosts")?;
        let mut hosts = HashMap::new();
        for item in hosts_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).to_string();
            let rec: HostRecord = serde_json::from_slice(&v)
                .map_err(|source| BatchLogError::CorruptHost { host: host.clone(), source })?;
            hosts.insert(host, rec);
        }
        Ok(BatchLog { storage, batches, hosts_tree, hosts: RwLock::new(hosts) })
    }

    pub fn hosts(&self) -> Vec<HostRecord> {
        let mut v: Vec<_> = self.hosts.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        v
    }

    pub fn host(&self, id: &str) -> Option<HostRecord> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn batches_stored(&self) -> u64 {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).values().map(|h| h.batches).sum()
    }

    /// The stored batch `seq` of `host`, encoded.
    pub fn batch(&self, host: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.batches.get(&batch_key(host, seq))
    }

    /// Sequence numbers stored for `host`, ascending.
    pub fn stored_seqs(&self, host: &str) -> Result<Vec<u64>, StoreError> {
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.batches.scan_prefix(&prefix) {
            let (k, _) = item?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[k.len() - 8..]);
            out.push(u64::from_be_bytes(b));
        }
        Ok(out)
    }

    /// Inserts a group of batches (not yet flushed). Runs on a blocking thread.
    pub(crate) fn apply(&self, group: &[WriteRequest], now_ms: i64) -> Result<Vec<Stored>, StoreError> {
        let mut results = Vec::with_capacity(group.len());
        let mut changed: HashMap<String, HostRecord> = HashMap::new();
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for req in group {
            let key = batch_key(&req.sender.host_id, req.batch.seq);
            let stored = if self.batches.contains_key(&key)? {
                Stored::Duplicate
            } else {
                self.batches.insert(&key, prost::Message::encode_to_vec(&req.batch))?;
                Stored::New
            };
            let rec = hosts.entry(req.sender.host_id.clone()).or_insert_with(|| HostRecord {
                host_id: req.sender.host_id.clone(),
                first_seen_ms: now_ms,
                ..Default::default()
            });
            rec.customer.clone_from(&req.sender.customer);
            rec.agent_version.clone_from(&req.sender.agent_version);
            rec.capabilities.clone_from(&req.sender.capabilities);
            rec.min_interval_ms = req.sender.min_interval_ms;
            rec.last_seen_ms = now_ms;
            if stored == Stored::New {
                rec.batches += 1;
                rec.last_seq = rec.last_seq.max(req.batch.seq);
                rec.dropped_samples += req.batch.dropped_samples;
            }
            changed.insert(rec.host_id.clone(), rec.clone());
            results.push(stored);
        }
        drop(hosts);
        for (id, rec) in changed {
            let json = serde_json::to_vec(&rec).expect("a HostRecord always serializes");
            self.hosts_tree.insert(id.as_bytes(), json)?;
        }
        Ok(results)
    }

    /// The storage the log lives in, for the other services that keep state beside it.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Makes everything written so far durable (the group commit's flush).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.storage.flush().await
    }
}

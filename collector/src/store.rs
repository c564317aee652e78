//! Durable storage (sled) and the group-commit writer.
//!
//! Architecture invariant: a batch is acknowledged only after the flush that
//! made it durable has completed. Many batches share one flush (group commit).
//! sled's flush writes with `sync_file_range`; its background thread fsyncs
//! every 500 ms: a flushed batch survives a process crash, and a power loss up
//! to the last fsync.
//!
//! Trees: `batches` (host_id, 0x00, seq big-endian → encoded `pikett.v1.Batch`),
//! `hosts` (host_id → JSON [`HostRecord`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::fault_service::FaultService;
use crate::faults::Transition;
use crate::metrics::Metrics;
use crate::patches::PatchService;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir {dir}: cannot open the database: {source}")]
    Open { dir: String, source: sled::Error },
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: corrupt host record {host}: {source}")]
    CorruptHost { host: String, source: serde_json::Error },
}

/// What the collector knows about one agent's host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub host_id: String,
    pub customer: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    pub batches: u64,
    pub last_seq: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub min_interval_ms: u64,
    #[serde(default)]
    pub dropped_samples: u64,
}

pub struct Store {
    db: sled::Db,
    batches: sled::Tree,
    hosts_tree: sled::Tree,
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

impl Store {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| StoreError::Open { dir: dir.display().to_string(), source })?;
        let batches = db.open_tree("batches")?;
        let hosts_tree = db.open_tree("hosts")?;
        let mut hosts = HashMap::new();
        for item in hosts_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).to_string();
            let rec: HostRecord =
                serde_json::from_slice(&v).map_err(|source| StoreError::CorruptHost { host: host.clone(), source })?;
            hosts.insert(host, rec);
        }
        Ok(Store { db, batches, hosts_tree, hosts: RwLock::new(hosts) })
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
        Ok(self.batches.get(batch_key(host, seq))?.map(|v| v.to_vec()))
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
    fn apply(&self, group: &[WriteRequest], now_ms: i64) -> Result<Vec<Stored>, StoreError> {
        let mut results = Vec::with_capacity(group.len());
        let mut changed: HashMap<String, HostRecord> = HashMap::new();
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for req in group {
            let key = batch_key(&req.sender.host_id, req.batch.seq);
            let stored = if self.batches.contains_key(&key)? {
                Stored::Duplicate
            } else {
                self.batches.insert(key, prost::Message::encode_to_vec(&req.batch))?;
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

    /// The database, for the other components that keep state beside the batches.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// Most batches one flush covers.
const MAX_GROUP: usize = 4096;

/// Starts the group-commit writer: it takes every request waiting, inserts
/// them, feeds the new ones to the fault engine (and their `patches` inventory to the patch
/// service, whose synthetic check goes to the engine too), flushes once, then answers
/// each and hands the fault transitions to `transitions`.
pub fn spawn_writer(
    store: Arc<Store>,
    faults: Arc<FaultService>,
    patches: Arc<PatchService>,
    metrics: Arc<Metrics>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
) -> mpsc::Sender<WriteRequest> {
    let (tx, mut rx) = mpsc::channel::<WriteRequest>(16 * 1024);
    let (done_tx, done_rx) = mpsc::channel::<Applied>(1);
    let (store_w, metrics) = (store.clone(), metrics);
    tokio::spawn(async move {
        let store = store_w;
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let now_ms = jiff::Timestamp::now().as_millisecond();
            let s = store.clone();
            let f = faults.clone();
            let p = patches.clone();
            let applied = tokio::task::spawn_blocking(move || {
                let r = s.apply(&group, now_ms);
                let mut changes = Vec::new();
                if let Ok(stored) = &r {
                    let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or_else(|_| jiff::Timestamp::now());
                    for (req, st) in group.iter().zip(stored) {
                        if *st == Stored::New {
                            changes.extend(f.ingest(&req.sender.host_id, &req.sender.customer, &req.batch, now));
                            if let Some(input) = p.ingest(&req.sender.host_id, &req.sender.customer, &req.batch, now) {
                                changes.extend(f.with_engine(|e| e.check_result(input, now)));
                            }
                        }
                    }
                }
                (group, r, changes)
            })
            .await;
            let (group, result, changes) = match applied {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "store writer task failed");
                    continue;
                }
            };
            // The flush and the answers run in the completion task, so the next group is
            // inserted while this one flushes (at most one group waits).
            if done_tx.send(Applied { group, result, changes, started }).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(complete(done_rx, store, metrics, transitions));
    tx
}

/// A group inserted and fed to the engine, waiting for its flush.
struct Applied {
    group: Vec<WriteRequest>,
    result: Result<Vec<Stored>, StoreError>,
    changes: Vec<Transition>,
    started: Instant,
}

/// Flushes each applied group in order, then answers its requests and hands on its
/// transitions. A flush covers every insert made before it started, so a group's answers
/// always follow the durability of its own inserts.
async fn complete(
    mut done: mpsc::Receiver<Applied>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
) {
    while let Some(Applied { group, result, changes, started }) = done.recv().await {
        let result = match result {
            Ok(r) => store.flush().await.map(|()| r),
            Err(e) => Err(e),
        };
        metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(stored) => {
                if !changes.is_empty() {
                    let _ = transitions.send(changes);
                }
                for (req, s) in group.into_iter().zip(stored) {
                    if s == Stored::New {
                        metrics.batches_total.inc();
                        metrics.samples_total.inc_by(req.batch.samples.len() as u64);
                        metrics.agent_dropped_samples_total.inc_by(req.batch.dropped_samples);
                    } else {
                        metrics.duplicate_batches_total.inc();
                    }
                    let _ = req.reply.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store batches; agents will resend them");
                for req in group {
                    let _ = req.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

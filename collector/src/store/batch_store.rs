//! The seam between the ingest path and a batch store: who sent a batch, the request to
//! store it, what storing did, and [`BatchStore`], the stored batches and the host registry
//! as every service but the writer sees them. Two engines implement it: the sled batch log
//! (`services::batches::BatchLog`) and PostgreSQL (`store::pg::PgBatches`).

use std::sync::Arc;

use pikett_core::hosts::HostRecord;
use tokio::sync::oneshot;

use super::StoreError;

/// Who sent a batch (from the stream's hello).
#[derive(Debug, Clone)]
pub struct Sender {
    pub host_id: String,
    pub customer: String,
    pub agent_version: String,
    pub capabilities: Vec<String>,
    pub min_interval_ms: u64,
    /// The agent's spool identity (`Hello.spool_epoch`).
    pub spool_epoch: u64,
}

/// One batch to store, and where to say whether it was new.
pub struct WriteRequest {
    pub sender: Arc<Sender>,
    /// The batch as received: stored as its bytes, evaluated from its decoded fields and
    /// its samples read in place.
    pub batch: pikett_proto::received::ReceivedBatch,
    /// An `AgentStatus` (checks only, `batch.seq` 0): evaluated, never stored as a batch.
    pub status: bool,
    /// Samples of this batch not kept for `/metrics`: the host is at `max_series_per_host`.
    pub series_over_limit: u64,
    pub reply: oneshot::Sender<Result<Stored, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    Duplicate,
    /// An agent's unspooled status: the host was seen, nothing stored.
    Status,
}

impl Stored {
    /// Whether the fault engine evaluates the request.
    pub fn evaluate(self) -> bool {
        matches!(self, Stored::New | Stored::Status)
    }
}

/// What storing one request did: whether it was new, and the `agent/data-dropped` result
/// its drop report causes (see [`HostRecord::record_drops`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stored: Stored,
    pub data_dropped: Option<pikett_core::hosts::DataDropped>,
}

/// The stored batches and the host registry, as the services other than the writer see them:
/// one trait, two engines ([`BatchLog`] on sled and the batch files; `store::pg::PgBatches` on
/// PostgreSQL, shared by every collector of a cluster). Reads of the registry answer from
/// memory; whatever returns from an `async` method that writes is durable.
#[async_trait::async_trait]
pub trait BatchStore: Send + Sync {
    /// Every host ever seen, by id.
    fn hosts(&self) -> Vec<HostRecord>;
    /// The hosts staff have not removed (lists, status, up/down).
    fn active_hosts(&self) -> Vec<HostRecord> {
        let mut hosts = self.hosts();
        hosts.retain(|h| h.removed_ms == 0);
        hosts
    }
    fn host(&self, id: &str) -> Option<HostRecord>;
    /// Batches in the store now (see [`HostRecord::retained`]).
    fn batches_retained(&self) -> u64;
    /// Batches ever stored.
    fn batches_stored(&self) -> u64;
    /// Bytes the stored batch payloads take (the batch files; the batches table).
    fn payload_bytes(&self) -> u64;
    /// The highest sequence number stored for `host`'s spool `epoch` (0 for none), read
    /// from the store itself: what the Welcome tells an agent.
    async fn stored_up_to(&self, host: &str, epoch: u64) -> Result<u64, StoreError> {
        Ok(self.host(host).filter(|h| h.spool_epoch == epoch).map_or(0, |h| h.last_seq))
    }
    /// Marks `host` removed (decommissioned), durably; false when unknown.
    async fn remove_host(&self, host: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// The stored batch `seq` of `host`'s spool `epoch`, encoded.
    async fn batch(&self, host: &str, epoch: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes stored batches received before `cutoff_ms`, oldest first, at most `max`
    /// (retention's step), durably; returns how many went.
    async fn prune_before(&self, cutoff_ms: i64, max: usize) -> Result<usize, StoreError>;
}

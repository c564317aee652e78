//! Retention: removes what outlived `[retention]` (and the outbox's `keep_done`), in small
//! steps so ingest never waits long for the store, and counts it in
//! `pikett_retention_removed_total{what}`.
//!
//! One pass every `[retention] prune_every`: each kind is pruned in steps of [`STEP`]
//! records, with a yield between steps, until nothing old is left. Order matters: faults go
//! before their escalations, which are removed once the engine no longer knows their fault.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::config::RetentionConfig;
use crate::services::audit::AuditLog;
use crate::services::batches::BatchStore;
use crate::services::faults::FaultService;
use crate::services::incidents::IncidentService;
use crate::services::metrics::{Metrics, TreeLabel, WhatLabel};
use crate::services::pager::Pager;
use crate::store::{Storage, StoreError};

/// Records removed per step; between steps ingest gets the store.
const STEP: usize = 10_000;

/// How long a closed incident stays in memory (staff actions in flight still find it).
const CLOSED_IN_MEMORY: Duration = Duration::from_secs(30);

/// Everything retention prunes.
#[derive(Clone)]
pub struct Retention {
    pub config: RetentionConfig,
    /// The stored batches (pruned durably by themselves).
    pub batches: Arc<dyn BatchStore>,
    /// The store of the other trees: counted, and flushed after a pass that pruned them.
    pub storage: Arc<dyn Storage>,
    pub faults: Arc<FaultService>,
    pub pager: Arc<Pager>,
    pub incidents: Arc<IncidentService>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

fn before(now: Timestamp, keep: Duration) -> Timestamp {
    now.checked_sub(SignedDuration::try_from(keep).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MIN)
}

impl Retention {
    /// Starts the background task.
    pub fn spawn(self) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.config.prune_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.pass(Timestamp::now()).await {
                    Ok(_) => {}
                    // The runtime is shutting down (e.g. a start that failed after this began).
                    Err(StoreError::Stopping(what)) => {
                        tracing::debug!(what, "retention: the collector is stopping");
                        return;
                    }
                    Err(e) => crate::services::storage_failure::stop("pruning old data", &e),
                }
            }
        });
    }

    /// One pass at `now`; returns how many records of each kind went.
    pub async fn pass(&self, now: Timestamp) -> Result<Vec<(&'static str, usize)>, StoreError> {
        let mut removed = Vec::new();
        let cutoff = now.as_millisecond() - self.config.batches.as_millis() as i64;
        removed.push(("batches", self.prune_batches(cutoff).await?));

        let faults_before = before(now, self.config.faults);
        removed.push(("faults", self.faults.with_engine(|e| e.prune(faults_before))));
        let pager = self.pager.clone();
        removed.push(("escalations", self.steps(move || pager.prune(STEP)).await?));
        let incidents = self.incidents.clone();
        removed.push(("incidents", self.steps(move || incidents.prune(faults_before, STEP)).await?));
        self.incidents.evict_closed(before(now, CLOSED_IN_MEMORY));

        let audit = self.audit.clone();
        let audit_before = now.as_millisecond() - self.config.audit.as_millis() as i64;
        let audit_removed = self.steps(move || audit.prune_before(audit_before, STEP)).await?;
        if audit_removed > 0 {
            // The audit log is the node's own (in a cluster, not in the leader's storage).
            self.audit.flush().await?;
        }
        removed.push(("audit", audit_removed));
        let outbox = match self.pager.purge_outbox() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot purge finished notifications");
                0
            }
        };
        removed.push(("outbox", outbox));

        for &(what, n) in &removed {
            if n > 0 {
                self.metrics.retention_removed_total.get_or_create(&WhatLabel { what: what.into() }).inc_by(n as u64);
                tracing::info!(what, removed = n, "retention");
            }
        }
        // The batches' pruning is durable already; the other trees' is not.
        if removed.iter().any(|&(what, n)| what != "batches" && n > 0) {
            self.storage.flush().await?;
        }
        // Counting reads every record of the small trees: not on a runtime thread.
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.count())
            .await
            .map_err(|e| StoreError::from_join("retention count", e))??;
        Ok(removed)
    }

    /// Sets `pikett_store_records` and `pikett_in_memory_records`.
    fn count(&self) -> Result<(), StoreError> {
        let set = |tree: &str, n: u64| {
            self.metrics.store_records.get_or_create(&TreeLabel { tree: tree.into() }).set(n as i64);
        };
        set("batches", self.batches.batches_retained());
        set("hosts", self.batches.hosts().len() as u64);
        let faults: u64 = self.faults.with_engine(|e| e.counts().values().sum());
        set("faults", faults);
        for tree in ["escalations", "incidents", "outbox", "audit"] {
            set(tree, self.storage.tree(tree)?.count()? as u64);
        }
        let memory = |what: &str, n: usize| {
            self.metrics.in_memory_records.get_or_create(&WhatLabel { what: what.into() }).set(n as i64);
        };
        memory("faults", faults as usize);
        memory("escalations", self.pager.escalations_in_memory());
        memory("incidents", self.incidents.in_memory());
        Ok(())
    }

    /// Prunes the batches received before `cutoff_ms` in steps of [`STEP`], yielding between
    /// them; the total.
    async fn prune_batches(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.batches.prune_before(cutoff_ms, STEP).await?;
            total += n;
            if n < STEP {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs `step` on a blocking thread until it removes fewer than [`STEP`]; the total.
    async fn steps(
        &self,
        step: impl Fn() -> Result<usize, StoreError> + Send + Sync + 'static,
    ) -> Result<usize, StoreError> {
        let step = Arc::new(step);
        let mut total = 0;
        loop {
            let s = step.clone();
            let n = tokio::task::spawn_blocking(move || s())
                .await
                .map_err(|e| StoreError::from_join("retention step", e))??;
            total += n;
            if n < STEP {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

//! The collector's own Prometheus metrics (prometheus-client), served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    pub what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TreeLabel {
    pub tree: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub store_records: Family<TreeLabel, Gauge>,
    pub in_memory_records: Family<WhatLabel, Gauge>,
    pub batches_total: Counter,
    pub duplicate_batches_total: Counter,
    pub samples_total: Counter,
    pub agent_dropped_samples_total: Counter,
    pub agent_dropped_other_total: Counter,
    pub agent_status_messages_total: Counter,
    pub streams: Gauge,
    pub rejected_streams_total: Family<ReasonLabel, Counter>,
    pub rejected_connections_total: Family<ReasonLabel, Counter>,
    pub sequence_gaps_total: Counter,
    pub invalid_checks_total: Counter,
    pub retention_removed_total: Family<WhatLabel, Counter>,
    pub store_commit_seconds: Histogram,
    pub hosts: Family<StatusLabel, Gauge>,
    pub notifications_failed_total: Counter,
    pub sms_receipts_refused_total: Counter,
    pub remote_write_samples_total: Counter,
    pub remote_write_failed_sends_total: Counter,
    pub remote_write_dropped_samples_total: Family<ReasonLabel, Counter>,
    pub remote_write_backlog_seconds: Gauge,
    pub remote_write_backlog_batches: Gauge,
    pub eval_gaps_total: Counter,
    pub batches_late_total: Counter,
    pub eval_backlog_batches: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pikett");
        let m = Metrics {
            batches_total: Counter::default(),
            duplicate_batches_total: Counter::default(),
            samples_total: Counter::default(),
            agent_dropped_samples_total: Counter::default(),
            agent_dropped_other_total: Counter::default(),
            agent_status_messages_total: Counter::default(),
            streams: Gauge::default(),
            rejected_streams_total: Family::default(),
            rejected_connections_total: Family::default(),
            sequence_gaps_total: Counter::default(),
            invalid_checks_total: Counter::default(),
            retention_removed_total: Family::default(),
            store_records: Family::default(),
            in_memory_records: Family::default(),
            store_commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            hosts: Family::default(),
            notifications_failed_total: Counter::default(),
            sms_receipts_refused_total: Counter::default(),
            remote_write_samples_total: Counter::default(),
            remote_write_failed_sends_total: Counter::default(),
            remote_write_dropped_samples_total: Family::default(),
            remote_write_backlog_seconds: Gauge::default(),
            remote_write_backlog_batches: Gauge::default(),
            eval_gaps_total: Counter::default(),
            batches_late_total: Counter::default(),
            eval_backlog_batches: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("ingest_batches", "Batches stored", m.batches_total.clone());
        registry.register(
            "ingest_duplicate_batches",
            "Batches received again and ignored (already stored)",
            m.duplicate_batches_total.clone(),
        );
        registry.register("ingest_samples", "Samples stored", m.samples_total.clone());
        registry.register(
            "agent_dropped_samples",
            "Samples agents dropped because their spool was full",
            m.agent_dropped_samples_total.clone(),
        );
        registry.register(
            "agent_dropped_other",
            "Check results, events and inventory items agents dropped (spool or disk full)",
            m.agent_dropped_other_total.clone(),
        );
        registry.register(
            "agent_status_messages",
            "Unspooled status messages from agents that cannot spool (disk full)",
            m.agent_status_messages_total.clone(),
        );
        registry.register("ingest_streams", "Agent streams connected now", m.streams.clone());
        registry.register("ingest_rejected_streams", "Agent streams refused", m.rejected_streams_total.clone());
        registry.register(
            "grpc_rejected_connections",
            "Connections closed before TLS completed (deadline, limits, handshake errors)",
            m.rejected_connections_total.clone(),
        );
        registry.register(
            "ingest_sequence_gaps",
            "Gaps in a stream's sequence numbers (batches the agent dropped)",
            m.sequence_gaps_total.clone(),
        );
        registry.register(
            "retention_removed",
            "Stored records removed because they outlived [retention]",
            m.retention_removed_total.clone(),
        );
        registry.register(
            "store_records",
            "Records in each part of the store (counted at every retention pass)",
            m.store_records.clone(),
        );
        registry.register(
            "in_memory_records",
            "Records held in memory: open escalations and incidents, faults, latest-value series",
            m.in_memory_records.clone(),
        );
        registry.register(
            "ingest_invalid_checks",
            "Check results ignored for an invalid name (control characters, empty, longer than 256)",
            m.invalid_checks_total.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time to store and flush one group of batches",
            m.store_commit_seconds.clone(),
        );
        registry.register("hosts", "Known hosts by status", m.hosts.clone());
        registry.register(
            "notifications_failed",
            "Escalations in which every channel of every role failed: nobody was reached",
            m.notifications_failed_total.clone(),
        );
        registry.register(
            "sms_receipts_refused",
            "SMS delivery receipts refused for a wrong or missing secret",
            m.sms_receipts_refused_total.clone(),
        );
        registry.register(
            "remote_write_samples",
            "Samples the remote-write store accepted",
            m.remote_write_samples_total.clone(),
        );
        registry.register(
            "remote_write_failed_sends",
            "Remote-write requests that failed (retried; on a 4xx their samples are dropped)",
            m.remote_write_failed_sends_total.clone(),
        );
        registry.register(
            "remote_write_dropped_samples",
            "Samples never forwarded: refused by the store (rejected) or older than max_backlog (backlog)",
            m.remote_write_dropped_samples_total.clone(),
        );
        registry.register(
            "remote_write_backlog_seconds",
            "Age of the oldest stored batch not forwarded yet (0: caught up)",
            m.remote_write_backlog_seconds.clone(),
        );
        registry.register(
            "remote_write_backlog_batches",
            "Stored batches not forwarded yet (counted up to 100000)",
            m.remote_write_backlog_batches.clone(),
        );
        registry.register(
            "eval_gaps",
            "Gaps in a host's stored batches that the evaluator skipped after gap_grace",
            m.eval_gaps_total.clone(),
        );
        registry.register(
            "batches_late",
            "Batches stored after the evaluator had skipped them (never evaluated; expected 0)",
            m.batches_late_total.clone(),
        );
        registry.register(
            "eval_backlog_batches",
            "Stored batches the evaluator has not evaluated yet",
            m.eval_backlog_batches.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! The group-commit writer: the one place batches become durable and are acknowledged.
//!
//! Architecture invariant: a batch is acknowledged only after the flush that made it durable
//! has completed. Many batches share one flush: the writer takes every request waiting (up
//! to [`MAX_GROUP`]), inserts them, feeds the new ones to the fault engine and the patch
//! service, flushes once, then answers each in order. Flushes start at least
//! `store_commit_window` apart, so under load one flush covers the groups applied meanwhile. The engine's changes are in the same
//! flush, so fault state always matches the acknowledged batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pikett_core::faults::Transition;
use tokio::sync::mpsc;

use crate::services::batches::{BatchLog, Outcome, Stored, WriteRequest};
use crate::services::evaluator::evaluate_request;
use crate::services::faults::FaultService;
use crate::services::metrics::Metrics;
use crate::services::patches::PatchService;
use crate::store::StoreError;
use crate::store::pg::PgBatches;

/// Most batches one flush covers.
const MAX_GROUP: usize = 4096;
/// Most payload bytes one PostgreSQL group carries (a single larger batch goes alone).
const MAX_PG_GROUP_BYTES: usize = 8 << 20;

/// Starts the group-commit writer: it takes every request waiting, inserts
/// them, feeds the new ones to the fault engine (and their `patches` inventory to the patch
/// service, whose synthetic check goes to the engine too), flushes once, then answers
/// each and hands the fault transitions to `transitions`.
pub fn spawn_writer(
    store: Arc<BatchLog>,
    faults: Arc<FaultService>,
    patches: Arc<PatchService>,
    metrics: Arc<Metrics>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
    commit_window: Duration,
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
                if let Ok(outcomes) = &r {
                    let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or_else(|_| jiff::Timestamp::now());
                    for (req, outcome) in group.iter().zip(outcomes) {
                        if !outcome.stored.evaluate() {
                            continue;
                        }
                        changes.extend(evaluate_request(
                            &f,
                            &p,
                            &req.sender.host_id,
                            &req.sender.customer,
                            &req.batch,
                            outcome.data_dropped.as_ref(),
                            outcome.stored == Stored::New,
                            req.series_over_limit,
                            now,
                        ));
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
    tokio::spawn(complete(done_rx, store, metrics, transitions, commit_window));
    tx
}

/// A group inserted and fed to the engine, waiting for its flush.
struct Applied {
    group: Vec<WriteRequest>,
    result: Result<Vec<Outcome>, StoreError>,
    changes: Vec<Transition>,
    started: Instant,
}

/// Flushes the applied groups in order, then answers their requests and hands on their
/// transitions. A flush covers every insert made before it started, so a group's answers
/// always follow the durability of its own inserts.
///
/// Flushes start at least `commit_window` apart: groups applied meanwhile wait and share the
/// next flush (under load one flush covers many batches; an idle collector flushes at once).
async fn complete(
    mut done: mpsc::Receiver<Applied>,
    store: Arc<BatchLog>,
    metrics: Arc<Metrics>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
    commit_window: Duration,
) {
    let mut last_flush: Option<tokio::time::Instant> = None;
    while let Some(first) = done.recv().await {
        if let Some(last) = last_flush {
            tokio::time::sleep_until(last + commit_window).await;
        }
        let mut ready = vec![first];
        while let Ok(more) = done.try_recv() {
            ready.push(more);
        }
        let needs_flush = ready.iter().any(|a| a.result.is_ok());
        last_flush = Some(tokio::time::Instant::now());
        let flushed = if needs_flush { store.flush().await } else { Ok(()) };
        for Applied { group, result, changes, started } in ready {
            let result = match (result, &flushed) {
                (Ok(r), Ok(())) => Ok(r),
                // Each group gets its own copy of the flush's error; a flush cancelled by the
                // runtime's shutdown stays that (see `answer`).
                (Ok(_), Err(StoreError::Stopping(what))) => Err(StoreError::Stopping(what.clone())),
                (Ok(_), Err(e)) => Err(StoreError::Engine(e.to_string())),
                (Err(e), _) => Err(e),
            };
            metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
            answer(group, result, changes, &metrics, &transitions);
        }
    }
}

/// Answers a flushed (or failed) group and hands on its transitions.
fn answer(
    group: Vec<WriteRequest>,
    result: Result<Vec<Outcome>, StoreError>,
    changes: Vec<Transition>,
    metrics: &Metrics,
    transitions: &mpsc::UnboundedSender<Vec<Transition>>,
) {
    match result {
        Ok(stored) => {
            if !changes.is_empty() {
                let _ = transitions.send(changes);
            }
            count_and_reply(group, stored, metrics);
        }
        Err(e) => {
            // Nothing of this group is acknowledged; the agents resend it to the restarted
            // collector, which evaluates it from the state on disk.
            for req in group {
                let _ = req.reply.send(Err(e.to_string()));
            }
            // A flush cancelled by the runtime's shutdown is no storage failure: the
            // collector is stopping anyway, and nothing of the group was acknowledged.
            if !matches!(e, StoreError::Stopping(_)) {
                crate::services::storage_failure::stop("storing a group of batches", &e);
            }
        }
    }
}

/// The writer of a collector on PostgreSQL: stores each group in one transaction
/// ([`PgBatches::store_group`]) and answers once it committed. It evaluates nothing: the
/// leader evaluates every stored batch by cursor (`services::evaluator`), woken through
/// `stored`. A failed commit is answered as an error to every batch of the group (the agents
/// resend it) and the writer goes on: the database may be back for the next group.
pub fn spawn_pg_writer(
    store: Arc<PgBatches>,
    metrics: Arc<Metrics>,
    stored: Arc<tokio::sync::Notify>,
) -> mpsc::Sender<WriteRequest> {
    let (tx, mut rx) = mpsc::channel::<WriteRequest>(16 * 1024);
    tokio::spawn(async move {
        let mut failing_since: Option<Instant> = None;
        let mut next: Option<WriteRequest> = None;
        while let Some(first) = match next.take() {
            Some(r) => Some(r),
            None => rx.recv().await,
        } {
            // A group is one statement's parameters: bounded in bytes too, so a catch-up after
            // an outage (many large batches waiting) stays far inside statement_timeout.
            let mut bytes = first.batch.bytes().len();
            let mut group = vec![first];
            while group.len() < MAX_GROUP && bytes < MAX_PG_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        let len = r.batch.bytes().len();
                        if bytes + len > MAX_PG_GROUP_BYTES {
                            next = Some(r);
                            break;
                        }
                        bytes += len;
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = store.store_group(&group).await;
            metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(outcomes) => {
                    if failing_since.take().is_some() {
                        tracing::info!("storing batches in PostgreSQL works again");
                    }
                    stored.notify_one();
                    count_and_reply(group, outcomes, &metrics);
                }
                Err(e) => {
                    // Logged once per outage, not per group: the agents retry every second.
                    if failing_since.is_none() {
                        tracing::error!(error = %e, "cannot store batches in PostgreSQL: acknowledging nothing until it works");
                        failing_since = Some(started);
                    }
                    for req in group {
                        let _ = req.reply.send(Err(format!("storing the batch: {e}")));
                    }
                }
            }
        }
    });
    tx
}

/// Counts a stored group in the metrics and answers each request.
fn count_and_reply(group: Vec<WriteRequest>, outcomes: Vec<Outcome>, metrics: &Metrics) {
    for (req, outcome) in group.into_iter().zip(outcomes) {
        match outcome.stored {
            Stored::New => {
                metrics.batches_total.inc();
                let head = req.batch.head();
                metrics.samples_total.inc_by(req.batch.sample_count() as u64);
                metrics.agent_dropped_samples_total.inc_by(head.dropped_samples);
                metrics.agent_dropped_other_total.inc_by(head.dropped_other);
            }
            Stored::Duplicate => {
                metrics.duplicate_batches_total.inc();
            }
            Stored::Status => {
                metrics.agent_status_messages_total.inc();
            }
        }
        let _ = req.reply.send(Ok(outcome.stored));
    }
}

//! The durable outbox: every notification is stored (flushed) before it is sent, retried with
//! exponential backoff, and its outcome reported; pending entries survive a restart.
//!
//! Delivery is at-least-once: a notification in flight when the process dies is sent again
//! after restart, with the same idempotency key, so gateways and mail servers can drop the
//! duplicate. Finished entries are kept for `keep_done` to refuse re-enqueueing the same key.
//!
//! The worker claims due entries as a [`Claimer`] (node and term; [`Claimer::standalone`] on one
//! node, term 0) and records a result only while the claim is still its own. Every claim has a
//! token of its own, so a result of an attempt superseded by a later claim is dropped quietly
//! (logged, counted) and the worker goes on; claims never lapse (only a result, a release or a
//! restart ends them). A store that refuses the claimer's term, or a send guard that says no
//! ([`Outbox::guard_sends`]: a cluster's leader past its lease), deposes the outbox: its worker
//! stops and nothing more is sent ([`Outbox::deposed`]). In a cluster the outbox is a tree of
//! the leader's state (fenced flushes), so a new leader sends what the old one left pending,
//! with the same key.
//!
//! Architecture invariant: the outbox knows channels only through [`Channel`]; retry timing is
//! the pure [`backoff`] / [`after_failure`], over times from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::{ChannelError, ChannelKind, ChannelMap, Notification, NotificationKind, Receipt};
use crate::store::{Storage, Tree, WriteBatch};

/// The source of "now" for retry timing, so tests and simulations can drive time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *guard = add(*guard, d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn default_initial_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_max_attempts() -> u32 {
    10
}
fn default_max_age() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_keep_done() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_concurrency() -> usize {
    32
}

/// Retry policy and limits (an `[outbox]`-style config section; every key has a default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Delay after the first failed attempt; doubles per attempt.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts (the first send included) before a notification is failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Age (since enqueue) after which no further attempt is made: a page an hour late helps
    /// nobody, and the escalation must learn of the failure.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How long delivered/failed entries are kept to recognise a re-enqueued key.
    #[serde(default = "default_keep_done", with = "humantime_serde")]
    pub keep_done: Duration,
    /// Sends in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: default_max_attempts(),
            max_age: default_max_age(),
            keep_done: default_keep_done(),
            concurrency: default_concurrency(),
        }
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Pending,
    Delivered,
    Failed,
}

/// A stored notification with its delivery bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub notification: Notification,
    pub state: EntryState,
    /// Attempts made so far.
    pub attempts: u32,
    pub enqueued_at: Timestamp,
    /// When a pending entry is due.
    pub next_attempt: Timestamp,
    pub last_error: Option<String>,
    pub receipt: Option<Receipt>,
    pub finished_at: Option<Timestamp>,
}

/// What happened to one attempt, for the escalation logic and the fault's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub notification_id: String,
    pub fault_id: String,
    pub channel: ChannelKind,
    pub kind: NotificationKind,
    pub to: String,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    pub at: Timestamp,
    pub status: OutcomeStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// Final: the channel took it.
    Delivered { receipt: Receipt },
    /// Not final: this attempt failed, another follows at `next_attempt`.
    Retrying { error: String, next_attempt: Timestamp },
    /// Final: permanent error, or attempts/age exhausted.
    Failed { reason: String },
}

impl OutcomeStatus {
    pub fn is_final(&self) -> bool {
        !matches!(self, OutcomeStatus::Retrying { .. })
    }
}

/// Result of [`Outbox::enqueue`].
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// Stored and flushed; it will be sent.
    New,
    /// An entry with this id exists already (pending or finished): nothing was added.
    Duplicate(EntryState),
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage: {0}")]
    Store(String),
    #[error("outbox entry {key}: cannot decode: {message}")]
    Decode { key: String, message: String },
    #[error("notification has an empty id (the idempotency key)")]
    EmptyId,
    /// The claimer's term no longer holds the leader lease: it must step down.
    #[error("outbox: fenced: node {node} no longer holds the leader lease of term {term}")]
    Fenced { node: String, term: i64 },
}

/// Who claims entries: a node under its leader term. Each term has one holder, so claims of
/// one term all come from one node and one clock. A standalone collector is
/// [`Claimer::standalone`] (term 0, never deposed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claimer {
    pub node: String,
    pub term: i64,
}

impl Claimer {
    /// The one node of a collector without high availability (sled): term 0.
    pub fn standalone() -> Self {
        Claimer { node: "local".into(), term: 0 }
    }
}

/// The answer of [`OutboxStore::claim_due`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The entries now claimed, by next attempt, then id.
    pub due: Vec<Entry>,
    /// The earliest next attempt of the pending entries this claimer could claim later (a
    /// time at or before `now` when `limit` left some due ones).
    pub next: Option<Timestamp>,
    /// This claim's token, unique per call: results and releases must show it, so an attempt
    /// superseded by a later claim of the same term cannot record over it.
    pub token: u64,
}

/// The answer of [`OutboxStore::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The attempt's result is stored, durably, and the claim ended.
    Stored,
    /// The claim is not this attempt's any more, but no other term holds it (it ended, or a
    /// later claim of the same term superseded it): nothing changed. The outcome is dropped
    /// quietly; the worker goes on.
    Superseded,
    /// Another term holds the claim (a newer term took it over): nothing changed. The caller's
    /// outcome is dropped, and its worker steps down.
    Stale,
}

/// How long a claim keeps other workers of the same term away from an entry, on a store whose
/// claims lapse. A newer term takes a claim over at once. [`TreeStore`] claims never lapse.
pub const CLAIM_FOR: Duration = Duration::from_secs(120);

/// The outbox's storage, kept behind a trait so the engine can change without touching callers:
/// [`TreeStore`], on the tree `outbox` of any [`Storage`] (sled; in a cluster the leader's
/// fenced PostgreSQL state). The contract is the suite in `outbox_suite.rs`.
///
/// Claims: a worker claims due entries as a [`Claimer`] until `now + claim_for`, and records a
/// result only while the claim is still its own (same node, term and token). A claim of an
/// older term is taken over at once by a newer term (no page is lost when a leader dies); a
/// claim of the same term only after it ran out (a [`TreeStore`] claim never runs out). Times are the claimer's clock: `claim_until` is compared
/// only within one term, that is on one node.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores `entry` as a new pending entry, durably, unless its id exists; then returns the
    /// existing one's state and changes nothing. Fails [`OutboxError::Fenced`] when `by` no
    /// longer leads (on engines with a lease).
    async fn enqueue(&self, by: &Claimer, entry: &Entry) -> Result<Option<EntryState>, OutboxError>;
    /// The entry with this id, pending or finished.
    async fn entry(&self, id: &str) -> Result<Option<Entry>, OutboxError>;
    /// Entries, pending and finished, whose id starts with `prefix` (a fault's: `FAULT/`).
    async fn entries_with_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError>;
    /// All pending entries, claimed or not. Undecodable ones are logged and set aside (kept
    /// for inspection), so they are reported once and not on every pass.
    async fn pending_entries(&self) -> Result<Vec<Entry>, OutboxError>;
    /// Claims for `by`, until `now + claim_for`, at most `limit` pending entries due at `now`
    /// (by next attempt, then id) that are unclaimed, claimed by an older term, or claimed by
    /// `by`'s term with the claim run out. Fails [`OutboxError::Fenced`] when `by` no longer
    /// leads (on engines with a lease).
    async fn claim_due(
        &self,
        by: &Claimer,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Claimed, OutboxError>;
    /// Records an attempt's result, durably, if `by` still holds the entry's claim under
    /// `token` (from [`Claimed::token`]): `entry` pending replaces the pending entry (a retry),
    /// delivered or failed finishes it. The claim ends either way.
    async fn record(&self, by: &Claimer, token: u64, entry: &Entry) -> Result<Recorded, OutboxError>;
    /// Ends `by`'s claim under `token` on `id` without a result (an attempt cancelled): the
    /// entry is due again at once. Any other claim is left alone.
    async fn release(&self, by: &Claimer, token: u64, id: &str) -> Result<(), OutboxError>;
    /// Removes finished entries finished before `before`; returns how many.
    async fn purge_finished(&self, before: Timestamp) -> Result<usize, OutboxError>;
}

/// A shared store (one per node, or one for several outboxes in tests) is a store.
#[async_trait]
impl<S: OutboxStore + ?Sized> OutboxStore for Arc<S> {
    async fn enqueue(&self, by: &Claimer, entry: &Entry) -> Result<Option<EntryState>, OutboxError> {
        (**self).enqueue(by, entry).await
    }
    async fn entry(&self, id: &str) -> Result<Option<Entry>, OutboxError> {
        (**self).entry(id).await
    }
    async fn entries_with_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError> {
        (**self).entries_with_prefix(prefix).await
    }
    async fn pending_entries(&self) -> Result<Vec<Entry>, OutboxError> {
        (**self).pending_entries().await
    }
    async fn claim_due(
        &self,
        by: &Claimer,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Claimed, OutboxError> {
        (**self).claim_due(by, now, claim_for, limit).await
    }
    async fn record(&self, by: &Claimer, token: u64, entry: &Entry) -> Result<Recorded, OutboxError> {
        (**self).record(by, token, entry).await
    }
    async fn release(&self, by: &Claimer, token: u64, id: &str) -> Result<(), OutboxError> {
        (**self).release(by, token, id).await
    }
    async fn purge_finished(&self, before: Timestamp) -> Result<usize, OutboxError> {
        (**self).purge_finished(before).await
    }
}

/// One claim held in a [`TreeStore`]'s memory.
#[derive(Debug, Clone)]
struct Held {
    by: Claimer,
    token: u64,
    /// False once a result or a release ended it: kept (until the entry is purged) to tell a
    /// late result of the same term from one of an older term.
    live: bool,
}

/// Whether `by` may claim an entry whose claim is `held` on a [`TreeStore`]: only an older
/// term's claim is taken over; one of the same term never lapses (the send may still be in
/// flight), it ends by a result, a release or a restart.
fn claimable(held: Option<&Held>, by: &Claimer) -> bool {
    held.is_none_or(|h| !h.live || h.by.term < by.term)
}

/// What a refused result means: `Stale` (depose) only when another term holds the claim.
fn refused(holder_term: Option<i64>, by: &Claimer) -> Recorded {
    match holder_term {
        Some(term) if term != by.term => Recorded::Stale,
        _ => Recorded::Superseded,
    }
}

/// [`OutboxStore`] on the storage tree `outbox`: keys `p/ID` (pending), `d/ID` (finished) and
/// `bad/KEY` (quarantined), JSON values. Claims live in memory: one node uses the tree, and a
/// restart starts with no claim (what was in flight is sent again, at-least-once). A claim
/// never lapses: only a result, a release or a restart ends it (an older term's is taken over).
#[derive(Clone)]
pub struct TreeStore {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
    /// Serialises the read-check-write sequences (insert-if-new, quarantine) against each other.
    write: Arc<std::sync::Mutex<()>>,
    /// Claimed entries: by id, the claimer and the claim's token. Taken before reading the
    /// pending entries to claim, and held while a result is written.
    claims: Arc<Mutex<HashMap<String, Held>>>,
    /// The last claim token handed out.
    tokens: Arc<std::sync::atomic::AtomicU64>,
}

const PENDING: &str = "p/";
const DONE: &str = "d/";
const BAD: &str = "bad/";

fn store_err(e: impl std::fmt::Display) -> OutboxError {
    OutboxError::Store(e.to_string())
}

/// A flush of a leader's storage refused by the fence is the outbox's `Fenced`: it deposes.
fn flush_err(e: crate::store::StoreError) -> OutboxError {
    match e {
        crate::store::StoreError::Fenced { node, term } => OutboxError::Fenced { node, term },
        e => store_err(e),
    }
}

fn encode(entry: &Entry) -> Result<Vec<u8>, OutboxError> {
    serde_json::to_vec(entry).map_err(store_err)
}

fn decode(key: &[u8], value: &[u8]) -> Result<Entry, OutboxError> {
    serde_json::from_slice(value)
        .map_err(|e| OutboxError::Decode { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() })
}

/// Logs an undecodable pending entry that is being set aside.
fn log_undecodable(e: &OutboxError) {
    tracing::error!(error = %e, "outbox: undecodable notification set aside, it cannot be sent");
}

impl TreeStore {
    /// Opens (or creates) the tree `outbox` in `storage`.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self, OutboxError> {
        let tree = storage.tree("outbox").map_err(store_err)?;
        Ok(TreeStore { storage, tree, write: Arc::default(), claims: Arc::default(), tokens: Arc::default() })
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry with this id, pending or finished.
    pub fn get(&self, id: &str) -> Result<Option<Entry>, OutboxError> {
        for prefix in [PENDING, DONE] {
            let key = format!("{prefix}{id}");
            if let Some(v) = self.tree.get(key.as_bytes()).map_err(store_err)? {
                return decode(key.as_bytes(), &v).map(Some);
            }
        }
        Ok(None)
    }

    /// Stores a new pending entry unless the id exists (not flushed); returns the existing
    /// one's state.
    pub fn insert_new(&self, entry: &Entry) -> Result<Option<EntryState>, OutboxError> {
        let id = &entry.notification.id;
        let pending_key = format!("{PENDING}{id}");
        let done_key = format!("{DONE}{id}");
        let value = encode(entry)?;
        let _guard = self.locked();
        if self.tree.contains_key(pending_key.as_bytes()).map_err(store_err)? {
            return Ok(Some(EntryState::Pending));
        }
        if let Some(v) = self.tree.get(done_key.as_bytes()).map_err(store_err)? {
            // A finished entry we cannot decode still blocks the id; call it failed.
            let state = serde_json::from_slice::<Entry>(&v).map(|e| e.state).unwrap_or(EntryState::Failed);
            return Ok(Some(state));
        }
        // A quarantined entry (undecodable, set aside) blocks its id too, as a failed one.
        for key in [&pending_key, &done_key] {
            if self.tree.contains_key(format!("{BAD}{key}").as_bytes()).map_err(store_err)? {
                return Ok(Some(EntryState::Failed));
            }
        }
        self.tree.insert(pending_key.as_bytes(), value).map_err(store_err)?;
        Ok(None)
    }

    /// Replaces a pending entry (after a failed attempt); not flushed.
    pub fn update_pending(&self, entry: &Entry) -> Result<(), OutboxError> {
        let key = format!("{PENDING}{}", entry.notification.id);
        self.tree.insert(key.as_bytes(), encode(entry)?).map_err(store_err)?;
        Ok(())
    }

    /// Atomically moves an entry from pending to finished; not flushed.
    pub fn finish(&self, entry: &Entry) -> Result<(), OutboxError> {
        let id = &entry.notification.id;
        let mut batch = WriteBatch::default();
        batch.remove(format!("{PENDING}{id}"));
        batch.insert(format!("{DONE}{id}"), encode(entry)?);
        self.tree.apply(batch).map_err(store_err)
    }

    /// All pending entries. Undecodable ones are reported as errors in the list.
    pub fn pending(&self) -> Result<Vec<Result<Entry, OutboxError>>, OutboxError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(PENDING.as_bytes()) {
            let (k, v) = item.map_err(store_err)?;
            out.push(decode(&k, &v));
        }
        Ok(out)
    }

    /// Moves an undecodable pending entry (by its key from [`OutboxError::Decode`]) aside,
    /// keeping its bytes for inspection, so it is reported once and not on every pass.
    pub fn quarantine(&self, key: &str) -> Result<(), OutboxError> {
        let _guard = self.locked();
        if let Some(v) = self.tree.get(key.as_bytes()).map_err(store_err)? {
            let mut batch = WriteBatch::default();
            batch.remove(key);
            batch.insert(format!("{BAD}{key}"), v);
            self.tree.apply(batch).map_err(store_err)?;
        }
        Ok(())
    }

    /// Removes finished entries finished before `before`; returns how many (not flushed).
    pub fn purge_finished(&self, before: Timestamp) -> Result<usize, OutboxError> {
        let mut old_keys = Vec::new();
        for item in self.tree.scan_prefix(DONE.as_bytes()) {
            let (k, v) = item.map_err(store_err)?;
            let old = match decode(&k, &v) {
                Ok(e) => e.finished_at.is_none_or(|t| t < before),
                // Undecodable finished entries serve no purpose.
                Err(_) => true,
            };
            if old {
                old_keys.push(k);
            }
        }
        let mut claims = self.claims();
        for k in &old_keys {
            self.tree.remove(k).map_err(store_err)?;
            claims.remove(String::from_utf8_lossy(&k[DONE.len()..]).as_ref());
        }
        Ok(old_keys.len())
    }

    /// Entries, pending and finished, whose id starts with `prefix` (a fault's: `FAULT/`).
    pub fn with_id_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError> {
        let mut out = Vec::new();
        for state in [PENDING, DONE] {
            let key = format!("{state}{prefix}");
            for item in self.tree.scan_prefix(key.as_bytes()) {
                let (k, v) = item.map_err(store_err)?;
                out.push(decode(&k, &v)?);
            }
        }
        Ok(out)
    }

    /// Pending entries; undecodable ones are logged and quarantined.
    fn decodable_pending(&self) -> Result<Vec<Entry>, OutboxError> {
        let mut out = Vec::new();
        for item in self.pending()? {
            match item {
                Ok(entry) => out.push(entry),
                Err(e) => {
                    log_undecodable(&e);
                    if let OutboxError::Decode { key, .. } = &e
                        && let Err(q) = self.quarantine(key)
                    {
                        tracing::error!(error = %q, "outbox: cannot quarantine entry");
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl OutboxStore for TreeStore {
    async fn enqueue(&self, _by: &Claimer, entry: &Entry) -> Result<Option<EntryState>, OutboxError> {
        if let Some(state) = self.insert_new(entry)? {
            return Ok(Some(state));
        }
        self.storage.flush().await.map_err(flush_err)?;
        Ok(None)
    }

    async fn entry(&self, id: &str) -> Result<Option<Entry>, OutboxError> {
        self.get(id)
    }

    async fn entries_with_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError> {
        self.with_id_prefix(prefix)
    }

    async fn pending_entries(&self) -> Result<Vec<Entry>, OutboxError> {
        self.decodable_pending()
    }

    async fn claim_due(
        &self,
        by: &Claimer,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Claimed, OutboxError> {
        let _ = claim_for; // Claims on one node never lapse.
        // The claims first: a result recorded meanwhile (under this lock) is then in the entries.
        let mut claims = self.claims();
        let pending = self.decodable_pending()?;
        let mut due = Vec::new();
        let mut next: Option<Timestamp> = None;
        for e in pending {
            if !claimable(claims.get(&e.notification.id), by) {
                continue;
            }
            if e.next_attempt <= now {
                due.push(e);
            } else {
                next = Some(next.map_or(e.next_attempt, |n| n.min(e.next_attempt)));
            }
        }
        due.sort_by(|a, b| (a.next_attempt, &a.notification.id).cmp(&(b.next_attempt, &b.notification.id)));
        if let Some(first_left) = due.get(limit) {
            let at = first_left.next_attempt;
            next = Some(next.map_or(at, |n| n.min(at)));
            due.truncate(limit);
        }
        let token = self.tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        for e in &due {
            claims.insert(e.notification.id.clone(), Held { by: by.clone(), token, live: true });
        }
        Ok(Claimed { due, next, token })
    }

    async fn record(&self, by: &Claimer, token: u64, entry: &Entry) -> Result<Recorded, OutboxError> {
        let id = &entry.notification.id;
        {
            let mut claims = self.claims();
            match claims.get_mut(id) {
                Some(h) if h.live && h.by == *by && h.token == token => h.live = false,
                other => return Ok(refused(other.map(|h| h.by.term), by)),
            }
            if !self.tree.contains_key(format!("{PENDING}{id}").as_bytes()).map_err(store_err)? {
                return Ok(Recorded::Superseded);
            }
            match entry.state {
                EntryState::Pending => self.update_pending(entry)?,
                EntryState::Delivered | EntryState::Failed => self.finish(entry)?,
            }
        }
        self.storage.flush().await.map_err(flush_err)?;
        Ok(Recorded::Stored)
    }

    async fn release(&self, by: &Claimer, token: u64, id: &str) -> Result<(), OutboxError> {
        let mut claims = self.claims();
        if let Some(h) = claims.get_mut(id)
            && h.live
            && h.by == *by
            && h.token == token
        {
            h.live = false;
        }
        Ok(())
    }

    async fn purge_finished(&self, before: Timestamp) -> Result<usize, OutboxError> {
        TreeStore::purge_finished(self, before)
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// The wait after the `attempts`-th failed attempt (1-based): `initial_backoff` doubling per
/// attempt, capped at `max_backoff`.
pub fn backoff(attempts: u32, cfg: &OutboxConfig) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    cfg.initial_backoff.saturating_mul(1u32 << doublings).min(cfg.max_backoff)
}

/// Whether an entry enqueued at `enqueued_at` is too old to be sent at `now`.
pub fn is_expired(enqueued_at: Timestamp, now: Timestamp, cfg: &OutboxConfig) -> bool {
    now > add(enqueued_at, cfg.max_age)
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { at: Timestamp },
    Fail { reason: String },
}

/// Decides retry or failure after attempt number `attempts` failed with `err` at `now`.
pub fn after_failure(
    attempts: u32,
    enqueued_at: Timestamp,
    err: &ChannelError,
    now: Timestamp,
    cfg: &OutboxConfig,
) -> Decision {
    if !err.is_retryable() {
        return Decision::Fail { reason: format!("permanent error: {}", err.message()) };
    }
    if attempts >= cfg.max_attempts {
        return Decision::Fail { reason: format!("gave up after {attempts} attempts: {}", err.message()) };
    }
    let at = add(now, backoff(attempts, cfg));
    if at > add(enqueued_at, cfg.max_age) {
        return Decision::Fail {
            reason: format!(
                "gave up after {attempts} attempts, older than max_age {}: {}",
                humantime::format_duration(cfg.max_age),
                err.message()
            ),
        };
    }
    Decision::Retry { at }
}

/// Counters since start (for `/metrics`: `pikett_notifications_failed_total` is `failed`).
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub delivered: std::sync::atomic::AtomicU64,
    pub retried: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Results dropped because a later claim of the same term superseded the attempt's.
    pub superseded: std::sync::atomic::AtomicU64,
}

struct Inner {
    store: Box<dyn OutboxStore>,
    /// Who this outbox claims entries as.
    claimer: Claimer,
    /// Replaced whole by a reload ([`Outbox::set_channels`]); sends in flight keep theirs.
    channels: std::sync::RwLock<Arc<ChannelMap>>,
    cfg: OutboxConfig,
    clock: Arc<dyn Clock>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    wake: Notify,
    /// Set once the store said the claimer's term is over (a stale result, a fenced claim):
    /// the worker stops and nothing more is sent.
    deposed: watch::Sender<bool>,
    /// Asked right before each send: `false` once this node may no longer page (a leader
    /// whose lease ran out, noticed at the moment of sending even when the process was
    /// stopped in between). `None`: always may.
    send_guard: std::sync::OnceLock<SendGuard>,
    limit: Semaphore,
    stats: OutboxStats,
}

/// See [`Outbox::guard_sends`].
pub type SendGuard = Arc<dyn Fn() -> bool + Send + Sync>;

impl Inner {
    fn depose(&self, why: &str) {
        tracing::warn!(node = %self.claimer.node, term = self.claimer.term, why, "outbox: this term's claims are over, the worker steps down");
        self.deposed.send_replace(true);
        self.wake.notify_one();
    }

    fn is_deposed(&self) -> bool {
        *self.deposed.borrow()
    }
}

/// The outbox. Cheap to clone; all clones share one store and one worker.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// The running worker; [`Worker::stop`] ends it and cancels sends in flight (they stay
/// pending in the store and are resumed by the next worker).
pub struct Worker {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

impl Outbox {
    /// Sends from now on go through `channels` (a configuration reload). Pending
    /// notifications keep their place and go out through the new channels.
    pub fn set_channels(&self, channels: ChannelMap) {
        *self.inner.channels.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(channels);
    }

    /// An outbox over `store` sending through `channels`, claiming as
    /// [`Claimer::standalone`]. Outcomes arrive on the receiver; nothing is sent until
    /// [`Outbox::start`] (or [`Outbox::run_due`]) is called.
    pub fn new(
        store: impl OutboxStore + 'static,
        channels: ChannelMap,
        cfg: OutboxConfig,
        clock: Arc<dyn Clock>,
    ) -> (Outbox, mpsc::UnboundedReceiver<Outcome>) {
        Outbox::claiming_as(store, channels, cfg, clock, Claimer::standalone())
    }

    /// [`Outbox::new`] for a leader: enqueues and claims as `claimer` (a node and its term).
    /// Once the store says the term is over, the outbox sends nothing more
    /// ([`Outbox::deposed`]); the next term builds a new outbox.
    pub fn claiming_as(
        store: impl OutboxStore + 'static,
        channels: ChannelMap,
        cfg: OutboxConfig,
        clock: Arc<dyn Clock>,
        claimer: Claimer,
    ) -> (Outbox, mpsc::UnboundedReceiver<Outcome>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = cfg.concurrency.max(1);
        let inner = Inner {
            store: Box::new(store),
            claimer,
            channels: std::sync::RwLock::new(Arc::new(channels)),
            cfg,
            clock,
            outcomes: tx,
            wake: Notify::new(),
            deposed: watch::Sender::new(false),
            send_guard: std::sync::OnceLock::new(),
            limit: Semaphore::new(permits),
            stats: OutboxStats::default(),
        };
        (Outbox { inner: Arc::new(inner) }, rx)
    }

    /// From now on every send first asks `may_send` (right before it goes out); a `false`
    /// deposes the outbox, which then sends nothing more. For a leader: its lease may have
    /// run out while the process was stopped, before anything noticed. Set once.
    pub fn guard_sends(&self, may_send: SendGuard) {
        let _ = self.inner.send_guard.set(may_send);
    }

    /// Turns `true` once the store refused this outbox's term (a stale result or a fenced
    /// claim): its worker has stopped, and the node should step down.
    pub fn deposed(&self) -> watch::Receiver<bool> {
        self.inner.deposed.subscribe()
    }

    /// Stores `n` durably (flushed) and wakes the worker. Same id twice = one notification.
    pub async fn enqueue(&self, n: Notification) -> Result<Enqueued, OutboxError> {
        if n.id.is_empty() {
            return Err(OutboxError::EmptyId);
        }
        let now = self.inner.clock.now();
        let entry = Entry {
            notification: n,
            state: EntryState::Pending,
            attempts: 0,
            enqueued_at: now,
            next_attempt: now,
            last_error: None,
            receipt: None,
            finished_at: None,
        };
        let stored = self.inner.store.enqueue(&self.inner.claimer, &entry).await;
        if let Err(OutboxError::Fenced { .. }) = &stored {
            self.inner.depose("enqueue fenced");
        }
        if let Some(state) = stored? {
            tracing::debug!(notification = %entry.notification.id, ?state, "duplicate enqueue ignored");
            return Ok(Enqueued::Duplicate(state));
        }
        tracing::debug!(notification = %entry.notification.id, channel = %entry.notification.channel, "notification enqueued");
        self.inner.wake.notify_one();
        Ok(Enqueued::New)
    }

    /// The entry with this id, pending or finished.
    pub async fn entry(&self, id: &str) -> Result<Option<Entry>, OutboxError> {
        self.inner.store.entry(id).await
    }

    /// Entries whose id starts with `prefix`, oldest first (a fault's: `FAULT/`).
    pub async fn entries_with_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError> {
        let mut entries = self.inner.store.entries_with_prefix(prefix).await?;
        entries.sort_by(|a, b| (a.enqueued_at, &a.notification.id).cmp(&(b.enqueued_at, &b.notification.id)));
        Ok(entries)
    }

    /// Pending entries. Undecodable ones are logged and quarantined (kept under `bad/`).
    pub async fn pending_entries(&self) -> Result<Vec<Entry>, OutboxError> {
        self.inner.store.pending_entries().await
    }

    /// [`Outbox::entry`] for a synchronous caller. It answers when the store answers without
    /// waiting ([`TreeStore`] does); a store that would wait fails, and its callers must use
    /// the async form. So do [`Outbox::with_id_prefix`], [`Outbox::pending`] and
    /// [`Outbox::purge`].
    pub fn get(&self, id: &str) -> Result<Option<Entry>, OutboxError> {
        now_or_fail(self.entry(id))
    }

    /// [`Outbox::entries_with_prefix`] for a synchronous caller (see [`Outbox::get`]).
    pub fn with_id_prefix(&self, prefix: &str) -> Result<Vec<Entry>, OutboxError> {
        now_or_fail(self.entries_with_prefix(prefix))
    }

    /// [`Outbox::pending_entries`] for a synchronous caller (see [`Outbox::get`]).
    pub fn pending(&self) -> Result<Vec<Entry>, OutboxError> {
        now_or_fail(self.pending_entries())
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.inner.stats
    }

    /// Removes finished entries older than `keep_done`.
    pub async fn purge_finished(&self) -> Result<usize, OutboxError> {
        let before = self
            .inner
            .clock
            .now()
            .checked_sub(SignedDuration::try_from(self.inner.cfg.keep_done).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        self.inner.store.purge_finished(before).await
    }

    /// [`Outbox::purge_finished`] for a synchronous caller (see [`Outbox::get`]).
    pub fn purge(&self) -> Result<usize, OutboxError> {
        now_or_fail(self.purge_finished())
    }

    /// Claims up to `limit` entries due at the clock's now; and the earliest due time of the
    /// rest. A fenced claim deposes the outbox.
    async fn claim_due(&self, limit: usize) -> Result<Claimed, OutboxError> {
        let claimed = self.inner.store.claim_due(&self.inner.claimer, self.inner.clock.now(), CLAIM_FOR, limit).await;
        if let Err(OutboxError::Fenced { .. }) = &claimed {
            self.inner.depose("claim fenced");
        }
        claimed
    }

    /// Makes one attempt for every entry due now and waits for them: the worker's step, and a
    /// deterministic driver for tests with a [`ManualClock`]. Outcomes dropped as stale are
    /// left out.
    pub async fn run_due(&self) -> Result<Vec<Outcome>, OutboxError> {
        if self.inner.is_deposed() {
            return Ok(Vec::new());
        }
        let claimed = self.claim_due(usize::MAX).await?;
        let token = claimed.token;
        let attempts = claimed.due.into_iter().map(|e| attempt(self.inner.clone(), token, e));
        Ok(futures::future::join_all(attempts).await.into_iter().flatten().collect())
    }

    /// Starts the worker task: resumes pending entries at once, then sends whatever is due.
    /// It claims at most `concurrency` entries at a time, and stops on its own once deposed.
    pub fn start(&self) -> Worker {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let outbox = self.clone();
        let handle = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            loop {
                // Finished attempts are reaped here; their results went out as outcomes.
                while tasks.try_join_next().is_some() {}
                if outbox.inner.is_deposed() {
                    break;
                }
                let room = outbox.inner.cfg.concurrency.max(1).saturating_sub(tasks.len());
                // A claim that got nothing waits a little at least: an entry due but locked by
                // another session's claim (PostgreSQL) must not make the worker spin.
                let mut floor = Duration::ZERO;
                let next = if room == 0 {
                    // A finishing attempt wakes the loop.
                    None
                } else {
                    match outbox.claim_due(room).await {
                        Ok(claimed) => {
                            if claimed.due.is_empty() {
                                floor = MIN_WAIT_AFTER_NOTHING;
                            }
                            for e in claimed.due {
                                tasks.spawn(attempt(outbox.inner.clone(), claimed.token, e));
                            }
                            claimed.next
                        }
                        Err(OutboxError::Fenced { .. }) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "outbox: cannot read pending notifications");
                            Some(add(outbox.inner.clock.now(), Duration::from_secs(1)))
                        }
                    }
                };
                let wait = next.map_or(Duration::from_secs(60), |t| {
                    let d = t.duration_since(outbox.inner.clock.now());
                    Duration::try_from(d).unwrap_or(Duration::ZERO).min(Duration::from_secs(60))
                });
                let wait = wait.max(floor);
                tokio::select! {
                    _ = outbox.inner.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    // A finished attempt frees its slot at once (its wake may come before the task
                    // is reaped, and would leave the slot idle until the next wake).
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = stop_rx.changed() => break,
                }
            }
            tasks.shutdown().await;
        });
        Worker { stop: stop_tx, handle }
    }
}

/// The worker's least wait after a claim that got nothing.
const MIN_WAIT_AFTER_NOTHING: Duration = Duration::from_millis(100);

/// The answer of `f` if it is ready at once (an in-memory store's), else an error.
fn now_or_fail<T>(f: impl std::future::Future<Output = Result<T, OutboxError>>) -> Result<T, OutboxError> {
    f.now_or_never().unwrap_or_else(|| {
        Err(OutboxError::Store("the outbox's store is on the network: ask it from async code".into()))
    })
}

/// Ends an attempt's claim if the attempt did not record a result (cancelled mid-send, or
/// its result could not be stored), then wakes the worker.
struct Release {
    inner: Arc<Inner>,
    token: u64,
    id: String,
    recorded: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.recorded {
            self.inner.wake.notify_one();
            return;
        }
        let (inner, token, id) = (self.inner.clone(), self.token, std::mem::take(&mut self.id));
        let release = async move {
            if let Err(e) = inner.store.release(&inner.claimer, token, &id).await {
                tracing::warn!(notification = %id, error = %e, "outbox: cannot release a claim; it runs out by itself");
            }
            inner.wake.notify_one();
        };
        // Outside a runtime (it is shutting down) nothing is released: the claim runs out.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // An in-memory store releases at once; one on the network in a task of its own.
        let mut release = Box::pin(release);
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        if release.poll_unpin(&mut cx).is_pending() {
            runtime.spawn(release);
        }
    }
}

/// One attempt for one entry: send, persist the result, report the outcome.
async fn attempt(inner: Arc<Inner>, token: u64, mut entry: Entry) -> Option<Outcome> {
    let id = entry.notification.id.clone();
    // Ends the claim (when no result was recorded) even if this task is cancelled mid-send.
    let mut release = Release { inner: inner.clone(), token, id: id.clone(), recorded: false };

    // An entry that outlived max_age (e.g. the collector was down for hours) is not sent: a
    // stale page misleads more than it helps. It fails loudly instead.
    let result = if is_expired(entry.enqueued_at, inner.clock.now(), &inner.cfg) {
        None
    } else {
        // The semaphore is never closed; if it were, sending without a permit is still right.
        let _permit = inner.limit.acquire().await.ok();
        if inner.is_deposed() {
            // Another term owns the outbox now: it sends this one.
            return None;
        }
        if inner.send_guard.get().is_some_and(|may_send| !may_send()) {
            inner.depose("this node may no longer send (its leader lease ran out)");
            return None;
        }
        let n = &entry.notification;
        let channel = inner.channels.read().unwrap_or_else(|p| p.into_inner()).get(&n.channel).cloned();
        Some(match channel {
            Some(channel) => channel.send(n).await,
            None => Err(ChannelError::Permanent(format!("no [channels.{}] configured", n.channel))),
        })
    };
    let now = inner.clock.now();
    if result.is_some() {
        entry.attempts += 1;
    }
    let n = &entry.notification;
    let status = match result {
        None => {
            let reason = format!(
                "expired: not delivered within max_age {} (after {} attempts)",
                humantime::format_duration(inner.cfg.max_age),
                entry.attempts
            );
            tracing::error!(notification = %n.id, fault = %n.fault_id, channel = %n.channel, %reason, "notification failed");
            inner.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            OutcomeStatus::Failed { reason }
        }
        Some(Ok(receipt)) => {
            tracing::info!(notification = %n.id, fault = %n.fault_id, channel = %n.channel, attempts = entry.attempts, endpoint = %receipt.endpoint, "notification delivered");
            inner.stats.delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            OutcomeStatus::Delivered { receipt }
        }
        Some(Err(err)) => match after_failure(entry.attempts, entry.enqueued_at, &err, now, &inner.cfg) {
            Decision::Retry { at } => {
                tracing::warn!(notification = %n.id, fault = %n.fault_id, channel = %n.channel, attempts = entry.attempts, error = %err, next_attempt = %at, "notification failed, will retry");
                inner.stats.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                OutcomeStatus::Retrying { error: err.message().to_string(), next_attempt: at }
            }
            Decision::Fail { reason } => {
                tracing::error!(notification = %n.id, fault = %n.fault_id, channel = %n.channel, attempts = entry.attempts, %reason, "notification failed");
                inner.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                OutcomeStatus::Failed { reason }
            }
        },
    };
    match &status {
        OutcomeStatus::Delivered { receipt } => {
            entry.state = EntryState::Delivered;
            entry.receipt = Some(receipt.clone());
            entry.finished_at = Some(now);
        }
        OutcomeStatus::Retrying { error, next_attempt } => {
            entry.last_error = Some(error.clone());
            entry.next_attempt = *next_attempt;
        }
        OutcomeStatus::Failed { reason } => {
            entry.state = EntryState::Failed;
            entry.last_error = Some(reason.clone());
            entry.finished_at = Some(now);
        }
    }
    match inner.store.record(&inner.claimer, token, &entry).await {
        Ok(Recorded::Stored) => release.recorded = true,
        Ok(Recorded::Superseded) => {
            // A later claim of this term sends it (or did): this attempt's outcome is dropped.
            release.recorded = true;
            inner.stats.superseded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(notification = %id, node = %inner.claimer.node, term = inner.claimer.term, "outbox: the attempt's claim was superseded, outcome dropped");
            return None;
        }
        Ok(Recorded::Stale) | Err(OutboxError::Fenced { .. }) => {
            // A newer term took the entry over and answers for it; this outcome is dropped.
            release.recorded = true;
            tracing::warn!(notification = %id, node = %inner.claimer.node, term = inner.claimer.term, "outbox: the claim went to a newer term, outcome dropped");
            inner.depose("a result came too late for its claim");
            return None;
        }
        // The entry stays as it was in the store: it is attempted again (at-least-once).
        Err(e) => tracing::error!(notification = %id, error = %e, "outbox: cannot record the attempt"),
    }
    let outcome = Outcome {
        notification_id: entry.notification.id.clone(),
        fault_id: entry.notification.fault_id.clone(),
        channel: entry.notification.channel,
        kind: entry.notification.kind,
        to: entry.notification.to.clone(),
        attempts: entry.attempts,
        at: now,
        status,
    };
    if inner.outcomes.send(outcome.clone()).is_err() {
        tracing::debug!(notification = %id, "outcome receiver is gone");
    }
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn cfg() -> OutboxConfig {
        OutboxConfig::default()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_doubles_from_5s_to_5m() {
        let c = cfg();
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a, &c).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(1000, &c), Duration::from_secs(300));
        assert_eq!(backoff(0, &c), Duration::from_secs(5));
    }

    #[test]
    fn permanent_error_fails_at_once() {
        let d = after_failure(
            1,
            t("2026-11-23T03:00:00Z"),
            &ChannelError::Permanent("gateway https://x answered HTTP 400".into()),
            t("2026-11-23T03:00:01Z"),
            &cfg(),
        );
        match d {
            Decision::Fail { reason } => assert!(reason.contains("HTTP 400"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retryable_error_retries_after_backoff() {
        let d = after_failure(
            2,
            t("2026-11-23T03:00:00Z"),
            &ChannelError::Retryable("down".into()),
            t("2026-11-23T03:00:10Z"),
            &cfg(),
        );
        assert_eq!(d, Decision::Retry { at: t("2026-11-23T03:00:20Z") });
    }

    #[test]
    fn max_attempts_ends_retries() {
        let c = OutboxConfig { max_attempts: 3, ..cfg() };
        let d = after_failure(
            3,
            t("2026-11-23T03:00:00Z"),
            &ChannelError::Retryable("down".into()),
            t("2026-11-23T03:00:30Z"),
            &c,
        );
        assert!(matches!(d, Decision::Fail { reason } if reason.contains("after 3 attempts")));
    }

    #[test]
    fn max_age_ends_retries() {
        let d = after_failure(
            4,
            t("2026-11-23T03:00:00Z"),
            &ChannelError::Retryable("down".into()),
            t("2026-11-23T03:29:50Z"),
            &cfg(),
        );
        assert!(matches!(d, Decision::Fail { reason } if reason.contains("max_age 30m")));
    }

    #[test]
    fn outcome_status_serialises_with_a_status_tag() {
        let s = serde_json::to_value(OutcomeStatus::Failed { reason: "gave up".into() }).unwrap();
        assert_eq!(s, serde_json::json!({"status": "failed", "reason": "gave up"}));
    }

    #[test]
    fn entries_expire_after_max_age() {
        let c = cfg();
        let t0 = t("2026-11-23T03:00:00Z");
        assert!(!is_expired(t0, t("2026-11-23T03:30:00Z"), &c));
        assert!(is_expired(t0, t("2026-11-23T03:30:01Z"), &c));
    }

    #[test]
    fn config_from_toml() {
        let c: OutboxConfig = toml::from_str("initial_backoff = \"1s\"\nmax_attempts = 4").unwrap();
        assert_eq!(c.initial_backoff, Duration::from_secs(1));
        assert_eq!(c.max_attempts, 4);
        assert_eq!(c.max_backoff, Duration::from_secs(300));
        assert!(toml::from_str::<OutboxConfig>("max_attempt = 4").is_err());
    }

    fn sled_store() -> (tempfile::TempDir, TreeStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::SledStorage::open(dir.path(), 1 << 20).unwrap();
        (dir, TreeStore::open(Arc::new(db)).unwrap())
    }

    fn entry(id: &str) -> Entry {
        let mut n = crate::notify::sample_notification();
        n.id = id.into();
        Entry {
            notification: n,
            state: EntryState::Pending,
            attempts: 0,
            enqueued_at: t("2026-11-23T03:00:00Z"),
            next_attempt: t("2026-11-23T03:00:00Z"),
            last_error: None,
            receipt: None,
            finished_at: None,
        }
    }

    #[test]
    fn store_moves_entries_from_pending_to_done_and_blocks_duplicates() {
        let (_dir, store) = sled_store();
        assert_eq!(store.insert_new(&entry("a")).unwrap(), None);
        assert_eq!(store.insert_new(&entry("a")).unwrap(), Some(EntryState::Pending));
        let mut e = entry("a");
        e.state = EntryState::Delivered;
        e.finished_at = Some(t("2026-11-23T03:00:01Z"));
        store.finish(&e).unwrap();
        assert!(store.pending().unwrap().is_empty());
        assert_eq!(store.insert_new(&entry("a")).unwrap(), Some(EntryState::Delivered));
        assert_eq!(store.get("a").unwrap().unwrap().state, EntryState::Delivered);
        store.insert_new(&entry("4/1")).unwrap();
        store.insert_new(&entry("42/1")).unwrap();
        let of_4: Vec<String> = store.with_id_prefix("4/").unwrap().into_iter().map(|e| e.notification.id).collect();
        assert_eq!(of_4, vec!["4/1"], "a fault's prefix must not match another fault's");
        assert_eq!(store.with_id_prefix("a").unwrap().len(), 1, "finished entries are listed too");
        assert_eq!(store.purge_finished(t("2026-11-23T03:00:00Z")).unwrap(), 0);
        assert_eq!(store.purge_finished(t("2026-11-24T00:00:00Z")).unwrap(), 1);
        assert_eq!(store.get("a").unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_entry_is_quarantined_once() {
        let (_dir, store) = sled_store();
        store.tree.insert(b"p/bad", b"{not json".to_vec()).unwrap();
        let tree = store.tree.clone();
        let (ob, _rx) = Outbox::new(store, ChannelMap::new(), cfg(), Arc::new(SystemClock));
        assert!(ob.pending().unwrap().is_empty());
        assert!(tree.get(b"p/bad").unwrap().is_none());
        assert_eq!(&tree.get(b"bad/p/bad").unwrap().unwrap()[..], b"{not json");
    }

    /// A tree that runs a hook once, between reading a scan and handing it out.
    struct HookTree {
        inner: Arc<dyn Tree>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Tree for HookTree {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
            self.inner.contains_key(key)
        }
        fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
            self.inner.insert(key, value)
        }
        fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.remove(key)
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn scan_prefix<'a>(
            &'a self,
            prefix: &[u8],
        ) -> Box<dyn Iterator<Item = Result<crate::store::Entry, StoreError>> + 'a> {
            let read: Vec<_> = self.inner.scan_prefix(prefix).collect();
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            Box::new(read.into_iter())
        }
    }

    /// A result recorded while a claim reads the pending entries must not let that claim take
    /// the entry from its stale read (a delivered page sent again).
    #[tokio::test]
    async fn a_claim_never_works_from_a_read_older_than_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(crate::store::SledStorage::open(dir.path(), 1 << 20).unwrap());
        let tree = Arc::new(HookTree { inner: storage.tree("outbox").unwrap(), hook: Mutex::new(None) });
        let store = TreeStore {
            storage,
            tree: tree.clone(),
            write: Arc::default(),
            claims: Arc::default(),
            tokens: Arc::default(),
        };
        let by = Claimer::standalone();
        let now = t("2026-11-23T03:00:01Z");
        store.enqueue(&by, &entry("x")).await.unwrap();
        let first = store.claim_due(&by, now, CLAIM_FOR, 10).await.unwrap();
        assert_eq!(first.due.len(), 1);
        let mut done = first.due[0].clone();
        done.state = EntryState::Delivered;
        done.attempts = 1;
        done.finished_at = Some(now);
        // The result is recorded (on another thread) right after the next claim read the entries.
        let (recorded_tx, recorded_rx) = std::sync::mpsc::channel();
        let (store2, done2, token) = (store.clone(), done.clone(), first.token);
        *tree.hook.lock().unwrap() = Some(Box::new(move || {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let _ = recorded_tx.send(rt.block_on(store2.record(&Claimer::standalone(), token, &done2)).unwrap());
            });
            // Gives the result time to go in (it waits for the claim when the claim locks first).
            let _ = recorded_rx.recv_timeout(Duration::from_secs(1)).map(|r| {
                assert_eq!(r, Recorded::Stored);
            });
        }));
        let second = store.claim_due(&by, now, CLAIM_FOR, 10).await.unwrap();
        assert!(second.due.is_empty(), "claimed from a read older than the result: {:?}", second.due);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..50 {
            if store.get("x").unwrap().unwrap().state == EntryState::Delivered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(store.get("x").unwrap().unwrap(), done);
        assert!(store.claim_due(&by, now, CLAIM_FOR, 10).await.unwrap().due.is_empty());
    }

    /// A channel that delivers at once, from another thread's point of view a moment later.
    struct Instant;

    #[async_trait]
    impl super::super::Channel for Instant {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Sms
        }
        async fn send(&self, _n: &Notification) -> Result<Receipt, ChannelError> {
            tokio::task::yield_now().await;
            Ok(Receipt { channel: ChannelKind::Sms, endpoint: "test".into(), detail: "ok".into() })
        }
    }

    /// With one slot, every finished attempt must let the next one start at once (not after
    /// the worker's 60 s idle wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_finished_attempt_frees_its_slot_at_once() {
        let (_dir, store) = sled_store();
        let channels: ChannelMap =
            HashMap::from([(ChannelKind::Sms, Arc::new(Instant) as Arc<dyn super::super::Channel>)]);
        let (ob, mut outcomes) =
            Outbox::new(store, channels, OutboxConfig { concurrency: 1, ..cfg() }, Arc::new(SystemClock));
        const N: usize = 300;
        for i in 0..N {
            let mut n = crate::notify::sample_notification();
            n.id = format!("{i}/1");
            ob.enqueue(n).await.unwrap();
        }
        let worker = ob.start();
        let all = tokio::time::timeout(Duration::from_secs(30), async {
            for _ in 0..N {
                outcomes.recv().await.unwrap();
            }
        })
        .await;
        worker.stop().await;
        assert!(all.is_ok(), "a free slot sat idle");
    }

    /// A channel that counts what it was asked to send.
    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl super::super::Channel for Counting {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Sms
        }
        async fn send(&self, _n: &Notification) -> Result<Receipt, ChannelError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Receipt { channel: ChannelKind::Sms, endpoint: "test".into(), detail: "ok".into() })
        }
    }

    /// A guard that says no (a leader past its lease) stops every send and deposes the
    /// outbox; the entries stay pending for the next leader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_guard_that_says_no_sends_nothing_and_deposes() {
        let (_dir, store) = sled_store();
        let counting = Arc::new(Counting(std::sync::atomic::AtomicUsize::new(0)));
        let channels: ChannelMap =
            HashMap::from([(ChannelKind::Sms, counting.clone() as Arc<dyn super::super::Channel>)]);
        let (ob, _outcomes) = Outbox::new(store, channels, cfg(), Arc::new(SystemClock));
        let leads = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = leads.clone();
        ob.guard_sends(Arc::new(move || guard.load(std::sync::atomic::Ordering::SeqCst)));
        let mut n = crate::notify::sample_notification();
        n.id = "7/1".into();
        ob.enqueue(n).await.unwrap();
        let worker = ob.start();
        let mut deposed = ob.deposed();
        tokio::time::timeout(Duration::from_secs(10), deposed.wait_for(|d| *d)).await.unwrap().unwrap();
        worker.stop().await;
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 0, "sent past the guard");
        let entry = ob.entry("7/1").await.unwrap().expect("still stored");
        assert_eq!(entry.state, EntryState::Pending, "left for the next leader");
    }

    #[test]
    fn corrupt_entry_is_reported_not_fatal() {
        let (_dir, store) = sled_store();
        store.insert_new(&entry("good")).unwrap();
        store.tree.insert(b"p/bad", b"{not json".to_vec()).unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(pending.len(), 2);
        let bad = pending.iter().find(|e| e.is_err()).unwrap();
        assert!(bad.as_ref().unwrap_err().to_string().contains("p/bad"));
    }
}

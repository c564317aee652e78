//! The leader's evaluator (HA design, section 3 "Evaluator"): feeds every stored batch to the
//! fault engine and the patch service exactly once, in sequence order per (host, spool epoch).
//!
//! With several collectors on one database every node stores what its agents send
//! (`store::pg::PgBatches`), and only the leader evaluates. It reads by cursor: per (host,
//! epoch) the last evaluated seq, kept in the tree `eval_cursor` of the leader's own
//! [`Storage`], the same one that holds the engine's and the patches' state. So one flush
//! commits the engine's changes together with the cursor advance that caused them: after a
//! crash or a failover the next leader continues from what the previous one committed (on
//! PostgreSQL that flush is fenced by the leader's term, so a deposed leader commits nothing).
//!
//! A round ([`Evaluator::run_once`]) reads the heads, fetches what is behind the cursors of
//! all streams with work in one query, decides with [`plan_stream`] (pure) which batches are
//! next, reads the pending agent statuses, evaluates them all with `now` = the time each was
//! received (a catch-up after a failover is not silence), flushes once and only then hands
//! on the transitions. Every read of a round comes before it changes anything, so a failed
//! read (a statement timeout under load) is retried a second later by [`spawn`]; only a
//! failure once memory may be ahead of the store (evaluating, the flush) or a lost lease
//! stops the process.
//!
//! Agent statuses (`pikett_agent_status`, no seq) are consumed the same way: the id of each
//! evaluated status goes into the tree `eval_statuses` with the engine's changes, so a status
//! read but not committed is read and evaluated again, and one committed never is. Only after
//! that flush are the rows deleted (fenced by the lease), and only after the delete do their
//! ids leave the tree (durable with a later flush), which keeps the tree bounded. A crash in
//! between leaves ids whose rows are gone or still there: both harmless, as a consumed id is
//! never evaluated again and the next leader deletes the rows first.
//!
//! The one window left: other tasks (the clock tick, the pager, a staff action) flush the
//! same storage at any time. Each batch's cursor (or status id) is written right after that
//! batch's engine changes, in the same blocking task, so a flush that cuts in commits at most
//! the batch being evaluated without its cursor. A crash before the evaluator's own flush then
//! evaluates that one batch again: it repeats one result (one more result of a check, a
//! dropped count counted twice), never skips one.
//!
//! A host's time never goes backwards (each batch and status is evaluated with `now` = its
//! received time): a status of a host that still has batches unevaluated after the round (a
//! stream held for a gap, cut by a read limit, or not read) waits, unconsumed, for the round
//! that evaluates the rest of them, where it is merged with them by time. A host with several
//! streams behind (the agent started a new spool epoch while batches of the old one are
//! unread; epochs are random numbers) has one evaluated at a time: the one whose oldest
//! unevaluated batch was received first, as last read (`Evaluator::stream_roles`).
//!
//! Gaps: a missing seq holds its (host, epoch) for `gap_grace` (long enough for any insert in
//! flight to have committed or aborted), then is skipped and counted
//! (`pikett_eval_gaps_total`). A skipped seq that is stored after all is never evaluated;
//! it is counted (`pikett_batches_late_total`, expected 0) while the range is watched. While a
//! stream is held only the missing seq's presence is read (no payloads), and watched ranges
//! are read as seqs only.
//!
//! Tree `eval_cursor`: host \0 epoch (u64 BE) → last evaluated seq (u64 BE). A cursor whose
//! (host, epoch) has no head any more (retention deletes the heads of old epochs once all
//! their batches are gone) is dropped, at most [`CURSOR_DROPS`] a round.
//! Tree `eval_drops`: host → [`DropState`] (JSON), the `agent/data-dropped` state that the
//! sled writer keeps in the host registry.
//! Tree `eval_statuses`: status id (u64 BE) → nothing, the consumed agent statuses whose rows
//! may not be deleted yet.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use pikett_core::faults::Transition;
use pikett_core::hosts::{DataDropped, HostRecord};
use pikett_proto::received::ReceivedBatch;
use tokio::sync::{Notify, mpsc, watch};

use crate::services::faults::FaultService;
use crate::services::metrics::Metrics;
use crate::services::patches::PatchService;
use crate::store::pg::{Head, PendingBatch, PgBatches};
use crate::store::{Storage, StoreError, Tree, WriteBatch};

/// Most batches one round evaluates (bounds the time between flushes during a catch-up).
const ROUND_BATCHES: usize = 4096;
/// Most batches fetched for one (host, epoch) in one round.
const STREAM_BATCHES: usize = 512;
/// Most agent statuses evaluated in one round (rare: agents send them only when their spool
/// cannot take a batch, e.g. a full disk).
const ROUND_STATUSES: usize = 1024;
/// A round runs at least this often without a wake-up (other nodes' commits).
const IDLE_ROUND: Duration = Duration::from_millis(200);
/// How long a skipped range is watched for batches stored late (for the metric only).
const LATE_WATCH: Duration = Duration::from_secs(300);
/// Most seqs of one watched range read back in one round.
const LATE_READ: usize = 256;
/// How long the task waits before it retries a round whose reads failed.
const READ_RETRY: Duration = Duration::from_secs(1);
/// Most cursors of vanished (host, epoch) streams dropped in one round.
const CURSOR_DROPS: usize = 1024;

/// One stream's read: (host, epoch, after seq, at most).
pub type StreamRead<'a> = (&'a str, u64, u64, usize);
/// One range of seqs: (host, epoch, lowest, highest), inclusive.
pub type SeqRange<'a> = (&'a str, u64, u64, u64);

/// Where the evaluator reads stored batches: `PgBatches`, or a fake in tests.
#[async_trait]
pub trait PendingSource: Send + Sync {
    /// Every (host, epoch) with its highest stored seq.
    async fn heads(&self) -> Result<Vec<Head>, StoreError>;
    /// Per read, the stored batches of its (host, epoch) with seq above its `after`,
    /// ascending, at most its limit; one list per read, in order, in one round trip.
    async fn after_many(&self, reads: &[StreamRead<'_>]) -> Result<Vec<Vec<PendingBatch>>, StoreError>;
    /// Per range, the seqs stored in it, ascending, at most `limit`; one list per range, in
    /// order, in one round trip, without payloads.
    async fn seqs_many(&self, ranges: &[SeqRange<'_>], limit: usize) -> Result<Vec<Vec<u64>>, StoreError>;
    /// At most `limit` agent statuses, by id, without taking them.
    async fn read_statuses(&self, limit: usize) -> Result<Vec<PendingBatch>, StoreError>;
    /// Deletes the agent statuses `ids` (those gone already are ignored), fenced by the lease.
    async fn delete_statuses(&self, node: &str, term: i64, ids: &[u64]) -> Result<(), StoreError>;
}

#[async_trait]
impl PendingSource for PgBatches {
    async fn heads(&self) -> Result<Vec<Head>, StoreError> {
        PgBatches::heads(self).await
    }
    async fn after_many(&self, reads: &[StreamRead<'_>]) -> Result<Vec<Vec<PendingBatch>>, StoreError> {
        PgBatches::after_many(self, reads).await
    }
    async fn seqs_many(&self, ranges: &[SeqRange<'_>], limit: usize) -> Result<Vec<Vec<u64>>, StoreError> {
        PgBatches::seqs_many(self, ranges, limit).await
    }
    async fn read_statuses(&self, limit: usize) -> Result<Vec<PendingBatch>, StoreError> {
        PgBatches::read_statuses(self, limit).await
    }
    async fn delete_statuses(&self, node: &str, term: i64, ids: &[u64]) -> Result<(), StoreError> {
        PgBatches::delete_statuses(self, node, term, ids).await
    }
}

// ---------------------------------------------------------------------------------------------
// Pure logic.

/// A (host, epoch) waiting for `missing` since `since` (monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    pub missing: u64,
    pub since: Instant,
}

/// What to do with one (host, epoch) in this round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StreamPlan {
    /// The seqs to evaluate now, ascending, each once.
    pub evaluate: Vec<u64>,
    /// The cursor after them (the last seq evaluated or skipped).
    pub cursor: u64,
    /// Ranges of missing seqs given up on (inclusive), each one gap.
    pub skipped: Vec<(u64, u64)>,
    /// The gap still waited for, if any.
    pub hold: Option<Hold>,
}

/// Decides which of the `fetched` seqs of one (host, epoch) to evaluate now: those strictly
/// consecutive from `cursor + 1` (a new stream has cursor 0, so it starts at 1). A missing seq
/// is held until it has been missed for `grace` (`hold` is what the previous round kept),
/// then skipped. `head` is the highest seq stored: when nothing above the cursor could be
/// fetched although the head is above it (the batches are gone), that is a gap up to the head,
/// so the stream never waits forever. Seqs at or below the cursor are never evaluated again;
/// `fetched` may hold them, duplicates, and any order.
pub(crate) fn plan_stream(
    cursor: u64,
    fetched: &[u64],
    head: u64,
    hold: Option<Hold>,
    now: Instant,
    grace: Duration,
) -> StreamPlan {
    let mut seqs: Vec<u64> = fetched.iter().copied().filter(|&s| s > cursor).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut plan = StreamPlan { cursor, ..StreamPlan::default() };
    // Whether a gap starting at `missing` has been waited for long enough; if not, holds it.
    let give_up = |missing: u64, plan: &mut StreamPlan| -> bool {
        match hold {
            Some(h) if h.missing == missing && now.saturating_duration_since(h.since) >= grace => true,
            Some(h) if h.missing == missing => {
                plan.hold = Some(h);
                false
            }
            // A new gap (or another one than last round's): the wait starts now.
            _ => {
                plan.hold = Some(Hold { missing, since: now });
                false
            }
        }
    };
    for s in seqs {
        let expected = plan.cursor + 1;
        if s > expected {
            if !give_up(expected, &mut plan) {
                return plan;
            }
            plan.skipped.push((expected, s - 1));
        }
        plan.evaluate.push(s);
        plan.cursor = s;
    }
    if plan.evaluate.is_empty() && head > plan.cursor && give_up(plan.cursor + 1, &mut plan) {
        plan.skipped.push((plan.cursor + 1, head));
        plan.cursor = head;
    }
    plan
}

/// Orders the ready batches of every stream (each already in seq order) and the statuses into
/// one list by received time, keeping each stream's order: the engine sees time move forward
/// as far as the streams allow.
pub(crate) fn merge_by_time(streams: Vec<Vec<PendingBatch>>) -> Vec<PendingBatch> {
    let total = streams.iter().map(Vec::len).sum();
    let mut iters: Vec<std::vec::IntoIter<PendingBatch>> = streams.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<PendingBatch>> = iters.iter_mut().map(Iterator::next).collect();
    let mut queue: BinaryHeap<Reverse<(i64, usize)>> =
        heads.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| Reverse((b.received_ms, i)))).collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = queue.pop() {
        if let Some(b) = heads[i].take() {
            out.push(b);
        }
        heads[i] = iters[i].next();
        if let Some(b) = &heads[i] {
            queue.push(Reverse((b.received_ms, i)));
        }
    }
    out
}

/// The `agent/data-dropped` state of one host (the fields of [`HostRecord`] that
/// [`HostRecord::record_drops`] uses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropState {
    pub dropped_samples: u64,
    pub dropped_other: u64,
    pub last_drop_ms: i64,
}

impl DropState {
    /// [`HostRecord::record_drops`] on this state, so the decision is exactly the sled writer's.
    pub fn record(&mut self, samples: u64, other: u64, now_ms: i64) -> Option<DataDropped> {
        let mut rec = HostRecord {
            dropped_samples: self.dropped_samples,
            dropped_other: self.dropped_other,
            last_drop_ms: self.last_drop_ms,
            ..HostRecord::default()
        };
        let out = rec.record_drops(samples, other, now_ms);
        *self = DropState {
            dropped_samples: rec.dropped_samples,
            dropped_other: rec.dropped_other,
            last_drop_ms: rec.last_drop_ms,
        };
        out
    }
}

/// Feeds one stored batch (or agent status) to the fault engine and the patch service: its
/// checks and samples, its `patches` inventory, its `agent/data-dropped` result and, for a new
/// batch, `host/too-many-series`. The one place this is decided, for the sled writer and the
/// evaluator alike. Writes the changed state (not flushed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_request(
    faults: &FaultService,
    patches: &PatchService,
    host: &str,
    customer: &str,
    batch: &ReceivedBatch,
    data_dropped: Option<&DataDropped>,
    new_batch: bool,
    series_over_limit: u64,
    now: Timestamp,
) -> Vec<Transition> {
    let mut changes = faults.ingest(host, customer, batch, now);
    if let Some(input) = patches.ingest(host, customer, batch.head(), now) {
        changes.extend(faults.with_engine(|e| e.check_result(input, now)));
    }
    if let Some((warning, summary)) = data_dropped {
        changes.extend(faults.data_dropped(host, customer, *warning, summary, now));
    }
    if new_batch {
        changes.extend(faults.series_limit(host, customer, series_over_limit, now));
    }
    changes
}

fn cursor_key(host: &str, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 9);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn parse_cursor(k: &[u8], v: &[u8]) -> Option<((String, u64), u64)> {
    let split = k.len().checked_sub(9)?;
    if k[split] != 0 {
        return None;
    }
    let host = std::str::from_utf8(&k[..split]).ok()?.to_string();
    let epoch = u64::from_be_bytes(k[split + 1..].try_into().ok()?);
    let seq = u64::from_be_bytes(v.try_into().ok()?);
    Some(((host, epoch), seq))
}

// ---------------------------------------------------------------------------------------------
// The evaluator (I/O).

/// What the evaluator needs; see [`Evaluator::open`].
pub struct EvaluatorParts {
    pub batches: Arc<dyn PendingSource>,
    /// The leader's storage (on PostgreSQL fenced by `term`).
    pub storage: Arc<dyn Storage>,
    pub faults: Arc<FaultService>,
    pub patches: Arc<PatchService>,
    pub metrics: Arc<Metrics>,
    pub transitions: mpsc::UnboundedSender<Vec<Transition>>,
    /// This node and its leader term (consumed agent statuses are deleted under the lease).
    pub node: String,
    pub term: i64,
    pub gap_grace: Duration,
    /// Notified after each commit of the local writer: run a round now (other nodes' commits
    /// are found by the round every [`IDLE_ROUND`]; there is no NOTIFY). Use
    /// `notify_one`, which keeps a permit while a round runs, so no wake-up is lost.
    pub wake: Arc<Notify>,
}

type StreamKey = (String, u64);

/// What a round does with a stream of a host that has several behind (see `stream_roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Read its first unevaluated batch only, for its received time; evaluate nothing.
    Learn,
    /// Neither read nor evaluated: another stream of the host is older.
    Wait,
}

/// A skipped range watched for batches stored late.
struct Watch {
    lo: u64,
    hi: u64,
    until: Instant,
    counted: BTreeSet<u64>,
}

/// The leader's evaluator: its cursors, drop states and gap holds in memory, mirrored in the
/// trees of the leader's storage. Built at takeover ([`Evaluator::open`]), driven by [`spawn`].
pub struct Evaluator {
    parts: EvaluatorParts,
    cursor_tree: Arc<dyn Tree>,
    drops_tree: Arc<dyn Tree>,
    status_tree: Arc<dyn Tree>,
    /// host → epoch → cursor (by host first, so a lookup by `&str` allocates nothing).
    cursors: HashMap<String, HashMap<u64, u64>>,
    /// For hosts with more than one stream behind: per stream, the received time of its
    /// oldest unevaluated batch, as last read (see `stream_roles`).
    oldest: HashMap<StreamKey, i64>,
    /// The ids in `eval_statuses`: consumed statuses whose rows may still be there.
    consumed: BTreeSet<u64>,
    /// Whether `consumed` holds ids not flushed yet (their rows must stay until they are).
    unflushed: bool,
    holds: HashMap<StreamKey, Hold>,
    drops: HashMap<String, DropState>,
    watches: HashMap<StreamKey, Vec<Watch>>,
    /// The heads read by the last round that got past its reads (`None` before the first).
    last_heads: Option<Vec<Head>>,
    /// Whether the last round left work it could have done (a limit cut it short).
    more: bool,
    /// Where in the heads the next round starts (see `run_once`).
    start: usize,
    /// Whether memory may be ahead of the store: set once a round starts changing state,
    /// cleared by its flush. A round that fails while it is set must stop the process; one
    /// that failed before (a read) is retried.
    ahead: bool,
}

/// One evaluated round's input for the blocking part.
struct Work {
    items: Vec<PendingBatch>,
    drops: HashMap<String, DropState>,
    cursor_tree: Arc<dyn Tree>,
    drops_tree: Arc<dyn Tree>,
    status_tree: Arc<dyn Tree>,
}

#[derive(Debug, thiserror::Error)]
enum EvalError {
    #[error("the evaluation task failed: {0}")]
    Task(String),
    #[error("eval_drops record of {host}: {source}")]
    Corrupt { host: String, source: serde_json::Error },
}

impl From<EvalError> for StoreError {
    fn from(e: EvalError) -> StoreError {
        StoreError::Engine(e.to_string())
    }
}

impl Evaluator {
    /// Loads the cursors, the drop states and the consumed statuses from `parts.storage`.
    pub fn open(parts: EvaluatorParts) -> Result<Evaluator, StoreError> {
        let cursor_tree = parts.storage.tree("eval_cursor")?;
        let drops_tree = parts.storage.tree("eval_drops")?;
        let status_tree = parts.storage.tree("eval_statuses")?;
        let mut cursors: HashMap<String, HashMap<u64, u64>> = HashMap::new();
        let mut streams = 0;
        for item in cursor_tree.iter() {
            let (k, v) = item?;
            match parse_cursor(&k, &v) {
                Some(((host, epoch), seq)) => {
                    cursors.entry(host).or_default().insert(epoch, seq);
                    streams += 1;
                }
                None => {
                    return Err(StoreError::Engine(format!(
                        "eval_cursor: malformed record {}",
                        String::from_utf8_lossy(&k)
                    )));
                }
            }
        }
        let mut drops = HashMap::new();
        for item in drops_tree.iter() {
            let (k, v) = item?;
            let host = String::from_utf8_lossy(&k).into_owned();
            let state: DropState =
                serde_json::from_slice(&v).map_err(|source| EvalError::Corrupt { host: host.clone(), source })?;
            drops.insert(host, state);
        }
        let mut consumed = BTreeSet::new();
        for item in status_tree.iter() {
            let (k, _) = item?;
            let id = <[u8; 8]>::try_from(k.as_slice())
                .map_err(|_| StoreError::Engine(format!("eval_statuses: malformed key of {} bytes", k.len())))?;
            consumed.insert(u64::from_be_bytes(id));
        }
        tracing::info!(streams, consumed = consumed.len(), term = parts.term, "evaluator opened");
        Ok(Evaluator {
            parts,
            cursor_tree,
            drops_tree,
            status_tree,
            cursors,
            oldest: HashMap::new(),
            consumed,
            unflushed: false,
            holds: HashMap::new(),
            drops,
            watches: HashMap::new(),
            last_heads: None,
            more: false,
            start: 0,
            ahead: false,
        })
    }

    /// The last evaluated (or skipped) seq of `host`'s spool `epoch`; 0 for none.
    pub fn cursor(&self, host: &str, epoch: u64) -> u64 {
        self.cursors.get(host).and_then(|e| e.get(&epoch)).copied().unwrap_or(0)
    }

    fn set_cursor(&mut self, host: &str, epoch: u64, seq: u64) {
        match self.cursors.get_mut(host) {
            Some(epochs) => {
                epochs.insert(epoch, seq);
            }
            None => {
                self.cursors.insert(host.to_string(), HashMap::from([(epoch, seq)]));
            }
        }
    }

    fn remove_cursor(&mut self, host: &str, epoch: u64) {
        if let Some(epochs) = self.cursors.get_mut(host) {
            epochs.remove(&epoch);
            if epochs.is_empty() {
                self.cursors.remove(host);
            }
        }
    }

    /// Whether every cursor has reached `target`'s seq for its (host, epoch), as of the heads
    /// of the last round that read them. A (host, epoch) whose head is gone counts as reached:
    /// retention deleted it with every batch of it (it runs during a catch-up too), and its
    /// cursor was dropped, so nothing of it is left to evaluate (without this, a takeover
    /// whose first heads held an old epoch could never start its clock).
    fn covers(&self, target: &[Head]) -> bool {
        let live: HashSet<(&str, u64)> = self.last_heads.iter().flatten().map(|h| (h.host.as_str(), h.epoch)).collect();
        target
            .iter()
            .all(|h| self.cursor(&h.host, h.epoch) >= h.last_seq || !live.contains(&(h.host.as_str(), h.epoch)))
    }

    /// Which streams of a host with more than one stream behind may be evaluated. A host's
    /// time must not go backwards (its checks and faults are evaluated with `now` = each
    /// batch's received time), but spool epochs are random numbers, so which stream is older
    /// is read from the batches: `oldest` keeps, per stream, the received time of its oldest
    /// unevaluated batch as last read. While a stream's is unknown, every stream of that host
    /// without it is read once, one batch (`Learn`), and nothing of the host is evaluated;
    /// then only the stream with the oldest is (`Wait` for the others, which are not read),
    /// until it is caught up or another one's next batch is older. A host with one stream
    /// behind (the usual case) is not restricted.
    fn stream_roles(&mut self, heads: &[Head]) -> HashMap<usize, Role> {
        let mut behind: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, h) in heads.iter().enumerate() {
            if h.last_seq > self.cursor(&h.host, h.epoch) {
                behind.entry(h.host.as_str()).or_default().push(i);
            }
        }
        let mut roles = HashMap::new();
        let mut keep: HashSet<StreamKey> = HashSet::new();
        for streams in behind.values().filter(|v| v.len() > 1) {
            let known: Vec<(i64, u64, usize)> = streams
                .iter()
                .filter_map(|&i| {
                    let key = (heads[i].host.clone(), heads[i].epoch);
                    let t = self.oldest.get(&key).copied();
                    keep.insert(key);
                    t.map(|t| (t, heads[i].epoch, i))
                })
                .collect();
            if known.len() < streams.len() {
                for &i in streams {
                    let role = if known.iter().any(|k| k.2 == i) { Role::Wait } else { Role::Learn };
                    roles.insert(i, role);
                }
            } else if let Some(&(_, _, active)) = known.iter().min() {
                for &i in streams.iter().filter(|&&i| i != active) {
                    roles.insert(i, Role::Wait);
                }
            }
        }
        self.oldest.retain(|k, _| keep.contains(k));
        roles
    }

    /// One round at `now` (monotonic: the gap holds); see the module doc. Returns how many
    /// batches and statuses it evaluated. Every read comes first, before any state changes:
    /// an error then leaves memory as it was ([`Evaluator::must_stop`] says false) and the
    /// round can be retried. An error after that (evaluating, the flush) leaves memory ahead
    /// of the store: the caller stops the process (`storage_failure::stop`).
    pub async fn run_once(&mut self, now: Instant) -> Result<usize, StoreError> {
        let source = self.parts.batches.clone();
        let grace = self.parts.gap_grace;
        let heads = source.heads().await?;

        // Streams held for a missing seq within the grace: only whether that seq has come is
        // read (no payloads); the batches behind the gap are fetched once it has.
        let held = if self.holds.is_empty() { 0 } else { heads.len() };
        let waiting: Vec<usize> = (0..held)
            .filter(|&i| {
                let head = &heads[i];
                let cursor = self.cursor(&head.host, head.epoch);
                let key = (head.host.clone(), head.epoch);
                head.last_seq > cursor
                    && self
                        .holds
                        .get(&key)
                        .is_some_and(|h| h.missing == cursor + 1 && now.saturating_duration_since(h.since) < grace)
            })
            .collect();
        let still_missing: HashSet<usize> = if waiting.is_empty() {
            HashSet::new()
        } else {
            let ranges: Vec<SeqRange<'_>> = waiting
                .iter()
                .map(|&i| {
                    let h = &heads[i];
                    let missing = self.cursor(&h.host, h.epoch) + 1;
                    (h.host.as_str(), h.epoch, missing, missing)
                })
                .collect();
            let found = source.seqs_many(&ranges, 1).await?;
            waiting.iter().zip(found).filter(|(_, f)| f.is_empty()).map(|(&i, _)| i).collect()
        };

        // Hosts with several streams behind: which of them wait (see `stream_roles`).
        let roles = self.stream_roles(&heads);

        // The streams to fetch, each with its share of the round's budget, from where the last
        // round cut short.
        let mut budget = ROUND_BATCHES;
        let mut more = false;
        let mut next_start = 0;
        let start = if self.start < heads.len() { self.start } else { 0 };
        let mut picked: Vec<(usize, u64, usize)> = Vec::new();
        for i in 0..heads.len() {
            let at = (start + i) % heads.len();
            let head = &heads[at];
            let cursor = self.cursor(&head.host, head.epoch);
            let role = roles.get(&at).copied();
            if head.last_seq <= cursor || still_missing.contains(&at) || role == Some(Role::Wait) {
                continue;
            }
            if budget == 0 {
                more = true;
                next_start = at;
                break;
            }
            // Charged what the head says is behind the cursor (all of it, without gaps), so
            // the streams after it get the rest; a round can pass the budget by the batches
            // stored since the heads were read.
            let limit = if role == Some(Role::Learn) { 1 } else { STREAM_BATCHES.min(budget) };
            let behind = usize::try_from(head.last_seq - cursor).unwrap_or(usize::MAX);
            budget -= limit.min(behind);
            picked.push((at, cursor, limit));
        }
        let reads: Vec<StreamRead<'_>> = picked
            .iter()
            .map(|&(at, cursor, limit)| (heads[at].host.as_str(), heads[at].epoch, cursor, limit))
            .collect();
        let fetched_all = if reads.is_empty() { Vec::new() } else { source.after_many(&reads).await? };
        // Consumed statuses whose rows are still there come first by id (or anywhere, when a
        // lower id committed late): read past them.
        let status_limit = ROUND_STATUSES + self.consumed.len();
        let read = source.read_statuses(status_limit).await?;
        let late = self.read_late(now).await?;

        // From here on, the round changes state.
        self.ahead = true;
        self.start = next_start;
        let statuses_full = read.len() >= status_limit;
        self.count_late(late);
        // Hosts with batches left unevaluated after this round (held for a gap, cut by a
        // limit, waiting for another stream, or not read): their statuses wait (below).
        let evaluated_now: HashSet<usize> =
            picked.iter().map(|p| p.0).filter(|at| !matches!(roles.get(at), Some(Role::Learn))).collect();
        let mut behind_hosts: HashSet<&str> = heads
            .iter()
            .enumerate()
            .filter(|&(i, h)| !evaluated_now.contains(&i) && h.last_seq > self.cursor(&h.host, h.epoch))
            .map(|(_, h)| h.host.as_str())
            .collect();
        let mut streams: Vec<Vec<PendingBatch>> = Vec::new();
        let mut advanced: Vec<(StreamKey, u64)> = Vec::new();
        for (&(at, cursor, limit), fetched) in picked.iter().zip(fetched_all) {
            let head = &heads[at];
            let key = (head.host.clone(), head.epoch);
            let first_after =
                |after: u64| fetched.iter().filter(|b| b.seq > after).min_by_key(|b| b.seq).map(|b| b.received_ms);
            if roles.get(&at) == Some(&Role::Learn) {
                // Read only to learn its oldest batch's time (none readable: the batches are
                // gone, first, so its gap is skipped); evaluated from the next round on.
                self.oldest.insert(key, first_after(cursor).unwrap_or(i64::MIN));
                more = true;
                continue;
            }
            let seqs: Vec<u64> = fetched.iter().map(|b| b.seq).collect();
            let plan = plan_stream(cursor, &seqs, head.last_seq, self.holds.get(&key).copied(), now, grace);
            // A full read leaves more to do at once, unless the stream waits for a gap (then
            // another round at once would only read the same batches again).
            if fetched.len() >= limit && plan.hold.is_none() {
                more = true;
            }
            match plan.hold {
                Some(h) => {
                    if self.holds.get(&key) != Some(&h) {
                        tracing::debug!(host = %head.host, epoch = head.epoch, missing = h.missing, "holding for a missing batch");
                    }
                    self.holds.insert(key.clone(), h);
                }
                None => {
                    self.holds.remove(&key);
                }
            }
            for &(lo, hi) in &plan.skipped {
                tracing::warn!(
                    host = %head.host,
                    epoch = head.epoch,
                    from = lo,
                    to = hi,
                    "batches missing for longer than gap_grace: skipped, never evaluated"
                );
                self.parts.metrics.eval_gaps_total.inc();
                self.watches.entry(key.clone()).or_default().push(Watch {
                    lo,
                    hi,
                    until: now + LATE_WATCH,
                    counted: BTreeSet::new(),
                });
            }
            let left_behind = plan.cursor < head.last_seq;
            if left_behind {
                behind_hosts.insert(head.host.as_str());
            }
            if self.oldest.contains_key(&key) {
                // The active stream of a host with several behind: its next batch's time (or,
                // unread, the last one evaluated); forgotten once it is caught up.
                if left_behind {
                    let last = plan.evaluate.last().and_then(|s| fetched.iter().find(|b| b.seq == *s));
                    let t = first_after(plan.cursor).or(last.map(|b| b.received_ms)).unwrap_or(i64::MIN);
                    self.oldest.insert(key.clone(), t);
                } else {
                    self.oldest.remove(&key);
                }
            }
            if plan.cursor != cursor {
                advanced.push((key, plan.cursor));
            }
            // Each planned seq once, from the first copy fetched.
            let mut ready = Vec::with_capacity(plan.evaluate.len());
            let mut by_seq: HashMap<u64, PendingBatch> = HashMap::with_capacity(fetched.len());
            for b in fetched {
                by_seq.entry(b.seq).or_insert(b);
            }
            for s in &plan.evaluate {
                if let Some(b) = by_seq.remove(s) {
                    ready.push(b);
                }
            }
            if !ready.is_empty() {
                streams.push(ready);
            }
        }
        // Each status is a stream of its own: they are independent of each other's order. A
        // status (no seq) of a host with batches left unevaluated waits (not consumed, read
        // again) until the round that evaluates the rest of that host's streams: there it is
        // merged with them by received time, so the host's time never goes backwards (a
        // status received after batches still unread would otherwise come first).
        let statuses: Vec<PendingBatch> = read
            .into_iter()
            .filter(|s| !self.consumed.contains(&s.id) && !behind_hosts.contains(s.host.as_str()))
            .collect();
        // A full read leaves more, unless every status in it waits (no round at once then).
        if statuses_full && !statuses.is_empty() {
            more = true;
        }
        streams.extend(statuses.into_iter().map(|s| vec![s]));
        let items = merge_by_time(streams);
        let evaluated = items.len();

        // Writes each batch's cursor and each status's id right after its changes.
        let changes = if items.is_empty() { Vec::new() } else { self.evaluate(items).await? };
        // Cursors of streams whose heads retention deleted (old epochs, every batch gone).
        let vanished = self.vanished(&heads);
        if !advanced.is_empty() || !vanished.is_empty() {
            // The cursors past skipped seqs (those of evaluated batches are written already).
            let mut wb = WriteBatch::default();
            for ((host, epoch), seq) in &advanced {
                wb.insert(cursor_key(host, *epoch), seq.to_be_bytes().to_vec());
            }
            for (host, epoch) in &vanished {
                wb.remove(cursor_key(host, *epoch));
            }
            self.cursor_tree.apply(wb)?;
            for ((host, epoch), seq) in &advanced {
                self.set_cursor(host, *epoch, *seq);
            }
            for key in &vanished {
                self.remove_cursor(&key.0, key.1);
                self.holds.remove(key);
                self.watches.remove(key);
                self.oldest.remove(key);
            }
        }
        if evaluated > 0 || !advanced.is_empty() || !vanished.is_empty() || self.unflushed {
            // The engine's changes, the cursors and the consumed status ids commit together
            // (up to the one batch another task's flush may cut; see the module doc).
            self.parts.storage.flush().await?;
            self.unflushed = false;
            if !changes.is_empty() {
                let _ = self.parts.transitions.send(changes);
            }
        }
        self.ahead = false;
        let backlog: u64 = heads.iter().map(|h| h.last_seq.saturating_sub(self.cursor(&h.host, h.epoch))).sum();
        self.parts.metrics.eval_backlog_batches.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.last_heads = Some(heads);
        self.more = more;
        self.delete_consumed().await?;
        Ok(evaluated)
    }

    /// Whether a failed round must stop the process: memory is ahead of the store (the
    /// round failed after it began to change state), or the lease is lost. Otherwise (a read,
    /// or the delete of consumed statuses after the flush) the round can be retried.
    pub fn must_stop(&self, error: &StoreError) -> bool {
        self.ahead || matches!(error, StoreError::Fenced { .. })
    }

    /// At most [`CURSOR_DROPS`] streams with a cursor but no head any more (retention deleted
    /// the head of an old epoch once every batch of it was gone).
    fn vanished(&self, heads: &[Head]) -> Vec<StreamKey> {
        let live: HashSet<(&str, u64)> = heads.iter().map(|h| (h.host.as_str(), h.epoch)).collect();
        self.cursors
            .iter()
            .flat_map(|(host, epochs)| epochs.keys().map(move |&epoch| (host, epoch)))
            .filter(|&(host, epoch)| !live.contains(&(host.as_str(), epoch)))
            .take(CURSOR_DROPS)
            .map(|(host, epoch)| (host.clone(), epoch))
            .collect()
    }

    /// Evaluates `items` in order on a blocking thread (the engine is synchronous and CPU-bound);
    /// right after each one's engine changes writes its drop state and its cursor (a batch) or
    /// consumed id (a status), so a flush of another task commits at most one item's changes
    /// without them. Returns the transitions.
    async fn evaluate(&mut self, items: Vec<PendingBatch>) -> Result<Vec<Transition>, StoreError> {
        let faults = self.parts.faults.clone();
        let patches = self.parts.patches.clone();
        let work = Work {
            items,
            drops: std::mem::take(&mut self.drops),
            cursor_tree: self.cursor_tree.clone(),
            drops_tree: self.drops_tree.clone(),
            status_tree: self.status_tree.clone(),
        };
        let joined = tokio::task::spawn_blocking(move || {
            let Work { items, mut drops, cursor_tree, drops_tree, status_tree } = work;
            let mut changes = Vec::new();
            let mut consumed = Vec::new();
            let each = || -> Result<(), StoreError> {
                for item in items {
                    match <ReceivedBatch as prost::Message>::decode(item.payload.as_slice()) {
                        Ok(batch) => {
                            let now =
                                Timestamp::from_millisecond(item.received_ms).unwrap_or_else(|_| Timestamp::now());
                            let dropped = if item.status {
                                None
                            } else {
                                let state = drops.entry(item.host.clone()).or_default();
                                let before = *state;
                                let head = batch.head();
                                let out = state.record(head.dropped_samples, head.dropped_other, item.received_ms);
                                if *state != before {
                                    let json = serde_json::to_vec(state).map_err(|e| StoreError::Engine(e.to_string()))?;
                                    drops_tree.insert(item.host.as_bytes(), json)?;
                                }
                                out
                            };
                            changes.extend(evaluate_request(
                                &faults,
                                &patches,
                                &item.host,
                                &item.customer,
                                &batch,
                                dropped.as_ref(),
                                !item.status,
                                item.series_over_limit,
                                now,
                            ));
                        }
                        // Stored as received and decoded once already by the receiving node:
                        // only damage gets here, and it cannot be evaluated (but is consumed).
                        Err(e) => {
                            tracing::error!(host = %item.host, epoch = item.epoch, seq = item.seq, id = item.id, error = %e, "a stored batch or status does not decode: not evaluated");
                        }
                    }
                    // After the changes, never before: a flush cutting in between commits
                    // changes whose batch is evaluated again after a crash (one result
                    // repeated), never a cursor whose batch was not evaluated (one lost).
                    if item.status {
                        status_tree.insert(&item.id.to_be_bytes(), Vec::new())?;
                        consumed.push(item.id);
                    } else {
                        cursor_tree.insert(&cursor_key(&item.host, item.epoch), item.seq.to_be_bytes().to_vec())?;
                    }
                }
                Ok(())
            };
            let done = each();
            (done, changes, drops, consumed)
        })
        .await;
        let (done, changes, drops, consumed) = joined.map_err(|e| EvalError::Task(e.to_string()))?;
        self.drops = drops;
        self.unflushed |= !consumed.is_empty();
        self.consumed.extend(consumed);
        done?;
        Ok(changes)
    }

    /// Deletes the rows of the consumed statuses (each id in `eval_statuses` is committed:
    /// loaded at open, or written before this round's flush), then drops their ids from the
    /// tree; that removal is durable with a later flush.
    async fn delete_consumed(&mut self) -> Result<(), StoreError> {
        if self.consumed.is_empty() || self.unflushed {
            return Ok(());
        }
        let ids: Vec<u64> = self.consumed.iter().copied().collect();
        self.parts.batches.delete_statuses(&self.parts.node, self.parts.term, &ids).await?;
        let mut wb = WriteBatch::default();
        for id in &ids {
            wb.remove(id.to_be_bytes().to_vec());
        }
        self.status_tree.apply(wb)?;
        self.consumed.clear();
        Ok(())
    }

    /// Forgets the ranges watched long enough and reads which seqs of the others are stored
    /// (seqs only, one round trip); changes nothing else.
    async fn read_late(&mut self, now: Instant) -> Result<Vec<(StreamKey, usize, Vec<u64>)>, StoreError> {
        for watches in self.watches.values_mut() {
            watches.retain(|w| w.until > now);
        }
        self.watches.retain(|_, w| !w.is_empty());
        if self.watches.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<(StreamKey, usize)> = Vec::new();
        let mut ranges: Vec<SeqRange<'_>> = Vec::new();
        for ((host, epoch), watches) in &self.watches {
            for (i, w) in watches.iter().enumerate() {
                keys.push(((host.clone(), *epoch), i));
                ranges.push((host.as_str(), *epoch, w.lo, w.hi));
            }
        }
        let found = self.parts.batches.seqs_many(&ranges, LATE_READ).await?;
        Ok(keys.into_iter().zip(found).map(|((key, i), seqs)| (key, i, seqs)).collect())
    }

    /// Counts batches stored in skipped ranges after all (never evaluated), each once.
    fn count_late(&mut self, late: Vec<(StreamKey, usize, Vec<u64>)>) {
        for (key, i, seqs) in late {
            let Some(w) = self.watches.get_mut(&key).and_then(|w| w.get_mut(i)) else { continue };
            for seq in seqs.into_iter().filter(|&s| s >= w.lo && s <= w.hi) {
                if w.counted.insert(seq) {
                    tracing::warn!(host = %key.0, epoch = key.1, seq, "a batch was stored after it had been skipped: never evaluated");
                    self.parts.metrics.batches_late_total.inc();
                }
            }
        }
    }
}

/// Runs rounds: when woken, every [`IDLE_ROUND`], or at once while a round was cut short by
/// its limits. The returned watch turns `true` once the backlog found by the first round is
/// evaluated (the leader starts the clock tick only then: ticking earlier would open false
/// host-down faults for hosts whose batches are still queued). A round that failed in a read
/// (a timeout under load, a lost connection) is retried every [`READ_RETRY`], logged once; one
/// that failed with memory ahead of the store (the flush) or with the lease lost stops the
/// process (see `storage_failure`).
pub fn spawn(mut ev: Evaluator) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (caught_up_tx, caught_up) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let wake = ev.parts.wake.clone();
        let mut target: Option<Vec<Head>> = None;
        let mut failing = false;
        loop {
            let retry = match ev.run_once(Instant::now()).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("the evaluator reads the stored batches again");
                    false
                }
                Ok(_) => false,
                Err(e) if ev.must_stop(&e) => {
                    crate::services::storage_failure::stop("evaluating stored batches", &e);
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "the evaluator still cannot read the stored batches");
                    } else {
                        failing = true;
                        tracing::warn!(error = %e, "the evaluator cannot read the stored batches; retrying every second");
                    }
                    true
                }
            };
            // After a failed round too: one whose delete of consumed statuses failed has
            // committed its cursors all the same. The target is the heads of the first round
            // that read them.
            if !*caught_up_tx.borrow()
                && let Some(heads) = &ev.last_heads
            {
                let target = target.get_or_insert_with(|| heads.clone());
                if ev.covers(target) {
                    tracing::info!(term = ev.parts.term, "evaluator caught up with the stored batches");
                    caught_up_tx.send_replace(true);
                }
            }
            if retry {
                tokio::time::sleep(READ_RETRY).await;
            } else if !ev.more {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_ROUND) => {}
                }
            }
        }
    });
    (caught_up, handle)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use pikett_core::faults::{EngineConfig, FaultFilter, FaultsConfig, HostDeps};
    use pikett_core::patchday::PatchPolicy;
    use proptest::prelude::*;

    use super::*;
    use crate::store::SledStorage;
    use pikett_proto::v1 as pb;

    const GRACE: Duration = Duration::from_secs(10);

    // ---- pure ------------------------------------------------------------------------------

    #[test]
    fn consecutive_seqs_are_evaluated_and_the_rest_waits() {
        let t0 = Instant::now();
        let p = plan_stream(0, &[1, 2, 3], 3, None, t0, GRACE);
        assert_eq!((p.evaluate, p.cursor, p.hold), (vec![1, 2, 3], 3, None));
        // 3 visible before 2: only 1 now, 3 waits for 2.
        let p = plan_stream(0, &[3, 1], 3, None, t0, GRACE);
        assert_eq!((p.evaluate.clone(), p.cursor), (vec![1], 1));
        assert_eq!(p.hold, Some(Hold { missing: 2, since: t0 }));
        let p = plan_stream(1, &[2, 3], 3, p.hold, t0 + Duration::from_millis(5), GRACE);
        assert_eq!((p.evaluate, p.cursor, p.hold), (vec![2, 3], 3, None));
        // At or below the cursor, duplicated, unordered: nothing again.
        let p = plan_stream(3, &[3, 2, 1, 3], 3, None, t0, GRACE);
        assert_eq!((p.evaluate.len(), p.cursor, p.hold), (0, 3, None));
        let p = plan_stream(3, &[5, 4, 4, 5], 5, None, t0, GRACE);
        assert_eq!(p.evaluate, vec![4, 5]);
    }

    #[test]
    fn a_gap_is_held_for_the_grace_then_skipped() {
        let t0 = Instant::now();
        let p = plan_stream(1, &[4, 5], 5, None, t0, GRACE);
        assert!(p.evaluate.is_empty());
        assert_eq!(p.hold, Some(Hold { missing: 2, since: t0 }));
        // The hold keeps its start; just short of the grace it still waits.
        let held = plan_stream(1, &[4, 5], 5, p.hold, t0 + GRACE - Duration::from_millis(1), GRACE);
        assert_eq!((held.evaluate.len(), held.hold), (0, p.hold));
        let p = plan_stream(1, &[4, 5], 5, p.hold, t0 + GRACE, GRACE);
        assert_eq!((p.evaluate, p.cursor, p.skipped, p.hold), (vec![4, 5], 5, vec![(2, 3)], None));
        // A hold for another seq does not count: the wait starts again.
        let other = Some(Hold { missing: 7, since: t0 });
        let p = plan_stream(5, &[9], 9, other, t0 + GRACE, GRACE);
        assert_eq!(p.hold, Some(Hold { missing: 6, since: t0 + GRACE }));
    }

    #[test]
    fn a_spool_that_starts_above_one_and_vanished_batches_do_not_wait_forever() {
        let t0 = Instant::now();
        // A new epoch whose first batch is 40 (the agent lost its spool state).
        let p = plan_stream(0, &[40, 41], 41, None, t0, GRACE);
        assert_eq!(p.hold, Some(Hold { missing: 1, since: t0 }));
        let p = plan_stream(0, &[40, 41], 41, p.hold, t0 + GRACE, GRACE);
        assert_eq!((p.evaluate, p.skipped), (vec![40, 41], vec![(1, 39)]));
        // The head says 9 but nothing above 5 can be read (pruned): held, then up to the head.
        let p = plan_stream(5, &[], 9, None, t0, GRACE);
        assert_eq!((p.cursor, p.hold), (5, Some(Hold { missing: 6, since: t0 })));
        let p = plan_stream(5, &[], 9, p.hold, t0 + GRACE, GRACE);
        assert_eq!((p.cursor, p.skipped, p.hold), (9, vec![(6, 9)], None));
    }

    proptest! {
        /// Seqs 1..=n revealed in any order over rounds, with duplicates and re-reads below
        /// the cursor, and no grace passing: evaluated exactly once each, in order, and all
        /// once all are visible.
        #[test]
        fn every_seq_once_in_order_without_skips(
            n in 1u64..40,
            order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
            rounds in 1usize..12,
        ) {
            let t0 = Instant::now();
            let mut seqs: Vec<u64> = (1..=n).collect();
            // Deterministic shuffle from the drawn seed.
            let mut state = order | 1;
            for i in (1..seqs.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                seqs.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let per_round = seqs.len().div_ceil(rounds);
            let mut visible: Vec<u64> = Vec::new();
            let (mut cursor, mut hold, mut evaluated) = (0u64, None, Vec::new());
            for (r, chunk) in seqs.chunks(per_round).enumerate() {
                visible.extend_from_slice(chunk);
                let mut fetched = visible.clone();
                fetched.extend_from_slice(&visible); // duplicates
                let head = visible.iter().copied().max().unwrap_or(0);
                let p = plan_stream(cursor, &fetched, head, hold, t0 + Duration::from_millis(r as u64), GRACE);
                prop_assert!(p.skipped.is_empty());
                evaluated.extend(p.evaluate);
                cursor = p.cursor;
                hold = p.hold;
            }
            prop_assert_eq!(evaluated, (1..=n).collect::<Vec<_>>());
            prop_assert_eq!(hold, None);
        }

        /// With gaps that never fill and time passing: strictly increasing, never at or below
        /// the cursor, everything visible evaluated eventually, skipped ranges exactly the
        /// missing seqs.
        #[test]
        fn gaps_are_skipped_only_after_the_grace(
            present in proptest::collection::btree_set(1u64..60, 1..30),
            step_ms in 500u64..6_000,
        ) {
            let t0 = Instant::now();
            let fetched: Vec<u64> = present.iter().copied().collect();
            let head = *present.iter().next_back().unwrap_or(&0);
            let (mut cursor, mut hold, mut evaluated, mut skipped) = (0u64, None::<Hold>, Vec::new(), Vec::new());
            let mut now = t0;
            for _ in 0..2_000 {
                let p = plan_stream(cursor, &fetched, head, hold, now, GRACE);
                for &(lo, hi) in &p.skipped {
                    // Only after a hold on exactly that seq for the whole grace.
                    let h = hold.expect("skipped without a hold");
                    prop_assert_eq!(h.missing, lo);
                    prop_assert!(now.duration_since(h.since) >= GRACE);
                    skipped.extend(lo..=hi);
                }
                prop_assert!(p.evaluate.iter().all(|&s| s > cursor));
                evaluated.extend(p.evaluate);
                cursor = p.cursor;
                hold = p.hold;
                if cursor == head { break; }
                now += Duration::from_millis(step_ms);
            }
            prop_assert_eq!(&evaluated, &fetched);
            let missing: Vec<u64> = (1..=head).filter(|s| !present.contains(s)).collect();
            prop_assert_eq!(skipped, missing);
        }
    }

    proptest! {
        /// Whatever the times: every item once, each stream's own order kept.
        #[test]
        fn merging_is_a_permutation_that_keeps_stream_order(
            times in proptest::collection::vec(proptest::collection::vec(0i64..50, 0..8), 0..6),
        ) {
            let streams: Vec<Vec<PendingBatch>> = times
                .iter()
                .enumerate()
                .map(|(h, ts)| {
                    ts.iter()
                        .enumerate()
                        .map(|(i, &at)| pending(&format!("h{h}"), 1, i as u64 + 1, at, Vec::new(), 0))
                        .collect()
                })
                .collect();
            let out = merge_by_time(streams);
            prop_assert_eq!(out.len(), times.iter().map(Vec::len).sum::<usize>());
            for (h, ts) in times.iter().enumerate() {
                let seqs: Vec<u64> = out.iter().filter(|b| b.host == format!("h{h}")).map(|b| b.seq).collect();
                prop_assert_eq!(seqs, (1..=ts.len() as u64).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn merging_keeps_each_stream_in_order_and_time_forward() {
        let b = |host: &str, seq: u64, at: i64| PendingBatch {
            received_ms: at,
            ..pending(host, 1, seq, at, Vec::new(), 0)
        };
        let a = vec![b("a", 1, 10), b("a", 2, 5), b("a", 3, 30)];
        let c = vec![b("c", 1, 7), b("c", 2, 20)];
        let out: Vec<(String, u64)> = merge_by_time(vec![a, c]).into_iter().map(|b| (b.host, b.seq)).collect();
        let names: Vec<(&str, u64)> = out.iter().map(|(h, s)| (h.as_str(), *s)).collect();
        assert_eq!(names, vec![("c", 1), ("a", 1), ("a", 2), ("c", 2), ("a", 3)]);
    }

    #[test]
    fn drop_state_decides_as_the_host_record_does() {
        let mut rec = HostRecord::default();
        let mut st = DropState::default();
        for (samples, other, at) in
            [(0, 0, 1), (5, 1, 10), (0, 0, 20), (0, 0, 3_600_010), (0, 0, 3_600_011), (2, 0, 4_000_000)]
        {
            assert_eq!(st.record(samples, other, at), rec.record_drops(samples, other, at));
        }
        assert_eq!((st.dropped_samples, st.dropped_other, st.last_drop_ms), (7, 1, 4_000_000));
    }

    // ---- the evaluator on a fake source and sled ----------------------------------------------

    fn pending(host: &str, epoch: u64, seq: u64, at: i64, checks: Vec<pb::CheckResult>, dropped: u64) -> PendingBatch {
        let batch = pb::Batch { seq, checks, dropped_samples: dropped, ..Default::default() };
        PendingBatch {
            host: host.into(),
            customer: "acme".into(),
            epoch,
            seq,
            received_ms: at,
            payload: prost::Message::encode_to_vec(&batch),
            series_over_limit: 0,
            status: false,
            id: 0,
        }
    }

    const T0_MS: i64 = 1_800_000_000_000;

    /// Batch `seq` of h1/epoch 1: one CRITICAL check `c<seq>` (opens a fault: `for` is 1) and
    /// one dropped sample (so `eval_drops` counts evaluations).
    fn numbered(seq: u64) -> PendingBatch {
        let check = pb::CheckResult::new(format!("c{seq}"), pb::CheckStatus::Critical, "down".into(), T0_MS);
        pending("h1", 1, seq, T0_MS + seq as i64 * 1000, vec![check], 1)
    }

    /// Stored batches and statuses; `dup` returns each batch twice, `overlap` re-reads that
    /// many seqs below the asked one (a source that misbehaves must not cause re-evaluation).
    #[derive(Default)]
    struct Fake {
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        batches: BTreeMap<(String, u64, u64), PendingBatch>,
        statuses: Vec<PendingBatch>,
        /// `delete_statuses` fails (the rows stay).
        fail_delete: bool,
        dup: bool,
        overlap: u64,
        /// Batches (payloads) handed out by `after_many`.
        payloads_read: usize,
        /// How many more `heads` reads fail (a statement timeout under load).
        fail_heads: usize,
    }

    impl Fake {
        fn put(&self, b: PendingBatch) {
            let mut s = self.state.lock().unwrap();
            s.batches.insert((b.host.clone(), b.epoch, b.seq), b);
        }
    }

    #[async_trait]
    impl PendingSource for Fake {
        async fn heads(&self) -> Result<Vec<Head>, StoreError> {
            let mut s = self.state.lock().unwrap();
            if s.fail_heads > 0 {
                s.fail_heads -= 1;
                return Err(StoreError::Engine("canceling statement due to statement timeout".into()));
            }
            let mut heads: BTreeMap<(String, u64), u64> = BTreeMap::new();
            for (host, epoch, seq) in s.batches.keys() {
                let h = heads.entry((host.clone(), *epoch)).or_default();
                *h = (*h).max(*seq);
            }
            Ok(heads.into_iter().map(|((host, epoch), last_seq)| Head { host, epoch, last_seq }).collect())
        }
        async fn after_many(&self, reads: &[StreamRead<'_>]) -> Result<Vec<Vec<PendingBatch>>, StoreError> {
            let mut s = self.state.lock().unwrap();
            let mut all = Vec::new();
            for &(host, epoch, after, limit) in reads {
                let from = after.saturating_sub(s.overlap);
                let mut out = Vec::new();
                for ((h, e, seq), b) in &s.batches {
                    if h == host && *e == epoch && *seq > from {
                        out.push(b.clone());
                        if s.dup {
                            out.push(b.clone());
                        }
                    }
                }
                out.truncate(limit);
                s.payloads_read += out.len();
                all.push(out);
            }
            Ok(all)
        }
        async fn seqs_many(&self, ranges: &[SeqRange<'_>], limit: usize) -> Result<Vec<Vec<u64>>, StoreError> {
            let s = self.state.lock().unwrap();
            Ok(ranges
                .iter()
                .map(|&(host, epoch, lo, hi)| {
                    s.batches
                        .keys()
                        .filter(|(h, e, seq)| h == host && *e == epoch && (lo..=hi).contains(seq))
                        .map(|k| k.2)
                        .take(limit)
                        .collect()
                })
                .collect())
        }
        async fn read_statuses(&self, limit: usize) -> Result<Vec<PendingBatch>, StoreError> {
            let s = self.state.lock().unwrap();
            let mut out = s.statuses.clone();
            out.sort_unstable_by_key(|b| b.id);
            out.truncate(limit);
            Ok(out)
        }
        async fn delete_statuses(&self, _node: &str, _term: i64, ids: &[u64]) -> Result<(), StoreError> {
            let mut s = self.state.lock().unwrap();
            if s.fail_delete {
                return Err(StoreError::Engine("database gone".into()));
            }
            s.statuses.retain(|b| !ids.contains(&b.id));
            Ok(())
        }
    }

    /// Sled whose flush fails while `fail` is set.
    struct FlakyStorage {
        inner: SledStorage,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Storage for FlakyStorage {
        fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
            self.inner.tree(name)
        }
        async fn flush(&self) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Engine("disk on fire".into()));
            }
            self.inner.flush().await
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            self.inner.size_on_disk()
        }
    }

    struct Rig {
        ev: Evaluator,
        storage: Arc<FlakyStorage>,
        faults: Arc<FaultService>,
        metrics: Arc<Metrics>,
        transitions: mpsc::UnboundedReceiver<Vec<Transition>>,
    }

    fn engine_config() -> EngineConfig {
        EngineConfig::new(FaultsConfig { for_results: 1, ..FaultsConfig::default() }, Vec::new(), HostDeps::default())
            .unwrap()
    }

    fn rig(dir: &std::path::Path, source: Arc<dyn PendingSource>) -> Rig {
        let storage = Arc::new(FlakyStorage {
            inner: crate::store::sled_store::reopen_for_test(dir),
            fail: AtomicBool::new(false),
        });
        let faults = Arc::new(FaultService::open(storage.as_ref(), engine_config()).unwrap());
        let patches = Arc::new(PatchService::open(storage.as_ref(), PatchPolicy::default(), BTreeMap::new()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let (tx, transitions) = mpsc::unbounded_channel();
        let ev = Evaluator::open(EvaluatorParts {
            batches: source,
            storage: storage.clone(),
            faults: faults.clone(),
            patches,
            metrics: metrics.clone(),
            transitions: tx,
            node: "n1".into(),
            term: 1,
            gap_grace: GRACE,
            wake: Arc::new(Notify::new()),
        })
        .unwrap();
        Rig { ev, storage, faults, metrics, transitions }
    }

    /// The checks of h1's `c<seq>` faults, in the order they were opened (ids ascend).
    fn opened(faults: &FaultService) -> Vec<String> {
        let mut all = faults.read_engine(|e| {
            e.faults(&FaultFilter { all: true, ..Default::default() })
                .into_iter()
                .map(|f| (f.id, f.check.clone()))
                .collect::<Vec<_>>()
        });
        all.sort_unstable();
        all.into_iter().map(|(_, c)| c).filter(|c| c.starts_with('c')).collect()
    }

    fn evaluations(ev: &Evaluator) -> u64 {
        ev.drops.get("h1").map_or(0, |d| d.dropped_samples)
    }

    fn names(seqs: &[u64]) -> Vec<String> {
        seqs.iter().map(|s| format!("c{s}")).collect()
    }

    #[tokio::test]
    async fn each_batch_once_despite_duplicates_and_overlapping_reads() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        {
            let mut s = fake.state.lock().unwrap();
            s.dup = true;
            s.overlap = 3;
        }
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        for seq in 1..=3 {
            fake.put(numbered(seq));
        }
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 3);
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 0, "nothing new, nothing evaluated");
        fake.put(numbered(3)); // stored again (another node): the same key
        fake.put(numbered(4));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1);
        assert_eq!(opened(&r.faults), names(&[1, 2, 3, 4]));
        assert_eq!(evaluations(&r.ev), 4, "a batch was evaluated twice");
        assert_eq!(r.ev.cursor("h1", 1), 4);
        let sent: usize = std::iter::from_fn(|| r.transitions.try_recv().ok()).map(|t| t.len()).sum();
        assert!(sent >= 4, "the opened faults' transitions were not handed on: {sent}");
    }

    #[tokio::test]
    async fn out_of_order_commits_are_evaluated_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        fake.put(numbered(1));
        fake.put(numbered(3));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1);
        assert_eq!(opened(&r.faults), names(&[1]), "3 must wait for 2");
        fake.put(numbered(2));
        assert_eq!(r.ev.run_once(t0 + Duration::from_secs(1)).await.unwrap(), 2);
        assert_eq!(opened(&r.faults), names(&[1, 2, 3]));
        assert_eq!(r.metrics.eval_gaps_total.get(), 0);
    }

    #[tokio::test]
    async fn a_gap_is_held_for_gap_grace_then_skipped_counted_and_a_late_batch_counted() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        fake.put(numbered(1));
        fake.put(numbered(3));
        r.ev.run_once(t0).await.unwrap();
        assert_eq!(r.ev.run_once(t0 + GRACE - Duration::from_millis(1)).await.unwrap(), 0, "skipped too early");
        assert_eq!(r.metrics.eval_gaps_total.get(), 0);
        assert_eq!(r.ev.run_once(t0 + GRACE).await.unwrap(), 1);
        assert_eq!(opened(&r.faults), names(&[1, 3]));
        assert_eq!(r.metrics.eval_gaps_total.get(), 1);
        assert_eq!(r.ev.cursor("h1", 1), 3);
        // 2 is stored after all: never evaluated, counted once.
        fake.put(numbered(2));
        assert_eq!(r.ev.run_once(t0 + GRACE).await.unwrap(), 0);
        r.ev.run_once(t0 + GRACE).await.unwrap();
        assert_eq!(opened(&r.faults), names(&[1, 3]));
        assert_eq!(r.metrics.batches_late_total.get(), 1);
    }

    #[tokio::test]
    async fn a_held_stream_and_a_watched_range_read_no_payloads_until_something_came() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        fake.put(numbered(1));
        for seq in 3..=50 {
            fake.put(numbered(seq));
        }
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1);
        let read = |fake: &Fake| std::mem::take(&mut fake.state.lock().unwrap().payloads_read);
        assert_eq!(read(&fake), 49, "the first round reads what is behind the cursor");
        for ms in [1, 100, 5_000] {
            assert_eq!(r.ev.run_once(t0 + Duration::from_millis(ms)).await.unwrap(), 0);
            assert_eq!(read(&fake), 0, "the held stream's payloads were read again");
        }
        // The missing batch comes: all of it is read and evaluated at once.
        fake.put(numbered(2));
        assert_eq!(r.ev.run_once(t0 + Duration::from_secs(6)).await.unwrap(), 49);
        assert_eq!(read(&fake), 49);
        assert_eq!(r.ev.cursor("h1", 1), 50);

        // A gap skipped after the grace: its range is then watched by seq only.
        for seq in 60..=70 {
            fake.put(numbered(seq));
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(r.ev.run_once(t1).await.unwrap(), 0);
        assert_eq!(r.ev.run_once(t1 + GRACE).await.unwrap(), 11);
        read(&fake);
        fake.put(numbered(55));
        for _ in 0..3 {
            assert_eq!(r.ev.run_once(t1 + GRACE).await.unwrap(), 0);
        }
        assert_eq!(read(&fake), 0, "a watched range's payloads were read");
        assert_eq!(r.metrics.batches_late_total.get(), 1);
    }

    #[tokio::test]
    async fn failed_reads_are_retried_and_only_a_failure_past_the_reads_stops() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.put(numbered(1));
        fake.state.lock().unwrap().fail_heads = 2;
        let mut r = rig(dir.path(), fake.clone());
        let err = r.ev.run_once(Instant::now()).await.expect_err("the heads read failed");
        assert!(!r.ev.must_stop(&err), "a failed read stops the leader: {err}");
        assert!(r.ev.must_stop(&StoreError::Fenced { node: "n1".into(), term: 1 }));
        // The task retries (on the old code the process exited here).
        let (mut caught_up, task) = spawn(r.ev);
        tokio::time::timeout(Duration::from_secs(10), caught_up.wait_for(|c| *c)).await.unwrap().unwrap();
        task.abort();
        let _ = task.await;
        assert_eq!(opened(&r.faults), names(&[1]));
        // A failed flush leaves memory ahead of the store: that must stop.
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), fake.clone());
        r.storage.fail.store(true, Ordering::SeqCst);
        let err = r.ev.run_once(Instant::now()).await.expect_err("the flush failed");
        assert!(r.ev.must_stop(&err));
    }

    #[tokio::test]
    async fn cursors_of_streams_without_a_head_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.put(numbered(1));
        fake.put(pending("h2", 4, 1, T0_MS, Vec::new(), 0));
        let mut r = rig(dir.path(), fake.clone());
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 2);
        assert_eq!(r.ev.cursor("h2", 4), 1);
        // Retention deleted every batch of h2/4 and its head.
        fake.state.lock().unwrap().batches.retain(|k, _| k.0 != "h2");
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 0);
        assert_eq!((r.ev.cursor("h2", 4), r.ev.cursor("h1", 1)), (0, 1));
        drop(r);
        let r = rig(dir.path(), fake);
        assert_eq!(r.ev.cursors.values().map(HashMap::len).sum::<usize>(), 1, "the dropped cursor was not flushed");
    }

    #[tokio::test]
    async fn a_reopened_evaluator_continues_from_its_flushed_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let t0 = Instant::now();
        {
            let mut r = rig(dir.path(), fake.clone());
            fake.put(numbered(1));
            fake.put(numbered(2));
            assert_eq!(r.ev.run_once(t0).await.unwrap(), 2);
        }
        fake.put(numbered(3));
        let mut r = rig(dir.path(), fake.clone());
        assert_eq!(r.ev.cursor("h1", 1), 2);
        assert_eq!(evaluations(&r.ev), 2, "the drop state was not restored");
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1, "re-evaluated after the reopen");
        assert_eq!(opened(&r.faults), names(&[1, 2, 3]));
        assert_eq!(evaluations(&r.ev), 3);
    }

    #[tokio::test]
    async fn a_failed_flush_returns_the_error_and_hands_on_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        fake.put(numbered(1));
        r.storage.fail.store(true, Ordering::SeqCst);
        let err = r.ev.run_once(Instant::now()).await.expect_err("the flush failed");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(opened(&r.faults), names(&[1]), "the round opened its fault in memory, but its flush failed");
        assert!(r.transitions.try_recv().is_err(), "transitions sent although not durable");
    }

    #[tokio::test]
    async fn statuses_are_evaluated_with_their_received_time_and_drops_decided() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        let check = pb::CheckResult::new("disk".into(), pb::CheckStatus::Critical, "full".into(), T0_MS);
        let status = PendingBatch { status: true, id: 1, ..pending("h2", 1, 0, T0_MS, vec![check], 0) };
        fake.state.lock().unwrap().statuses.push(status);
        fake.put(pending("h1", 1, 1, T0_MS, Vec::new(), 3));
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 2);
        let faults = r.faults.read_engine(|e| {
            e.faults(&FaultFilter::default())
                .into_iter()
                .map(|f| (f.host.clone(), f.check.clone(), f.opened_at))
                .collect::<Vec<_>>()
        });
        let t0 = Timestamp::from_millisecond(T0_MS).unwrap();
        assert!(faults.contains(&("h2".into(), "disk".into(), t0)), "{faults:?}");
        assert!(faults.contains(&("h1".into(), pikett_core::hosts::DATA_DROPPED_CHECK.into(), t0)), "{faults:?}");
    }

    /// Agent status `id` of h1: one CRITICAL `disk` result (each evaluation adds one to the
    /// fault's results).
    fn status(id: u64) -> PendingBatch {
        let check = pb::CheckResult::new("disk".into(), pb::CheckStatus::Critical, "full".into(), T0_MS);
        PendingBatch { status: true, id, ..pending("h1", 1, 0, T0_MS + id as i64, vec![check], 0) }
    }

    fn consumed_on_disk(storage: &dyn Storage) -> usize {
        storage.tree("eval_statuses").unwrap().count().unwrap()
    }

    #[tokio::test]
    async fn a_status_whose_flush_failed_is_not_deleted_and_is_evaluated_by_the_next_round() {
        let fake = Arc::new(Fake::default());
        fake.state.lock().unwrap().statuses.push(status(1));
        {
            let dir = tempfile::tempdir().unwrap();
            let mut r = rig(dir.path(), fake.clone());
            r.storage.fail.store(true, Ordering::SeqCst);
            for _ in 0..2 {
                let err = r.ev.run_once(Instant::now()).await.expect_err("the flush failed");
                assert!(err.to_string().contains("disk on fire"), "{err}");
                assert_eq!(fake.state.lock().unwrap().statuses.len(), 1, "deleted before its effect committed");
            }
        }
        // The process stops on the failure; the next leader starts from what was committed
        // (nothing of that round: here an empty store).
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), fake.clone());
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 1, "the status was lost");
        assert_eq!(disk_faults(&r.faults), (1, 1));
        assert!(fake.state.lock().unwrap().statuses.is_empty(), "consumed but its row left");
        assert!(r.ev.consumed.is_empty());
        assert_eq!(consumed_on_disk(r.storage.as_ref()), 0, "the ids of deleted rows stay");
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_committed_status_is_never_evaluated_again_even_before_its_row_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        {
            let mut s = fake.state.lock().unwrap();
            s.statuses.push(status(1));
            s.fail_delete = true;
        }
        {
            let mut r = rig(dir.path(), fake.clone());
            let err = r.ev.run_once(Instant::now()).await.expect_err("the delete failed");
            assert!(err.to_string().contains("database gone"), "{err}");
            assert!(r.transitions.try_recv().is_ok(), "the committed transitions were not handed on");
            // Read again while its row is there: not evaluated again.
            let err = r.ev.run_once(Instant::now()).await.expect_err("the delete failed");
            assert!(err.to_string().contains("database gone"), "{err}");
            assert_eq!(disk_faults(&r.faults), (1, 1));
        }
        // Reopened (a crash, or the next leader) before the row was deleted, and a new status.
        {
            let mut s = fake.state.lock().unwrap();
            s.fail_delete = false;
            s.statuses.push(status(2));
        }
        let mut r = rig(dir.path(), fake.clone());
        assert_eq!(r.ev.consumed, BTreeSet::from([1]));
        assert_eq!(r.ev.run_once(Instant::now()).await.unwrap(), 1, "only the new status");
        assert_eq!(disk_faults(&r.faults), (1, 2), "status 1 evaluated twice");
        assert!(fake.state.lock().unwrap().statuses.is_empty(), "consumed rows left");
        assert!(r.ev.consumed.is_empty());
        assert_eq!(consumed_on_disk(r.storage.as_ref()), 0, "the ids of deleted rows stay");
    }

    #[tokio::test]
    async fn consumed_statuses_whose_rows_stay_do_not_crowd_out_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        {
            let mut s = fake.state.lock().unwrap();
            s.statuses.extend((1..=ROUND_STATUSES as u64).map(status));
            s.fail_delete = true;
        }
        let mut r = rig(dir.path(), fake.clone());
        r.ev.run_once(Instant::now()).await.expect_err("the delete failed");
        assert!(r.ev.more, "a full read leaves more");
        fake.state.lock().unwrap().statuses.push(status(ROUND_STATUSES as u64 + 1));
        r.ev.run_once(Instant::now()).await.expect_err("the delete failed");
        assert_eq!(disk_faults(&r.faults), (1, ROUND_STATUSES as u64 + 1), "each status once");
    }

    #[tokio::test]
    async fn a_round_cut_short_resumes_at_the_next_stream_and_a_held_stream_does_not_spin() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        // 12 hosts far behind: one round takes 8 streams' worth (ROUND_BATCHES / STREAM_BATCHES).
        for h in 0..12 {
            for seq in 1..=1000 {
                fake.put(pending(&format!("h{h:02}"), 1, seq, T0_MS + seq as i64, Vec::new(), 0));
            }
        }
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        assert_eq!(r.ev.run_once(t0).await.unwrap(), ROUND_BATCHES);
        assert!(r.ev.more);
        assert_eq!(r.ev.run_once(t0).await.unwrap(), ROUND_BATCHES);
        for h in 0..12 {
            assert!(r.ev.cursor(&format!("h{h:02}"), 1) > 0, "h{h:02} starved behind the others");
        }
        // A stream waiting for seq 2 with a full read behind the gap: no round at once.
        let fake = Arc::new(Fake::default());
        fake.put(numbered(1));
        for seq in 3..=(STREAM_BATCHES as u64 + 10) {
            fake.put(numbered(seq));
        }
        drop(r);
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), fake);
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1);
        assert!(!r.ev.more, "a held stream made the evaluator spin");
    }

    #[tokio::test]
    async fn the_watch_turns_true_once_the_initial_backlog_is_evaluated() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        // More than one round's worth, so catching up takes several rounds.
        let n = (ROUND_BATCHES + 100) as u64;
        for seq in 1..=n {
            fake.put(pending("h1", 1, seq, T0_MS + seq as i64, Vec::new(), 0));
        }
        let r = rig(dir.path(), fake.clone());
        let metrics = r.metrics.clone();
        let (mut caught_up, task) = spawn(r.ev);
        assert!(!*caught_up.borrow());
        tokio::time::timeout(Duration::from_secs(30), caught_up.wait_for(|c| *c)).await.unwrap().unwrap();
        assert_eq!(metrics.eval_backlog_batches.get(), 0, "caught up with a backlog left");
        task.abort();
        let _ = task.await;
        drop((r.storage, r.faults));
        let r = rig(dir.path(), fake);
        assert_eq!(r.ev.cursor("h1", 1), n);
    }

    #[tokio::test]
    async fn the_clock_starts_although_retention_pruned_a_stream_of_the_first_heads() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        // An old epoch held for its missing seq 2 when the leader takes over.
        fake.put(numbered(1));
        fake.put(numbered(3));
        let r = rig(dir.path(), fake.clone());
        let metrics = r.metrics.clone();
        let (mut caught_up, task) = spawn(r.ev);
        tokio::time::timeout(Duration::from_secs(10), async {
            while metrics.eval_backlog_batches.get() != 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first round did not run");
        assert!(!*caught_up.borrow());
        // Retention deletes every batch of that epoch, and its head, before the gap is skipped.
        fake.state.lock().unwrap().batches.clear();
        let waited = tokio::time::timeout(Duration::from_secs(5), caught_up.wait_for(|c| *c)).await;
        task.abort();
        let _ = task.await;
        assert!(waited.is_ok(), "never caught up: the pruned stream's cursor stays below the target");
    }

    #[tokio::test]
    async fn the_clock_starts_although_the_delete_of_consumed_statuses_fails() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.put(numbered(1));
        {
            let mut s = fake.state.lock().unwrap();
            s.statuses.push(PendingBatch { host: "h2".into(), ..status(1) });
            s.fail_delete = true;
        }
        let r = rig(dir.path(), fake.clone());
        let (mut caught_up, task) = spawn(r.ev);
        let waited = tokio::time::timeout(Duration::from_secs(5), caught_up.wait_for(|c| *c)).await;
        task.abort();
        let _ = task.await;
        assert!(waited.is_ok(), "never caught up while the delete of consumed statuses fails");
        assert_eq!(opened(&r.faults), names(&[1]));
    }

    #[tokio::test]
    async fn a_status_waits_while_its_host_has_batches_unread() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        let t0 = Instant::now();
        // Held for seq 2; the status was received after batch 3.
        fake.put(numbered(1));
        fake.put(numbered(3));
        let late = |id: u64, at: i64| PendingBatch { received_ms: at, ..status(id) };
        fake.state.lock().unwrap().statuses.push(late(1, T0_MS + 3_500));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1, "the status was evaluated before batch 3");
        assert_eq!(disk_faults(&r.faults), (0, 0));
        assert_eq!(fake.state.lock().unwrap().statuses.len(), 1, "a waiting status was consumed");
        // Seq 2 comes: 2, 3 and the status in one round, by time.
        fake.put(numbered(2));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 3);
        assert_eq!(disk_faults(&r.faults), (1, 1));
        assert!(fake.state.lock().unwrap().statuses.is_empty());

        // A backlog longer than one stream's read, all older than a new status.
        let n = STREAM_BATCHES as u64 + 88;
        for seq in 4..=n {
            fake.put(pending("h1", 1, seq, T0_MS + 4_000 + seq as i64, Vec::new(), 0));
        }
        fake.state.lock().unwrap().statuses.push(late(2, T0_MS + 1_000_000));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), STREAM_BATCHES, "the status came before older batches");
        assert_eq!(disk_faults(&r.faults), (1, 1));
        assert_eq!(r.ev.run_once(t0).await.unwrap(), (n - 3) as usize - STREAM_BATCHES + 1);
        assert_eq!(disk_faults(&r.faults), (1, 2));
        // A status of another host does not wait.
        fake.put(numbered(n + 2)); // h1 held again
        fake.state.lock().unwrap().statuses.push(PendingBatch { host: "h2".into(), ..late(3, T0_MS) });
        assert_eq!(r.ev.run_once(t0).await.unwrap(), 1);
        assert!(!r.ev.more, "a waiting status made the evaluator spin");
    }

    #[tokio::test]
    async fn a_hosts_streams_are_evaluated_oldest_first_so_its_time_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let mut r = rig(dir.path(), fake.clone());
        // Epoch 9 (older, held for seq 2), then the agent started a new spool, epoch 4 (the
        // epochs are random: the lower one is the newer here).
        let at = |epoch: u64, seq: u64, ms: i64| {
            let check =
                pb::CheckResult::new(format!("c{epoch}-{seq}"), pb::CheckStatus::Critical, "down".into(), T0_MS);
            pending("h1", epoch, seq, T0_MS + ms, vec![check], 0)
        };
        fake.put(at(9, 1, 1_000));
        fake.put(at(9, 3, 3_000));
        fake.put(at(4, 1, 5_000));
        fake.put(at(4, 2, 6_000));
        let t0 = Instant::now();
        for _ in 0..4 {
            r.ev.run_once(t0).await.unwrap();
        }
        assert_eq!(opened(&r.faults), vec!["c9-1"], "the newer epoch went ahead of the older one's gap");
        assert!(!r.ev.more, "a waiting stream made the evaluator spin");
        for _ in 0..4 {
            r.ev.run_once(t0 + GRACE).await.unwrap();
        }
        assert_eq!(opened(&r.faults), vec!["c9-1", "c9-3", "c4-1", "c4-2"]);
        assert_eq!((r.ev.cursor("h1", 9), r.ev.cursor("h1", 4)), (3, 2));
        assert!(r.ev.oldest.is_empty());
    }

    // ---- on PostgreSQL ---------------------------------------------------------------------

    fn request(seq: u64, status: bool) -> crate::services::batches::WriteRequest {
        let check = pb::CheckResult::new("disk".into(), pb::CheckStatus::Critical, "full".into(), T0_MS);
        let sender = Arc::new(crate::services::batches::Sender {
            host_id: "h1".into(),
            customer: "acme".into(),
            agent_version: "test".into(),
            capabilities: Vec::new(),
            min_interval_ms: 1000,
            spool_epoch: 7,
        });
        let batch = pb::Batch { seq: if status { 0 } else { seq }, checks: vec![check], ..Default::default() };
        let batch = ReceivedBatch::from_batch(&batch);
        let (reply, _) = tokio::sync::oneshot::channel();
        crate::services::batches::WriteRequest { sender, batch, status, series_over_limit: 0, reply }
    }

    /// The `disk` fault of h1: how many there are, and the results of the first.
    fn disk_faults(faults: &FaultService) -> (usize, u64) {
        faults.read_engine(|e| {
            let all = e.faults(&FaultFilter { all: true, ..Default::default() });
            let disk: Vec<_> = all.into_iter().filter(|f| f.check == "disk").collect();
            (disk.len(), disk.first().map_or(0, |f| f.results))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_overlapping_groups_of_two_nodes_are_evaluated_once_and_the_cursor_survives_a_reopen() {
        use crate::store::pg::{PgConnect, PgLease, PgStorage, testing};
        use crate::store::{Lease, LeaseState};
        let url = testing::fresh_database().await;
        let connect = PgConnect::new(&url, None).unwrap();
        let n1 = Arc::new(PgBatches::open(connect.clone(), "n1").await.unwrap());
        let n2 = Arc::new(PgBatches::open(connect.clone(), "n2").await.unwrap());
        let lease = PgLease::new(connect.clone());
        let LeaseState::Leader { term } =
            lease.try_acquire_or_renew("n1", Duration::from_secs(60), None).await.unwrap()
        else {
            panic!("a fresh lease is free")
        };
        // The agent's resends reach both nodes: 1..=3 on n1 and 2..=4 on n2, at once; plus a
        // status on n2.
        let g1: Vec<_> = (1..=3).map(|s| request(s, false)).collect();
        let mut g2: Vec<_> = (2..=4).map(|s| request(s, false)).collect();
        g2.push(request(0, true));
        let (r1, r2) = tokio::join!(n1.store_group(&g1), n2.store_group(&g2));
        let new =
            r1.unwrap().into_iter().chain(r2.unwrap()).filter(|o| o.stored == crate::services::batches::Stored::New);
        assert_eq!(new.count(), 4, "each batch stored once");

        let open = |storage: Arc<PgStorage>| {
            storage.fence_with("n1", term);
            let faults = Arc::new(FaultService::open(storage.as_ref(), engine_config()).unwrap());
            let patches =
                Arc::new(PatchService::open(storage.as_ref(), PatchPolicy::default(), BTreeMap::new()).unwrap());
            let (tx, rx) = mpsc::unbounded_channel();
            let ev = Evaluator::open(EvaluatorParts {
                batches: n1.clone(),
                storage,
                faults: faults.clone(),
                patches,
                metrics: Arc::new(Metrics::new()),
                transitions: tx,
                node: "n1".into(),
                term,
                gap_grace: GRACE,
                wake: Arc::new(Notify::new()),
            })
            .unwrap();
            (ev, faults, rx)
        };
        let (mut ev, faults, mut rx) = open(Arc::new(PgStorage::open(connect.clone()).await.unwrap()));
        let t0 = Instant::now();
        assert_eq!(ev.run_once(t0).await.unwrap(), 5, "4 batches and the status");
        assert_eq!(ev.run_once(t0).await.unwrap(), 0);
        assert_eq!(disk_faults(&faults), (1, 5), "one fault, driven by each result once");
        assert_eq!(ev.cursor("h1", 7), 4);
        assert!(rx.try_recv().is_ok(), "the opened fault's transition was not handed on");
        assert!(n1.read_statuses(10).await.unwrap().is_empty(), "the consumed status's row is left");
        drop((ev, faults));

        // A new leader process on the same database: it continues from the committed cursor.
        n2.store_group(&[request(5, false)]).await.unwrap();
        let (mut ev, faults, _rx) = open(Arc::new(PgStorage::open(connect.clone()).await.unwrap()));
        assert_eq!(ev.cursor("h1", 7), 4);
        assert_eq!(disk_faults(&faults), (1, 5));
        assert_eq!(ev.run_once(t0).await.unwrap(), 1, "only the new batch");
        assert_eq!(disk_faults(&faults), (1, 6));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_status_row_goes_only_after_the_flush_that_consumed_it() {
        use crate::store::pg::{PgConnect, PgLease, PgStorage, testing};
        use crate::store::{Lease, LeaseState};
        let url = testing::fresh_database().await;
        let connect = PgConnect::new(&url, None).unwrap();
        let n1 = Arc::new(PgBatches::open(connect.clone(), "n1").await.unwrap());
        let lease = PgLease::new(connect.clone());
        let LeaseState::Leader { term } =
            lease.try_acquire_or_renew("n1", Duration::from_secs(60), None).await.unwrap()
        else {
            panic!("a fresh lease is free")
        };
        n1.store_group(&[request(0, true)]).await.unwrap();
        let open = async |fence_term: i64| {
            let storage = Arc::new(PgStorage::open(connect.clone()).await.unwrap());
            storage.fence_with("n1", fence_term);
            let faults = Arc::new(FaultService::open(storage.as_ref(), engine_config()).unwrap());
            let patches =
                Arc::new(PatchService::open(storage.as_ref(), PatchPolicy::default(), BTreeMap::new()).unwrap());
            let (tx, _rx) = mpsc::unbounded_channel();
            let ev = Evaluator::open(EvaluatorParts {
                batches: n1.clone(),
                storage,
                faults: faults.clone(),
                patches,
                metrics: Arc::new(Metrics::new()),
                transitions: tx,
                node: "n1".into(),
                term,
                gap_grace: GRACE,
                wake: Arc::new(Notify::new()),
            })
            .unwrap();
            (ev, faults)
        };
        let t0 = Instant::now();
        // A flush that fails (fenced): the row stays.
        let (mut ev, _faults) = open(term + 1).await;
        let err = ev.run_once(t0).await.expect_err("fenced");
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert_eq!(n1.read_statuses(10).await.unwrap().len(), 1, "deleted before its effect committed");
        drop(ev);
        // The next process evaluates it; its row is gone after that round.
        let (mut ev, faults) = open(term).await;
        assert_eq!(ev.run_once(t0).await.unwrap(), 1);
        assert_eq!(disk_faults(&faults), (1, 1));
        assert!(n1.read_statuses(10).await.unwrap().is_empty(), "the row is left after the round");
        drop((ev, faults));
        // Its id may still be committed (the removal waits for a later flush): harmless, and
        // it goes.
        let (mut ev, faults) = open(term).await;
        assert_eq!(ev.run_once(t0).await.unwrap(), 0);
        assert_eq!(disk_faults(&faults), (1, 1), "evaluated again");
        assert!(ev.consumed.is_empty());
    }
}

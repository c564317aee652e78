//! The contract of [`OutboxStore`] as one test suite, run on every engine ([`TreeStore`]).
//!
//! An engine is an [`Engine`]: handles on one and the same store, and a way to make a node the
//! leader under a new, higher term.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::oneshot;

use super::outbox::*;
use super::{Channel, ChannelError, ChannelKind, ChannelMap, Notification, Receipt};

/// An engine under test.
pub(crate) trait Engine {
    /// A handle on the store (on PostgreSQL a session of its own).
    async fn store(&self) -> Arc<dyn OutboxStore>;
    /// Makes `node` the leader under a term higher than every earlier one.
    async fn lead(&self, node: &str) -> Claimer;
    /// Whether a claim of a term runs out for that term after its `claim_for` (PostgreSQL);
    /// on sled it never does, like the old in-memory `in_flight` set.
    fn claims_lapse(&self) -> bool;
    /// Makes the stored entry `id` undecodable.
    async fn corrupt(&self, id: &str);
}

/// One `#[tokio::test]` per clause in a module `outbox_suite`, each on a fresh store from
/// `$make().await`.
macro_rules! outbox_suite {
    ($make:ident) => {
        mod outbox_suite {
            use $crate::notify::outbox_suite as suite;

            macro_rules! clause {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let engine = super::$make().await;
                        suite::$name(&engine).await;
                    }
                };
            }

            clause!(enqueue_is_idempotent_by_id);
            clause!(claims_come_by_next_attempt_up_to_the_limit);
            clause!(a_claim_keeps_its_own_term_away_until_it_runs_out);
            clause!(a_newer_term_takes_an_older_claim_over_at_once);
            clause!(a_stale_result_is_refused_and_changes_nothing);
            clause!(a_result_ends_the_claim_and_retries_wait_for_their_time);
            clause!(a_released_claim_is_due_again_at_once);
            clause!(purge_removes_only_old_finished_entries);
            clause!(the_outbox_retries_with_backoff_then_delivers);
            clause!(the_outbox_fails_a_permanent_error_at_once);
            clause!(an_outbox_whose_claim_was_taken_over_drops_its_outcome_and_stops);
            clause!(a_send_outliving_its_claim_is_not_sent_twice_nor_deposes);
            clause!(a_quarantined_id_is_refused_as_a_duplicate);
        }
    };
}

fn t0() -> Timestamp {
    "2026-11-23T03:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(secs)
}

const MINUTE: Duration = Duration::from_secs(60);

fn entry(id: &str, next_attempt: Timestamp) -> Entry {
    let mut n = super::sample_notification();
    n.id = id.into();
    Entry {
        notification: n,
        state: EntryState::Pending,
        attempts: 0,
        enqueued_at: t0(),
        next_attempt,
        last_error: None,
        receipt: None,
        finished_at: None,
    }
}

fn ids(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.notification.id.as_str()).collect()
}

fn finished(mut e: Entry, state: EntryState, when: Timestamp) -> Entry {
    e.state = state;
    e.attempts += 1;
    e.finished_at = Some(when);
    e
}

pub(crate) async fn enqueue_is_idempotent_by_id(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    assert_eq!(s.enqueue(&a, &entry("4/1", t0())).await.unwrap(), None);
    let mut other = entry("4/1", at(9));
    other.notification.text = "another text".into();
    assert_eq!(s.enqueue(&a, &other).await.unwrap(), Some(EntryState::Pending), "a duplicate");
    assert_eq!(s.entry("4/1").await.unwrap(), Some(entry("4/1", t0())), "the duplicate changed nothing");
    s.enqueue(&a, &entry("42/1", t0())).await.unwrap();
    let of_4 = s.entries_with_prefix("4/").await.unwrap();
    assert_eq!(ids(&of_4), ["4/1"], "a fault's prefix must not match another fault's");
    assert_eq!(s.entry("nope").await.unwrap(), None);
    // Finished, the id still blocks a new entry and answers the final state.
    let claimed = s.claim_due(&a, t0(), MINUTE, 10).await.unwrap();
    let token = claimed.token;
    let e = claimed.due.into_iter().find(|e| e.notification.id == "4/1").unwrap();
    assert_eq!(s.record(&a, token, &finished(e, EntryState::Delivered, at(1))).await.unwrap(), Recorded::Stored);
    assert_eq!(s.enqueue(&a, &entry("4/1", t0())).await.unwrap(), Some(EntryState::Delivered));
    assert_eq!(s.entries_with_prefix("4/").await.unwrap().len(), 1, "finished entries are listed too");
    assert_eq!(ids(&s.pending_entries().await.unwrap()), ["42/1"]);
}

pub(crate) async fn claims_come_by_next_attempt_up_to_the_limit(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    for (id, secs) in [("a", 3), ("b", 1), ("c", 2), ("d", 1), ("later", 60)] {
        s.enqueue(&a, &entry(id, at(secs))).await.unwrap();
    }
    let first = s.claim_due(&a, at(5), MINUTE, 3).await.unwrap();
    assert_eq!(ids(&first.due), ["b", "d", "c"], "by next attempt, then id");
    assert_eq!(first.next, Some(at(3)), "one due entry was left by the limit");
    let second = s.claim_due(&a, at(5), MINUTE, 10).await.unwrap();
    assert_eq!(ids(&second.due), ["a"]);
    assert_eq!(second.next, Some(at(60)), "the next is the one not due yet");
    assert_eq!(s.claim_due(&a, at(5), MINUTE, 10).await.unwrap().due, Vec::<Entry>::new());
}

pub(crate) async fn a_claim_keeps_its_own_term_away_until_it_runs_out(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    s.enqueue(&a, &entry("x", t0())).await.unwrap();
    assert_eq!(ids(&s.claim_due(&a, t0(), MINUTE, 10).await.unwrap().due), ["x"]);
    assert!(s.claim_due(&a, at(30), MINUTE, 10).await.unwrap().due.is_empty(), "claimed, not claimed again");
    assert!(s.claim_due(&a, at(59), MINUTE, 10).await.unwrap().due.is_empty());
    // Another handle (session) of the same term sees the claim too.
    let other = engine.store().await;
    assert!(other.claim_due(&a, at(59), MINUTE, 10).await.unwrap().due.is_empty());
    if engine.claims_lapse() {
        let again = s.claim_due(&a, at(60), MINUTE, 10).await.unwrap();
        assert_eq!(ids(&again.due), ["x"], "the claim ran out: claimed again");
    } else {
        // One node: the send may still be in flight; only a result or a release ends the claim.
        for secs in [60, 135, 86_400] {
            assert!(s.claim_due(&a, at(secs), MINUTE, 10).await.unwrap().due.is_empty(), "lapsed at {secs} s");
        }
    }
}

pub(crate) async fn a_newer_term_takes_an_older_claim_over_at_once(engine: &impl Engine) {
    let s = engine.store().await;
    let a = engine.lead("a").await;
    s.enqueue(&a, &entry("x", t0())).await.unwrap();
    s.enqueue(&a, &entry("y", at(30))).await.unwrap();
    assert_eq!(ids(&s.claim_due(&a, t0(), MINUTE, 10).await.unwrap().due), ["x"]);
    let b = engine.lead("b").await;
    assert!(b.term > a.term, "{b:?} after {a:?}");
    let taken = s.claim_due(&b, at(1), MINUTE, 10).await.unwrap();
    assert_eq!(ids(&taken.due), ["x"], "no wait for the dead leader's claim");
    assert_eq!(taken.next, Some(at(30)));
    assert!(s.claim_due(&b, at(2), MINUTE, 10).await.unwrap().due.is_empty(), "now b's own claim");
    let token = taken.token;
    let e = taken.due.into_iter().next().unwrap();
    assert_eq!(s.record(&b, token, &finished(e, EntryState::Delivered, at(3))).await.unwrap(), Recorded::Stored);
    assert_eq!(s.entry("x").await.unwrap().unwrap().state, EntryState::Delivered);
}

pub(crate) async fn a_stale_result_is_refused_and_changes_nothing(engine: &impl Engine) {
    let s = engine.store().await;
    let a = engine.lead("a").await;
    s.enqueue(&a, &entry("x", t0())).await.unwrap();
    let claimed = s.claim_due(&a, t0(), MINUTE, 10).await.unwrap();
    let token = claimed.token;
    let mine = claimed.due.into_iter().next().unwrap();
    let b = engine.lead("b").await;
    let theirs = s.claim_due(&b, at(1), MINUTE, 10).await.unwrap().due;
    assert_eq!(ids(&theirs), ["x"]);
    let before = s.entry("x").await.unwrap();
    for stale in [finished(mine.clone(), EntryState::Delivered, at(2)), {
        let mut retry = mine.clone();
        retry.attempts = 1;
        retry.next_attempt = at(100);
        retry.last_error = Some("down".into());
        retry
    }] {
        assert_eq!(s.record(&a, token, &stale).await.unwrap(), Recorded::Stale);
    }
    assert_eq!(s.entry("x").await.unwrap(), before, "a stale result changed the entry");
    // Nor does the stale claimer's release end b's claim.
    s.release(&a, token, "x").await.unwrap();
    assert!(s.claim_due(&b, at(3), MINUTE, 10).await.unwrap().due.is_empty(), "b's claim was ended by a");
    // A result without any claim is stale too.
    let c = engine.lead("c").await;
    assert_eq!(s.record(&c, token, &finished(mine, EntryState::Failed, at(4))).await.unwrap(), Recorded::Stale);
    assert_eq!(s.entry("x").await.unwrap(), before);
}

pub(crate) async fn a_result_ends_the_claim_and_retries_wait_for_their_time(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    s.enqueue(&a, &entry("x", t0())).await.unwrap();
    let claimed = s.claim_due(&a, t0(), MINUTE, 10).await.unwrap();
    let token = claimed.token;
    let mut e = claimed.due.into_iter().next().unwrap();
    e.attempts = 1;
    e.last_error = Some("gateway down".into());
    e.next_attempt = at(5);
    assert_eq!(s.record(&a, token, &e).await.unwrap(), Recorded::Stored);
    assert_eq!(s.entry("x").await.unwrap().as_ref(), Some(&e), "the retry is stored");
    assert_eq!(s.pending_entries().await.unwrap(), [e.clone()]);
    let early = s.claim_due(&a, at(1), MINUTE, 10).await.unwrap();
    assert!(early.due.is_empty());
    assert_eq!(early.next, Some(at(5)), "not due before its next attempt");
    // The result ended the claim: due at its time, long before the claim would have run out.
    let retry = s.claim_due(&a, at(5), MINUTE, 10).await.unwrap();
    assert_eq!(retry.due, [e.clone()]);
    assert_ne!(retry.token, token, "every claim has a token of its own");
    let token = retry.token;
    let mut failed = finished(e, EntryState::Failed, at(6));
    failed.last_error = Some("gave up after 2 attempts".into());
    assert_eq!(s.record(&a, token, &failed).await.unwrap(), Recorded::Stored);
    assert_eq!(s.entry("x").await.unwrap(), Some(failed.clone()));
    assert!(s.pending_entries().await.unwrap().is_empty());
    assert!(s.claim_due(&a, at(600), MINUTE, 10).await.unwrap().due.is_empty(), "finished is never claimed");
    assert_eq!(
        s.record(&a, token, &failed).await.unwrap(),
        Recorded::Superseded,
        "a finished entry takes no result, and its own term is not deposed"
    );
}

pub(crate) async fn a_released_claim_is_due_again_at_once(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    s.enqueue(&a, &entry("x", t0())).await.unwrap();
    let claimed = s.claim_due(&a, t0(), MINUTE, 10).await.unwrap();
    assert_eq!(claimed.due.len(), 1);
    s.release(&a, claimed.token + 1, "x").await.unwrap();
    assert!(s.claim_due(&a, at(1), MINUTE, 10).await.unwrap().due.is_empty(), "another token released it");
    s.release(&a, claimed.token, "x").await.unwrap();
    assert_eq!(ids(&s.claim_due(&a, at(1), MINUTE, 10).await.unwrap().due), ["x"]);
}

pub(crate) async fn purge_removes_only_old_finished_entries(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    for id in ["old", "new", "pending"] {
        s.enqueue(&a, &entry(id, t0())).await.unwrap();
    }
    let claimed = s.claim_due(&a, t0(), MINUTE, 10).await.unwrap();
    for e in claimed.due {
        let when = match e.notification.id.as_str() {
            "old" => at(10),
            "new" => at(100),
            _ => continue,
        };
        s.record(&a, claimed.token, &finished(e, EntryState::Delivered, when)).await.unwrap();
    }
    assert_eq!(s.purge_finished(at(10)).await.unwrap(), 0, "finished at the cut-off: kept");
    assert_eq!(s.purge_finished(at(50)).await.unwrap(), 1);
    assert_eq!(s.entry("old").await.unwrap(), None);
    assert!(s.entry("new").await.unwrap().is_some());
    assert!(s.entry("pending").await.unwrap().is_some());
}

/// A channel that answers from a script (then delivers), and records its sends.
struct Scripted {
    answers: Mutex<VecDeque<Result<(), ChannelError>>>,
    sent: Mutex<Vec<String>>,
    /// For the next send: says "sending" on the first, then waits for the second (a takeover
    /// in the middle of a send).
    gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl Scripted {
    fn new(answers: Vec<Result<(), ChannelError>>) -> Arc<Scripted> {
        Arc::new(Scripted { answers: Mutex::new(answers.into()), sent: Mutex::default(), gate: Mutex::default() })
    }

    fn map(self: &Arc<Self>) -> ChannelMap {
        HashMap::from([(ChannelKind::Sms, self.clone() as Arc<dyn Channel>)])
    }
}

#[async_trait]
impl Channel for Scripted {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError> {
        self.sent.lock().unwrap().push(n.id.clone());
        let gate = self.gate.lock().unwrap().take();
        if let Some((sending, go)) = gate {
            let _ = sending.send(());
            let _ = go.await;
        }
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
        answer.map(|()| Receipt { channel: ChannelKind::Sms, endpoint: "test".into(), detail: "ok".into() })
    }
}

fn notification(id: &str) -> Notification {
    let mut n = super::sample_notification();
    n.id = id.into();
    n
}

pub(crate) async fn the_outbox_retries_with_backoff_then_delivers(engine: &impl Engine) {
    let clock = Arc::new(ManualClock::new(t0()));
    let channel = Scripted::new(vec![Err(ChannelError::Retryable("gateway down".into()))]);
    let (ob, _outcomes) = Outbox::claiming_as(
        engine.store().await,
        channel.map(),
        OutboxConfig::default(),
        clock.clone(),
        engine.lead("a").await,
    );
    assert_eq!(ob.enqueue(notification("7/1")).await.unwrap(), Enqueued::New);
    assert_eq!(ob.enqueue(notification("7/1")).await.unwrap(), Enqueued::Duplicate(EntryState::Pending));
    let first = ob.run_due().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].status,
        OutcomeStatus::Retrying { error: "gateway down".into(), next_attempt: at(5) },
        "5 s initial backoff"
    );
    assert!(ob.run_due().await.unwrap().is_empty(), "not due before its backoff");
    clock.advance(Duration::from_secs(5));
    let second = ob.run_due().await.unwrap();
    assert!(matches!(second[..], [Outcome { attempts: 2, status: OutcomeStatus::Delivered { .. }, .. }]), "{second:?}");
    let stored = ob.entry("7/1").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.attempts, stored.last_error.as_deref()),
        (EntryState::Delivered, 2, Some("gateway down"))
    );
    assert_eq!(ob.enqueue(notification("7/1")).await.unwrap(), Enqueued::Duplicate(EntryState::Delivered));
    assert_eq!(*channel.sent.lock().unwrap(), ["7/1", "7/1"]);
    assert_eq!(ob.entries_with_prefix("7/").await.unwrap(), [stored]);
}

pub(crate) async fn the_outbox_fails_a_permanent_error_at_once(engine: &impl Engine) {
    let clock = Arc::new(ManualClock::new(t0()));
    let channel = Scripted::new(vec![Err(ChannelError::Permanent("HTTP 400".into()))]);
    let (ob, _outcomes) = Outbox::claiming_as(
        engine.store().await,
        channel.map(),
        OutboxConfig::default(),
        clock.clone(),
        engine.lead("a").await,
    );
    ob.enqueue(notification("7/1")).await.unwrap();
    let outcomes = ob.run_due().await.unwrap();
    assert!(
        matches!(&outcomes[..], [Outcome { status: OutcomeStatus::Failed { reason }, .. }] if reason.contains("HTTP 400")),
        "{outcomes:?}"
    );
    let stored = ob.entry("7/1").await.unwrap().unwrap();
    assert_eq!((stored.state, stored.attempts), (EntryState::Failed, 1));
    clock.advance(Duration::from_secs(3600));
    assert!(ob.run_due().await.unwrap().is_empty());
    assert!(ob.pending_entries().await.unwrap().is_empty());
}

pub(crate) async fn an_outbox_whose_claim_was_taken_over_drops_its_outcome_and_stops(engine: &impl Engine) {
    let clock = Arc::new(ManualClock::new(t0()));
    let store = engine.store().await;
    let a = engine.lead("a").await;
    let old_channel = Scripted::new(Vec::new());
    let (old, mut old_outcomes) =
        Outbox::claiming_as(store.clone(), old_channel.map(), OutboxConfig::default(), clock.clone(), a);
    old.enqueue(notification("7/1")).await.unwrap();
    // While the old leader sends, a new one takes over and sends the same notification.
    let (sending_tx, sending_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    *old_channel.gate.lock().unwrap() = Some((sending_tx, go_rx));
    let new_channel = Scripted::new(Vec::new());
    let takeover = async {
        sending_rx.await.unwrap();
        let b = engine.lead("b").await;
        let (new, _rx) =
            Outbox::claiming_as(engine.store().await, new_channel.map(), OutboxConfig::default(), clock.clone(), b);
        let taken = new.run_due().await.unwrap();
        go_tx.send(()).unwrap();
        taken
    };
    let deposed = old.deposed();
    let (old_out, taken) = tokio::join!(old.run_due(), takeover);
    assert!(old_out.unwrap().is_empty(), "the old term's outcome is dropped");
    assert!(*deposed.borrow(), "the old term's outbox knows it is deposed");
    assert!(old_outcomes.try_recv().is_err(), "no outcome went out of the old term");
    assert!(matches!(taken[..], [Outcome { status: OutcomeStatus::Delivered { .. }, .. }]), "{taken:?}");
    assert_eq!(*new_channel.sent.lock().unwrap(), ["7/1"], "the new term sent it at once, same key");
    assert_eq!(ob_state(&store, "7/1").await, (EntryState::Delivered, 1));
    // Deposed, the old outbox claims and sends nothing more.
    let _ = old.enqueue(notification("8/1")).await;
    assert!(old.run_due().await.unwrap().is_empty());
    assert_eq!(*old_channel.sent.lock().unwrap(), ["7/1"]);
}

pub(crate) async fn a_send_outliving_its_claim_is_not_sent_twice_nor_deposes(engine: &impl Engine) {
    let clock = Arc::new(ManualClock::new(t0()));
    let store = engine.store().await;
    let channel = Scripted::new(Vec::new());
    let a = engine.lead("a").await;
    let (ob, mut outcomes) =
        Outbox::claiming_as(store.clone(), channel.map(), OutboxConfig::default(), clock.clone(), a);
    ob.enqueue(notification("7/1")).await.unwrap();
    // The first send hangs past CLAIM_FOR (3 SMS gateways x 45 s), meanwhile the worker claims.
    let (sending_tx, sending_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    *channel.gate.lock().unwrap() = Some((sending_tx, go_rx));
    let meanwhile = async {
        sending_rx.await.unwrap();
        clock.advance(CLAIM_FOR + Duration::from_secs(15));
        let again = ob.run_due().await.unwrap();
        go_tx.send(()).unwrap();
        again
    };
    let (first, again) = tokio::join!(ob.run_due(), meanwhile);
    let first = first.unwrap();
    assert!(!*ob.deposed().borrow(), "a worker of the same term is not deposed");
    let delivered = |o: &[Outcome]| matches!(o, [Outcome { status: OutcomeStatus::Delivered { .. }, .. }]);
    if engine.claims_lapse() {
        // PostgreSQL: the claim ran out and was claimed again; the older attempt's result is
        // refused quietly.
        assert!(delivered(&again), "{again:?}");
        assert!(first.is_empty(), "the superseded attempt's outcome is dropped: {first:?}");
        assert_eq!(ob.stats().superseded.load(std::sync::atomic::Ordering::Relaxed), 1);
    } else {
        assert!(again.is_empty(), "claimed again while in flight: {again:?}");
        assert!(delivered(&first), "{first:?}");
        assert_eq!(*channel.sent.lock().unwrap(), ["7/1"], "sent twice");
    }
    assert_eq!(ob_state(&store, "7/1").await, (EntryState::Delivered, 1));
    assert!(outcomes.try_recv().is_ok());
    assert!(outcomes.try_recv().is_err(), "one outcome only");
    // The worker goes on paging.
    ob.enqueue(notification("8/1")).await.unwrap();
    assert!(delivered(&ob.run_due().await.unwrap()));
}

pub(crate) async fn a_quarantined_id_is_refused_as_a_duplicate(engine: &impl Engine) {
    let (s, a) = (engine.store().await, engine.lead("a").await);
    s.enqueue(&a, &entry("bad", t0())).await.unwrap();
    s.enqueue(&a, &entry("good", t0())).await.unwrap();
    engine.corrupt("bad").await;
    assert_eq!(ids(&s.pending_entries().await.unwrap()), ["good"], "set aside");
    assert_eq!(s.enqueue(&a, &entry("bad", t0())).await.unwrap(), Some(EntryState::Failed));
    assert_eq!(s.entry("bad").await.unwrap(), None, "nothing new was stored");
    assert_eq!(ids(&s.claim_due(&a, t0(), MINUTE, 10).await.unwrap().due), ["good"]);
}

async fn ob_state(store: &Arc<dyn OutboxStore>, id: &str) -> (EntryState, u32) {
    let e = store.entry(id).await.unwrap().unwrap();
    (e.state, e.attempts)
}

/// The suite on sled: one [`TreeStore`] (claims live in its memory, shared by its clones).
mod sled {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    pub(crate) struct SledEngine {
        _dir: tempfile::TempDir,
        storage: Arc<dyn crate::store::Storage>,
        store: Arc<TreeStore>,
        terms: AtomicI64,
    }

    impl Engine for SledEngine {
        async fn store(&self) -> Arc<dyn OutboxStore> {
            self.store.clone()
        }

        async fn lead(&self, node: &str) -> Claimer {
            Claimer { node: node.into(), term: self.terms.fetch_add(1, Ordering::SeqCst) + 1 }
        }

        fn claims_lapse(&self) -> bool {
            false
        }

        async fn corrupt(&self, id: &str) {
            let tree = self.storage.tree("outbox").unwrap();
            tree.insert(format!("p/{id}").as_bytes(), b"{not json".to_vec()).unwrap();
        }
    }

    pub(crate) async fn sled_engine() -> SledEngine {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::SledStorage::open(dir.path(), 1 << 20).unwrap();
        let storage: Arc<dyn crate::store::Storage> = Arc::new(db);
        let store = Arc::new(TreeStore::open(storage.clone()).unwrap());
        SledEngine { _dir: dir, storage, store, terms: AtomicI64::new(0) }
    }

    outbox_suite!(sled_engine);
}

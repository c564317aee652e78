//! The contract of [`BatchStore`] as one test suite, run on both engines: sled's `BatchLog`
//! (here, below) and PostgreSQL's `PgBatches` (in `store/pg/batches.rs`).
//!
//! An engine's tests call [`batch_suite!`] with an async constructor of a [`BatchEngine`]:
//! the store, and how the writer stores a group on it (sled: `apply` then `flush`; PostgreSQL:
//! `store_group`). Times: sled takes the writer's clock, PostgreSQL its own; the suite passes
//! the wall clock to sled, so both stamp the same (the test server runs on this machine).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pikett_proto::v1 as pb;
use tokio::sync::oneshot;

use crate::store::batch_store::{BatchStore, Outcome, Sender, Stored, WriteRequest};

/// An engine under test.
pub(crate) trait BatchEngine {
    fn store(&self) -> &dyn BatchStore;
    /// Stores a group as the writer does; durable when it returns.
    async fn store_group(&self, group: &[WriteRequest]) -> Vec<Outcome>;
}

/// Generates one `#[tokio::test]` per contract clause in a module `batch_suite`, each on a
/// fresh store from `$make().await` (a [`BatchEngine`]).
macro_rules! batch_suite {
    ($make:ident) => {
        mod batch_suite {
            use $crate::store::batch_suite;

            macro_rules! clause {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let engine = super::$make().await;
                        batch_suite::$name(&engine).await;
                    }
                };
            }

            clause!(new_and_duplicate_per_host_epoch_and_seq);
            clause!(a_new_epoch_is_new_batches_and_counts_a_spool_reset);
            clause!(a_status_is_not_stored_as_a_batch);
            clause!(the_host_registry_follows_what_is_stored);
            clause!(a_removed_host_is_monitored_again_when_it_reports);
            clause!(a_batch_reads_back_exactly_as_encoded);
            clause!(stored_up_to_is_the_highest_seq_of_the_epoch);
            clause!(old_batches_are_pruned_oldest_first_in_steps);
        }
    };
}
pub(crate) use batch_suite;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn sender(host: &str, epoch: u64) -> Sender {
    Sender {
        host_id: host.into(),
        customer: "acme".into(),
        agent_version: "1.2.3".into(),
        capabilities: vec!["inventory".into(), "status".into()],
        min_interval_ms: 10_000,
        spool_epoch: epoch,
    }
}

/// A batch request from `host`'s spool `epoch`, its reply dropped (the suite reads outcomes).
pub(crate) fn request(host: &str, epoch: u64, seq: u64) -> WriteRequest {
    with_sender(
        Arc::new(sender(host, epoch)),
        pb::Batch { seq, created_unix_ms: 1_000 + seq as i64, ..Default::default() },
    )
}

pub(crate) fn with_sender(sender: Arc<Sender>, batch: pb::Batch) -> WriteRequest {
    let (reply, _) = oneshot::channel();
    let batch = pikett_proto::received::ReceivedBatch::from_batch(&batch);
    WriteRequest { sender, batch, status: false, series_over_limit: 0, reply }
}

/// An agent status from `host` (checks only, seq 0).
pub(crate) fn status(host: &str, epoch: u64) -> WriteRequest {
    let mut r = request(host, epoch, 0);
    r.status = true;
    r
}

/// Stores batches `(epoch, seq)` of `host` as one group; what each was.
pub(crate) async fn store(e: &impl BatchEngine, host: &str, batches: &[(u64, u64)]) -> Vec<Stored> {
    let group: Vec<_> = batches.iter().map(|&(epoch, seq)| request(host, epoch, seq)).collect();
    e.store_group(&group).await.into_iter().map(|o| o.stored).collect()
}

pub(crate) async fn new_and_duplicate_per_host_epoch_and_seq(e: &impl BatchEngine) {
    use Stored::{Duplicate, New};
    assert_eq!(store(e, "web1", &[(7, 1), (7, 2), (7, 2), (7, 3)]).await, [New, New, Duplicate, New]);
    assert_eq!(store(e, "web1", &[(7, 2), (7, 4), (7, 1)]).await, [Duplicate, New, Duplicate], "a resend");
    assert_eq!(store(e, "web2", &[(7, 1)]).await, [New], "another host's numbers are its own");
    let group = [request("web1", 7, 5), request("web2", 7, 1), request("web1", 7, 5), request("web2", 7, 2)];
    let stored: Vec<_> = e.store_group(&group).await.into_iter().map(|o| o.stored).collect();
    assert_eq!(stored, [New, Duplicate, Duplicate, New]);
    let s = e.store();
    assert_eq!((s.host("web1").unwrap().batches, s.host("web2").unwrap().batches), (5, 2));
    assert_eq!((s.batches_stored(), s.batches_retained()), (7, 7));
    for seq in 1..=5 {
        assert!(s.batch("web1", 7, seq).await.unwrap().is_some(), "web1 7/{seq} missing");
    }
    assert_eq!(s.batch("web1", 7, 6).await.unwrap(), None);
}

pub(crate) async fn a_new_epoch_is_new_batches_and_counts_a_spool_reset(e: &impl BatchEngine) {
    use Stored::New;
    // A new host's first epoch is no reset.
    assert_eq!(store(e, "web1", &[(7, 1), (7, 2), (7, 3)]).await, [New; 3]);
    assert_eq!(e.store().host("web1").unwrap().spool_resets, 0);
    // The same numbers from a new spool are new batches.
    assert_eq!(store(e, "web1", &[(9, 1), (9, 2)]).await, [New; 2]);
    let rec = e.store().host("web1").unwrap();
    assert_eq!((rec.spool_epoch, rec.spool_resets, rec.last_seq, rec.batches), (9, 1, 2, 5));
    // Switches within one group count each.
    assert_eq!(store(e, "web1", &[(11, 1), (11, 5), (12, 1)]).await, [New; 3]);
    let rec = e.store().host("web1").unwrap();
    assert_eq!((rec.spool_epoch, rec.spool_resets, rec.last_seq, rec.batches), (12, 3, 1, 8));
    // A duplicate of an old epoch changes nothing.
    assert_eq!(store(e, "web1", &[(9, 2)]).await, [Stored::Duplicate]);
    let rec = e.store().host("web1").unwrap();
    assert_eq!((rec.spool_epoch, rec.spool_resets, rec.last_seq, rec.batches), (12, 3, 1, 8));
    assert!(e.store().batch("web1", 7, 3).await.unwrap().is_some(), "the old epoch's batches stay");
}

pub(crate) async fn a_status_is_not_stored_as_a_batch(e: &impl BatchEngine) {
    let out = e.store_group(&[status("web1", 7), request("web1", 7, 1), status("web1", 7)]).await;
    let stored: Vec<_> = out.iter().map(|o| o.stored).collect();
    assert_eq!(stored, [Stored::Status, Stored::New, Stored::Status]);
    let s = e.store();
    let rec = s.host("web1").unwrap();
    assert_eq!((rec.batches, rec.retained, rec.last_seq), (1, 1, 1), "a status was counted as a batch");
    assert_eq!(s.batch("web1", 7, 0).await.unwrap(), None, "a status was stored as a batch");
    // A host known from statuses only: seen, with nothing stored, and its first batch is
    // no spool reset.
    assert_eq!(e.store_group(&[status("db1", 3)]).await[0].stored, Stored::Status);
    let rec = s.host("db1").expect("a status makes the host known");
    assert_eq!((rec.batches, rec.spool_epoch, rec.last_seq), (0, 0, 0));
    assert!(rec.last_seen_ms > 0);
    assert_eq!(s.stored_up_to("db1", 3).await.unwrap(), 0);
    assert_eq!(store(e, "db1", &[(3, 1)]).await, [Stored::New]);
    assert_eq!(s.host("db1").unwrap().spool_resets, 0);
    assert_eq!(s.batches_stored(), 2);
}

pub(crate) async fn the_host_registry_follows_what_is_stored(e: &impl BatchEngine) {
    let s = e.store();
    let before = now_ms();
    let mut first = request("web1", 7, 1);
    first.batch.modify(|b| b.dropped_samples = 40).unwrap();
    first.batch.modify(|b| b.dropped_other = 2).unwrap();
    e.store_group(&[first, request("web1", 7, 3), request("web1", 7, 2)]).await;
    let rec = s.host("web1").unwrap();
    let after = now_ms();
    assert_eq!(rec.host_id, "web1");
    assert_eq!((rec.customer.as_str(), rec.agent_version.as_str()), ("acme", "1.2.3"));
    assert_eq!(rec.capabilities, ["inventory", "status"]);
    assert_eq!(rec.min_interval_ms, 10_000);
    assert_eq!((rec.spool_epoch, rec.last_seq, rec.batches, rec.retained), (7, 3, 3, 3));
    assert_eq!((rec.dropped_samples, rec.dropped_other, rec.removed_ms), (40, 2, 0));
    // Seen times on the store's clock, this machine's: within the call (1 s of slack).
    assert!(rec.first_seen_ms >= before - 1_000 && rec.first_seen_ms <= after + 1_000, "{rec:?}");
    assert!(rec.last_seen_ms >= rec.first_seen_ms && rec.last_seen_ms <= after + 1_000, "{rec:?}");

    tokio::time::sleep(Duration::from_millis(20)).await;
    // A new agent version, customer and capabilities; a resend's drops are not counted again.
    let mut upgraded = sender("web1", 7);
    upgraded.customer = "globex".into();
    upgraded.agent_version = "1.3.0".into();
    upgraded.capabilities = vec!["status".into()];
    upgraded.min_interval_ms = 5_000;
    let upgraded = Arc::new(upgraded);
    let resend = with_sender(upgraded.clone(), pb::Batch { seq: 1, dropped_samples: 40, ..Default::default() });
    let fresh = with_sender(upgraded, pb::Batch { seq: 4, dropped_other: 1, ..Default::default() });
    let out = e.store_group(&[resend, fresh]).await;
    assert_eq!(out.iter().map(|o| o.stored).collect::<Vec<_>>(), [Stored::Duplicate, Stored::New]);
    let again = s.host("web1").unwrap();
    assert_eq!((again.customer.as_str(), again.agent_version.as_str()), ("globex", "1.3.0"));
    assert_eq!((again.capabilities.as_slice(), again.min_interval_ms), (["status".to_string()].as_slice(), 5_000));
    assert_eq!((again.last_seq, again.batches, again.retained), (4, 4, 4));
    assert_eq!((again.dropped_samples, again.dropped_other), (40, 3));
    assert_eq!(again.first_seen_ms, rec.first_seen_ms, "first seen moved");
    assert!(
        again.last_seen_ms > rec.last_seen_ms,
        "last seen did not move: {} then {}",
        rec.last_seen_ms,
        again.last_seen_ms
    );
    // A batch below the newest does not lower last_seq.
    assert_eq!(store(e, "web1", &[(7, 10), (7, 8)]).await, [Stored::New; 2]);
    assert_eq!(s.host("web1").unwrap().last_seq, 10);
    assert_eq!(s.hosts().iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>(), ["web1"]);
    assert_eq!((s.batches_stored(), s.batches_retained()), (6, 6));
}

pub(crate) async fn a_removed_host_is_monitored_again_when_it_reports(e: &impl BatchEngine) {
    let s = e.store();
    store(e, "web1", &[(7, 1)]).await;
    store(e, "web2", &[(7, 1)]).await;
    assert!(!s.remove_host("nope", now_ms()).await.unwrap(), "an unknown host was removed");
    assert!(s.host("nope").is_none());
    let at = now_ms();
    assert!(s.remove_host("web1", at).await.unwrap());
    assert_eq!(s.host("web1").unwrap().removed_ms, at);
    let active: Vec<_> = s.active_hosts().into_iter().map(|h| h.host_id).collect();
    assert_eq!(active, ["web2"]);
    assert_eq!(s.hosts().len(), 2, "a removed host is still known");
    // Reporting again (a status is enough) ends the removal.
    e.store_group(&[status("web1", 7)]).await;
    assert_eq!(s.host("web1").unwrap().removed_ms, 0);
    assert_eq!(s.active_hosts().len(), 2);
    assert!(s.remove_host("web2", at).await.unwrap());
    assert_eq!(store(e, "web2", &[(7, 1)]).await, [Stored::Duplicate]);
    assert_eq!(s.host("web2").unwrap().removed_ms, 0, "a duplicate also says the host is back");
}

pub(crate) async fn a_batch_reads_back_exactly_as_encoded(e: &impl BatchEngine) {
    let batch = pb::Batch {
        seq: 3,
        created_unix_ms: 1_700_000_000_123,
        samples: vec![pb::Sample { name: "load1".into(), value: 0.25, ..Default::default() }],
        dropped_samples: 7,
        ..Default::default()
    };
    let encoded = prost::Message::encode_to_vec(&batch);
    e.store_group(&[with_sender(Arc::new(sender("web1", u64::MAX - 1)), batch)]).await;
    let s = e.store();
    assert_eq!(s.batch("web1", u64::MAX - 1, 3).await.unwrap(), Some(encoded), "epochs above 2^63 included");
    assert_eq!(s.batch("web1", u64::MAX - 1, 4).await.unwrap(), None);
    assert_eq!(s.batch("web1", 1, 3).await.unwrap(), None);
    assert_eq!(s.batch("web2", u64::MAX - 1, 3).await.unwrap(), None);
    assert_eq!(s.host("web1").unwrap().spool_epoch, u64::MAX - 1);
}

pub(crate) async fn stored_up_to_is_the_highest_seq_of_the_epoch(e: &impl BatchEngine) {
    let s = e.store();
    assert_eq!(s.stored_up_to("web1", 7).await.unwrap(), 0, "an unknown host");
    store(e, "web1", &[(7, 1), (7, 3), (7, 2)]).await;
    assert_eq!(s.stored_up_to("web1", 7).await.unwrap(), 3);
    store(e, "web1", &[(9, 1), (9, 2)]).await;
    assert_eq!(s.stored_up_to("web1", 9).await.unwrap(), 2);
    assert_eq!(s.stored_up_to("web1", 42).await.unwrap(), 0, "an epoch never seen");
    assert_eq!(s.stored_up_to("web2", 9).await.unwrap(), 0);
}

pub(crate) async fn old_batches_are_pruned_oldest_first_in_steps(e: &impl BatchEngine) {
    let s = e.store();
    // Old: web1 1–3 and web2 1–2, one group each, apart in time; then the cutoff; then young.
    for (host, seq) in [("web1", 1), ("web1", 2), ("web2", 1), ("web1", 3), ("web2", 2)] {
        store(e, host, &[(7, seq)]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    store(e, "web1", &[(7, 4), (7, 5)]).await;
    store(e, "web2", &[(7, 3)]).await;
    e.store_group(&[status("web1", 7)]).await;
    assert_eq!((s.batches_stored(), s.batches_retained()), (8, 8));

    assert_eq!(s.prune_before(cutoff, 2).await.unwrap(), 2, "one step removes at most max");
    assert_eq!(s.batch("web1", 7, 1).await.unwrap(), None);
    assert_eq!(s.batch("web1", 7, 2).await.unwrap(), None);
    assert!(s.batch("web2", 7, 1).await.unwrap().is_some(), "not oldest first");
    assert_eq!((s.host("web1").unwrap().retained, s.host("web2").unwrap().retained), (3, 3));
    assert_eq!(s.prune_before(cutoff, 2).await.unwrap(), 2);
    assert_eq!(s.prune_before(cutoff, 2).await.unwrap(), 1);
    assert_eq!(s.prune_before(cutoff, 2).await.unwrap(), 0);
    for (host, seq) in [("web1", 4), ("web1", 5), ("web2", 3)] {
        assert!(s.batch(host, 7, seq).await.unwrap().is_some(), "young {host} 7/{seq} went");
    }
    let (web1, web2) = (s.host("web1").unwrap(), s.host("web2").unwrap());
    assert_eq!((web1.retained, web2.retained), (2, 1), "retained follows what is stored");
    assert_eq!((web1.batches, web2.batches), (5, 3), "the total received stays");
    assert_eq!((s.batches_stored(), s.batches_retained()), (8, 3));
    assert_eq!(web1.last_seq, 5);
    assert_eq!(s.prune_before(now_ms() + 1_000, 100).await.unwrap(), 3);
    assert_eq!(s.batches_retained(), 0);
}

/// The suite on sled: `BatchLog` with its batch files in a temporary directory.
mod sled {
    use super::*;
    use crate::services::batches::BatchLog;
    use crate::store::batch_files::BatchFiles;
    use crate::store::{SledStorage, Storage};

    pub(crate) struct SledBatches {
        log: BatchLog,
        _dir: tempfile::TempDir,
    }

    impl BatchEngine for SledBatches {
        fn store(&self) -> &dyn BatchStore {
            &self.log
        }
        async fn store_group(&self, group: &[WriteRequest]) -> Vec<Outcome> {
            let out = self.log.apply(group, now_ms()).expect("storing a group in sled");
            self.log.flush().await.expect("flushing sled");
            out
        }
    }

    async fn sled_engine() -> SledBatches {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().expect("a temporary sled"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = BatchFiles::open(dir.path(), Duration::from_secs(1), true).expect("batch files");
        SledBatches { log: BatchLog::open(storage, files).expect("opening the batch log"), _dir: dir }
    }

    batch_suite!(sled_engine);
}

//! [`Lease`] on PostgreSQL: the row `pikett_leader_lease` (id 1) and the table `pikett_collectors`
//! (migration 0002), on one dedicated session; plus [`fence`], the check every leader-only
//! transaction starts with.
//!
//! Every time is the database's `now()`: nodes' clocks may differ. Why a lease row and not an
//! advisory lock: a stopped leader (SIGSTOP, a VM pause) keeps its session, and so its lock,
//! alive (the kernel answers keepalives for it); a lease expires.
//!
//! The fence reads the lease row (holder, term, expiry) without a lock and locks the row of
//! `pikett_leader_fence` (the current term) `FOR SHARE`; an acquire updates that row too, in
//! its transaction, so a new term is taken only after every open transaction of the old one
//! ended: a stale commit never interleaves with a new term. A renewal updates only the lease
//! row, so the leader's own fenced transactions never hold up its renewals. An acquire waits
//! at most `lock_timeout` (2 s) for old transactions, and a transaction of a stopped leader
//! is ended by the server after `idle_in_transaction_session_timeout` (2 s) idle; leader
//! transactions must stay short.
//!
//! Dropping a request does not cancel its statement on the server, which may still commit
//! after the node gave up on it. So each acquire or renewal is one transaction whose
//! statements are bounded (`statement_timeout`) by what is left of the ttl (the leadership
//! task's limit) less a fifth, and which commits only while that fifth is left; an acquire
//! also takes a lease that is already the node's own (one that committed too late for it),
//! and a renewal extends only an unexpired lease. Node names must therefore be unique.
//!
//! Clocks: the lease's expiry is the database's wall clock. Its host must slew its clock
//! (NTP's default), never step it: a step forward expires the lease early, while the old
//! leader's own (monotonic) deadline says it still leads, and another node may take over;
//! the fence still refuses the old leader's database writes, but not its other side effects
//! (pages). A step backwards only delays a takeover.
//!
//! The session is taken out of its slot for each request and put back only after a success:
//! a failed or cancelled request (the leadership task bounds each by the ttl) leaves no
//! session behind, and the next request connects anew.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::{IsolationLevel, Transaction};

use super::conn::Session;
use super::{PgConnect, db};
use crate::store::{Cluster, Lease, LeaseState, NodeInfo, NodeRow, StoreError};

/// Free, expired, or already this node's: taken under the next term.
const ACQUIRE: &str = "UPDATE pikett_leader_lease SET holder = $1, term = term + 1, \
                       expires_at = now() + $2::bigint * interval '1 millisecond' \
                       WHERE id = 1 AND (holder IS NULL OR holder = $1 OR expires_at IS NULL OR expires_at < now()) \
                       RETURNING term";
/// In the acquire's transaction: waits for the open fenced transactions of the old term.
const ACQUIRE_FENCE: &str = "UPDATE pikett_leader_fence SET term = $1 WHERE id = 1";
/// `clock_timestamp()`: an expired lease is not renewed, however long the statement waited.
const RENEW: &str = "UPDATE pikett_leader_lease SET expires_at = now() + $3::bigint * interval '1 millisecond' \
                     WHERE id = 1 AND holder = $1 AND term = $2 AND expires_at > clock_timestamp() RETURNING term";
const CURRENT_LEADER: &str = "SELECT holder FROM pikett_leader_lease WHERE id = 1 AND expires_at > now()";
const RELEASE: &str =
    "UPDATE pikett_leader_lease SET holder = NULL, expires_at = NULL WHERE id = 1 AND holder = $1 AND term = $2";
const HEARTBEAT: &str = "INSERT INTO pikett_collectors (node, addr, version, started_at, heartbeat_at) \
                         VALUES ($1, $2, $3, now(), now()) \
                         ON CONFLICT (node) DO UPDATE SET addr = excluded.addr, version = excluded.version, \
                         heartbeat_at = now(), \
                         started_at = CASE WHEN $4 THEN now() ELSE pikett_collectors.started_at END";
/// Unix milliseconds of a timestamptz column.
macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::bigint")
    };
}
const READ_LEASE: &str =
    concat!("SELECT holder, term, ", ms!("expires_at"), ", ", ms!("now()"), " FROM pikett_leader_lease WHERE id = 1");
const READ_NODES: &str = concat!(
    "SELECT node, addr, version, ",
    ms!("started_at"),
    ", ",
    ms!("heartbeat_at"),
    " FROM pikett_collectors ORDER BY node"
);
/// `clock_timestamp()`, not `now()`: `now()` is the transaction's start, which may be well
/// before the fence when it is not the transaction's first statement. `f.term` is checked on
/// the locked row: when an acquire committed while the fence waited for it, the lock is
/// taken on the new row version, which has the new term (the lease row is then still read
/// from the fence's snapshot).
const FENCE: &str = "SELECT 1 FROM pikett_leader_fence f, pikett_leader_lease l \
                     WHERE f.id = 1 AND l.id = 1 AND f.term = $2 AND l.holder = $1 AND l.term = $2 \
                     AND l.expires_at > clock_timestamp() FOR SHARE OF f";

/// Fails with [`StoreError::Fenced`] unless `node` holds the lease with `term` right now, and
/// keeps the lease from changing hands until `tx` ends. Call it in every leader-only
/// transaction before it commits (first is best: it then also waits for a takeover running);
/// on `Fenced`, roll back and step down.
pub async fn fence(tx: &Transaction<'_>, node: &str, term: i64) -> Result<(), StoreError> {
    match tx.query_opt(FENCE, &[&node, &term]).await.map_err(db("checking the leader fence"))? {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced { node: node.to_string(), term }),
    }
}

/// [`Lease`] on PostgreSQL, on a session of its own (the schema is migrated by
/// `PgStorage::open`).
pub struct PgLease {
    session: Session,
    /// The nodes this lease sent a heartbeat for: the first one sets `started_at`.
    started: Mutex<HashSet<String>>,
}

impl PgLease {
    /// Connects on first use.
    pub fn new(connect: PgConnect) -> PgLease {
        PgLease { session: Session::new(connect), started: Mutex::new(HashSet::new()) }
    }

    /// The server process of the current session (tests end it to simulate a lost link).
    #[cfg(test)]
    pub(crate) async fn backend_pid(&self) -> Option<i32> {
        self.session.backend_pid().await
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Lease for PgLease {
    async fn try_acquire_or_renew(
        &self,
        node: &str,
        ttl: Duration,
        held: Option<i64>,
    ) -> Result<LeaseState, StoreError> {
        let start = Instant::now();
        // The leadership task gives up on the request `ttl` after sending it: by then every
        // statement ended and the commit was sent with a fifth of the ttl to spare.
        let commit_by = ttl.saturating_sub(ttl / 5);
        let ttl_ms = millis(ttl);
        self.session
            .with(async |client| {
                let what = if held.is_some() { "renewing the leader lease" } else { "acquiring the leader lease" };
                let tx = client.transaction().await.map_err(db(what))?;
                let left = commit_by.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
                tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", millis(left))).await.map_err(db(what))?;
                let row = match held {
                    Some(term) => tx.query_opt(RENEW, &[&node, &term, &ttl_ms]).await.map_err(db(what))?,
                    None => tx.query_opt(ACQUIRE, &[&node, &ttl_ms]).await.map_err(db(what))?,
                };
                let state = match row {
                    Some(row) => {
                        let term: i64 = row.try_get(0).map_err(db(what))?;
                        if held.is_none() {
                            tx.execute(ACQUIRE_FENCE, &[&term]).await.map_err(db(what))?;
                        }
                        if start.elapsed() >= commit_by {
                            // Dropping `tx` rolls it back: nothing is taken the task no longer waits for.
                            return Ok(Err(StoreError::Engine(format!(
                                "{what}: no time left to commit within {ttl:?}"
                            ))));
                        }
                        LeaseState::Leader { term }
                    }
                    None => {
                        let leader = tx.query_opt(CURRENT_LEADER, &[]).await.map_err(db(what))?;
                        let leader = match leader {
                            Some(row) => row.try_get(0).map_err(db(what))?,
                            None => None,
                        };
                        LeaseState::Follower { leader }
                    }
                };
                tx.commit().await.map_err(db(what))?;
                Ok(Ok(state))
            })
            .await?
    }

    async fn heartbeat(&self, node: &str, info: &NodeInfo) -> Result<(), StoreError> {
        let first = !self.started.lock().unwrap_or_else(PoisonError::into_inner).contains(node);
        self.session
            .with(async |client| {
                client
                    .execute(HEARTBEAT, &[&node, &info.addr, &info.version, &first])
                    .await
                    .map_err(|e| db("sending the heartbeat")(e).into())
            })
            .await?;
        self.started.lock().unwrap_or_else(PoisonError::into_inner).insert(node.to_string());
        Ok(())
    }

    async fn cluster(&self) -> Result<Cluster, StoreError> {
        self.session
            .with(async |client| {
                let what = "reading the cluster";
                // One snapshot: the lease, the nodes and now() agree.
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(db(what))?;
                let lease = tx.query_one(READ_LEASE, &[]).await.map_err(db(what))?;
                let nodes = tx.query(READ_NODES, &[]).await.map_err(db(what))?;
                tx.commit().await.map_err(db(what))?;
                let nodes = nodes
                    .iter()
                    .map(|r| {
                        Ok(NodeRow {
                            node: r.try_get(0)?,
                            addr: r.try_get(1)?,
                            version: r.try_get(2)?,
                            started_at_ms: r.try_get(3)?,
                            heartbeat_at_ms: r.try_get(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(db(what))?;
                Ok(Cluster {
                    holder: lease.try_get(0).map_err(db(what))?,
                    term: lease.try_get(1).map_err(db(what))?,
                    expires_at_ms: lease.try_get(2).map_err(db(what))?,
                    now_ms: lease.try_get(3).map_err(db(what))?,
                    nodes,
                })
            })
            .await
    }

    async fn release(&self, node: &str, term: i64) -> Result<(), StoreError> {
        self.session
            .with(async |client| {
                client
                    .execute(RELEASE, &[&node, &term])
                    .await
                    .map_err(|e| db("releasing the leader lease")(e).into())
                    .map(drop)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Instant, SystemTime};
    use tokio_postgres::Client;

    use super::super::migrate;
    use super::super::testing::fresh_database;
    use super::*;
    use crate::services::leadership::{Leadership, Local, Timing};

    /// A migrated database and a way to reach it.
    async fn database() -> PgConnect {
        let url = fresh_database().await;
        let connect = PgConnect::new(&url, None).unwrap();
        migrate::migrate(&mut connect.connect().await.unwrap()).await.unwrap();
        connect
    }

    fn leader_term(state: &LeaseState) -> Option<i64> {
        match state {
            LeaseState::Leader { term } => Some(*term),
            LeaseState::Follower { .. } => None,
        }
    }

    /// Tries until `lease` acquires (every 20 ms, at most `limit`); the instant it did.
    async fn acquire_within(lease: &PgLease, node: &str, ttl: Duration, limit: Duration) -> (i64, Instant) {
        let start = Instant::now();
        loop {
            let state = lease.try_acquire_or_renew(node, ttl, None).await.unwrap();
            if let Some(term) = leader_term(&state) {
                return (term, Instant::now());
            }
            assert!(start.elapsed() < limit, "{node} did not acquire within {limit:?}: {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A session for a fenced transaction that may stay open (idle) as long as a test needs.
    async fn patient_session(connect: &PgConnect) -> Client {
        let client = connect.connect().await.unwrap();
        client.batch_execute("SET idle_in_transaction_session_timeout = 0").await.unwrap();
        client
    }

    /// Waits (at most 20 s) until the server process `pid` waits for a lock.
    async fn until_waiting_for_a_lock(observer: &Client, pid: i32) {
        let start = Instant::now();
        loop {
            let row = observer
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", &[&pid])
                .await
                .unwrap();
            if row.is_some() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{pid} never waited for a lock");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most 20 s) until the lease has expired on the database's clock.
    async fn until_expired(lease: &PgLease) {
        let start = Instant::now();
        while lease.cluster().await.unwrap().leader().is_some() {
            assert!(start.elapsed() < Duration::from_secs(20), "the lease did not expire");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn three_nodes_started_at_once_elect_exactly_one_leader() {
        let connect = database().await;
        let ttl = Duration::from_secs(60);
        let leases: Vec<_> = (0..3).map(|_| Arc::new(PgLease::new(connect.clone()))).collect();
        let barrier = Arc::new(tokio::sync::Barrier::new(3));
        let mut runs = Vec::new();
        for (i, lease) in leases.iter().enumerate() {
            let (lease, barrier) = (lease.clone(), barrier.clone());
            runs.push(tokio::spawn(async move {
                lease.heartbeat(&format!("n{i}"), &NodeInfo::default()).await.unwrap(); // connected
                barrier.wait().await;
                lease.try_acquire_or_renew(&format!("n{i}"), ttl, None).await.unwrap()
            }));
        }
        let mut states = Vec::new();
        for run in runs {
            states.push(run.await.unwrap());
        }
        let leaders: Vec<_> = states.iter().enumerate().filter(|(_, s)| leader_term(s).is_some()).collect();
        assert_eq!(leaders.len(), 1, "{states:?}");
        let (winner, state) = leaders[0];
        assert_eq!(leader_term(state), Some(1));
        let name = format!("n{winner}");
        for (i, s) in states.iter().enumerate().filter(|(i, _)| *i != winner) {
            assert_eq!(*s, LeaseState::Follower { leader: Some(name.clone()) }, "n{i}");
        }
        // The others stay followers while the leader renews.
        assert_eq!(leases[winner].try_acquire_or_renew(&name, ttl, Some(1)).await.unwrap(), *state);
        for (i, lease) in leases.iter().enumerate().filter(|(i, _)| *i != winner) {
            let s = lease.try_acquire_or_renew(&format!("n{i}"), ttl, None).await.unwrap();
            assert_eq!(leader_term(&s), None, "n{i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_leadership_tasks_agree_on_one_leader() {
        let connect = database().await;
        let timing = Timing::for_ttl(Duration::from_secs(5));
        let mut watches = Vec::new();
        for i in 0..3 {
            let lease = Arc::new(PgLease::new(connect.clone()));
            let (rx, _task) = crate::services::leadership::spawn(
                lease,
                format!("n{i}"),
                NodeInfo::default(),
                timing,
                std::future::pending(),
            );
            watches.push(rx);
        }
        let leaders = || -> Vec<(usize, i64)> {
            watches.iter().enumerate().filter_map(|(i, w)| w.borrow().leads_now().map(|t| (i, t))).collect()
        };
        let start = Instant::now();
        let first = loop {
            let now = leaders();
            assert!(now.len() <= 1, "{now:?}");
            if let Some(&first) = now.first() {
                break first;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "nobody leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Sampled for 3 s: never two leaders; the leader and its term do not change (it
        // renews every second, the lease lasts 5 s).
        for _ in 0..12 {
            let now = leaders();
            assert!(now.len() <= 1 && now.iter().all(|l| *l == first), "{now:?} after {first:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_leader_deposes_itself_before_expiry_and_another_takes_over_with_a_higher_term() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), PgLease::new(connect.clone()));
        a.heartbeat("a", &NodeInfo::default()).await.unwrap(); // connected
        let ttl = Duration::from_secs(3);
        let timing = Timing::for_ttl(ttl);
        let mut local_a = Local::new(timing);
        // a acquires; then it stops renewing (as if SIGSTOPped) but keeps its session.
        let sent_wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let sent = Instant::now();
        let state = a.try_acquire_or_renew("a", ttl, None).await.unwrap();
        local_a.on_answer(sent, Instant::now(), Some(&state));
        let term_a = local_a.is_leader(Instant::now()).expect("a leads");
        assert_eq!(
            b.try_acquire_or_renew("b", ttl, None).await.unwrap(),
            LeaseState::Follower { leader: Some("a".into()) }
        );
        // The database's expiry (its clock, here this machine's) is at least a ttl after the
        // send, a's own deadline a margin less: a steps down first.
        let cluster = b.cluster().await.unwrap();
        let sent_ms = i64::try_from(sent_wall.as_millis()).unwrap();
        assert!(cluster.expires_at_ms.unwrap() >= sent_ms + millis(ttl), "{cluster:?} sent at {sent_ms}");
        let deadline = local_a.deadline().unwrap();
        assert_eq!(deadline, sent + ttl - timing.margin);
        tokio::time::sleep_until(deadline.into()).await;
        assert!(local_a.tick(Instant::now()), "a deposes itself at its deadline");
        assert_eq!(local_a.held(Instant::now()), None);
        // b takes over after the expiry, with the next term.
        let (term_b, at) = acquire_within(&b, "b", ttl, Duration::from_secs(30)).await;
        assert_eq!(term_b, term_a + 1);
        println!(
            "takeover {:?} after a's last renewal was sent (ttl {ttl:?}; a stepped down after {:?})",
            at - sent,
            deadline - sent
        );
        assert!(at - sent >= ttl, "taken before the database's expiry");
        // a wakes up: its renewal of the old term fails, it follows b.
        assert_eq!(
            a.try_acquire_or_renew("a", ttl, Some(term_a)).await.unwrap(),
            LeaseState::Follower { leader: Some("b".into()) }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_fenced_with_a_stale_term_fails_and_writes_nothing() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), PgLease::new(connect.clone()));
        let (short, long) = (Duration::from_secs(1), Duration::from_secs(60));
        let (term_a, _) = acquire_within(&a, "a", short, Duration::from_secs(20)).await;
        let (term_b, _) = acquire_within(&b, "b", long, Duration::from_secs(20)).await;
        let mut client = connect.connect().await.unwrap();
        client.batch_execute("CREATE TABLE pages (id int)").await.unwrap();
        // The stale leader writes, then fences: the whole transaction is refused.
        let tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO pages VALUES (1)", &[]).await.unwrap();
        let err = fence(&tx, "a", term_a).await.unwrap_err();
        assert!(matches!(&err, StoreError::Fenced { node, term } if node == "a" && *term == term_a), "{err}");
        drop(tx);
        // The current leader passes, and so does its write.
        let tx = client.transaction().await.unwrap();
        fence(&tx, "b", term_b).await.unwrap();
        tx.execute("INSERT INTO pages VALUES (2)", &[]).await.unwrap();
        tx.commit().await.unwrap();
        // b's own lease, once expired, fences b too.
        assert_eq!(
            b.try_acquire_or_renew("b", short, Some(term_b)).await.unwrap(),
            LeaseState::Leader { term: term_b }
        );
        until_expired(&b).await;
        let tx = client.transaction().await.unwrap();
        assert!(matches!(fence(&tx, "b", term_b).await, Err(StoreError::Fenced { .. })));
        drop(tx);
        let rows: Vec<i32> =
            client.query("SELECT id FROM pages", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(rows, [2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquire_waits_for_an_open_fenced_transaction_of_the_old_term() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), Arc::new(PgLease::new(connect.clone())));
        // b is connected before it tries: what it waits for is the lock, not a connection.
        b.heartbeat("b", &NodeInfo::default()).await.unwrap();
        let b_pid = b.backend_pid().await.unwrap();
        let observer = connect.connect().await.unwrap();
        let ttl = Duration::from_secs(2);
        let (term_a, _) = acquire_within(&a, "a", ttl, Duration::from_secs(20)).await;
        let mut client = patient_session(&connect).await;
        client.batch_execute("CREATE TABLE pages (id int)").await.unwrap();
        let tx = client.transaction().await.unwrap();
        fence(&tx, "a", term_a).await.unwrap();
        // The lease expires while a's transaction is open.
        until_expired(&b).await;
        let acquire = {
            let b = b.clone();
            tokio::spawn(async move { b.try_acquire_or_renew("b", Duration::from_secs(30), None).await })
        };
        until_waiting_for_a_lock(&observer, b_pid).await;
        assert!(!acquire.is_finished(), "the acquire went ahead of an open transaction of the old term");
        tx.execute("INSERT INTO pages VALUES (1)", &[]).await.unwrap();
        tx.commit().await.unwrap();
        let state = tokio::time::timeout(Duration::from_secs(20), acquire).await.unwrap().unwrap().unwrap();
        assert_eq!(state, LeaseState::Leader { term: term_a + 1 });
        // And a transaction opened by a after that is fenced.
        let tx = client.transaction().await.unwrap();
        assert!(matches!(fence(&tx, "a", term_a).await, Err(StoreError::Fenced { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_fenced_transaction_of_the_leader_does_not_hold_up_its_renewal() {
        let connect = database().await;
        let a = PgLease::new(connect.clone());
        let ttl = Duration::from_secs(60);
        let (term, _) = acquire_within(&a, "a", ttl, Duration::from_secs(20)).await;
        let mut client = patient_session(&connect).await;
        let tx = client.transaction().await.unwrap();
        fence(&tx, "a", term).await.unwrap();
        // Before the fix, the renewal waited for the transaction until lock_timeout (2 s) and failed.
        for _ in 0..3 {
            let renewed = tokio::time::timeout(Duration::from_secs(20), a.try_acquire_or_renew("a", ttl, Some(term)))
                .await
                .expect("the renewal answers");
            assert_eq!(renewed.unwrap(), LeaseState::Leader { term });
        }
        // The fenced transaction is still the current term's.
        fence(&tx, "a", term).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_acquires_its_own_lease_under_the_next_term_and_an_expired_one_is_not_renewed() {
        let connect = database().await;
        let a = PgLease::new(connect.clone());
        let ttl = Duration::from_secs(60);
        let (term, _) = acquire_within(&a, "a", ttl, Duration::from_secs(20)).await;
        // An acquire of a's that committed after a gave up on it: a's next acquire takes the
        // lease under the next term instead of waiting for it to expire.
        assert_eq!(a.try_acquire_or_renew("a", ttl, None).await.unwrap(), LeaseState::Leader { term: term + 1 });
        assert_eq!(
            a.try_acquire_or_renew("a", ttl, Some(term)).await.unwrap(),
            LeaseState::Follower { leader: Some("a".into()) },
            "the old term is gone"
        );
        // A renewal that reaches the database after the expiry does not bring the lease back.
        let short = Duration::from_secs(1);
        assert_eq!(
            a.try_acquire_or_renew("a", short, Some(term + 1)).await.unwrap(),
            LeaseState::Leader { term: term + 1 }
        );
        until_expired(&a).await;
        assert_eq!(
            a.try_acquire_or_renew("a", short, Some(term + 1)).await.unwrap(),
            LeaseState::Follower { leader: None }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquire_the_node_gave_up_on_never_commits() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), PgLease::new(connect.clone()));
        b.heartbeat("b", &NodeInfo::default()).await.unwrap();
        let b_pid = b.backend_pid().await.unwrap();
        let observer = connect.connect().await.unwrap();
        let (term_a, _) = acquire_within(&a, "a", Duration::from_secs(1), Duration::from_secs(20)).await;
        let client = patient_session(&connect).await;
        let mut client = client;
        let tx = client.transaction().await.unwrap();
        fence(&tx, "a", term_a).await.unwrap();
        until_expired(&b).await;
        // b's acquire waits for a's transaction; b gives up on it after a second (as the
        // leadership task does after a ttl) and a's transaction ends right after.
        let ttl = Duration::from_secs(1);
        let gave_up = tokio::time::timeout(ttl, b.try_acquire_or_renew("b", ttl, None)).await;
        assert!(!matches!(gave_up, Ok(Ok(LeaseState::Leader { .. }))), "{gave_up:?}");
        tx.commit().await.unwrap();
        // Whatever b's server process still does, it does not take the lease for b.
        let start = Instant::now();
        loop {
            let busy = observer
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'", &[&b_pid])
                .await
                .unwrap();
            if busy.is_none() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "b's server process is still busy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cluster = a.cluster().await.unwrap();
        assert_eq!((cluster.holder.as_deref(), cluster.term), (Some("a"), term_a), "{cluster:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_release_lets_another_node_acquire_at_once() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), PgLease::new(connect.clone()));
        let ttl = Duration::from_secs(60);
        let (term_a, _) = acquire_within(&a, "a", ttl, Duration::from_secs(20)).await;
        // A release under a wrong term or by another node changes nothing.
        a.release("a", term_a + 1).await.unwrap();
        b.release("b", term_a).await.unwrap();
        assert_eq!(
            b.try_acquire_or_renew("b", ttl, None).await.unwrap(),
            LeaseState::Follower { leader: Some("a".into()) }
        );
        a.release("a", term_a).await.unwrap();
        assert_eq!(b.cluster().await.unwrap().leader(), None);
        assert_eq!(b.try_acquire_or_renew("b", ttl, None).await.unwrap(), LeaseState::Leader { term: term_a + 1 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_leadership_task_hands_over_before_the_ttl() {
        let connect = database().await;
        // Tries every 4 s; the lease lasts 20 s.
        let timing = Timing::for_ttl(Duration::from_secs(20));
        let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
        let (mut a, task_a) = crate::services::leadership::spawn(
            Arc::new(PgLease::new(connect.clone())),
            "a".into(),
            NodeInfo::default(),
            timing,
            async move {
                let _ = stopped_a.await;
            },
        );
        tokio::time::timeout(Duration::from_secs(20), a.wait_for(|l| l.term() == Some(1)))
            .await
            .expect("a leads")
            .unwrap();
        let (mut b, _task_b) = crate::services::leadership::spawn(
            Arc::new(PgLease::new(connect.clone())),
            "b".into(),
            NodeInfo::default(),
            timing,
            std::future::pending(),
        );
        tokio::time::timeout(
            Duration::from_secs(20),
            b.wait_for(|l| *l == Leadership::Follower { leader: Some("a".into()) }),
        )
        .await
        .expect("b follows a")
        .unwrap();
        let start = Instant::now();
        stop_a.send(()).unwrap();
        task_a.await.unwrap();
        assert_eq!(*a.borrow(), Leadership::Follower { leader: None });
        // b's next try takes it: long before the lease (renewed at most 4 s before the stop)
        // would have expired.
        tokio::time::timeout(Duration::from_secs(12), b.wait_for(|l| l.term() == Some(2)))
            .await
            .expect("b takes over before the ttl")
            .unwrap();
        println!("hand-over after a clean stop: {:?}", start.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_show_in_the_cluster_with_the_database_clock() {
        let connect = database().await;
        let (a, b) = (PgLease::new(connect.clone()), PgLease::new(connect.clone()));
        let info = |addr: &str| NodeInfo { addr: addr.into(), version: "1.2.3".into() };
        a.heartbeat("a", &info("10.0.0.1:7443")).await.unwrap();
        b.heartbeat("b", &info("10.0.0.2:7443")).await.unwrap();
        let (term, _) = acquire_within(&a, "a", Duration::from_secs(60), Duration::from_secs(20)).await;
        let first = b.cluster().await.unwrap();
        assert_eq!((first.leader(), first.term), (Some("a"), term));
        let expires = first.expires_at_ms.unwrap() - first.now_ms;
        assert!((30_000..=60_000).contains(&expires), "the lease expires in {expires} ms");
        let names: Vec<_> =
            first.nodes.iter().map(|n| (n.node.as_str(), n.addr.as_str(), n.version.as_str())).collect();
        assert_eq!(names, [("a", "10.0.0.1:7443", "1.2.3"), ("b", "10.0.0.2:7443", "1.2.3")]);
        for n in &first.nodes {
            let at = n.heartbeat_at_ms.unwrap();
            assert!(at <= first.now_ms && first.now_ms - at < 30_000, "{n:?} at {}", first.now_ms);
            assert_eq!(n.started_at_ms, n.heartbeat_at_ms, "{n:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.heartbeat("a", &info("10.0.0.1:7443")).await.unwrap();
        let second = b.cluster().await.unwrap();
        let (a1, a2) = (&first.nodes[0], &second.nodes[0]);
        assert!(a2.heartbeat_at_ms > a1.heartbeat_at_ms, "{a1:?} then {a2:?}");
        assert_eq!(a2.started_at_ms, a1.started_at_ms, "started_at is kept");
        assert_eq!(second.nodes[1], first.nodes[1], "b sent nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_session_is_reconnected() {
        let connect = database().await;
        let a = PgLease::new(connect.clone());
        let ttl = Duration::from_secs(60);
        let (term, _) = acquire_within(&a, "a", ttl, Duration::from_secs(20)).await;
        let pid = a.backend_pid().await.unwrap();
        let killer = connect.connect().await.unwrap();
        killer.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        // The first request after may fail (the loss is noticed by it); the next reconnects.
        let mut answers = Vec::new();
        for _ in 0..2 {
            match a.try_acquire_or_renew("a", ttl, Some(term)).await {
                Ok(state) => {
                    answers.push(state);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert_eq!(answers, [LeaseState::Leader { term }]);
        assert_ne!(a.backend_pid().await.unwrap(), pid);
    }
}

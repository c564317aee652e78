//! Leadership among collectors sharing one database (HA design, step 6): who may decide and
//! page. The engine is behind [`Lease`] (`store/pg/lease.rs` on PostgreSQL, [`StandaloneLease`]
//! for the embedded sled setup); this module holds the decisions, pure and tested without a
//! clock, and the task that runs them.
//!
//! The leader's own deadline is the monotonic instant its last successful renewal was *sent*
//! plus the ttl minus a margin. The database computed the lease's expiry from its `now()`,
//! which is at or after that send, so the local deadline comes first without any clock sync:
//! a leader that is stopped, partitioned or slowed down has stepped down (on its own, even
//! with the database unreachable) before anybody else can take the lease. The margin covers a
//! slower local clock and the time to stop acting. What a deposed leader still tries to write
//! is refused by the fence (`store::pg::fence`): the term it holds is no longer the lease's.
//!
//! `server.rs` runs the task (on sled with [`StandaloneLease`]) and `pikett status` reads the
//! cluster through [`ClusterView`]; the leader-only services are not gated yet: `server.rs`
//! will build them on [`Leadership::Leader`] and drop them on [`Leadership::Follower`], and
//! they check [`Leadership::leads_now`] right before each side effect (a published `Leader`
//! can be stale after a stall).
//!
//! On the embedded setup [`StandaloneLease`] grants every acquire under the next term, so the
//! single collector cannot lose its leadership for good: after a stall past its deadline it
//! leads again under a new term at its next request.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{Cluster, Lease, LeaseState, NodeInfo, NodeRow, StoreError};

/// What this node may do, as published by [`spawn`].
///
/// A published `Leader` may be stale: after a stall (SIGSTOP, a VM pause) a task can read it
/// before the leadership task woke up to publish `Follower`. So every side effect checks
/// [`Leadership::leads_now`] right before acting, not only the variant. The watch notifies
/// only when the role or term changes; each renewal moves `until` silently (a
/// `borrow()` always sees the latest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads: it decides and pages, fencing its writes with `term`, until `until`
    /// (monotonic, this node's own deadline) unless renewed before.
    Leader { term: i64, until: Instant },
    /// Another node leads (`leader`), or none is known to: this node only ingests.
    Follower { leader: Option<String> },
}

impl Leadership {
    /// The term this node leads with at `now`: `None` for a follower and for a leader whose
    /// deadline passed (whatever the watch still says).
    pub fn leads_at(&self, now: Instant) -> Option<i64> {
        match self {
            Leadership::Leader { term, until } if now < *until => Some(*term),
            _ => None,
        }
    }

    /// [`Leadership::leads_at`] now: the check a leader-only side effect makes right before
    /// acting (and the term to fence it with).
    pub fn leads_now(&self) -> Option<i64> {
        self.leads_at(Instant::now())
    }

    /// The term of a `Leader`, whatever its deadline.
    pub fn term(&self) -> Option<i64> {
        match self {
            Leadership::Leader { term, .. } => Some(*term),
            Leadership::Follower { .. } => None,
        }
    }

    /// The same role and term (or known leader), whatever the deadline.
    fn same_role(&self, other: &Leadership) -> bool {
        match (self, other) {
            (Leadership::Leader { term: a, .. }, Leadership::Leader { term: b, .. }) => a == b,
            (Leadership::Follower { leader: a }, Leadership::Follower { leader: b }) => a == b,
            _ => false,
        }
    }
}

/// The lease's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal holds the lease, on the database's clock.
    pub ttl: Duration,
    /// How much earlier than `ttl` after sending a renewal the leader steps down.
    pub margin: Duration,
    /// How often the lease is renewed (by the leader) or tried (by the others), with a
    /// heartbeat each time.
    pub interval: Duration,
}

impl Timing {
    /// Renewal every ttl/5 and a margin of ttl/5: for the default ttl of 5 s, every 1 s with
    /// a margin of 1 s, so a leader misses three renewals before it steps down.
    pub fn for_ttl(ttl: Duration) -> Timing {
        Timing { ttl, margin: ttl / 5, interval: ttl / 5 }
    }

    /// The leader's own deadline for a renewal sent at `sent`.
    pub fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.margin)
    }
}

/// This node's view of its leadership, changed only by the answers it gets and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Leads with `term` until `deadline` (monotonic) unless renewed before.
    Leader {
        term: i64,
        deadline: Instant,
    },
    Follower {
        leader: Option<String>,
    },
}

/// The decisions of one node, over plain data: feed it the answers and the time.
#[derive(Debug, Clone)]
pub struct Local {
    timing: Timing,
    role: Role,
    /// The highest term this node stopped leading (or was confirmed too late to lead): never
    /// led again, so the services of one term start at most once per node.
    retired: i64,
}

impl Local {
    pub fn new(timing: Timing) -> Local {
        Local { timing, role: Role::Follower { leader: None }, retired: 0 }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The own deadline while leading.
    pub fn deadline(&self) -> Option<Instant> {
        match self.role {
            Role::Leader { deadline, .. } => Some(deadline),
            Role::Follower { .. } => None,
        }
    }

    /// Whether this node leads at `now` (its deadline not passed, whatever it heard since).
    pub fn is_leader(&self, now: Instant) -> Option<i64> {
        match self.role {
            Role::Leader { term, deadline } if now < deadline => Some(term),
            _ => None,
        }
    }

    /// The term to renew with when sending at `now`; `None`: try to acquire. A term whose
    /// deadline passed is never renewed: the next lease is taken under a new term.
    pub fn held(&mut self, now: Instant) -> Option<i64> {
        self.tick(now);
        self.is_leader(now)
    }

    /// Steps down when the deadline passed at `now`; true when it did.
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.role {
            Role::Leader { term, deadline } if now >= deadline => {
                self.retired = self.retired.max(term);
                self.role = Role::Follower { leader: None };
                true
            }
            _ => false,
        }
    }

    /// The answer to the request sent at `sent`, received at `now`; `None` when it failed
    /// (the database unreachable, a timeout): a leader keeps leading until its deadline.
    pub fn on_answer(&mut self, sent: Instant, now: Instant, answer: Option<&LeaseState>) {
        match answer {
            Some(LeaseState::Leader { term }) => {
                let deadline = self.timing.deadline(sent);
                self.role = if now < deadline && *term > self.retired {
                    Role::Leader { term: *term, deadline }
                } else {
                    // Confirmed too late to act on, or a term given up already (a renewal
                    // in flight when the deadline passed): not renewed again, the lease
                    // expires and is taken under a new term.
                    self.retired = self.retired.max(*term);
                    Role::Follower { leader: None }
                };
            }
            Some(LeaseState::Follower { leader }) => self.role = Role::Follower { leader: leader.clone() },
            None => {
                self.tick(now);
            }
        }
    }

    pub fn leadership(&self) -> Leadership {
        match &self.role {
            Role::Leader { term, deadline } => Leadership::Leader { term: *term, until: *deadline },
            Role::Follower { leader } => Leadership::Follower { leader: leader.clone() },
        }
    }
}

/// The lease row and the rules the database applies to it (the SQL of `store/pg/lease.rs`),
/// as plain data: `now` and `expires` are the database's clock. For the property tests and
/// [`StandaloneLease`]-like doubles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow<T> {
    pub holder: Option<String>,
    pub term: i64,
    pub expires: Option<T>,
}

impl<T> Default for LeaseRow<T> {
    /// The seeded row: nobody, term 0.
    fn default() -> Self {
        LeaseRow { holder: None, term: 0, expires: None }
    }
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> LeaseRow<T> {
    /// Takes the lease when it is free, expired or already `me`'s (an acquire of `me` that
    /// committed after `me` gave up on it), under the previous term + 1.
    pub fn acquire(&mut self, me: &str, now: T, ttl: Duration) -> Option<i64> {
        let free = self.holder.is_none() || self.holder.as_deref() == Some(me) || self.expires.is_none_or(|e| e < now);
        if !free {
            return None;
        }
        self.holder = Some(me.to_string());
        self.term += 1;
        self.expires = Some(now + ttl);
        Some(self.term)
    }

    /// Extends the lease `me` holds with `term`, unless it expired already.
    pub fn renew(&mut self, me: &str, term: i64, now: T, ttl: Duration) -> Option<i64> {
        if self.holder.as_deref() != Some(me) || self.term != term || self.expires.is_none_or(|e| e <= now) {
            return None;
        }
        self.expires = Some(now + ttl);
        Some(term)
    }

    /// Whether a transaction of `me` under `term` passes the fence at `now`.
    pub fn fence(&self, me: &str, term: i64, now: T) -> bool {
        self.holder.as_deref() == Some(me) && self.term == term && self.expires.is_some_and(|e| e > now)
    }

    /// The holder whose lease has not expired at `now`.
    pub fn leader(&self, now: T) -> Option<&str> {
        self.holder.as_deref().filter(|_| self.expires.is_some_and(|e| e > now))
    }

    /// What the database answers to [`Lease::try_acquire_or_renew`].
    pub fn answer(&mut self, me: &str, held: Option<i64>, now: T, ttl: Duration) -> LeaseState {
        let got = match held {
            Some(term) => self.renew(me, term, now, ttl),
            None => self.acquire(me, now, ttl),
        };
        match got {
            Some(term) => LeaseState::Leader { term },
            None => LeaseState::Follower { leader: self.leader(now).map(str::to_string) },
        }
    }
}

/// Spawns the leadership task of `node`: every `timing.interval` it renews or tries the lease
/// and sends a heartbeat; it publishes [`Leadership`] on the returned watch (starting as a
/// follower), steps down the moment its own deadline passes (even while a request hangs), and
/// when `stop` completes it steps down and releases a lease it holds, so another node takes
/// over at once. The handle ends after that.
pub fn spawn(
    lease: Arc<dyn Lease>,
    node: String,
    info: NodeInfo,
    timing: Timing,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<Leadership>, JoinHandle<()>) {
    spawn_with(lease, node, info, timing, stop, None)
}

/// [`spawn`], taking the lease only while `no_acquire` says false: a node that is stopping
/// keeps renewing a lease it holds (until `stop`) but takes none, so a failover does not land
/// on a collector about to go away.
pub fn spawn_with(
    lease: Arc<dyn Lease>,
    node: String,
    info: NodeInfo,
    timing: Timing,
    stop: impl Future<Output = ()> + Send + 'static,
    no_acquire: Option<watch::Receiver<bool>>,
) -> (watch::Receiver<Leadership>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::Follower { leader: None });
    let task = tokio::spawn(run(lease, node, info, timing, tx, stop, no_acquire));
    (rx, task)
}

type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

enum Waited<T> {
    Done(T),
    TimedOut,
    Stopped,
}

struct Runner {
    local: Local,
    tx: watch::Sender<Leadership>,
    node: String,
}

impl Runner {
    /// Publishes the current leadership: notifies on a change of role or term; a renewal
    /// only moves `until`, silently (see [`Leadership`]).
    fn publish(&self) {
        let now = self.local.leadership();
        self.tx.send_if_modified(|seen| {
            let changed = !seen.same_role(&now);
            if changed {
                tracing::info!(node = %self.node, from = ?seen, to = ?now, "leadership changed");
            }
            *seen = now;
            changed
        });
    }

    /// Waits for `f` until `until`, stepping down the moment the own deadline passes, and
    /// gives up when `stop` completes.
    async fn wait<F: Future>(&mut self, f: F, until: Instant, stop: &mut Stop) -> Waited<F::Output> {
        tokio::pin!(f);
        let limit = tokio::time::sleep_until(until.into());
        tokio::pin!(limit);
        loop {
            let deadline = self.local.deadline();
            tokio::select! {
                biased;
                () = stop.as_mut() => return Waited::Stopped,
                () = tokio::time::sleep_until(deadline.unwrap_or(until).into()), if deadline.is_some() => {
                    if self.local.tick(Instant::now()) {
                        tracing::warn!(node = %self.node, "leader lease not renewed in time: stepping down");
                        self.publish();
                    }
                }
                out = &mut f => return Waited::Done(out),
                () = &mut limit => return Waited::TimedOut,
            }
        }
    }
}

async fn run(
    lease: Arc<dyn Lease>,
    node: String,
    info: NodeInfo,
    timing: Timing,
    tx: watch::Sender<Leadership>,
    stop: impl Future<Output = ()> + Send + 'static,
    no_acquire: Option<watch::Receiver<bool>>,
) {
    let mut stop: Stop = Box::pin(stop);
    let mut r = Runner { local: Local::new(timing), tx, node: node.clone() };
    // Never a busy loop, whatever the configuration says.
    let interval = timing.interval.max(Duration::from_millis(10));
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let held = r.local.held(sent);
        r.publish();
        if held.is_none() && no_acquire.as_ref().is_some_and(|no| *no.borrow()) {
            // Stopping: no new lease, only the heartbeat.
            if let Waited::Stopped = r.wait(std::future::pending::<()>(), sent + interval, &mut stop).await {
                break;
            }
            continue;
        }
        // A request never waits longer than the ttl: by then its answer is useless.
        let answer =
            match r.wait(lease.try_acquire_or_renew(&node, timing.ttl, held), sent + timing.ttl, &mut stop).await {
                Waited::Stopped => break,
                Waited::Done(Ok(state)) => Some(state),
                Waited::Done(Err(e)) => {
                    if !failing {
                        tracing::warn!(node = %node, "leader lease: {e}");
                    }
                    None
                }
                Waited::TimedOut => {
                    if !failing {
                        tracing::warn!(node = %node, "leader lease: no answer within {:?}", timing.ttl);
                    }
                    None
                }
            };
        failing = answer.is_none();
        r.local.on_answer(sent, Instant::now(), answer.as_ref());
        r.publish();
        // While the database does not answer, try again sooner: a leader whose database is back
        // within its ttl (a restart) keeps the lease instead of waiting a whole interval.
        let next = if failing { sent + interval / 4 } else { sent + interval };
        if !failing {
            match r.wait(lease.heartbeat(&node, &info), next.max(Instant::now() + interval / 2), &mut stop).await {
                Waited::Stopped => break,
                Waited::Done(Err(e)) => tracing::warn!(node = %node, "heartbeat: {e}"),
                _ => {}
            }
        }
        if let Waited::Stopped = r.wait(std::future::pending::<()>(), next, &mut stop).await {
            break;
        }
    }
    // A clean shutdown: stop leading first, then give the lease up (fenced transactions still
    // open hold up the next acquire, not the release; later ones fail the fence).
    let held = r.local.is_leader(Instant::now());
    r.local.role = Role::Follower { leader: None };
    r.publish();
    if let Some(term) = held {
        match tokio::time::timeout(timing.ttl, lease.release(&node, term)).await {
            Ok(Ok(())) => tracing::info!(node = %node, term, "leader lease released"),
            Ok(Err(e)) => tracing::warn!(node = %node, "releasing the leader lease: {e}"),
            Err(_) => tracing::warn!(node = %node, "releasing the leader lease: no answer"),
        }
    }
}

/// A collector's role as `pikett status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Holds the unexpired lease.
    Leader,
    /// Alive (a recent heartbeat), not leading.
    Follower,
    /// No heartbeat for more than [`STALE_AFTER`] lease periods: stopped, or cut off.
    Stale,
    /// The only collector of the embedded (sled) setup, always the leader.
    Standalone,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
            NodeRole::Stale => "stale",
            NodeRole::Standalone => "standalone",
        }
    }
}

/// How many lease periods (ttls) without a heartbeat make a node stale.
pub const STALE_AFTER: u32 = 3;

/// The role of `node` in `cluster` (read at the database's `cluster.now_ms`, with the lease
/// ttl `ttl`; `standalone` for the embedded setup). The embedded setup's only collector is
/// always [`NodeRole::Standalone`], however old its heartbeat: it leads whatever the table
/// says (its own task may just be late). Otherwise a node whose heartbeat is older than
/// [`STALE_AFTER`] ttls (or missing) is stale, unless it holds the unexpired lease: it
/// renewed within a ttl, so it is alive and leads whatever its heartbeats say.
pub fn node_role(cluster: &Cluster, node: &NodeRow, ttl: Duration, standalone: bool) -> NodeRole {
    if standalone {
        return NodeRole::Standalone;
    }
    let stale_after = i64::try_from((ttl * STALE_AFTER).as_millis()).unwrap_or(i64::MAX);
    let fresh = node.heartbeat_at_ms.is_some_and(|at| cluster.now_ms.saturating_sub(at) <= stale_after);
    let leads = cluster.leader() == Some(node.node.as_str());
    match (fresh || leads, leads) {
        (false, _) => NodeRole::Stale,
        (true, true) => NodeRole::Leader,
        (true, false) => NodeRole::Follower,
    }
}

/// What `pikett status` reads about the cluster: the lease (whatever the engine), its ttl,
/// and whether it is the embedded setup's [`StandaloneLease`].
#[derive(Clone)]
pub struct ClusterView {
    pub lease: Arc<dyn Lease>,
    pub ttl: Duration,
    pub standalone: bool,
}

/// The lease of the embedded (sled) setup: one collector, always the leader. Every acquire
/// (a request without a held term, or with another than the current one) is granted under
/// the next term: after a stall past its own deadline (a VM pause, SIGSTOP) the task retires
/// its term and acquires again, and must then get a term it has not led yet.
#[derive(Debug, Default)]
pub struct StandaloneLease {
    state: Mutex<Standalone>,
}

#[derive(Debug, Default)]
struct Standalone {
    holder: Option<String>,
    term: i64,
    expires_ms: Option<i64>,
    node: Option<NodeRow>,
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl StandaloneLease {
    pub fn new() -> StandaloneLease {
        StandaloneLease::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Standalone> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Lease for StandaloneLease {
    async fn try_acquire_or_renew(
        &self,
        node: &str,
        ttl: Duration,
        held: Option<i64>,
    ) -> Result<LeaseState, StoreError> {
        let mut s = self.state();
        let renewal = held.is_some_and(|t| t == s.term) && s.holder.as_deref() == Some(node);
        if !renewal {
            s.term += 1;
        }
        s.holder = Some(node.to_string());
        s.expires_ms = Some(unix_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        Ok(LeaseState::Leader { term: s.term })
    }

    async fn heartbeat(&self, node: &str, info: &NodeInfo) -> Result<(), StoreError> {
        let now = unix_ms();
        let mut s = self.state();
        let started_at_ms = s.node.as_ref().filter(|n| n.node == node).and_then(|n| n.started_at_ms).or(Some(now));
        s.node = Some(NodeRow {
            node: node.to_string(),
            addr: info.addr.clone(),
            version: info.version.clone(),
            started_at_ms,
            heartbeat_at_ms: Some(now),
        });
        Ok(())
    }

    async fn cluster(&self) -> Result<Cluster, StoreError> {
        let s = self.state();
        Ok(Cluster {
            holder: s.holder.clone(),
            term: s.term,
            expires_at_ms: s.expires_ms,
            now_ms: unix_ms(),
            nodes: s.node.iter().cloned().collect(),
        })
    }

    async fn release(&self, node: &str, _: i64) -> Result<(), StoreError> {
        let mut s = self.state();
        if s.holder.as_deref() == Some(node) {
            s.holder = None;
            s.expires_ms = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use proptest::prelude::*;

    use super::*;

    const TTL: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_timing_for_the_default_ttl_renews_every_second_with_a_second_of_margin() {
        let t = Timing::for_ttl(Duration::from_secs(5));
        assert_eq!((t.interval, t.margin), (Duration::from_secs(1), Duration::from_secs(1)));
        let sent = Instant::now();
        assert_eq!(t.deadline(sent), sent + Duration::from_secs(4));
    }

    #[test]
    fn the_deadline_counts_from_the_send_not_from_the_answer() {
        let timing = Timing::for_ttl(TTL);
        let mut local = Local::new(timing);
        let sent = Instant::now();
        // The answer took 300 ms: the deadline is still sent + ttl - margin.
        local.on_answer(sent, sent + ms(300), Some(&LeaseState::Leader { term: 7 }));
        assert_eq!(local.role(), &Role::Leader { term: 7, deadline: sent + ms(800) });
        assert_eq!(local.leadership(), Leadership::Leader { term: 7, until: sent + ms(800) });
    }

    #[test]
    fn a_published_leader_does_not_lead_past_its_deadline_and_renewals_move_it_silently() {
        let (tx, mut rx) = watch::channel(Leadership::Follower { leader: None });
        let mut r = Runner { local: Local::new(Timing::for_ttl(TTL)), tx, node: "a".into() };
        let t0 = Instant::now();
        r.local.on_answer(t0, t0, Some(&LeaseState::Leader { term: 1 }));
        r.publish();
        assert!(rx.has_changed().unwrap());
        let seen = rx.borrow_and_update().clone();
        assert_eq!(seen, Leadership::Leader { term: 1, until: t0 + ms(800) });
        // A reader woken late (after a stall) sees "Leader", but not leading any more.
        assert_eq!(seen.leads_at(t0 + ms(799)), Some(1));
        assert_eq!(seen.leads_at(t0 + ms(800)), None);
        assert_eq!(seen.term(), Some(1));
        // A renewal moves the deadline without waking the watchers.
        r.local.on_answer(t0 + ms(200), t0 + ms(210), Some(&LeaseState::Leader { term: 1 }));
        r.publish();
        assert!(!rx.has_changed().unwrap(), "a renewal is no change of role");
        assert_eq!(*rx.borrow(), Leadership::Leader { term: 1, until: t0 + ms(1000) });
        assert_eq!(rx.borrow().leads_at(t0 + ms(900)), Some(1));
        // Losing the lease is a change.
        r.local.on_answer(t0 + ms(400), t0 + ms(410), Some(&LeaseState::Follower { leader: Some("b".into()) }));
        r.publish();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().leads_at(t0 + ms(410)), None);
    }

    #[tokio::test]
    async fn a_standalone_node_leads_again_under_a_new_term_after_a_stall_past_its_deadline() {
        let lease = StandaloneLease::new();
        let mut local = Local::new(Timing::for_ttl(TTL));
        let t0 = Instant::now();
        let answer = lease.try_acquire_or_renew("s", TTL, local.held(t0)).await.unwrap();
        local.on_answer(t0, t0, Some(&answer));
        assert_eq!(local.is_leader(t0), Some(1));
        let answer = lease.try_acquire_or_renew("s", TTL, local.held(t0 + ms(200))).await.unwrap();
        local.on_answer(t0 + ms(200), t0 + ms(200), Some(&answer));
        assert_eq!(local.is_leader(t0 + ms(200)), Some(1), "a renewal keeps the term");
        // Stopped for 5 s: the term is retired, the next request acquires.
        let t1 = t0 + ms(5200);
        assert_eq!(local.held(t1), None);
        let answer = lease.try_acquire_or_renew("s", TTL, None).await.unwrap();
        local.on_answer(t1, t1, Some(&answer));
        assert_eq!(local.is_leader(t1), Some(2), "leads again, under a term it never led");
        assert_eq!(lease.cluster().await.unwrap().term, 2);
    }

    #[test]
    fn a_leader_without_renewal_deposes_itself_at_its_deadline_even_with_the_database_unreachable() {
        let mut local = Local::new(Timing::for_ttl(TTL));
        let t0 = Instant::now();
        local.on_answer(t0, t0 + ms(10), Some(&LeaseState::Leader { term: 3 }));
        // Renewals fail (no answer): still the leader before the deadline…
        assert_eq!(local.held(t0 + ms(200)), Some(3));
        local.on_answer(t0 + ms(200), t0 + ms(799), None);
        assert_eq!(local.is_leader(t0 + ms(799)), Some(3));
        // …not at it, with no answer at all.
        assert_eq!(local.is_leader(t0 + ms(800)), None);
        assert!(!local.clone().tick(t0 + ms(799)));
        assert!(local.tick(t0 + ms(800)));
        assert_eq!(local.leadership(), Leadership::Follower { leader: None });
        // The old term is never renewed again: the next request acquires.
        assert_eq!(local.held(t0 + ms(900)), None);
    }

    #[test]
    fn a_failed_request_after_the_deadline_deposes_and_a_late_confirmation_does_not_restore() {
        let mut local = Local::new(Timing::for_ttl(TTL));
        let t0 = Instant::now();
        local.on_answer(t0, t0, Some(&LeaseState::Leader { term: 1 }));
        local.on_answer(t0 + ms(500), t0 + ms(900), None);
        assert_eq!(local.leadership(), Leadership::Follower { leader: None });
        // A renewal sent at 100 ms, confirmed at 950 ms: its deadline (900 ms) is past.
        let mut local = Local::new(Timing::for_ttl(TTL));
        local.on_answer(t0, t0, Some(&LeaseState::Leader { term: 1 }));
        local.on_answer(t0 + ms(100), t0 + ms(950), Some(&LeaseState::Leader { term: 1 }));
        assert_eq!(local.is_leader(t0 + ms(950)), None);
        // A renewal in flight when the deadline passed does not bring the term back, although
        // it was sent in time and its own deadline is ahead: a term is led at most once.
        let mut local = Local::new(Timing::for_ttl(TTL));
        local.on_answer(t0, t0, Some(&LeaseState::Leader { term: 1 }));
        assert_eq!(local.held(t0 + ms(700)), Some(1));
        assert!(local.tick(t0 + ms(800)));
        local.on_answer(t0 + ms(700), t0 + ms(850), Some(&LeaseState::Leader { term: 1 }));
        assert_eq!(local.is_leader(t0 + ms(850)), None);
        assert_eq!(local.held(t0 + ms(900)), None);
        local.on_answer(t0 + ms(2000), t0 + ms(2010), Some(&LeaseState::Leader { term: 2 }));
        assert_eq!(local.is_leader(t0 + ms(2010)), Some(2), "a new term is led");
        // Losing the lease is taken at once.
        let mut local = Local::new(Timing::for_ttl(TTL));
        local.on_answer(t0, t0, Some(&LeaseState::Leader { term: 1 }));
        local.on_answer(t0 + ms(200), t0 + ms(210), Some(&LeaseState::Follower { leader: Some("b".into()) }));
        assert_eq!(local.leadership(), Leadership::Follower { leader: Some("b".into()) });
    }

    #[test]
    fn the_lease_is_taken_only_when_free_or_expired_under_the_next_term() {
        let t0 = Instant::now();
        let mut row = LeaseRow::<Instant>::default();
        assert_eq!(row.acquire("a", t0, TTL), Some(1));
        assert_eq!(row.acquire("b", t0 + ms(999), TTL), None, "not expired");
        assert_eq!(row.renew("a", 1, t0 + ms(500), TTL), Some(1));
        assert_eq!(row.acquire("b", t0 + ms(1400), TTL), None, "the renewal moved the expiry");
        assert_eq!(row.renew("b", 1, t0 + ms(1400), TTL), None, "only the holder renews");
        assert_eq!(row.acquire("b", t0 + ms(1501), TTL), Some(2));
        assert_eq!(row.renew("a", 1, t0 + ms(1502), TTL), None, "a stale term is not renewed");
        assert!(row.fence("b", 2, t0 + ms(1502)) && !row.fence("a", 1, t0 + ms(1502)));
        assert!(!row.fence("b", 2, t0 + ms(2501)), "an expired lease fences its holder");
        assert_eq!(row.answer("c", None, t0 + ms(1600), TTL), LeaseState::Follower { leader: Some("b".into()) });
        // The holder's own acquire (one that committed after it gave up) takes the next term.
        assert_eq!(row.acquire("b", t0 + ms(1700), TTL), Some(3), "the holder acquires again");
        assert_eq!(row.renew("b", 2, t0 + ms(1700), TTL), None, "the term it gave up is gone");
        // An expired lease is not renewed, even with no other node around.
        assert_eq!(row.renew("b", 3, t0 + ms(2700), TTL), None, "expired");
        assert_eq!(row.acquire("b", t0 + ms(2701), TTL), Some(4));
    }

    /// One node's request/answer cycles: delays to the database and back, whether the answer
    /// is lost, and the pause before the next request (all in ms).
    fn cycles() -> impl Strategy<Value = Vec<(u64, u64, bool, u64)>> {
        prop::collection::vec((0u64..1500, 0u64..1500, prop::bool::weighted(0.2), 0u64..400), 1..40)
    }

    proptest! {
        /// Whatever the delays, losses and pauses (one clock rate everywhere, no send before
        /// the database's now() — the design's assumption): a node that considers itself the
        /// leader holds the database's lease with its term, unexpired, so it passes the fence
        /// and no two nodes lead at once.
        #[test]
        fn a_node_leads_only_while_the_database_lease_is_its_own(
            nodes in prop::collection::vec(cycles(), 2..4),
            margin in 0u64..300,
        ) {
            let t0 = Instant::now();
            let timing = Timing { ttl: TTL, margin: ms(margin), interval: ms(200) };
            let mut row = LeaseRow::<Instant>::default();
            let mut locals: Vec<Local> = nodes.iter().map(|_| Local::new(timing)).collect();
            let names: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
            // Events: (time ms, node, kind) with 0 = send, 1 = reaches the database, 2 = answer.
            let mut queue: std::collections::BTreeSet<(u64, usize, u8)> = (0..nodes.len()).map(|i| (0, i, 0)).collect();
            let mut step = vec![0usize; nodes.len()];
            let mut in_flight: Vec<(Instant, Option<i64>, Option<LeaseState>)> = vec![(t0, None, None); nodes.len()];
            while let Some((t, i, kind)) = queue.pop_first() {
                let now = t0 + ms(t);
                let Some(&(to_db, back, lost, pause)) = nodes[i].get(step[i]) else { continue };
                match kind {
                    0 => {
                        in_flight[i] = (now, locals[i].held(now), None);
                        queue.insert((t + to_db, i, 1));
                    }
                    1 => {
                        let answer = row.answer(&names[i], in_flight[i].1, now, TTL);
                        in_flight[i].2 = (!lost).then_some(answer);
                        queue.insert((t + back, i, 2));
                    }
                    _ => {
                        let (sent, _, answer) = in_flight[i].clone();
                        locals[i].on_answer(sent, now, answer.as_ref());
                        step[i] += 1;
                        queue.insert((t + pause, i, 0));
                    }
                }
                let leaders: Vec<_> = locals.iter().enumerate().filter_map(|(j, l)| l.is_leader(now).map(|term| (j, term))).collect();
                prop_assert!(leaders.len() <= 1, "two leaders at {t} ms: {leaders:?}");
                for (j, term) in leaders {
                    prop_assert!(row.fence(&names[j], term, now), "n{j} leads term {term} at {t} ms but {row:?}");
                    prop_assert!(locals[j].deadline().unwrap() <= row.expires.unwrap());
                }
            }
        }

        /// Liveness: whatever happened before (delays, losses, pauses, stalls), once every
        /// node's requests succeed (round trips under 100 ms, a request at least every 200 ms,
        /// the interval), exactly one node leads from at most ttl + interval + the round trips
        /// on, and keeps leading.
        #[test]
        fn once_requests_succeed_exactly_one_node_leads_within_ttl_and_interval(
            nodes in prop::collection::vec((cycles(), prop::collection::vec((0u64..50, 0u64..50, 10u64..200), 1..8)), 1..4),
            margin in 0u64..300,
        ) {
            let t0 = Instant::now();
            let timing = Timing { ttl: TTL, margin: ms(margin), interval: ms(200) };
            let mut row = LeaseRow::<Instant>::default();
            let mut locals: Vec<Local> = nodes.iter().map(|_| Local::new(timing)).collect();
            let names: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
            let mut queue: std::collections::BTreeSet<(u64, usize, u8)> = (0..nodes.len()).map(|i| (0, i, 0)).collect();
            let mut step = vec![0usize; nodes.len()];
            let mut in_flight: Vec<(Instant, Option<i64>, Option<LeaseState>)> = vec![(t0, None, None); nodes.len()];
            // When every node got the answer to its last request of the first phase.
            let mut settled: Option<u64> = None;
            while let Some((t, i, kind)) = queue.pop_first() {
                if settled.is_some_and(|s| t > s + 3000) {
                    break;
                }
                let now = t0 + ms(t);
                let (first, then) = &nodes[i];
                let (to_db, back, lost, pause) = match first.get(step[i]) {
                    Some(&cycle) => cycle,
                    None => {
                        let (to_db, back, pause) = then[(step[i] - first.len()) % then.len()];
                        (to_db, back, false, pause)
                    }
                };
                match kind {
                    0 => {
                        in_flight[i] = (now, locals[i].held(now), None);
                        queue.insert((t + to_db, i, 1));
                    }
                    1 => {
                        let answer = row.answer(&names[i], in_flight[i].1, now, TTL);
                        in_flight[i].2 = (!lost).then_some(answer);
                        queue.insert((t + back, i, 2));
                    }
                    _ => {
                        let (sent, _, answer) = in_flight[i].clone();
                        locals[i].on_answer(sent, now, answer.as_ref());
                        step[i] += 1;
                        queue.insert((t + pause, i, 0));
                        if settled.is_none() && nodes.iter().zip(&step).all(|((first, _), s)| *s >= first.len()) {
                            settled = Some(t);
                        }
                    }
                }
                // The lease expires at most a ttl after `settled`; a request reaches the
                // database at most 50 + 200 + 50 ms after that and its answer 50 ms later.
                if settled.is_some_and(|s| t >= s + 1000 + 400) {
                    let leaders: Vec<_> = locals.iter().enumerate().filter_map(|(j, l)| l.is_leader(now).map(|term| (j, term))).collect();
                    prop_assert_eq!(leaders.len(), 1, "at {} ms ({:?} settled): {:?}, {:?}", t, settled, leaders, row);
                }
            }
        }
    }

    /// A lease in memory (the database's clock is this process's): for the task's tests. With
    /// `hang` set, every request waits forever (a database that stopped answering).
    #[derive(Default)]
    struct MemoryLease {
        row: Mutex<LeaseRow<Instant>>,
        hang: AtomicBool,
        heartbeats: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Lease for MemoryLease {
        async fn try_acquire_or_renew(
            &self,
            node: &str,
            ttl: Duration,
            held: Option<i64>,
        ) -> Result<LeaseState, StoreError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(self.row.lock().unwrap().answer(node, held, Instant::now(), ttl))
        }

        async fn heartbeat(&self, node: &str, _: &NodeInfo) -> Result<(), StoreError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.heartbeats.lock().unwrap().push(node.to_string());
            Ok(())
        }

        async fn cluster(&self) -> Result<Cluster, StoreError> {
            // The task never reads the cluster; a caller that does gets an error, not a panic.
            Err(StoreError::Engine("the in-memory test lease keeps no cluster table".into()))
        }

        async fn release(&self, node: &str, term: i64) -> Result<(), StoreError> {
            let mut row = self.row.lock().unwrap();
            if row.holder.as_deref() == Some(node) && row.term == term {
                row.holder = None;
                row.expires = None;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_task_steps_down_at_its_deadline_while_the_database_hangs() {
        let lease = Arc::new(MemoryLease::default());
        // A wide margin: the own deadline (last renewal sent + 2.5 s) comes long before both
        // the database's expiry (its now() + 5 s) and the hung request's limit (sent + 5 s).
        let timing = Timing { ttl: Duration::from_secs(5), margin: ms(2500), interval: ms(500) };
        let (mut rx, _task) = spawn(lease.clone(), "a".into(), NodeInfo::default(), timing, std::future::pending());
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| l.term() == Some(1)))
            .await
            .expect("a leads")
            .unwrap();
        lease.hang.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l == Leadership::Follower { leader: None }))
            .await
            .expect("stepped down while the request hung")
            .unwrap();
        let seen = Instant::now();
        // The database's lease is still a's: the local deadline came first (2.5 s before it,
        // so this holds however late this test saw the change).
        let row = lease.row.lock().unwrap().clone();
        assert!(row.fence("a", 1, seen), "{row:?}");
    }

    /// [`StandaloneLease`] whose next request stalls (a VM pause, SIGSTOP) for `stall`.
    struct Stalling {
        inner: StandaloneLease,
        stall: AtomicBool,
    }

    #[async_trait]
    impl Lease for Stalling {
        async fn try_acquire_or_renew(
            &self,
            node: &str,
            ttl: Duration,
            held: Option<i64>,
        ) -> Result<LeaseState, StoreError> {
            if self.stall.swap(false, Ordering::SeqCst) {
                tokio::time::sleep(3 * ttl).await;
            }
            self.inner.try_acquire_or_renew(node, ttl, held).await
        }

        async fn heartbeat(&self, node: &str, info: &NodeInfo) -> Result<(), StoreError> {
            self.inner.heartbeat(node, info).await
        }

        async fn cluster(&self) -> Result<Cluster, StoreError> {
            self.inner.cluster().await
        }

        async fn release(&self, node: &str, term: i64) -> Result<(), StoreError> {
            self.inner.release(node, term).await
        }
    }

    #[tokio::test]
    async fn the_standalone_task_leads_again_after_a_stall_past_its_deadline() {
        let lease = Arc::new(Stalling { inner: StandaloneLease::new(), stall: AtomicBool::new(false) });
        let timing = Timing::for_ttl(Duration::from_secs(2));
        let (mut rx, _task) = spawn(lease.clone(), "s".into(), NodeInfo::default(), timing, std::future::pending());
        let wait = Duration::from_secs(20);
        let first = tokio::time::timeout(wait, rx.wait_for(|l| l.term().is_some()))
            .await
            .expect("leads")
            .unwrap()
            .term()
            .unwrap();
        lease.stall.store(true, Ordering::SeqCst);
        tokio::time::timeout(wait, rx.wait_for(|l| l.term().is_none())).await.expect("stepped down").unwrap();
        let again = tokio::time::timeout(wait, rx.wait_for(|l| l.term().is_some()))
            .await
            .expect("the standalone node leads again after the stall")
            .unwrap()
            .term()
            .unwrap();
        assert!(again > first, "{again} after {first}");
    }

    #[tokio::test]
    async fn a_stopped_task_releases_its_lease_and_a_follower_learns_the_leader() {
        let lease = Arc::new(MemoryLease::default());
        let timing = Timing::for_ttl(Duration::from_secs(5));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (mut a, task) = spawn(lease.clone(), "a".into(), NodeInfo::default(), timing, async move {
            let _ = stopped.await;
        });
        a.wait_for(|l| l.term() == Some(1)).await.unwrap();
        let (mut b, _b) = spawn(lease.clone(), "b".into(), NodeInfo::default(), timing, std::future::pending());
        b.wait_for(|l| *l == Leadership::Follower { leader: Some("a".into()) }).await.unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(*a.borrow(), Leadership::Follower { leader: None });
        let row = lease.row.lock().unwrap().clone();
        assert_eq!((row.holder, row.term), (None, 1), "released, term kept");
    }

    #[test]
    fn a_node_is_stale_after_three_lease_periods_without_a_heartbeat_unless_it_leads() {
        let ttl = Duration::from_secs(5);
        let row = |node: &str, heartbeat_at_ms: Option<i64>| NodeRow {
            node: node.into(),
            addr: String::new(),
            version: String::new(),
            started_at_ms: None,
            heartbeat_at_ms,
        };
        let cluster = |holder: Option<&str>, expires_at_ms: i64| Cluster {
            holder: holder.map(str::to_string),
            term: 4,
            expires_at_ms: Some(expires_at_ms),
            now_ms: 100_000,
            nodes: Vec::new(),
        };
        let c = cluster(Some("a"), 103_000);
        let role = |node: &NodeRow| node_role(&c, node, ttl, false);
        assert_eq!(role(&row("a", Some(99_000))), NodeRole::Leader);
        assert_eq!(role(&row("b", Some(99_000))), NodeRole::Follower);
        // 3 × 5 s: still a follower at exactly 15 s, stale after.
        assert_eq!(role(&row("b", Some(85_000))), NodeRole::Follower);
        assert_eq!(role(&row("b", Some(84_999))), NodeRole::Stale);
        assert_eq!(role(&row("b", None)), NodeRole::Stale, "never sent a heartbeat");
        // The holder of an unexpired lease renewed within a ttl: the leader, heartbeats or not.
        assert_eq!(role(&row("a", Some(1_000))), NodeRole::Leader);
        // An expired lease makes nobody the leader.
        let expired = cluster(Some("a"), 99_999);
        assert_eq!(node_role(&expired, &row("a", Some(99_000)), ttl, false), NodeRole::Follower);
        assert_eq!(node_role(&expired, &row("a", Some(80_000)), ttl, false), NodeRole::Stale);
        // The embedded setup: always standalone, whatever its heartbeat and lease say.
        assert_eq!(node_role(&c, &row("a", Some(99_000)), ttl, true), NodeRole::Standalone);
        assert_eq!(node_role(&expired, &row("a", Some(80_000)), ttl, true), NodeRole::Standalone);
        assert_eq!(node_role(&expired, &row("a", None), ttl, true), NodeRole::Standalone);
        assert_eq!(
            ["leader", "follower", "stale", "standalone"],
            [NodeRole::Leader, NodeRole::Follower, NodeRole::Stale, NodeRole::Standalone].map(NodeRole::as_str)
        );
    }

    #[tokio::test]
    async fn standalone_leads_with_term_1_at_first() {
        let lease = Arc::new(StandaloneLease::new());
        let info = NodeInfo { addr: "0.0.0.0:7443".into(), version: "1".into() };
        let (mut rx, _task) = spawn(
            lease.clone(),
            "standalone".into(),
            info.clone(),
            Timing::for_ttl(Duration::from_secs(5)),
            std::future::pending(),
        );
        rx.wait_for(|l| l.term() == Some(1)).await.unwrap();
        lease.heartbeat("standalone", &info).await.unwrap();
        let cluster = lease.cluster().await.unwrap();
        assert_eq!((cluster.leader(), cluster.term), (Some("standalone"), 1));
        assert_eq!(cluster.nodes.len(), 1);
        assert_eq!(cluster.nodes[0].addr, "0.0.0.0:7443");
        assert!(cluster.nodes[0].heartbeat_at_ms.unwrap() <= cluster.now_ms);
    }
}

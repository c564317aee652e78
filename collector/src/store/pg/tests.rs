//! [`PgStorage`] on the test server: the shared contract suite, then what only PostgreSQL
//! has (the migrator, a failed flush, a lost session, TLS).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::testing::{self, admin_client, fresh_database};
use super::*;
use crate::store::suite::{self, UnflushedOnDrop};

struct PgEngine {
    url: String,
}

impl suite::Engine for PgEngine {
    const UNFLUSHED_ON_DROP: UnflushedOnDrop = UnflushedOnDrop::Lost;

    async fn open(&self) -> Arc<dyn Storage> {
        Arc::new(open(&self.url).await)
    }
}

async fn pg_engine() -> PgEngine {
    PgEngine { url: fresh_database().await }
}

suite::storage_suite!(pg_engine);

async fn open(url: &str) -> PgStorage {
    PgStorage::open(PgConnect::new(url, None).unwrap()).await.unwrap()
}

async fn versions(url: &str) -> Vec<i32> {
    let admin = admin_client(url).await;
    admin
        .query("SELECT version FROM pikett_schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn all_versions() -> Vec<i32> {
    (1..=SCHEMA_VERSION).collect()
}

#[tokio::test]
async fn a_fresh_database_is_migrated_to_the_latest_version_and_a_second_run_does_nothing() {
    let url = fresh_database().await;
    let mut client = PgConnect::new(&url, None).unwrap().connect().await.unwrap();
    let first = migrate::migrate(&mut client).await.unwrap();
    assert_eq!(first, Migrated { from: 0, applied: all_versions() });
    assert_eq!(versions(&url).await, all_versions());
    let second = migrate::migrate(&mut client).await.unwrap();
    assert_eq!(second, Migrated { from: SCHEMA_VERSION, applied: Vec::new() });
    assert_eq!(versions(&url).await, all_versions());
    // The schema is usable: the pikett_kv table is there.
    client.execute("INSERT INTO pikett_kv VALUES ('t', '\\x00', '\\x01')", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrators_started_at_once_apply_each_version_once() {
    let url = fresh_database().await;
    let connect = PgConnect::new(&url, None).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let connect = connect.clone();
        runs.push(tokio::spawn(async move {
            let mut client = connect.connect().await.unwrap();
            migrate::migrate(&mut client).await
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().expect("every migrator succeeds").applied);
    }
    applied.sort();
    assert_eq!(applied, all_versions(), "each version applied by exactly one migrator");
    assert_eq!(versions(&url).await, all_versions());
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() {
    let url = fresh_database().await;
    drop(open(&url).await);
    let newer = SCHEMA_VERSION + 1;
    admin_client(&url)
        .await
        .execute("INSERT INTO pikett_schema_migrations (version, name) VALUES ($1, 'from the future')", &[&newer])
        .await
        .unwrap();
    let err = PgStorage::open(PgConnect::new(&url, None).unwrap()).await.err().expect("a newer schema is refused");
    assert!(
        matches!(&err, StoreError::Postgres(PgError::SchemaTooNew { found, known }) if *found == newer && *known == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer than this pikett-collector"), "{err}");
}

/// A flush that cannot commit (the table is locked by another session beyond `lock_timeout`)
/// reports the error, keeps the writes visible and journaled, and the next flush writes them.
#[tokio::test]
async fn a_failed_flush_keeps_the_journal_for_the_next_one() {
    let url = fresh_database().await;
    let s = open(&url).await;
    let t = s.tree("t").unwrap();
    t.insert(b"k", b"v".to_vec()).unwrap();
    let mut admin = admin_client(&url).await;
    let lock = admin.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pikett_kv IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let err = s.flush().await.expect_err("the flush cannot take its lock");
    assert!(
        err.to_string()
            .contains("flushing writes (1 rows, 2 bytes): db error: ERROR: canceling statement due to lock timeout"),
        "{err}"
    );
    assert_eq!(t.get(b"k").unwrap(), Some(b"v".to_vec()), "memory stays ahead of the database");
    lock.rollback().await.unwrap();
    assert_eq!(open(&url).await.tree("t").unwrap().get(b"k").unwrap(), None, "nothing was committed");
    s.flush().await.unwrap();
    assert_eq!(open(&url).await.tree("t").unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
}

/// A session ended by the server (here `pg_terminate_backend`; a restart or failover alike)
/// is replaced by the next flush, and the journal kept meanwhile is written.
#[tokio::test]
async fn a_lost_session_is_replaced_by_the_next_flush() {
    let url = fresh_database().await;
    let s = open(&url).await;
    let t = s.tree("t").unwrap();
    t.insert(b"before", b"1".to_vec()).unwrap();
    s.flush().await.unwrap();
    let pid = s.backend_pid().await.expect("a session");
    let admin = admin_client(&url).await;
    let ended: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(ended);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.session_closed().await {
        assert!(Instant::now() < deadline, "the client never noticed its session ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.insert(b"after", b"2".to_vec()).unwrap();
    s.flush().await.unwrap();
    assert_ne!(s.backend_pid().await, Some(pid), "a new session");
    let reopened = open(&url).await.tree("t").unwrap();
    assert_eq!(reopened.get(b"after").unwrap(), Some(b"2".to_vec()));
    assert_eq!(reopened.count().unwrap(), 2);
}

/// Writes made while a flush is in flight belong to the next flush: forgetting the journal
/// after COMMIT must not drop them. The flush is held in flight (another session holds the
/// flush lock) after it copied the journals, and only then does the writer write the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_flushes_are_kept_for_the_next_flush() {
    let url = fresh_database().await;
    let s = open(&url).await;
    let t = s.tree("t").unwrap();
    let n = 3000u32;
    let (half_done, half) = tokio::sync::oneshot::channel();
    let (go, wait_for_go) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            let write = |i: u32| {
                t.insert(&i.to_be_bytes(), b"v".to_vec()).unwrap();
                t.insert(b"last", i.to_be_bytes().to_vec()).unwrap();
            };
            (0..n / 2).for_each(write);
            half_done.send(()).unwrap();
            wait_for_go.blocking_recv().unwrap();
            (n / 2..n).for_each(write);
        })
    };
    half.await.unwrap();
    let admin = admin_client(&url).await;
    admin.execute("SELECT pg_advisory_lock($1)", &[&FLUSH_LOCK]).await.unwrap();
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.flush().await }
    });
    wait_for_lock_waiter(&admin).await;
    go.send(()).unwrap();
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.join().unwrap();
    admin.execute("SELECT pg_advisory_unlock($1)", &[&FLUSH_LOCK]).await.unwrap();
    first.await.unwrap().unwrap();
    let after_first = open(&url).await.tree("t").unwrap();
    assert_eq!(after_first.count().unwrap(), n as usize / 2 + 1, "the first flush wrote the first half");
    s.flush().await.unwrap();
    let reopened = open(&url).await.tree("t").unwrap();
    assert_eq!(reopened.count().unwrap(), n as usize + 1);
    assert_eq!(reopened.get(b"last").unwrap(), Some((n - 1).to_be_bytes().to_vec()));
}

/// Waits until a session waits for an advisory lock.
async fn wait_for_lock_waiter(admin: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = admin
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nobody ever waited for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Flushes of all sessions are serialized: a flush waits while another session holds the
/// flush lock (a stalled flush of a lost session), then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_waits_for_the_flush_of_another_session() {
    let url = fresh_database().await;
    let s = open(&url).await;
    s.tree("t").unwrap().insert(b"k", b"v".to_vec()).unwrap();
    let admin = admin_client(&url).await;
    admin.execute("SELECT pg_advisory_lock($1)", &[&FLUSH_LOCK]).await.unwrap();
    let started = Instant::now();
    let flush = tokio::spawn({
        let s = s.clone();
        async move { s.flush().await }
    });
    wait_for_lock_waiter(&admin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!flush.is_finished(), "the flush waits for the lock");
    admin.execute("SELECT pg_advisory_unlock($1)", &[&FLUSH_LOCK]).await.unwrap();
    flush.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(open(&url).await.tree("t").unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
}

/// A collector starting while another migrates (here: holds the schema lock for 3 s, longer
/// than the session's `lock_timeout`) waits for it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_waits_for_a_migration_in_progress() {
    let url = fresh_database().await;
    let admin = admin_client(&url).await;
    admin.execute("SELECT pg_advisory_lock($1)", &[&migrate::SCHEMA_LOCK]).await.unwrap();
    let started = Instant::now();
    let opening = tokio::spawn({
        let url = url.clone();
        async move { PgStorage::open(PgConnect::new(&url, None).unwrap()).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin.execute("SELECT pg_advisory_unlock($1)", &[&migrate::SCHEMA_LOCK]).await.unwrap();
    opening.await.unwrap().expect("the open waited for the lock");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(versions(&url).await, all_versions());
}

/// Another tool's `pikett_schema_migrations` (golang-migrate's columns) is named, not a panic.
#[tokio::test]
async fn a_foreign_migrations_table_is_refused_with_a_clear_error() {
    let url = fresh_database().await;
    admin_client(&url)
        .await
        .batch_execute(
            "CREATE TABLE pikett_schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
             INSERT INTO pikett_schema_migrations VALUES (3, false)",
        )
        .await
        .unwrap();
    let err = PgStorage::open(PgConnect::new(&url, None).unwrap()).await.err().expect("a foreign table is refused");
    assert!(err.to_string().contains("table pikett_schema_migrations exists but is not pikett's"), "{err}");
}

#[tokio::test]
async fn a_tree_name_with_nul_is_refused() {
    let s = open(&fresh_database().await).await;
    let err = s.tree("a\0b").err().expect("NUL is refused");
    assert!(err.to_string().contains("contains NUL"), "{err}");
}

/// A flush larger than one statement's byte cap is split and written whole.
#[tokio::test]
async fn a_flush_of_large_values_is_split_by_bytes() {
    let url = fresh_database().await;
    let s = open(&url).await;
    let t = s.tree("t").unwrap();
    let big = vec![7u8; 3 << 20];
    for i in 0..5u8 {
        t.insert(&[i], big.clone()).unwrap();
    }
    t.insert(b"small", b"s".to_vec()).unwrap();
    s.flush().await.unwrap();
    t.remove(&[0]).unwrap();
    s.flush().await.unwrap();
    let reopened = open(&url).await.tree("t").unwrap();
    assert_eq!(reopened.count().unwrap(), 5);
    assert_eq!(reopened.get(&[4]).unwrap().map(|v| v.len()), Some(3 << 20));
}

#[test]
fn statements_are_capped_by_rows_and_bytes() {
    assert_eq!(statements(&[]), vec![]);
    let many = vec![1; ROWS_PER_STATEMENT * 2 + 1];
    assert_eq!(
        statements(&many),
        vec![
            (0..ROWS_PER_STATEMENT, ROWS_PER_STATEMENT),
            (ROWS_PER_STATEMENT..2 * ROWS_PER_STATEMENT, ROWS_PER_STATEMENT),
            (2 * ROWS_PER_STATEMENT..2 * ROWS_PER_STATEMENT + 1, 1),
        ]
    );
    let mib = 1 << 20;
    assert_eq!(
        statements(&[3 * mib, 3 * mib, 3 * mib, 20 * mib, 1]),
        vec![(0..2, 6 * mib), (2..3, 3 * mib), (3..4, 20 * mib), (4..5, 1)]
    );
}

#[tokio::test]
async fn tls_with_the_right_ca_connects_and_a_wrong_ca_or_name_is_refused() {
    let db = fresh_database().await.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let pg = testing::server();
    let url = |host: &str| format!("host={host} hostaddr=127.0.0.1 port={} user=pikett dbname={db}", pg.port);

    let s = PgStorage::open(PgConnect::new(&url("localhost"), Some(pg.ca_pem.as_bytes())).unwrap()).await.unwrap();
    let ssl: bool = s
        .inner
        .session
        .lock()
        .await
        .client
        .as_ref()
        .unwrap()
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is encrypted");

    let other_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "another CA");
        params.self_signed(&key).unwrap().pem()
    };
    let err = PgConnect::new(&url("localhost"), Some(other_ca.as_bytes())).unwrap().connect().await.unwrap_err();
    assert!(
        err.to_string().contains("connecting: error performing TLS handshake")
            && err.to_string().contains("UnknownIssuer"),
        "{err}"
    );

    let err = PgConnect::new(&url("db.example"), Some(pg.ca_pem.as_bytes())).unwrap().connect().await.unwrap_err();
    assert!(err.to_string().contains("not valid for name \"db.example\""), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_in_the_error() {
    // A socket bound but not listening, kept for the test: the port stays taken and refuses.
    let bound = tokio::net::TcpSocket::new_v4().unwrap();
    bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = bound.local_addr().unwrap().port();
    let url = format!("postgresql://pikett@127.0.0.1:{port}/x?sslmode=disable");
    let err = PgStorage::open(PgConnect::new(&url, None).unwrap()).await.err().expect("nothing listens there");
    let text = err.to_string();
    assert!(
        text.starts_with("PostgreSQL, connecting: error connecting to server") && text.contains("refused"),
        "{text}"
    );
    drop(bound);
}

/// A leader's storage commits only while its term holds the lease: after another node took
/// over, its flush fails with `Fenced`, commits nothing, and the new leader's flush goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_flush_commits_only_while_the_term_holds_the_lease() {
    use crate::store::{Lease, LeaseState};
    let url = fresh_database().await;
    let connect = PgConnect::new(&url, None).unwrap();
    let old = open(&url).await;
    let lease = PgLease::new(connect.clone());
    let ttl = Duration::from_secs(1);
    let LeaseState::Leader { term } = lease.try_acquire_or_renew("a", ttl, None).await.unwrap() else {
        panic!("a fresh lease is free")
    };
    old.fence_with("a", term);
    let engine = old.tree("engine").unwrap();
    engine.insert(b"k", b"from a".to_vec()).unwrap();
    old.flush().await.unwrap();

    // "a" stops renewing; "b" takes over after the expiry.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let LeaseState::Leader { term: b_term } = lease.try_acquire_or_renew("b", ttl, None).await.unwrap() else {
        panic!("an expired lease is free")
    };
    assert!(b_term > term);
    engine.insert(b"k", b"stale write of a".to_vec()).unwrap();
    let err = old.flush().await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { ref node, term: t } if node == "a" && t == term), "{err}");

    let new = open(&url).await;
    new.fence_with("b", b_term);
    assert_eq!(new.tree("engine").unwrap().get(b"k").unwrap().as_deref(), Some(&b"from a"[..]));
    new.tree("engine").unwrap().insert(b"k", b"from b".to_vec()).unwrap();
    new.flush().await.unwrap();
    assert_eq!(open(&url).await.tree("engine").unwrap().get(b"k").unwrap().as_deref(), Some(&b"from b"[..]));
}

fn entries(t: &dyn Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    t.iter().map(Result::unwrap).collect()
}

/// Two nodes on one database: `refresh_tree` shows a node what the other flushed (inserts
/// and removals), and keeps the node's own writes that are not flushed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tree_shows_another_nodes_flushes_and_keeps_own_unflushed_writes() {
    let url = fresh_database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let (ta, tb) = (a.tree("identities").unwrap(), b.tree("identities").unwrap());
    ta.insert(b"web-01", b"enrolled".to_vec()).unwrap();
    a.flush().await.unwrap();
    assert_eq!(tb.get(b"web-01").unwrap(), None, "nothing reaches b before its refresh");
    b.refresh_tree("identities").await.unwrap();
    assert_eq!(tb.get(b"web-01").unwrap().as_deref(), Some(&b"enrolled"[..]), "the handle b held sees it");

    ta.remove(b"web-01").unwrap();
    ta.insert(b"web-02", b"enrolled".to_vec()).unwrap();
    ta.insert(b"web-03", b"enrolled".to_vec()).unwrap();
    a.flush().await.unwrap();
    b.refresh_tree("identities").await.unwrap();
    assert_eq!(
        entries(&*tb),
        vec![(b"web-02".to_vec(), b"enrolled".to_vec()), (b"web-03".to_vec(), b"enrolled".to_vec())]
    );

    // b's unflushed writes (an insert over a's value, a removal of a flushed key) win over
    // what the database holds, refresh after refresh.
    tb.insert(b"web-02", b"revoked by b".to_vec()).unwrap();
    tb.remove(b"web-03").unwrap();
    ta.insert(b"web-02", b"renewed by a".to_vec()).unwrap();
    ta.insert(b"web-04", b"enrolled".to_vec()).unwrap();
    a.flush().await.unwrap();
    for _ in 0..2 {
        b.refresh_tree("identities").await.unwrap();
        assert_eq!(
            entries(&*tb),
            vec![(b"web-02".to_vec(), b"revoked by b".to_vec()), (b"web-04".to_vec(), b"enrolled".to_vec())]
        );
    }
    // Once b flushed them, they are what a sees after its refresh, and a's journal is empty.
    b.flush().await.unwrap();
    a.refresh_tree("identities").await.unwrap();
    assert_eq!(entries(&*ta), entries(&*tb));

    // Only the named tree is refreshed; a tree b never opened is created by its refresh.
    a.tree("other").unwrap().insert(b"k", b"v".to_vec()).unwrap();
    a.tree("tickets_used").unwrap().insert(b"n1", b"web-04".to_vec()).unwrap();
    a.flush().await.unwrap();
    b.refresh_tree("tickets_used").await.unwrap();
    assert_eq!(b.tree("tickets_used").unwrap().get(b"n1").unwrap().as_deref(), Some(&b"web-04"[..]));
    assert_eq!(b.tree("other").unwrap().count().unwrap(), 0);
    assert!(b.refresh_tree("bad\0name").await.is_err());
}

/// Refreshes running while the same node writes and flushes lose nothing: a write flushed
/// between a refresh's read and its replace is neither lost nor, when it was a removal,
/// brought back. Another node refreshing meanwhile ends with the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_concurrent_with_flushes_loses_nothing() {
    let url = fresh_database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let t = a.tree("tickets_used").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refresher = |s: PgStorage| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                s.refresh_tree("tickets_used").await.unwrap();
                n += 1;
            }
            n
        })
    };
    let (on_a, on_b) = (refresher(a.clone()), refresher(b.clone()));
    let mut model = BTreeMap::new();
    let mut wrong = Vec::new();
    for i in 0u32..300 {
        let key = i.to_be_bytes().to_vec();
        t.insert(&key, format!("v{i}").into_bytes()).unwrap();
        model.insert(key, format!("v{i}").into_bytes());
        if i % 3 == 2 {
            let gone = (i - 1).to_be_bytes();
            t.remove(&gone).unwrap();
            model.remove(&gone[..]);
        }
        a.flush().await.unwrap();
        // Give the refreshes time to land between flushes, then check every key.
        tokio::task::yield_now().await;
        for k in (0u32..=i).map(u32::to_be_bytes) {
            if t.get(&k).unwrap() != model.get(&k[..]).cloned() {
                wrong.push((i, u32::from_be_bytes(k)));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (n_a, n_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    assert!(wrong.is_empty(), "after write i, key k was wrong (i, k): {wrong:?}");
    assert!(n_a > 10 && n_b > 10, "the refreshes ran ({n_a}, {n_b})");
    let expected: Vec<_> = model.into_iter().collect();
    assert_eq!(entries(&*t), expected);
    b.refresh_tree("tickets_used").await.unwrap();
    assert_eq!(entries(&*b.tree("tickets_used").unwrap()), expected);
}

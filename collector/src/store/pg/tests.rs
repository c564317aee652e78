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
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
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
    // The schema is usable: the kv table is there.
    client.execute("INSERT INTO kv VALUES ('t', '\\x00', '\\x01')", &[]).await.unwrap();
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
        .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')", &[&newer])
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
    lock.batch_execute("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let err = s.flush().await.expect_err("the flush cannot take its lock");
    assert!(
        err.to_string().contains("flushing writes: db error: ERROR: canceling statement due to lock timeout"),
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
/// after COMMIT must not drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_flushes_are_kept_for_the_next_flush() {
    let url = fresh_database().await;
    let s = open(&url).await;
    let t = s.tree("t").unwrap();
    let n = 3000u32;
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                t.insert(&i.to_be_bytes(), b"v".to_vec()).unwrap();
                t.insert(b"last", i.to_be_bytes().to_vec()).unwrap();
            }
        })
    };
    let mut flushes = 0;
    while !writer.is_finished() {
        s.flush().await.unwrap();
        flushes += 1;
    }
    writer.join().unwrap();
    s.flush().await.unwrap();
    assert!(flushes > 1, "flushes ran while writing");
    let reopened = open(&url).await.tree("t").unwrap();
    assert_eq!(reopened.count().unwrap(), n as usize + 1);
    assert_eq!(reopened.get(b"last").unwrap(), Some((n - 1).to_be_bytes().to_vec()));
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
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgresql://pikett@127.0.0.1:{port}/x?sslmode=disable");
    let err = PgStorage::open(PgConnect::new(&url, None).unwrap()).await.err().expect("nothing listens there");
    let text = err.to_string();
    assert!(
        text.starts_with("PostgreSQL, connecting: error connecting to server") && text.contains("refused"),
        "{text}"
    );
}

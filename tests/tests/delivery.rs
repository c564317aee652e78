//! The delivery guarantee (docs/wire.md, `Ingest.Stream`): with the real binaries over
//! mutual TLS, SIGKILL of the collector or of the agent loses nothing and
//! stores nothing twice.

use std::time::Duration;

use pikett_tests::*;

const HOST_PROBE: &str = "[host]\ninterval = \"500ms\"\n";

/// Sequence numbers the collector stored for `host`, read from its database
/// (the collector must be stopped).
fn stored_seqs(data_dir: &std::path::Path, host: &str) -> Vec<(u64, u64)> {
    let storage = pikett_collector::store::SledStorage::open(data_dir, 1 << 20).expect("open collector store");
    let log = pikett_tests::open_batch_log(storage, data_dir).expect("open the ingest log");
    log.stored_seqs(host).expect("read stored seqs")
}

/// (last sequence number assigned, batches still pending, epoch) of a stopped agent's spool.
fn spool_state(spool_dir: &std::path::Path) -> (u64, usize, u64) {
    let spool = pikett_agent::spool::Spool::open(spool_dir, 1 << 30, 1 << 20).expect("open agent spool");
    (spool.next_seq().expect("next_seq") - 1, spool.pending(), spool.epoch())
}

fn assert_exactly_once(seqs: &[(u64, u64)], epoch: u64, last: u64) {
    assert_ne!(epoch, 0, "a new spool has a non-zero epoch");
    let expected: Vec<(u64, u64)> = (1..=last).map(|s| (epoch, s)).collect();
    assert!(last > 0, "the agent sent nothing");
    assert_eq!(seqs, expected.as_slice(), "stored sequence numbers are not exactly 1..={last}");
}

#[test]
fn collector_sigkill_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let agent_cfg = agent_config(dir.path(), &pki, "web-001", &collector.url(), HOST_PROBE);

    let mut c = collector.start();
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(3));
    c.sigkill();
    // Several agent intervals without a collector: the agent spools.
    std::thread::sleep(Duration::from_secs(4));
    let _c = collector.start();
    // The backlog arrives after the restart.
    let caught_up = wait_for(Duration::from_secs(30), || {
        let out = collector.pikett(&["hosts", "--output", "json"], &pki.path("ca.pem"));
        let hosts = json_lines(&out.stdout);
        let h = hosts.iter().find(|h| h["host_id"] == "web-001")?;
        (h["last_seq"].as_u64()? >= 10).then_some(())
    });
    assert!(caught_up.is_some(), "collector did not receive the backlog; agent log:\n{}", agent.log_text());
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
    drop(_c);

    let (last, pending, epoch) = spool_state(&dir.path().join("web-001-spool"));
    assert_eq!(pending, 0, "the agent's spool still holds unacknowledged batches");
    assert_exactly_once(&stored_seqs(&collector.data_dir, "web-001"), epoch, last);
}

#[test]
fn agent_sigkill_resends_spooled_batches_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let agent_cfg = agent_config(dir.path(), &pki, "db-001", &collector.url(), HOST_PROBE);
    let log = dir.path().join("agent.log");

    // The agent runs first with no collector at all, so it has a spooled backlog when killed.
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &log);
    std::thread::sleep(Duration::from_secs(3));
    agent.sigkill();
    let (before_kill, pending, _) = spool_state(&dir.path().join("db-001-spool"));
    assert!(pending > 0 && before_kill > 0, "nothing was spooled before the kill");

    let c = collector.start();
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &log);
    let arrived = wait_for(Duration::from_secs(30), || {
        let out = collector.pikett(&["hosts", "--output", "json"], &pki.path("ca.pem"));
        let hosts = json_lines(&out.stdout);
        let h = hosts.iter().find(|h| h["host_id"] == "db-001")?;
        (h["last_seq"].as_u64()? > before_kill + 3).then_some(())
    });
    assert!(arrived.is_some(), "agent did not continue; log:\n{}", agent.log_text());
    // Kill it again mid-stream, restart, and stop it cleanly.
    agent.sigkill();
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &log);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
    drop(c);

    let (last, pending, epoch) = spool_state(&dir.path().join("db-001-spool"));
    assert_eq!(pending, 0);
    assert!(last > before_kill, "sequence numbers did not continue after the restart");
    assert_exactly_once(&stored_seqs(&collector.data_dir, "db-001"), epoch, last);
}

//! The agent's own disk: full, or its spool at the cap.
//!
//! - A full disk under the spool: the agent keeps running, reports `agent/spool` CRITICAL
//!   straight to the collector (that report needs no spool), reopens its spool when space
//!   returns and clears the fault; every batch it spooled arrives exactly once.
//! - A spool at its cap while the collector is away: the drops are counted, reach the
//!   collector, raise `agent/data-dropped` (WARNING) and show in `pikett hosts`.
//!
//! The full-disk test needs root to mount a small tmpfs; without it the test says so and
//! passes without checking anything (CI runs as root).

use std::time::Duration;

use pikett_tests::*;

fn host(collector: &CollectorSetup, ca: &str, id: &str) -> Option<serde_json::Value> {
    json_lines(&collector.pikett(&["hosts", "--output", "json"], ca).stdout).into_iter().find(|h| h["host_id"] == id)
}

#[test]
fn a_full_agent_disk_is_reported_without_the_spool_and_spooling_resumes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("agent_disk: not root, cannot mount a tmpfs; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let spool_dir = dir.path().join("diskfull-01-spool");
    let Some(_mount) = Mount::tmpfs(&spool_dir, "24m") else {
        eprintln!("agent_disk: cannot mount a tmpfs here; skipped");
        return;
    };
    let c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "diskfull-01", &collector.url(), "[host]\ninterval = \"200ms\"\n");
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let seen = wait_for(Duration::from_secs(30), || {
        host(&collector, &ca, "diskfull-01").filter(|h| h["last_seq"].as_u64().unwrap_or(0) >= 5)
    });
    assert!(seen.is_some(), "the agent did not deliver; agent log:\n{}", agent.log_text());

    // The disk fills up: the agent cannot spool and says so, straight on its stream.
    let filler = spool_dir.join("filler");
    fill(&filler);
    let critical =
        wait_for(Duration::from_secs(60), || find_fault(&collector, &ca, "diskfull-01", "agent/spool", "open"));
    assert!(
        critical.is_some(),
        "no agent/spool fault while the agent's disk was full\nagent log:\n{}\ncollector log:\n{}",
        agent.log_text(),
        c.log_text()
    );
    let fault = critical.unwrap();
    assert_eq!(fault["severity"], "critical", "{fault}");
    assert!(fault["summary"].as_str().unwrap_or("").contains("cannot spool"), "{fault}");
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent stopped on a full disk:\n{}", agent.log_text());

    // Space returns: the agent reopens its spool, spools again and clears the fault.
    std::fs::remove_file(&filler).unwrap();
    let cleared = wait_for(Duration::from_secs(60), || {
        faults(&collector, &ca)
            .into_iter()
            .find(|f| f["host"] == "diskfull-01" && f["check"] == "agent/spool" && f["state"] == "resolved")
    });
    assert!(cleared.is_some(), "agent/spool did not clear after space returned\nagent log:\n{}", agent.log_text());
    assert!(agent.log_text().contains("spooling works again"), "{}", agent.log_text());
    let before = host(&collector, &ca, "diskfull-01").unwrap()["last_seq"].as_u64().unwrap();
    let moved_on = wait_for(Duration::from_secs(20), || {
        host(&collector, &ca, "diskfull-01").filter(|h| h["last_seq"].as_u64().unwrap_or(0) >= before + 5)
    });
    assert!(moved_on.is_some(), "batches stopped flowing after the recovery:\n{}", agent.log_text());
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
    let mut c = c;
    assert_eq!(c.sigterm(Duration::from_secs(10)), Some(0), "collector log:\n{}", c.log_text());

    // Every batch the agent spooled arrived exactly once, or is still in its spool to be
    // sent: the drain at shutdown is bounded (3 s), so on a loaded machine the newest
    // batches may stay behind, and one may be stored while its ack was still on the way.
    let spool = pikett_agent::spool::Spool::open(&spool_dir, 1 << 30, 1 << 20).unwrap();
    let (last, epoch, pending) = (spool.next_seq().unwrap() - 1, spool.epoch(), spool.pending() as u64);
    assert!(pending <= 3, "{pending} batches left unacknowledged in the agent's spool after its drain");
    drop(spool);
    let storage = pikett_collector::store::SledStorage::open(&collector.data_dir, 1 << 20).unwrap();
    let log = pikett_tests::open_batch_log(storage, &collector.data_dir).unwrap();
    let stored = log.stored_seqs("diskfull-01").unwrap();
    let stored_up_to = stored.last().map_or(0, |(_, s)| *s);
    assert!(stored_up_to + pending >= last, "batches {}..={last} neither stored nor spooled", stored_up_to + 1);
    let expected: Vec<(u64, u64)> = (1..=stored_up_to).map(|s| (epoch, s)).collect();
    assert_eq!(stored, expected, "stored batches are not 1..={stored_up_to} once each (last spooled: {last})");
}

#[test]
fn drops_at_the_spool_cap_reach_the_collector_as_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    // A tiny spool and a collector that is not there yet: the oldest samples must go.
    let cfg = agent_config(
        dir.path(),
        &pki,
        "capped-01",
        &collector.url(),
        "spool_max_bytes = \"64KiB\"\n[host]\ninterval = \"100ms\"\n",
    );
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let dropped = wait_for(Duration::from_secs(30), || {
        agent.log_text().contains("spool full (spool_max_bytes): dropped the oldest data").then_some(())
    });
    assert!(dropped.is_some(), "the spool never reached its cap:\n{}", agent.log_text());
    let mut c = collector.start();
    let warning =
        wait_for(Duration::from_secs(60), || find_fault(&collector, &ca, "capped-01", "agent/data-dropped", "open"));
    assert!(
        warning.is_some(),
        "no agent/data-dropped fault\nagent log:\n{}\ncollector log:\n{}",
        agent.log_text(),
        c.log_text()
    );
    let fault = warning.unwrap();
    assert_eq!(fault["severity"], "warning", "{fault}");
    let h = host(&collector, &ca, "capped-01").unwrap();
    assert!(h["dropped_samples"].as_u64().unwrap() > 0, "{h}");
    let table = String::from_utf8_lossy(&collector.pikett(&["hosts"], &ca).stdout).to_string();
    assert!(table.contains("DROPPED"), "{table}");
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
    assert_eq!(c.sigterm(Duration::from_secs(10)), Some(0), "collector log:\n{}", c.log_text());
}

//! The collector's disk fills up: it stops acknowledging (it exits, status 75, rather than
//! run on with state ahead of the disk), the agent keeps everything in its spool and backs
//! off, and once space returns and the collector is started again, every batch arrives
//! exactly once.
//!
//! Needs root to mount a small tmpfs under the collector's data directory; without it the
//! test says so and passes without checking anything (CI runs as root).

use std::time::{Duration, Instant};

use pikett_tests::*;

#[test]
fn a_full_collector_disk_stops_acks_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("disk_full: not root, cannot mount a tmpfs; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let Some(_mount) = Mount::tmpfs(&collector.data_dir, "64m") else {
        eprintln!("disk_full: cannot mount a tmpfs here; skipped");
        return;
    };
    let agent_cfg = agent_config(dir.path(), &pki, "full-01", &collector.url(), "[host]\ninterval = \"200ms\"\n");
    let mut c = collector.start();
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(3));

    // The disk fills up: the collector's next group commit fails and it stops.
    let filler = collector.data_dir.join("filler");
    fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = c.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the collector kept running on a full disk:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(75), "collector log:\n{}", c.log_text());
    assert!(c.log_text().contains("storage failed"), "{}", c.log_text());

    // Meanwhile the agent spools and backs off: few connection attempts, not a loop.
    let attempts_before = agent.log_text().matches("collector unreachable").count();
    std::thread::sleep(Duration::from_secs(15));
    let attempts = agent.log_text().matches("collector unreachable").count() - attempts_before;
    assert!((1..=8).contains(&attempts), "{attempts} connection attempts in 15 s:\n{}", agent.log_text());

    // Space returns; the collector starts again and everything flows.
    std::fs::remove_file(&filler).unwrap();
    let connects = agent.log_text().matches("connected to collector").count();
    let mut c = collector.start();
    // The agent comes back within its current backoff (at most 30 s), then drains.
    let back = wait_for(Duration::from_secs(40), || {
        (agent.log_text().matches("connected to collector").count() > connects).then_some(())
    });
    assert!(back.is_some(), "the agent did not reconnect:\n{}", agent.log_text());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
    assert_eq!(c.sigterm(Duration::from_secs(10)), Some(0), "collector log:\n{}", c.log_text());

    let spool = pikett_agent::spool::Spool::open(&dir.path().join("full-01-spool"), 1 << 30, 1 << 20).unwrap();
    let (last, epoch) = (spool.next_seq().unwrap() - 1, spool.epoch());
    assert_eq!(spool.pending(), 0, "batches left unacknowledged in the agent's spool");
    drop(spool);
    let storage = pikett_collector::store::SledStorage::open(&collector.data_dir, 1 << 20).unwrap();
    let log = pikett_tests::open_batch_log(storage, &collector.data_dir).unwrap();
    let stored = log.stored_seqs("full-01").unwrap();
    let expected: Vec<(u64, u64)> = (1..=last).map(|s| (epoch, s)).collect();
    assert!(last > 20, "the agent sent only {last} batches");
    assert_eq!(stored, expected, "stored batches are not exactly 1..={last} once each");
}

/// Writes `mib` MiB of zeros to `file`.
fn write_mib(file: &std::path::Path, mib: usize) {
    let block = vec![0u8; 1 << 20];
    let mut data = Vec::with_capacity(mib << 20);
    for _ in 0..mib {
        data.extend_from_slice(&block);
    }
    std::fs::write(file, data).unwrap();
}

#[test]
fn the_collector_warns_before_its_disk_is_full() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("disk_full: not root, cannot mount a tmpfs; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let extra = "self_check_interval = \"1s\"\ndata_dir_warn_free_percent = 50\ndata_dir_crit_free_percent = 20\n";
    let collector = CollectorSetup::new(dir.path(), &pki, extra);
    let Some(_mount) = Mount::tmpfs(&collector.data_dir, "64m") else {
        eprintln!("disk_full: cannot mount a tmpfs here; skipped");
        return;
    };
    let _c = collector.start();
    let own = |state: &str| {
        faults(&collector, &ca)
            .into_iter()
            .find(|f| f["host"] == "pikett-collector" && f["check"] == "collector/disk" && f["state"] == state)
    };
    assert!(own("open").is_none(), "a warning with an empty disk");
    write_mib(&collector.data_dir.join("filler-1"), 36);
    let warning = wait_for(Duration::from_secs(20), || own("open").filter(|f| f["severity"] == "warning"));
    assert!(warning.is_some(), "no warning at about 40% free: {:?}", faults(&collector, &ca));
    write_mib(&collector.data_dir.join("filler-2"), 20);
    let critical = wait_for(Duration::from_secs(20), || own("open").filter(|f| f["severity"] == "critical"));
    assert!(critical.is_some(), "no critical at about 10% free: {:?}", faults(&collector, &ca));
    let (_, metrics) = http_get(collector.http_port, "/metrics").unwrap();
    assert!(
        metrics.contains("pikett_data_dir_free_bytes ")
            && metrics.contains("pikett_store_size_bytes{part=\"batch_files\"} "),
        "{metrics}"
    );
    std::fs::remove_file(collector.data_dir.join("filler-1")).unwrap();
    std::fs::remove_file(collector.data_dir.join("filler-2")).unwrap();
    assert!(wait_for(Duration::from_secs(20), || own("resolved")).is_some(), "the disk fault did not clear");
}

//! A host that lost its spool (wiped state directory, re-imaged host) is not ignored: its
//! agent comes back with a new spool epoch and sequence numbers from 1, and the collector
//! stores and evaluates those batches instead of taking them for duplicates.

use std::time::Duration;

use pikett_tests::*;

fn host(collector: &CollectorSetup, ca: &str, id: &str) -> Option<serde_json::Value> {
    json_lines(&collector.pikett(&["hosts", "--output", "json"], ca).stdout).into_iter().find(|h| h["host_id"] == id)
}

#[test]
fn a_wiped_spool_starts_a_new_epoch_and_its_faults_are_paged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let sms = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &alice_paged_by_sms(&sms, "", ""));
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "reimaged-01", &collector.url(), &check.toml().replace("500ms", "50ms"));
    // Many small batches, so the old spool gets far ahead of what the new one will send.
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("batch_interval = \"200ms\"", "batch_interval = \"20ms\"");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("agent.log");

    let mut agent = spawn("pikett-agent", &cfg, &["run"], &log);
    let before = wait_for(Duration::from_secs(60), || {
        host(&collector, &ca, "reimaged-01").filter(|h| h["last_seq"].as_u64().unwrap_or(0) >= 100)
    })
    .unwrap_or_else(|| panic!("the agent did not reach seq 100; agent log:\n{}", agent.log_text()));
    let old_epoch = before["spool_epoch"].as_u64().unwrap();
    assert_ne!(old_epoch, 0);
    assert_eq!(before["spool_resets"], 0);
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());

    // The host is re-imaged: its spool is gone. Then a check fails.
    std::fs::remove_dir_all(dir.path().join("reimaged-01-spool")).unwrap();
    check.set(2);
    let agent = spawn("pikett-agent", &cfg, &["run"], &log);
    let fault = wait_for(Duration::from_secs(30), || find_fault(&collector, &ca, "reimaged-01", "command/ctl", "open"))
        .unwrap_or_else(|| {
            panic!(
                "the new spool's batches were not evaluated: no fault opened\ncollector log:\n{}\nagent log:\n{}",
                std::fs::read_to_string(&collector.log).unwrap_or_default(),
                agent.log_text()
            )
        });
    let id = fault["id"].as_u64().unwrap();
    let paged = wait_for(Duration::from_secs(10), || {
        sms.requests().into_iter().find(|r| {
            r.body.contains(ALICE_SMS)
                && r.headers.get("idempotency-key").is_some_and(|k| k.starts_with(&format!("{id}/")))
        })
    });
    assert!(paged.is_some(), "the fault opened from the new spool was not paged");

    // The registry says what happened.
    let after = host(&collector, &ca, "reimaged-01").unwrap();
    assert_eq!(after["spool_resets"], 1, "{after}");
    assert_ne!(after["spool_epoch"], before["spool_epoch"]);
    assert!(after["last_seq"].as_u64().unwrap() < before["last_seq"].as_u64().unwrap(), "{after}");
    let table = String::from_utf8_lossy(&collector.pikett(&["hosts"], &ca).stdout).to_string();
    assert!(table.contains("RESETS"), "{table}");
    let log_text = std::fs::read_to_string(&collector.log).unwrap_or_default();
    assert!(log_text.contains("new spool"), "the collector did not log the new spool");
}

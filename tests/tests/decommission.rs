//! Decommissioning with the real binaries: `pikett hosts --stale` lists the silent host,
//! `pikett host remove` ends its open faults as decommissioned, takes it off the host list
//! and stops `host/reachable` for it, and keeps its history.

use std::time::Duration;

use pikett_tests::*;

#[test]
fn a_removed_host_leaves_the_lists_and_is_not_expected_any_more() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    // Short host timeouts, so that "no host/reachable after removal" means something.
    let collector = CollectorSetup::new(dir.path(), &pki, "host_timeout = \"3s\"\n[faults]\nfor = 1\n");
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    check.set(2);
    let cfg = agent_config(dir.path(), &pki, "old-01", &collector.url(), &check.toml());
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let fault = wait_for(Duration::from_secs(30), || find_fault(&collector, &ca, "old-01", "command/ctl", "open"))
        .expect("no fault opened");
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0));

    // Silent now: listed as stale once past the period, not before.
    let stale = |period: &str| {
        let out = collector.pikett(&["hosts", "--stale", period, "--output", "json"], &ca);
        json_lines(&out.stdout).into_iter().any(|h| h["host_id"] == "old-01")
    };
    assert!(!stale("1h"), "a host silent for seconds was listed as stale for 1h");
    assert!(wait_for(Duration::from_secs(10), || stale("1s").then_some(())).is_some());

    let out = collector.pikett(&["host", "remove", "old-01"], &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("ended as decommissioned"), "{said}");

    // Its faults ended as decommissioned, by the remover; the history is still there.
    let id = fault["id"].to_string();
    let shown = json_lines(&collector.pikett(&["fault", "show", &id, "--output", "json"], &ca).stdout);
    assert_eq!(shown[0]["state"], "resolved", "{shown:?}");
    let timeline = shown[0]["timeline"].to_string();
    assert!(timeline.contains("decommissioned"), "{timeline}");
    // Off the host list, and no host/reachable however long it stays silent.
    let hosts = json_lines(&collector.pikett(&["hosts", "--output", "json"], &ca).stdout);
    assert!(hosts.iter().all(|h| h["host_id"] != "old-01"), "{hosts:?}");
    std::thread::sleep(Duration::from_secs(6));
    let reachable = faults(&collector, &ca)
        .into_iter()
        .filter(|f| f["host"] == "old-01" && f["check"] == "host/reachable" && f["state"] != "resolved")
        .count();
    assert_eq!(reachable, 0, "a removed host is still expected to report");
    // A second removal says there is nothing to remove.
    let again = collector.pikett(&["host", "remove", "old-01"], &ca);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("removed already"));
}

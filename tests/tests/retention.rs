//! Retention with the real binaries and short `[retention]` settings: a CRITICAL fault pages
//! and opens an incident; once resolved, its escalation and (after 30 s) the closed incident leave memory
//! but stay readable (also after a restart); once past retention, the fault, its escalation,
//! the incident and the old batches are removed, and `/metrics` counts what went.

use std::time::Duration;

use pikett_tests::*;

/// Minutes of retention in seconds, pruned every second.
const RETENTION: &str = "[retention]\nbatches = \"5s\"\nfaults = \"60s\"\nprune_every = \"1s\"\n";

/// The value of the sample `name` (with its labels, as written) on `/metrics`.
fn metric(collector: &CollectorSetup, name: &str) -> Option<f64> {
    let (_, text) = http_get(collector.http_port, "/metrics")?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn resolved_history_leaves_memory_and_then_the_store_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let gateway = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &alice_paged_by_sms(&gateway, "", RETENTION));
    let mut c = collector.start();
    // Logged to a file, not a terminal: no colour codes (journald shows them as garbage).
    let log = c.log_text();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "no log, or ANSI codes in it:\n{log}");

    let check = ControlledCheck::new(dir.path());
    check.set(2);
    let cfg = agent_config(dir.path(), &pki, "web-01", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    let fault = wait_for(Duration::from_secs(30), || find_fault(&collector, &ca, "web-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; collector log:\n{}", c.log_text()));
    let fault_id = fault["id"].to_string();
    let incident = wait_for(Duration::from_secs(10), || {
        json_lines(&collector.pikett(&["incidents", "--output", "json"], &ca).stdout).into_iter().next()
    })
    .expect("no incident for the critical fault");
    let incident_id = incident["id"].to_string();
    // This agent's host probe may open warnings of its own (a full disk here): every count
    // below is about this fault, or a difference.
    let pages = || gateway.requests().into_iter().filter(|r| r.body.contains("command/ctl")).count();
    wait_for(Duration::from_secs(10), || (pages() > 0).then_some(())).expect("nobody paged");
    assert!(!agent.log_text().contains('\u{1b}'), "ANSI codes in the agent's log:\n{}", agent.log_text());
    let in_memory = |what: &str| metric(&collector, &format!(r#"pikett_in_memory_records{{what="{what}"}}"#));
    let (escalations, incidents) = wait_for(Duration::from_secs(5), || {
        Some((in_memory("escalations").filter(|n| *n >= 1.0)?, in_memory("incidents").filter(|n| *n == 1.0)?))
    })
    .unwrap_or_else(|| {
        panic!("the open escalation and incident are not counted: {:?}", http_get(collector.http_port, "/metrics"))
    });

    // Resolved: the incident closes by itself, and both leave memory.
    check.set(0);
    wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "web-01", "command/ctl", "resolved"))
        .expect("the fault did not resolve");
    for (what, before) in [("escalations", escalations), ("incidents", incidents)] {
        assert!(
            // Escalations leave at once, closed incidents after 30 s (staff actions in flight).
            wait_for(Duration::from_secs(45), || in_memory(what).filter(|n| *n < before)).is_some(),
            "{what} stayed in memory after resolution: {:?}",
            http_get(collector.http_port, "/metrics"),
        );
    }
    // Still readable from the store, also after a restart, and closed for changes.
    let show = |id: &str| json_lines(&collector.pikett(&["incident", "show", id, "--output", "json"], &ca).stdout);
    assert_eq!(show(&incident_id)[0]["state"], "closed");
    c.sigkill();
    let _c = collector.start();
    assert_eq!(show(&incident_id)[0]["state"], "closed", "a closed incident is gone after a restart");
    let all = json_lines(&collector.pikett(&["incidents", "--all", "--output", "json"], &ca).stdout);
    assert_eq!(all.len(), 1, "{all:?}");
    let update = collector.pikett(&["incident", "update", &incident_id, "--text", "late"], &ca);
    assert!(!update.status.success());
    let said = String::from_utf8_lossy(&update.stderr);
    assert!(said.contains("is closed"), "{said}");
    // The escalation resumed nothing: only the alarm and the resolution were sent.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pages(), 2, "{:?}", gateway.requests());

    // Past retention: the fault, its escalation and the incident are removed; old batches too.
    let removed = |what: &str| metric(&collector, &format!(r#"pikett_retention_removed_total{{what="{what}"}}"#));
    let gone = wait_for(Duration::from_secs(90), || {
        Some([removed("faults")?, removed("escalations")?, removed("incidents")?, removed("batches")?])
    });
    assert!(gone.is_some(), "not everything was pruned; /metrics:\n{:?}", http_get(collector.http_port, "/metrics"));
    let out = collector.pikett(&["incident", "show", &incident_id], &ca);
    assert!(!out.status.success(), "the incident outlived its retention");
    let out = collector.pikett(&["fault", "show", &fault_id], &ca);
    assert!(!out.status.success(), "the fault outlived its retention");
    let stored = wait_for(Duration::from_secs(5), || {
        metric(&collector, r#"pikett_store_records{tree="incidents"}"#).filter(|n| *n == 1.0)
    });
    assert_eq!(stored, Some(1.0), "only the next-id record is left of the incidents");
    // Batches young enough are kept: the store still counts the agent's recent ones.
    let batches = metric(&collector, r#"pikett_store_records{tree="batches"}"#).unwrap_or(0.0);
    assert!(batches > 0.0, "every batch was pruned, young ones included");
}

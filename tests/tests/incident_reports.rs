//! The post-incident report end to end, for what an operator found wrong with it: one host's
//! fault is acknowledged, resolved by hand while its check still fails (its incident closes
//! by itself) and reopens (a new incident), is acknowledged again, then recovers.
//! - the first incident's time to acknowledge is to the FIRST acknowledgement, not the
//!   second (the fault's `acked_at` after the reopening);
//! - the second incident opened at the reopening: its header's "opened" and its timeline's
//!   first entry agree (in `pikett incident show` and in the report);
//! - closing an incident that closed by itself records the root cause and recommendations
//!   given, and the report shows them.

use std::time::Duration;

use pikett_tests::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The incidents (open and closed) holding fault `fault`, oldest first.
fn incidents_of(collector: &CollectorSetup, ca: &str, fault: u64) -> Vec<serde_json::Value> {
    let mut list: Vec<serde_json::Value> =
        json_lines(&collector.pikett(&["incidents", "--all", "--output", "json"], ca).stdout)
            .into_iter()
            .filter(|i| i["fault_ids"].as_array().is_some_and(|f| f.iter().any(|id| id.as_u64() == Some(fault))))
            .collect();
    list.sort_by_key(|i| i["id"].as_u64());
    list
}

/// The times of fault `fault`'s timeline entries of `kind`, as the CLI shows them (seconds).
fn entries(collector: &CollectorSetup, ca: &str, fault: u64, kind: &str) -> Vec<String> {
    faults(collector, ca)
        .into_iter()
        .find(|f| f["id"].as_u64() == Some(fault))
        .map(|f| {
            f["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| e["at"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn report(collector: &CollectorSetup, ca: &str, id: &str) -> String {
    let out = collector.pikett(&["incident", "report", id], ca);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The section `name` of a Markdown report.
fn section<'a>(md: &'a str, name: &str) -> &'a str {
    let start = md.find(&format!("## {name}\n")).unwrap_or_else(|| panic!("no section {name}:\n{md}"));
    let rest = &md[start + 4..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn reports_count_to_the_first_ack_open_at_a_reopening_and_show_a_root_cause_recorded_after_closing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let gateway = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &alice_paged_by_sms(&gateway, "", ""));
    let c = collector.start();
    let check = ControlledCheck::new(dir.path());
    // The host probe must not add a critical fault of its own (a nearly full disk of the
    // machine running the test would join the incident and keep it open).
    let quiet_host =
        "[host]\ndisk_warn = \"100%\"\ndisk_crit = \"100%\"\nmemory_warn = \"100%\"\nmemory_crit = \"100%\"\n";
    let cfg = agent_config(dir.path(), &pki, "app-01", &collector.url(), &format!("{quiet_host}{}", check.toml()));
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault; collector log:\n{}", c.log_text()))["id"]
        .as_u64()
        .unwrap();
    let f = fault.to_string();
    let first = wait_for(Duration::from_secs(10), || incidents_of(&collector, &ca, fault).into_iter().next())
        .unwrap_or_else(|| panic!("no incident; collector log:\n{}", c.log_text()));
    let first_id = first["id"].as_u64().unwrap().to_string();

    // Acknowledged after a while (the report counts whole seconds), then resolved by hand
    // while the check still fails: the incident closes by itself, the fault reopens into a
    // new incident.
    std::thread::sleep(Duration::from_secs(2));
    let out = collector.pikett(&["ack", &f], &ca);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    let out = collector.pikett(&["resolve", &f], &ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = wait_for(Duration::from_secs(20), || {
        incidents_of(&collector, &ca, fault).into_iter().find(|i| i["id"] != first["id"] && i["state"] == "open")
    })
    .unwrap_or_else(|| {
        panic!(
            "the reopened fault is in no new incident: {:#?}\nfaults: {:#?}\ncollector log:\n{}",
            incidents_of(&collector, &ca, fault),
            faults(&collector, &ca),
            c.log_text()
        )
    });
    let second_id = second["id"].as_u64().unwrap().to_string();
    let first = incidents_of(&collector, &ca, fault).into_iter().find(|i| i["id"] == first["id"]).unwrap();
    assert_eq!(first["state"], "closed", "{first}");

    // Acknowledged again, a while after the reopening.
    std::thread::sleep(Duration::from_secs(2));
    let out = collector.pikett(&["ack", &f], &ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let acks = entries(&collector, &ca, fault, "acknowledged");
    let reopened = entries(&collector, &ca, fault, "reopened");
    assert_eq!((acks.len(), reopened.len()), (2, 1), "acks {acks:?}, reopened {reopened:?}");
    assert_ne!(acks[0], acks[1]);

    // Bug 2: the first incident's time to acknowledge is to the first acknowledgement.
    let md = report(&collector, &ca, &first_id);
    let response = section(&md, "Response times");
    let row = response.lines().find(|l| l.starts_with(&format!("| {fault} | "))).unwrap_or_else(|| panic!("{md}"));
    assert!(row.contains(&format!("| {} |", acks[0])), "not the first acknowledgement {}: {row}\n{md}", acks[0]);
    assert!(!row.contains(&acks[1]), "the second acknowledgement {}: {row}\n{md}", acks[1]);
    assert!(response.contains("Incident: first acknowledgement "), "{md}");

    // Bug 3: the second incident opened at the reopening; header and timeline agree.
    let shown = json_lines(&collector.pikett(&["incident", "show", &second_id, "--output", "json"], &ca).stdout);
    let opened = shown[0]["opened"].as_str().unwrap().to_string();
    assert_eq!(opened, reopened[0], "{}", shown[0]);
    assert_eq!(shown[0]["timeline"][0]["at"], opened.as_str(), "{}", shown[0]);
    let md = report(&collector, &ca, &second_id);
    assert!(md.contains(&format!("- **Opened:** {opened}\n")), "{md}");
    let timeline = section(&md, "Timeline");
    let first_row = timeline.lines().find(|l| l.starts_with("| 2")).unwrap_or_else(|| panic!("{md}"));
    assert!(first_row.starts_with(&format!("| {opened} |")), "{first_row}\n{md}");
    // Its time to acknowledge is to the acknowledgement after the reopening.
    let response = section(&md, "Response times");
    let row = response.lines().find(|l| l.starts_with(&format!("| {fault} | "))).unwrap_or_else(|| panic!("{md}"));
    assert!(row.starts_with(&format!("| {fault} | {opened} | {} |", acks[1])), "{row}\n{md}");

    // Bug 1: the check recovers, the second incident closes by itself; closing it then
    // records the root cause and recommendations, and the report shows them.
    check.set(0);
    wait_for(Duration::from_secs(20), || {
        incidents_of(&collector, &ca, fault).into_iter().find(|i| i["id"] == second["id"] && i["state"] == "closed")
    })
    .unwrap_or_else(|| panic!("the second incident did not close; collector log:\n{}", c.log_text()));
    assert!(section(&report(&collector, &ca, &second_id), "Root cause").contains("(not yet recorded)"));
    // Both are still required.
    let out = collector.pikett(&["incident", "close", &second_id, "--root-cause", "PSU fan failed"], &ca);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("recommendations"), "{}", stderr(&out));
    let out = collector.pikett(
        &[
            "incident",
            "close",
            &second_id,
            "--root-cause",
            "PSU fan failed",
            "--recommendations",
            "Replace PSU fans every 3 years",
        ],
        &ca,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("root cause and recommendations recorded"), "{}", stdout(&out));
    let md = report(&collector, &ca, &second_id);
    assert!(md.contains("## Root cause\n\nPSU fan failed\n"), "{md}");
    assert!(md.contains("## Recommendations\n\nReplace PSU fans every 3 years\n"), "{md}");
    assert!(md.contains("by pikett (every fault resolved)"), "{md}");
    let shown = json_lines(&collector.pikett(&["incident", "show", &second_id, "--output", "json"], &ca).stdout);
    assert_eq!(shown[0]["root_cause"], "PSU fan failed", "{}", shown[0]);
    // Recorded once: closing again is refused (exit 1), the root cause stays.
    let out = collector.pikett(&["incident", "close", &second_id, "--root-cause", "x", "--recommendations", "y"], &ca);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("is closed"), "{}", stderr(&out));
    assert!(report(&collector, &ca, &second_id).contains("## Root cause\n\nPSU fan failed\n"));
}

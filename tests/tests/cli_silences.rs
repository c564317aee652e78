//! The staff CLI's silences and maintenance windows against a real collector and agent:
//! add, list (table and JSON) and remove; a host or check the collector does not know is
//! refused with a message saying where the names are, and `--force` announces one anyway;
//! `pikett faults --all` shows why a resolved fault opened, not only its last "OK".

use std::process::Output;
use std::time::Duration;

use pikett_tests::*;

/// The stderr of a call that must be refused with exit 1.
fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "not refused: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn silences_and_maintenance_round_trip_and_unknown_hosts_and_checks_are_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "[faults]\nfor = 1\n");
    let _c = collector.start();
    let pikett = |args: &[&str]| collector.pikett(args, &ca);

    // Before web-1 reports, it is unknown: refused, naming the host and where host ids are.
    let err = refused(&pikett(&["silence", "--host", "web-1", "--for", "1h", "--reason", "deploy"]));
    assert!(err.contains("\"web-1\"") && err.contains("pikett hosts") && err.contains("--force"), "{err}");

    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "web-1", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    // Once its first batch with command/ctl is stored, a silence of that check is accepted.
    let silence = wait_for(Duration::from_secs(30), || {
        let out = pikett(&[
            "silence",
            "--host",
            "web-1",
            "--check",
            "command/ctl",
            "--for",
            "2h",
            "--reason",
            "deploy",
            "--output",
            "json",
        ]);
        out.status.success().then(|| one_json_line(&out))
    })
    .unwrap_or_else(|| panic!("web-1's check was never accepted; agent log:\n{}", agent.log_text()));
    assert_eq!(silence["host"], "web-1");
    assert_eq!(silence["check"], "command/ctl");
    assert_eq!(silence["reason"], "deploy");
    assert!(silence["who"].as_str().unwrap().ends_with("@local"), "{silence}");
    assert!(silence["created"].is_string() && silence["until"].is_string(), "{silence}");
    let check_silence = silence["id"].as_u64().unwrap();

    // A host nobody knows: refused with the host, `pikett hosts` and --force in one message.
    let err = refused(&pikett(&["silence", "--host", "web-9", "--for", "1h", "--reason", "typo?"]));
    assert!(err.contains("\"web-9\"") && err.contains("pikett hosts") && err.contains("--force"), "{err}");
    // A check web-1 never reported: refused, listing a check it does report.
    let err =
        refused(&pikett(&["silence", "--host", "web-1", "--check", "command/nope", "--for", "1h", "--reason", "x"]));
    assert!(err.contains("command/nope") && err.contains("command/ctl") && err.contains("--force"), "{err}");
    // --force announces both.
    let forced = one_json_line(&pikett(&[
        "silence",
        "--host",
        "web-9",
        "--for",
        "1h",
        "--reason",
        "before enrollment",
        "--force",
        "--output",
        "json",
    ]));
    assert_eq!((forced["host"].as_str(), forced["check"].is_null()), (Some("web-9"), true), "{forced}");
    success_stdout(&pikett(&[
        "silence",
        "--host",
        "web-1",
        "--check",
        "command/nope",
        "--for",
        "1h",
        "--reason",
        "x",
        "--force",
    ]));

    // The flag form still prints its line for people.
    let text = success_stdout(&pikett(&["silence", "--host", "web-1", "--for", "30m", "--reason", "whole host"]));
    assert!(text.starts_with("silence ") && text.contains(" on web-1 until "), "{text}");

    // List: table and JSON.
    let table = success_stdout(&pikett(&["silence", "list"]));
    assert!(table.lines().next().unwrap().starts_with("  ID HOST"), "{table}");
    let row = table.lines().find(|l| l.trim_start().starts_with(&format!("{check_silence} "))).expect(&table);
    assert!(row.contains("web-1") && row.contains("command/ctl") && row.contains("deploy"), "{row}");
    assert!(table.contains("(all checks)") && table.contains("web-9"), "{table}");
    let listed = json_lines(success_stdout(&pikett(&["silence", "list", "--output", "json"])).as_bytes());
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(listed.iter().any(|s| s["id"] == check_silence && s["check"] == "command/ctl" && s["reason"] == "deploy"));

    // Remove: the removed silence comes back, and is gone from the list.
    let removed = one_json_line(&pikett(&["silence", "remove", &check_silence.to_string(), "--output", "json"]));
    assert_eq!((removed["id"].as_u64(), removed["check"].as_str()), (Some(check_silence), Some("command/ctl")));
    let listed = json_lines(success_stdout(&pikett(&["silence", "list", "--output", "json"])).as_bytes());
    assert!(listed.iter().all(|s| s["id"] != check_silence) && listed.len() == 3, "{listed:?}");
    let err = refused(&pikett(&["silence", "remove", &check_silence.to_string()]));
    assert!(err.contains(&format!("no silence with id {check_silence}")), "{err}");
    let text = success_stdout(&pikett(&["silence", "remove", &forced["id"].to_string()]));
    assert!(text.contains("removed") && text.contains("web-9"), "{text}");

    // Maintenance: unknown host refused, --force accepted, add/list/remove for a known one.
    let (start, end) = ("now", "2099-01-01T00:00:00Z");
    let add = |host: &str, extra: &[&str]| {
        let mut args = vec!["maintenance", "add", "--host", host, "--start", start, "--end", end, "--reason", "kernel"];
        args.extend_from_slice(extra);
        pikett(&args)
    };
    let err = refused(&add("db-7", &[]));
    assert!(err.contains("\"db-7\"") && err.contains("pikett hosts") && err.contains("--force"), "{err}");
    let forced = one_json_line(&add("db-7", &["--force", "--output", "json"]));
    assert_eq!(forced["host"], "db-7");
    let text = success_stdout(&add("web-1", &[]));
    assert!(text.starts_with("maintenance ") && text.contains(" on web-1 from "), "{text}");
    let windows = json_lines(success_stdout(&pikett(&["maintenance", "list", "--output", "json"])).as_bytes());
    assert_eq!(windows.len(), 2, "{windows:?}");
    let web = windows.iter().find(|m| m["host"] == "web-1").expect("web-1's window listed");
    assert_eq!((web["reason"].as_str(), web["end"].as_str()), (Some("kernel"), Some("2099-01-01T00:00:00Z")));
    assert!(web["who"].as_str().unwrap().ends_with("@local"));
    let table = success_stdout(&pikett(&["maintenance", "list"]));
    assert!(table.contains("web-1") && table.contains("db-7") && table.contains("kernel"), "{table}");
    let web_id = web["id"].to_string();
    let removed = one_json_line(&pikett(&["maintenance", "remove", &web_id, "--output", "json"]));
    assert_eq!(removed["host"], "web-1");
    let text = success_stdout(&pikett(&["maintenance", "remove", &forced["id"].to_string()]));
    assert!(text.contains("db-7") && text.contains("removed"), "{text}");
    assert!(success_stdout(&pikett(&["maintenance", "list"])).contains("(no maintenance windows)"));
    let err = refused(&pikett(&["maintenance", "remove", &web_id]));
    assert!(err.contains(&format!("no maintenance window with id {web_id}")), "{err}");

    // Every change was audited under the acting user.
    let audit = json_lines(success_stdout(&pikett(&["audit", "--output", "json"])).as_bytes());
    for call in ["add_silence", "remove_silence", "add_maintenance", "remove_maintenance"] {
        assert!(audit.iter().any(|e| e["call"] == call && e["outcome"] == "ok"), "{call} not audited");
    }
}

#[test]
fn faults_all_shows_why_a_resolved_fault_opened() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "[faults]\nfor = 1\n");
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "app-01", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    check.set(2);
    wait_for(Duration::from_secs(30), || find_fault(&collector, &ca, "app-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; agent log:\n{}", agent.log_text()));
    check.set(0);
    let fault = wait_for(Duration::from_secs(30), || find_fault(&collector, &ca, "app-01", "command/ctl", "resolved"))
        .expect("the fault did not resolve");
    assert!(fault["summary"].as_str().unwrap().contains("OK - fine"), "{fault}");
    assert!(fault["opened_summary"].as_str().unwrap().contains("CRITICAL - broken"), "{fault}");

    let out = collector.pikett(&["faults", "--all"], &ca);
    let table = success_stdout(&out);
    assert!(table.lines().next().unwrap().contains("WHY OPENED"), "{table}");
    let row = table.lines().find(|l| l.contains("command/ctl") && l.contains("resolved")).expect(&table);
    assert!(row.contains("CRITICAL - broken") && row.contains("(last: OK - fine"), "{row}");

    let shown = success_stdout(&collector.pikett(&["fault", "show", &fault["id"].to_string()], &ca));
    assert!(shown.lines().any(|l| l.starts_with("why opened:") && l.contains("CRITICAL - broken")), "{shown}");
}

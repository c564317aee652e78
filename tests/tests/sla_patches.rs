//! Live SLA reports and patch compliance end to end: a real agent's `command` check, turned
//! CRITICAL and OK again by the test, becomes an outage in `pikett sla report`; `pikett sla
//! classify` excuses it as force majeure; the real apt patches probe shows up in `pikett patches`.

use std::time::Duration;

use pikett_tests::*;

const SLA: &str = r#"
[customers.acme]
sla = "standard"

[sla.standard]
timezone = "UTC"
windows = [{ name = "all", from = "00:00", to = "24:00", days = "mon-sun", target = "99%" }]
checks = ["command/ctl"]
"#;

/// The current month in UTC (the contract's time zone), `YYYY-MM`.
fn this_month() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m"]).output().expect("date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn report(collector: &CollectorSetup, ca: &str, month: &str) -> serde_json::Value {
    let out = collector.pikett(&["sla", "report", "--customer", "acme", "--month", month, "--format", "json"], ca);
    assert!(out.status.success(), "sla report failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows = json_lines(&out.stdout);
    rows.into_iter().find(|r| r["host"] == "app-01" && r["window"] == "all").expect("a row for app-01")
}

fn excused_total(row: &serde_json::Value) -> u64 {
    ["short", "maintenance", "force_majeure", "customer"]
        .iter()
        .map(|k| row["excused_seconds"][k].as_u64().unwrap())
        .sum()
}

#[test]
fn critical_check_becomes_an_outage_and_force_majeure_excuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, SLA);
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "app-01", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let month = this_month();

    // The host is known and has had no outage yet.
    let row = wait_for(Duration::from_secs(20), || {
        let out =
            collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month, "--format", "json"], &ca);
        json_lines(&out.stdout).into_iter().find(|r| r["host"] == "app-01")
    })
    .unwrap_or_else(|| panic!("app-01 never showed in the report; agent log:\n{}", agent.log_text()));
    assert_eq!(row["outage_seconds"], 0);
    assert_eq!(row["availability"], 1.0);

    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; agent log:\n{}", agent.log_text()));
    assert_eq!(fault["severity"], "critical");
    std::thread::sleep(Duration::from_secs(3));
    check.set(0);
    let resolved =
        wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "resolved"))
            .expect("the fault did not resolve");
    let id = resolved["id"].as_u64().unwrap().to_string();

    let row = report(&collector, &ca, &month);
    let outage = row["outage_seconds"].as_u64().unwrap();
    assert!(outage >= 2, "{row}");
    assert_eq!(row["counted_seconds"].as_u64().unwrap() + excused_total(&row), outage, "{row}");
    assert_eq!(row["counted_seconds"].as_u64().unwrap(), outage, "nothing excuses it: {row}");
    assert_eq!(row["month"], month.as_str());
    assert_eq!(row["target"], 0.99);
    assert!(row["availability"].as_f64().unwrap() < 1.0);

    let out = collector.pikett(&["sla", "classify", "--fault", &id, "--cause", "force-majeure"], &ca);
    assert!(out.status.success(), "classify failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("force-majeure"));
    let row = report(&collector, &ca, &month);
    assert_eq!(row["outage_seconds"].as_u64().unwrap(), outage, "{row}");
    assert_eq!(row["excused_seconds"]["force_majeure"].as_u64().unwrap(), outage, "{row}");
    assert_eq!(row["counted_seconds"], 0, "{row}");
    assert_eq!(row["availability"], 1.0);
    assert_eq!(row["met"], true);

    // The table, CSV and the year view render; unknown faults and customers are refused with exit 1.
    let table = collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month], &ca);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success() && text.contains("app-01") && text.contains("response:"), "{text}");
    let csv = collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month, "--format", "csv"], &ca);
    assert!(String::from_utf8_lossy(&csv.stdout).lines().count() >= 2);
    let year = &month[..4];
    let y = collector.pikett(&["sla", "report", "--customer", "acme", "--year", year], &ca);
    assert!(y.status.success() && String::from_utf8_lossy(&y.stdout).contains(&month));
    let bad = collector.pikett(&["sla", "classify", "--fault", "99999", "--cause", "customer"], &ca);
    assert_eq!(bad.status.code(), Some(1));
    let bad = collector.pikett(&["sla", "report", "--customer", "nobody", "--month", &month], &ca);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nobody"));
    // A month older than the fault history kept is not reported as 100 %.
    let gone = collector.pikett(&["sla", "report", "--customer", "acme", "--month", "2020-01"], &ca);
    assert_eq!(gone.status.code(), Some(1));
    let why = String::from_utf8_lossy(&gone.stderr);
    assert!(why.contains("2020-01 is older than the fault history kept"), "{why}");
    // The same month last year, and the one before it (13 months back), are still kept.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let thirteen_back = now.date().first_of_month().checked_sub(jiff::Span::new().months(13)).unwrap();
    let back = format!("{}-{:02}", thirteen_back.year(), thirteen_back.month());
    let old = collector.pikett(&["sla", "report", "--customer", "acme", "--month", &back], &ca);
    assert!(old.status.success(), "{back}: {}", String::from_utf8_lossy(&old.stderr));
}

#[test]
fn apt_patches_probe_shows_in_pikett_patches() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector =
        CollectorSetup::new(dir.path(), &pki, "[patches]\npatch_day = \"2nd tue\"\ncritical_patch_days = 3\n");
    let _c = collector.start();
    let cfg = agent_config(
        dir.path(),
        &pki,
        "deb-01",
        &collector.url(),
        "[patches]\nmanager = \"apt\"\nrefresh = false\ntimeout = \"60s\"\n",
    );
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let host = wait_for(Duration::from_secs(90), || {
        let out = collector.pikett(&["patches", "--output", "json"], &ca);
        json_lines(&out.stdout).into_iter().find(|h| h["host_id"] == "deb-01")
    })
    .unwrap_or_else(|| panic!("deb-01 never showed in pikett patches; agent log:\n{}", agent.log_text()));
    assert_eq!(host["customer"], "acme");
    let status = host["status"].as_str().unwrap();
    assert!(["compliant", "due", "overdue"].contains(&status), "{host}");
    let updates = host["updates"].as_array().unwrap();
    assert_eq!(host["pending"].as_u64().unwrap() as usize, updates.len(), "{host}");
    assert!(host["security"].as_u64().unwrap() <= host["pending"].as_u64().unwrap());
    assert!(host["reboot_required"].is_boolean(), "{host}");
    assert!(host["last_patch_day"].as_str().unwrap().len() == 10, "{host}");
    if !updates.is_empty() {
        assert!(host["oldest_pending"].is_string(), "{host}");
        assert!(updates[0]["first_seen"].is_string() && updates[0]["package"].is_string(), "{host}");
    }

    // The table and the filters.
    let table = collector.pikett(&["patches", "--host", "deb-01"], &ca);
    let text = String::from_utf8_lossy(&table.stdout);
    // The host's own row carries its status (the footer explaining the rule names every status).
    let row = text.lines().find(|l| l.contains("deb-01")).unwrap_or_default();
    assert!(table.status.success() && row.split_whitespace().any(|w| w == status), "{text}");
    let overdue = json_lines(&collector.pikett(&["patches", "--overdue", "--output", "json"], &ca).stdout);
    assert_eq!(overdue.len(), usize::from(status == "overdue"));
    let unknown = collector.pikett(&["patches", "--host", "nope"], &ca);
    assert_eq!(unknown.status.code(), Some(1));
}

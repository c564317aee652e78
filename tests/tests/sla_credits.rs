//! Service credits end to end: a real agent's `command` check, turned CRITICAL and OK again by
//! the test, is an outage of customer acme, whose contract carries a credit table and whose
//! monthly fee is 1,200.00 EUR. `pikett sla report` (JSON and table) and `pikett incident
//! report` (Markdown and JSON) show the credit owed with its arithmetic; classifying the
//! outage as force majeure takes the credit away again.
//!
//! The tiers are chosen so the amount does not depend on how long the outage lasted: any
//! counted second puts the month below 100 % (→ 10 %), and only more than 0.01 % of the month
//! (over 4 minutes) would reach the 25 % tier. 10 % of 1,200.00 EUR = 120.00 EUR.

use std::time::Duration;

use pikett_tests::*;

const CONFIG: &str = r#"
[customers.acme]
sla = "standard"
monthly_fee = "1200.00"
currency = "EUR"

[sla.standard]
timezone = "UTC"
windows = [{ name = "all", from = "00:00", to = "24:00", days = "mon-sun", target = "99%" }]
checks = ["command/ctl"]
credits = [ { below = 100, percent = 10 }, { below = 99.99, percent = 25 } ]
"#;

/// The month of `t` in UTC (the contract's time zone), `YYYY-MM`.
fn month_of(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m").to_string()
}

/// The current month, `YYYY-MM`.
fn this_month() -> String {
    month_of(jiff::Timestamp::now())
}

/// Waits into the next month when this one ends within `margin`: a few seconds of outage
/// must fall into one month, whose credit the test reads while it is still the current one.
fn away_from_the_month_end(margin: Duration) {
    let now = jiff::Timestamp::now();
    let utc = now.to_zoned(jiff::tz::TimeZone::UTC);
    let next = utc.first_of_month().ok().and_then(|m| m.checked_add(jiff::Span::new().months(1)).ok());
    if let Some(left) = next.map(|n| n.timestamp().duration_since(now))
        && left < jiff::SignedDuration::try_from(margin).unwrap_or(jiff::SignedDuration::MAX)
    {
        std::thread::sleep(left.unsigned_abs() + Duration::from_secs(1));
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pikett sla report --format json`: app-01's row and the month's credit line.
fn report(collector: &CollectorSetup, ca: &str, month: &str) -> (serde_json::Value, serde_json::Value) {
    let out = collector.pikett(&["sla", "report", "--customer", "acme", "--month", month, "--format", "json"], ca);
    assert!(out.status.success(), "sla report failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let row = lines.iter().find(|r| r["host"] == "app-01").cloned().expect("a row for app-01");
    let credit = lines.iter().find(|r| r.get("credit").is_some()).cloned().expect("a credit line");
    (row, credit)
}

#[test]
fn an_outage_shows_the_credit_owed_in_the_sla_and_incident_reports() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, CONFIG);
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "app-01", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    away_from_the_month_end(Duration::from_secs(180));
    let month = this_month();

    // Before any outage: 100 %, at or above every tier, nothing owed.
    let out = wait_for(Duration::from_secs(20), || {
        let out =
            collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month, "--format", "json"], &ca);
        json_lines(&out.stdout).iter().any(|r| r["host"] == "app-01").then_some(out)
    })
    .unwrap_or_else(|| panic!("app-01 never showed in the report; agent log:\n{}", agent.log_text()));
    let lines = json_lines(&out.stdout);
    let credit = lines.iter().find(|r| r.get("credit").is_some()).expect("a credit line");
    assert_eq!(credit["customer"], "acme");
    assert_eq!(credit["credit"]["amount"], "0.00", "{credit}");
    assert_eq!(credit["credit"]["explanation"], "app-01 all: 100 % ≥ 100 % (the highest tier): no credit");

    check.set(2);
    wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; agent log:\n{}", agent.log_text()));
    std::thread::sleep(Duration::from_secs(3));
    check.set(0);
    let resolved =
        wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "resolved"))
            .expect("the fault did not resolve");
    let fault_id = resolved["id"].as_u64().unwrap();
    // The outage's month: the fault's opening (the same as `month`, unless a slow run
    // crossed a month end after all).
    let opened = jiff::Timestamp::from_millisecond(resolved["opened_unix_ms"].as_i64().unwrap()).unwrap();
    let month = month_of(opened);
    let month_to_date = this_month() == month;

    let (row, credit) = report(&collector, &ca, &month);
    let (window, counted) = (row["window_seconds"].as_u64().unwrap(), row["counted_seconds"].as_u64().unwrap());
    assert!(counted >= 2, "{row}");
    // An outage of a few seconds: below 100 %, far above 99.99 % → the 10 % tier.
    assert!(counted * 10_000 < window, "the outage reached the 25 % tier: {row}");
    let c = &credit["credit"];
    assert_eq!(credit["month"], month.as_str());
    assert_eq!((c["host"].as_str(), c["window"].as_str()), (Some("app-01"), Some("all")), "{c}");
    assert_eq!((c["window_seconds"].as_u64(), c["counted_seconds"].as_u64()), (Some(window), Some(counted)));
    assert_eq!((c["below"].as_str(), c["percent"].as_str()), (Some("100"), Some("10")), "{c}");
    assert_eq!((c["monthly_fee"].as_str(), c["currency"].as_str()), (Some("1200.00"), Some("EUR")));
    assert_eq!(c["amount"], "120.00", "{c}");
    assert_eq!(c["month_to_date"], month_to_date);
    let explanation = c["explanation"].as_str().unwrap();
    assert!(explanation.starts_with("app-01 all: 99.99"), "{explanation}");
    assert!(explanation.ends_with(" % < 100 % → 10 % of 1,200.00 EUR = 120.00 EUR"), "{explanation}");

    let table = stdout(&collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month], &ca));
    let to_date = if month_to_date { " (month to date)" } else { "" };
    assert!(table.contains(&format!("{month}{to_date}: owed 120.00 EUR — {explanation}")), "{table}");

    // The post-incident report: the month's credit so far, with the same arithmetic.
    let incident = json_lines(&collector.pikett(&["incidents", "--all", "--output", "json"], &ca).stdout)
        .into_iter()
        .find(|i| i["fault_ids"].as_array().is_some_and(|f| f.iter().any(|id| id.as_u64() == Some(fault_id))))
        .expect("an incident for the fault");
    let id = incident["id"].as_u64().unwrap().to_string();
    let md = stdout(&collector.pikett(&["incident", "report", &id], &ca));
    assert!(md.contains("## Service credit"), "{md}");
    assert!(md.contains(&format!("- {month}{to_date}: credit owed 120.00 EUR — {explanation}\n")), "{md}");
    assert_eq!(md.contains("Month to date:"), month_to_date, "{md}");
    let json = json_lines(&collector.pikett(&["incident", "report", &id, "--output", "json"], &ca).stdout);
    assert_eq!(json[0]["credits"][0]["amount"], "120.00", "{}", json[0]);

    // Force majeure excuses the outage: nothing counts, nothing is owed.
    let out = collector.pikett(&["sla", "classify", "--fault", &fault_id.to_string(), "--cause", "force-majeure"], &ca);
    assert!(out.status.success(), "classify failed: {}", String::from_utf8_lossy(&out.stderr));
    let (row, credit) = report(&collector, &ca, &month);
    assert_eq!(row["counted_seconds"], 0, "{row}");
    assert_eq!(credit["credit"]["amount"], "0.00", "{credit}");
    assert_eq!(credit["credit"]["below"], serde_json::Value::Null, "{credit}");
}

/// The incident report's credit comes from the same input as the SLA report, with the same
/// refusal: a month that began before the fault history kept (`[retention] faults`) is not
/// computed (it would come out too good), in either report.
#[test]
fn the_incident_report_refuses_a_credit_the_sla_report_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, &format!("{CONFIG}\n[retention]\nfaults = \"10m\"\n"));
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "app-02", &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    away_from_the_month_end(Duration::from_secs(180));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-02", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; agent log:\n{}", agent.log_text()));
    let fault_id = fault["id"].as_u64().unwrap();
    let month = this_month();
    // In the first 10 minutes of a month the month is within the history kept.
    let now = jiff::Timestamp::now();
    let month_start = now.to_zoned(jiff::tz::TimeZone::UTC).first_of_month().unwrap().start_of_day().unwrap();
    let refused = now.duration_since(month_start.timestamp()) > jiff::SignedDuration::from_mins(10);

    let out = collector.pikett(&["sla", "report", "--customer", "acme", "--month", &month, "--format", "json"], &ca);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(!out.status.success(), refused, "sla report: {err}");
    let incident = json_lines(&collector.pikett(&["incidents", "--all", "--output", "json"], &ca).stdout)
        .into_iter()
        .find(|i| i["fault_ids"].as_array().is_some_and(|f| f.iter().any(|id| id.as_u64() == Some(fault_id))))
        .expect("an incident for the fault");
    let id = incident["id"].as_u64().unwrap().to_string();
    let out = collector.pikett(&["incident", "report", &id], &ca);
    assert!(out.status.success(), "incident report: {}", String::from_utf8_lossy(&out.stderr));
    let md = stdout(&out);
    assert!(md.contains("## Service credit"), "{md}");
    if refused {
        assert!(err.contains("older than the fault history kept"), "{err}");
        let why = format!("Not computed: {month} is older than the fault history kept ([retention] faults = 10m");
        assert!(md.contains(&why), "{md}");
        assert!(!md.contains("credit owed"), "{md}");
        let json = json_lines(&collector.pikett(&["incident", "report", &id, "--output", "json"], &ca).stdout);
        assert_eq!(json[0]["credits"].as_array().map(Vec::len), Some(0), "{}", json[0]);
    } else {
        assert!(md.contains(&format!("- {month} (month to date): credit owed 120.00 EUR")), "{md}");
    }
}

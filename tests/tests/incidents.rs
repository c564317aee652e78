//! Incidents and emergencies end to end: two hosts of one customer go CRITICAL →
//! one customer incident; `pikett incident escalate` pages primary, secondary and management
//! at once with `[Notfall]`; a status update with an ETA reaches the customer's contact; close
//! needs a root cause and recommendations; the report has the timeline, response times vs the
//! contract's target and outage minutes. A local HTTP receiver stands in for the SMS gateway.

use std::time::Duration;

use pikett_tests::*;

const PRIMARY: &str = "+4915100000001";
const SECONDARY: &str = "+4915100000002";
const MANAGEMENT: &str = "+4915100000003";
const CUSTOMER: &str = "+4915100000009";

fn collector_extra(sms_gateway: &str) -> String {
    format!(
        r#"
[people.alice]
sms = "{PRIMARY}"
rules = [ {{ channel = "sms" }} ]

[people.bob]
sms = "{SECONDARY}"
rules = [ {{ channel = "sms" }} ]

[people.carol]
sms = "{MANAGEMENT}"
rules = [ {{ channel = "sms" }} ]

[[rotations]]
role = "primary"
members = ["alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[[rotations]]
role = "secondary"
members = ["bob"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[[rotations]]
role = "management"
members = ["carol"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[escalation]
ack_timeout = "1h"
warning_channel = "sms"

[channels.sms]
gateways = ["{sms_gateway}"]

[customers.acme]
sla = "standard"
contacts = [ {{ sms = "{CUSTOMER}" }} ]

[sla.standard]
timezone = "Europe/Berlin"
windows = [ {{ name = "all", from = "00:00", to = "24:00", days = "mon-sun", target = "99%" }} ]
response_target = "60m"
checks = ["command/ctl"]

[incidents]
customer_window = "5m"
"#
    )
}

/// SMS texts received for `to`.
fn sms_to(gateway: &Receiver, to: &str) -> Vec<String> {
    gateway
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .filter(|v| v["to"] == to)
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn customer_incident_escalates_to_notfall_pages_the_chain_updates_the_customer_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let gateway = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &collector_extra(&gateway.url()));
    let c = collector.start();

    let mut checks = Vec::new();
    let mut agents = Vec::new();
    for host in ["app-01", "app-02"] {
        let sub = dir.path().join(host);
        std::fs::create_dir_all(&sub).unwrap();
        let check = ControlledCheck::new(&sub);
        let cfg = agent_config(dir.path(), &pki, host, &collector.url(), &check.toml());
        agents.push(spawn("pikett-agent", &cfg, &["run"], &dir.path().join(format!("{host}.log"))));
        checks.push(check);
    }
    std::thread::sleep(Duration::from_secs(1));
    for check in &checks {
        check.set(2);
    }
    let mut fault_ids = Vec::new();
    for host in ["app-01", "app-02"] {
        let f = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, host, "command/ctl", "open"))
            .unwrap_or_else(|| panic!("no fault on {host}; collector log:\n{}", c.log_text()));
        fault_ids.push(f["id"].as_u64().unwrap());
    }

    // One customer incident with both hosts and both faults.
    let incident = wait_for(Duration::from_secs(10), || {
        let list = json_lines(&collector.pikett(&["incidents", "--output", "json"], &ca).stdout);
        list.into_iter().find(|i| i["fault_ids"].as_array().is_some_and(|f| f.len() == 2))
    })
    .unwrap_or_else(|| panic!("no incident with both faults; collector log:\n{}", c.log_text()));
    let all = json_lines(&collector.pikett(&["incidents", "--all", "--output", "json"], &ca).stdout);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(incident["customer"], "acme");
    assert_eq!(incident["scope"], "customer");
    assert_eq!(incident["hosts"], serde_json::json!(["app-01", "app-02"]));
    assert_eq!(incident["state"], "open");
    let id = incident["id"].as_u64().unwrap().to_string();
    let table = String::from_utf8_lossy(&collector.pikett(&["incidents"], &ca).stdout).into_owned();
    assert!(table.contains("acme: app-01, app-02"), "{table}");

    // Normal paging: the primary only (ack_timeout is an hour).
    wait_for(Duration::from_secs(10), || (!sms_to(&gateway, PRIMARY).is_empty()).then_some(()))
        .expect("the primary was not paged");
    assert!(sms_to(&gateway, SECONDARY).is_empty());

    // Escalate: the whole chain at once, [Notfall].
    let out = collector.pikett(&["incident", "escalate", &id], &ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let notfall = |to: &str| sms_to(&gateway, to).into_iter().find(|t| t.starts_with("[Notfall]"));
    let texts =
        wait_for(Duration::from_secs(10), || Some([notfall(PRIMARY)?, notfall(SECONDARY)?, notfall(MANAGEMENT)?]))
            .unwrap_or_else(|| panic!("not every role got a [Notfall] SMS: {:?}", gateway.requests()));
    for text in &texts {
        assert!(text.contains("CRITICAL"), "{text}");
        assert!(text.contains("pikett ack"), "{text}");
    }
    let shown = json_lines(&collector.pikett(&["incident", "show", &id, "--output", "json"], &ca).stdout);
    assert_eq!(shown[0]["state"], "emergency");
    assert_eq!(shown[0]["tag"], "[Notfall]");
    assert!(shown[0]["title"].as_str().unwrap().starts_with("[Notfall] acme"), "{}", shown[0]);
    // Escalating twice is refused.
    let again = collector.pikett(&["incident", "escalate", &id], &ca);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already an emergency"), "{}", stderr(&again));

    // A status update with an ETA reaches the customer's contact.
    let out = collector.pikett(
        &["incident", "update", &id, "--text", "Storage controller replaced", "--eta", "2030-01-01T12:00:00Z"],
        &ca,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let update = wait_for(Duration::from_secs(10), || {
        sms_to(&gateway, CUSTOMER).into_iter().find(|t| t.contains("Storage controller replaced"))
    })
    .unwrap_or_else(|| panic!("the customer got no update: {:?}", gateway.requests()));
    assert!(update.starts_with("[Notfall] UPDATE incident"), "{update}");
    assert!(update.contains("ETA 2030-01-01T12:00:00Z"), "{update}");
    let key = gateway
        .requests()
        .into_iter()
        .find(|r| r.body.contains("Storage controller replaced"))
        .and_then(|r| r.headers.get("idempotency-key").cloned())
        .unwrap_or_default();
    assert!(key.starts_with(&format!("incident/{id}/update/1")), "{key}");

    // Let the outage last whole seconds (the report counts whole seconds): on a fast
    // machine everything above happens within one second.
    std::thread::sleep(Duration::from_secs(2));

    // Acknowledge one fault: the report shows its time to acknowledge.
    let out = collector.pikett(&["ack", &fault_ids[0].to_string()], &ca);
    assert!(out.status.success(), "{}", stderr(&out));

    // Closing needs a root cause and recommendations (exit 1, one clear line).
    let out = collector.pikett(&["incident", "close", &id], &ca);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("root cause"), "{}", stderr(&out));
    let out = collector.pikett(&["incident", "close", &id, "--root-cause", "RAID controller failed"], &ca);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("recommendations"), "{}", stderr(&out));
    // A usage error is exit 2.
    assert_eq!(collector.pikett(&["incident", "close"], &ca).status.code(), Some(2));
    let out = collector.pikett(
        &[
            "incident",
            "close",
            &id,
            "--root-cause",
            "RAID controller failed",
            "--recommendations",
            "Keep a spare controller on site",
            "--output",
            "json",
        ],
        &ca,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let closed = json_lines(&out.stdout);
    assert_eq!(closed[0]["state"], "closed");
    assert_eq!(closed[0]["root_cause"], "RAID controller failed");
    assert_eq!(
        collector.pikett(&["incident", "close", &id, "--root-cause", "x", "--recommendations", "y"], &ca).status.code(),
        Some(1)
    );

    // The post-incident report.
    let out = collector.pikett(&["incident", "report", &id], &ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let md = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        &format!("# Incident {id}: [Notfall] acme: app-01, app-02"),
        "## Timeline",
        "escalated to an emergency [Notfall]",
        "status update 1: Storage controller replaced",
        "opened",
        "acknowledged",
        "## Response times",
        "Target (contract `standard`, `response_target`): 1h",
        "Time to acknowledge",
        "## Outage",
        "Outage minutes",
        "## SLA impact",
        "| all | 99.000% |",
        "RAID controller failed",
        "Keep a spare controller on site",
        "app-01",
        "app-02",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    // The fault timelines are merged in: the paging steps are there.
    assert!(md.contains(&format!("fault {} (app-01)", fault_ids[0])), "{md}");
    assert!(md.contains("1 of 2 fault(s) acknowledged within the target"), "{md}");
}

//! The grouping and the staff actions, with a fake clock.

use std::collections::HashSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::faults::Severity;

const WINDOW: Duration = Duration::from_secs(300);

fn t0() -> Timestamp {
    "2026-11-24T02:00:00Z".parse().unwrap()
}

fn at(mins: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(mins)
}

fn fault(id: u64, host: &str, customer: &str, mins: i64) -> FaultRef {
    FaultRef {
        id,
        host: host.into(),
        customer: customer.into(),
        check: "command/ctl".into(),
        severity: Severity::Critical,
        opened_at: at(mins),
        failing_since: at(mins),
        summary: "CRITICAL - broken".into(),
    }
}

#[test]
fn faults_of_one_host_form_one_incident() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    // Much later, same host: still the same (open) incident.
    let b = s.fault_failing(&fault(2, "web-1", "acme", 30), WINDOW, at(30)).unwrap();
    assert_eq!(a, b);
    let inc = s.get(a).unwrap();
    assert_eq!(inc.fault_ids, vec![1, 2]);
    assert_eq!(inc.hosts, vec!["web-1"]);
    assert_eq!(inc.scope(), "host");
    assert_eq!(inc.title(), "web-1 (acme)");
}

#[test]
fn a_full_incident_takes_no_more_faults_and_the_next_one_starts_a_new_incident() {
    let mut s = Incidents::default();
    let grouping = Grouping { window: WINDOW, max_faults: 3 };
    let first: Vec<u64> = (1..=3)
        .map(|id| s.fault_failing(&fault(id, &format!("web-{}", id % 2), "acme", id as i64), grouping, at(0)).unwrap())
        .collect();
    assert!(first.iter().all(|&i| i == first[0]), "{first:?}");
    // Same host, same customer, inside the window: a new incident all the same.
    let next = s.fault_failing(&fault(4, "web-1", "acme", 4), grouping, at(4)).unwrap();
    assert_ne!(next, first[0]);
    assert_eq!(s.get(first[0]).unwrap().fault_ids, vec![1, 2, 3]);
    // A member stays a member.
    assert_eq!(place(s.incidents.values(), &fault(2, "web-0", "acme", 2), grouping), Placement::Member(first[0]));
    // The new incident goes on taking the customer's faults.
    assert_eq!(s.fault_failing(&fault(5, "web-2", "acme", 5), grouping, at(5)), Some(next));
}

#[test]
fn hosts_of_one_customer_failing_within_the_window_form_one_customer_incident() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    let b = s.fault_failing(&fault(2, "web-2", "acme", 4), WINDOW, at(4)).unwrap();
    // The window counts from the latest fault: 4 + 5 minutes.
    let c = s.fault_failing(&fault(3, "db-1", "acme", 9), WINDOW, at(9)).unwrap();
    assert_eq!((a, b), (a, c));
    let inc = s.get(a).unwrap();
    assert_eq!(inc.hosts, vec!["db-1", "web-1", "web-2"]);
    assert_eq!(inc.scope(), "customer");
    assert_eq!(inc.title(), "acme: db-1, web-1, web-2");
    assert_eq!(inc.opened_at, at(0));
    assert_eq!(inc.last_fault_at, at(9));
}

#[test]
fn outside_the_window_or_another_customer_is_another_incident() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    let late = s.fault_failing(&fault(2, "web-2", "acme", 6), WINDOW, at(6)).unwrap();
    let other = s.fault_failing(&fault(3, "shop-1", "globex", 1), WINDOW, at(6)).unwrap();
    let nobody = s.fault_failing(&fault(4, "lab-1", "", 1), WINDOW, at(6)).unwrap();
    let nobody2 = s.fault_failing(&fault(5, "lab-2", "", 1), WINDOW, at(6)).unwrap();
    let ids: HashSet<u64> = [a, late, other, nobody, nobody2].into_iter().collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    // A configurable window: 10 minutes would have grouped web-2.
    assert_eq!(
        place(s.incidents.values().filter(|i| i.id == a), &fault(9, "web-9", "acme", 6), Duration::from_secs(600)),
        Placement::Join(a)
    );
}

#[test]
fn warnings_make_no_incidents_and_a_member_stays_put() {
    let mut s = Incidents::default();
    let mut w = fault(1, "web-1", "acme", 0);
    w.severity = Severity::Warning;
    assert_eq!(s.fault_failing(&w, WINDOW, at(0)), None);
    assert!(s.incidents.is_empty());
    let a = s.fault_failing(&fault(2, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    assert_eq!(place(s.incidents.values(), &fault(2, "web-1", "acme", 0), WINDOW), Placement::Member(a));
    assert_eq!(s.fault_failing(&fault(2, "web-1", "acme", 0), WINDOW, at(1)), Some(a));
    assert_eq!(s.get(a).unwrap().fault_ids, vec![2]);
}

#[test]
fn an_incident_closes_itself_when_every_fault_resolved_unless_escalated() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.fault_failing(&fault(2, "web-2", "acme", 1), WINDOW, at(1));
    let resolved: HashSet<u64> = [1].into();
    s.fault_resolved(1, "fault 1 resolved", at(10), |id| resolved.contains(&id));
    assert_eq!(s.get(a).unwrap().state, IncidentState::Open);
    let resolved: HashSet<u64> = [1, 2].into();
    s.fault_resolved(2, "fault 2 resolved", at(12), |id| resolved.contains(&id));
    let inc = s.get(a).unwrap();
    assert_eq!((inc.state, inc.closed_at, inc.closed_by.clone()), (IncidentState::Closed, Some(at(12)), None));
    // A new fault of that host now starts a new incident.
    let b = s.fault_failing(&fault(3, "web-1", "acme", 13), WINDOW, at(13)).unwrap();
    assert_ne!(a, b);

    // An emergency waits for staff.
    s.escalate(b, "eve@local", at(14)).unwrap();
    s.fault_resolved(3, "fault 3 resolved", at(20), |_| true);
    assert_eq!(s.get(b).unwrap().state, IncidentState::Emergency);
}

#[test]
fn escalate_tags_notfall_once_and_close_needs_root_cause_and_recommendations() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    let inc = s.escalate(a, "eve@local", at(3)).unwrap();
    assert_eq!(inc.state, IncidentState::Emergency);
    assert_eq!(inc.tag(), Some("[Notfall]"));
    assert!(inc.title().starts_with("[Notfall] web-1"));
    assert!(matches!(s.escalate(a, "bob@local", at(4)), Err(IncidentError::AlreadyEmergency(..))));

    let u = s.update(a, "  disk replaced, rebuilding  ", Some(at(60)), "eve@local", at(5)).unwrap();
    assert_eq!((u.number, u.text.as_str(), u.eta), (1, "disk replaced, rebuilding", Some(at(60))));
    assert_eq!(s.update(a, " ", None, "eve@local", at(5)), Err(IncidentError::EmptyText));
    assert_eq!(s.update(a, "next", None, "eve@local", at(6)).unwrap().number, 2);
    s.set_notified(a, 1, 2, at(5));
    assert_eq!(s.get(a).unwrap().updates[0].notified, 2);

    let e = s.close(a, "", "more disks", "eve@local", at(70)).unwrap_err();
    assert!(e.to_string().contains("root cause"), "{e}");
    let e = s.close(a, "disk died", "  ", "eve@local", at(70)).unwrap_err();
    assert!(e.to_string().contains("recommendations"), "{e}");
    let inc = s.close(a, "disk died", "monitor SMART", "eve@local", at(70)).unwrap();
    assert_eq!(inc.state, IncidentState::Closed);
    assert_eq!(inc.tag(), Some("[Notfall]"), "the report keeps the tag");
    assert_eq!(s.close(a, "x", "y", "eve@local", at(71)).unwrap_err(), IncidentError::Closed(a));
    assert_eq!(s.update(a, "x", None, "eve@local", at(71)).unwrap_err(), IncidentError::Closed(a));
    assert_eq!(s.escalate(99, "eve@local", at(71)).unwrap_err(), IncidentError::NoSuchIncident(99));
}

#[test]
fn reconcile_groups_lost_faults_and_closes_finished_incidents() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    // Fault 1 resolved and fault 2 opened while the collector was down.
    let changed = s.reconcile(&[fault(2, "web-2", "acme", 30)], WINDOW, at(31), |id| id == 1);
    assert_eq!(s.get(a).unwrap().state, IncidentState::Closed);
    assert_eq!(changed.len(), 2);
    let b = *changed.iter().find(|id| **id != a).unwrap();
    assert_eq!(s.get(b).unwrap().fault_ids, vec![2]);
    // Idempotent.
    assert!(s.reconcile(&[fault(2, "web-2", "acme", 30)], WINDOW, at(32), |id| id == 1).is_empty());
}

#[test]
fn serde_round_trip() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.escalate(a, "eve@local", at(1)).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Incidents>(&json).unwrap(), s);
}

fn engine_fault(id: u64, host: &str, opened: i64, acked: Option<i64>, resolved: Option<i64>) -> crate::faults::Fault {
    use crate::faults::{EventKind, FaultState, TimelineEntry};
    crate::faults::Fault {
        id,
        host: host.into(),
        customer: "acme".into(),
        check: "command/ctl".into(),
        severity: Severity::Critical,
        state: if resolved.is_some() { FaultState::Resolved } else { FaultState::Open },
        opened_at: at(opened),
        acked_at: acked.map(at),
        acked_by: acked.map(|_| "eve@local".into()),
        resolved_at: resolved.map(at),
        resolved_by: None,
        last_summary: "CRITICAL - broken".into(),
        results: 2,
        flapping: false,
        suppressed: None,
        paged: true,
        timeline: vec![TimelineEntry { at: at(opened), kind: EventKind::Opened, who: None, text: "opened".into() }],
    }
}

#[test]
fn report_merges_timelines_and_shows_response_times_outage_and_sla_impact() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.fault_failing(&fault(2, "web-1", "acme", 5), WINDOW, at(5));
    s.fault_failing(&fault(3, "web-2", "acme", 2), WINDOW, at(2));
    s.escalate(a, "eve@local", at(10)).unwrap();
    s.close(a, "power supply", "second PSU", "eve@local", at(120)).unwrap();
    let inc = s.get(a).unwrap().clone();
    // web-1: 0..30 and 5..40 overlap → 40 min; web-2: 2..92 → 90 min (acked after 75 min: late).
    let faults = [
        engine_fault(1, "web-1", 0, Some(3), Some(30)),
        engine_fault(2, "web-1", 5, None, Some(40)),
        engine_fault(3, "web-2", 2, Some(77), Some(92)),
    ];
    let contract = crate::sla::Contract::from_toml(
        r#"timezone = "Europe/Berlin"
windows = [ { name = "core", from = "07:00", to = "18:00", target = "98%" },
            { name = "off", from = "18:00", to = "07:00", target = "90%" } ]
response_target = "60m"
checks = ["command/ctl"]
"#,
        "test",
    )
    .unwrap();
    let md = report::render(&report::ReportInput {
        incident: &inc,
        faults: &faults,
        contract: Some(("standard", &contract)),
        maintenance: &[],
        now: at(200),
    });
    assert!(md.starts_with("# Incident 1: [Notfall] acme: web-1, web-2\n"), "{md}");
    // Timeline: the incident's and the faults' entries, in time order.
    let opened_web2 = md.find("| fault 3 (web-2) |").unwrap();
    let joined = md.find("fault 2 critical command/ctl on web-1: CRITICAL - broken joined").unwrap();
    let escalated = md.find("escalated to an emergency [Notfall]").unwrap();
    assert!(opened_web2 < joined && joined < escalated, "{md}");
    assert!(md.contains("| 1 | 2026-11-24T02:00:00Z | 2026-11-24T02:03:00Z | 3m | yes |"), "{md}");
    assert!(md.contains("| 3 | 2026-11-24T02:02:00Z | 2026-11-24T03:17:00Z | 1h 15m | **no** |"), "{md}");
    assert!(md.contains("| 2 | 2026-11-24T02:05:00Z | - | not acknowledged"), "{md}");
    assert!(
        md.contains("1 of 3 fault(s) acknowledged within the target; slowest: 1h 15m (fault 3); 1 not acknowledged.")
    );
    assert!(md.contains("| web-1 | 2026-11-24T02:00:00Z – 2026-11-24T02:40:00Z | 40.0 |"), "{md}");
    assert!(md.contains("| web-2 | 2026-11-24T02:02:00Z – 2026-11-24T03:32:00Z | 90.0 |"), "{md}");
    assert!(md.contains("Outage minutes in total: 130.0"), "{md}");
    // 02:00-03:32 UTC is 03:00-04:32 in Berlin: all in the "off" window.
    assert!(md.contains("| core | 98.000% | 0.0 | 0.0 | 0.0 |"), "{md}");
    assert!(md.contains("| off | 90.000% | 130.0 | 130.0 | 0.0 |"), "{md}");
    assert!(md.contains("## Root cause\n\npower supply\n"), "{md}");
    assert!(md.contains("## Recommendations\n\nsecond PSU\n"), "{md}");
}

fn entry(mins: i64, kind: crate::faults::EventKind, who: Option<&str>, text: &str) -> crate::faults::TimelineEntry {
    crate::faults::TimelineEntry { at: at(mins), kind, who: who.map(String::from), text: text.into() }
}

fn render_plain(inc: &Incident, faults: &[crate::faults::Fault], now: i64) -> String {
    report::render(&report::ReportInput { incident: inc, faults, contract: None, maintenance: &[], now: at(now) })
}

/// The rows of the report's timeline table, in order.
fn timeline_rows(md: &str) -> Vec<&str> {
    let section = md.split("## Timeline").nth(1).unwrap().split("## Response times").next().unwrap();
    section.lines().filter(|l| l.starts_with("| 2")).collect()
}

#[test]
fn closing_an_incident_that_closed_by_itself_records_the_root_cause_for_the_report() {
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.fault_resolved(1, "fault 1 resolved (check OK again)", at(10), |_| true);
    assert_eq!(s.get(a).unwrap().state, IncidentState::Closed);

    // Both are still required.
    assert!(matches!(s.close(a, " ", "more disks", "eve@local", at(20)), Err(IncidentError::Missing(..))));
    assert!(matches!(s.close(a, "disk died", "", "eve@local", at(20)), Err(IncidentError::Missing(..))));
    let inc = s.close(a, " disk died ", "monitor SMART", "eve@local", at(20)).unwrap().clone();
    // When and how it closed stay as they were.
    assert_eq!((inc.state, inc.closed_at, inc.closed_by.clone()), (IncidentState::Closed, Some(at(10)), None));
    assert_eq!(inc.root_cause.as_deref(), Some("disk died"));
    assert_eq!(inc.recommendations.as_deref(), Some("monitor SMART"));
    let last = inc.timeline.last().unwrap();
    assert_eq!((last.at, last.who.as_deref()), (at(20), Some("eve@local")));
    assert!(last.text.contains("root cause recorded after closing: disk died"), "{}", last.text);

    let md = render_plain(&inc, &[engine_fault(1, "web-1", 0, None, Some(10))], 30);
    assert!(md.contains("## Root cause\n\ndisk died\n"), "{md}");
    assert!(md.contains("## Recommendations\n\nmonitor SMART\n"), "{md}");
    assert!(md.contains("- **Closed:** 2026-11-24T02:10:00Z by pikett (every fault resolved)"), "{md}");

    // Once recorded, it is closed like one closed by staff.
    assert_eq!(s.close(a, "other", "other", "bob@local", at(30)).unwrap_err(), IncidentError::Closed(a));
    assert_eq!(s.get(a).unwrap().root_cause.as_deref(), Some("disk died"));
}

#[test]
fn report_time_to_acknowledge_counts_to_the_first_acknowledgement_not_a_later_one() {
    use crate::faults::EventKind::*;
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.fault_failing(&fault(2, "web-2", "acme", 1), WINDOW, at(1));
    // Fault 1: acknowledged at 3, resolved by hand at 4, reopened at 6 (the incident is still
    // open: fault 2 fails), acknowledged again at 50 — the fault's `acked_at` is now 50.
    let mut f1 = engine_fault(1, "web-1", 0, Some(50), None);
    f1.timeline.extend([
        entry(3, Acknowledged, Some("eve@local"), "acknowledged"),
        entry(4, Resolved, Some("eve@local"), "resolved"),
        entry(6, Reopened, None, "still failing after manual resolve"),
        entry(50, Acknowledged, Some("bob@local"), "acknowledged"),
    ]);
    // Fault 2: acknowledged once, at 40.
    let mut f2 = engine_fault(2, "web-2", 1, Some(40), None);
    f2.timeline.push(entry(40, Acknowledged, Some("bob@local"), "acknowledged"));
    assert_eq!(s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(6)), Some(a), "a member stays");
    let inc = s.get(a).unwrap().clone();
    assert_eq!(inc.opened_at, at(0));

    let md = render_plain(&inc, &[f1, f2], 60);
    assert!(md.contains("Incident: first acknowledgement 3m after opening (within the target)."), "{md}");
    assert!(md.contains("| 1 | 2026-11-24T02:00:00Z | 2026-11-24T02:03:00Z | 3m | yes |"), "{md}");
    assert!(md.contains("| 2 | 2026-11-24T02:01:00Z | 2026-11-24T02:40:00Z | 39m | yes |"), "{md}");
    assert!(md.contains("2 of 2 fault(s) acknowledged within the target; slowest: 39m (fault 2)."), "{md}");
}

#[test]
fn a_fault_reopened_after_its_incident_closed_opens_a_new_incident_at_its_reopening() {
    use crate::faults::EventKind::*;
    let mut s = Incidents::default();
    let a = s.fault_failing(&fault(1, "web-1", "acme", 0), WINDOW, at(0)).unwrap();
    s.fault_resolved(1, "fault 1 resolved by eve@local", at(5), |_| true);
    assert!(s.get(a).unwrap().is_closed());

    // The engine's fault as it is after the reopening: opened at 0, reopened at 10.
    let mut f1 = engine_fault(1, "web-1", 0, Some(15), None);
    f1.timeline.extend([
        entry(2, Acknowledged, Some("eve@local"), "acknowledged"),
        entry(5, Resolved, Some("eve@local"), "resolved"),
        entry(10, Reopened, None, "still failing after manual resolve"),
        entry(15, Acknowledged, Some("bob@local"), "acknowledged"),
    ]);
    let r = fault_ref(&f1);
    assert_eq!((r.opened_at, r.failing_since), (at(0), at(10)));
    let b = s.fault_failing(&r, WINDOW, at(10)).unwrap();
    assert_ne!(a, b);
    let inc = s.get(b).unwrap().clone();
    // The header's opening and the timeline's first entry: the reopening.
    assert_eq!(inc.opened_at, at(10));
    assert_eq!(inc.timeline[0].at, at(10));
    assert!(inc.timeline[0].text.starts_with("opened with fault 1"), "{:?}", inc.timeline);

    let md = render_plain(&inc, std::slice::from_ref(&f1), 20);
    assert!(md.contains("- **Opened:** 2026-11-24T02:10:00Z\n"), "{md}");
    let rows = timeline_rows(&md);
    assert!(rows[0].starts_with("| 2026-11-24T02:10:00Z | incident |"), "{rows:#?}");
    assert!(rows.iter().all(|r| r.as_bytes() >= b"| 2026-11-24T02:10:00Z".as_slice()), "{rows:#?}");
    assert!(md.contains("Left out: timeline entries from before this incident (3 of fault 1;"), "{md}");
    // Its response time counts from the reopening to the acknowledgement after it.
    assert!(md.contains("| 1 | 2026-11-24T02:10:00Z | 2026-11-24T02:15:00Z | 5m | yes |"), "{md}");
    assert!(md.contains("Incident: first acknowledgement 5m after opening"), "{md}");
}

#[test]
fn an_incident_caught_up_after_a_restart_opens_when_its_fault_did() {
    let mut s = Incidents::default();
    let changed = s.reconcile(&[fault(1, "web-1", "acme", 30)], WINDOW, at(45), |_| false);
    let inc = s.get(changed[0]).unwrap();
    assert_eq!(inc.opened_at, at(30));
    assert_eq!(inc.timeline[0].at, at(30), "{:?}", inc.timeline);
}

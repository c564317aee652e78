//! Unit tests of the fault engine with a fake clock (timestamps built by hand).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::*;

const T0: i64 = 1_800_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig::new(
        FaultsConfig::default(),
        Vec::new(),
        HostDeps(BTreeMap::from([("web-1".to_string(), vec!["gw-1".to_string()])])),
    )
    .unwrap()
}

fn engine() -> Engine {
    Engine::new(config()).unwrap()
}

fn input(host: &str, check: &str, state: CheckState, t: i64) -> CheckInput {
    CheckInput {
        host: host.into(),
        customer: "acme".into(),
        check: check.into(),
        state,
        summary: format!("{state:?} at {t}"),
        time: ts(t),
    }
}

/// A result observed and received at `t`.
fn result(e: &mut Engine, host: &str, check: &str, state: CheckState, t: i64) -> Vec<Transition> {
    e.check_result(input(host, check, state, t), ts(t))
}

fn kinds(out: &[Transition]) -> Vec<(EventKind, bool)> {
    out.iter().map(|t| (t.kind, t.page)).collect()
}

fn timeout_90s(_: &str) -> Duration {
    Duration::from_secs(90)
}

use CheckState::{Critical, Ok as OK, Unknown, Warning};
use EventKind::*;

#[test]
fn fault_opens_after_two_consecutive_non_ok_results() {
    let mut e = engine();
    assert!(result(&mut e, "db-1", "service/sshd", Critical, 0).is_empty());
    let out = result(&mut e, "db-1", "service/sshd", Critical, 60);
    assert_eq!(kinds(&out), [(Opened, true)]);
    let f = e.fault(out[0].fault_id).unwrap();
    assert_eq!(f.state, FaultState::Open);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.results, 2);
    assert_eq!(f.opened_at, ts(60));
    assert_eq!(f.customer, "acme");
}

#[test]
fn a_single_non_ok_blip_opens_nothing() {
    let mut e = engine();
    result(&mut e, "db-1", "c", Critical, 0);
    assert!(result(&mut e, "db-1", "c", OK, 60).is_empty());
    assert!(result(&mut e, "db-1", "c", Warning, 120).is_empty());
    assert!(e.faults(&FaultFilter { all: true, ..Default::default() }).is_empty());
}

#[test]
fn ok_result_resolves_the_open_fault_with_an_all_clear() {
    let mut e = engine();
    result(&mut e, "db-1", "c", Warning, 0);
    let id = result(&mut e, "db-1", "c", Warning, 60)[0].fault_id;
    let out = result(&mut e, "db-1", "c", OK, 120);
    assert_eq!(kinds(&out), [(Resolved, true)]);
    let f = e.fault(id).unwrap();
    assert_eq!(f.state, FaultState::Resolved);
    assert_eq!(f.resolved_at, Some(ts(120)));
    assert_eq!(f.resolved_by, None);
    assert!(e.open_fault("db-1", "c").is_none());
}

#[test]
fn severity_follows_the_worst_state_and_never_drops_while_open() {
    let mut e = engine();
    result(&mut e, "h", "c", Warning, 0);
    let id = result(&mut e, "h", "c", Warning, 1)[0].fault_id;
    assert_eq!(e.fault(id).unwrap().severity, Severity::Warning);
    let out = result(&mut e, "h", "c", Critical, 2);
    assert_eq!(kinds(&out), [(SeverityRaised, true)]);
    assert!(result(&mut e, "h", "c", Warning, 3).is_empty());
    let f = e.fault(id).unwrap();
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.results, 4);
    assert_eq!(f.last_summary, "Warning at 3");
}

#[test]
fn a_fault_opens_with_the_worst_state_of_its_streak() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Warning, 1)[0].fault_id;
    assert_eq!(e.fault(id).unwrap().severity, Severity::Critical);
}

#[test]
fn unknown_maps_to_the_configured_severity() {
    let mut e = engine();
    result(&mut e, "h", "c", Unknown, 0);
    let id = result(&mut e, "h", "c", Unknown, 1)[0].fault_id;
    assert_eq!(e.fault(id).unwrap().severity, Severity::Warning);

    let mut cfg = config();
    cfg.faults.unknown_severity = Severity::Critical;
    let mut e = Engine::new(cfg).unwrap();
    result(&mut e, "h", "c", Unknown, 0);
    let id = result(&mut e, "h", "c", Unknown, 1)[0].fault_id;
    assert_eq!(e.fault(id).unwrap().severity, Severity::Critical);
}

#[test]
fn for_of_three_needs_three_results() {
    let mut cfg = config();
    cfg.faults.for_results = 3;
    let mut e = Engine::new(cfg).unwrap();
    assert!(result(&mut e, "h", "c", Critical, 0).is_empty());
    assert!(result(&mut e, "h", "c", Critical, 1).is_empty());
    assert_eq!(kinds(&result(&mut e, "h", "c", Critical, 2)), [(Opened, true)]);
}

#[test]
fn acknowledge_records_who_and_note_and_refuses_twice() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    let out = e.acknowledge(id, "alice", Some("on it"), ts(5)).unwrap();
    assert_eq!(kinds(&out), [(Acknowledged, false)]);
    let f = e.fault(id).unwrap();
    assert_eq!(f.state, FaultState::Acknowledged);
    assert_eq!(f.acked_at, Some(ts(5)));
    assert_eq!(f.acked_by.as_deref(), Some("alice"));
    let last = f.timeline.last().unwrap();
    assert_eq!((last.who.as_deref(), last.text.as_str()), (Some("alice"), "on it"));
    let err = e.acknowledge(id, "bob", None, ts(6)).unwrap_err();
    assert_eq!(err.to_string(), format!("fault {id} is already acknowledged by alice"));
    assert_eq!(e.acknowledge(999, "bob", None, ts(6)), Err(ActionError::NoSuchFault(999)));
}

#[test]
fn an_acknowledged_fault_still_resolves_on_ok() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    e.acknowledge(id, "alice", None, ts(2)).unwrap();
    assert_eq!(kinds(&result(&mut e, "h", "c", OK, 3)), [(Resolved, true)]);
    assert_eq!(e.acknowledge(id, "a", None, ts(4)), Err(ActionError::AlreadyResolved(id)));
}

#[test]
fn severity_rise_clears_the_acknowledgement_and_pages() {
    let mut e = engine();
    result(&mut e, "h", "c", Warning, 0);
    let id = result(&mut e, "h", "c", Warning, 1)[0].fault_id;
    e.acknowledge(id, "alice", None, ts(2)).unwrap();
    let out = result(&mut e, "h", "c", Critical, 3);
    assert_eq!(kinds(&out), [(SeverityRaised, true)]);
    let f = e.fault(id).unwrap();
    assert_eq!(f.state, FaultState::Open);
    assert_eq!(f.acked_by, None);
}

#[test]
fn manual_resolve_reopens_the_same_fault_if_the_next_result_still_fails() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    e.acknowledge(id, "alice", None, ts(2)).unwrap();
    let out = e.resolve(id, "alice", Some("fixed, I think"), ts(3)).unwrap();
    assert_eq!(kinds(&out), [(Resolved, true)]);
    assert_eq!(e.fault(id).unwrap().resolved_by.as_deref(), Some("alice"));
    let out = result(&mut e, "h", "c", Critical, 4);
    assert_eq!(kinds(&out), [(Reopened, true)]);
    assert_eq!(out[0].fault_id, id);
    let f = e.fault(id).unwrap();
    assert_eq!(f.state, FaultState::Open);
    assert_eq!((f.resolved_at, f.acked_at), (None, None));
    assert_eq!(f.results, 3);
    let kinds_on_timeline: Vec<EventKind> = f.timeline.iter().map(|t| t.kind).collect();
    assert_eq!(kinds_on_timeline, [Opened, Acknowledged, Resolved, Reopened]);
}

#[test]
fn manual_resolve_stays_resolved_when_the_next_result_is_ok() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    e.resolve(id, "bob", None, ts(2)).unwrap();
    assert!(result(&mut e, "h", "c", OK, 3).is_empty());
    // A later failure is a new fault that waits for its `for` again.
    assert!(result(&mut e, "h", "c", Critical, 4).is_empty());
    let out = result(&mut e, "h", "c", Critical, 5);
    assert_eq!(kinds(&out), [(Opened, true)]);
    assert_ne!(out[0].fault_id, id);
    assert_eq!(e.resolve(id, "bob", None, ts(6)), Err(ActionError::AlreadyResolved(id)));
}

#[test]
fn silent_host_gets_a_critical_reachable_fault_that_resolves_when_seen() {
    let mut e = engine();
    e.host_seen("db-1", "acme", ts(0));
    assert!(e.tick(ts(90), timeout_90s).is_empty());
    let out = e.tick(ts(91), timeout_90s);
    assert_eq!(kinds(&out), [(Opened, true)]);
    let f = e.fault(out[0].fault_id).unwrap();
    assert_eq!((f.check.as_str(), f.severity), (HOST_REACHABLE, Severity::Critical));
    assert!(e.tick(ts(200), timeout_90s).is_empty(), "opened once, not per tick");
    let out2 = e.host_seen("db-1", "acme", ts(300));
    assert_eq!(kinds(&out2), [(Resolved, true)]);
    assert_eq!(e.fault(out[0].fault_id).unwrap().resolved_at, Some(ts(300)));
}

#[test]
fn host_down_suppresses_the_hosts_other_faults_but_keeps_recording() {
    let mut e = engine();
    e.host_seen("db-1", "acme", ts(0));
    result(&mut e, "db-1", "disk", Critical, 0);
    let disk = result(&mut e, "db-1", "disk", Critical, 1)[0].fault_id;
    let out = e.tick(ts(100), timeout_90s);
    assert_eq!(kinds(&out), [(Opened, true), (Suppressed, false)]);
    assert_eq!(out[1].fault_id, disk);
    assert_eq!(e.fault(disk).unwrap().suppressed, Some(Suppression::HostDown));
    // A late result for the down host is recorded, not paged.
    result(&mut e, "db-1", "sshd", Critical, 101);
    let out = result(&mut e, "db-1", "sshd", Critical, 102);
    assert_eq!(kinds(&out), [(Opened, false)]);
    let sshd = e.fault(out[0].fault_id).unwrap().clone();
    assert!(sshd.timeline[0].text.contains("not paged: host down"), "{:?}", sshd.timeline);
    // Host back: disk had paged before, sshd never did: only sshd pages now.
    let out = e.host_seen("db-1", "acme", ts(200));
    assert_eq!(kinds(&out), [(Resolved, true), (SuppressionEnded, false), (SuppressionEnded, true)]);
    assert_eq!(out[2].fault_id, sshd.id);
}

#[test]
fn a_parent_going_down_suppresses_the_dependent_hosts_reachable_fault() {
    let mut e = engine();
    e.host_seen("gw-1", "acme", ts(0));
    e.host_seen("web-1", "acme", ts(0));
    let out = e.tick(ts(100), timeout_90s);
    assert_eq!(kinds(&out), [(Opened, true), (Opened, false)]);
    let web = e.open_fault("web-1", HOST_REACHABLE).unwrap().clone();
    assert_eq!(web.suppressed, Some(Suppression::ParentDown { host: "gw-1".into() }));
    assert_eq!(e.is_suppressed("web-1", "service/nginx", ts(100)), Some(Suppression::HostDown));
    // Parent back, child still silent: the child is paged now, for the first time.
    let out = e.host_seen("gw-1", "acme", ts(150));
    assert_eq!(kinds(&out), [(Resolved, true), (SuppressionEnded, true)]);
    assert_eq!(out[1].fault_id, web.id);
}

#[test]
fn a_child_waits_while_its_parent_misses_batches() {
    let mut e = engine();
    e.host_seen("web-1", "acme", ts(0));
    e.host_seen("gw-1", "acme", ts(20));
    // web-1 is overdue at 91; gw-1 has been silent 71 s > 90/3: wait for it.
    assert!(e.tick(ts(91), timeout_90s).is_empty());
    let out = e.tick(ts(111), timeout_90s);
    assert_eq!(kinds(&out), [(Opened, true), (Opened, false)]);
    assert_eq!(e.fault(out[0].fault_id).unwrap().host, "gw-1");
    assert_eq!(e.fault(out[1].fault_id).unwrap().host, "web-1");
}

#[test]
fn a_child_does_not_wait_for_a_healthy_parent() {
    let mut e = engine();
    e.host_seen("web-1", "acme", ts(0));
    e.host_seen("gw-1", "acme", ts(80));
    let out = e.tick(ts(91), timeout_90s);
    assert_eq!(kinds(&out), [(Opened, true)]);
    assert_eq!(e.fault(out[0].fault_id).unwrap().host, "web-1");
}

#[test]
fn manually_resolved_reachable_fault_reopens_while_the_host_stays_silent() {
    let mut e = engine();
    e.host_seen("db-1", "acme", ts(0));
    let id = e.tick(ts(100), timeout_90s)[0].fault_id;
    e.resolve(id, "alice", None, ts(110)).unwrap();
    let out = e.tick(ts(120), timeout_90s);
    assert_eq!(kinds(&out), [(Reopened, true)]);
    assert_eq!(out[0].fault_id, id);
}

#[test]
fn a_forgotten_host_never_raises_reachable_again() {
    let mut e = engine();
    e.host_seen("old-1", "acme", ts(0));
    let id = e.tick(ts(100), timeout_90s)[0].fault_id;
    let out = e.forget_host("old-1", "alice", ts(110));
    assert_eq!(kinds(&out), [(Resolved, true)]);
    assert_eq!(e.fault(id).unwrap().resolved_by.as_deref(), Some("alice"));
    assert!(e.tick(ts(1000), timeout_90s).is_empty());
    assert!(e.hosts().is_empty());
}

#[test]
fn maintenance_suppresses_paging_and_pages_what_is_still_open_when_it_ends() {
    let mut e = engine();
    let (mid, _) = e
        .add_maintenance(
            NewMaintenance {
                host: "db-1".into(),
                customer: "acme".into(),
                start: ts(100),
                end: ts(200),
                reason: "kernel update".into(),
                who: "alice".into(),
            },
            ts(0),
        )
        .unwrap();
    let m = e.maintenances().next().unwrap();
    assert_eq!((m.id, m.announced_at, m.customer.as_str()), (mid, ts(0), "acme"));
    // Before the window: pages.
    result(&mut e, "db-1", "a", Critical, 50);
    assert_eq!(kinds(&result(&mut e, "db-1", "a", Critical, 60)), [(Opened, true)]);
    // Inside: recorded, not paged; the already open fault is marked at the next tick.
    result(&mut e, "db-1", "b", Critical, 110);
    let out = result(&mut e, "db-1", "b", Critical, 120);
    assert_eq!(kinds(&out), [(Opened, false)]);
    let b = out[0].fault_id;
    assert_eq!(e.fault(b).unwrap().suppressed, Some(Suppression::Maintenance { id: mid }));
    let out = e.tick(ts(121), timeout_90s);
    assert_eq!(kinds(&out), [(Suppressed, false)]);
    // A fault that resolves during maintenance sends no all-clear.
    result(&mut e, "db-1", "c", Critical, 130);
    result(&mut e, "db-1", "c", Critical, 131);
    assert_eq!(kinds(&result(&mut e, "db-1", "c", OK, 132)), [(Resolved, false)]);
    // After the window: the never-paged fault still open is paged now, once.
    let out = e.tick(ts(200), timeout_90s);
    assert_eq!(kinds(&out), [(SuppressionEnded, false), (SuppressionEnded, true)]);
    assert_eq!(out[1].fault_id, b);
    assert!(e.tick(ts(201), timeout_90s).is_empty());
}

#[test]
fn maintenance_that_ends_before_it_starts_is_refused() {
    let mut e = engine();
    let err = e
        .add_maintenance(
            NewMaintenance {
                host: "db-1".into(),
                customer: "acme".into(),
                start: ts(100),
                end: ts(100),
                reason: "x".into(),
                who: "a".into(),
            },
            ts(0),
        )
        .unwrap_err();
    assert!(matches!(err, ActionError::InvalidWindow { .. }), "{err}");
}

#[test]
fn a_window_keeps_its_customer_and_one_without_gets_the_customer_its_host_next_reports_for() {
    let mut e = engine();
    let window = |host: &str, customer: &str| NewMaintenance {
        host: host.into(),
        customer: customer.into(),
        start: ts(100),
        end: ts(200),
        reason: "work".into(),
        who: "alice".into(),
    };
    let (known, _) = e.add_maintenance(window("db-1", "acme"), ts(0)).unwrap();
    // Announced (--force) before web-9 ever reported, and before db-2 reported again.
    let (forced, _) = e.add_maintenance(window("web-9", ""), ts(0)).unwrap();
    let (other, _) = e.add_maintenance(window("db-2", ""), ts(0)).unwrap();
    let customer = |e: &Engine, id: u64| e.maintenances().find(|m| m.id == id).map(|m| m.customer.clone());
    e.take_dirty();
    e.host_seen("web-9", "globex", ts(10));
    assert_eq!(customer(&e, forced).as_deref(), Some("globex"));
    assert_eq!(customer(&e, other).as_deref(), Some(""), "another host's window was assigned");
    assert!(e.take_dirty().maintenances.iter().any(|(id, m)| *id == forced && m.is_some()), "not persisted");
    // db-1 re-enrolled for globex: its window stays acme's.
    e.host_seen("db-1", "globex", ts(20));
    assert_eq!(customer(&e, known).as_deref(), Some("acme"));
    // A record written before the field reads with no customer, and gets one after a restart.
    let mut state = EngineState::default();
    let old = r#"{"id":7,"host":"db-2","start":"2026-03-01T00:00:00Z","end":"2026-03-01T01:00:00Z",
        "reason":"old","announced_at":"2026-02-01T00:00:00Z","who":"alice"}"#;
    let m: Maintenance = serde_json::from_str(old).unwrap();
    assert_eq!(m.customer, "");
    state.maintenances.insert(7, m);
    state.next.maintenance = 8;
    let mut e = Engine::restore(config(), state).unwrap();
    e.host_seen("db-2", "acme", ts(30));
    assert_eq!(customer(&e, 7).as_deref(), Some("acme"));
}

#[test]
fn a_silence_on_one_check_suppresses_only_that_check() {
    let mut e = engine();
    let (sid, _) = e
        .add_silence(
            NewSilence {
                host: "db-1".into(),
                check: Some("patches".into()),
                until: ts(7200),
                reason: "patch day".into(),
                who: "bob".into(),
            },
            ts(0),
        )
        .unwrap();
    result(&mut e, "db-1", "patches", Warning, 1);
    let out = result(&mut e, "db-1", "patches", Warning, 2);
    assert_eq!(kinds(&out), [(Opened, false)]);
    assert_eq!(e.fault(out[0].fault_id).unwrap().suppressed, Some(Suppression::Silence { id: sid }));
    result(&mut e, "db-1", "disk", Warning, 1);
    assert_eq!(kinds(&result(&mut e, "db-1", "disk", Warning, 2)), [(Opened, true)]);
    assert_eq!(e.silences().count(), 1);
    let err = e
        .add_silence(
            NewSilence { host: "db-1".into(), check: None, until: ts(5), reason: "x".into(), who: "b".into() },
            ts(10),
        )
        .unwrap_err();
    assert!(matches!(err, ActionError::SilenceEnded { .. }));
}

#[test]
fn removing_a_silence_pages_the_fault_it_held_back() {
    let mut e = engine();
    let (sid, _) = e
        .add_silence(
            NewSilence { host: "db-1".into(), check: None, until: ts(7200), reason: "x".into(), who: "b".into() },
            ts(0),
        )
        .unwrap();
    result(&mut e, "db-1", "c", Critical, 1);
    let id = result(&mut e, "db-1", "c", Critical, 2)[0].fault_id;
    let out = e.remove_silence(sid, ts(3)).unwrap();
    assert_eq!(kinds(&out), [(SuppressionEnded, true)]);
    assert_eq!(out[0].fault_id, id);
    assert_eq!(e.remove_silence(sid, ts(4)), Err(ActionError::NoSuchSilence(sid)));
}

/// Alternates CRITICAL/OK every minute from `from` for `n` results.
fn flap(e: &mut Engine, from: i64, n: i64) -> Vec<Transition> {
    let mut out = Vec::new();
    for i in 0..n {
        let state = if i % 2 == 0 { Critical } else { OK };
        out.extend(result(e, "h", "c", state, from + 60 * i));
    }
    out
}

#[test]
fn a_flapping_check_is_paged_once_and_not_per_flap() {
    let mut e = engine();
    // With `for = 2`, single-result failures never open a fault on their own: the sixth
    // change within the hour marks the check flapping and opens one fault, paged once.
    let out = flap(&mut e, 0, 20);
    assert_eq!(kinds(&out), [(Opened, true), (FlappingStarted, false)]);
    let f = e.fault(out[0].fault_id).unwrap();
    assert!(f.flapping);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.opened_at, ts(5 * 60), "the sixth change, at minute 5");
    assert_eq!(f.state, FaultState::Open, "an OK while flapping does not resolve");
}

#[test]
fn flapping_ends_after_a_quiet_window_and_then_ok_resolves() {
    let mut e = engine();
    let id = flap(&mut e, 0, 20)[0].fault_id; // last result: OK at minute 19
    // Still OK but within an hour of the last change: stays open.
    assert!(result(&mut e, "h", "c", OK, 19 * 60 + 3599).is_empty());
    let out = result(&mut e, "h", "c", OK, 19 * 60 + 3600);
    assert_eq!(kinds(&out), [(FlappingStopped, false), (Resolved, true)]);
    let f = e.fault(id).unwrap();
    assert_eq!(f.state, FaultState::Resolved);
    assert!(!f.flapping);
    assert!(e.state().tracks.is_empty(), "a settled check keeps no record");
}

#[test]
fn flapping_with_for_one_stops_reopening_each_flap() {
    let mut cfg = config();
    cfg.faults.for_results = 1;
    let mut e = Engine::new(cfg).unwrap();
    let out = flap(&mut e, 0, 20);
    // Changes 1-5 open and resolve three faults; the sixth (an OK) marks the third flapping
    // instead of resolving it; later flaps change nothing.
    assert_eq!(
        kinds(&out),
        [(Opened, true), (Resolved, true), (Opened, true), (Resolved, true), (Opened, true), (FlappingStarted, false),]
    );
    assert_eq!(e.faults(&FaultFilter::default()).len(), 1);
}

#[test]
fn a_spool_replayed_late_is_judged_by_observation_time() {
    let mut e = engine();
    let now = ts(3600);
    for t in [0, 60] {
        e.check_result(input("h", "c", Critical, t), now);
    }
    let f = e.open_fault("h", "c").unwrap();
    assert_eq!(f.opened_at, ts(60));
    // A clock ahead of the collector is clamped to `now`.
    let out = e.check_result(input("h", "c", OK, 99_999), now);
    assert_eq!(out[0].at, now);
}

fn temp_rule(for_secs: u64) -> Rule {
    Rule {
        name: "cpu-hot".into(),
        metric: "temp".into(),
        labels: BTreeMap::new(),
        op: CompareOp::Gt,
        threshold: 85.0,
        for_duration: Duration::from_secs(for_secs),
        severity: Severity::Critical,
        summary: None,
    }
}

fn sample(sensor: &str, value: f64, t: i64) -> SampleInput {
    SampleInput {
        host: "h".into(),
        customer: "acme".into(),
        name: "temp".into(),
        labels: BTreeMap::from([("sensor".to_string(), sensor.to_string())]),
        value,
        time: ts(t),
    }
}

#[test]
fn a_rule_fires_only_after_its_condition_held_for_its_duration() {
    let mut cfg = config();
    cfg.rules = vec![temp_rule(300)];
    let mut e = Engine::new(cfg).unwrap();
    assert!(e.sample(&sample("CPU1", 90.0, 0), ts(0)).is_empty());
    assert!(e.sample(&sample("CPU1", 91.0, 299), ts(299)).is_empty());
    let out = e.sample(&sample("CPU1", 92.0, 300), ts(300));
    assert_eq!(kinds(&out), [(Opened, true)]);
    let f = e.fault(out[0].fault_id).unwrap();
    assert_eq!(f.check, r#"rule/cpu-hot{sensor="CPU1"}"#);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.last_summary, r#"temp{sensor="CPU1"} = 92 > 85"#);
    let out = e.sample(&sample("CPU1", 40.0, 360), ts(360));
    assert_eq!(kinds(&out), [(Resolved, true)]);
    assert!(e.state().rule_tracks.is_empty());
}

#[test]
fn a_rule_condition_interrupted_starts_its_clock_again() {
    let mut cfg = config();
    cfg.rules = vec![temp_rule(300)];
    let mut e = Engine::new(cfg).unwrap();
    e.sample(&sample("CPU1", 90.0, 0), ts(0));
    e.sample(&sample("CPU1", 80.0, 200), ts(200));
    assert!(e.sample(&sample("CPU1", 90.0, 300), ts(300)).is_empty());
    assert!(e.sample(&sample("CPU1", 90.0, 599), ts(599)).is_empty());
    assert_eq!(kinds(&e.sample(&sample("CPU1", 90.0, 600), ts(600))), [(Opened, true)]);
}

#[test]
fn each_label_set_of_a_rule_is_its_own_fault() {
    let mut cfg = config();
    cfg.rules = vec![temp_rule(0)];
    let mut e = Engine::new(cfg).unwrap();
    let a = e.sample(&sample("CPU1", 90.0, 0), ts(0));
    let b = e.sample(&sample("CPU2", 90.0, 0), ts(0));
    assert_ne!(a[0].fault_id, b[0].fault_id);
    assert_eq!(e.faults(&FaultFilter::default()).len(), 2);
}

#[test]
fn healthy_samples_leave_no_records() {
    let mut cfg = config();
    cfg.rules = vec![temp_rule(0)];
    let mut e = Engine::new(cfg).unwrap();
    e.take_dirty();
    for t in 0..10 {
        assert!(e.sample(&sample("CPU1", 40.0, t), ts(t)).is_empty());
        assert!(result(&mut e, "h", "ok-check", OK, t).is_empty());
    }
    assert!(e.take_dirty().is_empty());
    assert!(e.state().tracks.is_empty() && e.state().rule_tracks.is_empty());
}

#[test]
fn a_rule_label_matcher_limits_what_it_sees() {
    let mut cfg = config();
    let mut r = temp_rule(0);
    r.labels.insert("sensor".into(), LabelMatcher { op: MatchOp::Ne, value: "Inlet".into() });
    cfg.rules = vec![r];
    let mut e = Engine::new(cfg).unwrap();
    assert!(e.sample(&sample("Inlet", 99.0, 0), ts(0)).is_empty());
    assert_eq!(e.sample(&sample("CPU1", 99.0, 0), ts(0)).len(), 1);
    assert!(e.sample(&sample("CPU2", f64::NAN, 0), ts(0)).is_empty());
}

#[test]
fn counts_cover_every_state_and_severity() {
    let mut e = engine();
    result(&mut e, "h", "a", Critical, 0);
    result(&mut e, "h", "a", Critical, 1);
    result(&mut e, "h", "b", Warning, 0);
    let b = result(&mut e, "h", "b", Warning, 1)[0].fault_id;
    e.acknowledge(b, "x", None, ts(2)).unwrap();
    let c = e.counts();
    assert_eq!(c.len(), 6);
    assert_eq!(c[&(FaultState::Open, Severity::Critical)], 1);
    assert_eq!(c[&(FaultState::Acknowledged, Severity::Warning)], 1);
    assert_eq!(c[&(FaultState::Resolved, Severity::Critical)], 0);
}

#[test]
fn filters_select_by_host_customer_and_resolution() {
    let mut e = engine();
    result(&mut e, "h1", "a", Critical, 0);
    result(&mut e, "h1", "a", Critical, 1);
    result(&mut e, "h2", "a", Critical, 0);
    result(&mut e, "h2", "a", Critical, 1);
    result(&mut e, "h2", "a", OK, 2);
    let f = |all, host: Option<&str>, customer: Option<&str>| {
        e.faults(&FaultFilter { all, host: host.map(Into::into), customer: customer.map(Into::into) }).len()
    };
    assert_eq!(f(false, None, None), 1);
    assert_eq!(f(true, None, None), 2);
    assert_eq!(f(true, Some("h2"), None), 1);
    assert_eq!(f(true, None, Some("other")), 0);
}

#[test]
fn dirty_records_applied_to_a_store_rebuild_the_same_state() {
    let mut e = engine();
    let mut store = EngineState::default();
    e.host_seen("db-1", "acme", ts(0));
    result(&mut e, "db-1", "c", Critical, 0);
    store.apply(e.take_dirty());
    result(&mut e, "db-1", "c", Critical, 1);
    let d = e.take_dirty();
    assert_eq!(d.faults.len(), 1);
    store.apply(d);
    result(&mut e, "db-1", "c", OK, 2);
    e.tick(ts(500), timeout_90s);
    store.apply(e.take_dirty());
    assert_eq!(&store, e.state());
    assert!(e.take_dirty().is_empty());
}

#[test]
fn state_survives_a_json_round_trip_and_restore() {
    let mut e = engine();
    e.host_seen("db-1", "acme", ts(0));
    result(&mut e, "db-1", "c", Critical, 0);
    result(&mut e, "db-1", "c", Critical, 1);
    let json = serde_json::to_string(e.state()).unwrap();
    let state: EngineState = serde_json::from_str(&json).unwrap();
    let mut r = Engine::restore(config(), state).unwrap();
    assert_eq!(r.state(), e.state());
    assert_eq!(kinds(&result(&mut r, "db-1", "c", OK, 2)), kinds(&result(&mut e, "db-1", "c", OK, 2)));
}

#[test]
fn restore_refuses_two_open_faults_for_one_check() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    let mut state = e.state().clone();
    let mut twin = state.faults[&id].clone();
    twin.id = 7;
    state.faults.insert(7, twin);
    state.next.fault = 8;
    let err = Engine::restore(config(), state.clone()).unwrap_err();
    assert!(matches!(err, RestoreError::DuplicateOpen { .. }), "{err}");
    state.faults.remove(&7);
    state.next.fault = 1;
    let err = Engine::restore(config(), state).unwrap_err();
    assert!(matches!(err, RestoreError::CounterBehind { .. }), "{err}");
}

#[test]
fn prune_forgets_old_resolved_faults_and_ended_windows() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    result(&mut e, "h", "c", OK, 2);
    result(&mut e, "h", "d", Critical, 0);
    result(&mut e, "h", "d", Critical, 1);
    assert_eq!(e.prune(ts(3)), 1);
    assert!(e.fault(id).is_none());
    assert_eq!(e.faults(&FaultFilter { all: true, ..Default::default() }).len(), 1);
}

#[test]
fn annotate_adds_a_note_to_the_timeline() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    e.annotate(id, None, "paged alice by sms", ts(2)).unwrap();
    let last = e.fault(id).unwrap().timeline.last().unwrap().clone();
    assert_eq!((last.kind, last.text.as_str()), (Note, "paged alice by sms"));
    assert_eq!(e.annotate(42, None, "x", ts(2)), Err(ActionError::NoSuchFault(42)));
}

#[test]
fn results_named_host_reachable_from_agents_are_ignored() {
    let mut e = engine();
    result(&mut e, "h", HOST_REACHABLE, Critical, 0);
    assert!(result(&mut e, "h", HOST_REACHABLE, Critical, 1).is_empty());
}

#[test]
fn fault_json_uses_the_public_field_names() {
    let mut e = engine();
    result(&mut e, "h", "c", Critical, 0);
    let id = result(&mut e, "h", "c", Critical, 1)[0].fault_id;
    let v = serde_json::to_value(e.fault(id).unwrap()).unwrap();
    assert_eq!(v["state"], "open");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["check"], "c");
    assert_eq!(v["timeline"][0]["kind"], "opened");
    let s = serde_json::to_value(Suppression::ParentDown { host: "gw".into() }).unwrap();
    assert_eq!(s, serde_json::json!({"reason": "parent_down", "host": "gw"}));
}

#[test]
fn a_fault_storm_pages_the_first_faults_and_one_storm_fault_not_thousands() {
    let faults = FaultsConfig { storm_faults: 3, storm_window: Duration::from_secs(60), ..FaultsConfig::default() };
    let mut e = Engine::new(EngineConfig::new(faults, Vec::new(), HostDeps(BTreeMap::new())).unwrap()).unwrap();
    let mut paged = Vec::new();
    let mut opened = 0;
    for round in [0, 10] {
        for i in 0..50 {
            for t in result(&mut e, "db-1", &format!("command/c{i}"), Critical, round) {
                if t.kind == Opened {
                    opened += 1;
                    if t.page {
                        paged.push(e.fault(t.fault_id).unwrap().check.clone());
                    }
                }
            }
        }
    }
    assert_eq!(opened, 51, "every failing check is recorded, plus the storm fault");
    assert_eq!(paged, ["command/c0", "command/c1", "command/c2", FAULT_STORM], "pages: {paged:?}");
    let storm = e.open_fault("db-1", FAULT_STORM).unwrap();
    assert_eq!(storm.severity, Severity::Critical);
    assert!(storm.last_summary.contains("more than 3 faults"), "{}", storm.last_summary);
    let quiet = e.open_fault("db-1", "command/c9").unwrap().id;
    assert_eq!(e.fault(quiet).unwrap().suppressed, Some(Suppression::Storm));
    // Later the storm's faults neither page on a tick nor when they resolve; another host
    // is not affected, and a new window pages again.
    assert!(e.tick(ts(120), timeout_90s).iter().all(|t| !t.page));
    let out = result(&mut e, "db-1", "command/c9", OK, 130);
    assert!(out.iter().any(|t| t.kind == Resolved && !t.page), "{out:?}");
    assert!(result(&mut e, "web-9", "command/x", Critical, 130).is_empty());
    assert!(result(&mut e, "web-9", "command/x", Critical, 131).iter().any(|t| t.kind == Opened && t.page));
    result(&mut e, "db-1", "command/new", Critical, 200);
    let out = result(&mut e, "db-1", "command/new", Critical, 201);
    assert!(out.iter().any(|t| t.kind == Opened && t.page), "a new window did not page: {out:?}");
}

#[test]
fn check_names_with_control_characters_are_not_valid() {
    for ok in ["command/ctl", "redfish/fan/System Board Fan3A", "service/nginx.service"] {
        assert!(valid_check_name(ok), "{ok}");
    }
    for bad in ["", "a\nb", "tab\there", " leading", "trailing ", &"x".repeat(257)] {
        assert!(!valid_check_name(bad), "{bad:?}");
    }
}

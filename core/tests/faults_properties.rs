//! Property tests of the fault engine through its public API, with a fake clock: random
//! sequences of results, samples, liveness, ticks and staff actions.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use pikett_core::faults::{
    CheckInput, CheckState, CompareOp, Engine, EngineConfig, EngineState, EventKind, FaultFilter, FaultsConfig,
    HostDeps, NewMaintenance, NewSilence, Rule, SampleInput, Severity, Suppression, TrackKey, Transition,
};
use proptest::prelude::*;

const HOSTS: [&str; 3] = ["gw-1", "web-1", "db-1"];
const CHECKS: [&str; 2] = ["service/sshd", "disk:/var"];
const T0: i64 = 1_800_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Result { host: usize, check: usize, state: u8 },
    Sample { host: usize, sensor: usize, hot: bool },
    Seen { host: usize },
    Tick,
    Ack { pick: usize },
    Resolve { pick: usize },
    Maintenance { host: usize, start: i64, len: i64 },
    Silence { host: usize, check: Option<usize>, len: i64 },
    RemoveSilence { pick: usize },
    Forget { host: usize },
}

fn state_of(n: u8) -> CheckState {
    match n {
        0 => CheckState::Ok,
        1 => CheckState::Warning,
        2 => CheckState::Critical,
        _ => CheckState::Unknown,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..2usize, 0..4u8).prop_map(|(host, check, state)| Op::Result { host, check, state }),
        2 => (0..3usize, 0..2usize, any::<bool>()).prop_map(|(host, sensor, hot)| Op::Sample { host, sensor, hot }),
        4 => (0..3usize).prop_map(|host| Op::Seen { host }),
        2 => Just(Op::Tick),
        1 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Resolve { pick }),
        1 => (0..3usize, -300..600i64, 1..1200i64).prop_map(|(host, start, len)| Op::Maintenance { host, start, len }),
        1 => (0..3usize, proptest::option::of(0..2usize), 1..1200i64).prop_map(|(host, check, len)| Op::Silence { host, check, len }),
        1 => any::<usize>().prop_map(|pick| Op::RemoveSilence { pick }),
        1 => (0..30usize).prop_map(|host| Op::Forget { host }),
    ]
}

/// Each step: an operation and how many seconds pass before it.
fn steps() -> impl Strategy<Value = Vec<(u16, Op)>> {
    prop::collection::vec((0..120u16, op()), 1..120)
}

fn config_strategy() -> impl Strategy<Value = EngineConfig> {
    (1..=3u32, 1..=6u32, 2..=30u64, 0..=120u64, any::<bool>()).prop_map(
        |(for_results, flap_changes, window_min, rule_for, unknown_critical)| {
            EngineConfig::new(
                FaultsConfig {
                    for_results,
                    unknown_severity: if unknown_critical { Severity::Critical } else { Severity::Warning },
                    flap_changes,
                    flap_window: Duration::from_secs(window_min * 60),
                    // The storm limit has its own test; these properties are about every fault.
                    storm_faults: 0,
                    storm_window: Duration::from_secs(60),
                    max_checks_per_host: 0,
                },
                vec![Rule {
                    name: "hot".into(),
                    metric: "temp".into(),
                    labels: BTreeMap::new(),
                    op: CompareOp::Gt,
                    threshold: 85.0,
                    for_duration: Duration::from_secs(rule_for),
                    severity: Severity::Critical,
                    summary: None,
                }],
                HostDeps(BTreeMap::from([("web-1".to_string(), vec!["gw-1".to_string()])])),
            )
            .unwrap()
        },
    )
}

fn timeout(_: &str) -> Duration {
    Duration::from_secs(180)
}

fn fault_ids(e: &Engine) -> Vec<u64> {
    e.faults(&FaultFilter { all: true, ..FaultFilter::default() }).iter().map(|f| f.id).collect()
}

fn pick(e: &Engine, n: usize) -> Option<u64> {
    let ids = fault_ids(e);
    (!ids.is_empty()).then(|| ids[n % ids.len()])
}

/// Applies one operation at `now`; staff errors (a refused action) yield no transitions.
fn apply(e: &mut Engine, op: &Op, now: Timestamp, seq: usize) -> Vec<Transition> {
    match op {
        Op::Result { host, check, state } => e.check_result(
            CheckInput {
                host: HOSTS[*host].into(),
                customer: "acme".into(),
                check: CHECKS[*check].into(),
                state: state_of(*state),
                summary: format!("result {seq}"),
                time: now,
            },
            now,
        ),
        Op::Sample { host, sensor, hot } => e.sample(
            &SampleInput {
                host: HOSTS[*host].into(),
                customer: "acme".into(),
                name: "temp".into(),
                labels: BTreeMap::from([("sensor".to_string(), format!("CPU{sensor}"))]),
                value: if *hot { 95.0 } else { 40.0 },
                time: now,
            },
            now,
        ),
        Op::Seen { host } => e.host_seen(HOSTS[*host], "acme", now),
        Op::Tick => e.tick(now, timeout),
        Op::Ack { pick: n } => match pick(e, *n) {
            Some(id) => e.acknowledge(id, "alice", Some("on it"), now).unwrap_or_default(),
            None => Vec::new(),
        },
        Op::Resolve { pick: n } => match pick(e, *n) {
            Some(id) => e.resolve(id, "bob", None, now).unwrap_or_default(),
            None => Vec::new(),
        },
        Op::Maintenance { host, start, len } => {
            let start = now.checked_add(jiff::SignedDuration::from_secs(*start)).unwrap();
            let end = start.checked_add(jiff::SignedDuration::from_secs(*len)).unwrap();
            e.add_maintenance(
                NewMaintenance {
                    host: HOSTS[*host].into(),
                    customer: "acme".into(),
                    start,
                    end,
                    reason: "work".into(),
                    who: "carol".into(),
                },
                now,
            )
            .map(|(_, out)| out)
            .unwrap_or_default()
        }
        Op::Silence { host, check, len } => e
            .add_silence(
                NewSilence {
                    host: HOSTS[*host].into(),
                    check: check.map(|c| CHECKS[c].to_string()),
                    until: now.checked_add(jiff::SignedDuration::from_secs(*len)).unwrap(),
                    reason: "known".into(),
                    who: "dave".into(),
                },
                now,
            )
            .map(|(_, out)| out)
            .unwrap_or_default(),
        Op::RemoveSilence { pick: n } => {
            let ids: Vec<u64> = e.silences().map(|s| s.id).collect();
            if ids.is_empty() { Vec::new() } else { e.remove_silence(ids[n % ids.len()], now).unwrap_or_default() }
        }
        // Rare: only one value in ten of the range names a real host.
        Op::Forget { host } => match HOSTS.get(*host / 10) {
            Some(h) if *host % 10 == 0 => e.forget_host(h, "erin", now),
            _ => Vec::new(),
        },
    }
}

fn check_no_two_unresolved(e: &Engine) -> Result<(), TestCaseError> {
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in e.faults(&FaultFilter::default()) {
        if let Some(other) = seen.insert((f.host.clone(), f.check.clone()), f.id) {
            return Err(TestCaseError::fail(format!(
                "faults {other} and {} both unresolved for {} {}",
                f.id, f.host, f.check
            )));
        }
        prop_assert_eq!(e.open_fault(&f.host, &f.check).map(|o| o.id), Some(f.id));
    }
    Ok(())
}

/// Runs the steps, checking the invariants after each; returns every transition.
fn run_checked(config: &EngineConfig, steps: &[(u16, Op)]) -> Result<Vec<Transition>, TestCaseError> {
    let mut e = Engine::new(config.clone()).unwrap();
    let mut store = EngineState::default();
    let mut t = 0i64;
    let mut all = Vec::new();
    for (seq, (dt, op)) in steps.iter().enumerate() {
        t += i64::from(*dt);
        let now = ts(t);
        let out = apply(&mut e, op, now, seq);
        check_no_two_unresolved(&e)?;

        for tr in &out {
            let f = e.fault(tr.fault_id).expect("a transition names a recorded fault");
            let suppressed = e.is_suppressed(&f.host, &f.check, now);
            if tr.page {
                prop_assert!(
                    suppressed.is_none(),
                    "paged {:?} of fault {} while suppressed by {:?}",
                    tr.kind,
                    tr.fault_id,
                    suppressed
                );
            }
            if matches!(tr.kind, EventKind::Opened | EventKind::Reopened | EventKind::SeverityRaised) {
                prop_assert_eq!(tr.page, suppressed.is_none(), "{:?}", tr);
            }
            prop_assert!(!matches!(tr.kind, EventKind::Note));
        }

        if let Op::Result { host, check, state } = op {
            let (host, check) = (HOSTS[*host], CHECKS[*check]);
            let key = TrackKey::new(host, check);
            let track = e.state().tracks.get(&key).cloned().unwrap_or_default();
            let open = e.open_fault(host, check);
            if *state == 0 && !track.flapping {
                // An OK result outside flapping resolves, whatever came before.
                prop_assert!(open.is_none(), "OK left fault {:?} open", open.map(|f| f.id));
            }
            if *state != 0 {
                // Recorded whatever the suppression: an open fault carries this result, or
                // the check has not failed `for` times in a row yet.
                match open {
                    Some(f) => prop_assert_eq!(&f.last_summary, &format!("result {seq}")),
                    None => prop_assert!(track.streak < config.faults.for_results),
                }
            }
        }

        // The records reported dirty, applied to a store, always equal the state.
        store.apply(e.take_dirty());
        prop_assert_eq!(&store, e.state());
        all.extend(out);
    }
    Ok(all)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Never two unresolved faults for one (host, check); an OK result outside flapping
    /// resolves; pages only when not suppressed; suppressed results are still recorded; the
    /// dirty records rebuild the state.
    #[test]
    fn invariants_hold_under_any_inputs_and_staff_actions(config in config_strategy(), steps in steps()) {
        run_checked(&config, &steps)?;
    }

    /// A collector restarted anywhere (state written to JSON, or rebuilt from the dirty
    /// records as storage would) continues exactly as one that never stopped.
    #[test]
    fn restart_in_the_middle_changes_nothing(
        config in config_strategy(),
        steps in steps(),
        cut in any::<prop::sample::Index>(),
        from_store in any::<bool>(),
    ) {
        let cut = cut.index(steps.len() + 1);
        let mut whole = Engine::new(config.clone()).unwrap();
        let mut first = Engine::new(config.clone()).unwrap();
        let mut store = EngineState::default();
        let mut t = 0i64;
        let mut out_whole = Vec::new();
        let mut out_split = Vec::new();
        for (seq, (dt, op)) in steps.iter().enumerate().take(cut) {
            t += i64::from(*dt);
            out_whole.extend(apply(&mut whole, op, ts(t), seq));
            out_split.extend(apply(&mut first, op, ts(t), seq));
            store.apply(first.take_dirty());
        }
        let state = if from_store {
            store
        } else {
            let json = serde_json::to_string(first.state()).unwrap();
            serde_json::from_str(&json).unwrap()
        };
        drop(first);
        let mut second = Engine::restore(config.clone(), state).unwrap();
        prop_assert_eq!(second.state(), whole.state());
        for (seq, (dt, op)) in steps.iter().enumerate().skip(cut) {
            t += i64::from(*dt);
            out_whole.extend(apply(&mut whole, op, ts(t), seq));
            out_split.extend(apply(&mut second, op, ts(t), seq));
        }
        prop_assert_eq!(out_split, out_whole);
        prop_assert_eq!(second.state(), whole.state());
    }

    /// More than `flap_changes` changes within the window mark the check flapping (with an
    /// open fault flagged so); no change within the window means not flapping; while it
    /// flaps, nothing pages but a single severity rise.
    #[test]
    fn flapping_is_detected_and_not_paged_per_flap(
        config in config_strategy(),
        results in prop::collection::vec((0..300u16, 0..4u8), 1..150),
    ) {
        let mut e = Engine::new(config.clone()).unwrap();
        let window = config.faults.flap_window.as_secs() as i64;
        let mut changes: Vec<i64> = Vec::new();
        let mut last_ok = true;
        let mut t = 0i64;
        let mut raises: BTreeMap<u64, u32> = BTreeMap::new();
        let key = TrackKey::new("h", "c");
        for (seq, (dt, s)) in results.iter().enumerate() {
            t += i64::from(*dt);
            let was_flapping = e.state().tracks.get(&key).is_some_and(|tr| tr.flapping);
            let out = e.check_result(
                CheckInput {
                    host: "h".into(),
                    customer: "acme".into(),
                    check: "c".into(),
                    state: state_of(*s),
                    summary: format!("r{seq}"),
                    time: ts(t),
                },
                ts(t),
            );
            let ok = *s == 0;
            if ok != last_ok {
                changes.push(t);
                last_ok = ok;
            }
            let in_window = changes.iter().filter(|&&c| t - c < window).count();
            let flapping = e.state().tracks.get(&key).is_some_and(|tr| tr.flapping);
            if in_window > config.faults.flap_changes as usize {
                prop_assert!(flapping, "{} changes in the window at {}s but not flapping", in_window, t);
                let f = e.open_fault("h", "c");
                prop_assert!(f.is_some_and(|f| f.flapping), "flapping without a flagged open fault");
            }
            if in_window == 0 {
                prop_assert!(!flapping);
            }
            if was_flapping && flapping {
                for tr in out.iter().filter(|tr| tr.page) {
                    prop_assert_eq!(tr.kind, EventKind::SeverityRaised, "paged per flap: {:?}", tr);
                    let n = raises.entry(tr.fault_id).or_default();
                    *n += 1;
                    prop_assert!(*n <= 1);
                }
            }
        }
    }

    /// Suppression by host down, parent down, maintenance and silence: a failing check on
    /// the suppressed host is recorded exactly as usual, and nothing pages.
    #[test]
    fn suppressed_faults_are_recorded_but_never_paged(
        config in config_strategy(),
        reason in 0..4usize,
        states in prop::collection::vec(1..4u8, 1..12),
    ) {
        let mut e = Engine::new(config.clone()).unwrap();
        let expected = match reason {
            0 => {
                e.host_seen("web-1", "acme", ts(0));
                e.tick(ts(1000), timeout);
                Suppression::HostDown
            }
            1 => {
                e.host_seen("gw-1", "acme", ts(0));
                e.host_seen("web-1", "acme", ts(1000));
                e.tick(ts(1000), timeout);
                Suppression::ParentDown { host: "gw-1".into() }
            }
            2 => {
                let m = NewMaintenance {
                    host: "web-1".into(),
                    customer: "acme".into(),
                    start: ts(0),
                    end: ts(100_000),
                    reason: "rack move".into(),
                    who: "carol".into(),
                };
                Suppression::Maintenance { id: e.add_maintenance(m, ts(0)).unwrap().0 }
            }
            _ => {
                let s = NewSilence {
                    host: "web-1".into(),
                    check: Some("c".into()),
                    until: ts(100_000),
                    reason: "known".into(),
                    who: "dave".into(),
                };
                Suppression::Silence { id: e.add_silence(s, ts(0)).unwrap().0 }
            }
        };
        for (i, s) in states.iter().enumerate() {
            let t = ts(1000 + i as i64 * 10);
            let out = e.check_result(
                CheckInput {
                    host: "web-1".into(),
                    customer: "acme".into(),
                    check: "c".into(),
                    state: state_of(*s),
                    summary: format!("r{i}"),
                    time: t,
                },
                t,
            );
            prop_assert!(out.iter().all(|tr| !tr.page), "paged while suppressed: {:?}", out);
        }
        let f = e.open_fault("web-1", "c");
        if states.len() >= config.faults.for_results as usize {
            let f = f.expect("the fault is recorded");
            prop_assert_eq!(f.results, states.len() as u64);
            prop_assert_eq!(f.suppressed.as_ref(), Some(&expected));
            prop_assert!(!f.paged);
            prop_assert_eq!(&f.last_summary, &format!("r{}", states.len() - 1));
            prop_assert!(f.timeline[0].text.contains("not paged"));
            let worst = states.iter().map(|s| match state_of(*s) {
                CheckState::Critical => Severity::Critical,
                CheckState::Unknown => config.faults.unknown_severity,
                _ => Severity::Warning,
            }).max().unwrap();
            prop_assert_eq!(f.severity, worst);
        } else {
            prop_assert!(f.is_none());
        }
    }
}

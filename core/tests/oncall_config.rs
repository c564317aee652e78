//! The on-call config sections of docs/configuration.md, read from TOML and driven through the public API.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use pikett_core::escalation::{Action, Context, Escalation, EscalationConfig, NotifyKind, Severity, StartMode, Status};
use pikett_core::oncall::{Channel, Override, Person, Role, Rotation, roster, validate, who_is_on_call};
use serde::Deserialize;

/// What the collector's config struct will hold for these sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    #[serde(default)]
    people: BTreeMap<String, Person>,
    #[serde(default)]
    rotations: Vec<Rotation>,
    #[serde(default)]
    escalation: EscalationConfig,
}

fn load() -> Sections {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/oncall/oncall.toml")).unwrap();
    let s: Sections = toml::from_str(&text).unwrap();
    validate(&s.people, &s.rotations).unwrap();
    s.escalation.validate(&s.people, &s.rotations).unwrap();
    s
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn roster_from_the_config_file() {
    let s = load();
    assert_eq!(
        roster(&s.rotations, &[], ts("2026-11-02T08:00:00Z")),
        vec![(Role::Primary, Some("alice")), (Role::Secondary, Some("bob")), (Role::Management, Some("dora"))]
    );
    // Next Monday 09:00 Berlin the weekly rotations turn.
    assert_eq!(
        roster(&s.rotations, &[], ts("2026-11-09T08:00:00Z"))[..2],
        [(Role::Primary, Some("bob")), (Role::Secondary, Some("alice"))]
    );
}

#[test]
fn daily_management_handoff_at_new_york_midnight_across_the_us_fall_back() {
    let s = load();
    let mgmt = |t: &str| who_is_on_call(&s.rotations, &[], Role::Management, ts(t));
    // 2026-11-01 00:00 EDT = 04:00Z (carol); US DST ends that night;
    // 2026-11-02 00:00 EST = 05:00Z (dora).
    assert_eq!(mgmt("2026-11-01T04:00:00Z"), Some("carol"));
    assert_eq!(mgmt("2026-11-02T04:59:59Z"), Some("carol"));
    assert_eq!(mgmt("2026-11-02T05:00:00Z"), Some("dora"));
}

#[test]
fn empty_config_is_valid_and_has_nobody_on_call() {
    let s: Sections = toml::from_str("").unwrap();
    validate(&s.people, &s.rotations).unwrap();
    assert_eq!(who_is_on_call(&s.rotations, &[], Role::Primary, ts("2026-11-02T08:00:00Z")), None);
    assert_eq!(s.escalation, EscalationConfig::default());
}

#[test]
fn a_critical_fault_at_night_with_an_override_and_a_restart() {
    let s = load();
    let t0 = ts("2026-11-04T01:30:00Z");
    let overrides = vec![Override {
        role: Role::Primary,
        person: "carol".into(),
        from: ts("2026-11-04T00:00:00Z"),
        to: ts("2026-11-05T00:00:00Z"),
        created_at: ts("2026-11-03T12:00:00Z"),
        created_by: None,
    }];
    let ctx = Context { people: &s.people, rotations: &s.rotations, overrides: &overrides, config: &s.escalation };
    let mut esc = Escalation::start("fault-42", Severity::Critical, t0, StartMode::Normal);
    let first = esc.due(t0, &ctx);
    let sent: Vec<(&str, Channel, &str)> = first
        .iter()
        .filter_map(|a| match a {
            Action::Notify { person, channel, to, .. } => Some((person.as_str(), *channel, to.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![("carol", Channel::Sms, "+4915100000003"), ("carol", Channel::Email, "carol@example.net")]);
    assert_eq!(first[1].idempotency_key().as_deref(), Some("fault-42/1"));

    // The collector stores the state, restarts, and goes on.
    let stored = serde_json::to_vec(&esc).unwrap();
    let mut esc: Escalation = serde_json::from_slice(&stored).unwrap();
    let t5 = t0 + SignedDuration::from_mins(5);
    assert_eq!(esc.next_wakeup(), Some(t5));
    let second = esc.due(t5, &ctx);
    assert!(
        matches!(&second[0], Action::RoleEscalated { role: Role::Secondary, person: Some(p), .. } if p == "bob"),
        "{second:#?}"
    );
    esc.ack(t5 + SignedDuration::from_mins(1));
    assert!(matches!(esc.status(), Status::Acknowledged { .. }));
    let resolved = esc.resolve(t5 + SignedDuration::from_mins(20), &ctx);
    let kinds: Vec<(&str, NotifyKind)> = resolved
        .iter()
        .filter_map(|a| match a {
            Action::Notify { person, kind, .. } => Some((person.as_str(), *kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("carol", NotifyKind::Resolved), ("carol", NotifyKind::Resolved), ("bob", NotifyKind::Resolved)]
    );
}

//! Escalation tests with a fake clock: every instant is passed in.

use super::*;
use crate::oncall::NotificationRule;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn mins(m: i64) -> SignedDuration {
    SignedDuration::from_mins(m)
}

fn rule(channel: Channel, after_secs: u64) -> NotificationRule {
    NotificationRule { channel, after: Duration::from_secs(after_secs) }
}

struct World {
    people: BTreeMap<String, Person>,
    rotations: Vec<Rotation>,
    overrides: Vec<Override>,
    config: EscalationConfig,
}

impl World {
    /// alice primary (sms, voice after 2m), bob secondary (same), carol management (sms + email).
    fn new(repeat: u32) -> World {
        let mut people = BTreeMap::new();
        for name in ["alice", "bob", "dave"] {
            people.insert(
                name.to_string(),
                Person {
                    sms: Some(format!("sms:{name}")),
                    phone: Some(format!("tel:{name}")),
                    email: Some(format!("{name}@example.net")),
                    rules: vec![rule(Channel::Sms, 0), rule(Channel::Voice, 120)],
                    ..Person::default()
                },
            );
        }
        people.insert(
            "carol".to_string(),
            Person {
                sms: Some("sms:carol".into()),
                email: Some("carol@example.net".into()),
                rules: vec![rule(Channel::Sms, 0), rule(Channel::Email, 0)],
                ..Person::default()
            },
        );
        let rotation = |role, member: &str| Rotation {
            role,
            members: vec![member.to_string()],
            start: "2026-11-02T09:00:00".parse().unwrap(),
            period: Duration::from_secs(7 * 86400),
            timezone: Tz::new("Europe/Berlin").unwrap(),
        };
        let rotations = vec![
            rotation(Role::Primary, "alice"),
            rotation(Role::Secondary, "bob"),
            rotation(Role::Management, "carol"),
        ];
        let config: EscalationConfig = toml::from_str(&format!(
            r#"ack_timeout = "5m"
            repeat = {repeat}
            support_hours = {{ days = "mon-fri", from = "09:00", to = "18:00", timezone = "Europe/Berlin" }}"#
        ))
        .unwrap();
        crate::oncall::validate(&people, &rotations).unwrap();
        config.validate(&people, &rotations).unwrap();
        World { people, rotations, overrides: Vec::new(), config }
    }

    fn ctx(&self) -> Context<'_> {
        Context { people: &self.people, rotations: &self.rotations, overrides: &self.overrides, config: &self.config }
    }
}

/// Tuesday 03:00 Berlin: the middle of the night.
const T0: &str = "2026-11-10T02:00:00Z";

fn notify(person: &str, channel: Channel, kind: NotifyKind, step: u32, role: Option<Role>, round: u32) -> Action {
    let to = match channel {
        Channel::Sms => format!("sms:{person}"),
        Channel::Voice => format!("tel:{person}"),
        Channel::Email => format!("{person}@example.net"),
        Channel::Webhook => person.to_string(),
    };
    Action::Notify { fault_id: "F1".into(), person: person.into(), channel, kind, to, step, role, round }
}

fn alarm(person: &str, channel: Channel, step: u32, role: Role) -> Action {
    notify(person, channel, NotifyKind::Alarm, step, Some(role), 0)
}

fn escalated(role: Role, person: Option<&str>, round: u32, reason: EscalationReason) -> Action {
    Action::RoleEscalated { fault_id: "F1".into(), role, person: person.map(str::to_string), round, reason }
}

fn exhausted(all_failed: bool) -> Action {
    Action::ChainExhausted { fault_id: "F1".into(), all_failed }
}

/// Runs `esc` by its own wakeups until `until`, collecting (instant, action).
fn run_until(esc: &mut Escalation, w: &World, until: Timestamp) -> Vec<(Timestamp, Action)> {
    let mut out = Vec::new();
    while let Some(t) = esc.next_wakeup().filter(|t| *t <= until) {
        let actions = esc.due(t, &w.ctx());
        assert!(!actions.is_empty(), "woken at {t} for nothing");
        out.extend(actions.into_iter().map(|a| (t, a)));
    }
    out
}

#[test]
fn critical_fault_pages_primary_then_secondary_then_management_at_exact_instants() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    assert_eq!(esc.next_wakeup(), Some(t0));
    let log = run_until(&mut esc, &w, t0 + mins(60));
    use Channel::*;
    use EscalationReason::*;
    use Role::*;
    assert_eq!(
        log,
        vec![
            (t0, escalated(Primary, Some("alice"), 0, Start)),
            (t0, alarm("alice", Sms, 1, Primary)),
            (t0 + mins(2), alarm("alice", Voice, 2, Primary)),
            (t0 + mins(5), escalated(Secondary, Some("bob"), 0, AckTimeout)),
            (t0 + mins(5), alarm("bob", Sms, 3, Secondary)),
            (t0 + mins(7), alarm("bob", Voice, 4, Secondary)),
            (t0 + mins(10), escalated(Management, Some("carol"), 0, AckTimeout)),
            (t0 + mins(10), alarm("carol", Sms, 5, Management)),
            (t0 + mins(10), alarm("carol", Email, 6, Management)),
            // Outcomes never reported: not "all failed".
            (t0 + mins(15), exhausted(false)),
        ]
    );
    assert!(matches!(esc.status(), Status::Exhausted { all_failed: false, .. }));
    assert_eq!(esc.next_wakeup(), None);
    assert_eq!(esc.paged_people(), vec!["alice", "bob", "carol"]);
}

#[test]
fn nothing_is_due_before_the_next_wakeup() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    assert_eq!(esc.next_wakeup(), Some(t0 + mins(2)));
    assert_eq!(esc.due(t0 + mins(2) - SignedDuration::from_secs(1), &w.ctx()), vec![]);
    assert_eq!(esc.due(t0 + mins(2), &w.ctx()).len(), 1);
    assert_eq!(esc.next_wakeup(), Some(t0 + mins(5)));
}

#[test]
fn ack_stops_the_chain() {
    let w = World::new(1);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    assert_eq!(esc.due(t0, &w.ctx()).len(), 2);
    esc.ack(t0 + mins(1));
    assert_eq!(esc.status(), Status::Acknowledged { at: t0 + mins(1) });
    assert_eq!(esc.next_wakeup(), None, "the voice call at 2m is cancelled too");
    assert_eq!(esc.due(t0 + mins(60), &w.ctx()), vec![]);
}

#[test]
fn failed_sms_makes_voice_fire_at_once_and_all_failed_pages_next_role_at_once() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    let t1 = t0 + SignedDuration::from_secs(10);
    esc.on_delivery(1, false, t1);
    assert_eq!(esc.next_wakeup(), Some(t1), "voice no longer waits for its 2m");
    assert_eq!(esc.due(t1, &w.ctx()), vec![alarm("alice", Channel::Voice, 2, Role::Primary)]);
    assert_eq!(esc.next_wakeup(), Some(t0 + mins(5)));
    let t2 = t1 + SignedDuration::from_secs(20);
    esc.on_delivery(2, false, t2);
    assert_eq!(esc.next_wakeup(), Some(t2), "every channel of alice failed");
    assert_eq!(
        esc.due(t2, &w.ctx()),
        vec![
            escalated(Role::Secondary, Some("bob"), 0, EscalationReason::AllChannelsFailed),
            alarm("bob", Channel::Sms, 3, Role::Secondary),
        ]
    );
    // bob then gets his full ack_timeout from his page.
    assert_eq!(esc.next_wakeup(), Some(t2 + mins(2)));
    esc.due(t2 + mins(2), &w.ctx());
    assert_eq!(esc.next_wakeup(), Some(t2 + mins(5)));
}

#[test]
fn delivered_sms_keeps_the_voice_call_on_schedule() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    esc.on_delivery(1, true, t0 + SignedDuration::from_secs(1));
    assert_eq!(esc.next_wakeup(), Some(t0 + mins(2)));
    assert_eq!(esc.delivery_summary(), DeliverySummary { delivered: 1, failed: 0, pending: 0 });
}

#[test]
fn each_step_names_the_person_it_paged() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    esc.due(t0 + mins(5), &w.ctx());
    assert_eq!(esc.person_of_step(1), Some("alice"));
    assert_eq!(esc.person_of_step(2), Some("alice"), "alice's voice call at 2m");
    assert_eq!(esc.person_of_step(3), Some("bob"));
    assert_eq!(esc.person_of_step(99), None);
}

#[test]
fn a_retry_that_succeeds_overrides_the_failure() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    esc.on_delivery_to("alice", Channel::Sms, false, t0);
    esc.on_delivery_to("alice", Channel::Sms, true, t0 + SignedDuration::from_secs(30));
    assert_eq!(esc.delivery_summary(), DeliverySummary { delivered: 1, failed: 0, pending: 0 });
}

/// Fails every notification as soon as it is sent.
fn run_all_failing(esc: &mut Escalation, w: &World, until: Timestamp) -> Vec<(Timestamp, Action)> {
    let mut out = Vec::new();
    while let Some(t) = esc.next_wakeup().filter(|t| *t <= until) {
        for a in esc.due(t, &w.ctx()) {
            if let Action::Notify { step, .. } = a {
                esc.on_delivery(step, false, t);
            }
            out.push((t, a));
        }
    }
    out
}

#[test]
fn every_channel_of_every_role_failing_runs_the_chain_at_once_and_says_so() {
    let w = World::new(1);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let log = run_all_failing(&mut esc, &w, t0 + mins(60));
    assert!(log.iter().all(|(t, _)| *t == t0), "no waiting when everything fails: {log:#?}");
    let roles: Vec<(Role, u32)> = log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::RoleEscalated { role, round, reason, .. } => {
                if (*role, *round) != (Role::Primary, 0) {
                    assert_eq!(*reason, EscalationReason::AllChannelsFailed);
                }
                Some((*role, *round))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (Role::Primary, 0),
            (Role::Secondary, 0),
            (Role::Management, 0),
            (Role::Primary, 1),
            (Role::Secondary, 1),
            (Role::Management, 1)
        ]
    );
    let notifies = log.iter().filter(|(_, a)| matches!(a, Action::Notify { .. })).count();
    assert_eq!(notifies, 12, "2 channels × 3 people × 2 rounds");
    assert_eq!(log.last().unwrap().1, exhausted(true));
    assert_eq!(esc.delivery_summary(), DeliverySummary { delivered: 0, failed: 12, pending: 0 });
}

#[test]
fn one_delivered_alarm_means_exhausted_but_not_all_failed() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let mut last = None;
    while let Some(t) = esc.next_wakeup() {
        for a in esc.due(t, &w.ctx()) {
            if let Action::Notify { step, person, .. } = &a {
                esc.on_delivery(*step, person == "carol", t);
            }
            last = Some(a);
        }
    }
    assert_eq!(last, Some(exhausted(false)));
}

#[test]
fn repeat_runs_the_chain_again_with_reminders() {
    let w = World::new(1);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let log = run_until(&mut esc, &w, t0 + mins(60));
    let at = |t: Timestamp| log.iter().filter(|(i, _)| *i == t).map(|(_, a)| a.clone()).collect::<Vec<_>>();
    assert_eq!(
        at(t0 + mins(15)),
        vec![
            escalated(Role::Primary, Some("alice"), 1, EscalationReason::AckTimeout),
            notify("alice", Channel::Sms, NotifyKind::Reminder, 7, Some(Role::Primary), 1),
        ]
    );
    assert_eq!(at(t0 + mins(20))[0], escalated(Role::Secondary, Some("bob"), 1, EscalationReason::AckTimeout));
    assert_eq!(at(t0 + mins(25))[0], escalated(Role::Management, Some("carol"), 1, EscalationReason::AckTimeout));
    assert_eq!(log.last().unwrap(), &(t0 + mins(30), exhausted(false)));
}

#[test]
fn resolution_goes_to_everyone_paged_and_cancels_pending_rules() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    run_until(&mut esc, &w, t0 + mins(5));
    let t = t0 + mins(6);
    let actions = esc.resolve(t, &w.ctx());
    // Non-voice channels only: both were alarmed by SMS and voice.
    assert_eq!(
        actions,
        vec![
            notify("alice", Channel::Sms, NotifyKind::Resolved, 4, None, 0),
            notify("bob", Channel::Sms, NotifyKind::Resolved, 5, None, 0),
        ]
    );
    assert_eq!(esc.status(), Status::Resolved { at: t });
    assert_eq!(esc.next_wakeup(), None, "bob's voice call at 7m is cancelled");
    assert_eq!(esc.resolve(t + mins(1), &w.ctx()), vec![], "resolving twice sends nothing");
}

#[test]
fn voice_only_person_gets_the_resolution_by_sms() {
    let mut w = World::new(0);
    w.people.get_mut("alice").unwrap().rules = vec![rule(Channel::Voice, 0)];
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    assert_eq!(esc.due(t0, &w.ctx())[1], alarm("alice", Channel::Voice, 1, Role::Primary));
    assert_eq!(
        esc.resolve(t0 + mins(1), &w.ctx()),
        vec![notify("alice", Channel::Sms, NotifyKind::Resolved, 2, None, 0)]
    );
}

#[test]
fn resolved_after_ack_still_tells_the_paged() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    esc.ack(t0 + mins(1));
    assert!(!esc.is_finished(), "acknowledged, not resolved: the resolution is still to be told");
    let actions = esc.resolve(t0 + mins(30), &w.ctx());
    assert_eq!(actions, vec![notify("alice", Channel::Sms, NotifyKind::Resolved, 2, None, 0)]);
    assert!(esc.is_finished());
}

#[test]
fn a_vacant_role_is_skipped_at_once() {
    let mut w = World::new(0);
    w.rotations.retain(|r| r.role != Role::Secondary);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    run_until(&mut esc, &w, t0 + mins(4));
    let t5 = t0 + mins(5);
    assert_eq!(
        esc.due(t5, &w.ctx()),
        vec![
            escalated(Role::Secondary, None, 0, EscalationReason::AckTimeout),
            escalated(Role::Management, Some("carol"), 0, EscalationReason::AllChannelsFailed),
            alarm("carol", Channel::Sms, 3, Role::Management),
            alarm("carol", Channel::Email, 4, Role::Management),
        ]
    );
}

#[test]
fn nobody_on_call_anywhere_ends_all_failed() {
    let mut w = World::new(0);
    w.rotations.clear();
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let actions = esc.due(t0, &w.ctx());
    assert_eq!(actions.len(), 4, "{actions:#?}");
    assert_eq!(actions[3], exhausted(true));
}

#[test]
fn overrides_decide_who_is_paged() {
    let mut w = World::new(0);
    let t0 = ts(T0);
    w.overrides.push(Override {
        role: Role::Primary,
        person: "dave".into(),
        from: t0 - mins(60),
        to: t0 + mins(60),
        created_at: t0 - mins(120),
        created_by: None,
    });
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let actions = esc.due(t0, &w.ctx());
    assert_eq!(actions[0], escalated(Role::Primary, Some("dave"), 0, EscalationReason::Start));
    assert_eq!(actions[1], alarm("dave", Channel::Sms, 1, Role::Primary));
}

#[test]
fn emergency_pages_the_whole_chain_at_once() {
    let w = World::new(1);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Warning, t0, StartMode::Emergency);
    assert_eq!(esc.mode(), Mode::Emergency);
    let first = esc.due(t0, &w.ctx());
    let roles: Vec<_> = first
        .iter()
        .filter_map(|a| match a {
            Action::RoleEscalated { role, person, reason, .. } => Some((*role, person.clone().unwrap(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (Role::Primary, "alice".to_string(), EscalationReason::Emergency),
            (Role::Secondary, "bob".to_string(), EscalationReason::Emergency),
            (Role::Management, "carol".to_string(), EscalationReason::Emergency),
        ]
    );
    let sms_now: Vec<_> = first
        .iter()
        .filter_map(|a| match a {
            Action::Notify { person, channel: Channel::Sms, .. } => Some(person.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sms_now, vec!["alice", "bob", "carol"]);
    let log = run_until(&mut esc, &w, t0 + mins(60));
    let rounds: Vec<(Timestamp, u32)> = log
        .iter()
        .filter_map(|(t, a)| match a {
            Action::RoleEscalated { round, role: Role::Primary, .. } => Some((*t, *round)),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, vec![(t0 + mins(5), 1)]);
    assert_eq!(log.last().unwrap(), &(t0 + mins(10), exhausted(false)));
}

#[test]
fn an_acked_incident_escalated_to_emergency_pages_everyone_again() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    esc.due(t0, &w.ctx());
    esc.ack(t0 + mins(1));
    esc.escalate_emergency(t0 + mins(30));
    assert_eq!(esc.next_wakeup(), Some(t0 + mins(30)));
    let actions = esc.due(t0 + mins(30), &w.ctx());
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::RoleEscalated { .. })).count(), 3);
}

#[test]
fn warning_at_friday_night_is_delivered_monday_nine_local() {
    let w = World::new(0);
    // Friday 2026-11-13 23:00 CET.
    let t = ts("2026-11-13T22:00:00Z");
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    assert_eq!(esc.mode(), Mode::BusinessHours);
    assert_eq!(esc.due(t, &w.ctx()), vec![], "never at night");
    let monday = ts("2026-11-16T08:00:00Z");
    assert_eq!(esc.next_wakeup(), Some(monday));
    assert_eq!(esc.due(monday - SignedDuration::from_secs(1), &w.ctx()), vec![]);
    assert_eq!(esc.due(monday, &w.ctx()), vec![alarm("alice", Channel::Email, 1, Role::Primary)]);
    assert_eq!(esc.next_wakeup(), None);
    // Resolved Monday night: the resolution waits for Tuesday 09:00.
    let night = ts("2026-11-16T22:00:00Z");
    assert_eq!(esc.resolve(night, &w.ctx()), vec![]);
    assert!(!esc.is_finished(), "the resolution is still to be sent");
    let tuesday = ts("2026-11-17T08:00:00Z");
    assert_eq!(esc.next_wakeup(), Some(tuesday));
    assert_eq!(esc.due(tuesday, &w.ctx()), vec![notify("alice", Channel::Email, NotifyKind::Resolved, 2, None, 0)]);
    assert!(esc.is_finished());
}

#[test]
fn warning_inside_support_hours_goes_out_at_once() {
    let w = World::new(0);
    // Wednesday 14:00 CET.
    let t = ts("2026-11-11T13:00:00Z");
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    assert_eq!(esc.due(t, &w.ctx()), vec![alarm("alice", Channel::Email, 1, Role::Primary)]);
}

#[test]
fn warning_resolved_before_support_hours_sends_nothing() {
    let w = World::new(0);
    let t = ts("2026-11-13T22:00:00Z");
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    esc.due(t, &w.ctx());
    assert_eq!(esc.resolve(t + mins(30), &w.ctx()), vec![]);
    assert_eq!(esc.next_wakeup(), None);
}

#[test]
fn warning_without_recipient_or_failed_ends_all_failed() {
    let mut w = World::new(0);
    w.people.get_mut("alice").unwrap().email = None;
    let t = ts("2026-11-11T13:00:00Z");
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    assert_eq!(esc.due(t, &w.ctx()), vec![exhausted(true)]);

    let w = World::new(0);
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    esc.due(t, &w.ctx());
    esc.on_delivery(1, false, t + mins(1));
    assert_eq!(esc.due(t + mins(1), &w.ctx()), vec![exhausted(true)]);
}

#[test]
fn warning_that_turns_critical_pages_at_once() {
    let w = World::new(0);
    let t = ts("2026-11-13T22:00:00Z");
    let mut esc = Escalation::start("F1", Severity::Warning, t, StartMode::Normal);
    esc.due(t, &w.ctx());
    esc.set_severity(Severity::Critical, t + mins(10));
    assert_eq!(esc.next_wakeup(), Some(t + mins(10)));
    let actions = esc.due(t + mins(10), &w.ctx());
    assert_eq!(actions[0], escalated(Role::Primary, Some("alice"), 0, EscalationReason::Start));
}

#[test]
fn late_due_pages_from_now_without_bursting_the_chain() {
    let w = World::new(0);
    let t0 = ts(T0);
    let mut esc = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let late = t0 + mins(20);
    let actions = esc.due(late, &w.ctx());
    assert_eq!(actions.len(), 2, "only the primary: {actions:#?}");
    assert_eq!(esc.next_wakeup(), Some(late + mins(2)));
}

#[test]
fn state_survives_serialization_mid_escalation() {
    let w = World::new(1);
    let t0 = ts(T0);
    let script = |esc: &mut Escalation, from: Timestamp, until: Timestamp| {
        let mut log = Vec::new();
        while let Some(t) = esc.next_wakeup().filter(|t| *t >= from && *t <= until) {
            for a in esc.due(t, &w.ctx()) {
                // Deterministic outcomes: voice calls fail, the rest are delivered.
                if let Action::Notify { step, channel, .. } = &a {
                    esc.on_delivery(*step, *channel != Channel::Voice, t);
                }
                log.push((t, a));
            }
        }
        log
    };
    let mut straight = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let expected = script(&mut straight, t0, t0 + mins(120));

    let mut first = Escalation::start("F1", Severity::Critical, t0, StartMode::Normal);
    let mut log = script(&mut first, t0, t0 + mins(8));
    let stored = serde_json::to_string(&first).unwrap();
    drop(first);
    let mut restored: Escalation = serde_json::from_str(&stored).unwrap();
    log.extend(script(&mut restored, t0 + mins(8), t0 + mins(120)));
    assert_eq!(log, expected);
    assert_eq!(restored, straight);
    assert!(expected.len() > 10);
}

#[test]
fn escalation_config_parses_spec_example_and_defaults() {
    let c: EscalationConfig = toml::from_str(
        r#"ack_timeout = "5m"
        repeat = 1
        support_hours = { days = "mon-fri", from = "09:00", to = "18:00", timezone = "Europe/Berlin" }"#,
    )
    .unwrap();
    assert_eq!(c.ack_timeout, Duration::from_secs(300));
    assert_eq!(c.support_hours.timezone.name(), "Europe/Berlin");
    let d: EscalationConfig = toml::from_str("").unwrap();
    assert_eq!(d, EscalationConfig::default());
    assert_eq!((d.repeat, d.warning_channel, d.warning_role), (1, Channel::Email, Role::Primary));
    assert_eq!(d.support_hours.timezone.name(), "UTC");
}

#[test]
fn escalation_config_errors_name_the_problem() {
    let err = |s: &str| toml::from_str::<EscalationConfig>(s).unwrap_err().to_string();
    let e = err(r#"support_hours = { days = "mon-fry", from = "09:00", to = "18:00", timezone = "UTC" }"#);
    assert!(e.contains("fry"), "{e}");
    let e = err(r#"support_hours = { days = "mon-fri", from = "18:00", to = "09:00", timezone = "UTC" }"#);
    assert!(e.contains("must be before"), "{e}");
    let e = err(r#"support_hours = { days = "mon-fri", from = "9", to = "18:00", timezone = "UTC" }"#);
    assert!(e.contains("HH:MM"), "{e}");
    let e = err(r#"support_hours = { days = "mon-fri", from = "09:00", to = "18:00", timezone = "Mars/Base" }"#);
    assert!(e.contains("Mars/Base"), "{e}");
    let e = err(r#"acktimeout = "5m""#);
    assert!(e.contains("acktimeout"), "{e}");
    let e = err(r#"warning_channel = "pigeon""#);
    assert!(e.contains("pigeon"), "{e}");

    let mut w = World::new(0);
    w.config.ack_timeout = Duration::ZERO;
    w.people.get_mut("alice").unwrap().email = None;
    let errors = w.config.validate(&w.people, &w.rotations).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert!(errors[1].to_string().contains("people.alice"), "{}", errors[1]);
}

#[test]
fn weekdays_and_clock_times_parse() {
    let days: Weekdays = "fri-mon".parse().unwrap();
    assert_eq!(days.to_string(), "mon,fri,sat,sun");
    let days: Weekdays = "mon-wed,fri".parse().unwrap();
    assert_eq!(days.to_string(), "mon,tue,wed,fri");
    assert!("".parse::<Weekdays>().is_err());
    assert_eq!("24:00".parse::<TimeOfDay>().unwrap().seconds(), 86400);
    assert_eq!("08:30:15".parse::<TimeOfDay>().unwrap().to_string(), "08:30:15");
    assert!("24:01".parse::<TimeOfDay>().is_err());
    assert!("12:60".parse::<TimeOfDay>().is_err());
}

#[test]
fn support_hours_follow_their_time_zone_and_days() {
    let sh: SupportHours = toml::from_str(
        r#"days = "mon-fri"
        from = "09:00"
        to = "18:00"
        timezone = "Europe/Berlin""#,
    )
    .unwrap();
    // Friday 17:59 CET open, 18:00 closed → Monday 09:00.
    assert!(sh.is_open(ts("2026-11-13T16:59:59Z")));
    assert!(!sh.is_open(ts("2026-11-13T17:00:00Z")));
    assert_eq!(sh.next_open(ts("2026-11-13T17:00:00Z")), ts("2026-11-16T08:00:00Z"));
    // Early Monday morning → the same day at 09:00; summer time shifts UTC by an hour.
    assert_eq!(sh.next_open(ts("2027-06-07T03:00:00Z")), ts("2027-06-07T07:00:00Z"));
    // Saturday of the DST change week-end → Monday 09:00 CEST.
    assert_eq!(sh.next_open(ts("2027-03-27T12:00:00Z")), ts("2027-03-29T07:00:00Z"));
    let all_day: SupportHours = toml::from_str(
        r#"days = "sat"
        from = "00:00"
        to = "24:00"
        timezone = "UTC""#,
    )
    .unwrap();
    assert!(all_day.is_open(ts("2026-11-14T23:59:59Z")));
    assert_eq!(all_day.next_open(ts("2026-11-15T00:00:00Z")), ts("2026-11-21T00:00:00Z"));
}

#[test]
fn actions_serialize_for_the_timeline() {
    let a = alarm("alice", Channel::Sms, 1, Role::Primary);
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["action"], "notify");
    assert_eq!(v["channel"], "sms");
    assert_eq!(v["kind"], "alarm");
    assert_eq!(a.idempotency_key().as_deref(), Some("F1/1"));
    let e = serde_json::to_value(exhausted(true)).unwrap();
    assert_eq!(e, serde_json::json!({"action": "chain_exhausted", "fault_id": "F1", "all_failed": true}));
}

mod props;

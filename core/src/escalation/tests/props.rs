//! Property tests: rotations, support hours and escalation invariants over random inputs.

use proptest::prelude::*;

use super::*;

const ZONES: [&str; 5] = ["Europe/Berlin", "America/New_York", "UTC", "Australia/Lord_Howe", "Asia/Kolkata"];
const PERIODS: [u64; 5] = [3600, 8 * 3600, 12 * 3600, 86400, 7 * 86400];

/// Instants between 2025 and 2030.
fn instant() -> impl Strategy<Value = Timestamp> {
    (1_735_689_600i64..1_893_456_000).prop_map(|s| Timestamp::from_second(s).unwrap())
}

fn rotation() -> impl Strategy<Value = Rotation> {
    (1usize..6, 0usize..ZONES.len(), 0usize..PERIODS.len(), instant(), 6i8..20).prop_map(
        |(n, zone, period, start, hour)| {
            let tz = Tz::new(ZONES[zone]).unwrap();
            let day = start.to_zoned(tz.tz().clone()).date();
            Rotation {
                role: Role::Primary,
                members: (0..n).map(|i| format!("m{i}")).collect(),
                start: day.at(hour, 0, 0, 0),
                period: Duration::from_secs(PERIODS[period]),
                timezone: tz,
            }
        },
    )
}

proptest! {
    #[test]
    fn exactly_one_member_holds_the_role_between_consecutive_handoffs(r in rotation(), at in instant()) {
        let k = r.turn_at(at).unwrap();
        let (this, next) = (r.handoff(k).unwrap(), r.handoff(k + 1).unwrap());
        prop_assert!(this <= at && at < next, "{this} <= {at} < {next}");
        let holder = r.member_at(at).unwrap();
        prop_assert_eq!(Some(holder), r.member_at(this));
        prop_assert!(r.members.iter().any(|m| m == holder));
        prop_assert_eq!(r.next_handoff(at), Some(next));
    }

    #[test]
    fn handoffs_keep_the_local_wall_clock_time(r in rotation(), k in -200i64..200) {
        let t = r.handoff(k).unwrap();
        let local = t.to_zoned(r.timezone.tz().clone()).datetime();
        let expected = r.start.checked_add(SignedDuration::from_secs(k * r.period.as_secs() as i64)).unwrap();
        // A sub-daily period can land in a DST gap (18:00 + 8 h = 02:00 on the March change in
        // Berlin): that hand-off moves forward by design (see `Rotation::handoff`), so only
        // civil times that exist in the zone are compared here.
        let exists = expected.to_zoned(r.timezone.tz().clone()).is_ok_and(|z| z.datetime() == expected);
        prop_assume!(exists);
        prop_assert_eq!(local, expected);
    }

    #[test]
    fn next_open_is_inside_support_hours_and_never_earlier(
        at in instant(),
        zone in 0usize..ZONES.len(),
        days in 1u8..128,
        from in 0u32..(23 * 60),
        len in 1u32..(6 * 60),
    ) {
        let to = (from + len).min(24 * 60);
        let sh = SupportHours {
            days: Weekdays::from_mask(days),
            from: TimeOfDay::from_seconds(from * 60),
            to: TimeOfDay::from_seconds(to * 60),
            timezone: Tz::new(ZONES[zone]).unwrap(),
        };
        let open = sh.next_open(at);
        prop_assert!(open >= at);
        prop_assert!(open.duration_since(at) <= SignedDuration::from_hours(8 * 24));
        let local = open.to_zoned(sh.timezone.tz().clone());
        prop_assert!(sh.days.contains(local.weekday()), "{local} on a closed day");
        prop_assert!(sh.is_open(open));
    }

    #[test]
    fn escalation_invariants_hold_for_any_outcomes(
        repeat in 0u32..3,
        emergency in any::<bool>(),
        outcomes in proptest::collection::vec(prop_oneof![Just(None), Just(Some(true)), Just(Some(false))], 40),
        ack_after in proptest::option::of(0i64..3600),
    ) {
        let w = World::new(repeat);
        let t0 = ts(T0);
        let mode = if emergency { StartMode::Emergency } else { StartMode::Normal };
        let mut esc = Escalation::start("F1", Severity::Critical, t0, mode);
        let ack_at = ack_after.map(|s| t0 + SignedDuration::from_secs(s));
        let mut steps = Vec::new();
        let mut exhausted = 0;
        let mut outcome = outcomes.iter().cycle();
        for _ in 0..200 {
            let Some(mut t) = esc.next_wakeup() else { break };
            if let Some(a) = ack_at && a <= t && esc.status() == Status::Running {
                esc.ack(a);
                t = a;
            }
            for action in esc.due(t, &w.ctx()) {
                prop_assert!(ack_at.is_none_or(|a| t < a), "{action:?} after the ack at {ack_at:?}");
                match action {
                    Action::Notify { step, .. } => {
                        steps.push(step);
                        if let Some(ok) = outcome.next().unwrap() {
                            esc.on_delivery(step, *ok, t);
                        }
                    }
                    Action::ChainExhausted { .. } => exhausted += 1,
                    Action::RoleEscalated { .. } => {}
                }
            }
        }
        prop_assert_eq!(esc.next_wakeup(), None, "the escalation ends");
        prop_assert_eq!(steps.clone(), (1..=steps.len() as u32).collect::<Vec<_>>());
        // 3 people, 2 rules each, per round.
        prop_assert!(steps.len() <= 6 * (repeat as usize + 1));
        prop_assert!(exhausted <= 1);
        prop_assert_eq!(exhausted == 1, ack_at.is_none() || matches!(esc.status(), Status::Exhausted { .. }));
    }
}

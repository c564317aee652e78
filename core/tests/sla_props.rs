//! Property tests of the SLA arithmetic against an independent minute-by-minute count.

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use pikett_core::sla::{Cause, Contract, Maintenance, Month, Outage, ReportRow, compute_month};
use proptest::prelude::*;

/// The documented contract example, `[sla.gold]` in docs/configuration.md (covers the whole
/// day, crosses midnight).
const SPEC_CONTRACT: &str = r#"
timezone = "Europe/Berlin"
windows = [
  { name = "core", from = "07:00", to = "18:00", days = "mon-sun", target = "98%" },
  { name = "off",  from = "18:00", to = "07:00", days = "mon-sun", target = "90%" },
]
short_outage = "5m"
short_outage_max_per_day = 2
short_outage_max_per_week = 3
maintenance_notice = "7d"
maintenance_cap = { core = "2h", off = "7h" }
"#;

/// Gaps between windows, day filters, a weekend window crossing midnight, one cap only.
const GAPPY_CONTRACT: &str = r#"
timezone = "Europe/Berlin"
windows = [
  { name = "biz",   from = "08:00", to = "17:00", days = "mon-fri", target = "99.5%" },
  { name = "night", from = "22:00", to = "06:00", days = "fri-sun", target = "95%" },
]
short_outage = "5m"
short_outage_max_per_day = 1
maintenance_notice = "3d"
maintenance_cap = { night = "90m" }
"#;

const MONTHS: [&str; 2] = ["2026-03", "2026-10"];

#[derive(Debug, Clone)]
struct Scenario {
    contract: usize,
    month: usize,
    /// (start minute offset, length in minutes, cause selector)
    outages: Vec<(i64, i64, u8)>,
    /// (start minute offset, length in minutes, notice in days)
    maintenance: Vec<(i64, i64, i64)>,
    extra: (i64, i64, u8),
}

/// Outages and maintenance start within 55 days from 15 days before the month.
const SPAN_MINUTES: i64 = 55 * 1440;

fn length() -> impl Strategy<Value = i64> {
    prop_oneof![1i64..5, 5i64..240, 240i64..3 * 1440]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0..2usize,
        0..2usize,
        prop::collection::vec((0..SPAN_MINUTES, length(), 0u8..10), 0..25),
        prop::collection::vec((0..SPAN_MINUTES, 30i64..600, 0i64..15), 0..4),
        (0..SPAN_MINUTES, length(), 0u8..10),
    )
        .prop_map(|(contract, month, outages, maintenance, extra)| Scenario {
            contract,
            month,
            outages,
            maintenance,
            extra,
        })
}

struct Built {
    contract: Contract,
    month: Month,
    outages: Vec<Outage>,
    maintenance: Vec<Maintenance>,
    extra: Outage,
}

fn base(month: Month) -> Timestamp {
    let first = jiff::civil::Date::new(month.year(), month.month(), 1).unwrap();
    let tz = TimeZone::get("Europe/Berlin").unwrap();
    tz.to_timestamp(first.at(0, 0, 0, 0)).unwrap() - jiff::SignedDuration::from_hours(15 * 24)
}

fn at(base: Timestamp, minutes: i64) -> Timestamp {
    base + jiff::SignedDuration::from_mins(minutes)
}

fn cause(sel: u8) -> Cause {
    match sel {
        0 => Cause::ForceMajeure,
        1 => Cause::Customer,
        _ => Cause::None,
    }
}

fn build(s: &Scenario) -> Built {
    let text = [SPEC_CONTRACT, GAPPY_CONTRACT][s.contract];
    let contract = Contract::from_toml(text, "contract").unwrap();
    let month: Month = MONTHS[s.month].parse().unwrap();
    let b = base(month);
    // Keep only outages not overlapping an earlier kept one.
    let mut sorted = s.outages.clone();
    sorted.sort();
    let mut outages: Vec<Outage> = Vec::new();
    let mut last_end = i64::MIN;
    for (start, len, c) in sorted {
        if start >= last_end {
            outages.push(Outage { host: "h1".into(), start: at(b, start), end: at(b, start + len), cause: cause(c) });
            last_end = start + len;
        }
    }
    let maintenance = s
        .maintenance
        .iter()
        .map(|&(start, len, notice)| Maintenance {
            host: "h1".into(),
            start: at(b, start),
            end: at(b, start + len),
            announced: at(b, start - notice * 1440),
        })
        .collect();
    let (start, len, c) = s.extra;
    let extra = Outage { host: "h1".into(), start: at(b, start), end: at(b, start + len), cause: cause(c) };
    Built { contract, month, outages, maintenance, extra }
}

/// Whether the minute starting at `t` lies in the window, judged from local wall-clock time
/// alone (an independent formulation of "window occurrence starting on a selected day").
fn minute_in_window(contract: &Contract, w: usize, t: Timestamp) -> bool {
    let spec = &contract.windows[w];
    let local = contract.timezone.tz().to_datetime(t);
    let tod = local.time().hour() as u32 * 3600 + local.time().minute() as u32 * 60;
    let (from, to) = (spec.from.seconds(), spec.to.seconds());
    let day = local.date().weekday();
    let yesterday: Weekday = day.wrapping_sub(1);
    if from < to {
        spec.days.contains(day) && tod >= from && tod < to
    } else {
        (spec.days.contains(day) && tod >= from) || (spec.days.contains(yesterday) && tod < to)
    }
}

fn in_month(contract: &Contract, month: Month, t: Timestamp) -> bool {
    let d = contract.timezone.tz().to_datetime(t).date();
    d.year() == month.year() && d.month() == month.month()
}

/// Outage seconds inside each window and the month, counted minute by minute.
fn brute_force_outage_seconds(b: &Built) -> Vec<u64> {
    let mut per_window = vec![0u64; b.contract.windows.len()];
    for o in &b.outages {
        let mut t = o.start;
        while t < o.end {
            if in_month(&b.contract, b.month, t) {
                for (w, n) in per_window.iter_mut().enumerate() {
                    if minute_in_window(&b.contract, w, t) {
                        *n += 60;
                    }
                }
            }
            t += jiff::SignedDuration::from_mins(1);
        }
    }
    per_window
}

fn rows(b: &Built, outages: &[Outage]) -> Vec<ReportRow> {
    compute_month(&b.contract, b.month, outages, &b.maintenance).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn counted_plus_excused_is_the_outage_time_inside_the_windows(s in scenario()) {
        let b = build(&s);
        let rows = rows(&b, &b.outages);
        let expected = brute_force_outage_seconds(&b);
        // Hosts come from outages and maintenance: one host, two windows.
        prop_assert_eq!(rows.len(), if b.outages.is_empty() && b.maintenance.is_empty() { 0 } else { 2 });
        for r in &rows {
            let w = b.contract.windows.iter().position(|x| x.name == r.window).unwrap();
            prop_assert_eq!(r.outage_seconds, r.counted_seconds + r.excused_seconds.total(), "{:?}", r);
            prop_assert_eq!(r.outage_seconds, expected[w], "window {}", r.window);
            prop_assert!(r.counted_seconds <= r.window_seconds);
        }
    }

    #[test]
    fn availability_is_a_fraction(s in scenario()) {
        let b = build(&s);
        for r in rows(&b, &b.outages) {
            prop_assert!((0.0..=1.0).contains(&r.availability), "{:?}", r);
            if r.availability > r.target + 1e-12 {
                prop_assert!(r.met, "{:?}", r);
            }
            if r.availability < r.target - 1e-12 {
                prop_assert!(!r.met, "{:?}", r);
            }
        }
    }

    #[test]
    fn adding_an_outage_never_raises_availability(s in scenario()) {
        let b = build(&s);
        let overlaps = b.outages.iter().any(|o| o.start < b.extra.end && b.extra.start < o.end);
        prop_assume!(!overlaps);
        let before = rows(&b, &b.outages);
        let mut more = b.outages.clone();
        more.push(b.extra.clone());
        let after = rows(&b, &more);
        for a in &after {
            let old = before.iter().find(|r| r.window == a.window).map_or(1.0, |r| r.availability);
            let old_counted = before.iter().find(|r| r.window == a.window).map_or(0, |r| r.counted_seconds);
            prop_assert!(a.availability <= old, "window {}: {} > {}", a.window, a.availability, old);
            prop_assert!(a.counted_seconds >= old_counted);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The per-outage explanation adds up to the month's report, reason by reason.
    #[test]
    fn explanation_adds_up_to_the_report(s in scenario()) {
        let b = build(&s);
        let ledger = pikett_core::sla::Ledger::new(&b.contract, &b.outages, &b.maintenance).unwrap();
        let rows = ledger.month(b.month).unwrap();
        let explain = ledger.explain("h1", b.month).unwrap();
        for r in &rows {
            let sum = |reason: pikett_core::sla::Reason| -> u64 {
                explain.iter().filter(|a| a.window == r.window && a.reason == reason).map(|a| a.seconds).sum()
            };
            use pikett_core::sla::Reason::*;
            prop_assert_eq!(sum(Counted), r.counted_seconds);
            prop_assert_eq!(sum(Short), r.excused_seconds.short);
            prop_assert_eq!(sum(Maintenance), r.excused_seconds.maintenance);
            prop_assert_eq!(sum(ForceMajeure), r.excused_seconds.force_majeure);
            prop_assert_eq!(sum(Customer), r.excused_seconds.customer);
        }
    }
}

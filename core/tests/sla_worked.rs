//! Worked examples of the SLA arithmetic, each figure checked by hand in the comments.
//!
//! Contract: the documented example, `[sla.gold]` in docs/configuration.md (Europe/Berlin; core
//! 07:00–18:00 98%, off 18:00–07:00 90%; short outage < 5m, 2 per day, 3 per week; notice 7d;
//! caps core 2h, off 7h).
//! Calendar: 2026-03-01 is a Sunday; Berlin is CET (UTC+1) until Sun 2026-03-29 02:00, then
//! CEST (UTC+2); back to CET on Sun 2026-10-25 03:00.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use pikett_core::sla::{Cause, Contract, Ledger, Maintenance, Month, Outage, Reason, ReportRow, compute_month};

const CONTRACT: &str = r#"
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
response_target = "60m"
"#;

fn contract() -> Contract {
    Contract::from_toml(CONTRACT, "contract").unwrap()
}

/// Berlin local time `YYYY-MM-DD HH:MM` as an instant.
fn t(local: &str) -> Timestamp {
    let dt: DateTime = local.replace(' ', "T").parse().unwrap();
    TimeZone::get("Europe/Berlin").unwrap().to_timestamp(dt).unwrap()
}

fn outage(host: &str, from: &str, to: &str) -> Outage {
    Outage { host: host.into(), start: t(from), end: t(to), cause: Cause::None }
}

fn month(s: &str) -> Month {
    s.parse().unwrap()
}

fn row<'a>(rows: &'a [ReportRow], host: &str, window: &str) -> &'a ReportRow {
    rows.iter().find(|r| r.host == host && r.window == window).unwrap()
}

fn check_sum(r: &ReportRow) {
    assert_eq!(r.outage_seconds, r.counted_seconds + r.excused_seconds.total(), "{r:?}");
}

#[test]
fn dst_months_have_an_hour_less_or_more_in_the_night_window() {
    let c = contract();
    let mut ledger = Ledger::new(&c, &[], &[]).unwrap();
    ledger.add_host("web1");
    // March: core 31 × 11 h = 341 h = 1,227,600 s. off: 31 × 13 h = 403 h, minus the hour
    // skipped on 29 March (02:00 → 03:00) = 402 h = 1,447,200 s. Together 743 h = 31 × 24 − 1.
    let march = ledger.month(month("2026-03")).unwrap();
    assert_eq!(row(&march, "web1", "core").window_seconds, 1_227_600);
    assert_eq!(row(&march, "web1", "off").window_seconds, 1_447_200);
    // April (no change): off 30 × 13 h = 390 h = 1,404,000 s.
    let april = ledger.month(month("2026-04")).unwrap();
    assert_eq!(row(&april, "web1", "off").window_seconds, 1_404_000);
    // October: 31 × 13 h + the repeated hour on 25 October = 404 h = 1,454,400 s.
    let october = ledger.month(month("2026-10")).unwrap();
    assert_eq!(row(&october, "web1", "off").window_seconds, 1_454_400);
    assert_eq!(row(&october, "web1", "core").window_seconds, 1_227_600);
    let r = row(&march, "web1", "core");
    assert_eq!((r.availability, r.met, r.outage_seconds), (1.0, true, 0));
}

#[test]
fn outage_from_1750_to_0710_is_split_at_the_window_boundaries() {
    let c = contract();
    // Tue 10 March 17:50 → Wed 11 March 07:10 (all CET).
    let outages = [outage("web1", "2026-03-10 17:50", "2026-03-11 07:10")];
    let rows = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    // core: 17:50–18:00 (600 s) + 07:00–07:10 next morning (600 s) = 1,200 s, all counted
    // (13 h 20 m is far from short). availability = (1,227,600 − 1,200) / 1,227,600.
    let core = row(&rows, "web1", "core");
    assert_eq!((core.outage_seconds, core.counted_seconds), (1_200, 1_200));
    assert_eq!(core.availability, 1_226_400.0 / 1_227_600.0);
    assert!(core.met);
    // off: 18:00–07:00 = 13 h = 46,800 s counted; (1,447,200 − 46,800) / 1,447,200 = 0.96766 ≥ 90%.
    let off = row(&rows, "web1", "off");
    assert_eq!((off.outage_seconds, off.counted_seconds), (46_800, 46_800));
    assert!((off.availability - 0.967_661_691).abs() < 1e-9, "{}", off.availability);
    assert!(off.met);
    check_sum(core);
    check_sum(off);
}

#[test]
fn third_short_outage_of_a_day_counts() {
    let c = contract();
    // Wed 4 March, core window: 3 m, 4 m, 2 m. The first two are within 2 per day (and 3 per
    // week): excused 180 + 240 = 420 s. The third (rank 3 of its day) counts: 120 s.
    let outages = [
        outage("web1", "2026-03-04 10:00", "2026-03-04 10:03"),
        outage("web1", "2026-03-04 14:00", "2026-03-04 14:02"),
        outage("web1", "2026-03-04 12:00", "2026-03-04 12:04"),
    ];
    let ledger = Ledger::new(&c, &outages, &[]).unwrap();
    let rows = ledger.month(month("2026-03")).unwrap();
    let core = row(&rows, "web1", "core");
    assert_eq!(core.outage_seconds, 540);
    assert_eq!(core.excused_seconds.short, 420);
    assert_eq!(core.counted_seconds, 120);
    check_sum(core);
    // Ranked by start, not input order: the 14:00 one (input #1) is the one that counts.
    let explain = ledger.explain("web1", month("2026-03")).unwrap();
    let counted: Vec<usize> = explain.iter().filter(|a| a.reason == Reason::Counted).map(|a| a.outage).collect();
    assert_eq!(counted, vec![1]);
}

#[test]
fn fourth_short_outage_of_a_week_counts_and_weeks_cross_months() {
    let c = contract();
    let outages = [
        // Week Mon 23 Feb – Sun 1 Mar: three short ones in February use the week's allowance,
        // so the 3-minute one on Sun 1 March (4th of that week) counts in March: 180 s.
        outage("web1", "2026-02-24 10:00", "2026-02-24 10:04"),
        outage("web1", "2026-02-25 10:00", "2026-02-25 10:04"),
        outage("web1", "2026-02-26 10:00", "2026-02-26 10:04"),
        outage("web1", "2026-03-01 10:00", "2026-03-01 10:03"),
        // Week Mon 9 – Sun 15 March, one per day: Mon, Tue, Wed excused (3 × 180 = 540 s),
        // Thu is the 4th of the week: counted 180 s.
        outage("web1", "2026-03-09 10:00", "2026-03-09 10:03"),
        outage("web1", "2026-03-10 10:00", "2026-03-10 10:03"),
        outage("web1", "2026-03-11 10:00", "2026-03-11 10:03"),
        outage("web1", "2026-03-12 10:00", "2026-03-12 10:03"),
        // Mon 16 March starts a new week: excused, 180 s.
        outage("web1", "2026-03-16 10:00", "2026-03-16 10:03"),
    ];
    let rows = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    let core = row(&rows, "web1", "core");
    // March total: 180 (1 Mar) + 5 × 180 = 1,080 s; counted 180 + 180 = 360; short 720.
    assert_eq!(core.outage_seconds, 1_080);
    assert_eq!(core.counted_seconds, 360);
    assert_eq!(core.excused_seconds.short, 720);
    check_sum(core);
    // February: the three are 1st–3rd of their days and week: all excused (3 × 240 = 720).
    let feb = compute_month(&c, month("2026-02"), &outages, &[]).unwrap();
    let core = row(&feb, "web1", "core");
    assert_eq!((core.excused_seconds.short, core.counted_seconds), (720, 0));
}

#[test]
fn maintenance_needs_notice_and_is_capped_per_window_in_time_order() {
    let c = contract();
    let maintenance = [
        // Sat 14 March 22:00–02:00, announced 6 days ahead: not enough notice.
        Maintenance {
            host: "db1".into(),
            start: t("2026-03-14 22:00"),
            end: t("2026-03-15 02:00"),
            announced: t("2026-03-08 22:00"),
        },
        // Sat 21 March 06:00–10:00, announced 8 days ahead: excused up to the caps.
        Maintenance {
            host: "db1".into(),
            start: t("2026-03-21 06:00"),
            end: t("2026-03-21 10:00"),
            announced: t("2026-03-13 06:00"),
        },
        // Sat 28 March 08:00–12:00, announced 10 days ahead, but the core cap is used up.
        Maintenance {
            host: "db1".into(),
            start: t("2026-03-28 08:00"),
            end: t("2026-03-28 12:00"),
            announced: t("2026-03-18 08:00"),
        },
    ];
    let outages = [
        // Inside the 6-days-notice maintenance, off window: 1 h counted.
        outage("db1", "2026-03-14 22:10", "2026-03-14 23:10"),
        // Inside the 8-days-notice one: off 06:30–07:00 = 1,800 s (off cap 7 h: all excused);
        // core 07:00–09:30 = 9,000 s, cap 2 h = 7,200 s excused, the excess 1,800 s counts.
        outage("db1", "2026-03-21 06:30", "2026-03-21 09:30"),
        // 2 minutes inside the third maintenance: the core cap is exhausted, so it counts
        // (120 s) — and it is not excused as short, since rule 2 settled it.
        outage("db1", "2026-03-28 09:00", "2026-03-28 09:02"),
    ];
    let rows = compute_month(&c, month("2026-03"), &outages, &maintenance).unwrap();
    let core = row(&rows, "db1", "core");
    assert_eq!(core.outage_seconds, 9_000 + 120);
    assert_eq!(core.excused_seconds.maintenance, 7_200);
    assert_eq!(core.counted_seconds, 1_800 + 120);
    assert_eq!(core.excused_seconds.short, 0);
    let off = row(&rows, "db1", "off");
    assert_eq!(off.outage_seconds, 3_600 + 1_800);
    assert_eq!(off.excused_seconds.maintenance, 1_800);
    assert_eq!(off.counted_seconds, 3_600);
    check_sum(core);
    check_sum(off);
    // Caps are per month: in April the same core cap of 2 h is fresh again.
    let april_maint = [Maintenance {
        host: "db1".into(),
        start: t("2026-04-04 08:00"),
        end: t("2026-04-04 12:00"),
        announced: t("2026-03-20 08:00"),
    }];
    let april_outage = [outage("db1", "2026-04-04 08:00", "2026-04-04 09:00")];
    let rows = compute_month(&c, month("2026-04"), &april_outage, &april_maint).unwrap();
    assert_eq!(row(&rows, "db1", "core").excused_seconds.maintenance, 3_600);
}

#[test]
fn force_majeure_and_customer_outages_are_excused_whole() {
    let c = contract();
    let outages = [
        // Thu 19 March 12:00–15:00, force majeure: 3 h = 10,800 s core, excused.
        Outage { cause: Cause::ForceMajeure, ..outage("web1", "2026-03-19 12:00", "2026-03-19 15:00") },
        // Fri 20 March 20:00–21:00 by the customer's instruction: 3,600 s off, excused.
        Outage { cause: Cause::Customer, ..outage("web1", "2026-03-20 20:00", "2026-03-20 21:00") },
        // A 2-minute force-majeure blip is not "short" and takes no short allowance:
        // the next two short ones on 23 March are both excused.
        Outage { cause: Cause::ForceMajeure, ..outage("web1", "2026-03-23 09:00", "2026-03-23 09:02") },
        outage("web1", "2026-03-23 10:00", "2026-03-23 10:02"),
        outage("web1", "2026-03-23 11:00", "2026-03-23 11:02"),
    ];
    let rows = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    let core = row(&rows, "web1", "core");
    assert_eq!(core.excused_seconds.force_majeure, 10_800 + 120);
    assert_eq!(core.excused_seconds.short, 240);
    assert_eq!(core.counted_seconds, 0);
    assert_eq!(core.availability, 1.0);
    let off = row(&rows, "web1", "off");
    assert_eq!((off.excused_seconds.customer, off.counted_seconds), (3_600, 0));
    check_sum(core);
    check_sum(off);
}

#[test]
fn outage_across_the_month_end_counts_only_its_part_inside_each_month() {
    let c = contract();
    // Tue 31 March 23:00 → Wed 1 April 01:00 (CEST): one hour in each month's off window.
    let outages = [outage("web1", "2026-03-31 23:00", "2026-04-01 01:00")];
    let march = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    let april = compute_month(&c, month("2026-04"), &outages, &[]).unwrap();
    assert_eq!(row(&march, "web1", "off").counted_seconds, 3_600);
    assert_eq!(row(&april, "web1", "off").counted_seconds, 3_600);
    assert_eq!(row(&march, "web1", "core").outage_seconds, 0);
}

#[test]
fn breach_is_reported_against_the_exact_target() {
    let c = contract();
    // core in March = 1,227,600 s; 2% of it = 24,552 s. Counting exactly that meets 98%,
    // one second more breaches. 24,552 s = 6 h 49 m 12 s (10 March 09:00 → 15:49:12).
    let exact = [outage("web1", "2026-03-10 09:00", "2026-03-10 15:49:12")];
    let rows = compute_month(&c, month("2026-03"), &exact, &[]).unwrap();
    let core = row(&rows, "web1", "core");
    assert_eq!(core.counted_seconds, 24_552);
    assert!(core.met);
    let over = [outage("web1", "2026-03-10 09:00", "2026-03-10 15:49:13")];
    let rows = compute_month(&c, month("2026-03"), &over, &[]).unwrap();
    assert!(!row(&rows, "web1", "core").met);
}

#[test]
fn overlapping_outages_are_an_error_naming_both() {
    let c = contract();
    let outages = [
        outage("web1", "2026-03-10 09:00", "2026-03-10 10:00"),
        outage("web2", "2026-03-10 09:30", "2026-03-10 10:30"),
        outage("web1", "2026-03-10 09:30", "2026-03-10 10:30"),
    ];
    let err = compute_month(&c, month("2026-03"), &outages, &[]).unwrap_err().to_string();
    assert!(err.contains("web1") && err.contains("#0") && err.contains("#2"), "{err}");
}

#[test]
fn year_view_lists_each_month_per_window() {
    let c = contract();
    let outages = [outage("web1", "2026-03-10 17:50", "2026-03-11 07:10")];
    let ledger = Ledger::new(&c, &outages, &[]).unwrap();
    let year = ledger.year(2026).unwrap();
    assert_eq!(year.len(), 2);
    let off = year.iter().find(|r| r.window == "off").unwrap();
    assert_eq!(off.months.len(), 12);
    assert_eq!(off.months[2].month, "2026-03");
    assert!(off.months[2].availability < 1.0);
    assert!(off.months.iter().enumerate().all(|(i, m)| i == 2 || m.availability == 1.0));
    let table = pikett_core::sla::render_year_table(&year);
    assert!(table.contains("96.766%") && table.contains("2026-12"), "{table}");
}

#[test]
fn outage_across_the_spring_forward_night_lasts_the_real_time() {
    let c = contract();
    // Sat 28 March 23:00 CET (22:00Z) → Sun 29 March 05:00 CEST (03:00Z): 5 h of real time,
    // since 02:00–03:00 does not exist that night. All inside the off window: 18,000 s counted.
    let outages = [outage("web1", "2026-03-28 23:00", "2026-03-29 05:00")];
    let rows = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    let off = row(&rows, "web1", "off");
    assert_eq!((off.outage_seconds, off.counted_seconds), (18_000, 18_000));
}

#[test]
fn a_window_crossing_midnight_belongs_to_the_day_it_starts_on() {
    let text = r#"
timezone = "Europe/Berlin"
windows = [{ name = "fri-night", from = "22:00", to = "06:00", days = "fri", target = "99%" }]
"#;
    let c = Contract::from_toml(text, "contract").unwrap();
    let outages = [
        // Sat 7 March 02:00–03:00: inside Friday's window (Fri 22:00 → Sat 06:00): 3,600 s.
        outage("web1", "2026-03-07 02:00", "2026-03-07 03:00"),
        // Sun 8 March 02:00–03:00: Saturday has no window: not counted.
        outage("web1", "2026-03-08 02:00", "2026-03-08 03:00"),
        // Fri 13 March 21:00–23:00: only 22:00–23:00 is inside: 3,600 s.
        outage("web1", "2026-03-13 21:00", "2026-03-13 23:00"),
    ];
    let rows = compute_month(&c, month("2026-03"), &outages, &[]).unwrap();
    let r = row(&rows, "web1", "fri-night");
    assert_eq!(r.outage_seconds, 7_200);
    // Fridays in March 2026: 6, 13, 20, 27 → 4 × 8 h = 32 h = 115,200 s. Sun 1 March 00:00–06:00
    // belongs to Sat 28 Feb (not a Friday), so nothing before the 6th.
    assert_eq!(r.window_seconds, 115_200);
    // No short_outage configured: nothing excused.
    assert_eq!(r.counted_seconds, 7_200);
}

//! Benchmark: one year of SLA reports for 5,000 hosts with 20 outages each per month, offline.
//!
//! Run with `cargo bench -p pikett-core --bench sla_year` (release). Data is generated in memory with a fixed
//! seed; prints wall times of each stage. Goal: the year's computation under 5 s on 2 cores.

use std::fmt::Write as _;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use pikett_core::sla::offline::{parse_maintenance, parse_outages};
use pikett_core::sla::{Cause, Contract, Ledger, Maintenance, Month, Outage, run_offline};

const HOSTS: usize = 5_000;
const OUTAGES_PER_MONTH: usize = 20;
const YEAR: i16 = 2026;

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
"#;

/// A small deterministic generator (xorshift64*), so the benchmark needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generate() -> (Vec<Outage>, Vec<Maintenance>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outages = Vec::with_capacity(HOSTS * 12 * OUTAGES_PER_MONTH);
    let mut maintenance = Vec::with_capacity(HOSTS * 12 * 2);
    let year_start: Timestamp = "2026-01-01T00:00:00+01:00".parse().unwrap();
    // 20 slots of 36 h per 30-day "month" of the generator; one outage inside each slot, so a
    // host's outages never overlap.
    let slot = 36 * 3600i64;
    for h in 0..HOSTS {
        let host = format!("host{h:05}");
        for m in 0..12i64 {
            let month_start = year_start + SignedDuration::from_hours(m * 30 * 24);
            for k in 0..OUTAGES_PER_MONTH as i64 {
                let len = match rng.below(10) {
                    0..=4 => 30 + rng.below(270) as i64,      // short: under 5 minutes
                    5..=8 => 300 + rng.below(7_200) as i64,   // 5 minutes to 2 hours
                    _ => 7_200 + rng.below(20 * 3600) as i64, // 2 to 22 hours
                };
                let offset = rng.below((slot - len) as u64) as i64;
                let start = month_start + SignedDuration::from_secs(k * slot + offset);
                let cause = match rng.below(40) {
                    0 => Cause::ForceMajeure,
                    1 => Cause::Customer,
                    _ => Cause::None,
                };
                outages.push(Outage { host: host.clone(), start, end: start + SignedDuration::from_secs(len), cause });
            }
            for k in 0..2i64 {
                let start = month_start + SignedDuration::from_hours(100 + k * 300);
                let notice_days = if rng.below(2) == 0 { 8 } else { 5 };
                maintenance.push(Maintenance {
                    host: host.clone(),
                    start,
                    end: start + SignedDuration::from_hours(4),
                    announced: start - SignedDuration::from_hours(notice_days * 24),
                });
            }
        }
    }
    (outages, maintenance)
}

fn to_csv(outages: &[Outage], maintenance: &[Maintenance]) -> (String, String) {
    let mut o = String::from("host,start,end,cause\n");
    for x in outages {
        let cause = match x.cause {
            Cause::None => "",
            Cause::ForceMajeure => "force-majeure",
            Cause::Customer => "customer",
        };
        writeln!(o, "{},{},{},{}", x.host, x.start, x.end, cause).unwrap();
    }
    let mut m = String::from("host,start,end,announced\n");
    for x in maintenance {
        writeln!(m, "{},{},{},{}", x.host, x.start, x.end, x.announced).unwrap();
    }
    (o, m)
}

fn main() {
    let contract = Contract::from_toml(CONTRACT, "contract").unwrap();
    let months = Month::year_months(YEAR).unwrap();

    let t = Instant::now();
    let (outages, maintenance) = generate();
    println!(
        "generated {} outages and {} maintenances for {HOSTS} hosts in {:.2?} (not part of the goal)",
        outages.len(),
        maintenance.len(),
        t.elapsed()
    );

    let total = Instant::now();
    let t = Instant::now();
    let ledger = Ledger::new(&contract, &outages, &maintenance).unwrap();
    let t_group = t.elapsed();
    let t = Instant::now();
    let rows = ledger.months(&months).unwrap();
    let t_compute = t.elapsed();
    let t_total = total.elapsed();
    let counted: u64 = rows.iter().map(|r| r.counted_seconds).sum();
    let breached = rows.iter().filter(|r| !r.met).count();
    println!("group + sort + overlap check: {t_group:.2?}");
    println!("12 months x {HOSTS} hosts x 2 windows = {} rows: {t_compute:.2?}", rows.len());
    println!("pure year computation total: {t_total:.2?} (goal < 5 s)");
    println!("  (checksum: {counted} counted seconds, {breached} breached rows)");

    let (ocsv, mcsv) = to_csv(&outages, &maintenance);
    let t = Instant::now();
    let (parsed, _) = parse_outages(&ocsv, "outages.csv").unwrap();
    let parsed_m = parse_maintenance(&mcsv, "maintenance.csv").unwrap();
    let t_parse = t.elapsed();
    println!(
        "CSV parse of the year ({:.1} MB, {} + {} rows): {t_parse:.2?}",
        (ocsv.len() + mcsv.len()) as f64 / 1e6,
        parsed.len(),
        parsed_m.len()
    );
    assert_eq!(parsed.len(), outages.len());

    // What one `pikett-collector sla --month` run does on these files: parse, check, compute.
    let t = Instant::now();
    let rows = run_offline(CONTRACT, &ocsv, Some(&mcsv), "2026-06").unwrap();
    println!("offline run for one month from the year's CSV ({} rows out): {:.2?}", rows.len(), t.elapsed());
}

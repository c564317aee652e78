//! The SLA arithmetic: splits outages at window, day and month boundaries and attributes each second to one reason.
//!
//! Choices where the documented behaviour leaves room (also in the crate report):
//! - Window occurrences and outages are both cut at the calendar month's bounds (local
//!   midnight of the 1st); a window crossing midnight is *selected* by the weekday it starts on.
//! - Rule 2 takes an outage when any part of it lies inside an announced maintenance within a
//!   window that has a cap; the part beyond the cap then counts and the outage does not fall
//!   through to the short rule. (Letting it fall through would make availability rise when an
//!   earlier outage uses up the cap, and would make one window's cap change another's result.)
//! - The short rule ranks a host's short outages by start; "its day" and "its week" are the
//!   local date and ISO week of the outage's start; an outage with no second inside any service
//!   window is not ranked. Ranks span month boundaries (a week may start in the previous
//!   month), so pass the outages of the days before the month too.
//! - A window without a `maintenance_cap` entry excuses no maintenance.
//! - Outages touching end-to-start are two outages (only overlaps are an error);
//!   [`merge_overlapping`] joins touching intervals too.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;

use super::contract::Contract;
use super::{Cause, ExcusedSeconds, Maintenance, Month, Outage, ReportRow, SlaError};

/// A half-open time interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Merges overlapping or touching intervals (live: overlapping faults of a host become one
/// outage) and drops empty ones; the result is sorted by start.
pub fn merge_overlapping(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.retain(|i| i.end > i.start);
    intervals.sort_by_key(|i| i.start);
    let mut out: Vec<Interval> = Vec::with_capacity(intervals.len());
    for i in intervals {
        match out.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => out.push(i),
        }
    }
    out
}

/// What a second of outage was attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Counted,
    Short,
    Maintenance,
    ForceMajeure,
    Customer,
}

/// Seconds of one input outage in one window attributed to one reason (see [`Ledger::explain`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Position of the outage in the slice given to [`Ledger::new`].
    pub outage: usize,
    pub window: String,
    pub reason: Reason,
    pub seconds: u64,
}

/// One month's figures of a host and window in the year view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthCell {
    pub month: String,
    pub window_seconds: u64,
    pub counted_seconds: u64,
    pub availability: f64,
    pub met: bool,
}

/// A host's monthly availability of one window over a run of months.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YearRow {
    pub host: String,
    pub window: String,
    pub target: f64,
    pub months: Vec<MonthCell>,
}

/// Pivots monthly report rows into one row per host and window (hosts sorted, windows in
/// first-seen order, months in input order).
pub fn year_rows(rows: &[ReportRow]) -> Vec<YearRow> {
    let mut out: Vec<YearRow> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for r in rows {
        let i = *index.entry((&r.host, &r.window)).or_insert_with(|| {
            out.push(YearRow { host: r.host.clone(), window: r.window.clone(), target: r.target, months: Vec::new() });
            out.len() - 1
        });
        out[i].months.push(MonthCell {
            month: r.month.clone(),
            window_seconds: r.window_seconds,
            counted_seconds: r.counted_seconds,
            availability: r.availability,
            met: r.met,
        });
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    out
}

/// Computes one month's report for every host named in `outages` or `maintenance`.
pub fn compute_month(
    contract: &Contract,
    month: Month,
    outages: &[Outage],
    maintenance: &[Maintenance],
) -> Result<Vec<ReportRow>, SlaError> {
    Ledger::new(contract, outages, maintenance)?.month(month)
}

/// The year view: each month of `year`, per host (sorted) and window, from the same input as
/// [`compute_month`].
pub fn year_view(
    contract: &Contract,
    year: i16,
    outages: &[Outage],
    maintenance: &[Maintenance],
) -> Result<Vec<YearRow>, SlaError> {
    Ledger::new(contract, outages, maintenance)?.year(year)
}

#[derive(Debug, Clone, Copy)]
struct Prepared {
    s: i64,
    e: i64,
    cause: Cause,
    idx: usize,
}

#[derive(Debug, Default)]
struct HostData {
    /// Sorted by start, non-overlapping (so also sorted by end).
    outages: Vec<Prepared>,
    /// Maintenance announced early enough, merged, sorted.
    maint: Vec<(i64, i64)>,
}

/// A contract's outages and maintenance grouped per host, ready for month reports.
#[derive(Debug)]
pub struct Ledger<'c> {
    contract: &'c Contract,
    hosts: BTreeMap<String, HostData>,
}

impl<'c> Ledger<'c> {
    /// Groups and checks the input: an outage or maintenance must end after it starts, and a
    /// host's outages must not overlap (merge live faults with [`merge_overlapping`] first).
    pub fn new(
        contract: &'c Contract,
        outages: &[Outage],
        maintenance: &[Maintenance],
    ) -> Result<Ledger<'c>, SlaError> {
        let mut grouped: BTreeMap<&str, Vec<(usize, &Outage)>> = BTreeMap::new();
        for (i, o) in outages.iter().enumerate() {
            if o.end <= o.start {
                return Err(SlaError::EmptyInterval {
                    what: "outage",
                    host: o.host.clone(),
                    start: o.start,
                    end: o.end,
                });
            }
            grouped.entry(&o.host).or_default().push((i, o));
        }
        let mut hosts: BTreeMap<String, HostData> = BTreeMap::new();
        for (host, mut list) in grouped {
            list.sort_by_key(|(_, o)| o.start);
            for pair in list.windows(2) {
                if pair[1].1.start < pair[0].1.end {
                    return Err(SlaError::Overlapping { host: host.to_string(), first: pair[0].0, second: pair[1].0 });
                }
            }
            let prepared = list
                .iter()
                .map(|(i, o)| Prepared { s: o.start.as_second(), e: o.end.as_second(), cause: o.cause, idx: *i })
                .collect();
            hosts.insert(host.to_string(), HostData { outages: prepared, maint: Vec::new() });
        }
        let notice = i64::try_from(contract.maintenance_notice.as_secs()).unwrap_or(i64::MAX);
        let mut maint: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
        for m in maintenance {
            if m.end <= m.start {
                return Err(SlaError::EmptyInterval {
                    what: "maintenance",
                    host: m.host.clone(),
                    start: m.start,
                    end: m.end,
                });
            }
            let list = maint.entry(&m.host).or_default();
            // Announced at least `maintenance_notice` before the maintenance's start.
            if m.start.as_second().saturating_sub(m.announced.as_second()) >= notice {
                list.push(Interval { start: m.start, end: m.end });
            }
        }
        for (host, list) in maint {
            let merged = merge_overlapping(list)
                .into_iter()
                .map(|i| (i.start.as_second(), i.end.as_second()))
                .filter(|(s, e)| e > s)
                .collect();
            hosts.entry(host.to_string()).or_default().maint = merged;
        }
        Ok(Ledger { contract, hosts })
    }

    /// Makes `host` appear in reports even without outages (live: every host of the customer).
    pub fn add_host(&mut self, host: &str) {
        self.hosts.entry(host.to_string()).or_default();
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// One row per host (sorted) and window (contract order).
    pub fn month(&self, month: Month) -> Result<Vec<ReportRow>, SlaError> {
        self.months(&[month])
    }

    /// Rows of several months, month by month.
    pub fn months(&self, months: &[Month]) -> Result<Vec<ReportRow>, SlaError> {
        let mut rows = Vec::with_capacity(months.len() * self.hosts.len() * self.contract.windows.len());
        for &month in months {
            let frame = MonthFrame::new(self.contract, month)?;
            let label = month.to_string();
            let mut totals = vec![ExcusedTotals::default(); frame.windows.len()];
            let mut scratch = Scratch::default();
            for (host, data) in &self.hosts {
                totals.iter_mut().for_each(|t| *t = ExcusedTotals::default());
                attribute(self.contract, &frame, data, &mut scratch, |_, w, reason, secs| totals[w].add(reason, secs))?;
                for (spec, (wf, t)) in self.contract.windows.iter().zip(frame.windows.iter().zip(&totals)) {
                    let ws = wf.seconds;
                    let good = ws - t.counted.min(ws);
                    rows.push(ReportRow {
                        host: host.clone(),
                        month: label.clone(),
                        window: spec.name.clone(),
                        window_seconds: ws,
                        outage_seconds: t.counted + t.excused.total(),
                        counted_seconds: t.counted,
                        excused_seconds: t.excused,
                        availability: if ws == 0 { 1.0 } else { good as f64 / ws as f64 },
                        target: spec.target.as_fraction(),
                        met: spec.target.is_met(good, ws),
                    });
                }
            }
        }
        Ok(rows)
    }

    /// The twelve months of `year`, one [`YearRow`] per host and window.
    pub fn year(&self, year: i16) -> Result<Vec<YearRow>, SlaError> {
        Ok(year_rows(&self.months(&Month::year_months(year)?)?))
    }

    /// Per outage and window, the seconds of `month` attributed to each reason (for incident
    /// reports). Empty when the host is unknown.
    pub fn explain(&self, host: &str, month: Month) -> Result<Vec<Attribution>, SlaError> {
        let Some(data) = self.hosts.get(host) else {
            return Ok(Vec::new());
        };
        let frame = MonthFrame::new(self.contract, month)?;
        let mut out: Vec<Attribution> = Vec::new();
        let windows = &self.contract.windows;
        attribute(self.contract, &frame, data, &mut Scratch::default(), |o, w, reason, secs| {
            match out.iter_mut().find(|a| a.outage == o && a.window == windows[w].name && a.reason == reason) {
                Some(a) => a.seconds += secs,
                None => out.push(Attribution { outage: o, window: windows[w].name.clone(), reason, seconds: secs }),
            }
        })?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ExcusedTotals {
    counted: u64,
    excused: ExcusedSeconds,
}

impl ExcusedTotals {
    fn add(&mut self, reason: Reason, secs: u64) {
        match reason {
            Reason::Counted => self.counted += secs,
            Reason::Short => self.excused.short += secs,
            Reason::Maintenance => self.excused.maintenance += secs,
            Reason::ForceMajeure => self.excused.force_majeure += secs,
            Reason::Customer => self.excused.customer += secs,
        }
    }
}

/// A window's occurrences around one month, as Unix seconds.
#[derive(Debug)]
struct WindowFrame {
    /// Sorted, disjoint; covers the month plus margins (see [`MonthFrame::new`]).
    occ: Vec<(i64, i64)>,
    /// Window seconds inside the month.
    seconds: u64,
    cap: u64,
}

/// A month's bounds and window occurrences in Unix seconds, computed once per month.
#[derive(Debug)]
struct MonthFrame {
    tz: TimeZone,
    start: i64,
    end: i64,
    /// Outages ending at or before this cannot influence this month (their week is over).
    rank_from: i64,
    windows: Vec<WindowFrame>,
}

/// Days before the month whose short outages can share an ISO week with one in the month.
const MARGIN_DAYS: i64 = 9;

impl MonthFrame {
    fn new(contract: &Contract, month: Month) -> Result<MonthFrame, SlaError> {
        let tz = contract.timezone.tz().clone();
        let first = month.first_day();
        let next_first = month.next().first_day();
        let midnight = |d: Date| -> Result<i64, SlaError> { Ok(tz.to_timestamp(d.at(0, 0, 0, 0))?.as_second()) };
        let start = midnight(first)?;
        let end = midnight(next_first)?;
        let short = contract.short_outage.as_secs() as i64;
        let rank_from = midnight(first.checked_sub(jiff::Span::new().days(MARGIN_DAYS))?)? - short;
        // Occurrences from a day before rank_from (minus a short outage, which is < 1 day) to
        // a day after the month plus a short outage.
        let mut day = first.checked_sub(jiff::Span::new().days(MARGIN_DAYS + 3))?;
        let last = next_first.checked_add(jiff::Span::new().days(2))?;
        let mut windows: Vec<WindowFrame> = contract
            .windows
            .iter()
            .map(|w| WindowFrame { occ: Vec::with_capacity(48), seconds: 0, cap: contract.cap_seconds(&w.name) })
            .collect();
        while day <= last {
            for (spec, wf) in contract.windows.iter().zip(windows.iter_mut()) {
                if !spec.days.contains(day.weekday()) {
                    continue;
                }
                let s = tz.to_timestamp(spec.from.on(day)?)?.as_second();
                let end_day = if spec.to <= spec.from { day.tomorrow()? } else { day };
                let e = tz.to_timestamp(spec.to.on(end_day)?)?.as_second();
                if e > s {
                    wf.seconds += overlap(s, e, start, end);
                    wf.occ.push((s, e));
                }
            }
            day = day.tomorrow()?;
        }
        Ok(MonthFrame { tz, start, end, rank_from, windows })
    }
}

fn overlap(a: i64, b: i64, c: i64, d: i64) -> u64 {
    (b.min(d) - a.max(c)).max(0) as u64
}

/// Calls `f` for each non-empty piece of `[s, e)` inside the sorted disjoint `set`.
fn pieces(set: &[(i64, i64)], s: i64, e: i64, mut f: impl FnMut(i64, i64)) {
    let mut i = set.partition_point(|&(_, end)| end <= s);
    while let Some(&(a, b)) = set.get(i) {
        if a >= e {
            break;
        }
        let (ps, pe) = (a.max(s), b.min(e));
        if pe > ps {
            f(ps, pe);
        }
        i += 1;
    }
}

fn covered(set: &[(i64, i64)], s: i64, e: i64) -> u64 {
    let mut n = 0;
    pieces(set, s, e, |a, b| n += (b - a) as u64);
    n
}

/// Per-host working memory reused across hosts.
#[derive(Default)]
struct Scratch {
    cap_left: Vec<u64>,
    day_ranks: Vec<(Date, u32)>,
    week_ranks: Vec<((i16, i8), u32)>,
}

/// Returns the rank (0-based) of a new member of `key`'s group and counts it.
fn bump<K: PartialEq>(ranks: &mut Vec<(K, u32)>, key: K) -> u32 {
    match ranks.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => {
            *n += 1;
            *n - 1
        }
        None => {
            ranks.push((key, 1));
            0
        }
    }
}

/// The attribution of outages for one host and month; `sink(outage, window, reason, seconds)`
/// receives every counted or excused second inside the month's windows exactly once.
fn attribute(
    contract: &Contract,
    frame: &MonthFrame,
    host: &HostData,
    scratch: &mut Scratch,
    mut sink: impl FnMut(usize, usize, Reason, u64),
) -> Result<(), SlaError> {
    scratch.cap_left.clear();
    scratch.cap_left.extend(frame.windows.iter().map(|w| w.cap));
    scratch.day_ranks.clear();
    scratch.week_ranks.clear();
    let short = contract.short_outage.as_secs() as i64;
    let max_day = contract.short_outage_max_per_day.unwrap_or(u32::MAX);
    let max_week = contract.short_outage_max_per_week.unwrap_or(u32::MAX);

    let from = host.outages.partition_point(|o| o.e <= frame.rank_from);
    let to = host.outages.partition_point(|o| o.s < frame.end);
    for o in &host.outages[from..to.max(from)] {
        // The outage's parts inside the month.
        let (ms, me) = (o.s.max(frame.start), o.e.min(frame.end));
        let attribute_all = |reason: Reason, sink: &mut dyn FnMut(usize, usize, Reason, u64)| {
            for (w, wf) in frame.windows.iter().enumerate() {
                pieces(&wf.occ, ms, me, |a, b| sink(o.idx, w, reason, (b - a) as u64));
            }
        };
        match o.cause {
            Cause::ForceMajeure => attribute_all(Reason::ForceMajeure, &mut sink),
            Cause::Customer => attribute_all(Reason::Customer, &mut sink),
            Cause::None => {
                let in_maintenance = !host.maint.is_empty()
                    && frame.windows.iter().any(|wf| {
                        let mut hit = false;
                        pieces(&wf.occ, o.s, o.e, |a, b| hit |= wf.cap > 0 && covered(&host.maint, a, b) > 0);
                        hit
                    });
                if in_maintenance {
                    for (w, wf) in frame.windows.iter().enumerate() {
                        let cap_left = &mut scratch.cap_left[w];
                        pieces(&wf.occ, ms, me, |a, b| {
                            let len = (b - a) as u64;
                            let take = covered(&host.maint, a, b).min(*cap_left);
                            *cap_left -= take;
                            if take > 0 {
                                sink(o.idx, w, Reason::Maintenance, take);
                            }
                            if len > take {
                                sink(o.idx, w, Reason::Counted, len - take);
                            }
                        });
                    }
                    continue;
                }
                let mut reason = Reason::Counted;
                if o.e - o.s < short && frame.windows.iter().any(|wf| covered(&wf.occ, o.s, o.e) > 0) {
                    let date = frame.tz.to_datetime(Timestamp::from_second(o.s)?).date();
                    let week = date.iso_week_date();
                    let day_rank = bump(&mut scratch.day_ranks, date);
                    let week_rank = bump(&mut scratch.week_ranks, (week.year(), week.week()));
                    if day_rank < max_day && week_rank < max_week {
                        reason = Reason::Short;
                    }
                }
                attribute_all(reason, &mut sink);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn merge_joins_overlapping_and_touching_and_drops_empty() {
        let i = |a: &str, b: &str| Interval { start: ts(a), end: ts(b) };
        let merged = merge_overlapping(vec![
            i("2026-03-01T10:20:00Z", "2026-03-01T10:40:00Z"),
            i("2026-03-01T10:00:00Z", "2026-03-01T10:30:00Z"),
            i("2026-03-01T10:40:00Z", "2026-03-01T10:50:00Z"),
            i("2026-03-01T12:00:00Z", "2026-03-01T12:00:00Z"),
            i("2026-03-01T13:00:00Z", "2026-03-01T13:05:00Z"),
        ]);
        assert_eq!(
            merged,
            vec![i("2026-03-01T10:00:00Z", "2026-03-01T10:50:00Z"), i("2026-03-01T13:00:00Z", "2026-03-01T13:05:00Z")]
        );
    }

    #[test]
    fn pieces_cut_at_set_bounds() {
        let set = [(0, 10), (20, 30), (40, 50)];
        let mut got = Vec::new();
        pieces(&set, 5, 45, |a, b| got.push((a, b)));
        assert_eq!(got, vec![(5, 10), (20, 30), (40, 45)]);
        assert_eq!(covered(&set, 10, 20), 0);
        assert_eq!(covered(&set, -5, 100), 30);
    }

    #[test]
    fn bump_ranks_in_order() {
        let mut r = Vec::new();
        assert_eq!(bump(&mut r, 1), 0);
        assert_eq!(bump(&mut r, 1), 1);
        assert_eq!(bump(&mut r, 2), 0);
        assert_eq!(bump(&mut r, 1), 2);
    }
}

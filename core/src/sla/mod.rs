//! SLA accounting (`[sla.NAME]` in docs/configuration.md): contracts, outages and maintenance in,
//! per host and window availability out.
//!
//! Everything here is pure: no I/O (the offline command reads its files in the collector),
//! and the clock is never read — callers pass every time in. The live collector derives
//! [`Outage`]s from its fault history (merging overlapping faults with [`merge_overlapping`]),
//! the offline command reads them from CSV ([`offline`]); both end in [`Ledger`].
//!
//! Attribution of one outage, in order (see [`compute`] for the details chosen where the
//! documented behaviour leaves room):
//! 1. cause force majeure / customer → all of it excused under that reason;
//! 2. parts inside an announced maintenance → excused while the window's monthly cap lasts,
//!    the excess counts;
//! 3. otherwise a short outage within the per-day and per-week allowances → excused as short;
//! 4. the rest counts.

pub mod compute;
pub mod contract;
pub mod credits;
mod decimal;
pub mod live;
pub mod offline;
pub mod render;
pub mod response;

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

pub use compute::{
    Attribution, Interval, Ledger, MonthCell, Reason, YearRow, compute_month, merge_overlapping, year_rows, year_view,
};
pub use contract::{Contract, Target, TimeOfDay, Timezone, Weekdays, WindowSpec};
pub use offline::{run_offline, run_offline_named};
pub use render::{render_csv, render_json_lines, render_table, render_year_table};
pub use response::{Emergency, ResponseSummary, response_summary};

/// Why an outage happened, as classified by staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Not classified: the SLA rules decide.
    #[default]
    None,
    ForceMajeure,
    /// Caused by the customer's instruction.
    Customer,
}

impl FromStr for Cause {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "none" => Ok(Cause::None),
            "force-majeure" => Ok(Cause::ForceMajeure),
            "customer" => Ok(Cause::Customer),
            other => Err(format!("unknown cause {other:?} (expected empty, \"force-majeure\" or \"customer\")")),
        }
    }
}

/// A period during which a host's SLA-relevant checks were CRITICAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub host: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub cause: Cause,
}

/// A planned maintenance of a host and when it was announced to the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    pub host: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub announced: Timestamp,
}

/// A calendar month (`YYYY-MM`), interpreted in a contract's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i16,
    month: i8,
}

impl Month {
    /// `month` is 1..=12; years 1000..=9998 (leaves room for the margins the computation needs).
    pub fn new(year: i16, month: i8) -> Result<Month, SlaError> {
        if !(1..=12).contains(&month) || !(1000..=9998).contains(&year) {
            return Err(SlaError::Month(format!("{year:04}-{month:02}")));
        }
        Ok(Month { year, month })
    }
    pub fn year(self) -> i16 {
        self.year
    }
    pub fn month(self) -> i8 {
        self.month
    }
    pub fn first_day(self) -> Date {
        // Valid by construction (year and month checked in `new`).
        Date::new(self.year, self.month, 1).expect("validated month")
    }
    /// The following month (December → January of the next year).
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        }
    }
    /// The twelve months of `year`.
    pub fn year_months(year: i16) -> Result<Vec<Month>, SlaError> {
        (1..=12).map(|m| Month::new(year, m)).collect()
    }
}

impl FromStr for Month {
    type Err = SlaError;
    fn from_str(s: &str) -> Result<Month, SlaError> {
        let bad = || SlaError::Month(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i16 = y.parse().map_err(|_| bad())?;
        let month: i8 = m.parse().map_err(|_| bad())?;
        Month::new(year, month).map_err(|_| bad())
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Excused seconds by reason (the JSON object `excused_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ExcusedSeconds {
    pub short: u64,
    pub maintenance: u64,
    pub force_majeure: u64,
    pub customer: u64,
}

impl ExcusedSeconds {
    pub fn total(&self) -> u64 {
        self.short + self.maintenance + self.force_majeure + self.customer
    }
}

/// One host and window in one month: the SLA report's JSON line (docs/cli.md), field for field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub host: String,
    /// `YYYY-MM`.
    pub month: String,
    pub window: String,
    pub window_seconds: u64,
    /// All outage time inside the window (= counted + all excused).
    pub outage_seconds: u64,
    pub counted_seconds: u64,
    pub excused_seconds: ExcusedSeconds,
    /// (window − counted) / window, a fraction in 0..=1 at full precision.
    pub availability: f64,
    /// The window's target as a fraction.
    pub target: f64,
    pub met: bool,
}

/// Everything that can go wrong in SLA accounting; each message names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum SlaError {
    #[error("{source_name}: {message}")]
    ContractToml { source_name: String, message: String },
    #[error("SLA contract: {0}")]
    Contract(String),
    #[error("invalid month {0:?}: expected YYYY-MM")]
    Month(String),
    #[error("{source_name}: {}", format_row_errors(.errors))]
    Csv { source_name: String, errors: Vec<RowError> },
    #[error("{source_name}: outages of host {host:?} overlap: line {first_line} and line {second_line}")]
    OverlappingRows { source_name: String, host: String, first_line: u64, second_line: u64 },
    #[error(
        "outages of host {host:?} overlap: outage #{first} and outage #{second} (0-based input positions); merge them first"
    )]
    Overlapping { host: String, first: usize, second: usize },
    #[error("{what} of host {host:?}: end {end} is not after start {start}")]
    EmptyInterval { what: &'static str, host: String, start: Timestamp, end: Timestamp },
    #[error("time computation out of range: {0}")]
    Time(String),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A malformed CSV row: its 1-based line number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

fn format_row_errors(errors: &[RowError]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| format!("line {}: {}", e.line, e.message)).collect();
    parts.join("; ")
}

impl From<jiff::Error> for SlaError {
    fn from(e: jiff::Error) -> Self {
        SlaError::Time(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_parses_and_rejects() {
        let m: Month = "2026-03".parse().unwrap();
        assert_eq!((m.year(), m.month()), (2026, 3));
        assert_eq!(m.to_string(), "2026-03");
        assert_eq!(m.next().to_string(), "2026-04");
        assert_eq!("2026-12".parse::<Month>().unwrap().next().to_string(), "2027-01");
        for bad in ["2026-13", "2026-3", "26-03", "2026/03", "", "2026-00"] {
            assert!(bad.parse::<Month>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cause_parses_csv_values() {
        assert_eq!("".parse::<Cause>().unwrap(), Cause::None);
        assert_eq!("force-majeure".parse::<Cause>().unwrap(), Cause::ForceMajeure);
        assert_eq!("customer".parse::<Cause>().unwrap(), Cause::Customer);
        let err = "act-of-god".parse::<Cause>().unwrap_err();
        assert!(err.contains("act-of-god"), "{err}");
    }
}

//! Patch-day arithmetic (`[patches]` in docs/configuration.md): the monthly patch day, and a host's
//! compliance from its pending updates.
//!
//! Pure: callers pass `now` and the time zone. Rules, with the choices where the documented behaviour leaves room:
//! - an update is "available since" the earlier of its release time (when known) and when the
//!   collector first saw it pending;
//! - `due`: an update available since before the last patch day (local midnight starting it);
//! - `overdue`: an update available since before a patch day that lies a week or more in the
//!   past (now ≥ that patch day's midnight + 7 days, local calendar) — it stays overdue after
//!   the next patch day;
//! - otherwise `compliant` (updates released after the last patch day wait for the next one);
//! - a Critical security update is out of cycle when available since more than
//!   `critical_patch_days` × 24 h.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::calendar::weekday_from_name;

/// Errors of patch-day arithmetic.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("invalid patch_day {0:?}: expected \"<1st|2nd|3rd|4th|last> <weekday>\", e.g. \"2nd tue\"")]
    Parse(String),
    #[error("patch day computation out of range: {0}")]
    Time(#[from] jiff::Error),
}

/// A monthly patch day such as "2nd tue" or "last fri".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchDay {
    /// 1..=4, or -1 for the last.
    nth: i8,
    weekday: Weekday,
}

impl PatchDay {
    /// The patch day in a given month.
    pub fn in_month(self, year: i16, month: i8) -> Result<Date, PatchError> {
        Ok(Date::new(year, month, 1)?.nth_weekday_of_month(self.nth, self.weekday)?)
    }
}

impl FromStr for PatchDay {
    type Err = PatchError;
    fn from_str(s: &str) -> Result<Self, PatchError> {
        let bad = || PatchError::Parse(s.to_string());
        let mut words = s.split_whitespace();
        let (Some(ord), Some(day), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let nth = match ord.to_ascii_lowercase().as_str() {
            "1st" | "first" => 1,
            "2nd" | "second" => 2,
            "3rd" | "third" => 3,
            "4th" | "fourth" => 4,
            "last" => -1,
            _ => return Err(bad()),
        };
        let weekday = weekday_from_name(day).ok_or_else(bad)?;
        Ok(PatchDay { nth, weekday })
    }
}

impl fmt::Display for PatchDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ord = match self.nth {
            1 => "1st",
            2 => "2nd",
            3 => "3rd",
            4 => "4th",
            _ => "last",
        };
        let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self.weekday.to_monday_zero_offset() as usize];
        write!(f, "{ord} {day}")
    }
}

impl<'de> Deserialize<'de> for PatchDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Patch settings (e.g. a `[patches]` table): `patch_day` (default "2nd tue"),
/// `critical_patch_days` (default 3), `timezone` (optional: when absent the caller uses the
/// customer's SLA contract time zone, or UTC).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchPolicy {
    #[serde(default = "default_patch_day")]
    pub patch_day: PatchDay,
    #[serde(default = "default_critical_patch_days")]
    pub critical_patch_days: u32,
    #[serde(default)]
    pub timezone: Option<crate::sla::Timezone>,
}

impl Default for PatchPolicy {
    fn default() -> Self {
        PatchPolicy {
            patch_day: default_patch_day(),
            critical_patch_days: default_critical_patch_days(),
            timezone: None,
        }
    }
}

fn default_patch_day() -> PatchDay {
    PatchDay { nth: 2, weekday: Weekday::Tuesday }
}

fn default_critical_patch_days() -> u32 {
    3
}

/// The most recent patch day on or before `now`'s local date in `tz`.
pub fn last_patch_day(patch_day: PatchDay, now: Timestamp, tz: &TimeZone) -> Result<Date, PatchError> {
    let today = tz.to_datetime(now).date();
    let this_month = patch_day.in_month(today.year(), today.month())?;
    if this_month <= today {
        return Ok(this_month);
    }
    let prev = today.first_of_month().yesterday()?;
    patch_day.in_month(prev.year(), prev.month())
}

/// One pending update of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpdate {
    pub name: String,
    /// When the collector first saw it pending on this host.
    pub first_seen: Timestamp,
    /// The vendor's release (advisory issue) time, when known.
    pub released: Option<Timestamp>,
    pub security: bool,
    /// Vendor severity, e.g. `Critical`, `Important`, `Moderate`, `Low`.
    pub severity: Option<String>,
}

impl PendingUpdate {
    /// The earlier of release and first sight.
    pub fn available_since(&self) -> Timestamp {
        self.released.map_or(self.first_seen, |r| r.min(self.first_seen))
    }
    pub fn is_critical_security(&self) -> bool {
        self.security && self.severity.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("critical"))
    }
}

/// A host's patch compliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compliance {
    Compliant,
    Due,
    Overdue,
}

impl fmt::Display for Compliance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compliance::Compliant => "compliant",
            Compliance::Due => "due",
            Compliance::Overdue => "overdue",
        })
    }
}

/// The classification and what drove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchStatus {
    pub state: Compliance,
    pub last_patch_day: Date,
    pub pending: usize,
    /// Updates due (available before the last patch day, grace week not over).
    pub due: Vec<String>,
    pub overdue: Vec<String>,
}

/// Classifies a host from its pending updates (see the module docs for the rules).
pub fn classify(
    updates: &[PendingUpdate],
    patch_day: PatchDay,
    tz: &TimeZone,
    now: Timestamp,
) -> Result<PatchStatus, PatchError> {
    let last = last_patch_day(patch_day, now, tz)?;
    let midnight = |d: Date| tz.to_timestamp(d.at(0, 0, 0, 0));
    let last_start = midnight(last)?;
    // The latest patch day whose grace week is over: the last one, or the one before it.
    let overdue_from = if midnight(last.checked_add(Span::new().days(7))?)? <= now {
        last_start
    } else {
        let prev = last.first_of_month().yesterday()?;
        midnight(patch_day.in_month(prev.year(), prev.month())?)?
    };
    let mut status = PatchStatus {
        state: Compliance::Compliant,
        last_patch_day: last,
        pending: updates.len(),
        due: Vec::new(),
        overdue: Vec::new(),
    };
    for u in updates {
        let since = u.available_since();
        if since < overdue_from {
            status.overdue.push(u.name.clone());
        } else if since < last_start {
            status.due.push(u.name.clone());
        }
    }
    status.state = if !status.overdue.is_empty() {
        Compliance::Overdue
    } else if !status.due.is_empty() {
        Compliance::Due
    } else {
        Compliance::Compliant
    };
    Ok(status)
}

/// Critical security updates pending longer than `critical_patch_days` days (24 h each): the
/// warning fault for out-of-cycle installation.
pub fn critical_overdue(updates: &[PendingUpdate], critical_patch_days: u32, now: Timestamp) -> Vec<&PendingUpdate> {
    let limit = i64::from(critical_patch_days) * 86_400;
    updates
        .iter()
        .filter(|u| u.is_critical_security() && now.as_second() - u.available_since().as_second() > limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn update(name: &str, first_seen: &str, released: Option<&str>) -> PendingUpdate {
        PendingUpdate {
            name: name.into(),
            first_seen: ts(first_seen),
            released: released.map(ts),
            security: false,
            severity: None,
        }
    }

    #[test]
    fn second_tuesday_of_several_months() {
        let p: PatchDay = "2nd tue".parse().unwrap();
        // Checked against a calendar: 2026-01-01 is a Thursday → Tuesdays 6, 13.
        assert_eq!(p.in_month(2026, 1).unwrap(), date(2026, 1, 13));
        // 2026-09-01 is a Tuesday → 1st Tue is the 1st, 2nd is the 8th.
        assert_eq!(p.in_month(2026, 9).unwrap(), date(2026, 9, 8));
        // 2026-11-01 is a Sunday → Tuesdays 3, 10.
        assert_eq!(p.in_month(2026, 11).unwrap(), date(2026, 11, 10));
        // 2027-02-01 is a Monday → Tuesdays 2, 9.
        assert_eq!(p.in_month(2027, 2).unwrap(), date(2027, 2, 9));
        let last: PatchDay = "last fri".parse().unwrap();
        // 2026-10-31 is a Saturday → last Friday the 30th.
        assert_eq!(last.in_month(2026, 10).unwrap(), date(2026, 10, 30));
        assert_eq!(p.to_string(), "2nd tue");
        assert_eq!("Second Tuesday".parse::<PatchDay>().unwrap(), p);
    }

    #[test]
    fn policy_defaults_and_unknown_keys() {
        let p: PatchPolicy = toml::from_str("").unwrap();
        assert_eq!((p.patch_day.to_string(), p.critical_patch_days), ("2nd tue".into(), 3));
        let p: PatchPolicy =
            toml::from_str("patch_day = \"last fri\"\ncritical_patch_days = 5\ntimezone = \"Europe/Berlin\"").unwrap();
        assert_eq!(p.patch_day.to_string(), "last fri");
        assert_eq!(p.timezone.unwrap().name(), "Europe/Berlin");
        let err = toml::from_str::<PatchPolicy>("patchday = \"2nd tue\"").unwrap_err().to_string();
        assert!(err.contains("patchday"), "{err}");
        let err = toml::from_str::<PatchPolicy>("patch_day = \"2nd tuesdy\"").unwrap_err().to_string();
        assert!(err.contains("2nd tuesdy"), "{err}");
    }

    #[test]
    fn bad_patch_days_are_rejected() {
        for bad in ["2nd", "5th tue", "2nd tues", "", "2nd tue extra", "every tue"] {
            let err = bad.parse::<PatchDay>().unwrap_err().to_string();
            assert!(err.contains("2nd tue"), "{err}");
        }
    }

    #[test]
    fn last_patch_day_uses_local_date() {
        let p: PatchDay = "2nd tue".parse().unwrap();
        let tz = berlin();
        // 2026-11-09T23:30Z is 2026-11-10 00:30 in Berlin (CET, +1): the patch day itself.
        assert_eq!(last_patch_day(p, ts("2026-11-09T23:30:00Z"), &tz).unwrap(), date(2026, 11, 10));
        // 2026-11-09T22:30Z is still Nov 9 in Berlin: the October patch day (Oct 13).
        assert_eq!(last_patch_day(p, ts("2026-11-09T22:30:00Z"), &tz).unwrap(), date(2026, 10, 13));
        // Early January → December's (2025-12-09).
        assert_eq!(last_patch_day(p, ts("2026-01-05T12:00:00Z"), &tz).unwrap(), date(2025, 12, 9));
    }

    #[test]
    fn compliant_due_overdue() {
        let p: PatchDay = "2nd tue".parse().unwrap();
        let tz = berlin();
        // Patch days: 2026-10-13, 2026-11-10 (Berlin midnight = 2026-11-09T23:00Z).
        // Now: 2026-11-12 12:00Z, two days after the November patch day.
        let now = ts("2026-11-12T12:00:00Z");
        let none = classify(&[], p, &tz, now).unwrap();
        assert_eq!(none.state, Compliance::Compliant);
        assert_eq!(none.last_patch_day, date(2026, 11, 10));
        // Released after the patch day: waits for December → compliant.
        let fresh = update("kernel", "2026-11-11T08:00:00Z", Some("2026-11-10T20:00:00Z"));
        assert_eq!(classify(std::slice::from_ref(&fresh), p, &tz, now).unwrap().state, Compliance::Compliant);
        // Seen since Nov 1 (before Nov 10), grace week not over (ends Nov 17) → due.
        let due = update("openssl", "2026-11-01T08:00:00Z", None);
        let s = classify(&[fresh.clone(), due.clone()], p, &tz, now).unwrap();
        assert_eq!((s.state, s.due.clone(), s.pending), (Compliance::Due, vec!["openssl".to_string()], 2));
        // Released Oct 1, before the October patch day (Oct 13), whose grace week ended Oct 20 → overdue,
        // even though first seen only yesterday (new host).
        let old = update("glibc", "2026-11-11T08:00:00Z", Some("2026-10-01T00:00:00Z"));
        let s = classify(&[fresh.clone(), due.clone(), old], p, &tz, now).unwrap();
        assert_eq!((s.state, s.overdue), (Compliance::Overdue, vec!["glibc".to_string()]));
        // A week after the November patch day (Nov 17 00:00 Berlin = Nov 16 23:00Z) the due one is overdue.
        let s = classify(std::slice::from_ref(&due), p, &tz, ts("2026-11-16T22:59:59Z")).unwrap();
        assert_eq!(s.state, Compliance::Due);
        let s = classify(&[due], p, &tz, ts("2026-11-16T23:00:00Z")).unwrap();
        assert_eq!(s.state, Compliance::Overdue);
    }

    #[test]
    fn critical_updates_out_of_cycle_after_three_days() {
        let now = ts("2026-11-12T12:00:00Z");
        let mut crit = update("openssl", "2026-11-09T11:00:00Z", None);
        crit.security = true;
        crit.severity = Some("Critical".into());
        // 3 days + 1 h old → out of cycle.
        assert_eq!(critical_overdue(&[crit.clone()], 3, now).len(), 1);
        // Exactly 3 days old is not *older than* 3 days.
        let mut exact = crit.clone();
        exact.first_seen = ts("2026-11-09T12:00:00Z");
        assert!(critical_overdue(&[exact], 3, now).is_empty());
        // Important, or not security: never.
        let mut important = crit.clone();
        important.severity = Some("Important".into());
        let mut bugfix = crit.clone();
        bugfix.security = false;
        assert!(critical_overdue(&[important, bugfix], 3, now).is_empty());
    }
}

//! Civil-calendar values written in the config files: sets of weekdays (`mon-fri`) and
//! times of day (`07:30`, `24:00`). One parser each, shared by SLA windows, support hours
//! and patch days.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time, Weekday};
use serde::{Deserialize, Serialize};

const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

/// Monday = 0 … Sunday = 6, from a short or long English name in any case.
fn day_index(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    DAY_NAMES.iter().position(|(short, long)| name == *short || name == *long).map(|i| i as u8)
}

/// Parses a weekday name (`tue`, `Tuesday`).
pub fn weekday_from_name(name: &str) -> Option<Weekday> {
    day_index(name).and_then(|i| Weekday::from_monday_zero_offset(i as i8).ok())
}

/// A set of weekdays, written `mon-fri`, `sat,sun`, `mon-wed,fri` or `fri-mon` (ranges wrap
/// around the week).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weekdays {
    /// Bit 0 = Monday … bit 6 = Sunday.
    mask: u8,
}

impl Weekdays {
    pub const ALL: Weekdays = Weekdays { mask: 0x7f };

    /// From a bit mask, bit 0 = Monday (bits above Sunday are ignored).
    pub fn from_mask(mask: u8) -> Weekdays {
        Weekdays { mask: mask & 0x7f }
    }

    pub fn contains(self, day: Weekday) -> bool {
        self.mask & (1 << day.to_monday_zero_offset()) != 0
    }
}

impl Default for Weekdays {
    fn default() -> Self {
        Weekdays::ALL
    }
}

impl FromStr for Weekdays {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!(
                "invalid days {s:?} at {part:?}: expected weekdays like \"mon-fri\" or \"sat,sun\" \
                 (mon, tue, wed, thu, fri, sat, sun)"
            )
        };
        let mut mask = 0u8;
        for part in s.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a = day_index(a).ok_or_else(|| bad(part))?;
            let b = day_index(b).ok_or_else(|| bad(part))?;
            let mut d = a;
            loop {
                mask |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        Ok(Weekdays { mask })
    }
}

impl fmt::Display for Weekdays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = (0..7).filter(|d| self.mask & (1 << d) != 0).map(|d| DAY_NAMES[d].0).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Weekdays {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Weekdays {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A wall-clock time of day, `HH:MM` or `HH:MM:SS`; `24:00` is the end of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    seconds: u32,
}

impl TimeOfDay {
    pub const END_OF_DAY: TimeOfDay = TimeOfDay { seconds: 86_400 };

    /// `seconds` after midnight, at most 86,400 (larger values are clamped to `24:00`).
    pub fn from_seconds(seconds: u32) -> TimeOfDay {
        TimeOfDay { seconds: seconds.min(86_400) }
    }

    /// Seconds after local midnight.
    pub fn seconds(self) -> u32 {
        self.seconds
    }

    pub fn is_end_of_day(self) -> bool {
        self.seconds == 86_400
    }

    /// This time on `date` as a civil datetime; `24:00` is the next day's midnight.
    pub fn on(self, date: Date) -> Result<DateTime, jiff::Error> {
        if self.is_end_of_day() {
            return Ok(date.tomorrow()?.at(0, 0, 0, 0));
        }
        let s = self.seconds;
        let t = Time::new((s / 3600) as i8, (s / 60 % 60) as i8, (s % 60) as i8, 0)?;
        Ok(date.to_datetime(t))
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid time of day {s:?}: expected HH:MM or HH:MM:SS (00:00 to 24:00)");
        let parts: Vec<&str> = s.trim().split(':').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let nums: Vec<u32> = parts.iter().map(|p| p.parse::<u32>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        let (h, m, sec) = (nums[0], nums[1], nums.get(2).copied().unwrap_or(0));
        if m > 59 || sec > 59 || h > 24 || (h == 24 && (m, sec) != (0, 0)) {
            return Err(bad());
        }
        Ok(TimeOfDay { seconds: h * 3600 + m * 60 + sec })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.seconds / 3600, self.seconds / 60 % 60, self.seconds % 60);
        if s == 0 { write!(f, "{h:02}:{m:02}") } else { write!(f, "{h:02}:{m:02}:{s:02}") }
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_sets_parse_ranges_lists_and_wrap() {
        let d: Weekdays = "mon-fri".parse().unwrap();
        assert!(d.contains(Weekday::Monday) && d.contains(Weekday::Friday) && !d.contains(Weekday::Saturday));
        let d: Weekdays = "Saturday,sun".parse().unwrap();
        assert!(d.contains(Weekday::Saturday) && d.contains(Weekday::Sunday) && !d.contains(Weekday::Monday));
        let d: Weekdays = "fri-mon".parse().unwrap();
        assert!(d.contains(Weekday::Sunday) && d.contains(Weekday::Monday) && !d.contains(Weekday::Tuesday));
        assert_eq!("mon-wed,fri".parse::<Weekdays>().unwrap().to_string(), "mon,tue,wed,fri");
        assert_eq!("mon-sun".parse::<Weekdays>().unwrap(), Weekdays::default());
        for bad in ["", "mon-xyz", "mon,", "funday"] {
            let err = bad.parse::<Weekdays>().unwrap_err();
            assert!(err.contains("mon-fri"), "{bad:?}: {err}");
        }
        assert_eq!(weekday_from_name(" Tue "), Some(Weekday::Tuesday));
        assert_eq!(weekday_from_name("tues"), None);
    }

    #[test]
    fn times_of_day_parse_and_print() {
        assert_eq!("07:30".parse::<TimeOfDay>().unwrap().seconds(), 27_000);
        assert!("24:00".parse::<TimeOfDay>().unwrap().is_end_of_day());
        assert_eq!("08:30:15".parse::<TimeOfDay>().unwrap().to_string(), "08:30:15");
        assert_eq!("08:30".parse::<TimeOfDay>().unwrap().to_string(), "08:30");
        for bad in ["24:01", "12:60", "7:30", "07:30:60", "", "noon"] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
        let date = jiff::civil::date(2026, 3, 31);
        assert_eq!(TimeOfDay::END_OF_DAY.on(date).unwrap(), jiff::civil::date(2026, 4, 1).at(0, 0, 0, 0));
    }
}

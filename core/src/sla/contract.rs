//! The SLA contract: one `[sla.NAME]` table (time zone, service windows, excuse rules), parsed and validated.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::SlaError;
use super::credits::{CreditTable, CreditTerms};
pub use crate::calendar::{TimeOfDay, Weekdays};

/// A contract, the keys of one `[sla.NAME]` table (docs/configuration.md).
///
/// Deserializing checks each field; [`Contract::validate`] checks the fields against each
/// other ([`Contract::from_toml`] does both). Optional keys: `short_outage` (default `0s`: no
/// outage is short), `short_outage_max_per_day` / `_per_week` (default: no limit),
/// `maintenance_notice` (default `7d`), `maintenance_cap` (default none: maintenance is never
/// excused), `response_target` (default `60m`), `checks` (default: the host itself), `credits`
/// (default none) and `credit_windows` (default: every window).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub timezone: Timezone,
    pub windows: Vec<WindowSpec>,
    #[serde(default, with = "humantime_serde")]
    pub short_outage: Duration,
    #[serde(default)]
    pub short_outage_max_per_day: Option<u32>,
    #[serde(default)]
    pub short_outage_max_per_week: Option<u32>,
    #[serde(default = "default_notice", with = "humantime_serde")]
    pub maintenance_notice: Duration,
    #[serde(default)]
    pub maintenance_cap: BTreeMap<String, humantime_serde::Serde<Duration>>,
    #[serde(default = "default_response_target", with = "humantime_serde")]
    pub response_target: Duration,
    /// SLA-relevant check names; empty means the host itself (`host/reachable`).
    #[serde(default)]
    pub checks: Vec<String>,
    /// Service credits: `[{ below = 99.9, percent = 10 }, …]` (default: none); see
    /// [`super::credits`].
    #[serde(default)]
    pub credits: CreditTable,
    /// The windows whose availability the credits are judged by (default: every window).
    #[serde(default)]
    pub credit_windows: Vec<String>,
}

fn default_notice() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_response_target() -> Duration {
    Duration::from_secs(60 * 60)
}

/// One service window: `{ name, from, to, days, target }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: String,
    pub from: TimeOfDay,
    /// Up to and including `24:00`; at or before `from` means the window crosses midnight.
    pub to: TimeOfDay,
    #[serde(default)]
    pub days: Weekdays,
    pub target: Target,
}

impl Contract {
    /// Parses a contract file (the keys of one `[sla.NAME]` table at top level) and validates it.
    /// `source_name` names the file in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Contract, SlaError> {
        let contract: Contract = toml::from_str(text).map_err(|e| SlaError::ContractToml {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        contract.validate()?;
        Ok(contract)
    }

    /// Cross-field checks: unique window names, caps naming real windows, windows not empty.
    pub fn validate(&self) -> Result<(), SlaError> {
        let err = |m: String| Err(SlaError::Contract(m));
        if self.windows.is_empty() {
            return err("`windows` is empty: define at least one service window".into());
        }
        for (i, w) in self.windows.iter().enumerate() {
            if w.name.trim().is_empty() {
                return err(format!("window #{} has an empty name", i + 1));
            }
            if self.windows[..i].iter().any(|o| o.name == w.name) {
                return err(format!("window name {:?} is used twice", w.name));
            }
            if w.from == w.to {
                return err(format!(
                    "window {:?}: from and to are both {} (use from = \"00:00\", to = \"24:00\" for a whole day)",
                    w.name, w.from
                ));
            }
            if w.from.is_end_of_day() {
                return err(format!("window {:?}: from cannot be 24:00", w.name));
            }
        }
        for name in self.maintenance_cap.keys() {
            if !self.windows.iter().any(|w| &w.name == name) {
                let known: Vec<&str> = self.windows.iter().map(|w| w.name.as_str()).collect();
                return err(format!(
                    "maintenance_cap names window {name:?}, which is not defined (windows: {})",
                    known.join(", ")
                ));
            }
        }
        for name in &self.credit_windows {
            if !self.windows.iter().any(|w| &w.name == name) {
                let known: Vec<&str> = self.windows.iter().map(|w| w.name.as_str()).collect();
                return err(format!(
                    "credit_windows names window {name:?}, which is not defined (windows: {})",
                    known.join(", ")
                ));
            }
        }
        if !self.credit_windows.is_empty() && self.credits.is_empty() {
            return err(
                "credit_windows is set but credits is empty: add the credit tiers or remove credit_windows".into()
            );
        }
        if self.short_outage >= Duration::from_secs(86_400) {
            return err(format!("short_outage {} is not below 1 day", humantime::format_duration(self.short_outage)));
        }
        Ok(())
    }

    /// The credit table with the windows it judges and the contract's time zone.
    pub fn credit_terms(&self) -> CreditTerms<'_> {
        CreditTerms { table: &self.credits, windows: &self.credit_windows, tz: self.timezone.tz() }
    }

    /// The monthly maintenance cap of a window in whole seconds (0 when the window has none).
    pub fn cap_seconds(&self, window: &str) -> u64 {
        self.maintenance_cap.get(window).map_or(0, |d| d.into_inner().as_secs())
    }
}

/// An IANA time zone name, resolved with jiff's time zone database.
#[derive(Debug, Clone)]
pub struct Timezone {
    name: String,
    tz: TimeZone,
}

impl Timezone {
    pub fn new(name: &str) -> Result<Timezone, String> {
        let tz = TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))?;
        Ok(Timezone { name: name.to_string(), tz })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timezone::new(&s).map_err(de::Error::custom)
    }
}

/// An availability target, kept as an exact decimal fraction `num / den` so `met` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    num: u64,
    den: u64,
}

impl Target {
    pub fn as_fraction(self) -> f64 {
        self.num as f64 / self.den as f64
    }
    /// Whether `good / total` reaches the target (an empty window always does).
    pub fn is_met(self, good: u64, total: u64) -> bool {
        super::decimal::reaches(good, total, self.num, self.den)
    }

    fn from_decimal(digits: &str, percent: bool) -> Option<Target> {
        let (num, decimals) = super::decimal::parse(digits, 9)?;
        let den = 10u64.pow(decimals) * if percent { 100 } else { 1 };
        (num <= den).then_some(Target { num, den })
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let parsed = match t.strip_suffix('%') {
            Some(p) => Target::from_decimal(p.trim(), true),
            None => Target::from_decimal(t, false),
        };
        parsed.ok_or_else(|| {
            format!("invalid target {s:?}: expected a percentage like \"98%\" or \"99.9%\" (0% to 100%)")
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = self.as_fraction() * 100.0;
        write!(f, "{}%", (pct * 1e6).round() / 1e6)
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_fraction())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage like \"98%\" or a fraction between 0 and 1")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Target, E> {
                if !(0.0..=1.0).contains(&v) {
                    return Err(E::custom(format!("target {v} is not a fraction between 0 and 1")));
                }
                let den = 1_000_000_000u64;
                Ok(Target { num: (v * den as f64).round() as u64, den })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Target, E> {
                match v {
                    0 | 1 => Ok(Target { num: v as u64, den: 1 }),
                    _ => Err(E::custom(format!(
                        "target {v} is not a fraction between 0 and 1 (write \"{v}%\" for a percentage)"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Target, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
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

    #[test]
    fn spec_example_contract_parses() {
        let c = Contract::from_toml(SPEC_EXAMPLE, "contract.toml").unwrap();
        assert_eq!(c.timezone.name(), "Europe/Berlin");
        assert_eq!(c.windows.len(), 2);
        assert_eq!(c.windows[1].from.to_string(), "18:00");
        assert_eq!(c.windows[0].target.as_fraction(), 0.98);
        assert_eq!(c.short_outage, Duration::from_secs(300));
        assert_eq!(c.short_outage_max_per_week, Some(3));
        assert_eq!(c.cap_seconds("core"), 7200);
        assert_eq!(c.cap_seconds("off"), 7 * 3600);
        assert_eq!(c.response_target, Duration::from_secs(3600));
        assert!(c.checks.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name_and_line() {
        let text = SPEC_EXAMPLE.replace("response_target", "respons_target");
        let err = Contract::from_toml(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("respons_target"), "{err}");
        assert!(err.contains("line 12"), "{err}");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#""Europe/Berln""#, "Europe/Berln"),
            (
                r#""Europe/Berlin"
windows = [{ name = "core", from = "7:00", to = "18:00", target = "98%" }]"#,
                "7:00",
            ),
        ];
        for (tz_and_rest, needle) in cases {
            let text = format!("timezone = {tz_and_rest}\n");
            let text = if text.contains("windows") {
                text
            } else {
                format!("{text}windows = [{{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"98%\" }}]\n")
            };
            let err = Contract::from_toml(&text, "c.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let text = "timezone = \"UTC\"\nwindows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", days = \"mon-fry\", target = \"98%\" }]";
        let err = Contract::from_toml(text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("mon-fry"), "{err}");
        let text =
            "timezone = \"UTC\"\nwindows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"101%\" }]";
        let err = Contract::from_toml(text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("101%"), "{err}");
    }

    #[test]
    fn cross_field_errors_are_clear() {
        let base = "timezone = \"UTC\"\n";
        let cases = [
            ("windows = []", "at least one"),
            (
                "windows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"98%\" }, { name = \"a\", from = \"18:00\", to = \"07:00\", target = \"98%\" }]",
                "used twice",
            ),
            ("windows = [{ name = \"a\", from = \"07:00\", to = \"07:00\", target = \"98%\" }]", "24:00"),
            (
                "windows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"98%\" }]\nmaintenance_cap = { core = \"2h\" }",
                "\"core\"",
            ),
            (
                "windows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"98%\" }]\nshort_outage = \"1d\"",
                "short_outage",
            ),
        ];
        for (rest, needle) in cases {
            let err = Contract::from_toml(&format!("{base}{rest}"), "c.toml").unwrap_err();
            assert!(matches!(err, SlaError::Contract(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn targets_are_exact() {
        let t: Target = "98%".parse().unwrap();
        assert!(t.is_met(98, 100) && !t.is_met(97, 100));
        let t: Target = "99.95%".parse().unwrap();
        assert!(t.is_met(9995, 10_000) && !t.is_met(9994, 10_000));
        assert_eq!(t.to_string(), "99.95%");
        assert!("98".parse::<Target>().is_err());
        assert!("abc%".parse::<Target>().is_err());
        assert_eq!("0.9".parse::<Target>().unwrap().as_fraction(), 0.9);
    }
}

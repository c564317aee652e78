//! Service credits: a contract's credit table, a customer's monthly fee, and the credit owed
//! for a month's availability, with the arithmetic written out.
//!
//! Choices (also in docs/configuration.md):
//! - Tiers are not cumulative: of the tiers whose `below` the availability falls under, the
//!   one with the lowest `below` applies, alone. Tiers may be written in any order; a lower
//!   `below` must not carry a smaller `percent` (a worse month never earns less).
//! - The availability a credit is judged by is the month's lowest of the customer's hosts and
//!   the contract's `credit_windows` (every window by default): targets, and so breaches, are
//!   per host and window.
//! - Money is kept in integer cents (two decimals, whatever the currency); the amount is
//!   fee × percent / 100, rounded half up to the cent, so it is never above the fee.
//! - The availability is compared exactly (whole seconds against the decimal `below`); it is
//!   shown rounded down, to at least 3 decimals and as many as the tiers' `below` have, so
//!   the figure shown never contradicts the comparison.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{Month, ReportRow};

/// Decimals a percentage may have (`99.99995`).
const PERCENT_DECIMALS: u32 = 6;
/// One percent in the unit of [`Percent`].
const ONE_PERCENT: u64 = 10u64.pow(PERCENT_DECIMALS);
/// The largest fee accepted, in cents (10^13 currency units; keeps every product in range).
const MAX_CENTS: u64 = 10u64.pow(15);
/// The largest percentage read (a tier's `percent` and `below` are checked against 100 later,
/// with a message that says so).
const MAX_PERCENT: u64 = 1_000_000;

/// A percentage, exactly: millionths of a percent (`99.9` → 99,900,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u64);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const HUNDRED: Percent = Percent(100 * ONE_PERCENT);

    /// Whole percent (`Percent::whole(10)` is 10 %).
    pub fn whole(p: u64) -> Percent {
        Percent(p.saturating_mul(ONE_PERCENT))
    }

    /// Millionths of a percent.
    pub fn millionths(self) -> u64 {
        self.0
    }

    /// Decimals needed to write it exactly (`99.9` → 1).
    fn decimals(self) -> u32 {
        let mut frac = self.0 % ONE_PERCENT;
        if frac == 0 {
            return 0;
        }
        let mut d = PERCENT_DECIMALS;
        while frac.is_multiple_of(10) {
            frac /= 10;
            d -= 1;
        }
        d
    }

    /// As a fraction (0.999 for 99.9 %), for JSON.
    pub fn as_fraction(self) -> f64 {
        self.0 as f64 / (100 * ONE_PERCENT) as f64
    }

    /// A plain decimal (`99.9`, `10`); an optional trailing `%` is allowed. Read as a
    /// target is (`sla::decimal`), with at most 6 decimals.
    fn parse_decimal(text: &str) -> Option<Percent> {
        let t = text.trim();
        let t = t.strip_suffix('%').unwrap_or(t).trim();
        let (digits, decimals) = super::decimal::parse(t, PERCENT_DECIMALS)?;
        let value = digits.checked_mul(10u64.pow(PERCENT_DECIMALS - decimals))?;
        (value <= MAX_PERCENT * ONE_PERCENT).then_some(Percent(value))
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Percent, String> {
        Percent::parse_decimal(s).ok_or_else(|| {
            format!("invalid percentage {s:?}: expected a number like 99.9 (at most {PERCENT_DECIMALS} decimals)")
        })
    }
}

impl fmt::Display for Percent {
    /// Exactly, without trailing zeros: `99.9`, `10`, `99.95`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decimals();
        let int = self.0 / ONE_PERCENT;
        if d == 0 {
            return write!(f, "{int}");
        }
        let frac = (self.0 % ONE_PERCENT) / 10u64.pow(PERCENT_DECIMALS - d);
        write!(f, "{int}.{frac:0width$}", width = d as usize)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage, e.g. 99.9 or \"99.9\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                // Rust writes a float as the shortest decimal that reads back the same, so
                // `99.9` in the file is exactly 99.9 here (no binary rounding).
                if !v.is_finite() || v < 0.0 {
                    return Err(E::custom(format!("percentage {v} is not a number from 0 to 100")));
                }
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("percentage {v} is negative")))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                if v > MAX_PERCENT {
                    return Err(E::custom(format!("percentage {v} is out of range")));
                }
                Ok(Percent::whole(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An amount of money in cents (two decimals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount {
    cents: u64,
}

impl Amount {
    pub fn from_cents(cents: u64) -> Amount {
        Amount { cents }
    }
    pub fn cents(self) -> u64 {
        self.cents
    }
    /// Plain, for machines: `1200.00`.
    pub fn plain(self) -> String {
        format!("{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

impl fmt::Display for Amount {
    /// For people, with thousands separated: `1,200.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = (self.cents / 100).to_string();
        let mut grouped = String::new();
        for (i, c) in units.chars().enumerate() {
            if i > 0 && (units.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        write!(f, "{grouped}.{:02}", self.cents % 100)
    }
}

impl FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> Result<Amount, String> {
        let bad = || format!("invalid amount {s:?}: expected a number with at most two decimals, like \"1200.00\"");
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() || frac.len() > 2 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let units: u64 = int.parse().map_err(|_| bad())?;
        let frac_cents: u64 = if frac.is_empty() { 0 } else { frac.parse::<u64>().map_err(|_| bad())? };
        let frac_cents = if frac.len() == 1 { frac_cents * 10 } else { frac_cents };
        let cents = units.checked_mul(100).and_then(|c| c.checked_add(frac_cents)).filter(|c| *c <= MAX_CENTS);
        cents.map(Amount::from_cents).ok_or_else(|| format!("amount {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount as a string with at most two decimals, e.g. \"1200.00\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("amount {v} is negative")))?;
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(format!("write the amount {v} as a string, e.g. \"1200.00\" (exact to the cent)")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An ISO 4217 style currency code: three capital letters (`EUR`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency(String);

impl Currency {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = String;
    fn from_str(s: &str) -> Result<Currency, String> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(s.to_string()))
        } else {
            Err(format!("invalid currency {s:?}: expected a three-letter code in capitals, like \"EUR\""))
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// What a customer pays per month, the base of its credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlyFee {
    pub amount: Amount,
    pub currency: Currency,
}

/// One tier of a credit table: availability below `below` % → `percent` % of the monthly fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditTier {
    pub below: Percent,
    pub percent: Percent,
}

/// A contract's credit tiers, validated, highest `below` first (empty: no credits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreditTable {
    tiers: Vec<CreditTier>,
}

impl CreditTable {
    /// Sorts the tiers and checks them: `below` above 0 and at most 100, each `below` once,
    /// `percent` at most 100, and a lower `below` never with a smaller `percent`.
    pub fn new(mut tiers: Vec<CreditTier>) -> Result<CreditTable, String> {
        for t in &tiers {
            if t.below == Percent::ZERO || t.below > Percent::HUNDRED {
                return Err(format!(
                    "credits: below = {} is not above 0 and at most 100 (availability in percent)",
                    t.below
                ));
            }
            if t.percent > Percent::HUNDRED {
                return Err(format!(
                    "credits: percent = {} (tier below = {}) is above 100: a credit is at most the whole monthly fee",
                    t.percent, t.below
                ));
            }
        }
        tiers.sort_by_key(|t| std::cmp::Reverse(t.below));
        for pair in tiers.windows(2) {
            let (higher, lower) = (pair[0], pair[1]);
            if higher.below == lower.below {
                return Err(format!("credits: two tiers have below = {}: give each availability once", lower.below));
            }
            if lower.percent < higher.percent {
                return Err(format!(
                    "credits: the tier below = {} gives percent = {}, less than the {} of the tier below = {}: \
                     a lower availability must not earn a smaller credit",
                    lower.below, lower.percent, higher.percent, higher.below
                ));
            }
        }
        Ok(CreditTable { tiers })
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Highest `below` first.
    pub fn tiers(&self) -> &[CreditTier] {
        &self.tiers
    }

    /// Decimals the availability is shown with: 3, or more when a tier's `below` needs them.
    fn display_decimals(&self) -> u32 {
        self.tiers.iter().map(|t| t.below.decimals()).max().unwrap_or(0).max(3)
    }
}

impl<'de> Deserialize<'de> for CreditTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tiers = Vec::<CreditTier>::deserialize(d)?;
        CreditTable::new(tiers).map_err(de::Error::custom)
    }
}

/// An availability, exactly: `good_seconds / total_seconds` (100 % when `total_seconds` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Availability {
    pub good_seconds: u64,
    pub total_seconds: u64,
}

impl Availability {
    /// A report row's: (window − counted) / window.
    pub fn of_row(r: &ReportRow) -> Availability {
        Availability {
            good_seconds: r.window_seconds - r.counted_seconds.min(r.window_seconds),
            total_seconds: r.window_seconds,
        }
    }

    pub fn full() -> Availability {
        Availability { good_seconds: 0, total_seconds: 0 }
    }

    pub fn as_fraction(self) -> f64 {
        if self.total_seconds == 0 { 1.0 } else { self.good_seconds as f64 / self.total_seconds as f64 }
    }

    /// Whether it is strictly below `p`: `p` not reached, compared exactly as the SLA
    /// report judges its targets (`Target::is_met`); an empty month is never below.
    pub fn is_below(self, p: Percent) -> bool {
        !super::decimal::reaches(self.good_seconds, self.total_seconds, p.0, 100 * ONE_PERCENT)
    }

    /// Whether it is lower than `other` (exactly).
    fn is_lower_than(self, other: Availability) -> bool {
        let frac = |a: Availability| {
            if a.total_seconds == 0 { (1u128, 1u128) } else { (a.good_seconds.into(), a.total_seconds.into()) }
        };
        let (g1, t1) = frac(self);
        let (g2, t2) = frac(other);
        g1 * t2 < g2 * t1
    }

    /// In percent, rounded down to `decimals`, trailing zeros dropped (`99.42`).
    fn percent_floor(self, decimals: u32) -> String {
        if self.total_seconds == 0 {
            return "100".into();
        }
        let scale = 10u128.pow(decimals);
        let v = u128::from(self.good_seconds) * 100 * scale / u128::from(self.total_seconds);
        let (int, frac) = (v / scale, v % scale);
        let frac = format!("{frac:0width$}", width = decimals as usize);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") }
    }
}

/// The credit owed for one availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// The tier that applies; `None`: the availability is at or above every tier's `below`.
    pub tier: Option<CreditTier>,
    /// The tier's percent of the fee (0 without a tier).
    pub percent: Percent,
    /// The credit, rounded half up to the cent; `None` when the customer has no monthly fee.
    pub amount: Option<Amount>,
    /// The fee's currency; `None` when the customer has no monthly fee.
    pub currency: Option<Currency>,
    /// The arithmetic in words: `99.42 % < 99.9 % → 10 % of 1,200.00 EUR = 120.00 EUR`.
    pub explanation: String,
}

/// `fee × percent / 100`, rounded half up to the cent.
pub fn percent_of(fee: Amount, percent: Percent) -> Amount {
    let den = u128::from(100 * ONE_PERCENT);
    let num = u128::from(fee.cents) * u128::from(percent.0);
    // Round half up: add half the divisor before dividing (den is even).
    let cents = (num + den / 2) / den;
    // At most the fee, since percent ≤ 100: fits in u64.
    Amount::from_cents(u64::try_from(cents).unwrap_or(u64::MAX))
}

/// The credit for `availability` under `table`: the tier with the lowest `below` that the
/// availability is under applies alone (tiers are not cumulative).
pub fn credit_owed(availability: Availability, table: &CreditTable, fee: Option<&MonthlyFee>) -> Credit {
    let shown = availability.percent_floor(table.display_decimals());
    // Highest first: the last tier the availability is under has the lowest `below`.
    let tier = table.tiers.iter().rev().find(|t| availability.is_below(t.below)).copied();
    let Some(tier) = tier else {
        let explanation = match table.tiers.first() {
            Some(top) => format!("{shown} % ≥ {} % (the highest tier): no credit", top.below),
            None => "no credit tiers in the contract: no credit".to_string(),
        };
        let amount = fee.map(|_| Amount::default());
        let currency = fee.map(|f| f.currency.clone());
        return Credit { tier: None, percent: Percent::ZERO, amount, currency, explanation };
    };
    let head = format!("{shown} % < {} % → {} %", tier.below, tier.percent);
    let (amount, explanation) = match fee {
        Some(fee) => {
            let amount = percent_of(fee.amount, tier.percent);
            let c = &fee.currency;
            (Some(amount), format!("{head} of {} {c} = {amount} {c}", fee.amount))
        }
        None => (None, format!("{head} of the monthly fee (the customer has no monthly_fee configured)")),
    };
    Credit { tier: Some(tier), percent: tier.percent, amount, currency: fee.map(|f| f.currency.clone()), explanation }
}

impl Credit {
    /// What is owed in short: `120.00 EUR`, or `10 % of the monthly fee` without a fee.
    pub fn owed(&self) -> String {
        match (self.amount, &self.currency) {
            (Some(a), Some(c)) => format!("{a} {c}"),
            _ => format!("{} % of the monthly fee", self.percent),
        }
    }
}

/// The credit of one customer in one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthCredit {
    pub month: Month,
    /// The host and window whose availability decided it (the month's lowest); `None` when
    /// no host had service time in the credit windows (availability 100 %).
    pub host: Option<String>,
    pub window: Option<String>,
    pub availability: Availability,
    /// The month is not over at the time of the report: the credit of its outages so far,
    /// which grows if more outage counts before the month ends.
    pub month_to_date: bool,
    pub credit: Credit,
}

impl MonthCredit {
    /// The arithmetic with the host and window that decided it:
    /// `web1 core: 99.42 % < 99.9 % → 10 % of 1,200.00 EUR = 120.00 EUR`.
    pub fn explanation(&self) -> String {
        match (&self.host, &self.window) {
            (Some(h), Some(w)) => format!("{h} {w}: {}", self.credit.explanation),
            _ => format!("no service time in the credit windows: {}", self.credit.explanation),
        }
    }
}

/// A contract's credit terms (`Contract::credit_terms`): its tiers, the windows they judge
/// (empty: every window) and its time zone (when a month ends).
#[derive(Debug, Clone, Copy)]
pub struct CreditTerms<'a> {
    pub table: &'a CreditTable,
    pub windows: &'a [String],
    pub tz: &'a TimeZone,
}

impl CreditTerms<'_> {
    /// Whether the credits are judged by `window`.
    pub fn judges(&self, window: &str) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w == window)
    }
}

/// Per month of `months` that has begun at `now`: the credit owed for the month's lowest
/// availability among `rows` (report rows of the customer's hosts) in the credit windows.
/// Empty when the contract has no credit table. `now` tells an ongoing month (month to date);
/// a month not begun owes nothing yet and is left out.
pub fn month_credits(
    terms: &CreditTerms<'_>,
    months: &[Month],
    rows: &[ReportRow],
    fee: Option<&MonthlyFee>,
    now: Timestamp,
) -> Vec<MonthCredit> {
    if terms.table.is_empty() {
        return Vec::new();
    }
    let start = |m: Month| terms.tz.to_timestamp(m.first_day().at(0, 0, 0, 0)).unwrap_or(Timestamp::MAX);
    months
        .iter()
        .filter(|&&month| start(month) <= now)
        .map(|&month| {
            let label = month.to_string();
            let mut worst: Option<(&ReportRow, Availability)> = None;
            for r in rows.iter().filter(|r| r.month == label && r.window_seconds > 0 && terms.judges(&r.window)) {
                let a = Availability::of_row(r);
                // Ties keep the first row (hosts sorted, windows in contract order).
                if worst.is_none_or(|(_, w)| a.is_lower_than(w)) {
                    worst = Some((r, a));
                }
            }
            let availability = worst.map_or(Availability::full(), |(_, a)| a);
            let end = start(month.next());
            MonthCredit {
                month,
                host: worst.map(|(r, _)| r.host.clone()),
                window: worst.map(|(r, _)| r.window.clone()),
                availability,
                month_to_date: now < end,
                credit: credit_owed(availability, terms.table, fee),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::Contract;
    use proptest::prelude::*;

    fn table(tiers: &[(&str, u64)]) -> CreditTable {
        CreditTable::new(
            tiers.iter().map(|(b, p)| CreditTier { below: b.parse().unwrap(), percent: Percent::whole(*p) }).collect(),
        )
        .unwrap()
    }

    /// The table of the configuration docs: < 99.9 → 10 %, < 99 → 25 %, < 95 → 100 %.
    fn standard() -> CreditTable {
        table(&[("99.9", 10), ("99.0", 25), ("95.0", 100)])
    }

    fn eur(s: &str) -> MonthlyFee {
        MonthlyFee { amount: s.parse().unwrap(), currency: "EUR".parse().unwrap() }
    }

    /// A 30-day month of a 24/7 window: 2,592,000 s.
    const MONTH_30D: u64 = 30 * 86_400;

    fn down(counted: u64) -> Availability {
        Availability { good_seconds: MONTH_30D - counted, total_seconds: MONTH_30D }
    }

    #[test]
    fn an_availability_between_tiers_gets_the_lowest_tier_it_is_under_only() {
        // 15,034 s (4 h 10 min 34 s) down: (2,592,000 − 15,034) / 2,592,000 = 2,576,966 /
        // 2,592,000 = 99.4199845… %, shown rounded down as 99.419: under 99.9 but not under 99
        // → 10 % (not 10 + 25); 10 % of 1,200.00 = 120.00.
        let c = credit_owed(down(15_034), &standard(), Some(&eur("1200.00")));
        assert_eq!(c.percent, Percent::whole(10));
        assert_eq!(c.amount, Some(Amount::from_cents(12_000)));
        assert_eq!(c.explanation, "99.419 % < 99.9 % → 10 % of 1,200.00 EUR = 120.00 EUR");
        assert_eq!(c.owed(), "120.00 EUR");
    }

    #[test]
    fn a_worse_month_falls_to_the_lower_tier() {
        // 2 days down: 28 / 30 = 93.333… % → under 95 → 100 % of 1,200.00 = 1,200.00.
        let c = credit_owed(down(2 * 86_400), &standard(), Some(&eur("1200.00")));
        assert_eq!(c.tier.map(|t| t.below.to_string()), Some("95".into()));
        assert_eq!(c.amount, Some(Amount::from_cents(120_000)));
        assert_eq!(c.explanation, "93.333 % < 95 % → 100 % of 1,200.00 EUR = 1,200.00 EUR");
        // 1 day down: 29 / 30 = 96.666… % → under 99, not under 95 → 25 % of 1,200.00 = 300.00.
        let c = credit_owed(down(86_400), &standard(), Some(&eur("1200.00")));
        assert_eq!((c.percent, c.amount), (Percent::whole(25), Some(Amount::from_cents(30_000))));
    }

    #[test]
    fn exactly_at_a_tier_is_not_below_it() {
        // 99.9 % of 2,592,000 s = 2,589,408 s up, 2,592 s down: exactly 99.9 % → no credit.
        let c = credit_owed(down(2_592), &standard(), Some(&eur("1200.00")));
        assert_eq!((c.tier, c.amount), (None, Some(Amount::default())));
        assert_eq!(c.explanation, "99.9 % ≥ 99.9 % (the highest tier): no credit");
        // One second more: 2,589,407 / 2,592,000 = 99.89996… % → shown rounded down as 99.899.
        let c = credit_owed(down(2_593), &standard(), Some(&eur("1200.00")));
        assert_eq!(c.percent, Percent::whole(10));
        assert!(c.explanation.starts_with("99.899 % < 99.9 %"), "{}", c.explanation);
    }

    #[test]
    fn amounts_round_half_up_to_the_cent() {
        // 12.5 % of 0.99 = 0.12375 → 0.12; 12.5 % of 1.00 = 0.125 → 0.13 (half up);
        // 33.333333 % of 1,000.00 = 333.33333 → 333.33; 10 % of 0.05 = 0.005 → 0.01.
        let p: Percent = "12.5".parse().unwrap();
        assert_eq!(percent_of("0.99".parse().unwrap(), p).plain(), "0.12");
        assert_eq!(percent_of("1.00".parse().unwrap(), p).plain(), "0.13");
        assert_eq!(percent_of("1000".parse().unwrap(), "33.333333".parse().unwrap()).plain(), "333.33");
        assert_eq!(percent_of("0.05".parse().unwrap(), Percent::whole(10)).plain(), "0.01");
        // 10 % of 1,234,567.89 = 123,456.789 → 123,456.79.
        assert_eq!(percent_of("1234567.89".parse().unwrap(), Percent::whole(10)).to_string(), "123,456.79");
    }

    #[test]
    fn without_a_fee_the_percent_is_still_shown() {
        let c = credit_owed(down(15_034), &standard(), None);
        assert_eq!((c.percent, c.amount), (Percent::whole(10), None));
        assert!(c.explanation.contains("10 % of the monthly fee") && c.explanation.contains("monthly_fee"));
        assert_eq!(c.owed(), "10 % of the monthly fee");
    }

    #[test]
    fn tables_are_sorted_and_checked() {
        let t = table(&[("95", 100), ("99.9", 10), ("99", 25)]);
        let order: Vec<String> = t.tiers().iter().map(|t| t.below.to_string()).collect();
        assert_eq!(order, ["99.9", "99", "95"]);
        let bad = |tiers: Vec<CreditTier>| CreditTable::new(tiers).unwrap_err();
        let tier = |b: &str, p: u64| CreditTier { below: b.parse().unwrap(), percent: Percent::whole(p) };
        assert!(bad(vec![tier("99.9", 10), tier("99.90", 20)]).contains("two tiers have below = 99.9"));
        assert!(bad(vec![tier("0", 10)]).contains("below = 0"));
        assert!(bad(vec![tier("100.5", 10)]).contains("below = 100.5"));
        assert!(bad(vec![tier("99", 101)]).contains("percent = 101"));
        let e = bad(vec![tier("99.9", 25), tier("99", 10)]);
        assert!(e.contains("below = 99 gives percent = 10") && e.contains("25"), "{e}");
    }

    #[test]
    fn money_and_percentages_parse_exactly() {
        assert_eq!("1200.00".parse::<Amount>().unwrap().cents(), 120_000);
        assert_eq!("1200.5".parse::<Amount>().unwrap().cents(), 120_050);
        assert_eq!("7".parse::<Amount>().unwrap().to_string(), "7.00");
        assert_eq!(Amount::from_cents(123_456_789).to_string(), "1,234,567.89");
        assert_eq!(Amount::from_cents(99_999).to_string(), "999.99");
        for bad in ["", "-1", "1.234", "1,200.00", "12a", ".5"] {
            assert!(bad.parse::<Amount>().is_err(), "{bad} accepted");
        }
        assert_eq!("99.9".parse::<Percent>().unwrap().millionths(), 99_900_000);
        assert_eq!("99.95%".parse::<Percent>().unwrap().to_string(), "99.95");
        assert!("99.0000001".parse::<Percent>().is_err());
        assert!("EUR".parse::<Currency>().is_ok() && "eur".parse::<Currency>().is_err());
    }

    #[test]
    fn toml_floats_integers_and_strings_are_read_as_written() {
        #[derive(Deserialize)]
        struct T {
            credits: CreditTable,
        }
        let t: T = toml::from_str(r#"credits = [{ below = 99.9, percent = 10 }, { below = "99.95", percent = 2.5 }, { below = 99, percent = 25 }]"#).unwrap();
        let got: Vec<(u64, u64)> =
            t.credits.tiers().iter().map(|t| (t.below.millionths(), t.percent.millionths())).collect();
        assert_eq!(got, [(99_950_000, 2_500_000), (99_900_000, 10_000_000), (99_000_000, 25_000_000)]);
        let err = toml::from_str::<T>("credits = [{ below = 99.9, percent = 10 }, { below = 99.9, percent = 20 }]")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 1") && err.contains("below = 99.9"), "{err}");
        let err = toml::from_str::<T>("credits = [{ below = 99.9, percnt = 10 }]").err().unwrap().to_string();
        assert!(err.contains("percnt"), "{err}");
    }

    fn contract(extra: &str) -> Contract {
        let text = format!(
            "timezone = \"UTC\"\n\
             windows = [{{ name = \"core\", from = \"07:00\", to = \"18:00\", target = \"98%\" }}, \
             {{ name = \"off\", from = \"18:00\", to = \"07:00\", target = \"90%\" }}]\n\
             credits = [{{ below = 99.9, percent = 10 }}, {{ below = 99.0, percent = 25 }}, {{ below = 95.0, percent = 100 }}]\n{extra}"
        );
        Contract::from_toml(&text, "c.toml").unwrap()
    }

    fn outage(host: &str, from: &str, to: &str) -> crate::sla::Outage {
        let t = |s: &str| format!("{s}:00Z").parse::<Timestamp>().unwrap();
        crate::sla::Outage { host: host.into(), start: t(from), end: t(to), cause: crate::sla::Cause::None }
    }

    #[test]
    fn the_month_credit_is_decided_by_the_worst_host_and_window() {
        let c = contract("");
        let april: Month = "2026-04".parse().unwrap();
        let outages = [
            // web1: 08:00–10:10 in core = 7,800 s. core has 30 × 11 h = 1,188,000 s:
            // 1,180,200 / 1,188,000 = 99.343434… % → under 99.9, not under 99 → 10 %.
            outage("web1", "2026-04-08T08:00", "2026-04-08T10:10"),
            // web2: 20:00–22:00 in off = 7,200 s. off has 30 × 13 h = 1,404,000 s:
            // 1,396,800 / 1,404,000 = 99.487179… % → higher than web1's core.
            outage("web2", "2026-04-09T20:00", "2026-04-09T22:00"),
        ];
        let rows = crate::sla::compute_month(&c, april, &outages, &[]).unwrap();
        let now: Timestamp = "2026-04-20T00:00:00Z".parse().unwrap();
        let credits = month_credits(&c.credit_terms(), &[april], &rows, Some(&eur("1200.00")), now);
        assert_eq!(credits.len(), 1);
        let m = &credits[0];
        assert_eq!((m.host.as_deref(), m.window.as_deref()), (Some("web1"), Some("core")));
        assert_eq!(m.availability, Availability { good_seconds: 1_180_200, total_seconds: 1_188_000 });
        // 10 % of 1,200.00 EUR = 120.00 EUR; the month is not over on 20 April.
        assert_eq!(m.credit.amount, Some(Amount::from_cents(12_000)));
        assert!(m.month_to_date);
        assert_eq!(m.explanation(), "web1 core: 99.343 % < 99.9 % → 10 % of 1,200.00 EUR = 120.00 EUR");
        let may: Timestamp = "2026-05-01T00:00:00Z".parse().unwrap();
        assert!(!month_credits(&c.credit_terms(), &[april], &rows, Some(&eur("1200.00")), may)[0].month_to_date);
    }

    #[test]
    fn months_not_begun_are_left_out_not_shown_as_owing_nothing() {
        let c = contract("");
        let year = Month::year_months(2026).unwrap();
        let rows = crate::sla::compute_month(&c, "2026-04".parse().unwrap(), &[], &[]).unwrap();
        let now: Timestamp = "2026-04-20T00:00:00Z".parse().unwrap();
        let credits = month_credits(&c.credit_terms(), &year, &rows, Some(&eur("1200.00")), now);
        let months: Vec<String> = credits.iter().map(|m| m.month.to_string()).collect();
        assert_eq!(months, ["2026-01", "2026-02", "2026-03", "2026-04"]);
        assert!(credits[3].month_to_date && !credits[2].month_to_date);
        // A month begins at its first instant in the contract's time zone.
        let first: Timestamp = "2026-05-01T00:00:00Z".parse().unwrap();
        assert_eq!(month_credits(&c.credit_terms(), &year, &rows, None, first).len(), 5);
        let before = first.checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap();
        assert_eq!(month_credits(&c.credit_terms(), &year, &rows, None, before).len(), 4);
    }

    #[test]
    fn credit_windows_leave_the_other_windows_out() {
        let c = contract("credit_windows = [\"off\"]");
        let april: Month = "2026-04".parse().unwrap();
        // Only core is down (7,800 s as above); off is 100 % → no credit.
        let rows = crate::sla::compute_month(&c, april, &[outage("web1", "2026-04-08T08:00", "2026-04-08T10:10")], &[])
            .unwrap();
        let now: Timestamp = "2026-05-02T00:00:00Z".parse().unwrap();
        let m = &month_credits(&c.credit_terms(), &[april], &rows, Some(&eur("1200.00")), now)[0];
        assert_eq!((m.window.as_deref(), m.credit.amount), (Some("off"), Some(Amount::default())));
        assert_eq!(m.explanation(), "web1 off: 100 % ≥ 99.9 % (the highest tier): no credit");
        // No rows at all (no host had an outage): 100 %, no credit, still one line per month.
        let m = &month_credits(&c.credit_terms(), &[april], &[], None, now)[0];
        assert_eq!((m.host.as_ref(), m.credit.amount), (None, None));
        assert!(m.explanation().contains("no credit"), "{}", m.explanation());
    }

    #[test]
    fn contracts_refuse_unknown_or_useless_credit_windows() {
        let text =
            "timezone = \"UTC\"\nwindows = [{ name = \"a\", from = \"07:00\", to = \"18:00\", target = \"98%\" }]\n";
        let err = Contract::from_toml(
            &format!("{text}credits = [{{ below = 99, percent = 5 }}]\ncredit_windows = [\"b\"]"),
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("credit_windows names window \"b\""), "{err}");
        let err = Contract::from_toml(&format!("{text}credit_windows = [\"a\"]"), "c.toml").unwrap_err().to_string();
        assert!(err.contains("credits is empty"), "{err}");
        let err = Contract::from_toml(
            &format!("{text}credits = [{{ below = 99, percent = 5 }}, {{ below = 99.0, percent = 6 }}]"),
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.toml") && err.contains("line 3") && err.contains("two tiers have below = 99"), "{err}");
        assert!(
            month_credits(&Contract::from_toml(text, "c.toml").unwrap().credit_terms(), &[], &[], None, Timestamp::MAX)
                .is_empty()
        );
    }

    fn arb_table() -> impl Strategy<Value = CreditTable> {
        // Distinct `below`s (millionths of a percent, above 0, at most 100 %) and percents
        // made to grow as `below` falls.
        (proptest::collection::btree_set(1u64..=100 * ONE_PERCENT, 0..5), proptest::collection::vec(0u64..=100, 5))
            .prop_map(|(belows, mut percents)| {
                percents.sort_unstable();
                let tiers = belows
                    .iter()
                    .rev()
                    .zip(percents)
                    .map(|(b, p)| CreditTier { below: Percent(*b), percent: Percent::whole(p) })
                    .collect();
                CreditTable::new(tiers).expect("generated tables are valid")
            })
    }

    proptest! {
        #[test]
        fn credit_never_grows_with_availability_never_exceeds_the_fee_and_is_zero_at_the_top(
            table in arb_table(),
            total in 1u64..=40 * 86_400,
            a in 0u64..=1_000_000,
            b in 0u64..=1_000_000,
            fee_cents in 0u64..=1_000_000_000,
        ) {
            let fee = MonthlyFee { amount: Amount::from_cents(fee_cents), currency: "EUR".parse().unwrap() };
            let (lo, hi) = (a.min(b) * total / 1_000_000, a.max(b) * total / 1_000_000);
            let low = credit_owed(Availability { good_seconds: lo, total_seconds: total }, &table, Some(&fee));
            let high = credit_owed(Availability { good_seconds: hi, total_seconds: total }, &table, Some(&fee));
            let (low_amount, high_amount) = (low.amount.unwrap(), high.amount.unwrap());
            prop_assert!(high_amount <= low_amount, "{} then {}", low.explanation, high.explanation);
            prop_assert!(high.percent <= low.percent);
            prop_assert!(low_amount <= fee.amount);
            let top = table.tiers().first().map_or(Percent::ZERO, |t| t.below);
            let high_avail = Availability { good_seconds: hi, total_seconds: total };
            if !high_avail.is_below(top) {
                prop_assert_eq!(high_amount, Amount::default());
                prop_assert!(high.tier.is_none());
            }
        }
    }
}

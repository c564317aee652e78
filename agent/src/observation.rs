//! What a probe observes: checks, samples, events and inventory, as plain data.
//!
//! The serde form of [`Observation`] is the JSON-lines format that
//! `pikett-agent test` prints (an API boundary: field names are public).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A check's state, in Nagios semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// Nagios plugin exit codes: 0/1/2/3; anything else is UNKNOWN.
    pub fn from_exit_code(code: i32) -> State {
        match code {
            0 => State::Ok,
            1 => State::Warning,
            2 => State::Critical,
            _ => State::Unknown,
        }
    }

    /// Worse-of for roll-ups: CRITICAL > WARNING > UNKNOWN > OK.
    pub fn severity_rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }

    pub fn worst(self, other: State) -> State {
        if other.severity_rank() > self.severity_rank() { other } else { self }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named check with a state and a one-line summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub state: State,
    pub summary: String,
    pub time: Timestamp,
}

/// A metric reading. `unit` is UCUM-style: `Cel`, `W`, `V`, `RPM`, `%`, `By`, `s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub unit: String,
    pub time: Timestamp,
}

/// Something that happened once (a log entry, a service restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub source: String,
    pub severity: String,
    pub message_id: String,
    pub message: String,
    pub time: Timestamp,
}

/// Slow-changing facts: hardware identity, the pending-updates list, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub name: String,
    pub data: serde_json::Value,
    pub time: Timestamp,
}

/// One observation, tagged by `type` in its JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Observation {
    Check(CheckResult),
    Sample(Sample),
    Event(Event),
    Inventory(Inventory),
}

impl Observation {
    pub fn check(name: impl Into<String>, state: State, summary: impl Into<String>, time: Timestamp) -> Self {
        Observation::Check(CheckResult { name: name.into(), state, summary: summary.into(), time })
    }

    pub fn sample<'a>(
        name: impl Into<String>,
        labels: impl IntoIterator<Item = (&'a str, String)>,
        value: f64,
        unit: impl Into<String>,
        time: Timestamp,
    ) -> Self {
        Observation::Sample(Sample {
            name: name.into(),
            labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            value,
            unit: unit.into(),
            time,
        })
    }
}

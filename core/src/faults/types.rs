//! Plain data the fault engine takes and returns: inputs, faults, timelines, transitions.
//!
//! The serde forms are the `--output json` of `pikett faults` / `pikett fault show` (an API
//! boundary: field names are public).

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The synthetic check the engine raises for a host that stopped sending batches.
pub const HOST_REACHABLE: &str = "host/reachable";
/// The check that says a host reports more distinct checks than `max_checks_per_host`.
pub const TOO_MANY_CHECKS: &str = "host/too-many-checks";

/// Check names: 1 to 256 characters, no control characters (newlines, tabs), no space at
/// either end. Spaces inside are allowed (BMC sensor names have them).
pub fn valid_check_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control) && name.trim() == name
}

/// The fault that stands for a host's fault storm (see `[faults] storm_faults`).
pub const FAULT_STORM: &str = "host/fault-storm";

/// A check's state, in Nagios semantics (serde: `OK`, `WARNING`, `CRITICAL`, `UNKNOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    Ok,
    Warning,
    Critical,
    Unknown,
}

/// A fault's severity; ordered so that `max` gives the worse one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The check state a rule of this severity reports when it fires.
    pub fn as_state(self) -> CheckState {
        match self {
            Severity::Warning => CheckState::Warning,
            Severity::Critical => CheckState::Critical,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    Open,
    Acknowledged,
    Resolved,
}

impl FaultState {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultState::Open => "open",
            FaultState::Acknowledged => "acknowledged",
            FaultState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for FaultState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fault is not paged right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Suppression {
    /// The fault's own host has an open `host/reachable` fault.
    HostDown,
    /// A host this one depends on (directly or transitively) has an open `host/reachable` fault.
    ParentDown { host: String },
    /// A maintenance window covers the host.
    Maintenance { id: u64 },
    /// A silence matches the host (and check).
    Silence { id: u64 },
    /// Opened during a fault storm on its host: one `host/fault-storm` fault paged for all.
    /// Kept for the fault's life (it never pages on its own).
    Storm,
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suppression::HostDown => f.write_str("host down"),
            Suppression::ParentDown { host } => write!(f, "parent host {host} down"),
            Suppression::Maintenance { id } => write!(f, "maintenance {id}"),
            Suppression::Silence { id } => write!(f, "silence {id}"),
            Suppression::Storm => f.write_str("fault storm on this host (host/fault-storm)"),
        }
    }
}

/// What happened to a fault: the kind of a [`Transition`] and of a [`TimelineEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    SeverityRaised,
    Acknowledged,
    Resolved,
    Reopened,
    FlappingStarted,
    FlappingStopped,
    Suppressed,
    SuppressionEnded,
    /// Timeline only: a note added by [`crate::faults::Engine::annotate`] (e.g. a notification
    /// step); never a transition.
    Note,
}

/// One line of a fault's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    pub kind: EventKind,
    /// The staff member, for staff actions; `None` for the engine's own steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    pub text: String,
}

/// A fault: a check that has been failing, from opening to resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub id: u64,
    pub host: String,
    pub customer: String,
    pub check: String,
    pub severity: Severity,
    pub state: FaultState,
    pub opened_at: Timestamp,
    pub acked_at: Option<Timestamp>,
    pub acked_by: Option<String>,
    pub resolved_at: Option<Timestamp>,
    /// `None` when the engine resolved it (OK result, host seen again).
    pub resolved_by: Option<String>,
    pub last_summary: String,
    /// The non-OK results that drove it (including the ones that opened it).
    pub results: u64,
    pub flapping: bool,
    /// Why it is not paged right now (`None`: it would be paged).
    pub suppressed: Option<Suppression>,
    /// Whether any transition of this fault has paged.
    pub paged: bool,
    pub timeline: Vec<TimelineEntry>,
}

impl Fault {
    pub fn is_resolved(&self) -> bool {
        self.state == FaultState::Resolved
    }
}

/// A change the caller acts on: notification pages only when `page` is true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub fault_id: u64,
    pub kind: EventKind,
    pub at: Timestamp,
    pub page: bool,
}

/// One check result, as the collector received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInput {
    pub host: String,
    pub customer: String,
    pub check: String,
    pub state: CheckState,
    pub summary: String,
    /// The observation time (the agent's clock).
    pub time: Timestamp,
}

/// One sample, evaluated by the `[[rules]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInput {
    pub host: String,
    pub customer: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// The observation time (the agent's clock).
    pub time: Timestamp,
}

/// A maintenance window: faults of `host` are not paged from `start` (inclusive) to `end`
/// (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub id: u64,
    pub host: String,
    /// The host's customer when the window was announced (a host re-enrolled for another
    /// customer keeps its windows under the old one). Empty when the host's customer was not
    /// known then (announced with `--force`, or by a collector before this field): the
    /// engine fills it in from the host's next report ([`crate::faults::Engine::host_seen`]).
    #[serde(default)]
    pub customer: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: String,
    /// When staff announced it (the time of [`crate::faults::Engine::add_maintenance`]).
    pub announced_at: Timestamp,
    pub who: String,
}

impl Maintenance {
    pub fn covers(&self, host: &str, now: Timestamp) -> bool {
        self.host == host && self.start <= now && now < self.end
    }
}

/// What staff give to announce a maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMaintenance {
    pub host: String,
    /// The host's customer now; empty when not known (see [`Maintenance::customer`]).
    pub customer: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: String,
    pub who: String,
}

/// A silence: faults of `host` (all checks, or only `check`) are not paged from `created_at`
/// until `until` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: u64,
    pub host: String,
    pub check: Option<String>,
    pub until: Timestamp,
    pub reason: String,
    pub who: String,
    pub created_at: Timestamp,
}

impl Silence {
    pub fn matches(&self, host: &str, check: &str, now: Timestamp) -> bool {
        self.host == host
            && self.check.as_deref().is_none_or(|c| c == check)
            && self.created_at <= now
            && now < self.until
    }
}

/// What staff give to silence a host or one of its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSilence {
    pub host: String,
    pub check: Option<String>,
    pub until: Timestamp,
    pub reason: String,
    pub who: String,
}

/// Which faults [`crate::faults::Engine::faults`] lists (`pikett faults [--all] [--host H]
/// [--customer C]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultFilter {
    /// Include resolved faults.
    pub all: bool,
    pub host: Option<String>,
    pub customer: Option<String>,
}

impl FaultFilter {
    pub fn matches(&self, fault: &Fault) -> bool {
        (self.all || !fault.is_resolved())
            && self.host.as_deref().is_none_or(|h| h == fault.host)
            && self.customer.as_deref().is_none_or(|c| c == fault.customer)
    }
}
/// A configuration value the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key}: {reason}")]
    Invalid { key: String, reason: String },
}

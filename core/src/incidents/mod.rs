//! Incidents and emergencies: critical faults grouped per host, or per customer
//! when several of its hosts fail within `[incidents] customer_window` (default 5 min).
//!
//! - `model.rs` — the incidents as plain data and the grouping (pure, unit-tested).
//! - `report.rs` — the Markdown post-incident report (pure).
//! - here: `[incidents]` and the engine fault → incident member mapping.
//!
//! The model at its edge (fed with fault transitions, persisted) is the collector's
//! `services::incidents`; the gRPC service is `api::incidents`.
//!
//! Choices (where the documented behaviour leaves room):
//! - Only critical faults make incidents (a warning that becomes critical joins then).
//! - An incident never escalated closes by itself once every fault of it is resolved; an
//!   emergency stays until staff close it with a root cause and recommendations. Closing an
//!   incident that closed by itself records its root cause and recommendations afterwards
//!   (a post-mortem); one closed by staff cannot be closed again.
//! - An incident opens when its first fault began failing this time: a fault reopened after
//!   its incident closed starts a new incident at its reopening (the header's "opened" and
//!   the timeline's first entry are that time).
//! - Escalating pages the chain once for the incident (its earliest unresolved,
//!   preferably unacknowledged fault), not once per fault: nobody gets ten SMS at 3 a.m.
//! - Status updates go to the customer's contacts (email and SMS) for any incident staff
//!   write one for; the text is prefixed `[Notfall]` for emergencies.

mod model;
pub mod report;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Deserialize;

pub use model::{
    DEFAULT_MAX_FAULTS, FaultRef, Grouping, Incident, IncidentError, IncidentEvent, IncidentState, Incidents, NOTFALL,
    Placement, StatusUpdate, place,
};

use crate::faults::{EventKind, Fault};

/// `[incidents]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    /// Faults of several hosts of one customer opening within this of each other form one incident.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub customer_window: Duration,
    /// The most faults one incident takes; later ones start a new incident. Bounds an
    /// incident that keeps collecting faults (a customer whose hosts flap for days).
    #[serde(default = "default_max_faults")]
    pub max_faults: usize,
}

fn default_max_faults() -> usize {
    DEFAULT_MAX_FAULTS
}

impl IncidentsConfig {
    pub fn grouping(&self) -> Grouping {
        Grouping { window: self.customer_window, max_faults: self.max_faults.max(1) }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { customer_window: default_window(), max_faults: default_max_faults() }
    }
}

/// The member reference of an engine fault.
pub fn fault_ref(f: &Fault) -> FaultRef {
    FaultRef {
        id: f.id,
        host: f.host.clone(),
        customer: f.customer.clone(),
        check: f.check.clone(),
        severity: f.severity,
        opened_at: f.opened_at,
        failing_since: failing_since(f),
        summary: f.last_summary.clone(),
    }
}

/// When the fault's current failing spell began: the latest of its opening, its reopenings
/// and its severity raises (only a raise to critical makes it an incident's member).
pub fn failing_since(f: &Fault) -> jiff::Timestamp {
    f.timeline
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Reopened | EventKind::SeverityRaised))
        .map(|e| e.at)
        .fold(f.opened_at, jiff::Timestamp::max)
}

//! Incidents as plain data and the grouping of faults into them: pure, no I/O, never reads
//! the clock (every call takes `now`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::faults::Severity;

/// The tag of an escalated incident (an emergency), in titles and notifications.
pub const NOTFALL: &str = "[Notfall]";

/// An incident's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Open,
    /// Escalated by staff: `[Notfall]`, the whole chain paged; closed only by staff.
    Emergency,
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Emergency => "emergency",
            IncidentState::Closed => "closed",
        }
    }
}

impl fmt::Display for IncidentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status update of an incident (sent to the affected customer's contacts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// 1, 2, ... within the incident (part of the notification's idempotency key).
    pub number: u32,
    pub text: String,
    pub eta: Option<Timestamp>,
    pub who: String,
    pub at: Timestamp,
    /// How many customer notifications were queued for it.
    #[serde(default)]
    pub notified: usize,
}

/// One line of an incident's own timeline (the faults keep theirs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    pub text: String,
}

/// Faults of one host, or of several hosts of one customer that failed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub customer: String,
    /// Sorted, unique.
    pub hosts: Vec<String>,
    /// In the order they joined.
    pub fault_ids: Vec<u64>,
    pub opened_at: Timestamp,
    /// The latest opening time of a member fault (the customer window counts from here).
    pub last_fault_at: Timestamp,
    pub state: IncidentState,
    pub escalated_at: Option<Timestamp>,
    pub escalated_by: Option<String>,
    pub closed_at: Option<Timestamp>,
    /// `None` when it closed by itself (every fault resolved, never escalated).
    pub closed_by: Option<String>,
    pub updates: Vec<StatusUpdate>,
    pub root_cause: Option<String>,
    pub recommendations: Option<String>,
    pub timeline: Vec<IncidentEvent>,
}

impl Incident {
    pub fn is_closed(&self) -> bool {
        self.state == IncidentState::Closed
    }

    /// Escalated at some point (stays true after closing: the report keeps the tag).
    pub fn is_emergency(&self) -> bool {
        self.escalated_at.is_some()
    }

    /// `[Notfall]` for emergencies.
    pub fn tag(&self) -> Option<&'static str> {
        self.is_emergency().then_some(NOTFALL)
    }

    /// `host` (one host) or `customer` (several hosts of a customer).
    pub fn scope(&self) -> &'static str {
        if self.hosts.len() > 1 { "customer" } else { "host" }
    }

    /// `[Notfall] acme: web-1, web-2` / `web-1 (acme)`.
    pub fn title(&self) -> String {
        let mut out = String::new();
        if let Some(tag) = self.tag() {
            out.push_str(tag);
            out.push(' ');
        }
        let hosts = self.hosts.join(", ");
        if self.hosts.len() > 1 && !self.customer.is_empty() {
            out.push_str(&format!("{}: {hosts}", self.customer));
        } else if self.customer.is_empty() {
            out.push_str(&hosts);
        } else {
            out.push_str(&format!("{hosts} ({})", self.customer));
        }
        out
    }

    fn note(&mut self, at: Timestamp, who: Option<&str>, text: String) {
        self.timeline.push(IncidentEvent { at, who: who.map(String::from), text });
    }
}

/// What the grouping needs to know of a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRef {
    pub id: u64,
    pub host: String,
    pub customer: String,
    pub check: String,
    pub severity: Severity,
    pub opened_at: Timestamp,
    /// When this critical spell of the fault began: its opening, or its latest reopening or
    /// raise to critical. A new incident opens at this time (see [`Incidents::fault_failing`]).
    pub failing_since: Timestamp,
    pub summary: String,
}

/// Where a failing fault belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Already a member of this (not closed) incident.
    Member(u64),
    /// Join this incident: the same host, or the same customer within the window.
    Join(u64),
    /// Start a new incident.
    New,
}

/// How faults are grouped into incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// See `[incidents] customer_window`.
    pub window: Duration,
    /// See `[incidents] max_faults`.
    pub max_faults: usize,
}

/// The most faults one incident takes by default.
pub const DEFAULT_MAX_FAULTS: usize = 500;

impl From<Duration> for Grouping {
    fn from(window: Duration) -> Grouping {
        Grouping { window, max_faults: DEFAULT_MAX_FAULTS }
    }
}

/// Groups a failing fault (pure). Rules, in order:
/// 1. a fault already in an incident that is not closed stays there;
/// 2. an incident (not closed) that already has the fault's host takes it;
/// 3. an incident (not closed) of the same, non-empty customer in which a fault opened no more
///    than `window` before (or after) this one takes it: several hosts of the customer failing
///    together are one incident; of several candidates, the one with the latest fault;
/// 4. otherwise a new incident.
///
/// An incident that holds `max_faults` faults takes no more (rules 2 and 3 skip it).
pub fn place<'a>(
    incidents: impl IntoIterator<Item = &'a Incident>,
    fault: &FaultRef,
    grouping: impl Into<Grouping>,
) -> Placement {
    let grouping = grouping.into();
    let window = SignedDuration::try_from(grouping.window).unwrap_or(SignedDuration::MAX);
    let mut host_match = None;
    let mut customer_match: Option<&Incident> = None;
    for inc in incidents.into_iter().filter(|i| !i.is_closed()) {
        if inc.fault_ids.contains(&fault.id) {
            return Placement::Member(inc.id);
        }
        if inc.fault_ids.len() >= grouping.max_faults {
            // Full: an incident that would collect faults for as long as they keep coming
            // would grow without bound; the next ones start a new incident.
            continue;
        }
        if inc.hosts.contains(&fault.host) {
            host_match = host_match.or(Some(inc.id));
            continue;
        }
        if fault.customer.is_empty() || inc.customer != fault.customer {
            continue;
        }
        let gap = fault.opened_at.duration_since(inc.last_fault_at).abs();
        if gap <= window && customer_match.is_none_or(|c| inc.last_fault_at > c.last_fault_at) {
            customer_match = Some(inc);
        }
    }
    match (host_match, customer_match) {
        (Some(id), _) => Placement::Join(id),
        (None, Some(inc)) => Placement::Join(inc.id),
        (None, None) => Placement::New,
    }
}

/// Why a staff action on an incident was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    #[error("no incident with id {0}")]
    NoSuchIncident(u64),
    #[error("incident {0} is closed")]
    Closed(u64),
    #[error("incident {0} is already an emergency (escalated {1} by {2})")]
    AlreadyEmergency(u64, Timestamp, String),
    #[error("a status update needs a text (--text)")]
    EmptyText,
    #[error("closing incident {0} needs {1}")]
    Missing(u64, &'static str),
}

/// Every incident, and the next id: the whole state (serde), persisted record by record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incidents {
    pub next_id: u64,
    pub incidents: BTreeMap<u64, Incident>,
}

fn fault_line(f: &FaultRef) -> String {
    let summary = if f.summary.is_empty() { String::new() } else { format!(": {}", f.summary) };
    format!("fault {} {} {} on {}{summary}", f.id, f.severity, f.check, f.host)
}

impl Incidents {
    pub fn get(&self, id: u64) -> Result<&Incident, IncidentError> {
        self.incidents.get(&id).ok_or(IncidentError::NoSuchIncident(id))
    }

    fn open_mut(&mut self, id: u64) -> Result<&mut Incident, IncidentError> {
        let inc = self.incidents.get_mut(&id).ok_or(IncidentError::NoSuchIncident(id))?;
        if inc.is_closed() {
            return Err(IncidentError::Closed(id));
        }
        Ok(inc)
    }

    /// Incidents that are not closed containing `fault`.
    fn with_fault(&mut self, fault: u64) -> impl Iterator<Item = &mut Incident> {
        self.incidents.values_mut().filter(move |i| !i.is_closed() && i.fault_ids.contains(&fault))
    }

    /// A critical fault opened, reopened or became critical: groups it (see [`place`]).
    /// Returns the incident it is in, or `None` for warnings (they make no incidents).
    ///
    /// A new incident opens when the fault began failing this time (`failing_since`): a
    /// fault reopened after its earlier incident closed starts an incident at its reopening,
    /// not at its first opening (that belongs to the earlier incident). The timeline's
    /// "opened with" entry has the same time, so the header and the timeline agree.
    pub fn fault_failing(&mut self, f: &FaultRef, grouping: impl Into<Grouping>, now: Timestamp) -> Option<u64> {
        if f.severity != Severity::Critical {
            return None;
        }
        match place(self.incidents.values(), f, grouping) {
            Placement::Member(id) => Some(id),
            Placement::Join(id) => {
                let inc = self.incidents.get_mut(&id).expect("placed in an existing incident");
                inc.fault_ids.push(f.id);
                if !inc.hosts.contains(&f.host) {
                    inc.hosts.push(f.host.clone());
                    inc.hosts.sort();
                }
                inc.last_fault_at = inc.last_fault_at.max(f.opened_at);
                inc.note(now, None, format!("{} joined", fault_line(f)));
                Some(id)
            }
            Placement::New => {
                self.next_id += 1;
                let id = self.next_id;
                let mut inc = Incident {
                    id,
                    customer: f.customer.clone(),
                    hosts: vec![f.host.clone()],
                    fault_ids: vec![f.id],
                    opened_at: f.failing_since,
                    last_fault_at: f.opened_at,
                    state: IncidentState::Open,
                    escalated_at: None,
                    escalated_by: None,
                    closed_at: None,
                    closed_by: None,
                    updates: Vec::new(),
                    root_cause: None,
                    recommendations: None,
                    timeline: Vec::new(),
                };
                // At the incident's opening, not at `now` (later when caught up by `reconcile`).
                let opened_at = inc.opened_at;
                inc.note(opened_at, None, format!("opened with {}", fault_line(f)));
                self.incidents.insert(id, inc);
                Some(id)
            }
        }
    }

    /// Something happened to a member fault (acknowledged, reopened): noted on its incidents.
    pub fn fault_noted(&mut self, fault: u64, who: Option<&str>, text: &str, now: Timestamp) -> Vec<u64> {
        let mut changed = Vec::new();
        for inc in self.with_fault(fault) {
            inc.note(now, who, text.to_string());
            changed.push(inc.id);
        }
        changed
    }

    /// A member fault resolved. An incident that was never escalated closes by itself when
    /// every one of its faults is resolved (`is_resolved`); an emergency waits for staff.
    pub fn fault_resolved(
        &mut self,
        fault: u64,
        text: &str,
        now: Timestamp,
        is_resolved: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let mut changed = Vec::new();
        for inc in self.with_fault(fault) {
            inc.note(now, None, text.to_string());
            if inc.state == IncidentState::Open && inc.fault_ids.iter().all(|f| is_resolved(*f)) {
                inc.state = IncidentState::Closed;
                inc.closed_at = Some(now);
                inc.note(now, None, "closed: every fault resolved".into());
            }
            changed.push(inc.id);
        }
        changed
    }

    /// Closes incidents (never escalated) whose faults are all resolved, and groups failing
    /// faults in no incident: catches up with transitions lost to a crash. Returns changed ids.
    pub fn reconcile(
        &mut self,
        failing: &[FaultRef],
        grouping: impl Into<Grouping>,
        now: Timestamp,
        is_resolved: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let grouping = grouping.into();
        let mut changed = Vec::new();
        for inc in self.incidents.values_mut() {
            if inc.state == IncidentState::Open && inc.fault_ids.iter().all(|f| is_resolved(*f)) {
                inc.state = IncidentState::Closed;
                inc.closed_at = Some(now);
                inc.note(now, None, "closed: every fault resolved".into());
                changed.push(inc.id);
            }
        }
        for f in failing {
            let known = self.incidents.values().any(|i| !i.is_closed() && i.fault_ids.contains(&f.id));
            if !known && let Some(id) = self.fault_failing(f, grouping, now) {
                changed.push(id);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Staff escalate: the incident becomes an emergency, tagged `[Notfall]`.
    pub fn escalate(&mut self, id: u64, who: &str, now: Timestamp) -> Result<&Incident, IncidentError> {
        let inc = self.open_mut(id)?;
        if let (Some(at), Some(by)) = (inc.escalated_at, &inc.escalated_by) {
            return Err(IncidentError::AlreadyEmergency(id, at, by.clone()));
        }
        inc.state = IncidentState::Emergency;
        inc.escalated_at = Some(now);
        inc.escalated_by = Some(who.to_string());
        inc.note(now, Some(who), format!("escalated to an emergency {NOTFALL}"));
        Ok(inc)
    }

    /// Staff add a status update; returns it (the caller sends it and records `notified`).
    pub fn update(
        &mut self,
        id: u64,
        text: &str,
        eta: Option<Timestamp>,
        who: &str,
        now: Timestamp,
    ) -> Result<StatusUpdate, IncidentError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(IncidentError::EmptyText);
        }
        let inc = self.open_mut(id)?;
        let u = StatusUpdate {
            number: inc.updates.len() as u32 + 1,
            text: text.to_string(),
            eta,
            who: who.to_string(),
            at: now,
            notified: 0,
        };
        let eta_text = eta.map(|t| format!(" (ETA {})", t.round(jiff::Unit::Second).unwrap_or(t))).unwrap_or_default();
        inc.note(now, Some(who), format!("status update {}: {text}{eta_text}", u.number));
        inc.updates.push(u.clone());
        Ok(u)
    }

    /// Records how many customer notifications went out for update `number`.
    pub fn set_notified(&mut self, id: u64, number: u32, notified: usize, now: Timestamp) {
        if let Some(inc) = self.incidents.get_mut(&id) {
            if let Some(u) = inc.updates.iter_mut().find(|u| u.number == number) {
                u.notified = notified;
            }
            let customer = inc.customer.clone();
            inc.note(
                now,
                None,
                format!("status update {number} queued for {notified} contact(s) of customer {customer}"),
            );
        }
    }

    /// Notes a line on the incident's timeline (e.g. who was paged).
    pub fn note(&mut self, id: u64, who: Option<&str>, text: String, now: Timestamp) {
        if let Some(inc) = self.incidents.get_mut(&id) {
            inc.note(now, who, text);
        }
    }

    /// Staff close: root cause and recommendations are both required.
    ///
    /// An incident that closed by itself (every fault resolved, never escalated) has neither:
    /// like a post-mortem written after an incident resolved (PagerDuty, Statuspage), closing
    /// it records them, keeping when and how it closed. One closed by staff (its root cause
    /// already recorded) is refused as closed.
    pub fn close(
        &mut self,
        id: u64,
        root_cause: &str,
        recommendations: &str,
        who: &str,
        now: Timestamp,
    ) -> Result<&Incident, IncidentError> {
        let inc = self.incidents.get_mut(&id).ok_or(IncidentError::NoSuchIncident(id))?;
        if inc.is_closed() && (inc.closed_by.is_some() || inc.root_cause.is_some()) {
            return Err(IncidentError::Closed(id));
        }
        if root_cause.trim().is_empty() {
            return Err(IncidentError::Missing(id, "a root cause (--root-cause)"));
        }
        if recommendations.trim().is_empty() {
            return Err(IncidentError::Missing(id, "recommendations (--recommendations)"));
        }
        if inc.is_closed() {
            inc.root_cause = Some(root_cause.trim().to_string());
            inc.recommendations = Some(recommendations.trim().to_string());
            inc.note(now, Some(who), format!("root cause recorded after closing: {}", root_cause.trim()));
            return Ok(inc);
        }
        inc.state = IncidentState::Closed;
        inc.closed_at = Some(now);
        inc.closed_by = Some(who.to_string());
        inc.root_cause = Some(root_cause.trim().to_string());
        inc.recommendations = Some(recommendations.trim().to_string());
        inc.note(now, Some(who), format!("closed; root cause: {}", root_cause.trim()));
        Ok(inc)
    }
}

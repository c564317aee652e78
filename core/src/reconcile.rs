//! After a restart: the transitions the pager must still act on.
//!
//! The fault engine's state is durable with the batches that changed it; the pager's
//! escalations are written after. A crash between the two (or a transition lost on its way
//! to the pager) leaves a fault open that nobody is paged about, or an escalation paging
//! about a fault that is already acknowledged or resolved. [`missed_transitions`] compares
//! the two and returns the transitions that bring the escalations up to date; the pager
//! feeds them through its normal path, whose notification ids are deterministic, so a page
//! that did go out before the crash is not sent again.

use jiff::Timestamp;

use crate::escalation::Status;
use crate::faults::{EventKind, Fault, FaultState, Transition};

/// The transitions the escalations missed. `escalation` gives the status of a fault's
/// escalation, `None` when it has none.
///
/// - An open, unacknowledged, unsuppressed fault whose escalation is missing, or ended
///   because of an acknowledgement or resolution the fault no longer has, gets `Opened`
///   (paging). An escalation that ran its course (`Exhausted`) is left alone: restarting
///   the collector must not restart the chain.
/// - An acknowledged fault whose escalation is still running gets `Acknowledged`.
/// - A resolved fault whose escalation is still running gets `Resolved` (the all-clear is
///   sent when the fault had paged).
pub fn missed_transitions<'a>(
    faults: impl IntoIterator<Item = &'a Fault>,
    escalation: impl Fn(u64) -> Option<Status>,
    now: Timestamp,
) -> Vec<Transition> {
    let mut out = Vec::new();
    for f in faults {
        let status = escalation(f.id);
        let running = matches!(status, Some(Status::Running));
        let kind = match f.state {
            FaultState::Open if f.suppressed.is_none() => match status {
                None | Some(Status::Acknowledged { .. } | Status::Resolved { .. }) => Some(EventKind::Opened),
                Some(Status::Running | Status::Exhausted { .. }) => None,
            },
            FaultState::Acknowledged if running => Some(EventKind::Acknowledged),
            FaultState::Resolved if running => Some(EventKind::Resolved),
            _ => None,
        };
        if let Some(kind) = kind {
            let page = match kind {
                EventKind::Opened => true,
                EventKind::Resolved => f.paged,
                _ => false,
            };
            out.push(Transition { fault_id: f.id, kind, at: now, page });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Severity, Suppression};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn fault(id: u64, state: FaultState) -> Fault {
        Fault {
            id,
            host: "web1".into(),
            customer: "acme".into(),
            check: "http/shop".into(),
            severity: Severity::Critical,
            state,
            opened_at: t(0),
            acked_at: None,
            acked_by: None,
            resolved_at: None,
            resolved_by: None,
            last_summary: String::new(),
            results: 2,
            flapping: false,
            suppressed: None,
            paged: true,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn an_open_fault_without_escalation_is_paged() {
        let f = fault(1, FaultState::Open);
        let out = missed_transitions([&f], |_| None, t(10));
        assert_eq!(out, vec![Transition { fault_id: 1, kind: EventKind::Opened, at: t(10), page: true }]);
    }

    #[test]
    fn a_reopened_fault_whose_escalation_ended_is_paged_again() {
        let f = fault(1, FaultState::Open);
        let out = missed_transitions([&f], |_| Some(Status::Resolved { at: t(5) }), t(10));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, EventKind::Opened);
    }

    #[test]
    fn running_or_exhausted_escalations_and_suppressed_faults_are_left_alone() {
        let open = fault(1, FaultState::Open);
        assert!(missed_transitions([&open], |_| Some(Status::Running), t(10)).is_empty());
        let exhausted = Status::Exhausted { at: t(5), all_failed: false };
        assert!(missed_transitions([&open], |_| Some(exhausted), t(10)).is_empty());
        let mut quiet = fault(2, FaultState::Open);
        quiet.suppressed = Some(Suppression::Maintenance { id: 1 });
        assert!(missed_transitions([&quiet], |_| None, t(10)).is_empty());
    }

    #[test]
    fn acks_and_resolutions_the_escalation_missed_stop_it() {
        let acked = fault(1, FaultState::Acknowledged);
        let resolved = fault(2, FaultState::Resolved);
        let mut never_paged = fault(3, FaultState::Resolved);
        never_paged.paged = false;
        let out = missed_transitions([&acked, &resolved, &never_paged], |_| Some(Status::Running), t(10));
        let kinds: Vec<_> = out.iter().map(|t| (t.fault_id, t.kind, t.page)).collect();
        assert_eq!(
            kinds,
            vec![(1, EventKind::Acknowledged, false), (2, EventKind::Resolved, true), (3, EventKind::Resolved, false)]
        );
        // Without a running escalation there is nothing to stop.
        assert!(missed_transitions([&acked, &resolved], |_| None, t(10)).is_empty());
    }
}

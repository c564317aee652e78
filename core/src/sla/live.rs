//! The live collector's SLA input: outages derived from the fault history (pure).
//!
//! Choices where the documented behaviour leaves room:
//! - SLA-relevant faults are `host/reachable` faults and faults of the contract's `checks`;
//!   only while critical: from the opening of a fault that opened critical, or from its
//!   `severity_raised` entry; to its resolution, or `now` while it is not resolved;
//! - a host's overlapping or touching faults merge into one outage ([`merge_overlapping`]);
//! - a merged outage takes the classification of the earliest of its classified faults
//!   (staff classify the outage through any of its faults).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::compute::{Interval, merge_overlapping};
use super::{Cause, Outage};
use crate::faults::{EventKind, Fault, HOST_REACHABLE, Severity};

/// Whether a fault of `check` counts for a contract with these `checks`.
pub fn is_sla_relevant(check: &str, checks: &[String]) -> bool {
    check == HOST_REACHABLE || checks.iter().any(|c| c == check)
}

/// When the fault became critical, if it did.
pub fn critical_since(f: &Fault) -> Option<Timestamp> {
    if f.severity != Severity::Critical {
        return None;
    }
    let raised = f.timeline.iter().find(|e| e.kind == EventKind::SeverityRaised).map(|e| e.at);
    Some(raised.unwrap_or(f.opened_at))
}

/// A fault's critical period `[start, end)`, clipped to `now`.
pub fn critical_interval(f: &Fault, now: Timestamp) -> Option<Interval> {
    let start = critical_since(f)?;
    let end = if f.is_resolved() { f.resolved_at.unwrap_or(now) } else { now };
    (end > start).then_some(Interval { start, end })
}

/// The outages of the given faults: per host, the merged critical periods of the SLA-relevant
/// faults, each with the staff classification of its faults (`causes` by fault id). Sorted by
/// host and start; a host's outages never overlap.
pub fn derive_outages<'a>(
    faults: impl IntoIterator<Item = &'a Fault>,
    checks: &[String],
    causes: &HashMap<u64, Cause>,
    now: Timestamp,
) -> Vec<Outage> {
    let mut per_host: BTreeMap<&str, Vec<(Interval, u64)>> = BTreeMap::new();
    for f in faults {
        if !is_sla_relevant(&f.check, checks) {
            continue;
        }
        if let Some(i) = critical_interval(f, now) {
            per_host.entry(&f.host).or_default().push((i, f.id));
        }
    }
    let mut out = Vec::new();
    for (host, mut list) in per_host {
        list.sort_by_key(|(i, id)| (i.start, *id));
        let merged = merge_overlapping(list.iter().map(|(i, _)| *i).collect());
        for m in merged {
            // The faults inside this merged outage, earliest first; the first classified one decides.
            let cause = list
                .iter()
                .filter(|(i, _)| i.start >= m.start && i.end <= m.end)
                .filter_map(|(_, id)| causes.get(id).copied())
                .find(|c| *c != Cause::None)
                .unwrap_or_default();
            out.push(Outage { host: host.to_string(), start: m.start, end: m.end, cause });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultState, TimelineEntry};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fault(id: u64, host: &str, check: &str, sev: Severity, opened: &str, resolved: Option<&str>) -> Fault {
        Fault {
            id,
            host: host.into(),
            customer: "acme".into(),
            check: check.into(),
            severity: sev,
            state: if resolved.is_some() { FaultState::Resolved } else { FaultState::Open },
            opened_at: ts(opened),
            acked_at: None,
            acked_by: None,
            resolved_at: resolved.map(ts),
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
    fn relevant_critical_faults_merge_per_host_and_take_causes() {
        let now = ts("2026-03-10T12:00:00Z");
        let checks = vec!["http/shop".to_string()];
        let mut raised = fault(5, "web1", "http/shop", Severity::Critical, "2026-03-02T09:00:00Z", None);
        raised.state = FaultState::Acknowledged;
        raised.timeline.push(TimelineEntry {
            at: ts("2026-03-02T09:30:00Z"),
            kind: EventKind::SeverityRaised,
            who: None,
            text: "warning → critical".into(),
        });
        let faults = [
            // 10:00–10:20 and 10:10–10:40 on web1 overlap → one outage 10:00–10:40.
            fault(1, "web1", HOST_REACHABLE, Severity::Critical, "2026-03-01T10:00:00Z", Some("2026-03-01T10:20:00Z")),
            fault(2, "web1", "http/shop", Severity::Critical, "2026-03-01T10:10:00Z", Some("2026-03-01T10:40:00Z")),
            // Not in the contract's checks: ignored.
            fault(3, "web1", "disk/root", Severity::Critical, "2026-03-01T11:00:00Z", Some("2026-03-01T12:00:00Z")),
            // Warning only: ignored.
            fault(4, "web1", "http/shop", Severity::Warning, "2026-03-01T13:00:00Z", Some("2026-03-01T14:00:00Z")),
            // Raised to critical at 09:30, still open → 09:30 until now.
            raised,
            // Another host, force majeure.
            fault(6, "db1", HOST_REACHABLE, Severity::Critical, "2026-03-03T00:00:00Z", Some("2026-03-03T01:00:00Z")),
        ];
        let causes = HashMap::from([(2, Cause::Customer), (6, Cause::ForceMajeure)]);
        let out = derive_outages(&faults, &checks, &causes, now);
        let o = |h: &str, s: &str, e: &str, cause| Outage { host: h.into(), start: ts(s), end: ts(e), cause };
        assert_eq!(
            out,
            vec![
                o("db1", "2026-03-03T00:00:00Z", "2026-03-03T01:00:00Z", Cause::ForceMajeure),
                // Fault 2 (classified customer) is part of the merged outage: all of it is customer.
                o("web1", "2026-03-01T10:00:00Z", "2026-03-01T10:40:00Z", Cause::Customer),
                o("web1", "2026-03-02T09:30:00Z", "2026-03-10T12:00:00Z", Cause::None),
            ]
        );
        // Without contract checks only host/reachable counts.
        let out = derive_outages(&faults, &[], &HashMap::new(), now);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], o("web1", "2026-03-01T10:00:00Z", "2026-03-01T10:20:00Z", Cause::None));
    }

    #[test]
    fn derived_outages_feed_the_ledger() {
        let contract = crate::sla::Contract::from_toml(
            "timezone = \"UTC\"\nwindows = [{ name = \"all\", from = \"00:00\", to = \"24:00\", days = \"mon-sun\", target = \"99%\" }]\n",
            "c",
        )
        .unwrap();
        let faults = [
            fault(1, "web1", HOST_REACHABLE, Severity::Critical, "2026-03-01T10:00:00Z", Some("2026-03-01T10:20:00Z")),
            fault(2, "web1", HOST_REACHABLE, Severity::Critical, "2026-03-01T10:15:00Z", Some("2026-03-01T10:30:00Z")),
        ];
        let outages =
            derive_outages(&faults, &[], &HashMap::from([(1, Cause::ForceMajeure)]), ts("2026-04-01T00:00:00Z"));
        let rows = crate::sla::compute_month(&contract, "2026-03".parse().unwrap(), &outages, &[]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].outage_seconds, rows[0].counted_seconds), (1800, 0));
        assert_eq!(rows[0].excused_seconds.force_majeure, 1800);
    }
}

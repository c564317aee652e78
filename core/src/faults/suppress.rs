//! Whether a fault may page now: host down, parent host down, maintenance, silence; and host
//! reachability.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::config::HostDeps;
use super::types::{HOST_REACHABLE, Maintenance, Silence, Suppression};

/// Whether a host last seen at `last_seen` is still reachable at `now`: it is unreachable once
/// it has been silent for longer than `timeout`.
pub fn host_reachable(last_seen: Timestamp, now: Timestamp, timeout: Duration) -> bool {
    elapsed(last_seen, now) <= timeout
}

/// `to - from`, zero when `to` is earlier.
pub(crate) fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// Why a fault of `check` on `host` must not page at `now`, if it must not; the first reason
/// in this order: host down, parent down (nearest first), maintenance, silence.
/// `is_down(h)` tells whether host `h` has an open `host/reachable` fault.
pub(crate) fn suppression(
    host: &str,
    check: &str,
    now: Timestamp,
    deps: &HostDeps,
    maintenances: &BTreeMap<u64, Maintenance>,
    silences: &BTreeMap<u64, Silence>,
    is_down: impl Fn(&str) -> bool,
) -> Option<Suppression> {
    if check != HOST_REACHABLE && is_down(host) {
        return Some(Suppression::HostDown);
    }
    if let Some(parent) = deps.ancestors(host).into_iter().find(|p| is_down(p)) {
        return Some(Suppression::ParentDown { host: parent });
    }
    if let Some(m) = maintenances.values().find(|m| m.covers(host, now)) {
        return Some(Suppression::Maintenance { id: m.id });
    }
    if let Some(s) = silences.values().find(|s| s.matches(host, check, now)) {
        return Some(Suppression::Silence { id: s.id });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn host_is_unreachable_only_after_more_than_the_timeout() {
        let t = Duration::from_secs(90);
        assert!(host_reachable(ts(0), ts(90), t));
        assert!(!host_reachable(ts(0), ts(91), t));
        // A clock that went backwards does not make a host unreachable.
        assert!(host_reachable(ts(10), ts(0), t));
    }

    #[test]
    fn host_down_suppresses_other_checks_but_not_reachable_itself() {
        let deps = HostDeps::default();
        let none = BTreeMap::new();
        let down = |h: &str| h == "web-1";
        let s = suppression("web-1", "service/sshd", ts(0), &deps, &none, &BTreeMap::new(), down);
        assert_eq!(s, Some(Suppression::HostDown));
        let s = suppression("web-1", HOST_REACHABLE, ts(0), &deps, &none, &BTreeMap::new(), down);
        assert_eq!(s, None);
    }

    #[test]
    fn parent_down_suppresses_even_the_childs_reachable_fault() {
        let deps = HostDeps(BTreeMap::from([
            ("web-1".to_string(), vec!["gw-1".to_string()]),
            ("gw-1".to_string(), vec!["core".to_string()]),
        ]));
        let s = suppression("web-1", HOST_REACHABLE, ts(0), &deps, &BTreeMap::new(), &BTreeMap::new(), |h| h == "core");
        assert_eq!(s, Some(Suppression::ParentDown { host: "core".into() }));
    }

    #[test]
    fn maintenance_covers_start_but_not_end() {
        let m = Maintenance {
            id: 4,
            host: "db-1".into(),
            customer: "acme".into(),
            start: ts(100),
            end: ts(200),
            reason: "kernel update".into(),
            announced_at: ts(0),
            who: "alice".into(),
        };
        let ms = BTreeMap::from([(4, m)]);
        let deps = HostDeps::default();
        let at = |t| suppression("db-1", "x", ts(t), &deps, &ms, &BTreeMap::new(), |_| false);
        assert_eq!(at(99), None);
        assert_eq!(at(100), Some(Suppression::Maintenance { id: 4 }));
        assert_eq!(at(199), Some(Suppression::Maintenance { id: 4 }));
        assert_eq!(at(200), None);
    }

    #[test]
    fn silence_for_one_check_leaves_the_others_paging() {
        let s = Silence {
            id: 9,
            host: "db-1".into(),
            check: Some("patches".into()),
            until: ts(100),
            reason: "known".into(),
            who: "bob".into(),
            created_at: ts(0),
        };
        let ss = BTreeMap::from([(9, s)]);
        let deps = HostDeps::default();
        let ms = BTreeMap::new();
        let at = |c, t| suppression("db-1", c, ts(t), &deps, &ms, &ss, |_| false);
        assert_eq!(at("patches", 50), Some(Suppression::Silence { id: 9 }));
        assert_eq!(at("service/sshd", 50), None);
        assert_eq!(at("patches", 100), None);
    }
}

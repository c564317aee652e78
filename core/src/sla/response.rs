//! Response-time figures of emergencies against a contract's `response_target`.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

/// An emergency's opening and (if any) first acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emergency {
    pub id: String,
    pub opened: Timestamp,
    pub acked: Option<Timestamp>,
}

/// How many emergencies were acknowledged within the target, and the slowest response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseSummary {
    pub total: usize,
    pub acknowledged: usize,
    /// Acknowledged no later than `opened + target`.
    pub within_target: usize,
    /// Not (yet) acknowledged: never counted as within target.
    pub unacknowledged: usize,
    /// Slowest acknowledgement in whole seconds, and its emergency.
    pub worst_seconds: Option<u64>,
    pub worst_id: Option<String>,
    pub target_seconds: u64,
}

/// Summarises response times; an acknowledgement before the opening (clock skew) counts as 0 s.
pub fn response_summary(emergencies: &[Emergency], target: Duration) -> ResponseSummary {
    let target_seconds = target.as_secs();
    let mut s = ResponseSummary {
        total: emergencies.len(),
        acknowledged: 0,
        within_target: 0,
        unacknowledged: 0,
        worst_seconds: None,
        worst_id: None,
        target_seconds,
    };
    for e in emergencies {
        let Some(acked) = e.acked else {
            s.unacknowledged += 1;
            continue;
        };
        s.acknowledged += 1;
        let secs = (acked.as_second() - e.opened.as_second()).max(0) as u64;
        if secs <= target_seconds {
            s.within_target += 1;
        }
        if s.worst_seconds.is_none_or(|w| secs > w) {
            s.worst_seconds = Some(secs);
            s.worst_id = Some(e.id.clone());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_target_and_finds_worst() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let e = |id: &str, o: &str, a: Option<&str>| Emergency { id: id.into(), opened: t(o), acked: a.map(t) };
        let list = [
            // 59 min: within.
            e("E1", "2026-03-02T10:00:00Z", Some("2026-03-02T10:59:00Z")),
            // exactly 60 min: within (target is inclusive).
            e("E2", "2026-03-03T10:00:00Z", Some("2026-03-03T11:00:00Z")),
            // 95 min: late, and the worst.
            e("E3", "2026-03-04T10:00:00Z", Some("2026-03-04T11:35:00Z")),
            e("E4", "2026-03-05T10:00:00Z", None),
        ];
        let s = response_summary(&list, Duration::from_secs(3600));
        assert_eq!((s.total, s.acknowledged, s.within_target, s.unacknowledged), (4, 3, 2, 1));
        assert_eq!(s.worst_seconds, Some(95 * 60));
        assert_eq!(s.worst_id.as_deref(), Some("E3"));
        let empty = response_summary(&[], Duration::from_secs(3600));
        assert_eq!((empty.total, empty.worst_seconds), (0, None));
    }
}

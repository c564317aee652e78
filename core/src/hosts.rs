//! The host registry's record, and host up/down: pure arithmetic over a record and a time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the collector knows about one agent's host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub host_id: String,
    pub customer: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    pub batches: u64,
    pub last_seq: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub min_interval_ms: u64,
    #[serde(default)]
    pub dropped_samples: u64,
    /// The spool epoch of the newest stored batch; `last_seq` counts within it.
    #[serde(default)]
    pub spool_epoch: u64,
    /// How often the host came back with a new spool.
    #[serde(default)]
    pub spool_resets: u64,
    /// Checks, events and inventory the agent dropped (spool full, disk full), in total.
    #[serde(default)]
    pub dropped_other: u64,
    /// When the host last reported dropped data; 0 once `agent/data-dropped` cleared.
    #[serde(default)]
    pub last_drop_ms: i64,
    /// When staff removed (decommissioned) the host; 0 while it is monitored.
    #[serde(default)]
    pub removed_ms: i64,
    /// Batches of this host stored now (stored minus pruned by retention). Counted from the
    /// version that introduced it: older batches are not in it and leave it at 0 when pruned.
    #[serde(default)]
    pub retained: u64,
}

/// Host ids: 1 to 253 characters of letters, digits, '.', '_' and '-', starting with a
/// letter or digit (a DNS name, or a name like one). No spaces or control characters:
/// a host id ends up in tables, log lines and file names.
pub fn check_host_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host id {id:?} is not valid: 1 to 253 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// The check the collector raises on a host whose agent had to drop data.
pub const DATA_DROPPED_CHECK: &str = "agent/data-dropped";
/// How long a host must report without dropping data before `agent/data-dropped` clears:
/// drops are reported once, by the next batch, so the check holds its WARNING for a while
/// instead of clearing with the batch after.
pub const DATA_DROPPED_CLEARS_AFTER_MS: i64 = 60 * 60 * 1000;

/// A result of `agent/data-dropped`: (warning, summary); not a warning means OK.
pub type DataDropped = (bool, String);

impl HostRecord {
    /// Counts a new batch's drop report; returns the `agent/data-dropped` result it causes:
    /// WARNING when the batch reports drops and for every batch within
    /// [`DATA_DROPPED_CLEARS_AFTER_MS`] after, OK once that has passed, else nothing.
    pub fn record_drops(&mut self, samples: u64, other: u64, now_ms: i64) -> Option<DataDropped> {
        if samples + other > 0 {
            self.dropped_samples += samples;
            self.dropped_other += other;
            self.last_drop_ms = now_ms;
            return Some((
                true,
                format!(
                    "the agent dropped {samples} samples and {other} check results, events or inventory items \
                     (spool full or disk full); in total {} and {}",
                    self.dropped_samples, self.dropped_other
                ),
            ));
        }
        if self.last_drop_ms == 0 {
            return None;
        }
        if now_ms - self.last_drop_ms >= DATA_DROPPED_CLEARS_AFTER_MS {
            self.last_drop_ms = 0;
            return Some((false, "no data dropped for an hour".to_string()));
        }
        // Every batch within the hour repeats the warning, so the fault engine sees as many
        // consecutive results as its `for` needs (drops come in one report).
        Some((
            true,
            format!(
                "the agent dropped data within the last hour (in total {} samples and {} others)",
                self.dropped_samples, self.dropped_other
            ),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Up,
    Down,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Up => "up",
            HostStatus::Down => "down",
        }
    }
}

/// The timeout of one host: the configured one, else 3 × its shortest probe interval (at least 10 s).
pub fn host_timeout(configured: Option<Duration>, host: &HostRecord) -> Duration {
    configured.unwrap_or_else(|| {
        let interval = if host.min_interval_ms == 0 { 30_000 } else { host.min_interval_ms };
        Duration::from_millis(interval.saturating_mul(3).max(10_000))
    })
}

/// Down when no batch arrived within the host's timeout.
pub fn host_status(host: &HostRecord, now_ms: i64, configured: Option<Duration>) -> HostStatus {
    let timeout = host_timeout(configured, host).as_millis() as i64;
    if now_ms - host.last_seen_ms > timeout { HostStatus::Down } else { HostStatus::Up }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_names_without_spaces_or_control_characters() {
        for ok in ["web-01", "db1.example.net", "a", "node_7"] {
            assert!(check_host_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "web 01", "web\n01", "-web", ".hidden", "ünïcode", &"x".repeat(254)] {
            assert!(check_host_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dropped_data_warns_at_once_and_clears_after_an_hour_without_drops() {
        let mut h = HostRecord::default();
        assert_eq!(h.record_drops(0, 0, 1_000), None, "a host that never dropped has no result");
        let (warning, summary) = h.record_drops(500, 2, 1_000).unwrap();
        assert!(warning);
        assert!(summary.contains("500 samples") && summary.contains("in total 500 and 2"), "{summary}");
        assert!(h.record_drops(0, 0, 1_000 + DATA_DROPPED_CLEARS_AFTER_MS - 1).unwrap().0, "the warning holds");
        // A second drop within the hour restarts it.
        assert!(h.record_drops(10, 0, 2_000).unwrap().0);
        assert_eq!((h.dropped_samples, h.dropped_other), (510, 2));
        assert!(h.record_drops(0, 0, 2_000 + DATA_DROPPED_CLEARS_AFTER_MS - 1).unwrap().0);
        let (warning, _) = h.record_drops(0, 0, 2_000 + DATA_DROPPED_CLEARS_AFTER_MS).unwrap();
        assert!(!warning);
        assert_eq!(h.record_drops(0, 0, 9_999_999_999), None, "cleared once");
    }

    #[test]
    fn down_after_three_intervals_by_default() {
        let h = HostRecord { last_seen_ms: 1_000_000, min_interval_ms: 30_000, ..Default::default() };
        assert_eq!(host_status(&h, 1_000_000 + 90_000, None), HostStatus::Up);
        assert_eq!(host_status(&h, 1_000_000 + 90_001, None), HostStatus::Down);
        assert_eq!(host_status(&h, 1_000_000 + 5_001, Some(Duration::from_secs(5))), HostStatus::Down);
    }
}

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
    fn down_after_three_intervals_by_default() {
        let h = HostRecord { last_seen_ms: 1_000_000, min_interval_ms: 30_000, ..Default::default() };
        assert_eq!(host_status(&h, 1_000_000 + 90_000, None), HostStatus::Up);
        assert_eq!(host_status(&h, 1_000_000 + 90_001, None), HostStatus::Down);
        assert_eq!(host_status(&h, 1_000_000 + 5_001, Some(Duration::from_secs(5))), HostStatus::Down);
    }
}

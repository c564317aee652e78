//! Patch compliance at the collector (`[patches]` in docs/configuration.md, `pikett patches` in
//! docs/cli.md): each host's pending updates with their first-seen times, from the `patches`
//! inventory of stored batches; compliance per host by [`pikett_core::patchday::classify`]; the
//! synthetic check `patches/critical-overdue` (WARNING while a Critical security update is pending
//! longer than `critical_patch_days`) fed to the fault engine.
//!
//! Tree `patches`: host → JSON [`HostPatches`], written with the batch that carried it (same flush).
//!
//! Choices (where the documented behaviour leaves room):
//! - an update is keyed by `package.arch`; its first-seen time is the earliest of the collector's
//!   first sight, the agent's `first_seen` (clamped to now) and any earlier report's first-seen
//!   of the same key (a newer version of a still-pending package keeps the old first sight);
//! - `released` is read as RFC 3339, `YYYY-MM-DD HH:MM[:SS]` (UTC) or `YYYY-MM-DD`; else unknown;
//! - the patch day's time zone: `[patches] timezone`, else the customer's SLA contract's, else UTC;
//! - `oldest_pending` is the earliest first-seen time of the pending updates;
//! - the synthetic check is re-evaluated on every `patches` inventory and once a minute (an
//!   update ages into "out of cycle" without a new report); the engine's `for` applies to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use pikett_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::CollectorConfig;
use crate::services::faults::{FaultService, FaultStoreError};
use crate::store::{Storage, Tree};
use pikett_core::faults::{CheckInput, CheckState, Transition};
use pikett_core::patchday::{self, Compliance, PatchPolicy, PendingUpdate};

/// The synthetic check raised for Critical security updates pending too long.
pub const CRITICAL_OVERDUE_CHECK: &str = "patches/critical-overdue";

/// One pending update as the collector keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUpdate {
    pub package: String,
    pub arch: String,
    #[serde(default)]
    pub current_version: Option<String>,
    pub new_version: String,
    #[serde(default)]
    pub advisory: Option<String>,
    /// `security`, `bugfix`, `enhancement` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub released: Option<Timestamp>,
    #[serde(default)]
    pub repository: Option<String>,
    pub first_seen: Timestamp,
}

impl StoredUpdate {
    fn key(&self) -> String {
        format!("{}.{}", self.package, self.arch)
    }

    pub fn is_security(&self) -> bool {
        self.kind == "security"
    }

    pub fn is_critical_security(&self) -> bool {
        self.is_security() && self.severity.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("critical"))
    }

    fn pending(&self) -> PendingUpdate {
        PendingUpdate {
            name: self.key(),
            first_seen: self.first_seen,
            released: self.released,
            security: self.is_security(),
            severity: self.severity.clone(),
        }
    }
}

/// A host's last patches report, with the collector's first-seen times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPatches {
    pub host: String,
    pub customer: String,
    pub manager: String,
    pub reported_at: Timestamp,
    pub reboot_required: Option<bool>,
    pub updates: Vec<StoredUpdate>,
}

/// A host's compliance right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPatchState {
    pub status: Compliance,
    pub last_patch_day: jiff::civil::Date,
    pub pending: usize,
    pub security: usize,
    pub critical: usize,
    pub oldest_pending: Option<Timestamp>,
    /// Names (`package.arch`) of Critical security updates pending longer than `critical_patch_days`.
    pub critical_overdue: Vec<String>,
}

fn opt_str(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).filter(|s| !s.is_empty()).map(String::from)
}

/// Reads a release time as the package managers print it.
pub fn parse_released(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(dt) = s.replacen(' ', "T", 1).parse::<jiff::civil::DateTime>() {
        return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    s.parse::<jiff::civil::Date>().ok().and_then(|d| d.to_zoned(TimeZone::UTC).ok()).map(|z| z.timestamp())
}

/// Folds a `patches` inventory (`data` as the agent sends it) into the host's record: pure.
pub fn merge_report(
    previous: Option<&HostPatches>,
    host: &str,
    customer: &str,
    data: &serde_json::Value,
    now: Timestamp,
) -> Result<HostPatches, String> {
    let list = data.get("updates").and_then(|u| u.as_array()).ok_or("no \"updates\" array")?;
    let before: HashMap<String, Timestamp> =
        previous.map(|p| p.updates.iter().map(|u| (u.key(), u.first_seen)).collect()).unwrap_or_default();
    let mut updates = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let package = opt_str(u, "package").ok_or_else(|| format!("updates[{i}]: no package"))?;
        let mut su = StoredUpdate {
            arch: opt_str(u, "arch").unwrap_or_default(),
            current_version: opt_str(u, "current_version"),
            new_version: opt_str(u, "new_version").unwrap_or_default(),
            advisory: opt_str(u, "advisory"),
            kind: opt_str(u, "type").unwrap_or_else(|| "unknown".into()),
            severity: opt_str(u, "severity"),
            released: opt_str(u, "released").as_deref().and_then(parse_released),
            repository: opt_str(u, "repository"),
            first_seen: now,
            package,
        };
        let agent_seen = opt_str(u, "first_seen").and_then(|s| s.parse::<Timestamp>().ok()).map(|t| t.min(now));
        let mut first = now;
        for t in [agent_seen, before.get(&su.key()).copied()].into_iter().flatten() {
            first = first.min(t);
        }
        su.first_seen = first;
        updates.push(su);
    }
    updates.sort_by(|a, b| a.package.cmp(&b.package).then(a.arch.cmp(&b.arch)));
    Ok(HostPatches {
        host: host.to_string(),
        customer: customer.to_string(),
        manager: opt_str(data, "manager").unwrap_or_default(),
        reported_at: now,
        reboot_required: data.get("reboot_required").and_then(|r| r.as_bool()),
        updates,
    })
}

/// A host's compliance at `now`: pure.
pub fn host_state(
    hp: &HostPatches,
    policy: &PatchPolicy,
    tz: &TimeZone,
    now: Timestamp,
) -> Result<HostPatchState, patchday::PatchError> {
    let pending: Vec<PendingUpdate> = hp.updates.iter().map(StoredUpdate::pending).collect();
    let status = patchday::classify(&pending, policy.patch_day, tz, now)?;
    let critical_overdue = patchday::critical_overdue(&pending, policy.critical_patch_days, now)
        .into_iter()
        .map(|u| u.name.clone())
        .collect();
    Ok(HostPatchState {
        status: status.state,
        last_patch_day: status.last_patch_day,
        pending: hp.updates.len(),
        security: hp.updates.iter().filter(|u| u.is_security()).count(),
        critical: hp.updates.iter().filter(|u| u.is_critical_security()).count(),
        oldest_pending: hp.updates.iter().map(|u| u.first_seen).min(),
        critical_overdue,
    })
}

/// The synthetic check result for a host's state.
pub fn critical_check(hp: &HostPatches, state: &HostPatchState, policy: &PatchPolicy, now: Timestamp) -> CheckInput {
    let days = policy.critical_patch_days;
    let (check_state, summary) = if state.critical_overdue.is_empty() {
        (CheckState::Ok, format!("no Critical security update pending longer than {days} days"))
    } else {
        (
            CheckState::Warning,
            format!(
                "{} Critical security update(s) pending longer than {days} days, install out of cycle: {}",
                state.critical_overdue.len(),
                state.critical_overdue.join(", ")
            ),
        )
    };
    CheckInput {
        host: hp.host.clone(),
        customer: hp.customer.clone(),
        check: CRITICAL_OVERDUE_CHECK.to_string(),
        state: check_state,
        summary,
        time: now,
    }
}

/// The patch state of every host, in memory and in the tree `patches`.
pub struct PatchService {
    hosts: Mutex<BTreeMap<String, HostPatches>>,
    tree: Arc<dyn Tree>,
    policy: PatchPolicy,
    /// Customer → the time zone of their SLA contract (used when the policy names none).
    customer_tz: BTreeMap<String, TimeZone>,
}

impl PatchService {
    pub fn open(
        storage: &dyn Storage,
        policy: PatchPolicy,
        customer_tz: BTreeMap<String, TimeZone>,
    ) -> Result<PatchService, FaultStoreError> {
        let tree = storage.tree("patches")?;
        let mut hosts = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let hp: HostPatches = serde_json::from_slice(&v).map_err(|source| FaultStoreError::Corrupt {
                key: format!("patches/{}", String::from_utf8_lossy(&k)),
                source,
            })?;
            hosts.insert(hp.host.clone(), hp);
        }
        Ok(PatchService { hosts: Mutex::new(hosts), tree, policy, customer_tz })
    }

    /// From the collector config: `[patches]`, and the customers' contract time zones.
    pub fn from_config(storage: &dyn Storage, config: &CollectorConfig) -> anyhow::Result<PatchService> {
        let customer_tz = config
            .customers
            .iter()
            .filter_map(|(name, c)| {
                let contract = config.sla.get(c.sla.as_ref()?)?;
                Some((name.clone(), contract.timezone.tz().clone()))
            })
            .collect();
        Ok(PatchService::open(storage, config.patches.clone(), customer_tz)?)
    }

    pub fn policy(&self) -> &PatchPolicy {
        &self.policy
    }

    /// The time zone patch days are counted in for `customer`.
    pub fn tz(&self, customer: &str) -> TimeZone {
        match &self.policy.timezone {
            Some(tz) => tz.tz().clone(),
            None => self.customer_tz.get(customer).cloned().unwrap_or(TimeZone::UTC),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HostPatches>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the last `patches` inventory of a newly stored batch (written, not flushed) and
    /// returns the synthetic check result to feed the fault engine.
    pub fn ingest(&self, host: &str, customer: &str, batch: &pb::Batch, now: Timestamp) -> Option<CheckInput> {
        let inv = batch.inventory.iter().rev().find(|i| i.name == "patches")?;
        let data: serde_json::Value = match serde_json::from_str(&inv.data_json) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(host, error = %e, "ignoring a patches inventory that is not JSON");
                return None;
            }
        };
        let mut hosts = self.lock();
        let hp = match merge_report(hosts.get(host), host, customer, &data, now) {
            Ok(hp) => hp,
            Err(e) => {
                tracing::warn!(host, error = %e, "ignoring a malformed patches inventory");
                return None;
            }
        };
        let json = serde_json::to_vec(&hp).expect("HostPatches serializes");
        if let Err(e) = self.tree.insert(host.as_bytes(), json) {
            tracing::error!(host, error = %e, "cannot store the patch state");
        }
        let input = self.check_for(&hp, now);
        hosts.insert(host.to_string(), hp);
        input
    }

    fn check_for(&self, hp: &HostPatches, now: Timestamp) -> Option<CheckInput> {
        match host_state(hp, &self.policy, &self.tz(&hp.customer), now) {
            Ok(state) => Some(critical_check(hp, &state, &self.policy, now)),
            Err(e) => {
                tracing::error!(host = %hp.host, error = %e, "cannot classify the patch state");
                None
            }
        }
    }

    /// The synthetic check results of every host at `now`.
    pub fn evaluate_all(&self, now: Timestamp) -> Vec<CheckInput> {
        let hosts = self.lock();
        hosts.values().filter_map(|hp| self.check_for(hp, now)).collect()
    }

    /// Every host's record (sorted by host).
    pub fn hosts(&self) -> Vec<HostPatches> {
        self.lock().values().cloned().collect()
    }
}

/// Re-evaluates the synthetic check of every host once a minute.
pub fn spawn_evaluator(
    patches: Arc<PatchService>,
    faults: Arc<FaultService>,
    storage: Arc<dyn Storage>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = Timestamp::now();
            let inputs = patches.evaluate_all(now);
            if inputs.is_empty() {
                continue;
            }
            let changes: Vec<Transition> =
                faults.with_engine(|e| inputs.into_iter().flat_map(|i| e.check_result(i, now)).collect());
            if !changes.is_empty() {
                if let Err(e) = storage.flush().await {
                    tracing::error!(error = %e, "cannot flush fault state");
                }
                let _ = transitions.send(changes);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn report(updates: serde_json::Value) -> serde_json::Value {
        json!({"manager": "dnf", "updates": updates, "reboot_required": true})
    }

    fn upd(package: &str, kind: &str, severity: Option<&str>, first_seen: &str) -> serde_json::Value {
        json!({"package": package, "arch": "x86_64", "current_version": "1-1", "new_version": "1-2",
               "advisory": "RHSA-1", "type": kind, "severity": severity, "repository": "baseos",
               "first_seen": first_seen})
    }

    #[test]
    fn first_seen_is_kept_across_reports_and_clamped_to_now() {
        let now = ts("2026-11-12T12:00:00Z");
        let data = report(json!([
            upd("openssl", "security", Some("Critical"), "2026-11-01T00:00:00Z"),
            // The agent's clock ahead of ours: clamped to now.
            upd("bash", "bugfix", None, "2026-12-01T00:00:00Z"),
        ]));
        let first = merge_report(None, "web1", "acme", &data, now).unwrap();
        assert_eq!(first.updates[0].package, "bash");
        assert_eq!(first.updates[0].first_seen, now);
        assert_eq!(first.updates[1].first_seen, ts("2026-11-01T00:00:00Z"));
        assert_eq!((first.manager.as_str(), first.reboot_required), ("dnf", Some(true)));
        // A later report whose agent lost its state: the collector's first sight stays.
        let later = ts("2026-11-13T12:00:00Z");
        let data2 = report(json!([
            {"package": "openssl", "arch": "x86_64", "new_version": "1-3", "type": "security",
             "severity": "Critical", "released": "2026-10-30 08:00:00"},
            {"package": "curl", "arch": "x86_64", "new_version": "8", "type": "security", "severity": "Important"},
        ]));
        let second = merge_report(Some(&first), "web1", "acme", &data2, later).unwrap();
        let names: Vec<&str> = second.updates.iter().map(|u| u.package.as_str()).collect();
        assert_eq!(names, ["curl", "openssl"], "bash was installed: gone");
        assert_eq!(second.updates[0].first_seen, later);
        assert_eq!(second.updates[1].first_seen, ts("2026-11-01T00:00:00Z"));
        assert_eq!(second.updates[1].released, Some(ts("2026-10-30T08:00:00Z")));
        assert!(merge_report(None, "web1", "acme", &json!({"manager": "apt"}), now).is_err());
    }

    #[test]
    fn released_formats() {
        assert_eq!(parse_released("2026-10-30T08:00:00Z"), Some(ts("2026-10-30T08:00:00Z")));
        assert_eq!(parse_released("2026-10-30 08:00"), Some(ts("2026-10-30T08:00:00Z")));
        assert_eq!(parse_released("2026-10-30"), Some(ts("2026-10-30T00:00:00Z")));
        assert_eq!(parse_released("yesterday"), None);
    }

    #[test]
    fn aggregation_counts_and_critical_overdue_check() {
        // Patch days (2nd tue, UTC): 2026-10-13, 2026-11-10. Now: Nov 12, 12:00.
        let now = ts("2026-11-12T12:00:00Z");
        let policy = PatchPolicy::default();
        let data = report(json!([
            // Critical security, seen 3 days 1 hour ago: out of cycle; before Nov 10 → due.
            upd("openssl", "security", Some("Critical"), "2026-11-09T11:00:00Z"),
            // Important security seen Nov 11: after the patch day, waits.
            upd("curl", "security", Some("Important"), "2026-11-11T00:00:00Z"),
            upd("bash", "bugfix", None, "2026-11-11T00:00:00Z"),
        ]));
        let hp = merge_report(None, "web1", "acme", &data, now).unwrap();
        let st = host_state(&hp, &policy, &TimeZone::UTC, now).unwrap();
        assert_eq!((st.status, st.pending, st.security, st.critical), (Compliance::Due, 3, 2, 1));
        assert_eq!(st.last_patch_day, jiff::civil::date(2026, 11, 10));
        assert_eq!(st.oldest_pending, Some(ts("2026-11-09T11:00:00Z")));
        assert_eq!(st.critical_overdue, vec!["openssl.x86_64".to_string()]);
        let check = critical_check(&hp, &st, &policy, now);
        assert_eq!((check.check.as_str(), check.state), (CRITICAL_OVERDUE_CHECK, CheckState::Warning));
        assert!(check.summary.contains("openssl.x86_64"), "{}", check.summary);
        // Two hours earlier it was not yet older than 3 days: OK.
        let earlier = ts("2026-11-12T10:30:00Z");
        let st = host_state(&hp, &policy, &TimeZone::UTC, earlier).unwrap();
        assert_eq!(critical_check(&hp, &st, &policy, earlier).state, CheckState::Ok);
        // A week after the patch day (Nov 17) the openssl update is overdue.
        let st = host_state(&hp, &policy, &TimeZone::UTC, ts("2026-11-17T00:00:00Z")).unwrap();
        assert_eq!(st.status, Compliance::Overdue);
        // No updates: compliant, nothing oldest.
        let empty = merge_report(None, "web2", "acme", &report(json!([])), now).unwrap();
        let st = host_state(&empty, &policy, &TimeZone::UTC, now).unwrap();
        assert_eq!((st.status, st.pending, st.oldest_pending), (Compliance::Compliant, 0, None));
    }

    #[test]
    fn service_persists_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::SledStorage::open(dir.path(), 1 << 20).unwrap();
        let svc = PatchService::open(&db, PatchPolicy::default(), BTreeMap::new()).unwrap();
        let batch = pb::Batch {
            inventory: vec![pb::Inventory {
                name: "patches".into(),
                data_json: report(json!([upd("openssl", "security", Some("Critical"), "2026-11-01T00:00:00Z")]))
                    .to_string(),
                time_unix_ms: 0,
            }],
            ..Default::default()
        };
        let now = ts("2026-11-12T12:00:00Z");
        let input = svc.ingest("web1", "acme", &batch, now).unwrap();
        assert_eq!(input.state, CheckState::Warning);
        assert!(svc.ingest("web1", "acme", &pb::Batch::default(), now).is_none());
        drop(svc);
        let again = PatchService::open(&db, PatchPolicy::default(), BTreeMap::new()).unwrap();
        assert_eq!(again.hosts().len(), 1);
        assert_eq!(again.evaluate_all(now)[0].state, CheckState::Warning);
    }

    #[test]
    fn critical_overdue_opens_a_warning_fault_in_the_engine_and_clears() {
        use pikett_core::faults::{Engine, EngineConfig, FaultFilter, FaultsConfig, HostDeps, Severity};
        let config = EngineConfig::new(FaultsConfig::default(), Vec::new(), HostDeps::default()).unwrap();
        let mut engine = Engine::new(config).unwrap();
        let policy = PatchPolicy::default();
        let hp = merge_report(
            None,
            "web1",
            "acme",
            &report(json!([upd("openssl", "security", Some("Critical"), "2026-11-01T00:00:00Z")])),
            ts("2026-11-12T12:00:00Z"),
        )
        .unwrap();
        // Re-evaluated once a minute: the engine's `for` (2 results) opens the fault on the second.
        for minute in 0..2 {
            let now = ts("2026-11-12T12:00:00Z") + jiff::SignedDuration::from_mins(minute);
            let st = host_state(&hp, &policy, &TimeZone::UTC, now).unwrap();
            engine.check_result(critical_check(&hp, &st, &policy, now), now);
        }
        let all = FaultFilter { all: true, ..Default::default() };
        let faults = engine.faults(&all);
        assert_eq!(faults.len(), 1);
        assert_eq!((faults[0].check.as_str(), faults[0].severity), (CRITICAL_OVERDUE_CHECK, Severity::Warning));
        assert!(!faults[0].is_resolved());
        // Installed: the next report has no updates, the check is OK, the fault resolves.
        let now = ts("2026-11-12T13:00:00Z");
        let done = merge_report(Some(&hp), "web1", "acme", &report(json!([])), now).unwrap();
        let st = host_state(&done, &policy, &TimeZone::UTC, now).unwrap();
        engine.check_result(critical_check(&done, &st, &policy, now), now);
        assert!(engine.faults(&all)[0].is_resolved());
    }
}

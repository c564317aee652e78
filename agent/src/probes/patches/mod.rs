//! The `patches` probe: pending OS updates with advisory type and severity, first-seen times and reboot-required.
//!
//! One module per package manager ([`dnf`], [`yum`], [`apt`]) turns the
//! tool's output into [`Pending`] updates; [`reboot`] tells whether a reboot
//! is required; this module holds the data types, the failure classification
//! ([`classify_failure`]) and the check logic ([`evaluate`]), all plain
//! functions, and the [`PatchesProbe`] that runs them.
//!
//! A failure of the package manager (lock held, metadata unreachable, any
//! error) is an UNKNOWN `patches` check with the reason and no inventory:
//! never a false "0 pending".

pub mod apt;
pub mod dnf;
pub mod exec;
pub mod reboot;
pub mod yum;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::observation::{Inventory, Observation, State};
use crate::probes::{Probe, SharedState};

/// Which package manager to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// The first of dnf, yum, apt-get found.
    #[default]
    Auto,
    Dnf,
    Yum,
    Apt,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Auto => "auto",
            Manager::Dnf => "dnf",
            Manager::Yum => "yum",
            Manager::Apt => "apt",
        }
    }
}

/// The `[patches]` config section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PatchesConfig {
    #[serde(default)]
    pub manager: Manager,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of each package-manager command (the process is killed after it).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Refresh the repository metadata first (`apt-get update`; dnf/yum refresh
    /// expired metadata themselves, `false` makes them use only the cache: `-C`).
    #[serde(default = "default_true")]
    pub refresh: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_true() -> bool {
    true
}

impl Default for PatchesConfig {
    fn default() -> Self {
        PatchesConfig {
            manager: Manager::Auto,
            interval: default_interval(),
            timeout: default_timeout(),
            refresh: true,
        }
    }
}

/// A config value the probe cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum PatchesConfigError {
    #[error("[patches] interval must be greater than zero")]
    ZeroInterval,
    #[error("[patches] timeout must be greater than zero")]
    ZeroTimeout,
}

/// The programs and files the probe uses; tests point them at fakes.
#[derive(Debug, Clone)]
pub struct PatchTools {
    pub dnf: PathBuf,
    pub yum: PathBuf,
    pub apt_get: PathBuf,
    pub rpm: PathBuf,
    pub needs_restarting: PathBuf,
    /// Debian's flag file written by packages that need a reboot.
    pub reboot_required_file: PathBuf,
    /// Extra arguments for every `apt-get` call (e.g. `-o Dir::State::Lists=...`).
    pub apt_options: Vec<String>,
    /// Where dnf/yum keep their metadata when the agent is not root and refreshes it
    /// itself: the unit's `CacheDirectory=` (`$CACHE_DIRECTORY/dnf`). Without it an
    /// unprivileged dnf uses `/var/tmp/dnf-USER-*`, which `PrivateTmp=yes` throws away at
    /// every restart (all metadata downloaded again).
    pub rpm_cache_dir: Option<PathBuf>,
    /// The agent runs as root (dnf and apt-get use the system's caches and locks).
    pub as_root: bool,
}

impl Default for PatchTools {
    fn default() -> Self {
        PatchTools {
            dnf: "dnf".into(),
            yum: "yum".into(),
            apt_get: "apt-get".into(),
            rpm: "rpm".into(),
            needs_restarting: "needs-restarting".into(),
            reboot_required_file: "/var/run/reboot-required".into(),
            apt_options: Vec::new(),
            rpm_cache_dir: std::env::var_os("CACHE_DIRECTORY")
                .filter(|d| !d.is_empty())
                // systemd may list several directories, colon-separated: the first is ours.
                .and_then(|d| d.to_string_lossy().split(':').next().map(|d| PathBuf::from(d).join("dnf"))),
            // SAFETY: geteuid has no preconditions.
            as_root: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// An update's kind, from its advisory (or, for apt, its origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateType {
    Security,
    Bugfix,
    Enhancement,
    /// No advisory names the update (e.g. CentOS 7, third-party repositories).
    Unknown,
}

impl UpdateType {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateType::Security => "security",
            UpdateType::Bugfix => "bugfix",
            UpdateType::Enhancement => "enhancement",
            UpdateType::Unknown => "unknown",
        }
    }
    /// Higher is more urgent; used to pick one advisory per package.
    pub fn rank(self) -> u8 {
        match self {
            UpdateType::Security => 3,
            UpdateType::Bugfix => 2,
            UpdateType::Enhancement => 1,
            UpdateType::Unknown => 0,
        }
    }
}

/// A security advisory's severity (Red Hat's scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Critical,
    Important,
    Moderate,
    Low,
}

impl Severity {
    /// `Critical`, `important`, ...; anything else (`Unknown`, `None`) → `None`.
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Some(Severity::Critical),
            "important" => Some(Severity::Important),
            "moderate" => Some(Severity::Moderate),
            "low" => Some(Severity::Low),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "Critical",
            Severity::Important => "Important",
            Severity::Moderate => "Moderate",
            Severity::Low => "Low",
        }
    }
    /// Higher is more severe.
    pub fn rank(self) -> u8 {
        match self {
            Severity::Critical => 4,
            Severity::Important => 3,
            Severity::Moderate => 2,
            Severity::Low => 1,
        }
    }
}

/// One pending update, as it appears in the `patches` inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub package: String,
    pub arch: String,
    pub current_version: Option<String>,
    pub new_version: String,
    pub advisory: Option<String>,
    #[serde(rename = "type")]
    pub kind: UpdateType,
    pub severity: Option<Severity>,
    /// The advisory's date where the tool prints it (`dnf -v`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub released: Option<String>,
    /// Repository (dnf/yum) or origin suite (apt) the update comes from.
    pub repository: Option<String>,
}

impl Pending {
    /// The key under which the first-seen time is kept.
    pub fn key(&self) -> String {
        format!("{}.{}", self.package, self.arch)
    }
}

/// Why the pending updates could not be told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("package manager lock held by another process: {0}")]
    LockHeld(String),
    #[error("repository metadata unreachable: {0}")]
    MetadataUnreachable(String),
    #[error("{0}")]
    Other(String),
}

const LOCK_PATTERNS: &[&str] = &[
    "Could not get lock",
    "Existing lock ",
    "another app is currently holding the yum lock",
    "already locked by",
    "Waiting for process with pid",
    "Unable to lock",
];

// Ordered: the line naming the failed repository comes before detail lines.
const METADATA_PATTERNS: &[&str] = &[
    "Failed to download metadata",
    "Cannot retrieve repository metadata",
    "Cannot find a valid baseurl",
    "Some index files failed to download",
    "Temporary failure resolving",
    "Failed to fetch",
    "No more mirrors to try",
    "Cannot download repomd.xml",
    "Errors during downloading metadata",
    "Ignoring repositories:",
    "Cache-only enabled but no cache",
    "Could not resolve host",
];

/// Finds a lock-held or metadata-unreachable message in a tool's output
/// and returns it with the line that says so.
pub fn classify_failure(text: &str) -> Option<Failure> {
    let find = |pattern: &str| {
        let needle = pattern.to_ascii_lowercase();
        text.lines().map(str::trim).find(|l| l.to_ascii_lowercase().contains(&needle)).map(str::to_string)
    };
    if let Some(line) = LOCK_PATTERNS.iter().find_map(|p| find(p)) {
        return Some(Failure::LockHeld(line));
    }
    METADATA_PATTERNS.iter().find_map(|p| find(p)).map(Failure::MetadataUnreachable)
}

/// Counts by type and security severity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub by_type: BTreeMap<UpdateType, usize>,
    pub security_by_severity: BTreeMap<Option<Severity>, usize>,
}

pub fn count(pending: &[Pending]) -> Counts {
    let mut c = Counts::default();
    for p in pending {
        *c.by_type.entry(p.kind).or_default() += 1;
        if p.kind == UpdateType::Security {
            *c.security_by_severity.entry(p.severity).or_default() += 1;
        }
    }
    c
}

/// The `patches` check: CRITICAL when a Critical security update is pending,
/// WARNING for any other security update, OK otherwise; the summary counts
/// them and says whether a reboot is required.
pub fn evaluate(pending: &[Pending], reboot_required: Option<bool>) -> (State, String) {
    let reboot = if reboot_required == Some(true) { "; reboot required" } else { "" };
    if pending.is_empty() {
        return (State::Ok, format!("no updates pending{reboot}"));
    }
    let c = count(pending);
    let n = |t| c.by_type.get(&t).copied().unwrap_or(0);
    let security = n(UpdateType::Security);
    let mut sev_parts: Vec<String> =
        c.security_by_severity.iter().filter_map(|(s, k)| s.map(|s| format!("{k} {}", s.as_str()))).collect();
    if let Some(k) = c.security_by_severity.get(&None) {
        sev_parts.push(format!("{k} of unknown severity"));
    }
    let sev = if sev_parts.is_empty() { String::new() } else { format!(" ({})", sev_parts.join(", ")) };
    let summary = format!(
        "{} updates pending: {security} security{sev}, {} bugfix, {} enhancement, {} other{reboot}",
        pending.len(),
        n(UpdateType::Bugfix),
        n(UpdateType::Enhancement),
        n(UpdateType::Unknown),
    );
    let state = if c.security_by_severity.contains_key(&Some(Severity::Critical)) {
        State::Critical
    } else if security > 0 {
        State::Warning
    } else {
        State::Ok
    };
    (state, summary)
}

/// Keeps first-seen times of the pending updates: new ones get `now`, gone
/// ones are dropped. Returns whether the map changed.
pub fn update_first_seen(first_seen: &mut BTreeMap<String, Timestamp>, pending: &[Pending], now: Timestamp) -> bool {
    let before = first_seen.clone();
    let keys: std::collections::BTreeSet<String> = pending.iter().map(Pending::key).collect();
    first_seen.retain(|k, _| keys.contains(k));
    for k in keys {
        first_seen.entry(k).or_insert(now);
    }
    *first_seen != before
}

const FIRST_SEEN_KEY: &str = "patches/first_seen";

/// The `patches` probe.
pub struct PatchesProbe {
    cfg: PatchesConfig,
    state: SharedState,
    tools: PatchTools,
    first_seen: BTreeMap<String, Timestamp>,
}

impl PatchesProbe {
    /// The probe using the system's tools from `PATH`.
    pub fn new(cfg: PatchesConfig, state: SharedState) -> Result<Self, PatchesConfigError> {
        Self::with_tools(cfg, state, PatchTools::default())
    }

    /// The probe using the given programs and files.
    pub fn with_tools(cfg: PatchesConfig, state: SharedState, tools: PatchTools) -> Result<Self, PatchesConfigError> {
        if cfg.interval.is_zero() {
            return Err(PatchesConfigError::ZeroInterval);
        }
        if cfg.timeout.is_zero() {
            return Err(PatchesConfigError::ZeroTimeout);
        }
        let first_seen = state
            .load(FIRST_SEEN_KEY)
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring unreadable patches first-seen state");
                    None
                }
            })
            .unwrap_or_default();
        Ok(PatchesProbe { cfg, state, tools, first_seen })
    }

    /// The manager to use: the configured one, or the first found.
    fn manager(&self) -> Option<Manager> {
        match self.cfg.manager {
            Manager::Auto => auto_manager(
                Path::new("/etc/debian_version").exists(),
                resolve(&self.tools.dnf).is_some(),
                resolve(&self.tools.yum).is_some(),
                resolve(&self.tools.apt_get).is_some(),
            ),
            m => Some(m),
        }
    }

    /// One full look: the pending updates, whether a reboot is required (or why that is
    /// unknown), and notes on how fresh the answer is.
    pub async fn collect(&self) -> Result<Look, Failure> {
        let manager = self
            .manager()
            .ok_or_else(|| Failure::Other("no supported package manager found (dnf, yum, apt-get)".to_string()))?;
        let timeout = self.cfg.timeout;
        let refresh = self.cfg.refresh;
        let mut notes = Vec::new();
        let (pending, reboot) = match manager {
            Manager::Dnf | Manager::Auto => {
                let pending = dnf::flow(&self.tools, refresh).run(&self.tools, timeout).await?;
                (pending, reboot::needs_restarting(&self.tools.needs_restarting, timeout).await)
            }
            Manager::Yum => {
                let pending = yum::flow(&self.tools, refresh).run(&self.tools, timeout).await?;
                (pending, reboot::needs_restarting(&self.tools.needs_restarting, timeout).await)
            }
            Manager::Apt => {
                let (pending, note) = apt::run(&self.tools, refresh, timeout).await?;
                notes.extend(note);
                (pending, Ok(reboot::flag_file(&self.tools.reboot_required_file)))
            }
        };
        Ok(Look { manager, pending, reboot, notes })
    }
}

/// What one look at the package manager found.
#[derive(Debug, Clone)]
pub struct Look {
    pub manager: Manager,
    pub pending: Vec<Pending>,
    /// Whether a reboot is required, or why that cannot be told.
    pub reboot: Result<bool, String>,
    /// Said in the summary: e.g. lists that could not be refreshed, and how old they are.
    pub notes: Vec<String>,
}

/// `manager = "auto"`: dnf, then yum (EL8+ has both, yum being dnf), then
/// apt; on Debian/Ubuntu apt first, since Debian also packages dnf.
pub fn auto_manager(debian: bool, dnf: bool, yum: bool, apt: bool) -> Option<Manager> {
    let order = if debian {
        [(Manager::Apt, apt), (Manager::Dnf, dnf), (Manager::Yum, yum)]
    } else {
        [(Manager::Dnf, dnf), (Manager::Yum, yum), (Manager::Apt, apt)]
    };
    order.into_iter().find(|(_, present)| *present).map(|(m, _)| m)
}

/// A program path: as given when it has a slash, else looked up in `PATH`.
fn resolve(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        p.exists().then(|| p.to_path_buf())
    } else {
        exec::find_in_path(&p.to_string_lossy())
    }
}

#[async_trait::async_trait]
impl Probe for PatchesProbe {
    fn name(&self) -> &str {
        "patches"
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let Look { manager, pending, reboot: reboot_state, notes } = match self.collect().await {
            Ok(r) => r,
            Err(f) => {
                tracing::warn!(reason = %f, "cannot tell pending updates");
                let summary = format!("cannot tell pending updates: {f}");
                return vec![Observation::check("patches", State::Unknown, summary, Timestamp::now())];
            }
        };
        let now = Timestamp::now();
        if update_first_seen(&mut self.first_seen, &pending, now) {
            match serde_json::to_vec(&self.first_seen) {
                Ok(bytes) => {
                    if let Err(e) = self.state.save(FIRST_SEEN_KEY, &bytes) {
                        tracing::warn!(error = %e, "cannot save patches first-seen state");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode patches first-seen state"),
            }
        }
        let reboot = reboot_state.as_ref().ok().copied();
        let (state, mut summary) = evaluate(&pending, reboot);
        if let Err(why) = &reboot_state {
            summary.push_str(&format!("; reboot state unknown: {why}"));
        }
        for note in &notes {
            summary.push_str(&format!("; {note}"));
        }
        let counts = count(&pending);
        let mut out = vec![Observation::check("patches", state, summary, now)];
        for t in [UpdateType::Security, UpdateType::Bugfix, UpdateType::Enhancement, UpdateType::Unknown] {
            let n = counts.by_type.get(&t).copied().unwrap_or(0);
            out.push(Observation::sample(
                "pikett_patches_pending",
                [("type", t.as_str().to_string())],
                n as f64,
                "1",
                now,
            ));
        }
        if let Some(r) = reboot {
            out.push(Observation::sample(
                "pikett_patches_reboot_required",
                std::iter::empty(),
                if r { 1.0 } else { 0.0 },
                "1",
                now,
            ));
        }
        let updates: Vec<serde_json::Value> = pending
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or(serde_json::Value::Null);
                if let (Some(obj), Some(t)) = (v.as_object_mut(), self.first_seen.get(&p.key())) {
                    obj.insert("first_seen".to_string(), serde_json::Value::String(t.to_string()));
                }
                v
            })
            .collect();
        out.push(Observation::Inventory(Inventory {
            name: "patches".to_string(),
            data: serde_json::json!({
                "manager": manager.as_str(),
                "updates": updates,
                "reboot_required": reboot,
            }),
            time: now,
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, kind: UpdateType, severity: Option<Severity>) -> Pending {
        Pending {
            package: name.into(),
            arch: "x86_64".into(),
            current_version: Some("1-1".into()),
            new_version: "1-2".into(),
            advisory: None,
            kind,
            severity,
            released: None,
            repository: None,
        }
    }

    #[test]
    fn auto_prefers_dnf_on_el_and_apt_on_debian() {
        assert_eq!(auto_manager(false, true, true, false), Some(Manager::Dnf));
        assert_eq!(auto_manager(false, false, true, false), Some(Manager::Yum));
        assert_eq!(auto_manager(false, false, false, true), Some(Manager::Apt));
        assert_eq!(auto_manager(true, true, false, true), Some(Manager::Apt));
        assert_eq!(auto_manager(true, false, false, false), None);
    }

    #[test]
    fn nothing_pending_is_ok() {
        assert_eq!(evaluate(&[], Some(false)), (State::Ok, "no updates pending".to_string()));
        assert_eq!(evaluate(&[], Some(true)).1, "no updates pending; reboot required");
    }

    #[test]
    fn only_bugfixes_are_ok_with_counts() {
        let (s, summary) = evaluate(&[p("a", UpdateType::Bugfix, None), p("b", UpdateType::Enhancement, None)], None);
        assert_eq!(s, State::Ok);
        assert_eq!(summary, "2 updates pending: 0 security, 1 bugfix, 1 enhancement, 0 other");
    }

    #[test]
    fn security_is_warning_and_critical_is_critical() {
        let important = p("a", UpdateType::Security, Some(Severity::Important));
        let unknown_sev = p("c", UpdateType::Security, None);
        let (s, summary) = evaluate(&[important.clone(), unknown_sev, p("b", UpdateType::Bugfix, None)], Some(true));
        assert_eq!(s, State::Warning);
        assert_eq!(
            summary,
            "3 updates pending: 2 security (1 Important, 1 of unknown severity), 1 bugfix, 0 enhancement, 0 other; reboot required"
        );
        let (s, summary) = evaluate(&[important, p("k", UpdateType::Security, Some(Severity::Critical))], None);
        assert_eq!(s, State::Critical);
        assert!(summary.contains("(1 Critical, 1 Important)"), "{summary}");
    }

    #[test]
    fn first_seen_is_kept_and_pruned() {
        let t0: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-02T00:00:00Z".parse().unwrap();
        let mut map = BTreeMap::new();
        let mut pend = vec![p("a", UpdateType::Bugfix, None)];
        assert!(update_first_seen(&mut map, &pend, t0));
        pend.push(p("b", UpdateType::Bugfix, None));
        assert!(update_first_seen(&mut map, &pend, t1));
        assert_eq!(map.get("a.x86_64"), Some(&t0));
        assert_eq!(map.get("b.x86_64"), Some(&t1));
        let only_b = vec![p("b", UpdateType::Bugfix, None)];
        assert!(update_first_seen(&mut map, &only_b, t1));
        assert!(!map.contains_key("a.x86_64"));
        assert!(!update_first_seen(&mut map, &only_b, t1));
    }

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/system/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn recorded_failures_are_classified() {
        let cases = [
            ("dnf-lock-held-el9.txt", "already locked by"),
            ("dnf-metadata-unreachable-el8.txt", "Failed to download metadata for repo 'baseos'"),
            ("apt-get-update-lock-held-debian12.txt", "Could not get lock"),
            ("apt-get-update-unreachable-debian12.txt", "Some index files failed to download"),
            ("apt-get-update-no-dns-debian12.txt", "Some index files failed to download"),
        ];
        for (file, want) in cases {
            let f = classify_failure(&read(file)).unwrap_or_else(|| panic!("{file}: not classified"));
            let line = match &f {
                Failure::LockHeld(l) | Failure::MetadataUnreachable(l) | Failure::Other(l) => l.clone(),
            };
            assert!(line.contains(want), "{file}: {f:?}");
            let is_lock = matches!(f, Failure::LockHeld(_));
            assert_eq!(is_lock, want.contains("lock"), "{file}: {f:?}");
        }
        assert_eq!(classify_failure(&read("dnf-check-update-el8.txt")), None);
        assert_eq!(classify_failure(&read("apt-get-s-dist-upgrade-debian12.txt")), None);
    }

    #[test]
    fn config_defaults_and_values() {
        let cfg: PatchesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, PatchesConfig::default());
        assert_eq!(cfg.interval, Duration::from_secs(6 * 3600));
        assert_eq!(cfg.timeout, Duration::from_secs(600));
        let cfg: PatchesConfig = serde_json::from_str(r#"{"manager":"yum","interval":"1h","timeout":"2m"}"#).unwrap();
        assert_eq!(cfg.manager, Manager::Yum);
        assert!(serde_json::from_str::<PatchesConfig>(r#"{"manager":"zypper"}"#).is_err());
        assert!(serde_json::from_str::<PatchesConfig>(r#"{"managr":"apt"}"#).is_err());
    }
}

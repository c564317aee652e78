//! The `services` probe: the state of systemd units as `service/<unit>` checks, restart counters and restart events.
//!
//! systemd is read through the small [`SystemdSource`] trait; the real one,
//! [`Systemctl`], runs `systemctl show -p ... UNIT...` once per poll for all
//! units and `systemctl list-units --state=failed` for the failed ones. The
//! parsing and the state mapping are plain functions over text and data
//! ([`parse_show`], [`parse_failed_units`], [`evaluate_unit`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;

use crate::observation::{Event, Observation, State};
use crate::probes::patches::exec;
use crate::probes::{Probe, SharedState};

/// The `[services]` config section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// Units to watch, e.g. `"sshd.service"`; each becomes a `service/<unit>` check.
    #[serde(default)]
    pub units: Vec<String>,
    /// Also report every unit systemd lists as failed.
    #[serde(default = "default_true")]
    pub failed_units: bool,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a unit may stay `activating`/`reloading`/`deactivating` before it is a WARNING.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub activating_grace: Duration,
    /// Timeout of one `systemctl` call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The `systemctl` program (looked up in `PATH` unless it has a slash).
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
}

fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_systemctl() -> PathBuf {
    PathBuf::from("systemctl")
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            units: Vec::new(),
            failed_units: true,
            interval: default_interval(),
            activating_grace: default_grace(),
            timeout: default_timeout(),
            systemctl: default_systemctl(),
        }
    }
}

/// A config value the probe cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ServicesConfigError {
    #[error("[services] units: {0:?} is not a valid unit name (empty, whitespace or a leading '-')")]
    BadUnitName(String),
    #[error("[services] interval must be greater than zero")]
    ZeroInterval,
}

/// One unit's properties as `systemctl show` prints them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitStatus {
    pub id: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// Absent for non-service units and on systemd before 235.
    pub n_restarts: Option<u64>,
    /// When the unit last changed its ActiveState, if systemd knows.
    pub state_change: Option<Timestamp>,
}

/// Why systemd could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SystemdError {
    /// No systemd as PID 1 or no bus (containers, this build machine).
    #[error("systemd is not running: {0}")]
    NotRunning(String),
    #[error("{0}")]
    Failed(String),
}

/// Where unit states come from.
#[async_trait::async_trait]
pub trait SystemdSource: Send + Sync {
    /// Properties of `units`, one entry per unit in the same order.
    async fn show(&self, units: &[String]) -> Result<Vec<UnitStatus>, SystemdError>;
    /// Names of the units in the failed state.
    async fn failed_units(&self) -> Result<Vec<String>, SystemdError>;
}

/// The real [`SystemdSource`]: runs `systemctl`.
#[derive(Debug, Clone)]
pub struct Systemctl {
    pub program: PathBuf,
    pub timeout: Duration,
}

impl Systemctl {
    async fn run(&self, args: Vec<OsString>) -> Result<String, SystemdError> {
        let out =
            exec::run(&self.program, &args, self.timeout).await.map_err(|e| SystemdError::Failed(e.to_string()))?;
        if out.code == Some(0) {
            return Ok(out.stdout);
        }
        let text = out.combined();
        if systemd_missing(&text) {
            return Err(SystemdError::NotRunning(exec::last_line(&text).to_string()));
        }
        Err(SystemdError::Failed(format!(
            "{} exited with {}: {}",
            self.program.display(),
            out.code.map_or_else(|| "a signal".to_string(), |c| c.to_string()),
            exec::last_line(&text)
        )))
    }
}

#[async_trait::async_trait]
impl SystemdSource for Systemctl {
    async fn show(&self, units: &[String]) -> Result<Vec<UnitStatus>, SystemdError> {
        let mut args = exec::args([
            "show",
            "-p",
            "Id,LoadState,ActiveState,SubState,NRestarts,StateChangeTimestamp,StateChangeTimestampMonotonic",
            "--",
        ]);
        args.extend(units.iter().map(OsString::from));
        let text = self.run(args).await?;
        let statuses = parse_show(&text);
        if statuses.len() != units.len() {
            return Err(SystemdError::Failed(format!(
                "systemctl show printed {} units for the {} asked for",
                statuses.len(),
                units.len()
            )));
        }
        Ok(statuses)
    }

    async fn failed_units(&self) -> Result<Vec<String>, SystemdError> {
        let text = self.run(exec::args(["list-units", "--state=failed", "--all", "--plain", "--no-legend"])).await?;
        Ok(parse_failed_units(&text))
    }
}

/// Whether systemctl's error output says there is no systemd to talk to.
pub fn systemd_missing(text: &str) -> bool {
    text.contains("has not been booted with systemd")
        || text.contains("Failed to connect to bus")
        || text.contains("Failed to get D-Bus connection")
}

/// Parses `systemctl show -p ...` output: one `Key=value` block per unit,
/// blocks separated by blank lines, in the order the units were given.
pub fn parse_show(text: &str) -> Vec<UnitStatus> {
    let mut units = Vec::new();
    let mut current: Option<UnitStatus> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            units.extend(current.take());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let unit = current.get_or_insert_with(UnitStatus::default);
        match key {
            "Id" => unit.id = value.to_string(),
            "LoadState" => unit.load_state = value.to_string(),
            "ActiveState" => unit.active_state = value.to_string(),
            "SubState" => unit.sub_state = value.to_string(),
            "NRestarts" => unit.n_restarts = value.parse().ok(),
            "StateChangeTimestamp" => unit.state_change = parse_systemd_timestamp(value),
            _ => {}
        }
    }
    units.extend(current);
    units
}

/// Parses a systemd timestamp as `systemctl show` prints it:
/// `Mon 2026-11-23 10:00:00 UTC` (local time with zone abbreviation),
/// or `@1763892000` with `--timestamp=unix`. Empty or `n/a` → `None`.
pub fn parse_systemd_timestamp(value: &str) -> Option<Timestamp> {
    let value = value.trim();
    if let Some(secs) = value.strip_prefix('@') {
        return Timestamp::from_second(secs.parse().ok()?).ok();
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    // weekday, date, time[, zone]
    if parts.len() < 3 {
        return None;
    }
    let civil: jiff::civil::DateTime = format!("{}T{}", parts[1], parts[2]).parse().ok()?;
    let zone = parts.get(3).copied().unwrap_or("");
    let tz = if zone == "UTC" || zone == "GMT" {
        jiff::tz::TimeZone::UTC
    } else {
        // systemctl prints local time; the abbreviation alone is ambiguous.
        jiff::tz::TimeZone::system()
    };
    civil.to_zoned(tz).ok().map(|z| z.timestamp())
}

/// Parses `systemctl list-units --state=failed --plain --no-legend`:
/// the unit name is the first column (a leading `●` is dropped).
pub fn parse_failed_units(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('●').trim_start_matches('*').trim_start();
            line.split_whitespace().next().map(str::to_string)
        })
        .filter(|u| u.contains('.'))
        .collect()
}

/// Maps a unit's state to a check state and summary.
///
/// `since` is when the unit entered its current state (from systemd, or
/// when this probe first saw it there).
pub fn evaluate_unit(unit: &UnitStatus, since: Option<Timestamp>, now: Timestamp, grace: Duration) -> (State, String) {
    let restarts = match unit.n_restarts {
        Some(n) if n > 0 => format!(", {n} restart(s)"),
        _ => String::new(),
    };
    let since_txt = since.map(|t| format!(" since {}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))).unwrap_or_default();
    match unit.load_state.as_str() {
        "not-found" => return (State::Critical, "unit not found".to_string()),
        "masked" => {
            return (State::Critical, format!("unit is masked ({})", unit.active_state));
        }
        "error" | "bad-setting" => {
            return (State::Critical, format!("unit file cannot be loaded (LoadState={})", unit.load_state));
        }
        _ => {}
    }
    let state_txt = format!("{} ({})", unit.active_state, unit.sub_state);
    match unit.active_state.as_str() {
        "active" => (State::Ok, format!("{state_txt}{since_txt}{restarts}")),
        "activating" | "reloading" | "deactivating" | "refreshing" => {
            let elapsed = since.map(|s| now.duration_since(s).unsigned_abs()).unwrap_or_default();
            let for_txt = format!("for {}s", elapsed.as_secs());
            if elapsed > grace {
                (
                    State::Warning,
                    format!("{state_txt} {for_txt}, longer than the grace time of {}s{restarts}", grace.as_secs()),
                )
            } else {
                (State::Ok, format!("{state_txt} {for_txt}{restarts}"))
            }
        }
        "failed" | "inactive" => (State::Critical, format!("{state_txt}{since_txt}{restarts}")),
        other => (State::Unknown, format!("unexpected ActiveState={other:?} (SubState={})", unit.sub_state)),
    }
}

const RESTARTS_KEY: &str = "services/restarts";
const FAILED_KEY: &str = "services/failed_units";

/// The `services` probe.
pub struct ServicesProbe {
    cfg: ServicesConfig,
    state: SharedState,
    source: Box<dyn SystemdSource>,
    /// Last NRestarts per unit, mirrored in the state store.
    restarts: BTreeMap<String, u64>,
    /// Units reported only because they were failed; reported until seen not failed once.
    extra_failed: BTreeSet<String>,
    /// When this probe first saw a unit in a transitional state without a systemd timestamp.
    first_seen_transitional: HashMap<String, (String, Timestamp)>,
    /// The "no systemd" warning is logged once per outage.
    warned_no_systemd: bool,
}

impl ServicesProbe {
    /// The probe reading systemd through `cfg.systemctl`.
    pub fn new(cfg: ServicesConfig, state: SharedState) -> Result<Self, ServicesConfigError> {
        let source = Box::new(Systemctl { program: cfg.systemctl.clone(), timeout: cfg.timeout });
        Self::with_source(cfg, state, source)
    }

    /// The probe reading systemd through any [`SystemdSource`].
    pub fn with_source(
        cfg: ServicesConfig,
        state: SharedState,
        source: Box<dyn SystemdSource>,
    ) -> Result<Self, ServicesConfigError> {
        for u in &cfg.units {
            if u.is_empty() || u.starts_with('-') || u.chars().any(char::is_whitespace) {
                return Err(ServicesConfigError::BadUnitName(u.clone()));
            }
        }
        if cfg.interval.is_zero() {
            return Err(ServicesConfigError::ZeroInterval);
        }
        // A unit listed twice is checked once.
        let mut cfg = cfg;
        let mut seen = BTreeSet::new();
        cfg.units.retain(|u| seen.insert(u.clone()));
        let restarts = load_json(&state, RESTARTS_KEY).unwrap_or_default();
        let extra_failed = load_json(&state, FAILED_KEY).unwrap_or_default();
        Ok(ServicesProbe {
            cfg,
            state,
            source,
            restarts,
            extra_failed,
            first_seen_transitional: HashMap::new(),
            warned_no_systemd: false,
        })
    }

    fn unknown_for_all(&self, units: &[String], why: &str, now: Timestamp) -> Vec<Observation> {
        units.iter().map(|u| Observation::check(format!("service/{u}"), State::Unknown, why, now)).collect()
    }

    /// When the unit entered its state: systemd's time, or for a transitional
    /// state systemd gives no time for, when this probe first saw it there
    /// (so the grace time still runs out).
    fn since_for(&mut self, unit_name: &str, unit: &UnitStatus, now: Timestamp) -> Option<Timestamp> {
        let transitional =
            matches!(unit.active_state.as_str(), "activating" | "reloading" | "deactivating" | "refreshing");
        if unit.state_change.is_some() || !transitional {
            self.first_seen_transitional.remove(unit_name);
            return unit.state_change;
        }
        let entry = self
            .first_seen_transitional
            .entry(unit_name.to_string())
            .or_insert_with(|| (unit.active_state.clone(), now));
        if entry.0 != unit.active_state {
            *entry = (unit.active_state.clone(), now);
        }
        Some(entry.1)
    }
}

fn load_json<T: serde::de::DeserializeOwned>(state: &SharedState, key: &str) -> Option<T> {
    let bytes = state.load(key)?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring unreadable probe state");
            None
        }
    }
}

fn save_json<T: serde::Serialize>(state: &SharedState, key: &str, value: &T) {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            if let Err(e) = state.save(key, &bytes) {
                tracing::warn!(key, error = %e, "cannot save probe state");
            }
        }
        Err(e) => tracing::warn!(key, error = %e, "cannot encode probe state"),
    }
}

#[async_trait::async_trait]
impl Probe for ServicesProbe {
    fn name(&self) -> &str {
        "services"
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let now = Timestamp::now();
        let mut units: Vec<String> = self.cfg.units.clone();

        let mut failed_now: BTreeSet<String> = BTreeSet::new();
        if self.cfg.failed_units {
            match self.source.failed_units().await {
                Ok(list) => failed_now = list.into_iter().collect(),
                Err(SystemdError::NotRunning(why)) => return self.no_systemd(&units, &why, now),
                Err(e) => tracing::warn!(error = %e, "cannot list failed units"),
            }
        }
        // Failed units not configured, plus earlier failed ones until they recover.
        let extras: BTreeSet<String> = failed_now
            .iter()
            .chain(self.extra_failed.iter())
            .filter(|u| !self.cfg.units.contains(u))
            .cloned()
            .collect();
        units.extend(extras.iter().cloned());
        if units.is_empty() {
            return Vec::new();
        }

        let statuses = match self.source.show(&units).await {
            Ok(s) => s,
            Err(SystemdError::NotRunning(why)) => return self.no_systemd(&units, &why, now),
            Err(e) => {
                return self.unknown_for_all(&units, &format!("cannot read systemd: {e}"), now);
            }
        };
        self.warned_no_systemd = false;

        let mut out = Vec::new();
        let mut restarts_changed = false;
        let mut still_failed = BTreeSet::new();
        for (name, unit) in units.iter().zip(statuses.iter()) {
            let check_name = format!("service/{name}");
            let since = self.since_for(name, unit, now);
            let (state, summary) = if extras.contains(name) {
                if unit.active_state == "failed" {
                    still_failed.insert(name.clone());
                    evaluate_unit(unit, since, now, self.cfg.activating_grace)
                } else {
                    (State::Ok, format!("no longer failed: {} ({})", unit.active_state, unit.sub_state))
                }
            } else {
                evaluate_unit(unit, since, now, self.cfg.activating_grace)
            };
            out.push(Observation::check(check_name.clone(), state, summary, now));

            if let Some(n) = unit.n_restarts {
                out.push(Observation::sample(
                    "pikett_service_restarts_total",
                    [("unit", name.clone())],
                    n as f64,
                    "1",
                    now,
                ));
                let previous = self.restarts.insert(name.clone(), n);
                if previous != Some(n) {
                    restarts_changed = true;
                }
                if let Some(prev) = previous
                    && n > prev
                {
                    out.push(Observation::Event(Event {
                        source: check_name,
                        severity: "Warning".to_string(),
                        message_id: "ServiceRestarted".to_string(),
                        message: format!(
                            "{name} was restarted by systemd {} time(s) since the last poll (NRestarts {prev} -> {n}); now {} ({})",
                            n - prev,
                            unit.active_state,
                            unit.sub_state
                        ),
                        time: now,
                    }));
                }
            }
        }
        // Forget counters of units no longer reported (recovered failed units).
        let known = self.restarts.len();
        self.restarts.retain(|u, _| units.contains(u));
        restarts_changed |= self.restarts.len() != known;
        if restarts_changed {
            save_json(&self.state, RESTARTS_KEY, &self.restarts);
        }
        if still_failed != self.extra_failed {
            self.extra_failed = still_failed;
            save_json(&self.state, FAILED_KEY, &self.extra_failed);
        }
        out
    }
}

impl ServicesProbe {
    fn no_systemd(&mut self, units: &[String], why: &str, now: Timestamp) -> Vec<Observation> {
        if !self.warned_no_systemd {
            tracing::warn!(reason = why, "systemd is not running on this host; service checks report UNKNOWN");
            self.warned_no_systemd = true;
        }
        self.unknown_for_all(units, &format!("systemd is not running on this host ({why})"), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/system/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn unit(active: &str, sub: &str) -> UnitStatus {
        UnitStatus {
            id: "x.service".into(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            n_restarts: Some(0),
            state_change: None,
        }
    }

    #[test]
    fn parses_recorded_systemctl_show_for_several_units() {
        let units = parse_show(&read("systemctl-show-el9.txt"));
        assert_eq!(units.len(), 5);
        assert_eq!(units[0].id, "sshd.service");
        assert_eq!(units[0].active_state, "active");
        assert_eq!(units[0].sub_state, "running");
        assert_eq!(units[0].n_restarts, Some(0));
        assert_eq!(units[0].state_change, Some("2026-11-20T08:14:03Z".parse().unwrap()));
        assert_eq!(units[1].active_state, "failed");
        assert_eq!(units[1].n_restarts, Some(5));
        assert_eq!(units[2].load_state, "not-found");
        assert_eq!(units[2].state_change, None);
        assert_eq!(units[3].active_state, "activating");
        assert_eq!(units[3].sub_state, "auto-restart");
        // a timer has no NRestarts
        assert_eq!(units[4].n_restarts, None);
    }

    #[test]
    fn parses_centos7_show_without_nrestarts() {
        let units = parse_show(&read("systemctl-show-centos7.txt"));
        assert_eq!(units.len(), 2);
        assert!(units.iter().all(|u| u.n_restarts.is_none()));
        assert_eq!(units[1].active_state, "inactive");
    }

    #[test]
    fn parses_failed_unit_list() {
        assert_eq!(
            parse_failed_units(&read("systemctl-list-units-failed.txt")),
            vec!["mariadb.service".to_string(), "systemd-networkd-wait-online.service".to_string()]
        );
        assert_eq!(parse_failed_units("● foo.service loaded failed failed Foo\n"), vec!["foo.service".to_string()]);
        assert!(parse_failed_units("").is_empty());
    }

    #[test]
    fn timestamps_in_utc_and_unix_form() {
        assert_eq!(
            parse_systemd_timestamp("Mon 2026-11-23 10:00:00 UTC"),
            Some("2026-11-23T10:00:00Z".parse().unwrap())
        );
        assert_eq!(parse_systemd_timestamp("@1763892000"), Some(Timestamp::from_second(1763892000).unwrap()));
        assert_eq!(parse_systemd_timestamp(""), None);
        assert_eq!(parse_systemd_timestamp("n/a"), None);
    }

    #[test]
    fn state_mapping() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let grace = Duration::from_secs(60);
        let recent = Some(now - jiff::SignedDuration::from_secs(10));
        let old = Some(now - jiff::SignedDuration::from_secs(300));
        assert_eq!(evaluate_unit(&unit("active", "running"), old, now, grace).0, State::Ok);
        assert_eq!(evaluate_unit(&unit("activating", "start"), recent, now, grace).0, State::Ok);
        let (s, summary) = evaluate_unit(&unit("activating", "start"), old, now, grace);
        assert_eq!(s, State::Warning);
        assert!(summary.contains("for 300s"), "{summary}");
        assert_eq!(evaluate_unit(&unit("reloading", "reload"), old, now, grace).0, State::Warning);
        assert_eq!(evaluate_unit(&unit("deactivating", "stop-sigterm"), recent, now, grace).0, State::Ok);
        assert_eq!(evaluate_unit(&unit("failed", "failed"), old, now, grace).0, State::Critical);
        assert_eq!(evaluate_unit(&unit("inactive", "dead"), old, now, grace).0, State::Critical);
        let mut nf = unit("inactive", "dead");
        nf.load_state = "not-found".into();
        assert_eq!(evaluate_unit(&nf, None, now, grace), (State::Critical, "unit not found".to_string()));
        assert_eq!(evaluate_unit(&unit("weird", "x"), None, now, grace).0, State::Unknown);
    }

    #[test]
    fn recognises_no_systemd_messages() {
        assert!(systemd_missing(&read("systemctl-no-systemd.txt")));
        assert!(!systemd_missing("Failed to get properties: Unit name a b is not valid."));
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: ServicesConfig = serde_json::from_str(r#"{"units":["sshd.service"]}"#).unwrap();
        assert!(cfg.failed_units);
        assert_eq!(cfg.interval, Duration::from_secs(30));
        assert_eq!(cfg.activating_grace, Duration::from_secs(60));
        assert!(serde_json::from_str::<ServicesConfig>(r#"{"unit":["x"]}"#).is_err());
        let cfg: ServicesConfig = serde_json::from_str(r#"{"interval":"2m","activating_grace":"90s"}"#).unwrap();
        assert_eq!(cfg.interval, Duration::from_secs(120));
        assert_eq!(cfg.activating_grace, Duration::from_secs(90));
    }

    #[test]
    fn rejects_unit_names_that_would_be_options() {
        let state: SharedState = std::sync::Arc::new(crate::probes::MemoryState::default());
        let cfg = ServicesConfig { units: vec!["--all".into()], ..Default::default() };
        let err = ServicesProbe::new(cfg, state).err().unwrap();
        assert!(err.to_string().contains("--all"));
    }
}

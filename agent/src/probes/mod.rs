//! Probes: each one a source of observations, behind the [`Probe`] trait.
//!
//! A probe owns its config section (serde, unknown keys rejected), validates it
//! in its constructor, and returns observations from `poll`. The runtime
//! (`crate::runtime`) knows nothing else about it.

use std::sync::Arc;
use std::time::Duration;

use crate::observation::Observation;

pub mod backups;
pub mod checks;
pub mod host;
pub mod password_file;
pub mod patches;
pub mod redfish;
pub mod services;

/// A source of observations, polled on its own interval by its own task.
#[async_trait::async_trait]
pub trait Probe: Send {
    /// The probe's name as `test --probe NAME` takes it ("host", "redfish", ...).
    fn name(&self) -> &str;
    /// How often `poll` is called.
    fn interval(&self) -> Duration;
    /// How long after the agent starts the first `poll` comes (then every `interval`).
    fn first_poll_delay(&self) -> Duration {
        Duration::ZERO
    }
    /// One poll. Never fails: a failure is reported as an UNKNOWN check whose
    /// summary says why, so a broken target never stops the agent.
    async fn poll(&mut self) -> Vec<Observation>;
    /// Called once when the agent stops (e.g. to delete a BMC session).
    async fn shutdown(&mut self) {}
    /// State changes that belong to the observations of the last `poll` (a log cursor and
    /// the events read up to it): the agent writes them in the same spool write as those
    /// observations, so a restart never skips events nor repeats them.
    fn take_state(&mut self) -> Vec<StateUpdate> {
        Vec::new()
    }
}

/// One probe-state change: (key, value).
pub type StateUpdate = (String, Vec<u8>);

/// Small persistent key/value state for probes (log cursors, restart counters),
/// kept in the agent's spool database so it survives restarts.
pub trait StateStore: Send + Sync {
    fn load(&self, key: &str) -> Option<Vec<u8>>;
    fn save(&self, key: &str, value: &[u8]) -> Result<(), String>;
}

/// A [`StateStore`] in memory, for `test` runs and unit tests.
#[derive(Default)]
pub struct MemoryState(std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>);

impl StateStore for MemoryState {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().ok()?.get(key).cloned()
    }
    fn save(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

pub type SharedState = Arc<dyn StateStore>;

/// Where a probe comes from in the configuration: a probe's section, or one `[[checks]]`
/// entry by its result name `<kind>/<name>`. A reload compares the configuration section by
/// section (`crate::reload`). Ordered as [`from_config`] builds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Host,
    Redfish,
    Services,
    Check(String),
    Patches,
    /// One `[[backups]]` entry, by its result name `backup/<name>`.
    Backup(String),
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Section::Host => f.write_str("[host]"),
            Section::Redfish => f.write_str("[redfish]"),
            Section::Services => f.write_str("[services]"),
            Section::Patches => f.write_str("[patches]"),
            Section::Check(name) => write!(f, "[[checks]] {name}"),
            Section::Backup(name) => write!(f, "[[backups]] {name}"),
        }
    }
}

/// One probe [`from_config`] built, with the section it came from.
pub struct BuiltProbe {
    pub section: Section,
    pub probe: Box<dyn Probe>,
    /// False when an [`UnstartedProbe`] stands in (the section's problem is in `failures`).
    pub started: bool,
}

/// What [`from_config`] built: a probe for everything the config enables, and the
/// reasons some of them could not start (those stand in as [`UnstartedProbe`]s).
pub struct Built {
    pub probes: Vec<BuiltProbe>,
    /// `[redfish]: cannot read password_file …`: for `check-config` (an error) and the
    /// daemon's log; the daemon runs on.
    pub failures: Vec<String>,
}

impl Built {
    fn add(&mut self, section: Section, probe: Result<Box<dyn Probe>, String>, unstarted: UnstartedProbe) {
        match probe {
            Ok(probe) => self.probes.push(BuiltProbe { section, probe, started: true }),
            Err(e) => {
                let label = match &section {
                    Section::Check(_) => "[[checks]]".to_string(),
                    Section::Backup(_) => "[[backups]]".to_string(),
                    other => other.to_string(),
                };
                self.failures.push(format!("{label}: {e}"));
                let probe = Box::new(UnstartedProbe { reason: e, ..unstarted });
                self.probes.push(BuiltProbe { section, probe, started: false });
            }
        }
    }

    /// The probes alone, in the configured order.
    pub fn into_probes(self) -> Vec<Box<dyn Probe>> {
        self.probes.into_iter().map(|b| b.probe).collect()
    }
}

/// Builds every probe the config enables. The `host` probe always runs
/// (with defaults when `[host]` is absent); every `[[checks]]` entry is its
/// own probe, so a slow check never delays another. A probe that cannot start
/// does not keep the others from running: an [`UnstartedProbe`] reports why.
pub fn from_config(config: &crate::config::AgentConfig, state: SharedState) -> Built {
    let limits = checks::command::CommandLimits::new(config.max_concurrent_commands);
    build(config, state, &limits, |_| true)
}

/// [`from_config`] for the sections `wanted` accepts only, the command checks sharing
/// `limits` (a reload builds the changed sections with the agent's limits in force).
pub fn build(
    config: &crate::config::AgentConfig,
    state: SharedState,
    limits: &checks::command::CommandLimits,
    wanted: impl Fn(&Section) -> bool,
) -> Built {
    let mut built = Built { probes: Vec::new(), failures: Vec::new() };
    if wanted(&Section::Host) {
        let host = config.host.clone().unwrap_or_default();
        let interval = host.interval;
        built.add(
            Section::Host,
            host::HostProbe::new(host).map(|p| Box::new(p) as Box<dyn Probe>).map_err(|e| e.to_string()),
            UnstartedProbe::new("host", ["host"], interval),
        );
    }
    if let Some(cfg) = config.redfish.as_ref().filter(|_| wanted(&Section::Redfish)) {
        built.add(
            Section::Redfish,
            redfish::RedfishProbe::new(cfg.clone(), state.clone())
                .map(|p| Box::new(p) as Box<dyn Probe>)
                .map_err(|e| e.to_string()),
            UnstartedProbe::new("redfish", ["redfish/system", "redfish/bmc"], cfg.interval),
        );
    }
    if let Some(cfg) = config.services.as_ref().filter(|_| wanted(&Section::Services)) {
        built.add(
            Section::Services,
            services::ServicesProbe::new(cfg.clone(), state.clone())
                .map(|p| Box::new(p) as Box<dyn Probe>)
                .map_err(|e| e.to_string()),
            UnstartedProbe::new("services", ["services"], cfg.interval),
        );
    }
    let mut check_names = std::collections::HashSet::new();
    for cfg in config.checks.clone() {
        let section = Section::Check(checks::check_key(&cfg));
        if !wanted(&section) {
            // Still taken: a later entry of the same name is a duplicate all the same.
            check_names.insert(checks::check_key(&cfg));
            continue;
        }
        let interval = cfg.interval;
        match checks::CheckProbe::with_limits(cfg, limits) {
            Ok(p) if !check_names.insert(p.check_name().to_string()) => {
                // The first entry of that name runs; a second result under it would flap.
                let e = checks::CheckError::Duplicate { check: p.check_name().to_string() };
                built.failures.push(format!("[[checks]]: {e}"));
            }
            Ok(p) => built.probes.push(BuiltProbe { section, probe: Box::new(p), started: true }),
            Err(e) => {
                let check = match &e {
                    checks::CheckError::Invalid { check, .. } | checks::CheckError::Duplicate { check } => {
                        check.clone()
                    }
                };
                // Under a name another entry already reports, its UNKNOWN would flap with it.
                if check_names.insert(check.clone()) {
                    let unstarted = UnstartedProbe::new("checks", [check], interval);
                    built.add(section, Err(e.to_string()), unstarted);
                } else {
                    built.failures.push(format!("[[checks]]: {e}"));
                }
            }
        }
    }
    if let Some(cfg) = config.patches.as_ref().filter(|_| wanted(&Section::Patches)) {
        built.add(
            Section::Patches,
            patches::PatchesProbe::new(cfg.clone(), state.clone())
                .map(|p| Box::new(p) as Box<dyn Probe>)
                .map_err(|e| e.to_string()),
            UnstartedProbe::new("patches", ["patches"], cfg.interval),
        );
    }
    let mut backup_names = std::collections::HashSet::new();
    for cfg in &config.backups {
        let check = backups::check_name(cfg);
        // Taken even when not wanted: a later entry of the same name is a duplicate all the same.
        let first = backup_names.insert(check.clone());
        if !wanted(&Section::Backup(check.clone())) {
            continue;
        }
        if !first {
            // The first entry of that name runs; a second result under it would flap.
            let e = backups::BackupConfigError::Duplicate { check };
            built.failures.push(format!("[[backups]]: {e}"));
            continue;
        }
        built.add(
            Section::Backup(check.clone()),
            backups::BackupProbe::with_limits(cfg.clone(), state.clone(), limits)
                .map(|p| Box::new(p) as Box<dyn Probe>)
                .map_err(|e| e.to_string()),
            UnstartedProbe::new("backups", [check], cfg.interval),
        );
    }
    built
}

/// Stands in for a probe that could not start: reports UNKNOWN with the reason, on the
/// checks the probe would have reported, every interval, until the agent is restarted
/// with a config (or file) it can use.
pub struct UnstartedProbe {
    name: &'static str,
    checks: Vec<String>,
    reason: String,
    interval: Duration,
}

impl UnstartedProbe {
    fn new<const N: usize>(name: &'static str, checks: [impl Into<String>; N], interval: Duration) -> Self {
        let interval = if interval.is_zero() { Duration::from_secs(60) } else { interval };
        UnstartedProbe { name, checks: checks.into_iter().map(Into::into).collect(), reason: String::new(), interval }
    }
}

#[async_trait::async_trait]
impl Probe for UnstartedProbe {
    fn name(&self) -> &str {
        self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let now = jiff::Timestamp::now();
        let summary = format!("the {} probe cannot start: {}", self.name, self.reason);
        self.checks
            .iter()
            .map(|c| Observation::check(c.as_str(), crate::observation::State::Unknown, summary.clone(), now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(toml: &str) -> Built {
        let config = crate::config::AgentConfig::parse(std::path::Path::new("agent.toml"), toml).expect("parses");
        from_config(&config, Arc::new(MemoryState::default()))
    }

    #[tokio::test]
    async fn a_bad_entry_under_a_good_entrys_name_does_not_report_under_it() {
        let b = built(
            "[[checks]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
             [[checks]]\nname = \"db\"\nkind = \"tcp\"\n",
        );
        assert_eq!(b.failures.len(), 1, "{:?}", b.failures);
        // host and the good check; no stand-in reporting UNKNOWN as tcp/db.
        let checks: Vec<&str> = b.probes.iter().map(|p| p.probe.name()).collect();
        assert_eq!(checks, ["host", "checks"]);
    }

    #[tokio::test]
    async fn build_makes_only_the_wanted_sections_and_still_sees_duplicates() {
        let config = crate::config::AgentConfig::parse(
            std::path::Path::new("agent.toml"),
            "[[checks]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
             [[checks]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:2\"\n\
             [[checks]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"127.0.0.1:3\"\n",
        )
        .expect("parses");
        let state: SharedState = Arc::new(MemoryState::default());
        let limits = checks::command::CommandLimits::default();
        let sections = |b: &Built| b.probes.iter().map(|p| p.section.clone()).collect::<Vec<_>>();
        let only_b = build(&config, state.clone(), &limits, |s| *s == Section::Check("tcp/b".into()));
        assert_eq!(sections(&only_b), [Section::Check("tcp/b".into())]);
        assert!(only_b.failures.is_empty(), "{:?}", only_b.failures);
        // Both `a` entries are one section: the second is its duplicate, built or not.
        let only_a = build(&config, state.clone(), &limits, |s| *s == Section::Check("tcp/a".into()));
        assert_eq!(sections(&only_a), [Section::Check("tcp/a".into())]);
        assert!(only_a.failures[0].contains("duplicate") && only_a.failures.len() == 1, "{:?}", only_a.failures);
        let not_a = build(&config, state.clone(), &limits, |s| *s != Section::Check("tcp/a".into()));
        assert_eq!(sections(&not_a), [Section::Host, Section::Check("tcp/b".into())]);
        assert!(not_a.failures.is_empty(), "{:?}", not_a.failures);
        let all = from_config(&config, state);
        let expected = [Section::Host, Section::Check("tcp/a".into()), Section::Check("tcp/b".into())];
        assert_eq!(sections(&all), expected);
        assert!(all.probes.iter().all(|p| p.started));
    }

    #[tokio::test]
    async fn a_probe_that_cannot_start_stands_in_with_unknown() {
        let mut b = built(
            "[redfish]\nendpoint = \"https://127.0.0.1:1\"\nusername = \"u\"\npassword_file = \"/nonexistent/bmc.pass\"\n",
        );
        assert!(b.failures[0].starts_with("[redfish]: ") && b.failures[0].contains("bmc.pass"), "{:?}", b.failures);
        let redfish = b.probes.iter_mut().find(|p| p.probe.name() == "redfish").expect("a stand-in");
        assert!(!redfish.started && redfish.section == Section::Redfish);
        let obs = redfish.probe.poll().await;
        let names: Vec<String> = obs
            .iter()
            .filter_map(|o| match o {
                Observation::Check(c) if c.state == crate::observation::State::Unknown => Some(c.name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["redfish/system", "redfish/bmc"]);
    }
}

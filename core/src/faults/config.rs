//! The fault engine's configuration: `[faults]`, `[hosts.NAME] depends_on` and `[[rules]]`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rules::Rule;
use super::types::{ConfigError, Severity};

/// The `[faults]` section.
///
/// ```toml
/// [faults]
/// for = 2                      # consecutive non-OK results before a fault opens
/// unknown_severity = "warning" # severity of an UNKNOWN result: warning | critical
/// flap_changes = 5             # more OK <-> non-OK changes than this within flap_window ...
/// flap_window = "1h"           # ... mark the check flapping
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    #[serde(rename = "for")]
    pub for_results: u32,
    pub unknown_severity: Severity,
    pub flap_changes: u32,
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// At most this many faults of one host are paged per `storm_window`; the rest open
    /// unpaged (suppressed "fault storm") and one `host/fault-storm` fault pages instead.
    /// 0 turns the limit off.
    pub storm_faults: u32,
    #[serde(with = "humantime_serde")]
    pub storm_window: Duration,
    /// Distinct check names one host may report; results of further new names are
    /// ignored, counted, and `host/too-many-checks` (WARNING) says so. 0 turns it off.
    pub max_checks_per_host: u32,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        FaultsConfig {
            for_results: 2,
            unknown_severity: Severity::Warning,
            flap_changes: 5,
            flap_window: Duration::from_secs(3600),
            storm_faults: 20,
            storm_window: Duration::from_secs(60),
            max_checks_per_host: 5000,
        }
    }
}

impl FaultsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.for_results == 0 {
            return Err(ConfigError::Invalid {
                key: "faults.for".into(),
                reason: "must be at least 1 (results before a fault opens)".into(),
            });
        }
        if self.flap_changes == 0 {
            return Err(ConfigError::Invalid {
                key: "faults.flap_changes".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.flap_window.is_zero() {
            return Err(ConfigError::Invalid {
                key: "faults.flap_window".into(),
                reason: "must be longer than 0s".into(),
            });
        }
        if self.storm_faults > 0 && self.storm_window.is_zero() {
            return Err(ConfigError::Invalid {
                key: "faults.storm_window".into(),
                reason: "must be longer than 0s".into(),
            });
        }
        Ok(())
    }
}

/// The fault engine's part of a `[hosts.NAME]` table.
///
/// ```toml
/// [hosts.web-1]
/// depends_on = ["gw-1"]   # web-1's faults are not paged while gw-1 is down
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub depends_on: Vec<String>,
}

/// Host dependencies: host → the hosts it depends on (e.g. its gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostDeps(pub BTreeMap<String, Vec<String>>);

impl HostDeps {
    /// From the `[hosts.NAME]` tables.
    pub fn from_hosts(hosts: &BTreeMap<String, HostConfig>) -> HostDeps {
        HostDeps(
            hosts
                .iter()
                .filter(|(_, h)| !h.depends_on.is_empty())
                .map(|(name, h)| (name.clone(), h.depends_on.clone()))
                .collect(),
        )
    }

    /// The hosts `host` depends on directly.
    pub fn parents(&self, host: &str) -> &[String] {
        self.0.get(host).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every host `host` depends on, directly or transitively, nearest first; never `host`
    /// itself, and safe against cycles.
    pub fn ancestors(&self, host: &str) -> Vec<String> {
        let mut seen: BTreeSet<String> = BTreeSet::from([host.to_string()]);
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        let mut frontier: Vec<String> = self.parents(host).to_vec();
        loop {
            for p in frontier {
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            }
            let Some(next) = out.get(i) else { break };
            frontier = self.parents(next).to_vec();
            i += 1;
        }
        out
    }

    /// Rejects a host depending on itself and dependency cycles, naming the hosts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (host, parents) in &self.0 {
            if parents.iter().any(|p| p == host) {
                return Err(ConfigError::Invalid {
                    key: format!("hosts.{host}.depends_on"),
                    reason: format!("{host} cannot depend on itself"),
                });
            }
        }
        // Depth-first search with colours: 1 = on the current path, 2 = done.
        let mut colour: BTreeMap<&str, u8> = BTreeMap::new();
        for start in self.0.keys() {
            let mut path: Vec<&str> = Vec::new();
            if let Some(cycle) = self.find_cycle(start, &mut colour, &mut path) {
                return Err(ConfigError::Invalid {
                    key: format!("hosts.{start}.depends_on"),
                    reason: format!("dependency cycle: {}", cycle.join(" -> ")),
                });
            }
        }
        Ok(())
    }

    fn find_cycle<'a>(
        &'a self,
        host: &'a str,
        colour: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match colour.get(host) {
            Some(2) => return None,
            Some(_) => {
                let from = path.iter().position(|h| *h == host).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|h| h.to_string()).collect();
                cycle.push(host.to_string());
                return Some(cycle);
            }
            None => {}
        }
        colour.insert(host, 1);
        path.push(host);
        for p in self.parents(host) {
            if let Some(c) = self.find_cycle(p, colour, path) {
                return Some(c);
            }
        }
        path.pop();
        colour.insert(host, 2);
        None
    }
}

/// Everything the engine is configured with, validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub faults: FaultsConfig,
    pub rules: Vec<Rule>,
    pub deps: HostDeps,
}

impl EngineConfig {
    /// Validates every part; the error names the config key at fault.
    pub fn new(faults: FaultsConfig, rules: Vec<Rule>, deps: HostDeps) -> Result<EngineConfig, ConfigError> {
        let config = EngineConfig { faults, rules, deps };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.faults.validate()?;
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(i)?;
            if !names.insert(rule.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("rules[{i}].name"),
                    reason: format!("rule name {:?} is used twice", rule.name),
                });
            }
        }
        self.deps.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> HostDeps {
        HostDeps(pairs.iter().map(|(h, ps)| (h.to_string(), ps.iter().map(|p| p.to_string()).collect())).collect())
    }

    #[test]
    fn faults_section_defaults_when_empty() {
        let c: FaultsConfig = toml::from_str("").unwrap();
        assert_eq!(c, FaultsConfig::default());
        assert_eq!(c.for_results, 2);
        assert_eq!(c.flap_window, Duration::from_secs(3600));
    }

    #[test]
    fn faults_section_parses_every_key() {
        let c: FaultsConfig =
            toml::from_str("for = 3\nunknown_severity = \"critical\"\nflap_changes = 7\nflap_window = \"30m\"\n")
                .unwrap();
        assert_eq!(c.for_results, 3);
        assert_eq!(c.unknown_severity, Severity::Critical);
        assert_eq!(c.flap_changes, 7);
        assert_eq!(c.flap_window, Duration::from_secs(1800));
    }

    #[test]
    fn faults_section_rejects_a_typo_naming_the_key() {
        let err = toml::from_str::<FaultsConfig>("flap_chanegs = 3\n").unwrap_err();
        assert!(err.to_string().contains("flap_chanegs"), "{err}");
    }

    #[test]
    fn zero_for_is_rejected() {
        let c = FaultsConfig { for_results: 0, ..FaultsConfig::default() };
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("faults.for"), "{err}");
    }

    #[test]
    fn ancestors_are_transitive_and_cycle_safe() {
        let d = deps(&[("web-1", &["gw-1"]), ("gw-1", &["core"]), ("core", &["gw-1"])]);
        assert_eq!(d.ancestors("web-1"), vec!["gw-1", "core"]);
        assert_eq!(d.ancestors("core"), vec!["gw-1"]);
        assert!(d.ancestors("other").is_empty());
    }

    #[test]
    fn dependency_cycle_is_rejected_naming_the_hosts() {
        let d = deps(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let err = d.validate().unwrap_err().to_string();
        assert!(err.contains("a -> b -> c -> a"), "{err}");
    }

    #[test]
    fn self_dependency_is_rejected() {
        let err = deps(&[("a", &["a"])]).validate().unwrap_err().to_string();
        assert!(err.contains("hosts.a.depends_on"), "{err}");
    }

    #[test]
    fn host_tables_give_dependencies() {
        let hosts: BTreeMap<String, HostConfig> = toml::from_str("[web-1]\ndepends_on = [\"gw-1\"]\n[gw-1]\n").unwrap();
        let d = HostDeps::from_hosts(&hosts);
        assert_eq!(d.parents("web-1"), ["gw-1".to_string()]);
        assert!(d.parents("gw-1").is_empty());
    }
}

//! Reloading the configuration without a restart (SIGHUP, `systemctl reload`).
//!
//! What changes weekly applies at once: people, rotations, escalation, channels,
//! customers, SLA contracts, `[faults]`, `[hosts.*]` and rules. The file is validated
//! whole first (the same errors as `check-config`, and the channels and fault rules are
//! built); an invalid file is refused and the configuration in force stays. Keys that
//! need the process (listening addresses, TLS, data directory, `[store]`, retention, limits) keep
//! their old values until the next restart, and the reload says which changed.
//!
//! Agent streams are untouched; escalations in flight continue at their next step with
//! the new plan (see [`Pager::reload`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::CollectorConfig;
use crate::services::faults::FaultService;
use crate::services::pager::Pager;

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The file read.
    pub path: PathBuf,
    /// Top-level keys or tables that changed but take effect only at the next restart.
    pub restart_needed: Vec<String>,
}

pub struct Reloader {
    path: Option<PathBuf>,
    current: Mutex<CollectorConfig>,
    faults: Arc<FaultService>,
    pager: Arc<Pager>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, current: CollectorConfig, faults: Arc<FaultService>, pager: Arc<Pager>) -> Self {
        Reloader { path, current: Mutex::new(current), faults, pager }
    }

    /// Reads, validates and applies the file; `Err` holds every problem found (nothing
    /// was applied then).
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let Some(path) = &self.path else {
            return Err(vec!["the collector runs on embedded defaults (no --config file): nothing to reload".into()]);
        };
        let new =
            CollectorConfig::load(path).map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        // Build what can still fail before changing anything: all or nothing.
        let engine = new.engine_config().map_err(|e| vec![format!("{}: {e}", path.display())])?;
        new.channels.build().map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let restart_needed = restart_needed(&current, &new);
        self.pager.reload(&new).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        self.faults.reload(engine);
        // What needs a restart stays as it is in force, so the next reload compares right.
        *current = reloadable_into(current.clone(), &new);
        Ok(Reloaded { path: path.clone(), restart_needed })
    }
}

/// `old` with the reloadable parts taken from `new`.
fn reloadable_into(mut old: CollectorConfig, new: &CollectorConfig) -> CollectorConfig {
    old.people = new.people.clone();
    old.rotations = new.rotations.clone();
    old.escalation = new.escalation.clone();
    old.channels = new.channels.clone();
    old.customers = new.customers.clone();
    old.sla = new.sla.clone();
    old.faults = new.faults.clone();
    old.hosts = new.hosts.clone();
    old.rules = new.rules.clone();
    old
}

/// The top-level keys whose change a reload does not apply, by their debug form (the
/// config has no `PartialEq`, and a spurious "changed" costs only a log line).
pub fn restart_needed(old: &CollectorConfig, new: &CollectorConfig) -> Vec<String> {
    let applied = reloadable_into(old.clone(), new);
    let (a, b) = (format!("{applied:#?}"), format!("{new:#?}"));
    if a == b {
        return Vec::new();
    }
    // Top-level fields print as `    name: ...` at one indent in the pretty form.
    let fields = |text: &str| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.lines().skip(1) {
            if let Some(rest) = line.strip_prefix("    ")
                && !rest.starts_with(' ')
                && let Some((name, _)) = rest.split_once(':')
            {
                out.push((name.to_string(), String::new()));
            }
            if let Some(last) = out.last_mut() {
                last.1.push_str(line);
                last.1.push('\n');
            }
        }
        out
    };
    let (fa, fb) = (fields(&a), fields(&b));
    fa.iter().zip(fb.iter()).filter(|(x, y)| x != y).map(|(x, _)| x.0.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CollectorConfig {
        CollectorConfig::parse(std::path::Path::new("c.toml"), text).expect("parses")
    }

    #[test]
    fn only_keys_a_reload_does_not_apply_are_named() {
        let old = parse("listen = \"127.0.0.1:9740\"\n[people.alice]\nsms = \"+4915100000001\"\n");
        let new = parse("listen = \"127.0.0.1:9741\"\n[people.bob]\nsms = \"+4915100000002\"\n");
        assert_eq!(restart_needed(&old, &new), ["listen"]);
        let plan_only = parse("listen = \"127.0.0.1:9740\"\n[people.bob]\nsms = \"+4915100000002\"\n");
        assert!(restart_needed(&old, &plan_only).is_empty());
        let store =
            parse("listen = \"127.0.0.1:9740\"\n[store]\nlease_ttl = \"8s\"\n[people.bob]\nsms = \"+4915100000002\"\n");
        assert_eq!(restart_needed(&plan_only, &store), ["store"]);
    }
}

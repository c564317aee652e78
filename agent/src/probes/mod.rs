//! Probes: each one a source of observations, behind the [`Probe`] trait.
//!
//! A probe owns its config section (serde, unknown keys rejected), validates it
//! in its constructor, and returns observations from `poll`. The scheduler
//! (`crate::scheduler`) knows nothing else about it.

use std::sync::Arc;
use std::time::Duration;

use crate::observation::Observation;

pub mod checks;
pub mod host;
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

/// Builds every probe the config enables. The `host` probe always runs
/// (with defaults when `[host]` is absent); every `[[checks]]` entry is its
/// own probe, so a slow check never delays another.
pub fn from_config(config: &crate::config::AgentConfig, state: SharedState) -> Result<Vec<Box<dyn Probe>>, String> {
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    let host = config.host.clone().unwrap_or_default();
    probes.push(Box::new(host::HostProbe::new(host).map_err(|e| format!("[host]: {e}"))?));
    if let Some(cfg) = &config.redfish {
        let probe = redfish::RedfishProbe::new(cfg.clone(), state.clone()).map_err(|e| format!("[redfish]: {e}"))?;
        probes.push(Box::new(probe));
    }
    if let Some(cfg) = &config.services {
        let probe = services::ServicesProbe::new(cfg.clone(), state.clone()).map_err(|e| format!("[services]: {e}"))?;
        probes.push(Box::new(probe));
    }
    let limits = checks::command::CommandLimits::new(config.max_concurrent_commands);
    for probe in checks::probes_from_config(config.checks.clone(), &limits).map_err(|e| format!("[[checks]]: {e}"))? {
        probes.push(Box::new(probe));
    }
    if let Some(cfg) = &config.patches {
        let probe = patches::PatchesProbe::new(cfg.clone(), state.clone()).map_err(|e| format!("[patches]: {e}"))?;
        probes.push(Box::new(probe));
    }
    Ok(probes)
}

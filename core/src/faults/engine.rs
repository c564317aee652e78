//! The fault state machine: applies results, samples, liveness and staff actions to the engine
//! state and reports transitions and changed records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::config::EngineConfig;
use super::rules::{self, RuleKey};
use super::suppress::{self, elapsed, host_reachable};
use super::types::ConfigError;
use super::types::{
    CheckInput, CheckState, EventKind, FAULT_STORM, Fault, FaultFilter, FaultState, HOST_REACHABLE, Maintenance,
    NewMaintenance, NewSilence, SampleInput, Severity, Silence, Suppression, TimelineEntry, Transition,
};

/// Identifies a check of a host (and its at most one non-resolved fault).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TrackKey {
    pub host: String,
    pub check: String,
}

impl TrackKey {
    pub fn new(host: &str, check: &str) -> TrackKey {
        TrackKey { host: host.to_string(), check: check.to_string() }
    }
}

/// What the engine remembers about a check between results. A check with no record behaves
/// exactly like `Track::default()`, so default tracks are dropped, not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// Whether the last result was OK (a check never seen counts as OK).
    pub last_ok: bool,
    /// Consecutive non-OK results up to the last one.
    pub streak: u32,
    /// The worst severity within the current streak.
    pub streak_worst: Option<Severity>,
    /// The worst severity while state changes are within the flap window.
    pub recent_worst: Option<Severity>,
    /// Times of the OK <-> non-OK changes within the flap window, oldest first.
    pub changes: VecDeque<Timestamp>,
    pub flapping: bool,
    /// A fault staff resolved by hand: reopened if the next result is still non-OK.
    pub reopen: Option<u64>,
}

impl Default for Track {
    fn default() -> Self {
        Track {
            last_ok: true,
            streak: 0,
            streak_worst: None,
            recent_worst: None,
            changes: VecDeque::new(),
            flapping: false,
            reopen: None,
        }
    }
}

/// What the engine knows about a host that has sent batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub customer: String,
    pub last_seen: Timestamp,
    /// A `host/reachable` fault staff resolved by hand: reopened while the host stays silent.
    pub reopen: Option<u64>,
}

/// The next ids the engine hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIds {
    pub fault: u64,
    pub maintenance: u64,
    pub silence: u64,
}

impl Default for NextIds {
    fn default() -> Self {
        NextIds { fault: 1, maintenance: 1, silence: 1 }
    }
}

/// The engine's whole state: what must survive a restart, nothing derived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    pub next: NextIds,
    pub faults: BTreeMap<u64, Fault>,
    #[serde(with = "pairs")]
    pub tracks: BTreeMap<TrackKey, Track>,
    /// Where each rule series' `for` clock started (present only while its condition holds).
    #[serde(with = "pairs")]
    pub rule_tracks: BTreeMap<RuleKey, Timestamp>,
    pub hosts: BTreeMap<String, HostInfo>,
    pub maintenances: BTreeMap<u64, Maintenance>,
    pub silences: BTreeMap<u64, Silence>,
}

impl EngineState {
    /// Applies the changed records of [`Engine::take_dirty`]: a store that applies every
    /// `Dirty` in turn holds exactly the engine's state.
    pub fn apply(&mut self, dirty: Dirty) {
        fn upsert<K: Ord, V>(map: &mut BTreeMap<K, V>, changes: Vec<(K, Option<V>)>) {
            for (k, v) in changes {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
        self.next = dirty.next;
        upsert(&mut self.faults, dirty.faults);
        upsert(&mut self.tracks, dirty.tracks);
        upsert(&mut self.rule_tracks, dirty.rule_tracks);
        upsert(&mut self.hosts, dirty.hosts);
        upsert(&mut self.maintenances, dirty.maintenances);
        upsert(&mut self.silences, dirty.silences);
    }
}

/// Records changed since the last [`Engine::take_dirty`]: `Some` = write, `None` = delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dirty {
    pub next: NextIds,
    pub faults: Vec<(u64, Option<Fault>)>,
    pub tracks: Vec<(TrackKey, Option<Track>)>,
    pub rule_tracks: Vec<(RuleKey, Option<Timestamp>)>,
    pub hosts: Vec<(String, Option<HostInfo>)>,
    pub maintenances: Vec<(u64, Option<Maintenance>)>,
    pub silences: Vec<(u64, Option<Silence>)>,
}

impl Dirty {
    /// No record changed (the id counters are always included).
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
            && self.tracks.is_empty()
            && self.rule_tracks.is_empty()
            && self.hosts.is_empty()
            && self.maintenances.is_empty()
            && self.silences.is_empty()
    }
}

#[derive(Debug, Default)]
struct DirtySet {
    faults: BTreeSet<u64>,
    tracks: BTreeSet<TrackKey>,
    rule_tracks: BTreeSet<RuleKey>,
    hosts: BTreeSet<String>,
    maintenances: BTreeSet<u64>,
    silences: BTreeSet<u64>,
}

/// A staff action the engine refuses; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("no fault with id {0}")]
    NoSuchFault(u64),
    #[error("fault {0} is already resolved")]
    AlreadyResolved(u64),
    #[error("fault {id} is already acknowledged by {by}")]
    AlreadyAcknowledged { id: u64, by: String },
    #[error("no maintenance window with id {0}")]
    NoSuchMaintenance(u64),
    #[error("no silence with id {0}")]
    NoSuchSilence(u64),
    #[error("a host name is required")]
    EmptyHost,
    #[error("a maintenance window must end after it starts (start {start}, end {end})")]
    InvalidWindow { start: Timestamp, end: Timestamp },
    #[error("a silence must last beyond now (until {until}, now {now})")]
    SilenceEnded { until: Timestamp, now: Timestamp },
}

/// Stored state that cannot be the engine's own (damaged or edited storage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("stored faults {first} and {second} are both unresolved for {host} {check}")]
    DuplicateOpen { host: String, check: String, first: u64, second: u64 },
    #[error("stored fault record {key} holds fault {id}")]
    MismatchedId { key: u64, id: u64 },
    #[error("stored next fault id {next} is not above the highest stored fault id {max}")]
    CounterBehind { next: u64, max: u64 },
}

/// The fault engine. See the module docs of [`crate::faults`] for its semantics.
#[derive(Debug)]
pub struct Engine {
    config: Arc<EngineConfig>,
    state: EngineState,
    /// The non-resolved fault of each (host, check); derived from `state.faults`.
    open: BTreeMap<TrackKey, u64>,
    dirty: DirtySet,
    /// Faults opened per host in the current storm window: (window start, count). Not
    /// persisted: a restart starts the windows afresh.
    storms: std::collections::HashMap<String, (Timestamp, u32)>,
    /// Some maintenance window has no customer yet (see [`Maintenance::customer`]).
    unassigned_windows: bool,
}

/// The observation time used for a result: never after `now`, never before `floor`.
fn obs_time(time: Timestamp, now: Timestamp, floor: Option<Timestamp>) -> Timestamp {
    let t = time.min(now);
    floor.map_or(t, |f| t.max(f))
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Result<Engine, ConfigError> {
        config.validate()?;
        Ok(Engine {
            config: Arc::new(config),
            state: EngineState::default(),
            open: BTreeMap::new(),
            dirty: DirtySet::default(),
            storms: Default::default(),
            unassigned_windows: false,
        })
    }

    /// An engine continuing from stored state (e.g. read back from sled); behaves exactly as
    /// the engine that produced the state would have.
    pub fn restore(config: EngineConfig, state: EngineState) -> Result<Engine, RestoreError> {
        config.validate()?;
        let mut open = BTreeMap::new();
        for (&key, f) in &state.faults {
            if key != f.id {
                return Err(RestoreError::MismatchedId { key, id: f.id });
            }
            if !f.is_resolved()
                && let Some(first) = open.insert(TrackKey::new(&f.host, &f.check), f.id)
            {
                return Err(RestoreError::DuplicateOpen {
                    host: f.host.clone(),
                    check: f.check.clone(),
                    first,
                    second: f.id,
                });
            }
        }
        if let Some(&max) = state.faults.keys().next_back()
            && state.next.fault <= max
        {
            return Err(RestoreError::CounterBehind { next: state.next.fault, max });
        }
        let unassigned_windows = state.maintenances.values().any(|m| m.customer.is_empty());
        Ok(Engine {
            config: Arc::new(config),
            state,
            open,
            dirty: DirtySet::default(),
            storms: Default::default(),
            unassigned_windows,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replaces the configuration (a reload): open faults stay as they are; the new
    /// `for`, flapping, dependency and rule settings apply from the next result on.
    pub fn set_config(&mut self, config: EngineConfig) {
        self.config = Arc::new(config);
    }

    /// The configuration, shared (for callers that hold it while feeding the engine).
    pub fn shared_config(&self) -> Arc<EngineConfig> {
        Arc::clone(&self.config)
    }

    /// The whole state (serde-serializable), e.g. for a snapshot.
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// The records changed since the last call, to write to storage.
    pub fn take_dirty(&mut self) -> Dirty {
        let d = std::mem::take(&mut self.dirty);
        let s = &self.state;
        fn collect<K: Ord + Clone, V: Clone>(keys: BTreeSet<K>, map: &BTreeMap<K, V>) -> Vec<(K, Option<V>)> {
            keys.into_iter()
                .map(|k| {
                    let v = map.get(&k).cloned();
                    (k, v)
                })
                .collect()
        }
        Dirty {
            next: s.next,
            faults: collect(d.faults, &s.faults),
            tracks: collect(d.tracks, &s.tracks),
            rule_tracks: collect(d.rule_tracks, &s.rule_tracks),
            hosts: collect(d.hosts, &s.hosts),
            maintenances: collect(d.maintenances, &s.maintenances),
            silences: collect(d.silences, &s.silences),
        }
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn fault(&self, id: u64) -> Option<&Fault> {
        self.state.faults.get(&id)
    }

    /// Faults matching the filter, by id.
    pub fn faults(&self, filter: &FaultFilter) -> Vec<&Fault> {
        self.state.faults.values().filter(|f| filter.matches(f)).collect()
    }

    /// The non-resolved fault of a check, if any.
    pub fn open_fault(&self, host: &str, check: &str) -> Option<&Fault> {
        self.open.get(&TrackKey::new(host, check)).and_then(|id| self.state.faults.get(id))
    }

    /// Fault counts by state and severity; every combination is present (zero included).
    pub fn counts(&self) -> BTreeMap<(FaultState, Severity), u64> {
        let mut c = BTreeMap::new();
        for st in [FaultState::Open, FaultState::Acknowledged, FaultState::Resolved] {
            for sev in [Severity::Warning, Severity::Critical] {
                c.insert((st, sev), 0);
            }
        }
        for f in self.state.faults.values() {
            *c.entry((f.state, f.severity)).or_insert(0) += 1;
        }
        c
    }

    pub fn maintenances(&self) -> impl Iterator<Item = &Maintenance> {
        self.state.maintenances.values()
    }

    pub fn silences(&self) -> impl Iterator<Item = &Silence> {
        self.state.silences.values()
    }

    pub fn hosts(&self) -> &BTreeMap<String, HostInfo> {
        &self.state.hosts
    }

    /// Why a fault of `check` on `host` would not page at `now`.
    pub fn is_suppressed(&self, host: &str, check: &str, now: Timestamp) -> Option<Suppression> {
        suppress::suppression(
            host,
            check,
            now,
            &self.config.deps,
            &self.state.maintenances,
            &self.state.silences,
            |h| self.is_down(h),
        )
    }

    fn is_down(&self, host: &str) -> bool {
        self.open.contains_key(&TrackKey::new(host, HOST_REACHABLE))
    }

    // ---- inputs --------------------------------------------------------------------------

    /// A batch arrived from `host`: it is reachable; an open `host/reachable` fault resolves.
    pub fn host_seen(&mut self, host: &str, customer: &str, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        let info = self.state.hosts.entry(host.to_string()).or_insert_with(|| HostInfo {
            customer: customer.to_string(),
            last_seen: now,
            reopen: None,
        });
        info.customer = customer.to_string();
        info.last_seen = now;
        info.reopen = None;
        self.dirty.hosts.insert(host.to_string());
        if self.unassigned_windows {
            self.assign_windows(host, customer);
        }
        if let Some(&id) = self.open.get(&TrackKey::new(host, HOST_REACHABLE)) {
            self.refresh_suppression(id, now, false, &mut out);
            self.resolve_fault(id, now, None, "host seen again".into(), &mut out);
            self.refresh_all(now, &mut out);
        }
        out
    }

    /// Gives `host`'s maintenance windows without a customer to `customer`, the one it
    /// reports for.
    fn assign_windows(&mut self, host: &str, customer: &str) {
        let mut left = false;
        for m in self.state.maintenances.values_mut().filter(|m| m.customer.is_empty()) {
            if m.host == host {
                m.customer = customer.to_string();
                self.dirty.maintenances.insert(m.id);
            } else {
                left = true;
            }
        }
        self.unassigned_windows = left;
    }

    /// One check result. A result named `host/reachable` is ignored (the engine owns it).
    pub fn check_result(&mut self, input: CheckInput, now: Timestamp) -> Vec<Transition> {
        if input.check == HOST_REACHABLE {
            return Vec::new();
        }
        let min = self.config.faults.for_results;
        self.process_check(input, now, min)
    }

    /// One sample, evaluated by every `[[rules]]` entry that selects it.
    /// Whether any rule of `host` has state (a running `for` clock, a non-OK track or an
    /// open fault). When not, a sample that fires no rule changes nothing, so the caller
    /// may skip it (the hot path of ingest).
    pub fn has_rule_state(&self, host: &str) -> bool {
        let from = TrackKey::new(host, "rule/");
        let to = TrackKey::new(host, "rule0");
        self.state.rule_tracks.keys().any(|k| k.host == host)
            || self.state.tracks.range(from.clone()..to.clone()).next().is_some()
            || self.open.range(from..to).next().is_some()
    }

    pub fn sample(&mut self, input: &SampleInput, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        let config = Arc::clone(&self.config);
        for rule in &config.rules {
            if !rule.selects(&input.name, &input.labels) {
                continue;
            }
            let Some(cond) = rule.condition(input.value) else {
                continue;
            };
            let key = RuleKey { rule: rule.name.clone(), host: input.host.clone(), labels: input.labels.clone() };
            let t = obs_time(input.time, now, None);
            let firing = if cond {
                let first = match self.state.rule_tracks.get(&key) {
                    Some(&first) => first,
                    None => {
                        self.state.rule_tracks.insert(key.clone(), t);
                        self.dirty.rule_tracks.insert(key);
                        t
                    }
                };
                elapsed(first, t) >= rule.for_duration
            } else {
                if self.state.rule_tracks.remove(&key).is_some() {
                    self.dirty.rule_tracks.insert(key);
                }
                false
            };
            let check = rules::check_name(&rule.name, &input.labels);
            let tkey = TrackKey::new(&input.host, &check);
            // An OK result for a check with no record and no fault changes nothing.
            if !firing && !self.state.tracks.contains_key(&tkey) && !self.open.contains_key(&tkey) {
                continue;
            }
            let state = if firing { rule.severity.as_state() } else { CheckState::Ok };
            let summary = rule.summary(&input.host, &input.labels, input.value, firing);
            out.extend(self.process_check(
                CheckInput {
                    host: input.host.clone(),
                    customer: input.customer.clone(),
                    check,
                    state,
                    summary,
                    time: input.time,
                },
                now,
                1,
            ));
        }
        out
    }

    /// Opens a critical `host/reachable` fault for every known host silent for longer than
    /// `host_timeout(host)`, and updates every open fault's suppression (maintenance windows
    /// and silences starting or ending, hosts going down).
    pub fn tick(&mut self, now: Timestamp, host_timeout: impl Fn(&str) -> Duration) -> Vec<Transition> {
        let mut out = Vec::new();
        let config = Arc::clone(&self.config);
        // Parents before children (a child has more ancestors), so a child whose parent goes
        // down in this same tick opens already suppressed.
        let mut order: Vec<(usize, String)> =
            self.state.hosts.keys().map(|h| (config.deps.ancestors(h).len(), h.clone())).collect();
        order.sort();
        for (_, host) in order {
            let Some(info) = self.state.hosts.get(&host).cloned() else {
                continue;
            };
            let timeout = host_timeout(&host);
            if host_reachable(info.last_seen, now, timeout) || self.is_down(&host) {
                continue;
            }
            // A parent that missed its latest batch may be what cut this host off: wait until
            // it is declared down (then this fault opens suppressed) or is seen again.
            let parent_suspect = config.deps.ancestors(&host).iter().any(|p| {
                !self.is_down(p)
                    && self.state.hosts.get(p).is_some_and(|pi| elapsed(pi.last_seen, now) > host_timeout(p) / 3)
            });
            if parent_suspect {
                continue;
            }
            let summary = format!("no batch since {} (timeout {}s)", info.last_seen, timeout.as_secs());
            let reopen = info.reopen.filter(|id| self.state.faults.get(id).is_some_and(Fault::is_resolved));
            if let Some(h) = self.state.hosts.get_mut(&host)
                && h.reopen.is_some()
            {
                h.reopen = None;
                self.dirty.hosts.insert(host.clone());
            }
            let key = TrackKey::new(&host, HOST_REACHABLE);
            match reopen {
                Some(id) => self.reopen_fault(id, Severity::Critical, summary, false, now, now, &mut out),
                None => {
                    self.create_fault(&key, &info.customer, Severity::Critical, summary, 0, false, now, now, &mut out);
                }
            }
        }
        self.refresh_all(now, &mut out);
        out
    }

    // ---- staff actions ---------------------------------------------------------------------

    /// Staff acknowledge an open fault (`pikett ack ID [--note TEXT]`).
    pub fn acknowledge(
        &mut self,
        id: u64,
        who: &str,
        note: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Transition>, ActionError> {
        let f = self.state.faults.get_mut(&id).ok_or(ActionError::NoSuchFault(id))?;
        match f.state {
            FaultState::Resolved => return Err(ActionError::AlreadyResolved(id)),
            FaultState::Acknowledged => {
                return Err(ActionError::AlreadyAcknowledged { id, by: f.acked_by.clone().unwrap_or_default() });
            }
            FaultState::Open => {}
        }
        f.state = FaultState::Acknowledged;
        f.acked_at = Some(now);
        f.acked_by = Some(who.to_string());
        f.timeline.push(TimelineEntry {
            at: now,
            kind: EventKind::Acknowledged,
            who: Some(who.to_string()),
            text: note.unwrap_or("acknowledged").to_string(),
        });
        self.dirty.faults.insert(id);
        Ok(vec![Transition { fault_id: id, kind: EventKind::Acknowledged, at: now, page: false }])
    }

    /// Staff resolve a fault by hand (`pikett resolve ID`). If the check's next result (for
    /// `host/reachable`: the next tick) still fails, the same fault is reopened.
    pub fn resolve(
        &mut self,
        id: u64,
        who: &str,
        note: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Transition>, ActionError> {
        let f = self.state.faults.get(&id).ok_or(ActionError::NoSuchFault(id))?;
        if f.is_resolved() {
            return Err(ActionError::AlreadyResolved(id));
        }
        let key = TrackKey::new(&f.host, &f.check);
        let mut out = Vec::new();
        let text = note.unwrap_or("resolved by hand").to_string();
        self.refresh_suppression(id, now, false, &mut out);
        self.resolve_fault(id, now, Some(who), text, &mut out);
        if key.check == HOST_REACHABLE {
            if let Some(h) = self.state.hosts.get_mut(&key.host) {
                h.reopen = Some(id);
                self.dirty.hosts.insert(key.host.clone());
            }
            self.refresh_all(now, &mut out);
        } else {
            let mut tr = self.state.tracks.get(&key).cloned().unwrap_or_default();
            tr.reopen = Some(id);
            self.save_track(key, tr);
        }
        Ok(out)
    }

    /// Adds a line to a fault's timeline (e.g. a notification step by the notify layer).
    pub fn annotate(&mut self, id: u64, who: Option<&str>, text: &str, now: Timestamp) -> Result<(), ActionError> {
        let f = self.state.faults.get_mut(&id).ok_or(ActionError::NoSuchFault(id))?;
        f.timeline.push(TimelineEntry {
            at: now,
            kind: EventKind::Note,
            who: who.map(str::to_string),
            text: text.to_string(),
        });
        self.dirty.faults.insert(id);
        Ok(())
    }

    /// Announces a maintenance window (`pikett maintenance add`); returns its id. Open faults
    /// it covers now are suppressed at once.
    pub fn add_maintenance(
        &mut self,
        m: NewMaintenance,
        now: Timestamp,
    ) -> Result<(u64, Vec<Transition>), ActionError> {
        if m.host.trim().is_empty() {
            return Err(ActionError::EmptyHost);
        }
        if m.end <= m.start {
            return Err(ActionError::InvalidWindow { start: m.start, end: m.end });
        }
        let id = self.state.next.maintenance;
        self.state.next.maintenance += 1;
        self.state.maintenances.insert(
            id,
            Maintenance {
                id,
                host: m.host,
                customer: m.customer,
                start: m.start,
                end: m.end,
                reason: m.reason,
                announced_at: now,
                who: m.who,
            },
        );
        self.dirty.maintenances.insert(id);
        self.unassigned_windows |= self.state.maintenances.get(&id).is_some_and(|m| m.customer.is_empty());
        let mut out = Vec::new();
        self.refresh_all(now, &mut out);
        Ok((id, out))
    }

    /// Silences a host or one of its checks until `until` (`pikett silence`); returns its id.
    pub fn add_silence(&mut self, s: NewSilence, now: Timestamp) -> Result<(u64, Vec<Transition>), ActionError> {
        if s.host.trim().is_empty() {
            return Err(ActionError::EmptyHost);
        }
        if s.until <= now {
            return Err(ActionError::SilenceEnded { until: s.until, now });
        }
        let id = self.state.next.silence;
        self.state.next.silence += 1;
        self.state.silences.insert(
            id,
            Silence { id, host: s.host, check: s.check, until: s.until, reason: s.reason, who: s.who, created_at: now },
        );
        self.dirty.silences.insert(id);
        let mut out = Vec::new();
        self.refresh_all(now, &mut out);
        Ok((id, out))
    }

    /// Deletes a maintenance window (a mistaken announcement).
    pub fn remove_maintenance(&mut self, id: u64, now: Timestamp) -> Result<Vec<Transition>, ActionError> {
        self.state.maintenances.remove(&id).ok_or(ActionError::NoSuchMaintenance(id))?;
        self.dirty.maintenances.insert(id);
        let mut out = Vec::new();
        self.refresh_all(now, &mut out);
        Ok(out)
    }

    /// Deletes a silence before it runs out.
    pub fn remove_silence(&mut self, id: u64, now: Timestamp) -> Result<Vec<Transition>, ActionError> {
        self.state.silences.remove(&id).ok_or(ActionError::NoSuchSilence(id))?;
        self.dirty.silences.insert(id);
        let mut out = Vec::new();
        self.refresh_all(now, &mut out);
        Ok(out)
    }

    /// A host is retired: its faults resolve (by `who`, never reopened) and the engine forgets
    /// it, so it never raises `host/reachable` again.
    pub fn forget_host(&mut self, host: &str, who: &str, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        let ids: Vec<u64> = self.open.iter().filter(|(k, _)| k.host == host).map(|(_, &id)| id).collect();
        for id in ids {
            self.refresh_suppression(id, now, false, &mut out);
            self.resolve_fault(id, now, Some(who), "decommissioned: host removed".into(), &mut out);
        }
        if self.state.hosts.remove(host).is_some() {
            self.dirty.hosts.insert(host.to_string());
        }
        let tracks: Vec<TrackKey> = self.state.tracks.keys().filter(|k| k.host == host).cloned().collect();
        for k in tracks {
            self.state.tracks.remove(&k);
            self.dirty.tracks.insert(k);
        }
        let rule_tracks: Vec<RuleKey> = self.state.rule_tracks.keys().filter(|k| k.host == host).cloned().collect();
        for k in rule_tracks {
            self.state.rule_tracks.remove(&k);
            self.dirty.rule_tracks.insert(k);
        }
        self.refresh_all(now, &mut out);
        out
    }

    /// Forgets resolved faults resolved before `before`, and maintenance windows and silences
    /// that ended before it; returns how many records went.
    pub fn prune(&mut self, before: Timestamp) -> usize {
        let faults: Vec<u64> = self
            .state
            .faults
            .values()
            .filter(|f| f.resolved_at.is_some_and(|r| r < before) && f.is_resolved())
            .map(|f| f.id)
            .collect();
        let maint: Vec<u64> = self.state.maintenances.values().filter(|m| m.end < before).map(|m| m.id).collect();
        let sil: Vec<u64> = self.state.silences.values().filter(|s| s.until < before).map(|s| s.id).collect();
        let n = faults.len() + maint.len() + sil.len();
        for id in faults {
            self.state.faults.remove(&id);
            self.dirty.faults.insert(id);
            // A pending manual-resolve reopen of a forgotten fault is dropped with it; the
            // reopen paths check that the fault still exists.
        }
        for id in maint {
            self.state.maintenances.remove(&id);
            self.dirty.maintenances.insert(id);
        }
        for id in sil {
            self.state.silences.remove(&id);
            self.dirty.silences.insert(id);
        }
        n
    }

    // ---- the state machine -----------------------------------------------------------------

    fn severity_of(&self, state: CheckState) -> Option<Severity> {
        match state {
            CheckState::Ok => None,
            CheckState::Warning => Some(Severity::Warning),
            CheckState::Critical => Some(Severity::Critical),
            CheckState::Unknown => Some(self.config.faults.unknown_severity),
        }
    }

    fn process_check(&mut self, input: CheckInput, now: Timestamp, min_results: u32) -> Vec<Transition> {
        let mut out = Vec::new();
        let key = TrackKey { host: input.host, check: input.check };
        // The common case: an OK result for a check with no record and no fault changes
        // nothing (a missing record behaves as `Track::default()`).
        if input.state == CheckState::Ok && !self.state.tracks.contains_key(&key) && !self.open.contains_key(&key) {
            return out;
        }
        let mut tr = self.state.tracks.get(&key).cloned().unwrap_or_default();
        let window = self.config.faults.flap_window;
        let flap_changes = self.config.faults.flap_changes as usize;

        let is_ok = input.state == CheckState::Ok;
        let sev = self.severity_of(input.state);
        let t = obs_time(input.time, now, tr.changes.back().copied());
        if is_ok != tr.last_ok {
            tr.changes.push_back(t);
        }
        while tr.changes.front().is_some_and(|&c| elapsed(c, t) >= window) {
            tr.changes.pop_front();
        }
        tr.last_ok = is_ok;
        match sev {
            Some(s) => {
                tr.streak = tr.streak.saturating_add(1);
                tr.streak_worst = tr.streak_worst.max(Some(s));
            }
            None => {
                tr.streak = 0;
                tr.streak_worst = None;
            }
        }
        if tr.changes.is_empty() {
            tr.recent_worst = None;
        } else {
            tr.recent_worst = tr.recent_worst.max(sev);
        }
        let was_flapping = tr.flapping;
        let now_flapping = if was_flapping { !tr.changes.is_empty() } else { tr.changes.len() > flap_changes };
        tr.flapping = now_flapping;

        let mut open_id = self.open.get(&key).copied();
        let mut counted = false;
        if let (Some(id), None, Some(s)) = (tr.reopen.take(), open_id, sev)
            && self.state.faults.get(&id).is_some_and(Fault::is_resolved)
        {
            self.reopen_fault(id, s, input.summary.clone(), now_flapping, t, now, &mut out);
            open_id = Some(id);
            counted = true;
        }

        match open_id {
            Some(id) => {
                let resolves = is_ok && !now_flapping;
                self.refresh_suppression(id, now, !resolves, &mut out);
                if let Some(f) = self.state.faults.get_mut(&id) {
                    f.last_summary = input.summary.clone();
                    if sev.is_some() && !counted {
                        f.results += 1;
                    }
                    self.dirty.faults.insert(id);
                }
                if let Some(s) = sev {
                    self.raise_severity(id, s, t, &mut out);
                }
                if now_flapping && !was_flapping {
                    self.flapping_changed(id, true, t, &mut out);
                } else if !now_flapping && was_flapping {
                    self.flapping_changed(id, false, t, &mut out);
                }
                if resolves {
                    let text = format!("OK again: {}", input.summary);
                    self.resolve_fault(id, t, None, text, &mut out);
                }
            }
            None => {
                if now_flapping && !was_flapping {
                    let s = tr.recent_worst.max(tr.streak_worst).unwrap_or(self.config.faults.unknown_severity);
                    let id = self.create_fault(
                        &key,
                        &input.customer,
                        s,
                        input.summary,
                        u64::from(tr.streak),
                        true,
                        t,
                        now,
                        &mut out,
                    );
                    self.flapping_changed(id, true, t, &mut out);
                } else if let (false, Some(s)) = (is_ok, tr.streak_worst)
                    && tr.streak >= min_results
                {
                    self.create_fault(
                        &key,
                        &input.customer,
                        s,
                        input.summary,
                        u64::from(tr.streak),
                        now_flapping,
                        t,
                        now,
                        &mut out,
                    );
                }
            }
        }
        self.save_track(key, tr);
        out
    }

    fn save_track(&mut self, key: TrackKey, tr: Track) {
        if tr == Track::default() {
            if self.state.tracks.remove(&key).is_some() {
                self.dirty.tracks.insert(key);
            }
        } else if self.state.tracks.get(&key) != Some(&tr) {
            self.state.tracks.insert(key.clone(), tr);
            self.dirty.tracks.insert(key);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_fault(
        &mut self,
        key: &TrackKey,
        customer: &str,
        severity: Severity,
        summary: String,
        results: u64,
        flapping: bool,
        at: Timestamp,
        now: Timestamp,
        out: &mut Vec<Transition>,
    ) -> u64 {
        let storm = self.count_for_storm(&key.host, &key.check, now);
        let id = self.state.next.fault;
        self.state.next.fault += 1;
        let suppressed = self.is_suppressed(&key.host, &key.check, now).or(storm.then_some(Suppression::Storm));
        let page = suppressed.is_none();
        let mut text = format!("opened ({severity}): {summary}");
        if let Some(s) = &suppressed {
            text.push_str(&format!("; not paged: {s}"));
        }
        let fault = Fault {
            id,
            host: key.host.clone(),
            customer: customer.to_string(),
            check: key.check.clone(),
            severity,
            state: FaultState::Open,
            opened_at: at,
            acked_at: None,
            acked_by: None,
            resolved_at: None,
            resolved_by: None,
            last_summary: summary,
            results,
            flapping,
            suppressed,
            paged: page,
            timeline: vec![TimelineEntry { at, kind: EventKind::Opened, who: None, text }],
        };
        self.state.faults.insert(id, fault);
        self.open.insert(key.clone(), id);
        self.dirty.faults.insert(id);
        out.push(Transition { fault_id: id, kind: EventKind::Opened, at, page });
        if storm {
            self.open_storm_fault(&key.host, customer, at, now, out);
        }
        id
    }

    /// Counts a fault opening on `host`; true when it is beyond `storm_faults` in the
    /// current window (then it opens unpaged).
    fn count_for_storm(&mut self, host: &str, check: &str, now: Timestamp) -> bool {
        let limit = self.config.faults.storm_faults;
        if limit == 0 || check == HOST_REACHABLE || check == FAULT_STORM {
            return false;
        }
        let window = self.config.faults.storm_window;
        let entry = self.storms.entry(host.to_string()).or_insert((now, 0));
        if elapsed(entry.0, now) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 > limit
    }

    /// The one fault that pages for a storm (unless one is open already).
    fn open_storm_fault(
        &mut self,
        host: &str,
        customer: &str,
        at: Timestamp,
        now: Timestamp,
        out: &mut Vec<Transition>,
    ) {
        let key = TrackKey::new(host, FAULT_STORM);
        if self.open.contains_key(&key) {
            return;
        }
        let f = &self.config.faults;
        let summary = format!(
            "more than {} faults opened on this host within {}: the rest are recorded but not paged; \
             look at the host and its checks, then resolve this fault",
            f.storm_faults,
            humantime::format_duration(f.storm_window)
        );
        self.create_fault(&key, customer, Severity::Critical, summary, 1, false, at, now, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn reopen_fault(
        &mut self,
        id: u64,
        severity: Severity,
        summary: String,
        flapping: bool,
        at: Timestamp,
        now: Timestamp,
        out: &mut Vec<Transition>,
    ) {
        let Some(f) = self.state.faults.get(&id) else {
            return;
        };
        let key = TrackKey::new(&f.host, &f.check);
        let suppressed = self.is_suppressed(&key.host, &key.check, now);
        let page = suppressed.is_none();
        let Some(f) = self.state.faults.get_mut(&id) else {
            return;
        };
        let mut text = format!("still failing after manual resolve: {summary}");
        if let Some(s) = &suppressed {
            text.push_str(&format!("; not paged: {s}"));
        }
        f.state = FaultState::Open;
        f.acked_at = None;
        f.acked_by = None;
        f.resolved_at = None;
        f.resolved_by = None;
        f.severity = f.severity.max(severity);
        if key.check != HOST_REACHABLE {
            f.results += 1;
        }
        f.flapping = flapping;
        f.suppressed = suppressed;
        f.last_summary = summary;
        f.paged |= page;
        f.timeline.push(TimelineEntry { at, kind: EventKind::Reopened, who: None, text });
        self.open.insert(key, id);
        self.dirty.faults.insert(id);
        out.push(Transition { fault_id: id, kind: EventKind::Reopened, at, page });
    }

    fn raise_severity(&mut self, id: u64, s: Severity, at: Timestamp, out: &mut Vec<Transition>) {
        let Some(f) = self.state.faults.get_mut(&id) else {
            return;
        };
        if s <= f.severity {
            return;
        }
        f.severity = s;
        let mut text = format!("severity raised to {s}");
        if f.state == FaultState::Acknowledged {
            f.state = FaultState::Open;
            f.acked_at = None;
            f.acked_by = None;
            text.push_str("; acknowledgement cleared");
        }
        let page = f.suppressed.is_none();
        if let Some(sup) = &f.suppressed {
            text.push_str(&format!("; not paged: {sup}"));
        }
        f.paged |= page;
        f.timeline.push(TimelineEntry { at, kind: EventKind::SeverityRaised, who: None, text });
        self.dirty.faults.insert(id);
        out.push(Transition { fault_id: id, kind: EventKind::SeverityRaised, at, page });
    }

    fn flapping_changed(&mut self, id: u64, started: bool, at: Timestamp, out: &mut Vec<Transition>) {
        let Some(f) = self.state.faults.get_mut(&id) else {
            return;
        };
        f.flapping = started;
        let (kind, page, text) = if started {
            let page = f.suppressed.is_none() && !f.paged && f.state == FaultState::Open;
            (EventKind::FlappingStarted, page, "flapping: OK/non-OK changes are no longer paged or resolved one by one")
        } else {
            (EventKind::FlappingStopped, false, "stopped flapping: no state change for a whole flap window")
        };
        f.paged |= page;
        f.timeline.push(TimelineEntry { at, kind, who: None, text: text.to_string() });
        self.dirty.faults.insert(id);
        out.push(Transition { fault_id: id, kind, at, page });
    }

    fn resolve_fault(&mut self, id: u64, at: Timestamp, who: Option<&str>, text: String, out: &mut Vec<Transition>) {
        let Some(f) = self.state.faults.get_mut(&id) else {
            return;
        };
        if f.is_resolved() {
            return;
        }
        let page = f.paged && f.suppressed.is_none();
        f.state = FaultState::Resolved;
        f.resolved_at = Some(at);
        f.resolved_by = who.map(str::to_string);
        f.timeline.push(TimelineEntry { at, kind: EventKind::Resolved, who: who.map(str::to_string), text });
        let key = TrackKey::new(&f.host, &f.check);
        self.open.remove(&key);
        self.dirty.faults.insert(id);
        out.push(Transition { fault_id: id, kind: EventKind::Resolved, at, page });
    }

    /// Re-judges a non-resolved fault's suppression at `now`, noting a change on its timeline.
    /// `may_page`: whether an end of suppression may page (not when the fault resolves next).
    fn refresh_suppression(&mut self, id: u64, now: Timestamp, may_page: bool, out: &mut Vec<Transition>) {
        let Some(f) = self.state.faults.get(&id) else {
            return;
        };
        if f.is_resolved() {
            return;
        }
        // A storm's faults stay unpaged for life: the storm fault paged for them.
        if f.suppressed == Some(Suppression::Storm) {
            return;
        }
        let new = self.is_suppressed(&f.host, &f.check, now);
        let Some(f) = self.state.faults.get_mut(&id) else {
            return;
        };
        if new == f.suppressed {
            return;
        }
        let transition = match (&f.suppressed, &new) {
            (None, Some(s)) => Some((EventKind::Suppressed, false, format!("not paged: {s}"))),
            (Some(old), None) => {
                let page = may_page && !f.paged && f.state == FaultState::Open;
                let text = if page { format!("{old} over; paging now") } else { format!("{old} over") };
                Some((EventKind::SuppressionEnded, page, text))
            }
            (Some(_), Some(s)) => {
                f.timeline.push(TimelineEntry {
                    at: now,
                    kind: EventKind::Suppressed,
                    who: None,
                    text: format!("still not paged: {s}"),
                });
                None
            }
            (None, None) => None,
        };
        f.suppressed = new;
        if let Some((kind, page, text)) = transition {
            f.paged |= page;
            f.timeline.push(TimelineEntry { at: now, kind, who: None, text });
            out.push(Transition { fault_id: id, kind, at: now, page });
        }
        self.dirty.faults.insert(id);
    }

    fn refresh_all(&mut self, now: Timestamp, out: &mut Vec<Transition>) {
        let ids: Vec<u64> = self.open.values().copied().collect();
        for id in ids {
            self.refresh_suppression(id, now, true, out);
        }
    }
}

/// Serializes a map as a list of `(key, value)` pairs, so struct keys work in JSON too.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S, K, V>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        K: Serialize,
        V: Serialize,
    {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

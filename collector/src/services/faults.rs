//! The fault engine (`faults/`, pure) at its edge: fed from stored batches,
//! persisted record by record in the tree `engine`, driven by the clock.
//!
//! Architecture invariant: the engine's changes from a group of batches are
//! written in the same flush as the batches themselves, so after a crash
//! the fault state matches exactly the batches that were acknowledged.
//!
//! Tree `engine`: `next` → ids; `f/`id → Fault; `t/`key → Track; `r/`key →
//! rule clock; `h/`host → HostInfo; `m/`id → Maintenance; `s/`id → Silence
//! (all JSON; keys of struct type as their JSON).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use pikett_proto::received::ReceivedBatch;
use pikett_proto::v1 as pb;

use pikett_core::faults::{
    CheckInput, CheckState, Dirty, Engine, EngineConfig, EngineState, Fault, Maintenance, NextIds, SampleInput,
    Silence, Transition,
};

use crate::store::{Storage, StoreError, Tree, WriteBatch};

/// The check that says a host has more series than `max_series_per_host`.
pub const TOO_MANY_SERIES: &str = "host/too-many-series";

#[derive(Debug, thiserror::Error)]
pub enum FaultStoreError {
    #[error("fault state: {0}")]
    Store(#[from] StoreError),
    #[error("fault state record {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("fault state: {0}")]
    Restore(String),
}

pub struct FaultService {
    engine: Mutex<Engine>,
    tree: Arc<dyn Tree>,
    /// Distinct check names each host reported since start, up to `max_checks_per_host`,
    /// and whether it is over the limit now.
    checks_seen: Mutex<std::collections::HashMap<String, (std::collections::HashSet<String>, bool)>>,
    /// Results ignored because their host is over `max_checks_per_host`.
    pub checks_over_limit: std::sync::atomic::AtomicU64,
    /// Hosts whose last batch had samples over `max_series_per_host`.
    series_over: Mutex<std::collections::HashSet<String>>,
    /// The id counters as last written (`n/`): rewritten only when they change, not with
    /// every batch. Written under the engine's lock.
    written_next: Mutex<Option<NextIds>>,
}

fn id_key(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = vec![prefix, b'/'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn json_key<K: serde::Serialize>(prefix: u8, key: &K) -> Vec<u8> {
    let mut k = vec![prefix, b'/'];
    k.extend_from_slice(&serde_json::to_vec(key).expect("keys always serialize"));
    k
}

fn check_state(c: &pb::CheckResult) -> CheckState {
    match c.effective_status() {
        pb::CheckStatus::Ok => CheckState::Ok,
        pb::CheckStatus::Warning => CheckState::Warning,
        pb::CheckStatus::Critical => CheckState::Critical,
        // Refused at ingest under protocol 2; never stored.
        pb::CheckStatus::Unknown | pb::CheckStatus::Unspecified => CheckState::Unknown,
    }
}

fn ts(ms: i64, fallback: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(fallback)
}

impl FaultService {
    /// Restores the engine from `storage` (empty on first start).
    pub fn open(storage: &dyn Storage, config: EngineConfig) -> Result<FaultService, FaultStoreError> {
        let tree = storage.tree("engine")?;
        let mut state = EngineState::default();
        let mut written_next = None;
        for item in tree.iter() {
            let (k, v) = item?;
            let corrupt = |source| FaultStoreError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source };
            match k.first() {
                Some(b'n') => {
                    state.next = serde_json::from_slice(&v).map_err(corrupt)?;
                    written_next = Some(state.next);
                }
                Some(b'f') => {
                    let f: Fault = serde_json::from_slice(&v).map_err(corrupt)?;
                    state.faults.insert(f.id, f);
                }
                Some(b't') => {
                    let key = serde_json::from_slice(&k[2..]).map_err(corrupt)?;
                    state.tracks.insert(key, serde_json::from_slice(&v).map_err(corrupt)?);
                }
                Some(b'r') => {
                    let key = serde_json::from_slice(&k[2..]).map_err(corrupt)?;
                    state.rule_tracks.insert(key, serde_json::from_slice(&v).map_err(corrupt)?);
                }
                Some(b'h') => {
                    let host = String::from_utf8_lossy(&k[2..]).into_owned();
                    state.hosts.insert(host, serde_json::from_slice(&v).map_err(corrupt)?);
                }
                Some(b'm') => {
                    let m: Maintenance = serde_json::from_slice(&v).map_err(corrupt)?;
                    state.maintenances.insert(m.id, m);
                }
                Some(b's') => {
                    let s: Silence = serde_json::from_slice(&v).map_err(corrupt)?;
                    state.silences.insert(s.id, s);
                }
                _ => {}
            }
        }
        let engine = Engine::restore(config, state).map_err(|e| FaultStoreError::Restore(e.to_string()))?;
        Ok(FaultService {
            engine: Mutex::new(engine),
            tree,
            checks_seen: Mutex::default(),
            checks_over_limit: std::sync::atomic::AtomicU64::new(0),
            series_over: Mutex::default(),
            written_next: Mutex::new(written_next),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one newly stored batch to the engine and writes the changed records (not flushed).
    pub fn ingest(&self, host: &str, customer: &str, batch: &ReceivedBatch, now: Timestamp) -> Vec<Transition> {
        let mut engine = self.lock();
        let mut out = engine.host_seen(host, customer, now);
        let limit = engine.config().faults.max_checks_per_host as usize;
        let mut seen = self.checks_seen.lock().unwrap_or_else(|p| p.into_inner());
        let (names, over) = seen.entry(host.to_string()).or_default();
        let mut ignored = 0u64;
        for c in &batch.head().checks {
            if limit > 0 && !names.contains(&c.name) {
                if names.len() >= limit {
                    ignored += 1;
                    continue;
                }
                names.insert(c.name.clone());
            }
            out.extend(engine.check_result(
                CheckInput {
                    host: host.to_string(),
                    customer: customer.to_string(),
                    check: c.name.clone(),
                    state: check_state(c),
                    summary: c.summary.clone(),
                    time: ts(c.time_unix_ms, now),
                },
                now,
            ));
        }
        // Over the limit: say so (WARNING) with every batch that had to be cut; OK again
        // with the first batch that did not.
        if ignored > 0 || *over {
            self.checks_over_limit.fetch_add(ignored, std::sync::atomic::Ordering::Relaxed);
            let (state, summary) = if ignored > 0 {
                let text = format!(
                    "more than {limit} distinct checks (max_checks_per_host): results of {ignored} new checks in the \
                     last batch were ignored"
                );
                (CheckState::Warning, text)
            } else {
                (CheckState::Ok, format!("no more than {limit} distinct checks"))
            };
            *over = ignored > 0;
            let input = CheckInput {
                host: host.to_string(),
                customer: customer.to_string(),
                check: pikett_core::faults::TOO_MANY_CHECKS.to_string(),
                state,
                summary,
                time: now,
            };
            out.extend(engine.check_result(input, now));
        }
        drop(seen);
        if !engine.config().rules.is_empty() {
            let config = engine.shared_config();
            let mut host_has_state: Option<bool> = None;
            for s in batch.samples() {
                // Most samples fire no rule and change nothing: decide that without allocating.
                let label = |k: &str| s.labels.get(k);
                let fires =
                    config.rules.iter().any(|r| r.selects_with(s.name, label) && r.condition(s.value) == Some(true));
                if !fires && !*host_has_state.get_or_insert_with(|| engine.has_rule_state(host)) {
                    continue;
                }
                if fires {
                    host_has_state = Some(true);
                }
                let input = SampleInput {
                    host: host.to_string(),
                    customer: customer.to_string(),
                    name: s.name.to_string(),
                    labels: s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    value: s.value,
                    time: ts(s.time_unix_ms, now),
                };
                out.extend(engine.sample(&input, now));
            }
        }
        self.persist(&mut engine);
        out
    }

    /// `host/too-many-series`: WARNING for a batch whose samples went over
    /// `max_series_per_host` (`dropped` > 0), OK with the first batch after that did not.
    pub fn series_limit(&self, host: &str, customer: &str, dropped: u64, now: Timestamp) -> Vec<Transition> {
        let mut over = self.series_over.lock().unwrap_or_else(|p| p.into_inner());
        let was = over.contains(host);
        if dropped == 0 && !was {
            return Vec::new();
        }
        let (state, summary) = if dropped > 0 {
            over.insert(host.to_string());
            let text = format!(
                "more series than max_series_per_host: {dropped} samples of new series in the last batch were not \
                 exported on /metrics"
            );
            (CheckState::Warning, text)
        } else {
            over.remove(host);
            (CheckState::Ok, "series within max_series_per_host".to_string())
        };
        drop(over);
        let input = CheckInput {
            host: host.to_string(),
            customer: customer.to_string(),
            check: TOO_MANY_SERIES.to_string(),
            state,
            summary,
            time: now,
        };
        self.with_engine(|e| e.check_result(input, now))
    }

    /// The collector's own `agent/data-dropped` result for a host whose agent reported
    /// dropped data (WARNING), or that has reported none for a while (OK).
    pub fn data_dropped(
        &self,
        host: &str,
        customer: &str,
        warning: bool,
        summary: &str,
        now: Timestamp,
    ) -> Vec<Transition> {
        let input = CheckInput {
            host: host.to_string(),
            customer: customer.to_string(),
            check: pikett_core::hosts::DATA_DROPPED_CHECK.to_string(),
            state: if warning { CheckState::Warning } else { CheckState::Ok },
            summary: summary.to_string(),
            time: now,
        };
        self.with_engine(|e| e.check_result(input, now))
    }

    /// Host timeouts, maintenance and silence boundaries.
    pub fn tick(&self, now: Timestamp, host_timeout: impl Fn(&str) -> Duration) -> Vec<Transition> {
        let mut engine = self.lock();
        let out = engine.tick(now, host_timeout);
        self.persist(&mut engine);
        out
    }

    /// Runs a staff action or query on the engine and persists what it changed.
    /// A configuration reload: the new fault settings and rules apply from the next result.
    pub fn reload(&self, config: EngineConfig) {
        self.lock().set_config(config);
    }

    pub fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut engine = self.lock();
        let r = f(&mut engine);
        self.persist(&mut engine);
        r
    }

    /// A query that changes nothing: takes the lock, never writes (so a reader, e.g. a
    /// public page, cannot make the store write or stop the collector on a failed write).
    pub fn read_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.lock())
    }

    fn persist(&self, engine: &mut Engine) {
        let dirty = engine.take_dirty();
        if let Err(e) = self.write(dirty) {
            // The engine is now ahead of the disk: stop and restart from the disk.
            crate::services::storage_failure::stop("writing the fault state", &e);
        }
    }

    fn write(&self, dirty: Dirty) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        let mut written_next = self.written_next.lock().unwrap_or_else(|p| p.into_inner());
        if *written_next != Some(dirty.next) {
            b.insert(b"n/".as_slice(), serde_json::to_vec(&dirty.next).expect("serializes"));
        }
        fn put<V: serde::Serialize>(b: &mut WriteBatch, key: Vec<u8>, v: Option<V>) {
            match v {
                Some(v) => b.insert(key, serde_json::to_vec(&v).expect("engine records serialize")),
                None => b.remove(key),
            }
        }
        for (id, f) in dirty.faults {
            put(&mut b, id_key(b'f', id), f);
        }
        for (k, t) in dirty.tracks {
            put(&mut b, json_key(b't', &k), t);
        }
        for (k, t) in dirty.rule_tracks {
            put(&mut b, json_key(b'r', &k), t);
        }
        for (host, h) in dirty.hosts {
            let mut key = b"h/".to_vec();
            key.extend_from_slice(host.as_bytes());
            put(&mut b, key, h);
        }
        for (id, m) in dirty.maintenances {
            put(&mut b, id_key(b'm', id), m);
        }
        for (id, s) in dirty.silences {
            put(&mut b, id_key(b's', id), s);
        }
        if b.ops.is_empty() {
            return Ok(());
        }
        self.tree.apply(b)?;
        *written_next = Some(dirty.next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStorage;
    use pikett_core::faults::{FaultFilter, FaultState, FaultsConfig, HostDeps, Rule};

    fn sample(value: f64) -> ReceivedBatch {
        ReceivedBatch::from_batch(&pb::Batch {
            samples: vec![pb::Sample {
                name: "temp".into(),
                labels: [("sensor".to_string(), "CPU1".to_string())].into_iter().collect(),
                value,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn rules_fire_resolve_and_survive_a_reopen_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let rule: Rule = toml::from_str("name = \"hot\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 5.0\n").unwrap();
        let config = EngineConfig::new(FaultsConfig::default(), vec![rule], HostDeps::default()).unwrap();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        {
            let db = SledStorage::open(dir.path(), 1 << 20).unwrap();
            let svc = FaultService::open(&db, config.clone()).unwrap();
            assert!(svc.ingest("h1", "acme", &sample(1.0), at(0)).is_empty());
            assert!(svc.with_engine(|e| e.faults(&FaultFilter::default()).is_empty()), "a cold sample opened a fault");
            svc.ingest("h1", "acme", &sample(9.0), at(10));
            let open = svc.with_engine(|e| e.faults(&FaultFilter::default()).into_iter().cloned().collect::<Vec<_>>());
            assert_eq!(open.len(), 1);
            assert!(open[0].check.starts_with("rule/hot"), "{}", open[0].check);
            db.flush().await.unwrap();
        }
        let db = crate::store::sled_store::reopen_for_test(dir.path());
        let svc = FaultService::open(&db, config).unwrap();
        svc.ingest("h1", "acme", &sample(1.0), at(20));
        let all = svc.with_engine(|e| {
            e.faults(&FaultFilter { all: true, ..Default::default() }).into_iter().cloned().collect::<Vec<_>>()
        });
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, FaultState::Resolved, "the cooled-down sample did not resolve the restored fault");
    }

    #[tokio::test]
    async fn id_counters_are_written_when_they_change_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rule: Rule = toml::from_str("name = \"hot\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 5.0\n").unwrap();
        let config = EngineConfig::new(FaultsConfig::default(), vec![rule], HostDeps::default()).unwrap();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        let ids = |svc: &FaultService| {
            svc.with_engine(|e| {
                e.faults(&FaultFilter { all: true, ..Default::default() }).iter().map(|f| f.id).collect::<Vec<_>>()
            })
        };
        {
            let db = SledStorage::open(dir.path(), 1 << 20).unwrap();
            let svc = FaultService::open(&db, config.clone()).unwrap();
            let tree = db.tree("engine").unwrap();
            svc.ingest("h1", "acme", &sample(9.0), at(0));
            assert!(tree.get(b"n/").unwrap().is_some(), "a new fault's id counter was not written");
            // Behind the engine's back: a batch that allocates no id must not write it again.
            tree.remove(b"n/").unwrap();
            svc.ingest("h1", "acme", &sample(9.5), at(10));
            assert!(tree.get(b"n/").unwrap().is_none(), "unchanged id counters were written again");
            svc.ingest("h2", "acme", &sample(9.0), at(20));
            assert!(tree.get(b"n/").unwrap().is_some(), "the changed id counter was not written");
            assert_eq!(ids(&svc).len(), 2);
            db.flush().await.unwrap();
        }
        let db = crate::store::sled_store::reopen_for_test(dir.path());
        let svc = FaultService::open(&db, config).unwrap();
        svc.ingest("h3", "acme", &sample(9.0), at(30));
        let mut all = ids(&svc);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3, "a fault id was handed out twice across the reopen: {all:?}");
    }
}

//! Incidents at their edge: the pure model (`pikett_core::incidents`) fed with the fault
//! transitions (a second consumer next to the pager), persisted in the tree `incidents`
//! (`i/`id → JSON record, `next` → the last id), flushed after every change. The gRPC
//! service is `api::incidents`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use pikett_core::faults::{EventKind, Fault, FaultFilter, Transition};
use pikett_core::incidents::{FaultRef, Grouping, Incident, IncidentError, Incidents, fault_ref};

use crate::config::CollectorConfig;
use crate::services::faults::FaultService;
use crate::services::pager::Pager;
use crate::store::{Storage, StoreError, Tree, WriteBatch};

#[derive(Debug, thiserror::Error)]
pub enum IncidentStoreError {
    #[error("incident store: {0}")]
    Store(#[from] StoreError),
    #[error("incident store record {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

const NEXT_KEY: &[u8] = b"next";

fn inc_key(id: u64) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The incidents of a running collector.
pub struct IncidentService {
    state: Mutex<Incidents>,
    tree: Arc<dyn Tree>,
    storage: Arc<dyn Storage>,
    grouping: Grouping,
    pub(crate) faults: Arc<FaultService>,
    pub(crate) pager: Arc<Pager>,
}

impl IncidentService {
    /// Restores the incidents from `db` and catches up with the faults (see [`Incidents::reconcile`]).
    pub async fn open(
        storage: Arc<dyn Storage>,
        config: &CollectorConfig,
        faults: Arc<FaultService>,
        pager: Arc<Pager>,
    ) -> Result<IncidentService, IncidentStoreError> {
        let tree = storage.tree("incidents")?;
        let mut state = Incidents::default();
        for item in tree.iter() {
            let (k, v) = item?;
            let corrupt =
                |source| IncidentStoreError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source };
            if k == NEXT_KEY {
                state.next_id = serde_json::from_slice(&v).map_err(corrupt)?;
            } else if k.starts_with(b"i/") {
                let inc: Incident = serde_json::from_slice(&v).map_err(corrupt)?;
                // Closed incidents stay on disk only (see `get`, `list`).
                if !inc.is_closed() {
                    state.incidents.insert(inc.id, inc);
                }
            }
        }
        let service = IncidentService {
            state: Mutex::new(state),
            tree,
            storage,
            grouping: config.incidents.grouping(),
            faults,
            pager,
        };
        let now = Timestamp::now();
        let (failing, resolved) = service.faults.with_engine(|e| {
            let all = e.faults(&FaultFilter { all: true, ..Default::default() });
            let failing: Vec<FaultRef> = all.iter().filter(|f| !f.is_resolved()).map(|f| fault_ref(f)).collect();
            let resolved: std::collections::HashSet<u64> =
                all.iter().filter(|f| f.is_resolved()).map(|f| f.id).collect();
            (failing, resolved)
        });
        let changed = service.lock().reconcile(&failing, service.grouping, now, |id| resolved.contains(&id));
        service.persist(&changed).await;
        Ok(service)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Incidents> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the changed records and flushes.
    pub(crate) async fn persist(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        {
            let st = self.lock();
            batch.insert(NEXT_KEY, serde_json::to_vec(&st.next_id).expect("serializes"));
            for id in ids {
                if let Some(inc) = st.incidents.get(id) {
                    batch.insert(inc_key(*id), serde_json::to_vec(inc).expect("incidents serialize"));
                }
            }
        }
        // Staff actions are answered only after this: a failure stops the collector (see
        // `storage_failure`) rather than report success for what is not on disk.
        if let Err(e) = self.tree.apply(batch) {
            crate::services::storage_failure::stop("writing incidents", &e);
        }
        if let Err(e) = self.storage.flush().await {
            crate::services::storage_failure::stop("flushing incidents", &e);
        }
    }

    /// Takes incidents closed before `before` out of memory (they are read from disk from
    /// then on); returns how many. Not at once when they close: a staff action in flight
    /// (a status update whose notifications are being queued) still finds its incident.
    pub fn evict_closed(&self, before: Timestamp) -> usize {
        let mut st = self.lock();
        let old: Vec<u64> = st
            .incidents
            .values()
            .filter(|i| i.is_closed() && i.closed_at.is_none_or(|at| at < before))
            .map(|i| i.id)
            .collect();
        for id in &old {
            st.incidents.remove(id);
        }
        old.len()
    }

    /// A closed incident, from disk.
    fn stored(&self, id: u64) -> Option<Incident> {
        let v = self.tree.get(&inc_key(id)).ok()??;
        match serde_json::from_slice(&v) {
            Ok(inc) => Some(inc),
            Err(e) => {
                tracing::error!(incident = id, error = %e, "stored incident cannot be read");
                None
            }
        }
    }

    /// Incident `id`, open (memory) or closed (disk).
    pub fn get(&self, id: u64) -> Result<Incident, IncidentError> {
        if let Ok(inc) = self.lock().get(id) {
            return Ok(inc.clone());
        }
        self.stored(id).ok_or(IncidentError::NoSuchIncident(id))
    }

    /// The model's refusal, where "no such incident" means one that closed and left memory.
    pub fn refusal(&self, e: IncidentError) -> IncidentError {
        match e {
            IncidentError::NoSuchIncident(id) if self.stored(id).is_some() => IncidentError::Closed(id),
            e => e,
        }
    }

    /// Every incident not closed, and with `all` the closed ones too; newest first.
    pub fn list(&self, all: bool) -> Vec<Incident> {
        let mut out: BTreeMap<u64, Incident> = self.lock().incidents.clone();
        if all {
            for (k, v) in self.tree.scan_prefix(b"i/").flatten() {
                if let Ok(inc) = serde_json::from_slice::<Incident>(&v) {
                    out.entry(inc.id).or_insert(inc);
                } else {
                    tracing::error!(key = %String::from_utf8_lossy(&k), "stored incident cannot be read");
                }
            }
        }
        out.into_values().rev().filter(|i| all || !i.is_closed()).collect()
    }

    /// Incidents in memory (those not closed).
    pub fn in_memory(&self) -> usize {
        self.lock().incidents.len()
    }

    /// Removes incidents closed before `before` from disk, at most `max`; returns how many
    /// went. Not flushed: the caller flushes.
    pub fn prune(&self, before: Timestamp, max: usize) -> Result<usize, StoreError> {
        crate::store::remove_where(self.tree.as_ref(), b"i/", max, |_, v| {
            serde_json::from_slice::<Incident>(v).ok().and_then(|i| i.closed_at).is_some_and(|at| at < before)
        })
    }

    /// Feeds fault transitions (the same batches the pager gets).
    pub async fn on_transitions(&self, batch: &[Transition]) {
        let mut changed = Vec::new();
        for t in batch {
            let fault = self.faults.with_engine(|e| e.fault(t.fault_id).cloned());
            let Some(fault) = fault else { continue };
            let mut st = self.lock();
            match t.kind {
                EventKind::Opened | EventKind::Reopened | EventKind::SeverityRaised if !fault.is_resolved() => {
                    if t.kind == EventKind::Reopened {
                        changed.extend(st.fault_noted(fault.id, None, &format!("fault {} reopened", fault.id), t.at));
                    }
                    changed.extend(st.fault_failing(&fault_ref(&fault), self.grouping, t.at));
                }
                EventKind::Acknowledged => {
                    let who = fault.acked_by.as_deref();
                    changed.extend(st.fault_noted(fault.id, who, &format!("fault {} acknowledged", fault.id), t.at));
                }
                EventKind::Resolved => {
                    let text = match &fault.resolved_by {
                        Some(by) => format!("fault {} resolved by {by}", fault.id),
                        None => format!("fault {} resolved (check OK again)", fault.id),
                    };
                    let ids: Vec<u64> = st
                        .incidents
                        .values()
                        .filter(|i| i.fault_ids.contains(&fault.id))
                        .flat_map(|i| i.fault_ids.clone())
                        .collect();
                    let resolved: std::collections::HashSet<u64> = self.faults.with_engine(|e| {
                        ids.iter().filter(|id| e.fault(**id).is_none_or(|f| f.is_resolved())).copied().collect()
                    });
                    changed.extend(st.fault_resolved(fault.id, &text, t.at, |id| resolved.contains(&id)));
                }
                _ => {}
            }
        }
        changed.sort_unstable();
        changed.dedup();
        self.persist(&changed).await;
    }

    /// The member faults of an incident (those still known to the engine).
    pub fn faults_of(&self, inc: &Incident) -> Vec<Fault> {
        self.faults.with_engine(|e| inc.fault_ids.iter().filter_map(|id| e.fault(*id).cloned()).collect())
    }
}

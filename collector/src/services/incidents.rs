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

    /// Staff close incident `id` (see [`Incidents::close`]), durably. An incident that closed by
    /// itself takes its root cause and recommendations afterwards, also once it left memory
    /// (it is read back from disk for that; retention's eviction takes it out again).
    pub async fn close(
        &self,
        id: u64,
        root_cause: &str,
        recommendations: &str,
        who: &str,
        now: Timestamp,
    ) -> Result<Incident, IncidentError> {
        let stored = if self.lock().incidents.contains_key(&id) { None } else { self.stored(id) };
        let closed = {
            let mut st = self.lock();
            if let Some(inc) = stored.filter(Incident::is_closed) {
                st.incidents.entry(id).or_insert(inc);
            }
            st.close(id, root_cause, recommendations, who, now).cloned()
        };
        let inc = closed.map_err(|e| self.refusal(e))?;
        self.persist(&[id]).await;
        Ok(inc)
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

#[cfg(test)]
mod tests {
    use super::*;
    use pikett_core::incidents::report;
    use pikett_proto::v1 as pb;

    use crate::services::metrics::Metrics;
    use crate::store::SledStorage;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn result(state: pb::CheckStatus, at: Timestamp) -> pb::Batch {
        pb::Batch {
            checks: vec![pb::CheckResult::new("command/ctl".into(), state, format!("{state:?}"), at.as_millisecond())],
            ..Default::default()
        }
    }

    async fn service() -> IncidentService {
        let config = CollectorConfig::default();
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let faults = Arc::new(FaultService::open(storage.as_ref(), config.engine_config().unwrap()).unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The pager's loop runs for the test's life.
        std::mem::forget(tx);
        let pager =
            crate::services::pager::spawn(&config, storage.clone(), faults.clone(), Arc::new(Metrics::new()), rx)
                .unwrap();
        IncidentService::open(storage, &config, faults, pager).await.unwrap()
    }

    /// Feeds results of `state` from `*at` on, 10 s apart, until a transition of `kind`.
    async fn feed_until(svc: &IncidentService, state: pb::CheckStatus, at: &mut i64, kind: EventKind) -> Transition {
        for _ in 0..10 {
            *at += 10;
            let out = svc.faults.ingest(
                "web-1",
                "acme",
                &pikett_proto::received::ReceivedBatch::from_batch(&result(state, t(*at))),
                t(*at),
            );
            svc.on_transitions(&out).await;
            if let Some(tr) = out.into_iter().find(|tr| tr.kind == kind) {
                return tr;
            }
        }
        panic!("no {kind:?} transition");
    }

    fn staff(
        svc: &IncidentService,
        f: impl FnOnce(&mut pikett_core::faults::Engine) -> Vec<Transition>,
    ) -> Vec<Transition> {
        svc.faults.with_engine(f)
    }

    fn report_of(svc: &IncidentService, inc: &Incident, now: Timestamp) -> String {
        let faults = svc.faults_of(inc);
        report::render(&report::ReportInput { incident: inc, faults: &faults, contract: None, maintenance: &[], now })
    }

    #[tokio::test]
    async fn a_reopened_fault_opens_an_incident_at_its_reopening_and_one_closed_by_itself_takes_a_root_cause() {
        let svc = service().await;
        let mut s = 0;
        let fault = feed_until(&svc, pb::CheckStatus::Critical, &mut s, EventKind::Opened).await.fault_id;
        let first = svc.list(false);
        assert_eq!(first.len(), 1);
        let a = first[0].id;
        assert_eq!(first[0].timeline[0].at, first[0].opened_at);

        // Acknowledged, resolved by hand (the incident closes by itself), still failing: reopened.
        let out = staff(&svc, |e| e.acknowledge(fault, "eve@local", None, t(s + 5)).unwrap());
        svc.on_transitions(&out).await;
        let out = staff(&svc, |e| e.resolve(fault, "eve@local", None, t(s + 6)).unwrap());
        svc.on_transitions(&out).await;
        assert!(svc.get(a).unwrap().is_closed());
        let reopened = feed_until(&svc, pb::CheckStatus::Critical, &mut s, EventKind::Reopened).await;
        let open = svc.list(false);
        assert_eq!(open.len(), 1, "{open:?}");
        let b = open[0].id;
        assert_ne!(a, b);
        // The new incident opened at the reopening: header and timeline agree.
        assert_eq!(open[0].opened_at, reopened.at);
        assert_eq!(open[0].timeline[0].at, reopened.at);

        // Acknowledged again 60 s after the reopening; then the check is OK: b closes by itself.
        let out = staff(&svc, |e| {
            e.acknowledge(fault, "bob@local", None, reopened.at + jiff::SignedDuration::from_secs(60)).unwrap()
        });
        svc.on_transitions(&out).await;
        feed_until(&svc, pb::CheckStatus::Ok, &mut s, EventKind::Resolved).await;
        let closed = svc.get(b).unwrap();
        assert!(closed.is_closed() && closed.closed_by.is_none(), "{closed:?}");
        let md = report_of(&svc, &closed, t(s + 100));
        assert!(md.contains(&format!("- **Opened:** {}\n", reopened.at)), "{md}");
        assert!(md.contains("Incident: first acknowledgement 1m after opening (within the target)."), "{md}");
        assert!(md.contains("## Root cause\n\n(not yet recorded)\n"), "{md}");

        // Out of memory (as retention does 30 s after closing), then closed by staff with a
        // root cause: recorded, durably, and in the report.
        assert_eq!(svc.evict_closed(t(1_000_000)), 2);
        let inc = svc.close(b, "PSU failed", "Keep a spare PSU", "eve@local", t(s + 200)).await.unwrap();
        assert_eq!((inc.root_cause.as_deref(), inc.closed_at), (Some("PSU failed"), closed.closed_at));
        svc.evict_closed(t(1_000_000));
        assert_eq!(svc.in_memory(), 0);
        let stored = svc.get(b).unwrap();
        assert_eq!(stored.recommendations.as_deref(), Some("Keep a spare PSU"));
        let md = report_of(&svc, &stored, t(s + 300));
        assert!(md.contains("## Root cause\n\nPSU failed\n"), "{md}");
        assert!(md.contains("## Recommendations\n\nKeep a spare PSU\n"), "{md}");
        // Recorded once: closing again is refused.
        let again = svc.close(b, "other", "other", "bob@local", t(s + 400)).await.unwrap_err();
        assert_eq!(again, IncidentError::Closed(b));
        assert_eq!(svc.get(b).unwrap().root_cause.as_deref(), Some("PSU failed"));
        // An unknown incident stays unknown.
        assert_eq!(svc.close(99, "x", "y", "eve@local", t(s)).await.unwrap_err(), IncidentError::NoSuchIncident(99));
    }
}

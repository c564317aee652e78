//! Incidents and emergencies (SPEC.md 3.3): critical faults grouped per host, or per customer
//! when several of its hosts fail within `[incidents] customer_window` (default 5 min).
//!
//! - `model.rs` — the incidents as plain data and the grouping (pure, unit-tested).
//! - `report.rs` — the Markdown post-incident report (pure).
//! - `service.rs` — the gRPC service `pikett.v1.Incidents` the CLI talks to.
//! - here: [`IncidentService`], the model at its edge: fed with the fault transitions (a second
//!   consumer next to the pager), persisted in sled tree `incidents` (`i/`id → JSON record,
//!   `next` → the last id), flushed after every change.
//!
//! Choices where SPEC.md is silent:
//! - Only critical faults make incidents (a warning that becomes critical joins then).
//! - An incident never escalated closes by itself once every fault of it is resolved; an
//!   emergency stays until staff close it with a root cause and recommendations.
//! - Escalating pages the chain once for the incident (its earliest unresolved,
//!   preferably unacknowledged fault), not once per fault: nobody gets ten SMS at 3 a.m.
//! - Status updates go to the customer's contacts (email and SMS) for any incident staff
//!   write one for; the text is prefixed `[Notfall]` for emergencies.

mod model;
pub mod report;
pub mod service;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;

pub use model::{
    FaultRef, Incident, IncidentError, IncidentEvent, IncidentState, Incidents, NOTFALL, Placement, StatusUpdate, place,
};

use crate::config::CustomerConfig;
use crate::fault_service::FaultService;
use crate::faults::{EventKind, Fault, FaultFilter, Transition};
use crate::pager::Pager;
use crate::sla::Contract;

/// `[incidents]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    /// Faults of several hosts of one customer opening within this of each other form one incident.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub customer_window: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { customer_window: default_window() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentStoreError {
    #[error("incident store: {0}")]
    Sled(#[from] sled::Error),
    #[error("incident store record {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

const NEXT_KEY: &[u8] = b"next";

fn inc_key(id: u64) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn fault_ref(f: &Fault) -> FaultRef {
    FaultRef {
        id: f.id,
        host: f.host.clone(),
        customer: f.customer.clone(),
        check: f.check.clone(),
        severity: f.severity,
        opened_at: f.opened_at,
        summary: f.last_summary.clone(),
    }
}

/// The incidents of a running collector.
pub struct IncidentService {
    state: Mutex<Incidents>,
    tree: sled::Tree,
    db: sled::Db,
    window: Duration,
    pub(crate) faults: Arc<FaultService>,
    pub(crate) pager: Arc<Pager>,
    pub(crate) customers: BTreeMap<String, CustomerConfig>,
    pub(crate) contracts: BTreeMap<String, Contract>,
}

impl IncidentService {
    /// Restores the incidents from `db` and catches up with the faults (see [`Incidents::reconcile`]).
    pub async fn open(
        db: &sled::Db,
        config: &crate::config::CollectorConfig,
        faults: Arc<FaultService>,
        pager: Arc<Pager>,
    ) -> Result<IncidentService, IncidentStoreError> {
        let tree = db.open_tree("incidents")?;
        let mut state = Incidents::default();
        for item in tree.iter() {
            let (k, v) = item?;
            let corrupt =
                |source| IncidentStoreError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source };
            if k.as_ref() == NEXT_KEY {
                state.next_id = serde_json::from_slice(&v).map_err(corrupt)?;
            } else if k.starts_with(b"i/") {
                let inc: Incident = serde_json::from_slice(&v).map_err(corrupt)?;
                state.incidents.insert(inc.id, inc);
            }
        }
        let service = IncidentService {
            state: Mutex::new(state),
            tree,
            db: db.clone(),
            window: config.incidents.customer_window,
            faults,
            pager,
            customers: config.customers.clone(),
            contracts: config.sla.clone(),
        };
        let now = Timestamp::now();
        let (failing, resolved) = service.faults.with_engine(|e| {
            let all = e.faults(&FaultFilter { all: true, ..Default::default() });
            let failing: Vec<FaultRef> = all.iter().filter(|f| !f.is_resolved()).map(|f| fault_ref(f)).collect();
            let resolved: std::collections::HashSet<u64> =
                all.iter().filter(|f| f.is_resolved()).map(|f| f.id).collect();
            (failing, resolved)
        });
        let changed = service.lock().reconcile(&failing, service.window, now, |id| resolved.contains(&id));
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
        let mut batch = sled::Batch::default();
        {
            let st = self.lock();
            batch.insert(NEXT_KEY, serde_json::to_vec(&st.next_id).expect("serializes"));
            for id in ids {
                if let Some(inc) = st.incidents.get(id) {
                    batch.insert(inc_key(*id), serde_json::to_vec(inc).expect("incidents serialize"));
                }
            }
        }
        if let Err(e) = self.tree.apply_batch(batch) {
            tracing::error!(error = %e, "cannot persist incidents");
        }
        if let Err(e) = self.db.flush_async().await {
            tracing::error!(error = %e, "cannot flush incidents");
        }
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
                    changed.extend(st.fault_failing(&fault_ref(&fault), self.window, t.at));
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

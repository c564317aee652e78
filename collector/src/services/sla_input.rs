//! A customer's SLA input: its hosts (as the host registry has them), their faults and
//! maintenance, and the outages derived from those faults with the staff's classifications.
//! The one gathering behind every figure of a customer's availability — `pikett sla report`
//! (`api/reports.rs`) and the service credit of `pikett incident report`
//! (`api/incidents.rs`) — so the two reports agree.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use pikett_core::faults::{Fault, FaultFilter};
use pikett_core::sla::{self, Contract, Month};

use crate::services::batches::BatchStore;
use crate::services::causes::{CausesError, SlaCauses};
use crate::services::faults::FaultService;
use crate::store::{Storage, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SlaInputError {
    /// A month older than the fault history kept: it would come out as 100 %.
    #[error("{0}")]
    BeyondRetention(String),
    #[error(transparent)]
    Causes(#[from] CausesError),
}

/// What a customer's SLA figures are computed from.
#[derive(Debug, Clone, Default)]
pub struct CustomerSla {
    /// The customer's hosts in the host registry (every one gets report rows).
    pub hosts: BTreeSet<String>,
    /// Every fault of those hosts raised for the customer (any check), as the engine holds
    /// them: a host re-enrolled for another customer keeps its past under the old one.
    pub faults: Vec<Fault>,
    /// The contract's outages of those hosts, classifications applied.
    pub outages: Vec<sla::Outage>,
    pub maintenance: Vec<sla::Maintenance>,
}

pub struct SlaInputs {
    batches: Arc<dyn BatchStore>,
    faults: Arc<FaultService>,
    causes: SlaCauses,
    /// `[retention] faults`: months older than this would see no faults.
    fault_retention: Duration,
}

impl SlaInputs {
    pub fn new(
        batches: Arc<dyn BatchStore>,
        storage: Arc<dyn Storage>,
        faults: Arc<FaultService>,
        fault_retention: Duration,
    ) -> Result<SlaInputs, StoreError> {
        let causes = SlaCauses::open(storage)?;
        Ok(SlaInputs { batches, faults, causes, fault_retention })
    }

    /// Refuses a month that began before the fault history kept: its availability cannot be
    /// computed any more (it would come out as 100 %).
    pub fn check_retention(&self, months: &[Month], contract: &Contract, now: Timestamp) -> Result<(), SlaInputError> {
        let horizon = now
            .checked_sub(jiff::SignedDuration::try_from(self.fault_retention).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        for m in months {
            let start = m.first_day().to_zoned(contract.timezone.tz().clone()).map(|z| z.timestamp());
            if start.is_ok_and(|start| start < horizon) {
                return Err(SlaInputError::BeyondRetention(format!(
                    "{}-{:02} is older than the fault history kept ([retention] faults = {}, from {} on): \
                     its availability cannot be computed any more",
                    m.year(),
                    m.month(),
                    humantime::format_duration(self.fault_retention),
                    horizon.round(jiff::Unit::Second).unwrap_or(horizon)
                )));
            }
        }
        Ok(())
    }

    /// `customer`'s SLA input under `contract` for `months` (checked against the fault history
    /// kept), ongoing faults counting until `now`.
    pub fn customer(
        &self,
        customer: &str,
        contract: &Contract,
        months: &[Month],
        now: Timestamp,
    ) -> Result<CustomerSla, SlaInputError> {
        self.check_retention(months, contract, now)?;
        let hosts: BTreeSet<String> =
            self.batches.hosts().into_iter().filter(|h| h.customer == customer).map(|h| h.host_id).collect();
        // A read: nothing is written (the status page gathers this on a public request).
        let (faults, maintenance): (Vec<Fault>, Vec<sla::Maintenance>) = self.faults.read_engine(|e| {
            let f = e
                .faults(&FaultFilter { all: true, ..Default::default() })
                .into_iter()
                .filter(|f| f.customer == customer && hosts.contains(&f.host))
                .cloned()
                .collect();
            // A window counts for the customer its host had when it was announced; one
            // without (announced before the host reported, or before windows kept it) follows
            // the host.
            let m = e
                .maintenances()
                .filter(|m| {
                    (m.customer == customer || m.customer.is_empty()) && hosts.contains(&m.host) && m.end > m.start
                })
                .map(|m| sla::Maintenance {
                    host: m.host.clone(),
                    start: m.start,
                    end: m.end,
                    announced: m.announced_at,
                })
                .collect();
            (f, m)
        });
        let causes = self.causes.all()?;
        let outages = sla::live::derive_outages(&faults, &contract.checks, &causes, now);
        Ok(CustomerSla { hosts, faults, outages, maintenance })
    }
}

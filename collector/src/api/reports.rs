//! The gRPC `Reports` service: live SLA reports and staff classification of outage causes
//! (stored by `services::causes`), patch compliance (`[patches]`). Access as the admin
//! service ([`crate::api::access`]).
//!
//! Choices where the documented behaviour leaves room: the report's hosts are the customer's hosts in the registry
//! (every one gets rows, with or without outages); response-time figures cover the critical
//! faults of those hosts (any check) opened inside the reported period (contract time zone),
//! opened → first acknowledgement.

use std::sync::Arc;

use jiff::Timestamp;
use pikett_proto::v1 as pb;
use pikett_proto::v1::reports_server::Reports;

use tonic::{Request, Response, Status};

use crate::api::access::Access;
use crate::config::CollectorConfig;
use crate::services::batches::BatchStore;
use crate::services::causes::{SlaCauses, cause_name};
use crate::services::faults::FaultService;
use crate::services::patches::{self, PatchService};
use crate::services::sla_input::{CustomerSla, SlaInputError, SlaInputs};
use crate::services::staff::Role as StaffRole;
use pikett_core::faults::{Fault, Severity};
use pikett_core::patchday::Compliance;
use pikett_core::sla::{self, Cause, Contract, Emergency, Ledger, Month};

pub struct ReportsService {
    faults: Arc<FaultService>,
    patches: Arc<PatchService>,
    causes: SlaCauses,
    /// Customers and contracts come from the on-call plan, which a reload replaces.
    pager: Arc<crate::services::pager::Pager>,
    pub access: Arc<Access>,
    /// A customer's hosts, faults, outages and maintenance, shared with the incident report.
    sla: Arc<SlaInputs>,
}

impl ReportsService {
    pub fn new(
        config: &CollectorConfig,
        store: Arc<dyn BatchStore>,
        storage: Arc<dyn crate::store::Storage>,
        faults: Arc<FaultService>,
        patches: Arc<PatchService>,
        access: Arc<Access>,
        pager: Arc<crate::services::pager::Pager>,
    ) -> anyhow::Result<ReportsService> {
        let causes = SlaCauses::open(storage.clone())?;
        let sla = Arc::new(SlaInputs::new(store, storage, faults.clone(), config.retention.faults)?);
        Ok(ReportsService { faults, patches, causes, pager, access, sla })
    }

    /// The SLA input gathering, for the incident report's service credit.
    pub fn sla_inputs(&self) -> Arc<SlaInputs> {
        self.sla.clone()
    }

    fn contract_of(&self, customer: &str) -> Result<(String, Contract), Status> {
        let plan = self.pager.plan();
        let c = plan.customers.get(customer).ok_or_else(|| {
            Status::not_found(format!("no customer {customer:?} in the collector config ([customers.{customer}])"))
        })?;
        let name = c.sla.as_deref().ok_or_else(|| {
            Status::failed_precondition(format!("customer {customer:?} has no SLA contract (sla = ...)"))
        })?;
        let contract = plan.contracts.get(name).ok_or_else(|| Status::internal(format!("no [sla.{name}] contract")))?;
        Ok((name.to_string(), contract.clone()))
    }
}

fn bad_month(e: sla::SlaError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn row_to_pb(r: &sla::ReportRow) -> pb::SlaRow {
    pb::SlaRow {
        host: r.host.clone(),
        month: r.month.clone(),
        window: r.window.clone(),
        window_seconds: r.window_seconds,
        outage_seconds: r.outage_seconds,
        counted_seconds: r.counted_seconds,
        excused_short: r.excused_seconds.short,
        excused_maintenance: r.excused_seconds.maintenance,
        excused_force_majeure: r.excused_seconds.force_majeure,
        excused_customer: r.excused_seconds.customer,
        availability: r.availability,
        target: r.target,
        met: r.met,
    }
}

/// A month's service credit for the API (the JSON of `pikett sla report` and the incident
/// report).
pub fn credit_to_pb(c: &sla::credits::MonthCredit, fee: Option<&sla::credits::MonthlyFee>) -> pb::SlaCredit {
    pb::SlaCredit {
        month: c.month.to_string(),
        host: c.host.clone().unwrap_or_default(),
        window: c.window.clone().unwrap_or_default(),
        window_seconds: c.availability.total_seconds,
        counted_seconds: c.availability.total_seconds - c.availability.good_seconds,
        availability: c.availability.as_fraction(),
        below: c.credit.tier.map(|t| t.below.to_string()).unwrap_or_default(),
        percent: c.credit.percent.to_string(),
        monthly_fee: fee.map(|f| f.amount.plain()).unwrap_or_default(),
        currency: fee.map(|f| f.currency.to_string()).unwrap_or_default(),
        amount: c.credit.amount.map(|a| a.plain()).unwrap_or_default(),
        explanation: c.explanation(),
        month_to_date: c.month_to_date,
    }
}

/// The critical faults opened in `[from, to)` as emergencies.
pub fn emergencies<'a>(faults: impl IntoIterator<Item = &'a Fault>, from: Timestamp, to: Timestamp) -> Vec<Emergency> {
    faults
        .into_iter()
        .filter(|f| f.severity == Severity::Critical && f.opened_at >= from && f.opened_at < to)
        .map(|f| Emergency { id: f.id.to_string(), opened: f.opened_at, acked: f.acked_at })
        .collect()
}

fn host_patches_pb(hp: &patches::HostPatches, st: &patches::HostPatchState) -> pb::HostPatches {
    let ms = |t: Option<Timestamp>| t.map_or(0, |t| t.as_millisecond());
    pb::HostPatches {
        host_id: hp.host.clone(),
        customer: hp.customer.clone(),
        status: st.status.to_string(),
        pending: st.pending as u32,
        security: st.security as u32,
        critical: st.critical as u32,
        oldest_pending_unix_ms: ms(st.oldest_pending),
        reboot_required: hp.reboot_required,
        last_patch_day: st.last_patch_day.to_string(),
        manager: hp.manager.clone(),
        reported_unix_ms: hp.reported_at.as_millisecond(),
        critical_overdue: st.critical_overdue.len() as u32,
        updates: hp
            .updates
            .iter()
            .map(|u| pb::PendingUpdate {
                package: u.package.clone(),
                arch: u.arch.clone(),
                current_version: u.current_version.clone().unwrap_or_default(),
                new_version: u.new_version.clone(),
                advisory: u.advisory.clone().unwrap_or_default(),
                r#type: u.kind.clone(),
                severity: u.severity.clone().unwrap_or_default(),
                released_unix_ms: ms(u.released),
                repository: u.repository.clone().unwrap_or_default(),
                first_seen_unix_ms: u.first_seen.as_millisecond(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Reports for ReportsService {
    async fn sla_report(&self, request: Request<pb::SlaReportRequest>) -> Result<Response<pb::SlaReportReply>, Status> {
        self.access.read(&request, "sla_report").await?;
        let r = request.into_inner();
        let (name, contract) = self.contract_of(&r.customer)?;
        let months: Vec<Month> = match (r.month.is_empty(), r.year) {
            (false, 0) => vec![r.month.parse().map_err(bad_month)?],
            (true, y) if y != 0 => {
                let y = i16::try_from(y).map_err(|_| Status::invalid_argument(format!("--year {y}: out of range")))?;
                Month::year_months(y).map_err(bad_month)?
            }
            _ => return Err(Status::invalid_argument("give either --month YYYY-MM or --year YYYY")),
        };
        // The same input as an incident report's service credit (services::sla_input); a month
        // older than the fault history kept would come out as 100 %: it is refused.
        let now = Timestamp::now();
        let input = self.sla.customer(&r.customer, &contract, &months, now).map_err(|e| match e {
            SlaInputError::BeyondRetention(why) => Status::failed_precondition(why),
            other => Status::internal(other.to_string()),
        })?;
        let CustomerSla { hosts, faults, outages, maintenance } = input;
        let internal = |e: sla::SlaError| Status::internal(e.to_string());
        let mut ledger = Ledger::new(&contract, &outages, &maintenance).map_err(internal)?;
        for h in &hosts {
            ledger.add_host(h);
        }
        let rows = ledger.months(&months).map_err(internal)?;
        let fee = self.pager.plan().customers.get(&r.customer).and_then(|c| c.fee());
        let credits = sla::credits::month_credits(&contract.credit_terms(), &months, &rows, fee.as_ref(), now);
        let tz = contract.timezone.tz();
        let bound = |m: Month| {
            tz.to_timestamp(m.first_day().at(0, 0, 0, 0)).map_err(|e| Status::internal(format!("month bound: {e}")))
        };
        let from = bound(months[0])?;
        let to = bound(months[months.len() - 1].next())?;
        let s = sla::response_summary(&emergencies(&faults, from, to), contract.response_target);
        let response = pb::SlaResponse {
            total: s.total as u64,
            acknowledged: s.acknowledged as u64,
            within_target: s.within_target as u64,
            unacknowledged: s.unacknowledged as u64,
            worst_seconds: s.worst_seconds,
            worst_fault: s.worst_id.and_then(|id| id.parse().ok()).unwrap_or(0),
            target_seconds: s.target_seconds,
        };
        Ok(Response::new(pb::SlaReportReply {
            customer: r.customer,
            contract: name.to_string(),
            timezone: contract.timezone.name().to_string(),
            rows: rows.iter().map(row_to_pb).collect(),
            response: Some(response),
            credits: credits.iter().map(|c| credit_to_pb(c, fee.as_ref())).collect(),
        }))
    }

    async fn sla_classify(
        &self,
        request: Request<pb::SlaClassifyRequest>,
    ) -> Result<Response<pb::SlaClassifyReply>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "sla_classify", "classify outages").await?;
        let who = change.who().to_string();
        let r = request.into_inner();
        let result = self.classify_as(who, r).await;
        change.finish(result).await
    }

    async fn patches(&self, request: Request<pb::PatchesRequest>) -> Result<Response<pb::PatchesReply>, Status> {
        self.access.read(&request, "patches").await?;
        let r = request.into_inner();
        let now = Timestamp::now();
        let mut hosts = Vec::new();
        for hp in self.patches.hosts() {
            if !r.host.is_empty() && hp.host != r.host {
                continue;
            }
            let st = patches::host_state(&hp, self.patches.policy(), &self.patches.tz(&hp.customer), now)
                .map_err(|e| Status::internal(format!("host {}: {e}", hp.host)))?;
            if r.overdue && st.status != Compliance::Overdue {
                continue;
            }
            hosts.push(host_patches_pb(&hp, &st));
        }
        if !r.host.is_empty() && hosts.is_empty() && !r.overdue {
            return Err(Status::not_found(format!("host {:?} has not reported its patches", r.host)));
        }
        Ok(Response::new(pb::PatchesReply { hosts }))
    }
}

impl ReportsService {
    async fn classify_as(
        &self,
        who: String,
        r: pb::SlaClassifyRequest,
    ) -> Result<Response<pb::SlaClassifyReply>, Status> {
        let cause: Cause = r.cause.parse().map_err(|e: String| Status::invalid_argument(format!("--cause: {e}")))?;
        let (host, check) = self
            .faults
            .with_engine(|e| e.fault(r.fault_id).map(|f| (f.host.clone(), f.check.clone())))
            .ok_or_else(|| Status::not_found(format!("no fault with id {}", r.fault_id)))?;
        self.causes
            .set(r.fault_id, cause, &who, Timestamp::now())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(fault = r.fault_id, cause = cause_name(cause), %who, "outage cause classified");
        Ok(Response::new(pb::SlaClassifyReply {
            fault_id: r.fault_id,
            cause: cause_name(cause).to_string(),
            host,
            check,
            who,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergencies_are_critical_faults_opened_in_the_period() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let mk = |id, sev, opened: &str, acked: Option<&str>| Fault {
            id,
            host: "web1".into(),
            customer: "acme".into(),
            check: "x".into(),
            severity: sev,
            state: pikett_core::faults::FaultState::Open,
            opened_at: t(opened),
            acked_at: acked.map(t),
            acked_by: None,
            resolved_at: None,
            resolved_by: None,
            last_summary: String::new(),
            results: 2,
            flapping: false,
            suppressed: None,
            paged: true,
            timeline: Vec::new(),
        };
        let faults = [
            mk(1, Severity::Critical, "2026-03-01T00:00:00Z", Some("2026-03-01T00:30:00Z")),
            mk(2, Severity::Warning, "2026-03-02T00:00:00Z", None),
            mk(3, Severity::Critical, "2026-04-01T00:00:00Z", None),
            mk(4, Severity::Critical, "2026-03-05T00:00:00Z", Some("2026-03-05T02:00:00Z")),
        ];
        let e = emergencies(&faults, t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z"));
        assert_eq!(e.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1", "4"]);
        let s = sla::response_summary(&e, std::time::Duration::from_secs(3600));
        assert_eq!((s.within_target, s.worst_seconds, s.worst_id.as_deref()), (1, Some(7200), Some("4")));
        assert_eq!(cause_name("force-majeure".parse().unwrap()), "force-majeure");
    }
}

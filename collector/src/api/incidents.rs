//! The gRPC service `pikett.v1.Incidents` (`pikett incidents`, `pikett incident ...`).
//! Access as for the admin service ([`crate::api::access`]): reading needs any staff role,
//! changes need `engineer`.

use std::sync::Arc;

use jiff::Timestamp;
use pikett_proto::v1 as pb;
use pikett_proto::v1::incidents_server::Incidents;
use tonic::{Request, Response, Status};

use pikett_core::faults::FaultState;
use pikett_core::incidents::{Incident, IncidentError, NOTFALL, report};

use crate::api::access::Access;
use crate::services::incidents::IncidentService;
use crate::services::sla_input::{SlaInputError, SlaInputs};
use crate::services::staff::Role as StaffRole;

pub struct IncidentsGrpc {
    pub incidents: Arc<IncidentService>,
    pub access: Arc<Access>,
    /// A customer's SLA input, as `pikett sla report` gathers it (for the service credit).
    pub sla: Arc<SlaInputs>,
}

fn ms(t: Option<Timestamp>) -> i64 {
    t.map_or(0, |t| t.as_millisecond())
}

pub fn incident_to_pb(i: &Incident) -> pb::Incident {
    pb::Incident {
        id: i.id,
        customer: i.customer.clone(),
        hosts: i.hosts.clone(),
        fault_ids: i.fault_ids.clone(),
        opened_unix_ms: i.opened_at.as_millisecond(),
        closed_unix_ms: ms(i.closed_at),
        closed_by: i.closed_by.clone().unwrap_or_default(),
        state: i.state.as_str().to_string(),
        tag: i.tag().unwrap_or_default().to_string(),
        title: i.title(),
        scope: i.scope().to_string(),
        escalated_unix_ms: ms(i.escalated_at),
        escalated_by: i.escalated_by.clone().unwrap_or_default(),
        updates: i
            .updates
            .iter()
            .map(|u| pb::IncidentStatusUpdate {
                number: u.number,
                text: u.text.clone(),
                eta_unix_ms: ms(u.eta),
                who: u.who.clone(),
                at_unix_ms: u.at.as_millisecond(),
                notified: u.notified as u32,
            })
            .collect(),
        root_cause: i.root_cause.clone().unwrap_or_default(),
        recommendations: i.recommendations.clone().unwrap_or_default(),
        timeline: i
            .timeline
            .iter()
            .map(|e| pb::IncidentEvent {
                at_unix_ms: e.at.as_millisecond(),
                who: e.who.clone().unwrap_or_default(),
                text: e.text.clone(),
            })
            .collect(),
    }
}

fn refused(e: IncidentError) -> Status {
    match e {
        IncidentError::NoSuchIncident(_) => Status::not_found(e.to_string()),
        IncidentError::EmptyText | IncidentError::Missing(..) => Status::invalid_argument(e.to_string()),
        IncidentError::Closed(_) | IncidentError::AlreadyEmergency(..) => Status::failed_precondition(e.to_string()),
    }
}

impl IncidentsGrpc {
    fn reply(&self, id: u64) -> Result<Response<pb::Incident>, Status> {
        self.incidents.get(id).map(|i| Response::new(incident_to_pb(&i))).map_err(refused)
    }
}

#[tonic::async_trait]
impl Incidents for IncidentsGrpc {
    async fn list(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsReply>, Status> {
        self.access.read(&request, "list_incidents").await?;
        let all = request.into_inner().all;
        let incidents = self.incidents.list(all).iter().map(incident_to_pb).collect();
        Ok(Response::new(pb::ListIncidentsReply { incidents }))
    }

    async fn show(&self, request: Request<pb::IncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        self.access.read(&request, "show_incident").await?;
        self.reply(request.into_inner().id)
    }

    async fn update(&self, request: Request<pb::UpdateIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "update_incident", "update incidents").await?;
        let result = self.update_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn escalate(&self, request: Request<pb::IncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let change =
            self.access.change(&request, StaffRole::Engineer, "escalate_incident", "escalate incidents").await?;
        let result = self.escalate_as(change.who().to_string(), request.into_inner().id).await;
        change.finish(result).await
    }

    async fn close(&self, request: Request<pb::CloseIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "close_incident", "close incidents").await?;
        let result = self.close_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn report(&self, request: Request<pb::IncidentRequest>) -> Result<Response<pb::IncidentReport>, Status> {
        self.access.read(&request, "incident_report").await?;
        let id = request.into_inner().id;
        let inc = self.incidents.get(id).map_err(refused)?;
        let faults = self.incidents.faults_of(&inc);
        let maintenance: Vec<pikett_core::faults::Maintenance> =
            self.incidents.faults.with_engine(|e| e.maintenances().cloned().collect());
        let plan = self.incidents.pager.plan();
        let contract = plan.contract_of(&inc.customer);
        let now = Timestamp::now();
        let input = report::ReportInput { incident: &inc, faults: &faults, contract, maintenance: &maintenance, now };
        // The service credit is the customer's month (all its hosts), not only this incident's,
        // from the same input as `pikett sla report` (services::sla_input).
        let fee = plan.customers.get(&inc.customer).and_then(|c| c.fee());
        let credits = match contract.filter(|(_, c)| !c.credits.is_empty()) {
            Some((_, c)) => {
                let months = report::incident_months(&input).map_err(|e| Status::internal(e.to_string()))?;
                match self.sla.customer(&inc.customer, c, &months, now) {
                    Ok(sla) => {
                        let hosts: Vec<String> = sla.hosts.into_iter().collect();
                        let credits =
                            report::incident_credits(&input, &hosts, &sla.outages, &sla.maintenance, fee.as_ref())
                                .map_err(|e| Status::internal(format!("service credit: {e}")))?;
                        Ok(credits)
                    }
                    Err(SlaInputError::BeyondRetention(why)) => Err(why),
                    Err(e) => return Err(Status::internal(e.to_string())),
                }
            }
            None => Ok(Vec::new()),
        };
        let markdown = match &credits {
            Ok(credits) => report::render_with_credits(&input, credits),
            Err(why) => report::render_credit_unavailable(&input, why),
        };
        let credits = credits.unwrap_or_default();
        let credits = credits.iter().map(|c| crate::api::reports::credit_to_pb(c, fee.as_ref())).collect();
        Ok(Response::new(pb::IncidentReport { id, markdown, credits }))
    }
}

impl IncidentsGrpc {
    async fn update_as(&self, who: String, r: pb::UpdateIncidentRequest) -> Result<Response<pb::Incident>, Status> {
        let now = Timestamp::now();
        let eta = if r.eta_unix_ms == 0 {
            None
        } else {
            Some(
                Timestamp::from_millisecond(r.eta_unix_ms)
                    .map_err(|e| Status::invalid_argument(format!("--eta: {e}")))?,
            )
        };
        let (update, inc) = {
            let mut st = self.incidents.lock();
            let u = st.update(r.id, &r.text, eta, &who, now).map_err(|e| refused(self.incidents.refusal(e)))?;
            (u, st.get(r.id).map_err(refused)?.clone())
        };
        self.incidents.persist(&[r.id]).await;
        let tag = if inc.is_emergency() { format!("{NOTFALL} ") } else { String::new() };
        let eta_text =
            update.eta.map(|e| format!(" - ETA {}", e.round(jiff::Unit::Second).unwrap_or(e))).unwrap_or_default();
        let headline = format!("{tag}UPDATE incident {} {}", inc.id, inc.title().trim_start_matches(&tag));
        let text = format!("{headline}: {}{eta_text}", update.text);
        let key = format!("incident/{}/update/{}", inc.id, update.number);
        let sent = self.incidents.pager.notify_customer(&inc.customer, &key, &headline, &text, now).await;
        self.incidents.lock().set_notified(inc.id, update.number, sent, now);
        self.incidents.persist(&[inc.id]).await;
        self.reply(r.id)
    }

    async fn escalate_as(&self, who: String, id: u64) -> Result<Response<pb::Incident>, Status> {
        let now = Timestamp::now();
        let escalated = self.incidents.lock().escalate(id, &who, now).cloned();
        let inc = escalated.map_err(|e| refused(self.incidents.refusal(e)))?;
        self.incidents.persist(&[id]).await;
        // The chain is paged once for the incident: for its earliest unresolved fault,
        // preferably one nobody acknowledged yet.
        let mut faults = self.incidents.faults_of(&inc);
        faults.retain(|f| !f.is_resolved());
        faults.sort_by_key(|f| (f.state != FaultState::Open, f.opened_at, f.id));
        let text = match faults.first() {
            Some(lead) => {
                self.incidents.pager.escalate_emergency(&[lead.id], now).await;
                let roster: Vec<String> = self
                    .incidents
                    .pager
                    .roster(now)
                    .into_iter()
                    .map(|(role, p)| format!("{} {}", role.as_str(), p.unwrap_or_else(|| "(nobody)".into())))
                    .collect();
                let roster = if roster.is_empty() { "no rotations configured".into() } else { roster.join(", ") };
                format!("paging the whole chain at once for fault {} ({roster}); ack: pikett ack {}", lead.id, lead.id)
            }
            None => "no unresolved fault: nobody paged".to_string(),
        };
        self.incidents.lock().note(id, None, text, now);
        self.incidents.persist(&[id]).await;
        self.reply(id)
    }

    async fn close_as(&self, who: String, r: pb::CloseIncidentRequest) -> Result<Response<pb::Incident>, Status> {
        // An incident that closed by itself takes its root cause and recommendations here too.
        self.incidents.close(r.id, &r.root_cause, &r.recommendations, &who, Timestamp::now()).await.map_err(refused)?;
        self.reply(r.id)
    }
}

//! The gRPC admin service the `pikett` CLI talks to. Access: [`crate::api::access`].

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use pikett_proto::v1 as pb;
use pikett_proto::v1::admin_server::Admin;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use pikett_core::faults::{self, FaultFilter, NewMaintenance, NewSilence, Transition};
use pikett_core::hosts::{HostStatus, host_status};
use pikett_core::oncall::{Override, Role};

use crate::api::access::Access;
use crate::services::batches::BatchStore;
use crate::services::faults::FaultService;
use crate::services::identity::IdentityService;
use crate::services::leadership::{ClusterView, node_role};
use crate::services::pager::Pager;
use crate::services::pki::Ca;
use crate::services::staff::Role as StaffRole;

pub struct AdminService {
    pub store: Arc<dyn BatchStore>,
    /// The store the fault engine's state lives in: flushed to make a staff action durable.
    pub storage: Arc<dyn crate::store::Storage>,
    pub faults: Arc<FaultService>,
    pub pager: Arc<Pager>,
    pub host_timeout: Option<Duration>,
    /// Staff actions change faults: their transitions go to the pager like the engine's own.
    pub transitions: mpsc::UnboundedSender<Vec<Transition>>,
    pub access: Arc<Access>,
    pub identity: Arc<IdentityService>,
    /// The CA, when this collector enrolls agents (`[tls] ca_key_file`).
    pub ca: Option<Arc<Ca>>,
    /// Set once the server is up: `pikett reload` does what SIGHUP does.
    pub reloader: Arc<std::sync::OnceLock<Arc<crate::services::reload::Reloader>>>,
    /// Customer status page links (`pikett status-page`).
    pub status_links: Arc<crate::services::status_links::StatusLinks>,
    /// The leader lease and the nodes' heartbeats, for the cluster of `pikett status`.
    pub cluster: ClusterView,
}

fn ms(t: Option<Timestamp>) -> i64 {
    t.map_or(0, |t| t.as_millisecond())
}

fn ts(ms: i64, what: &str) -> Result<Timestamp, Status> {
    Timestamp::from_millisecond(ms).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

pub fn fault_to_pb(f: &faults::Fault) -> pb::Fault {
    pb::Fault {
        id: f.id,
        host: f.host.clone(),
        customer: f.customer.clone(),
        check: f.check.clone(),
        severity: name_of(&f.severity),
        state: name_of(&f.state),
        opened_unix_ms: f.opened_at.as_millisecond(),
        acked_unix_ms: ms(f.acked_at),
        acked_by: f.acked_by.clone().unwrap_or_default(),
        resolved_unix_ms: ms(f.resolved_at),
        resolved_by: f.resolved_by.clone().unwrap_or_default(),
        summary: f.last_summary.clone(),
        opened_summary: opened_summary(f).unwrap_or_else(|| f.last_summary.clone()),
        results: f.results,
        flapping: f.flapping,
        suppressed: f.suppressed.as_ref().map(ToString::to_string).unwrap_or_default(),
        timeline: f
            .timeline
            .iter()
            .map(|e| pb::TimelineEntry {
                at_unix_ms: e.at.as_millisecond(),
                kind: name_of(&e.kind),
                who: e.who.clone().unwrap_or_default(),
                text: e.text.clone(),
            })
            .collect(),
        // Only the single-fault answers carry them (fault_reply): listing reads no outbox.
        notifications: Vec::new(),
    }
}

fn notification_to_pb(n: &crate::notify::receipts::NotificationStatus) -> pb::FaultNotification {
    pb::FaultNotification {
        id: n.id.clone(),
        kind: n.kind.to_string(),
        channel: n.channel.as_str().to_string(),
        to: n.to.clone(),
        delivery: n.delivery.to_string(),
        sent_unix_ms: ms(n.sent_at),
        delivery_unix_ms: ms(n.delivery_at),
        detail: n.detail.clone(),
    }
}

/// The summary of the result that opened `f`, from its timeline's `opened` entry, which
/// the engine writes as `opened (SEVERITY): SUMMARY[; not paged: WHY]`.
fn opened_summary(f: &faults::Fault) -> Option<String> {
    let entry = f.timeline.iter().find(|e| e.kind == faults::EventKind::Opened)?;
    let rest = entry.text.strip_prefix("opened (")?;
    let (_, summary) = rest.split_once("): ")?;
    // The suppression the engine appended, when the fault opened unpaged.
    let summary = match summary.rsplit_once("; not paged: ") {
        Some((s, why))
            if ["host down", "parent host ", "maintenance ", "silence ", "fault storm"]
                .iter()
                .any(|p| why.starts_with(p)) =>
        {
            s
        }
        _ => summary,
    };
    Some(summary.to_string())
}

fn maintenance_to_pb(m: &faults::Maintenance) -> pb::Maintenance {
    pb::Maintenance {
        id: m.id,
        host: m.host.clone(),
        start_unix_ms: m.start.as_millisecond(),
        end_unix_ms: m.end.as_millisecond(),
        reason: m.reason.clone(),
        announced_unix_ms: m.announced_at.as_millisecond(),
        who: m.who.clone(),
    }
}

fn silence_to_pb(s: &faults::Silence) -> pb::Silence {
    pb::Silence {
        id: s.id,
        host: s.host.clone(),
        check: s.check.clone().unwrap_or_default(),
        until_unix_ms: s.until.as_millisecond(),
        reason: s.reason.clone(),
        who: s.who.clone(),
        created_unix_ms: s.created_at.as_millisecond(),
    }
}

/// Checks the collector raises itself (or an agent reports outside its batches): every host
/// may have them, whether they ever fired or not.
const COLLECTOR_CHECKS: &[&str] = &[
    faults::HOST_REACHABLE,
    faults::TOO_MANY_CHECKS,
    faults::FAULT_STORM,
    pikett_core::hosts::DATA_DROPPED_CHECK,
    crate::services::faults::TOO_MANY_SERIES,
    crate::services::patches::CRITICAL_OVERDUE_CHECK,
    "agent/spool",
];

/// How many of a host's newest stored batches a silence's check name is looked up in
/// (about an hour at the agent's default `batch_interval` of 1 s; enough for every
/// check interval up to that).
const CHECK_LOOKUP_BATCHES: u64 = 4000;

/// How many check names a refusal lists.
const CHECKS_LISTED: usize = 8;

fn refused(e: faults::ActionError) -> Status {
    match e {
        faults::ActionError::NoSuchFault(_)
        | faults::ActionError::NoSuchMaintenance(_)
        | faults::ActionError::NoSuchSilence(_) => Status::not_found(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

/// What a reload puts in force at once (see `services::reload`).
const RELOADED_AT_ONCE: &str =
    "in force now: people, rotations, escalation, channels, customers, sla, faults, hosts, rules";

/// Whether `check` is in one of `host`'s newest stored batches (at most
/// [`CHECK_LOOKUP_BATCHES`], newest first, stopping at the first sight), and the check names
/// seen on the way.
async fn recent_checks(store: &dyn BatchStore, host: &str, check: &str) -> (bool, std::collections::BTreeSet<String>) {
    use prost::Message as _;
    let mut seen = std::collections::BTreeSet::new();
    let Some(rec) = store.host(host) else { return (false, seen) };
    let first = rec.last_seq.saturating_sub(CHECK_LOOKUP_BATCHES - 1).max(1);
    for seq in (first..=rec.last_seq).rev() {
        let Ok(Some(bytes)) = store.batch(host, rec.spool_epoch, seq).await else { continue };
        let Ok(batch) = pb::Batch::decode(bytes.as_slice()) else { continue };
        for c in batch.checks {
            if c.name == check {
                return (true, seen);
            }
            seen.insert(c.name);
        }
    }
    (false, seen)
}

/// How long `pikett status` waits for the cluster table before answering without it.
const CLUSTER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills the cluster fields of `reply` from `view`'s lease, read within `timeout`. A failed
/// or slow read leaves them empty and says why in `cluster_error` (and in the log): hosts,
/// faults and who is on call matter most during the very database incident that hides the
/// cluster.
async fn add_cluster(reply: &mut pb::StatusReply, view: &ClusterView, timeout: Duration) {
    let cluster = match tokio::time::timeout(timeout, view.lease.cluster()).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => return cluster_unavailable(reply, format!("cannot read the cluster table: {e}")),
        Err(_) => return cluster_unavailable(reply, format!("no answer from the cluster table within {timeout:?}")),
    };
    reply.cluster = cluster
        .nodes
        .iter()
        .map(|n| pb::ClusterNode {
            node: n.node.clone(),
            addr: n.addr.clone(),
            role: node_role(&cluster, n, view.ttl, view.standalone).as_str().to_string(),
            last_heartbeat_unix_ms: n.heartbeat_at_ms.unwrap_or(0),
            version: n.version.clone(),
        })
        .collect();
    reply.leader = cluster.leader().unwrap_or_default().to_string();
    reply.term = u64::try_from(cluster.term).unwrap_or(0);
    reply.lease_expires_unix_ms = cluster.expires_at_ms.unwrap_or(0);
}

fn cluster_unavailable(reply: &mut pb::StatusReply, reason: String) {
    tracing::warn!("pikett status without the cluster: {reason}");
    reply.cluster_error = reason;
}

impl AdminService {
    /// Makes a staff action durable before it is answered. The engine already changed: if
    /// the flush fails, the collector stops and restarts from the disk, where the action is
    /// not, so the caller's retry does it again.
    async fn durable(&self) -> Result<(), Status> {
        if let Err(e) = self.storage.flush().await {
            crate::services::storage_failure::stop("making a staff action durable", &e);
        }
        Ok(())
    }

    fn on_call(&self, at: Timestamp) -> Vec<pb::OnCall> {
        self.pager
            .roster(at)
            .into_iter()
            .map(|(role, person)| pb::OnCall {
                role: role.as_str().to_string(),
                person: person.unwrap_or_else(|| "(nobody)".into()),
            })
            .collect()
    }

    fn fault_reply(&self, id: u64) -> Result<Response<pb::Fault>, Status> {
        let mut fault = self
            .faults
            .with_engine(|e| e.fault(id).map(fault_to_pb))
            .ok_or_else(|| Status::not_found(format!("no fault with id {id}")))?;
        fault.notifications = self.pager.notifications_of(id).iter().map(notification_to_pb).collect();
        Ok(Response::new(fault))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let caller = self.access.read(&request, "status").await?;
        let now = Timestamp::now();
        let now_ms = now.as_millisecond();
        let hosts = self.store.active_hosts();
        let up = hosts.iter().filter(|h| host_status(h, now_ms, self.host_timeout) == HostStatus::Up).count() as u32;
        let counts = self.faults.with_engine(|e| e.counts());
        let mut open_faults = Vec::new();
        for sev in [faults::Severity::Critical, faults::Severity::Warning] {
            let n: u64 = counts
                .iter()
                .filter(|((state, s), _)| *s == sev && *state != faults::FaultState::Resolved)
                .map(|(_, n)| n)
                .sum();
            open_faults.push(pb::SeverityCount { severity: name_of(&sev), count: n });
        }
        let on_call = if !self.pager.has_people() { Vec::new() } else { self.on_call(now) };
        let mut reply = pb::StatusReply {
            hosts_up: up,
            hosts_down: hosts.len() as u32 - up,
            batches_stored: self.store.batches_stored(),
            collector_version: env!("CARGO_PKG_VERSION").to_string(),
            now_unix_ms: now_ms,
            open_faults,
            on_call,
            caller: caller.user,
            caller_role: caller.role.as_str().to_string(),
            access: self.access.mode().to_string(),
            ..Default::default()
        };
        add_cluster(&mut reply, &self.cluster, CLUSTER_READ_TIMEOUT).await;
        Ok(Response::new(reply))
    }

    async fn list_hosts(&self, request: Request<pb::ListHostsRequest>) -> Result<Response<pb::ListHostsReply>, Status> {
        self.access.read(&request, "list_hosts").await?;
        let now = Timestamp::now().as_millisecond();
        let hosts = self
            .store
            .active_hosts()
            .into_iter()
            .map(|h| pb::Host {
                status: host_status(&h, now, self.host_timeout).as_str().to_string(),
                host_id: h.host_id,
                customer: h.customer,
                last_seen_unix_ms: h.last_seen_ms,
                first_seen_unix_ms: h.first_seen_ms,
                agent_version: h.agent_version,
                batches: h.batches,
                last_seq: h.last_seq,
                spool_epoch: h.spool_epoch,
                spool_resets: h.spool_resets,
                capabilities: h.capabilities,
                dropped_samples: h.dropped_samples,
                dropped_other: h.dropped_other,
            })
            .collect();
        Ok(Response::new(pb::ListHostsReply { hosts }))
    }

    async fn list_faults(
        &self,
        request: Request<pb::ListFaultsRequest>,
    ) -> Result<Response<pb::ListFaultsReply>, Status> {
        self.access.read(&request, "list_faults").await?;
        let r = request.into_inner();
        let filter = FaultFilter {
            all: r.all,
            host: Some(r.host).filter(|s| !s.is_empty()),
            customer: Some(r.customer).filter(|s| !s.is_empty()),
        };
        let faults = self.faults.with_engine(|e| e.faults(&filter).into_iter().map(fault_to_pb).collect());
        Ok(Response::new(pb::ListFaultsReply { faults }))
    }

    async fn get_fault(&self, request: Request<pb::GetFaultRequest>) -> Result<Response<pb::Fault>, Status> {
        self.access.read(&request, "get_fault").await?;
        self.fault_reply(request.into_inner().id)
    }

    async fn acknowledge(&self, request: Request<pb::FaultActionRequest>) -> Result<Response<pb::Fault>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "acknowledge", "acknowledge").await?;
        let result = self.acknowledge_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn resolve(&self, request: Request<pb::FaultActionRequest>) -> Result<Response<pb::Fault>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "resolve", "resolve").await?;
        let result = self.resolve_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn add_silence(&self, request: Request<pb::AddSilenceRequest>) -> Result<Response<pb::Silence>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "add_silence", "add a silence").await?;
        let result = self.add_silence_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn add_maintenance(
        &self,
        request: Request<pb::AddMaintenanceRequest>,
    ) -> Result<Response<pb::Maintenance>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "add_maintenance", "add maintenance").await?;
        let result = self.add_maintenance_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn add_override(
        &self,
        request: Request<pb::AddOverrideRequest>,
    ) -> Result<Response<pb::OnCallReply>, Status> {
        let change =
            self.access.change(&request, StaffRole::Admin, "add_override", "override the on-call rotation").await?;
        let result = self.add_override_as(change.who().to_string(), request.into_inner()).await;
        change.finish(result).await
    }

    async fn create_ticket(
        &self,
        request: Request<pb::CreateTicketRequest>,
    ) -> Result<Response<pb::CreateTicketReply>, Status> {
        let change =
            self.access.change(&request, StaffRole::Admin, "create_ticket", "create enrollment tickets").await?;
        let r = request.into_inner();
        let result = (|| {
            let ca = self.ca.as_ref().ok_or_else(|| {
                Status::failed_precondition(
                    "this collector does not enroll agents: set [tls] ca_key_file (see `pikett-collector ca init`)",
                )
            })?;
            pikett_core::hosts::check_host_id(&r.host_id).map_err(Status::invalid_argument)?;
            if r.customer.is_empty() {
                return Err(Status::invalid_argument("a ticket needs a customer (--customer)"));
            }
            let valid = if r.valid_seconds == 0 { 86_400 } else { r.valid_seconds };
            let expires_ms = Timestamp::now().as_millisecond() + (valid.min(365 * 86_400) * 1000) as i64;
            let ticket = ca.issue_ticket(&r.host_id, &r.customer, expires_ms);
            Ok(Response::new(pb::CreateTicketReply { ticket, expires_unix_ms: expires_ms }))
        })();
        change.finish(result).await
    }

    async fn revoke_host(
        &self,
        request: Request<pb::RevokeHostRequest>,
    ) -> Result<Response<pb::RevokeHostReply>, Status> {
        let change = self.access.change(&request, StaffRole::Admin, "revoke_host", "revoke hosts").await?;
        let r = request.into_inner();
        let customer = self.store.host(&r.host_id).map(|h| h.customer).unwrap_or_default();
        let result = self
            .identity
            .revoke(&r.host_id, &customer, Timestamp::now().as_millisecond())
            .await
            .map(|n| Response::new(pb::RevokeHostReply { revoked_certificates: n }))
            .map_err(|e| Status::internal(e.to_string()));
        change.finish(result).await
    }

    async fn list_maintenance(
        &self,
        request: Request<pb::ListMaintenanceRequest>,
    ) -> Result<Response<pb::ListMaintenanceReply>, Status> {
        self.access.read(&request, "list_maintenance").await?;
        let maintenance = self.faults.with_engine(|e| e.maintenances().map(maintenance_to_pb).collect());
        Ok(Response::new(pb::ListMaintenanceReply { maintenance }))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesReply>, Status> {
        self.access.read(&request, "list_silences").await?;
        let now = Timestamp::now();
        let mut silences: Vec<pb::Silence> =
            self.faults.with_engine(|e| e.silences().filter(|s| s.until > now).map(silence_to_pb).collect());
        silences.sort_by_key(|s| s.id);
        Ok(Response::new(pb::ListSilencesReply { silences }))
    }

    async fn remove_silence(
        &self,
        request: Request<pb::RemoveSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        let change = self.access.change(&request, StaffRole::Engineer, "remove_silence", "remove a silence").await?;
        let id = request.into_inner().id;
        let result = async {
            let now = Timestamp::now();
            let (removed, changes) = self
                .faults
                .with_engine(|e| {
                    let removed = e.silences().find(|s| s.id == id).map(silence_to_pb);
                    e.remove_silence(id, now).map(|changes| (removed, changes))
                })
                .map_err(refused)?;
            self.durable().await?;
            let _ = self.transitions.send(changes);
            removed.map(Response::new).ok_or_else(|| Status::internal("silence vanished"))
        }
        .await;
        change.finish(result).await
    }

    async fn remove_maintenance(
        &self,
        request: Request<pb::RemoveMaintenanceRequest>,
    ) -> Result<Response<pb::Maintenance>, Status> {
        let change =
            self.access.change(&request, StaffRole::Engineer, "remove_maintenance", "remove maintenance").await?;
        let id = request.into_inner().id;
        let result = async {
            let now = Timestamp::now();
            let (removed, changes) = self
                .faults
                .with_engine(|e| {
                    let removed = e.maintenances().find(|m| m.id == id).map(maintenance_to_pb);
                    e.remove_maintenance(id, now).map(|changes| (removed, changes))
                })
                .map_err(refused)?;
            self.durable().await?;
            let _ = self.transitions.send(changes);
            removed.map(Response::new).ok_or_else(|| Status::internal("maintenance window vanished"))
        }
        .await;
        change.finish(result).await
    }

    async fn reload(&self, request: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadReply>, Status> {
        let change = self.access.change(&request, StaffRole::Admin, "reload", "reload the configuration").await?;
        let result = match self.reloader.get() {
            None => Err(Status::unavailable("the collector is still starting; try again")),
            Some(reloader) => {
                let reloader = reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Err(e) => Err(Status::internal(format!("reload: {e}"))),
                    Ok(Err(errors)) => Err(Status::failed_precondition(format!(
                        "configuration refused; the configuration in force stays:\n{}",
                        errors.join("\n")
                    ))),
                    Ok(Ok(r)) => Ok(Response::new(pb::ReloadReply {
                        applied: vec![
                            format!("configuration reloaded from {}", r.path.display()),
                            RELOADED_AT_ONCE.to_string(),
                        ],
                        needs_restart: r.restart_needed,
                    })),
                }
            }
        };
        change.finish(result).await
    }

    async fn on_call(&self, request: Request<pb::OnCallRequest>) -> Result<Response<pb::OnCallReply>, Status> {
        self.access.read(&request, "on_call").await?;
        let r = request.into_inner();
        let at = if r.at_unix_ms == 0 { Timestamp::now() } else { ts(r.at_unix_ms, "--at")? };
        Ok(Response::new(pb::OnCallReply { at_unix_ms: at.as_millisecond(), on_call: self.on_call(at) }))
    }

    async fn remove_host(
        &self,
        request: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostReply>, Status> {
        let change = self.access.change(&request, StaffRole::Admin, "remove_host", "remove hosts").await?;
        let host = request.into_inner().host_id;
        let result = async {
            if self.store.host(&host).is_none_or(|h| h.removed_ms != 0) {
                return Err(Status::not_found(format!("no host {host:?} (or removed already)")));
            }
            let now = Timestamp::now();
            let who = change.who().to_string();
            let changes = self.faults.with_engine(|e| e.forget_host(&host, &who, now));
            let resolved = changes.iter().filter(|t| t.kind == faults::EventKind::Resolved).count() as u32;
            if let Err(e) = self.store.remove_host(&host, now.as_millisecond()).await {
                crate::services::storage_failure::stop("removing a host", &e);
            }
            // The host's removal is durable already; the fault engine's forgetting is not.
            self.durable().await?;
            let _ = self.transitions.send(changes);
            tracing::info!(host_id = %host, %who, resolved, "host removed");
            Ok(Response::new(pb::RemoveHostReply { resolved_faults: resolved }))
        }
        .await;
        change.finish(result).await
    }

    async fn list_audit(&self, request: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditReply>, Status> {
        self.access.allow(&request, StaffRole::Admin, "list_audit", "read the audit log").await?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let user = Some(r.user.as_str()).filter(|u| !u.is_empty());
        let entries = self
            .access
            .audit()
            .list(r.since_unix_ms, user, limit)
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|e| pb::AuditEntry {
                time_unix_ms: e.time_ms,
                user: e.user,
                role: e.role,
                peer: e.peer,
                call: e.call,
                arguments: e.arguments,
                outcome: e.outcome,
            })
            .collect();
        Ok(Response::new(pb::ListAuditReply { entries }))
    }

    async fn create_status_page(
        &self,
        request: Request<pb::CreateStatusPageRequest>,
    ) -> Result<Response<pb::CreateStatusPageReply>, Status> {
        let change =
            self.access.change(&request, StaffRole::Admin, "create_status_page", "create status pages").await?;
        let who = change.who().to_string();
        let r = request.into_inner();
        let result = async {
            if r.customer.is_empty() || r.customer.len() > 256 || r.customer.chars().any(char::is_control) {
                return Err(Status::invalid_argument("a status page needs a customer: 1 to 256 characters"));
            }
            if !r.force {
                self.known_customer(&r.customer)?;
            }
            let (link, secret) = self
                .status_links
                .create(&r.customer, &who, Timestamp::now())
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!(id = link.id, customer = %link.customer, %who, "status page link created");
            Ok(Response::new(pb::CreateStatusPageReply {
                page: Some(status_page_to_pb(&link)),
                path: format!("{}{secret}", crate::api::status_page::PATH_PREFIX),
            }))
        }
        .await;
        change.finish(result).await
    }

    async fn list_status_pages(
        &self,
        request: Request<pb::ListStatusPagesRequest>,
    ) -> Result<Response<pb::ListStatusPagesReply>, Status> {
        self.access.read(&request, "list_status_pages").await?;
        let pages = self.status_links.list().iter().map(status_page_to_pb).collect();
        Ok(Response::new(pb::ListStatusPagesReply { pages }))
    }

    async fn revoke_status_page(
        &self,
        request: Request<pb::RevokeStatusPageRequest>,
    ) -> Result<Response<pb::StatusPage>, Status> {
        let change =
            self.access.change(&request, StaffRole::Engineer, "revoke_status_page", "revoke status pages").await?;
        let id = request.into_inner().id;
        let result = match self.status_links.revoke(id).await {
            Ok(link) => {
                tracing::info!(id, customer = %link.customer, who = %change.who(), "status page link revoked");
                Ok(Response::new(status_page_to_pb(&link)))
            }
            Err(e @ crate::services::status_links::StatusLinkError::NoSuchLink(_)) => {
                Err(Status::not_found(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        };
        change.finish(result).await
    }
}

fn status_page_to_pb(link: &crate::services::status_links::StatusLink) -> pb::StatusPage {
    pb::StatusPage {
        id: link.id,
        customer: link.customer.clone(),
        created_unix_ms: link.created_at.as_millisecond(),
        created_by: link.created_by.clone(),
    }
}

impl AdminService {
    async fn acknowledge_as(&self, who: String, r: pb::FaultActionRequest) -> Result<Response<pb::Fault>, Status> {
        let note = Some(r.note.as_str()).filter(|s| !s.is_empty());
        let now = Timestamp::now();
        let changes = match self.faults.with_engine(|e| e.acknowledge(r.id, &who, note, now)) {
            Ok(changes) => changes,
            // Acknowledged before an emergency re-paged the chain: this ack stops that paging.
            Err(faults::ActionError::AlreadyAcknowledged { .. }) if self.pager.stop_running(r.id, now).await => {
                let text = "acknowledged the emergency paging";
                let _ = self.faults.with_engine(|e| e.annotate(r.id, Some(&who), text, now));
                Vec::new()
            }
            // The same person's retry (an answer lost on the way): done already, say so.
            Err(faults::ActionError::AlreadyAcknowledged { by, .. }) if by == who => Vec::new(),
            Err(e) => return Err(refused(e)),
        };
        self.durable().await?;
        let _ = self.transitions.send(changes);
        self.fault_reply(r.id)
    }

    async fn resolve_as(&self, who: String, r: pb::FaultActionRequest) -> Result<Response<pb::Fault>, Status> {
        let note = Some(r.note.as_str()).filter(|s| !s.is_empty());
        let changes = match self.faults.with_engine(|e| e.resolve(r.id, &who, note, Timestamp::now())) {
            Ok(changes) => changes,
            // The same person's retry: resolved already, by them.
            Err(e @ faults::ActionError::AlreadyResolved(_)) => {
                let by = self.faults.with_engine(|e| e.fault(r.id).and_then(|f| f.resolved_by.clone()));
                if by.as_deref() != Some(who.as_str()) {
                    return Err(refused(e));
                }
                Vec::new()
            }
            Err(e) => return Err(refused(e)),
        };
        self.durable().await?;
        let _ = self.transitions.send(changes);
        self.fault_reply(r.id)
    }

    /// Refuses a silence or maintenance window for a host the collector does not know:
    /// a typo would otherwise silence nothing, quietly. `--force` announces one for a host
    /// that does not report yet.
    fn known_host(&self, host: &str, what: &str) -> Result<(), Status> {
        match self.store.host(host) {
            Some(h) if h.removed_ms == 0 => Ok(()),
            Some(h) => Err(Status::failed_precondition(format!(
                "host {host:?} was removed (decommissioned) at {}: a {what} for it would suppress nothing until \
                 it reports again; see `pikett hosts` for the hosts monitored, or add --force to announce it anyway",
                Timestamp::from_millisecond(h.removed_ms).map_or_else(|_| "-".to_string(), |t| t.to_string())
            ))),
            None => Err(Status::failed_precondition(format!(
                "no host {host:?} is known to the collector (it has never reported): see `pikett hosts` for the \
                 host ids; to announce a {what} for a host that does not report yet (e.g. before its \
                 enrollment), add --force"
            ))),
        }
    }

    /// Refuses a status page for a customer the collector does not know (neither in
    /// `[customers]` nor on any host): a typo would make a page that never shows anything.
    fn known_customer(&self, customer: &str) -> Result<(), Status> {
        let configured = self.pager.plan().customers.contains_key(customer);
        if configured || self.store.hosts().iter().any(|h| h.customer == customer) {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "no customer {customer:?} is known to the collector (no [customers.{customer}] and no host of it): see \
             the CUSTOMER column of `pikett hosts`; to make the page before the customer's first host reports, \
             add --force"
        )))
    }

    /// Refuses a silence for a check `host` has never reported (a typo would silence
    /// nothing). Known: checks the collector raises itself, configured rules, checks the
    /// fault engine tracks or had faults of, and checks in the host's newest stored batches.
    async fn known_check(&self, host: &str, check: &str) -> Result<(), Status> {
        if COLLECTOR_CHECKS.contains(&check) {
            return Ok(());
        }
        let (from_engine, rule) = self.faults.with_engine(|e| {
            let rule = e.config().rules.iter().any(|r| {
                check
                    .strip_prefix("rule/")
                    .and_then(|c| c.strip_prefix(r.name.as_str()))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            });
            let mut names: std::collections::BTreeSet<String> = e
                .faults(&FaultFilter { all: true, host: Some(host.to_string()), customer: None })
                .into_iter()
                .map(|f| f.check.clone())
                .collect();
            names.extend(e.state().tracks.keys().filter(|k| k.host == host).map(|k| k.check.clone()));
            (names, rule)
        });
        if rule || from_engine.contains(check) {
            return Ok(());
        }
        let (found, mut seen) = recent_checks(self.store.as_ref(), host, check).await;
        if found {
            return Ok(());
        }
        seen.extend(from_engine);
        seen.retain(|c| !COLLECTOR_CHECKS.contains(&c.as_str()));
        let listed = if seen.is_empty() {
            "it has reported no checks lately".to_string()
        } else {
            let mut names: Vec<&str> = seen.iter().map(String::as_str).take(CHECKS_LISTED).collect();
            if seen.len() > CHECKS_LISTED {
                names.push("…");
            }
            format!("its checks include {}", names.join(", "))
        };
        Err(Status::failed_precondition(format!(
            "host {host:?} has never reported a check {check:?} ({listed}); check names are as `pikett faults \
             --host {host}` and `pikett-agent test` on the host show them; omit --check to silence the whole \
             host, or add --force to silence a check it does not report yet"
        )))
    }

    async fn add_silence_as(&self, who: String, r: pb::AddSilenceRequest) -> Result<Response<pb::Silence>, Status> {
        if !r.force {
            self.known_host(&r.host, "silence")?;
            if !r.check.is_empty() {
                self.known_check(&r.host, &r.check).await?;
            }
        }
        let now = Timestamp::now();
        let until = now
            .checked_add(jiff::SignedDuration::from_millis(r.duration_ms as i64))
            .map_err(|e| Status::invalid_argument(format!("--for: {e}")))?;
        let check = Some(r.check.clone()).filter(|s| !s.is_empty());
        let s = NewSilence {
            host: r.host.clone(),
            check: check.clone(),
            until,
            reason: r.reason.clone(),
            who: who.clone(),
        };
        let (id, changes) = self.faults.with_engine(|e| e.add_silence(s, now)).map_err(refused)?;
        self.durable().await?;
        let _ = self.transitions.send(changes);
        Ok(Response::new(pb::Silence {
            id,
            host: r.host,
            check: r.check,
            until_unix_ms: until.as_millisecond(),
            reason: r.reason,
            who,
            created_unix_ms: now.as_millisecond(),
        }))
    }

    async fn add_maintenance_as(
        &self,
        who: String,
        r: pb::AddMaintenanceRequest,
    ) -> Result<Response<pb::Maintenance>, Status> {
        if !r.force {
            self.known_host(&r.host, "maintenance window")?;
        }
        // The host's customer now, kept with the window (a host re-enrolled for another
        // customer keeps its windows under the old one); unknown for a host that does not
        // report (yet, or again): the engine sets it from the host's next report.
        let customer = self.store.host(&r.host).filter(|h| h.removed_ms == 0).map(|h| h.customer).unwrap_or_default();
        let m = NewMaintenance {
            host: r.host,
            customer,
            start: ts(r.start_unix_ms, "--start")?,
            end: ts(r.end_unix_ms, "--end")?,
            reason: r.reason,
            who,
        };
        let (id, changes) = self.faults.with_engine(|e| e.add_maintenance(m, Timestamp::now())).map_err(refused)?;
        self.durable().await?;
        let _ = self.transitions.send(changes);
        let m = self.faults.with_engine(|e| e.maintenances().find(|m| m.id == id).map(maintenance_to_pb));
        m.map(Response::new).ok_or_else(|| Status::internal("maintenance window vanished"))
    }

    async fn add_override_as(
        &self,
        who: String,
        r: pb::AddOverrideRequest,
    ) -> Result<Response<pb::OnCallReply>, Status> {
        let role: Role = serde_json::from_value(serde_json::Value::String(r.role.clone())).map_err(|_| {
            Status::invalid_argument(format!("--role {:?}: expected primary, secondary or management", r.role))
        })?;
        let ov = Override {
            role,
            person: r.person,
            from: ts(r.from_unix_ms, "--from")?,
            to: ts(r.to_unix_ms, "--to")?,
            created_at: Timestamp::now(),
            created_by: Some(who),
        };
        let from = ov.from;
        self.pager.add_override(ov).await.map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::OnCallReply { at_unix_ms: from.as_millisecond(), on_call: self.on_call(from) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pikett_core::faults::{CheckInput, CheckState, Engine, EngineConfig, FaultsConfig, HostDeps};

    fn result(state: CheckState, summary: &str, secs: i64) -> CheckInput {
        CheckInput {
            host: "web-1".into(),
            customer: "acme".into(),
            check: "command/ctl".into(),
            state,
            summary: summary.into(),
            time: Timestamp::from_second(1_800_000_000 + secs).unwrap(),
        }
    }

    fn engine() -> Engine {
        let faults = FaultsConfig { for_results: 1, ..FaultsConfig::default() };
        Engine::new(EngineConfig::new(faults, Vec::new(), HostDeps::default()).unwrap()).unwrap()
    }

    #[test]
    fn a_resolved_fault_says_why_it_opened_not_only_its_last_result() {
        let mut e = engine();
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        // Opened while silenced: the timeline's text ends "; not paged: silence 1".
        let silence =
            NewSilence { host: "web-1".into(), check: None, until: t(100), reason: "r".into(), who: "a".into() };
        e.add_silence(silence, t(0)).unwrap();
        e.check_result(result(CheckState::Warning, "WARNING - degraded; disk 91%", 1), t(1));
        e.check_result(result(CheckState::Critical, "CRITICAL - broken", 2), t(2));
        e.check_result(result(CheckState::Ok, "OK - fine", 3), t(3));
        let f = e.faults(&FaultFilter { all: true, host: None, customer: None })[0].clone();
        assert!(f.timeline[0].text.contains("; not paged: silence 1"), "{:?}", f.timeline[0]);
        let pb = fault_to_pb(&f);
        assert_eq!(pb.state, "resolved");
        assert_eq!(pb.opened_summary, "WARNING - degraded; disk 91%");
        assert_eq!(pb.summary, "OK - fine");
    }

    #[test]
    fn a_summary_that_looks_like_a_suppression_is_kept_whole() {
        let mut e = engine();
        let summary = "CRITICAL - queue stuck; not paged: by design";
        e.check_result(result(CheckState::Critical, summary, 1), Timestamp::from_second(1_800_000_001).unwrap());
        let f = e.faults(&FaultFilter::default())[0].clone();
        assert_eq!(fault_to_pb(&f).opened_summary, summary);
    }

    /// A lease whose database is down (`cluster` fails) or hangs (`cluster` never answers).
    struct BrokenLease {
        hangs: bool,
    }

    #[async_trait::async_trait]
    impl crate::store::Lease for BrokenLease {
        async fn try_acquire_or_renew(
            &self,
            _: &str,
            _: Duration,
            _: Option<i64>,
        ) -> Result<crate::store::LeaseState, crate::store::StoreError> {
            Err(crate::store::StoreError::Engine("connection refused".into()))
        }
        async fn heartbeat(&self, _: &str, _: &crate::store::NodeInfo) -> Result<(), crate::store::StoreError> {
            Err(crate::store::StoreError::Engine("connection refused".into()))
        }
        async fn cluster(&self) -> Result<crate::store::Cluster, crate::store::StoreError> {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            Err(crate::store::StoreError::Engine("connection refused".into()))
        }
        async fn release(&self, _: &str, _: i64) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
    }

    fn status_without_cluster() -> pb::StatusReply {
        pb::StatusReply {
            hosts_up: 3,
            hosts_down: 1,
            open_faults: vec![pb::SeverityCount { severity: "critical".into(), count: 2 }],
            on_call: vec![pb::OnCall { role: "primary".into(), person: "alice".into() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn status_keeps_the_rest_and_says_why_when_the_cluster_cannot_be_read() {
        let view = ClusterView {
            lease: Arc::new(BrokenLease { hangs: false }),
            ttl: Duration::from_secs(5),
            standalone: false,
        };
        let mut reply = status_without_cluster();
        add_cluster(&mut reply, &view, CLUSTER_READ_TIMEOUT).await;
        assert_eq!(reply.cluster_error, "cannot read the cluster table: storage: connection refused");
        assert_eq!((reply.cluster.len(), reply.leader.as_str(), reply.term), (0, "", 0));
        let rest = pb::StatusReply { cluster_error: String::new(), ..reply };
        assert_eq!(rest, status_without_cluster(), "hosts, faults and on-call kept");
    }

    #[tokio::test]
    async fn status_does_not_wait_for_a_cluster_table_that_does_not_answer() {
        let view = ClusterView {
            lease: Arc::new(BrokenLease { hangs: true }),
            ttl: Duration::from_secs(5),
            standalone: false,
        };
        let mut reply = status_without_cluster();
        add_cluster(&mut reply, &view, Duration::from_millis(50)).await;
        assert_eq!(reply.cluster_error, "no answer from the cluster table within 50ms");
        assert_eq!(pb::StatusReply { cluster_error: String::new(), ..reply }, status_without_cluster());
    }

    #[tokio::test]
    async fn status_shows_the_standalone_cluster() {
        let lease = Arc::new(crate::services::leadership::StandaloneLease::new());
        let view = ClusterView { lease: lease.clone(), ttl: Duration::from_secs(5), standalone: true };
        use crate::store::Lease as _;
        lease.try_acquire_or_renew("mon-1", Duration::from_secs(5), None).await.unwrap();
        let info = crate::store::NodeInfo { addr: "0.0.0.0:9740".into(), version: "1".into() };
        lease.heartbeat("mon-1", &info).await.unwrap();
        let mut reply = status_without_cluster();
        add_cluster(&mut reply, &view, CLUSTER_READ_TIMEOUT).await;
        assert_eq!((reply.cluster_error.as_str(), reply.leader.as_str(), reply.term), ("", "mon-1", 1));
        assert_eq!((reply.cluster[0].role.as_str(), reply.cluster[0].addr.as_str()), ("standalone", "0.0.0.0:9740"));
    }
}

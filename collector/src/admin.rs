//! The gRPC admin service the `pikett` CLI talks to.
//!
//! Access (SPEC.md section 5): with no staff tokens configured, calls are
//! accepted from loopback only, acting as a local admin.

use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1 as pb;
use pikett_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::hosts::{HostStatus, host_status};
use crate::store::Store;

pub struct AdminService {
    pub store: Arc<Store>,
    pub host_timeout: Option<Duration>,
}

fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    match request.remote_addr() {
        Some(addr) if addr.ip().is_loopback() => Ok(()),
        Some(addr) => Err(Status::permission_denied(format!(
            "admin calls are accepted from loopback only (no staff tokens are configured); you are {}",
            addr.ip()
        ))),
        None => Err(Status::permission_denied(
            "admin calls are accepted from loopback only",
        )),
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        authorize(&request)?;
        let now = now_ms();
        let hosts = self.store.hosts();
        let up = hosts
            .iter()
            .filter(|h| host_status(h, now, self.host_timeout) == HostStatus::Up)
            .count() as u32;
        Ok(Response::new(pb::StatusReply {
            hosts_up: up,
            hosts_down: hosts.len() as u32 - up,
            batches_stored: self.store.batches_stored(),
            collector_version: env!("CARGO_PKG_VERSION").to_string(),
            now_unix_ms: now,
            open_faults: Vec::new(),
            on_call: Vec::new(),
        }))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsReply>, Status> {
        authorize(&request)?;
        let now = now_ms();
        let hosts = self
            .store
            .hosts()
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
                capabilities: h.capabilities,
                dropped_samples: h.dropped_samples,
            })
            .collect();
        Ok(Response::new(pb::ListHostsReply { hosts }))
    }
}

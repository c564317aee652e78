//! The gRPC enrollment service: a new agent trades a one-time ticket and a certificate
//! request for a client certificate; an enrolled agent renews its certificate over mutual
//! TLS. The CA and the tickets: `services::pki`; who is enrolled: `services::identity`.

use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1 as pb;
use pikett_proto::v1::enroll_server::Enroll;
use tonic::{Request, Response, Status};

use crate::services::identity::{CertVerdict, IdentityService};
use crate::services::pki::{Ca, serial_of};

pub struct EnrollService {
    pub ca: Option<Arc<Ca>>,
    pub identity: Arc<IdentityService>,
    /// How long a client certificate is valid (`[tls] client_cert_validity`).
    pub validity: Duration,
}

impl EnrollService {
    fn ca(&self) -> Result<&Ca, Status> {
        self.ca.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this collector does not enroll agents (no [tls] ca_key_file); ask its operator for a certificate",
            )
        })
    }

    fn reply(
        &self,
        host: &str,
        customer: &str,
        signed: crate::services::pki::Signed,
    ) -> Result<pb::EnrollReply, Status> {
        Ok(pb::EnrollReply {
            host_id: host.to_string(),
            customer: customer.to_string(),
            certificate_pem: signed.pem,
            ca_pem: self.ca()?.cert_pem().to_string(),
            not_after_unix_ms: signed.not_after_ms,
        })
    }
}

#[tonic::async_trait]
impl Enroll for EnrollService {
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        let peer = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let r = request.into_inner();
        let ca = self.ca()?;
        let now = jiff::Timestamp::now();
        let ticket = ca.verify_ticket(&r.ticket, now.as_millisecond()).map_err(|e| {
            tracing::warn!(peer, error = %e, "enrollment refused");
            Status::permission_denied(e.to_string())
        })?;
        let signed = ca
            .sign_client(&ticket.host, &r.csr_pem, now, self.validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.identity.enroll(&ticket, &signed, now.as_millisecond()).await.map_err(|e| {
            tracing::warn!(peer, host_id = %ticket.host, error = %e, "enrollment refused");
            match e {
                crate::services::identity::IdentityError::TicketUsed { .. } => Status::permission_denied(e.to_string()),
                other => Status::internal(other.to_string()),
            }
        })?;
        tracing::info!(peer, host_id = %ticket.host, customer = %ticket.customer, serial = %signed.serial, "agent enrolled");
        Ok(Response::new(self.reply(&ticket.host, &ticket.customer, signed)?))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        let cert = request
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()))
            .ok_or_else(|| Status::unauthenticated("renewal needs the current client certificate"))?;
        let host = crate::services::pki::common_name(&cert)
            .ok_or_else(|| Status::unauthenticated("the client certificate has no subject common name"))?;
        let now = jiff::Timestamp::now();
        let presented = serial_of(&cert).unwrap_or_default();
        let customer = match self.identity.check(&host, Some(&presented), now.as_millisecond()) {
            CertVerdict::Accepted { customer } => customer,
            CertVerdict::Unenrolled => {
                return Err(Status::failed_precondition(format!(
                    "host {host} was not enrolled by this collector; enroll it with a ticket"
                )));
            }
            CertVerdict::Refused(why) => return Err(Status::permission_denied(why)),
        };
        let ca = self.ca()?;
        let r = request.into_inner();
        let signed = ca
            .sign_client(&host, &r.csr_pem, now, self.validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.identity
            .renew(&host, &presented, &signed, now.as_millisecond())
            .await
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        tracing::info!(host_id = %host, serial = %signed.serial, "agent certificate renewed");
        Ok(Response::new(self.reply(&host, &customer, signed)?))
    }
}

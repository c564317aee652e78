//! Who may call the staff services (`Admin`, `Reports`, `Incidents`), as whom, and the
//! audit trail of what they did.
//!
//! - With staff tokens configured (`services::staff`), every call needs one
//!   (`authorization: Bearer pkt_…`), loopback included; the acting user is the token's.
//! - Without any, calls are accepted from loopback only (IPv4-mapped loopback included),
//!   acting as a local admin named by the `x-pikett-user` header (the quick start).
//!
//! Every change, and every refused call, is recorded in the audit log before the caller
//! gets an answer ([`Change::finish`]).

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::services::audit::{AuditEntry, AuditLog};
use crate::services::staff::{Role, StaffTokens};

/// The caller of one staff call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub peer: String,
}

pub struct Access {
    tokens: Arc<StaffTokens>,
    audit: Arc<AuditLog>,
}

/// A change in progress: finish it with its outcome, which is audited.
pub struct Change<'a> {
    access: &'a Access,
    caller: Caller,
    call: &'static str,
    arguments: String,
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The longest argument text kept in the audit log: a refused caller must not be able to
/// fill the disk with large requests.
const MAX_AUDIT_ARGUMENTS: usize = 1024;

fn arguments_of<T: std::fmt::Debug>(request: &Request<T>) -> String {
    let mut text = format!("{:?}", request.get_ref());
    if text.len() > MAX_AUDIT_ARGUMENTS {
        let mut cut = MAX_AUDIT_ARGUMENTS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// What a role is called in a refusal, with the verb of the call.
fn refusal(role: Role, verb: &str) -> String {
    format!("permission denied: role {} cannot {verb}", role.as_str())
}

impl Access {
    pub fn new(tokens: Arc<StaffTokens>, audit: Arc<AuditLog>) -> Access {
        Access { tokens, audit }
    }

    /// "tokens" or "loopback": how staff access works right now (for `pikett status`).
    pub fn mode(&self) -> &'static str {
        if self.tokens.configured() { "tokens" } else { "loopback" }
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Caller, (String, Status)> {
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if self.tokens.configured() {
            let Some(token) = bearer else {
                let msg = "a staff token is required (PIKETT_TOKEN or ~/.config/pikett/token)";
                return Err((peer, Status::unauthenticated(msg)));
            };
            return match self.tokens.authenticate(token) {
                Ok(staff) => Ok(Caller { user: staff.user, role: staff.role, peer }),
                Err(e) => Err((peer, Status::unauthenticated(e.to_string()))),
            };
        }
        match request.remote_addr() {
            Some(addr) if is_loopback(addr.ip()) => {}
            _ => {
                let msg = format!(
                    "staff calls are accepted from loopback only (no staff tokens are configured); you are {peer}"
                );
                return Err((peer, Status::permission_denied(msg)));
            }
        }
        let user = request
            .metadata()
            .get("x-pikett-user")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()))
            .unwrap_or("unknown");
        Ok(Caller { user: format!("{user}@local"), role: Role::Admin, peer })
    }

    async fn audit_refusal(&self, caller: Option<&Caller>, peer: &str, call: &str, arguments: String, why: &Status) {
        let entry = AuditEntry {
            time_ms: jiff::Timestamp::now().as_millisecond(),
            user: caller.map_or_else(|| "-".to_string(), |c| c.user.clone()),
            role: caller.map_or_else(|| "-".to_string(), |c| c.role.as_str().to_string()),
            peer: peer.to_string(),
            call: call.to_string(),
            arguments,
            outcome: format!("refused: {}", why.message()),
        };
        if let Err(e) = self.audit.record(&entry).await {
            crate::services::storage_failure::stop("writing the audit log", &e);
        }
    }

    /// A call that needs `need` (and is audited only when refused). `verb` completes the
    /// refusal: "role viewer cannot {verb}".
    pub async fn allow<T: std::fmt::Debug>(
        &self,
        request: &Request<T>,
        need: Role,
        call: &'static str,
        verb: &str,
    ) -> Result<Caller, Status> {
        let arguments = arguments_of(request);
        match self.identify(request) {
            Ok(caller) if caller.role >= need => Ok(caller),
            Ok(caller) => {
                let status = Status::permission_denied(refusal(caller.role, verb));
                self.audit_refusal(Some(&caller), &caller.peer.clone(), call, arguments, &status).await;
                Err(status)
            }
            Err((peer, status)) => {
                self.audit_refusal(None, &peer, call, arguments, &status).await;
                Err(status)
            }
        }
    }

    /// Reading: any staff role.
    pub async fn read<T: std::fmt::Debug>(&self, request: &Request<T>, call: &'static str) -> Result<Caller, Status> {
        self.allow(request, Role::Viewer, call, "read").await
    }

    /// A change that needs `need`; finish it with [`Change::finish`].
    pub async fn change<T: std::fmt::Debug>(
        &self,
        request: &Request<T>,
        need: Role,
        call: &'static str,
        verb: &str,
    ) -> Result<Change<'_>, Status> {
        let caller = self.allow(request, need, call, verb).await?;
        Ok(Change { access: self, caller, call, arguments: arguments_of(request) })
    }

    /// The audit log, for `pikett audit` and retention.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }
}

impl Change<'_> {
    /// The acting user, as recorded with the change.
    pub fn who(&self) -> &str {
        &self.caller.user
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Records the outcome durably, then hands it back.
    pub async fn finish<R>(self, result: Result<R, Status>) -> Result<R, Status> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("failed: {}", s.message()),
        };
        let entry = AuditEntry {
            time_ms: jiff::Timestamp::now().as_millisecond(),
            user: self.caller.user.clone(),
            role: self.caller.role.as_str().to_string(),
            peer: self.caller.peer.clone(),
            call: self.call.to_string(),
            arguments: self.arguments,
            outcome,
        };
        if let Err(e) = self.access.audit.record(&entry).await {
            crate::services::storage_failure::stop("writing the audit log", &e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
    }
}

//! Who may call the staff services (`Admin`, `Reports`, `Incidents`), and as whom.
//!
//! Access (SPEC.md section 5): with no staff tokens configured, calls are
//! accepted from loopback only, acting as a local admin. The acting user is
//! taken from the `x-pikett-user` header and recorded with every change.

use tonic::{Request, Status};

/// Checks access; returns the acting user's name.
pub fn authorize<T>(request: &Request<T>) -> Result<String, Status> {
    match request.remote_addr() {
        Some(addr) if addr.ip().is_loopback() => {}
        Some(addr) => {
            return Err(Status::permission_denied(format!(
                "admin calls are accepted from loopback only (no staff tokens are configured); you are {}",
                addr.ip()
            )));
        }
        None => return Err(Status::permission_denied("admin calls are accepted from loopback only")),
    }
    let user = request
        .metadata()
        .get("x-pikett-user")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or("unknown");
    Ok(format!("{user}@local"))
}

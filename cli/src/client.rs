//! The connection to the collector and what every command shares: the acting user, time
//! parsing and formatting, gRPC errors as messages.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pikett_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub struct Client {
    pub(crate) admin: AdminClient<Channel>,
    /// The connection, shared by the other services' clients (`reports`, `incidents`).
    pub(crate) channel: Channel,
    pub(crate) user: String,
    /// The staff token (`PIKETT_TOKEN` or `~/.config/pikett/token`), if any.
    token: Option<String>,
}

/// The staff token: `PIKETT_TOKEN`, else `~/.config/pikett/token`, which must not be
/// readable by group or others.
fn staff_token() -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("PIKETT_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(home) = std::env::var_os("HOME") else { return Ok(None) };
    let path = Path::new(&home).join(".config/pikett/token");
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!("{}: readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
    }
    let token = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
}

impl Client {
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("--collector {url}: not a valid URL"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS setup")?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("cannot reach the collector at {url}"))?;
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Ok(Client { admin: AdminClient::new(channel.clone()), channel, user, token: staff_token()? })
    }

    /// A request carrying the staff token (the collector takes the acting user from it),
    /// and the local user's name for a collector without tokens (loopback only).
    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.user.parse() {
            r.metadata_mut().insert("x-pikett-user", v);
        }
        if let Some(token) = &self.token
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }
}

/// Parses a time given on the command line: RFC 3339 (`2026-11-24T02:00:00Z`,
/// `...+01:00`), a local civil time (`2026-11-24T02:00`, `2026-11-24 02:00`) in
/// the system time zone, or `now`.
pub fn parse_time(s: &str) -> anyhow::Result<jiff::Timestamp> {
    if s == "now" {
        return Ok(jiff::Timestamp::now());
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let civil: jiff::civil::DateTime = s
        .replacen(' ', "T", 1)
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: expected a time like 2026-11-24T02:00 (local) or 2026-11-24T01:00:00Z"))?;
    Ok(civil.to_zoned(jiff::tz::TimeZone::system())?.timestamp())
}

pub(crate) fn opt_time(ms: i64) -> serde_json::Value {
    if ms == 0 { serde_json::Value::Null } else { json!(format_time(ms)) }
}

/// A call the collector refused or failed, with its status kept (for [`leader_redirect`]).
#[derive(Debug)]
pub(crate) struct RpcError(pub tonic::Status);

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for RpcError {}

pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(RpcError(status))
}

/// Whether `addr` (`host:port`) names this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The metadata key a collector that is not the leader names the leader's address in.
const LEADER_METADATA: &str = "pikett-leader";

/// The URL to ask again when `error` is a follower's "not the leader" answer naming the
/// leader: `collector`'s scheme with the leader's address (a collector of a cluster answers
/// staff calls only on the leader, see the collector's `api::leader_gate`).
pub(crate) fn leader_redirect(collector: &str, error: &anyhow::Error) -> Option<String> {
    let status = &error.downcast_ref::<RpcError>()?.0;
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let addr = status.metadata().get(LEADER_METADATA)?.to_str().ok()?.trim();
    if addr.is_empty() || addr.contains('/') {
        return None;
    }
    let scheme = collector.split_once("://").map_or("http", |(scheme, _)| scheme);
    // The staff token goes along: in plain text only to this machine.
    if scheme != "https" && !is_loopback(addr) {
        return None;
    }
    let url = format!("{scheme}://{addr}");
    (url.trim_end_matches('/') != collector.trim_end_matches('/')).then_some(url)
}

pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| "-".into(), |t| t.round(jiff::Unit::Second).map_or(t, |x| x).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_the_leader(addr: Option<&str>) -> anyhow::Error {
        let mut status = tonic::Status::unavailable("this collector (b) is not the leader");
        if let Some(addr) = addr {
            status.metadata_mut().insert(LEADER_METADATA, addr.parse().unwrap());
        }
        rpc_error(status)
    }

    #[test]
    fn a_followers_answer_names_where_to_ask_again_with_the_same_scheme() {
        let e = not_the_leader(Some("10.0.0.1:9740"));
        assert_eq!(e.to_string(), "this collector (b) is not the leader");
        assert_eq!(leader_redirect("https://c2:9740", &e).as_deref(), Some("https://10.0.0.1:9740"));
        // Plain text only to this machine: the staff token goes along.
        assert_eq!(leader_redirect("http://127.0.0.1:1", &e), None);
        let local = not_the_leader(Some("127.0.0.1:9741"));
        assert_eq!(leader_redirect("http://127.0.0.1:9740", &local).as_deref(), Some("http://127.0.0.1:9741"));
        // No address, another code, the same collector again, or another error: no redirect.
        assert_eq!(leader_redirect("https://c2:9740", &not_the_leader(None)), None);
        assert_eq!(leader_redirect("https://c2:9740", &rpc_error(tonic::Status::permission_denied("no"))), None);
        assert_eq!(leader_redirect("https://10.0.0.1:9740/", &e), None);
        assert_eq!(leader_redirect("https://c2:9740", &anyhow::anyhow!("cannot reach")), None);
    }
}

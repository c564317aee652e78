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

pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| "-".into(), |t| t.round(jiff::Unit::Second).map_or(t, |x| x).to_string())
}

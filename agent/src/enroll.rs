//! `pikett-agent enroll` and certificate renewal.
//!
//! Enrollment: the key is made here and never leaves the host. The agent first checks that
//! the collector's certificate chains to the CA whose fingerprint the ticket carries
//! (the agent has no CA yet: the ticket is its only trust anchor), stores that CA, then
//! sends the ticket and a certificate request over TLS verified against it, and stores the
//! signed certificate. Files go to the paths of the config's `[tls]` section. In a cluster of
//! collectors only the leader enrolls: a follower answers `UNAVAILABLE` naming the leader
//! ([`leader_redirect`]), where the agent asks once more (the same checks, the same request).
//!
//! Renewal: while the agent runs, a task renews the certificate over mutual TLS once a
//! third of its lifetime is left (new key, same host), and the uplink uses the new files
//! from its next connection on.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pikett_core::enrollment::Ticket;
use pikett_proto::v1 as pb;
use pikett_proto::v1::enroll_client::EnrollClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::config::{AgentConfig, TlsConfig};

/// The `[tls]` paths enrollment writes.
struct Paths<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

fn paths(tls: Option<&TlsConfig>) -> anyhow::Result<Paths<'_>> {
    match tls {
        Some(TlsConfig { ca_file: Some(ca), cert_file: Some(cert), key_file: Some(key), .. }) => {
            Ok(Paths { ca, cert, key })
        }
        _ => anyhow::bail!(
            "enrollment writes the CA, certificate and key to [tls] ca_file, cert_file and key_file: set all three"
        ),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `path` through a temporary file and a rename, with `mode`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = write_temporary(path, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes `contents` next to `path` (`.tmp`), synced; returns the temporary path.
fn write_temporary(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    // `agent.key.tmp`, `agent.pem.tmp`: one temporary per file, never shared.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    f.write_all(contents).and_then(|()| f.sync_all()).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Puts a new key and certificate in place: both are written in full first, so a failure
/// (a full disk) leaves the old pair untouched; then two renames.
fn install_pair(paths: &Paths<'_>, key_pem: &[u8], cert_pem: &[u8]) -> anyhow::Result<()> {
    let key_tmp = write_temporary(paths.key, key_pem, 0o600)?;
    let cert_tmp = match write_temporary(paths.cert, cert_pem, 0o644) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&key_tmp);
            return Err(e);
        }
    };
    std::fs::rename(&key_tmp, paths.key).map_err(|e| anyhow::anyhow!("{}: {e}", paths.key.display()))?;
    std::fs::rename(&cert_tmp, paths.cert).map_err(|e| anyhow::anyhow!("{}: {e}", paths.cert.display()))
}

/// Accepts the collector's certificate only if it chains to the CA with the pinned
/// fingerprint (sent by the collector in its chain), and remembers that CA.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| sha256_hex(c.as_ref()) == self.fingerprint).ok_or_else(|| {
            rustls::Error::General(
                "the collector's certificate does not come with the CA the ticket names (wrong collector, or a \
                 ticket from another collector)"
                    .into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects once to `url` and returns the CA the collector's certificate chains to, if its
/// fingerprint is `fingerprint`.
async fn fetch_pinned_ca(url: &str, server_name: Option<&str>, fingerprint: &str) -> anyhow::Result<Vec<u8>> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--collector {url}: {e}"))?;
    if parsed.scheme() != "https" {
        anyhow::bail!("--collector {url}: enrollment needs https:// (the ticket's CA is checked over TLS)");
    }
    let host = parsed.host_str().ok_or_else(|| anyhow::anyhow!("--collector {url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = parsed.port().unwrap_or(9740);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pin = Arc::new(PinnedCa {
        fingerprint: fingerprint.to_string(),
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(pin.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.unwrap_or(&host).to_string())
        .map_err(|e| anyhow::anyhow!("server name {:?}: {e}", server_name.unwrap_or(&host)))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no connection within 10 s"))?
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no TLS handshake within 10 s"))?
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let ca = pin.found.lock().unwrap_or_else(|p| p.into_inner()).take();
    ca.map(|c| c.to_vec()).ok_or_else(|| anyhow::anyhow!("{url}: the collector sent no CA"))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A new key and a certificate request for `host`.
fn key_and_request(host: &str) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, host);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// The metadata key in which a collector that is not its cluster's leader names the leader's
/// gRPC address (`host:port`), in an `UNAVAILABLE` answer (the collector's
/// `api::leader_gate::LEADER_METADATA`).
const LEADER_METADATA: &str = "pikett-leader";

/// The URL to ask again when `status` is a follower's "not the leader" answer naming the
/// leader: `collector`'s scheme with the leader's address. `None` for any other answer, and
/// when the named leader is `collector` itself (no loop).
pub fn leader_redirect(collector: &str, status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let addr = status.metadata().get(LEADER_METADATA)?.to_str().ok()?.trim();
    if addr.is_empty() || addr.contains('/') {
        return None;
    }
    let scheme = collector.split_once("://").map_or("https", |(scheme, _)| scheme);
    let url = format!("{scheme}://{addr}");
    (url.trim_end_matches('/') != collector.trim_end_matches('/')).then_some(url)
}

/// One enrollment attempt at `collector`: checks its CA against the ticket's `fingerprint`,
/// stores the CA, and sends the request. `Ok(Err(status))`: the collector answered with a
/// refusal (the caller decides whether it is a redirect).
async fn enroll_at(
    config: &AgentConfig,
    paths: &Paths<'_>,
    collector: &str,
    fingerprint: &str,
    request: pb::EnrollRequest,
) -> anyhow::Result<Result<pb::EnrollReply, tonic::Status>> {
    let server_name = config.tls.as_ref().and_then(|t| t.server_name.as_deref());
    let ca = fetch_pinned_ca(collector, server_name, fingerprint).await?;
    write_atomically(paths.ca, pem("CERTIFICATE", &ca).as_bytes(), 0o644)?;
    let tls = TlsConfig {
        ca_file: Some(paths.ca.to_owned()),
        cert_file: None,
        key_file: None,
        ..config.tls.clone().unwrap_or_default()
    };
    let channel = crate::uplink::connect(collector, Some(&tls)).await.map_err(anyhow::Error::msg)?;
    Ok(EnrollClient::new(channel).enroll(request).await.map(tonic::Response::into_inner))
}

/// `pikett-agent enroll`: returns the line to print.
pub async fn enroll(config: &AgentConfig, collector: &str, ticket: &str) -> anyhow::Result<String> {
    let paths = paths(config.tls.as_ref())?;
    let host = config.resolved_host_id().map_err(anyhow::Error::msg)?;
    let payload = Ticket::peek(ticket).map_err(|e| anyhow::anyhow!("--ticket: {e}"))?;
    if payload.host != host {
        anyhow::bail!(
            "the ticket is for host {:?}, this agent is {host:?} (host_id in its config): ask for a ticket for {host:?}",
            payload.host
        );
    }
    let (key, csr) = key_and_request(&host)?;
    let request = pb::EnrollRequest { ticket: ticket.trim().to_string(), csr_pem: csr };
    let mut answer = enroll_at(config, &paths, collector, &payload.ca_sha256, request.clone()).await?;
    // A follower of a cluster does not enroll: it names the leader, asked once in its place
    // (the same ticket is still unused: the follower refused before looking at it).
    if let Err(status) = &answer
        && let Some(leader) = leader_redirect(collector, status)
    {
        tracing::info!(collector, leader = %leader, "the collector is not the leader; enrolling at the leader");
        answer = enroll_at(config, &paths, &leader, &payload.ca_sha256, request).await?;
    }
    let reply = answer.map_err(|s| anyhow::anyhow!("the collector refused the enrollment: {}", s.message()))?;
    install_pair(&paths, key.serialize_pem().as_bytes(), reply.certificate_pem.as_bytes())?;
    let until = jiff::Timestamp::from_millisecond(reply.not_after_unix_ms).map(|t| t.to_string()).unwrap_or_default();
    Ok(format!(
        "enrolled as {} (customer {}); certificate valid until {until}; written to {}",
        reply.host_id,
        reply.customer,
        paths.cert.display()
    ))
}

/// (not before, not after) of the PEM certificate in `path`, Unix seconds.
fn validity(path: &Path) -> Option<(i64, i64)> {
    let bytes = std::fs::read(path).ok()?;
    let der: CertificateDer<'static> = rustls::pki_types::pem::PemObject::from_pem_slice(&bytes).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When to renew a certificate valid from `not_before` to `not_after` (seconds): once a
/// third of its lifetime is left.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after - (not_after - not_before).max(0) / 3
}

/// Renews the agent's certificate while it runs (see the module documentation).
pub async fn renewal(config: AgentConfig, host: String, mut shutdown: watch::Receiver<bool>) {
    let Ok(paths) = paths(config.tls.as_ref()) else { return };
    loop {
        let Some((not_before, not_after)) = validity(paths.cert) else {
            tracing::warn!(cert_file = %paths.cert.display(), "no readable certificate: not renewing it");
            return;
        };
        let lifetime = (not_after - not_before).max(1);
        let now = jiff::Timestamp::now().as_second();
        let mut wait = Duration::from_secs((lifetime as u64 / 10).clamp(1, 3600));
        if now >= renew_at(not_before, not_after) {
            match renew(&config, &host, &paths).await {
                Ok(until) => tracing::info!(valid_until = %until, "certificate renewed"),
                Err(e) => {
                    tracing::warn!(error = %e, "certificate renewal failed; trying again later");
                    wait = wait.min(Duration::from_secs(60));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn renew(config: &AgentConfig, host: &str, paths: &Paths<'_>) -> anyhow::Result<String> {
    let (key, csr) = key_and_request(host)?;
    let mut last = None;
    for url in &config.collectors {
        let channel = match crate::uplink::connect(url, config.tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(anyhow::anyhow!(e));
                continue;
            }
        };
        let mut answer = EnrollClient::new(channel).renew(pb::RenewRequest { csr_pem: csr.clone() }).await;
        // A follower of a cluster does not renew either: ask the leader it names, once.
        if let Err(status) = &answer
            && let Some(leader) = leader_redirect(url, status)
        {
            answer = match crate::uplink::connect(&leader, config.tls.as_ref()).await {
                Ok(channel) => EnrollClient::new(channel).renew(pb::RenewRequest { csr_pem: csr.clone() }).await,
                Err(e) => {
                    last = Some(anyhow::anyhow!("{url} names the leader {leader}: {e}"));
                    continue;
                }
            };
        }
        match answer {
            Ok(reply) => {
                let reply = reply.into_inner();
                install_pair(paths, key.serialize_pem().as_bytes(), reply.certificate_pem.as_bytes())?;
                return Ok(jiff::Timestamp::from_millisecond(reply.not_after_unix_ms)
                    .map(|t| t.to_string())
                    .unwrap_or_default());
            }
            Err(s) => last = Some(anyhow::anyhow!("{url}: {}", s.message())),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no collector configured")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_the_leader(addr: Option<&str>) -> tonic::Status {
        let mut status = tonic::Status::unavailable("this collector (b) is not the leader");
        if let Some(addr) = addr {
            status.metadata_mut().insert(LEADER_METADATA, addr.parse().unwrap());
        }
        status
    }

    #[test]
    fn a_followers_answer_names_the_leader_to_enroll_at_with_the_same_scheme() {
        let follower = not_the_leader(Some("10.0.0.1:9740"));
        assert_eq!(leader_redirect("https://c2:9740", &follower).as_deref(), Some("https://10.0.0.1:9740"));
        assert_eq!(leader_redirect("http://127.0.0.1:1", &follower).as_deref(), Some("http://10.0.0.1:9740"));
        assert_eq!(
            leader_redirect("https://c2:9740", &not_the_leader(Some("[2001:db8::1]:9740"))).as_deref(),
            Some("https://[2001:db8::1]:9740")
        );
        // No address, a bad one, another code, or the same collector again: no redirect.
        assert_eq!(leader_redirect("https://c2:9740", &not_the_leader(None)), None);
        assert_eq!(leader_redirect("https://c2:9740", &not_the_leader(Some(" "))), None);
        assert_eq!(leader_redirect("https://c2:9740", &not_the_leader(Some("evil/path"))), None);
        let mut refused = tonic::Status::permission_denied("this ticket was already used");
        refused.metadata_mut().insert(LEADER_METADATA, "10.0.0.1:9740".parse().unwrap());
        assert_eq!(leader_redirect("https://c2:9740", &refused), None);
        assert_eq!(leader_redirect("https://10.0.0.1:9740/", &follower), None);
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_lifetime_is_left() {
        assert_eq!(renew_at(0, 90), 60);
        assert_eq!(renew_at(1_000, 1_000 + 90 * 86_400), 1_000 + 60 * 86_400);
    }
}

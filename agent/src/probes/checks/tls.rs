//! The `tls` check (certificate days left on any TLS port) and the certificate helpers `http` shares.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{duration_sample, fmt_duration, fmt_secs};
use crate::observation::{Observation, State};

/// What the days-left report needs from a certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// Reads subject and validity from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let ts = |t: i64| Timestamp::from_second(t).map_err(|e| format!("certificate time out of range: {e}"));
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
    })
}

/// Days (fractional) from `now` until `not_after`; negative once expired.
pub fn days_left(not_after: Timestamp, now: Timestamp) -> f64 {
    (not_after.as_second() - now.as_second()) as f64 / 86_400.0
}

/// Expired (or not yet valid) → CRITICAL, fewer than `warn_days` left → WARNING.
pub fn cert_state(info: &CertInfo, now: Timestamp, warn_days: u32) -> (State, String) {
    let left = days_left(info.not_after, now);
    if now < info.not_before {
        return (State::Critical, format!("certificate {} is not valid before {}", info.subject, info.not_before));
    }
    if left <= 0.0 {
        return (
            State::Critical,
            format!("certificate {} expired {} ({:.1} days ago)", info.subject, info.not_after, -left),
        );
    }
    let state = if left < f64::from(warn_days) { State::Warning } else { State::Ok };
    (
        state,
        format!(
            "certificate {} expires {} (in {:.1} days, warn below {warn_days})",
            info.subject, info.not_after, left
        ),
    )
}

/// The days-left sample for a check.
pub(crate) fn days_left_sample(check: &str, info: &CertInfo, now: Timestamp) -> Observation {
    Observation::sample(
        "pikett_check_cert_days_left",
        [("check", check.to_string())],
        days_left(info.not_after, now),
        "d",
        now,
    )
}

/// Reads the PEM certificates of a `ca_file`.
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in ca_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("ca_file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The platform's trust store (plus `extra_roots`), verified with the ring provider.
pub(crate) fn platform_verifier(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls_platform_verifier::Verifier>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
        .map(Arc::new)
        .map_err(|e| format!("cannot load the system's trusted certificates: {e}"))
}

/// A client config with an explicit ring provider, so nothing depends on a
/// process-wide default provider being installed.
pub(crate) fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Runs the real verifier but lets the handshake finish either way, remembering
/// the verdict: the `tls` check reports days left even for an untrusted
/// certificate, and says that it is untrusted.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<rustls_platform_verifier::Verifier>,
    verdict: Mutex<Option<Result<(), rustls::Error>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(r.map(|_| ()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn is_expiry(verdict: &Result<(), rustls::Error>) -> bool {
    use rustls::CertificateError::{Expired, ExpiredContext, NotValidYet, NotValidYetContext};
    matches!(
        verdict,
        Err(rustls::Error::InvalidCertificate(
            Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. }
        ))
    )
}

/// A validated `tls` check.
pub(crate) struct TlsCheck {
    pub address: String,
    pub server_name: ServerName<'static>,
    pub warn_days: u32,
    pub timeout: Duration,
    pub verifier: Arc<rustls_platform_verifier::Verifier>,
}

impl TlsCheck {
    pub async fn run(&self, check: &str, now: Timestamp) -> Vec<Observation> {
        let recorder = Arc::new(RecordingVerifier { inner: self.verifier.clone(), verdict: Mutex::new(None) });
        let config = match client_config(recorder.clone()) {
            Ok(c) => c,
            Err(e) => return vec![Observation::check(check, State::Unknown, e, now)],
        };
        let connector = TlsConnector::from(Arc::new(config));
        let started = Instant::now();
        let handshake = async {
            let tcp = TcpStream::connect(&self.address)
                .await
                .map_err(|e| format!("connect to {} failed: {e}", self.address))?;
            connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {} failed: {e}", self.address))
        };
        let stream = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return vec![Observation::check(check, State::Critical, e, now)],
            Err(_) => {
                let msg = format!("no TLS handshake with {} within {}", self.address, fmt_duration(self.timeout));
                return vec![Observation::check(check, State::Critical, msg, now)];
            }
        };
        let elapsed = started.elapsed();
        let Some(leaf) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
            return vec![Observation::check(check, State::Unknown, "server sent no certificate", now)];
        };
        let info = match cert_info(leaf) {
            Ok(i) => i,
            Err(e) => return vec![Observation::check(check, State::Unknown, e, now)],
        };
        let (mut state, mut summary) = cert_state(&info, now, self.warn_days);
        let verdict = recorder.verdict.lock().ok().and_then(|mut v| v.take());
        // An expired certificate is already CRITICAL with a clearer message.
        if let Some(Err(e)) = verdict.filter(|v| !is_expiry(v)) {
            state = State::Critical;
            summary = format!("certificate not trusted ({e}); {summary}");
        }
        summary.push_str(&format!(", handshake {}", fmt_secs(elapsed)));
        vec![
            Observation::check(check, state, summary, now),
            duration_sample(check, elapsed, now),
            days_left_sample(check, &info, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            subject: "CN=x".into(),
            not_before: Timestamp::from_second(not_before).unwrap(),
            not_after: Timestamp::from_second(not_after).unwrap(),
        }
    }

    #[test]
    fn cert_state_by_days_left() {
        let now = Timestamp::from_second(1_000_000_000).unwrap();
        let day = 86_400;
        let base = 1_000_000_000 - 100 * day;
        assert_eq!(cert_state(&info(base, 1_000_000_000 + 30 * day), now, 21).0, State::Ok);
        let (s, msg) = cert_state(&info(base, 1_000_000_000 + 5 * day), now, 21);
        assert_eq!(s, State::Warning);
        assert!(msg.contains("in 5.0 days"), "{msg}");
        let (s, msg) = cert_state(&info(base, 1_000_000_000 - day), now, 21);
        assert_eq!(s, State::Critical);
        assert!(msg.contains("expired"), "{msg}");
        let (s, msg) = cert_state(&info(1_000_000_000 + day, 1_000_000_000 + 30 * day), now, 21);
        assert_eq!(s, State::Critical);
        assert!(msg.contains("not valid before"), "{msg}");
        // warn_days = 0 never warns.
        assert_eq!(cert_state(&info(base, 1_000_000_000 + 60), now, 0).0, State::Ok);
    }

    #[test]
    fn days_left_is_fractional_and_signed() {
        let now = Timestamp::from_second(0).unwrap();
        assert_eq!(days_left(Timestamp::from_second(43_200).unwrap(), now), 0.5);
        assert_eq!(days_left(Timestamp::from_second(-86_400).unwrap(), now), -1.0);
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        assert!(cert_info(b"not a certificate").unwrap_err().contains("cannot parse"));
    }
}

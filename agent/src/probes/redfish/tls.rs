//! How the agent trusts a BMC's certificate: `ca_file`, `server_name`, `tls_fingerprint`.
//!
//! BMC certificates are self-signed or signed by a provider's internal CA, and rarely
//! name the address the agent uses (`https://10.1.2.3`). Two ways out that keep the
//! connection verified, so nobody needs `tls_insecure`:
//! - `server_name`: verify the chain as usual, but against this name instead of the
//!   endpoint's host (the name the certificate does carry, e.g. `idrac-F54P1G3`);
//! - `tls_fingerprint = "sha256:…"`: trust exactly this certificate (pinning), whatever
//!   its issuer, name or dates; the handshake's signature is still checked, so only the
//!   holder of its private key passes.
//!
//! `ca_file` replaces the system's roots rather than adding to them (like `curl
//! --cacert`): a BMC behind a private CA must not also be accepted with any public
//! CA's certificate for its name.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::RedfishError;
use crate::probes::checks::tls::{client_config, load_ca_file, platform_verifier};

/// A parsed `tls_fingerprint`: the SHA-256 of the certificate's DER bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// `sha256:` followed by 64 hex digits, colons allowed between bytes, any case; also
    /// `openssl x509 -noout -fingerprint -sha256`'s own line, `sha256 Fingerprint=AB:CD:…`.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        let hex = ["sha256:", "sha256 fingerprint="]
            .iter()
            .find(|p| lower.starts_with(**p))
            .map(|p| &t[p.len()..])
            .ok_or_else(|| format!("{text:?} does not start with \"sha256:\""))?;
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{text:?}: expected 64 hex digits after \"sha256:\" (32 bytes)"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| format!("{text:?}: {e}"))?;
        }
        Ok(Fingerprint(out))
    }

    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        write!(f, "sha256:{}", hex.join(":"))
    }
}

/// The rustls client config for the BMC, or `None` when the system's roots and the
/// endpoint's host name are all it takes (reqwest's defaults).
pub fn client_tls(
    ca_file: Option<&Path>,
    server_name: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<Option<ClientConfig>, RedfishError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (fingerprint, ca_file, server_name) {
        (None, None, None) => return Ok(None),
        (Some(pin), _, _) => {
            let pin =
                Fingerprint::parse(pin).map_err(|reason| RedfishError::Config { field: "tls_fingerprint", reason })?;
            Arc::new(PinnedCertificate { pin, algorithms: provider.signature_verification_algorithms })
        }
        (None, ca, name) => {
            let chain: Arc<dyn ServerCertVerifier> = match ca {
                Some(path) => ca_verifier(path, provider.clone())?,
                None => platform_verifier(Vec::new()).map_err(RedfishError::Client)?,
            };
            match name {
                Some(name) => {
                    let name = ServerName::try_from(name.to_string()).map_err(|e| RedfishError::Config {
                        field: "server_name",
                        reason: format!("{name:?} is not a DNS name or IP address: {e}"),
                    })?;
                    Arc::new(AsServerName { inner: chain, name })
                }
                None => chain,
            }
        }
    };
    let mut config = client_config(verifier).map_err(RedfishError::Client)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// Chain verification against the certificates of `ca_file` only.
fn ca_verifier(path: &Path, provider: Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>, RedfishError> {
    let ca_error = |reason: String| RedfishError::CaFile { path: path.to_path_buf(), reason };
    let mut roots = RootCertStore::empty();
    for cert in load_ca_file(path).map_err(ca_error)? {
        roots.add(cert).map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    Ok(verifier)
}

/// Verifies the chain as `inner` does, but for the configured name instead of the
/// endpoint's host.
#[derive(Debug)]
struct AsServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for AsServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _endpoint_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
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

/// Trusts exactly one certificate, by its SHA-256; the handshake signature is verified
/// with the certificate's key, so a copy of the certificate alone does not pass.
#[derive(Debug)]
struct PinnedCertificate {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let served = Fingerprint::of(end_entity);
        if served == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            // The served fingerprint is what an operator needs to fix the pin after a
            // certificate renewal; it is public, not a secret.
            Err(rustls::Error::General(format!(
                "the BMC's certificate is {served}, not the tls_fingerprint {} (renewed or replaced certificate?)",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_as_openssl_prints_them() {
        let colons = "sha256:".to_string() + &["AB"; 32].join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap(), Fingerprint([0xAB; 32]));
        let plain = "sha256:".to_string() + &"0f".repeat(32);
        assert_eq!(Fingerprint::parse(&plain).unwrap(), Fingerprint([0x0F; 32]));
        assert_eq!(Fingerprint([0xAB; 32]).to_string(), colons);
        assert!(Fingerprint::parse(&"ab".repeat(32)).unwrap_err().contains("sha256:"));
        let openssl = "sha256 Fingerprint=".to_string() + &["AB"; 32].join(":");
        assert_eq!(Fingerprint::parse(&openssl).unwrap(), Fingerprint([0xAB; 32]));
        assert!(Fingerprint::parse("sha256:abcd").unwrap_err().contains("64 hex digits"));
        assert!(Fingerprint::parse(&("sha256:".to_string() + &"zz".repeat(32))).is_err());
    }
}

//! The collector's small CA: `ca init`, signing agents' certificate requests, and
//! enrollment tickets.
//!
//! A ticket is `pikett1.<payload>.<mac>` (base64url): the payload is JSON with the host
//! id, the customer, the expiry, a random nonce and the SHA-256 of the CA certificate
//! (so a new agent can check it talks to the right collector before it trusts it); the
//! MAC is HMAC-SHA256 under a key derived from the CA's private key. Issuing one needs
//! nothing but the CA key, so `pikett-collector ticket` works with the service running
//! or not; the serving collector records each used nonce (`services::identity`), which
//! makes a ticket one-time.
//!
//! Certificates for agents are built from the ticket's host id and the request's public
//! key only: nothing else the request asks for (a CA flag, other names) is signed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// The CA lives ten years; the collector's server certificate two (renew it with a new
/// `ca init --server-only`... not built yet: see the docs).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const SERVER_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}: a CA exists already (a new one would cut off every enrolled agent); remove it first if you mean it")]
    Exists(PathBuf),
    #[error("{path}: not a usable CA certificate or key: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
}

pub use pikett_core::enrollment::{Ticket, TicketError};

/// A signed client certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    pub pem: String,
    /// The serial number, hex: how the collector recognises (and revokes) a certificate.
    pub serial: String,
    pub not_after_ms: i64,
}

/// The CA as the serving collector uses it.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    ticket_key: ring::hmac::Key,
    sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The serial number of a DER certificate, hex (as [`Signed::serial`]).
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::File { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

/// What `ca init` wrote.
#[derive(Debug)]
pub struct CaFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// `pikett-collector ca init`: a new CA and a server certificate for `names` (DNS names
/// or IP addresses the agents use to reach the collector) under `dir`. Keys are 0600.
/// Refuses to replace an existing CA.
pub fn init(dir: &Path, names: &[String], now: jiff::Timestamp) -> Result<CaFiles, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::File { path: dir.to_owned(), source })?;
    let files = CaFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("collector.pem"),
        server_key: dir.join("collector.key"),
    };
    for p in [&files.ca_key, &files.ca_cert] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let start = time(now);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, format!("pikett collector CA {}", names.first().map_or("", |n| n)));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = start;
    ca.not_after = start + CA_VALIDITY;
    ca.serial_number = Some(random_serial());
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "pikett".into()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = start;
    server.not_after = start + SERVER_VALIDITY;
    server.serial_number = Some(random_serial());
    let server_cert = server.signed_by(&server_key, &issuer)?;

    write_file(&files.ca_key, issuer.key().serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&files.server_key, server_key.serialize_pem().as_bytes(), 0o600)?;
    // The chain, so a new agent sees the CA it checks against its ticket's pin.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_file(&files.server_cert, chain.as_bytes(), 0o644)?;
    Ok(files)
}

fn time(t: jiff::Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    // Positive (top bit clear) and never zero.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// Loads the CA certificate and key (`[tls] client_ca_file`, `ca_key_file`).
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, PkiError> {
        let cert_pem =
            std::fs::read_to_string(cert).map_err(|source| PkiError::File { path: cert.to_owned(), source })?;
        let key_pem = std::fs::read_to_string(key).map_err(|source| PkiError::File { path: key.to_owned(), source })?;
        let bad =
            |path: &Path, e: &dyn std::fmt::Display| PkiError::BadCa { path: path.to_owned(), reason: e.to_string() };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(key, &e))?;
        // The ticket key comes from the key's DER, so that re-encoding the key file does not
        // void open tickets.
        let mut material = b"pikett enrollment tickets v1\n".to_vec();
        material.extend_from_slice(&key_pair.serialize_der());
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(|e| bad(cert, &e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| bad(cert, &e))?;
        let derived =
            ring::digest::digest(&ring::digest::SHA256, format!("pikett enrollment tickets v1\n{key_pem}").as_bytes());
        Ok(Ca {
            cert_pem,
            issuer,
            ticket_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
            sha256: sha256_hex(&der),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (DER), hex: what tickets pin.
    pub fn fingerprint(&self) -> &str {
        &self.sha256
    }

    /// A new ticket for `host` of `customer`, valid until `expires_ms`.
    pub fn issue_ticket(&self, host: &str, customer: &str, expires_ms: i64) -> String {
        let nonce: [u8; 12] = rand::random();
        let payload = Ticket {
            host: host.to_string(),
            customer: customer.to_string(),
            expires_ms,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ca_sha256: self.sha256.clone(),
        };
        let signed = payload.encode_payload();
        let mac = ring::hmac::sign(&self.ticket_key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// Checks a ticket's MAC and expiry (not whether it was used: see `services::identity`).
    pub fn verify_ticket(&self, ticket: &str, now_ms: i64) -> Result<Ticket, TicketError> {
        let ticket = ticket.trim();
        let (signed, mac) = ticket.rsplit_once('.').ok_or(TicketError::Malformed)?;
        let parsed = Ticket::peek(ticket)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TicketError::Malformed)?;
        ring::hmac::verify(&self.ticket_key, signed.as_bytes(), &mac).map_err(|_| TicketError::Unknown)?;
        if parsed.expires_ms <= now_ms {
            let expired =
                jiff::Timestamp::from_millisecond(parsed.expires_ms).map_or_else(|_| "?".into(), |t| t.to_string());
            return Err(TicketError::Expired { host: parsed.host, expired });
        }
        Ok(parsed)
    }

    /// Signs a client certificate for `host` with the public key of `csr_pem`, valid for
    /// `valid` from `now`.
    pub fn sign_client(
        &self,
        host: &str,
        csr_pem: &str,
        now: jiff::Timestamp,
        valid: Duration,
    ) -> Result<Signed, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A minute of slack for clocks that are slightly behind.
        params.not_before = time(now) - Duration::from_secs(60);
        params.not_after = time(now) + valid;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let request = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = request.signed_by(&self.issuer)?;
        Ok(Signed {
            pem: cert.pem(),
            serial: serial.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            not_after_ms: now.as_millisecond() + valid.as_millis() as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(dir: &Path) -> Ca {
        let files = init(dir, &["127.0.0.1".into(), "pikett.example.net".into()], jiff::Timestamp::now()).unwrap();
        Ca::load(&files.ca_cert, &files.ca_key).unwrap()
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_replace_a_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &["127.0.0.1".into()], jiff::Timestamp::now()).unwrap();
        for key in [&files.ca_key, &files.server_key] {
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let chain = std::fs::read_to_string(&files.server_cert).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "the server certificate comes with its CA");
        let err = init(dir.path(), &["127.0.0.1".into()], jiff::Timestamp::now()).unwrap_err();
        assert!(err.to_string().contains("a CA exists already"), "{err}");
    }

    #[test]
    fn tickets_are_verified_expire_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let t = ca.issue_ticket("web-01", "acme", 10_000);
        let ticket = ca.verify_ticket(&t, 9_999).unwrap();
        assert_eq!((ticket.host.as_str(), ticket.customer.as_str()), ("web-01", "acme"));
        assert_eq!(ticket.ca_sha256, ca.fingerprint());
        assert!(matches!(ca.verify_ticket(&t, 10_000), Err(TicketError::Expired { .. })));
        // Another customer in the payload, the old MAC: refused.
        let (_, mac) = t.rsplit_once('.').unwrap();
        let mut forged = Ticket::peek(&t).unwrap();
        forged.customer = "evil".into();
        let forged = format!("{}.{mac}", forged.encode_payload());
        assert_eq!(ca.verify_ticket(&forged, 0), Err(TicketError::Unknown));
        assert_eq!(ca.verify_ticket("hello", 0), Err(TicketError::Malformed));
        // Another CA's ticket is unknown here.
        let other = tempfile::tempdir().unwrap();
        let other = self::ca(other.path()).issue_ticket("web-01", "acme", 10_000);
        assert_eq!(ca.verify_ticket(&other, 0), Err(TicketError::Unknown));
    }

    #[test]
    fn a_signed_certificate_carries_the_ticket_host_not_what_the_request_asks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["other-host".to_string()]).unwrap();
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        asked.distinguished_name.push(DnType::CommonName, "other-host");
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let signed = ca.sign_client("web-01", &csr, jiff::Timestamp::now(), Duration::from_secs(3600)).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(signed.pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        assert_eq!(cn, "web-01");
        assert!(!cert.is_ca(), "a CA flag from the request was signed");
        assert_eq!(serial_of(&der).unwrap(), signed.serial);
        assert!(ca.sign_client("web-01", "garbage", jiff::Timestamp::now(), Duration::from_secs(60)).is_err());
    }
}

//! Shared helpers for the checks integration tests.
#![allow(dead_code)]

use pikett_agent::observation::{CheckResult, Observation, Sample};
use pikett_agent::probes::Probe;
use pikett_agent::probes::checks::{CheckConfig, CheckProbe};

/// Builds a probe from one `[[checks]]` table written as TOML.
pub fn probe(toml_text: &str) -> CheckProbe {
    let cfg: CheckConfig = toml::from_str(toml_text).unwrap_or_else(|e| panic!("bad test config: {e}\n{toml_text}"));
    CheckProbe::new(cfg).unwrap_or_else(|e| panic!("probe refused: {e}"))
}

/// Polls once; returns the single check result and the samples.
pub async fn poll(p: &mut CheckProbe) -> (CheckResult, Vec<Sample>) {
    let obs = p.poll().await;
    let mut checks = Vec::new();
    let mut samples = Vec::new();
    for o in obs {
        match o {
            Observation::Check(c) => checks.push(c),
            Observation::Sample(s) => samples.push(s),
            other => panic!("unexpected observation {other:?}"),
        }
    }
    assert_eq!(checks.len(), 1, "exactly one check result expected: {checks:?}");
    eprintln!("{} {}: {}", checks[0].name, checks[0].state, checks[0].summary);
    (checks.remove(0), samples)
}

pub fn sample<'a>(samples: &'a [Sample], name: &str) -> Option<&'a Sample> {
    samples.iter().find(|s| s.name == name)
}

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A throwaway CA, as PEM for `ca_file` and as an issuer for leaf certificates.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pikett test CA");
        params.distinguished_name = dn;
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes the CA certificate as PEM into `dir`, returning the path.
    pub fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A server certificate for `localhost` and 127.0.0.1 that expires `secs_from_now`
    /// seconds from now (negative: already expired).
    pub fn leaf(&self, secs_from_now: i64) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        params.distinguished_name = dn;
        // rcgen takes `time` types; build the instant from a UTC midnight plus seconds.
        let t = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + secs_from_now)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC);
        let midnight = rcgen::date_time_ymd(i32::from(t.year()), t.month() as u8, t.day() as u8);
        let secs = t.hour() as u64 * 3600 + t.minute() as u64 * 60 + t.second() as u64;
        params.not_after = midnight + std::time::Duration::from_secs(secs);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }
}

pub const DAY: i64 = 86_400;

/// A real HTTPS server on 127.0.0.1:0: answers every request with 200 and `status: ok`.
pub async fn https_server(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nstatus: ok";
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

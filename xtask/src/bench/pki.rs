//! A throwaway PKI for benchmarks over TLS, as in production: a CA, the collector's server
//! certificate (127.0.0.1) with client-certificate checks, and one client certificate per
//! simulated agent (subject CN = its host id, which the collector compares with the hello).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub(crate) struct BenchPki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl BenchPki {
    /// Writes `ca.pem`, `collector.pem` and `collector.key` (mode 0600: the collector refuses
    /// keys others may read) to `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<BenchPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "pikett bench CA");
        let ca_pem = params.self_signed(&key).context("self-signing the bench CA")?.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem)?;
        let pki = BenchPki { dir: dir.to_path_buf(), ca_pem, issuer: Issuer::new(params, key) };
        let (cert, key) = pki.issue("collector", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)?;
        std::fs::write(dir.join("collector.pem"), cert)?;
        let key_path = dir.join("collector.key");
        std::fs::write(&key_path, key)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(pki)
    }

    /// The collector's `[tls]` section (last in its config file).
    pub fn collector_toml(&self) -> String {
        let p = |f: &str| self.dir.join(f).display().to_string();
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            p("collector.pem"),
            p("collector.key"),
            p("ca.pem")
        )
    }

    /// A client TLS configuration for the agent `host_id`: the CA and its own certificate.
    pub fn agent_tls(&self, host_id: &str) -> anyhow::Result<ClientTlsConfig> {
        let (cert, key) = self.issue(host_id, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(cert, key)))
    }

    /// A certificate and key (PEM) with subject CN = `name`, signed by the CA.
    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).with_context(|| format!("signing a certificate for {name}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

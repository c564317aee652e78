//! One remote-write POST: the client (rustls, the system's trust store plus `ca_file`),
//! the protocol's headers, authentication, and what an answer means.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::RemoteWriteError;
use crate::config::RemoteWriteConfig;

/// How much of an error answer goes into the log.
const MAX_ERROR_BODY: usize = 300;

enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

pub struct Client {
    http: reqwest::Client,
    url: String,
    auth: Auth,
}

/// Why a request did not get through.
#[derive(Debug)]
pub enum SendError {
    /// Network trouble, a timeout, 5xx or 429: the same request may succeed later.
    Retryable(String),
    /// Another 4xx: the store understood and refused; the same request never succeeds.
    Refused { status: u16, message: String },
}

/// A secret from a file, trimmed (editors add a newline).
fn secret(key: &str, path: &std::path::Path) -> Result<String, RemoteWriteError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RemoteWriteError::Config(format!("{key} {}: cannot read: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(RemoteWriteError::Config(format!("{key} {}: is empty", path.display())));
    }
    Ok(text.to_string())
}

/// The URL fit for logs: scheme, host and port (a path or query may hold a tenant's token).
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// Whether the URL's host is this machine (plain http is then no risk to credentials).
pub fn is_loopback(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(String::from)) else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// Reads the secret files and the CA file; builds the client.
    pub fn new(config: &RemoteWriteConfig) -> Result<Client, RemoteWriteError> {
        let auth = match (&config.bearer_token_file, &config.basic_auth) {
            (Some(f), _) => Auth::Bearer(secret("remote_write.bearer_token_file", f)?),
            (None, Some(b)) => Auth::Basic {
                username: b.username.clone(),
                password: secret("remote_write.basic_auth.password_file", &b.password_file)?,
            },
            (None, None) => Auth::None,
        };
        let err = |m: String| RemoteWriteError::Config(m);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let extra_roots = match &config.ca_file {
            Some(path) => {
                let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| err(format!("remote_write.ca_file {}: cannot read: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(err(format!("remote_write.ca_file {}: holds no PEM certificate", path.display())));
                }
                certs
            }
            None => Vec::new(),
        };
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| err(format!("remote_write: cannot load the system's TLS trust store: {e}")))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("remote_write: TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("pikett-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(format!("remote_write: cannot build the HTTP client: {e}")))?;
        Ok(Client { http, url: config.url.clone(), auth })
    }

    /// POSTs one snappy-compressed `WriteRequest`.
    pub async fn send(&self, body: Vec<u8>) -> Result<(), SendError> {
        let mut req = self
            .http
            .post(&self.url)
            .header(CONTENT_ENCODING, "snappy")
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body);
        // reqwest marks both headers sensitive: they never appear in its debug output.
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(token) => req.bearer_auth(token),
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
        };
        let response = req.send().await.map_err(|e| {
            // reqwest's messages name the URL: never pass it on.
            let e = e.without_url();
            let what = if e.is_timeout() { "timed out".to_string() } else { pikett_support::error_chain(&e) };
            SendError::Retryable(what)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
        let message = format!("HTTP {status}: {excerpt}");
        match status.as_u16() {
            // 401/403/404: the credentials or the URL are wrong, which the operator fixes
            // (and restarts the collector); the samples wait for that instead of being thrown away.
            401 | 403 | 404 => Err(SendError::Retryable(format!(
                "{message} (check [remote_write] url, bearer_token_file or basic_auth, then restart the collector)"
            ))),
            408 | 429 | 500..=599 => Err(SendError::Retryable(message)),
            code => Err(SendError::Refused { status: code, message }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_path_query_or_user() {
        assert_eq!(redacted("https://u:p@mimir.example:8080/api/v1/push?tenant=x"), "https://mimir.example:8080/…");
        assert_eq!(redacted("nope"), "(invalid URL)");
        assert!(is_loopback("http://127.0.0.1:9090/api/v1/write") && is_loopback("http://[::1]:9/x"));
        assert!(!is_loopback("http://prometheus.example/api/v1/write"));
    }

    #[test]
    fn a_missing_or_empty_secret_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("token");
        std::fs::write(&empty, "\n").unwrap();
        let e = secret("remote_write.bearer_token_file", &empty).unwrap_err().to_string();
        assert!(e.contains("remote_write.bearer_token_file") && e.contains("is empty"), "{e}");
        let e = secret("k", &dir.path().join("gone")).unwrap_err().to_string();
        assert!(e.contains("gone") && e.contains("cannot read"), "{e}");
        std::fs::write(&empty, "s3cret\n").unwrap();
        assert_eq!(secret("k", &empty).unwrap(), "s3cret");
    }
}

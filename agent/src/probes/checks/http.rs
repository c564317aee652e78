//! The `http` check: one request, judged by status, body substring, latency and (https) certificate days left.

use std::error::Error;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reqwest::{Method, Url};

use super::tls::{cert_info, cert_state, days_left_sample};
use super::{CheckConfig, duration_sample, fmt_duration, fmt_secs, tls};
use crate::errors::error_chain;
use crate::observation::{Observation, State};

/// How much of the body is searched for `expect_body`; the rest is not read.
const BODY_LIMIT: usize = 1024 * 1024;

/// A validated `http` check, with its client built once.
pub(crate) struct HttpCheck {
    url: Url,
    method: Method,
    expect_status: u16,
    expect_body: Option<String>,
    warn_days: u32,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpCheck {
    pub fn from_config(cfg: &CheckConfig) -> Result<HttpCheck, String> {
        let url_text = cfg.url.as_deref().ok_or("`url` is required")?;
        let url = Url::parse(url_text).map_err(|e| format!("url {url_text:?}: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("url {url_text:?}: scheme must be http or https, not {}", url.scheme()));
        }
        let method_text = cfg.method.as_deref().unwrap_or("GET");
        let method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| format!("method {method_text:?} is not a valid HTTP method"))?;
        let expect_status = cfg.expect_status.unwrap_or(200);
        if !(100..=599).contains(&expect_status) {
            return Err(format!("expect_status {expect_status} is not an HTTP status (100-599)"));
        }
        let extra = match &cfg.ca_file {
            Some(path) => tls::load_ca_file(path)?,
            None => Vec::new(),
        };
        let mut tls_config = tls::client_config(tls::platform_verifier(extra)?)?;
        tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let redirect = if cfg.follow_redirects.unwrap_or(false) {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config)
            .tls_info(true)
            .redirect(redirect)
            // A fresh connection per check: connect and handshake are part of what is measured,
            // and every response then carries the served certificate.
            .pool_max_idle_per_host(0)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("pikett-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {}", error_chain(&e)))?;
        Ok(HttpCheck {
            url,
            method,
            expect_status,
            expect_body: cfg.expect_body.clone(),
            warn_days: cfg.cert_warn_days.unwrap_or(21),
            timeout: cfg.timeout,
            client,
        })
    }

    pub async fn run(&self, check: &str, now: Timestamp) -> Vec<Observation> {
        let started = Instant::now();
        let exchange = async {
            let mut resp = self.client.request(self.method.clone(), self.url.clone()).send().await?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let cert =
                resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()).map(<[u8]>::to_vec);
            let mut body = Vec::new();
            if self.expect_body.is_some() {
                while body.len() < BODY_LIMIT {
                    match resp.chunk().await? {
                        Some(chunk) => body.extend_from_slice(&chunk),
                        None => break,
                    }
                }
            }
            Ok::<_, reqwest::Error>((status, location, cert, body))
        };
        let (status, location, cert, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // reqwest's top-level text only repeats the URL; its causes say what went wrong.
                let why = e.source().map_or_else(|| e.to_string(), error_chain);
                let msg = format!("{} {} failed: {why}", self.method, self.url);
                return vec![Observation::check(check, State::Critical, msg, now)];
            }
            Err(_) => {
                let msg = format!("no response from {} within {}", self.url, fmt_duration(self.timeout));
                return vec![Observation::check(check, State::Critical, msg, now)];
            }
        };
        let elapsed = started.elapsed();
        let mut summary = format!("HTTP {} in {}", status.as_str(), fmt_secs(elapsed));
        let mut state = if status.as_u16() != self.expect_status {
            summary.push_str(&format!(", expected {}", self.expect_status));
            if let Some(loc) = location.filter(|_| status.is_redirection()) {
                summary.push_str(&format!(" (redirect to {loc} not followed)"));
            }
            State::Critical
        } else if let Some(want) = self.expect_body.as_deref().filter(|w| !contains(&body, w.as_bytes())) {
            summary.push_str(&format!(", but the body does not contain {want:?}"));
            State::Critical
        } else {
            State::Ok
        };
        let mut obs = Vec::with_capacity(3);
        let mut samples = vec![duration_sample(check, elapsed, now)];
        if let Some(der) = cert {
            match cert_info(&der) {
                Ok(info) => {
                    let (cert_st, cert_msg) = cert_state(&info, now, self.warn_days);
                    state = state.worst(cert_st);
                    summary.push_str(&format!("; {cert_msg}"));
                    samples.push(days_left_sample(check, &info, now));
                }
                Err(e) => summary.push_str(&format!("; {e}")),
            }
        }
        obs.push(Observation::check(check, state, summary, now));
        obs.extend(samples);
        obs
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_search() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: fail", b"ok"));
        assert!(contains(b"", b""));
        assert!(!contains(b"o", b"ok"));
    }
}

//! The HTTP machinery shared by the sms, voice and webhook channels: client, templated
//! request, one POST with the `Idempotency-Key` header, and status classification.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::template::{Escape, Template};
use super::{ChannelError, ChannelKind, ConfigError, Notification, Receipt};

/// The header every HTTP notification carries; stable across retries of one notification.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How much of an error response's body goes into the error message.
const MAX_ERROR_BODY: usize = 200;

/// A reqwest client with the ring rustls provider, the platform's trust store and, if given,
/// the CA certificates in `ca_file` (PEM) for gateways with an internal certificate.
///
/// The TLS config is built here and handed over with `tls_backend_preconfigured`, rather than
/// relying on a process-wide default provider, so a channel works whether or not `main` called
/// `install_default()`.
pub(crate) fn client(
    channel: ChannelKind,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ConfigError> {
    let err = |m: String| ConfigError::new(channel, m);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match ca_file {
        Some(path) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(format!("ca_file: cannot read {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(err(format!("ca_file: {} holds no PEM certificate", path.display())));
            }
            certs
        }
        None => Vec::new(),
    };
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
        .map_err(|e| err(format!("cannot load the system's TLS trust store: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("pikett-collector/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| err(format!("cannot build HTTP client: {e}")))
}

/// Checks a gateway URL: absolute http(s). Plain http is allowed (internal gateways) but warned
/// about when the host is not loopback, since headers may carry tokens.
pub(crate) fn check_url(channel: ChannelKind, key: &str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError::new(channel, format!("{key}: not a valid URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = parsed.host_str().is_some_and(is_loopback_host);
            if !loopback {
                tracing::warn!(channel = %channel, url = %redacted(url), "notification gateway uses plain http");
            }
            Ok(())
        }
        other => Err(ConfigError::new(
            channel,
            format!("{key}: URL {} has scheme {other:?}, expected http or https", redacted(url)),
        )),
    }
}

/// A gateway URL fit for logs, receipts and timelines: scheme, host and port only. User
/// info, query values and paths can all carry secrets (webhook URLs often hold their token
/// in the path), so none of them is shown.
pub(crate) fn redacted(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "(invalid URL)".to_string();
    };
    let host = parsed.host_str().unwrap_or("?");
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if parsed.path() == "/" && parsed.query().is_none() { "" } else { "/…" };
    format!("{}://{host}{port}{rest}", parsed.scheme())
}

/// Whether a gateway URL carries a secret (user info or a query string).
pub(crate) fn url_holds_secret(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| !u.username().is_empty() || u.password().is_some() || u.query().is_some())
}

/// `localhost`, 127.0.0.0/8 or ::1 (IPv6 possibly in brackets, as URLs write it).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Headers as templates (values may hold `{{secret:...}}`), parsed and checked at config load.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplates(Vec<(HeaderName, Template)>);

impl HeaderTemplates {
    pub(crate) fn parse(channel: ChannelKind, headers: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(channel, format!("headers: invalid header name {name:?}")))?;
            let template =
                Template::parse(value).map_err(|e| ConfigError::new(channel, format!("headers.{name}: {e}")))?;
            template.check_secrets().map_err(|e| ConfigError::new(channel, format!("headers.{name}: {e}")))?;
            out.push((header, template));
        }
        Ok(HeaderTemplates(out))
    }

    /// Renders the headers plus `Idempotency-Key`; errors name the header, never its value.
    pub(crate) fn render(&self, n: &Notification) -> Result<HeaderMap, ChannelError> {
        let mut map = HeaderMap::new();
        for (name, template) in &self.0 {
            let value =
                template.render(n, Escape::None).map_err(|e| ChannelError::Permanent(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                ChannelError::Permanent(format!("header {name}: rendered value is not a valid HTTP header value"))
            })?;
            map.insert(name.clone(), value);
        }
        let key = HeaderValue::from_str(&n.id).map_err(|_| {
            ChannelError::Permanent(format!("notification id {:?} is not a valid {IDEMPOTENCY_KEY} header value", n.id))
        })?;
        map.insert(IDEMPOTENCY_KEY, key);
        Ok(map)
    }
}

/// A templated request body with its content type.
#[derive(Debug, Clone)]
pub(crate) struct BodyTemplate {
    template: Template,
    content_type: String,
    escape: Escape,
}

impl BodyTemplate {
    /// `content_type` unset: JSON when the body looks like a JSON object or array, else plain
    /// text. A JSON body is rendered once with sample data and must parse, so a broken
    /// template is a startup error, not a 3 a.m. surprise.
    pub(crate) fn parse(channel: ChannelKind, body: &str, content_type: Option<&str>) -> Result<Self, ConfigError> {
        let template = Template::parse(body).map_err(|e| ConfigError::new(channel, format!("body: {e}")))?;
        template.check_secrets().map_err(|e| ConfigError::new(channel, format!("body: {e}")))?;
        let trimmed = body.trim_start();
        let content_type = match content_type {
            Some(ct) => ct.to_string(),
            None if trimmed.starts_with('{') || trimmed.starts_with('[') => "application/json".to_string(),
            None => "text/plain; charset=utf-8".to_string(),
        };
        let escape = if content_type.contains("json") { Escape::Json } else { Escape::None };
        let parsed = BodyTemplate { template, content_type, escape };
        if escape == Escape::Json {
            let mut sample = sample_for_validation(channel);
            sample.text = "a \"quoted\"\nline".into();
            let rendered =
                parsed.template.render(&sample, escape).map_err(|e| ConfigError::new(channel, format!("body: {e}")))?;
            serde_json::from_str::<serde_json::Value>(&rendered).map_err(|e| {
                ConfigError::new(
                    channel,
                    format!("body: is not valid JSON once rendered ({e}); put {{{{...}}}} inside JSON strings"),
                )
            })?;
        }
        Ok(parsed)
    }

    pub(crate) fn render(&self, n: &Notification) -> Result<(Vec<u8>, &str), ChannelError> {
        let body = self.template.render(n, self.escape).map_err(|e| ChannelError::Permanent(format!("body: {e}")))?;
        Ok((body.into_bytes(), &self.content_type))
    }
}

fn sample_for_validation(channel: ChannelKind) -> Notification {
    Notification {
        id: "validate".into(),
        fault_id: "F0".into(),
        kind: super::NotificationKind::Alarm,
        channel,
        to: "+490000".into(),
        subject: "s".into(),
        text: "t".into(),
        host: "h".into(),
        check: "c".into(),
        severity: "critical".into(),
        summary: "s".into(),
        customer: "c".into(),
        emergency: false,
        fault_opened_at: None,
        fault_resolved_at: None,
        created_at: jiff::Timestamp::UNIX_EPOCH,
    }
}

/// How an HTTP status is treated: 2xx delivered; 408, 429 and 5xx retryable; the rest
/// permanent (the gateway understood and refused; sending the same again will not help).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Delivered,
    Retryable,
    Permanent,
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Delivered,
        408 | 429 | 500..=599 => StatusClass::Retryable,
        _ => StatusClass::Permanent,
    }
}

/// One POST. Transport failures (refused, reset, timeout) are retryable.
pub(crate) async fn post(
    client: &reqwest::Client,
    channel: ChannelKind,
    url: &str,
    headers: HeaderMap,
    body: Vec<u8>,
    content_type: &str,
) -> Result<Receipt, ChannelError> {
    post_with_answer(client, channel, url, headers, body, content_type, 0).await.map(|(receipt, _)| receipt)
}

/// [`post`] that also returns up to `max_answer` bytes of a successful answer's body (an SMS
/// gateway's message id for its delivery receipts); 0 reads none.
pub(crate) async fn post_with_answer(
    client: &reqwest::Client,
    channel: ChannelKind,
    url: &str,
    headers: HeaderMap,
    body: Vec<u8>,
    content_type: &str,
    max_answer: usize,
) -> Result<(Receipt, Vec<u8>), ChannelError> {
    let mut response =
        client.post(url).headers(headers).header(CONTENT_TYPE, content_type).body(body).send().await.map_err(|e| {
            // reqwest's messages name the URL, with its secrets: never pass it on.
            let e = e.without_url();
            let what = if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                let chain = error_chain(&e);
                // Most certificate trouble with internal gateways is a private CA.
                let hint =
                    if chain.contains("certificate") { " (a gateway with an internal CA needs ca_file)" } else { "" };
                format!("cannot connect: {chain}{hint}")
            } else {
                error_chain(&e)
            };
            ChannelError::Retryable(format!("{channel} gateway {}: {what}", redacted(url)))
        })?;
    let status = response.status();
    match classify_status(status.as_u16()) {
        StatusClass::Delivered => {
            let receipt = Receipt { channel, endpoint: redacted(url), detail: format!("HTTP {status}") };
            // The gateway took the message: an answer cut short or unreadable changes nothing.
            let answer = if max_answer == 0 {
                Vec::new()
            } else {
                read_capped(&mut response, max_answer).await.unwrap_or_default()
            };
            Ok((receipt, answer))
        }
        class => {
            // The gateway's own words help the on-call engineer; keep them short.
            let text = response.text().await.unwrap_or_default();
            let mut excerpt: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
            if !excerpt.is_empty() {
                excerpt = format!(": {excerpt}");
            }
            let message = format!("{channel} gateway {} answered HTTP {status}{excerpt}", redacted(url));
            Err(if class == StatusClass::Retryable {
                ChannelError::Retryable(message)
            } else {
                ChannelError::Permanent(message)
            })
        }
    }
}

/// At most `max` bytes of a response's body: the rest is not read.
pub(crate) async fn read_capped(response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    body.truncate(max);
    Ok(body)
}

/// reqwest's top-level messages are vague ("error sending request"); the sources say why.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    pikett_support::error_chain(e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gateway_urls_are_redacted_for_logs_receipts_and_timelines() {
        assert_eq!(redacted("https://user:pw@sms.example/send?key=abc&to=1#x"), "https://sms.example/…");
        assert_eq!(redacted("https://hooks.example:8443/services/T0/B0/secret"), "https://hooks.example:8443/…");
        assert_eq!(redacted("https://sms.example/"), "https://sms.example");
        assert!(url_holds_secret("https://sms.example/send?key=abc"));
        assert!(!url_holds_secret("https://sms.example/send"));
    }

    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200), StatusClass::Delivered);
        assert_eq!(classify_status(202), StatusClass::Delivered);
        assert_eq!(classify_status(400), StatusClass::Permanent);
        assert_eq!(classify_status(401), StatusClass::Permanent);
        assert_eq!(classify_status(404), StatusClass::Permanent);
        assert_eq!(classify_status(408), StatusClass::Retryable);
        assert_eq!(classify_status(429), StatusClass::Retryable);
        assert_eq!(classify_status(500), StatusClass::Retryable);
        assert_eq!(classify_status(503), StatusClass::Retryable);
        assert_eq!(classify_status(302), StatusClass::Permanent);
    }

    #[test]
    fn json_body_is_detected_and_validated() {
        let b = BodyTemplate::parse(ChannelKind::Sms, r#"{"to": "{{to}}"}"#, None).unwrap();
        assert_eq!(b.content_type, "application/json");
        let err = BodyTemplate::parse(ChannelKind::Sms, r#"{"to": {{to}}}"#, None).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let plain = BodyTemplate::parse(ChannelKind::Sms, "to={{to}}", None).unwrap();
        assert_eq!(plain.escape, Escape::None);
    }

    #[test]
    fn bad_urls_are_rejected_with_the_key() {
        let err = check_url(ChannelKind::Sms, "gateways[0]", "ftp://x/").unwrap_err();
        assert!(err.to_string().contains("gateways[0]"), "{err}");
        assert!(check_url(ChannelKind::Sms, "url", "not a url").is_err());
        assert!(check_url(ChannelKind::Sms, "url", "http://127.0.0.1:1/x").is_ok());
    }

    #[test]
    fn headers_carry_the_idempotency_key() {
        let mut h = BTreeMap::new();
        h.insert("X-Host".to_string(), "{{host}}".to_string());
        let t = HeaderTemplates::parse(ChannelKind::Sms, &h).unwrap();
        let map = t.render(&crate::notify::sample_notification()).unwrap();
        assert_eq!(map["x-host"], "web1");
        assert_eq!(map[IDEMPOTENCY_KEY], "F42-primary-alice-sms-0");
    }

    #[test]
    fn invalid_header_value_error_hides_the_value() {
        let mut h = BTreeMap::new();
        h.insert("X-Text".to_string(), "{{text}}".to_string());
        let t = HeaderTemplates::parse(ChannelKind::Sms, &h).unwrap();
        let mut n = crate::notify::sample_notification();
        n.text = "secret\nvalue".into();
        let err = t.render(&n).unwrap_err();
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

//! E-mail through an SMTP relay with STARTTLS (lettre, rustls with ring).
//!
//! TLS is required unless the relay is on loopback (a local MTA). The Message-ID is derived
//! from the idempotency key, so a retried mail is recognisable as the same message.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::http::{error_chain, is_loopback_host};
use super::template::read_secret;
use super::{Channel, ChannelError, ChannelKind, ConfigError, Notification, Receipt};

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[channels.email]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The relay, `host:port` (`[::1]:25` for IPv6).
    pub smtp: String,
    /// Sender address, `pikett@example.net` or `pikett <pikett@example.net>`.
    pub from: String,
    /// STARTTLS, required (the default). `false` is allowed only for a loopback relay.
    #[serde(default = "default_true")]
    pub starttls: bool,
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the SMTP password (trimmed); needs `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Extra trusted CA (PEM) for a relay with an internal certificate; the webpki roots stay.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl EmailConfig {
    pub fn new(smtp: impl Into<String>, from: impl Into<String>) -> Self {
        EmailConfig {
            smtp: smtp.into(),
            from: from.into(),
            starttls: true,
            username: None,
            password_file: None,
            ca_file: None,
            timeout: default_timeout(),
        }
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// `<key@domain>` with every byte outside `[A-Za-z0-9_-]` written `=XX`: keys map to ids
/// one-to-one and the result is always a valid Message-ID.
pub fn message_id(idempotency_key: &str, domain: &str) -> String {
    let mut local = String::from("pikett.");
    for b in idempotency_key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            local.push(char::from(b));
        } else {
            local.push_str(&format!("={b:02X}"));
        }
    }
    format!("<{local}@{domain}>")
}

pub struct EmailChannel {
    endpoint: String,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailChannel {
    pub fn new(cfg: EmailConfig) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::new(ChannelKind::Email, m);
        // lettre's connection pool spawns a Tokio task when built.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(err("must be built inside a Tokio runtime".into()));
        }
        let (host, port) = parse_host_port(&cfg.smtp)
            .ok_or_else(|| err(format!("smtp: {:?} is not host:port (e.g. smtp.example.net:587)", cfg.smtp)))?;
        let from: Mailbox =
            cfg.from.parse().map_err(|e| err(format!("from: {:?} is not an e-mail address: {e}", cfg.from)))?;
        let tls = if cfg.starttls {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(path) = &cfg.ca_file {
                let pem =
                    std::fs::read(path).map_err(|e| err(format!("ca_file: cannot read {}: {e}", path.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| err(format!("ca_file: {} is not a PEM certificate: {e}", path.display())))?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build_rustls().map_err(|e| err(format!("TLS setup for {host}: {e}")))?;
            Tls::Required(params)
        } else if is_loopback_host(&host) {
            Tls::None
        } else {
            return Err(err(format!("starttls = false is only allowed for a loopback relay, not {host}")));
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(cfg.timeout))
            .tls(tls);
        match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(path)) => {
                let password = read_secret(path).map_err(|e| err(format!("password_file: {e}")))?;
                builder = builder.credentials(Credentials::new(user.clone(), password));
            }
            (None, None) => {}
            _ => {
                return Err(err("username and password_file go together: set both or neither".into()));
            }
        }
        Ok(EmailChannel { endpoint: format!("smtp {}", cfg.smtp), from, transport: builder.build() })
    }

    fn message(&self, n: &Notification) -> Result<Message, ChannelError> {
        let to: Mailbox =
            n.to.parse()
                .map_err(|e| ChannelError::Permanent(format!("recipient {:?} is not an e-mail address: {e}", n.to)))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(n.effective_subject())
            .message_id(Some(message_id(&n.id, self.from.email.domain())))
            .header(ContentType::TEXT_PLAIN)
            .body(n.effective_text())
            .map_err(|e| ChannelError::Permanent(format!("cannot build the e-mail: {e}")))
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError> {
        let message = self.message(n)?;
        match self.transport.send(message).await {
            Ok(response) => Ok(Receipt {
                channel: ChannelKind::Email,
                endpoint: self.endpoint.clone(),
                detail: format!("{} {}", response.code(), response.first_line().unwrap_or_default()),
            }),
            Err(e) => {
                let message = format!("{}: {}", self.endpoint, error_chain(&e));
                // SMTP 5xx: the relay refused for good (unknown user, policy). Everything else
                // (4xx, connection, TLS, timeout) may pass later.
                Err(if e.is_permanent() { ChannelError::Permanent(message) } else { ChannelError::Retryable(message) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(parse_host_port("smtp.example.net:587"), Some(("smtp.example.net".into(), 587)));
        assert_eq!(parse_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(parse_host_port("smtp.example.net"), None);
        assert_eq!(parse_host_port(":25"), None);
        assert_eq!(parse_host_port("h:99999"), None);
    }

    #[test]
    fn message_id_is_valid_and_injective() {
        assert_eq!(
            message_id("F42-primary-alice-email-0", "example.net"),
            "<pikett.F42-primary-alice-email-0@example.net>"
        );
        assert_eq!(message_id("a b", "x"), "<pikett.a=20b@x>");
        assert_ne!(message_id("a.b", "x"), message_id("a=2Eb", "x"));
    }

    #[tokio::test]
    async fn plaintext_only_to_loopback() {
        let mut cfg = EmailConfig::new("smtp.example.net:25", "pikett@example.net");
        cfg.starttls = false;
        let err = EmailChannel::new(cfg).err().unwrap();
        assert!(err.to_string().contains("loopback"), "{err}");
        let mut cfg = EmailConfig::new("127.0.0.1:25", "pikett@example.net");
        cfg.starttls = false;
        assert!(EmailChannel::new(cfg).is_ok());
    }

    #[tokio::test]
    async fn username_without_password_is_rejected() {
        let mut cfg = EmailConfig::new("smtp.example.net:587", "pikett@example.net");
        cfg.username = Some("pikett".into());
        let err = EmailChannel::new(cfg).err().unwrap();
        assert!(err.to_string().contains("password_file"), "{err}");
    }

    #[tokio::test]
    async fn bad_from_is_named() {
        let err = EmailChannel::new(EmailConfig::new("smtp.example.net:587", "not an address")).err().unwrap();
        assert!(err.to_string().contains("from"), "{err}");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let err = EmailChannel::new(EmailConfig::new("127.0.0.1:25", "pikett@example.net")).err().unwrap();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[test]
    fn config_from_toml_defaults_to_starttls() {
        let cfg: EmailConfig =
            toml::from_str("smtp = \"smtp.example.net:587\"\nfrom = \"pikett@example.net\"").unwrap();
        assert!(cfg.starttls);
        assert_eq!(cfg.timeout, Duration::from_secs(30));
    }
}

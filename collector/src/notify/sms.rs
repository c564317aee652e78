//! SMS through a redundant cluster of HTTP gateways, tried in order, with health tracking.
//!
//! A gateway that failed with a retryable error (down, 5xx, timeout) is marked unhealthy and
//! skipped for `unhealthy_for`; when every gateway is unhealthy they are all tried anyway,
//! healthy ones first: skipping must never mean not trying at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{self, BodyTemplate, HeaderTemplates};
use super::{Channel, ChannelError, ChannelKind, ConfigError, Notification, Receipt};

/// The body of SPEC's example; the default for sms and voice.
pub const DEFAULT_BODY: &str = r#"{"to": "{{to}}", "text": "{{text}}"}"#;

pub(crate) fn default_body() -> String {
    DEFAULT_BODY.to_string()
}

pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_unhealthy_for() -> Duration {
    Duration::from_secs(60)
}

/// `[channels.sms]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Gateway URLs, tried in this order.
    pub gateways: Vec<String>,
    /// Request body template (JSON-escaped when the body is JSON).
    #[serde(default = "default_body")]
    pub body: String,
    /// Extra request headers (templates; `{{secret:/path}}` for tokens).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Default: `application/json` when `body` starts with `{` or `[`, else `text/plain`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Extra trusted CA certificates (PEM) for a gateway with an internal certificate; the
    /// system's trust store stays in use.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per gateway request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a failed gateway is skipped.
    #[serde(default = "default_unhealthy_for", with = "humantime_serde")]
    pub unhealthy_for: Duration,
}

impl SmsConfig {
    /// A config with defaults for everything but the gateways.
    pub fn new(gateways: Vec<String>) -> Self {
        SmsConfig {
            gateways,
            body: default_body(),
            headers: BTreeMap::new(),
            ca_file: None,
            content_type: None,
            timeout: default_timeout(),
            unhealthy_for: default_unhealthy_for(),
        }
    }
}

/// The order to try gateways in: healthy ones in config order, then the unhealthy ones in
/// config order (a last resort). `failed_at[i]` is when gateway `i` last failed.
pub fn gateway_order(failed_at: &[Option<Instant>], now: Instant, unhealthy_for: Duration) -> Vec<usize> {
    let unhealthy = |t: &Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < unhealthy_for);
    let healthy = (0..failed_at.len()).filter(|&i| !unhealthy(&failed_at[i]));
    let sick = (0..failed_at.len()).filter(|&i| unhealthy(&failed_at[i]));
    healthy.chain(sick).collect()
}

pub struct SmsChannel {
    gateways: Vec<String>,
    body: BodyTemplate,
    headers: HeaderTemplates,
    unhealthy_for: Duration,
    client: reqwest::Client,
    failed_at: Mutex<Vec<Option<Instant>>>,
}

impl SmsChannel {
    pub fn new(cfg: SmsConfig) -> Result<Self, ConfigError> {
        let kind = ChannelKind::Sms;
        if cfg.gateways.is_empty() {
            return Err(ConfigError::new(kind, "gateways: at least one URL is needed"));
        }
        for (i, url) in cfg.gateways.iter().enumerate() {
            http::check_url(kind, &format!("gateways[{i}]"), url)?;
        }
        Ok(SmsChannel {
            body: BodyTemplate::parse(kind, &cfg.body, cfg.content_type.as_deref())?,
            headers: HeaderTemplates::parse(kind, &cfg.headers)?,
            client: http::client(kind, cfg.timeout, cfg.ca_file.as_deref())?,
            failed_at: Mutex::new(vec![None; cfg.gateways.len()]),
            unhealthy_for: cfg.unhealthy_for,
            gateways: cfg.gateways,
        })
    }

    fn set_health(&self, i: usize, failed: Option<Instant>) {
        // A poisoned lock only means another send panicked; the data is still usable.
        let mut guard = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        guard[i] = failed;
    }

    /// Gateways currently considered unhealthy (for `/metrics` and status screens).
    pub fn unhealthy_gateways(&self) -> Vec<String> {
        let now = Instant::now();
        let guard = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .zip(&self.gateways)
            .filter(|(t, _)| t.is_some_and(|t| now.duration_since(t) < self.unhealthy_for))
            .map(|(_, url)| url.clone())
            .collect()
    }
}

#[async_trait]
impl Channel for SmsChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError> {
        let (body, content_type) = self.body.render(n)?;
        let headers = self.headers.render(n)?;
        let order = {
            let guard = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
            gateway_order(&guard, Instant::now(), self.unhealthy_for)
        };
        let mut errors = Vec::new();
        let mut any_retryable = false;
        for i in order {
            let url = &self.gateways[i];
            match http::post(&self.client, ChannelKind::Sms, url, headers.clone(), body.clone(), content_type).await {
                Ok(receipt) => {
                    self.set_health(i, None);
                    return Ok(receipt);
                }
                Err(e) => {
                    tracing::warn!(gateway = %super::http::redacted(url), notification = %n.id, error = %e, "SMS gateway failed, trying the next");
                    // A permanent answer means the gateway is up and refused this message;
                    // only unreachable or failing gateways are marked unhealthy.
                    if e.is_retryable() {
                        any_retryable = true;
                        self.set_health(i, Some(Instant::now()));
                    }
                    errors.push(e.message().to_string());
                }
            }
        }
        let message = format!("every SMS gateway failed ({}): {}", self.gateways.len(), errors.join("; "));
        Err(if any_retryable { ChannelError::Retryable(message) } else { ChannelError::Permanent(message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_gateways_keep_config_order() {
        let now = Instant::now();
        assert_eq!(gateway_order(&[None, None, None], now, Duration::from_secs(60)), vec![0, 1, 2]);
    }

    #[test]
    fn recently_failed_gateway_goes_last() {
        let now = Instant::now();
        let failed = [Some(now - Duration::from_secs(10)), None, None];
        assert_eq!(gateway_order(&failed, now, Duration::from_secs(60)), vec![1, 2, 0]);
    }

    #[test]
    fn gateway_is_healthy_again_after_unhealthy_for() {
        let now = Instant::now();
        let failed = [Some(now - Duration::from_secs(61)), None];
        assert_eq!(gateway_order(&failed, now, Duration::from_secs(60)), vec![0, 1]);
    }

    #[test]
    fn all_unhealthy_are_still_all_tried_in_order() {
        let now = Instant::now();
        let failed = [Some(now), Some(now - Duration::from_secs(1))];
        assert_eq!(gateway_order(&failed, now, Duration::from_secs(60)), vec![0, 1]);
    }

    #[test]
    fn config_from_toml_with_defaults() {
        let cfg: SmsConfig = toml::from_str(
            r#"gateways = ["https://sms-a.example.net/send", "https://sms-b.example.net/send"]
               headers = { Authorization = "Bearer x" }
               unhealthy_for = "2m""#,
        )
        .unwrap();
        assert_eq!(cfg.gateways.len(), 2);
        assert_eq!(cfg.body, DEFAULT_BODY);
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.unhealthy_for, Duration::from_secs(120));
    }

    #[test]
    fn config_rejects_typos() {
        let err = toml::from_str::<SmsConfig>("gateway = [\"https://x\"]").unwrap_err();
        assert!(err.to_string().contains("gateway"), "{err}");
    }

    #[test]
    fn empty_gateway_list_is_a_config_error() {
        let err = SmsChannel::new(SmsConfig::new(vec![])).err().unwrap();
        assert!(err.to_string().contains("[channels.sms] gateways"), "{err}");
    }
}

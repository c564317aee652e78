//! SMS through a redundant cluster of HTTP gateways, tried in order, with health tracking.
//!
//! A gateway that failed with a retryable error (down, 5xx, timeout) is marked unhealthy and
//! skipped for `unhealthy_for`; when every gateway is unhealthy they are all tried anyway,
//! healthy ones first: skipping must never mean not trying at all.
//!
//! A gateway with a `[channels.sms.receipts.NAME]` section reports delivery: each SMS it
//! accepts is handed to the [`ReceiptTracker`] (stored before `send` returns), which waits
//! for the receipt (see `receipts.rs`); one a gateway without receipts accepts ends any wait
//! for a receipt of an earlier attempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{self, BodyTemplate, HeaderTemplates};
use super::receipts::{GatewayRules, MAX_RECEIPT_BYTES, ReceiptConfig, ReceiptTracker};
use super::{Channel, ChannelError, ChannelKind, ConfigError, Notification, Receipt};

/// The documented default body (docs/configuration.md, `[channels.sms]`) for sms and voice.
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
    /// Delivery receipts, per gateway: `[channels.sms.receipts.NAME]`.
    #[serde(default)]
    pub receipts: BTreeMap<String, ReceiptConfig>,
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
            receipts: BTreeMap::new(),
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
    /// Per gateway (same index): how it reports delivery, if it does.
    receipts: Vec<Option<Arc<GatewayRules>>>,
    /// Where accepted SMS of gateways with receipts are tracked (none: not tracked).
    tracker: Option<Arc<ReceiptTracker>>,
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
        let mut receipts: Vec<Option<Arc<GatewayRules>>> = vec![None; cfg.gateways.len()];
        for (name, section) in &cfg.receipts {
            let rules = GatewayRules::build(name, section, &cfg.gateways, cfg.timeout, cfg.ca_file.as_deref())?;
            let slot = &mut receipts[rules.gateway_index];
            if let Some(other) = slot {
                return Err(ConfigError::new(
                    kind,
                    format!("receipts.{name}.gateway: the same gateway as receipts.{}", other.name),
                ));
            }
            *slot = Some(Arc::new(rules));
        }
        Ok(SmsChannel {
            receipts,
            tracker: None,
            body: BodyTemplate::parse(kind, &cfg.body, cfg.content_type.as_deref())?,
            headers: HeaderTemplates::parse(kind, &cfg.headers)?,
            client: http::client(kind, cfg.timeout, cfg.ca_file.as_deref())?,
            failed_at: Mutex::new(vec![None; cfg.gateways.len()]),
            unhealthy_for: cfg.unhealthy_for,
            gateways: cfg.gateways,
        })
    }

    /// Tracks the delivery of SMS accepted by gateways with receipts through `tracker`.
    pub fn tracked_by(mut self, tracker: Arc<ReceiptTracker>) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// The receipts sections in force, for the tracker.
    pub fn receipt_rules(&self) -> Vec<Arc<GatewayRules>> {
        self.receipts.iter().flatten().cloned().collect()
    }

    /// One gateway: POST, and for a gateway with receipts, the tracking of the accepted SMS.
    async fn send_via(
        &self,
        i: usize,
        n: &Notification,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Receipt, ChannelError> {
        let url = &self.gateways[i];
        let Some(tracker) = self.tracker.as_ref() else {
            return http::post(&self.client, ChannelKind::Sms, url, headers, body, content_type).await;
        };
        let Some(rules) = self.receipts[i].as_ref() else {
            let receipt = http::post(&self.client, ChannelKind::Sms, url, headers, body, content_type).await?;
            // Sent again through a gateway without receipts: no receipt will come for it.
            tracker.accepted_untracked(n).await;
            return Ok(receipt);
        };
        let max_answer = if rules.reads_answer() { MAX_RECEIPT_BYTES } else { 0 };
        let (receipt, answer) =
            http::post_with_answer(&self.client, ChannelKind::Sms, url, headers, body, content_type, max_answer)
                .await?;
        // JSON or form fields; which one is told by the bytes (see receipts::extract). A
        // receipt the gateway posted before this answer is applied by `track`.
        let message_id = rules.message_id(&answer, None, n);
        if let Err(e) = tracker.track(n, rules, message_id).await {
            // The gateway took the SMS: sending it again would not help. Awaited in memory
            // if the flush failed; untracked (counted delivered on acceptance, as without
            // receipts) if it could not be written at all.
            tracing::error!(notification = %n.id, error = %e, "cannot store the tracking of the SMS's delivery receipt");
        }
        Ok(receipt)
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
            match self.send_via(i, n, headers.clone(), body.clone(), content_type).await {
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

    fn private_secret(dir: &std::path::Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("receipt.secret");
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn receipts_sections_attach_to_their_gateway_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = private_secret(dir.path());
        let section = |name: &str, gateway: &str| {
            format!(
                "[receipts.{name}]\ngateway = \"{gateway}\"\ndelivery_timeout = \"2m\"\n\
                 callback_secret_file = \"{}\"\nreceipt_id_field = \"/id\"\nstatus_field = \"/status\"\n\
                 delivered = [\"delivered\"]\n",
                secret.display()
            )
        };
        let head = "gateways = [\"https://sms-a.example.net/send\", \"https://sms-b.example.net/send\"]\n";
        let cfg: SmsConfig =
            toml::from_str(&format!("{head}{}", section("sms-b", "https://sms-b.example.net/send"))).unwrap();
        let channel = SmsChannel::new(cfg).unwrap();
        let rules = channel.receipt_rules();
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].name.as_str(), rules[0].gateway_index), ("sms-b", 1));

        let twice = format!(
            "{head}{}{}",
            section("one", "https://sms-a.example.net/send"),
            section("two", "https://sms-a.example.net/send")
        );
        let err = SmsChannel::new(toml::from_str(&twice).unwrap()).err().unwrap().to_string();
        assert!(err.contains("receipts.two.gateway: the same gateway as receipts.one"), "{err}");
        let typo = format!("{head}{}deliverd = []\n", section("x", "https://sms-a.example.net/send"));
        assert!(toml::from_str::<SmsConfig>(&typo).unwrap_err().to_string().contains("deliverd"));
    }

    #[test]
    fn empty_gateway_list_is_a_config_error() {
        let err = SmsChannel::new(SmsConfig::new(vec![])).err().unwrap();
        assert!(err.to_string().contains("[channels.sms] gateways"), "{err}");
    }
}

//! JSON POST to a webhook: pikett's own payload, or an Alertmanager-compatible one (version 4)
//! so tools that already take Alertmanager webhooks (ticket systems, chat bridges) work as is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, HeaderTemplates};
use super::sms::default_timeout;
use super::{Channel, ChannelError, ChannelKind, ConfigError, Notification, NotificationKind, Receipt};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The notification's fields as a flat JSON object with `"version": "1"`.
    #[default]
    Pikett,
    /// Alertmanager's webhook payload, version 4, one alert per notification.
    Alertmanager,
}

/// `[channels.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Extra trusted CA certificates (PEM) for a gateway with an internal certificate; the
    /// system's trust store stays in use.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, format: WebhookFormat) -> Self {
        WebhookConfig { url: url.into(), headers: BTreeMap::new(), ca_file: None, format, timeout: default_timeout() }
    }
}

/// Alertmanager's "not ended" time for firing alerts.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// pikett's payload: the notification with the effective text and subject filled in.
pub fn pikett_payload(n: &Notification) -> Value {
    let mut v = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        map.insert("version".into(), json!("1"));
        map.insert("text".into(), json!(n.effective_text()));
        map.insert("subject".into(), json!(n.effective_subject()));
    }
    v
}

/// An Alertmanager webhook payload (version 4) carrying this notification as one alert.
pub fn alertmanager_payload(n: &Notification) -> Value {
    let resolved = n.kind == NotificationKind::Resolved;
    let status = if resolved { "resolved" } else { "firing" };
    let starts_at = n.fault_opened_at.unwrap_or(n.created_at).to_string();
    let ends_at =
        if resolved { n.fault_resolved_at.unwrap_or(n.created_at).to_string() } else { ZERO_TIME.to_string() };
    let mut labels = serde_json::Map::new();
    let alertname = if n.check.is_empty() { "pikett" } else { &n.check };
    labels.insert("alertname".into(), json!(alertname));
    for (k, v) in [
        ("host", &n.host),
        ("check", &n.check),
        ("severity", &n.severity),
        ("customer", &n.customer),
        ("fault_id", &n.fault_id),
    ] {
        if !v.is_empty() {
            labels.insert(k.into(), json!(v));
        }
    }
    if n.emergency {
        labels.insert("emergency".into(), json!("true"));
    }
    let annotations = json!({
        "summary": n.summary,
        "description": n.effective_text(),
    });
    let labels = Value::Object(labels);
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{fault_id=\"{}\"}}", n.fault_id),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "pikett",
        "groupLabels": { "fault_id": n.fault_id },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": "",
            "fingerprint": fingerprint(&n.fault_id),
        }],
    })
}

/// A stable 16-hex-digit id per fault (FNV-1a), like Alertmanager's label fingerprints.
fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub struct WebhookChannel {
    url: String,
    format: WebhookFormat,
    headers: HeaderTemplates,
    client: reqwest::Client,
}

impl WebhookChannel {
    pub fn new(cfg: WebhookConfig) -> Result<Self, ConfigError> {
        let kind = ChannelKind::Webhook;
        http::check_url(kind, "url", &cfg.url)?;
        Ok(WebhookChannel {
            headers: HeaderTemplates::parse(kind, &cfg.headers)?,
            client: http::client(kind, cfg.timeout, cfg.ca_file.as_deref())?,
            format: cfg.format,
            url: cfg.url,
        })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webhook
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError> {
        let payload = match self.format {
            WebhookFormat::Pikett => pikett_payload(n),
            WebhookFormat::Alertmanager => alertmanager_payload(n),
        };
        let headers = self.headers.render(n)?;
        http::post(
            &self.client,
            ChannelKind::Webhook,
            &self.url,
            headers,
            payload.to_string().into_bytes(),
            "application/json",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::sample_notification;

    #[test]
    fn firing_alert_has_alertmanager_shape() {
        let mut n = sample_notification();
        n.fault_opened_at = Some("2026-11-23T02:58:00Z".parse().unwrap());
        let v = alertmanager_payload(&n);
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        let a = &v["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "http/shop-frontend");
        assert_eq!(a["labels"]["host"], "web1");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["fault_id"], "F42");
        assert_eq!(a["annotations"]["summary"], "HTTP 500 Internal Server Error");
        assert_eq!(a["startsAt"], "2026-11-23T02:58:00Z");
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn resolution_is_resolved_with_end_time() {
        let mut n = sample_notification();
        n.kind = NotificationKind::Resolved;
        n.fault_resolved_at = Some("2026-11-23T03:10:00Z".parse().unwrap());
        let v = alertmanager_payload(&n);
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["endsAt"], "2026-11-23T03:10:00Z");
    }

    #[test]
    fn fingerprint_is_stable_per_fault() {
        assert_eq!(fingerprint("F42"), fingerprint("F42"));
        assert_ne!(fingerprint("F42"), fingerprint("F43"));
    }

    #[test]
    fn pikett_payload_has_effective_text() {
        let v = pikett_payload(&sample_notification());
        assert_eq!(v["version"], "1");
        assert_eq!(v["fault_id"], "F42");
        assert!(v["text"].as_str().unwrap().contains("pikett ack F42"));
    }

    #[test]
    fn config_from_toml() {
        let cfg: WebhookConfig =
            toml::from_str("url = \"https://tickets.example.net/hook\"\nformat = \"alertmanager\"").unwrap();
        assert_eq!(cfg.format, WebhookFormat::Alertmanager);
        let cfg: WebhookConfig = toml::from_str("url = \"https://x/hook\"").unwrap();
        assert_eq!(cfg.format, WebhookFormat::Pikett);
        assert!(toml::from_str::<WebhookConfig>("url = \"https://x\"\nformat = \"slack\"").is_err());
    }
}

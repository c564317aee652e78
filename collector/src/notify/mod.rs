//! Notification channels (SMS, voice, email, webhook) behind one trait, and the durable outbox.
//!
//! A [`Notification`] is plain data: who to reach, over which channel, and what to say. A
//! [`Channel`] delivers one notification and answers with a [`Receipt`] or a classified
//! [`ChannelError`] (retryable or permanent). The [`outbox`] stores every notification before
//! it is sent, retries retryable failures with backoff and reports each outcome; it knows
//! nothing about HTTP or SMTP. Which person and which channel to page is decided elsewhere
//! (the escalation logic); this module only delivers.

pub mod email;
mod http;
pub mod outbox;
#[cfg(test)]
mod outbox_suite;
pub mod receipts;
pub mod sms;
pub mod template;
pub mod voice;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use email::{EmailChannel, EmailConfig};
pub use outbox::{
    Claimed, Claimer, Clock, Enqueued, Entry, EntryState, ManualClock, Outbox, OutboxConfig, OutboxError, OutboxStore,
    Outcome, OutcomeStatus, Recorded, SystemClock, TreeStore, Worker,
};
pub use receipts::{DeliveryReport, DeliveryState, ReceiptConfig, ReceiptTracker};
pub use sms::{SmsChannel, SmsConfig};
pub use template::{Template, TemplateError};
pub use voice::{VoiceChannel, VoiceConfig};
pub use webhook::{WebhookChannel, WebhookConfig, WebhookFormat};

/// The delivery path of a notification; also the key of `[channels.NAME]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Sms,
    Voice,
    Email,
    Webhook,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Sms => "sms",
            ChannelKind::Voice => "voice",
            ChannelKind::Email => "email",
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A page: a fault needs someone now (or, for warnings, in support hours).
    Alarm,
    /// The fault is over; sent to everyone who was paged.
    Resolved,
    /// The page was not acknowledged yet and is repeated.
    Reminder,
    /// An emergency's status update (with ETA) for the affected customer's contacts.
    StatusUpdate,
    /// A premium customer's copy of an alarm or resolution.
    Copy,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Alarm => "alarm",
            NotificationKind::Resolved => "resolved",
            NotificationKind::Reminder => "reminder",
            NotificationKind::StatusUpdate => "status_update",
            NotificationKind::Copy => "copy",
        }
    }
}

/// One message to one recipient over one channel: plain data, stored as JSON in the outbox.
///
/// `id` is the idempotency key: the caller makes it unique per (fault, step, recipient,
/// channel) and it stays the same on every retry and after a restart, so gateways and mail
/// servers can drop duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub fault_id: String,
    pub kind: NotificationKind,
    pub channel: ChannelKind,
    /// Phone number (sms, voice), e-mail address (email); informational for webhooks.
    pub to: String,
    /// E-mail subject; other channels ignore it. Empty = [`default_subject`].
    #[serde(default)]
    pub subject: String,
    /// The message text. Empty = [`default_text`].
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub check: String,
    /// `warning` | `critical` (free text; passed through).
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub customer: String,
    /// An escalated incident: the text is prefixed `[Notfall]`.
    #[serde(default)]
    pub emergency: bool,
    /// When the fault opened (webhook `startsAt`); `None` = `created_at`.
    #[serde(default)]
    pub fault_opened_at: Option<Timestamp>,
    /// When the fault was resolved (webhook `endsAt` of a resolution).
    #[serde(default)]
    pub fault_resolved_at: Option<Timestamp>,
    /// When the notification was created (the outbox's max age counts from here).
    pub created_at: Timestamp,
}

impl Notification {
    /// The text to send: `text` if set, otherwise [`default_text`].
    pub fn effective_text(&self) -> String {
        if self.text.is_empty() { default_text(self) } else { self.text.clone() }
    }

    /// The e-mail subject: `subject` if set, otherwise [`default_subject`].
    pub fn effective_subject(&self) -> String {
        if self.subject.is_empty() { default_subject(self) } else { self.subject.clone() }
    }
}

/// Longest summary put into a default text: an SMS should stay short.
const MAX_SUMMARY_CHARS: usize = 120;

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn headline(n: &Notification) -> String {
    let mut out = String::new();
    if n.emergency {
        out.push_str("[Notfall] ");
    }
    match n.kind {
        NotificationKind::Resolved => out.push_str("RESOLVED "),
        NotificationKind::Reminder => out.push_str("REMINDER "),
        NotificationKind::StatusUpdate => out.push_str("UPDATE "),
        NotificationKind::Alarm | NotificationKind::Copy => {}
    }
    if !n.severity.is_empty() && n.kind != NotificationKind::Resolved {
        out.push_str(&n.severity.to_uppercase());
        out.push(' ');
    }
    out.push_str(&n.host);
    if !n.check.is_empty() {
        out.push_str(": ");
        out.push_str(&n.check);
    }
    out
}

/// The default SMS/voice/e-mail text: host, check, severity, summary, fault id and how to ack.
///
/// `[Notfall] CRITICAL web1: http/shop - HTTP 500 (fault F42) - ack: pikett ack F42`.
/// Resolutions and customer copies carry no ack hint: there is nothing to acknowledge.
pub fn default_text(n: &Notification) -> String {
    let mut out = headline(n);
    if !n.summary.is_empty() {
        out.push_str(" - ");
        out.push_str(&shorten(&n.summary, MAX_SUMMARY_CHARS));
    }
    out.push_str(&format!(" (fault {})", n.fault_id));
    if matches!(n.kind, NotificationKind::Alarm | NotificationKind::Reminder) {
        out.push_str(&format!(" - ack: pikett ack {}", n.fault_id));
    }
    out
}

/// The default e-mail subject: the headline of [`default_text`] with the fault id.
pub fn default_subject(n: &Notification) -> String {
    format!("{} (fault {})", headline(n), n.fault_id)
}

/// Proof of delivery: which endpoint took the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub channel: ChannelKind,
    /// The endpoint that accepted it (gateway URL, `smtp host:port`).
    pub endpoint: String,
    /// What it answered (HTTP status, SMTP reply), for the fault's timeline.
    pub detail: String,
}

/// A failed delivery, classified: retrying a retryable error may succeed, a permanent one not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Timeouts, refused connections, 5xx, 408, 429, SMTP 4xx: try again later.
    #[error("{0}")]
    Retryable(String),
    /// Other 4xx, invalid recipients, SMTP 5xx, missing secrets: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

impl ChannelError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChannelError::Retryable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            ChannelError::Retryable(m) | ChannelError::Permanent(m) => m,
        }
    }
}

/// One way of reaching people. Implementations hold their config and connections.
#[async_trait]
pub trait Channel: Send + Sync {
    fn kind(&self) -> ChannelKind;
    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError>;
}

/// A config problem found while building a channel: names the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("[channels.{channel}] {message}")]
pub struct ConfigError {
    pub channel: ChannelKind,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(channel: ChannelKind, message: impl Into<String>) -> Self {
        ConfigError { channel, message: message.into() }
    }
}

/// The `[channels]` config section: every sub-table is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    pub sms: Option<SmsConfig>,
    pub voice: Option<VoiceConfig>,
    pub email: Option<EmailConfig>,
    pub webhook: Option<WebhookConfig>,
}

/// The configured channels by kind: what the outbox sends through.
pub type ChannelMap = HashMap<ChannelKind, Arc<dyn Channel>>;

impl ChannelsConfig {
    /// The channel warnings go by when `[escalation] warning_channel` is not set: email
    /// when configured, else the first configured of sms, webhook, voice; email when none is.
    pub fn default_warning_channel(&self) -> pikett_core::oncall::Channel {
        use pikett_core::oncall::Channel;
        if self.email.is_some() {
            Channel::Email
        } else if self.sms.is_some() {
            Channel::Sms
        } else if self.webhook.is_some() {
            Channel::Webhook
        } else if self.voice.is_some() {
            Channel::Voice
        } else {
            Channel::Email
        }
    }

    /// The keys that hold a secret in the config file itself: a gateway URL with user
    /// info or a query string, or a header that looks like a credential and does not take
    /// it from a file (`{{secret:/path}}`).
    pub fn inline_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let looks_secret = |name: &str| {
            let n = name.to_ascii_lowercase();
            ["auth", "token", "key", "secret", "password"].iter().any(|w| n.contains(w))
        };
        let mut headers = |section: &str, headers: &std::collections::BTreeMap<String, String>| {
            for (name, value) in headers {
                if looks_secret(name) && !value.contains("{{secret:") {
                    out.push(format!("channels.{section}.headers.{name}"));
                }
            }
        };
        if let Some(c) = &self.sms {
            headers("sms", &c.headers);
        }
        if let Some(c) = &self.voice {
            headers("voice", &c.headers);
        }
        if let Some(c) = &self.webhook {
            headers("webhook", &c.headers);
        }
        if let Some(c) = &self.sms {
            for (i, url) in c.gateways.iter().enumerate() {
                if http::url_holds_secret(url) {
                    out.push(format!("channels.sms.gateways[{i}]"));
                }
            }
            for (name, section) in &c.receipts {
                out.extend(receipts::inline_secrets(name, section));
            }
        }
        if let Some(c) = &self.voice
            && http::url_holds_secret(&c.url)
        {
            out.push("channels.voice.url".into());
        }
        if let Some(c) = &self.webhook
            && http::url_holds_secret(&c.url)
        {
            out.push("channels.webhook.url".into());
        }
        out
    }

    /// Builds every configured channel, validating templates, secrets and addresses.
    pub fn build(&self) -> Result<ChannelMap, ConfigError> {
        self.build_tracked(None)
    }

    /// [`ChannelsConfig::build`] whose SMS channel hands accepted SMS of gateways with
    /// receipts to `receipts`; its receipt rules become this config's once all is built.
    pub fn build_tracked(&self, receipts: Option<&Arc<ReceiptTracker>>) -> Result<ChannelMap, ConfigError> {
        let mut map: ChannelMap = HashMap::new();
        let mut receipt_rules = Vec::new();
        if let Some(c) = &self.sms {
            let mut sms = SmsChannel::new(c.clone())?;
            receipt_rules = sms.receipt_rules();
            if let Some(tracker) = receipts {
                sms = sms.tracked_by(tracker.clone());
            }
            map.insert(ChannelKind::Sms, Arc::new(sms));
        }
        if let Some(c) = &self.voice {
            map.insert(ChannelKind::Voice, Arc::new(VoiceChannel::new(c.clone())?));
        }
        if let Some(c) = &self.email {
            map.insert(ChannelKind::Email, Arc::new(EmailChannel::new(c.clone())?));
        }
        if let Some(c) = &self.webhook {
            map.insert(ChannelKind::Webhook, Arc::new(WebhookChannel::new(c.clone())?));
        }
        if let Some(tracker) = receipts {
            tracker.set_rules(receipt_rules);
        }
        Ok(map)
    }
}

#[cfg(test)]
pub(crate) fn sample_notification() -> Notification {
    Notification {
        id: "F42-primary-alice-sms-0".into(),
        fault_id: "F42".into(),
        kind: NotificationKind::Alarm,
        channel: ChannelKind::Sms,
        to: "+4915100000001".into(),
        subject: String::new(),
        text: String::new(),
        host: "web1".into(),
        check: "http/shop-frontend".into(),
        severity: "critical".into(),
        summary: "HTTP 500 Internal Server Error".into(),
        customer: "acme".into(),
        emergency: false,
        fault_opened_at: None,
        fault_resolved_at: None,
        created_at: "2026-11-23T03:00:00Z".parse().unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_names_host_check_severity_summary_fault_and_ack() {
        let n = sample_notification();
        assert_eq!(
            default_text(&n),
            "CRITICAL web1: http/shop-frontend - HTTP 500 Internal Server Error (fault F42) - ack: pikett ack F42"
        );
    }

    #[test]
    fn emergency_text_is_prefixed_notfall() {
        let mut n = sample_notification();
        n.emergency = true;
        assert!(default_text(&n).starts_with("[Notfall] CRITICAL web1"));
        assert!(default_subject(&n).starts_with("[Notfall] "));
    }

    #[test]
    fn resolution_has_no_ack_hint() {
        let mut n = sample_notification();
        n.kind = NotificationKind::Resolved;
        let t = default_text(&n);
        assert!(t.starts_with("RESOLVED web1: http/shop-frontend"), "{t}");
        assert!(!t.contains("pikett ack"), "{t}");
    }

    #[test]
    fn long_summaries_are_shortened() {
        let mut n = sample_notification();
        n.summary = "x".repeat(500);
        let t = default_text(&n);
        assert!(t.chars().count() < 220, "{}", t.len());
        assert!(t.contains('…'));
    }

    #[test]
    fn explicit_text_wins_over_default() {
        let mut n = sample_notification();
        n.text = "hello".into();
        assert_eq!(n.effective_text(), "hello");
    }

    #[test]
    fn notification_round_trips_through_json() {
        let n = sample_notification();
        let s = serde_json::to_string(&n).unwrap();
        assert!(s.contains(r#""kind":"alarm""#) && s.contains(r#""channel":"sms""#));
        let back: Notification = serde_json::from_str(&s).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn channels_config_rejects_unknown_sections() {
        let err = toml::from_str::<ChannelsConfig>("[pager]\nurl = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("pager"), "{err}");
    }
}

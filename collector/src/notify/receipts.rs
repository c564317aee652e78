//! Delivery receipts of SMS gateways: did the message reach the phone, not only the gateway?
//!
//! A gateway configured with `[channels.sms.receipts.NAME]` reports delivery by callback
//! (`POST /receipts/sms/NAME` on the collector's HTTP port, authenticated by a shared
//! secret) or answers a status URL the collector polls, or both. Each SMS such a gateway
//! accepts is tracked here, durably (tree `sms_receipts`, key = the notification id), from
//! "sent" to "delivered" or "not delivered": a receipt saying failed, or no confirmation
//! within `delivery_timeout`. Every final state goes out as a [`DeliveryReport`]; the pager
//! turns it into the fault's timeline and the escalation's verdict on that page.
//!
//! The decisions are plain functions ([`extract`], [`StatusMap::classify`], [`advance`],
//! [`notification_status`]) over times from an injected [`Clock`]; HTTP and storage stay in
//! [`ReceiptTracker`]. Receipt secrets are never logged.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::http::{self, HeaderTemplates};
use super::outbox::{Clock, Entry, EntryState};
use super::template::{self, Escape, Template};
use super::{ChannelKind, ConfigError, Notification};
use crate::store::{Storage, Tree};

/// How long the receipt of a gateway without `delivery_timeout` is waited for; after that
/// the SMS stays "sent" (accepted counts as delivered, as without receipts).
pub const WAIT_WITHOUT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The largest receipt or status answer read; a gateway's receipt is a few hundred bytes.
pub const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// A callback secret shorter than this is refused: the receipt URL is on the internet.
const MIN_SECRET_CHARS: usize = 16;

/// How often timeouts and due polls are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[channels.sms.receipts.NAME]`: how one gateway of `[channels.sms]` reports delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptConfig {
    /// The entry of `gateways` this describes (the same URL).
    pub gateway: String,
    /// Accepted but not confirmed delivered within this counts as failed. None: no deadline.
    #[serde(default, with = "humantime_serde")]
    pub delivery_timeout: Option<Duration>,
    /// Where the send answer holds the gateway's message id; none: our id (`{{id}}`).
    #[serde(default)]
    pub message_id_field: Option<String>,
    /// The shared secret of the receipt URL (callbacks on when set).
    #[serde(default)]
    pub callback_secret_file: Option<PathBuf>,
    /// Where a callback receipt holds the message id.
    #[serde(default)]
    pub receipt_id_field: Option<String>,
    /// Where a callback receipt or a status answer holds the status.
    pub status_field: String,
    /// The status URL to poll (a template; `{{message_id}}` besides the usual variables).
    #[serde(default)]
    pub status_url: Option<String>,
    /// Headers of a status request (templates, `{{secret:/path}}` for tokens).
    #[serde(default)]
    pub status_headers: BTreeMap<String, String>,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Status values meaning delivered (compared without case).
    pub delivered: Vec<String>,
    /// Status values meaning failed or undeliverable; any other status means "not yet".
    #[serde(default)]
    pub failed: Vec<String>,
}

/// Where a value sits in a receipt: `/a/b` is a JSON pointer, any other text a form field
/// name (or a top-level key of a JSON object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Pointer(String),
    Name(String),
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        let s = s.trim();
        if s.is_empty() {
            None
        } else if s.starts_with('/') {
            Some(Field::Pointer(s.to_string()))
        } else {
            Some(Field::Name(s.to_string()))
        }
    }
}

/// The value of `field` in a receipt or answer body: form fields when the content type says
/// `application/x-www-form-urlencoded`, else JSON (a name is a top-level key); a body of
/// no declared JSON type that is not JSON is read as form fields. Numbers and booleans are
/// given as text; empty, null, objects and arrays count as absent.
pub fn extract(body: &[u8], content_type: Option<&str>, field: &Field) -> Option<String> {
    let content_type = content_type.unwrap_or("").to_ascii_lowercase();
    if !content_type.contains("x-www-form-urlencoded") {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            let found = match field {
                Field::Pointer(p) => v.pointer(p),
                Field::Name(n) => v.get(n),
            };
            return found.and_then(scalar);
        }
        if content_type.contains("json") {
            return None;
        }
    }
    let Field::Name(name) = field else { return None };
    let text = std::str::from_utf8(body).ok()?;
    // reqwest's URL decodes a query exactly as a form body (`+` is a space, %XX escapes).
    let mut url = reqwest::Url::parse("http://form.invalid/").ok()?;
    url.set_query(Some(text.trim()));
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).filter(|v| !v.is_empty())
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// What a gateway's status value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedStatus {
    Delivered,
    Failed,
    /// Neither (queued, buffered, sent to the network...): wait on.
    Pending,
}

/// `delivered` and `failed` of a receipts section, compared without case or surrounding space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMap {
    delivered: Vec<String>,
    failed: Vec<String>,
}

impl StatusMap {
    pub fn new(delivered: &[String], failed: &[String]) -> StatusMap {
        let norm = |v: &[String]| v.iter().map(|s| s.trim().to_lowercase()).collect();
        StatusMap { delivered: norm(delivered), failed: norm(failed) }
    }

    pub fn classify(&self, status: &str) -> ReportedStatus {
        let s = status.trim().to_lowercase();
        if self.delivered.contains(&s) {
            ReportedStatus::Delivered
        } else if self.failed.contains(&s) {
            ReportedStatus::Failed
        } else {
            ReportedStatus::Pending
        }
    }
}

/// Where a tracked SMS stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    /// Accepted by the gateway; no final receipt yet.
    Awaiting,
    Delivered {
        at: Timestamp,
    },
    /// `reason`: "not delivered within 2m" or "not delivered: the gateway reported …".
    NotDelivered {
        at: Timestamp,
        reason: String,
    },
    /// No receipt within [`WAIT_WITHOUT_TIMEOUT`] from a gateway without `delivery_timeout`.
    NoReceipt {
        at: Timestamp,
    },
}

impl DeliveryState {
    /// What the escalation learns: delivered (true), failed (false) or nothing.
    pub fn escalation_verdict(&self) -> Option<bool> {
        match self {
            DeliveryState::Delivered { .. } => Some(true),
            DeliveryState::NotDelivered { .. } => Some(false),
            DeliveryState::Awaiting | DeliveryState::NoReceipt { .. } => None,
        }
    }
}

/// One SMS whose delivery is tracked: stored as JSON under its notification id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub notification: Notification,
    /// The receipts section's name (`NAME` of `[channels.sms.receipts.NAME]`).
    pub gateway: String,
    /// The gateway's id for the message, as its receipts name it.
    pub message_id: String,
    pub accepted_at: Timestamp,
    #[serde(default, with = "humantime_serde")]
    pub delivery_timeout: Option<Duration>,
    /// When the status URL is asked next (`None`: not polled).
    pub next_poll: Option<Timestamp>,
    pub state: DeliveryState,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

/// What moves a tracked SMS on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A callback or a status answer said `raw`, meaning `status`.
    Reported { status: ReportedStatus, raw: &'a str },
    /// Time passed.
    Tick,
}

/// The state machine: sent → delivered | not delivered. The new state, or `None` when
/// nothing changes. A final state stays; a receipt wins over a deadline not yet noticed.
pub fn advance(t: &Tracked, event: Event<'_>, now: Timestamp) -> Option<DeliveryState> {
    if t.state != DeliveryState::Awaiting {
        return None;
    }
    match event {
        Event::Reported { status: ReportedStatus::Delivered, .. } => Some(DeliveryState::Delivered { at: now }),
        Event::Reported { status: ReportedStatus::Failed, raw } => Some(DeliveryState::NotDelivered {
            at: now,
            reason: format!("not delivered: the gateway reported {:?}", raw.trim()),
        }),
        Event::Reported { status: ReportedStatus::Pending, .. } => None,
        Event::Tick => match t.delivery_timeout {
            Some(timeout) if now >= add(t.accepted_at, timeout) => Some(DeliveryState::NotDelivered {
                at: now,
                reason: format!("not delivered within {}", humantime::format_duration(timeout)),
            }),
            Some(_) => None,
            None if now >= add(t.accepted_at, WAIT_WITHOUT_TIMEOUT) => Some(DeliveryState::NoReceipt { at: now }),
            None => None,
        },
    }
}

/// Whether the status URL is due to be asked about `t` at `now`.
pub fn poll_due(t: &Tracked, now: Timestamp) -> bool {
    t.state == DeliveryState::Awaiting && t.next_poll.is_some_and(|p| p <= now)
}

/// One notification of a fault as `pikett fault show` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationStatus {
    pub id: String,
    pub kind: &'static str,
    pub channel: ChannelKind,
    pub to: String,
    /// "queued" | "sent" | "delivered" | "not delivered".
    pub delivery: &'static str,
    /// When the channel took it.
    pub sent_at: Option<Timestamp>,
    /// When it was confirmed delivered or given up.
    pub delivery_at: Option<Timestamp>,
    pub detail: String,
}

/// The outbox's entry and, for a tracked SMS, its receipt state, as one line: "queued" until
/// a channel took it; "sent" when taken without a confirmation (yet); "delivered" only with
/// a gateway's receipt; "not delivered" when sending failed or the receipt says so or never came.
pub fn notification_status(entry: &Entry, tracked: Option<&Tracked>) -> NotificationStatus {
    let n = &entry.notification;
    let finished = entry.finished_at;
    let (delivery, delivery_at, detail) = match (entry.state, tracked.map(|t| &t.state)) {
        (EntryState::Pending, _) => ("queued", None, entry.last_error.clone().unwrap_or_default()),
        (EntryState::Failed, _) => ("not delivered", finished, entry.last_error.clone().unwrap_or_default()),
        (EntryState::Delivered, Some(DeliveryState::Delivered { at })) => ("delivered", Some(*at), String::new()),
        (EntryState::Delivered, Some(DeliveryState::NotDelivered { at, reason })) => {
            ("not delivered", Some(*at), reason.clone())
        }
        (EntryState::Delivered, Some(DeliveryState::Awaiting)) => {
            ("sent", None, "awaiting the delivery receipt".into())
        }
        (EntryState::Delivered, Some(DeliveryState::NoReceipt { .. })) => ("sent", None, "no delivery receipt".into()),
        (EntryState::Delivered, None) => {
            ("sent", None, entry.receipt.as_ref().map(|r| format!("{} {}", r.endpoint, r.detail)).unwrap_or_default())
        }
    };
    NotificationStatus {
        id: n.id.clone(),
        kind: n.kind.as_str(),
        channel: n.channel,
        to: n.to.clone(),
        delivery,
        sent_at: if entry.state == EntryState::Delivered { finished } else { None },
        delivery_at,
        detail,
    }
}

/// A final state of a tracked SMS, for the pager (timeline, escalation).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryReport {
    pub notification: Notification,
    pub state: DeliveryState,
}

/// Equality that takes as long for every wrong secret of the right length.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Callback {
    secret: String,
    id_field: Field,
}

struct Poll {
    url: Template,
    headers: HeaderTemplates,
    interval: Duration,
    client: reqwest::Client,
}

/// A receipts section, checked and ready: built with the SMS channel, at start and reload.
pub struct GatewayRules {
    pub name: String,
    /// Index into `[channels.sms] gateways`.
    pub gateway_index: usize,
    delivery_timeout: Option<Duration>,
    message_id_field: Option<Field>,
    callback: Option<Callback>,
    status_field: Field,
    poll: Option<Poll>,
    statuses: StatusMap,
}

impl std::fmt::Debug for GatewayRules {
    // By hand: the callback secret must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayRules")
            .field("name", &self.name)
            .field("gateway_index", &self.gateway_index)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("callback", &self.callback.is_some())
            .field("poll", &self.poll.is_some())
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl GatewayRules {
    /// Checks `[channels.sms.receipts.NAME]` against the channel's `gateways`; reads the
    /// callback secret (not world-readable, at least 16 characters).
    pub(crate) fn build(
        name: &str,
        cfg: &ReceiptConfig,
        gateways: &[String],
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<GatewayRules, ConfigError> {
        let kind = ChannelKind::Sms;
        let err = |m: String| ConfigError::new(kind, format!("receipts.{name}.{m}"));
        if !valid_name(name) {
            return Err(ConfigError::new(
                kind,
                format!("receipts.{name}: the name is part of the receipt URL: 1 to 64 letters, digits, '-' or '_'"),
            ));
        }
        let gateway_index = gateways.iter().position(|g| g == &cfg.gateway).ok_or_else(|| {
            err(format!("gateway: names none of the {} URLs of `gateways` (give one of them exactly)", gateways.len()))
        })?;
        if cfg.delivery_timeout.is_some_and(|t| t.is_zero()) {
            return Err(err("delivery_timeout: must be more than 0s".into()));
        }
        if cfg.callback_secret_file.is_none() && cfg.status_url.is_none() {
            return Err(err(
                "callback_secret_file / status_url: set one or both (receipts sent to the collector, or a status \
                 URL to poll)"
                    .into(),
            ));
        }
        if cfg.delivered.iter().all(|s| s.trim().is_empty()) {
            return Err(err("delivered: at least one status value meaning delivered is needed".into()));
        }
        let status_field = Field::parse(&cfg.status_field).ok_or_else(|| err("status_field: is empty".into()))?;
        let message_id_field = match &cfg.message_id_field {
            Some(f) => Some(Field::parse(f).ok_or_else(|| err("message_id_field: is empty".into()))?),
            None => None,
        };
        let callback = match &cfg.callback_secret_file {
            Some(path) => {
                let id_field = cfg.receipt_id_field.as_deref().and_then(Field::parse).ok_or_else(|| {
                    err("receipt_id_field: callbacks need it: where a receipt names the message".into())
                })?;
                let secret = template::read_secret(path).map_err(|e| err(format!("callback_secret_file: {e}")))?;
                if secret.chars().count() < MIN_SECRET_CHARS || secret.contains('/') {
                    return Err(err(format!(
                        "callback_secret_file: {}: the secret must have at least {MIN_SECRET_CHARS} characters and \
                         no '/' (e.g. `openssl rand -hex 24`)",
                        path.display()
                    )));
                }
                Some(Callback { secret, id_field })
            }
            None => None,
        };
        let poll = match &cfg.status_url {
            Some(url) => {
                let lower = url.trim_start().to_ascii_lowercase();
                if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                    return Err(err("status_url: must be an https:// or http:// URL".into()));
                }
                let template =
                    Template::parse_with(url, &["message_id"]).map_err(|e| err(format!("status_url: {e}")))?;
                template.check_secrets().map_err(|e| err(format!("status_url: {e}")))?;
                if cfg.poll_interval.is_zero() {
                    return Err(err("poll_interval: must be more than 0s".into()));
                }
                Some(Poll {
                    url: template,
                    headers: HeaderTemplates::parse(kind, &cfg.status_headers)
                        .map_err(|e| err(format!("status_headers: {}", e.message)))?,
                    interval: cfg.poll_interval,
                    client: http::client(kind, timeout, ca_file)?,
                })
            }
            None => None,
        };
        Ok(GatewayRules {
            name: name.to_string(),
            gateway_index,
            delivery_timeout: cfg.delivery_timeout,
            message_id_field,
            callback,
            status_field,
            poll,
            statuses: StatusMap::new(&cfg.delivered, &cfg.failed),
        })
    }

    /// The message id for the receipts: from the send answer when `message_id_field` is set
    /// and found there, else our own id (the idempotency key).
    pub fn message_id(&self, answer: &[u8], answer_type: Option<&str>, n: &Notification) -> String {
        match &self.message_id_field {
            Some(field) => extract(answer, answer_type, field).unwrap_or_else(|| {
                tracing::warn!(notification = %n.id, receipts = %self.name, "the gateway's answer holds no message id at message_id_field; matching receipts by our id");
                n.id.clone()
            }),
            None => n.id.clone(),
        }
    }

    /// Whether the send answer's body must be read (to find the message id).
    pub fn reads_answer(&self) -> bool {
        self.message_id_field.is_some()
    }
}

/// The keys of one receipts section that hold a secret in the config file itself.
pub(crate) fn inline_secrets(name: &str, cfg: &ReceiptConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(url) = &cfg.status_url
        && !url.contains("{{secret:")
        && http::url_holds_secret(url)
    {
        out.push(format!("channels.sms.receipts.{name}.status_url"));
    }
    for (header, value) in &cfg.status_headers {
        let h = header.to_ascii_lowercase();
        if ["auth", "token", "key", "secret", "password"].iter().any(|w| h.contains(w)) && !value.contains("{{secret:")
        {
            out.push(format!("channels.sms.receipts.{name}.status_headers.{header}"));
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("delivery receipts storage: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> ReceiptError {
    ReceiptError::Store(e.to_string())
}

/// Why a callback was refused (the HTTP port maps these to 404, 401, 400, 503).
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no gateway takes delivery receipts under this name")]
    UnknownGateway,
    #[error("wrong or missing receipt secret")]
    Unauthorized,
    #[error("{0}")]
    BadReceipt(String),
    #[error(transparent)]
    Store(#[from] ReceiptError),
}

/// What became of an accepted callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// It moved a tracked SMS to a final state.
    Applied,
    /// A status that is not final yet.
    NotFinal,
    /// No SMS awaiting a receipt has this message id (finished already, or unknown).
    Unknown,
}

/// Tracks accepted SMS until their delivery is confirmed or given up. One per collector.
pub struct ReceiptTracker {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
    /// By section name; replaced whole by a reload.
    rules: RwLock<Arc<BTreeMap<String, Arc<GatewayRules>>>>,
    /// Those still awaiting a receipt, by notification id (mirrors the tree).
    awaiting: Mutex<BTreeMap<String, Tracked>>,
    polling: Mutex<HashSet<String>>,
    clock: Arc<dyn Clock>,
    keep_done: Duration,
    reports: mpsc::UnboundedSender<DeliveryReport>,
}

/// The running check loop; [`ReceiptWorker::stop`] ends it.
pub struct ReceiptWorker {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl ReceiptWorker {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

fn decode(key: &[u8], value: &[u8]) -> Result<Tracked, ReceiptError> {
    serde_json::from_slice(value)
        .map_err(|e| ReceiptError::Store(format!("entry {}: cannot decode: {e}", String::from_utf8_lossy(key))))
}

impl ReceiptTracker {
    /// Opens the tree `sms_receipts` and takes up every SMS still awaiting its receipt.
    /// Final records are kept `keep_done` (for `pikett fault show`).
    pub fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        keep_done: Duration,
    ) -> Result<(Arc<ReceiptTracker>, mpsc::UnboundedReceiver<DeliveryReport>), ReceiptError> {
        let tree = storage.tree("sms_receipts").map_err(store_err)?;
        let mut awaiting = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(store_err)?;
            match decode(&k, &v) {
                Ok(t) if t.state == DeliveryState::Awaiting => {
                    awaiting.insert(t.notification.id.clone(), t);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "delivery receipts: undecodable entry skipped"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let tracker = ReceiptTracker {
            storage,
            tree,
            rules: RwLock::new(Arc::default()),
            awaiting: Mutex::new(awaiting),
            polling: Mutex::default(),
            clock,
            keep_done,
            reports: tx,
        };
        Ok((Arc::new(tracker), rx))
    }

    /// The receipts sections in force (at start and on every reload).
    pub fn set_rules(&self, rules: Vec<Arc<GatewayRules>>) {
        let map = rules.into_iter().map(|r| (r.name.clone(), r)).collect();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    fn rules_named(&self, name: &str) -> Option<Arc<GatewayRules>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn awaiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        self.awaiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of SMS awaiting their receipt.
    pub fn awaiting_count(&self) -> usize {
        self.awaiting().len()
    }

    async fn store(&self, t: &Tracked) -> Result<(), ReceiptError> {
        let value = serde_json::to_vec(t).map_err(store_err)?;
        self.tree.insert(t.notification.id.as_bytes(), value).map_err(store_err)?;
        self.storage.flush().await.map_err(store_err)
    }

    /// Starts tracking `n`, just accepted by the gateway of `rules` (stored and flushed
    /// before the outbox records the acceptance). The same notification sent again (a
    /// resend after a restart, same idempotency key) keeps its first deadline.
    pub async fn track(&self, n: &Notification, rules: &GatewayRules, message_id: String) -> Result<(), ReceiptError> {
        let now = self.clock.now();
        let existing = match self.awaiting().get(&n.id).cloned() {
            Some(t) => Some(t),
            None => match self.tree.get(n.id.as_bytes()).map_err(store_err)? {
                Some(v) => Some(decode(n.id.as_bytes(), &v)?),
                None => None,
            },
        };
        let tracked = match existing {
            Some(t) if t.state != DeliveryState::Awaiting => return Ok(()),
            Some(mut t) => {
                t.message_id = message_id;
                t
            }
            None => Tracked {
                notification: n.clone(),
                gateway: rules.name.clone(),
                message_id,
                accepted_at: now,
                delivery_timeout: rules.delivery_timeout,
                next_poll: rules.poll.as_ref().map(|p| add(now, p.interval.min(Duration::from_secs(1)))),
                state: DeliveryState::Awaiting,
            },
        };
        self.store(&tracked).await?;
        self.awaiting().insert(n.id.clone(), tracked);
        Ok(())
    }

    /// Whether the delivery of notification `id` is (or was) tracked here; `Some(state)`.
    pub fn tracked_state(&self, id: &str) -> Option<DeliveryState> {
        if let Some(t) = self.awaiting().get(id) {
            return Some(t.state.clone());
        }
        let v = self.tree.get(id.as_bytes()).ok()??;
        decode(id.as_bytes(), &v).ok().map(|t| t.state)
    }

    /// Every tracked SMS of fault `fault_id` (ids `FAULT/…`).
    pub fn for_fault(&self, fault_id: &str) -> Vec<Tracked> {
        let prefix = format!("{fault_id}/");
        self.tree
            .scan_prefix(prefix.as_bytes())
            .filter_map(|item| item.ok())
            .filter_map(|(k, v)| decode(&k, &v).ok())
            .collect()
    }

    /// Moves `id` to `state` (final): stored, flushed, reported. A store failure is logged;
    /// the report still goes out, so the escalation does not wait on the disk.
    async fn finish(&self, id: &str, state: DeliveryState) {
        let Some(mut t) = self.awaiting().remove(id) else { return };
        t.state = state.clone();
        if let Err(e) = self.store(&t).await {
            tracing::error!(notification = %id, error = %e, "delivery receipts: cannot record the final state");
        }
        tracing::info!(notification = %id, fault = %t.notification.fault_id, receipts = %t.gateway, state = ?state, "SMS delivery settled");
        let _ = self.reports.send(DeliveryReport { notification: t.notification, state });
    }

    /// A receipt posted to `/receipts/sms/{gateway}`, with the secret from the path or the
    /// `Authorization: Bearer` header.
    pub async fn callback(
        &self,
        gateway: &str,
        secret: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<CallbackOutcome, CallbackError> {
        let rules = self.rules_named(gateway).ok_or(CallbackError::UnknownGateway)?;
        let callback = rules.callback.as_ref().ok_or(CallbackError::UnknownGateway)?;
        if !secret.is_some_and(|s| same_secret(s, &callback.secret)) {
            return Err(CallbackError::Unauthorized);
        }
        let id = extract(body, content_type, &callback.id_field)
            .ok_or_else(|| CallbackError::BadReceipt("the receipt has no message id at receipt_id_field".into()))?;
        let raw = extract(body, content_type, &rules.status_field)
            .ok_or_else(|| CallbackError::BadReceipt("the receipt has no status at status_field".into()))?;
        Ok(self.report(gateway, &id, &raw, &rules.statuses).await)
    }

    /// A status `raw` reported for message `message_id` of gateway section `gateway`.
    async fn report(&self, gateway: &str, message_id: &str, raw: &str, statuses: &StatusMap) -> CallbackOutcome {
        let now = self.clock.now();
        let status = statuses.classify(raw);
        let found = {
            let awaiting = self.awaiting();
            awaiting
                .values()
                .find(|t| t.gateway == gateway && t.message_id == message_id)
                .map(|t| (t.notification.id.clone(), advance(t, Event::Reported { status, raw }, now)))
        };
        match found {
            None => {
                tracing::debug!(receipts = %gateway, "receipt for a message not awaiting one ignored");
                CallbackOutcome::Unknown
            }
            Some((_, None)) => CallbackOutcome::NotFinal,
            Some((id, Some(state))) => {
                self.finish(&id, state).await;
                CallbackOutcome::Applied
            }
        }
    }

    /// Deadlines passed at the clock's now: each SMS past its `delivery_timeout` is reported
    /// not delivered. Returns how many settled.
    pub async fn check_deadlines(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<(String, DeliveryState)> = self
            .awaiting()
            .values()
            .filter_map(|t| advance(t, Event::Tick, now).map(|s| (t.notification.id.clone(), s)))
            .collect();
        let n = due.len();
        for (id, state) in due {
            self.finish(&id, state).await;
        }
        n
    }

    /// Claims the SMS whose status URL is due (moving their next poll on).
    fn claim_polls(&self) -> Vec<(Tracked, Arc<GatewayRules>)> {
        let now = self.clock.now();
        let mut polling = self.polling.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for t in self.awaiting().values_mut() {
            if !poll_due(t, now) || polling.contains(&t.notification.id) {
                continue;
            }
            let Some(rules) = self.rules_named(&t.gateway) else { continue };
            let Some(poll) = &rules.poll else { continue };
            t.next_poll = Some(add(now, poll.interval));
            polling.insert(t.notification.id.clone());
            out.push((t.clone(), rules.clone()));
        }
        out
    }

    /// Asks the status URL about `t` once; a final answer settles it.
    async fn poll_once(&self, t: Tracked, rules: Arc<GatewayRules>) {
        let id = t.notification.id.clone();
        if let Some(raw) = self.ask_status(&t, &rules).await {
            self.report(&rules.name, &t.message_id, &raw, &rules.statuses).await;
        }
        self.polling.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The status the gateway's status URL answers for `t`, if it answered one.
    async fn ask_status(&self, t: &Tracked, rules: &GatewayRules) -> Option<String> {
        let poll = rules.poll.as_ref()?;
        let n = &t.notification;
        let url = match poll.url.render_with(n, &[("message_id", &t.message_id)], Escape::Url) {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(receipts = %rules.name, error = %e, "status_url cannot be rendered");
                return None;
            }
        };
        let headers = match poll.headers.render(n) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(receipts = %rules.name, error = %e, "status_headers cannot be rendered");
                return None;
            }
        };
        let mut response = match poll.client.get(&url).headers(headers).send().await {
            Ok(r) => r,
            Err(e) => {
                // Without the URL: it may carry a token.
                tracing::warn!(receipts = %rules.name, url = %http::redacted(&url), error = %http::error_chain(&e.without_url()), "status URL unreachable; asking again later");
                return None;
            }
        };
        if !response.status().is_success() {
            tracing::warn!(receipts = %rules.name, url = %http::redacted(&url), status = %response.status(), "status URL refused; asking again later");
            return None;
        }
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut body = Vec::new();
        while body.len() < MAX_RECEIPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        body.truncate(MAX_RECEIPT_BYTES);
        let status = extract(&body, content_type.as_deref(), &rules.status_field);
        if status.is_none() {
            tracing::warn!(receipts = %rules.name, "status answer has no status at status_field");
        }
        status
    }

    /// One pass: deadlines, then due polls (started, not awaited).
    pub async fn run_once(self: &Arc<Self>) {
        self.check_deadlines().await;
        for (t, rules) in self.claim_polls() {
            let me = self.clone();
            tokio::spawn(async move { me.poll_once(t, rules).await });
        }
    }

    /// Starts the loop checking deadlines and polling status URLs.
    pub fn start(self: &Arc<Self>) -> ReceiptWorker {
        let (stop, mut stopped) = watch::channel(false);
        let me = self.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.run_once().await,
                    _ = stopped.changed() => break,
                }
            }
        });
        ReceiptWorker { stop, handle }
    }

    /// Removes settled records older than `keep_done`; how many went.
    pub fn purge(&self) -> Result<usize, ReceiptError> {
        let before = self
            .clock
            .now()
            .checked_sub(SignedDuration::try_from(self.keep_done).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        let mut old = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(store_err)?;
            let settled_at = match decode(&k, &v) {
                Ok(t) => match t.state {
                    DeliveryState::Awaiting => continue,
                    DeliveryState::Delivered { at }
                    | DeliveryState::NotDelivered { at, .. }
                    | DeliveryState::NoReceipt { at } => at,
                },
                Err(_) => Timestamp::MIN,
            };
            if settled_at < before {
                old.push(k);
            }
        }
        for k in &old {
            self.tree.remove(k).map_err(store_err)?;
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::outbox::ManualClock;
    use crate::notify::{NotificationKind, Receipt, sample_notification};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A page of fault 42, step 1 (ids are `FAULT/STEP`).
    fn page() -> Notification {
        let mut n = sample_notification();
        n.id = "42/1".into();
        n.fault_id = "42".into();
        n
    }

    fn tracked(timeout: Option<u64>) -> Tracked {
        Tracked {
            notification: sample_notification(),
            gateway: "sms-a".into(),
            message_id: "m-1".into(),
            accepted_at: t("2026-11-23T03:00:00Z"),
            delivery_timeout: timeout.map(Duration::from_secs),
            next_poll: None,
            state: DeliveryState::Awaiting,
        }
    }

    #[test]
    fn fields_are_found_by_json_pointer_key_or_form_name() {
        let json = br#"{"data": {"id": 42, "state": "DELIVRD"}, "ok": true, "empty": ""}"#;
        let ptr = |p: &str| Field::parse(p).unwrap();
        assert_eq!(extract(json, Some("application/json"), &ptr("/data/id")).as_deref(), Some("42"));
        assert_eq!(extract(json, None, &ptr("/data/state")).as_deref(), Some("DELIVRD"));
        assert_eq!(extract(json, None, &ptr("ok")).as_deref(), Some("true"));
        assert_eq!(extract(json, None, &ptr("/data")), None, "an object is no value");
        assert_eq!(extract(json, None, &ptr("empty")), None);
        assert_eq!(extract(json, None, &ptr("/missing")), None);
        let form = b"msgid=abc%2F1&stat=UNDELIV+ered";
        let ct = Some("application/x-www-form-urlencoded; charset=utf-8");
        assert_eq!(extract(form, ct, &ptr("msgid")).as_deref(), Some("abc/1"));
        assert_eq!(extract(form, ct, &ptr("stat")).as_deref(), Some("UNDELIV ered"));
        assert_eq!(extract(form, None, &ptr("stat")).as_deref(), Some("UNDELIV ered"), "undeclared: form");
        assert_eq!(extract(form, ct, &ptr("/stat")), None, "a pointer needs JSON");
        assert_eq!(extract(b"not json", Some("application/json"), &ptr("x")), None);
        assert_eq!(Field::parse("  "), None);
    }

    #[test]
    fn statuses_map_without_case_and_unknown_ones_wait() {
        let map = StatusMap::new(&["Delivered".into(), "DELIVRD".into()], &["failed".into(), "UNDELIV".into()]);
        assert_eq!(map.classify(" delivered "), ReportedStatus::Delivered);
        assert_eq!(map.classify("delivrd"), ReportedStatus::Delivered);
        assert_eq!(map.classify("Undeliv"), ReportedStatus::Failed);
        assert_eq!(map.classify("buffered"), ReportedStatus::Pending);
        assert_eq!(map.classify(""), ReportedStatus::Pending);
    }

    #[test]
    fn receipts_move_sent_to_delivered_or_not_delivered_once() {
        let now = t("2026-11-23T03:00:05Z");
        let rec = tracked(Some(120));
        let delivered = Event::Reported { status: ReportedStatus::Delivered, raw: "DELIVRD" };
        assert_eq!(advance(&rec, delivered, now), Some(DeliveryState::Delivered { at: now }));
        let failed = Event::Reported { status: ReportedStatus::Failed, raw: "UNDELIV" };
        assert_eq!(
            advance(&rec, failed, now),
            Some(DeliveryState::NotDelivered {
                at: now,
                reason: "not delivered: the gateway reported \"UNDELIV\"".into()
            })
        );
        let pending = Event::Reported { status: ReportedStatus::Pending, raw: "queued" };
        assert_eq!(advance(&rec, pending, now), None);
        let mut settled = rec.clone();
        settled.state = DeliveryState::Delivered { at: now };
        assert_eq!(advance(&settled, failed, now), None, "a final state stays");
        assert_eq!(advance(&settled, Event::Tick, t("2026-11-24T00:00:00Z")), None);
    }

    #[test]
    fn the_deadline_fails_an_unconfirmed_sms_exactly_at_delivery_timeout() {
        let rec = tracked(Some(120));
        assert_eq!(advance(&rec, Event::Tick, t("2026-11-23T03:01:59Z")), None);
        let at = t("2026-11-23T03:02:00Z");
        assert_eq!(
            advance(&rec, Event::Tick, at),
            Some(DeliveryState::NotDelivered { at, reason: "not delivered within 2m".into() })
        );
        // A receipt that comes after the deadline but before the tick noticed it still counts.
        let late = Event::Reported { status: ReportedStatus::Delivered, raw: "ok" };
        assert_eq!(advance(&rec, late, at), Some(DeliveryState::Delivered { at }));
    }

    #[test]
    fn without_delivery_timeout_the_wait_ends_as_no_receipt_not_as_a_failure() {
        let rec = tracked(None);
        assert_eq!(advance(&rec, Event::Tick, t("2026-11-23T03:59:59Z")), None);
        let at = t("2026-11-23T04:00:00Z");
        let state = advance(&rec, Event::Tick, at).unwrap();
        assert_eq!(state, DeliveryState::NoReceipt { at });
        assert_eq!(state.escalation_verdict(), None);
        assert_eq!(DeliveryState::Delivered { at }.escalation_verdict(), Some(true));
        assert_eq!(DeliveryState::NotDelivered { at, reason: String::new() }.escalation_verdict(), Some(false));
    }

    #[test]
    fn polls_are_due_only_while_awaiting() {
        let mut rec = tracked(Some(60));
        assert!(!poll_due(&rec, t("2026-11-23T03:00:05Z")), "not polled without next_poll");
        rec.next_poll = Some(t("2026-11-23T03:00:05Z"));
        assert!(!poll_due(&rec, t("2026-11-23T03:00:04Z")));
        assert!(poll_due(&rec, t("2026-11-23T03:00:05Z")));
        rec.state = DeliveryState::Delivered { at: t("2026-11-23T03:00:05Z") };
        assert!(!poll_due(&rec, t("2026-11-23T03:00:09Z")));
    }

    fn entry(state: EntryState) -> Entry {
        Entry {
            notification: sample_notification(),
            state,
            attempts: 1,
            enqueued_at: t("2026-11-23T03:00:00Z"),
            next_attempt: t("2026-11-23T03:00:00Z"),
            last_error: (state == EntryState::Failed).then(|| "permanent error: HTTP 400".into()),
            receipt: (state == EntryState::Delivered).then(|| Receipt {
                channel: ChannelKind::Sms,
                endpoint: "https://sms-a.example".into(),
                detail: "HTTP 200 OK".into(),
            }),
            finished_at: (state != EntryState::Pending).then(|| t("2026-11-23T03:00:01Z")),
        }
    }

    #[test]
    fn fault_show_says_queued_sent_delivered_or_not_delivered() {
        let at = t("2026-11-23T03:00:07Z");
        assert_eq!(notification_status(&entry(EntryState::Pending), None).delivery, "queued");
        let failed = notification_status(&entry(EntryState::Failed), None);
        assert_eq!((failed.delivery, failed.detail.as_str()), ("not delivered", "permanent error: HTTP 400"));
        let untracked = notification_status(&entry(EntryState::Delivered), None);
        assert_eq!(untracked.delivery, "sent");
        assert_eq!(untracked.sent_at, Some(t("2026-11-23T03:00:01Z")));
        let mut rec = tracked(Some(120));
        assert_eq!(notification_status(&entry(EntryState::Delivered), Some(&rec)).delivery, "sent");
        rec.state = DeliveryState::Delivered { at };
        let s = notification_status(&entry(EntryState::Delivered), Some(&rec));
        assert_eq!((s.delivery, s.delivery_at), ("delivered", Some(at)));
        rec.state = DeliveryState::NotDelivered { at, reason: "not delivered within 2m".into() };
        let s = notification_status(&entry(EntryState::Delivered), Some(&rec));
        assert_eq!((s.delivery, s.detail.as_str()), ("not delivered", "not delivered within 2m"));
        assert_eq!(s.kind, NotificationKind::Alarm.as_str());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcde", "0123456789abcdef"));
        assert!(!same_secret("", "0123456789abcdef"));
    }

    fn write_private(dir: &Path, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn config(secret_file: Option<PathBuf>) -> ReceiptConfig {
        toml::from_str::<ReceiptConfig>(
            r#"gateway = "https://sms-a.example.net/send"
               delivery_timeout = "2m"
               receipt_id_field = "/id"
               status_field = "/status"
               delivered = ["delivered"]
               failed = ["failed", "undeliverable"]"#,
        )
        .map(|mut c| {
            c.callback_secret_file = secret_file;
            c
        })
        .unwrap()
    }

    const GATEWAYS: &[&str] = &["https://sms-a.example.net/send", "https://sms-b.example.net/send"];

    fn gateways() -> Vec<String> {
        GATEWAYS.iter().map(|s| s.to_string()).collect()
    }

    fn build(name: &str, cfg: &ReceiptConfig) -> Result<GatewayRules, ConfigError> {
        GatewayRules::build(name, cfg, &gateways(), Duration::from_secs(5), None)
    }

    #[test]
    fn config_is_checked_against_gateways_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123\n");
        let rules = build("sms-a", &config(Some(secret.clone()))).unwrap();
        assert_eq!(rules.gateway_index, 0);
        assert!(!format!("{rules:?}").contains("0123456789abcdef"), "the secret must not be in Debug output");

        let err = |name: &str, cfg: &ReceiptConfig| build(name, cfg).unwrap_err().to_string();
        assert!(err("sms a", &config(Some(secret.clone()))).contains("receipts.sms a: the name"));
        let mut other = config(Some(secret.clone()));
        other.gateway = "https://elsewhere.example/send".into();
        assert!(err("sms-a", &other).contains("receipts.sms-a.gateway"));
        assert!(err("sms-a", &config(None)).contains("callback_secret_file / status_url"));
        let mut no_id = config(Some(secret.clone()));
        no_id.receipt_id_field = None;
        assert!(err("sms-a", &no_id).contains("receipt_id_field"));
        let short = write_private(dir.path(), "short", "hunter2");
        let msg = err("sms-a", &config(Some(short)));
        assert!(msg.contains("at least 16 characters") && !msg.contains("hunter2"), "{msg}");
        let mut zero = config(Some(secret.clone()));
        zero.delivery_timeout = Some(Duration::ZERO);
        assert!(err("sms-a", &zero).contains("delivery_timeout"));
        let mut polled = config(None);
        polled.status_url = Some("https://sms-a.example.net/status/{{message_id}}".into());
        assert!(build("sms-a", &polled).unwrap().poll.is_some());
        polled.status_url = Some("https://sms-a.example.net/status/{{msgid}}".into());
        assert!(err("sms-a", &polled).contains("status_url"));
    }

    #[test]
    fn status_url_with_inline_key_is_a_secret_in_the_file() {
        let mut cfg = config(None);
        cfg.status_url = Some("https://sms-a.example.net/status/{{message_id}}?key=abc".into());
        cfg.status_headers.insert("Authorization".into(), "Bearer abc".into());
        let found = inline_secrets("sms-a", &cfg);
        assert_eq!(
            found,
            vec!["channels.sms.receipts.sms-a.status_url", "channels.sms.receipts.sms-a.status_headers.Authorization"]
        );
        cfg.status_url = Some("https://sms-a.example.net/status/{{message_id}}?key={{secret:/etc/k}}".into());
        cfg.status_headers.insert("Authorization".into(), "Bearer {{secret:/etc/k}}".into());
        assert!(inline_secrets("sms-a", &cfg).is_empty());
    }

    fn sled() -> (tempfile::TempDir, Arc<dyn Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::SledStorage::open(dir.path(), 1 << 20).unwrap();
        (dir, Arc::new(db))
    }

    #[tokio::test]
    async fn callbacks_are_authenticated_matched_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123");
        let rules = Arc::new(build("sms-a", &config(Some(secret))).unwrap());
        let (_db_dir, storage) = sled();
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let (tracker, mut reports) = ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap();
        tracker.set_rules(vec![rules.clone()]);
        let n = page();
        tracker.track(&n, &rules, "m-7".into()).await.unwrap();
        assert_eq!(tracker.tracked_state(&n.id), Some(DeliveryState::Awaiting));

        let body = br#"{"id": "m-7", "status": "DELIVERED"}"#;
        let json = Some("application/json");
        let good = Some("0123456789abcdef0123");
        assert!(matches!(tracker.callback("sms-b", good, json, body).await, Err(CallbackError::UnknownGateway)));
        assert!(matches!(tracker.callback("sms-a", None, json, body).await, Err(CallbackError::Unauthorized)));
        assert!(matches!(
            tracker.callback("sms-a", Some("0123456789abcdef0124"), json, body).await,
            Err(CallbackError::Unauthorized)
        ));
        assert!(matches!(
            tracker.callback("sms-a", good, json, br#"{"status": "delivered"}"#).await,
            Err(CallbackError::BadReceipt(_))
        ));
        let queued = br#"{"id": "m-7", "status": "queued"}"#;
        assert_eq!(tracker.callback("sms-a", good, json, queued).await.unwrap(), CallbackOutcome::NotFinal);
        assert!(reports.try_recv().is_err(), "nothing final yet");
        clock.advance(Duration::from_secs(7));
        assert_eq!(tracker.callback("sms-a", good, json, body).await.unwrap(), CallbackOutcome::Applied);
        let report = reports.try_recv().unwrap();
        assert_eq!(report.state, DeliveryState::Delivered { at: t("2026-11-23T03:00:07Z") });
        assert_eq!(report.notification.id, n.id);
        assert_eq!(tracker.callback("sms-a", good, json, body).await.unwrap(), CallbackOutcome::Unknown);
        assert!(reports.try_recv().is_err(), "reported once");
        assert_eq!(tracker.for_fault("42").len(), 1);
        assert!(tracker.for_fault("4").is_empty(), "fault 4 is not fault 42");
        assert_eq!(tracker.awaiting_count(), 0);
    }

    #[tokio::test]
    async fn an_awaited_receipt_survives_a_restart_and_its_deadline_still_fires() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123");
        let rules = Arc::new(build("sms-a", &config(Some(secret))).unwrap());
        let db_dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let n = page();
        {
            let storage: Arc<dyn Storage> = Arc::new(crate::store::SledStorage::open(db_dir.path(), 1 << 20).unwrap());
            let (tracker, _reports) = ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap();
            tracker.track(&n, &rules, "m-1".into()).await.unwrap();
        }
        let storage: Arc<dyn Storage> = Arc::new(crate::store::SledStorage::open(db_dir.path(), 1 << 20).unwrap());
        let (tracker, mut reports) = ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap();
        assert_eq!(tracker.awaiting_count(), 1, "the pending receipt was lost in the restart");
        // Sent again after the restart (same idempotency key): the first deadline stays.
        clock.advance(Duration::from_secs(100));
        tracker.track(&n, &rules, "m-2".into()).await.unwrap();
        assert_eq!(tracker.check_deadlines().await, 0);
        clock.advance(Duration::from_secs(20));
        assert_eq!(tracker.check_deadlines().await, 1);
        let report = reports.try_recv().unwrap();
        assert_eq!(
            report.state,
            DeliveryState::NotDelivered { at: t("2026-11-23T03:02:00Z"), reason: "not delivered within 2m".into() }
        );
        // Settled records go after keep_done.
        assert_eq!(tracker.purge().unwrap(), 0);
        assert_eq!(tracker.for_fault("42").len(), 1);
        clock.advance(Duration::from_secs(3601));
        assert_eq!(tracker.purge().unwrap(), 1);
        assert!(tracker.for_fault("42").is_empty());
    }
}

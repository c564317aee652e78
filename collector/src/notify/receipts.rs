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
//!
//! A final state is reported until the pager has persisted it: every record carries a
//! `reported` flag, set only after the pager saved the escalation's verdict, and at start-up
//! every final record not yet reported goes out again (the pager tolerates repeats). A receipt
//! that arrives before the gateway's answer to the send (a fast gateway) is kept for a while
//! and applied when the SMS is tracked.

use std::collections::{BTreeMap, HashSet, VecDeque};
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

/// How much of a gateway's status text goes into reasons, logs and timelines.
pub const MAX_STATUS_CHARS: usize = 64;

/// Receipts for messages not (yet) tracked that are kept, at most: a fast gateway may post
/// its receipt before it answers the send request.
const MAX_EARLY_RECEIPTS: usize = 1024;

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
    /// No receipt within [`WAIT_WITHOUT_TIMEOUT`] from a gateway without `delivery_timeout`,
    /// or the SMS was sent again through a gateway without receipts: accepted counts as
    /// delivered, as without receipts.
    NoReceipt {
        at: Timestamp,
    },
}

impl DeliveryState {
    /// What the escalation learns: delivered (true), failed (false) or nothing yet. Without
    /// a receipt from a gateway without `delivery_timeout`, the acceptance counts (true).
    pub fn escalation_verdict(&self) -> Option<bool> {
        match self {
            DeliveryState::Delivered { .. } | DeliveryState::NoReceipt { .. } => Some(true),
            DeliveryState::NotDelivered { .. } => Some(false),
            DeliveryState::Awaiting => None,
        }
    }

    pub fn is_final(&self) -> bool {
        *self != DeliveryState::Awaiting
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
    /// The final state reached the pager and it persisted the verdict; until then it is
    /// reported again at every start.
    #[serde(default)]
    pub reported: bool,
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
            reason: format!("not delivered: the gateway reported {:?}", status_text(raw)),
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

/// A gateway's status text fit for a reason, a log line and a timeline: control characters
/// left out, at most [`MAX_STATUS_CHARS`] characters (cut ones marked with `…`).
pub fn status_text(raw: &str) -> String {
    let clean: String = raw.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    let mut out: String = clean.chars().take(MAX_STATUS_CHARS).collect();
    if clean.chars().nth(MAX_STATUS_CHARS).is_some() {
        out.push('…');
    }
    out
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

/// Whether `given` is the secret, in time independent of both (their SHA-256 digests,
/// compared in constant time: neither the length nor a matching prefix shows).
fn same_secret(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    bool::from(digest(given).as_ref().ct_eq(digest(expected).as_ref()))
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
                // The same check as the send URLs (`{{...}}` is valid in a URL's path and query).
                http::check_url(kind, &format!("receipts.{name}.status_url"), url)?;
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
    /// No SMS awaits a receipt with this message id (finished already, or unknown). A final
    /// status is kept for a while all the same, for an SMS whose sending is still under way.
    Unknown,
}

/// A callback whose secret was checked ([`ReceiptTracker::authorize`]); only then is its
/// body read.
pub struct Authorized(Arc<GatewayRules>);

/// What [`ReceiptTracker::finish`] did.
#[derive(Debug)]
enum Finish {
    /// Stored, flushed and reported.
    Done,
    /// No longer awaited: something else (the deadline, another receipt) settled it first.
    Gone,
    /// Not stored: still awaited, the state is tried again at the next check.
    NotSaved(ReceiptError),
}

/// A final receipt for a message not tracked (yet), kept until `expires`.
#[derive(Debug, Clone)]
struct Early {
    gateway: String,
    message_id: String,
    raw: String,
    status: ReportedStatus,
    expires: Timestamp,
}

/// Tracks accepted SMS until their delivery is confirmed or given up. One per collector.
pub struct ReceiptTracker {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
    /// By section name; replaced whole by a reload.
    rules: RwLock<Arc<BTreeMap<String, Arc<GatewayRules>>>>,
    /// Those still awaiting a receipt, by notification id (mirrors the tree). Its lock is
    /// held while the tree is written, so the tree sees the changes in the same order.
    awaiting: Mutex<BTreeMap<String, Tracked>>,
    /// Final receipts that matched no awaited SMS, oldest first (at most
    /// [`MAX_EARLY_RECEIPTS`]); taken with the `awaiting` lock held.
    early: Mutex<VecDeque<Early>>,
    /// Final states whose storing failed, by notification id: tried again at every check.
    unsaved: Mutex<BTreeMap<String, DeliveryState>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReceiptTracker {
    /// Opens the tree `sms_receipts` and takes up every SMS still awaiting its receipt.
    /// Final records are kept `keep_done` (for `pikett fault show`); those the pager has not
    /// confirmed ([`ReceiptTracker::mark_reported`]) are reported again at once.
    pub fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        keep_done: Duration,
    ) -> Result<(Arc<ReceiptTracker>, mpsc::UnboundedReceiver<DeliveryReport>), ReceiptError> {
        let tree = storage.tree("sms_receipts").map_err(store_err)?;
        let mut awaiting = BTreeMap::new();
        let mut unreported = Vec::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(store_err)?;
            match decode(&k, &v) {
                Ok(t) if t.state == DeliveryState::Awaiting => {
                    awaiting.insert(t.notification.id.clone(), t);
                }
                Ok(t) if !t.reported => {
                    unreported.push(DeliveryReport { notification: t.notification, state: t.state })
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "delivery receipts: undecodable entry skipped"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if !unreported.is_empty() {
            tracing::info!(count = unreported.len(), "delivery receipts settled before a restart reported again");
        }
        for report in unreported {
            let _ = tx.send(report);
        }
        let tracker = ReceiptTracker {
            storage,
            tree,
            rules: RwLock::new(Arc::default()),
            awaiting: Mutex::new(awaiting),
            early: Mutex::default(),
            unsaved: Mutex::default(),
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
        lock(&self.awaiting)
    }

    /// Number of SMS awaiting their receipt.
    pub fn awaiting_count(&self) -> usize {
        self.awaiting().len()
    }

    fn write(&self, t: &Tracked) -> Result<(), ReceiptError> {
        let value = serde_json::to_vec(t).map_err(store_err)?;
        self.tree.insert(t.notification.id.as_bytes(), value).map_err(store_err)
    }

    /// Starts tracking `n`, just accepted by the gateway of `rules` (stored and flushed
    /// before the outbox records the acceptance). It is awaited from before the flush on, and
    /// a final receipt that came before it (kept by [`ReceiptTracker::callback`]) applies at
    /// once. The same notification sent again (a resend after a restart, same idempotency key)
    /// keeps its first acceptance and deadline, with the gateway and message id of the resend.
    pub async fn track(&self, n: &Notification, rules: &GatewayRules, message_id: String) -> Result<(), ReceiptError> {
        let now = self.clock.now();
        let first_poll = rules.poll.as_ref().map(|p| add(now, p.interval.min(Duration::from_secs(1))));
        let (tracked, early) = {
            let mut awaiting = self.awaiting();
            let previous = awaiting.get(&n.id).cloned();
            let existing = match &previous {
                Some(t) => Some(t.clone()),
                None => match self.tree.get(n.id.as_bytes()).map_err(store_err)? {
                    Some(v) => Some(decode(n.id.as_bytes(), &v)?),
                    None => None,
                },
            };
            let tracked = match existing {
                Some(t) if t.state.is_final() => return Ok(()),
                Some(mut t) => {
                    t.gateway = rules.name.clone();
                    t.message_id = message_id;
                    t.next_poll = first_poll;
                    t
                }
                None => Tracked {
                    notification: n.clone(),
                    gateway: rules.name.clone(),
                    message_id,
                    accepted_at: now,
                    delivery_timeout: rules.delivery_timeout,
                    next_poll: first_poll,
                    state: DeliveryState::Awaiting,
                    reported: false,
                },
            };
            awaiting.insert(n.id.clone(), tracked.clone());
            if let Err(e) = self.write(&tracked) {
                match previous {
                    Some(p) => awaiting.insert(n.id.clone(), p),
                    None => awaiting.remove(&n.id),
                };
                return Err(e);
            }
            (tracked.clone(), self.take_early(&tracked.gateway, &tracked.message_id, now))
        };
        let flushed = self.storage.flush().await.map_err(store_err);
        if let Some(e) = early {
            let event = Event::Reported { status: e.status, raw: &e.raw };
            if let Some(state) = advance(&tracked, event, now) {
                tracing::info!(notification = %n.id, receipts = %tracked.gateway, "a delivery receipt that came before the gateway's answer applies");
                if let Finish::NotSaved(e) = self.finish(&n.id, state).await {
                    tracing::warn!(notification = %n.id, error = %e, "delivery receipts: the early receipt is stored at the next check");
                }
            }
        }
        flushed
    }

    /// The SMS `n` was accepted by a gateway without receipts (sent again through another
    /// gateway after a restart): one still awaiting a receipt from the first gateway never
    /// gets one, so it ends as accepted without receipt, which counts as delivered.
    pub async fn accepted_untracked(&self, n: &Notification) {
        if !self.awaiting().contains_key(&n.id) {
            return;
        }
        let at = self.clock.now();
        if let Finish::NotSaved(e) = self.finish(&n.id, DeliveryState::NoReceipt { at }).await {
            tracing::warn!(notification = %n.id, error = %e, "delivery receipts: stored at the next check");
        }
    }

    /// Keeps a final receipt for a message not awaited (yet). Called with the `awaiting` lock
    /// held, so a [`ReceiptTracker::track`] under way either found it awaited or finds this.
    fn keep_early(&self, gateway: &str, message_id: &str, raw: &str, status: ReportedStatus, now: Timestamp) {
        if message_id.len() > 256 {
            return;
        }
        let wait = self.rules_named(gateway).and_then(|r| r.delivery_timeout).unwrap_or(WAIT_WITHOUT_TIMEOUT);
        let expires = add(now, wait.saturating_mul(2));
        let mut early = lock(&self.early);
        early.retain(|e| e.expires > now);
        if early.len() >= MAX_EARLY_RECEIPTS {
            early.pop_front();
        }
        // One character more than shown, so a cut status is still marked as cut.
        let raw = raw.chars().take(MAX_STATUS_CHARS + 1).collect();
        early.push_back(Early { gateway: gateway.into(), message_id: message_id.into(), raw, status, expires });
    }

    /// The latest final receipt kept for (`gateway`, `message_id`), removed with its older ones.
    fn take_early(&self, gateway: &str, message_id: &str, now: Timestamp) -> Option<Early> {
        let mut early = lock(&self.early);
        early.retain(|e| e.expires > now);
        let mut found = None;
        early.retain(|e| {
            let same = e.gateway == gateway && e.message_id == message_id;
            if same {
                found = Some(e.clone());
            }
            !same
        });
        found
    }

    /// Receipts kept for messages not tracked (yet).
    pub fn early_count(&self) -> usize {
        lock(&self.early).len()
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

    /// Moves `id` to `state` (final): stored, flushed, then reported. When it cannot be
    /// stored it stays awaited and the state is tried again at the next check, so the disk
    /// never says "awaiting" about an SMS the escalation has a verdict on.
    async fn finish(&self, id: &str, state: DeliveryState) -> Finish {
        let (t, written) = {
            let mut awaiting = self.awaiting();
            let Some(mut t) = awaiting.remove(id) else { return Finish::Gone };
            t.state = state.clone();
            t.reported = false;
            let written = self.write(&t);
            (t, written)
        };
        let saved = match written {
            Ok(()) => self.storage.flush().await.map_err(store_err),
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            tracing::error!(notification = %id, error = %e, "delivery receipts: cannot record the final state; trying again");
            let mut back = t;
            back.state = DeliveryState::Awaiting;
            self.awaiting().entry(id.to_string()).or_insert(back);
            lock(&self.unsaved).insert(id.to_string(), state);
            return Finish::NotSaved(e);
        }
        lock(&self.unsaved).remove(id);
        tracing::info!(notification = %id, fault = %t.notification.fault_id, receipts = %t.gateway, state = ?state, "SMS delivery settled");
        let _ = self.reports.send(DeliveryReport { notification: t.notification, state });
        Finish::Done
    }

    /// The pager has persisted the verdict of `id`'s final state: it is not reported again
    /// at the next start (were this lost, the report would go out once more, which the pager
    /// tolerates).
    pub async fn mark_reported(&self, id: &str) -> Result<(), ReceiptError> {
        {
            let _order = self.awaiting();
            let Some(v) = self.tree.get(id.as_bytes()).map_err(store_err)? else { return Ok(()) };
            let mut t = decode(id.as_bytes(), &v)?;
            if !t.state.is_final() || t.reported {
                return Ok(());
            }
            t.reported = true;
            self.write(&t)?;
        }
        self.storage.flush().await.map_err(store_err)
    }

    /// Checks the secret of a receipt posted to `/receipts/sms/{gateway}` (from the path or
    /// the `Authorization: Bearer` header), before its body is read.
    pub fn authorize(&self, gateway: &str, secret: Option<&str>) -> Result<Authorized, CallbackError> {
        let rules = self.rules_named(gateway).ok_or(CallbackError::UnknownGateway)?;
        let callback = rules.callback.as_ref().ok_or(CallbackError::UnknownGateway)?;
        if !secret.is_some_and(|s| same_secret(s, &callback.secret)) {
            return Err(CallbackError::Unauthorized);
        }
        Ok(Authorized(rules))
    }

    /// The body of an authorized receipt.
    pub async fn receipt(
        &self,
        authorized: &Authorized,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<CallbackOutcome, CallbackError> {
        let rules = &authorized.0;
        let Some(callback) = rules.callback.as_ref() else { return Err(CallbackError::UnknownGateway) };
        let id = extract(body, content_type, &callback.id_field)
            .ok_or_else(|| CallbackError::BadReceipt("the receipt has no message id at receipt_id_field".into()))?;
        let raw = extract(body, content_type, &rules.status_field)
            .ok_or_else(|| CallbackError::BadReceipt("the receipt has no status at status_field".into()))?;
        Ok(self.report(&rules.name, &id, &raw, &rules.statuses).await?)
    }

    /// [`ReceiptTracker::authorize`], then [`ReceiptTracker::receipt`].
    pub async fn callback(
        &self,
        gateway: &str,
        secret: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<CallbackOutcome, CallbackError> {
        let authorized = self.authorize(gateway, secret)?;
        self.receipt(&authorized, content_type, body).await
    }

    /// A status `raw` reported for message `message_id` of gateway section `gateway`. A final
    /// one for a message not awaited is kept for a while (see [`ReceiptTracker::track`]).
    async fn report(
        &self,
        gateway: &str,
        message_id: &str,
        raw: &str,
        statuses: &StatusMap,
    ) -> Result<CallbackOutcome, ReceiptError> {
        let now = self.clock.now();
        let status = statuses.classify(raw);
        let found = {
            let awaiting = self.awaiting();
            let found = awaiting
                .values()
                .find(|t| t.gateway == gateway && t.message_id == message_id)
                .map(|t| (t.notification.id.clone(), advance(t, Event::Reported { status, raw }, now)));
            if found.is_none() && status != ReportedStatus::Pending {
                self.keep_early(gateway, message_id, raw, status, now);
            }
            found
        };
        match found {
            None => {
                tracing::debug!(receipts = %gateway, "receipt for a message not awaiting one kept for a while");
                Ok(CallbackOutcome::Unknown)
            }
            Some((_, None)) => Ok(CallbackOutcome::NotFinal),
            Some((id, Some(state))) => match self.finish(&id, state).await {
                Finish::Done => Ok(CallbackOutcome::Applied),
                Finish::Gone => Ok(CallbackOutcome::Unknown),
                Finish::NotSaved(e) => Err(e),
            },
        }
    }

    /// Final states not stored yet are stored again, then deadlines passed at the clock's
    /// now: each SMS past its `delivery_timeout` is reported not delivered. Returns how many
    /// settled.
    pub async fn check_deadlines(&self) -> usize {
        let mut settled = 0;
        let retry: Vec<(String, DeliveryState)> =
            lock(&self.unsaved).iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        for (id, state) in retry {
            match self.finish(&id, state).await {
                Finish::Done => settled += 1,
                Finish::Gone => {
                    lock(&self.unsaved).remove(&id);
                }
                Finish::NotSaved(_) => {}
            }
        }
        let now = self.clock.now();
        let due: Vec<(String, DeliveryState)> = {
            let unsaved = lock(&self.unsaved);
            self.awaiting()
                .values()
                .filter(|t| !unsaved.contains_key(&t.notification.id))
                .filter_map(|t| advance(t, Event::Tick, now).map(|s| (t.notification.id.clone(), s)))
                .collect()
        };
        for (id, state) in due {
            if let Finish::Done = self.finish(&id, state).await {
                settled += 1;
            }
        }
        settled
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
        if let Some(raw) = self.ask_status(&t, &rules).await
            && let Err(e) = self.report(&rules.name, &t.message_id, &raw, &rules.statuses).await
        {
            tracing::warn!(receipts = %rules.name, error = %e, "delivery receipts: the status answer is stored at the next check");
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
        let body = http::read_capped(&mut response, MAX_RECEIPT_BYTES).await.ok()?;
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
            reported: false,
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
    fn without_delivery_timeout_the_wait_ends_as_no_receipt_which_counts_as_delivered() {
        let rec = tracked(None);
        assert_eq!(advance(&rec, Event::Tick, t("2026-11-23T03:59:59Z")), None);
        let at = t("2026-11-23T04:00:00Z");
        let state = advance(&rec, Event::Tick, at).unwrap();
        assert_eq!(state, DeliveryState::NoReceipt { at });
        // Accepted without a receipt counts as delivered (as documented), so the escalation's
        // step does not stay "sent" for ever.
        assert_eq!(state.escalation_verdict(), Some(true));
        assert_eq!(DeliveryState::Awaiting.escalation_verdict(), None);
        assert_eq!(DeliveryState::Delivered { at }.escalation_verdict(), Some(true));
        assert_eq!(DeliveryState::NotDelivered { at, reason: String::new() }.escalation_verdict(), Some(false));
    }

    #[test]
    fn the_gateways_status_text_is_cut_and_cleaned_before_reasons_logs_and_timelines() {
        let now = t("2026-11-23T03:00:05Z");
        let raw = format!("UNDELIV\n\x1b[31mforged line{}", "x".repeat(500));
        let failed = Event::Reported { status: ReportedStatus::Failed, raw: &raw };
        let Some(DeliveryState::NotDelivered { reason, .. }) = advance(&tracked(Some(120)), failed, now) else {
            panic!("a failed status must settle the SMS");
        };
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.len() < 120, "{} bytes: {reason}", reason.len());
        assert!(reason.contains("UNDELIV[31mforged line"), "{reason}");
        assert_eq!(status_text(&"é".repeat(MAX_STATUS_CHARS)), "é".repeat(MAX_STATUS_CHARS), "not cut");
        assert_eq!(status_text(&"é".repeat(MAX_STATUS_CHARS + 1)), format!("{}…", "é".repeat(MAX_STATUS_CHARS)));
        assert_eq!(status_text(" DELIVRD\r\n"), "DELIVRD");
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
        assert!(!same_secret("0123456789abcdef0", "0123456789abcdef"), "a longer one is not the secret");
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
        // The same URL check as the send URLs.
        polled.status_url = Some("ftp://sms-a.example.net/status/{{message_id}}".into());
        let msg = err("sms-a", &polled);
        assert!(msg.contains("receipts.sms-a.status_url") && msg.contains("expected http or https"), "{msg}");
        polled.status_url = Some("https://sms a.example.net/{{message_id}}".into());
        assert!(err("sms-a", &polled).contains("not a valid URL"));
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

    fn open_at(dir: &Path, clock: &Arc<ManualClock>) -> (Arc<ReceiptTracker>, mpsc::UnboundedReceiver<DeliveryReport>) {
        let storage: Arc<dyn Storage> = Arc::new(crate::store::SledStorage::open(dir, 1 << 20).unwrap());
        ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap()
    }

    #[tokio::test]
    async fn a_verdict_not_confirmed_by_the_pager_is_reported_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            Arc::new(build("sms-a", &config(Some(write_private(dir.path(), "s", "0123456789abcdef0123")))).unwrap());
        let db_dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let n = page();
        {
            let (tracker, mut reports) = open_at(db_dir.path(), &clock);
            tracker.track(&n, &rules, "m-1".into()).await.unwrap();
            clock.advance(Duration::from_secs(120));
            assert_eq!(tracker.check_deadlines().await, 1);
            assert!(reports.try_recv().is_ok(), "reported in memory");
            // The collector dies here: before the pager saved the escalation.
        }
        let at = t("2026-11-23T03:02:00Z");
        let want = DeliveryState::NotDelivered { at, reason: "not delivered within 2m".into() };
        {
            let (tracker, mut reports) = open_at(db_dir.path(), &clock);
            let again = reports.try_recv().expect("the verdict was lost in the restart");
            assert_eq!((again.notification.id.as_str(), &again.state), (n.id.as_str(), &want));
            assert!(reports.try_recv().is_err());
            assert_eq!(tracker.awaiting_count(), 0);
            tracker.mark_reported(&n.id).await.unwrap();
            tracker.mark_reported("no/such").await.unwrap();
        }
        let (tracker, mut reports) = open_at(db_dir.path(), &clock);
        assert!(reports.try_recv().is_err(), "reported again although the pager saved it");
        assert_eq!(tracker.tracked_state(&n.id), Some(want));
    }

    /// Sled whose flush fails while `fail` is set.
    struct FlakyStorage {
        inner: crate::store::SledStorage,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Storage for FlakyStorage {
        fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, crate::store::StoreError> {
            self.inner.tree(name)
        }
        async fn flush(&self) -> Result<(), crate::store::StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::Engine("disk on fire".into()));
            }
            self.inner.flush().await
        }
        fn size_on_disk(&self) -> Result<u64, crate::store::StoreError> {
            self.inner.size_on_disk()
        }
    }

    #[tokio::test]
    async fn a_final_state_that_cannot_be_stored_stays_awaited_and_is_stored_at_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123");
        let rules = Arc::new(build("sms-a", &config(Some(secret))).unwrap());
        let db_dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(FlakyStorage {
            inner: crate::store::SledStorage::open(db_dir.path(), 1 << 20).unwrap(),
            fail: Default::default(),
        });
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let (tracker, mut reports) = ReceiptTracker::open(storage.clone(), clock.clone(), Duration::ZERO).unwrap();
        tracker.set_rules(vec![rules.clone()]);
        let n = page();
        tracker.track(&n, &rules, "m-7".into()).await.unwrap();
        storage.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        clock.advance(Duration::from_secs(5));
        let body = br#"{"id": "m-7", "status": "DELIVERED"}"#;
        let outcome = tracker.callback("sms-a", Some("0123456789abcdef0123"), Some("application/json"), body).await;
        assert!(matches!(outcome, Err(CallbackError::Store(_))), "{outcome:?}: the gateway must send it again");
        assert!(reports.try_recv().is_err(), "reported although not stored");
        assert_eq!(tracker.tracked_state(&n.id), Some(DeliveryState::Awaiting), "it left memory unstored");
        assert_eq!(tracker.awaiting_count(), 1);
        // Past the deadline: the receipt's verdict is kept, not replaced by the deadline's.
        clock.advance(Duration::from_secs(200));
        assert_eq!(tracker.check_deadlines().await, 0, "still failing");
        storage.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(tracker.check_deadlines().await, 1);
        let delivered = DeliveryState::Delivered { at: t("2026-11-23T03:00:05Z") };
        assert_eq!(reports.try_recv().map(|r| r.state).ok(), Some(delivered.clone()));
        assert!(reports.try_recv().is_err(), "reported once");
        assert_eq!(tracker.tracked_state(&n.id), Some(delivered));
        assert_eq!(tracker.awaiting_count(), 0);
    }

    #[tokio::test]
    async fn a_receipt_that_comes_before_the_gateways_answer_applies_when_the_sms_is_tracked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123");
        let rules = Arc::new(build("sms-a", &config(Some(secret))).unwrap());
        let (_db_dir, storage) = sled();
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let (tracker, mut reports) = ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap();
        tracker.set_rules(vec![rules.clone()]);
        let good = Some("0123456789abcdef0123");
        let json = Some("application/json");
        // A status that is not final is not kept; a final one is.
        let queued = br#"{"id": "m-9", "status": "queued"}"#;
        assert_eq!(tracker.callback("sms-a", good, json, queued).await.unwrap(), CallbackOutcome::Unknown);
        assert_eq!(tracker.early_count(), 0);
        let body = br#"{"id": "m-9", "status": "DELIVERED"}"#;
        assert_eq!(tracker.callback("sms-a", good, json, body).await.unwrap(), CallbackOutcome::Unknown);
        assert_eq!(tracker.early_count(), 1);
        clock.advance(Duration::from_secs(1));
        let n = page();
        tracker.track(&n, &rules, "m-9".into()).await.unwrap();
        let report = reports.try_recv().expect("the early receipt was lost");
        assert_eq!(report.state, DeliveryState::Delivered { at: t("2026-11-23T03:00:01Z") });
        assert_eq!(tracker.awaiting_count(), 0);
        assert_eq!(tracker.early_count(), 0, "used up");

        // Kept for twice delivery_timeout only, and at most MAX_EARLY_RECEIPTS of them.
        let late = br#"{"id": "m-10", "status": "DELIVERED"}"#;
        tracker.callback("sms-a", good, json, late).await.unwrap();
        clock.advance(Duration::from_secs(241));
        let mut other = page();
        other.id = "42/2".into();
        tracker.track(&other, &rules, "m-10".into()).await.unwrap();
        assert!(reports.try_recv().is_err(), "an expired receipt applied");
        assert_eq!(tracker.tracked_state(&other.id), Some(DeliveryState::Awaiting));
        for i in 0..MAX_EARLY_RECEIPTS + 10 {
            let body = format!(r#"{{"id": "x-{i}", "status": "failed"}}"#);
            tracker.callback("sms-a", good, json, body.as_bytes()).await.unwrap();
        }
        assert_eq!(tracker.early_count(), MAX_EARLY_RECEIPTS);
    }

    #[tokio::test]
    async fn a_resend_through_another_gateway_is_awaited_there_from_the_first_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_private(dir.path(), "secret", "0123456789abcdef0123");
        let a = Arc::new(build("sms-a", &config(Some(secret.clone()))).unwrap());
        let mut cfg_b = config(None);
        cfg_b.gateway = GATEWAYS[1].into();
        cfg_b.status_url = Some("https://sms-b.example.net/status/{{message_id}}".into());
        let b = Arc::new(build("sms-b", &cfg_b).unwrap());
        let (_db_dir, storage) = sled();
        let clock = Arc::new(ManualClock::new(t("2026-11-23T03:00:00Z")));
        let (tracker, mut reports) = ReceiptTracker::open(storage, clock.clone(), Duration::from_secs(3600)).unwrap();
        tracker.set_rules(vec![a.clone(), b.clone()]);
        let n = page();
        tracker.track(&n, &a, "a-1".into()).await.unwrap();
        clock.advance(Duration::from_secs(30));
        tracker.track(&n, &b, "b-1".into()).await.unwrap();
        let rec = tracker.for_fault("42").pop().unwrap();
        assert_eq!((rec.gateway.as_str(), rec.message_id.as_str()), ("sms-b", "b-1"));
        assert_eq!(rec.accepted_at, t("2026-11-23T03:00:00Z"), "the first acceptance stays");
        assert_eq!(rec.next_poll, Some(t("2026-11-23T03:00:31Z")), "polled at sms-b");
        // sms-b's status answer is matched: by its gateway and message id.
        let outcome = tracker.report("sms-b", "b-1", "delivered", &StatusMap::new(&["delivered".into()], &[])).await;
        assert_eq!(outcome.unwrap(), CallbackOutcome::Applied);
        assert!(matches!(reports.try_recv().map(|r| r.state), Ok(DeliveryState::Delivered { .. })));

        // Sent again through a gateway without receipts: accepted without receipt.
        let mut other = page();
        other.id = "42/3".into();
        tracker.track(&other, &a, "a-2".into()).await.unwrap();
        tracker.accepted_untracked(&other).await;
        let state = reports.try_recv().map(|r| r.state).unwrap();
        assert_eq!(state, DeliveryState::NoReceipt { at: t("2026-11-23T03:00:30Z") });
        assert_eq!(state.escalation_verdict(), Some(true));
    }
}

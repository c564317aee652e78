//! The `[redfish]` probe: hardware health, sensors, logs and inventory from any
//! Redfish BMC (tested against captures of Dell iDRAC9, Lenovo XClarity Controller and
//! Supermicro BMCs).
//!
//! Everything is discovered by following links from the service root
//! (`/redfish/v1`); no vendor path is hard-coded. One poll reads the systems
//! (health, power state, memory/processor roll-ups, storage), the chassis
//! (new `Sensors`/`ThermalSubsystem`/`PowerSubsystem` first, old
//! `Thermal`/`Power` as fallback, merged so no sensor is reported twice; sensors
//! identified per chassis and resource, so several sharing one `Name` stay apart) and
//! the managers and systems (firmware, hardware event logs, active-fault lists). Any
//! failure becomes an UNKNOWN check whose summary says why.
//!
//! Output (names are public interface):
//! - checks `redfish/system`, `redfish/memory`, `redfish/processor`,
//!   `redfish/storage/<Storage Id>`, `redfish/drive/<Drive Id up to ':'>`,
//!   `redfish/thermal/<name>`, `redfish/fan/<name>`, `redfish/voltage/<name>`,
//!   `redfish/power/<name>`, `redfish/psu/<name>`, `redfish/faults` (Dell
//!   `FaultList`, Lenovo `ActiveLog`), `redfish/bmc` (was every resource readable,
//!   requests, time);
//! - samples `pikett_redfish_temperature_celsius` (`Cel`),
//!   `pikett_redfish_fan_speed_rpm` (`RPM`) / `pikett_redfish_fan_speed_percent` (`%`),
//!   `pikett_redfish_voltage_volts` (`V`), `pikett_redfish_power_watts` (`W`), all
//!   labelled `sensor`; `pikett_redfish_psu_input_watts` / `_output_watts` (`W`,
//!   label `psu`); `pikett_redfish_drive_life_left_percent` (`%`, label `drive`);
//! - events from `redfish/sel` (IPMI SEL of any vendor, Supermicro's health event
//!   log), `redfish/lclog` (Dell Lifecycle), `redfish/iml` and `redfish/iel` (HPE),
//!   `redfish/platformlog` (Lenovo); inventory `hardware`.

mod client;
mod logs;
mod readings;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::observation::{Event, Inventory, Observation, State};
use crate::probes::password_file::{PasswordFileError, read_password_file};
use crate::probes::{Probe, SharedState, StateUpdate};

use client::{Auth, Client};
use logs::{Cursor, Entry, Scan};
use readings::{Context, Kind, Reading, component_state, describe_component, fmt_num, normalise, num, text};

pub use crate::errors::error_chain;

const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether collections are fetched with `$expand` (one request instead of one per member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExpandMode {
    /// Use `$expand` when the service root's `ProtocolFeaturesSupported` advertises it.
    #[default]
    Auto,
    /// Always use `$expand=.($levels=1)`.
    On,
    /// Never use `$expand`.
    Off,
}

/// The `[redfish]` config section (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedfishConfig {
    /// `https://idrac.example` (scheme and host; paths come from discovery).
    pub endpoint: String,
    pub username: String,
    /// File holding the password (trailing newline ignored); must not be world-readable.
    pub password_file: PathBuf,
    /// PEM bundle of CAs to verify the BMC's certificate against (instead of the system
    /// roots, not in addition: a private CA's BMC is not also trusted with a public CA's
    /// certificate for its name).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name to verify the certificate for, when it is not the endpoint's host (BMC
    /// certificates name the BMC, `idrac-F54P1G3`, not the address used to reach it).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Trust exactly the certificate with this SHA-256 (`"sha256:AB:CD:…"`; the output of
    /// `openssl x509 -noout -fingerprint -sha256`, `sha256 Fingerprint=AB:CD:…`, is taken
    /// as it is), whatever its issuer, name and dates: for the BMC's own self-signed
    /// certificate. Not together with `ca_file` or `server_name`.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Skip certificate verification (explicit, logged as a warning).
    #[serde(default)]
    pub tls_insecure: bool,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Per request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// For a whole poll (all requests); past it the poll reports UNKNOWN.
    #[serde(default = "default_poll_timeout", with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Requests in flight at once (iDRACs are slow and limit sessions).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// A response larger than this is refused (the body is read only up to the cap).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    #[serde(default)]
    pub expand: ExpandMode,
    /// Pages of a log collection read per poll when many entries are new.
    #[serde(default = "default_max_log_pages")]
    pub max_log_pages: usize,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_poll_timeout() -> Duration {
    Duration::from_secs(50)
}
fn default_max_concurrency() -> usize {
    2
}
fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_max_log_pages() -> usize {
    10
}

impl RedfishConfig {
    /// A config with every optional key at its default.
    pub fn new(endpoint: impl Into<String>, username: impl Into<String>, password_file: impl Into<PathBuf>) -> Self {
        RedfishConfig {
            endpoint: endpoint.into(),
            username: username.into(),
            password_file: password_file.into(),
            ca_file: None,
            server_name: None,
            tls_fingerprint: None,
            tls_insecure: false,
            interval: default_interval(),
            timeout: default_timeout(),
            poll_timeout: default_poll_timeout(),
            max_concurrency: default_max_concurrency(),
            max_response_bytes: default_max_response_bytes(),
            expand: ExpandMode::Auto,
            max_log_pages: default_max_log_pages(),
        }
    }
}

/// Errors of the Redfish probe: configuration (from [`RedfishProbe::new`]) and requests (in summaries).
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error("redfish: cannot read password_file {path}: {source}{hint}")]
    PasswordFile { path: PathBuf, source: std::io::Error, hint: String },
    #[error("redfish: password_file {path} is empty")]
    EmptyPassword { path: PathBuf },
    #[error(
        "redfish: password_file {path} is readable by everyone (mode {mode:o}); as root run `chgrp {group} {word} && chmod 0640 {word}` (the service's group may read it, nobody else)"
    )]
    WorldReadable { path: PathBuf, mode: u32, group: String, word: String },
    #[error("redfish: cannot read ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("redfish: invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("redfish: cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{method} {url}: no answer within {after:?} (timeout)")]
    Timeout { method: String, url: String, after: Duration },
    #[error("{method} {url}: HTTP {status} {body}")]
    Status { method: String, url: String, status: u16, body: String },
    #[error("{url}: credentials rejected by the BMC (HTTP 401); check username and password_file")]
    Unauthorized { url: String },
    #[error("GET {url}: response larger than max_response_bytes ({limit} bytes); refused")]
    TooLarge { url: String, limit: u64 },
    #[error("GET {url}: malformed JSON: {reason}")]
    Json { url: String, reason: String },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
}

/// The Redfish probe. Build with [`RedfishProbe::new`]; the agent polls it through [`Probe`].
pub struct RedfishProbe {
    cfg: RedfishConfig,
    state: SharedState,
    client: Arc<Client>,
    /// Where each log was read up to in this process (the state store has it after a restart).
    cursors: Mutex<HashMap<String, Cursor>>,
    /// Cursors the poll in progress moved; applied only when the poll completes.
    polled_cursors: Mutex<Vec<(String, Cursor)>>,
    /// Cursor changes for the spool, written with the events they cover ([`Probe::take_state`]).
    staged: Vec<StateUpdate>,
    /// The session URL last remembered in the state store, so that a process killed
    /// before its logout has its session deleted by the next one.
    remembered_session: tokio::sync::Mutex<Option<String>>,
}

/// Reads the password file with the rules of [`read_password_file`].
fn read_password(path: &Path) -> Result<String, RedfishError> {
    read_password_file(path).map_err(RedfishError::from)
}

impl From<PasswordFileError> for RedfishError {
    fn from(e: PasswordFileError) -> Self {
        match e {
            PasswordFileError::Unreadable { path, source, hint } => RedfishError::PasswordFile { path, source, hint },
            PasswordFileError::Empty { path } => RedfishError::EmptyPassword { path },
            PasswordFileError::WorldReadable { path, mode, group, word } => {
                RedfishError::WorldReadable { path, mode, group, word }
            }
        }
    }
}

impl RedfishProbe {
    /// Validates the config, reads the password and CA files and builds the HTTP client (no request is sent).
    pub fn new(cfg: RedfishConfig, state: SharedState) -> Result<RedfishProbe, RedfishError> {
        let url = reqwest::Url::parse(&cfg.endpoint)
            .map_err(|e| RedfishError::Config { field: "endpoint", reason: format!("{:?}: {e}", cfg.endpoint) })?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(RedfishError::Config {
                field: "endpoint",
                reason: format!("{:?} is not an https:// URL with a host", cfg.endpoint),
            });
        }
        if cfg.max_concurrency == 0 {
            return Err(RedfishError::Config { field: "max_concurrency", reason: "must be at least 1".into() });
        }
        if cfg.timeout.is_zero() || cfg.poll_timeout.is_zero() || cfg.interval.is_zero() {
            return Err(RedfishError::Config {
                field: "timeout",
                reason: "interval, timeout and poll_timeout must be greater than zero".into(),
            });
        }
        if cfg.max_response_bytes < 1024 {
            return Err(RedfishError::Config { field: "max_response_bytes", reason: "must be at least 1024".into() });
        }
        if cfg.tls_insecure && (cfg.ca_file.is_some() || cfg.server_name.is_some() || cfg.tls_fingerprint.is_some()) {
            return Err(RedfishError::Config {
                field: "tls_insecure",
                reason: "tls_insecure = true turns verification off; it cannot go with ca_file, server_name or tls_fingerprint"
                    .into(),
            });
        }
        if cfg.tls_fingerprint.is_some() && (cfg.ca_file.is_some() || cfg.server_name.is_some()) {
            return Err(RedfishError::Config {
                field: "tls_fingerprint",
                reason: "a pinned certificate is trusted whatever its issuer and name: set either tls_fingerprint or ca_file/server_name".into(),
            });
        }
        let password = read_password(&cfg.password_file)?;

        // reqwest is built without a default crypto provider; the agent uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.max_concurrency)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) =
            tls::client_tls(cfg.ca_file.as_deref(), cfg.server_name.as_deref(), cfg.tls_fingerprint.as_deref())?
        {
            builder = builder.tls_backend_preconfigured(tls);
        }
        if cfg.tls_insecure {
            tracing::warn!(endpoint = %cfg.endpoint, "redfish: tls_insecure = true, the BMC's certificate is NOT verified");
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if url.scheme() == "http" {
            tracing::warn!(endpoint = %cfg.endpoint, "redfish: plain http endpoint, the password crosses the network unencrypted");
        }
        let http = builder.build().map_err(|e| RedfishError::Client(error_chain(&e)))?;
        let base = format!("{}://{}", url.scheme(), url.authority());
        let client = Client::new(
            http,
            base,
            cfg.username.clone(),
            password,
            cfg.max_concurrency,
            cfg.timeout,
            cfg.max_response_bytes,
        );
        let remembered = state.load(&session_key(&cfg.endpoint)).and_then(|b| String::from_utf8(b).ok());
        if let Some(previous) = remembered.as_ref().filter(|l| !l.is_empty()) {
            client.delete_at_login(previous.clone());
        }
        Ok(RedfishProbe {
            cfg,
            state,
            client,
            cursors: Mutex::default(),
            polled_cursors: Mutex::default(),
            staged: Vec::new(),
            remembered_session: tokio::sync::Mutex::new(remembered),
        })
    }

    /// HTTP requests sent since the probe was built (logins and logouts included).
    pub fn request_count(&self) -> u64 {
        self.client.request_count()
    }

    /// True while the probe holds a SessionService session.
    pub async fn has_session(&self) -> bool {
        matches!(self.client.auth().await, Auth::Session { .. })
    }

    async fn poll_inner(&self, now: Timestamp) -> Vec<Observation> {
        let started = Instant::now();
        let requests_before = self.client.request_count();
        let poll = Poll {
            client: &self.client,
            expand: None,
            errors: Mutex::new(Vec::new()),
            fetched: Mutex::new(0),
            logs_read: Mutex::default(),
        };
        let root = match self.client.get("/redfish/v1").await {
            Ok(r) => r,
            Err(e) => return self.fatal(now, &e).await,
        };
        self.client.set_sessions_url(link(&root, "/Links/Sessions")).await;
        if let Err(e) = self.client.ensure_login().await {
            return self.fatal(now, &e).await;
        }
        self.remember_session().await;
        let poll = Poll { expand: expand_query(self.cfg.expand, &root), ..poll };

        let (systems, chassis, managers) = futures::join!(
            poll.members_of(&root, "Systems"),
            poll.members_of(&root, "Chassis"),
            poll.members_of(&root, "Managers"),
        );
        // Without any system there is nothing to monitor: say why.
        if systems.is_empty() {
            let why = poll.errors.lock().map(|e| e.join("; ")).unwrap_or_default();
            let summary = if why.is_empty() { "the service root lists no ComputerSystem".to_string() } else { why };
            return vec![Observation::check("redfish/system", State::Unknown, summary, now)];
        }

        let (service_tag, is_serial) = match service_tag(&root, &systems, &chassis) {
            Some((tag, is_serial)) => (Some(tag), is_serial),
            None => (None, false),
        };
        let power_state = text(systems[0].get("PowerState"));
        let ctx = Context {
            service_tag: service_tag.clone(),
            is_serial,
            power_off: power_state.clone().filter(|p| p != "On"),
        };
        let multi = systems.len() > 1;
        let (system_obs, chassis_obs, manager_obs) = futures::join!(
            join_all(systems.iter().map(|s| poll.system(s, multi, &ctx, now))),
            poll.chassis(&chassis, &ctx, now),
            // Logs live under the managers (iDRAC) or the systems (many other BMCs).
            join_all(
                managers
                    .iter()
                    .chain(systems.iter().filter(|s| s.get("LogServices").is_some_and(Value::is_object)))
                    .map(|m| self.manager(&poll, m, &ctx, now))
            ),
        );
        let mut out: Vec<Observation> = system_obs.into_iter().flatten().collect();
        out.extend(chassis_obs);
        out.extend(manager_obs.into_iter().flatten());

        let bmc_firmware = managers.iter().find_map(|m| text(m.get("FirmwareVersion")));
        let sys = &systems[0];
        let text = |v: Option<&Value>| text(v).filter(|s| !s.trim().is_empty());
        out.push(Observation::Inventory(Inventory {
            name: "hardware".into(),
            data: json!({
                "vendor": text(sys.get("Manufacturer")),
                "model": text(sys.get("Model")),
                "service_tag": service_tag,
                "serial_number": text(sys.get("SerialNumber"))
                    .or_else(|| chassis.iter().find_map(|c| text(c.get("SerialNumber")))),
                "bios_version": text(sys.get("BiosVersion")),
                "bmc_firmware": bmc_firmware,
                "bmc_model": managers.iter().find_map(|m| text(m.get("Model"))),
                "power_state": power_state,
                "redfish_version": text(root.get("RedfishVersion")),
                "hostname": text(sys.get("HostName")),
            }),
            time: now,
        }));

        let errors = poll.errors.into_inner().unwrap_or_default();
        let fetched = poll.fetched.into_inner().unwrap_or_default();
        let requests = self.client.request_count() - requests_before;
        let took = started.elapsed().as_secs_f64();
        let (state, summary) = if errors.is_empty() {
            (State::Ok, format!("read {fetched} resources with {requests} requests in {took:.1} s"))
        } else {
            (
                State::Unknown,
                format!("{} of {} resources unreadable: {}", errors.len(), fetched + errors.len(), errors.join("; ")),
            )
        };
        out.push(Observation::check("redfish/bmc", state, summary, now));
        out
    }

    /// Keeps the URL of the session held in the state store (empty when none), so the
    /// next process can delete it if this one is killed before its logout.
    async fn remember_session(&self) {
        let current = self.client.session_location().await.unwrap_or_default();
        let mut remembered = self.remembered_session.lock().await;
        if remembered.as_deref().unwrap_or_default() != current {
            if let Err(e) = self.state.save(&session_key(&self.cfg.endpoint), current.as_bytes()) {
                tracing::warn!(error = %e, "redfish: cannot remember the session in the state store");
            }
            *remembered = Some(current);
        }
    }

    /// The whole poll failed (root unreadable, login refused): one UNKNOWN `redfish/system`.
    async fn fatal(&self, now: Timestamp, e: &RedfishError) -> Vec<Observation> {
        tracing::warn!(endpoint = %self.cfg.endpoint, error = %e, "redfish poll failed");
        // The session's state is unknown after a transport failure: give its slot back.
        if matches!(e, RedfishError::Timeout { .. } | RedfishError::Transport { .. }) {
            let c = self.client.clone();
            tokio::spawn(async move { c.logout().await });
        }
        let summary = format!("BMC {} unreadable: {e}", self.cfg.endpoint);
        vec![
            Observation::check("redfish/system", State::Unknown, summary.clone(), now),
            Observation::check("redfish/bmc", State::Unknown, summary, now),
        ]
    }

    /// A manager's (or system's) logs (new SEL and Lifecycle entries as events) and Dell's active-fault list.
    async fn manager(&self, poll: &Poll<'_>, m: &Value, ctx: &Context, now: Timestamp) -> Vec<Observation> {
        let services = match m.get("LogServices").filter(|l| l.is_object()) {
            Some(_) => poll.members_of(m, "LogServices").await,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for svc in &services {
            let Some(entries) = link(svc, "/Entries") else {
                continue;
            };
            // A BMC may list one log under both its manager and its system (Lenovo).
            if !poll.logs_read.lock().map(|mut l| l.insert(entries.clone())).unwrap_or(true) {
                continue;
            }
            match classify_log(svc) {
                Some(LogKind::Faults) => out.extend(poll.faults(&entries, ctx, now).await),
                Some(LogKind::Events(source)) => out.extend(self.log_events(poll, source, &entries).await),
                None => {}
            }
        }
        out
    }

    /// New entries of one log since the persisted cursor, oldest first. The cursor moves
    /// only when the whole poll completes (see `poll`), and reaches the spool with the events.
    async fn log_events(&self, poll: &Poll<'_>, source: &str, entries_path: &str) -> Vec<Observation> {
        let key = format!("redfish/cursor/{}{}", self.cfg.endpoint.trim_end_matches('/'), entries_path);
        let remembered = self.cursors.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let cursor: Option<Cursor> =
            remembered.or_else(|| self.state.load(&key).and_then(|b| serde_json::from_slice(&b).ok()));
        let Some(first) = poll.get(entries_path).await else {
            return Vec::new();
        };
        let mut first_entries: Vec<Entry> = readings::array(&first, "Members").filter_map(Entry::from_json).collect();
        let mut next = LogPages::Links(text(first.get("Members@odata.nextLink")));
        // Lenovo and Supermicro list entries oldest first: the newest are at the end, on
        // the last page when the log is paged. Read from there backwards with `$skip`.
        if logs::oldest_first(&first_entries) {
            let page_len = readings::array(&first, "Members").count() as u64;
            let total = first.get("Members@odata.count").and_then(Value::as_u64);
            let has_next = matches!(next, LogPages::Links(Some(_)));
            let mut last_page = None;
            if let Some(total) = total.filter(|t| *t > page_len && page_len > 0) {
                let skip = total - page_len;
                let path = with_query(entries_path, &format!("$skip={skip}"));
                let Some(page) = poll.get(&path).await else {
                    tracing::warn!(log = source, page = %path, "redfish log page unreadable; this log is read again next poll");
                    return Vec::new();
                };
                let es: Vec<Entry> = readings::array(&page, "Members").filter_map(Entry::from_json).collect();
                // A BMC that ignores `$skip` answers with the first page again.
                if es.first().map(|e| &e.id) != first_entries.first().map(|e| &e.id) {
                    last_page = Some((es, LogPages::Backwards { skip, len: page_len }));
                }
            }
            match last_page {
                Some((es, pages)) => {
                    first_entries = es;
                    next = pages;
                }
                None if has_next => {
                    // No usable count or `$skip`: walk forward to the end of the log.
                    let mut all = std::mem::take(&mut first_entries);
                    let mut link = text(first.get("Members@odata.nextLink"));
                    let mut pages = 1;
                    while let Some(n) = link.take() {
                        if pages >= self.cfg.max_log_pages {
                            tracing::warn!(
                                log = source,
                                max_log_pages = self.cfg.max_log_pages,
                                "redfish log lists oldest first without a usable Members@odata.count or $skip, and is longer than max_log_pages pages: its newest entries cannot be found; raise max_log_pages"
                            );
                            return Vec::new();
                        }
                        let Some(page) = poll.get(&n).await else {
                            tracing::warn!(log = source, page = %n, "redfish log page unreadable; this log is read again next poll");
                            return Vec::new();
                        };
                        pages += 1;
                        all.extend(readings::array(&page, "Members").filter_map(Entry::from_json));
                        link = text(page.get("Members@odata.nextLink"));
                    }
                    first_entries = all;
                    next = LogPages::Links(None);
                }
                None => next = LogPages::Links(None),
            }
            first_entries.reverse();
        }
        let newest = first_entries.first().map(Entry::cursor);
        let mut new: Vec<Entry> = Vec::new();
        let mut skipped = None;
        match logs::scan(&first_entries, cursor.as_ref()) {
            Scan::Baseline => {
                tracing::info!(
                    log = source,
                    "redfish log: first poll, starting after the newest entry (no history replay)"
                );
            }
            Scan::Resync { entries } => {
                tracing::info!(log = source, "redfish log went backwards (cleared or wrapped); resynchronising");
                new = entries;
            }
            Scan::New { entries, reached_cursor } => {
                new = entries;
                let mut reached = reached_cursor;
                let mut pages = 1;
                while !reached && pages < self.cfg.max_log_pages {
                    let Some(n) = next.next_path(entries_path) else { break };
                    // A page that cannot be read leaves a hole between the cursor and what was
                    // read: report none of this log now and read it again next time (the
                    // cursor stays), rather than skip the hole.
                    let Some(page) = poll.get(&n).await else {
                        tracing::warn!(log = source, page = %n, "redfish log page unreadable; this log is read again next poll");
                        return Vec::new();
                    };
                    pages += 1;
                    let mut es: Vec<Entry> = readings::array(&page, "Members").filter_map(Entry::from_json).collect();
                    if let LogPages::Backwards { .. } = next {
                        es.reverse();
                        // The first page may overlap the one read before it.
                        es.retain(|e| !new.iter().any(|n| n.id == e.id) && !first_entries.iter().any(|f| f.id == e.id));
                    }
                    match logs::scan(&es, cursor.as_ref()) {
                        Scan::New { entries, reached_cursor } => {
                            new.extend(entries);
                            reached = reached_cursor;
                        }
                        _ => break,
                    }
                    if let LogPages::Links(l) = &mut next {
                        *l = text(page.get("Members@odata.nextLink"));
                    }
                }
                let more = match &next {
                    LogPages::Links(l) => l.is_some(),
                    LogPages::Backwards { skip, .. } => *skip > 0,
                };
                if !reached && more {
                    skipped = Some(logs::skipped_between(cursor.as_ref(), new.last()));
                }
            }
        }
        let save = newest.or_else(|| cursor.clone()).unwrap_or(Cursor { id: String::new(), created: None });
        if cursor.as_ref() != Some(&save) {
            self.polled_cursors.lock().unwrap_or_else(|p| p.into_inner()).push((key, save));
        }
        let mut out: Vec<Observation> = Vec::new();
        if let Some(count) = skipped {
            let how_many = count.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string());
            tracing::warn!(log = source, skipped = ?count, max_log_pages = self.cfg.max_log_pages, "redfish log: older new entries not read");
            out.push(Observation::Event(Event {
                source: source.to_string(),
                time: Timestamp::now(),
                severity: "Warning".into(),
                message_id: "pikett.LogEntriesSkipped".into(),
                message: format!(
                    "{how_many} older new entries of this log were not read: more than max_log_pages ({}) pages were new since the last poll",
                    self.cfg.max_log_pages
                ),
            }));
        }
        out.extend(new.into_iter().rev().map(|e| {
            Observation::Event(Event {
                source: source.to_string(),
                time: e.time().unwrap_or_else(Timestamp::now),
                severity: e.severity,
                message_id: e.message_id,
                message: e.message,
            })
        }));
        out
    }
}

#[async_trait::async_trait]
impl Probe for RedfishProbe {
    fn name(&self) -> &str {
        "redfish"
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let now = Timestamp::now();
        self.polled_cursors.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let polled = tokio::time::timeout(self.cfg.poll_timeout, self.poll_inner(now)).await;
        // Log cursors move only with a completed poll: a poll cut off by its timeout has not
        // returned the events they cover.
        let moved = std::mem::take(&mut *self.polled_cursors.lock().unwrap_or_else(|p| p.into_inner()));
        match polled {
            Ok(obs) => {
                let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
                for (key, cursor) in moved {
                    if let Ok(bytes) = serde_json::to_vec(&cursor) {
                        self.staged.push((key.clone(), bytes));
                    }
                    cursors.insert(key, cursor);
                }
                obs
            }
            Err(_) => {
                let e = RedfishError::Timeout {
                    method: "poll of".into(),
                    url: self.cfg.endpoint.clone(),
                    after: self.cfg.poll_timeout,
                };
                let mut obs = self.fatal(now, &e).await;
                for o in &mut obs {
                    if let Observation::Check(c) = o {
                        c.summary = format!(
                            "BMC {} did not answer a full poll within poll_timeout ({:?}); per-request timeout {:?}",
                            self.cfg.endpoint, self.cfg.poll_timeout, self.cfg.timeout
                        );
                    }
                }
                obs
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.cfg.timeout, self.client.logout()).await;
        self.remember_session().await;
    }

    fn take_state(&mut self) -> Vec<StateUpdate> {
        std::mem::take(&mut self.staged)
    }
}

impl Drop for RedfishProbe {
    /// Safety net for a probe dropped without `shutdown`: give the BMC session back.
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let c = self.client.clone();
            handle.spawn(async move { c.logout().await });
        }
    }
}

/// The state-store key of the session URL held for `endpoint`.
fn session_key(endpoint: &str) -> String {
    format!("redfish/session/{}", endpoint.trim_end_matches('/'))
}

/// `$expand` query for collections, from the config and the root's `ProtocolFeaturesSupported`.
pub fn expand_query(mode: ExpandMode, root: &Value) -> Option<String> {
    let q = root.pointer("/ProtocolFeaturesSupported/ExpandQuery");
    let flag = |k: &str| q.and_then(|q| q.get(k)).and_then(Value::as_bool).unwrap_or(false);
    let levels = flag("Levels") && q.and_then(|q| q.get("MaxLevels")).and_then(Value::as_u64).unwrap_or(1) >= 1;
    let advertised = if flag("NoLinks") {
        Some(if levels { "$expand=.($levels=1)" } else { "$expand=." })
    } else if flag("ExpandAll") {
        Some(if levels { "$expand=*($levels=1)" } else { "$expand=*" })
    } else {
        None
    };
    match mode {
        ExpandMode::Off => None,
        ExpandMode::Auto => advertised.map(str::to_string),
        ExpandMode::On => Some(advertised.unwrap_or("$expand=.($levels=1)").to_string()),
    }
}

/// The `@odata.id` at a JSON pointer (`/Links/Sessions`), or of a property.
fn link(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(|l| l.get("@odata.id")).and_then(Value::as_str).map(str::to_string)
}

/// What identifies the machine to its vendor, and whether it is a serial number: Dell's
/// service tag (the root's OEM `ServiceTag`, or a Dell system's `SKU`), else the
/// system's or a chassis' `SerialNumber`. Other vendors put a part or machine-type
/// number in `SKU` (Lenovo `7Z23CTO1WW`, Supermicro `0x1D1415D9`), so it is not used.
fn service_tag(root: &Value, systems: &[Value], chassis: &[Value]) -> Option<(String, bool)> {
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let oem =
        root.get("Oem").and_then(Value::as_object).and_then(|o| o.values().find_map(|v| text(v.get("ServiceTag"))));
    let dell_sku = systems
        .iter()
        .filter(|s| text(s.get("Manufacturer")).is_some_and(|m| m.to_ascii_lowercase().contains("dell")))
        .find_map(|s| nonempty(text(s.get("SKU"))));
    if let Some(tag) = nonempty(oem).or(dell_sku) {
        return Some((tag, false));
    }
    systems
        .iter()
        .find_map(|s| nonempty(text(s.get("SerialNumber"))))
        .or_else(|| chassis.iter().find_map(|c| nonempty(text(c.get("SerialNumber")))))
        .map(|sn| (sn, true))
}

/// How the further pages of a log are reached, newest entries first.
enum LogPages {
    /// Newest-first logs: `Members@odata.nextLink`, if any.
    Links(Option<String>),
    /// Oldest-first logs read from the end: the page before the one at `skip`.
    Backwards { skip: u64, len: u64 },
}

impl LogPages {
    /// The path of the next (older) page, or `None` at the start of the log.
    fn next_path(&mut self, entries_path: &str) -> Option<String> {
        match self {
            LogPages::Links(l) => l.take(),
            LogPages::Backwards { skip, len } => {
                if *skip == 0 {
                    return None;
                }
                *skip = skip.saturating_sub(*len);
                Some(with_query(entries_path, &format!("$skip={skip}")))
            }
        }
    }
}

enum LogKind {
    Faults,
    Events(&'static str),
}

/// Which of our sources a LogService is, by its `Id`, `Name` and `LogEntryType`:
/// - active-fault lists (Dell `FaultList`, Lenovo `ActiveLog`): `redfish/faults`;
/// - hardware event logs as events: `redfish/sel` (IPMI SEL of any vendor, Supermicro's
///   health event log), `redfish/lclog` (Dell Lifecycle), `redfish/iml` and `redfish/iel`
///   (HPE iLO's Integrated Management Log and iLO Event Log), `redfish/platformlog`
///   (Lenovo XCC's platform event log);
/// - audit, maintenance and diagnostic logs (who logged in, firmware updates, crash
///   dumps) are not hardware events: not read.
fn classify_log(svc: &Value) -> Option<LogKind> {
    let id = text(svc.get("Id")).unwrap_or_default().to_ascii_lowercase();
    let name = text(svc.get("Name")).unwrap_or_default().to_ascii_lowercase();
    let kind = text(svc.get("LogEntryType")).unwrap_or_default();
    let either = |words: &[&str]| words.iter().any(|w| id.contains(w) || name.contains(w));
    if either(&["fault"]) || id == "activelog" {
        Some(LogKind::Faults)
    } else if either(&["audit", "maintenance", "diagnostic"]) {
        None
    } else if id == "lclog" || either(&["lifecycle", "life cycle"]) {
        Some(LogKind::Events("redfish/lclog"))
    } else if id == "iml" || name.contains("integrated management log") {
        Some(LogKind::Events("redfish/iml"))
    } else if id == "iel" || name.contains("ilo event log") {
        Some(LogKind::Events("redfish/iel"))
    } else if id == "platformlog" {
        Some(LogKind::Events("redfish/platformlog"))
    } else if id == "sel" || kind == "SEL" || either(&["system event", "health event"]) {
        Some(LogKind::Events("redfish/sel"))
    } else {
        None
    }
}

/// One poll's fetch helper: records per-resource failures instead of aborting.
struct Poll<'a> {
    client: &'a Client,
    expand: Option<String>,
    errors: Mutex<Vec<String>>,
    fetched: Mutex<usize>,
    /// Entries collections already read in this poll.
    logs_read: Mutex<HashSet<String>>,
}

/// A collection member that is only a reference (`@odata.id`, maybe `@odata.type`), not the resource.
fn is_bare_link(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.keys().all(|k| k.starts_with("@odata.")))
}

fn with_query(path: &str, query: &str) -> String {
    if path.contains('?') { format!("{path}&{query}") } else { format!("{path}?{query}") }
}

impl Poll<'_> {
    async fn get(&self, path: &str) -> Option<Value> {
        match self.client.get(path).await {
            Ok(v) => {
                if let Ok(mut n) = self.fetched.lock() {
                    *n += 1;
                }
                Some(v)
            }
            Err(e) => {
                tracing::debug!(error = %e, "redfish resource unreadable");
                if let Ok(mut errs) = self.errors.lock() {
                    errs.push(e.to_string());
                }
                None
            }
        }
    }

    /// The members of the collection linked from `v[key]`.
    async fn members_of(&self, v: &Value, key: &str) -> Vec<Value> {
        match link(v, &format!("/{key}")) {
            Some(path) => self.members(&path).await,
            None => Vec::new(),
        }
    }

    /// All members of a collection: `$expand`ed when enabled, pages followed, bare links fetched concurrently.
    async fn members(&self, path: &str) -> Vec<Value> {
        let mut members: Vec<Value> = Vec::new();
        let mut next = Some(match &self.expand {
            Some(q) => with_query(path, q),
            None => path.to_string(),
        });
        let mut pages = 0;
        while let Some(p) = next.take() {
            pages += 1;
            let Some(page) = self.get(&p).await else {
                break;
            };
            members.extend(readings::array(&page, "Members").cloned());
            next = text(page.get("Members@odata.nextLink"));
            if pages >= 50 {
                break;
            }
        }
        let fetched = join_all(members.into_iter().map(|m| async move {
            if is_bare_link(&m) {
                let p = text(m.get("@odata.id"))?;
                self.get(&p).await
            } else {
                Some(m)
            }
        }))
        .await;
        fetched.into_iter().flatten().collect()
    }

    /// Follows `v[key]` to its resource.
    async fn follow(&self, v: &Value, key: &str) -> Option<Value> {
        let p = link(v, &format!("/{key}"))?;
        self.get(&p).await
    }

    /// `redfish/system`, `redfish/memory`, `redfish/processor`, storage controllers and drives of one system.
    async fn system(&self, sys: &Value, multi: bool, ctx: &Context, now: Timestamp) -> Vec<Observation> {
        let id = text(sys.get("Id")).unwrap_or_default();
        let suffix = if multi { format!("/{id}") } else { String::new() };
        let mut out = Vec::new();
        let (state, health) = component_state(sys).unwrap_or((State::Unknown, "no Status".into()));
        let power = text(sys.get("PowerState")).unwrap_or_else(|| "unknown".into());
        let model = text(sys.get("Model")).unwrap_or_else(|| "system".into());
        let mut summary = format!("{model}{}: {health}, power {power}", ctx.tag_suffix());
        if power != "On" {
            summary.push_str(" (readings unavailable while powered off)");
        }
        out.push(Observation::check(format!("redfish/system{suffix}"), state, summary, now));

        let (mem, cpu, storage) = futures::join!(
            self.rollup(sys, "MemorySummary", "Memory", "memory", ctx),
            self.rollup(sys, "ProcessorSummary", "Processors", "processor", ctx),
            self.storage(sys, ctx, now),
        );
        out.push(Observation::check(format!("redfish/memory{suffix}"), mem.0, mem.1, now));
        out.push(Observation::check(format!("redfish/processor{suffix}"), cpu.0, cpu.1, now));
        out.extend(storage);
        out
    }

    /// Memory or processor health from the system's summary roll-up; members are
    /// read only when the roll-up is not OK, to name the faulty parts.
    async fn rollup(&self, sys: &Value, summary_key: &str, coll: &str, what: &str, ctx: &Context) -> (State, String) {
        let summary = sys.get(summary_key);
        let rollup =
            summary.and_then(|s| text(s.pointer("/Status/HealthRollup")).or_else(|| text(s.pointer("/Status/Health"))));
        let detail = match summary {
            Some(s) if what == "memory" => num(s.get("TotalSystemMemoryGiB")).map(|g| format!("{} GiB", fmt_num(g))),
            Some(s) => match (num(s.get("Count")), text(s.get("Model"))) {
                (Some(c), Some(m)) => Some(format!("{} x {m}", fmt_num(c))),
                (Some(c), None) => Some(format!("{} processors", fmt_num(c))),
                _ => None,
            },
            None => None,
        };
        let prefix = detail.map(|d| format!("{d}, ")).unwrap_or_default();
        if rollup.as_deref() == Some("OK") {
            return (State::Ok, format!("{prefix}health OK (roll-up)"));
        }
        let members = self.members_of(sys, coll).await;
        let mut worst = readings::health_state(rollup.as_deref());
        let mut faulty = Vec::new();
        for m in &members {
            if let Some((s, words)) = component_state(m)
                && s != State::Ok
            {
                worst = worst.worst(s);
                faulty.push(format!("{}: {words}", describe_component(m)));
            }
        }
        if members.is_empty() && rollup.is_none() {
            return (State::Unknown, format!("no {what} health reported ({summary_key} and {coll} missing)"));
        }
        if faulty.is_empty() {
            let r = rollup.unwrap_or_else(|| "not reported".into());
            return (worst, format!("{prefix}roll-up {r}, {} {what} members all OK", members.len()));
        }
        (worst, format!("{prefix}{}{}", faulty.join("; "), ctx.tag_suffix()))
    }

    /// `redfish/storage/<id>` per Storage resource and `redfish/drive/<id>` per drive.
    async fn storage(&self, sys: &Value, ctx: &Context, now: Timestamp) -> Vec<Observation> {
        let storages = self.members_of(sys, "Storage").await;
        let mut out = Vec::new();
        let mut drive_links: Vec<String> = Vec::new();
        for st in &storages {
            let id = text(st.get("Id")).unwrap_or_default();
            let mut controllers: Vec<Value> = readings::array(st, "StorageControllers").cloned().collect();
            if controllers.is_empty() && st.get("Controllers").is_some() {
                controllers = self.members_of(st, "Controllers").await;
            }
            if let Some((mut state, words)) = component_state(st) {
                let mut summary = format!("{}: {words}", describe_component(st));
                for c in &controllers {
                    if let Some((cs, cw)) = component_state(c)
                        && cs != State::Ok
                    {
                        state = state.worst(cs);
                        summary.push_str(&format!("; controller {}: {cw}", describe_component(c)));
                    }
                }
                if matches!(state, State::Warning | State::Critical) {
                    summary.push_str(&ctx.tag_suffix());
                }
                out.push(Observation::check(format!("redfish/storage/{id}"), state, summary, now));
            }
            drive_links.extend(readings::array(st, "Drives").filter_map(|d| text(d.get("@odata.id"))));
        }
        let drives: Vec<Value> =
            join_all(drive_links.iter().map(|p| self.get(p))).await.into_iter().flatten().collect();
        let ids: Vec<String> = drives.iter().map(|d| text(d.get("Id")).unwrap_or_default()).collect();
        let short = |id: &str| id.split(':').next().unwrap_or(id).to_string();
        for (d, id) in drives.iter().zip(&ids) {
            let Some((mut state, words)) = component_state(d) else {
                continue;
            };
            let collides = ids.iter().filter(|o| short(o) == short(id)).count() > 1;
            let name = if collides { id.clone() } else { short(id) };
            let mut summary = format!("{}: {words}", describe_component(d));
            if let Some(c) = num(d.get("CapacityBytes")) {
                summary.push_str(&format!(", {} GB", fmt_num((c / 1e9).round())));
            }
            if d.get("FailurePredicted").and_then(Value::as_bool) == Some(true) {
                state = state.worst(State::Warning);
                summary.push_str(", failure predicted");
            }
            if let Some(life) = num(d.get("PredictedMediaLifeLeftPercent")) {
                summary.push_str(&format!(", {}% life left", fmt_num(life)));
                out.push(Observation::sample(
                    "pikett_redfish_drive_life_left_percent",
                    [("drive", name.clone())],
                    life,
                    "%",
                    now,
                ));
            }
            if matches!(state, State::Warning | State::Critical) {
                summary.push_str(&ctx.tag_suffix());
            }
            out.push(Observation::check(format!("redfish/drive/{name}"), state, summary, now));
        }
        out
    }

    /// Every sensor and power supply of all chassis, new schema preferred, each reported once.
    async fn chassis(&self, chassis: &[Value], ctx: &Context, now: Timestamp) -> Vec<Observation> {
        let per = join_all(chassis.iter().map(|c| self.chassis_sources(c))).await;
        let mut sensors = Vec::new();
        let mut fans = Vec::new();
        let mut classic = Vec::new();
        let mut new_psus = Vec::new();
        let mut old_psus = Vec::new();
        for s in per {
            sensors.extend(s.sensors);
            fans.extend(s.fans);
            classic.extend(s.classic);
            new_psus.extend(s.new_psus);
            old_psus.extend(s.old_psus);
        }
        // PSU input/output power is reported with its PSU: drop the sensors the PSU metrics point at.
        let psu_sources: HashSet<String> = new_psus
            .iter()
            .filter_map(|(_, m)| m.as_ref())
            .flat_map(|m| {
                ["/InputPowerWatts/DataSourceUri", "/OutputPowerWatts/DataSourceUri"].map(|p| text(m.pointer(p)))
            })
            .flatten()
            .collect();
        sensors.retain(|r| !psu_sources.contains(&r.odata_id));
        // The old PowerControl total is the same quantity as a new board-level power sensor.
        // (A discrete power sensor, such as Lenovo's "PSU1 Failure", measures nothing.)
        if sensors.iter().any(|r| r.kind == Kind::Power && !r.discrete && r.context.as_deref() != Some("PowerSupply")) {
            classic.retain(|r| r.field != "PowerConsumedWatts");
        }
        let mut out = Vec::new();
        for r in readings::merge(vec![sensors, fans, classic]) {
            out.extend(reading_observations(&r, ctx, now));
        }
        out.extend(psu_observations(new_psus, old_psus, ctx, now));
        out
    }

    async fn chassis_sources(&self, c: &Value) -> ChassisSources {
        let (sensors, thermal_sub, power_sub, thermal, power) = futures::join!(
            async { if c.get("Sensors").is_some() { self.members_of(c, "Sensors").await } else { Vec::new() } },
            async { if c.get("ThermalSubsystem").is_some() { self.follow(c, "ThermalSubsystem").await } else { None } },
            async { if c.get("PowerSubsystem").is_some() { self.follow(c, "PowerSubsystem").await } else { None } },
            async { if c.get("Thermal").is_some() { self.follow(c, "Thermal").await } else { None } },
            async { if c.get("Power").is_some() { self.follow(c, "Power").await } else { None } },
        );
        let (fans, psus) = futures::join!(
            async {
                match &thermal_sub {
                    Some(t) if t.get("Fans").is_some() => self.members_of(t, "Fans").await,
                    _ => Vec::new(),
                }
            },
            async {
                match &power_sub {
                    Some(p) if p.get("PowerSupplies").is_some() => self.members_of(p, "PowerSupplies").await,
                    _ => Vec::new(),
                }
            },
        );
        let new_psus = join_all(psus.into_iter().map(|p| async move {
            let metrics = if p.get("Metrics").is_some() { self.follow(&p, "Metrics").await } else { None };
            (p, metrics)
        }))
        .await;
        let mut classic = Vec::new();
        let mut old_psus = Vec::new();
        if let Some(t) = &thermal {
            classic.extend(readings::classic_thermal(t));
        }
        if let Some(p) = &power {
            classic.extend(readings::classic_power(p));
            old_psus.extend(readings::array(p, "PowerSupplies").cloned());
        }
        let chassis_id = text(c.get("Id")).unwrap_or_default();
        let of_this_chassis = |mut r: Reading| {
            r.chassis = chassis_id.clone();
            r
        };
        ChassisSources {
            sensors: sensors.iter().filter_map(readings::from_sensor).map(of_this_chassis).collect(),
            fans: fans.iter().map(readings::from_fan_resource).map(of_this_chassis).collect(),
            classic: classic.into_iter().map(of_this_chassis).collect(),
            new_psus,
            old_psus,
        }
    }

    /// `redfish/faults` from a fault-list log (Dell `FaultList`): its entries are the active faults.
    async fn faults(&self, entries_path: &str, ctx: &Context, now: Timestamp) -> Vec<Observation> {
        let Some(page) = self.get(entries_path).await else {
            return Vec::new();
        };
        let faults: Vec<Entry> = readings::array(&page, "Members").filter_map(Entry::from_json).collect();
        if faults.is_empty() {
            return vec![Observation::check("redfish/faults", State::Ok, "no active faults", now)];
        }
        let state = faults
            .iter()
            .map(|f| match f.severity.as_str() {
                "Critical" => State::Critical,
                "Warning" => State::Warning,
                _ => State::Ok,
            })
            .fold(State::Ok, State::worst);
        let list: Vec<String> =
            faults.iter().map(|f| format!("{} {}: {}", f.severity, f.message_id, f.message)).collect();
        vec![Observation::check(
            "redfish/faults",
            state,
            format!("{} active fault(s): {}{}", faults.len(), list.join("; "), ctx.tag_suffix()),
            now,
        )]
    }
}

struct ChassisSources {
    sensors: Vec<Reading>,
    fans: Vec<Reading>,
    classic: Vec<Reading>,
    new_psus: Vec<(Value, Option<Value>)>,
    old_psus: Vec<Value>,
}

/// Metric name of a reading's sample.
fn metric_name(r: &Reading) -> &'static str {
    match (r.kind, r.unit.as_str()) {
        (Kind::Temperature, _) => "pikett_redfish_temperature_celsius",
        (Kind::Fan, "%") => "pikett_redfish_fan_speed_percent",
        (Kind::Fan, _) => "pikett_redfish_fan_speed_rpm",
        (Kind::Voltage, _) => "pikett_redfish_voltage_volts",
        (Kind::Power, _) => "pikett_redfish_power_watts",
    }
}

/// The check and (when there is a value) the sample of one reading.
fn reading_observations(r: &Reading, ctx: &Context, now: Timestamp) -> Vec<Observation> {
    let Some((state, summary)) = readings::evaluate(r, ctx) else {
        return Vec::new();
    };
    let mut out =
        vec![Observation::check(format!("redfish/{}/{}", r.kind.check_segment(), r.name), state, summary, now)];
    if let Some(v) = r.value.filter(|_| !r.discrete) {
        out.push(Observation::sample(metric_name(r), [("sensor", r.name.clone())], v, r.unit.clone(), now));
    }
    out
}

/// `redfish/psu/<name>` checks and input/output power samples; new `PowerSubsystem` first, old `Power` for the rest.
fn psu_observations(
    new: Vec<(Value, Option<Value>)>,
    old: Vec<Value>,
    ctx: &Context,
    now: Timestamp,
) -> Vec<Observation> {
    struct Psu {
        v: Value,
        input: Option<f64>,
        output: Option<f64>,
    }
    let mut psus: Vec<Psu> = new
        .into_iter()
        .map(|(v, m)| {
            let input = m.as_ref().and_then(|m| num(m.pointer("/InputPowerWatts/Reading")));
            let output = m.as_ref().and_then(|m| num(m.pointer("/OutputPowerWatts/Reading")));
            Psu { v, input, output }
        })
        .collect();
    let keys = |v: &Value| -> Vec<String> {
        let mut k = vec![normalise(&text(v.get("Name")).unwrap_or_default())];
        if let Some(sn) = text(v.get("SerialNumber")).filter(|s| !s.is_empty()) {
            k.push(format!("sn:{sn}"));
        }
        k.retain(|k| !k.is_empty());
        k
    };
    let seen: HashSet<String> = psus.iter().flat_map(|p| keys(&p.v)).collect();
    for v in old {
        if keys(&v).iter().any(|k| seen.contains(k)) {
            continue;
        }
        let input = num(v.get("PowerInputWatts"));
        let output = num(v.get("PowerOutputWatts")).or_else(|| num(v.get("LastPowerOutputWatts")));
        psus.push(Psu { v, input, output });
    }
    let names: Vec<String> = psus
        .iter()
        .map(|p| text(p.v.get("Name")).or_else(|| text(p.v.get("Id"))).unwrap_or_else(|| "PSU".into()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in &names {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let mut out = Vec::new();
    for (p, name) in psus.iter().zip(&names) {
        let Some((state, words)) = component_state(&p.v) else {
            continue;
        };
        let name = if counts[name.as_str()] > 1 {
            text(p.v.get("Id")).or_else(|| text(p.v.get("MemberId"))).unwrap_or_else(|| name.clone())
        } else {
            name.clone()
        };
        let mut parts = vec![words];
        if let Some(c) = num(p.v.get("PowerCapacityWatts")) {
            parts.push(format!("capacity {} W", fmt_num(c)));
        }
        if let Some(i) = p.input {
            parts.push(format!("input {} W", fmt_num(i)));
        }
        if let Some(o) = p.output {
            parts.push(format!("output {} W", fmt_num(o)));
        }
        let mut summary = parts.join(", ");
        if matches!(state, State::Warning | State::Critical) {
            summary.push_str(&format!(" — {}{}", describe_component(&p.v), ctx.tag_suffix()));
        }
        out.push(Observation::check(format!("redfish/psu/{name}"), state, summary, now));
        let labels = |n: &str| -> BTreeMap<String, String> { [("psu".to_string(), n.to_string())].into() };
        for (metric, v) in [("pikett_redfish_psu_input_watts", p.input), ("pikett_redfish_psu_output_watts", p.output)]
        {
            if let Some(v) = v {
                out.push(Observation::Sample(crate::observation::Sample {
                    name: metric.into(),
                    labels: labels(&name),
                    value: v,
                    unit: "W".into(),
                    time: now,
                }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_follows_protocol_features() {
        let root = json!({"ProtocolFeaturesSupported":{"ExpandQuery":{"ExpandAll":true,"Levels":true,"MaxLevels":1,"NoLinks":true}}});
        assert_eq!(expand_query(ExpandMode::Auto, &root).as_deref(), Some("$expand=.($levels=1)"));
        assert_eq!(expand_query(ExpandMode::Off, &root), None);
        let plain = json!({});
        assert_eq!(expand_query(ExpandMode::Auto, &plain), None);
        assert_eq!(expand_query(ExpandMode::On, &plain).as_deref(), Some("$expand=.($levels=1)"));
        let all = json!({"ProtocolFeaturesSupported":{"ExpandQuery":{"ExpandAll":true}}});
        assert_eq!(expand_query(ExpandMode::Auto, &all).as_deref(), Some("$expand=*"));
    }

    #[test]
    fn service_tag_is_dells_tag_else_the_serial_number_never_another_vendors_sku() {
        let root = json!({"Oem":{"Dell":{"ServiceTag":"F54P1G3"}}});
        assert_eq!(service_tag(&root, &[], &[]), Some(("F54P1G3".into(), false)));
        let dell = [json!({"Manufacturer":"Dell Inc.","SKU":"F54P1G3","SerialNumber":"CNIVC0014M0388"})];
        assert_eq!(service_tag(&json!({}), &dell, &[]), Some(("F54P1G3".into(), false)));
        let lenovo = [json!({"Manufacturer":"Lenovo","SKU":"7Z23CTO1WW","SerialNumber":"J105958B"})];
        assert_eq!(service_tag(&json!({}), &lenovo, &[]), Some(("J105958B".into(), true)));
        let bare = [json!({"SKU":"","SerialNumber":" "})];
        let chassis = [json!({"SerialNumber":"C8010MM21A30331"})];
        assert_eq!(service_tag(&json!({}), &bare, &chassis), Some(("C8010MM21A30331".into(), true)));
    }

    #[test]
    fn log_services_are_classified() {
        assert!(matches!(
            classify_log(&json!({"Id":"Sel","LogEntryType":"SEL"})),
            Some(LogKind::Events("redfish/sel"))
        ));
        assert!(matches!(
            classify_log(&json!({"Id":"Lclog","LogEntryType":"OEM"})),
            Some(LogKind::Events("redfish/lclog"))
        ));
        assert!(matches!(classify_log(&json!({"Id":"FaultList","LogEntryType":"SEL"})), Some(LogKind::Faults)));
        assert!(classify_log(&json!({"Id":"Journal"})).is_none());
        let source = |v: Value| match classify_log(&v) {
            Some(LogKind::Events(s)) => s,
            Some(LogKind::Faults) => "faults",
            None => "none",
        };
        // Other vendors' logs (names as their BMCs publish them).
        assert_eq!(source(json!({"Id":"IML","Name":"Integrated Management Log"})), "redfish/iml");
        assert_eq!(source(json!({"Id":"IEL","Name":"iLO Event Log"})), "redfish/iel");
        assert_eq!(
            source(json!({"Id":"PlatformLog","Name":"LogService","LogEntryType":"Multiple"})),
            "redfish/platformlog"
        );
        assert_eq!(source(json!({"Id":"ActiveLog","Name":"LogService"})), "faults");
        assert_eq!(source(json!({"Id":"AuditLog","Name":"LogService"})), "none");
        assert_eq!(source(json!({"Id":"Log1","Name":"Health Event Log Service","LogEntryType":"SEL"})), "redfish/sel");
        assert_eq!(source(json!({"Id":"Log1","Name":"Maintenance Event Log Service","LogEntryType":"OEM"})), "none");
    }

    #[test]
    fn spec_example_section_parses_from_toml() {
        let c: RedfishConfig = toml::from_str(
            r#"
endpoint = "https://169.254.0.1"     # or the iDRAC's address
username = "monitor"
password_file = "/etc/pikett/idrac.pass"
ca_file = "/etc/pikett/idrac-ca.pem"
interval = "60s"
timeout = "20s"
max_concurrency = 2                  # iDRACs are slow and limit sessions
"#,
        )
        .unwrap();
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/etc/pikett/idrac-ca.pem")));
        assert!(!c.tls_insecure);
        assert_eq!((c.interval, c.timeout), (Duration::from_secs(60), Duration::from_secs(20)));
        assert_eq!(c.max_response_bytes, 16 * 1024 * 1024);
        let e = toml::from_str::<RedfishConfig>(
            "endpoint = \"x\"\nusername = \"u\"\npassword_file = \"/p\"\nexpand = \"maybe\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn config_rejects_unknown_keys_and_parses_durations() {
        let c: RedfishConfig = serde_json::from_value(json!({
            "endpoint":"https://bmc","username":"u","password_file":"/p","timeout":"5s","expand":"off"
        }))
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.max_concurrency, 2);
        assert_eq!(c.expand, ExpandMode::Off);
        let bad = serde_json::from_value::<RedfishConfig>(json!({
            "endpoint":"https://bmc","username":"u","password_file":"/p","timout":"5s"
        }));
        assert!(bad.unwrap_err().to_string().contains("timout"));
    }
}

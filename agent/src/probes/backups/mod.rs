//! The `backups` probe: one `[[backups]]` entry per backup set, checked for age, chain
//! length and (on its own, longer interval) integrity.
//!
//! One module per tool turns its output into a [`Listing`] ([`restic`], [`borg`],
//! [`duplicity`], [`command`] for any program printing the documented JSON); [`evaluate`]
//! judges a listing against the entry's [`Policy`] at an injected `now`. All of that is
//! plain functions. [`BackupProbe`] runs the tools ([`tools`], through
//! `patches::exec::run_env`: a timeout that stops the process group) and turns the verdict
//! into a check, samples and an inventory. The integrity check runs in a task of its own,
//! so a poll reports the listing at once; its result comes with the next poll after it.
//!
//! Secrets never reach a command line or a log: restic reads `RESTIC_PASSWORD_FILE`, borg
//! gets `BORG_PASSPHRASE`, duplicity `PASSPHRASE` (and a URL's password as
//! `FTP_PASSWORD`) in their environment, a repository URL is shown with its password
//! replaced ([`redact_repository`]), and every text from a tool is scrubbed of the
//! passwords ([`Secrets`]).

pub mod borg;
pub mod command;
pub mod duplicity;
pub mod restic;
pub mod tools;

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::observation::{Inventory, Observation, State};
use crate::probes::checks::command::CommandLimits;
use crate::probes::password_file::{PasswordFileError, read_password_file};
use crate::probes::{Probe, SharedState};

/// The backup tool of a `[[backups]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", rename_all = "lowercase")]
pub enum Tool {
    Restic,
    Borg,
    Duplicity,
    /// Any program printing the JSON of [`command`].
    Command,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Restic => "restic",
            Tool::Borg => "borg",
            Tool::Duplicity => "duplicity",
            Tool::Command => "command",
        }
    }
}

impl TryFrom<String> for Tool {
    type Error = String;

    // By hand so that the error names the key (serde's enum error does not).
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "restic" => Ok(Tool::Restic),
            "borg" => Ok(Tool::Borg),
            "duplicity" => Ok(Tool::Duplicity),
            "command" => Ok(Tool::Command),
            other => Err(format!(
                "tool: unknown tool {other:?}, expected \"restic\", \"borg\", \"duplicity\" or \"command\""
            )),
        }
    }
}

/// One `[[backups]]` entry, validated ([`validate`]) as it is read, so that a bad value is
/// reported with its file, line and column like any other.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawBackupConfig")]
pub struct BackupConfig {
    /// The set's name; its check is `backup/<name>`.
    pub name: String,
    pub tool: Tool,
    /// restic's repository, borg's repository, duplicity's target URL; for `command`, handed
    /// to the program as `PIKETT_BACKUP_REPOSITORY`.
    pub repository: String,
    /// The repository's password or passphrase (same rules as `[redfish] password_file`).
    pub password_file: Option<PathBuf>,
    /// The newest backup must be younger than this (WARNING), and younger than twice this
    /// (CRITICAL).
    pub max_age: Duration,
    pub min_full: u32,
    pub min_incremental: u32,
    /// Backups closer than this to the next newer one of their kind are not counted.
    pub min_spacing: Option<Duration>,
    /// How often the integrity check runs; none without this key.
    pub check_interval: Option<Duration>,
    /// restic: `--read-data-subset` of the integrity check; `""` checks the structure only.
    pub check_subset: Option<String>,
    pub interval: Duration,
    /// Limit of each listing command (the process group is stopped after it).
    pub timeout: Duration,
    /// Limit of one integrity check.
    pub check_timeout: Duration,
    /// tool = "command": `[program, args...]`.
    pub command: Vec<String>,
}

/// A `[[backups]]` entry as written, before [`validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackupConfig {
    name: String,
    tool: Tool,
    #[serde(default)]
    repository: String,
    password_file: Option<PathBuf>,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default = "default_min_full")]
    min_full: u32,
    #[serde(default)]
    min_incremental: u32,
    #[serde(default, with = "humantime_serde")]
    min_spacing: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    check_interval: Option<Duration>,
    check_subset: Option<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    check_timeout: Duration,
    #[serde(default)]
    command: Vec<String>,
}

impl TryFrom<RawBackupConfig> for BackupConfig {
    type Error = BackupConfigError;

    fn try_from(r: RawBackupConfig) -> Result<Self, Self::Error> {
        let cfg = BackupConfig {
            name: r.name,
            tool: r.tool,
            repository: r.repository,
            password_file: r.password_file,
            max_age: r.max_age,
            min_full: r.min_full,
            min_incremental: r.min_incremental,
            min_spacing: r.min_spacing,
            check_interval: r.check_interval,
            check_subset: r.check_subset,
            interval: r.interval,
            timeout: r.timeout,
            check_timeout: r.check_timeout,
            command: r.command,
        };
        validate(&cfg)?;
        Ok(cfg)
    }
}

fn default_max_age() -> Duration {
    Duration::from_secs(26 * 3600)
}
fn default_min_full() -> u32 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// restic's default share of the data read by an integrity check.
pub const DEFAULT_CHECK_SUBSET: &str = "5%";
/// The longest wait before a failed or inconclusive integrity check is tried again.
pub const MAX_CHECK_RETRY: Duration = Duration::from_secs(6 * 3600);
/// A backup dated up to this far ahead of the agent's clock counts as just made.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// How often borg's repository size is read without a `check_interval`.
pub const DEFAULT_SIZE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The check a `[[backups]]` entry reports.
pub fn check_name(cfg: &BackupConfig) -> String {
    if cfg.name.is_empty() { "backup/<no name>".to_string() } else { format!("backup/{}", cfg.name) }
}

/// A `[[backups]]` entry the probe cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum BackupConfigError {
    #[error("{check}: {field}: {reason}")]
    Invalid { check: String, field: &'static str, reason: String },
    #[error("{check}: {source}")]
    Password { check: String, source: PasswordFileError },
    #[error("{check}: duplicate backup name (another [[backups]] entry has the same name)")]
    Duplicate { check: String },
}

impl BackupConfigError {
    /// The check the entry reports.
    pub fn check(&self) -> &str {
        match self {
            BackupConfigError::Invalid { check, .. }
            | BackupConfigError::Password { check, .. }
            | BackupConfigError::Duplicate { check } => check,
        }
    }
}

/// What serde cannot say about an entry: required and forbidden keys per tool, limits.
pub fn validate(cfg: &BackupConfig) -> Result<(), BackupConfigError> {
    let invalid =
        |field, reason: &str| BackupConfigError::Invalid { check: check_name(cfg), field, reason: reason.to_string() };
    if cfg.name.trim().is_empty() || cfg.name.chars().any(char::is_control) {
        return Err(invalid("name", "must not be empty nor hold control characters"));
    }
    let tool = cfg.tool.as_str();
    if cfg.tool == Tool::Command {
        if cfg.command.is_empty() || cfg.command[0].is_empty() {
            return Err(invalid("command", "required for tool = \"command\": [program, args...]"));
        }
        if cfg.command.iter().any(|a| a.contains('\0')) {
            return Err(invalid("command", "must not contain NUL bytes"));
        }
    } else {
        if cfg.repository.trim().is_empty() {
            return Err(invalid("repository", &format!("required for tool = \"{tool}\"")));
        }
        if !cfg.command.is_empty() {
            return Err(invalid("command", &format!("only for tool = \"command\", not \"{tool}\"")));
        }
    }
    if cfg.check_subset.is_some() && cfg.tool != Tool::Restic {
        return Err(invalid("check_subset", &format!("only for tool = \"restic\", not \"{tool}\"")));
    }
    if let Some(subset) = &cfg.check_subset
        && (subset.starts_with('-') || subset.chars().any(char::is_whitespace))
    {
        return Err(invalid("check_subset", "a restic --read-data-subset value: \"5%\", \"1/10\", \"500M\" or \"\""));
    }
    for (field, d) in [("interval", cfg.interval), ("max_age", cfg.max_age), ("timeout", cfg.timeout)] {
        if d.is_zero() {
            return Err(invalid(field, "must be greater than zero"));
        }
    }
    if cfg.check_timeout.is_zero() {
        return Err(invalid("check_timeout", "must be greater than zero"));
    }
    if cfg.check_interval.is_some_and(|d| d.is_zero()) {
        return Err(invalid("check_interval", "must be greater than zero (leave it out for no integrity check)"));
    }
    Ok(())
}

/// Where the password of a URL's user part is (`rest:https://user:secret@host/` →
/// the bytes of `secret`).
fn url_password_span(repository: &str) -> Option<Range<usize>> {
    let start = repository.find("://")? + 3;
    let rest = &repository[start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some(start + colon + 1..start + at)
}

/// The repository as it may be shown: a password in a URL's user part is replaced by
/// `***` (`rest:https://user:secret@host/` → `rest:https://user:***@host/`).
pub fn redact_repository(repository: &str) -> String {
    match url_password_span(repository) {
        Some(span) => format!("{}***{}", &repository[..span.start], &repository[span.end..]),
        None => repository.to_string(),
    }
}

/// A repository URL split into the URL without its password (`ftp://u@h/`) and the
/// password, percent-decoded; `None` when it holds none.
pub fn split_url_password(repository: &str) -> Option<(String, String)> {
    let span = url_password_span(repository)?;
    let password = String::from_utf8_lossy(&percent_decode(&repository[span.clone()])).into_owned();
    Some((format!("{}{}", &repository[..span.start - 1], &repository[span.end..]), password))
}

/// `%XX` escapes decoded to their bytes (a malformed escape is kept as written).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            // Two hex digits make at most 255.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The secrets of an entry, for scrubbing every text a tool prints before it reaches a
/// summary or a log: the repository's URL password as written and percent-decoded, and
/// the password file's content.
#[derive(Clone, Default)]
pub struct Secrets {
    repository: String,
    words: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    // By hand: the secrets must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("count", &self.words.len()).finish_non_exhaustive()
    }
}

impl Secrets {
    pub fn new(repository: &str, password: Option<&str>) -> Secrets {
        let mut words: Vec<String> = Vec::new();
        if let Some(span) = url_password_span(repository) {
            let raw = &repository[span];
            words.push(raw.to_string());
            words.push(String::from_utf8_lossy(&percent_decode(raw)).into_owned());
        }
        words.extend(password.map(str::to_string));
        words.retain(|w| !w.is_empty());
        // Longest first: a secret holding another is replaced whole.
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        words.dedup();
        Secrets { repository: repository.to_string(), words }
    }

    /// `text` with the repository shown redacted and every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut s = if self.repository.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.repository, &redact_repository(&self.repository))
        };
        for w in &self.words {
            s = s.replace(w.as_str(), "***");
        }
        s
    }
}

/// A backup's kind. Snapshot tools (restic, borg) make snapshots: each one is complete to
/// restore from, deduplicated against the others. Duplicity makes chains: a full backup
/// and the incrementals on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
    Snapshot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// One backup in a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub time: Timestamp,
    pub kind: Kind,
    /// The tool's id (restic snapshot id, borg archive name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// duplicity: volumes found for the set (0: its volumes are missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u64>,
}

/// Something wrong with the chain that the listing itself shows (a missing volume).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainProblem {
    pub state: State,
    pub problem: String,
}

/// What an integrity check concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    Passed(String),
    Failed(String),
    /// The check could not run or tell (repository locked, timeout): tried again after
    /// `min(check_interval, 6h)`.
    NotRun(String),
}

/// The last conclusive integrity check, kept in the agent's state across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityRecord {
    pub time: Timestamp,
    pub ok: bool,
    pub summary: String,
    /// The repository checked, as shown ([`redact_repository`]: no password is stored): a
    /// record of another repository does not count.
    #[serde(default)]
    pub repository: String,
    /// restic: the `--read-data-subset` the check read (`""`: the structure only,
    /// `"100%"`: all data). A failure is retried with a check at least as thorough and
    /// cleared only by one ([`restic_subset`], [`covers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

/// What one look at a repository found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Every backup in the repository, in any order.
    pub backups: Vec<Backup>,
    pub repository_size_bytes: Option<u64>,
    pub problems: Vec<ChainProblem>,
    /// The `command` tool's own integrity result, when it printed one.
    pub integrity: Option<(Option<Timestamp>, bool, String)>,
    /// Said in the summary (e.g. why the size is unknown).
    pub notes: Vec<String>,
    /// The repository holds snapshots (restic, borg): the policy wants `min_full +
    /// min_incremental` of them. Otherwise chains of full and incremental backups.
    pub snapshots: bool,
    /// duplicity: sets of an interrupted or running backup ([`incomplete_sets`] judges them).
    pub incomplete_sets: u64,
}

/// The policy of a `[[backups]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_age: Duration,
    pub min_full: u32,
    pub min_incremental: u32,
    pub min_spacing: Option<Duration>,
}

impl Policy {
    pub fn of(cfg: &BackupConfig) -> Policy {
        Policy {
            max_age: cfg.max_age,
            min_full: cfg.min_full,
            min_incremental: cfg.min_incremental,
            min_spacing: cfg.min_spacing,
        }
    }
}

/// The backups counted for the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub full: usize,
    /// In the current chain: newer than the newest full backup.
    pub incremental: usize,
    pub snapshot: usize,
}

/// Counts `times` (any order), skipping those closer than `spacing` to the last counted
/// newer one.
pub fn count_spaced(mut times: Vec<Timestamp>, spacing: Option<Duration>) -> usize {
    times.sort_unstable_by(|a, b| b.cmp(a));
    let spacing = spacing.unwrap_or(Duration::ZERO);
    let mut last: Option<Timestamp> = None;
    let mut n = 0;
    for t in times {
        let far_enough = last.is_none_or(|l| l.duration_since(t).unsigned_abs() >= spacing);
        if far_enough {
            n += 1;
            last = Some(t);
        }
    }
    n
}

/// Counts a listing's backups: every snapshot; every full; the incrementals newer than
/// the newest full (the current chain).
pub fn count(backups: &[Backup], spacing: Option<Duration>) -> Counts {
    let times = |pred: &dyn Fn(&Backup) -> bool| backups.iter().filter(|b| pred(b)).map(|b| b.time).collect();
    let newest_full = backups.iter().filter(|b| b.kind == Kind::Full).map(|b| b.time).max();
    Counts {
        full: count_spaced(times(&|b| b.kind == Kind::Full), spacing),
        incremental: count_spaced(
            times(&|b| b.kind == Kind::Incremental && newest_full.is_none_or(|f| b.time > f)),
            spacing,
        ),
        snapshot: count_spaced(times(&|b| b.kind == Kind::Snapshot), spacing),
    }
}

/// The check's state and summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub state: State,
    pub summary: String,
    /// The newest backup not dated in the future: the one the age is judged by.
    pub newest: Option<Timestamp>,
    pub counts: Counts,
}

/// A duration for people, to the minute (`1day 2h 5m`), or to the second below one.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let rounded = if secs >= 60 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// `later - earlier`, or zero when `later` is not later.
fn elapsed(earlier: Timestamp, later: Timestamp) -> Duration {
    later.duration_since(earlier).try_into().unwrap_or(Duration::ZERO)
}

/// Judges a listing against the policy at `now`:
///
/// - CRITICAL: no backup at all; the newest older than twice `max_age`; the last
///   integrity check failed; a problem of the chain the listing shows as critical (a
///   duplicity set without its volumes).
/// - WARNING: the newest older than `max_age`; a backup dated more than
///   [`FUTURE_TOLERANCE`] after `now` (clock skew: the age is judged by the newest backup
///   not in the future); fewer backups than the policy wants (snapshots: `min_full +
///   min_incremental`; chains: `min_full` fulls and `min_incremental` incrementals in the
///   current chain); a chain problem shown as a warning.
/// - OK otherwise.
pub fn evaluate(listing: &Listing, integrity: Option<&IntegrityRecord>, policy: &Policy, now: Timestamp) -> Verdict {
    let mut state = State::Ok;
    let mut parts: Vec<String> = Vec::new();
    let horizon = now.checked_add(FUTURE_TOLERANCE).unwrap_or(now);
    let newest_future = listing.backups.iter().map(|b| b.time).filter(|t| *t > horizon).max();
    let newest = listing.backups.iter().map(|b| b.time).filter(|t| *t <= horizon).max();
    let counts = count(&listing.backups, policy.min_spacing);
    match (newest, newest_future) {
        (None, None) => {
            state = State::Critical;
            parts.push("no backups in the repository".to_string());
        }
        (None, Some(_)) => {
            state = State::Warning;
            parts.push("no backup dated before now to judge the age by".to_string());
        }
        (Some(t), _) => {
            // Up to FUTURE_TOLERANCE ahead (a clock a little off): as young as can be.
            let age = elapsed(t, now);
            let twice = policy.max_age.saturating_mul(2);
            let (s, judged) = if age > twice {
                (State::Critical, format!("older than twice max_age ({})", human(twice)))
            } else if age > policy.max_age {
                (State::Warning, format!("older than max_age {}", human(policy.max_age)))
            } else {
                (State::Ok, format!("max_age {}", human(policy.max_age)))
            };
            state = state.worst(s);
            parts.push(format!("newest backup {t:.0} ({} ago, {judged})", human(age)));
        }
    }
    if let Some(f) = newest_future {
        state = state.worst(State::Warning);
        parts.push(format!("newest backup is in the future (clock skew?): {f:.0}, {} ahead", human(elapsed(now, f))));
    }
    if listing.snapshots {
        let want = policy.min_full as usize + policy.min_incremental as usize;
        if counts.snapshot < want {
            state = state.worst(State::Warning);
            parts.push(format!("only {} snapshots, want at least {want}", counts.snapshot));
        } else {
            parts.push(format!("{} snapshots (want at least {want})", counts.snapshot));
        }
    } else {
        let short = counts.full < policy.min_full as usize || counts.incremental < policy.min_incremental as usize;
        if short {
            state = state.worst(State::Warning);
        }
        parts.push(format!(
            "{}{} full, {} incremental in the current chain (want at least {} full, {} incremental)",
            if short { "chain short: " } else { "" },
            counts.full,
            counts.incremental,
            policy.min_full,
            policy.min_incremental
        ));
    }
    for p in &listing.problems {
        state = state.worst(p.state);
        parts.push(p.problem.clone());
    }
    if let Some(r) = integrity {
        if r.ok {
            parts.push(format!("integrity check {:.0}: {}", r.time, r.summary));
        } else {
            state = state.worst(State::Critical);
            parts.push(format!("integrity check {:.0} FAILED: {}", r.time, r.summary));
        }
    }
    parts.extend(listing.notes.iter().cloned());
    Verdict { state, summary: parts.join("; "), newest, counts }
}

/// duplicity's incomplete sets: a backup running right now leaves one, so only sets still
/// there at the next poll (`previous`, the count then) are a WARNING; the first sight is a
/// note.
pub fn incomplete_sets(current: u64, previous: u64) -> Option<Result<ChainProblem, String>> {
    if current == 0 {
        return None;
    }
    let what = format!("{current} incomplete backup sets");
    Some(if previous > 0 {
        Ok(ChainProblem {
            state: State::Warning,
            problem: format!("{what}, also at the poll before (an interrupted backup)"),
        })
    } else {
        Err(format!("{what} (a backup running? a WARNING if still there at the next poll)"))
    })
}

/// How long after a failed or inconclusive integrity check it is tried again.
pub fn retry_after(check_interval: Duration) -> Duration {
    check_interval.min(MAX_CHECK_RETRY)
}

/// Whether the integrity check is due at `now`: never run, passed longer than
/// `check_interval` ago, or failed longer than [`retry_after`] ago (a failure stays
/// CRITICAL meanwhile: a repair shows within that time). `not_run` is the last attempt
/// that could not tell (a lock, a timeout): none again within [`retry_after`] of it.
pub fn check_due(
    last: Option<&IntegrityRecord>,
    not_run: Option<Timestamp>,
    check_interval: Duration,
    now: Timestamp,
) -> bool {
    let retry = retry_after(check_interval);
    if not_run.is_some_and(|t| elapsed(t, now) < retry) {
        return false;
    }
    match last {
        None => true,
        Some(r) if !r.ok => elapsed(r.time, now) >= retry,
        Some(r) => elapsed(r.time, now) >= check_interval,
    }
}

/// A restic subset that reads all data.
fn reads_all(subset: &str) -> bool {
    matches!(subset, "100%" | "1/1")
}

/// A restic subset `n/t`: the same packs every time (unlike `5%` or `500M`, which restic
/// picks at random).
fn is_slice(subset: &str) -> bool {
    subset
        .split_once('/')
        .is_some_and(|(n, t)| matches!((n.parse::<u64>(), t.parse::<u64>()), (Ok(n), Ok(t)) if n >= 1 && n <= t))
}

/// The `--read-data-subset` of restic's next check: the configured one; after a failure,
/// the failed one again when it reads the same data each time (`n/t`, all, or the
/// structure only), else all data, so a retry cannot pass on other packs than the damaged.
pub fn restic_subset(configured: &str, last: Option<&IntegrityRecord>) -> String {
    match last {
        Some(r) if !r.ok => match r.subset.as_deref() {
            Some(s) if s.is_empty() || reads_all(s) || is_slice(s) => s.to_string(),
            _ => "100%".to_string(),
        },
        _ => configured.to_string(),
    }
}

/// Whether a passed check of `passed` clears a failure of `failed`: all data clears any;
/// otherwise only the same deterministic subset, or a failure of the structure alone.
pub fn covers(passed: &str, failed: Option<&str>) -> bool {
    reads_all(passed)
        || match failed {
            Some("") => true,
            Some(f) => is_slice(f) && f == passed,
            None => false,
        }
}

/// restic's arguments for a check of `subset`.
pub fn restic_check_args(subset: &str) -> Vec<String> {
    let mut args = vec!["check".to_string()];
    if reads_all(subset) {
        args.push("--read-data".to_string());
    } else if !subset.is_empty() {
        args.push(format!("--read-data-subset={subset}"));
    }
    args
}

/// The programs and directories the probe uses; tests point them elsewhere.
#[derive(Clone)]
pub struct BackupTools {
    pub restic: PathBuf,
    pub borg: PathBuf,
    pub duplicity: PathBuf,
    /// Where the tools keep their caches (restic's cache, borg's cache, duplicity's
    /// archive directory), one subdirectory each: the unit's `CacheDirectory=` when set,
    /// else the tools' defaults under `$HOME`.
    pub cache_dir: Option<PathBuf>,
    /// The slots `tool = "command"` programs share with the command checks' plugins.
    pub command_limits: Option<CommandLimits>,
}

impl std::fmt::Debug for BackupTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupTools")
            .field("restic", &self.restic)
            .field("borg", &self.borg)
            .field("duplicity", &self.duplicity)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Default for BackupTools {
    fn default() -> Self {
        BackupTools {
            restic: "restic".into(),
            borg: "borg".into(),
            duplicity: "duplicity".into(),
            cache_dir: std::env::var_os("CACHE_DIRECTORY")
                .filter(|d| !d.is_empty())
                // systemd may list several directories, colon-separated: the first is ours.
                .and_then(|d| d.to_string_lossy().split(':').next().map(PathBuf::from)),
            command_limits: None,
        }
    }
}

/// An integrity check running in its own task.
struct RunningCheck {
    since: Timestamp,
    /// restic: the subset it reads.
    subset: Option<String>,
    handle: tokio::task::JoinHandle<CheckOutcome>,
}

/// One entry's probe.
pub struct BackupProbe {
    ctx: tools::Context,
    check: String,
    state: SharedState,
    integrity: Option<IntegrityRecord>,
    /// The last check that could not tell, and why (retried after [`retry_after`]).
    not_run: Option<(Timestamp, String)>,
    running: Option<RunningCheck>,
    /// borg: the repository size and when it was read (`borg info` only every
    /// `check_interval`).
    size: Option<(Timestamp, u64)>,
    /// duplicity: the incomplete sets at the last poll.
    incomplete: u64,
}

impl std::fmt::Debug for BackupProbe {
    // By hand: the context holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupProbe").field("check", &self.check).finish_non_exhaustive()
    }
}

impl Drop for BackupProbe {
    fn drop(&mut self) {
        // The check's task drops its run, which stops the tool's process group.
        if let Some(r) = self.running.take() {
            r.handle.abort();
        }
    }
}

impl BackupProbe {
    pub fn new(cfg: BackupConfig, state: SharedState) -> Result<Self, BackupConfigError> {
        Self::with_tools(cfg, state, BackupTools::default())
    }

    /// [`BackupProbe::new`], a `tool = "command"` program taking a slot of the agent's
    /// `max_concurrent_commands` like the command checks' plugins.
    pub fn with_limits(
        cfg: BackupConfig,
        state: SharedState,
        limits: &CommandLimits,
    ) -> Result<Self, BackupConfigError> {
        Self::with_tools(cfg, state, BackupTools { command_limits: Some(limits.clone()), ..BackupTools::default() })
    }

    /// Validates the entry and reads its password file (nothing runs yet).
    pub fn with_tools(cfg: BackupConfig, state: SharedState, tools: BackupTools) -> Result<Self, BackupConfigError> {
        validate(&cfg)?;
        let check = check_name(&cfg);
        let password = cfg
            .password_file
            .as_deref()
            .map(read_password_file)
            .transpose()
            .map_err(|source| BackupConfigError::Password { check: check.clone(), source })?;
        let shown = redact_repository(&cfg.repository);
        let key = integrity_key(&cfg.name);
        let mut integrity = state.load(&key).and_then(|b| match serde_json::from_slice::<IntegrityRecord>(&b) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(check = %check, error = %e, "ignoring unreadable integrity-check state");
                None
            }
        });
        // Earlier versions stored the repository as configured, password and all: such a
        // record is taken and stored again without it.
        if let Some(r) = integrity.as_mut().filter(|r| r.repository == cfg.repository && r.repository != shown) {
            r.repository = shown.clone();
            save_record(&state, &key, r, &check);
        }
        integrity.take_if(|r| r.repository != shown);
        let ctx = tools::Context::new(cfg, tools, password);
        Ok(BackupProbe { ctx, check, state, integrity, not_run: None, running: None, size: None, incomplete: 0 })
    }

    pub fn check_name(&self) -> &str {
        &self.check
    }

    fn cfg(&self) -> &BackupConfig {
        &self.ctx.cfg
    }

    /// Whether the integrity check is due at `now` (and none is running).
    pub fn check_due(&self, now: Timestamp) -> bool {
        self.running.is_none()
            && self.cfg().check_interval.is_some_and(|every| {
                check_due(self.integrity.as_ref(), self.not_run.as_ref().map(|(t, _)| *t), every, now)
            })
    }

    /// Lists the repository and judges it at `now`, with the last integrity check's result
    /// (a check that ended since the last look is taken in first). Runs no check.
    pub async fn look(&mut self, now: Timestamp) -> Result<(Listing, Verdict), String> {
        self.collect_check(now).await;
        let size_every = self.cfg().check_interval.unwrap_or(DEFAULT_SIZE_INTERVAL);
        let size_due = self.size.is_none_or(|(t, _)| elapsed(t, now) >= size_every);
        let mut listing = tools::list(&self.ctx, size_due).await?;
        if self.cfg().tool == Tool::Borg {
            match (listing.repository_size_bytes, self.size) {
                (Some(size), _) => self.size = Some((now, size)),
                (None, Some((_, size))) if !size_due => listing.repository_size_bytes = Some(size),
                _ => {}
            }
        }
        match incomplete_sets(listing.incomplete_sets, self.incomplete) {
            Some(Ok(problem)) => listing.problems.push(problem),
            Some(Err(note)) => listing.notes.push(note),
            None => {}
        }
        self.incomplete = listing.incomplete_sets;
        if let Some((time, ok, summary)) = listing.integrity.take() {
            // A command program that checks on every run.
            let record = self.new_record(time.unwrap_or(now), ok, summary, None);
            self.record(record);
        }
        if let Some(r) = &self.running {
            listing.notes.push(format!("integrity check running since {:.0}", r.since));
        } else if let Some((t, why)) = &self.not_run {
            listing.notes.push(format!("integrity check not run at {t:.0}: {why}"));
        }
        let verdict = evaluate(&listing, self.integrity.as_ref(), &Policy::of(self.cfg()), now);
        Ok((listing, verdict))
    }

    /// Starts the integrity check in a task of its own when due; true when started. Its
    /// result is taken in by the next [`BackupProbe::look`] after it ends.
    pub fn start_check_if_due(&mut self, now: Timestamp) -> bool {
        if !self.check_due(now) {
            return false;
        }
        let subset = self.next_subset();
        let ctx = self.ctx.clone();
        let s = subset.clone();
        let handle = tokio::spawn(async move { tools::integrity(&ctx, s.as_deref()).await });
        self.running = Some(RunningCheck { since: now, subset, handle });
        true
    }

    /// Runs the integrity check now, when due, and waits for it (tests, `check_now`).
    pub async fn check_now(&mut self, now: Timestamp) -> Option<CheckOutcome> {
        if !self.check_due(now) {
            return None;
        }
        let subset = self.next_subset();
        let outcome = tools::integrity(&self.ctx, subset.as_deref()).await;
        self.conclude(outcome.clone(), subset, now);
        Some(outcome)
    }

    /// Waits for a running check to end and takes its result in (tests).
    pub async fn wait_for_check(&mut self) {
        if let Some(r) = self.running.take() {
            self.finish(r, Timestamp::now()).await;
        }
    }

    fn next_subset(&self) -> Option<String> {
        (self.cfg().tool == Tool::Restic).then(|| {
            let configured = self.cfg().check_subset.as_deref().unwrap_or(DEFAULT_CHECK_SUBSET);
            restic_subset(configured, self.integrity.as_ref())
        })
    }

    /// Takes in the result of a check that has ended.
    async fn collect_check(&mut self, now: Timestamp) {
        if let Some(r) = self.running.take_if(|r| r.handle.is_finished()) {
            self.finish(r, now).await;
        }
    }

    async fn finish(&mut self, r: RunningCheck, now: Timestamp) {
        let outcome = match r.handle.await {
            Ok(outcome) => outcome,
            Err(e) => CheckOutcome::NotRun(format!("the check's task ended: {e}")),
        };
        self.conclude(outcome, r.subset, now);
    }

    fn conclude(&mut self, outcome: CheckOutcome, subset: Option<String>, now: Timestamp) {
        match outcome {
            CheckOutcome::Passed(summary) => {
                self.not_run = None;
                let failed = self.integrity.as_ref().filter(|r| !r.ok);
                if let (Some(f), Some(s)) = (failed, subset.as_deref())
                    && !covers(s, f.subset.as_deref())
                {
                    let why = format!(
                        "a check of {s:?} passed, which does not read all the data of the failed check of {:?}",
                        f.subset.as_deref().unwrap_or("?")
                    );
                    self.not_run = Some((now, why));
                    return;
                }
                let record = self.new_record(now, true, summary, subset);
                self.record(record);
            }
            CheckOutcome::Failed(summary) => {
                self.not_run = None;
                let record = self.new_record(now, false, summary, subset);
                self.record(record);
            }
            CheckOutcome::NotRun(why) => self.not_run = Some((now, why)),
        }
    }

    fn new_record(&self, time: Timestamp, ok: bool, summary: String, subset: Option<String>) -> IntegrityRecord {
        IntegrityRecord {
            time,
            ok,
            summary: self.ctx.secrets.scrub(&summary),
            repository: redact_repository(&self.cfg().repository),
            subset,
        }
    }

    fn record(&mut self, record: IntegrityRecord) {
        save_record(&self.state, &integrity_key(&self.cfg().name), &record, &self.check);
        self.integrity = Some(record);
    }

    /// The observations of one look.
    pub fn observations(&self, listing: &Listing, verdict: &Verdict, now: Timestamp) -> Vec<Observation> {
        let cfg = self.cfg();
        let label = || [("backup", cfg.name.clone())];
        let mut out = vec![Observation::check(self.check.as_str(), verdict.state, verdict.summary.clone(), now)];
        if let Some(newest) = verdict.newest {
            let age = now.duration_since(newest).as_secs_f64().max(0.0);
            out.push(Observation::sample("pikett_backup_age_seconds", label(), age, "s", now));
        }
        let kinds: &[(Kind, usize)] = if listing.snapshots {
            &[(Kind::Snapshot, verdict.counts.snapshot)]
        } else {
            &[(Kind::Full, verdict.counts.full), (Kind::Incremental, verdict.counts.incremental)]
        };
        for (kind, n) in kinds {
            out.push(Observation::sample(
                "pikett_backup_count",
                [("backup", cfg.name.clone()), ("kind", kind.as_str().to_string())],
                *n as f64,
                "1",
                now,
            ));
        }
        if let Some(size) = listing.repository_size_bytes {
            out.push(Observation::sample("pikett_backup_repository_size_bytes", label(), size as f64, "By", now));
        }
        if let Some(r) = &self.integrity {
            let ok = if r.ok { 1.0 } else { 0.0 };
            out.push(Observation::sample("pikett_backup_integrity_ok", label(), ok, "1", now));
        }
        let mut backups = listing.backups.clone();
        backups.sort_by_key(|b| b.time);
        let total = backups.len();
        let shown = backups.split_off(total.saturating_sub(INVENTORY_MAX_BACKUPS));
        out.push(Observation::Inventory(Inventory {
            name: self.check.clone(),
            data: serde_json::json!({
                "tool": cfg.tool.as_str(),
                "repository": redact_repository(&cfg.repository),
                "backups": shown,
                "backups_total": total,
                "repository_size_bytes": listing.repository_size_bytes,
                "problems": listing.problems,
                "integrity": self.integrity.as_ref().map(|r| serde_json::json!({
                    "time": r.time, "ok": r.ok, "summary": r.summary,
                })),
            }),
            time: now,
        }));
        out
    }
}

fn save_record(state: &SharedState, key: &str, record: &IntegrityRecord, check: &str) {
    match serde_json::to_vec(record) {
        Ok(bytes) => {
            if let Err(e) = state.save(key, &bytes) {
                tracing::warn!(check = %check, error = %e, "cannot save the integrity-check state");
            }
        }
        Err(e) => tracing::warn!(check = %check, error = %e, "cannot encode the integrity-check state"),
    }
}

/// The inventory lists at most this many backups, the newest.
pub const INVENTORY_MAX_BACKUPS: usize = 1000;

fn integrity_key(name: &str) -> String {
    format!("backups/{name}/integrity")
}

#[async_trait::async_trait]
impl Probe for BackupProbe {
    fn name(&self) -> &str {
        "backups"
    }

    fn interval(&self) -> Duration {
        self.cfg().interval
    }

    fn first_poll_delay(&self) -> Duration {
        // As the checks do: several sets do not all run their tools at once.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        crate::probes::checks::phase_delay(&self.check, self.cfg().interval, since_epoch)
    }

    /// Lists and reports at once; a due integrity check then starts in its own task (its
    /// result comes with the poll after it ends).
    async fn poll(&mut self) -> Vec<Observation> {
        let now = Timestamp::now();
        let mut obs = match self.look(now).await {
            Ok((listing, verdict)) => self.observations(&listing, &verdict, now),
            Err(why) => {
                let repository = redact_repository(&self.cfg().repository);
                tracing::warn!(check = %self.check, %repository, reason = %why, "cannot list the backups");
                let summary = format!("cannot list the backups of {repository}: {why}");
                vec![Observation::check(self.check.as_str(), State::Unknown, summary, now)]
            }
        };
        if self.start_check_if_due(now)
            && let Some(Observation::Check(c)) = obs.first_mut()
        {
            c.summary.push_str("; integrity check started, its result comes with a later poll");
        }
        obs
    }

    async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle.abort();
            // The task drops the tool's run: SIGTERM to its group, SIGKILL after a grace.
            let _ = r.handle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn b(time: &str, kind: Kind) -> Backup {
        Backup { time: t(time), kind, id: None, size_bytes: None, volumes: None }
    }

    fn policy(max_age_h: u64, min_full: u32, min_incremental: u32) -> Policy {
        Policy { max_age: Duration::from_secs(max_age_h * 3600), min_full, min_incremental, min_spacing: None }
    }

    fn listing(backups: Vec<Backup>) -> Listing {
        let snapshots = backups.iter().any(|b| b.kind == Kind::Snapshot);
        Listing { backups, snapshots, ..Listing::default() }
    }

    const NOW: &str = "2026-12-06T12:00:00Z";

    #[test]
    fn fresh_snapshots_enough_in_number_are_ok() {
        let l = listing(vec![
            b("2026-12-04T02:00:00Z", Kind::Snapshot),
            b("2026-12-05T02:00:00Z", Kind::Snapshot),
            b("2026-12-06T02:00:00Z", Kind::Snapshot),
        ]);
        let v = evaluate(&l, None, &policy(26, 2, 1), t(NOW));
        assert_eq!(v.state, State::Ok, "{}", v.summary);
        assert_eq!(v.newest, Some(t("2026-12-06T02:00:00Z")));
        assert_eq!(
            v.summary,
            "newest backup 2026-12-06T02:00:00Z (10h ago, max_age 1day 2h); 3 snapshots (want at least 3)"
        );
    }

    #[test]
    fn too_few_snapshots_are_a_warning() {
        let l = listing(vec![b("2026-12-06T02:00:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(26, 7, 0), t(NOW));
        assert_eq!(v.state, State::Warning);
        assert!(v.summary.contains("only 1 snapshots, want at least 7"), "{}", v.summary);
    }

    #[test]
    fn age_past_max_age_warns_and_past_twice_is_critical() {
        let l = listing(vec![b("2026-12-05T12:00:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(26, 1, 0), t(NOW));
        assert_eq!(v.state, State::Ok, "{}", v.summary);
        let v = evaluate(&l, None, &policy(20, 1, 0), t(NOW));
        assert_eq!(v.state, State::Warning, "{}", v.summary);
        assert!(v.summary.contains("(1day ago, older than max_age 20h)"), "{}", v.summary);
        let v = evaluate(&l, None, &policy(11, 1, 0), t(NOW));
        assert_eq!(v.state, State::Critical, "{}", v.summary);
        assert!(v.summary.contains("older than twice max_age (22h)"), "{}", v.summary);
    }

    #[test]
    fn an_empty_repository_is_critical() {
        let v = evaluate(&listing(vec![]), None, &policy(26, 1, 0), t(NOW));
        assert_eq!(v.state, State::Critical);
        assert!(v.summary.starts_with("no backups in the repository"), "{}", v.summary);
        assert_eq!(v.newest, None);
    }

    #[test]
    fn chains_count_fulls_and_the_incrementals_of_the_current_chain() {
        let l = listing(vec![
            b("2026-11-29T02:00:00Z", Kind::Full),
            b("2026-11-30T02:00:00Z", Kind::Incremental),
            b("2026-12-04T02:00:00Z", Kind::Full),
            b("2026-12-05T02:00:00Z", Kind::Incremental),
            b("2026-12-06T02:00:00Z", Kind::Incremental),
        ]);
        let v = evaluate(&l, None, &policy(26, 2, 2), t(NOW));
        assert_eq!(v.counts, Counts { full: 2, incremental: 2, snapshot: 0 });
        assert_eq!(v.state, State::Ok, "{}", v.summary);
        let v = evaluate(&l, None, &policy(26, 2, 3), t(NOW));
        assert_eq!(v.state, State::Warning);
        assert!(v.summary.contains("chain short: 2 full, 2 incremental in the current chain"), "{}", v.summary);
    }

    #[test]
    fn min_spacing_counts_a_burst_once() {
        let times = ["2026-12-06T02:00:00Z", "2026-12-06T02:05:00Z", "2026-12-06T02:10:00Z", "2026-12-05T02:00:00Z"];
        let times: Vec<Timestamp> = times.iter().map(|s| t(s)).collect();
        assert_eq!(count_spaced(times.clone(), None), 4);
        assert_eq!(count_spaced(times.clone(), Some(Duration::from_secs(3600))), 2);
        assert_eq!(count_spaced(times, Some(Duration::from_secs(6 * 60))), 3);
    }

    fn rec(time: &str, ok: bool, subset: Option<&str>) -> IntegrityRecord {
        IntegrityRecord {
            time: t(time),
            ok,
            summary: String::new(),
            repository: String::new(),
            subset: subset.map(str::to_string),
        }
    }

    #[test]
    fn a_failed_integrity_check_is_critical_and_a_passed_one_is_said() {
        let l = listing(vec![b("2026-12-06T02:00:00Z", Kind::Snapshot)]);
        let mut r = rec("2026-12-06T03:00:00Z", false, None);
        r.summary = "Pack ID does not match".into();
        let v = evaluate(&l, Some(&r), &policy(26, 1, 0), t(NOW));
        assert_eq!(v.state, State::Critical);
        assert!(
            v.summary.ends_with("integrity check 2026-12-06T03:00:00Z FAILED: Pack ID does not match"),
            "{}",
            v.summary
        );
        r.ok = true;
        r.summary = "no errors were found".into();
        let v = evaluate(&l, Some(&r), &policy(26, 1, 0), t(NOW));
        assert_eq!(v.state, State::Ok);
        assert!(v.summary.ends_with("integrity check 2026-12-06T03:00:00Z: no errors were found"), "{}", v.summary);
    }

    #[test]
    fn chain_problems_count_with_their_state() {
        let mut l = listing(vec![b("2026-12-06T02:00:00Z", Kind::Full)]);
        l.problems.push(ChainProblem { state: State::Critical, problem: "volumes missing".into() });
        let v = evaluate(&l, None, &policy(26, 1, 0), t(NOW));
        assert_eq!(v.state, State::Critical);
        assert!(v.summary.contains("volumes missing"), "{}", v.summary);
    }

    #[test]
    fn a_backup_far_in_the_future_warns_and_the_age_is_judged_without_it() {
        // A minute ahead: a clock a little off, as fresh as can be.
        let l = listing(vec![b("2026-12-06T12:01:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(1, 1, 0), t(NOW));
        assert_eq!(v.state, State::Ok, "{}", v.summary);
        // An hour ahead, beside one three hours old: the age is that of the old one.
        let l = listing(vec![b("2026-12-06T13:00:00Z", Kind::Snapshot), b("2026-12-06T09:00:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(1, 1, 0), t(NOW));
        assert_eq!(v.state, State::Critical, "{}", v.summary);
        assert_eq!(v.newest, Some(t("2026-12-06T09:00:00Z")));
        assert!(
            v.summary.contains("newest backup is in the future (clock skew?): 2026-12-06T13:00:00Z"),
            "{}",
            v.summary
        );
        let v = evaluate(&l, None, &policy(4, 1, 0), t(NOW));
        assert_eq!(v.state, State::Warning, "fresh enough, but the future one warns: {}", v.summary);
        // Only future backups: nothing to judge the age by.
        let l = listing(vec![b("2026-12-07T12:00:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(26, 1, 0), t(NOW));
        assert_eq!((v.state, v.newest), (State::Warning, None), "{}", v.summary);
    }

    #[test]
    fn the_check_is_due_when_never_run_old_or_failed_long_enough_ago() {
        let day = Duration::from_secs(86400);
        let now = t(NOW);
        assert!(check_due(None, None, day, now));
        assert!(!check_due(Some(&rec("2026-12-06T00:00:00Z", true, None)), None, day, now));
        assert!(check_due(Some(&rec("2026-12-05T11:00:00Z", true, None)), None, day, now));
        // A failure is retried after min(check_interval, 6h), not at every poll.
        assert!(!check_due(Some(&rec("2026-12-06T11:00:00Z", false, None)), None, day, now));
        assert!(check_due(Some(&rec("2026-12-06T05:59:00Z", false, None)), None, day, now));
        let hour = Duration::from_secs(3600);
        assert!(check_due(Some(&rec("2026-12-06T10:59:00Z", false, None)), None, hour, now));
        // So is a check that could not tell.
        assert!(!check_due(None, Some(t("2026-12-06T07:00:00Z")), day, now));
        assert!(check_due(None, Some(t("2026-12-06T05:00:00Z")), day, now));
    }

    #[test]
    fn a_restic_failure_is_retried_and_cleared_only_as_thoroughly() {
        let failed = |subset: &str| rec(NOW, false, Some(subset));
        assert_eq!(restic_subset("5%", None), "5%");
        assert_eq!(restic_subset("5%", Some(&rec(NOW, true, Some("5%")))), "5%");
        // Random packs: the retry reads all of them.
        assert_eq!(restic_subset("5%", Some(&failed("5%"))), "100%");
        assert_eq!(restic_subset("5%", Some(&failed("500M"))), "100%");
        assert_eq!(restic_subset("5%", Some(&rec(NOW, false, None))), "100%");
        // The same packs every time: the same again.
        assert_eq!(restic_subset("5%", Some(&failed("3/20"))), "3/20");
        assert_eq!(restic_subset("5%", Some(&failed(""))), "");
        assert!(covers("100%", Some("5%")) && covers("100%", None));
        assert!(!covers("5%", Some("5%")), "other random packs do not clear a failure");
        assert!(covers("3/20", Some("3/20")) && !covers("4/20", Some("3/20")));
        assert!(covers("5%", Some("")), "any data check checks the structure too");
        assert_eq!(restic_check_args("100%"), ["check", "--read-data"]);
        assert_eq!(restic_check_args(""), ["check"]);
        assert_eq!(restic_check_args("1/10"), ["check", "--read-data-subset=1/10"]);
    }

    #[test]
    fn incomplete_sets_warn_only_when_still_there_at_the_next_poll() {
        assert_eq!(incomplete_sets(0, 3), None);
        assert!(matches!(incomplete_sets(1, 0), Some(Err(note)) if note.contains("a backup running?")));
        assert!(matches!(incomplete_sets(1, 1), Some(Ok(p)) if p.state == State::Warning));
    }

    #[test]
    fn passwords_in_repository_urls_are_hidden() {
        assert_eq!(redact_repository("rest:https://u:secret@h:8000/repo"), "rest:https://u:***@h:8000/repo");
        assert_eq!(redact_repository("sftp://backup@h//srv/b"), "sftp://backup@h//srv/b");
        assert_eq!(redact_repository("/srv/restic"), "/srv/restic");
        assert_eq!(redact_repository("s3://k:s@h/b/p@x"), "s3://k:***@h/b/p@x");
        assert_eq!(split_url_password("ftp://u:p%40ss@h/dir"), Some(("ftp://u@h/dir".to_string(), "p@ss".to_string())));
        assert_eq!(split_url_password("ftp://u@h/dir"), None);
        assert_eq!(percent_decode("a%2fb%zz%4"), b"a/b%zz%4");
    }

    #[test]
    fn scrubbing_hides_the_url_password_raw_and_decoded_and_the_file_password() {
        let s = Secrets::new("rest:http://u:s3cr%65t@127.0.0.1:1/r", Some("file-pw"));
        let text = "Fatal: rest:http://u:s3cr%65t@127.0.0.1:1/r: Head \"http://u:s3cret@127.0.0.1:1/r/config\" file-pw";
        let out = s.scrub(text);
        assert!(!out.contains("s3cr") && !out.contains("file-pw"), "{out}");
        assert!(out.starts_with("Fatal: rest:http://u:***@127.0.0.1:1/r:"), "{out}");
        assert!(format!("{s:?}").find("s3cr").is_none());
    }

    fn entry(toml: &str) -> Result<BackupConfig, String> {
        toml::from_str::<BackupConfig>(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_and_per_tool_keys() {
        let c = entry("name = \"db\"\ntool = \"restic\"\nrepository = \"/srv/r\"\n").unwrap();
        assert_eq!((c.max_age, c.min_full, c.min_incremental), (Duration::from_secs(26 * 3600), 1, 0));
        assert_eq!((c.interval, c.check_interval), (Duration::from_secs(3600), None));
        assert!(validate(&c).is_ok());
        let err = entry("name = \"db\"\ntool = \"borg\"\n").unwrap_err();
        assert!(err.contains("backup/db: repository: required for tool = \"borg\""), "{err}");
        let err = entry("name = \"x\"\ntool = \"command\"\n").unwrap_err();
        assert!(err.contains("backup/x: command: required"), "{err}");
        let err = entry("name = \"x\"\ntool = \"borg\"\nrepository = \"/r\"\ncheck_subset = \"5%\"\n").unwrap_err();
        assert!(err.contains("check_subset: only for tool = \"restic\""), "{err}");
        let err = entry("name = \"x\"\ntool = \"borg\"\nrepository = \"/r\"\ncheck_interval = \"0s\"\n").unwrap_err();
        assert!(err.contains("check_interval: must be greater than zero"), "{err}");
        let err = entry("name = \"x\"\ntool = \"tar\"\n").unwrap_err();
        assert!(err.contains("tool: unknown tool \"tar\""), "{err}");
        let err = entry("name = \"x\"\ntool = \"borg\"\nrepo = \"/r\"\n").unwrap_err();
        assert!(err.contains("unknown field `repo`"), "{err}");
    }

    fn state() -> SharedState {
        Arc::new(crate::probes::MemoryState::default())
    }

    #[test]
    fn the_probe_refuses_a_world_readable_password_file_naming_its_check() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = entry(&format!(
            "name = \"x\"\ntool = \"borg\"\nrepository = \"/r\"\npassword_file = \"{}\"\n",
            p.display()
        ))
        .unwrap();
        let e = BackupProbe::new(cfg, state()).unwrap_err().to_string();
        assert!(e.starts_with("backup/x: password_file") && e.contains("readable by everyone"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_stored_integrity_record_holds_no_password() {
        let repo = "rest:http://u:s3cret@127.0.0.1:1/r";
        let cfg =
            entry(&format!("name = \"x\"\ntool = \"restic\"\nrepository = \"{repo}\"\ncheck_interval = \"1d\"\n"))
                .unwrap();
        let shared = state();
        // A record of an earlier version, the repository as configured.
        let old = IntegrityRecord {
            time: t(NOW),
            ok: false,
            summary: "damage".into(),
            repository: repo.into(),
            subset: None,
        };
        shared.save("backups/x/integrity", &serde_json::to_vec(&old).unwrap()).unwrap();
        let mut probe = BackupProbe::with_tools(cfg.clone(), shared.clone(), BackupTools::default()).unwrap();
        assert!(probe.integrity.as_ref().is_some_and(|r| !r.ok), "the old record is still taken");
        let stored = String::from_utf8(shared.load("backups/x/integrity").unwrap()).unwrap();
        assert!(!stored.contains("s3cret") && stored.contains("u:***@127.0.0.1"), "{stored}");
        probe.conclude(CheckOutcome::Passed("fine, s3cret".into()), Some("100%".into()), t(NOW));
        let stored = String::from_utf8(shared.load("backups/x/integrity").unwrap()).unwrap();
        assert!(!stored.contains("s3cret") && stored.contains("\"ok\":true"), "{stored}");
        // A restarted probe takes it.
        let again = BackupProbe::with_tools(cfg, shared, BackupTools::default()).unwrap();
        assert!(again.integrity.as_ref().is_some_and(|r| r.ok));
    }

    #[tokio::test]
    async fn a_command_program_takes_a_slot_of_max_concurrent_commands() {
        let cfg = entry("name = \"x\"\ntool = \"command\"\ncommand = [\"true\"]\n").unwrap();
        let limits = CommandLimits::new(1);
        let mut probe = BackupProbe::with_limits(cfg, state(), &limits).unwrap();
        let held = limits.slot().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), probe.look(t(NOW))).await;
        assert!(waited.is_err(), "ran without a slot");
        drop(held);
        let done = tokio::time::timeout(Duration::from_secs(5), probe.look(t(NOW))).await;
        // `true` prints no JSON: the look fails, but it ran.
        assert!(matches!(&done, Ok(Err(e)) if e.contains("not the backups JSON")), "{done:?}");
        assert_eq!(limits.available(), 1, "the slot is given back");
    }

    #[test]
    fn a_pass_of_fewer_packs_does_not_clear_a_failure() {
        let cfg = entry("name = \"x\"\ntool = \"restic\"\nrepository = \"/r\"\ncheck_interval = \"1d\"\n").unwrap();
        let mut probe = BackupProbe::with_tools(cfg, state(), BackupTools::default()).unwrap();
        probe.conclude(CheckOutcome::Failed("Pack ID does not match".into()), Some("5%".into()), t(NOW));
        assert_eq!(probe.next_subset().as_deref(), Some("100%"));
        probe.conclude(CheckOutcome::Passed("no errors were found".into()), Some("5%".into()), t(NOW));
        assert!(probe.integrity.as_ref().is_some_and(|r| !r.ok), "still failed");
        probe.conclude(CheckOutcome::Passed("no errors were found".into()), Some("100%".into()), t(NOW));
        assert!(probe.integrity.as_ref().is_some_and(|r| r.ok && r.subset.as_deref() == Some("100%")));
        assert_eq!(probe.next_subset().as_deref(), Some("5%"));
    }
}

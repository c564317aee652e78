//! The `backups` probe: one `[[backups]]` entry per backup set, checked for age, chain
//! length and (on its own, longer interval) integrity.
//!
//! One module per tool turns its output into a [`Listing`] ([`restic`], [`borg`],
//! [`duplicity`], [`command`] for any program printing the documented JSON); [`evaluate`]
//! judges a listing against the entry's [`Policy`] at an injected `now`. All of that is
//! plain functions. [`BackupProbe`] runs the tools ([`run`]: a timeout that kills the
//! process group) and turns the verdict into a check, samples and an inventory.
//!
//! Secrets never reach a command line or a log: restic reads `RESTIC_PASSWORD_FILE`, borg
//! runs `BORG_PASSCOMMAND` (`cat FILE`), duplicity gets `PASSPHRASE` in its environment,
//! and a repository URL is shown with its password replaced ([`redact_repository`]).

pub mod borg;
pub mod command;
pub mod duplicity;
pub mod restic;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::observation::{Inventory, Observation, State};
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

/// One `[[backups]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The set's name; its check is `backup/<name>`.
    pub name: String,
    pub tool: Tool,
    /// restic's repository, borg's repository, duplicity's target URL; for `command`, handed
    /// to the program as `PIKETT_BACKUP_REPOSITORY`.
    #[serde(default)]
    pub repository: String,
    /// The repository's password or passphrase (same rules as `[redfish] password_file`).
    pub password_file: Option<PathBuf>,
    /// The newest backup must be younger than this (WARNING), and younger than twice this
    /// (CRITICAL).
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_min_full")]
    pub min_full: u32,
    #[serde(default)]
    pub min_incremental: u32,
    /// Backups closer than this to the next newer one of their kind are not counted.
    #[serde(default, with = "humantime_serde")]
    pub min_spacing: Option<Duration>,
    /// How often the integrity check runs; none without this key.
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    /// restic: `--read-data-subset` of the integrity check; `""` checks the structure only.
    pub check_subset: Option<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Limit of each listing command (the process group is killed after it).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Limit of one integrity check.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// tool = "command": `[program, args...]`.
    #[serde(default)]
    pub command: Vec<String>,
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

/// The check a `[[backups]]` entry reports.
pub fn check_name(cfg: &BackupConfig) -> String {
    if cfg.name.is_empty() { "backup/<no name>".to_string() } else { format!("backup/{}", cfg.name) }
}

/// A `[[backups]]` entry the probe cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum BackupConfigError {
    #[error("{check}: {field}: {reason}")]
    Invalid { check: String, field: &'static str, reason: String },
    #[error("{check}: cannot read password_file {path}: {source}{hint}")]
    PasswordFile { check: String, path: PathBuf, source: std::io::Error, hint: String },
    #[error("{check}: password_file {path} is empty")]
    EmptyPassword { check: String, path: PathBuf },
    #[error(
        "{check}: password_file {path} is readable by everyone (mode {mode:o}); as root run `chgrp pikett-agent {word} && chmod 0640 {word}` (the service's group may read it, nobody else)"
    )]
    WorldReadable { check: String, path: PathBuf, mode: u32, word: String },
    #[error("{check}: duplicate backup name (another [[backups]] entry has the same name)")]
    Duplicate { check: String },
}

impl BackupConfigError {
    /// The check the entry reports.
    pub fn check(&self) -> &str {
        match self {
            BackupConfigError::Invalid { check, .. }
            | BackupConfigError::PasswordFile { check, .. }
            | BackupConfigError::EmptyPassword { check, .. }
            | BackupConfigError::WorldReadable { check, .. }
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

/// Reads a password file as the Redfish probe does: not world-readable, not empty, the
/// trailing newline stripped.
pub fn read_password(check: &str, path: &Path) -> Result<String, BackupConfigError> {
    let word = shell_word(path);
    let unreadable = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "; as root run `chgrp pikett-agent {word} && chmod 0640 {word}` so that the service's group may read it"
            )
        } else {
            String::new()
        };
        BackupConfigError::PasswordFile { check: check.to_string(), path: path.into(), source, hint }
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(BackupConfigError::WorldReadable {
                check: check.to_string(),
                path: path.into(),
                mode,
                word: shell_word(path),
            });
        }
    }
    let raw = std::fs::read_to_string(path).map_err(unreadable)?;
    let pw = raw.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(BackupConfigError::EmptyPassword { check: check.to_string(), path: path.into() });
    }
    Ok(pw)
}

/// A path as a POSIX shell word (single-quoted unless plain): for messages, and for
/// borg's `BORG_PASSCOMMAND`, which borg splits as a shell would.
pub fn shell_word(path: &Path) -> String {
    let p = path.display().to_string();
    if !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        p
    } else {
        format!("'{}'", p.replace('\'', "'\\''"))
    }
}

/// The repository as it may be shown: a password in a URL's user part is replaced by
/// `***` (`rest:https://user:secret@host/` → `rest:https://user:***@host/`).
pub fn redact_repository(repository: &str) -> String {
    let Some(scheme_end) = repository.find("://") else {
        return repository.to_string();
    };
    let start = scheme_end + 3;
    let rest = &repository[start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => {
                format!("{}{}:***{}", &repository[..start], &authority[..colon], &repository[start + at..])
            }
            None => repository.to_string(),
        },
        None => repository.to_string(),
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
    /// The check could not run or tell (repository locked, timeout): tried again at the next poll.
    NotRun(String),
}

/// The last conclusive integrity check, kept in the agent's state across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityRecord {
    pub time: Timestamp,
    pub ok: bool,
    pub summary: String,
    /// The repository checked: a record of another repository does not count.
    #[serde(default)]
    pub repository: String,
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
    pub newest: Option<Timestamp>,
    pub counts: Counts,
}

/// A duration for people, to the minute (`1day 2h 5m`), or to the second below one.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let rounded = if secs >= 60 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// Judges a listing against the policy at `now`:
///
/// - CRITICAL: no backup at all; the newest older than twice `max_age`; the last
///   integrity check failed; a problem of the chain the listing shows as critical (a
///   duplicity set without its volumes).
/// - WARNING: the newest older than `max_age`; fewer backups than the policy wants
///   (snapshots: `min_full + min_incremental`; chains: `min_full` fulls and
///   `min_incremental` incrementals in the current chain); a chain problem shown as a
///   warning.
/// - OK otherwise.
pub fn evaluate(listing: &Listing, integrity: Option<&IntegrityRecord>, policy: &Policy, now: Timestamp) -> Verdict {
    let mut state = State::Ok;
    let mut parts: Vec<String> = Vec::new();
    let newest = listing.backups.iter().map(|b| b.time).max();
    let counts = count(&listing.backups, policy.min_spacing);
    match newest {
        None => {
            state = State::Critical;
            parts.push("no backups in the repository".to_string());
        }
        Some(t) => {
            // A backup from the future (clock skew) is as young as can be.
            let age = now.duration_since(t).try_into().unwrap_or(Duration::ZERO);
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

/// Whether the integrity check is due at `now`: never run, run longer than
/// `check_interval` ago, or failed last time (repeated every poll until it passes, so a
/// repair shows at once).
pub fn check_due(last: Option<&IntegrityRecord>, check_interval: Duration, now: Timestamp) -> bool {
    match last {
        None => true,
        Some(r) if !r.ok => true,
        Some(r) => now.duration_since(r.time).try_into().is_ok_and(|age: Duration| age >= check_interval),
    }
}

/// The programs and directories the probe uses; tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct BackupTools {
    pub restic: PathBuf,
    pub borg: PathBuf,
    pub duplicity: PathBuf,
    /// Where the tools keep their caches (restic's cache, borg's base directory,
    /// duplicity's archive directory), one subdirectory each: the unit's
    /// `CacheDirectory=` when set, else the tools' defaults under `$HOME`.
    pub cache_dir: Option<PathBuf>,
    /// The time zone of times a tool prints without an offset (borg 1.2's local times).
    pub time_zone: TimeZone,
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
            time_zone: TimeZone::system(),
        }
    }
}

/// One entry's probe.
pub struct BackupProbe {
    cfg: BackupConfig,
    check: String,
    state: SharedState,
    tools: BackupTools,
    /// duplicity's passphrase (restic and borg read the file themselves).
    passphrase: Option<String>,
    integrity: Option<IntegrityRecord>,
}

impl std::fmt::Debug for BackupProbe {
    // By hand: the passphrase must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupProbe").field("check", &self.check).finish_non_exhaustive()
    }
}

impl BackupProbe {
    pub fn new(cfg: BackupConfig, state: SharedState) -> Result<Self, BackupConfigError> {
        Self::with_tools(cfg, state, BackupTools::default())
    }

    /// Validates the entry and reads its password file (nothing runs yet).
    pub fn with_tools(cfg: BackupConfig, state: SharedState, tools: BackupTools) -> Result<Self, BackupConfigError> {
        validate(&cfg)?;
        let check = check_name(&cfg);
        let password = cfg.password_file.as_deref().map(|p| read_password(&check, p)).transpose()?;
        let passphrase = if cfg.tool == Tool::Duplicity { password } else { None };
        let integrity = state
            .load(&integrity_key(&cfg.name))
            .and_then(|b| match serde_json::from_slice::<IntegrityRecord>(&b) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(check = %check, error = %e, "ignoring unreadable integrity-check state");
                    None
                }
            })
            .filter(|r| r.repository == cfg.repository);
        Ok(BackupProbe { cfg, check, state, tools, passphrase, integrity })
    }

    pub fn check_name(&self) -> &str {
        &self.check
    }

    fn context(&self) -> run::Context<'_> {
        run::Context { cfg: &self.cfg, tools: &self.tools, passphrase: self.passphrase.as_deref() }
    }

    /// Lists the repository and runs the integrity check when due; the verdict at `now`.
    pub async fn look(&mut self, now: Timestamp) -> Result<(Listing, Verdict), String> {
        let due = self.cfg.check_interval.is_some_and(|every| check_due(self.integrity.as_ref(), every, now));
        let mut listing = run::list(&self.context(), due).await?;
        if let Some((time, ok, summary)) = listing.integrity.take() {
            self.record(IntegrityRecord {
                time: time.unwrap_or(now),
                ok,
                summary,
                repository: self.cfg.repository.clone(),
            });
        } else if due && self.cfg.tool != Tool::Command {
            match run::integrity(&self.context()).await {
                CheckOutcome::Passed(summary) => self.record(IntegrityRecord {
                    time: now,
                    ok: true,
                    summary,
                    repository: self.cfg.repository.clone(),
                }),
                CheckOutcome::Failed(summary) => self.record(IntegrityRecord {
                    time: now,
                    ok: false,
                    summary,
                    repository: self.cfg.repository.clone(),
                }),
                CheckOutcome::NotRun(why) => listing.notes.push(format!("integrity check not run: {why}")),
            }
        }
        let verdict = evaluate(&listing, self.integrity.as_ref(), &Policy::of(&self.cfg), now);
        Ok((listing, verdict))
    }

    fn record(&mut self, record: IntegrityRecord) {
        match serde_json::to_vec(&record) {
            Ok(bytes) => {
                if let Err(e) = self.state.save(&integrity_key(&self.cfg.name), &bytes) {
                    tracing::warn!(check = %self.check, error = %e, "cannot save the integrity-check state");
                }
            }
            Err(e) => tracing::warn!(check = %self.check, error = %e, "cannot encode the integrity-check state"),
        }
        self.integrity = Some(record);
    }

    /// The observations of one look.
    pub fn observations(&self, listing: &Listing, verdict: &Verdict, now: Timestamp) -> Vec<Observation> {
        let label = || [("backup", self.cfg.name.clone())];
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
                [("backup", self.cfg.name.clone()), ("kind", kind.as_str().to_string())],
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
                "tool": self.cfg.tool.as_str(),
                "repository": redact_repository(&self.cfg.repository),
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
        self.cfg.interval
    }

    fn first_poll_delay(&self) -> Duration {
        // As the checks do: several sets do not all run their tools at once.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        crate::probes::checks::phase_delay(&self.check, self.cfg.interval, since_epoch)
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let now = Timestamp::now();
        match self.look(now).await {
            Ok((listing, verdict)) => self.observations(&listing, &verdict, now),
            Err(why) => {
                let repository = redact_repository(&self.cfg.repository);
                tracing::warn!(check = %self.check, %repository, reason = %why, "cannot list the backups");
                let summary = format!("cannot list the backups of {repository}: {why}");
                vec![Observation::check(self.check.as_str(), State::Unknown, summary, now)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_failed_integrity_check_is_critical_and_a_passed_one_is_said() {
        let l = listing(vec![b("2026-12-06T02:00:00Z", Kind::Snapshot)]);
        let mut r = IntegrityRecord {
            time: t("2026-12-06T03:00:00Z"),
            ok: false,
            summary: "Pack ID does not match".into(),
            repository: String::new(),
        };
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
    fn a_backup_from_the_future_is_fresh() {
        let l = listing(vec![b("2026-12-06T13:00:00Z", Kind::Snapshot)]);
        let v = evaluate(&l, None, &policy(1, 1, 0), t(NOW));
        assert_eq!(v.state, State::Ok, "{}", v.summary);
    }

    #[test]
    fn the_check_is_due_when_never_run_old_or_failed() {
        let day = Duration::from_secs(86400);
        let now = t(NOW);
        let rec =
            |time: &str, ok| IntegrityRecord { time: t(time), ok, summary: String::new(), repository: String::new() };
        assert!(check_due(None, day, now));
        assert!(!check_due(Some(&rec("2026-12-06T00:00:00Z", true)), day, now));
        assert!(check_due(Some(&rec("2026-12-05T11:00:00Z", true)), day, now));
        assert!(check_due(Some(&rec("2026-12-06T11:00:00Z", false)), day, now));
    }

    #[test]
    fn passwords_in_repository_urls_are_hidden() {
        assert_eq!(redact_repository("rest:https://u:secret@h:8000/repo"), "rest:https://u:***@h:8000/repo");
        assert_eq!(redact_repository("sftp://backup@h//srv/b"), "sftp://backup@h//srv/b");
        assert_eq!(redact_repository("/srv/restic"), "/srv/restic");
        assert_eq!(redact_repository("s3://k:s@h/b/p@x"), "s3://k:***@h/b/p@x");
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
        let no_repo = entry("name = \"db\"\ntool = \"borg\"\n").unwrap();
        assert_eq!(validate(&no_repo).unwrap_err().to_string(), "backup/db: repository: required for tool = \"borg\"");
        let cmd = entry("name = \"x\"\ntool = \"command\"\n").unwrap();
        assert!(validate(&cmd).unwrap_err().to_string().starts_with("backup/x: command: required"));
        let subset = entry("name = \"x\"\ntool = \"borg\"\nrepository = \"/r\"\ncheck_subset = \"5%\"\n").unwrap();
        assert!(validate(&subset).unwrap_err().to_string().contains("check_subset: only for tool = \"restic\""));
        let zero = entry("name = \"x\"\ntool = \"borg\"\nrepository = \"/r\"\ncheck_interval = \"0s\"\n").unwrap();
        assert!(validate(&zero).unwrap_err().to_string().contains("check_interval: must be greater than zero"));
        let err = entry("name = \"x\"\ntool = \"tar\"\n").unwrap_err();
        assert!(err.contains("tool: unknown tool \"tar\""), "{err}");
        let err = entry("name = \"x\"\ntool = \"borg\"\nrepo = \"/r\"\n").unwrap_err();
        assert!(err.contains("unknown field `repo`"), "{err}");
    }

    #[test]
    fn password_files_follow_the_redfish_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password("backup/x", &p).unwrap_err().to_string();
        assert!(e.contains("readable by everyone (mode 644)") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password("backup/x", &p).unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password("backup/x", &p).unwrap_err().to_string().contains("is empty"));
        let e = read_password("backup/x", &dir.path().join("none")).unwrap_err().to_string();
        assert!(e.starts_with("backup/x: cannot read password_file"), "{e}");
    }
}

//! The agent's configuration file (`/etc/pikett/agent.toml`), documented in docs/configuration.md.
//!
//! An API boundary: key names are public. Unknown keys are errors (a typo
//! must not silently disable a probe), and every error names the file, line
//! and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::probes::backups::BackupConfig;
use crate::probes::checks::CheckConfig;
use crate::probes::host::HostConfig;
use crate::probes::patches::PatchesConfig;
use crate::probes::redfish::RedfishConfig;
use crate::probes::services::ServicesConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Default: the content of `/etc/machine-id`.
    pub host_id: Option<String>,
    #[serde(default)]
    pub customer: String,
    /// Tried in order; the first that answers gets the stream.
    #[serde(default = "default_collectors")]
    pub collectors: Vec<String>,
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: ByteSize,
    /// How long observations are gathered into one batch before it is spooled.
    #[serde(default = "default_batch_interval", with = "humantime_serde")]
    pub batch_interval: Duration,
    /// A collector that leaves sent batches unacknowledged this long is given up for the
    /// next one in `collectors`.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Streaming to a collector other than the first, the agent tries the first again after
    /// this long (the first is the preferred one).
    #[serde(default = "default_failback_after", with = "humantime_serde")]
    pub failback_after: Duration,
    /// `fdatasync` every spooled batch, so it survives a power loss (default on).
    #[serde(default = "default_spool_fsync")]
    pub spool_fsync: bool,
    /// Cache of the spool database (sled's default of 1 GiB is far too much for an agent).
    #[serde(default = "default_spool_cache_bytes")]
    pub spool_cache_bytes: ByteSize,
    /// Command checks (plugins) running at once, across all `[[checks]]` of kind
    /// `command` (default 8). The rest wait for a slot; waiting does not count
    /// against a check's `timeout`. Each running plugin holds about 4 file
    /// descriptors of the agent: keep `LimitNOFILE` of the unit well above 4×this.
    #[serde(default = "default_max_concurrent_commands")]
    pub max_concurrent_commands: usize,
    pub tls: Option<TlsConfig>,
    pub host: Option<HostConfig>,
    pub redfish: Option<RedfishConfig>,
    pub services: Option<ServicesConfig>,
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    pub patches: Option<PatchesConfig>,
    /// One entry per backup set.
    #[serde(default)]
    pub backups: Vec<BackupConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA that signed the collector's certificate.
    pub ca_file: Option<PathBuf>,
    /// The agent's client certificate and key (written by `enroll`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify in the collector's certificate, when it differs from the URL's host.
    pub server_name: Option<String>,
}

fn default_collectors() -> Vec<String> {
    vec!["http://127.0.0.1:9740".to_string()]
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/pikett-agent")
}
fn default_spool_max_bytes() -> ByteSize {
    ByteSize::mib(256)
}
fn default_spool_cache_bytes() -> ByteSize {
    ByteSize::mib(2)
}
fn default_batch_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_concurrent_commands() -> usize {
    crate::probes::checks::command::DEFAULT_MAX_CONCURRENT_COMMANDS
}
fn default_spool_fsync() -> bool {
    true
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_failback_after() -> Duration {
    Duration::from_secs(300)
}

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Reads, parses and validates the file; every error names the file (and line/column where known).
    pub fn load(path: &Path) -> Result<AgentConfig, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| vec![ConfigError::Read { path: path.to_owned(), source }])?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, Vec<ConfigError>> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| vec![toml_error(path, text, &e)])?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.into_iter().map(|message| ConfigError::Invalid { path: path.to_owned(), message }).collect())
        }
    }

    /// Semantic checks that serde cannot express.
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.collectors.is_empty() {
            problems.push("collectors: at least one collector URL is needed".to_string());
        }
        for url in &self.collectors {
            if let Some(p) = collector_url_problem(url) {
                problems.push(format!("collectors: {url:?}: {p}"));
            }
        }
        let max_commands = crate::probes::checks::command::MAX_CONCURRENT_COMMANDS_LIMIT;
        if !(1..=max_commands).contains(&self.max_concurrent_commands) {
            problems.push(format!(
                "max_concurrent_commands: must be between 1 and {max_commands} (command checks running at once), \
                 is {}",
                self.max_concurrent_commands
            ));
        }
        if let Some(host) = &self.host {
            problems.extend(host.validate().into_iter().map(|p| format!("host: {p}")));
        }
        if let Some(id) = &self.host_id
            && id.trim().is_empty()
        {
            problems.push("host_id: must not be empty".to_string());
        }
        problems
    }

    /// The host id: configured, or `/etc/machine-id`.
    pub fn resolved_host_id(&self) -> Result<String, String> {
        if let Some(id) = &self.host_id {
            return Ok(id.clone());
        }
        match std::fs::read_to_string("/etc/machine-id") {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err("host_id is not set and /etc/machine-id is missing or empty: set host_id".to_string()),
        }
    }

    /// The shortest probe interval: the collector derives its default host timeout from it.
    pub fn min_interval(&self) -> Duration {
        let mut intervals = vec![self.host.as_ref().map_or(Duration::from_secs(30), |h| h.interval)];
        intervals.extend(self.redfish.as_ref().map(|r| r.interval));
        intervals.extend(self.services.as_ref().map(|s| s.interval));
        intervals.extend(self.patches.as_ref().map(|p| p.interval));
        intervals.extend(self.checks.iter().map(|c| c.interval));
        intervals.extend(self.backups.iter().map(|b| b.interval));
        intervals.into_iter().min().unwrap_or(Duration::from_secs(30))
    }
}

/// Plaintext (`http://`) only to loopback; `https://` anywhere.
fn collector_url_problem(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    match scheme {
        "https" => None,
        "http" => {
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            (!loopback).then(|| "plaintext (http://) is allowed only to loopback; use https://".to_string())
        }
        other => Some(format!("unknown scheme {other:?}: use https:// (or http:// to loopback)")),
    }
}

/// Turns a TOML error into one naming file, line and column.
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = pikett_support::toml_position(text, e);
    ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().trim().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = "customer = \"acme\"\nhots_id = \"x\"\n";
        let errs = AgentConfig::parse(Path::new("agent.toml"), text).unwrap_err();
        let msg = errs[0].to_string();
        assert!(msg.starts_with("agent.toml:2:1: unknown field `hots_id`"), "{msg}");
    }

    #[test]
    fn plaintext_off_loopback_is_refused() {
        let text = "collectors = [\"http://10.0.0.1:9740\", \"http://127.0.0.1:9740\", \"https://c:9740\"]\n";
        let errs = AgentConfig::parse(Path::new("a.toml"), text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].to_string().contains("10.0.0.1"));
    }

    #[test]
    fn defaults_apply() {
        let c = AgentConfig::parse(Path::new("a.toml"), "").unwrap();
        assert_eq!(c.spool_max_bytes, ByteSize::mib(256));
        assert_eq!(c.collectors, vec!["http://127.0.0.1:9740"]);
    }

    #[test]
    fn max_concurrent_commands_defaults_to_8_and_refuses_0_naming_the_key() {
        let c = AgentConfig::parse(Path::new("a.toml"), "").unwrap();
        assert_eq!(c.max_concurrent_commands, 8);
        let c = AgentConfig::parse(Path::new("a.toml"), "max_concurrent_commands = 50\n").unwrap();
        assert_eq!(c.max_concurrent_commands, 50);
        for bad in ["0", "20000"] {
            let errs =
                AgentConfig::parse(Path::new("a.toml"), &format!("max_concurrent_commands = {bad}\n")).unwrap_err();
            let msg = errs[0].to_string();
            assert!(msg.starts_with("a.toml: max_concurrent_commands: must be between 1 and"), "{msg}");
            assert!(msg.ends_with(&format!("is {bad}")), "{msg}");
        }
        let errs = AgentConfig::parse(Path::new("a.toml"), "max_concurrent_commands = -1\n").unwrap_err();
        assert!(errs[0].to_string().contains("a.toml:1:"), "{}", errs[0]);
    }

    #[test]
    fn percent_parsing() {
        assert_eq!(crate::probes::host::parse_percent("85%"), Ok(85.0));
        assert!(crate::probes::host::parse_percent("85").is_err());
        assert!(crate::probes::host::parse_percent("185%").is_err());
    }
}

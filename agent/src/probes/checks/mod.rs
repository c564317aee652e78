//! External checks (`[[checks]]`): http, tcp, dns, tls and Nagios-plugin commands, one probe per check.
//!
//! Each configured check becomes its own [`CheckProbe`], so the agent schedules it
//! on its own task with its own interval and a slow check never delays another.
//! A check's runs fall at a fixed phase of its interval ([`phase_delay`]: a hash
//! of its name), so hundreds of checks do not all fire at once, and a restart
//! keeps each one's phase. Command checks share [`command::CommandLimits`]: at
//! most `max_concurrent_commands` plugins run at once.
//! Results are named `<kind>/<name>` (`http/shop-frontend`, `command/raid`).
//!
//! Samples: `pikett_check_duration_seconds{check}` (s) for the time a check took,
//! `pikett_check_cert_days_left{check}` (d) for http(s) and tls,
//! `pikett_check_perfdata{check,label}` for plugin perfdata (see [`command`]), and
//! `pikett_agent_checks_stuck` (no labels) for plugins that outlived SIGKILL,
//! sent with each result of a check whose plugin is stuck and when one exits.

pub mod command;
pub mod dns;
pub mod http;
pub mod perfdata;
pub mod tcp;
pub mod tls;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use serde::Deserialize;

use crate::observation::{Observation, State};
use crate::probes::Probe;

/// The kinds of `[[checks]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
    Dns,
    Tls,
    Command,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Dns => "dns",
            CheckKind::Tls => "tls",
            CheckKind::Command => "command",
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One `[[checks]]` table as written in the config. Keys that do not apply to
/// the check's `kind` are rejected by [`CheckProbe::new`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The check's own name; results are named `<kind>/<name>`.
    pub name: String,
    pub kind: CheckKind,

    /// http: the URL to request.
    pub url: Option<String>,
    /// http: the method (default `GET`).
    pub method: Option<String>,
    /// http: the expected status (default 200).
    pub expect_status: Option<u16>,
    /// http: a substring the body must contain.
    pub expect_body: Option<String>,
    /// http: follow redirects (default false: a redirect is reported as its status).
    pub follow_redirects: Option<bool>,
    /// http, tls: WARNING when the certificate has fewer days left (default 21).
    pub cert_warn_days: Option<u32>,
    /// http, tls: extra trusted CA certificates (PEM), besides the system's.
    pub ca_file: Option<PathBuf>,

    /// tcp, tls: `host:port` to connect to.
    pub address: Option<String>,
    /// tls: the name to send (SNI) and verify (default: the host of `address`).
    pub server_name: Option<String>,

    /// dns: the hostname to resolve.
    pub query: Option<String>,
    /// dns: an address the answer must contain.
    pub expect: Option<IpAddr>,
    /// dns: the nameserver to ask, `ip` or `ip:port` (default: the system resolver).
    pub server: Option<String>,

    /// command: the plugin's argv, `[program, args...]` (no shell).
    pub command: Option<Vec<String>>,

    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Why a check's config was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("check {check:?}: {reason}")]
    Invalid { check: String, reason: String },
    #[error("check {check:?}: duplicate check name (another [[checks]] entry has the same kind and name)")]
    Duplicate { check: String },
}

/// The validated, ready-to-run form of a check.
enum Runner {
    Http(http::HttpCheck),
    Tcp(tcp::TcpCheck),
    Dns(dns::DnsCheck),
    Tls(tls::TlsCheck),
    Command(command::CommandCheck),
}

/// One configured check, as a [`Probe`].
pub struct CheckProbe {
    check: String,
    interval: Duration,
    timeout: Duration,
    runner: Runner,
}

impl CheckProbe {
    /// Validates one `[[checks]]` table and prepares it to run; a command check
    /// gets a limit of its own ([`command::DEFAULT_MAX_CONCURRENT_COMMANDS`]).
    pub fn new(cfg: CheckConfig) -> Result<CheckProbe, CheckError> {
        CheckProbe::with_limits(cfg, &command::CommandLimits::default())
    }

    /// Like [`CheckProbe::new`], a command check sharing `limits` with the agent's others.
    pub fn with_limits(cfg: CheckConfig, limits: &command::CommandLimits) -> Result<CheckProbe, CheckError> {
        let label = check_key(&cfg);
        let invalid = |reason: String| CheckError::Invalid { check: label.clone(), reason };
        validate_common(&cfg).map_err(&invalid)?;
        let runner = match cfg.kind {
            CheckKind::Http => Runner::Http(http::HttpCheck::from_config(&cfg).map_err(&invalid)?),
            CheckKind::Tcp => Runner::Tcp(tcp::TcpCheck::from_config(&cfg).map_err(&invalid)?),
            CheckKind::Dns => Runner::Dns(dns::DnsCheck::from_config(&cfg).map_err(&invalid)?),
            CheckKind::Tls => Runner::Tls(tls_from_config(&cfg).map_err(&invalid)?),
            CheckKind::Command => Runner::Command(command::CommandCheck::from_config(&cfg, limits).map_err(&invalid)?),
        };
        Ok(CheckProbe { check: label, interval: cfg.interval, timeout: cfg.timeout, runner })
    }

    /// The result name, `<kind>/<name>`.
    pub fn check_name(&self) -> &str {
        &self.check
    }

    /// Runs the check once.
    pub async fn run_once(&self) -> Vec<Observation> {
        // A command check first waits for a slot under `max_concurrent_commands`
        // (not part of its timeout), or reports that its last plugin still lives.
        let slot = match &self.runner {
            Runner::Command(c) => match c.start(&self.check).await {
                Ok(slot) => Some(slot),
                Err(obs) => return obs,
            },
            _ => None,
        };
        let now = Timestamp::now();
        let run = async {
            match &self.runner {
                Runner::Http(c) => c.run(&self.check, now).await,
                Runner::Tcp(c) => c.run(&self.check, now).await,
                Runner::Dns(c) => c.run(&self.check, now).await,
                Runner::Tls(c) => c.run(&self.check, now).await,
                Runner::Command(c) => c.run(&self.check, now).await,
            }
        };
        // Every kind enforces its timeout itself; this is the backstop so a bug
        // there can never stall the check's task.
        let backstop = self.timeout + Duration::from_secs(5);
        match tokio::time::timeout(backstop, run).await {
            Ok(mut obs) => {
                obs.extend(slot.map(|s| s.extra).unwrap_or_default());
                obs
            }
            Err(_) => {
                tracing::warn!(check = %self.check, "check overran its timeout; abandoned");
                vec![Observation::check(
                    &self.check,
                    State::Unknown,
                    format!("check did not finish within {}", fmt_duration(backstop)),
                    now,
                )]
            }
        }
    }
}

/// Builds one probe per `[[checks]]` entry, refusing duplicates (same `<kind>/<name>`);
/// the command checks share `limits`.
pub fn probes_from_config(
    cfgs: Vec<CheckConfig>,
    limits: &command::CommandLimits,
) -> Result<Vec<CheckProbe>, CheckError> {
    let mut seen = HashSet::new();
    let mut probes = Vec::with_capacity(cfgs.len());
    for cfg in cfgs {
        let probe = CheckProbe::with_limits(cfg, limits)?;
        if !seen.insert(probe.check.clone()) {
            return Err(CheckError::Duplicate { check: probe.check });
        }
        probes.push(probe);
    }
    Ok(probes)
}

#[async_trait::async_trait]
impl Probe for CheckProbe {
    fn name(&self) -> &str {
        "checks"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn first_poll_delay(&self) -> Duration {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        phase_delay(&self.check, self.interval, since_epoch)
    }

    async fn poll(&mut self) -> Vec<Observation> {
        self.run_once().await
    }
}

/// How long from `now` (since the Unix epoch) until the check's next run: its
/// runs fall at a fixed offset into each `interval` of wall-clock time, the
/// offset a hash of the check's name. Checks spread over the interval instead
/// of all starting at once, and keep their phase across restarts.
pub fn phase_delay(check: &str, interval: Duration, now: Duration) -> Duration {
    let period = interval.as_millis().max(1);
    let offset = u128::from(fnv1a(check.as_bytes())) % period;
    let into_period = now.as_millis() % period;
    let wait = (offset + period - into_period) % period;
    // wait < period = interval in ms, which fits u64 for any Duration from a config.
    Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// FNV-1a: a hash that is the same on every build and platform (std's is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The name a check's results carry, `<kind>/<name>` (`<kind>/<no name>` for an entry
/// without one): what identifies a `[[checks]]` entry.
pub fn check_key(cfg: &CheckConfig) -> String {
    if cfg.name.is_empty() {
        format!("{}/<no name>", cfg.kind.as_str())
    } else {
        format!("{}/{}", cfg.kind.as_str(), cfg.name)
    }
}

/// Which optional keys each kind accepts (the rest must be absent).
fn allowed_keys(kind: CheckKind) -> &'static [&'static str] {
    match kind {
        CheckKind::Http => {
            &["url", "method", "expect_status", "expect_body", "follow_redirects", "cert_warn_days", "ca_file"]
        }
        CheckKind::Tcp => &["address"],
        CheckKind::Dns => &["query", "expect", "server"],
        CheckKind::Tls => &["address", "server_name", "cert_warn_days", "ca_file"],
        CheckKind::Command => &["command"],
    }
}

fn validate_common(cfg: &CheckConfig) -> Result<(), String> {
    if cfg.name.trim().is_empty() {
        return Err("`name` must not be empty".into());
    }
    if cfg.name.chars().any(|c| c.is_control()) {
        return Err("`name` must not contain control characters".into());
    }
    if cfg.interval.is_zero() {
        return Err("`interval` must be greater than 0".into());
    }
    if cfg.timeout.is_zero() {
        return Err("`timeout` must be greater than 0".into());
    }
    let present = [
        ("url", cfg.url.is_some()),
        ("method", cfg.method.is_some()),
        ("expect_status", cfg.expect_status.is_some()),
        ("expect_body", cfg.expect_body.is_some()),
        ("follow_redirects", cfg.follow_redirects.is_some()),
        ("cert_warn_days", cfg.cert_warn_days.is_some()),
        ("ca_file", cfg.ca_file.is_some()),
        ("address", cfg.address.is_some()),
        ("server_name", cfg.server_name.is_some()),
        ("query", cfg.query.is_some()),
        ("expect", cfg.expect.is_some()),
        ("server", cfg.server.is_some()),
        ("command", cfg.command.is_some()),
    ];
    let allowed = allowed_keys(cfg.kind);
    for (key, is_set) in present {
        if is_set && !allowed.contains(&key) {
            return Err(format!(
                "key `{key}` does not apply to kind \"{}\" (it takes: {})",
                cfg.kind.as_str(),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// `address` as `host:port`, checked for shape (resolution happens at run time).
pub(crate) fn require_address(cfg: &CheckConfig) -> Result<String, String> {
    let address = cfg.address.as_deref().ok_or("`address` (\"host:port\") is required")?;
    host_port(address)?;
    Ok(address.to_string())
}

/// Splits `host:port` / `[v6]:port`.
pub(crate) fn host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("address {address:?} must be \"host:port\""))?;
    let port: u16 = port.parse().map_err(|_| format!("address {address:?}: port {port:?} is not a number 0-65535"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(format!("address {address:?} has no host"));
    }
    if port == 0 {
        return Err(format!("address {address:?}: port 0 is not connectable"));
    }
    Ok((host, port))
}

fn tls_from_config(cfg: &CheckConfig) -> Result<tls::TlsCheck, String> {
    let address = require_address(cfg)?;
    let (host, _) = host_port(&address)?;
    let name = cfg.server_name.clone().unwrap_or_else(|| host.to_string());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| format!("server_name {name:?} is not a valid DNS name or IP address"))?;
    let extra = match &cfg.ca_file {
        Some(path) => tls::load_ca_file(path)?,
        None => Vec::new(),
    };
    Ok(tls::TlsCheck {
        address,
        server_name,
        warn_days: cfg.cert_warn_days.unwrap_or(21),
        timeout: cfg.timeout,
        verifier: tls::platform_verifier(extra)?,
    })
}

/// The duration sample every kind reports.
pub(crate) fn duration_sample(check: &str, elapsed: Duration, now: Timestamp) -> Observation {
    Observation::sample(
        "pikett_check_duration_seconds",
        [("check", check.to_string())],
        elapsed.as_secs_f64(),
        "s",
        now,
    )
}

/// `10s`, `1m 30s`: durations as the config writes them.
pub(crate) fn fmt_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// A measured time in seconds with millisecond precision, e.g. `0.012 s`.
pub(crate) fn fmt_secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<CheckConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    fn build(toml_text: &str) -> Result<CheckProbe, String> {
        CheckProbe::new(parse(toml_text)?).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply() {
        let c = parse("name = \"db\"\nkind = \"tcp\"\naddress = \"127.0.0.1:3306\"").unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_secs(10));
        let p = CheckProbe::new(c).unwrap();
        assert_eq!(p.check_name(), "tcp/db");
        assert_eq!(p.name(), "checks");
        assert_eq!(p.interval(), Duration::from_secs(60));
    }

    #[test]
    fn durations_are_humantime() {
        let c = parse("name = \"x\"\nkind = \"tcp\"\naddress = \"a:1\"\ninterval = \"30s\"\ntimeout = \"1m\"").unwrap();
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_key_is_rejected_by_serde() {
        let e = parse("name = \"x\"\nkind = \"tcp\"\nadress = \"a:1\"").unwrap_err();
        assert!(e.contains("adress"), "{e}");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let e = parse("name = \"x\"\nkind = \"ping\"").unwrap_err();
        assert!(e.contains("ping"), "{e}");
    }

    #[test]
    fn key_of_another_kind_is_rejected_naming_check_and_key() {
        let e = build("name = \"db\"\nkind = \"tcp\"\naddress = \"a:1\"\nurl = \"http://x\"").err().unwrap();
        assert!(e.contains("tcp/db") && e.contains("`url`") && e.contains("tcp"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let e = build("name = \"db\"\nkind = \"tcp\"").err().unwrap();
        assert!(e.contains("tcp/db") && e.contains("address"), "{e}");
        let e = build("name = \"w\"\nkind = \"http\"").err().unwrap();
        assert!(e.contains("http/w") && e.contains("url"), "{e}");
        let e = build("name = \"d\"\nkind = \"dns\"").err().unwrap();
        assert!(e.contains("dns/d") && e.contains("query"), "{e}");
        let e = build("name = \"c\"\nkind = \"command\"").err().unwrap();
        assert!(e.contains("command/c") && e.contains("command"), "{e}");
        let e = build("name = \"c\"\nkind = \"command\"\ncommand = []").err().unwrap();
        assert!(e.contains("empty"), "{e}");
        let e = build("name = \"t\"\nkind = \"tls\"").err().unwrap();
        assert!(e.contains("tls/t") && e.contains("address"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = build("name = \"db\"\nkind = \"tcp\"\naddress = \"localhost\"").err().unwrap();
        assert!(e.contains("host:port"), "{e}");
        let e = build("name = \"db\"\nkind = \"tcp\"\naddress = \"h:99999\"").err().unwrap();
        assert!(e.contains("99999"), "{e}");
        let e = build("name = \"w\"\nkind = \"http\"\nurl = \"ftp://x/\"").err().unwrap();
        assert!(e.contains("http/w") && e.contains("ftp"), "{e}");
        let e = build("name = \"w\"\nkind = \"http\"\nurl = \"not a url\"").err().unwrap();
        assert!(e.contains("not a url"), "{e}");
        let e = build("name = \"w\"\nkind = \"http\"\nurl = \"http://x/\"\nmethod = \"GE T\"").err().unwrap();
        assert!(e.contains("method"), "{e}");
        let e = build("name = \"d\"\nkind = \"dns\"\nquery = \"a.b\"\nserver = \"nameserver\"").err().unwrap();
        assert!(e.contains("server"), "{e}");
        let e = build("name = \"\"\nkind = \"tcp\"\naddress = \"a:1\"").err().unwrap();
        assert!(e.contains("name"), "{e}");
        let e = build("name = \"x\"\nkind = \"tcp\"\naddress = \"a:1\"\ntimeout = \"0s\"").err().unwrap();
        assert!(e.contains("timeout"), "{e}");
        let e = build("name = \"t\"\nkind = \"tls\"\naddress = \"a:443\"\nca_file = \"/nonexistent/ca.pem\"")
            .err()
            .unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn duplicates_are_refused() {
        let a = parse("name = \"db\"\nkind = \"tcp\"\naddress = \"a:1\"").unwrap();
        let limits = command::CommandLimits::default();
        let e = probes_from_config(vec![a.clone(), a.clone()], &limits).err().unwrap();
        assert!(e.to_string().contains("tcp/db"), "{e}");
        // Same name under another kind is a different check.
        let b = parse("name = \"db\"\nkind = \"tls\"\naddress = \"a:1\"").unwrap();
        assert_eq!(probes_from_config(vec![a, b], &limits).unwrap().len(), 2);
    }

    #[test]
    fn phase_is_fixed_per_name_and_spreads_checks_over_the_interval() {
        let minute = Duration::from_secs(60);
        let t = Duration::from_secs(1_800_000_000);
        let d = phase_delay("command/raid", minute, t);
        assert!(d < minute, "{d:?}");
        // The next run is at the same phase whenever the agent starts: restarting
        // 7 s later, the wait is 7 s shorter (modulo the interval).
        let later = phase_delay("command/raid", minute, t + Duration::from_secs(7));
        assert_eq!((later + Duration::from_secs(7)).as_millis() % 60_000, d.as_millis() % 60_000);
        // At the phase itself the check runs at once.
        assert_eq!(phase_delay("command/raid", minute, t + d), Duration::ZERO);
        // 600 checks land in many different seconds of the minute, not in one.
        let seconds: HashSet<u64> =
            (0..600).map(|i| phase_delay(&format!("command/c{i}"), minute, t).as_secs()).collect();
        assert!(seconds.len() > 50, "only {} distinct start seconds", seconds.len());
        // A hash that changed between builds would move every check's phase.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(phase_delay("x", Duration::from_millis(1), t), Duration::ZERO);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(host_port("127.0.0.1:80").unwrap(), ("127.0.0.1", 80));
        assert_eq!(host_port("[::1]:443").unwrap(), ("::1", 443));
        assert_eq!(host_port("db.example:3306").unwrap(), ("db.example", 3306));
        assert!(host_port(":80").is_err());
        assert!(host_port("x:0").is_err());
    }
}

//! The `command` check: runs a Nagios/monitoring-plugins plugin and reads its exit code, summary and perfdata.
//!
//! The plugin runs without a shell, in its own process group, with `LC_ALL=C`
//! (so numbers in perfdata use a decimal point). At the timeout the whole group
//! gets SIGKILL, so a plugin's children die with it. Output beyond
//! [`OUTPUT_LIMIT`] is read and discarded, so a chatty plugin can neither block
//! on a full pipe nor grow the agent's memory.
//!
//! At most `max_concurrent_commands` plugins run at once across the agent
//! ([`CommandLimits`]): each holds pipes (file descriptors) and a process, and
//! hundreds of checks firing together would exhaust both. A plugin that does not
//! exit even after SIGKILL (uninterruptible sleep on a hung mount or device) is
//! kept and counted (`pikett_agent_checks_stuck`); its check is not started
//! again until it has exited and reports UNKNOWN instead, so a hang cannot pile
//! up one stuck process per interval.
//!
//! Perfdata becomes samples `pikett_check_perfdata{check, label}` in UCUM units
//! (times in `s`, sizes in `By`, see [`perfdata::ucum_unit`]). Thresholds and
//! bounds, converted to the same unit, ride along as extra labels: `warn` and
//! `crit` (ranges in plugin syntax, e.g. `10`, `@10:20`, `~:5`), `min`, `max`.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::perfdata::{self, Exit, PerfDatum};
use super::{CheckConfig, duration_sample, fmt_duration};
use crate::observation::{Observation, State};
use crate::probes::patches::exec::{GroupGuard, group_alive, read_capped};

/// Most stdout kept from one plugin run (the guidelines allow 4 KiB; be generous).
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Most stderr kept (only used when stdout is empty).
const STDERR_LIMIT: usize = 8 * 1024;
/// Longest summary reported; the rest of the first line is cut.
const SUMMARY_LIMIT: usize = 1024;
/// Default of `max_concurrent_commands`: a 2-core host gains nothing from more
/// plugins at once, and most plugins wait on the network, not the CPU.
pub const DEFAULT_MAX_CONCURRENT_COMMANDS: usize = 8;
/// Largest `max_concurrent_commands` accepted.
pub const MAX_CONCURRENT_COMMANDS_LIMIT: usize = 10_000;
/// File descriptors one running plugin holds in the agent: stdout and stderr
/// pipes, plus the write ends and the exec-error pipe while it is being spawned.
pub const FDS_PER_COMMAND: u64 = 4;
/// File descriptors the agent needs besides its plugins' (spool, uplink, other checks' sockets).
pub const FD_HEADROOM: u64 = 256;

/// The open-files limit (`RLIMIT_NOFILE`, the unit's `LimitNOFILE=`) the agent
/// needs with `max_concurrent_commands` plugins running at once.
pub fn fds_needed(max_concurrent_commands: usize) -> u64 {
    (max_concurrent_commands as u64).saturating_mul(FDS_PER_COMMAND).saturating_add(FD_HEADROOM)
}

/// How long a killed plugin has to exit before it counts as stuck.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// The sample counting plugins that did not exit after SIGKILL.
pub const STUCK_SAMPLE: &str = "pikett_agent_checks_stuck";

/// What every command check of one agent shares: the slots for plugins running
/// at once, and the count of plugins stuck after SIGKILL.
#[derive(Clone)]
pub struct CommandLimits {
    slots: Arc<Semaphore>,
    stuck: Arc<AtomicUsize>,
}

impl CommandLimits {
    /// At most `max_concurrent` plugins at once (at least 1; config validation refuses 0).
    pub fn new(max_concurrent: usize) -> CommandLimits {
        let permits = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        CommandLimits { slots: Arc::new(Semaphore::new(permits)), stuck: Arc::new(AtomicUsize::new(0)) }
    }

    /// Waits for a slot to run a program (the `backups` probe's `tool = "command"` takes
    /// one too); `None` only if the limit were closed, which it never is.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Plugins killed at their timeout that have not exited yet.
    pub fn stuck(&self) -> usize {
        self.stuck.load(Ordering::Relaxed)
    }

    fn stuck_sample(&self, now: Timestamp) -> Observation {
        Observation::sample(STUCK_SAMPLE, std::iter::empty::<(&str, String)>(), self.stuck() as f64, "", now)
    }
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits::new(DEFAULT_MAX_CONCURRENT_COMMANDS)
    }
}

/// A plugin that outlived SIGKILL: kept so it can be reaped once it exits. The leader
/// may have exited while a process it started lives on in its group (a shell script's
/// `df` on a hung mount): the group is what must be gone.
struct Stuck {
    child: Option<tokio::process::Child>,
    pid: u32,
    since: Timestamp,
}

impl Stuck {
    fn alive(&mut self) -> bool {
        let leader = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        leader || group_alive(self.pid)
    }
}

/// Leave to run a plugin: a slot under `max_concurrent_commands`, and
/// observations to add to the run's (the stuck count when it changed).
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    pub extra: Vec<Observation>,
}

/// A validated `command` check.
pub(crate) struct CommandCheck {
    argv: Vec<String>,
    timeout: Duration,
    limits: CommandLimits,
    /// SIGKILL; tests use SIGSTOP to make a plugin that "cannot be killed".
    kill_signal: libc::c_int,
    reap_grace: Duration,
    stuck: Mutex<Option<Stuck>>,
}

impl CommandCheck {
    pub fn from_config(cfg: &CheckConfig, limits: &CommandLimits) -> Result<CommandCheck, String> {
        let argv = cfg.command.clone().ok_or("`command` ([\"/path/to/plugin\", \"args\"...]) is required")?;
        match argv.first() {
            None => return Err("`command` is empty; it needs at least the program".into()),
            Some(p) if p.is_empty() => return Err("`command`'s program is an empty string".into()),
            Some(_) => {}
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err("`command` contains a NUL byte".into());
        }
        Ok(CommandCheck {
            argv,
            timeout: cfg.timeout,
            limits: limits.clone(),
            kill_signal: libc::SIGKILL,
            reap_grace: REAP_GRACE,
            stuck: Mutex::new(None),
        })
    }

    /// Waits for a slot to run the plugin, unless the previous run's plugin is
    /// still alive: then `Err` holds the UNKNOWN result to report instead.
    /// The wait is not part of the check's timeout.
    pub async fn start(&self, check: &str) -> Result<Slot, Vec<Observation>> {
        let mut extra = Vec::new();
        {
            let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = stuck.as_mut() {
                let now = Timestamp::now();
                if s.alive() {
                    let msg = format!(
                        "previous run of {} is still alive (pid {}; killed at {}, did not exit: uninterruptible \
                         sleep?); not started again until it exits",
                        self.argv[0], s.pid, s.since
                    );
                    return Err(vec![
                        Observation::check(check, State::Unknown, msg, now),
                        self.limits.stuck_sample(now),
                    ]);
                }
                // Exited (or no longer ours to wait for): the check runs again.
                tracing::info!(check, pid = s.pid, "stuck plugin has exited; running the check again");
                *stuck = None;
                self.limits.stuck.fetch_sub(1, Ordering::Relaxed);
                extra.push(self.limits.stuck_sample(now));
            }
        }
        match self.limits.slots.clone().acquire_owned().await {
            Ok(permit) => Ok(Slot { _permit: permit, extra }),
            // The semaphore is never closed; reported rather than unwrapped all the same.
            Err(_) => Err(vec![Observation::check(
                check,
                State::Unknown,
                "no slot to run the plugin: the command-check limit was closed",
                Timestamp::now(),
            )]),
        }
    }

    pub async fn run(&self, check: &str, now: Timestamp) -> Vec<Observation> {
        let program = &self.argv[0];
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let msg = format!("command not found: {program}");
                return vec![Observation::check(check, State::Unknown, msg, now)];
            }
            Err(e) => {
                let msg = format!("cannot run {program}: {e}");
                return vec![Observation::check(check, State::Unknown, msg, now)];
            }
        };
        let Some(pid) = child.id() else {
            return vec![Observation::check(check, State::Unknown, format!("{program} vanished at start"), now)];
        };
        // The child leads its own group, so its pid is the group id.
        let mut group = GroupGuard::new(pid, self.kill_signal);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let io =
            async { tokio::join!(read_capped(stdout, OUTPUT_LIMIT), read_capped(stderr, STDERR_LIMIT), child.wait()) };
        let outcome = tokio::time::timeout(self.timeout, io).await;
        let elapsed = started.elapsed();
        let ((out, truncated), (err, _), status) = match outcome {
            Ok(r) => {
                group.disarm();
                r
            }
            Err(_) => {
                group.kill();
                // Reap the leader so no zombie is left behind; then the rest of its group
                // must be gone too.
                let deadline = Instant::now() + self.reap_grace;
                if tokio::time::timeout(self.reap_grace, child.wait()).await.is_err() {
                    return self.keep_stuck(check, Some(child), pid, now);
                }
                while group_alive(pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if group_alive(pid) {
                    return self.keep_stuck(check, None, pid, now);
                }
                tracing::warn!(check, program, pid, "plugin timed out; killed its process group");
                let msg = format!("{program} timed out after {}, process group killed", fmt_duration(self.timeout));
                return vec![Observation::check(check, State::Unknown, msg, now)];
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot wait for {program}: {e}");
                return vec![Observation::check(check, State::Unknown, msg, now)];
            }
        };
        let exit = match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        };
        let mut obs = evaluate(check, program, exit, &out, truncated, &err, now);
        obs.push(duration_sample(check, elapsed, now));
        obs
    }

    /// The plugin did not exit after SIGKILL: keep it to reap later, count it,
    /// and say so.
    fn keep_stuck(
        &self,
        check: &str,
        child: Option<tokio::process::Child>,
        pid: u32,
        now: Timestamp,
    ) -> Vec<Observation> {
        let program = &self.argv[0];
        let count = self.limits.stuck.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            check,
            program,
            pid,
            stuck = count,
            "plugin timed out and did not exit after SIGKILL (uninterruptible sleep?); not started again until it exits"
        );
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        *stuck = Some(Stuck { child, pid, since: Timestamp::now() });
        let msg = format!(
            "{program} timed out after {} and did not exit after SIGKILL (pid {pid}; uninterruptible sleep?); \
             not started again until it exits",
            fmt_duration(self.timeout)
        );
        vec![Observation::check(check, State::Unknown, msg, now), self.limits.stuck_sample(now)]
    }
}

/// Turns a finished plugin run into its check result and perfdata samples.
pub fn evaluate(
    check: &str,
    program: &str,
    exit: Exit,
    stdout: &[u8],
    truncated: bool,
    stderr: &[u8],
    now: Timestamp,
) -> Vec<Observation> {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    if truncated {
        // The last line was cut mid-way: its perfdata would be garbage.
        text.truncate(text.rfind('\n').unwrap_or(0));
    }
    let parsed = perfdata::parse_plugin_output(&text);
    for e in &parsed.perf_errors {
        tracing::debug!(check, "skipped {e}");
    }
    let mut summary = parsed.summary;
    if summary.is_empty() {
        let err_text = String::from_utf8_lossy(stderr);
        summary = match err_text.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => format!("(no output; stderr: {line})"),
            None => "(no output)".to_string(),
        };
    }
    let (state, note) = perfdata::state_from_exit(exit);
    if let Some(note) = note {
        summary = format!("{program}: {note}: {summary}");
    }
    if truncated {
        summary.push_str(&format!(" (output cut at {} KiB)", OUTPUT_LIMIT / 1024));
    }
    truncate_chars(&mut summary, SUMMARY_LIMIT);
    let mut obs = vec![Observation::check(check, state, summary, now)];
    obs.extend(parsed.perfdata.iter().filter_map(|d| perf_sample(check, d, now)));
    obs
}

/// One perfdata item as a sample in its UCUM unit, thresholds as labels (`U` values are skipped).
pub fn perf_sample(check: &str, d: &PerfDatum, now: Timestamp) -> Option<Observation> {
    let value = d.value?;
    let (unit, factor) = perfdata::ucum_unit(&d.uom);
    let conv = |v: f64| perfdata::convert(v, factor);
    let mut labels = vec![("check", check.to_string()), ("label", d.label.clone())];
    let scale =
        |r: perfdata::Range| perfdata::Range { start: conv(r.start), end: conv(r.end), inside: r.inside }.to_string();
    if let Some(w) = d.warn {
        labels.push(("warn", scale(w)));
    }
    if let Some(c) = d.crit {
        labels.push(("crit", scale(c)));
    }
    if let Some(m) = d.min {
        labels.push(("min", conv(m).to_string()));
    }
    if let Some(m) = d.max {
        labels.push(("max", conv(m).to_string()));
    }
    Some(Observation::sample("pikett_check_perfdata", labels, conv(value), unit, now))
}

fn truncate_chars(s: &mut String, max: usize) {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::Sample;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn samples(obs: &[Observation]) -> Vec<&Sample> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Sample(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn check(obs: &[Observation]) -> (State, String) {
        match &obs[0] {
            Observation::Check(c) => (c.state, c.summary.clone()),
            o => panic!("first observation is not a check: {o:?}"),
        }
    }

    #[test]
    fn perfdata_becomes_converted_samples_with_threshold_labels() {
        let out = b"TCP OK - 0.000 second response time on 127.0.0.1 port 22|time=0.000123s;;;0.000000;10.000000\n";
        let obs = evaluate("command/ssh", "check_tcp", Exit::Code(0), out, false, b"", now());
        assert_eq!(check(&obs), (State::Ok, "TCP OK - 0.000 second response time on 127.0.0.1 port 22".into()));
        let s = samples(&obs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "pikett_check_perfdata");
        assert_eq!(s[0].value, 0.000123);
        assert_eq!(s[0].unit, "s");
        assert_eq!(s[0].labels["check"], "command/ssh");
        assert_eq!(s[0].labels["label"], "time");
        assert_eq!(s[0].labels["min"], "0");
        assert_eq!(s[0].labels["max"], "10");
        assert!(!s[0].labels.contains_key("warn"));

        let out = b"PING OK|rta=12.5ms;100;200:;0; 'disk /'=2MB;@1:3;~:4\n";
        let obs = evaluate("command/x", "p", Exit::Code(0), out, false, b"", now());
        let s = samples(&obs);
        assert_eq!(s[0].value, 0.0125);
        assert_eq!(s[0].labels["warn"], "0.1");
        assert_eq!(s[0].labels["crit"], "0.2:");
        assert_eq!(s[1].labels["label"], "disk /");
        assert_eq!(s[1].unit, "By");
        assert_eq!(s[1].value, 2.0 * 1024.0 * 1024.0);
        assert_eq!(s[1].labels["warn"], "@1048576:3145728");
        assert_eq!(s[1].labels["crit"], "~:4194304");
    }

    #[test]
    fn odd_exits_are_unknown_and_say_why() {
        let (s, m) = check(&evaluate("c", "/bin/x", Exit::Code(127), b"", false, b"sh: foo: not found\n", now()));
        assert_eq!(s, State::Unknown);
        assert!(m.contains("/bin/x") && m.contains("127") && m.contains("foo: not found"), "{m}");
        let (s, m) = check(&evaluate("c", "p", Exit::Code(42), b"weird\n", false, b"", now()));
        assert_eq!(s, State::Unknown);
        assert!(m.contains("42") && m.contains("weird"), "{m}");
        let (s, m) = check(&evaluate("c", "p", Exit::Signal(11), b"", false, b"", now()));
        assert_eq!(s, State::Unknown);
        assert!(m.contains("SIGSEGV") && m.contains("(no output)"), "{m}");
        let (s, _) = check(&evaluate("c", "p", Exit::Code(2), b"CRIT\n", false, b"", now()));
        assert_eq!(s, State::Critical);
    }

    #[test]
    fn truncated_output_drops_the_partial_line() {
        let out = b"OK | a=1\nlong | b=2 c=3";
        let obs = evaluate("c", "p", Exit::Code(0), out, true, b"", now());
        let (_, m) = check(&obs);
        assert!(m.contains("cut at 64 KiB"), "{m}");
        // The cut last line (b, c) is dropped; a survives.
        let labels: Vec<_> = samples(&obs).iter().map(|s| s.labels["label"].clone()).collect();
        assert_eq!(labels, ["a"]);
    }

    #[test]
    fn summary_is_capped() {
        let long = "x".repeat(5000);
        let (_, m) = check(&evaluate("c", "p", Exit::Code(0), long.as_bytes(), false, b"", now()));
        assert_eq!(m.chars().count(), SUMMARY_LIMIT + 1);
    }

    fn stuck_count(obs: &[Observation]) -> Option<f64> {
        samples(obs).iter().find(|s| s.name == STUCK_SAMPLE).map(|s| s.value)
    }

    fn alive(pid: u32) -> bool {
        // Stopped (T) counts as alive; a zombie (Z) or a missing entry does not.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
            .is_some_and(|state| state != 'Z' && state != 'X')
    }

    #[tokio::test]
    async fn a_plugin_that_outlives_the_kill_is_counted_and_not_started_again() {
        let cfg: CheckConfig =
            toml::from_str("name = \"hang\"\nkind = \"command\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"300ms\"")
                .unwrap();
        let limits = CommandLimits::new(2);
        let mut c = CommandCheck::from_config(&cfg, &limits).unwrap();
        // SIGSTOP instead of SIGKILL: the plugin survives "the kill" like one in uninterruptible sleep.
        c.kill_signal = libc::SIGSTOP;
        c.reap_grace = Duration::from_millis(200);

        let slot = c.start("command/hang").await.expect("first run starts");
        assert!(slot.extra.is_empty());
        let obs = c.run("command/hang", now()).await;
        drop(slot);
        let (state, summary) = check(&obs);
        assert_eq!(state, State::Unknown);
        assert!(summary.contains("did not exit after SIGKILL"), "{summary}");
        assert_eq!(limits.stuck(), 1);
        assert_eq!(stuck_count(&obs), Some(1.0));
        let pid = c.stuck.lock().unwrap().as_ref().map(|s| s.pid).expect("the stuck plugin is kept");
        assert!(summary.contains(&format!("pid {pid}")), "{summary}");
        assert!(alive(pid));

        // While it lives, the check is not started again (no second process) and says why.
        let refused = c.start("command/hang").await.err().expect("no new run while the old one lives");
        let (state, summary) = check(&refused);
        assert_eq!(state, State::Unknown);
        assert!(summary.contains("still alive") && summary.contains(&format!("pid {pid}")), "{summary}");
        assert_eq!(stuck_count(&refused), Some(1.0));
        // Its slot was given back: a stuck plugin does not use up max_concurrent_commands.
        assert_eq!(limits.slots.available_permits(), 2);

        // Once it is gone, the check runs again and the count drops back.
        // SAFETY: kill(2) on the pid of our own child; no memory is involved.
        unsafe {
            libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let slot = loop {
            match c.start("command/hang").await {
                Ok(slot) => break slot,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(obs) => panic!("the killed plugin was never reaped: {obs:?}"),
            }
        };
        assert_eq!(limits.stuck(), 0);
        assert_eq!(stuck_count(&slot.extra), Some(0.0));
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn a_process_left_in_the_plugins_group_keeps_it_stuck() {
        // The shell (the leader) dies at "the kill"; a process it started ignores it and
        // lives on in the group, like a `df` in uninterruptible sleep on a hung mount.
        let cfg: CheckConfig = toml::from_str(
            "name = \"sh\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"(trap '' TERM; exec sleep 30) & sleep 30\"]\ntimeout = \"300ms\"",
        )
        .unwrap();
        let limits = CommandLimits::new(2);
        let mut c = CommandCheck::from_config(&cfg, &limits).unwrap();
        c.kill_signal = libc::SIGTERM;
        c.reap_grace = Duration::from_millis(300);
        let slot = c.start("command/sh").await.expect("first run starts");
        let obs = c.run("command/sh", now()).await;
        drop(slot);
        let (state, summary) = check(&obs);
        assert_eq!(state, State::Unknown);
        assert!(summary.contains("did not exit"), "{summary}");
        assert_eq!(limits.stuck(), 1);
        let pgid = c.stuck.lock().unwrap().as_ref().map(|s| s.pid).expect("kept");
        assert!(c.start("command/sh").await.is_err(), "started again while its group lives");
        // SAFETY: kill(2) on the process group of our own child; no memory is involved.
        unsafe {
            libc::kill(-libc::pid_t::try_from(pgid).unwrap(), libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.start("command/sh").await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(obs) => panic!("the group was never seen gone: {obs:?}"),
            }
        }
        assert_eq!(limits.stuck(), 0);
    }

    #[tokio::test]
    async fn slots_bound_the_plugins_running_at_once() {
        let cfg: CheckConfig = toml::from_str("name = \"x\"\nkind = \"command\"\ncommand = [\"true\"]").unwrap();
        let limits = CommandLimits::new(1);
        let c = CommandCheck::from_config(&cfg, &limits).unwrap();
        let first = c.start("command/x").await.unwrap();
        // The second waits while the first holds the only slot...
        assert!(tokio::time::timeout(Duration::from_millis(100), c.start("command/x")).await.is_err());
        drop(first);
        // ...and gets it once the first is done.
        assert!(tokio::time::timeout(Duration::from_secs(1), c.start("command/x")).await.is_ok());
        assert_eq!(CommandLimits::new(0).slots.available_permits(), 1, "0 would never run anything");
    }

    #[test]
    fn undetermined_values_make_no_sample() {
        let obs = evaluate("c", "p", Exit::Code(0), b"OK | a=U b=1", false, b"", now());
        assert_eq!(samples(&obs).len(), 1);
    }
}

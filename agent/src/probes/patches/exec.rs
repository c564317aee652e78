//! Runs a system tool (dnf, apt-get, systemctl, restic, ...) with a timeout and captures its output.
//!
//! The tools are run with `LC_ALL=C` so their messages are the English ones the
//! parsers know, and without a terminal so they print no progress bars. Each runs in its
//! own process group: at the timeout the group gets SIGTERM, then SIGKILL after a short
//! grace (so restic or borg can remove their repository locks); a run whose future is
//! dropped (reload, shutdown) takes its group with it ([`GroupGuard`]). Output beyond a
//! limit is read and discarded ([`read_capped`]), so a runaway tool can neither block on
//! a full pipe nor grow the agent's memory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Most stdout kept from one run; more is an error ([`ExecError::TooLarge`]).
pub const STDOUT_LIMIT: usize = 32 * 1024 * 1024;
/// Most stderr kept; the rest is read and discarded.
pub const STDERR_LIMIT: usize = 1024 * 1024;
/// How long a tool has after SIGTERM (at its timeout, or when its run is dropped) before
/// its process group gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together, for searching error messages that a tool
    /// may print on either.
    pub fn combined(&self) -> String {
        let mut s = self.stdout.clone();
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&self.stderr);
        s
    }
}

/// Why a command produced no [`Output`].
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} printed more than {limit} bytes; its output was refused")]
    TooLarge { program: String, limit: usize },
}

/// Runs `program args...` and waits at most `timeout`; on timeout its whole
/// process group is stopped, so a hung package manager (or the helpers it
/// started) never piles up.
pub async fn run(program: &Path, args: &[OsString], timeout: Duration) -> Result<Output, ExecError> {
    run_env(program, args, &[], &[], timeout).await
}

/// [`run`] with the variables `set` added to the environment and those in `remove`
/// taken out of it (credentials reach a tool this way, never on its command line).
pub async fn run_env(
    program: &Path,
    args: &[OsString],
    set: &[(&str, OsString)],
    remove: &[&str],
    timeout: Duration,
) -> Result<Output, ExecError> {
    run_limited(program, args, set, remove, timeout, &Limits::default()).await
}

/// The limits of [`run_env`]; tests shorten them.
struct Limits {
    grace: Duration,
    stdout: usize,
    stderr: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { grace: TERM_GRACE, stdout: STDOUT_LIMIT, stderr: STDERR_LIMIT }
    }
}

async fn run_limited(
    program: &Path,
    args: &[OsString],
    set: &[(&str, OsString)],
    remove: &[&str],
    timeout: Duration,
    limits: &Limits,
) -> Result<Output, ExecError> {
    let name = program.display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).env("LC_ALL", "C").env("LANG", "C");
    for var in remove {
        cmd.env_remove(var);
    }
    cmd.envs(set.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { program: name.clone(), source })?;
    let Some(pid) = child.id() else {
        return Err(ExecError::Spawn { program: name, source: std::io::Error::other("exited at start") });
    };
    // The child leads its own group (process_group(0)), so its pid is the group's id.
    let mut group = GroupGuard::new(pid, libc::SIGKILL).with_term_grace(limits.grace);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let io =
        async { tokio::join!(read_capped(stdout, limits.stdout), read_capped(stderr, limits.stderr), child.wait()) };
    match tokio::time::timeout(timeout, io).await {
        Ok(((out, out_cut), (err, _), status)) => {
            group.disarm();
            let status = status.map_err(|source| ExecError::Spawn { program: name.clone(), source })?;
            if out_cut {
                return Err(ExecError::TooLarge { program: name, limit: limits.stdout });
            }
            Ok(Output {
                code: status.code(),
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
            })
        }
        Err(_) => {
            // SIGTERM first: restic and borg remove their locks on it.
            group.signal(libc::SIGTERM);
            let exited = tokio::time::timeout(limits.grace, child.wait()).await.is_ok();
            // Whatever is left of the group (the leader, or helpers it started) is killed.
            group.kill();
            if !exited {
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            }
            tracing::warn!(program = %name, pid, "timed out; its process group was stopped");
            Err(ExecError::Timeout { program: name, timeout })
        }
    }
}

/// Turns string literals into the argument vector [`run`] takes.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

/// The last non-empty line of a tool's output, to quote in a summary.
pub fn last_line(text: &str) -> &str {
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// Finds `name` in `$PATH` as an executable file (for `manager = "auto"`).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Reads a pipe to its end, keeping at most `limit` bytes (and whether more came). Keeps
/// draining past the limit so the process never blocks on a full pipe.
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Whether any process is left in the process group `pgid`.
pub(crate) fn group_alive(pgid: u32) -> bool {
    match libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) with signal 0 only checks that the group exists; nothing is sent.
        Ok(pgid) if pgid > 1 => unsafe { libc::kill(-pgid, 0) == 0 },
        _ => false,
    }
}

/// Kills a child's process group with its signal, at the timeout or if the run is
/// dropped mid-way (reload, agent shutdown), unless disarmed after a normal exit. With a
/// grace ([`GroupGuard::with_term_grace`]), a drop sends SIGTERM first and the signal
/// only after the grace, from a thread of its own.
pub(crate) struct GroupGuard {
    pgid: libc::pid_t,
    signal: libc::c_int,
    pub(crate) armed: bool,
    term_grace: Option<Duration>,
}

impl GroupGuard {
    pub(crate) fn new(pid: u32, signal: libc::c_int) -> GroupGuard {
        // A pgid of 0 or 1 would address our own group or every process: never signal those.
        let pgid = libc::pid_t::try_from(pid).unwrap_or(0);
        GroupGuard { pgid, signal, armed: pgid > 1, term_grace: None }
    }

    pub(crate) fn with_term_grace(mut self, grace: Duration) -> GroupGuard {
        self.term_grace = Some(grace);
        self
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Sends `signal` to the group (while armed), leaving the guard armed.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        if self.armed {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // involved. ESRCH (group already gone) is fine.
            unsafe {
                libc::kill(-self.pgid, signal);
            }
        }
    }

    pub(crate) fn kill(&mut self) {
        self.signal(self.signal);
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(grace) = self.term_grace.filter(|_| self.armed) else {
            self.kill();
            return;
        };
        self.signal(libc::SIGTERM);
        let (pgid, signal) = (self.pgid, self.signal);
        self.armed = false;
        // The leader is our unreaped child (or reaped by tokio once it exits); its pid
        // stays the group's id while any member lives, so the group cannot be a stranger's.
        let later = std::thread::Builder::new().name("pikett-kill".into()).spawn(move || {
            std::thread::sleep(grace);
            if u32::try_from(pgid).is_ok_and(group_alive) {
                // SAFETY: as in `signal`.
                unsafe {
                    libc::kill(-pgid, signal);
                }
            }
        });
        if later.is_err() {
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_exit_code_and_both_streams() {
        let out = run(&PathBuf::from("sh"), &args(["-c", "echo out; echo err >&2; exit 100"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.code, Some(100));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.combined(), "out\nerr\n");
    }

    /// Whether `pid` is gone (a zombie awaiting its reaper counts as gone), waiting up to 3 s.
    fn gone(pid: &str) -> bool {
        for _ in 0..150 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn kills_a_hung_command_and_its_children_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        let err =
            run(&PathBuf::from("sh"), &args(["-c", script.as_str()]), Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        // SIGTERM ends it: no need for the grace.
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        let child_pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(gone(&child_pid), "grandchild {child_pid} survived the timeout");
    }

    #[tokio::test]
    async fn sigterm_comes_first_and_sigkill_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (pidfile, termfile) = (dir.path().join("child.pid"), dir.path().join("term"));
        // The shell notes SIGTERM and goes on waiting; its child ignores SIGTERM.
        let script = format!(
            "trap 'echo term > {}' TERM; (trap '' TERM; exec sleep 30) & echo $! > {}; wait; wait",
            termfile.display(),
            pidfile.display()
        );
        let limits = Limits { grace: Duration::from_millis(700), ..Limits::default() };
        let started = std::time::Instant::now();
        let err =
            run_limited(Path::new("sh"), &args(["-c", script.as_str()]), &[], &[], Duration::from_millis(300), &limits)
                .await
                .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(4), "{elapsed:?}");
        assert_eq!(std::fs::read_to_string(&termfile).unwrap_or_default(), "term\n", "SIGTERM was not sent first");
        let child_pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(gone(&child_pid), "the child ignoring SIGTERM survived SIGKILL");
    }

    #[tokio::test]
    async fn a_dropped_run_takes_its_process_group_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let run = tokio::spawn(async move {
            run(&PathBuf::from("sh"), &args(["-c", script.as_str()]), Duration::from_secs(60)).await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&pidfile).map_or(true, |s| s.trim().is_empty()) {
            assert!(std::time::Instant::now() < deadline, "the script never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // As a reload or shutdown drops a poll in progress.
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        let child_pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(gone(&child_pid), "grandchild {child_pid} outlived its dropped run");
    }

    #[tokio::test]
    async fn output_past_the_limit_is_refused_without_blocking() {
        let limits = Limits { stdout: 1000, stderr: 10, ..Limits::default() };
        let script = "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2";
        let err = run_limited(Path::new("sh"), &args(["-c", script]), &[], &[], Duration::from_secs(10), &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::TooLarge { limit: 1000, .. }), "{err}");
        let out = run_limited(
            Path::new("sh"),
            &args(["-c", "echo ok; head -c 300000 /dev/zero >&2"]),
            &[],
            &[],
            Duration::from_secs(10),
            &limits,
        )
        .await
        .unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.len()), ("ok\n", 10));
    }

    #[tokio::test]
    async fn the_environment_is_set_and_removed() {
        // HOME stands for an inherited credential: every test run has it.
        assert!(std::env::var_os("HOME").is_some(), "the test needs HOME in its environment");
        let out = run_env(
            Path::new("sh"),
            &args(["-c", "echo \"$PIKETT_EXEC_TEST_SET|${HOME-unset}|$LC_ALL\""]),
            &[("PIKETT_EXEC_TEST_SET", "given".into())],
            &["HOME"],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, "given|unset|C\n");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error_naming_it() {
        let err = run(&PathBuf::from("/nonexistent/dnf"), &[], Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dnf"), "{err}");
    }

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        assert_eq!(last_line("a\nError: boom\n\n  \n"), "Error: boom");
        assert_eq!(last_line(""), "");
    }

    #[test]
    fn guard_never_signals_our_own_group_or_every_process() {
        // kill(-0) would hit the agent's own group and kill(-1) every process.
        assert!(!GroupGuard::new(0, libc::SIGKILL).armed);
        assert!(!GroupGuard::new(1, libc::SIGKILL).armed);
        assert!(!GroupGuard::new(u32::MAX, libc::SIGKILL).armed);
        let mut g = GroupGuard::new(4242, libc::SIGKILL);
        assert!(g.armed);
        g.disarm();
        assert!(!g.armed);
    }
}

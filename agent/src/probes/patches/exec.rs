//! Runs a system tool (dnf, apt-get, systemctl, ...) with a timeout and captures its output.
//!
//! The tools are run with `LC_ALL=C` so their messages are the English ones the
//! parsers know, and without a terminal so they print no progress bars.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

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
}

/// Runs `program args...` and waits at most `timeout`; on timeout its whole
/// process group is killed, so a hung package manager (or the helpers it
/// started) never piles up.
pub async fn run(program: &PathBuf, args: &[OsString], timeout: Duration) -> Result<Output, ExecError> {
    let name = program.display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| ExecError::Spawn { program: name.clone(), source })?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(source)) => Err(ExecError::Spawn { program: name, source }),
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) with a negative pid signals the group we created
                // with process_group(0); it touches no memory of ours.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
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

    #[tokio::test]
    async fn kills_a_hung_command_and_its_children_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        let err =
            run(&PathBuf::from("sh"), &args(["-c", script.as_str()]), Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let child_pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        // the grandchild `sleep` is gone too (give the kernel a moment to reap it)
        let mut alive = true;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{child_pid}/stat")).unwrap_or_default();
            // a zombie (state Z) awaiting its reaper counts as dead
            if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
                alive = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive, "grandchild {child_pid} survived the timeout");
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
}

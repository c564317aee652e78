//! Runs the backup tools: each call with a timeout that kills its process group, the
//! credentials in the environment only (never on a command line).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use crate::probes::patches::exec::{ExecError, Output, last_line};

use super::{BackupConfig, BackupTools, CheckOutcome, DEFAULT_CHECK_SUBSET, Listing, Tool};

/// Credentials that other variables in the agent's environment would override.
const INHERITED_SECRETS: &[&str] = &[
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_COMMAND",
    "BORG_PASSPHRASE",
    "BORG_PASSPHRASE_FD",
    "BORG_PASSCOMMAND",
    "PASSPHRASE",
];

/// Runs `program args...` with `env` added (and inherited credentials removed), waiting at
/// most `timeout`; then its whole process group is killed. As `patches::exec::run`, plus
/// the environment.
pub async fn run_tool(
    program: &Path,
    args: &[OsString],
    env: &[(&str, OsString)],
    timeout: Duration,
) -> Result<Output, ExecError> {
    let name = program.display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    for var in INHERITED_SECRETS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
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
                // SAFETY: kill(2) with a negative pid signals the group we created with
                // process_group(0); it touches no memory of ours.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            Err(ExecError::Timeout { program: name, timeout })
        }
    }
}

/// What a run needs: the entry, the programs, and duplicity's passphrase.
pub struct Context<'a> {
    pub cfg: &'a BackupConfig,
    pub tools: &'a BackupTools,
    pub passphrase: Option<&'a str>,
}

impl Context<'_> {
    fn cache(&self, sub: &str) -> Option<PathBuf> {
        self.tools.cache_dir.as_ref().map(|d| d.join(sub))
    }

    /// The tool's environment: repository and credentials.
    fn env(&self, integrity_due: bool) -> Vec<(&'static str, OsString)> {
        let cfg = self.cfg;
        let mut env: Vec<(&'static str, OsString)> = Vec::new();
        match cfg.tool {
            Tool::Restic => {
                env.push(("RESTIC_REPOSITORY", cfg.repository.clone().into()));
                if let Some(p) = &cfg.password_file {
                    env.push(("RESTIC_PASSWORD_FILE", p.clone().into()));
                }
                if let Some(d) = self.cache("restic") {
                    env.push(("RESTIC_CACHE_DIR", d.into()));
                }
            }
            Tool::Borg => {
                env.push(("BORG_REPO", cfg.repository.clone().into()));
                match &cfg.password_file {
                    // borg splits the command as a shell would: the path is quoted.
                    Some(p) => env.push(("BORG_PASSCOMMAND", format!("cat {}", super::shell_word(p)).into())),
                    // Named in the agent's own config, and only read: no prompt to wait for.
                    None => env.push(("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes".into())),
                }
                if let Some(d) = self.cache("borg") {
                    env.push(("BORG_BASE_DIR", d.into()));
                }
            }
            Tool::Duplicity => {
                if let Some(p) = self.passphrase {
                    env.push(("PASSPHRASE", p.into()));
                }
            }
            Tool::Command => {
                env.push(("PIKETT_BACKUP_NAME", cfg.name.clone().into()));
                env.push(("PIKETT_BACKUP_REPOSITORY", cfg.repository.clone().into()));
                if let Some(p) = &cfg.password_file {
                    env.push(("PIKETT_BACKUP_PASSWORD_FILE", p.clone().into()));
                }
                env.push(("PIKETT_BACKUP_CHECK", if integrity_due { "1" } else { "0" }.into()));
            }
        }
        env
    }

    /// Text from a tool, fit for a summary: the repository's password and the passphrase
    /// replaced, should a tool ever print them.
    fn scrub(&self, text: &str) -> String {
        let mut s = text.replace(&self.cfg.repository, &super::redact_repository(&self.cfg.repository));
        if let Some(p) = self.passphrase.filter(|p| !p.is_empty()) {
            s = s.replace(p, "***");
        }
        s
    }

    fn program(&self) -> PathBuf {
        match self.cfg.tool {
            Tool::Restic => self.tools.restic.clone(),
            Tool::Borg => self.tools.borg.clone(),
            Tool::Duplicity => self.tools.duplicity.clone(),
            Tool::Command => PathBuf::from(self.cfg.command.first().cloned().unwrap_or_default()),
        }
    }

    /// Runs the tool; its stdout when it exits 0, else why not.
    async fn stdout_of(&self, args: &[&str], integrity_due: bool, timeout: Duration) -> Result<String, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let out = self.output_of(&args, integrity_due, timeout).await?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            let program = self.program();
            let why = match last_line(&out.stderr) {
                "" => last_line(&out.stdout).to_string(),
                line => line.to_string(),
            };
            Err(self.scrub(&format!("{} exited with {}: {why}", program.display(), exit(out.code))))
        }
    }

    async fn output_of(&self, args: &[OsString], integrity_due: bool, timeout: Duration) -> Result<Output, String> {
        run_tool(&self.program(), args, &self.env(integrity_due), timeout).await.map_err(|e| self.scrub(&e.to_string()))
    }

    fn duplicity_args<'a>(&'a self, action: &'a str, archive: &'a Option<String>) -> Vec<&'a str> {
        let mut args = vec![action];
        if let Some(a) = archive {
            args.extend(["--archive-dir", a.as_str()]);
        }
        args
    }
}

fn exit(code: Option<i32>) -> String {
    code.map_or_else(|| "a signal".to_string(), |c| format!("code {c}"))
}

/// Lists the repository. `integrity_due` tells a `command` program to include its
/// integrity check (`PIKETT_BACKUP_CHECK=1`).
pub async fn list(ctx: &Context<'_>, integrity_due: bool) -> Result<Listing, String> {
    let cfg = ctx.cfg;
    let timeout = cfg.timeout;
    match cfg.tool {
        Tool::Restic => {
            let json = ctx.stdout_of(&["snapshots", "--json", "--no-lock"], false, timeout).await?;
            let mut listing =
                Listing { backups: super::restic::parse_snapshots(&json)?, snapshots: true, ..Listing::default() };
            match ctx.stdout_of(&["stats", "--json", "--no-lock", "--mode", "raw-data"], false, timeout).await {
                Ok(json) => match super::restic::parse_stats(&json) {
                    Ok(size) => listing.repository_size_bytes = Some(size),
                    Err(e) => listing.notes.push(format!("size unknown: {e}")),
                },
                Err(e) => listing.notes.push(format!("size unknown: {e}")),
            }
            Ok(listing)
        }
        Tool::Borg => {
            // A listing only reads: it does not wait for the lock a running backup holds.
            let json = ctx.stdout_of(&["--bypass-lock", "list", "--json"], false, timeout).await?;
            let backups = super::borg::parse_list(&json, &ctx.tools.time_zone)?;
            let mut listing = Listing { backups, snapshots: true, ..Listing::default() };
            match ctx.stdout_of(&["--bypass-lock", "info", "--json"], false, timeout).await {
                Ok(json) => match super::borg::parse_info(&json) {
                    Ok(size) => listing.repository_size_bytes = Some(size),
                    Err(e) => listing.notes.push(format!("size unknown: {e}")),
                },
                Err(e) => listing.notes.push(format!("size unknown: {e}")),
            }
            Ok(listing)
        }
        Tool::Duplicity => {
            let archive = ctx.cache("duplicity").map(|d| d.display().to_string());
            let mut args = ctx.duplicity_args("collection-status", &archive);
            args.extend(["--log-fd", "1", cfg.repository.as_str()]);
            let text = ctx.stdout_of(&args, false, timeout).await?;
            let mut listing = super::duplicity::parse_collection_status(&text)?;
            listing.repository_size_bytes =
                cfg.repository.strip_prefix("file://").and_then(|dir| local_size(Path::new(dir)));
            Ok(listing)
        }
        Tool::Command => {
            let args: Vec<&str> = cfg.command.iter().skip(1).map(String::as_str).collect();
            let timeout = if integrity_due { cfg.check_timeout } else { timeout };
            let json = ctx.stdout_of(&args, integrity_due, timeout).await?;
            super::command::parse(&json)
        }
    }
}

/// The total size of duplicity's files in a local target directory.
fn local_size(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut total = 0u64;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("duplicity-") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Some(total)
}

/// Runs the tool's integrity check (`check_timeout` at most).
pub async fn integrity(ctx: &Context<'_>) -> CheckOutcome {
    let cfg = ctx.cfg;
    let timeout = cfg.check_timeout;
    let outcome = match cfg.tool {
        Tool::Restic => {
            let subset = cfg.check_subset.as_deref().unwrap_or(DEFAULT_CHECK_SUBSET);
            let mut args: Vec<OsString> = vec!["check".into()];
            if !subset.is_empty() {
                args.push(format!("--read-data-subset={subset}").into());
            }
            ctx.output_of(&args, true, timeout).await.map(|out| super::restic::classify_check(&out))
        }
        Tool::Borg => {
            let args: Vec<OsString> = vec!["check".into(), "--repository-only".into()];
            ctx.output_of(&args, true, timeout).await.map(|out| super::borg::classify_check(&out))
        }
        Tool::Duplicity => {
            // verify compares with a directory: an empty one, so nothing of the host is read.
            let safe_name: String = cfg.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            let empty = std::env::temp_dir().join(format!("pikett-agent-verify-{}-{safe_name}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&empty) {
                return CheckOutcome::NotRun(format!("cannot make the empty directory {}: {e}", empty.display()));
            }
            let archive = ctx.cache("duplicity").map(|d| d.display().to_string());
            let empty_str = empty.display().to_string();
            let mut args = ctx.duplicity_args("verify", &archive);
            args.extend([cfg.repository.as_str(), empty_str.as_str()]);
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            let out = ctx.output_of(&args, true, timeout).await.map(|out| super::duplicity::classify_verify(&out));
            let _ = std::fs::remove_dir(&empty);
            out
        }
        // The program checks itself (PIKETT_BACKUP_CHECK=1) and prints the result.
        Tool::Command => Ok(CheckOutcome::NotRun("the command printed no integrity result".to_string())),
    };
    match outcome {
        Ok(CheckOutcome::Passed(s)) => CheckOutcome::Passed(ctx.scrub(&s)),
        Ok(CheckOutcome::Failed(s)) => CheckOutcome::Failed(ctx.scrub(&s)),
        Ok(CheckOutcome::NotRun(s)) => CheckOutcome::NotRun(ctx.scrub(&s)),
        Err(why) => CheckOutcome::NotRun(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_environment_reaches_the_tool_and_inherited_secrets_do_not() {
        let out = run_tool(
            Path::new("sh"),
            &["-c".into(), "echo \"$RESTIC_PASSWORD_FILE|${RESTIC_PASSWORD-unset}|$LC_ALL\"".into()],
            &[("RESTIC_PASSWORD_FILE", "/etc/pikett/r.pass".into())],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, "/etc/pikett/r.pass|unset|C\n");
    }

    #[tokio::test]
    async fn a_hung_tool_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let err = run_tool(Path::new("sh"), &["-c".into(), "sleep 30".into()], &[], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

//! Runs the backup tools through `patches::exec::run_env`: each call with a timeout that
//! stops its process group, the credentials in the environment only (never on a command
//! line), and every text the tools print scrubbed of the secrets before it is shown.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probes::patches::exec::{self, Output, last_line};

use super::{BackupConfig, BackupTools, CheckOutcome, Listing, Secrets, Tool};

/// Credentials in the agent's environment that would override the entry's own.
const INHERITED_SECRETS: &[&str] = &[
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_COMMAND",
    "BORG_PASSPHRASE",
    "BORG_PASSPHRASE_FD",
    "BORG_PASSCOMMAND",
    "PASSPHRASE",
];

/// What a run needs: the entry, the programs, the password read from `password_file`.
#[derive(Clone)]
pub struct Context {
    pub cfg: BackupConfig,
    pub tools: BackupTools,
    password: Option<String>,
    pub secrets: Secrets,
}

impl Context {
    pub fn new(cfg: BackupConfig, tools: BackupTools, password: Option<String>) -> Context {
        let secrets = Secrets::new(&cfg.repository, password.as_deref());
        Context { cfg, tools, password, secrets }
    }

    fn cache(&self, sub: &str) -> Option<PathBuf> {
        self.tools.cache_dir.as_ref().map(|d| d.join(sub))
    }

    /// The tool's environment: repository and credentials.
    fn env(&self, integrity_due: bool) -> Vec<(&'static str, OsString)> {
        let cfg = &self.cfg;
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
                match &self.password {
                    Some(p) => env.push(("BORG_PASSPHRASE", p.into())),
                    // Named in the agent's own config, and only read: no prompt to wait for.
                    None => env.push(("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes".into())),
                }
                // Only the cache: BORG_BASE_DIR would move borg's keys and security
                // directories too.
                if let Some(d) = self.cache("borg") {
                    env.push(("BORG_CACHE_DIR", d.into()));
                }
                // borg 1.2 prints local times without an offset: in UTC they are read right.
                env.push(("TZ", "UTC".into()));
            }
            Tool::Duplicity => {
                if let Some(p) = &self.password {
                    env.push(("PASSPHRASE", p.into()));
                }
                // The URL's password goes by the environment; the URL on the command line
                // is without it.
                if let Some((_, password)) = super::split_url_password(&cfg.repository) {
                    env.push(("FTP_PASSWORD", password.into()));
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

    /// duplicity's target URL as its command line gets it: without a password.
    fn duplicity_url(&self) -> String {
        super::split_url_password(&self.cfg.repository).map_or_else(|| self.cfg.repository.clone(), |(url, _)| url)
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
    async fn stdout_of(&self, args: &[String], integrity_due: bool, timeout: Duration) -> Result<String, String> {
        let out = self.output_of(args, integrity_due, timeout).await?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            let why = match last_line(&out.stderr) {
                "" => last_line(&out.stdout).to_string(),
                line => line.to_string(),
            };
            Err(format!("{} exited with {}: {why}", self.program().display(), exit(out.code)))
        }
    }

    async fn output_of(&self, args: &[String], integrity_due: bool, timeout: Duration) -> Result<Output, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        // A program of the operator's takes a slot of max_concurrent_commands, as the
        // command checks' plugins do (the wait is not part of its timeout).
        let _slot = match (&self.tools.command_limits, self.cfg.tool) {
            (Some(limits), Tool::Command) => {
                Some(limits.slot().await.ok_or("no slot to run the program: the command limit was closed")?)
            }
            _ => None,
        };
        exec::run_env(&self.program(), &args, &self.env(integrity_due), INHERITED_SECRETS, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    fn duplicity_args(&self, action: &str) -> Vec<String> {
        let mut args = vec![action.to_string()];
        if let Some(a) = self.cache("duplicity") {
            args.extend(["--archive-dir".to_string(), a.display().to_string()]);
        }
        args
    }
}

fn exit(code: Option<i32>) -> String {
    code.map_or_else(|| "a signal".to_string(), |c| format!("code {c}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Lists the repository (borg's size only when `size_due`: `borg info` reads much). Every
/// text in the result or the error is scrubbed of the secrets.
pub async fn list(ctx: &Context, size_due: bool) -> Result<Listing, String> {
    let mut listing = list_unscrubbed(ctx, size_due).await.map_err(|e| ctx.secrets.scrub(&e))?;
    for note in &mut listing.notes {
        *note = ctx.secrets.scrub(note);
    }
    for p in &mut listing.problems {
        p.problem = ctx.secrets.scrub(&p.problem);
    }
    if let Some((_, _, summary)) = &mut listing.integrity {
        *summary = ctx.secrets.scrub(summary);
    }
    Ok(listing)
}

async fn list_unscrubbed(ctx: &Context, size_due: bool) -> Result<Listing, String> {
    let cfg = &ctx.cfg;
    let timeout = cfg.timeout;
    match cfg.tool {
        Tool::Restic => {
            let json = ctx.stdout_of(&strings(&["snapshots", "--json", "--no-lock"]), false, timeout).await?;
            let mut listing =
                Listing { backups: super::restic::parse_snapshots(&json)?, snapshots: true, ..Listing::default() };
            let stats = strings(&["stats", "--json", "--no-lock", "--mode", "raw-data"]);
            match ctx.stdout_of(&stats, false, timeout).await {
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
            let json = ctx.stdout_of(&strings(&["--bypass-lock", "list", "--json"]), false, timeout).await?;
            let backups = super::borg::parse_list(&json)?;
            let mut listing = Listing { backups, snapshots: true, ..Listing::default() };
            if size_due {
                match ctx.stdout_of(&strings(&["--bypass-lock", "info", "--json"]), false, timeout).await {
                    Ok(json) => match super::borg::parse_info(&json) {
                        Ok(size) => listing.repository_size_bytes = Some(size),
                        Err(e) => listing.notes.push(format!("size unknown: {e}")),
                    },
                    Err(e) => listing.notes.push(format!("size unknown: {e}")),
                }
            }
            Ok(listing)
        }
        Tool::Duplicity => {
            let mut args = ctx.duplicity_args("collection-status");
            args.extend(["--log-fd".to_string(), "1".to_string(), ctx.duplicity_url()]);
            let text = ctx.stdout_of(&args, false, timeout).await?;
            let mut listing = super::duplicity::parse_collection_status(&text)?;
            if let Some(dir) = local_dir(&cfg.repository) {
                listing.repository_size_bytes =
                    tokio::task::spawn_blocking(move || local_size(&dir)).await.ok().flatten();
            }
            Ok(listing)
        }
        Tool::Command => {
            let args: Vec<String> = cfg.command.iter().skip(1).cloned().collect();
            let json = ctx.stdout_of(&args, false, timeout).await?;
            super::command::parse(&json)
        }
    }
}

/// The directory of a `file://` URL, percent-decoded (`file:///srv/my%20dup`).
pub fn local_dir(repository: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let path = repository.strip_prefix("file://")?;
    Some(PathBuf::from(OsString::from_vec(super::percent_decode(path))))
}

/// The total size of duplicity's files in a local target directory (blocking).
fn local_size(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut total = 0u64;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("duplicity-") {
            total = total.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0));
        }
    }
    Some(total)
}

/// Runs the tool's integrity check (`check_timeout` at most); restic reads `subset`.
/// Every text in the outcome is scrubbed of the secrets.
pub async fn integrity(ctx: &Context, subset: Option<&str>) -> CheckOutcome {
    match integrity_unscrubbed(ctx, subset).await {
        CheckOutcome::Passed(s) => CheckOutcome::Passed(ctx.secrets.scrub(&s)),
        CheckOutcome::Failed(s) => CheckOutcome::Failed(ctx.secrets.scrub(&s)),
        CheckOutcome::NotRun(s) => CheckOutcome::NotRun(ctx.secrets.scrub(&s)),
    }
}

async fn integrity_unscrubbed(ctx: &Context, subset: Option<&str>) -> CheckOutcome {
    let cfg = &ctx.cfg;
    let timeout = cfg.check_timeout;
    let outcome = match cfg.tool {
        Tool::Restic => {
            let args = super::restic_check_args(subset.unwrap_or(super::DEFAULT_CHECK_SUBSET));
            ctx.output_of(&args, true, timeout).await.map(|out| super::restic::classify_check(&out))
        }
        Tool::Borg => {
            let args = strings(&["check", "--repository-only"]);
            ctx.output_of(&args, true, timeout).await.map(|out| super::borg::classify_check(&out))
        }
        Tool::Duplicity => {
            // verify compares with a directory: an empty one of our own, so nothing of the
            // host is read.
            let base = ctx.cache("duplicity").unwrap_or_else(std::env::temp_dir);
            let made = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&base)?;
                tempfile::Builder::new().prefix("pikett-verify-").tempdir_in(&base)
            })
            .await;
            let empty = match made {
                Ok(Ok(dir)) => dir,
                Ok(Err(e)) => {
                    return CheckOutcome::NotRun(format!("cannot make an empty directory to verify with: {e}"));
                }
                Err(e) => return CheckOutcome::NotRun(format!("cannot make an empty directory to verify with: {e}")),
            };
            let mut args = ctx.duplicity_args("verify");
            args.extend([ctx.duplicity_url(), empty.path().display().to_string()]);
            let out = ctx.output_of(&args, true, timeout).await.map(|out| super::duplicity::classify_verify(&out));
            let _ = tokio::task::spawn_blocking(move || empty.close()).await;
            out
        }
        // The program checks itself when told to (PIKETT_BACKUP_CHECK=1) and prints the result.
        Tool::Command => {
            let args: Vec<String> = cfg.command.iter().skip(1).cloned().collect();
            match ctx.stdout_of(&args, true, timeout).await.and_then(|json| super::command::parse(&json)) {
                Ok(Listing { integrity: Some((_, true, summary)), .. }) => Ok(CheckOutcome::Passed(summary)),
                Ok(Listing { integrity: Some((_, false, summary)), .. }) => Ok(CheckOutcome::Failed(summary)),
                Ok(_) => Ok(CheckOutcome::NotRun("the command printed no integrity result".to_string())),
                Err(e) => Err(e),
            }
        }
    };
    outcome.unwrap_or_else(CheckOutcome::NotRun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_decoded() {
        assert_eq!(local_dir("file:///srv/my%20dup"), Some(PathBuf::from("/srv/my dup")));
        assert_eq!(local_dir("file:///srv/100%"), Some(PathBuf::from("/srv/100%")));
        assert_eq!(local_dir("sftp://h/srv"), None);
    }

    #[test]
    fn local_size_sums_only_duplicity_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("duplicity-full.vol1.difftar.gpg"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("duplicity-full.manifest.gpg"), [0u8; 20]).unwrap();
        std::fs::write(dir.path().join("other"), [0u8; 1000]).unwrap();
        assert_eq!(local_size(dir.path()), Some(120));
        assert_eq!(local_size(&dir.path().join("none")), None);
    }
}

//! The `backups` probe against real restic, borg and duplicity repositories made in temp
//! directories (Debian's packages), with real backups: age, chain length and integrity,
//! judged at an injected time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::backups::{BackupConfig, BackupProbe, BackupTools, CheckOutcome, Listing, Verdict};
use pikett_agent::probes::{MemoryState, SharedState};

const PASSWORD: &str = "correct horse battery staple";

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab { dir };
        std::fs::write(lab.password_file(), format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(lab.password_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(lab.source()).unwrap();
        std::fs::write(lab.source().join("a.txt"), "first\n").unwrap();
        // Random bytes: incompressible and without repeats to deduplicate.
        let mut noise = vec![0u8; 200_000];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
        std::fs::write(lab.source().join("b.bin"), noise).unwrap();
        lab
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn password_file(&self) -> PathBuf {
        self.path("repo.pass")
    }
    fn source(&self) -> PathBuf {
        self.path("src")
    }
    fn touch_source(&self, n: usize) {
        std::fs::write(self.source().join("a.txt"), format!("change {n}\n")).unwrap();
    }
    fn tools(&self) -> BackupTools {
        BackupTools { cache_dir: Some(self.path("cache")), ..BackupTools::default() }
    }

    /// Runs a tool as the operator's backup job would, the password in the environment.
    fn sh(&self, program: &str, args: &[&str], env: &[(&str, &str)]) {
        let out = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("HOME", self.dir.path())
            .env("TZ", "UTC")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (install restic borgbackup duplicity)"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self, toml: &str) -> BackupConfig {
        let toml = toml.replace("PASSWORD_FILE", &self.password_file().display().to_string());
        toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
    }

    fn probe(&self, cfg: BackupConfig, state: SharedState) -> BackupProbe {
        BackupProbe::with_tools(cfg, state, self.tools()).expect("the probe starts")
    }
}

fn state() -> SharedState {
    Arc::new(MemoryState::default())
}

fn ago(hours: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_hours(hours)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (the tools run with TZ=UTC).
fn stamp(t: Timestamp, sep: &str) -> String {
    t.strftime(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string()
}

async fn look(probe: &mut BackupProbe, now: Timestamp) -> (Listing, Verdict) {
    probe.look(now).await.unwrap_or_else(|e| panic!("cannot list: {e}"))
}

/// Runs the integrity check (when due) and then looks.
async fn check_and_look(probe: &mut BackupProbe, now: Timestamp) -> (Listing, Verdict) {
    probe.check_now(now).await;
    look(probe, now).await
}

// --- restic -----------------------------------------------------------------------------

fn restic_repo(lab: &Lab, name: &str, snapshots_hours_ago: &[i64]) -> PathBuf {
    let repo = lab.path(name);
    let pw = lab.password_file().display().to_string();
    let repo_s = repo.display().to_string();
    let env = [("RESTIC_PASSWORD_FILE", pw.as_str()), ("RESTIC_REPOSITORY", repo_s.as_str())];
    lab.sh("restic", &["init", "-q"], &env);
    let src = lab.source().display().to_string();
    for (i, h) in snapshots_hours_ago.iter().enumerate() {
        lab.touch_source(i);
        lab.sh("restic", &["backup", "-q", "--time", &stamp(ago(*h), " "), &src], &env);
    }
    repo
}

fn restic_config(lab: &Lab, repo: &Path, extra: &str) -> BackupConfig {
    lab.config(&format!(
        "name = \"home\"\ntool = \"restic\"\nrepository = \"{}\"\npassword_file = \"PASSWORD_FILE\"\n{extra}",
        repo.display()
    ))
}

#[tokio::test]
async fn restic_healthy_repository_is_ok_with_samples_and_inventory() {
    let lab = Lab::new();
    let repo = restic_repo(&lab, "restic", &[50, 26, 2]);
    let cfg = restic_config(
        &lab,
        &repo,
        "min_full = 1\nmin_incremental = 2\ncheck_interval = \"7d\"\ncheck_subset = \"100%\"\n",
    );
    let mut probe = lab.probe(cfg, state());
    // A poll reports the listing at once and starts the check in a task of its own...
    let obs = pikett_agent::probes::Probe::poll(&mut probe).await;
    let Observation::Check(c) = &obs[0] else { panic!("{obs:?}") };
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.contains("integrity check started") && !c.summary.contains("no errors"), "{}", c.summary);
    // ...whose result comes with the next look after it ends.
    probe.wait_for_check().await;
    let now = Timestamp::now();
    let (listing, verdict) = look(&mut probe, now).await;
    assert_eq!(verdict.state, State::Ok, "{}", verdict.summary);
    assert_eq!(listing.backups.len(), 3);
    assert!(verdict.summary.contains("3 snapshots (want at least 3)"), "{}", verdict.summary);
    assert!(
        verdict.summary.contains("integrity check") && verdict.summary.contains("no errors were found"),
        "{}",
        verdict.summary
    );
    let size = listing.repository_size_bytes.expect("restic stats gives a size");
    assert!(size > 100_000, "{size}");

    let obs = probe.observations(&listing, &verdict, now);
    let sample = |name: &str| {
        obs.iter()
            .find_map(|o| match o {
                Observation::Sample(s) if s.name == name => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no sample {name}"))
    };
    let age = sample("pikett_backup_age_seconds");
    assert!((2.0 * 3600.0 - 120.0..2.0 * 3600.0 + 120.0).contains(&age.value), "{age:?}");
    assert_eq!(age.labels.get("backup").map(String::as_str), Some("home"));
    assert_eq!(sample("pikett_backup_count").value, 3.0);
    assert_eq!(sample("pikett_backup_count").labels.get("kind").map(String::as_str), Some("snapshot"));
    assert_eq!(sample("pikett_backup_repository_size_bytes").value, size as f64);
    assert_eq!(sample("pikett_backup_integrity_ok").value, 1.0);
    let inventory = obs
        .iter()
        .find_map(|o| match o {
            Observation::Inventory(i) => Some(i.clone()),
            _ => None,
        })
        .expect("an inventory");
    assert_eq!(inventory.name, "backup/home");
    assert_eq!(inventory.data["tool"], "restic");
    assert_eq!(inventory.data["backups"].as_array().map(Vec::len), Some(3));
    assert_eq!(inventory.data["integrity"]["ok"], true);
}

#[tokio::test]
async fn restic_too_few_snapshots_warn_and_age_is_judged_at_the_given_time() {
    let lab = Lab::new();
    let repo = restic_repo(&lab, "restic", &[30, 3]);
    let mut probe = lab.probe(restic_config(&lab, &repo, "min_full = 3\nmin_incremental = 4\n"), state());
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Warning, "{}", v.summary);
    assert!(v.summary.contains("only 2 snapshots, want at least 7"), "{}", v.summary);

    let mut probe = lab.probe(restic_config(&lab, &repo, "max_age = \"26h\"\nmin_full = 2\n"), state());
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    // 30 hours on, the newest (3 h old now) is 33 h old: late.
    let (_, v) = look(&mut probe, Timestamp::now() + SignedDuration::from_hours(30)).await;
    assert_eq!(v.state, State::Warning, "{}", v.summary);
    assert!(v.summary.contains("older than max_age"), "{}", v.summary);
    // Three days on: older than twice max_age.
    let (_, v) = look(&mut probe, Timestamp::now() + SignedDuration::from_hours(72)).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("older than twice max_age"), "{}", v.summary);
}

#[tokio::test]
async fn restic_backdated_snapshots_are_late() {
    let lab = Lab::new();
    let repo = restic_repo(&lab, "restic", &[100, 60]);
    let mut probe = lab.probe(restic_config(&lab, &repo, "max_age = \"26h\"\n"), state());
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "60 h old against 26 h: {}", v.summary);
    let mut probe = lab.probe(restic_config(&lab, &repo, "max_age = \"48h\"\n"), state());
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Warning, "60 h old against 48 h: {}", v.summary);
}

#[tokio::test]
async fn restic_corrupted_pack_fails_the_integrity_check_and_the_result_is_kept() {
    let lab = Lab::new();
    let repo = restic_repo(&lab, "restic", &[5, 1]);
    // The biggest pack holds b.bin's data: overwrite bytes in its middle.
    let mut packs: Vec<PathBuf> = walk(&repo.join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let pack = packs.last().expect("a pack").clone();
    overwrite(&pack, 2000);
    let shared = state();
    let cfg = restic_config(&lab, &repo, "check_interval = \"1d\"\ncheck_subset = \"100%\"\n");
    let mut probe = lab.probe(cfg.clone(), shared.clone());
    let (_, v) = check_and_look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("integrity check") && v.summary.contains("FAILED"), "{}", v.summary);
    assert!(v.summary.contains("does not match"), "{}", v.summary);
    // A restarted probe knows from the saved state, without checking again (a failure is
    // retried after min(check_interval, 6h), not at every poll).
    let mut again = lab.probe(cfg, shared);
    assert!(!again.check_due(Timestamp::now()), "a failed check is not repeated at once");
    assert!(again.check_now(Timestamp::now()).await.is_none());
    let (_, v) = look(&mut again, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("FAILED") && v.summary.contains("does not match"), "{}", v.summary);
    // Six hours on, it is retried (all data again) and still fails.
    let later = Timestamp::now() + SignedDuration::from_hours(7);
    assert!(again.check_due(later));
    assert!(matches!(again.check_now(later).await, Some(CheckOutcome::Failed(_))));
}

#[tokio::test]
async fn restic_wrong_password_is_unknown_without_the_password() {
    let lab = Lab::new();
    let repo = restic_repo(&lab, "restic", &[1]);
    std::fs::write(lab.password_file(), "not the password\n").unwrap();
    let mut probe = lab.probe(restic_config(&lab, &repo, ""), state());
    let obs = pikett_agent::probes::Probe::poll(&mut probe).await;
    let Observation::Check(c) = &obs[0] else { panic!("{obs:?}") };
    assert_eq!((c.name.as_str(), c.state), ("backup/home", State::Unknown), "{c:?}");
    assert!(c.summary.starts_with("cannot list the backups of"), "{}", c.summary);
    assert!(c.summary.contains("wrong password"), "{}", c.summary);
    assert!(!c.summary.contains("not the password"), "{}", c.summary);
}

// --- borg -------------------------------------------------------------------------------

fn borg_repo(lab: &Lab, archives_hours_ago: &[i64]) -> PathBuf {
    let repo = lab.path("borg");
    let passcommand = format!("cat {}", lab.password_file().display());
    let repo_s = repo.display().to_string();
    let base = lab.path("borg-job").display().to_string();
    let env =
        [("BORG_PASSCOMMAND", passcommand.as_str()), ("BORG_REPO", repo_s.as_str()), ("BORG_BASE_DIR", base.as_str())];
    lab.sh("borg", &["init", "-e", "repokey"], &env);
    let src = lab.source().display().to_string();
    for (i, h) in archives_hours_ago.iter().enumerate() {
        lab.touch_source(i);
        let archive = format!("::a{i}");
        lab.sh("borg", &["create", "--timestamp", &stamp(ago(*h), "T"), &archive, &src], &env);
    }
    repo
}

fn borg_config(lab: &Lab, repo: &Path, extra: &str) -> BackupConfig {
    lab.config(&format!(
        "name = \"srv\"\ntool = \"borg\"\nrepository = \"{}\"\npassword_file = \"PASSWORD_FILE\"\n{extra}",
        repo.display()
    ))
}

#[tokio::test]
async fn borg_healthy_late_and_corrupted() {
    let lab = Lab::new();
    let repo = borg_repo(&lab, &[40, 20, 1]);
    let mut probe = lab.probe(borg_config(&lab, &repo, "min_full = 3\ncheck_interval = \"1d\"\n"), state());
    let (listing, v) = check_and_look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    assert_eq!(listing.backups.len(), 3);
    let age = Timestamp::now().duration_since(v.newest.expect("a newest"));
    assert!((age.as_secs() - 3600).abs() < 300, "the newest is an hour old (time zones right): {age:?}");
    assert!(listing.repository_size_bytes.is_some_and(|s| s > 1000), "{:?}", listing.repository_size_bytes);
    assert!(v.summary.contains("integrity check") && v.summary.contains("no problems found"), "{}", v.summary);

    // Backdated: the newest archive 20 h old against 12 h is late, against 8 h far too old.
    let lab2 = Lab::new();
    let repo2 = borg_repo(&lab2, &[40, 20]);
    let mut late = lab2.probe(borg_config(&lab2, &repo2, "max_age = \"12h\"\nmin_full = 2\n"), state());
    let (_, v) = look(&mut late, Timestamp::now()).await;
    assert_eq!(v.state, State::Warning, "{}", v.summary);
    let mut later = lab2.probe(borg_config(&lab2, &repo2, "max_age = \"8h\"\nmin_full = 2\n"), state());
    let (_, v) = look(&mut later, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);

    // Corrupt the biggest segment: borg check --repository-only finds it.
    let mut segments = walk(&repo.join("data"));
    segments.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    overwrite(segments.last().expect("a segment"), 5000);
    let mut probe = lab.probe(borg_config(&lab, &repo, "min_full = 3\ncheck_interval = \"1d\"\n"), state());
    let (_, v) = check_and_look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("FAILED") && v.summary.contains("mismatch"), "{}", v.summary);
}

// --- duplicity --------------------------------------------------------------------------

fn duplicity_target(lab: &Lab, incrementals: usize) -> (PathBuf, String) {
    let target = lab.path("dup");
    let url = format!("file://{}", target.display());
    let src = lab.source().display().to_string();
    let archive = lab.path("dup-job").display().to_string();
    let env = [("PASSPHRASE", PASSWORD)];
    let run = |action: &str| {
        lab.sh("duplicity", &[action, "--no-print-statistics", "--archive-dir", &archive, &src, &url], &env);
    };
    run("full");
    for i in 0..incrementals {
        // duplicity names sets by the second: one per second.
        std::thread::sleep(Duration::from_millis(1100));
        lab.touch_source(i);
        run("incremental");
    }
    (target, url)
}

fn duplicity_config(lab: &Lab, url: &str, extra: &str) -> BackupConfig {
    lab.config(&format!(
        "name = \"mail\"\ntool = \"duplicity\"\nrepository = \"{url}\"\npassword_file = \"PASSWORD_FILE\"\n{extra}"
    ))
}

#[tokio::test]
async fn duplicity_chain_is_counted_verified_and_a_deleted_volume_is_critical() {
    let lab = Lab::new();
    let (target, url) = duplicity_target(&lab, 2);
    let cfg = duplicity_config(&lab, &url, "min_full = 1\nmin_incremental = 2\ncheck_interval = \"7d\"\n");
    let mut probe = lab.probe(cfg.clone(), state());
    let (listing, v) = check_and_look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    assert!(v.summary.contains("1 full, 2 incremental in the current chain"), "{}", v.summary);
    assert!(v.summary.contains("every volume read back"), "verify ran: {}", v.summary);
    assert!(listing.repository_size_bytes.is_some_and(|s| s > 100_000), "{:?}", listing.repository_size_bytes);

    let mut wants_more = lab.probe(duplicity_config(&lab, &url, "min_incremental = 3\n"), state());
    let (_, v) = look(&mut wants_more, Timestamp::now()).await;
    assert_eq!(v.state, State::Warning, "{}", v.summary);
    assert!(v.summary.contains("chain short"), "{}", v.summary);

    // The first incremental's volume deleted: the chain is broken from there on.
    let volume = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("duplicity-inc.") && n.contains(".vol1.")
        })
        .min()
        .expect("an incremental volume");
    std::fs::remove_file(volume).unwrap();
    let mut probe = lab.probe(duplicity_config(&lab, &url, "min_incremental = 2\n"), state());
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("has no volumes"), "{}", v.summary);
}

// --- command ----------------------------------------------------------------------------

#[tokio::test]
async fn command_output_is_judged_and_told_when_to_check() {
    let lab = Lab::new();
    let script = lab.path("list-backups.sh");
    let full = Timestamp::now() - SignedDuration::from_hours(30);
    let inc = Timestamp::now() - SignedDuration::from_hours(5);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             integrity=''\n\
             if [ \"$PIKETT_BACKUP_CHECK\" = 1 ]; then integrity=',\"integrity\":{{\"ok\":false,\"summary\":\"tape 3 unreadable\"}}'; fi\n\
             echo \"{{\\\"backups\\\":[{{\\\"time\\\":\\\"{full}\\\",\\\"kind\\\":\\\"full\\\",\\\"size_bytes\\\":5000}},{{\\\"time\\\":\\\"{inc}\\\",\\\"kind\\\":\\\"incremental\\\"}}],\\\"repository_size_bytes\\\":9000$integrity}}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = |extra: &str| {
        lab.config(&format!(
            "name = \"tape\"\ntool = \"command\"\ncommand = [\"{}\"]\nmin_incremental = 1\n{extra}",
            script.display()
        ))
    };
    let mut probe = lab.probe(cfg(""), state());
    let (listing, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    assert_eq!((listing.repository_size_bytes, listing.backups.len()), (Some(9000), 2));
    let mut checked = lab.probe(cfg("check_interval = \"1d\"\n"), state());
    let (_, v) = look(&mut checked, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "the listing does not ask for the check: {}", v.summary);
    let (_, v) = check_and_look(&mut checked, Timestamp::now()).await;
    assert_eq!(v.state, State::Critical, "{}", v.summary);
    assert!(v.summary.contains("FAILED: tape 3 unreadable"), "{}", v.summary);
}

// --- fake tools: what the probe hands them -----------------------------------------------

/// An executable shell script in the lab; `$LOG` in it is `log` (appended to by the script).
fn fake_tool(lab: &Lab, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let log = lab.path(&format!("{name}.log"));
    let script = lab.path(name);
    std::fs::write(&script, format!("#!/bin/sh\nLOG='{}'\n{body}", log.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test]
async fn duplicity_gets_the_url_password_in_its_environment_not_its_command_line() {
    let lab = Lab::new();
    let full = (Timestamp::now() - SignedDuration::from_hours(2)).strftime("%Y%m%dT%H%M%SZ").to_string();
    let incomplete = lab.path("incomplete");
    std::fs::write(&incomplete, "1").unwrap();
    let (script, log) = fake_tool(
        &lab,
        "duplicity",
        &format!(
            "echo \"args: $*\" >> \"$LOG\"\necho \"env: $FTP_PASSWORD|$PASSPHRASE\" >> \"$LOG\"\n\
             printf 'INFO 3 \\nchain-complete\\n full {full} 1 enc\\norphaned-sets-num 0\\nincomplete-sets-num %s\\n. x\\n' \"$(cat {})\"\n",
            incomplete.display()
        ),
    );
    let tools = BackupTools { duplicity: script, ..lab.tools() };
    let cfg = duplicity_config(&lab, "ftp://backup:s3cr%65t@127.0.0.1/mail", "");
    let mut probe = BackupProbe::with_tools(cfg, state(), tools).unwrap();
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    let logged = read(&log);
    assert!(logged.contains("args: collection-status") && logged.contains("ftp://backup@127.0.0.1/mail"), "{logged}");
    assert!(
        !logged.lines().any(|l| l.starts_with("args:") && l.contains("s3cr")),
        "password on the command line: {logged}"
    );
    assert!(logged.contains(&format!("env: s3cret|{PASSWORD}")), "FTP_PASSWORD decoded, PASSPHRASE read: {logged}");
    // An incomplete set at first sight: a note (a backup may be running)...
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    assert!(v.summary.contains("1 incomplete backup sets (a backup running?"), "{}", v.summary);
    // ...still there at the next poll: a WARNING.
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Warning, "{}", v.summary);
    // Gone: OK again.
    std::fs::write(&incomplete, "0").unwrap();
    let (_, v) = look(&mut probe, Timestamp::now()).await;
    assert_eq!(v.state, State::Ok, "{}", v.summary);
    assert!(!v.summary.contains("s3cr"), "{}", v.summary);
}

#[tokio::test]
async fn a_password_in_the_repository_url_reaches_no_summary_inventory_or_state() {
    let lab = Lab::new();
    let newest = (Timestamp::now() - SignedDuration::from_hours(1)).to_string();
    // A restic that lists, then fails quoting its repository (as restic does for a REST
    // server it cannot reach), and fails its check the same way.
    let (script, _) = fake_tool(
        &lab,
        "restic",
        &format!(
            "case \"$1\" in\n\
             snapshots) echo '[{{\"time\":\"{newest}\",\"id\":\"abc\"}}]';;\n\
             check) echo \"pack at $RESTIC_REPOSITORY does not match (http://u:s3cret@127.0.0.1:1/r)\" >&2; echo 'Fatal: repository contains errors' >&2; exit 1;;\n\
             *) echo \"Fatal: unable to open repository at $RESTIC_REPOSITORY: Head http://u:s3cret@127.0.0.1:1/r/config\" >&2; exit 1;;\n\
             esac\n"
        ),
    );
    let repo = "rest:http://u:s3cr%65t@127.0.0.1:1/r";
    let shared = state();
    let cfg = lab.config(&format!(
        "name = \"rest\"\ntool = \"restic\"\nrepository = \"{repo}\"\npassword_file = \"PASSWORD_FILE\"\ncheck_interval = \"1d\"\n"
    ));
    let mut probe =
        BackupProbe::with_tools(cfg, shared.clone(), BackupTools { restic: script, ..lab.tools() }).unwrap();
    let outcome = probe.check_now(Timestamp::now()).await;
    assert!(matches!(&outcome, Some(CheckOutcome::Failed(s)) if s.contains("u:***@127.0.0.1")), "{outcome:?}");
    let obs = pikett_agent::probes::Probe::poll(&mut probe).await;
    let Observation::Check(c) = &obs[0] else { panic!("{obs:?}") };
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    assert!(
        c.summary.contains("size unknown") && c.summary.contains("rest:http://u:***@127.0.0.1:1/r"),
        "{}",
        c.summary
    );
    let all = format!("{obs:?}");
    assert!(all.contains("Inventory"), "{all}");
    for secret in ["s3cret", "s3cr%65t", PASSWORD] {
        assert!(!all.contains(secret), "{secret} in {all}");
        let stored = String::from_utf8_lossy(&shared.load("backups/rest/integrity").unwrap_or_default()).to_string();
        assert!(stored.contains("FAILED") || stored.contains("\"ok\":false"), "{stored}");
        assert!(!stored.contains(secret), "{secret} in the stored state {stored}");
    }
}

#[tokio::test]
async fn borg_gets_its_passphrase_cache_and_utc_and_its_size_is_read_at_the_check_interval() {
    let lab = Lab::new();
    let (script, log) = fake_tool(
        &lab,
        "borg",
        "echo \"$* |$BORG_PASSPHRASE|${BORG_PASSCOMMAND-none}|${BORG_BASE_DIR-none}|$BORG_CACHE_DIR|$TZ\" >> \"$LOG\"\n\
         case \"$2\" in\n\
         list) echo '{\"archives\":[{\"name\":\"a\",\"start\":\"2026-12-06T07:09:05.000000\"}]}';;\n\
         info) echo '{\"cache\":{\"stats\":{\"unique_csize\":4242}}}';;\n\
         esac\n",
    );
    let tools = BackupTools { borg: script, ..lab.tools() };
    let cfg = borg_config(&lab, Path::new("/srv/borg"), "check_interval = \"1d\"\n");
    let mut probe = BackupProbe::with_tools(cfg, state(), tools).unwrap();
    let now: Timestamp = "2026-12-06T08:09:05Z".parse().unwrap();
    let (first, v) = look(&mut probe, now).await;
    let (second, _) = look(&mut probe, now + SignedDuration::from_hours(1)).await;
    assert_eq!(v.newest, Some("2026-12-06T07:09:05Z".parse().unwrap()), "borg's times read as UTC");
    assert_eq!((first.repository_size_bytes, second.repository_size_bytes), (Some(4242), Some(4242)));
    let logged = read(&log);
    assert_eq!(logged.lines().filter(|l| l.contains(" info ")).count(), 1, "borg info once a check_interval: {logged}");
    assert_eq!(logged.lines().filter(|l| l.contains(" list ")).count(), 2, "{logged}");
    let cache = lab.path("cache/borg").display().to_string();
    for line in logged.lines() {
        assert!(line.ends_with(&format!("|{PASSWORD}|none|none|{cache}|UTC")), "{line}");
    }
    // A day on, the size is read again.
    look(&mut probe, now + SignedDuration::from_hours(25)).await;
    assert_eq!(read(&log).lines().filter(|l| l.contains(" info ")).count(), 2);
}

// --- helpers ----------------------------------------------------------------------------

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn overwrite(file: &Path, at: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut perms = std::fs::metadata(file).unwrap().permissions();
    perms.set_mode(0o600);
    std::fs::set_permissions(file, perms).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(b"pikett was here, breaking things on purpose").unwrap();
}

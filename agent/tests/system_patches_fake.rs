//! The patches probe end to end with fake dnf/yum/apt-get/rpm/needs-restarting
//! scripts that print recorded real outputs (testdata/) and exit as the real
//! tools do: 100 for "updates available", 200 for a held lock, 1 for errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::patches::{Manager, PatchTools, PatchesConfig, PatchesProbe};
use pikett_agent::probes::{MemoryState, Probe, SharedState};

/// A fake tool: finds the first known step word in its arguments and answers
/// with `STEP.out` (stdout), `STEP.err` (stderr), `STEP.code` (exit code),
/// after `STEP.sleep` seconds. Every call is logged to `calls`.
const FAKE_TOOL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
step=none
for word in "$@"; do
  case "$word" in
    check-update|updateinfo|update|dist-upgrade|-qa|-r) step=$word; break;;
  esac
done
[ -e "$dir/$step.sleep" ] && sleep "$(cat "$dir/$step.sleep")"
[ -e "$dir/$step.out" ] && cat "$dir/$step.out"
[ -e "$dir/$step.err" ] && cat "$dir/$step.err" >&2
exit "$(cat "$dir/$step.code" 2>/dev/null || echo 0)"
"#;

fn testdata(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/system")).join(name)
}

struct Tool {
    dir: PathBuf,
}

impl Tool {
    fn new(root: &Path, name: &str) -> Tool {
        let dir = root.join(format!("{name}.d"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join(name);
        std::fs::write(&script, FAKE_TOOL).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Tool { dir }
    }
    fn path(&self) -> PathBuf {
        let name = self.dir.file_name().unwrap().to_string_lossy().trim_end_matches(".d").to_string();
        self.dir.join(name)
    }
    /// Answer `step` with a recorded file on stdout (or stderr) and an exit code.
    fn answer(&self, step: &str, stdout: Option<&str>, stderr: Option<&str>, code: i32) -> &Self {
        if let Some(f) = stdout {
            std::fs::copy(testdata(f), self.dir.join(format!("{step}.out"))).unwrap();
        }
        if let Some(f) = stderr {
            std::fs::copy(testdata(f), self.dir.join(format!("{step}.err"))).unwrap();
        }
        std::fs::write(self.dir.join(format!("{step}.code")), code.to_string()).unwrap();
        self
    }
    fn sleep(&self, step: &str, secs: u32) {
        std::fs::write(self.dir.join(format!("{step}.sleep")), secs.to_string()).unwrap();
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

struct Fakes {
    _root: tempfile::TempDir,
    dnf: Tool,
    yum: Tool,
    apt: Tool,
    rpm: Tool,
    nr: Tool,
    reboot_file: PathBuf,
}

impl Fakes {
    fn new() -> Fakes {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().to_path_buf();
        Fakes {
            dnf: Tool::new(&p, "dnf"),
            yum: Tool::new(&p, "yum"),
            apt: Tool::new(&p, "apt-get"),
            rpm: Tool::new(&p, "rpm"),
            nr: Tool::new(&p, "needs-restarting"),
            reboot_file: p.join("reboot-required"),
            _root: root,
        }
    }
    fn tools(&self) -> PatchTools {
        PatchTools {
            dnf: self.dnf.path(),
            yum: self.yum.path(),
            apt_get: self.apt.path(),
            rpm: self.rpm.path(),
            needs_restarting: self.nr.path(),
            reboot_required_file: self.reboot_file.clone(),
            apt_options: Vec::new(),
            rpm_cache_dir: None,
            as_root: true,
        }
    }
    fn probe(&self, manager: Manager, refresh: bool) -> (PatchesProbe, SharedState) {
        let state: SharedState = Arc::new(MemoryState::default());
        let cfg = PatchesConfig { manager, refresh, timeout: Duration::from_secs(10), ..Default::default() };
        (PatchesProbe::with_tools(cfg, state.clone(), self.tools()).unwrap(), state)
    }
}

fn the_check(obs: &[Observation]) -> (State, String) {
    let checks: Vec<_> = obs
        .iter()
        .filter_map(|o| match o {
            Observation::Check(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(checks.len(), 1, "{obs:#?}");
    assert_eq!(checks[0].name, "patches");
    (checks[0].state, checks[0].summary.clone())
}

fn inventory(obs: &[Observation]) -> Option<&serde_json::Value> {
    obs.iter().find_map(|o| match o {
        Observation::Inventory(i) if i.name == "patches" => Some(&i.data),
        _ => None,
    })
}

fn pending_sample(obs: &[Observation], kind: &str) -> Option<f64> {
    obs.iter().find_map(|o| match o {
        Observation::Sample(s) if s.name == "pikett_patches_pending" && s.labels["type"] == kind => Some(s.value),
        _ => None,
    })
}

/// A failure must be UNKNOWN and carry no pending counts at all.
fn assert_unknown_without_counts(obs: &[Observation], reason: &str) {
    let (s, summary) = the_check(obs);
    assert_eq!(s, State::Unknown, "{summary}");
    assert!(summary.contains(reason), "{summary}");
    assert!(inventory(obs).is_none());
    assert!(pending_sample(obs, "security").is_none());
}

#[tokio::test]
async fn dnf_el9_critical_security_update_with_reboot_required() {
    let f = Fakes::new();
    f.dnf.answer("check-update", Some("dnf-check-update-el9.txt"), None, 100).answer(
        "updateinfo",
        Some("dnf-updateinfo-list-el9-verbose.txt"),
        None,
        0,
    );
    f.rpm.answer("-qa", Some("rpm-qa-el9.txt"), None, 0);
    f.nr.answer("-r", None, None, 1);
    let (mut probe, state) = f.probe(Manager::Dnf, true);
    assert_eq!(probe.name(), "patches");
    assert_eq!(probe.interval(), Duration::from_secs(6 * 3600));

    let obs = probe.poll().await;
    let (s, summary) = the_check(&obs);
    assert_eq!(s, State::Critical);
    assert_eq!(
        summary,
        "7 updates pending: 5 security (1 Critical, 2 Important, 2 Moderate), 1 bugfix, 0 enhancement, 1 other; reboot required"
    );
    assert_eq!(pending_sample(&obs, "security"), Some(5.0));
    assert_eq!(pending_sample(&obs, "bugfix"), Some(1.0));
    assert_eq!(pending_sample(&obs, "unknown"), Some(1.0));
    let inv = inventory(&obs).unwrap();
    assert_eq!(inv["manager"], "dnf");
    assert_eq!(inv["reboot_required"], true);
    let updates = inv["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 7);
    let expat = updates.iter().find(|u| u["package"] == "expat").unwrap();
    assert_eq!(expat["advisory"], "RLSA-2024:1530");
    assert_eq!(expat["type"], "security");
    assert_eq!(expat["severity"], "Critical");
    assert_eq!(expat["current_version"], "2.5.0-1.el9");
    assert_eq!(expat["new_version"], "2.5.0-1.el9_3.1");
    assert_eq!(expat["released"], "2024-03-28 15:02:11");
    let first_seen = expat["first_seen"].as_str().unwrap().to_string();
    assert!(first_seen.parse::<jiff::Timestamp>().is_ok(), "{first_seen}");

    // dnf is never left waiting for another dnf's lock
    let calls = f.dnf.calls();
    assert!(calls.iter().all(|c| c.contains("--setopt=exit_on_lock=True") && !c.contains("-C")), "{calls:?}");

    // first_seen stays put across polls and is in the state store
    tokio::time::sleep(Duration::from_millis(20)).await;
    let obs = probe.poll().await;
    let inv = inventory(&obs).unwrap();
    let expat = inv["updates"].as_array().unwrap().iter().find(|u| u["package"] == "expat").unwrap();
    assert_eq!(expat["first_seen"].as_str().unwrap(), first_seen);
    assert!(state.load("patches/first_seen").is_some());
}

#[tokio::test]
async fn dnf_without_updates_is_ok_with_zero_counts() {
    let f = Fakes::new();
    f.dnf.answer("check-update", None, None, 0);
    f.nr.answer("-r", None, None, 0);
    let (mut probe, _) = f.probe(Manager::Dnf, false);
    let obs = probe.poll().await;
    assert_eq!(the_check(&obs), (State::Ok, "no updates pending".to_string()));
    assert_eq!(pending_sample(&obs, "security"), Some(0.0));
    assert_eq!(inventory(&obs).unwrap()["reboot_required"], false);
    // refresh = false: cache only, and no updateinfo call needed
    let calls = f.dnf.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains("-C"), "{calls:?}");
}

#[tokio::test]
async fn dnf_lock_held_is_unknown_not_zero_pending() {
    let f = Fakes::new();
    f.dnf.answer("check-update", None, Some("dnf-lock-held-el9.txt"), 200);
    let (mut probe, _) = f.probe(Manager::Dnf, true);
    assert_unknown_without_counts(
        &probe.poll().await,
        "package manager lock held by another process: metadata already locked by 48211",
    );
}

#[tokio::test]
async fn dnf_metadata_unreachable_is_unknown() {
    let f = Fakes::new();
    f.dnf.answer("check-update", None, Some("dnf-metadata-unreachable-el8.txt"), 1);
    let (mut probe, _) = f.probe(Manager::Dnf, true);
    assert_unknown_without_counts(
        &probe.poll().await,
        "repository metadata unreachable: Error: Failed to download metadata for repo 'baseos'",
    );
}

#[tokio::test]
async fn dnf_other_error_is_unknown_with_its_last_line() {
    let f = Fakes::new();
    std::fs::write(f.dnf.dir.join("check-update.err"), "Error: rpmdb open failed\n").unwrap();
    f.dnf.answer("check-update", None, None, 1);
    let (mut probe, _) = f.probe(Manager::Dnf, true);
    assert_unknown_without_counts(&probe.poll().await, "exited with 1: Error: rpmdb open failed");
}

#[tokio::test]
async fn a_hung_package_manager_is_killed_at_the_timeout() {
    let f = Fakes::new();
    f.dnf.answer("check-update", None, None, 0);
    f.dnf.sleep("check-update", 30);
    let state: SharedState = Arc::new(MemoryState::default());
    let cfg = PatchesConfig { manager: Manager::Dnf, timeout: Duration::from_millis(500), ..Default::default() };
    let mut probe = PatchesProbe::with_tools(cfg, state, f.tools()).unwrap();
    let started = std::time::Instant::now();
    let obs = probe.poll().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_unknown_without_counts(&obs, "did not finish within");
}

#[tokio::test]
async fn yum_centos7_security_updates_are_a_warning() {
    let f = Fakes::new();
    f.yum.answer("check-update", Some("yum-check-update-centos7.txt"), None, 100).answer(
        "updateinfo",
        Some("yum-updateinfo-list-centos7.txt"),
        None,
        0,
    );
    f.rpm.answer("-qa", None, None, 1); // no current versions: still works
    f.nr.answer("-r", None, None, 0);
    let (mut probe, _) = f.probe(Manager::Yum, true);
    let obs = probe.poll().await;
    let (s, summary) = the_check(&obs);
    assert_eq!(s, State::Warning, "{summary}");
    assert_eq!(summary, "6 updates pending: 2 security (1 Important, 1 Moderate), 2 bugfix, 0 enhancement, 2 other");
    let inv = inventory(&obs).unwrap();
    assert_eq!(inv["manager"], "yum");
    let kernel = inv["updates"].as_array().unwrap().iter().find(|u| u["package"] == "kernel").unwrap();
    assert_eq!(kernel["advisory"], "RHSA-2024:1249");
    assert!(kernel["current_version"].is_null());
    assert!(f.yum.calls().iter().any(|c| c.ends_with("updateinfo list updates")));
}

#[tokio::test]
async fn yum_lock_and_metadata_failures_are_unknown() {
    let f = Fakes::new();
    f.yum.answer("check-update", None, Some("yum-lock-held-centos7.txt"), 200);
    let (mut probe, _) = f.probe(Manager::Yum, true);
    assert_unknown_without_counts(&probe.poll().await, "lock held by another process: Existing lock /var/run/yum.pid");

    let f = Fakes::new();
    f.yum.answer("check-update", None, Some("yum-metadata-unreachable-centos7.txt"), 1);
    let (mut probe, _) = f.probe(Manager::Yum, true);
    assert_unknown_without_counts(
        &probe.poll().await,
        "metadata unreachable: Cannot find a valid baseurl for repo: base/7/x86_64",
    );
}

#[tokio::test]
async fn apt_recorded_debian12_with_reboot_flag() {
    let f = Fakes::new();
    f.apt.answer("update", None, None, 0).answer("dist-upgrade", Some("apt-get-s-dist-upgrade-debian12.txt"), None, 0);
    std::fs::write(&f.reboot_file, "*** System restart required ***\n").unwrap();
    let (mut probe, _) = f.probe(Manager::Apt, true);
    let obs = probe.poll().await;
    let (s, summary) = the_check(&obs);
    assert_eq!(s, State::Warning);
    assert!(summary.starts_with("80 updates pending: 20 security (20 of unknown severity), 60 bugfix"), "{summary}");
    assert!(summary.ends_with("; reboot required"), "{summary}");
    let inv = inventory(&obs).unwrap();
    assert_eq!(inv["manager"], "apt");
    assert_eq!(inv["reboot_required"], true);
    let calls = f.apt.calls();
    assert_eq!(calls, vec!["-q update".to_string(), "-s -o Debug::NoLocking=1 dist-upgrade".to_string()]);
}

#[tokio::test]
async fn apt_update_lock_held_and_unreachable_lists_are_unknown() {
    let f = Fakes::new();
    f.apt.answer("update", Some("apt-get-update-lock-held-debian12.txt"), None, 100);
    f.apt.answer("dist-upgrade", Some("apt-get-s-dist-upgrade-debian12.txt"), None, 0);
    let (mut probe, _) = f.probe(Manager::Apt, true);
    assert_unknown_without_counts(&probe.poll().await, "lock held by another process: E: Could not get lock");

    let f = Fakes::new();
    // apt-get update exits 0 even when it could not reach a mirror
    f.apt.answer("update", None, Some("apt-get-update-no-dns-debian12.txt"), 0);
    f.apt.answer("dist-upgrade", Some("apt-get-s-dist-upgrade-debian12.txt"), None, 0);
    let (mut probe, _) = f.probe(Manager::Apt, true);
    assert_unknown_without_counts(&probe.poll().await, "metadata unreachable: W: Some index files failed to download");
    assert_eq!(f.apt.calls().len(), 1, "no simulation after a failed update");
}

#[tokio::test]
async fn auto_picks_the_first_manager_present_or_says_none_is() {
    let f = Fakes::new();
    f.yum.answer("check-update", None, None, 0);
    f.nr.answer("-r", None, None, 0);
    let state: SharedState = Arc::new(MemoryState::default());
    let mut tools = f.tools();
    tools.dnf = PathBuf::from("/nonexistent/dnf");
    tools.apt_get = PathBuf::from("/nonexistent/apt-get");
    let mut probe = PatchesProbe::with_tools(PatchesConfig::default(), state.clone(), tools.clone()).unwrap();
    let obs = probe.poll().await;
    assert_eq!(the_check(&obs).0, State::Ok);
    assert_eq!(inventory(&obs).unwrap()["manager"], "yum");

    tools.yum = PathBuf::from("/nonexistent/yum");
    let mut probe = PatchesProbe::with_tools(PatchesConfig::default(), state, tools).unwrap();
    assert_unknown_without_counts(&probe.poll().await, "no supported package manager found");
}

#[test]
fn zero_interval_or_timeout_is_rejected() {
    let state: SharedState = Arc::new(MemoryState::default());
    let cfg = PatchesConfig { interval: Duration::ZERO, ..Default::default() };
    assert!(PatchesProbe::new(cfg, state.clone()).err().unwrap().to_string().contains("interval"));
    let cfg = PatchesConfig { timeout: Duration::ZERO, ..Default::default() };
    assert!(PatchesProbe::new(cfg, state).err().unwrap().to_string().contains("timeout"));
}

#[tokio::test]
async fn apt_simulation_errors_and_misread_output_are_unknown() {
    let f = Fakes::new();
    std::fs::write(
        f.apt.dir.join("dist-upgrade.err"),
        "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem. \n",
    )
    .unwrap();
    f.apt.answer("dist-upgrade", None, None, 100);
    let (mut probe, _) = f.probe(Manager::Apt, false);
    assert_unknown_without_counts(&probe.poll().await, "dist-upgrade failed: E: dpkg was interrupted");

    // apt says 3 upgrades, only 2 lines are readable: never under-count
    let f = Fakes::new();
    std::fs::write(
        f.apt.dir.join("dist-upgrade.out"),
        "3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n\
         Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.14/oldstable [amd64])\n\
         Inst sed [4.9-1] (4.9-1+deb12u1 Debian:12.14/oldstable [amd64])\n\
         Inst something odd\n",
    )
    .unwrap();
    f.apt.answer("dist-upgrade", None, None, 0);
    let (mut probe, _) = f.probe(Manager::Apt, false);
    assert_unknown_without_counts(&probe.poll().await, "reports 3 upgrades but only 2 could be read");
}

//! The patches probe against the real apt-get of this Debian machine.
//!
//! The main test reads the machine's current package lists (no network: the
//! simulation does not download) and checks the probe against what
//! `apt-get -s dist-upgrade` itself reports. The failure tests give apt-get
//! private list and cache directories (`-o Dir::...`) and sources on
//! 127.0.0.1, so they never touch the system's lists or the network.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::patches::{Manager, PatchTools, PatchesConfig, PatchesProbe};
use pikett_agent::probes::{MemoryState, Probe, SharedState};

fn apt_get() -> Option<PathBuf> {
    ["/usr/bin/apt-get", "/bin/apt-get"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn the_check(obs: &[Observation]) -> (State, String) {
    obs.iter()
        .find_map(|o| match o {
            Observation::Check(c) if c.name == "patches" => Some((c.state, c.summary.clone())),
            _ => None,
        })
        .expect("a patches check")
}

fn inventory(obs: &[Observation]) -> Option<&serde_json::Value> {
    obs.iter().find_map(|o| match o {
        Observation::Inventory(i) if i.name == "patches" => Some(&i.data),
        _ => None,
    })
}

fn sample(obs: &[Observation], kind: &str) -> Option<f64> {
    obs.iter().find_map(|o| match o {
        Observation::Sample(s) if s.name == "pikett_patches_pending" && s.labels["type"] == kind => Some(s.value),
        _ => None,
    })
}

fn probe(tools: PatchTools, refresh: bool) -> PatchesProbe {
    let state: SharedState = Arc::new(MemoryState::default());
    let cfg = PatchesConfig { manager: Manager::Apt, refresh, timeout: Duration::from_secs(120), ..Default::default() };
    PatchesProbe::with_tools(cfg, state, tools).unwrap()
}

#[tokio::test]
async fn real_apt_pending_updates_match_apt_gets_own_report() {
    let Some(apt) = apt_get() else {
        panic!("apt-get not found: this test needs a Debian/Ubuntu machine");
    };
    // What apt-get itself says, read independently of the probe's parser.
    let out = Command::new(&apt)
        .args(["-s", "-o", "Debug::NoLocking=1", "dist-upgrade"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let summary_line = text.lines().find(|l| l.contains(" upgraded, ")).expect("apt-get's summary line");
    let upgraded: usize = summary_line.split_whitespace().next().unwrap().parse().unwrap();
    let security =
        text.lines().filter(|l| l.starts_with("Inst ") && l.contains(" [") && l.contains("-security")).count();
    eprintln!("apt-get reports {upgraded} upgrades, {security} from a -security suite");

    let reboot_file = tempfile::NamedTempFile::new().unwrap();
    let tools = PatchTools {
        apt_get: apt.clone(),
        reboot_required_file: reboot_file.path().to_path_buf(),
        ..Default::default()
    };
    let mut probe = probe(tools, false);
    let obs = probe.poll().await;
    let (state, summary) = the_check(&obs);
    eprintln!("probe: {state} {summary}");

    let expected_state = if security > 0 { State::Warning } else { State::Ok };
    assert_eq!(state, expected_state, "{summary}");
    if upgraded == 0 {
        assert!(summary.starts_with("no updates pending"), "{summary}");
    } else {
        assert!(summary.starts_with(&format!("{upgraded} updates pending: {security} security")), "{summary}");
    }
    assert!(summary.ends_with("; reboot required"), "the flag file exists: {summary}");
    let inv = inventory(&obs).expect("an inventory");
    assert_eq!(inv["manager"], "apt");
    assert_eq!(inv["reboot_required"], true);
    let updates = inv["updates"].as_array().unwrap();
    assert_eq!(updates.len(), upgraded);
    if let Some(u) = updates.iter().find(|u| u["type"] == "security") {
        eprintln!("a security update in the inventory: {u}");
    }
    assert_eq!(sample(&obs, "security"), Some(security as f64));
    // every update names a package, both versions and a first-seen time
    for u in updates {
        assert!(u["package"].as_str().is_some_and(|s| !s.is_empty()), "{u}");
        assert!(u["current_version"].as_str().is_some() && u["new_version"].as_str().is_some(), "{u}");
        assert_ne!(u["current_version"], u["new_version"], "{u}");
        assert!(u["first_seen"].as_str().is_some(), "{u}");
    }
    // an installed package apt would upgrade has its installed version from dpkg
    if let Some(u) = updates.first() {
        let pkg = u["package"].as_str().unwrap();
        let dpkg = Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&dpkg.stdout), u["current_version"].as_str().unwrap());
    }
}

/// Private apt directories so `apt-get update` never touches the system's lists.
struct PrivateApt {
    dir: tempfile::TempDir,
}

impl PrivateApt {
    fn new(source_port: u16) -> PrivateApt {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lists/partial")).unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            format!("deb http://127.0.0.1:{source_port}/debian bookworm main\n"),
        )
        .unwrap();
        PrivateApt { dir }
    }

    fn options(&self) -> Vec<String> {
        let p = |s: &str| self.dir.path().join(s).display().to_string();
        vec![
            "-o".into(),
            format!("Dir::Etc::SourceList={}", p("sources.list")),
            "-o".into(),
            format!("Dir::Etc::SourceParts={}", p("no-parts")),
            "-o".into(),
            format!("Dir::State::Lists={}", p("lists")),
            "-o".into(),
            format!("Dir::Cache={}", p("cache")),
            "-o".into(),
            "Acquire::http::Timeout=20".into(),
        ]
    }

    fn tools(&self, apt: &Path) -> PatchTools {
        PatchTools {
            apt_get: apt.to_path_buf(),
            reboot_required_file: self.dir.path().join("reboot-required"),
            apt_options: self.options(),
            ..Default::default()
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test]
async fn real_apt_update_with_unreachable_mirror_is_unknown_not_zero_pending() {
    let Some(apt) = apt_get() else { panic!("apt-get not found") };
    if !is_root() {
        eprintln!("skipped: apt-get update needs root");
        return;
    }
    // A port nothing listens on: connection refused, as with a dead mirror.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let apt_dirs = PrivateApt::new(port);
    let mut probe = probe(apt_dirs.tools(&apt), true);
    let obs = probe.poll().await;
    let (state, summary) = the_check(&obs);
    assert_eq!(state, State::Unknown, "{summary}");
    assert!(summary.contains("repository metadata unreachable"), "{summary}");
    assert!(
        summary.contains("Some index files failed to download") || summary.contains("Failed to fetch"),
        "{summary}"
    );
    assert!(inventory(&obs).is_none());
    assert!(sample(&obs, "security").is_none());
}

#[tokio::test]
async fn real_apt_lists_lock_held_by_another_apt_get_is_unknown() {
    let Some(apt) = apt_get() else { panic!("apt-get not found") };
    if !is_root() {
        eprintln!("skipped: apt-get update needs root");
        return;
    }
    // A mirror that accepts and never answers keeps the first apt-get inside
    // its update, holding the lists lock.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            let _ = accepted_tx.send(());
            if held.len() > 8 {
                break;
            }
        }
    });
    let apt_dirs = PrivateApt::new(port);
    let mut holder = Command::new(&apt)
        .args(apt_dirs.options())
        .args(["-q", "update"])
        .env("LC_ALL", "C")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    accepted_rx.recv_timeout(Duration::from_secs(15)).expect("the first apt-get connects to the stalled mirror");
    assert!(waited.elapsed() < Duration::from_secs(15));

    let mut probe = probe(apt_dirs.tools(&apt), true);
    let obs = probe.poll().await;
    let _ = holder.kill();
    let _ = holder.wait();

    let (state, summary) = the_check(&obs);
    assert_eq!(state, State::Unknown, "{summary}");
    assert!(summary.contains("package manager lock held by another process: E: Could not get lock"), "{summary}");
    assert!(summary.contains("apt-get"), "names the holder: {summary}");
    assert!(inventory(&obs).is_none());
}

/// The agent as its packaged service runs it: an unprivileged user. The real apt-get
/// cannot refresh the lists (their lock is root's); the probe says so and reads the
/// lists as they are, instead of reporting a held lock forever.
#[test]
fn as_an_unprivileged_user_the_lists_are_read_and_the_reason_given() {
    assert!(apt_get().is_some(), "apt-get not found: this test needs a Debian/Ubuntu machine");
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test switches to an unprivileged user: run it as root");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "host_id = \"apt-user\"\n[patches]\nmanager = \"apt\"\nrefresh = true\n").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_pikett-agent"))
        .arg("--config")
        .arg(&cfg)
        .args(["test", "--probe", "patches"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let check: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "check" && v["name"] == "patches")
        .unwrap_or_else(|| panic!("no patches check in {stdout}"));
    let summary = check["summary"].as_str().unwrap();
    assert_ne!(check["state"], "UNKNOWN", "{summary}");
    assert!(!summary.contains("lock held"), "a misleading reason: {summary}");
    assert!(summary.contains("apt-get update needs root") && summary.contains("apt-daily.timer"), "{summary}");
    assert!(summary.contains("Permission denied"), "apt's own words are quoted: {summary}");
}

//! `command` checks running real monitoring-plugins and real processes.
//!
//! Needs Debian's `monitoring-plugins-basic` (plugins in /usr/lib/nagios/plugins).

#[path = "checks_support/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{poll, probe};
use pikett_agent::observation::State;

const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn plugin(name: &str) -> String {
    let p = format!("{PLUGINS}/{name}");
    assert!(Path::new(&p).exists(), "{p} missing: apt-get install monitoring-plugins-basic");
    p
}

fn command_check(name: &str, argv: &[&str], timeout: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("name = {name:?}\nkind = \"command\"\ncommand = [{}]\ntimeout = {timeout:?}\n", argv.join(", "))
}

/// Writes a shell script; tests run it as `sh FILE` (exec'ing a freshly written
/// file races with forks in other test threads: ETXTBSY).
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test]
async fn check_tcp_against_open_port_is_ok_with_perfdata() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut p = probe(&command_check("port", &[&plugin("check_tcp"), "-H", "127.0.0.1", "-p", &port], "10s"));
    assert_eq!(p.check_name(), "command/port");
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.name, "command/port");
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.starts_with("TCP OK"), "{}", c.summary);
    assert!(!c.summary.contains('|'), "perfdata must not leak into the summary: {}", c.summary);
    let time = samples.iter().find(|s| s.name == "pikett_check_perfdata").expect("perfdata sample");
    assert_eq!(time.labels["label"], "time");
    assert_eq!(time.labels["check"], "command/port");
    assert_eq!(time.unit, "s");
    assert!(time.value >= 0.0 && time.value < 5.0, "{}", time.value);
    let dur = common::sample(&samples, "pikett_check_duration_seconds").expect("duration sample");
    assert_eq!(dur.unit, "s");
    assert!(dur.value > 0.0);
}

#[tokio::test]
async fn check_tcp_against_closed_port_is_critical() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let mut p = probe(&command_check("closed", &[&plugin("check_tcp"), "-H", "127.0.0.1", "-p", &port], "10s"));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    assert!(c.summary.contains("Connection refused"), "{}", c.summary);
}

#[tokio::test]
async fn check_disk_reports_root_usage_in_bytes() {
    let mut p = probe(&command_check("disk", &[&plugin("check_disk"), "-w", "0%", "-c", "0%", "-p", "/"], "10s"));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.starts_with("DISK OK"), "{}", c.summary);
    let root = samples
        .iter()
        .find(|s| s.name == "pikett_check_perfdata" && s.labels["label"] == "/")
        .unwrap_or_else(|| panic!("no perfdata for /: {samples:?}"));
    assert_eq!(root.unit, "By");
    assert!(root.value > 0.0);
    let max: f64 = root.labels["max"].parse().unwrap();
    assert!(max >= root.value, "used {} > size {max}", root.value);
    assert!(root.labels.contains_key("warn") && root.labels.contains_key("crit"), "{:?}", root.labels);
}

#[tokio::test]
async fn plugin_usage_error_exit_3_is_unknown() {
    // check_tcp without -H prints usage and exits 3.
    let mut p = probe(&command_check("usage", &[&plugin("check_tcp")], "10s"));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown, "{}", c.summary);
    assert!(!c.summary.is_empty());
}

#[tokio::test]
async fn exit_3_from_script_keeps_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(&dir, "unknown.sh", "echo 'UNKNOWN - sensor missing | x=1'\nexit 3\n");
    let mut p = probe(&command_check("s", &["/bin/sh", s.to_str().unwrap()], "10s"));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown);
    assert_eq!(c.summary, "UNKNOWN - sensor missing");
    assert!(samples.iter().any(|s| s.name == "pikett_check_perfdata" && s.labels["label"] == "x"));
}

#[tokio::test]
async fn exit_1_and_2_map_to_warning_and_critical() {
    let dir = tempfile::tempdir().unwrap();
    for (code, want) in [(0, State::Ok), (1, State::Warning), (2, State::Critical), (4, State::Unknown)] {
        let s = script(&dir, &format!("exit{code}.sh"), &format!("echo 'state {code}'\nexit {code}\n"));
        let mut p = probe(&command_check("e", &["/bin/sh", s.to_str().unwrap()], "10s"));
        let (c, _) = poll(&mut p).await;
        assert_eq!(c.state, want, "exit {code}: {}", c.summary);
        assert!(c.summary.contains(&format!("state {code}")), "{}", c.summary);
    }
}

#[tokio::test]
async fn exit_127_is_unknown_naming_the_command() {
    let mut p = probe(&command_check("missing", &["/bin/sh", "-c", "no-such-plugin-pikett"], "10s"));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown);
    assert!(c.summary.contains("127") && c.summary.contains("/bin/sh"), "{}", c.summary);
    assert!(c.summary.contains("no-such-plugin-pikett"), "stderr should explain: {}", c.summary);
}

#[tokio::test]
async fn missing_executable_is_unknown_naming_it() {
    let missing = format!("{PLUGINS}/check_does_not_exist");
    let mut p = probe(&command_check("missing", &[&missing, "-v"], "10s"));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown);
    assert_eq!(c.summary, format!("command not found: {missing}"));
    assert!(samples.is_empty());
}

#[tokio::test]
async fn signal_is_unknown_naming_the_signal() {
    let mut p = probe(&command_check("sig", &["/bin/sh", "-c", "kill -TERM $$"], "10s"));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown);
    assert!(c.summary.contains("signal 15") && c.summary.contains("SIGTERM"), "{}", c.summary);
}

/// State of a process from /proc: None when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

#[tokio::test]
async fn hanging_plugin_is_killed_with_its_whole_group_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    // The background child keeps stdout open too: without the group kill,
    // reading the output would hang for 300 s.
    let s = script(
        &dir,
        "hang.sh",
        &format!(
            "sleep 300 &\necho $! > {}\necho $$ >> {}\necho 'starting'\nsleep 300\n",
            pidfile.display(),
            pidfile.display()
        ),
    );
    let mut p = probe(&command_check("hang", &["/bin/sh", s.to_str().unwrap()], "1s"));
    let started = Instant::now();
    let (c, _) = poll(&mut p).await;
    let took = started.elapsed();
    assert_eq!(c.state, State::Unknown);
    assert!(c.summary.contains("timed out after 1s"), "{}", c.summary);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "took {took:?}");

    let pids: Vec<u32> =
        std::fs::read_to_string(&pidfile).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "child and shell pids: {pids:?}");
    // Dead means gone, or a zombie waiting for a reaper that is not us.
    let deadline = Instant::now() + Duration::from_secs(3);
    for pid in pids {
        loop {
            match proc_state(pid) {
                None | Some('Z') | Some('X') => break,
                Some(st) if Instant::now() > deadline => {
                    panic!("pid {pid} still alive (state {st})")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

#[tokio::test]
async fn huge_output_is_capped_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MB on one line, then a normal line: the plugin must not block on a full pipe.
    let s = script(
        &dir,
        "chatty.sh",
        "echo 'OK - chatty | a=1'\nhead -c 2000000 /dev/zero | tr '\\0' 'x'\necho\necho done\nexit 0\n",
    );
    let mut p = probe(&command_check("chatty", &["/bin/sh", s.to_str().unwrap()], "10s"));
    let started = Instant::now();
    let (c, samples) = poll(&mut p).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(c.state, State::Ok);
    assert!(c.summary.starts_with("OK - chatty") && c.summary.contains("cut at 64 KiB"), "{}", c.summary);
    assert!(samples.iter().any(|s| s.name == "pikett_check_perfdata" && s.labels["label"] == "a"));
}

#[tokio::test]
async fn multiline_output_perfdata_from_later_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        &dir,
        "multi.sh",
        "printf '%s\\n' \"WARNING - 2 of 3 arrays degraded | 'md0 state'=1;;; \" 'md0 ok' 'md1 degraded | md1=0;1:;0:;0;1' \"'md2 x'=0ms;@0:5;;0;\"\nexit 1\n",
    );
    let mut p = probe(&command_check("raid", &["/bin/sh", s.to_str().unwrap()], "10s"));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Warning);
    assert_eq!(c.summary, "WARNING - 2 of 3 arrays degraded");
    let labels: Vec<_> =
        samples.iter().filter(|s| s.name == "pikett_check_perfdata").map(|s| s.labels["label"].as_str()).collect();
    assert_eq!(labels, ["md0 state", "md1", "md2 x"]);
    let md1 = &samples.iter().find(|s| s.labels.get("label").map(String::as_str) == Some("md1")).unwrap();
    assert_eq!(md1.labels["warn"], "1:");
    assert_eq!(md1.labels["crit"], "0:");
    assert_eq!(md1.unit, "1");
    let md2 = &samples.iter().find(|s| s.labels.get("label").map(String::as_str) == Some("md2 x")).unwrap();
    assert_eq!(md2.unit, "s");
    assert_eq!(md2.labels["warn"], "@0:0.005");
}

#[tokio::test]
async fn cancelled_check_kills_the_plugin_group() {
    // The agent dropping a running check (shutdown) must not leave the plugin behind.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let s = script(&dir, "hang.sh", &format!("sleep 300 &\necho $! > {}\nsleep 300\n", pidfile.display()));
    let mut p = probe(&command_check("hang", &["/bin/sh", s.to_str().unwrap()], "60s"));
    use pikett_agent::probes::Probe;
    let cancelled = tokio::time::timeout(Duration::from_millis(500), p.poll()).await;
    assert!(cancelled.is_err(), "the plugin should still be running at 500 ms");
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match proc_state(pid) {
            None | Some('Z') | Some('X') => break,
            Some(st) if Instant::now() > deadline => {
                panic!("pid {pid} survived the cancelled check (state {st})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

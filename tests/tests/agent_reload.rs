//! Reloading the agent's configuration without a restart: SIGHUP starts an added check
//! (its fault opens at the collector), stops a removed one (its fault resolves: "no longer
//! checked"), restarts a changed one and leaves the others running; a broken file is refused
//! with its line and column and the checks in force go on. The stream to the collector is
//! never reconnected, and systemd hears RELOADING=1, then READY=1.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pikett_tests::*;

fn sighup(p: &Proc) {
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
}

/// The agent's log lines with `what` in them.
fn lines_with(agent: &Proc, what: &str) -> Vec<String> {
    agent.log_text().lines().filter(|l| l.contains(what)).map(str::to_string).collect()
}

/// Waits for the `n`-th log line with `what` in it.
fn nth_line(agent: &Proc, what: &str, n: usize) -> String {
    wait_for(Duration::from_secs(15), || lines_with(agent, what).get(n - 1).cloned())
        .unwrap_or_else(|| panic!("no {n}. line with {what:?}; agent log:\n{}", agent.log_text()))
}

/// Messages the agent sends to its notify socket, as systemd would receive them.
fn notify_socket(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let socket = UnixDatagram::bind(path).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            sink.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    got
}

#[test]
fn sighup_replaces_checks_without_reconnecting_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let c = collector.start();
    let ctl = ControlledCheck::new(dir.path());
    let cfg = agent_config(
        dir.path(),
        &pki,
        "web-1",
        &collector.url(),
        &format!("[host]\ninterval = \"500ms\"\n{}", ctl.toml()),
    );
    let notify_path = dir.path().join("notify.sock");
    let notified = notify_socket(&notify_path);
    let notify = notify_path.display().to_string();
    let mut agent =
        spawn_env("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"), &[("NOTIFY_SOCKET", &notify)]);
    let connected = wait_for(Duration::from_secs(30), || c.log_text().contains("agent connected").then_some(()));
    assert!(connected.is_some(), "agent log:\n{}", agent.log_text());
    let ready = wait_for(Duration::from_secs(10), || {
        notified.lock().unwrap().iter().any(|m| m.contains("READY=1")).then_some(())
    });
    assert!(ready.is_some(), "no READY=1: {:?}", notified.lock().unwrap());
    let original = std::fs::read_to_string(&cfg).unwrap();

    // 1. A new check that is CRITICAL: its fault opens; the check in force is not touched.
    let broken = "[[checks]]\nname = \"broken\"\nkind = \"command\"\n\
                  command = [\"/bin/sh\", \"-c\", \"echo 'CRITICAL - disk on fire'; exit 2\"]\ninterval = \"500ms\"\n";
    std::fs::write(&cfg, format!("{original}\n{broken}")).unwrap();
    sighup(&agent);
    let reloaded = nth_line(&agent, "configuration reloaded", 1);
    assert!(reloaded.contains("command/broken"), "{reloaded}");
    assert!(!reloaded.contains("command/ctl"), "the unchanged check was restarted: {reloaded}");
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "web-1", "command/broken", "open"))
        .unwrap_or_else(|| panic!("the added check's fault did not open; agent log:\n{}", agent.log_text()));
    assert!(fault["summary"].as_str().unwrap().contains("disk on fire"), "{fault}");
    let id = fault["id"].as_u64().unwrap().to_string();

    // 2. The check removed, the other one changed, a key that needs a restart changed: the
    //    removed check's fault resolves, and the reload names the key it did not apply.
    let changed = original.replace("timeout = \"5s\"", "timeout = \"4s\"").replace("\"200ms\"", "\"300ms\"");
    assert_ne!(changed, original);
    std::fs::write(&cfg, &changed).unwrap();
    sighup(&agent);
    let reloaded = nth_line(&agent, "configuration reloaded", 2);
    assert!(reloaded.contains("take effect only at the next restart"), "{reloaded}");
    assert!(reloaded.contains("batch_interval"), "{reloaded}");
    assert!(reloaded.contains("removed=[\"[[checks]] command/broken\"]"), "{reloaded}");
    assert!(reloaded.contains("changed=[\"[[checks]] command/ctl\"]"), "{reloaded}");
    let resolved =
        wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "web-1", "command/broken", "resolved"));
    assert!(resolved.is_some(), "the removed check's fault stayed open; agent log:\n{}", agent.log_text());
    let shown = json_lines(&collector.pikett(&["fault", "show", &id, "--output", "json"], &ca).stdout);
    let timeline = shown[0]["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["kind"] == "resolved" && e["text"].as_str().unwrap().contains("no longer checked")),
        "{timeline:?}"
    );

    // 3. A typo: refused with file, line and column; the agent runs on with the checks in force.
    let typo = changed.replace("timeout = \"4s\"", "timeout = \"4s\"\nintervall = \"1s\"");
    std::fs::write(&cfg, &typo).unwrap();
    sighup(&agent);
    let refused = nth_line(&agent, "configuration reload refused", 1);
    let name = cfg.file_name().unwrap().to_string_lossy().into_owned();
    let line = typo.lines().position(|l| l.starts_with("intervall")).unwrap() + 1;
    assert!(refused.contains(&name) && refused.contains("unknown field `intervall`"), "{refused}");
    assert!(refused.contains(&format!(":{line}:1:")), "no line {line}, column 1 in: {refused}");
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited:\n{}", agent.log_text());
    ctl.set(2);
    let ctl_fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "web-1", "command/ctl", "open"));
    assert!(ctl_fault.is_some(), "the check in force stopped reporting; agent log:\n{}", agent.log_text());
    assert!(find_fault(&collector, &ca, "web-1", "command/broken", "open").is_none(), "the removed check came back");

    // One stream all along, seen from both ends.
    assert_eq!(c.log_text().matches("agent connected").count(), 1, "the agent reconnected:\n{}", c.log_text());
    assert_eq!(lines_with(&agent, "connected to collector").len(), 1, "{}", agent.log_text());
    // systemd heard each reload begin and end: RELOADING=1 (with the time), then READY=1.
    let messages = notified.lock().unwrap().clone();
    let reloads: Vec<usize> =
        messages.iter().enumerate().filter(|(_, m)| m.contains("RELOADING=1")).map(|(i, _)| i).collect();
    assert_eq!(reloads.len(), 3, "{messages:?}");
    assert!(messages[reloads[0]].contains("MONOTONIC_USEC="), "{messages:?}");
    for i in reloads {
        let next = messages[i + 1..].iter().find(|m| m.contains("RELOADING=1") || m.contains("READY=1"));
        assert!(next.is_some_and(|m| m.contains("READY=1")), "no READY=1 after a reload: {messages:?}");
    }
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "{}", agent.log_text());
}

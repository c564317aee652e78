//! Bad input gets a clear error and never takes a daemon down.

use std::io::{Read, Write};
use std::time::Duration;

use pikett_tests::*;

#[test]
fn config_typo_names_file_line_and_column_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.toml");
    std::fs::write(&agent, "customer = \"acme\"\n[host]\ninterval = \"30s\"\ndisk_wran = \"80%\"\n").unwrap();
    let out = run("pikett-agent", &["--config", agent.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.toml:4:1: unknown field `disk_wran`"), "{err}");

    let collector = dir.path().join("collector.toml");
    std::fs::write(&collector, "listen = \"127.0.0.1:1\"\nhttp_listn = \"127.0.0.1:2\"\n").unwrap();
    let out = run("pikett-collector", &["--config", collector.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collector.toml:2:1: unknown field `http_listn`"), "{err}");

    // A channel `serve` could not build is caught by check-config too.
    std::fs::write(&collector, "[channels.webhook]\nurl = \"not a url\"\n").unwrap();
    let out = run("pikett-collector", &["--config", collector.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collector.toml") && err.contains("url"), "{err}");

    // A valid config passes.
    std::fs::write(&agent, "customer = \"acme\"\n").unwrap();
    let out = run("pikett-agent", &["--config", agent.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_checks_the_store_section() {
    let dir = tempfile::tempdir().unwrap();
    let collector = dir.path().join("collector.toml");
    let check = |text: &str| {
        std::fs::write(&collector, text).unwrap();
        run("pikett-collector", &["--config", collector.to_str().unwrap(), "check-config"])
    };
    let out = check("[store]\nkind = \"postgres\"\nurl = \"postgres://pikett:hunter2@127.0.0.1/p?sslmode=disable\"\n");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collector.toml: store.url: holds a password") && !err.contains("hunter2"), "{err}");
    // The password file is read as `serve` reads it.
    let out = check(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://pikett@127.0.0.1/p?sslmode=disable\"\npassword_file = \"/nonexistent/pw\"\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.password_file /nonexistent/pw: cannot read"), "{err}");
    let out = check("[store]\nkind = \"postgres\"\nurl = \"postgres://pikett@127.0.0.1/p?sslmode=disable\"\n");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unwritable_spool_directory_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A path below a regular file can never be created, even by root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("host_id = \"x\"\nspool_dir = \"{}/spool\"\n", blocker.display())).unwrap();
    let out = run("pikett-agent", &["--config", cfg.to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool_dir") && err.contains("not writable"), "{err}");
}

#[test]
fn garbage_and_http1_on_the_grpc_port_leave_the_collector_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let mut c = collector.start();

    for payload in [
        &b"\x16\x03\x01\x00\xff garbage \x00\x01\x02\xff\xfe"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &[0u8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", collector.grpc_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(payload);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    assert!(c.child.try_wait().unwrap().is_none(), "collector exited; log:\n{}", c.log_text());
    let out = collector.pikett(&["status", "--output", "json"], &pki.path("ca.pem"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = json_lines(&out.stdout);
    assert_eq!(status[0]["hosts_up"], 0);
    assert_eq!(http_get(collector.http_port, "/healthz").map(|(s, _)| s), Some(200));
    c.sigkill();
}

#[test]
fn agent_with_a_foreign_host_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let _c = collector.start();
    // The certificate says "web-001"; the config claims "web-002".
    let cfg = agent_config(dir.path(), &pki, "web-001", &collector.url(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("host_id = \"web-001\"", "host_id = \"web-002\"");
    std::fs::write(&cfg, text).unwrap();
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let refused = wait_for(Duration::from_secs(15), || {
        agent.log_text().contains("does not match the client certificate").then_some(())
    });
    assert!(refused.is_some(), "agent log:\n{}", agent.log_text());
    let out = collector.pikett(&["hosts", "--output", "json"], &pki.path("ca.pem"));
    assert!(json_lines(&out.stdout).is_empty());
}

#[test]
fn a_probe_that_cannot_start_reports_unknown_and_the_others_run_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let missing = dir.path().join("idrac.pass");
    let redfish = format!(
        "[redfish]\nendpoint = \"https://127.0.0.1:1\"\nusername = \"monitor\"\npassword_file = \"{}\"\ninterval = \"1s\"\n",
        missing.display()
    );
    let cfg = agent_config(dir.path(), &pki, "bmc-less", &collector.url(), &format!("{}{redfish}", check.toml()));

    // check-config still refuses it, naming the section and the file.
    let out = run("pikett-agent", &["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[redfish]") && err.contains("idrac.pass"), "{err}");

    // The daemon runs: the redfish probe reports why it cannot start, the check runs.
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let unknown = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "bmc-less", "redfish/bmc", "open"))
        .unwrap_or_else(|| panic!("no redfish/bmc fault; agent log:\n{}", agent.log_text()));
    let summary = unknown["summary"].as_str().unwrap();
    assert!(summary.contains("cannot start") && summary.contains("idrac.pass"), "{summary}");
    check.set(2);
    let critical = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "bmc-less", "command/ctl", "open"));
    assert!(critical.is_some(), "the other probes stopped with redfish; agent log:\n{}", agent.log_text());
    assert!(agent.log_text().contains("a probe cannot start"), "not logged:\n{}", agent.log_text());
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited");
}

//! `pikett-agent test --probe NAME` prints the JSON lines of docs/agent-test-output.md for every
//! probe, run as the real binary against real (local) targets.

#[path = "redfish_support/mod.rs"]
mod redfish_support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run_test(config: &Path, probe: &str, path_prefix: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pikett-agent"));
    cmd.arg("--config").arg(config).args(["test", "--probe", probe]);
    if let Some(dir) = path_prefix {
        cmd.env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()));
    }
    let out = cmd.output().expect("run pikett-agent");
    assert!(out.status.success(), "pikett-agent test --probe {probe} failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no output for {probe}");
    for l in &lines {
        let t = l["type"].as_str().unwrap_or_default();
        assert!(["check", "sample", "event", "inventory"].contains(&t), "unknown type in {l}");
        if t == "check" {
            assert!(["OK", "WARNING", "CRITICAL", "UNKNOWN"].contains(&l["state"].as_str().unwrap()), "{l}");
            assert!(l["name"].is_string() && l["summary"].is_string() && l["time"].is_string(), "{l}");
        }
        if t == "sample" {
            assert!(l["value"].is_number() && l["unit"].is_string() && l["labels"].is_object(), "{l}");
        }
    }
    lines
}

fn check<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines.iter().find(|l| l["type"] == "check" && l["name"] == name).unwrap_or_else(|| panic!("no check {name}"))
}

#[test]
fn redfish_probe_prints_checks_samples_and_inventory() {
    // Every vendor's capture, through the real binary: no UNKNOWN from a BMC that answers
    // every request, the vendor and serial number in the inventory.
    for set in redfish_support::fixture_sets() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bmc = rt.block_on(redfish_support::TestBmc::start(&set));
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "host_id = \"bmc-host\"\n[redfish]\nendpoint = \"{}\"\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
                bmc.endpoint(),
                redfish_support::USER,
                bmc.password_file.display(),
                bmc.ca_file.display()
            ),
        )
        .unwrap();
        let lines = run_test(&cfg, "redfish", None);
        let system = check(&lines, "redfish/system");
        assert_eq!(system["state"], "OK", "{set}: {system}");
        for l in lines.iter().filter(|l| l["type"] == "check") {
            assert_ne!(l["state"], "UNKNOWN", "{set}: {l}");
        }
        let temp = lines
            .iter()
            .find(|l| l["type"] == "sample" && l["name"] == "pikett_redfish_temperature_celsius")
            .expect("a temperature sample");
        assert_eq!(temp["unit"], "Cel");
        let hw =
            lines.iter().find(|l| l["type"] == "inventory" && l["name"] == "hardware").expect("hardware inventory");
        let sys = redfish_support::fixture_json(&set, "/redfish/v1/Systems")["Members"][0]["@odata.id"]
            .as_str()
            .map(|p| redfish_support::fixture_json(&set, p))
            .unwrap();
        assert_eq!(hw["data"]["vendor"], sys["Manufacturer"], "{set}");
        assert_eq!(hw["data"]["serial_number"], sys["SerialNumber"], "{set}");
        assert!(hw["data"]["service_tag"].as_str().is_some_and(|s| !s.is_empty()), "{hw}");
        // The session was deleted when the probe shut down.
        assert_eq!(bmc.sessions(), 0, "{set}");
    }
}

#[test]
fn checks_probe_prints_tcp_and_plugin_results() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"h\"\n[[checks]]\nname = \"port\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\n\
             [[checks]]\nname = \"plugin\"\nkind = \"command\"\ncommand = [\"/usr/lib/nagios/plugins/check_tcp\", \"-H\", \"127.0.0.1\", \"-p\", \"{port}\"]\n"
        ),
    )
    .unwrap();
    let lines = run_test(&cfg, "checks", None);
    assert_eq!(check(&lines, "tcp/port")["state"], "OK");
    let plugin = check(&lines, "command/plugin");
    assert_eq!(plugin["state"], "OK", "{plugin}");
    assert!(plugin["summary"].as_str().unwrap().contains("TCP OK"), "{plugin}");
    assert!(
        lines.iter().any(|l| l["type"] == "sample"
            && l["name"] == "pikett_check_perfdata"
            && l["labels"]["check"] == "command/plugin"),
        "no perfdata sample from check_tcp"
    );
}

#[test]
fn services_probe_prints_unit_states_from_systemctl() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("systemctl");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in\n show) printf 'Id=sshd.service\\nLoadState=loaded\\nActiveState=active\\nSubState=running\\nNRestarts=0\\nStateChangeTimestamp=\\nStateChangeTimestampMonotonic=0\\n\\nId=nginx.service\\nLoadState=loaded\\nActiveState=failed\\nSubState=failed\\nNRestarts=3\\nStateChangeTimestamp=\\nStateChangeTimestampMonotonic=0\\n' ;;\n list-units) echo 'nginx.service loaded failed failed nginx' ;;\nesac\n",
    )
    .unwrap();
    redfish_support::set_mode(&fake, 0o755);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "host_id = \"h\"\n[services]\nunits = [\"sshd.service\", \"nginx.service\"]\n").unwrap();
    let lines = run_test(&cfg, "services", Some(&bin));
    assert_eq!(check(&lines, "service/sshd.service")["state"], "OK");
    assert_eq!(check(&lines, "service/nginx.service")["state"], "CRITICAL");
}

#[test]
fn patches_probe_prints_a_patches_check_from_apt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    // refresh = false: use the package lists as they are (no network needed).
    std::fs::write(&cfg, "host_id = \"h\"\n[patches]\nmanager = \"apt\"\nrefresh = false\n").unwrap();
    let lines = run_test(&cfg, "patches", None);
    let patches = check(&lines, "patches");
    assert_ne!(patches["state"], "UNKNOWN", "{patches}");
    let inv = lines.iter().find(|l| l["type"] == "inventory" && l["name"] == "patches").expect("patches inventory");
    assert_eq!(inv["data"]["manager"], "apt");
    assert!(inv["data"]["updates"].is_array());
}

#[test]
fn host_probe_prints_filesystems_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "host_id = \"h\"\n").unwrap();
    let lines = run_test(&cfg, "host", None);
    assert!(lines.iter().any(|l| l["type"] == "check" && l["name"].as_str().unwrap().starts_with("host/disk:")));
    check(&lines, "host/memory");
}

#[test]
fn check_config_rejects_a_check_with_a_key_of_another_kind() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[[checks]]\nname = \"db\"\nkind = \"tcp\"\nurl = \"http://x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pikett-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp/db") && err.contains("url"), "{err}");
}

//! The fault engine end to end: a real agent's `command` check, whose exit
//! code the test controls, opens, is acknowledged with `pikett ack`, resolves;
//! killing the agent raises `host/reachable`; `/metrics` passes promtool.

use std::time::Duration;

use pikett_tests::*;

#[test]
fn critical_check_opens_ack_acknowledges_ok_resolves_and_agent_loss_raises_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "host_timeout = \"3s\"\n");
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "app-01", &collector.url(), &check.toml());
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    // OK first: no fault.
    std::thread::sleep(Duration::from_secs(2));
    assert!(find_fault(&collector, &ca, "app-01", "command/ctl", "open").is_none());

    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened; agent log:\n{}", agent.log_text()));
    assert_eq!(fault["severity"], "critical");
    assert_eq!(fault["customer"], "acme");
    assert!(fault["summary"].as_str().unwrap().contains("CRITICAL - broken"), "{fault}");
    let id = fault["id"].as_u64().unwrap().to_string();

    let out = collector.pikett(&["ack", &id, "--note", "looking into it"], &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = json_lines(&collector.pikett(&["fault", "show", &id, "--output", "json"], &ca).stdout);
    assert_eq!(shown[0]["state"], "acknowledged");
    assert!(shown[0]["acked_by"].as_str().unwrap().ends_with("@local"));
    let timeline = shown[0]["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["kind"] == "acknowledged" && e["text"].as_str().unwrap().contains("looking into it"))
    );
    // The same person's retry (an answer lost on the way) succeeds and changes nothing.
    let retry = collector.pikett(&["ack", &id], &ca);
    assert!(retry.status.success(), "a retried ack failed: {}", String::from_utf8_lossy(&retry.stderr));
    let after = json_lines(&collector.pikett(&["fault", "show", &id, "--output", "json"], &ca).stdout);
    assert_eq!(after[0]["acked_by"], shown[0]["acked_by"]);
    let acks = |f: &serde_json::Value| {
        f["timeline"].as_array().unwrap().iter().filter(|e| e["kind"] == "acknowledged").count()
    };
    assert_eq!(acks(&after[0]), 1, "the retry was recorded twice");
    // Someone else's ack is refused with exit code 1 and one clear line naming who acked.
    let again = collector.pikett_as("someone-else", &["ack", &id], &ca);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already acknowledged by"), "{err}");

    check.set(0);
    let resolved =
        wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "command/ctl", "resolved"));
    assert!(resolved.is_some(), "the fault did not resolve");

    agent.sigkill();
    let reachable =
        wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "app-01", "host/reachable", "open"));
    let reachable = reachable.expect("no host/reachable fault after the agent died");
    assert_eq!(reachable["severity"], "critical");

    // The status screen counts it.
    let status = json_lines(&collector.pikett(&["status", "--output", "json"], &ca).stdout);
    assert_eq!(status[0]["hosts_down"], 1);
    assert_eq!(status[0]["open_faults"]["critical"], 1);

    // And shows the cluster: this one collector, standalone, heartbeating.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let node = if host.is_empty() { format!("127.0.0.1:{}", collector.grpc_port) } else { host };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(status[0]["leader"].as_str(), Some(node.as_str()));
    // Term 1, unless the collector stalled past its lease (a new term each time).
    assert!(status[0]["term"].as_u64().is_some_and(|t| t >= 1), "{}", status[0]);
    let cluster = status[0]["cluster"].as_array().unwrap_or_else(|| panic!("no cluster: {}", status[0]));
    assert_eq!(cluster.len(), 1, "{cluster:?}");
    assert_eq!((cluster[0]["node"].as_str(), cluster[0]["role"].as_str()), (Some(node.as_str()), Some("standalone")));
    assert_eq!(cluster[0]["addr"], format!("127.0.0.1:{}", collector.grpc_port));
    assert_eq!(cluster[0]["version"], status[0]["collector_version"]);
    let beat_ms = cluster[0]["last_heartbeat_unix_ms"].as_i64().unwrap();
    assert!((now_ms - 5_000..=now_ms + 1_000).contains(&beat_ms), "heartbeat {beat_ms}, now {now_ms}");
    let out = collector.pikett(&["status"], &ca);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("\nCluster: leader {node}, term ")), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with(&format!("{node} ")))
        .unwrap_or_else(|| panic!("no row for {node}: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "standalone", "{text}");
    let age: u64 = row[2].strip_suffix('s').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("age: {text}"));
    assert!(age <= 5 && row[3] == "ago", "{text}");
}

#[test]
fn metrics_export_agent_samples_and_fault_counts_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let _c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-7", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let text = wait_for(Duration::from_secs(20), || {
        let (_, body) = http_get(collector.http_port, "/metrics")?;
        body.contains("pikett_host_memory_total_bytes{host=\"web-7\"").then_some(body)
    })
    .expect("agent samples never showed on /metrics");
    assert!(text.contains("customer=\"acme\""));
    assert!(text.contains("pikett_faults{state=\"open\",severity=\"critical\"} 0"), "{text}");
    assert!(!text.contains("# EOF"));

    let promtool = std::path::Path::new("/usr/bin/promtool");
    assert!(promtool.exists(), "promtool is needed (Debian package prometheus; `cargo xtask test` installs it)");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

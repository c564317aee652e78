//! The Prometheus ecosystem: a real Prometheus (Debian's package) scrapes the collector's
//! `/metrics`, and a PromQL query returns an agent's sample with its host and customer
//! labels.

use std::time::Duration;

use pikett_tests::*;

/// Prometheus' HTTP API: the result vector of an instant query.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some((200, body)) = http_get(port, &format!("/api/v1/query?query={encoded}")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_agent_samples_with_host_and_customer() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(prometheus.exists(), "prometheus is needed (Debian package prometheus; `cargo xtask test` installs it)");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let _c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-7", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    let port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pikett-collector\n    \
             honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            collector.http_port
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prom = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");

    let found = wait_for(Duration::from_secs(60), || {
        let r = query(port, "pikett_host_memory_total_bytes{host=\"web-7\"}");
        r.into_iter().next()
    });
    let _ = prom.kill();
    let _ = prom.wait();
    let sample = found.unwrap_or_else(|| {
        panic!(
            "no sample of web-7 in Prometheus; prometheus log:\n{}\nagent log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default(),
            agent.log_text()
        )
    });
    assert_eq!(sample["metric"]["host"], "web-7", "{sample}");
    assert_eq!(sample["metric"]["customer"], "acme", "{sample}");
    assert_eq!(sample["metric"]["job"], "pikett-collector", "{sample}");
    let value: f64 = sample["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a numeric value");
    assert!(value > 0.0, "{sample}");
}

//! `[remote_write]`: the collector forwards the samples it stored to a real Prometheus
//! (Debian's package, `--web.enable-remote-write-receiver`), and nothing is lost while
//! Prometheus is down, not even across a restart of the collector. Retries, drops and the
//! protocol's headers are checked against a local receiver; bad configs are refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pikett_tests::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

/// A real Prometheus accepting remote writes on `port`, keeping its data in `tsdb`.
struct Prometheus {
    child: Child,
    port: u16,
    tsdb: PathBuf,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, port: u16) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "prometheus is needed (Debian package prometheus; `cargo xtask test` installs it)"
        );
        let config = dir.join("prometheus.yml");
        // No scrapes: every series it has came by remote write.
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
        let tsdb = dir.join("tsdb");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, port, tsdb, dir: dir.to_path_buf() };
        let ready = wait_for(Duration::from_secs(60), || http_get(port, "/-/ready").filter(|(s, _)| *s == 200));
        assert!(ready.is_some(), "prometheus did not become ready:\n{}", p.log());
        p
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The result of an instant query.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Some((200, body)) = http_get(self.port, &format!("/api/v1/query?query={encoded}")) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Timestamps (ms) of the raw samples of `selector` in the last 10 minutes.
    fn sample_times(&self, selector: &str) -> Vec<i64> {
        let mut times: Vec<i64> = self
            .query(&format!("{selector}[10m]"))
            .iter()
            .flat_map(|series| series["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v[0].as_f64())
            .map(|s| (s * 1000.0).round() as i64)
            .collect();
        times.sort_unstable();
        times
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of the first `/metrics` line starting with `series` (name and labels).
fn metric(collector: &CollectorSetup, series: &str) -> Option<f64> {
    let (_, body) = http_get(collector.http_port, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_real_prometheus_gets_every_sample_including_those_of_its_outage_and_a_collector_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let mut prom = Prometheus::start(dir.path(), port);
    let collector = CollectorSetup::new(
        dir.path(),
        &pki,
        &format!(
            "[remote_write]\nurl = \"http://127.0.0.1:{port}/api/v1/write\"\nextra_labels = {{ source = \"pikett-test\" }}\n"
        ),
    );
    let mut c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-7", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let selector = "pikett_host_memory_total_bytes{host=\"web-7\"}";

    let found = wait_for(Duration::from_secs(60), || prom.query(selector).into_iter().next());
    let sample = found.unwrap_or_else(|| {
        panic!(
            "no sample of web-7 in Prometheus:\n{}\ncollector:\n{}\nagent:\n{}",
            prom.log(),
            c.log_text(),
            agent.log_text()
        )
    });
    assert_eq!(sample["metric"]["customer"], "acme", "{sample}");
    assert_eq!(sample["metric"]["source"], "pikett-test", "{sample}");
    assert!(sample["metric"].get("job").is_none(), "scraped, not remote-written: {sample}");
    let value: f64 = sample["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a numeric value");
    assert!(value > 0.0, "{sample}");

    // Prometheus goes away; the collector keeps storing and tries to forward.
    prom.kill();
    let killed = now_ms();
    let failed = wait_for(Duration::from_secs(30), || {
        metric(&collector, "pikett_remote_write_failed_sends_total").filter(|n| *n >= 2.0)
    });
    assert!(failed.is_some(), "no failed sends counted while Prometheus is down:\n{}", c.log_text());
    std::thread::sleep(Duration::from_secs(2));
    // The collector restarts during the outage: what it stored is still to be forwarded.
    let stopped = now_ms();
    assert_eq!(c.sigterm(Duration::from_secs(20)), Some(0), "collector did not stop cleanly:\n{}", c.log_text());
    let mut c = collector.start();
    let restarted = now_ms();
    let behind = wait_for(Duration::from_secs(30), || {
        metric(&collector, "pikett_remote_write_backlog_seconds").filter(|s| *s >= 2.0)
    });
    assert!(behind.is_some(), "the restarted collector shows no backlog:\n{}", c.log_text());
    std::thread::sleep(Duration::from_secs(2));
    let back = now_ms();
    let prom = Prometheus::start(dir.path(), port);
    assert!(prom.tsdb.exists());

    // Everything the agent read from before the outage until Prometheus came back arrives.
    let complete = wait_for(Duration::from_secs(60), || {
        let times = prom.sample_times(selector);
        times.last().is_some_and(|t| *t >= back).then_some(times)
    });
    let times = complete.unwrap_or_else(|| {
        panic!(
            "the outage's samples did not arrive: {:?}\nprometheus:\n{}\ncollector:\n{}",
            prom.sample_times(selector),
            prom.log(),
            c.log_text()
        )
    });
    let during = |from: i64, to: i64| times.iter().filter(|t| (from..to).contains(*t)).count();
    assert!(during(killed + 500, stopped) >= 2, "samples stored before the collector's restart are missing: {times:?}");
    assert!(during(restarted, back) >= 2, "samples stored after the collector's restart are missing: {times:?}");
    // Nothing in between is missing, not even what the agent read while the collector
    // restarted: the host probe reads every 500 ms.
    let window: Vec<i64> = times.iter().copied().filter(|t| (killed - 5_000..back).contains(t)).collect();
    let gap = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(i64::MAX);
    assert!(gap <= 3_000, "a gap of {gap} ms in the forwarded samples: {window:?}");
    let caught_up = wait_for(Duration::from_secs(30), || {
        metric(&collector, "pikett_remote_write_backlog_seconds").filter(|s| *s <= 1.0)
    });
    assert!(caught_up.is_some(), "the backlog did not shrink:\n{}", c.log_text());
    assert!(metric(&collector, "pikett_remote_write_samples_total").is_some_and(|n| n > 0.0));
    assert_eq!(metric(&collector, "pikett_remote_write_dropped_samples_total{reason=\"backlog\"}"), Some(0.0));
    c.sigkill();
    assert!(!c.log_text().contains("panicked"), "{}", c.log_text());
}

#[test]
fn server_errors_are_retried_client_errors_dropped_and_the_token_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let receiver = Receiver::start(503);
    let token = dir.path().join("rw.token");
    std::fs::write(&token, "tok-s3cret-4711\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let collector = CollectorSetup::new(
        dir.path(),
        &pki,
        &format!(
            "[remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\nbearer_token_file = \"{}\"\n",
            receiver.port,
            token.display()
        ),
    );
    let c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-8", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    let retried = wait_for(Duration::from_secs(30), || (receiver.requests().len() >= 2).then_some(()));
    assert!(retried.is_some(), "a 503 was not retried:\n{}", c.log_text());
    let first = &receiver.requests()[0];
    assert_eq!(first.path, "/api/v1/write");
    for (header, value) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
        ("authorization", "Bearer tok-s3cret-4711"),
    ] {
        assert_eq!(first.headers.get(header).map(String::as_str), Some(value), "{header}: {:?}", first.headers);
    }
    assert_eq!(metric(&collector, "pikett_remote_write_samples_total"), Some(0.0));
    assert_eq!(metric(&collector, "pikett_remote_write_dropped_samples_total{reason=\"rejected\"}"), Some(0.0));

    // A 400 can never succeed: the samples are dropped, counted, and forwarding moves on.
    receiver.set_status(400);
    let dropped = wait_for(Duration::from_secs(30), || {
        metric(&collector, "pikett_remote_write_dropped_samples_total{reason=\"rejected\"}").filter(|n| *n > 0.0)
    });
    assert!(dropped.is_some(), "refused samples were not counted:\n{}", c.log_text());
    receiver.set_status(200);
    let sent = wait_for(Duration::from_secs(30), || {
        metric(&collector, "pikett_remote_write_samples_total").filter(|n| *n > 0.0)
    });
    assert!(sent.is_some(), "accepted samples were not counted:\n{}", c.log_text());
    let log = c.log_text();
    assert!(log.contains("remote write: sending failed; retrying"), "{log}");
    assert!(!log.contains("tok-s3cret-4711"), "the bearer token is in the log:\n{log}");
}

#[test]
fn bad_remote_write_settings_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("collector.toml");
    let data_dir = dir.path().join("data");
    let check = |remote_write: &str| {
        std::fs::write(&config, format!("data_dir = \"{}\"\n[remote_write]\n{remote_write}", data_dir.display()))
            .unwrap();
        let out = run("pikett-collector", &["--config", config.to_str().unwrap(), "check-config"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    let url = "url = \"http://127.0.0.1:9/api/v1/write\"\n";
    let err = check(&format!(
        "url = \"ftp://store/write\"\nbearer_token_file = \"{}\"\nbasic_auth = {{ username = \"pikett\", password_file = \"{}\" }}\n\
         max_samples_per_send = 0\nextra_labels = {{ host = \"x\", \"bad-name\" = \"y\" }}\n",
        token.display(),
        token.display()
    ));
    for expected in [
        "remote_write.url: scheme \"ftp\"",
        "bearer_token_file and basic_auth exclude each other",
        "remote_write.max_samples_per_send",
        "remote_write.extra_labels.host",
        "remote_write.extra_labels.bad-name",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let err = check(&format!("{url}bearer_token_file = \"{}\"\n", token.display()));
    assert!(err.contains("remote_write.bearer_token_file") && err.contains("readable by others"), "{err}");
    let missing = dir.path().join("missing.pass");
    let err =
        check(&format!("{url}basic_auth = {{ username = \"pikett\", password_file = \"{}\" }}\n", missing.display()));
    assert!(err.contains("remote_write.basic_auth.password_file") && err.contains("cannot read"), "{err}");

    // A CA file that holds no certificate stops `serve` with the key named.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{}\"\nlisten = \"127.0.0.1:{}\"\n\
             [remote_write]\nurl = \"https://store.example/api/v1/write\"\nca_file = \"{}\"\n",
            data_dir.display(),
            free_port(),
            free_port(),
            ca.display()
        ),
    )
    .unwrap();
    let out = run("pikett-collector", &["--config", config.to_str().unwrap(), "serve"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("remote_write.ca_file") && err.contains("no PEM certificate"), "{err}");
}

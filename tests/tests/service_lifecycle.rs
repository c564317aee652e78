//! The collector as a systemd service: it stops on time (SIGTERM ends the agents' open
//! streams; systemd's `TimeoutStopSec` would otherwise SIGKILL it) and a collector started
//! again on the same data directory takes the agents back; it says when it is ready,
//! what it is doing, and feeds the watchdog only while its loops turn; its logs can be
//! JSON for log shippers.

use std::time::{Duration, Instant};

use pikett_tests::*;

#[test]
fn sigterm_ends_open_agent_streams_and_the_collector_exits_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let mut c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-1", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let connected = wait_for(Duration::from_secs(30), || c.log_text().contains("agent connected").then_some(()));
    assert!(connected.is_some(), "the agent never connected; agent log:\n{}", agent.log_text());
    // Batches flow on the open stream while the signal comes.
    std::thread::sleep(Duration::from_secs(1));

    let asked = Instant::now();
    let code = c.sigterm(Duration::from_secs(20));
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "collector log:\n{}", c.log_text());
    assert!(took < Duration::from_secs(5), "the collector took {took:?} to stop with an agent connected");
    assert!(c.log_text().contains("stream ended"), "the stream was not ended by the collector:\n{}", c.log_text());
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died with the collector");

    // The store was closed cleanly: a new collector opens it and the agent comes back.
    // (The log is appended to: count the connections.)
    let before = c.log_text().matches("agent connected").count();
    let again = collector.start();
    let back = wait_for(Duration::from_secs(60), || {
        (again.log_text().matches("agent connected").count() > before).then_some(())
    });
    assert!(back.is_some(), "the agent did not reconnect; agent log:\n{}", agent.log_text());
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0), "agent log:\n{}", agent.log_text());
}

/// systemd's notify protocol, driven by a datagram socket standing in for systemd:
/// READY and STATUS when serving, WATCHDOG pings while the clock loop turns; when it
/// hangs (fault injection), the pings stop, so systemd would restart the collector.
#[test]
fn the_collector_is_ready_reports_status_and_stops_feeding_the_watchdog_when_a_loop_hangs() {
    use std::os::unix::net::UnixDatagram;
    for hang in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let collector = CollectorSetup::new(dir.path(), &pki, "");
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let notify = socket_path.display().to_string();
        let mut env = vec![("NOTIFY_SOCKET", notify.as_str()), ("WATCHDOG_USEC", "1000000")];
        if hang {
            env.push(("FAILPOINTS", "clock-hang=sleep(600000)"));
        }
        let started = Instant::now();
        let c = collector.start_env(&env);
        // (time since start, message) for 8 s.
        let mut got: Vec<(Duration, String)> = Vec::new();
        let mut buf = [0u8; 4096];
        while started.elapsed() < Duration::from_secs(8) {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push((started.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        let ready = got
            .iter()
            .find(|(_, m)| m.contains("READY=1"))
            .unwrap_or_else(|| panic!("no READY: {got:?}; log:\n{}", c.log_text()));
        assert!(ready.1.contains("STATUS=serving"), "{got:?}");
        let pings: Vec<Duration> = got.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).map(|(t, _)| *t).collect();
        if hang {
            // The clock loop hangs at its first turn: pings stop once it is 3 s overdue.
            let last = pings.last().copied().unwrap_or_default();
            assert!(last < Duration::from_secs(6), "pings went on with the clock loop hung: {pings:?}");
            assert!(c.log_text().contains("a service loop is stuck"), "not logged:\n{}", c.log_text());
        } else {
            assert!(pings.len() >= 8, "the watchdog was not fed every half interval: {pings:?}");
            assert!(pings.last().is_some_and(|t| *t > Duration::from_secs(7)), "{pings:?}");
        }
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let mut c = collector.start_env(&[("PIKETT_LOG_FORMAT", "json")]);
    assert_eq!(c.sigterm(Duration::from_secs(10)), Some(0));
    let log = c.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    let serving = lines.iter().find(|l| l["message"] == "collector serving").expect("the serving line");
    assert_eq!(serving["level"], "INFO");
    assert!(serving["timestamp"].is_string() && serving["target"].is_string(), "{serving}");
    // Fields are keys of their own, for queries in the log store.
    assert!(serving["listen"].as_str().is_some_and(|l| l.starts_with("127.0.0.1:")), "{serving}");
}

//! Stopping on time: SIGTERM ends the agents' open streams and the collector exits
//! cleanly within seconds (systemd's `TimeoutStopSec` would otherwise SIGKILL it), and a
//! collector started again on the same data directory takes the agents back.

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

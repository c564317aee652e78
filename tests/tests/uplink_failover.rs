//! A collector that accepts streams but never acknowledges (the fail point
//! `ingest-hold-acks`) does not hold an agent: after `ack_timeout` the agent fails over to
//! the second collector, and it does not reconnect to the silent one in a loop.

use std::time::{Duration, Instant};

use pikett_tests::*;

#[test]
fn an_agent_leaves_a_collector_that_never_acknowledges_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let silent = CollectorSetup::new(&dir_a, &pki, "");
    let working = CollectorSetup::new(&dir_b, &pki, "");
    let _a = silent.start_env(&[("FAILPOINTS", "ingest-hold-acks=return")]);
    let _b = working.start();

    let cfg = agent_config(dir.path(), &pki, "failover-01", &silent.url(), "[host]\ninterval = \"500ms\"\n");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("collectors = [\"{}\"]", silent.url()),
        &format!("collectors = [\"{}\", \"{}\"]\nack_timeout = \"2s\"", silent.url(), working.url()),
    );
    assert!(text.contains("ack_timeout"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let started = Instant::now();
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));

    let on_b = wait_for(Duration::from_secs(15), || {
        json_lines(&working.pikett(&["hosts", "--output", "json"], &ca).stdout)
            .into_iter()
            .find(|h| h["host_id"] == "failover-01" && h["batches"].as_u64().unwrap_or(0) > 0)
    });
    let elapsed = started.elapsed();
    assert!(on_b.is_some(), "the agent never reached the second collector; agent log:\n{}", agent.log_text());
    assert!(elapsed >= Duration::from_secs(2), "failed over before the ack timeout: {elapsed:?}");

    // It stays on the working collector: the silent one saw one stream, not a loop of them.
    std::thread::sleep(Duration::from_secs(8));
    let a_log = std::fs::read_to_string(&silent.log).unwrap_or_default();
    let connects = a_log.matches("agent connected").count();
    assert!((1..=2).contains(&connects), "the silent collector saw {connects} streams:\n{a_log}");
    let agent_log = agent.log_text();
    assert!(agent_log.contains("no acknowledgement within"), "{agent_log}");
}

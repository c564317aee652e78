//! No alarm lost to a collector crash: the real collector is SIGKILLed at seeded random
//! moments while faults are opening, and restarted on the same data directory. Every fault
//! that opened must be paged, and a page that reached the gateway more than once must carry
//! the same idempotency key every time (a second key for a fault is a second page, which the
//! fault's timeline must explain by a failed delivery).
//!
//! The collector runs with the fail point `pager-before-enqueue` sleeping 400 ms, so many
//! kills land after a fault opened (durably) and before its page was queued: without the
//! pager's catch-up at start-up those faults would never be paged.
//!
//! `PIKETT_CRASH_SEED` replays a run (the seed is printed); `PIKETT_CRASH_ROUNDS` changes
//! the number of rounds (default 50).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pikett_tests::*;

/// xorshift64*: a few lines instead of a dependency, enough to spread kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` command checks `command/c0` … whose exit code is the content of `state-N`.
fn checks(dir: &std::path::Path, n: usize) -> String {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("check_state");
    std::fs::write(&script, "#!/bin/sh\ncode=$(cat \"$1\")\necho \"state $code\"\nexit $code\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut toml = String::new();
    for i in 0..n {
        let state = dir.join(format!("state-{i}"));
        std::fs::write(&state, "0").unwrap();
        toml.push_str(&format!(
            "[[checks]]\nname = \"c{i}\"\nkind = \"command\"\ncommand = [\"{}\", \"{}\"]\ninterval = \"300ms\"\ntimeout = \"5s\"\n",
            script.display(),
            state.display()
        ));
    }
    toml
}

#[test]
fn every_fault_opened_across_collector_crashes_is_paged_once_per_key() {
    let seed: u64 = std::env::var("PIKETT_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let rounds: usize = std::env::var("PIKETT_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    eprintln!("crash_paging: seed {seed} ({rounds} rounds); replay with PIKETT_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let sms = Receiver::start(200);
    let collector = CollectorSetup::new(
        dir.path(),
        &pki,
        &alice_paged_by_sms(
            &sms,
            "ack_timeout = \"1h\"\nrepeat = 0",
            "[outbox]\ninitial_backoff = \"200ms\"\nmax_backoff = \"1s\"\nmax_attempts = 50",
        ),
    );
    // Widen the window between "fault open and durable" and "page in the outbox" so that
    // kills land in it: this is the window the pager's catch-up after a restart closes.
    let failpoints = [("FAILPOINTS", "pager-before-enqueue=sleep(400)")];
    let mut running = collector.start_env(&failpoints);
    let cfg = agent_config(dir.path(), &pki, "crash-01", &collector.url(), &checks(dir.path(), rounds));
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(1));

    for i in 0..rounds {
        std::fs::write(dir.path().join(format!("state-{i}")), "2").unwrap();
        // Kill somewhere between "not yet seen" and "opened and being paged".
        std::thread::sleep(Duration::from_millis(rng.below(900)));
        running.sigkill();
        if rng.below(3) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(500)));
        }
        running = collector.start_env(&failpoints);
    }

    // Every check's fault opens and is paged, from the agent's resent batches and the
    // pager's catch-up after each restart.
    let wanted: BTreeSet<String> = (0..rounds).map(|i| format!("command/c{i}")).collect();
    let settled = wait_for(Duration::from_secs(60), || {
        let faults = faults(&collector, &ca);
        let ids: BTreeMap<String, u64> = faults
            .iter()
            .filter(|f| f["host"] == "crash-01" && wanted.contains(f["check"].as_str().unwrap_or("")))
            .map(|f| (f["check"].as_str().unwrap().to_string(), f["id"].as_u64().unwrap()))
            .collect();
        let paged: BTreeSet<u64> = sms
            .requests()
            .iter()
            .filter_map(|r| r.headers.get("idempotency-key"))
            .filter_map(|k| k.split('/').next()?.parse().ok())
            .collect();
        (ids.len() == rounds && ids.values().all(|id| paged.contains(id))).then_some(ids)
    });
    let ids = settled.unwrap_or_else(|| {
        let faults = faults(&collector, &ca);
        let keys: Vec<String> = sms.requests().iter().filter_map(|r| r.headers.get("idempotency-key").cloned()).collect();
        panic!(
            "seed {seed}: not every fault opened and was paged.\nfaults: {faults:?}\nSMS keys: {keys:?}\ncollector log:\n{}",
            std::fs::read_to_string(&collector.log).unwrap_or_default()
        )
    });

    // Same fault, same step → the same key, however often the gateway saw it. A second key
    // for a fault is a second page (the next round after a failed delivery attempt, e.g. a
    // pooled connection the gateway had closed) and must be explained on the timeline.
    // Only the faults of our checks: a `host/reachable` fault may open and resolve too (the
    // agent backs off while the collector keeps dying), with its all-clear as a second page.
    let ours: BTreeSet<u64> = ids.values().copied().collect();
    let mut keys_per_fault: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in sms.requests() {
        let key = r.headers.get("idempotency-key").expect("every SMS carries an Idempotency-Key").clone();
        let fault: u64 = key.split('/').next().and_then(|f| f.parse().ok()).expect("key FAULT/STEP");
        assert!(r.body.contains(ALICE_SMS), "seed {seed}: page to someone else: {}", r.body);
        if ours.contains(&fault) {
            keys_per_fault.entry(fault).or_default().insert(key);
        }
    }
    for (fault, keys) in &keys_per_fault {
        if keys.len() == 1 {
            continue;
        }
        let shown =
            json_lines(&collector.pikett(&["fault", "show", &fault.to_string(), "--output", "json"], &ca).stdout);
        let timeline = shown[0]["timeline"].as_array().cloned().unwrap_or_default();
        let failed =
            timeline.iter().filter_map(|e| e["text"].as_str()).any(|t| t.contains("failed") || t.contains("FAILED"));
        assert!(
            failed,
            "seed {seed}: fault {fault} paged under different keys {keys:?} without a failed delivery:\n{timeline:?}"
        );
    }
    assert_eq!(keys_per_fault.len(), rounds, "seed {seed}: not every fault of ours was paged: {keys_per_fault:?}");

    // One more crash after everything settled pages nobody again under a new key, and every
    // open fault still has its escalation (its timeline says who was paged).
    let before = sms.requests().len();
    running.sigkill();
    let _running = collector.start();
    std::thread::sleep(Duration::from_secs(2));
    for r in &sms.requests()[before..] {
        let key = r.headers.get("idempotency-key").unwrap();
        let fault: u64 = key.split('/').next().unwrap().parse().unwrap();
        if let Some(keys) = keys_per_fault.get(&fault) {
            assert!(keys.contains(key), "seed {seed}: new key {key} after a settled restart");
        }
    }
    // Nothing of the agent's lost or counted twice across the kills: its batches are
    // numbered 1, 2, … in one spool, so the host's record counts exactly as many as the
    // highest it stored (a batch indexed before a kill but never acknowledged is stored
    // again on resend and counted once; one acknowledged is a duplicate).
    let hosts = json_lines(&collector.pikett(&["hosts", "--output", "json"], &ca).stdout);
    let host = hosts.iter().find(|h| h["host_id"] == "crash-01").expect("the host is registered");
    assert_eq!(host["spool_resets"], 0, "seed {seed}: {host}");
    assert!(host["last_seq"].as_u64().unwrap() >= rounds as u64, "seed {seed}: {host}");
    assert_eq!(host["batches"], host["last_seq"], "seed {seed}: batches lost or counted twice: {host}");
    for id in ids.values() {
        let shown = json_lines(&collector.pikett(&["fault", "show", &id.to_string(), "--output", "json"], &ca).stdout);
        let timeline = shown[0]["timeline"].as_array().unwrap();
        assert!(
            timeline.iter().any(|e| e["text"].as_str().is_some_and(|t| t.contains("alice"))),
            "seed {seed}: fault {id} has no page on its timeline: {timeline:?}"
        );
    }
    drop(agent);
}

//! Many command checks under a small open-files limit: `max_concurrent_commands`
//! keeps the agent inside it. Runs the real binary (`pikett-agent test --probe
//! checks`) under `ulimit -n 1024`, where 600 plugins at once would need about
//! 1,200 pipe descriptors.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const CHECKS: usize = 600;
const LIMIT: usize = 50;

#[test]
fn six_hundred_slow_plugins_under_ulimit_1024_all_report_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("starts-and-ends.log");
    // Each plugin notes its start and its end; appends of one short line are atomic,
    // so the file's order is the order in which they happened. It reports the
    // open-files limit it inherited from the agent.
    let plugin = dir.path().join("slow.sh");
    std::fs::write(&plugin, "echo S >> \"$1\"\nsleep 1\necho E >> \"$1\"\necho \"OK - slept, nofile $(ulimit -n)\"\n")
        .unwrap();
    let mut cfg = format!("host_id = \"h\"\nmax_concurrent_commands = {LIMIT}\n");
    for i in 0..CHECKS {
        cfg += &format!(
            "\n[[checks]]\nname = \"slow-{i}\"\nkind = \"command\"\ncommand = [\"/bin/sh\", {:?}, {:?}]\n",
            plugin.display().to_string(),
            log.display().to_string()
        );
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, cfg).unwrap();

    let started = Instant::now();
    let out = Command::new("/bin/sh")
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_pikett-agent"))
        .arg("--config")
        .arg(&config)
        .args(["test", "--probe", "checks"])
        .output()
        .expect("run pikett-agent");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pikett-agent test failed ({}): {stderr}", out.status);
    assert!(!stderr.to_lowercase().contains("too many open files"), "{stderr}");

    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .filter(|l: &Value| l["type"] == "check")
        .collect();
    let names: HashSet<&str> = results.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(results.len(), CHECKS, "one result per check");
    assert_eq!(names.len(), CHECKS, "every check reported, none twice");
    for c in &results {
        assert_eq!(c["state"], "OK", "{c}");
        // The plugins ran under the limit the test set (so the agent did too).
        assert_eq!(c["summary"], "OK - slept, nofile 1024", "{c}");
    }

    let events = std::fs::read_to_string(&log).unwrap();
    let (mut running, mut most, mut starts) = (0usize, 0usize, 0usize);
    for line in events.lines() {
        match line {
            "S" => {
                running += 1;
                starts += 1;
                most = most.max(running);
            }
            "E" => running = running.checked_sub(1).expect("an end without a start"),
            other => panic!("unexpected line {other:?} in the log"),
        }
    }
    assert_eq!(starts, CHECKS, "every plugin ran exactly once");
    assert!(most <= LIMIT, "{most} plugins ran at once; max_concurrent_commands is {LIMIT}");
    // And the limit is used, not serialised: 600 one-second plugins take about 12 s, not 600.
    assert!(most > LIMIT / 2, "at most {most} plugins ran at once");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

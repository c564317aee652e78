//! Reloading the collector's configuration without a restart: SIGHUP applies a new
//! rotation at once; an invalid file is refused with its line and column and the plan in
//! force stays; agent streams are not touched.

use std::time::Duration;

use pikett_tests::*;

fn sighup(p: &Proc) {
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
}

#[test]
fn sighup_applies_a_new_rotation_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let sms = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &primary_rotation_of(&sms, "alice"));
    let c = collector.start();
    let cfg = agent_config(dir.path(), &pki, "web-1", &collector.url(), "[host]\ninterval = \"500ms\"\n");
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let connected = wait_for(Duration::from_secs(30), || c.log_text().contains("agent connected").then_some(()));
    assert!(connected.is_some(), "agent log:\n{}", agent.log_text());
    assert_eq!(oncall_primary(&collector, &ca), "alice");

    // This week's swap: bob takes over.
    let text = std::fs::read_to_string(&collector.config).unwrap();
    std::fs::write(&collector.config, text.replace("members = [\"alice\"]", "members = [\"bob\"]")).unwrap();
    sighup(&c);
    let swapped = wait_for(Duration::from_secs(10), || (oncall_primary(&collector, &ca) == "bob").then_some(()));
    assert!(swapped.is_some(), "the new rotation was not applied; log:\n{}", c.log_text());
    assert!(c.log_text().contains("configuration reloaded"), "{}", c.log_text());

    // A typo: refused with file, line and column; bob stays on call.
    let good = std::fs::read_to_string(&collector.config).unwrap();
    std::fs::write(&collector.config, good.replace("period = \"1w\"", "period = \"1w\"\nperiode = \"2w\"")).unwrap();
    sighup(&c);
    let refused = wait_for(Duration::from_secs(10), || {
        c.log_text().lines().find(|l| l.contains("configuration reload refused")).map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", c.log_text()));
    let name = collector.config.file_name().unwrap().to_string_lossy().into_owned();
    assert!(refused.contains(&name) && refused.contains("unknown field `periode`"), "{refused}");
    let line = good.lines().position(|l| l.contains("period = \"1w\"")).unwrap() + 2;
    assert!(refused.contains(&format!(":{line}:1:")), "no line {line}, column 1 in: {refused}");
    assert_eq!(oncall_primary(&collector, &ca), "bob", "a refused file changed the plan");

    // The agent's stream lived through both reloads.
    assert_eq!(c.log_text().matches("agent connected").count(), 1, "the agent reconnected:\n{}", c.log_text());
}

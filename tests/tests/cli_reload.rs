//! `pikett reload` does what SIGHUP does (see reload.rs), and says so: a new rotation applies at
//! once and the keys that need a restart are named; an invalid file is refused with its file,
//! line and column on stderr (exit 1) and the plan in force stays.

use pikett_tests::*;

#[test]
fn pikett_reload_applies_a_new_rotation_names_restart_keys_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let sms = Receiver::start(200);
    let collector = CollectorSetup::new(dir.path(), &pki, &primary_rotation_of(&sms, "alice"));
    let c = collector.start();
    assert_eq!(oncall_primary(&collector, &ca), "alice");

    // Nothing changed yet: a reload applies the same file and needs no restart.
    let out = collector.pikett(&["reload"], &ca);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("configuration reloaded from") && text.contains("needs a restart: nothing"), "{text}");

    // This week's swap (bob takes over), and a key that only a restart applies.
    let text = std::fs::read_to_string(&collector.config).unwrap();
    let edited =
        format!("metrics_staleness = \"7m\"\n{}", text.replace("members = [\"alice\"]", "members = [\"bob\"]"));
    std::fs::write(&collector.config, edited).unwrap();
    let out = collector.pikett(&["reload"], &ca);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = collector.config.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains("configuration reloaded from") && text.contains(&name), "{text}");
    assert!(text.contains("rotations"), "what was applied is not said: {text}");
    let restart = text.lines().find(|l| l.starts_with("needs a restart:")).unwrap_or_else(|| panic!("{text}"));
    assert!(restart.contains("metrics_staleness"), "{restart}");
    assert_eq!(oncall_primary(&collector, &ca), "bob", "the new rotation was not applied; log:\n{}", c.log_text());

    // JSON: the same, for scripts (the restart key stays pending until a restart).
    let out = collector.pikett(&["reload", "--output", "json"], &ca);
    let reply = json_lines(&out.stdout);
    assert_eq!(reply.len(), 1, "{reply:?}");
    assert!(reply[0]["applied"].as_array().is_some_and(|a| !a.is_empty()), "{}", reply[0]);
    assert_eq!(reply[0]["needs_restart"], serde_json::json!(["metrics_staleness"]));

    // A typo: refused with file, line and column; bob stays on call.
    let good = std::fs::read_to_string(&collector.config).unwrap();
    std::fs::write(&collector.config, good.replace("period = \"1w\"", "period = \"1w\"\nperiode = \"2w\"")).unwrap();
    let out = collector.pikett(&["reload"], &ca);
    assert_eq!(out.status.code(), Some(1), "a broken file was not refused: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = good.lines().position(|l| l.contains("period = \"1w\"")).unwrap() + 2;
    assert!(err.contains(&format!("{name}:{line}:1:")), "no {name}:{line}:1: in: {err}");
    assert!(err.contains("unknown field `periode`") && err.contains("configuration in force stays"), "{err}");
    assert_eq!(oncall_primary(&collector, &ca), "bob", "a refused file changed the plan");

    // Both reloads and the refusal are in the audit log.
    let audit = json_lines(&collector.pikett(&["audit", "--output", "json"], &ca).stdout);
    let reloads: Vec<_> = audit.iter().filter(|e| e["call"] == "reload").collect();
    assert_eq!(reloads.len(), 4, "{reloads:?}");
    let outcomes: Vec<&str> = reloads.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes[..3], ["ok", "ok", "ok"], "{outcomes:?}");
    assert!(
        outcomes[3].starts_with("failed: configuration refused") && outcomes[3].contains("periode"),
        "{outcomes:?}"
    );
}

//! `cargo xtask demo` writes configs that the real binaries accept, and its documented way to
//! break and repair a check (`touch DIR/broken`, `rm DIR/broken`) really does that.

use pikett_tests::*;

/// Runs `cargo xtask demo --write-config DIR` (as the alias would) and returns the files.
fn write_demo_configs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let out = cargo()
        .args(["run", "--quiet", "--package", "xtask", "--", "demo", "--write-config"])
        .arg(dir)
        .output()
        .expect("running cargo run -p xtask");
    assert!(out.status.success(), "xtask demo --write-config failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(std::path::PathBuf::from).collect()
}

#[test]
fn the_demo_configs_pass_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_demo_configs(dir.path());
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["collector.toml", "agent.toml"]);
    for (binary, file) in [("pikett-collector", &files[0]), ("pikett-agent", &files[1])] {
        let out = run(binary, &["--config", &file.display().to_string(), "check-config"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "{binary} check-config {}: {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The story the demo tells needs these in the collector's file.
    let collector = std::fs::read_to_string(&files[0]).expect("read collector.toml");
    for section in
        ["[customers.acme]", "[sla.gold]", "[people.alice]", "[[rotations]]", "[escalation]", "[channels.sms]"]
    {
        assert!(collector.contains(section), "collector.toml lacks {section}");
    }
}

#[test]
fn the_demo_configs_are_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_demo_configs(dir.path());
    std::fs::write(&files[1], "# edited by hand\n").expect("edit agent.toml");
    write_demo_configs(dir.path());
    assert_eq!(std::fs::read_to_string(&files[1]).expect("read"), "# edited by hand\n");
}

#[test]
fn touching_broken_breaks_the_demo_check_and_removing_it_repairs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_demo_configs(dir.path());
    let agent = files[1].display().to_string();
    let app_state = || {
        let out = run("pikett-agent", &["--config", &agent, "test", "--probe", "checks"]);
        assert!(out.status.success(), "pikett-agent test: {}", String::from_utf8_lossy(&out.stderr));
        let check = json_lines(&out.stdout)
            .into_iter()
            .find(|l| l["type"] == "check" && l["name"] == "command/app")
            .expect("a command/app check result");
        (check["state"].as_str().unwrap_or_default().to_string(), check["summary"].to_string())
    };
    assert_eq!(app_state().0, "OK");
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").expect("touch broken");
    let (state, summary) = app_state();
    assert_eq!(state, "CRITICAL", "{summary}");
    assert!(summary.contains(&broken.display().to_string()), "the summary names the file: {summary}");
    std::fs::remove_file(&broken).expect("rm broken");
    assert_eq!(app_state().0, "OK");
}

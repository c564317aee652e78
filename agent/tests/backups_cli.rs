//! `pikett-agent test --probe backups` and `check-config` with `[[backups]]`, run as the
//! real binary against a real restic repository.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn agent(dir: &Path, config: &str, args: &[&str]) -> Output {
    agent_with_env(dir, config, args, &[])
}

fn agent_with_env(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pikett-agent"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("CACHE_DIRECTORY", dir.join("cache"))
        .env("HOME", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run pikett-agent")
}

fn password_file(dir: &Path) -> String {
    let p = dir.join("restic.pass");
    std::fs::write(&p, "hunter2-but-longer\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn restic(dir: &Path, args: &[&str]) {
    let out = Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", dir.join("restic"))
        .env("RESTIC_PASSWORD_FILE", dir.join("restic.pass"))
        .env("HOME", dir)
        .output()
        .expect("restic is installed (apt-get install restic)");
    assert!(out.status.success(), "restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn borg(dir: &Path, args: &[&str]) {
    let out = Command::new("borg")
        .args(args)
        .env("BORG_REPO", dir.join("borg"))
        .env("BORG_PASSCOMMAND", format!("cat {}", dir.join("restic.pass").display()))
        .env("HOME", dir)
        .env("TZ", "UTC")
        .output()
        .expect("borg is installed (apt-get install borgbackup)");
    assert!(out.status.success(), "borg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn test_probe_backups_prints_a_check_samples_and_inventory_per_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = password_file(d);
    std::fs::create_dir(d.join("src")).unwrap();
    std::fs::write(d.join("src/file"), "data\n").unwrap();
    restic(d, &["init", "-q"]);
    restic(d, &["backup", "-q", &d.join("src").display().to_string()]);
    // A borg archive two hours old (borg takes --timestamp in UTC).
    borg(d, &["init", "-e", "repokey"]);
    let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    let stamp = two_hours_ago.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    borg(d, &["create", "--timestamp", &stamp, "::a1", &d.join("src").display().to_string()]);
    let config = format!(
        "host_id = \"backup-host\"\n\
         [[backups]]\nname = \"home\"\ntool = \"restic\"\nrepository = \"{}\"\npassword_file = \"{pass}\"\n\
         check_interval = \"1d\"\ncheck_subset = \"100%\"\n\
         [[backups]]\nname = \"gone\"\ntool = \"restic\"\nrepository = \"{}\"\npassword_file = \"{pass}\"\n\
         [[backups]]\nname = \"srv\"\ntool = \"borg\"\nrepository = \"{}\"\npassword_file = \"{pass}\"\n\
         [[backups]]\nname = \"rest\"\ntool = \"restic\"\nrepository = \"rest:http://u:s3cr%65t@127.0.0.1:1/r\"\n\
         password_file = \"{pass}\"\ntimeout = \"20s\"\n",
        d.join("restic").display(),
        d.join("no-such-repo").display(),
        d.join("borg").display(),
    );
    // Credentials in the agent's own environment must not override the entries' (the
    // tools would fail with them), and borg's times must not depend on the agent's zone.
    let env = [
        ("RESTIC_PASSWORD", "wrong"),
        ("RESTIC_PASSWORD_COMMAND", "echo wrong"),
        ("BORG_PASSPHRASE", "wrong"),
        ("BORG_PASSCOMMAND", "echo wrong"),
        ("TZ", "Asia/Kolkata"),
    ];
    let out = agent_with_env(d, &config, &["test", "--probe", "backups"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let find = |t: &str, name: &str| lines.iter().find(|l| l["type"] == t && l["name"] == name);
    let home = find("check", "backup/home").expect("a backup/home check");
    assert_eq!(home["state"], "OK", "{home}");
    let summary = home["summary"].as_str().unwrap();
    // The listing is reported at once; the check runs in a task of its own (cut short
    // here, as `test` polls once).
    assert!(summary.contains("1 snapshots (want at least 1)"), "{summary}");
    assert!(summary.contains("integrity check started"), "{summary}");
    let gone = find("check", "backup/gone").expect("a backup/gone check");
    assert_eq!(gone["state"], "UNKNOWN", "{gone}");
    assert!(gone["summary"].as_str().unwrap().starts_with("cannot list the backups of"), "{gone}");
    let age = |set: &str| {
        lines
            .iter()
            .find(|l| l["type"] == "sample" && l["name"] == "pikett_backup_age_seconds" && l["labels"]["backup"] == set)
            .unwrap_or_else(|| panic!("no age sample of {set}"))
    };
    assert_eq!(age("home")["unit"], "s");
    assert!(age("home")["value"].as_f64().is_some_and(|v| (0.0..600.0).contains(&v)), "{}", age("home"));
    let srv = find("check", "backup/srv").expect("a backup/srv check");
    assert_eq!(srv["state"], "OK", "{srv}");
    let borg_age = age("srv")["value"].as_f64().unwrap_or(-1.0);
    assert!((borg_age - 7200.0).abs() < 300.0, "the archive is two hours old in any time zone: {borg_age}");
    let rest = find("check", "backup/rest").expect("a backup/rest check");
    assert_eq!(rest["state"], "UNKNOWN", "{rest}");
    assert!(rest["summary"].as_str().unwrap().contains("rest:http://u:***@127.0.0.1:1/r"), "{rest}");
    let count = find("sample", "pikett_backup_count").expect("a count sample");
    assert_eq!((count["labels"]["kind"].as_str(), count["value"].as_f64()), (Some("snapshot"), Some(1.0)));
    assert!(find("sample", "pikett_backup_repository_size_bytes").is_some_and(|s| s["unit"] == "By"));
    let inventory = find("inventory", "backup/home").expect("an inventory");
    assert_eq!(inventory["data"]["backups"].as_array().map(Vec::len), Some(1));
    assert_eq!(inventory["data"]["integrity"], Value::Null, "no check has ended yet");
    // Nothing but the backups probe, and never a password.
    assert!(lines.iter().all(|l| l["name"] != "host/memory"), "only the backups probe runs");
    for secret in ["hunter2", "s3cret", "s3cr%65t"] {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret), "{secret} printed");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret), "{secret} logged");
    }
}

#[test]
fn check_config_names_the_line_and_the_key_of_a_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad_tool = "host_id = \"h\"\n[[backups]]\nname = \"db\"\ntool = \"tar\"\nrepository = \"/srv/b\"\n";
    let out = agent(d, bad_tool, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = d.join("agent.toml").display().to_string();
    assert!(err.starts_with(&format!("{file}:4:8: tool: unknown tool \"tar\"")), "{err}");

    let unknown_key = "host_id = \"h\"\n[[backups]]\nname = \"db\"\ntool = \"borg\"\nrepo = \"/srv/b\"\n";
    let err = String::from_utf8_lossy(&agent(d, unknown_key, &["check-config"]).stderr).to_string();
    assert!(err.starts_with(&format!("{file}:5:1: unknown field `repo`")), "{err}");

    let missing = "host_id = \"h\"\n[[backups]]\nname = \"db\"\ntool = \"restic\"\n";
    let out = agent(d, missing, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{file}:2:")), "the entry's line: {err}");
    assert!(err.contains("backup/db: repository: required for tool = \"restic\""), "{err}");
    let zero = "host_id = \"h\"\n[[backups]]\nname = \"db\"\ntool = \"borg\"\nrepository = \"/b\"\ninterval = \"0s\"\n";
    let err = String::from_utf8_lossy(&agent(d, zero, &["check-config"]).stderr).to_string();
    assert!(
        err.starts_with(&format!("{file}:2:")) && err.contains("backup/db: interval: must be greater than zero"),
        "{err}"
    );

    let pass = password_file(d);
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open =
        format!("[[backups]]\nname = \"db\"\ntool = \"restic\"\nrepository = \"/r\"\npassword_file = \"{pass}\"\n");
    let err = String::from_utf8_lossy(&agent(d, &open, &["check-config"]).stderr).to_string();
    assert!(err.contains("backup/db: password_file") && err.contains("readable by everyone"), "{err}");

    let twice = "[[backups]]\nname = \"db\"\ntool = \"borg\"\nrepository = \"/a\"\n\
                 [[backups]]\nname = \"db\"\ntool = \"borg\"\nrepository = \"/b\"\n";
    let err = String::from_utf8_lossy(&agent(d, twice, &["check-config"]).stderr).to_string();
    assert!(err.contains("backup/db: duplicate backup name"), "{err}");

    let good = "[[backups]]\nname = \"db\"\ntool = \"borg\"\nrepository = \"/a\"\nmax_age = \"8d\"\nmin_full = 4\n";
    let out = agent(d, good, &["check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

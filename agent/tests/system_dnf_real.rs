//! The patches probe against the real dnf (Debian packages `dnf` and `createrepo-c`; the
//! `rpm` package brings rpmbuild).
//!
//! Each test builds a small local RPM repository: three packages made with rpmbuild in
//! two versions, the newer ones in the repository with an `updateinfo.xml` carrying a
//! Critical security advisory and a bugfix advisory, the older ones installed into a
//! scratch root (`rpm --root`). dnf then runs with `--installroot` against it: nothing
//! of this machine's package state is read or changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::patches::{Manager, PatchTools, PatchesConfig, PatchesProbe};
use pikett_agent::probes::{MemoryState, Probe, SharedState};

/// (name, installed version, version in the repository).
const PACKAGES: [(&str, &str, &str); 3] =
    [("pikett-demo", "1.0", "1.1"), ("pikett-tool", "2.0", "2.1"), ("pikett-extra", "3.0", "3.1")];

const UPDATEINFO: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<updates>
  <update from="security@pikett.example" status="final" type="security" version="2.0">
    <id>PKTSA-2026:0001</id>
    <title>Critical: pikett-demo security update</title>
    <severity>Critical</severity>
    <issued date="2026-11-20 00:00:00"/>
    <updated date="2026-11-21 00:00:00"/>
    <description>Fixes a remote code execution in pikett-demo.</description>
    <pkglist><collection short="demo"><name>demo</name>
      <package name="pikett-demo" version="1.1" release="1" epoch="0" arch="noarch">
        <filename>pikett-demo-1.1-1.noarch.rpm</filename>
      </package>
    </collection></pkglist>
  </update>
  <update from="errata@pikett.example" status="final" type="bugfix" version="2.0">
    <id>PKTBA-2026:0002</id>
    <title>pikett-tool bug fix update</title>
    <issued date="2026-11-22 00:00:00"/>
    <updated date="2026-11-22 00:00:00"/>
    <description>Fixes a crash.</description>
    <pkglist><collection short="tool"><name>tool</name>
      <package name="pikett-tool" version="2.1" release="1" epoch="0" arch="noarch">
        <filename>pikett-tool-2.1-1.noarch.rpm</filename>
      </package>
    </collection></pkglist>
  </update>
</updates>
"#;

fn need(program: &str) {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    assert!(found, "{program} not found: install the Debian packages dnf createrepo-c rpm (cargo xtask test does)");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The repository, the scratch root with the old versions, and wrappers that point the
/// real dnf and rpm at them.
struct LocalRepo {
    dir: tempfile::TempDir,
}

impl LocalRepo {
    fn new() -> LocalRepo {
        for program in ["dnf", "rpm", "rpmbuild", "createrepo_c", "modifyrepo_c"] {
            need(program);
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (top, rpms, repo, root) = (d.join("build"), d.join("rpms"), d.join("repo"), d.join("root"));
        std::fs::create_dir_all(top.join("SPECS")).unwrap();
        std::fs::create_dir_all(&repo).unwrap();
        for (name, old, new) in PACKAGES {
            for version in [old, new] {
                let spec = top.join("SPECS").join(format!("{name}-{version}.spec"));
                std::fs::write(
                    &spec,
                    format!(
                        "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: a package for pikett's patch tests\n\
                         License: MIT\nBuildArch: noarch\n%description\nNothing in it.\n%files\n"
                    ),
                )
                .unwrap();
                run(Command::new("rpmbuild")
                    .arg("-bb")
                    .arg("--define")
                    .arg(format!("_topdir {}", top.display()))
                    .arg("--define")
                    .arg(format!("_rpmdir {}", rpms.display()))
                    .arg(&spec));
            }
            let rpm = |v: &str| rpms.join("noarch").join(format!("{name}-{v}-1.noarch.rpm"));
            std::fs::copy(rpm(new), repo.join(format!("{name}-{new}-1.noarch.rpm"))).unwrap();
        }
        run(Command::new("createrepo_c").arg("-q").arg(&repo));
        let updateinfo = d.join("updateinfo.xml");
        std::fs::write(&updateinfo, UPDATEINFO).unwrap();
        run(Command::new("modifyrepo_c").arg("--mdtype=updateinfo").arg(&updateinfo).arg(repo.join("repodata")));
        run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
        let mut install = Command::new("rpm");
        install.arg("--root").arg(&root).args(["-i", "--nodeps"]);
        for (name, old, _) in PACKAGES {
            install.arg(rpms.join("noarch").join(format!("{name}-{old}-1.noarch.rpm")));
        }
        run(&mut install);
        let repo_dir = repo.display().to_string();
        let root_dir = root.display().to_string();
        script(&d.join("dnf"), &Self::dnf_wrapper(&root_dir, "local", &format!("file://{repo_dir}")));
        // A repository that is down, whose .repo file says to skip it when unavailable
        // (the probe must not read that as "nothing pending").
        let reposd = d.join("repos.d");
        std::fs::create_dir_all(&reposd).unwrap();
        std::fs::write(
            reposd.join("gone.repo"),
            "[gone]\nname=gone\nbaseurl=http://127.0.0.1:9/repo\ngpgcheck=0\nskip_if_unavailable=1\n",
        )
        .unwrap();
        script(
            &d.join("dnf-unreachable"),
            &format!(
                "#!/bin/sh\nexec dnf --installroot='{root_dir}' --setopt=reposdir='{}' --releasever=8 \"$@\"\n",
                reposd.display()
            ),
        );
        script(&d.join("rpm"), &format!("#!/bin/sh\nexec rpm --root '{root_dir}' \"$@\"\n"));
        LocalRepo { dir }
    }

    /// dnf for the scratch root, with only the given repository; the host's repository
    /// files are not read.
    fn dnf_wrapper(root: &str, repo: &str, url: &str) -> String {
        format!(
            "#!/bin/sh\nexec dnf --installroot='{root}' --setopt=reposdir=/dev/null --releasever=8 \
             --repofrompath={repo},{url} --setopt={repo}.gpgcheck=0 \"$@\"\n"
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn probe(&self, dnf: &str, refresh: bool) -> PatchesProbe {
        let tools = PatchTools {
            dnf: self.path(dnf),
            rpm: self.path("rpm"),
            // Not on Debian: the probe must say the reboot state is unknown, and why.
            needs_restarting: self.path("needs-restarting"),
            ..PatchTools::default()
        };
        let state: SharedState = Arc::new(MemoryState::default());
        let cfg =
            PatchesConfig { manager: Manager::Dnf, refresh, timeout: Duration::from_secs(120), ..Default::default() };
        PatchesProbe::with_tools(cfg, state, tools).unwrap()
    }
}

fn the_check(obs: &[Observation]) -> (State, String) {
    obs.iter()
        .find_map(|o| match o {
            Observation::Check(c) if c.name == "patches" => Some((c.state, c.summary.clone())),
            _ => None,
        })
        .expect("a patches check")
}

fn updates(obs: &[Observation]) -> Vec<serde_json::Value> {
    obs.iter()
        .find_map(|o| match o {
            Observation::Inventory(i) if i.name == "patches" => Some(i.data["updates"].as_array().unwrap().clone()),
            _ => None,
        })
        .expect("a patches inventory")
}

#[tokio::test]
async fn real_dnf_reports_a_critical_security_update_a_bugfix_and_an_update_without_advisory() {
    let repo = LocalRepo::new();
    let mut probe = repo.probe("dnf", true);
    let obs = probe.poll().await;
    let (state, summary) = the_check(&obs);
    assert_eq!(state, State::Critical, "{summary}");
    assert!(
        summary.starts_with("3 updates pending: 1 security (1 Critical), 1 bugfix, 0 enhancement, 1 other"),
        "{summary}"
    );
    assert!(summary.contains("reboot state unknown: needs-restarting is not installed"), "{summary}");
    let updates = updates(&obs);
    let by_name = |n: &str| updates.iter().find(|u| u["package"] == n).unwrap_or_else(|| panic!("no {n}: {updates:?}"));
    let demo = by_name("pikett-demo");
    assert_eq!(demo["type"], "security");
    assert_eq!(demo["severity"], "Critical");
    assert_eq!(demo["advisory"], "PKTSA-2026:0001");
    assert_eq!(demo["current_version"], "1.0-1", "the installed version comes from the root's rpm database");
    assert_eq!(demo["new_version"], "1.1-1");
    assert_eq!(demo["repository"], "local");
    assert_eq!(demo["released"], "2026-11-21 00:00:00");
    let tool = by_name("pikett-tool");
    assert_eq!((tool["type"].as_str(), tool["advisory"].as_str()), (Some("bugfix"), Some("PKTBA-2026:0002")));
    assert_eq!(by_name("pikett-extra")["type"], "unknown");

    // With refresh = false (-C), the metadata dnf cached is enough: the same answer.
    let mut cached = repo.probe("dnf", false);
    let obs = cached.poll().await;
    assert_eq!(the_check(&obs).0, State::Critical, "{}", the_check(&obs).1);
    assert_eq!(crate::updates(&obs).len(), 3);
}

#[tokio::test]
async fn an_unreachable_repository_is_unknown_never_nothing_pending() {
    let repo = LocalRepo::new();
    let mut probe = repo.probe("dnf-unreachable", true);
    let obs = probe.poll().await;
    let (state, summary) = the_check(&obs);
    assert_eq!(state, State::Unknown, "{summary}");
    assert!(summary.contains("repository metadata unreachable") && summary.contains("gone"), "{summary}");
    assert!(!obs.iter().any(|o| matches!(o, Observation::Inventory(_))), "an inventory from a failed look");
}

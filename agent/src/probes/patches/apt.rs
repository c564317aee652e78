//! Pending updates from apt (Debian/Ubuntu), security ones told apart by their origin.
//!
//! `apt-get update` (when `refresh` is on) refreshes the lists, then
//! `apt-get -s dist-upgrade` simulates the upgrade without locking and prints
//! one line per upgraded package:
//! `Inst NAME [OLD] (NEW Label:Version/Suite[, Label:Version/Suite...] [ARCH])`.
//! An update is security when one of its origins is a `*-security` suite or a
//! `*Security` label; other updates from the distribution are bugfix (Debian
//! and Ubuntu stable take only fixes), from anywhere else unknown.

use std::ffi::OsString;
use std::time::Duration;

use super::{Failure, PatchTools, Pending, UpdateType, classify_failure, exec};

/// Parses one `Inst` line of `apt-get -s`; `None` for other lines and for
/// new installs (no `[OLD]`), which are not updates of installed packages.
pub fn parse_inst_line(line: &str) -> Option<Pending> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let (current, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (old, r) = r.split_once(']')?;
        (old.to_string(), r.trim_start())
    } else {
        return None;
    };
    let inner = rest.strip_prefix('(')?;
    let close = inner.find(')')?;
    let inner = &inner[..close];
    let (new_version, origins_arch) = inner.split_once(' ')?;
    // The architecture is the last "[...]" inside the parentheses.
    let (origins, arch) = match origins_arch.rfind(" [") {
        Some(i) if origins_arch.ends_with(']') => (&origins_arch[..i], &origins_arch[i + 2..origins_arch.len() - 1]),
        _ => (origins_arch, ""),
    };
    let origins: Vec<&str> = origins.split(", ").map(str::trim).filter(|o| !o.is_empty()).collect();
    let is_security = origins.iter().any(|o| {
        let (label, suite) = match o.split_once(':') {
            Some((label, rest)) => (label, rest.split_once('/').map_or("", |(_, s)| s)),
            None => (*o, ""),
        };
        suite.ends_with("-security") || label.ends_with("Security") || label.ends_with("security")
    });
    let from_distro = origins.iter().any(|o| o.starts_with("Debian") || o.starts_with("Ubuntu"));
    let kind = if is_security {
        UpdateType::Security
    } else if from_distro {
        UpdateType::Bugfix
    } else {
        UpdateType::Unknown
    };
    let (package, arch) = match name.split_once(':') {
        Some((n, a)) => (n.to_string(), a.to_string()),
        None => (name.to_string(), arch.to_string()),
    };
    let repository = origins
        .iter()
        .find(|o| is_security && (o.contains("-security") || o.contains("Security")))
        .or(origins.first())
        .map(|o| o.to_string());
    Some(Pending {
        package,
        arch,
        current_version: Some(current),
        new_version: new_version.to_string(),
        advisory: None,
        kind,
        severity: None,
        released: None,
        repository,
    })
}

/// Parses the whole `apt-get -s dist-upgrade` (or `upgrade`) output.
pub fn parse_simulation(text: &str) -> Vec<Pending> {
    text.lines().filter_map(parse_inst_line).collect()
}

/// The "N upgraded, ..." count apt-get prints itself.
pub fn upgraded_count(text: &str) -> Option<usize> {
    text.lines().find_map(|l| l.split_once(" upgraded, ").and_then(|(n, _)| n.trim().parse().ok()))
}

fn apt_args(tools: &PatchTools, rest: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = tools.apt_options.iter().map(OsString::from).collect();
    args.extend(rest.iter().map(OsString::from));
    args
}

/// Why `apt-get update` could not write its lists, when that is the reason it failed:
/// the agent runs as an unprivileged user (the lists and their lock are root's) or in a
/// read-only sandbox. Not a held lock, and not a failure of the probe: the lists the
/// distribution's timer keeps fresh are read instead.
pub fn cannot_write_lists(text: &str) -> Option<String> {
    // Only apt's own refusal to lock the lists counts: a successful update as root also
    // prints "Permission denied" (`_apt` cannot reach a partial download, W: line).
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("E:") && (l.contains("lock file") || l.contains("lock directory")))
        .find(|l| l.contains("Permission denied") || l.contains("Read-only file system") || l.contains("are you root?"))
        .map(str::to_string)
}

/// The directory of apt's package lists (`Dir::State::Lists`, as the tools' options set it).
fn lists_dir(tools: &PatchTools) -> std::path::PathBuf {
    tools
        .apt_options
        .iter()
        .find_map(|o| o.strip_prefix("Dir::State::Lists="))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/lib/apt/lists".into())
}

/// How long ago the newest list in `dir` was written: `3 h`, `2 days`; `None` without lists.
pub fn lists_age(dir: &std::path::Path, now: std::time::SystemTime) -> Option<String> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("_"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    let secs = now.duration_since(newest).unwrap_or_default().as_secs();
    Some(match secs {
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    })
}

/// Refreshes the lists (when asked and allowed) and reads the pending updates; the note
/// says when the lists could not be refreshed, and how old the ones read are.
pub async fn run(
    tools: &PatchTools,
    refresh: bool,
    timeout: Duration,
) -> Result<(Vec<Pending>, Option<String>), Failure> {
    let name = tools.apt_get.display().to_string();
    let mut note = None;
    if refresh {
        let out = exec::run(&tools.apt_get, &apt_args(tools, &["-q", "update"]), timeout)
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        let text = out.combined();
        if let Some(line) = cannot_write_lists(&text) {
            let age = lists_age(&lists_dir(tools), std::time::SystemTime::now())
                .map_or_else(|| "no lists found".to_string(), |a| format!("lists from {a} ago"));
            tracing::debug!(reason = %line, "apt-get update not permitted; reading the lists as they are");
            note = Some(format!(
                "package lists not refreshed: apt-get update needs root and a writable /var/lib/apt (\"{line}\"); {age}, refreshed by the \
                 distribution's apt-daily.timer (or set refresh = false to skip the attempt)"
            ));
        } else {
            // apt-get update exits 0 when some index files failed: read its words.
            if let Some(f) = classify_failure(&text) {
                return Err(f);
            }
            if out.code != Some(0) {
                return Err(Failure::Other(format!("{name} update failed: {}", error_line(&text))));
            }
        }
    }
    let out = exec::run(&tools.apt_get, &apt_args(tools, &["-s", "-o", "Debug::NoLocking=1", "dist-upgrade"]), timeout)
        .await
        .map_err(|e| Failure::Other(e.to_string()))?;
    let text = out.combined();
    if out.code != Some(0) {
        return Err(classify_failure(&text)
            .unwrap_or_else(|| Failure::Other(format!("{name} -s dist-upgrade failed: {}", error_line(&text)))));
    }
    let pending = parse_simulation(&out.stdout);
    // Fewer updates read than apt's own "N upgraded" means a line format we
    // misread: better UNKNOWN than an under-count. (More can be downgrades.)
    if let Some(n) = upgraded_count(&out.stdout) {
        if pending.len() < n {
            return Err(Failure::Other(format!(
                "{name} reports {n} upgrades but only {} could be read from its output",
                pending.len()
            )));
        }
        if pending.len() > n {
            tracing::debug!(reported = n, read = pending.len(), "apt-get lists more Inst lines than upgrades");
        }
    }
    Ok((pending, note))
}

/// The first `E:` line of apt's output, else its last line.
fn error_line(text: &str) -> String {
    text.lines().map(str::trim).find(|l| l.starts_with("E:")).unwrap_or_else(|| exec::last_line(text)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/system/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn an_unprivileged_update_is_told_apart_from_a_held_lock() {
        let as_user = "Reading package lists...\nE: Could not open lock file /var/lib/apt/lists/lock - open (13: Permission denied)\nE: Unable to lock directory /var/lib/apt/lists/\n";
        assert!(cannot_write_lists(as_user).unwrap().contains("Permission denied"));
        let sandboxed = "E: Could not open lock file /var/lib/apt/lists/lock - open (30: Read-only file system)\n";
        assert!(cannot_write_lists(sandboxed).is_some());
        assert!(cannot_write_lists(&read("apt-get-update-lock-held-debian12.txt")).is_none());
        let root_sandbox_warning = "W: Download is performed unsandboxed as root as file '/var/lib/apt/lists/partial/x' couldn't be accessed by user '_apt'. - pkgAcquire::Run (13: Permission denied)\n";
        assert!(cannot_write_lists(root_sandbox_warning).is_none());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lists_age(dir.path(), std::time::SystemTime::now()), None);
        std::fs::write(dir.path().join("deb.debian.org_debian_dists_bookworm_InRelease"), "x").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5 * 3600);
        assert_eq!(lists_age(dir.path(), later).as_deref(), Some("5 h"));
    }

    #[test]
    fn security_origin_line() {
        let p = parse_inst_line("Inst python3-jwt [2.6.0-1] (2.6.0-1+deb12u1 Debian:12.14/oldstable, Debian-Security:12/oldstable-security [all])").unwrap();
        assert_eq!(p.package, "python3-jwt");
        assert_eq!(p.arch, "all");
        assert_eq!(p.current_version.as_deref(), Some("2.6.0-1"));
        assert_eq!(p.new_version, "2.6.0-1+deb12u1");
        assert_eq!(p.kind, UpdateType::Security);
        assert_eq!(p.repository.as_deref(), Some("Debian-Security:12/oldstable-security"));
    }

    #[test]
    fn point_release_line_with_trailing_dependency_note() {
        let p = parse_inst_line(
            "Inst libperl5.36 [5.36.0-7+deb12u2] (5.36.0-7+deb12u3 Debian:12.14/oldstable [amd64]) [perl:amd64 ]",
        )
        .unwrap();
        assert_eq!((p.kind, p.arch.as_str()), (UpdateType::Bugfix, "amd64"));
        assert_eq!(p.new_version, "5.36.0-7+deb12u3");
    }

    #[test]
    fn ubuntu_security_third_party_and_new_installs() {
        let p = parse_inst_line("Inst libssl3 [3.0.2-0ubuntu1.10] (3.0.2-0ubuntu1.12 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])").unwrap();
        assert_eq!(p.kind, UpdateType::Security);
        let p = parse_inst_line(
            "Inst nodejs [20.11.0-1nodesource1] (20.18.1-1nodesource1 nodesource:nodistro/nodistro [amd64])",
        )
        .unwrap();
        assert_eq!(p.kind, UpdateType::Unknown);
        let p = parse_inst_line("Inst docker-ce [5:27.3.1-1~debian.12~bookworm] (5:27.4.0-1~debian.12~bookworm Docker CE:bookworm/bookworm [amd64])").unwrap();
        assert_eq!((p.kind, p.new_version.as_str()), (UpdateType::Unknown, "5:27.4.0-1~debian.12~bookworm"));
        assert!(
            parse_inst_line("Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security [amd64])")
                .is_none()
        );
        assert!(parse_inst_line("Conf bash (5.2.15-2+b13 Debian:12.14/oldstable [amd64])").is_none());
        let p = parse_inst_line("Inst libc6:i386 [2.36-9+deb12u8] (2.36-9+deb12u9 Debian:12.9/stable [i386])").unwrap();
        assert_eq!((p.package.as_str(), p.arch.as_str()), ("libc6", "i386"));
    }

    #[test]
    fn recorded_debian12_simulation_agrees_with_apts_own_count() {
        for file in ["apt-get-s-upgrade-debian12.txt", "apt-get-s-dist-upgrade-debian12.txt"] {
            let text = read(file);
            let pending = parse_simulation(&text);
            assert_eq!(Some(pending.len()), upgraded_count(&text), "{file}");
            assert_eq!(pending.len(), 80);
            let security = pending.iter().filter(|p| p.kind == UpdateType::Security).count();
            let grep = text.lines().filter(|l| l.starts_with("Inst ") && l.contains("-security")).count();
            assert_eq!(security, grep, "{file}");
            assert!(security > 0);
        }
    }

    #[test]
    fn recorded_ubuntu_simulation_with_kernel_kept_for_dist_upgrade() {
        let text = read("apt-get-s-dist-upgrade-ubuntu2204.txt");
        let pending = parse_simulation(&text);
        assert_eq!(Some(pending.len()), upgraded_count(&text));
        assert!(pending.iter().any(|p| p.package == "linux-image-generic" && p.kind == UpdateType::Security));
        assert!(pending.iter().any(|p| p.kind == UpdateType::Bugfix));
    }
}

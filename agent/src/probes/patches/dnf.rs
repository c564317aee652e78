//! Pending updates from dnf (RHEL/Rocky/Alma/CentOS Stream 8 and 9), and the rpm-format parsers yum shares.
//!
//! Three calls: `dnf check-update` (exit 100 = updates available) lists the
//! packages, `dnf updateinfo list --updates` their advisories, and
//! `rpm -qa` the installed versions. The parsers are plain functions.

use std::collections::HashMap;
use std::ffi::OsString;

use super::exec;
use super::{Failure, PatchTools, Pending, Severity, UpdateType, classify_failure};

/// One package with a newer version available, as `check-update` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    pub name: String,
    pub arch: String,
    /// `[epoch:]version-release`
    pub evr: String,
    pub repo: String,
}

/// One (advisory, package) line of `updateinfo list`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvisoryLine {
    pub id: String,
    pub kind: UpdateType,
    pub severity: Option<Severity>,
    pub name: String,
    pub arch: String,
    pub evr: String,
    /// The advisory's date, printed by `dnf -v updateinfo list` on newer dnf.
    pub updated: Option<String>,
}

const ARCHES: &[&str] =
    &["x86_64", "noarch", "i686", "i586", "i386", "aarch64", "ppc64le", "ppc64", "s390x", "armv7hl", "src"];

/// Splits `name.arch` when `arch` is a known rpm architecture.
pub fn split_name_arch(s: &str) -> Option<(&str, &str)> {
    let (name, arch) = s.rsplit_once('.')?;
    (!name.is_empty() && ARCHES.contains(&arch)).then_some((name, arch))
}

/// Splits a NEVRA `name-[epoch:]version-release.arch` into (name, arch, evr).
pub fn split_nevra(s: &str) -> Option<(&str, &str, &str)> {
    let (nvr, arch) = s.rsplit_once('.')?;
    if !ARCHES.contains(&arch) {
        return None;
    }
    let (nv, _release) = nvr.rsplit_once('-')?;
    let (name, _version) = nv.rsplit_once('-')?;
    if name.is_empty() {
        return None;
    }
    Some((name, arch, &nvr[name.len() + 1..]))
}

/// Parses `dnf check-update` / `yum check-update` output: `name.arch  evr  repo`
/// rows, where a long name may push the rest of its row onto the next line.
/// Everything from "Obsoleting Packages" on is ignored (those packages are
/// listed above too when they are updates).
pub fn parse_check_update(text: &str) -> Vec<Available> {
    let mut out = Vec::new();
    let mut row: Vec<&str> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Obsoleting Packages") {
            break;
        }
        for token in trimmed.split_whitespace() {
            if row.is_empty() && split_name_arch(token).is_none() {
                break; // not a package row (a notice, "Security: ...", plugin chatter)
            }
            row.push(token);
            if row.len() == 3 {
                if let Some((name, arch)) = split_name_arch(row[0])
                    && row[1].contains('-')
                {
                    out.push(Available {
                        name: name.to_string(),
                        arch: arch.to_string(),
                        evr: row[1].to_string(),
                        repo: row[2].to_string(),
                    });
                }
                row.clear();
                break;
            }
        }
    }
    out
}

/// Maps an `updateinfo list` type column (`Important/Sec.`, `bugfix`, ...).
pub fn parse_label(label: &str) -> Option<(UpdateType, Option<Severity>)> {
    if let Some(sev) = label.strip_suffix("/Sec.") {
        return Some((UpdateType::Security, Severity::parse(sev)));
    }
    match label {
        "security" => Some((UpdateType::Security, None)),
        "bugfix" => Some((UpdateType::Bugfix, None)),
        "enhancement" => Some((UpdateType::Enhancement, None)),
        "newpackage" | "unknown" => Some((UpdateType::Unknown, None)),
        _ => None,
    }
}

/// Parses `dnf updateinfo list` / `yum updateinfo list` output:
/// `ADVISORY  TYPE[/Sec.]  NEVRA [DATE TIME]` rows; other lines are skipped.
pub fn parse_updateinfo_list(text: &str) -> Vec<AdvisoryLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut tokens: Vec<&str> = line.split_whitespace().collect();
        // `--all` marks installed advisories with a leading "i"
        if tokens.first() == Some(&"i") {
            tokens.remove(0);
        }
        if tokens.len() < 3 {
            continue;
        }
        let Some((kind, severity)) = parse_label(tokens[1]) else {
            continue;
        };
        let Some((name, arch, evr)) = split_nevra(tokens[2]) else {
            continue;
        };
        let updated = (tokens.len() >= 5 && tokens[3].len() == 10 && tokens[3].as_bytes()[4] == b'-')
            .then(|| format!("{} {}", tokens[3], tokens[4]));
        out.push(AdvisoryLine {
            id: tokens[0].to_string(),
            kind,
            severity,
            name: name.to_string(),
            arch: arch.to_string(),
            evr: evr.to_string(),
            updated,
        });
    }
    out
}

/// The rpm query format for [`parse_rpm_qa`]: `name.arch [epoch:]version-release`.
pub const RPM_QF: &str = "%{NAME}.%{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n";

/// Parses `rpm -qa --qf RPM_QF` into `name.arch` → installed evr
/// (the highest listed when several are installed, e.g. kernels).
pub fn parse_rpm_qa(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some((na, evr)) = line.trim().split_once(' ') {
            // later lines win; rpm lists kernels oldest first, which is good enough for display
            out.insert(na.to_string(), evr.to_string());
        }
    }
    out
}

/// Joins check-update rows with their advisories (the most severe one per
/// package) and installed versions.
pub fn merge(
    available: &[Available],
    advisories: &[AdvisoryLine],
    installed: &HashMap<String, String>,
) -> Vec<Pending> {
    available
        .iter()
        .map(|a| {
            let best = advisories
                .iter()
                .filter(|adv| adv.name == a.name && adv.arch == a.arch)
                .max_by_key(|adv| (adv.kind.rank(), adv.severity.map_or(0, Severity::rank)));
            let key = format!("{}.{}", a.name, a.arch);
            Pending {
                package: a.name.clone(),
                arch: a.arch.clone(),
                current_version: installed.get(&key).cloned(),
                new_version: a.evr.clone(),
                advisory: best.map(|b| b.id.clone()),
                kind: best.map_or(UpdateType::Unknown, |b| b.kind),
                severity: best.and_then(|b| b.severity),
                released: best.and_then(|b| b.updated.clone()),
                repository: Some(a.repo.clone()),
            }
        })
        .collect()
}

/// The rpm-based flow shared by dnf and yum.
pub(super) struct RpmFlow<'a> {
    pub tool: &'a std::path::Path,
    pub base_args: Vec<OsString>,
    pub updateinfo_args: Vec<OsString>,
}

impl RpmFlow<'_> {
    pub async fn run(&self, tools: &PatchTools, timeout: std::time::Duration) -> Result<Vec<Pending>, Failure> {
        let program = self.tool.to_path_buf();
        let name = self.tool.display().to_string();
        let mut args = self.base_args.clone();
        args.push("check-update".into());
        let out = exec::run(&program, &args, timeout).await.map_err(|e| Failure::Other(e.to_string()))?;
        let text = out.combined();
        // A skipped repository still gives exit 0/100: never trust that list.
        if let Some(f) = classify_failure(&text) {
            return Err(f);
        }
        let available = match out.code {
            Some(0) => return Ok(Vec::new()),
            Some(100) => parse_check_update(&out.stdout),
            code => {
                return Err(Failure::Other(format!(
                    "{name} check-update exited with {}: {}",
                    code.map_or_else(|| "a signal".into(), |c| c.to_string()),
                    exec::last_line(&text)
                )));
            }
        };
        if available.is_empty() {
            return Err(Failure::Other(format!(
                "{name} check-update reported updates (exit 100) but no package could be read from its output"
            )));
        }

        let mut args = self.base_args.clone();
        args.extend(self.updateinfo_args.iter().cloned());
        let out = exec::run(&program, &args, timeout).await.map_err(|e| Failure::Other(e.to_string()))?;
        let text = out.combined();
        if let Some(f) = classify_failure(&text) {
            return Err(f);
        }
        if out.code != Some(0) {
            return Err(Failure::Other(format!(
                "{name} updateinfo failed ({}): {}",
                out.code.map_or_else(|| "signal".into(), |c| c.to_string()),
                exec::last_line(&text)
            )));
        }
        let advisories = parse_updateinfo_list(&out.stdout);

        // Installed versions are for display only: go on without them.
        let installed = match exec::run(&tools.rpm, &exec::args(["-qa", "--qf", RPM_QF]), timeout).await {
            Ok(o) if o.code == Some(0) => parse_rpm_qa(&o.stdout),
            Ok(o) => {
                tracing::debug!(stderr = %exec::last_line(&o.stderr), "rpm -qa failed; current versions unknown");
                HashMap::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "rpm -qa failed; current versions unknown");
                HashMap::new()
            }
        };
        Ok(merge(&available, &advisories, &installed))
    }
}

/// Where dnf or yum keep metadata: with `refresh = false` only the system's cache (`-C`:
/// `/var/cache/dnf`, kept fresh by root's `dnf-makecache.timer`, readable by anyone);
/// refreshing as an unprivileged user, the unit's cache directory, so metadata survives
/// restarts (dnf's own `metadata_expire` decides when it is fetched again).
pub(super) fn cache_args(tools: &PatchTools, refresh: bool) -> Vec<OsString> {
    if !refresh {
        return exec::args(["-C"]);
    }
    match &tools.rpm_cache_dir {
        Some(dir) if !tools.as_root => vec![OsString::from(format!("--setopt=cachedir={}", dir.display()))],
        _ => Vec::new(),
    }
}

/// The dnf command lines: quiet, never wait for another dnf's lock, never skip an
/// unreachable repository in silence (with `skip_if_unavailable=True`, Debian's default
/// and some admins', `-q` hides the error and exit 0 would read as "nothing pending"),
/// and the cache chosen by [`cache_args`].
pub(super) fn flow(tools: &PatchTools, refresh: bool) -> RpmFlow<'_> {
    // Per repository too: a `.repo` file's own setting wins over the main one.
    let mut base_args = exec::args([
        "-q",
        "--setopt=exit_on_lock=True",
        "--setopt=skip_if_unavailable=False",
        "--setopt=*.skip_if_unavailable=False",
    ]);
    base_args.extend(cache_args(tools, refresh));
    RpmFlow {
        tool: &tools.dnf,
        base_args,
        // -v adds the advisory date column on dnf 4.x.
        updateinfo_args: exec::args(["-v", "updateinfo", "list", "--updates"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/system/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn an_unprivileged_agent_keeps_dnfs_cache_in_its_cache_directory() {
        let tools = |as_root: bool, dir: Option<&str>| PatchTools {
            as_root,
            rpm_cache_dir: dir.map(Into::into),
            ..PatchTools::default()
        };
        let user = tools(false, Some("/var/cache/pikett-agent/dnf"));
        assert_eq!(cache_args(&user, true), [OsString::from("--setopt=cachedir=/var/cache/pikett-agent/dnf")]);
        assert_eq!(cache_args(&user, false), [OsString::from("-C")]);
        assert!(
            cache_args(&tools(true, Some("/var/cache/pikett-agent/dnf")), true).is_empty(),
            "root uses the system cache"
        );
        assert!(cache_args(&tools(false, None), true).is_empty());
    }

    #[test]
    fn recorded_real_dnf_4_14_outputs_parse() {
        let rows = parse_check_update(&read("dnf-check-update-dnf4.14-localrepo.txt"));
        assert_eq!(
            rows,
            [Available {
                name: "pikett-demo".into(),
                arch: "noarch".into(),
                evr: "1.1-1".into(),
                repo: "local".into()
            }]
        );
        let adv = parse_updateinfo_list(&read("dnf-updateinfo-list-verbose-dnf4.14-localrepo.txt"));
        assert_eq!(adv.len(), 1, "{adv:?}");
        assert_eq!(
            (adv[0].id.as_str(), adv[0].kind, adv[0].severity),
            ("PKTSA-2026:0001", UpdateType::Security, Some(Severity::Critical))
        );
        assert_eq!(adv[0].updated.as_deref(), Some("2026-11-21 00:00:00"));
        assert!(matches!(
            classify_failure(&read("dnf-metadata-unreachable-dnf4.14.txt")),
            Some(Failure::MetadataUnreachable(line)) if line.contains("'gone'")
        ));
    }

    #[test]
    fn nevra_with_and_without_epoch() {
        assert_eq!(
            split_nevra("openssl-libs-1:1.1.1k-12.el8_9.x86_64"),
            Some(("openssl-libs", "x86_64", "1:1.1.1k-12.el8_9"))
        );
        assert_eq!(
            split_nevra("kernel-3.10.0-1160.119.1.el7.x86_64"),
            Some(("kernel", "x86_64", "3.10.0-1160.119.1.el7"))
        );
        assert_eq!(split_nevra("tzdata-2024a-1.el9.noarch"), Some(("tzdata", "noarch", "2024a-1.el9")));
        assert_eq!(split_nevra("updateinfo"), None);
        assert_eq!(split_nevra("foo-1.0.x86_64"), None);
    }

    #[test]
    fn check_update_el8_with_wrapped_rows_and_obsoletes() {
        let rows = parse_check_update(&read("dnf-check-update-el8.txt"));
        assert_eq!(rows.len(), 9, "{rows:#?}");
        assert_eq!(
            rows[0],
            Available {
                name: "bind-export-libs".into(),
                arch: "x86_64".into(),
                evr: "32:9.11.36-11.el8_9.1".into(),
                repo: "baseos".into()
            }
        );
        let wrapped = rows.iter().find(|r| r.name == "python3-dnf-plugin-post-transaction-actions").unwrap();
        assert_eq!(wrapped.evr, "4.0.21-25.el8");
        assert_eq!(wrapped.repo, "baseos");
        // the obsoleting section is not read twice
        assert_eq!(rows.iter().filter(|r| r.name == "grub2-tools").count(), 1);
    }

    #[test]
    fn updateinfo_el8_types_and_severities() {
        let advs = parse_updateinfo_list(&read("dnf-updateinfo-list-el8.txt"));
        assert_eq!(advs.len(), 9);
        let openssl = advs.iter().find(|a| a.name == "openssl-libs").unwrap();
        assert_eq!(openssl.id, "RHSA-2024:0600");
        assert_eq!(openssl.kind, UpdateType::Security);
        assert_eq!(openssl.severity, Some(Severity::Moderate));
        assert_eq!(openssl.evr, "1:1.1.1k-12.el8_9");
        let kernel = advs.iter().find(|a| a.name == "kernel").unwrap();
        assert_eq!(kernel.severity, Some(Severity::Important));
        let tz = advs.iter().find(|a| a.name == "tzdata").unwrap();
        assert_eq!((tz.kind, tz.severity), (UpdateType::Bugfix, None));
        assert!(advs.iter().any(|a| a.kind == UpdateType::Enhancement));
        assert!(advs.iter().all(|a| a.updated.is_none()));
    }

    #[test]
    fn updateinfo_el9_verbose_has_dates_and_critical() {
        let advs = parse_updateinfo_list(&read("dnf-updateinfo-list-el9-verbose.txt"));
        assert_eq!(advs.len(), 6, "{advs:#?}");
        let critical = advs.iter().find(|a| a.severity == Some(Severity::Critical)).unwrap();
        assert_eq!(critical.id, "RLSA-2024:1530");
        assert_eq!(critical.name, "expat");
        assert_eq!(critical.updated.as_deref(), Some("2024-03-28 15:02:11"));
    }

    #[test]
    fn merge_picks_the_most_severe_advisory_per_package() {
        let available = parse_check_update(&read("dnf-check-update-el9.txt"));
        let advs = parse_updateinfo_list(&read("dnf-updateinfo-list-el9-verbose.txt"));
        let installed = parse_rpm_qa(&read("rpm-qa-el9.txt"));
        let pending = merge(&available, &advs, &installed);
        assert_eq!(pending.len(), available.len());
        let expat = pending.iter().find(|p| p.package == "expat").unwrap();
        assert_eq!(expat.kind, UpdateType::Security);
        assert_eq!(expat.severity, Some(Severity::Critical));
        assert_eq!(expat.current_version.as_deref(), Some("2.5.0-1.el9"));
        assert_eq!(expat.new_version, "2.5.0-1.el9_3.1");
        let no_adv = pending.iter().find(|p| p.package == "google-chrome-stable").unwrap();
        assert_eq!((no_adv.kind, no_adv.advisory.as_deref()), (UpdateType::Unknown, None));
        let curl = pending.iter().find(|p| p.package == "curl").unwrap();
        assert_eq!(curl.severity, Some(Severity::Moderate));
    }

    #[test]
    fn rpm_qa_parsing() {
        let m = parse_rpm_qa("bash.x86_64 5.1.8-6.el9_1\nopenssl-libs.x86_64 1:3.0.7-24.el9\n");
        assert_eq!(m.get("openssl-libs.x86_64").map(String::as_str), Some("1:3.0.7-24.el9"));
    }
}

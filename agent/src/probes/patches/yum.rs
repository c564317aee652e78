//! Pending updates from yum (CentOS/RHEL 7): the dnf flow with yum's command lines.
//!
//! yum prints `check-update` and `updateinfo list` in the same formats as dnf
//! (the parsers live in [`super::dnf`]); CentOS 7's own repositories carry no
//! advisories, so there most updates are of unknown type.

use super::dnf::RpmFlow;
use super::{PatchTools, exec};

/// The yum command lines: quiet, exit at once when another yum holds the
/// lock (instead of waiting forever), and with `refresh = false` only the cache.
pub(super) fn flow(tools: &PatchTools, refresh: bool) -> RpmFlow<'_> {
    // As for dnf: an unreachable repository is an error, never silently skipped.
    let mut base_args = exec::args([
        "-q",
        "--setopt=exit_on_lock=True",
        "--setopt=skip_if_unavailable=0",
        "--setopt=*.skip_if_unavailable=0",
    ]);
    base_args.extend(super::dnf::cache_args(tools, refresh));
    RpmFlow { tool: &tools.yum, base_args, updateinfo_args: exec::args(["updateinfo", "list", "updates"]) }
}

#[cfg(test)]
mod tests {
    use super::super::dnf::{parse_check_update, parse_updateinfo_list};
    use super::super::{Failure, Severity, UpdateType, classify_failure};

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/system/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn centos7_check_update_with_plugin_chatter() {
        let rows = parse_check_update(&read("yum-check-update-centos7.txt"));
        assert_eq!(rows.len(), 6, "{rows:#?}");
        assert!(
            rows.iter().any(|r| r.name == "bind-libs" && r.evr == "32:9.11.4-26.P2.el7_9.16" && r.repo == "updates")
        );
        assert!(rows.iter().any(|r| r.name == "NetworkManager-libnm"));
    }

    #[test]
    fn centos7_updateinfo_list() {
        let advs = parse_updateinfo_list(&read("yum-updateinfo-list-centos7.txt"));
        assert_eq!(advs.len(), 4, "{advs:#?}");
        let k = advs.iter().find(|a| a.name == "kernel").unwrap();
        assert_eq!((k.kind, k.severity), (UpdateType::Security, Some(Severity::Important)));
        assert_eq!(k.evr, "3.10.0-1160.119.1.el7");
        assert!(advs.iter().any(|a| a.kind == UpdateType::Bugfix));
    }

    #[test]
    fn yum_lock_and_metadata_failures_are_recognised() {
        match classify_failure(&read("yum-lock-held-centos7.txt")) {
            Some(Failure::LockHeld(line)) => {
                assert!(line.contains("another copy is running"), "{line}")
            }
            other => panic!("{other:?}"),
        }
        match classify_failure(&read("yum-metadata-unreachable-centos7.txt")) {
            Some(Failure::MetadataUnreachable(line)) => {
                assert!(line.contains("Cannot find a valid baseurl"), "{line}")
            }
            other => panic!("{other:?}"),
        }
    }
}

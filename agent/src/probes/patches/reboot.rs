//! Whether the host needs a reboot to run its updated kernel and libraries.
//!
//! EL: `needs-restarting -r` exits 1 when a reboot is needed, 0 when not.
//! Debian/Ubuntu: packages create `/var/run/reboot-required`.

use std::path::Path;
use std::time::Duration;

use super::exec;

/// `Some(true)` reboot needed, `Some(false)` not, `None` when the tool is
/// missing or failed (yum-utils/dnf-utils not installed).
pub async fn needs_restarting(program: &Path, timeout: Duration) -> Option<bool> {
    match exec::run(&program.to_path_buf(), &exec::args(["-r"]), timeout).await {
        Ok(out) => interpret_needs_restarting(out.code),
        Err(e) => {
            tracing::debug!(error = %e, "needs-restarting not available; reboot state unknown");
            None
        }
    }
}

/// Maps `needs-restarting -r`'s exit code.
pub fn interpret_needs_restarting(code: Option<i32>) -> Option<bool> {
    match code {
        Some(0) => Some(false),
        Some(1) => Some(true),
        _ => None,
    }
}

/// Debian's flag file: present means a reboot is required.
pub fn flag_file(path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(interpret_needs_restarting(Some(0)), Some(false));
        assert_eq!(interpret_needs_restarting(Some(1)), Some(true));
        assert_eq!(interpret_needs_restarting(Some(2)), None);
        assert_eq!(interpret_needs_restarting(None), None);
    }

    #[tokio::test]
    async fn runs_a_needs_restarting_program() {
        let dir = std::env::temp_dir().join(format!("pikett-reboot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("needs-restarting");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = -r ] || exit 9\necho 'Reboot is required to fully utilize these updates.'\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(needs_restarting(&script, Duration::from_secs(5)).await, Some(true));
        assert_eq!(needs_restarting(&dir.join("missing"), Duration::from_secs(5)).await, None);
        assert!(!flag_file(&dir.join("reboot-required")));
        std::fs::write(dir.join("reboot-required"), "*** System restart required ***\n").unwrap();
        assert!(flag_file(&dir.join("reboot-required")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

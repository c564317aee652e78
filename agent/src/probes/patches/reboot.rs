//! Whether the host needs a reboot to run its updated kernel and libraries.
//!
//! EL: `needs-restarting -r` exits 1 when a reboot is needed, 0 when not (the agent's
//! RPM recommends `/usr/bin/needs-restarting`; without it the state is unknown, and
//! the `patches` check says so).
//! Debian/Ubuntu: packages create `/var/run/reboot-required`.

use std::path::Path;
use std::time::Duration;

use super::exec;

/// Whether a reboot is needed (`needs-restarting -r`), or why that cannot be told:
/// the tool is missing (it comes with dnf-utils, yum-utils on EL7) or failed.
pub async fn needs_restarting(program: &Path, timeout: Duration) -> Result<bool, String> {
    match exec::run(program, &exec::args(["-r"]), timeout).await {
        Ok(out) => interpret_needs_restarting(out.code).ok_or_else(|| {
            format!(
                "needs-restarting -r exited with {}: {}",
                out.code.map_or_else(|| "a signal".to_string(), |c| c.to_string()),
                exec::last_line(&out.combined())
            )
        }),
        Err(exec::ExecError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err("needs-restarting is not installed (it comes with dnf-utils, yum-utils on EL7)".to_string())
        }
        Err(e) => Err(e.to_string()),
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
        assert_eq!(needs_restarting(&script, Duration::from_secs(5)).await, Ok(true));
        let missing = needs_restarting(&dir.join("missing"), Duration::from_secs(5)).await.unwrap_err();
        assert!(missing.contains("not installed") && missing.contains("dnf-utils"), "{missing}");
        assert!(!flag_file(&dir.join("reboot-required")));
        std::fs::write(dir.join("reboot-required"), "*** System restart required ***\n").unwrap();
        assert!(flag_file(&dir.join("reboot-required")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

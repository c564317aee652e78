//! Password files (`[redfish] password_file`, `[[backups]] password_file`): read by the
//! agent at start, refused when everyone may read them, the trailing newline stripped.
//! Errors say how to make a file only the service may read (root owns it, the service's
//! group reads it: `chgrp pikett-agent F && chmod 0640 F`).

use std::path::{Path, PathBuf};

/// Why a password file cannot be used. The messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password_file {path}: {source}{hint}")]
    Unreadable { path: PathBuf, source: std::io::Error, hint: String },
    #[error("password_file {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "password_file {path} is readable by everyone (mode {mode:o}); as root run `chgrp {group} {word} && chmod 0640 {word}` (the service's group may read it, nobody else)"
    )]
    WorldReadable { path: PathBuf, mode: u32, group: String, word: String },
}

/// Reads the password file: refuses world-readable files and empty ones, strips the
/// trailing newline.
pub fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let unreadable = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
            let (group, path) = (service_group(), shell_word(path));
            format!("; as root run `chgrp {group} {path} && chmod 0640 {path}` so that the service's group may read it")
        } else {
            String::new()
        };
        PasswordFileError::Unreadable { path: path.into(), source, hint }
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(PasswordFileError::WorldReadable {
                path: path.into(),
                mode,
                group: service_group(),
                word: shell_word(path),
            });
        }
    }
    let raw = std::fs::read_to_string(path).map_err(unreadable)?;
    let pw = raw.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(PasswordFileError::Empty { path: path.into() });
    }
    Ok(pw)
}

/// The group the password file should belong to: the agent's own when it runs as a
/// service user, the packaged service's group when run as root (`check-config`, `test`).
pub fn service_group() -> String {
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    if gid == 0 {
        return "pikett-agent".to_string();
    }
    // SAFETY: a zeroed `group` is a valid value of this plain C struct (null pointers).
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrgid_r writes only into `group` and `buf`, which we own and size, and
    // sets `found` to `&mut group` or null; the name is read while both are alive.
    unsafe {
        if libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut found) == 0
            && !found.is_null()
            && !group.gr_name.is_null()
        {
            return std::ffi::CStr::from_ptr(group.gr_name).to_string_lossy().into_owned();
        }
    }
    gid.to_string()
}

/// A path as one POSIX shell word (single-quoted unless plain), for the commands in
/// error hints.
pub fn shell_word(path: &Path) -> String {
    let p = path.display().to_string();
    if !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        p
    } else {
        format!("'{}'", p.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_rules_of_a_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password_file(&p).unwrap_err();
        assert!(matches!(e, PasswordFileError::WorldReadable { mode: 0o644, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("readable by everyone (mode 644)") && !msg.contains("s3cret"), "{msg}");
        assert!(msg.contains(&format!("chgrp {} ", service_group())), "{msg}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\r\n").unwrap();
        assert!(matches!(read_password_file(&p), Err(PasswordFileError::Empty { .. })));
        let e = read_password_file(&dir.path().join("none")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read password_file"), "{e}");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word(Path::new("/etc/pikett/r.pass")), "/etc/pikett/r.pass");
        assert_eq!(shell_word(Path::new("/etc/it's here")), "'/etc/it'\\''s here'");
        assert_eq!(shell_word(Path::new("")), "''");
    }
}

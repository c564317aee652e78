//! The collector watches itself: free space on its data directory, as checks of its own
//! pseudo-host (`pikett-collector`), so staff learn about a filling disk before ingest
//! stops (a full disk stops the collector, see `storage_failure`).

use std::path::Path;

use jiff::Timestamp;
use pikett_core::faults::{CheckInput, CheckState, Transition};

use crate::services::faults::FaultService;

/// The collector's own host in faults and pages.
pub const SELF_HOST: &str = "pikett-collector";
/// Free space on the data directory's file system.
pub const DISK_CHECK: &str = "collector/disk";

/// (free bytes, total bytes) of the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs with a valid NUL-terminated path and a pointer to a zeroed local struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// The state of `collector/disk` for `free` of `total` bytes: pure.
pub fn disk_state(free: u64, total: u64, warn_percent: u8, crit_percent: u8) -> (CheckState, String) {
    let pct = if total == 0 { 100.0 } else { free as f64 * 100.0 / total as f64 };
    let text = format!("{:.1}% free ({} MiB of {} MiB) on the data directory", pct, free >> 20, total >> 20);
    let state = if pct < f64::from(crit_percent) {
        CheckState::Critical
    } else if pct < f64::from(warn_percent) {
        CheckState::Warning
    } else {
        CheckState::Ok
    };
    (state, text)
}

/// One look at the data directory; the result goes to the fault engine.
pub fn check_disk(faults: &FaultService, data_dir: &Path, warn: u8, crit: u8, now: Timestamp) -> Vec<Transition> {
    let (state, summary) = match free_space(data_dir) {
        Ok((free, total)) => disk_state(free, total, warn, crit),
        Err(e) => (CheckState::Unknown, format!("cannot read free space of {}: {e}", data_dir.display())),
    };
    let input = CheckInput {
        host: SELF_HOST.to_string(),
        customer: String::new(),
        check: DISK_CHECK.to_string(),
        state,
        summary,
        time: now,
    };
    faults.with_engine(|e| e.check_result(input, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_thresholds() {
        assert_eq!(disk_state(50, 100, 10, 3).0, CheckState::Ok);
        assert_eq!(disk_state(9, 100, 10, 3).0, CheckState::Warning);
        assert_eq!(disk_state(2, 100, 10, 3).0, CheckState::Critical);
        assert!(disk_state(9 << 20, 100 << 20, 10, 3).1.starts_with("9.0% free (9 MiB of 100 MiB)"));
        let (free, total) = free_space(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
    }
}

//! What the collector does when its storage fails: it stops, and restarts from the disk.
//!
//! A write or flush that failed leaves state in memory (the fault engine, the host registry)
//! ahead of what is durable. Running on would page, answer and acknowledge from state that a
//! restart cannot recover, and a batch half-inserted before the error would later be taken
//! for a duplicate and never evaluated. So the collector exits with status
//! [`EXIT_STORAGE_FAILED`]; systemd restarts it (`Restart=on-failure`), and it resumes from
//! what is on disk: the agents resend every batch that was not acknowledged, the engine
//! evaluates them again, and the pager catches up with the faults (`Pager::catch_up`).
//!
//! A full disk therefore shows as a collector that acknowledges nothing and restarts until
//! space returns; the agents keep every batch in their spools meanwhile.

/// `EX_TEMPFAIL` from sysexits.h: a temporary failure, worth a restart.
pub const EXIT_STORAGE_FAILED: i32 = 75;

/// Logs `what` failed with `error` and ends the process.
pub fn stop(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(
        error = %error,
        "{what}: storage failed; stopping so that the collector restarts from what is stored \
         (check free space and permissions of data_dir, or the database with [store] kind = \"postgres\")"
    );
    eprintln!(
        "pikett-collector: {what}: storage failed: {error}; stopping (exit {EXIT_STORAGE_FAILED}); \
         check free space and permissions of data_dir, or the database"
    );
    std::process::exit(EXIT_STORAGE_FAILED)
}

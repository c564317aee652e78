//! The pikett gRPC contract: package `pikett.v1`, generated from `proto/pikett/v1/`.
//!
//! This is an API boundary between separately deployed programs (agents on
//! customer hosts, the central collector, staff CLIs of any age). Evolve it
//! only compatibly: add fields with new numbers, never renumber or rename,
//! `reserved` what is removed, and bump [`PROTOCOL_VERSION`] when the meaning
//! of a stream changes.

pub mod v1 {
    tonic::include_proto!("pikett.v1");
}

/// The collector's side of the ingest stream: `v1`'s `AgentMessage` and `Ingest` server,
/// with a batch read into a [`received::ReceivedBatch`].
pub mod rx {
    include!(concat!(env!("OUT_DIR"), "/rx/pikett.v1.rs"));
}

pub mod received;

/// Sent in `Hello.protocol_version`; the collector rejects versions it does not know.
/// Version 2: `CheckResult.status` carries the state and its zero value is refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version a collector still accepts: agents are upgraded after collectors.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// The file descriptor set of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pikett_descriptor");

impl v1::CheckStatus {
    /// Version 1's value for this state (`UNSPECIFIED` has none and maps to UNKNOWN).
    pub fn as_v1(self) -> v1::CheckState {
        match self {
            v1::CheckStatus::Ok => v1::CheckState::Ok,
            v1::CheckStatus::Warning => v1::CheckState::Warning,
            v1::CheckStatus::Critical => v1::CheckState::Critical,
            v1::CheckStatus::Unknown | v1::CheckStatus::Unspecified => v1::CheckState::Unknown,
        }
    }
}

impl v1::CheckResult {
    /// A result as protocol version 2 sends it, with version 1's `state` set as well so a
    /// reader of either version reads the same state.
    pub fn new(name: String, status: v1::CheckStatus, summary: String, time_unix_ms: i64) -> Self {
        v1::CheckResult { name, state: status.as_v1() as i32, summary, time_unix_ms, status: status as i32 }
    }

    /// The state: `status` when set, else version 1's `state`. A number neither version
    /// knows counts as UNKNOWN.
    pub fn effective_status(&self) -> v1::CheckStatus {
        if self.status != v1::CheckStatus::Unspecified as i32 {
            return v1::CheckStatus::try_from(self.status).unwrap_or(v1::CheckStatus::Unknown);
        }
        match v1::CheckState::try_from(self.state) {
            Ok(v1::CheckState::Ok) => v1::CheckStatus::Ok,
            Ok(v1::CheckState::Warning) => v1::CheckStatus::Warning,
            Ok(v1::CheckState::Critical) => v1::CheckStatus::Critical,
            Ok(v1::CheckState::Unknown) | Err(_) => v1::CheckStatus::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{CheckResult, CheckState, CheckStatus};

    #[test]
    fn a_result_reads_the_same_under_both_versions() {
        for status in [CheckStatus::Ok, CheckStatus::Warning, CheckStatus::Critical, CheckStatus::Unknown] {
            let r = CheckResult::new("c".into(), status, String::new(), 0);
            assert_eq!(r.effective_status(), status);
            let v1_only = CheckResult { status: 0, ..r };
            assert_eq!(v1_only.effective_status(), status, "version 1 reader of {status:?}");
        }
    }

    #[test]
    fn version_one_zero_is_ok_and_unknown_numbers_are_unknown() {
        let v1 = CheckResult { state: CheckState::Ok as i32, ..Default::default() };
        assert_eq!(v1.effective_status(), CheckStatus::Ok);
        assert_eq!(CheckResult { status: 99, ..Default::default() }.effective_status(), CheckStatus::Unknown);
        assert_eq!(CheckResult { state: 99, ..Default::default() }.effective_status(), CheckStatus::Unknown);
    }
}

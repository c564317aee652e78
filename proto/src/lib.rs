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

/// Sent in `Hello.protocol_version`; the collector rejects versions it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

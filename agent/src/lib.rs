//! pikett-agent: polls probes on the managed host, spools every batch of
//! results durably, and streams the batches to the collector.
//!
//! Read `runtime.rs` first: it wires probes → batcher → spool → uplink.

pub mod config;
pub mod enroll;
pub mod errors;
pub mod observation;
pub mod probes;
pub mod reload;
pub mod runtime;
pub mod spool;
pub mod uplink;
pub mod wire;

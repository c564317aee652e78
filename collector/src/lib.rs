//! pikett-collector: receives agents' streams, stores them durably, and
//! serves the staff CLI. Read `server.rs` first.

pub mod admin;
pub mod cli;
pub mod config;
pub mod hosts;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod patchday;
pub mod server;
pub mod sla;
pub mod store;

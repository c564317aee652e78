//! pikett-collector: receives agents' streams, stores them durably, and
//! serves the staff CLI. Read `server.rs` first.

pub mod admin;
pub mod cli;
pub mod cli_incidents;
pub mod cli_reports;
pub mod config;
pub mod escalation;
pub mod exposition;
pub mod fault_service;
pub mod faults;
pub mod hosts;
pub mod http;
pub mod incidents;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod oncall;
pub mod pager;
pub mod patchday;
pub mod patches;
pub mod reports;
pub mod server;
pub mod sla;
pub mod store;

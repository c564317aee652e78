//! pikett-collector: receives agents' streams, stores them durably, raises faults and
//! pages people, and serves the staff CLI. Read `server.rs` first: it wires the layers.
//!
//! The layers, each a folder, each importing only from the ones before it
//! (`tests/architecture.rs` checks this):
//!
//! 1. `pikett_core` (its own crate) — the decisions, pure.
//! 2. [`store`] — the storage seam (traits) and the sled engine behind it.
//! 3. [`notify`] — the notification channels and the durable outbox.
//! 4. [`config`] — the collector's file, parsed and validated.
//! 5. [`services`] — state and reactions: ingest log, writer, fault service, pager,
//!    incidents, patches, SLA causes, latest samples, own metrics.
//! 6. [`api`] — the network interfaces: gRPC services and HTTP.
//! 7. [`server`], `main.rs`, [`offline_sla`] — the wiring and the command line.

pub mod api;
pub mod config;
pub mod notify;
pub mod offline_sla;
pub mod remote_write;
pub mod server;
pub mod services;
pub mod store;

//! The network interfaces: the gRPC services (agents' ingest stream, the staff CLI's admin,
//! reports and incidents calls) and HTTP (`/metrics`, `/healthz`, `/readyz`, the customer
//! status pages under `/status/`).
//!
//! Architecture invariant: an interface translates between the wire (`pikett_proto`, HTTP)
//! and the services, and checks access ([`access`]); it keeps no state of its own.

pub mod access;
pub mod admin;
pub mod enroll;
pub mod http;
pub mod incidents;
pub mod ingest;
pub mod leader_gate;
pub mod listener;
pub mod read_ahead;
pub mod reports;
pub mod status_page;

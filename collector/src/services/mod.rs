//! The services: state that lives across requests, its persistence (through [`crate::store`]
//! only), and the reactions to fault transitions.
//!
//! Architecture invariant: a service never speaks a network protocol to its users (that is
//! `api/`) and never names a storage engine's types (that is `store/`). Decisions are made by
//! `pikett_core`; a service feeds it data and the time, persists what changed, and acts.

pub mod audit;
pub mod batches;
pub mod causes;
pub mod evaluator;
pub mod faults;
pub mod identity;
pub mod incidents;
pub mod latest;
pub mod leadership;
pub mod metrics;
pub mod pager;
pub mod patches;
pub mod pki;
pub mod reload;
pub mod retention;
pub mod self_check;
pub mod sla_input;
pub mod staff;
pub mod status_links;
pub mod storage_failure;
pub mod writer;

//! pikett's decision logic, as plain functions over plain data.
//!
//! Architecture invariant: nothing here does I/O or reads the clock. Every function that
//! depends on time takes `now`; state goes in and decisions (fault transitions, escalation
//! steps, SLA rows, incident changes) come out. The collector's services persist the state
//! and act on the decisions; the staff CLI renders reports with [`sla::render`].

pub mod calendar;
pub mod enrollment;
pub mod escalation;
pub mod faults;
pub mod hosts;
pub mod incidents;
pub mod oncall;
pub mod patchday;
pub mod reconcile;
pub mod sla;

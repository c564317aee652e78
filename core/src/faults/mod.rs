//! The fault engine (`[faults]` in docs/configuration.md): check results, samples, host liveness and staff actions in,
//! fault transitions out — pure, no I/O, never reads the clock.
//!
//! Every call takes `now` and returns the [`Transition`]s it caused. The caller (storage, gRPC,
//! notification) persists what [`Engine::take_dirty`] reports and pages only on
//! `Transition::page == true`.
//!
//! # Semantics (where the documented behaviour leaves room, these are the choices)
//!
//! - **Opening**: a fault opens after `for` consecutive non-OK results (default 2). Its severity
//!   is the worst state seen while it is open, including the results that opened it: WARNING →
//!   warning, CRITICAL → critical, UNKNOWN → `unknown_severity`. Severity never drops while open.
//!   At most one non-resolved fault exists per (host, check).
//! - **Times**: result-driven logic (streaks, flapping windows, rule `for`) runs on the result's
//!   observation time, clamped to be no later than `now` and never earlier than the previous
//!   change of the same check, so a spool replayed after a collector outage is judged as it
//!   happened. Suppression (whether to page) is judged at `now`.
//! - **Resolving**: an OK result resolves the open fault unless the check is flapping.
//!   A manual resolve by staff resolves at once; if the check's *next* result is still non-OK the
//!   **same** fault is reopened (`Reopened`, keeping its timeline), otherwise it stays resolved.
//!   A manually resolved `host/reachable` fault is reopened by the next [`Engine::tick`] that
//!   still finds the host silent; [`Engine::forget_host`] is the way to drop a retired host.
//! - **Flapping**: a state change is OK ↔ non-OK. More than `flap_changes` changes within
//!   `flap_window` mark the check flapping. A flapping check with no open fault gets one (opened
//!   and paged once); while flapping, OK results do not resolve it and flaps never re-page. The
//!   check stops flapping once a whole `flap_window` has passed without a change (judged on its
//!   next result); the fault then resolves if that result is OK.
//! - **Host down**: [`Engine::tick`] opens a critical `host/reachable` fault for a host silent
//!   for longer than its timeout (the caller passes the timeout per host), and
//!   [`Engine::host_seen`] resolves it. A host whose (transitive) `depends_on` parent has been
//!   silent for more than a third of its timeout waits before its own `host/reachable` opens, so
//!   a gateway outage does not page every host behind it first.
//! - **Suppression**: a fault is suppressed while its host is down (another check than
//!   `host/reachable`), a host it depends on is down, a maintenance window covers its host, or a
//!   silence matches it. Suppression never stops recording; it sets `page = false` and is noted
//!   on the timeline (`Suppressed` / `SuppressionEnded` transitions). A fault that opened while
//!   suppressed and is still open and unacknowledged when suppression ends is paged then.
//! - **Pages**: `page` is true for `Opened`, `Reopened`, `SeverityRaised` unless suppressed;
//!   `FlappingStarted` only if the fault was not paged before; `SuppressionEnded` only if the
//!   fault was never paged and is open; `Resolved` (the all-clear) only if the fault had been
//!   paged and is not suppressed now; `Acknowledged`, `FlappingStopped` and `Suppressed` never.
//!   A severity rise on an acknowledged fault returns it to `open` (the ack was for the milder
//!   problem).
//! - **Persistence**: [`EngineState`] is the whole state (serde); [`Engine::take_dirty`] lists
//!   the records changed since the last call (`Some` = write, `None` = delete) and
//!   [`EngineState::apply`] applies them, so a store written that way restores
//!   ([`Engine::restore`]) to an engine that continues exactly as the one that never stopped.
//!   Checks that are OK with nothing pending keep no record at all.
//! - **Rules**: see [`rules`]. A rule's synthetic check is `rule/<name>` followed by the sample's
//!   labels in Prometheus form (`rule/hot{sensor="CPU1 Temp"}`), one fault per label set; it goes
//!   non-OK once its condition held for the rule's `for`, and opens its fault on the first
//!   non-OK result (the rule's `for` is its debounce, the `[faults] for` count is not applied).

mod config;
mod engine;
pub mod rules;
mod suppress;
mod types;

#[cfg(test)]
mod engine_tests;

pub use config::{EngineConfig, FaultsConfig, HostConfig, HostDeps};
pub use engine::{ActionError, Dirty, Engine, EngineState, HostInfo, NextIds, RestoreError, Track, TrackKey};
pub use rules::{CompareOp, LabelMatcher, MatchOp, Rule, RuleKey};
pub use suppress::host_reachable;
pub use types::{
    CheckInput, CheckState, ConfigError, EventKind, FAULT_STORM, Fault, FaultFilter, FaultState, HOST_REACHABLE,
    Maintenance, NewMaintenance, NewSilence, SampleInput, Severity, Silence, Suppression, TOO_MANY_CHECKS,
    TimelineEntry, Transition, valid_check_name,
};

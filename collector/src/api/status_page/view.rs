//! What one customer's status page shows, as plain data ([`StatusPageView`]), and the pure
//! function that picks it out of the collector's state ([`build`]).
//!
//! The builder is handed everything (every host, fault, incident and maintenance window) and
//! keeps only what belongs to the customer: a host is the customer's when the host registry
//! says so; faults, maintenance windows and availability follow the hosts; an incident must be
//! the customer's and shows only the customer's hosts.
//!
//! Choices: a host is down when its agent is silent past the host timeout or its
//! `host/reachable` fault is critical; a check (the contract's SLA-relevant checks) is down
//! with an unresolved critical fault, degraded with an unresolved warning; a host is as bad
//! as its worst. Fault summaries and staff names are not shown (they are written for staff);
//! status update texts and maintenance reasons are (they are written for the customer).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use pikett_core::faults::{self, Fault, HOST_REACHABLE, Severity};
use pikett_core::hosts::{HostRecord, HostStatus, host_status};
use pikett_core::incidents::Incident;
use pikett_core::sla::{self, Cause, Contract, Ledger, Month};

/// Up, degraded or down; ordered so that `max` is the worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Up,
    Degraded,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckView {
    pub name: String,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub name: String,
    pub health: Health,
    /// The contract's SLA-relevant checks (none without a contract or `checks`).
    pub checks: Vec<CheckView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpdateView {
    pub at: Timestamp,
    pub text: String,
    pub eta: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IncidentView {
    pub id: u64,
    /// The customer's hosts affected.
    pub hosts: Vec<String>,
    /// `open` or `emergency`.
    pub state: String,
    pub opened_at: Timestamp,
    /// The newest ETA given in a status update.
    pub eta: Option<Timestamp>,
    /// Newest first.
    pub updates: Vec<UpdateView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AvailabilityRow {
    pub host: String,
    pub window: String,
    /// Fractions (0.999 = 99.9 %).
    pub availability: f64,
    pub target: f64,
    pub met: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    /// The customer has no SLA contract in the collector's configuration.
    NoContract,
    /// This month so far (`YYYY-MM`, contract time zone).
    Month { month: String, rows: Vec<AvailabilityRow> },
    /// The computation failed (logged at the collector).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceView {
    pub host: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: String,
    pub in_progress: bool,
}

/// Everything one customer's status page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPageView {
    pub customer: String,
    pub generated_at: Timestamp,
    /// Times are shown in this zone: the contract's, else UTC.
    pub tz: TimeZone,
    pub hosts: Vec<HostView>,
    pub incidents: Vec<IncidentView>,
    pub availability: Availability,
    /// Current and future windows, soonest first.
    pub maintenance: Vec<MaintenanceView>,
}

impl StatusPageView {
    /// The worst host's health (up with no hosts).
    pub fn overall(&self) -> Health {
        self.hosts.iter().map(|h| h.health).max().unwrap_or(Health::Up)
    }
}

/// The collector's state the page is built from: everything, of every customer.
pub struct Inputs<'a> {
    pub customer: &'a str,
    pub now: Timestamp,
    /// The host registry.
    pub hosts: &'a [HostRecord],
    /// `host_timeout` from the configuration.
    pub host_timeout: Option<Duration>,
    /// Faults, resolved ones included (for this month's availability).
    pub faults: &'a [Fault],
    /// Incidents not closed.
    pub incidents: &'a [Incident],
    pub maintenance: &'a [faults::Maintenance],
    /// The customer's contract, if it has one.
    pub contract: Option<&'a Contract>,
    /// Staff classification of outages, by fault id.
    pub causes: &'a HashMap<u64, Cause>,
}

fn fault_health(f: &Fault) -> Health {
    match f.severity {
        Severity::Critical => Health::Down,
        Severity::Warning => Health::Degraded,
    }
}

/// Picks the customer's part of `input`. The error, if the availability computation
/// failed, comes back beside the view (which then says the figures are unavailable).
pub fn build(input: &Inputs<'_>) -> (StatusPageView, Option<sla::SlaError>) {
    let customer = input.customer;
    // Every host the registry gives the customer (removed ones too: their history counts
    // this month); the page lists only those still monitored.
    let owned: BTreeSet<&str> =
        input.hosts.iter().filter(|h| h.customer == customer).map(|h| h.host_id.as_str()).collect();
    let faults: Vec<&Fault> = input.faults.iter().filter(|f| owned.contains(f.host.as_str())).collect();
    let checks: &[String] = input.contract.map_or(&[], |c| &c.checks);
    let now_ms = input.now.as_millisecond();

    let mut hosts = input
        .hosts
        .iter()
        .filter(|h| h.customer == customer && h.removed_ms == 0)
        .map(|h| {
            let unresolved =
                |check: &str| faults.iter().find(|f| f.host == h.host_id && f.check == check && !f.is_resolved());
            let silent = host_status(h, now_ms, input.host_timeout) == HostStatus::Down;
            let reachable =
                if silent { Health::Down } else { unresolved(HOST_REACHABLE).map_or(Health::Up, |f| fault_health(f)) };
            let checks: Vec<CheckView> = checks
                .iter()
                .filter(|c| c.as_str() != HOST_REACHABLE)
                .map(|c| CheckView { name: c.clone(), health: unresolved(c).map_or(Health::Up, |f| fault_health(f)) })
                .collect();
            let health = checks.iter().map(|c| c.health).fold(reachable, Health::max);
            HostView { name: h.host_id.clone(), health, checks }
        })
        .collect::<Vec<_>>();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));

    let mut incidents: Vec<IncidentView> = input
        .incidents
        .iter()
        .filter(|i| i.customer == customer && !i.is_closed())
        .map(|i| {
            let mut updates: Vec<UpdateView> =
                i.updates.iter().map(|u| UpdateView { at: u.at, text: u.text.clone(), eta: u.eta }).collect();
            updates.sort_by_key(|u| std::cmp::Reverse(u.at));
            IncidentView {
                id: i.id,
                hosts: i.hosts.iter().filter(|h| owned.contains(h.as_str())).cloned().collect(),
                state: i.state.as_str().to_string(),
                opened_at: i.opened_at,
                eta: i.updates.iter().rev().find_map(|u| u.eta),
                updates,
            }
        })
        .collect();
    incidents.sort_by_key(|i| std::cmp::Reverse(i.opened_at));

    let mut maintenance: Vec<MaintenanceView> = input
        .maintenance
        .iter()
        .filter(|m| owned.contains(m.host.as_str()) && m.end > input.now && m.end > m.start)
        .map(|m| MaintenanceView {
            host: m.host.clone(),
            start: m.start,
            end: m.end,
            reason: m.reason.clone(),
            in_progress: m.start <= input.now,
        })
        .collect();
    maintenance.sort_by(|a, b| (a.start, &a.host).cmp(&(b.start, &b.host)));

    let (availability, error) = match input.contract {
        None => (Availability::NoContract, None),
        Some(contract) => match this_month(input, contract, &owned, &faults) {
            Ok(a) => (a, None),
            Err(e) => (Availability::Unavailable, Some(e)),
        },
    };
    let tz = input.contract.map_or(TimeZone::UTC, |c| c.timezone.tz().clone());
    let view = StatusPageView {
        customer: customer.to_string(),
        generated_at: input.now,
        tz,
        hosts,
        incidents,
        availability,
        maintenance,
    };
    (view, error)
}

/// This month's availability so far, per host and service window, as `pikett sla report`
/// computes it.
fn this_month(
    input: &Inputs<'_>,
    contract: &Contract,
    owned: &BTreeSet<&str>,
    faults: &[&Fault],
) -> Result<Availability, sla::SlaError> {
    let local = input.now.to_zoned(contract.timezone.tz().clone());
    let month = Month::new(local.year(), local.month())?;
    let outages = sla::live::derive_outages(faults.iter().copied(), &contract.checks, input.causes, input.now);
    let maintenance: Vec<sla::Maintenance> = input
        .maintenance
        .iter()
        .filter(|m| owned.contains(m.host.as_str()) && m.end > m.start)
        .map(|m| sla::Maintenance { host: m.host.clone(), start: m.start, end: m.end, announced: m.announced_at })
        .collect();
    let mut ledger = Ledger::new(contract, &outages, &maintenance)?;
    for h in input.hosts.iter().filter(|h| h.customer == input.customer && h.removed_ms == 0) {
        ledger.add_host(&h.host_id);
    }
    let rows = ledger
        .month(month)?
        .into_iter()
        // Removed hosts with outages this month still count in `pikett sla report`; the
        // customer's page lists the hosts monitored now.
        .filter(|r| {
            input.hosts.iter().any(|h| h.host_id == r.host && h.customer == input.customer && h.removed_ms == 0)
        })
        .map(|r| AvailabilityRow {
            host: r.host,
            window: r.window,
            availability: r.availability,
            target: r.target,
            met: r.met,
        })
        .collect();
    Ok(Availability::Month { month: month.to_string(), rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pikett_core::faults::{FaultState, Maintenance};
    use pikett_core::incidents::{IncidentState, StatusUpdate};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn host(id: &str, customer: &str, last_seen: &str) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            customer: customer.into(),
            last_seen_ms: t(last_seen).as_millisecond(),
            min_interval_ms: 1000,
            ..Default::default()
        }
    }

    fn fault(id: u64, host: &str, customer: &str, check: &str, severity: Severity, opened: &str) -> Fault {
        Fault {
            id,
            host: host.into(),
            customer: customer.into(),
            check: check.into(),
            severity,
            state: FaultState::Open,
            opened_at: t(opened),
            acked_at: None,
            acked_by: None,
            resolved_at: None,
            resolved_by: None,
            last_summary: format!("SECRET-SUMMARY-{id}"),
            results: 1,
            flapping: false,
            suppressed: None,
            paged: true,
            timeline: Vec::new(),
        }
    }

    fn incident(id: u64, customer: &str, hosts: &[&str], updates: Vec<StatusUpdate>) -> Incident {
        Incident {
            id,
            customer: customer.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            fault_ids: vec![id],
            opened_at: t("2026-03-10T11:00:00Z"),
            last_fault_at: t("2026-03-10T11:00:00Z"),
            state: IncidentState::Open,
            escalated_at: None,
            escalated_by: None,
            closed_at: None,
            closed_by: None,
            updates,
            root_cause: None,
            recommendations: None,
            timeline: Vec::new(),
        }
    }

    fn update(number: u32, text: &str, at: &str, eta: Option<&str>) -> StatusUpdate {
        StatusUpdate { number, text: text.into(), eta: eta.map(t), who: "alice".into(), at: t(at), notified: 0 }
    }

    fn maintenance(id: u64, host: &str, start: &str, end: &str, reason: &str) -> Maintenance {
        Maintenance {
            id,
            host: host.into(),
            start: t(start),
            end: t(end),
            reason: reason.into(),
            announced_at: t("2026-01-01T00:00:00Z"),
            who: "alice".into(),
        }
    }

    fn contract() -> Contract {
        Contract::from_toml(
            "timezone = \"Europe/Berlin\"\nchecks = [\"http/shop\", \"host/reachable\"]\nwindows = [ { name = \"all\", from = \"00:00\", to = \"24:00\", days = \"mon-sun\", target = \"99%\" } ]\n",
            "test",
        )
        .unwrap()
    }

    struct World {
        hosts: Vec<HostRecord>,
        faults: Vec<Fault>,
        incidents: Vec<Incident>,
        maintenance: Vec<Maintenance>,
        contract: Contract,
        causes: HashMap<u64, Cause>,
    }

    fn world() -> World {
        let now_seen = "2026-03-10T11:59:59Z";
        World {
            hosts: vec![
                host("web-1", "acme", now_seen),
                host("web-2", "acme", now_seen),
                host("db-1", "acme", "2026-03-10T10:00:00Z"),
                host("old-1", "acme", now_seen),
                host("globex-web", "globex", now_seen),
            ],
            faults: vec![
                fault(1, "web-1", "acme", "http/shop", Severity::Critical, "2026-03-10T11:00:00Z"),
                fault(2, "web-2", "acme", "http/shop", Severity::Warning, "2026-03-10T11:30:00Z"),
                // Not an SLA check: shown nowhere.
                fault(3, "web-2", "acme", "disk/root", Severity::Critical, "2026-03-10T11:30:00Z"),
                fault(4, "globex-web", "globex", "http/shop", Severity::Critical, "2026-03-10T09:00:00Z"),
            ],
            incidents: vec![
                incident(
                    1,
                    "acme",
                    &["web-1"],
                    vec![
                        update(1, "Looking into it", "2026-03-10T11:10:00Z", Some("2026-03-10T14:00:00Z")),
                        update(2, "Disk replaced", "2026-03-10T11:40:00Z", Some("2026-03-10T13:00:00Z")),
                    ],
                ),
                incident(2, "globex", &["globex-web"], vec![update(1, "GLOBEX-ONLY", "2026-03-10T09:10:00Z", None)]),
            ],
            maintenance: vec![
                maintenance(1, "web-2", "2026-03-20T02:00:00Z", "2026-03-20T03:00:00Z", "kernel update"),
                maintenance(2, "web-1", "2026-03-10T11:30:00Z", "2026-03-10T12:30:00Z", "now"),
                maintenance(3, "web-1", "2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", "past"),
                maintenance(4, "globex-web", "2026-03-20T02:00:00Z", "2026-03-20T03:00:00Z", "GLOBEX-MAINT"),
            ],
            contract: contract(),
            causes: HashMap::new(),
        }
    }

    fn view_of(w: &mut World, customer: &str) -> StatusPageView {
        w.hosts.iter_mut().filter(|h| h.host_id == "old-1").for_each(|h| h.removed_ms = 1);
        let input = Inputs {
            customer,
            now: t("2026-03-10T12:00:00Z"),
            hosts: &w.hosts,
            host_timeout: Some(Duration::from_secs(90)),
            faults: &w.faults,
            incidents: &w.incidents,
            maintenance: &w.maintenance,
            contract: Some(&w.contract),
            causes: &w.causes,
        };
        let (view, error) = build(&input);
        assert!(error.is_none(), "{error:?}");
        view
    }

    #[test]
    fn hosts_map_to_up_degraded_and_down() {
        let view = view_of(&mut world(), "acme");
        let health: Vec<(&str, Health)> = view.hosts.iter().map(|h| (h.name.as_str(), h.health)).collect();
        // db-1 is silent past the host timeout; web-1's SLA check is critical, web-2's a
        // warning (its critical disk/root is not SLA-relevant); old-1 was removed.
        assert_eq!(health, [("db-1", Health::Down), ("web-1", Health::Down), ("web-2", Health::Degraded)],);
        let web2 = &view.hosts[2];
        assert_eq!(web2.checks, vec![CheckView { name: "http/shop".into(), health: Health::Degraded }]);
        assert_eq!(view.hosts[0].checks[0].health, Health::Up);
        assert_eq!(view.overall(), Health::Down);
    }

    #[test]
    fn incidents_show_updates_newest_first_and_the_newest_eta() {
        let view = view_of(&mut world(), "acme");
        assert_eq!(view.incidents.len(), 1);
        let inc = &view.incidents[0];
        assert_eq!(inc.hosts, ["web-1"]);
        assert_eq!(inc.eta, Some(t("2026-03-10T13:00:00Z")));
        let texts: Vec<&str> = inc.updates.iter().map(|u| u.text.as_str()).collect();
        assert_eq!(texts, ["Disk replaced", "Looking into it"]);
    }

    #[test]
    fn maintenance_is_current_and_future_only_soonest_first() {
        let view = view_of(&mut world(), "acme");
        let m: Vec<(&str, bool)> = view.maintenance.iter().map(|m| (m.reason.as_str(), m.in_progress)).collect();
        assert_eq!(m, [("now", true), ("kernel update", false)]);
    }

    #[test]
    fn availability_counts_this_month_against_the_target() {
        let view = view_of(&mut world(), "acme");
        let Availability::Month { month, rows } = &view.availability else { panic!("{:?}", view.availability) };
        assert_eq!(month, "2026-03");
        let web1 = rows.iter().find(|r| r.host == "web-1").unwrap();
        // One hour down so far, of the month's window as `pikett sla report` counts it: March
        // in Berlin has 743 hours (the clocks go forward).
        let expected = 1.0 - 1.0 / 743.0;
        assert!((web1.availability - expected).abs() < 1e-9, "{web1:?}");
        assert_eq!(web1.target, 0.99);
        assert!(web1.met);
        let web2 = rows.iter().find(|r| r.host == "web-2").unwrap();
        assert_eq!(web2.availability, 1.0, "a warning is not an outage");
        assert!(rows.iter().all(|r| r.host != "old-1" && r.host != "globex-web"), "{rows:?}");
    }

    #[test]
    fn nothing_of_another_customer_is_in_the_view() {
        let mut w = world();
        // An acme incident that somehow names a globex host shows only acme's.
        w.incidents[0].hosts.push("globex-web".into());
        let view = view_of(&mut w, "acme");
        let text = format!("{view:?}");
        for other in ["globex", "GLOBEX-ONLY", "GLOBEX-MAINT", "SECRET-SUMMARY"] {
            assert!(!text.contains(other), "{other} leaked into acme's view: {text}");
        }
        let globex = view_of(&mut world(), "globex");
        let text = format!("{globex:?}");
        for other in ["web-1", "web-2", "db-1", "Disk replaced", "kernel update"] {
            assert!(!text.contains(other), "{other} leaked into globex's view: {text}");
        }
        assert_eq!(globex.hosts.len(), 1);
        // A customer nobody has hosts of sees an empty page, not someone else's.
        let nobody = view_of(&mut world(), "initech");
        assert!(nobody.hosts.is_empty() && nobody.incidents.is_empty() && nobody.maintenance.is_empty());
    }
}

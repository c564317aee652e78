//! The post-incident report (`pikett incident report ID`): Markdown, pure.
//!
//! Sections: title (with `[Notfall]` for emergencies), summary, affected hosts and faults,
//! the timeline (the incident's merged with its faults', from the incident's opening), response
//! times (time to the first acknowledgement of each fault vs. the contract's
//! `response_target`; the incident's: from its opening to the first acknowledgement of any of
//! its faults), outage minutes (each host's fault
//! intervals merged), SLA impact (the SLA-relevant outage minutes by the contract's windows and
//! how they would be attributed), service credit (when the contract has `credits`: each month
//! the incident touched, month to date while it is not over, over all the customer's hosts;
//! [`render_with_credits`]), root cause and recommendations.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;

use super::Incident;
use crate::faults::{EventKind, Fault, HOST_REACHABLE, Maintenance, Severity};
use crate::sla::credits::{MonthCredit, MonthlyFee, month_credits};
use crate::sla::{
    Cause, Contract, Emergency, Interval, Ledger, Month, Outage, Reason, SlaError, merge_overlapping, response_summary,
};

/// What the report is made of.
pub struct ReportInput<'a> {
    pub incident: &'a Incident,
    /// The incident's faults (as the engine has them now).
    pub faults: &'a [Fault],
    /// The customer's contract: its name and terms (`None`: no `[sla.NAME]` for the customer).
    pub contract: Option<(&'a str, &'a Contract)>,
    /// Maintenance windows (of any host; the report picks the incident's).
    pub maintenance: &'a [Maintenance],
    /// Ongoing faults count as failing until now.
    pub now: Timestamp,
}

fn t(ts: Timestamp) -> String {
    ts.round(jiff::Unit::Second).unwrap_or(ts).to_string()
}

fn dur(secs: i64) -> String {
    let secs = secs.max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn minutes(secs: i64) -> String {
    format!("{:.1}", secs.max(0) as f64 / 60.0)
}

/// Markdown table cells must not break the table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Each host's failing time: its critical faults' open → resolve intervals (until `now` while
/// open), merged.
pub fn outage_intervals<'f>(
    faults: impl IntoIterator<Item = &'f Fault>,
    now: Timestamp,
) -> BTreeMap<String, Vec<Interval>> {
    let mut per_host: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    for f in faults.into_iter().filter(|f| f.severity == Severity::Critical) {
        let end = f.resolved_at.unwrap_or(now);
        per_host.entry(f.host.clone()).or_default().push(Interval { start: f.opened_at, end });
    }
    per_host.into_iter().map(|(h, list)| (h, merge_overlapping(list))).collect()
}

/// When `f`'s failing that belongs to incident `inc` began: the latest of its opening and its
/// reopenings and raises up to the incident's opening. A fault reopened after its earlier
/// incident closed counts from its reopening here; its earlier spell is the earlier
/// incident's. A fault reopened while the incident is open counts from its first opening.
pub fn spell_start(f: &Fault, inc: &Incident) -> Timestamp {
    f.timeline
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Reopened | EventKind::SeverityRaised) && e.at <= inc.opened_at)
        .map(|e| e.at)
        .fold(f.opened_at, Timestamp::max)
}

/// The first acknowledgement of `f` at or after `since`. From the timeline: a reopening or a
/// raise clears the fault's `acked_at` and the next acknowledgement overwrites it, so
/// `acked_at` may be a second acknowledgement.
pub fn first_ack(f: &Fault, since: Timestamp) -> Option<Timestamp> {
    f.timeline
        .iter()
        .filter(|e| e.kind == EventKind::Acknowledged && e.at >= since)
        .map(|e| e.at)
        .min()
        .or_else(|| f.acked_at.filter(|a| *a >= since))
}

fn seconds(list: &[Interval]) -> i64 {
    list.iter().map(|i| i.end.as_second() - i.start.as_second()).sum()
}

pub fn render(input: &ReportInput<'_>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, input, None);
    out
}

/// The report with its "Service credit" section: `credits` from [`incident_credits`].
pub fn render_with_credits(input: &ReportInput<'_>, credits: &[MonthCredit]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, input, Some(CreditSection::Owed(credits)));
    out
}

/// The report with a "Service credit" section saying why no credit could be computed
/// (`why`: a month older than the fault history kept).
pub fn render_credit_unavailable(input: &ReportInput<'_>, why: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, input, Some(CreditSection::Unavailable(why)));
    out
}

/// What the "Service credit" section shows.
#[derive(Clone, Copy)]
enum CreditSection<'a> {
    Owed(&'a [MonthCredit]),
    Unavailable(&'a str),
}

/// The months (in the contract's time zone) the incident touched: from its opening to its
/// closing, or `now`, the end excluded: an incident closed at 00:00 on the 1st does not touch
/// the month that begins then. Empty without a contract.
pub fn incident_months(input: &ReportInput<'_>) -> Result<Vec<Month>, SlaError> {
    let Some((_, contract)) = input.contract else { return Ok(Vec::new()) };
    let tz = contract.timezone.tz().clone();
    let month_of = |ts: Timestamp| {
        let z = ts.to_zoned(tz.clone());
        Month::new(z.year(), z.month())
    };
    let inc = input.incident;
    let end = inc.closed_at.unwrap_or(input.now);
    let last_instant = end.checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap_or(end).max(inc.opened_at);
    let mut month = month_of(inc.opened_at)?;
    let last = month_of(last_instant)?;
    let mut months = vec![month];
    while month < last {
        month = month.next();
        months.push(month);
    }
    Ok(months)
}

/// The customer's service credit for each month the incident touched ([`incident_months`]),
/// month to date while the month is not over. `hosts`, `outages` and `maintenance` are the
/// customer's, of all its hosts (the credit is the month's, not the incident's), as the SLA
/// report gathers them: outages as `sla::live::derive_outages` gives them. Empty without a
/// contract or without `credits` in it.
pub fn incident_credits(
    input: &ReportInput<'_>,
    hosts: &[String],
    outages: &[Outage],
    maintenance: &[crate::sla::Maintenance],
    fee: Option<&MonthlyFee>,
) -> Result<Vec<MonthCredit>, SlaError> {
    let Some((_, contract)) = input.contract.filter(|(_, c)| !c.credits.is_empty()) else {
        return Ok(Vec::new());
    };
    let months = incident_months(input)?;
    let mut ledger = Ledger::new(contract, outages, maintenance)?;
    for h in hosts {
        ledger.add_host(h);
    }
    let rows = ledger.months(&months)?;
    Ok(month_credits(&contract.credit_terms(), &months, &rows, fee, input.now))
}

fn write_report(out: &mut String, r: &ReportInput<'_>, credits: Option<CreditSection<'_>>) -> std::fmt::Result {
    let inc = r.incident;
    writeln!(out, "# Incident {}: {}", inc.id, inc.title())?;
    writeln!(out)?;
    writeln!(out, "- **State:** {}", inc.state)?;
    writeln!(out, "- **Customer:** {}", if inc.customer.is_empty() { "-" } else { &inc.customer })?;
    writeln!(out, "- **Scope:** {} ({} host(s), {} fault(s))", inc.scope(), inc.hosts.len(), inc.fault_ids.len())?;
    writeln!(out, "- **Opened:** {}", t(inc.opened_at))?;
    if let Some(at) = inc.escalated_at {
        let by = inc.escalated_by.as_deref().unwrap_or("?");
        writeln!(out, "- **Escalated to emergency {}:** {} by {by}", super::NOTFALL, t(at))?;
    }
    match inc.closed_at {
        Some(at) => {
            let by = inc.closed_by.as_deref().unwrap_or("pikett (every fault resolved)");
            writeln!(
                out,
                "- **Closed:** {} by {by} (duration {})",
                t(at),
                dur(at.as_second() - inc.opened_at.as_second())
            )?;
        }
        None => writeln!(out, "- **Closed:** not yet (report as of {})", t(r.now))?,
    }
    writeln!(out)?;

    writeln!(out, "## Affected hosts and faults")?;
    writeln!(out)?;
    writeln!(out, "Hosts: {}", inc.hosts.join(", "))?;
    writeln!(out)?;
    writeln!(out, "| Fault | Host | Check | Severity | State | Opened | Acknowledged | Resolved | Summary |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for f in r.faults {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.id,
            cell(&f.host),
            cell(&f.check),
            f.severity,
            f.state,
            t(f.opened_at),
            f.acked_at.map_or("-".into(), |a| format!("{} by {}", t(a), cell(f.acked_by.as_deref().unwrap_or("?")))),
            f.resolved_at.map_or("-".into(), t),
            cell(&f.last_summary)
        )?;
    }
    writeln!(out)?;

    writeln!(out, "## Timeline")?;
    writeln!(out)?;
    let mut lines: Vec<(Timestamp, String, String, String)> = Vec::new();
    for e in &inc.timeline {
        lines.push((e.at, "incident".into(), e.who.clone().unwrap_or_default(), e.text.clone()));
    }
    // A fault's entries from before its spell in this incident (a reopened fault's earlier
    // incident) are left out: the timeline starts at the incident's opening, like the header.
    let mut left_out: Vec<(u64, usize)> = Vec::new();
    for f in r.faults {
        let since = spell_start(f, inc);
        let earlier = f.timeline.iter().filter(|e| e.at < since).count();
        if earlier > 0 {
            left_out.push((f.id, earlier));
        }
        for e in f.timeline.iter().filter(|e| e.at >= since) {
            let text = format!("{}: {}", e.kind_str(), e.text);
            lines.push((e.at, format!("fault {} ({})", f.id, f.host), e.who.clone().unwrap_or_default(), text));
        }
    }
    lines.sort_by_key(|l| l.0);
    writeln!(out, "| Time | Source | Who | Event |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (at, source, who, text) in &lines {
        writeln!(out, "| {} | {} | {} | {} |", t(*at), cell(source), cell(who), cell(text))?;
    }
    writeln!(out)?;
    if !left_out.is_empty() {
        let list: Vec<String> = left_out.iter().map(|(id, n)| format!("{n} of fault {id}")).collect();
        writeln!(
            out,
            "Left out: timeline entries from before this incident ({}; see `pikett fault show ID`).",
            list.join(", ")
        )?;
        writeln!(out)?;
    }

    writeln!(out, "## Response times")?;
    writeln!(out)?;
    let target = r.contract.map_or(std::time::Duration::from_secs(3600), |(_, c)| c.response_target);
    match r.contract {
        Some((name, _)) => {
            writeln!(out, "Target (contract `{name}`, `response_target`): {}", dur(target.as_secs() as i64))?
        }
        None => writeln!(out, "Target: {} (the default; customer has no SLA contract)", dur(target.as_secs() as i64))?,
    }
    writeln!(out)?;
    writeln!(out, "| Fault | Opened | Acknowledged | Time to acknowledge | Within target |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    let mut emergencies = Vec::new();
    // Per fault: from its spell's start to its first acknowledgement in that spell.
    let mut first_acks = Vec::new();
    for f in r.faults {
        let opened = spell_start(f, inc);
        let first = first_ack(f, opened);
        first_acks.extend(first);
        emergencies.push(Emergency { id: f.id.to_string(), opened, acked: first });
        let (acked, tta, within) = match first {
            Some(a) => {
                let secs = (a.as_second() - opened.as_second()).max(0);
                (t(a), dur(secs), if secs as u64 <= target.as_secs() { "yes" } else { "**no**" }.to_string())
            }
            None => {
                let waited = r.now.as_second() - opened.as_second();
                let late = waited as u64 > target.as_secs();
                (
                    "-".into(),
                    format!("not acknowledged ({} so far)", dur(waited)),
                    if late { "**no**" } else { "pending" }.into(),
                )
            }
        };
        writeln!(out, "| {} | {} | {acked} | {tta} | {within} |", f.id, t(opened))?;
    }
    let s = response_summary(&emergencies, target);
    writeln!(out)?;
    write!(out, "{} of {} fault(s) acknowledged within the target", s.within_target, s.total)?;
    if let (Some(w), Some(id)) = (s.worst_seconds, &s.worst_id) {
        write!(out, "; slowest: {} (fault {id})", dur(w as i64))?;
    }
    if s.unacknowledged > 0 {
        write!(out, "; {} not acknowledged", s.unacknowledged)?;
    }
    writeln!(out, ".")?;
    // The incident's time to acknowledge: from its opening to the first acknowledgement of
    // any of its faults (not a later one after a reopening or a raise).
    if let Some(first) = first_acks.into_iter().min() {
        let secs = first.as_second() - inc.opened_at.as_second();
        let ok = secs.max(0) as u64 <= target.as_secs();
        writeln!(
            out,
            "Incident: first acknowledgement {} after opening ({} the target).",
            dur(secs),
            if ok { "within" } else { "**outside**" }
        )?;
    }
    writeln!(out)?;

    writeln!(out, "## Outage")?;
    writeln!(out)?;
    let outages = outage_intervals(r.faults, r.now);
    writeln!(
        out,
        "Critical faults' open → resolve intervals per host, overlapping ones merged (open faults until now)."
    )?;
    writeln!(out)?;
    writeln!(out, "| Host | Intervals | Outage minutes |")?;
    writeln!(out, "|---|---|---|")?;
    let mut total = 0;
    for (host, list) in &outages {
        let secs = seconds(list);
        total += secs;
        let iv: Vec<String> = list.iter().map(|i| format!("{} – {}", t(i.start), t(i.end))).collect();
        writeln!(out, "| {} | {} | {} |", cell(host), iv.join("; "), minutes(secs))?;
    }
    writeln!(out)?;
    writeln!(out, "Outage minutes in total: {} (summed over hosts).", minutes(total))?;
    writeln!(out)?;

    writeln!(out, "## SLA impact")?;
    writeln!(out)?;
    match r.contract {
        None => {
            writeln!(out, "The customer has no SLA contract: outage minutes as above, no availability targets apply.")?
        }
        Some((name, contract)) => write_sla_impact(out, r, name, contract)?,
    }
    writeln!(out)?;
    if let (Some((name, contract)), Some(credits)) = (r.contract, credits)
        && !contract.credits.is_empty()
    {
        write_service_credit(out, name, contract, credits)?;
        writeln!(out)?;
    }

    writeln!(out, "## Root cause")?;
    writeln!(out)?;
    writeln!(out, "{}", inc.root_cause.as_deref().unwrap_or("(not yet recorded)"))?;
    writeln!(out)?;
    writeln!(out, "## Recommendations")?;
    writeln!(out)?;
    writeln!(out, "{}", inc.recommendations.as_deref().unwrap_or("(not yet recorded)"))?;
    if !inc.updates.is_empty() {
        writeln!(out)?;
        writeln!(out, "## Status updates")?;
        writeln!(out)?;
        for u in &inc.updates {
            let eta = u.eta.map(|e| format!(" — ETA {}", t(e))).unwrap_or_default();
            writeln!(
                out,
                "{}. {} ({}, {}){eta} — sent to {} contact(s)",
                u.number,
                u.text,
                t(u.at),
                u.who,
                u.notified
            )?;
        }
    }
    Ok(())
}

fn write_sla_impact(out: &mut String, r: &ReportInput<'_>, name: &str, contract: &Contract) -> std::fmt::Result {
    let relevant = |f: &&Fault| {
        if contract.checks.is_empty() { f.check == HOST_REACHABLE } else { contract.checks.contains(&f.check) }
    };
    let what = if contract.checks.is_empty() {
        format!("`{HOST_REACHABLE}`")
    } else {
        contract.checks.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    };
    writeln!(out, "Contract `{name}` ({}); SLA-relevant checks: {what}.", contract.timezone.name())?;
    writeln!(out)?;
    let per_host = outage_intervals(r.faults.iter().filter(relevant), r.now);
    let mut outages = Vec::new();
    for (host, list) in &per_host {
        for i in list.iter().filter(|i| i.end.as_second() > i.start.as_second()) {
            outages.push(Outage { host: host.clone(), start: i.start, end: i.end, cause: Cause::None });
        }
    }
    if outages.is_empty() {
        writeln!(out, "No SLA-relevant outage: no impact on availability.")?;
        return Ok(());
    }
    let maintenance: Vec<crate::sla::Maintenance> = r
        .maintenance
        .iter()
        .filter(|m| per_host.contains_key(&m.host))
        .map(|m| crate::sla::Maintenance {
            host: m.host.clone(),
            start: m.start,
            end: m.end,
            announced: m.announced_at,
        })
        .collect();
    let tz = contract.timezone.tz().clone();
    let month_of = |ts: Timestamp| {
        let z = ts.to_zoned(tz.clone());
        Month::new(z.year(), z.month())
    };
    let first = outages.iter().map(|o| o.start).min().expect("not empty");
    let last = outages.iter().map(|o| o.end).max().expect("not empty");
    let (Ok(mut month), Ok(end_month)) = (month_of(first), month_of(last)) else {
        return writeln!(out, "(time out of range for the contract's calendar)");
    };
    let ledger = match Ledger::new(contract, &outages, &maintenance) {
        Ok(l) => l,
        Err(e) => return writeln!(out, "(cannot compute: {e})"),
    };
    // window → reason → seconds
    let mut by_window: BTreeMap<usize, BTreeMap<&'static str, u64>> = BTreeMap::new();
    loop {
        for host in per_host.keys() {
            match ledger.explain(host, month) {
                Ok(list) => {
                    for a in list {
                        let w = contract.windows.iter().position(|w| w.name == a.window).unwrap_or(0);
                        *by_window.entry(w).or_default().entry(reason_name(a.reason)).or_default() += a.seconds;
                    }
                }
                Err(e) => return writeln!(out, "(cannot compute: {e})"),
            }
        }
        if month >= end_month {
            break;
        }
        month = month.next();
    }
    writeln!(out, "| Window | Target | Outage minutes | Counted minutes | Excused minutes |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (i, w) in contract.windows.iter().enumerate() {
        let reasons = by_window.get(&i).cloned().unwrap_or_default();
        let all: u64 = reasons.values().sum();
        let counted = reasons.get("counted").copied().unwrap_or(0);
        let excused: Vec<String> = reasons
            .iter()
            .filter(|(r, s)| **r != "counted" && **s > 0)
            .map(|(r, s)| format!("{} {r}", minutes(*s as i64)))
            .collect();
        writeln!(
            out,
            "| {} | {:.3}% | {} | {} | {} |",
            cell(&w.name),
            w.target.as_fraction() * 100.0,
            minutes(all as i64),
            minutes(counted as i64),
            if excused.is_empty() { "0.0".to_string() } else { excused.join(", ") }
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Short-outage allowances are judged among this incident's outages only; `pikett sla report` for the month is authoritative."
    )
}

fn write_service_credit(
    out: &mut String,
    name: &str,
    contract: &Contract,
    section: CreditSection<'_>,
) -> std::fmt::Result {
    writeln!(out, "## Service credit")?;
    writeln!(out)?;
    let credits = match section {
        CreditSection::Owed(credits) => credits,
        CreditSection::Unavailable(why) => return writeln!(out, "Not computed: {why}."),
    };
    let tiers: Vec<String> =
        contract.credits.tiers().iter().map(|t| format!("below {} % → {} %", t.below, t.percent)).collect();
    let windows = if contract.credit_windows.is_empty() {
        "every window".to_string()
    } else {
        contract.credit_windows.join(", ")
    };
    writeln!(
        out,
        "Contract `{name}` credits: {} of the monthly fee; the lowest tier the availability falls below applies \
         (not cumulative), judged by the month's lowest availability of the customer's hosts in {windows}.",
        tiers.join(", ")
    )?;
    writeln!(out)?;
    for c in credits {
        let owed = c.credit.owed();
        let when = if c.month_to_date { " (month to date)" } else { "" };
        writeln!(out, "- {}{when}: credit owed {owed} — {}", c.month, c.explanation())?;
    }
    if credits.iter().any(|c| c.month_to_date) {
        writeln!(out)?;
        writeln!(
            out,
            "Month to date: the outages of all the customer's hosts this month so far (not only this incident's), \
             against the whole month's service time; the credit grows if more outage counts before the month ends. \
             `pikett sla report` for the month is authoritative."
        )?;
    }
    Ok(())
}

fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Counted => "counted",
        Reason::Short => "short",
        Reason::Maintenance => "maintenance",
        Reason::ForceMajeure => "force majeure",
        Reason::Customer => "customer",
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for crate::faults::TimelineEntry {
    fn kind_str(&self) -> String {
        serde_json::to_value(self.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

#[cfg(test)]
mod credit_tests {
    use super::*;
    use crate::incidents::{FaultRef, Incidents};
    use crate::sla::credits::MonthlyFee;

    fn t(s: &str) -> Timestamp {
        format!("{s}:00Z").parse().unwrap()
    }

    fn outage(host: &str, from: &str, to: &str) -> Outage {
        Outage { host: host.into(), start: t(from), end: t(to), cause: Cause::None }
    }

    #[test]
    fn the_service_credit_covers_every_month_the_incident_touched_over_all_the_customers_hosts() {
        let mut s = Incidents::default();
        let f = FaultRef {
            id: 1,
            host: "web-1".into(),
            customer: "acme".into(),
            check: "host/reachable".into(),
            severity: Severity::Critical,
            opened_at: t("2026-04-30T22:00"),
            failing_since: t("2026-04-30T22:00"),
            summary: "down".into(),
        };
        let id = s.fault_failing(&f, std::time::Duration::from_secs(300), t("2026-04-30T22:00")).unwrap();
        s.close(id, "power", "second PSU", "eve", t("2026-05-01T02:00")).unwrap();
        let inc = s.get(id).unwrap().clone();
        let contract = Contract::from_toml(
            "timezone = \"UTC\"\nwindows = [{ name = \"all\", from = \"00:00\", to = \"24:00\", target = \"99%\" }]\n\
             credits = [{ below = 99.9, percent = 10 }, { below = 99, percent = 25 }]\n",
            "c.toml",
        )
        .unwrap();
        let input = ReportInput {
            incident: &inc,
            faults: &[],
            contract: Some(("standard", &contract)),
            maintenance: &[],
            now: t("2026-05-10T00:00"),
        };
        // The customer's outages: this incident's (2 h in April, 2 h in May) and another
        // host's 8 h in April, which is not this incident's but decides April's credit.
        let outages = [
            outage("web-1", "2026-04-30T22:00", "2026-05-01T02:00"),
            outage("web-2", "2026-04-10T00:00", "2026-04-10T08:00"),
        ];
        let fee = MonthlyFee { amount: "1200.00".parse().unwrap(), currency: "EUR".parse().unwrap() };
        let hosts = ["web-1".to_string(), "web-2".to_string()];
        let credits = incident_credits(&input, &hosts, &outages, &[], Some(&fee)).unwrap();
        let md = render_with_credits(&input, &credits);
        // April: 30 d = 2,592,000 s. web-2: 2,592,000 − 28,800 = 2,563,200 → 98.888… % (web-1:
        // 2,584,800 → 99.72 %, higher) → under 99 → 25 % of 1,200.00 = 300.00 EUR.
        assert!(
            md.contains(
                "- 2026-04: credit owed 300.00 EUR — web-2 all: 98.888 % < 99 % → 25 % of 1,200.00 EUR = 300.00 EUR\n"
            ),
            "{md}"
        );
        // May (not over on the 10th): 31 d = 2,678,400 s; web-1 2 h: 2,671,200 → 99.731… % →
        // under 99.9, not under 99 → 10 % of 1,200.00 = 120.00 EUR.
        assert!(
            md.contains("- 2026-05 (month to date): credit owed 120.00 EUR — web-1 all: 99.731 % < 99.9 % → 10 % of 1,200.00 EUR = 120.00 EUR\n"),
            "{md}"
        );
        assert!(md.contains("Month to date: the outages of all the customer's hosts"), "{md}");
        let section = md.find("## Service credit").unwrap();
        assert!(md.find("## SLA impact").unwrap() < section && section < md.find("## Root cause").unwrap());
        // The plain report, and a contract without credits, have no such section.
        assert!(!render(&input).contains("## Service credit"));
        let plain = Contract { credits: Default::default(), ..contract.clone() };
        let input = ReportInput { contract: Some(("standard", &plain)), ..input };
        assert!(incident_credits(&input, &hosts, &outages, &[], Some(&fee)).unwrap().is_empty());
    }

    #[test]
    fn an_incident_closed_at_midnight_on_the_first_does_not_touch_the_next_month() {
        let mut s = Incidents::default();
        let f = FaultRef {
            id: 1,
            host: "web-1".into(),
            customer: "acme".into(),
            check: "host/reachable".into(),
            severity: Severity::Critical,
            opened_at: t("2026-04-30T22:00"),
            failing_since: t("2026-04-30T22:00"),
            summary: "down".into(),
        };
        let id = s.fault_failing(&f, std::time::Duration::from_secs(300), t("2026-04-30T22:00")).unwrap();
        s.close(id, "power", "second PSU", "eve", t("2026-05-01T00:00")).unwrap();
        let inc = s.get(id).unwrap().clone();
        let contract = Contract::from_toml(
            "timezone = \"UTC\"\nwindows = [{ name = \"all\", from = \"00:00\", to = \"24:00\", target = \"99%\" }]\n\
             credits = [{ below = 99.9, percent = 10 }]\n",
            "c.toml",
        )
        .unwrap();
        let input = ReportInput {
            incident: &inc,
            faults: &[],
            contract: Some(("standard", &contract)),
            maintenance: &[],
            now: t("2026-05-10T00:00"),
        };
        let months: Vec<String> = incident_months(&input).unwrap().iter().map(|m| m.to_string()).collect();
        assert_eq!(months, ["2026-04"]);
        let outages = [outage("web-1", "2026-04-30T22:00", "2026-05-01T00:00")];
        let credits = incident_credits(&input, &["web-1".into()], &outages, &[], None).unwrap();
        assert_eq!(credits.iter().map(|c| c.month.to_string()).collect::<Vec<_>>(), ["2026-04"]);
        // Closed one minute later, it does.
        let mut later = inc.clone();
        later.closed_at = Some(t("2026-05-01T00:01"));
        let input = ReportInput { incident: &later, ..input };
        let months: Vec<String> = incident_months(&input).unwrap().iter().map(|m| m.to_string()).collect();
        assert_eq!(months, ["2026-04", "2026-05"]);
    }
}

//! The staff CLI's report commands: `pikett sla report`, `pikett sla classify`, `pikett patches`
//! (calls to the `Reports` service and their rendering).
//!
//! `sla report --format json` prints exactly the JSON lines of docs/cli.md (one per host, window
//! and month; the year view prints all twelve months); the response-time figures appear in the
//! table only, so the JSON stays one object per host and window. A contract with `credits` adds
//! one line per month after them, `{"customer", "month", "credit": {…}}` (no `host` key).

use std::fmt::Write as _;

use pikett_proto::v1 as pb;
use pikett_proto::v1::reports_client::ReportsClient;
use serde_json::json;

use crate::client::{Client, format_time, rpc_error};
use pikett_core::sla::{self, ExcusedSeconds, ReportRow};

/// How `sla report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

fn reports(client: &Client) -> ReportsClient<tonic::transport::Channel> {
    ReportsClient::new(client.channel.clone())
}

fn row_from_pb(r: &pb::SlaRow) -> ReportRow {
    ReportRow {
        host: r.host.clone(),
        month: r.month.clone(),
        window: r.window.clone(),
        window_seconds: r.window_seconds,
        outage_seconds: r.outage_seconds,
        counted_seconds: r.counted_seconds,
        excused_seconds: ExcusedSeconds {
            short: r.excused_short,
            maintenance: r.excused_maintenance,
            force_majeure: r.excused_force_majeure,
            customer: r.excused_customer,
        },
        availability: r.availability,
        target: r.target,
        met: r.met,
    }
}

fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn response_text(r: &pb::SlaResponse) -> String {
    let mut out = format!(
        "response: {} critical fault(s), {} acknowledged within {}, {} acknowledged later, {} not acknowledged",
        r.total,
        r.within_target,
        duration(r.target_seconds),
        r.acknowledged - r.within_target,
        r.unacknowledged
    );
    if let Some(w) = r.worst_seconds {
        let _ = write!(out, "; worst {} (fault {})", duration(w), r.worst_fault);
    }
    out.push('\n');
    out
}

/// `pikett sla report --customer C (--month YYYY-MM | --year YYYY) [--format table|json|csv]`.
pub async fn sla_report(
    client: &mut Client,
    customer: String,
    month: Option<String>,
    year: Option<i32>,
    format: ReportFormat,
) -> anyhow::Result<String> {
    let is_year = year.is_some();
    let r = pb::SlaReportRequest { customer, month: month.unwrap_or_default(), year: year.unwrap_or(0) };
    let reply = reports(client).sla_report(client.req(r)).await.map_err(rpc_error)?.into_inner();
    let rows: Vec<ReportRow> = reply.rows.iter().map(row_from_pb).collect();
    Ok(match format {
        ReportFormat::Json => {
            let mut out = sla::render_json_lines(&rows);
            for c in &reply.credits {
                writeln!(out, "{}", json!({"customer": reply.customer, "month": c.month, "credit": credit_json(c)}))?;
            }
            out
        }
        ReportFormat::Csv => sla::render_csv(&rows),
        ReportFormat::Table => {
            let mut out = format!(
                "SLA report for customer {} (contract {}, time zone {})\n",
                reply.customer, reply.contract, reply.timezone
            );
            if rows.is_empty() {
                out.push_str("(no hosts of this customer have reported yet)\n");
            } else if is_year {
                out.push_str(&sla::render_year_table(&sla::year_rows(&rows)));
            } else {
                out.push_str(&sla::render_table(&rows));
            }
            if let Some(resp) = &reply.response {
                out.push_str(&response_text(resp));
            }
            out.push_str(&credits_text(&reply.credits));
            out
        }
    })
}

/// A month's credit in JSON: money and percentages as decimal strings (exact), `null` where
/// there is none (no tier, no fee).
pub fn credit_json(c: &pb::SlaCredit) -> serde_json::Value {
    json!({
        "host": nonempty(&c.host), "window": nonempty(&c.window),
        "window_seconds": c.window_seconds, "counted_seconds": c.counted_seconds,
        "availability": c.availability, "below": nonempty(&c.below), "percent": c.percent,
        "monthly_fee": nonempty(&c.monthly_fee), "currency": nonempty(&c.currency),
        "amount": nonempty(&c.amount), "month_to_date": c.month_to_date,
        "explanation": c.explanation,
    })
}

/// The table's credit lines: per month, what is owed and the arithmetic.
fn credits_text(credits: &[pb::SlaCredit]) -> String {
    let mut out = String::new();
    if credits.is_empty() {
        return out;
    }
    out.push_str("credits (the lowest tier the month's lowest availability falls below; tiers are not cumulative):\n");
    for c in credits {
        let owed = match (c.amount.as_str(), c.currency.as_str()) {
            ("", _) => format!("{} % of the monthly fee", c.percent),
            (amount, currency) => format!("{amount} {currency}"),
        };
        let when = if c.month_to_date { " (month to date)" } else { "" };
        let _ = writeln!(out, "  {}{when}: owed {owed} — {}", c.month, c.explanation);
    }
    if credits.iter().any(|c| c.month_to_date) {
        out.push_str("  month to date: the outages so far against the whole month's service time\n");
    }
    out
}

/// `pikett sla classify --fault ID --cause force-majeure|customer|none`.
pub async fn sla_classify(client: &mut Client, fault: u64, cause: String, json: bool) -> anyhow::Result<String> {
    let r = pb::SlaClassifyRequest { fault_id: fault, cause };
    let c = reports(client).sla_classify(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        let v = json!({"fault": c.fault_id, "cause": c.cause, "host": c.host, "check": c.check, "who": c.who});
        return Ok(format!("{v}\n"));
    }
    Ok(format!("fault {} ({} on {}): outage cause {} (by {})\n", c.fault_id, c.check, c.host, c.cause, c.who))
}

fn opt_time(ms: i64) -> serde_json::Value {
    if ms == 0 { serde_json::Value::Null } else { json!(format_time(ms)) }
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn host_json(h: &pb::HostPatches) -> serde_json::Value {
    json!({
        "host_id": h.host_id, "customer": h.customer, "status": h.status,
        "pending": h.pending, "security": h.security, "critical": h.critical,
        "oldest_pending": opt_time(h.oldest_pending_unix_ms),
        "reboot_required": h.reboot_required,
        "last_patch_day": h.last_patch_day,
        "updates": h.updates.iter().map(|u| json!({
            "package": u.package, "arch": u.arch, "current_version": nonempty(&u.current_version),
            "new_version": u.new_version, "advisory": nonempty(&u.advisory), "type": u.r#type,
            "severity": nonempty(&u.severity), "released": opt_time(u.released_unix_ms),
            "repository": nonempty(&u.repository), "first_seen": format_time(u.first_seen_unix_ms),
        })).collect::<Vec<_>>(),
    })
}

/// The compliance rule in one line, under the `pikett patches` table (`pikett patches
/// --help` says it at length; `pikett_core::patchday` decides it).
pub const COMPLIANCE_RULE: &str = "due: an update available (released or first seen) before the LAST PATCH DAY; \
     overdue: available before a patch day 7+ days past ([patches] patch_day, default 2nd tue)";

/// `pikett patches [--host H] [--overdue]`.
pub async fn patches(client: &mut Client, host: Option<String>, overdue: bool, json: bool) -> anyhow::Result<String> {
    let r = pb::PatchesRequest { host: host.unwrap_or_default(), overdue };
    let reply = reports(client).patches(client.req(r)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        for h in &reply.hosts {
            writeln!(out, "{}", host_json(h))?;
        }
        return Ok(out);
    }
    writeln!(
        out,
        "{:<24} {:<12} {:<10} {:>7} {:>8} {:>8} {:<20} {:<7} LAST PATCH DAY",
        "HOST", "CUSTOMER", "STATUS", "PENDING", "SECURITY", "CRITICAL", "OLDEST PENDING", "REBOOT"
    )?;
    for h in &reply.hosts {
        let oldest =
            if h.oldest_pending_unix_ms == 0 { "-".to_string() } else { format_time(h.oldest_pending_unix_ms) };
        let reboot = match h.reboot_required {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let critical = if h.critical_overdue > 0 { format!("{}!", h.critical) } else { h.critical.to_string() };
        writeln!(
            out,
            "{:<24} {:<12} {:<10} {:>7} {:>8} {:>8} {:<20} {:<7} {}",
            h.host_id, h.customer, h.status, h.pending, h.security, critical, oldest, reboot, h.last_patch_day
        )?;
    }
    if reply.hosts.is_empty() {
        writeln!(out, "(no {}hosts)", if overdue { "overdue " } else { "" })?;
    } else if reply.hosts.iter().any(|h| h.critical_overdue > 0) {
        writeln!(out, "! Critical security update pending longer than critical_patch_days: install out of cycle")?;
    }
    writeln!(out, "{COMPLIANCE_RULE}")?;
    Ok(out)
}

//! Calls to the `Admin` service (status, hosts, faults, ack/resolve, silences, maintenance,
//! on-call, reload) and their rendering: tables for people, JSON lines for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use pikett_proto::v1 as pb;
use serde_json::json;

use crate::client::{Client, format_time, opt_time, rpc_error};

fn fault_json(f: &pb::Fault) -> serde_json::Value {
    json!({
        "id": f.id, "host": f.host, "customer": f.customer, "check": f.check,
        "severity": f.severity, "state": f.state,
        "opened": format_time(f.opened_unix_ms), "opened_unix_ms": f.opened_unix_ms, "acked": opt_time(f.acked_unix_ms),
        "acked_by": (!f.acked_by.is_empty()).then_some(&f.acked_by),
        "resolved": opt_time(f.resolved_unix_ms),
        "resolved_by": (!f.resolved_by.is_empty()).then_some(&f.resolved_by),
        "summary": f.summary, "opened_summary": opened_summary(f), "results": f.results, "flapping": f.flapping,
        "suppressed": (!f.suppressed.is_empty()).then_some(&f.suppressed),
        "timeline": f.timeline.iter().map(|e| json!({
            "at": format_time(e.at_unix_ms), "kind": e.kind,
            "who": (!e.who.is_empty()).then_some(&e.who), "text": e.text,
        })).collect::<Vec<_>>(),
        "notifications": f.notifications.iter().map(|n| json!({
            "id": n.id, "kind": n.kind, "channel": n.channel, "to": n.to, "delivery": n.delivery,
            "sent": opt_time(n.sent_unix_ms), "delivery_at": opt_time(n.delivery_unix_ms),
            "detail": (!n.detail.is_empty()).then_some(&n.detail),
        })).collect::<Vec<_>>(),
    })
}

/// Why the fault opened: the summary of the result that opened it (a collector that
/// predates the field sends none: then the latest result's).
fn opened_summary(f: &pb::Fault) -> &str {
    if f.opened_summary.is_empty() { &f.summary } else { &f.opened_summary }
}

/// The table's summary: why it opened, and the latest result when that says something else
/// (a resolved fault's "OK - …", a warning that turned critical).
fn fault_summary(f: &pb::Fault) -> String {
    let opened = opened_summary(f);
    if f.summary == opened || f.summary.is_empty() {
        truncate(opened, 60)
    } else {
        format!("{} (last: {})", truncate(opened, 60), truncate(&f.summary, 40))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).collect::<String>() + "…" }
}

pub async fn faults(
    client: &mut Client,
    all: bool,
    host: Option<String>,
    customer: Option<String>,
    json: bool,
) -> anyhow::Result<String> {
    let r = pb::ListFaultsRequest { all, host: host.unwrap_or_default(), customer: customer.unwrap_or_default() };
    let reply = client.admin.list_faults(client.req(r)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        for f in &reply.faults {
            writeln!(out, "{}", fault_json(f))?;
        }
        return Ok(out);
    }
    writeln!(
        out,
        "{:>5} {:<8} {:<12} {:<20} {:<28} {:<20} WHY OPENED (LAST RESULT)",
        "ID", "SEVERITY", "STATE", "HOST", "CHECK", "OPENED"
    )?;
    for f in &reply.faults {
        let mut state = f.state.clone();
        if f.flapping {
            state += "*";
        }
        writeln!(
            out,
            "{:>5} {:<8} {:<12} {:<20} {:<28} {:<20} {}{}",
            f.id,
            f.severity,
            state,
            truncate(&f.host, 20),
            truncate(&f.check, 28),
            format_time(f.opened_unix_ms),
            fault_summary(f),
            if f.suppressed.is_empty() { String::new() } else { format!(" [suppressed: {}]", f.suppressed) }
        )?;
    }
    if reply.faults.is_empty() {
        writeln!(out, "(no {}faults)", if all { "" } else { "open " })?;
    }
    Ok(out)
}

fn render_fault(f: &pb::Fault) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "fault {}: {} {} on {} ({})", f.id, f.severity, f.check, f.host, f.customer)?;
    writeln!(out, "state:      {}{}", f.state, if f.flapping { " (flapping)" } else { "" })?;
    writeln!(out, "opened:     {}", format_time(f.opened_unix_ms))?;
    writeln!(out, "why opened: {}", opened_summary(f))?;
    writeln!(out, "summary:    {} (latest result)", f.summary)?;
    if f.acked_unix_ms != 0 {
        writeln!(out, "acked:      {} by {}", format_time(f.acked_unix_ms), f.acked_by)?;
    }
    if f.resolved_unix_ms != 0 {
        let by = if f.resolved_by.is_empty() { "the check (OK again)" } else { f.resolved_by.as_str() };
        writeln!(out, "resolved:   {} by {by}", format_time(f.resolved_unix_ms))?;
    }
    if !f.suppressed.is_empty() {
        writeln!(out, "suppressed: {}", f.suppressed)?;
    }
    writeln!(out, "results:    {}", f.results)?;
    writeln!(out, "timeline:")?;
    for e in &f.timeline {
        let who = if e.who.is_empty() { String::new() } else { format!(" [{}]", e.who) };
        writeln!(out, "  {}  {:<18}{who} {}", format_time(e.at_unix_ms), e.kind, e.text)?;
    }
    if !f.notifications.is_empty() {
        render_notifications(&mut out, &f.notifications)?;
    }
    Ok(out)
}

/// One line per notification: where it went and whether it arrived ("sent": the gateway
/// took it; "delivered": its receipt confirmed it; "not delivered").
fn render_notifications(out: &mut String, notifications: &[pb::FaultNotification]) -> anyhow::Result<()> {
    writeln!(out, "notifications:")?;
    // Ids are shown whole: cut short, `7/copy/alarm/0/sms` and `7/copy/alarm/0/email` look alike.
    let w = notifications.iter().map(|n| n.id.chars().count()).max().unwrap_or(0).max(2);
    writeln!(out, "  {:<w$} {:<8} {:<9} {:<24} {:<14} {:<20} DETAIL", "ID", "KIND", "CHANNEL", "TO", "DELIVERY", "AT")?;
    for n in notifications {
        let at = if n.delivery_unix_ms != 0 { n.delivery_unix_ms } else { n.sent_unix_ms };
        let at = if at == 0 { "-".to_string() } else { format_time(at) };
        writeln!(
            out,
            "  {:<w$} {:<8} {:<9} {:<24} {:<14} {:<20} {}",
            n.id,
            n.kind,
            n.channel,
            truncate(&n.to, 24),
            n.delivery,
            at,
            truncate(&n.detail, 60)
        )?;
    }
    Ok(())
}

pub async fn fault_show(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let f = client.admin.get_fault(client.req(pb::GetFaultRequest { id })).await.map_err(rpc_error)?.into_inner();
    if json { Ok(format!("{}\n", fault_json(&f))) } else { render_fault(&f) }
}

pub async fn ack(client: &mut Client, id: u64, note: Option<String>, json: bool) -> anyhow::Result<String> {
    let r = pb::FaultActionRequest { id, note: note.unwrap_or_default() };
    let f = client.admin.acknowledge(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json { Ok(format!("{}\n", fault_json(&f))) } else { Ok(format!("fault {id} acknowledged by {}\n", f.acked_by)) }
}

pub async fn resolve(client: &mut Client, id: u64, note: Option<String>, json: bool) -> anyhow::Result<String> {
    let r = pb::FaultActionRequest { id, note: note.unwrap_or_default() };
    let f = client.admin.resolve(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json { Ok(format!("{}\n", fault_json(&f))) } else { Ok(format!("fault {id} resolved by {}\n", f.resolved_by)) }
}

/// What `pikett silence --host H [--check C] --for D --reason R [--force]` asks for.
pub struct NewSilence {
    pub host: String,
    pub check: Option<String>,
    pub duration: Duration,
    pub reason: String,
    pub force: bool,
}

fn silence_json(s: &pb::Silence) -> serde_json::Value {
    json!({"id": s.id, "host": s.host, "check": (!s.check.is_empty()).then_some(&s.check),
        "until": format_time(s.until_unix_ms), "reason": s.reason, "who": s.who,
        "created": opt_time(s.created_unix_ms)})
}

fn silence_what(s: &pb::Silence) -> String {
    if s.check.is_empty() { format!("{} (all checks)", s.host) } else { format!("{} {}", s.host, s.check) }
}

pub async fn silence(client: &mut Client, new: NewSilence, json: bool) -> anyhow::Result<String> {
    let r = pb::AddSilenceRequest {
        host: new.host,
        check: new.check.unwrap_or_default(),
        duration_ms: new.duration.as_millis() as u64,
        reason: new.reason,
        force: new.force,
    };
    let s = client.admin.add_silence(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        return Ok(format!("{}\n", silence_json(&s)));
    }
    let what = if s.check.is_empty() { s.host.clone() } else { format!("{} {}", s.host, s.check) };
    Ok(format!("silence {} on {what} until {}\n", s.id, format_time(s.until_unix_ms)))
}

/// `pikett silence list`: the silences in force.
pub async fn silence_list(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let r = client.admin.list_silences(client.req(pb::ListSilencesRequest {})).await.map_err(rpc_error)?;
    let list = r.into_inner().silences;
    let mut out = String::new();
    if json {
        for s in &list {
            writeln!(out, "{}", silence_json(s))?;
        }
        return Ok(out);
    }
    writeln!(out, "{:>4} {:<20} {:<28} {:<20} {:<16} REASON", "ID", "HOST", "CHECK", "UNTIL", "BY")?;
    for s in &list {
        writeln!(
            out,
            "{:>4} {:<20} {:<28} {:<20} {:<16} {}",
            s.id,
            truncate(&s.host, 20),
            if s.check.is_empty() { "(all checks)".to_string() } else { truncate(&s.check, 28) },
            format_time(s.until_unix_ms),
            truncate(&s.who, 16),
            s.reason
        )?;
    }
    if list.is_empty() {
        writeln!(out, "(no silences in force)")?;
    }
    Ok(out)
}

/// `pikett silence remove ID`.
pub async fn silence_remove(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let r = pb::RemoveSilenceRequest { id };
    let s = client.admin.remove_silence(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        return Ok(format!("{}\n", silence_json(&s)));
    }
    Ok(format!(
        "silence {} on {} removed (it would have run until {}); its faults page again from their next change\n",
        s.id,
        silence_what(&s),
        format_time(s.until_unix_ms)
    ))
}

fn maintenance_json(m: &pb::Maintenance) -> serde_json::Value {
    json!({"id": m.id, "host": m.host, "start": format_time(m.start_unix_ms), "end": format_time(m.end_unix_ms),
        "reason": m.reason, "announced": format_time(m.announced_unix_ms), "who": m.who})
}

/// What `pikett maintenance add` asks for.
pub struct NewMaintenance {
    pub host: String,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
    pub reason: String,
    pub force: bool,
}

pub async fn maintenance_add(client: &mut Client, new: NewMaintenance, json: bool) -> anyhow::Result<String> {
    let r = pb::AddMaintenanceRequest {
        host: new.host,
        start_unix_ms: new.start.as_millisecond(),
        end_unix_ms: new.end.as_millisecond(),
        reason: new.reason,
        force: new.force,
    };
    let m = client.admin.add_maintenance(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        return Ok(format!("{}\n", maintenance_json(&m)));
    }
    Ok(format!(
        "maintenance {} on {} from {} to {} (announced {})\n",
        m.id,
        m.host,
        format_time(m.start_unix_ms),
        format_time(m.end_unix_ms),
        format_time(m.announced_unix_ms)
    ))
}

pub async fn maintenance_list(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let r = client.admin.list_maintenance(client.req(pb::ListMaintenanceRequest {})).await.map_err(rpc_error)?;
    let mut out = String::new();
    let list = r.into_inner().maintenance;
    if json {
        for m in &list {
            writeln!(out, "{}", maintenance_json(m))?;
        }
        return Ok(out);
    }
    writeln!(out, "{:>4} {:<20} {:<20} {:<20} {:<20} {:<16} REASON", "ID", "HOST", "START", "END", "ANNOUNCED", "BY")?;
    for m in &list {
        writeln!(
            out,
            "{:>4} {:<20} {:<20} {:<20} {:<20} {:<16} {}",
            m.id,
            truncate(&m.host, 20),
            format_time(m.start_unix_ms),
            format_time(m.end_unix_ms),
            format_time(m.announced_unix_ms),
            truncate(&m.who, 16),
            m.reason
        )?;
    }
    if list.is_empty() {
        writeln!(out, "(no maintenance windows)")?;
    }
    Ok(out)
}

/// `pikett maintenance remove ID`.
pub async fn maintenance_remove(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let r = pb::RemoveMaintenanceRequest { id };
    let m = client.admin.remove_maintenance(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        return Ok(format!("{}\n", maintenance_json(&m)));
    }
    Ok(format!(
        "maintenance {} on {} ({} to {}) removed; its faults page again from their next change\n",
        m.id,
        m.host,
        format_time(m.start_unix_ms),
        format_time(m.end_unix_ms)
    ))
}

/// `pikett reload`: the collector reads its configuration file again. A refused file comes
/// back as an error (exit 1) listing each problem with its file:line:column.
pub async fn reload(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let r = client.admin.reload(client.req(pb::ReloadRequest {})).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        writeln!(out, "{}", json!({"applied": r.applied, "needs_restart": r.needs_restart}))?;
        return Ok(out);
    }
    for line in &r.applied {
        writeln!(out, "{line}")?;
    }
    if r.needs_restart.is_empty() {
        writeln!(out, "needs a restart: nothing")?;
    } else {
        writeln!(
            out,
            "needs a restart: {} (changed in the file; the old values stay in force until the collector restarts)",
            r.needs_restart.join(", ")
        )?;
    }
    Ok(out)
}

fn render_oncall(r: &pb::OnCallReply, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        for o in &r.on_call {
            writeln!(out, "{}", json!({"role": o.role, "person": o.person, "at": format_time(r.at_unix_ms)}))?;
        }
        return Ok(out);
    }
    writeln!(out, "on call at {}:", format_time(r.at_unix_ms))?;
    for o in &r.on_call {
        writeln!(out, "  {:<11} {}", o.role, o.person)?;
    }
    Ok(out)
}

pub async fn oncall(client: &mut Client, at: Option<jiff::Timestamp>, json: bool) -> anyhow::Result<String> {
    let r = pb::OnCallRequest { at_unix_ms: at.map_or(0, |t| t.as_millisecond()) };
    let reply = client.admin.on_call(client.req(r)).await.map_err(rpc_error)?.into_inner();
    render_oncall(&reply, json)
}

pub async fn oncall_override(
    client: &mut Client,
    role: String,
    person: String,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
    json: bool,
) -> anyhow::Result<String> {
    let r =
        pb::AddOverrideRequest { role, person, from_unix_ms: from.as_millisecond(), to_unix_ms: to.as_millisecond() };
    let reply = client.admin.add_override(client.req(r)).await.map_err(rpc_error)?.into_inner();
    render_oncall(&reply, json)
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    let secs = ((now_ms - then_ms).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string() + " ago"
}

pub async fn status(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let s = client.admin.status(client.req(pb::StatusRequest {})).await.map_err(rpc_error)?.into_inner();
    render_status(&s, json)
}

fn render_status(s: &pb::StatusReply, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        let faults: serde_json::Map<String, serde_json::Value> =
            s.open_faults.iter().map(|f| (f.severity.clone(), json!(f.count))).collect();
        let oncall: serde_json::Map<String, serde_json::Value> =
            s.on_call.iter().map(|o| (o.role.clone(), json!(o.person))).collect();
        let v = json!({
            "hosts_up": s.hosts_up, "hosts_down": s.hosts_down, "batches_stored": s.batches_stored,
            "open_faults": faults, "on_call": oncall, "collector_version": s.collector_version,
            "time": format_time(s.now_unix_ms), "caller": s.caller, "caller_role": s.caller_role,
            "access": s.access,
            "cluster": s.cluster.iter().map(|n| json!({
                "node": n.node, "addr": n.addr, "role": n.role, "version": n.version,
                "last_heartbeat": opt_time(n.last_heartbeat_unix_ms),
                "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
            })).collect::<Vec<_>>(),
            "leader": (!s.leader.is_empty()).then_some(&s.leader), "term": s.term,
            "lease_expires": opt_time(s.lease_expires_unix_ms),
            "cluster_error": (!s.cluster_error.is_empty()).then_some(&s.cluster_error),
        });
        writeln!(out, "{v}")?;
        return Ok(out);
    }
    writeln!(out, "pikett collector {}  ({})", s.collector_version, format_time(s.now_unix_ms))?;
    writeln!(out, "hosts:       {} up, {} down", s.hosts_up, s.hosts_down)?;
    writeln!(out, "batches:     {} stored", s.batches_stored)?;
    if s.open_faults.is_empty() {
        writeln!(out, "open faults: none")?;
    } else {
        let parts: Vec<String> = s.open_faults.iter().map(|f| format!("{} {}", f.count, f.severity)).collect();
        writeln!(out, "open faults: {}", parts.join(", "))?;
    }
    if s.on_call.is_empty() {
        writeln!(out, "on call:     (no rotations configured)")?;
    } else {
        for o in &s.on_call {
            writeln!(out, "on call:     {:<10} {}", o.role, o.person)?;
        }
    }
    match s.access.as_str() {
        "loopback" => writeln!(
            out,
            "access:      no staff tokens configured: loopback calls only, acting as local admin {}",
            s.caller
        )?,
        "tokens" => writeln!(out, "access:      staff tokens; you are {} (role {})", s.caller, s.caller_role)?,
        _ => {}
    }
    render_cluster(&mut out, s)?;
    Ok(out)
}

/// The "Cluster" section of `pikett status`: the leader and term, then one line per
/// collector. Heartbeat ages count from the collector's time (`now_unix_ms`). A cluster the
/// collector could not read ("unavailable", with its reason) is told apart from one it did
/// not report.
fn render_cluster(out: &mut String, s: &pb::StatusReply) -> std::fmt::Result {
    writeln!(out)?;
    if !s.cluster_error.is_empty() {
        return writeln!(out, "Cluster: unavailable ({})", s.cluster_error);
    }
    if s.cluster.is_empty() {
        return writeln!(out, "Cluster: not reported (no heartbeat yet, or a collector older than this CLI)");
    }
    match s.leader.as_str() {
        "" => writeln!(out, "Cluster: no leader (term {})", s.term)?,
        leader => writeln!(out, "Cluster: leader {leader}, term {}", s.term)?,
    }
    let width = s.cluster.iter().map(|n| n.node.chars().count()).max().unwrap_or(0).max(4);
    writeln!(out, "{:<width$}  {:<10}  {:<14}  {:<10}  ADDRESS", "NODE", "ROLE", "LAST HEARTBEAT", "VERSION")?;
    for n in &s.cluster {
        let heartbeat = if n.last_heartbeat_unix_ms == 0 {
            "never".to_string()
        } else {
            ago(s.now_unix_ms, n.last_heartbeat_unix_ms)
        };
        writeln!(out, "{:<width$}  {:<10}  {:<14}  {:<10}  {}", n.node, n.role, heartbeat, n.version, n.addr)?;
    }
    Ok(())
}

pub async fn ticket(
    client: &mut Client,
    host: String,
    customer: String,
    valid: Duration,
    json: bool,
) -> anyhow::Result<String> {
    let req =
        pb::CreateTicketRequest { host_id: host.clone(), customer: customer.clone(), valid_seconds: valid.as_secs() };
    let r = client.admin.create_ticket(client.req(req)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        let v = json!({"host_id": host, "customer": customer, "expires": format_time(r.expires_unix_ms), "ticket": r.ticket});
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "Enrollment ticket for {host} (customer {customer}), one use, valid until {}.",
            format_time(r.expires_unix_ms)
        )?;
        writeln!(out, "On the host: pikett-agent enroll --collector https://COLLECTOR:PORT --ticket TICKET")?;
        writeln!(out, "{}", r.ticket)?;
    }
    Ok(out)
}

pub async fn remove(client: &mut Client, host: String, json: bool) -> anyhow::Result<String> {
    let req = pb::RemoveHostRequest { host_id: host.clone() };
    let r = client.admin.remove_host(client.req(req)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        writeln!(out, "{}", json!({"host_id": host, "resolved_faults": r.resolved_faults}))?;
    } else {
        writeln!(
            out,
            "host {host} removed: {} open faults ended as decommissioned; its history stays for reports",
            r.resolved_faults
        )?;
    }
    Ok(out)
}

pub async fn revoke(client: &mut Client, host: String, json: bool) -> anyhow::Result<String> {
    let req = pb::RevokeHostRequest { host_id: host.clone() };
    let r = client.admin.revoke_host(client.req(req)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        writeln!(out, "{}", json!({"host_id": host, "revoked_certificates": r.revoked_certificates}))?;
    } else {
        writeln!(
            out,
            "host {host} revoked: its certificates ({}) are refused from now on; a new ticket enrolls it again",
            r.revoked_certificates
        )?;
    }
    Ok(out)
}

pub async fn audit(
    client: &mut Client,
    since: Option<jiff::Timestamp>,
    user: Option<String>,
    json: bool,
) -> anyhow::Result<String> {
    let req = pb::ListAuditRequest {
        since_unix_ms: since.map_or(0, |t| t.as_millisecond()),
        user: user.unwrap_or_default(),
        limit: 0,
    };
    let r = client.admin.list_audit(client.req(req)).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        for e in &r.entries {
            let v = json!({
                "time": format_time(e.time_unix_ms), "user": e.user, "role": e.role, "peer": e.peer,
                "call": e.call, "arguments": e.arguments, "outcome": e.outcome,
            });
            writeln!(out, "{v}")?;
        }
        return Ok(out);
    }
    writeln!(out, "{:<20} {:<16} {:<9} {:<16} {:<18} OUTCOME", "TIME", "USER", "ROLE", "PEER", "CALL")?;
    for e in &r.entries {
        writeln!(
            out,
            "{:<20} {:<16} {:<9} {:<16} {:<18} {}",
            format_time(e.time_unix_ms),
            e.user,
            e.role,
            e.peer,
            e.call,
            e.outcome
        )?;
    }
    if r.entries.is_empty() {
        writeln!(out, "(no entries)")?;
    }
    Ok(out)
}

pub async fn hosts(client: &mut Client, stale: Option<Duration>, json: bool) -> anyhow::Result<String> {
    let mut r = client.admin.list_hosts(client.req(pb::ListHostsRequest {})).await.map_err(rpc_error)?.into_inner();
    if let Some(stale) = stale {
        let before = jiff::Timestamp::now().as_millisecond() - stale.as_millis() as i64;
        r.hosts.retain(|h| h.last_seen_unix_ms < before);
    }
    let mut out = String::new();
    if json {
        for h in &r.hosts {
            let v = json!({
                "host_id": h.host_id, "customer": h.customer, "status": h.status,
                "last_seen": format_time(h.last_seen_unix_ms), "first_seen": format_time(h.first_seen_unix_ms),
                "agent_version": h.agent_version, "batches": h.batches, "last_seq": h.last_seq,
                "capabilities": h.capabilities, "dropped_samples": h.dropped_samples, "dropped_other": h.dropped_other,
                "spool_epoch": h.spool_epoch, "spool_resets": h.spool_resets,
            });
            writeln!(out, "{v}")?;
        }
        return Ok(out);
    }
    let now = jiff::Timestamp::now().as_millisecond();
    writeln!(
        out,
        "{:<24} {:<12} {:<6} {:<22} {:<8} {:>9} {:>9} {:>7} {:>9}",
        "HOST", "CUSTOMER", "STATUS", "LAST SEEN", "AGENT", "BATCHES", "LAST SEQ", "RESETS", "DROPPED"
    )?;
    for h in &r.hosts {
        writeln!(
            out,
            "{:<24} {:<12} {:<6} {:<22} {:<8} {:>9} {:>9} {:>7} {:>9}",
            h.host_id,
            h.customer,
            h.status,
            ago(now, h.last_seen_unix_ms),
            h.agent_version,
            h.batches,
            h.last_seq,
            h.spool_resets,
            h.dropped_samples + h.dropped_other
        )?;
    }
    if r.hosts.is_empty() {
        let none = if stale.is_some() { "(no host is silent for that long)" } else { "(no hosts have reported yet)" };
        writeln!(out, "{none}")?;
    }
    Ok(out)
}

#[cfg(test)]
mod fault_show_tests {
    use super::*;

    #[test]
    fn fault_show_lists_each_notification_with_its_delivery() {
        let sms = |id: &str, delivery: &str, detail: &str| pb::FaultNotification {
            id: id.into(),
            kind: "alarm".into(),
            channel: "sms".into(),
            to: "+4915100000001".into(),
            delivery: delivery.into(),
            sent_unix_ms: 1_700_000_000_000,
            delivery_unix_ms: if delivery == "sent" { 0 } else { 1_700_000_007_000 },
            detail: detail.into(),
        };
        let f = pb::Fault {
            id: 7,
            notifications: vec![sms("7/1", "delivered", ""), sms("7/2", "not delivered", "not delivered within 2m")],
            ..Default::default()
        };
        let text = render_fault(&f).unwrap();
        let lines: Vec<&str> = text.lines().skip_while(|l| *l != "notifications:").collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[2].contains("7/1") && lines[2].contains("delivered") && lines[2].contains("2023-11-14T22:13:27Z")
        );
        assert!(lines[3].contains("not delivered") && lines[3].ends_with("not delivered within 2m"), "{}", lines[3]);
        let json = fault_json(&f);
        assert_eq!(json["notifications"][1]["delivery"], "not delivered");
        assert_eq!(json["notifications"][0]["detail"], serde_json::Value::Null);
        let none = render_fault(&pb::Fault::default()).unwrap();
        assert!(!none.contains("notifications:"), "a fault without notifications shows no table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standalone_status() -> pb::StatusReply {
        pb::StatusReply {
            collector_version: "0.1.0".into(),
            now_unix_ms: 1_700_000_010_000,
            access: "loopback".into(),
            caller: "alice@local".into(),
            cluster: vec![pb::ClusterNode {
                node: "pikett-1".into(),
                addr: "0.0.0.0:9740".into(),
                role: "standalone".into(),
                last_heartbeat_unix_ms: 1_700_000_008_000,
                version: "0.1.0".into(),
            }],
            leader: "pikett-1".into(),
            term: 1,
            lease_expires_unix_ms: 1_700_000_013_000,
            ..Default::default()
        }
    }

    #[test]
    fn status_shows_the_cluster_with_heartbeat_ages() {
        let out = render_status(&standalone_status(), false).unwrap();
        assert!(out.contains("\nCluster: leader pikett-1, term 1\n"), "{out}");
        let row = out.lines().find(|l| l.starts_with("pikett-1 ")).unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["pikett-1", "standalone", "2s", "ago", "0.1.0", "0.0.0.0:9740"], "{out}");
        let header = out.lines().find(|l| l.starts_with("NODE")).unwrap();
        assert_eq!(header.find("ROLE"), row.find("standalone"), "{out}");
        // No leader, a node that never beat, and a collector that sends no cluster.
        let mut s = standalone_status();
        s.leader.clear();
        s.cluster[0].last_heartbeat_unix_ms = 0;
        let out = render_status(&s, false).unwrap();
        assert!(out.contains("Cluster: no leader (term 1)") && out.contains(" never "), "{out}");
        s.cluster.clear();
        assert!(render_status(&s, false).unwrap().contains("Cluster: not reported"));
    }

    #[test]
    fn status_json_has_the_cluster() {
        let out = render_status(&standalone_status(), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((v["leader"].as_str(), v["term"].as_u64()), (Some("pikett-1"), Some(1)));
        assert_eq!(v["lease_expires"], "2023-11-14T22:13:33Z");
        let node = &v["cluster"][0];
        assert_eq!(node["node"], "pikett-1");
        assert_eq!(node["role"], "standalone");
        assert_eq!(node["addr"], "0.0.0.0:9740");
        assert_eq!(node["version"], "0.1.0");
        assert_eq!(node["last_heartbeat_unix_ms"], 1_700_000_008_000_i64);
        assert_eq!(node["last_heartbeat"], "2023-11-14T22:13:28Z");
    }

    #[test]
    fn status_says_when_the_cluster_is_unavailable() {
        let s = pb::StatusReply {
            hosts_up: 3,
            cluster_error: "cannot read the cluster table: connection refused".into(),
            ..Default::default()
        };
        let out = render_status(&s, false).unwrap();
        assert!(out.contains("hosts:       3 up"), "{out}");
        assert!(out.contains("\nCluster: unavailable (cannot read the cluster table: connection refused)\n"), "{out}");
        assert!(!out.contains("not reported"), "{out}");
        let v: serde_json::Value = serde_json::from_str(render_status(&s, true).unwrap().trim()).unwrap();
        assert_eq!(v["cluster_error"], "cannot read the cluster table: connection refused");
        assert_eq!(v["hosts_up"], 3);
        let v: serde_json::Value =
            serde_json::from_str(render_status(&standalone_status(), true).unwrap().trim()).unwrap();
        assert_eq!(v["cluster_error"], serde_json::Value::Null);
    }

    #[test]
    fn notification_ids_are_shown_whole() {
        let n = |id: &str, channel: &str| pb::FaultNotification {
            id: id.into(),
            kind: "copy".into(),
            channel: channel.into(),
            to: "ops@example.net".into(),
            delivery: "sent".into(),
            ..Default::default()
        };
        let mut out = String::new();
        render_notifications(&mut out, &[n("7/copy/alarm/0/sms", "sms"), n("7/copy/alarm/0/email", "email")]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[2].trim_start().starts_with("7/copy/alarm/0/sms "), "{out}");
        assert!(lines[3].trim_start().starts_with("7/copy/alarm/0/email "), "{out}");
        // The columns stay aligned: KIND starts at the same place in every line.
        let kind_at: Vec<usize> =
            lines[1..].iter().map(|l| l.find("KIND").or_else(|| l.find("copy ")).unwrap()).collect();
        assert!(kind_at.windows(2).all(|w| w[0] == w[1]), "{out}");
    }
}

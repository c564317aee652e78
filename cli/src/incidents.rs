//! The staff CLI's incident commands (`pikett incidents`, `pikett incident show|update|escalate|
//! close|report`): calls to the `Incidents` service and their rendering.

use std::fmt::Write as _;

use pikett_proto::v1 as pb;
use pikett_proto::v1::incidents_client::IncidentsClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::client::{Client, format_time, rpc_error};

fn rpc(client: &Client) -> IncidentsClient<Channel> {
    IncidentsClient::new(client.channel.clone())
}

fn opt_time(ms: i64) -> serde_json::Value {
    if ms == 0 { serde_json::Value::Null } else { json!(format_time(ms)) }
}

fn opt_str(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The JSON line of an incident (`--output json`).
pub fn incident_json(i: &pb::Incident) -> serde_json::Value {
    json!({
        "id": i.id, "customer": i.customer, "hosts": i.hosts, "fault_ids": i.fault_ids,
        "state": i.state, "tag": opt_str(&i.tag), "title": i.title, "scope": i.scope,
        "opened": format_time(i.opened_unix_ms), "closed": opt_time(i.closed_unix_ms),
        "closed_by": opt_str(&i.closed_by),
        "escalated": opt_time(i.escalated_unix_ms), "escalated_by": opt_str(&i.escalated_by),
        "updates": i.updates.iter().map(|u| json!({
            "number": u.number, "text": u.text, "eta": opt_time(u.eta_unix_ms), "who": u.who,
            "at": format_time(u.at_unix_ms), "notified": u.notified,
        })).collect::<Vec<_>>(),
        "root_cause": opt_str(&i.root_cause), "recommendations": opt_str(&i.recommendations),
        "timeline": i.timeline.iter().map(|e| json!({
            "at": format_time(e.at_unix_ms), "who": opt_str(&e.who), "text": e.text,
        })).collect::<Vec<_>>(),
    })
}

fn render(i: &pb::Incident) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "incident {}: {}", i.id, i.title)?;
    writeln!(out, "state:     {}", i.state)?;
    writeln!(out, "customer:  {}", if i.customer.is_empty() { "-" } else { &i.customer })?;
    writeln!(out, "hosts:     {} ({})", i.hosts.join(", "), i.scope)?;
    let faults: Vec<String> = i.fault_ids.iter().map(u64::to_string).collect();
    writeln!(out, "faults:    {}", faults.join(", "))?;
    writeln!(out, "opened:    {}", format_time(i.opened_unix_ms))?;
    if i.escalated_unix_ms != 0 {
        writeln!(out, "escalated: {} by {} {}", format_time(i.escalated_unix_ms), i.escalated_by, i.tag)?;
    }
    if i.closed_unix_ms != 0 {
        let by = if i.closed_by.is_empty() { "pikett (every fault resolved)" } else { &i.closed_by };
        writeln!(out, "closed:    {} by {by}", format_time(i.closed_unix_ms))?;
    }
    if !i.root_cause.is_empty() {
        writeln!(out, "root cause:      {}", i.root_cause)?;
    }
    if !i.recommendations.is_empty() {
        writeln!(out, "recommendations: {}", i.recommendations)?;
    }
    if !i.updates.is_empty() {
        writeln!(out, "status updates:")?;
        for u in &i.updates {
            let eta = if u.eta_unix_ms == 0 { String::new() } else { format!(" (ETA {})", format_time(u.eta_unix_ms)) };
            writeln!(
                out,
                "  {}. {}  [{}] {}{eta} — sent to {} contact(s)",
                u.number,
                format_time(u.at_unix_ms),
                u.who,
                u.text,
                u.notified
            )?;
        }
    }
    writeln!(out, "timeline:")?;
    for e in &i.timeline {
        let who = if e.who.is_empty() { String::new() } else { format!(" [{}]", e.who) };
        writeln!(out, "  {}{who} {}", format_time(e.at_unix_ms), e.text)?;
    }
    Ok(out)
}

fn one(i: &pb::Incident, json: bool) -> anyhow::Result<String> {
    if json { Ok(format!("{}\n", incident_json(i))) } else { render(i) }
}

pub async fn list(client: &mut Client, all: bool, json: bool) -> anyhow::Result<String> {
    let reply = rpc(client).list(client.req(pb::ListIncidentsRequest { all })).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        for i in &reply.incidents {
            writeln!(out, "{}", incident_json(i))?;
        }
        return Ok(out);
    }
    writeln!(out, "{:>5} {:<10} {:<12} {:<20} {:>6}  TITLE", "ID", "STATE", "CUSTOMER", "OPENED", "FAULTS")?;
    for i in &reply.incidents {
        writeln!(
            out,
            "{:>5} {:<10} {:<12} {:<20} {:>6}  {}",
            i.id,
            i.state,
            i.customer,
            format_time(i.opened_unix_ms),
            i.fault_ids.len(),
            i.title
        )?;
    }
    if reply.incidents.is_empty() {
        writeln!(out, "(no {}incidents)", if all { "" } else { "open " })?;
    }
    Ok(out)
}

pub async fn show(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let i = rpc(client).show(client.req(pb::IncidentRequest { id })).await.map_err(rpc_error)?.into_inner();
    one(&i, json)
}

pub async fn update(
    client: &mut Client,
    id: u64,
    text: String,
    eta: Option<jiff::Timestamp>,
    json: bool,
) -> anyhow::Result<String> {
    let r = pb::UpdateIncidentRequest { id, text, eta_unix_ms: eta.map_or(0, |t| t.as_millisecond()) };
    let i = rpc(client).update(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        return one(&i, true);
    }
    let n = i.updates.last().map_or(0, |u| u.notified);
    Ok(format!("incident {id}: status update {} recorded, sent to {n} customer contact(s)\n", i.updates.len()))
}

pub async fn escalate(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let i = rpc(client).escalate(client.req(pb::IncidentRequest { id })).await.map_err(rpc_error)?.into_inner();
    if json {
        return one(&i, true);
    }
    let paged = i.timeline.last().map(|e| e.text.clone()).unwrap_or_default();
    Ok(format!("incident {id} escalated: {}\n{paged}\n", i.title))
}

pub async fn close(
    client: &mut Client,
    id: u64,
    root_cause: Option<String>,
    recommendations: Option<String>,
    json: bool,
) -> anyhow::Result<String> {
    let r = pb::CloseIncidentRequest {
        id,
        root_cause: root_cause.unwrap_or_default(),
        recommendations: recommendations.unwrap_or_default(),
    };
    let i = rpc(client).close(client.req(r)).await.map_err(rpc_error)?.into_inner();
    if json {
        one(&i, true)
    } else if i.closed_by.is_empty() {
        // It had closed by itself (every fault resolved): the root cause was recorded now.
        Ok(format!("incident {id} closed by itself (every fault resolved); root cause and recommendations recorded\n"))
    } else {
        Ok(format!("incident {id} closed by {}\n", i.closed_by))
    }
}

pub async fn report(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let r = rpc(client).report(client.req(pb::IncidentRequest { id })).await.map_err(rpc_error)?.into_inner();
    let credits: Vec<serde_json::Value> = r.credits.iter().map(crate::reports::credit_json).collect();
    if json {
        Ok(format!("{}\n", json!({"id": r.id, "markdown": r.markdown, "credits": credits})))
    } else {
        Ok(r.markdown)
    }
}

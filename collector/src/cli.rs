//! The staff CLI's logic: calls to the admin service and their rendering
//! (tables for people, JSON lines for scripts). `bin/pikett.rs` only parses arguments.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pikett_proto::v1 as pb;
use pikett_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub struct Client {
    admin: AdminClient<Channel>,
}

impl Client {
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("--collector {url}: not a valid URL"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS setup")?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("cannot reach the collector at {url}"))?;
        Ok(Client { admin: AdminClient::new(channel) })
    }
}

fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| "-".into(), |t| t.round(jiff::Unit::Second).map_or(t, |x| x).to_string())
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    let secs = ((now_ms - then_ms).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string() + " ago"
}

pub async fn status(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let s = client.admin.status(pb::StatusRequest {}).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        let faults: serde_json::Map<String, serde_json::Value> =
            s.open_faults.iter().map(|f| (f.severity.clone(), json!(f.count))).collect();
        let oncall: serde_json::Map<String, serde_json::Value> =
            s.on_call.iter().map(|o| (o.role.clone(), json!(o.person))).collect();
        let v = json!({
            "hosts_up": s.hosts_up, "hosts_down": s.hosts_down, "batches_stored": s.batches_stored,
            "open_faults": faults, "on_call": oncall, "collector_version": s.collector_version,
            "time": format_time(s.now_unix_ms),
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
    Ok(out)
}

pub async fn hosts(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let r = client.admin.list_hosts(pb::ListHostsRequest {}).await.map_err(rpc_error)?.into_inner();
    let mut out = String::new();
    if json {
        for h in &r.hosts {
            let v = json!({
                "host_id": h.host_id, "customer": h.customer, "status": h.status,
                "last_seen": format_time(h.last_seen_unix_ms), "first_seen": format_time(h.first_seen_unix_ms),
                "agent_version": h.agent_version, "batches": h.batches, "last_seq": h.last_seq,
                "capabilities": h.capabilities, "dropped_samples": h.dropped_samples,
            });
            writeln!(out, "{v}")?;
        }
        return Ok(out);
    }
    let now = jiff::Timestamp::now().as_millisecond();
    writeln!(
        out,
        "{:<24} {:<12} {:<6} {:<22} {:<8} {:>9} {:>9}",
        "HOST", "CUSTOMER", "STATUS", "LAST SEEN", "AGENT", "BATCHES", "LAST SEQ"
    )?;
    for h in &r.hosts {
        writeln!(
            out,
            "{:<24} {:<12} {:<6} {:<22} {:<8} {:>9} {:>9}",
            h.host_id,
            h.customer,
            h.status,
            ago(now, h.last_seen_unix_ms),
            h.agent_version,
            h.batches,
            h.last_seq
        )?;
    }
    if r.hosts.is_empty() {
        writeln!(out, "(no hosts have reported yet)")?;
    }
    Ok(out)
}

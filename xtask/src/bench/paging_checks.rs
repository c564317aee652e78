//! The paging-latency and the checks-footprint benchmarks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use tokio::sync::mpsc;

use super::{percentile, start_collector};
use crate::util::{Killed, build, proc_usage};

/// Requests a receiver got: arrival time and body.
type Arrivals = Arc<Mutex<Vec<(Instant, String)>>>;

/// An HTTP receiver standing in for the SMS gateway: arrival time per request body.
fn sms_receiver() -> anyhow::Result<(u16, Arrivals)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let got: Arrivals = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let Ok(clone) = stream.try_clone() else { return };
                let mut r = BufReader::new(clone);
                let mut line = String::new();
                let mut len = 0usize;
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                g.lock().expect("lock").push((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            });
        }
    });
    Ok((port, got))
}

/// Simulated agents send CRITICAL results of distinct checks (`for = 1`: each opens a
/// fault at once); the time from sending the batch to the SMS request reaching the
/// gateway bounds "fault opened → first notification".
pub fn paging(faults: usize) -> anyhow::Result<()> {
    let bin = build("release")?;
    let (sms_port, got) = sms_receiver()?;
    let extra = format!(
        r#"
[faults]
for = 1
[people.alice]
sms = "+4915100000001"
email = "alice@example.net"
rules = [ {{ channel = "sms" }} ]
[[rotations]]
role = "primary"
members = ["alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"
[channels.sms]
gateways = ["http://127.0.0.1:{sms_port}/send"]
body = '{{"to": "{{{{to}}}}", "text": "{{{{text}}}}"}}'
"#
    );
    let (collector, port, _dir) = start_collector(&bin, "paging", &extra)?;
    let pid = collector.0.id();
    let agents = 10usize;
    let per_agent = faults.div_ceil(agents);
    println!(
        "bench paging: {} faults from {agents} agents, one every 50 ms per agent; collector pid {pid}",
        per_agent * agents
    );
    let rt = tokio::runtime::Runtime::new()?;
    let sent: HashMap<String, Instant> = rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..agents {
            let url = format!("http://127.0.0.1:{port}");
            tasks.push(tokio::spawn(async move {
                let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
                let (tx, rx) = mpsc::channel::<pb::AgentMessage>(16);
                let host = format!("page-host-{a:02}");
                tx.send(pb::AgentMessage {
                    body: Some(pb::agent_message::Body::Hello(pb::Hello {
                        protocol_version: pikett_proto::PROTOCOL_VERSION,
                        host_id: host.clone(),
                        customer: "bench".into(),
                        agent_version: "bench".into(),
                        capabilities: vec![],
                        min_interval_ms: 600_000,
                        spool_epoch: 1,
                    })),
                })
                .await?;
                let mut inbound = IngestClient::new(channel)
                    .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                inbound.message().await?;
                tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
                let mut sent = Vec::new();
                for i in 0..per_agent {
                    let check = format!("bench/{host}-check-{i:04}");
                    let now = jiff::Timestamp::now().as_millisecond();
                    let batch = pb::Batch {
                        seq: i as u64 + 1,
                        created_unix_ms: now,
                        checks: vec![pb::CheckResult::new(
                            check.clone(),
                            pb::CheckStatus::Critical,
                            "CRITICAL - bench".into(),
                            now,
                        )],
                        ..Default::default()
                    };
                    sent.push((check, Instant::now()));
                    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(batch)) }).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
                anyhow::Ok(sent)
            }));
        }
        let mut all = HashMap::new();
        for t in tasks {
            match t.await {
                Ok(Ok(v)) => all.extend(v),
                Ok(Err(e)) => eprintln!("agent failed: {e:#}"),
                Err(e) => eprintln!("agent task failed: {e}"),
            }
        }
        all
    });
    let got = got.lock().expect("lock").clone();
    let mut lat = Vec::new();
    for (check, t0) in &sent {
        if let Some((t1, _)) = got.iter().filter(|(_, body)| body.contains(check.as_str())).min_by_key(|(t, _)| *t) {
            lat.push(t1.duration_since(*t0).as_micros() as u64);
        }
    }
    lat.sort_unstable();
    let (peak, _, cpu) = proc_usage(pid)?;
    println!("faults sent:             {}", sent.len());
    println!("first SMS received for:  {}", lat.len());
    println!(
        "fault → SMS latency:     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("collector peak RSS:      {:.1} MiB, CPU {cpu:.1} s", peak as f64 / 1024.0);
    if lat.len() < sent.len() {
        bail!("{} faults were never paged", sent.len() - lat.len());
    }
    Ok(())
}

/// One release agent with `tcp` checks against a local listener and `command`
/// checks running a real plugin, every 10 s.
pub fn checks(tcp: usize, command: usize, seconds: u64) -> anyhow::Result<()> {
    let plugin = "/usr/lib/nagios/plugins/check_dummy";
    if !std::path::Path::new(plugin).exists() {
        bail!("{plugin} is missing: apt-get install monitoring-plugins-basic");
    }
    let bin = build("release")?;
    let (_collector, port, dir) = start_collector(&bin, "checks", "")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let target = listener.local_addr()?;
    std::thread::spawn(move || for _ in listener.incoming() {});
    let mut cfg = format!(
        "host_id = \"bench-checks\"\ncollectors = [\"http://127.0.0.1:{port}\"]\nspool_dir = \"{}\"\n\n[host]\ninterval = \"30s\"\n",
        dir.join("spool").display()
    );
    for i in 0..tcp {
        cfg +=
            &format!("\n[[checks]]\nname = \"tcp-{i}\"\nkind = \"tcp\"\naddress = \"{target}\"\ninterval = \"10s\"\n");
    }
    for i in 0..command {
        cfg += &format!(
            "\n[[checks]]\nname = \"cmd-{i}\"\nkind = \"command\"\ncommand = [\"{plugin}\", \"0\", \"fine|v={i}\"]\ninterval = \"10s\"\n"
        );
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg)?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let agent = Killed(
        Command::new(bin.join("pikett-agent"))
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::from(log))
            .spawn()?,
    );
    let pid = agent.0.id();
    println!("bench checks: {tcp} tcp + {command} command checks every 10 s for {seconds} s, agent pid {pid}");
    std::thread::sleep(Duration::from_secs(10));
    let (_, _, cpu0) = proc_usage(pid)?;
    let measured = seconds.saturating_sub(10).max(10);
    std::thread::sleep(Duration::from_secs(measured));
    let (peak, rss, cpu1) = proc_usage(pid)?;
    println!("agent RSS:               {:.1} MiB now, {:.1} MiB peak", rss as f64 / 1024.0, peak as f64 / 1024.0);
    println!(
        "agent CPU per minute:    {:.2} s (steady state; plugin processes not included)",
        (cpu1 - cpu0) / measured as f64 * 60.0
    );
    // Children's CPU (the plugins) is accounted to the agent once they are reaped.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let children = (f.get(13).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(14).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    println!("plugins' CPU (children): {children:.2} s over the whole run ({seconds} s)");
    Ok(())
}

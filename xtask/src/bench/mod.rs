//! Benchmarks that start the real release binaries and print figures for BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod paging_checks;
mod soak;

use anyhow::{Context, bail};
use clap::Subcommand;
use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use tokio::sync::mpsc;

use crate::util::{Killed, build, free_port, proc_usage, target_dir, wait_port};

#[derive(Subcommand)]
pub enum Which {
    /// Many simulated agents streaming to a release collector on loopback.
    Ingest {
        /// Concurrent agent streams (one connection each).
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        /// Samples per batch.
        #[arg(long, default_value_t = 100)]
        samples: usize,
        /// Milliseconds between two batches of one agent.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Measured seconds (after every agent is connected).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Collector-side `[[rules]]` on the samples (the fault engine always runs).
        #[arg(long, default_value_t = 5)]
        rules: usize,
        /// The collector's `store_fsync` (fdatasync after every group commit).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        fsync: bool,
    },
    /// Fault opened → first SMS request received, over many faults.
    Paging {
        #[arg(long, default_value_t = 1000)]
        faults: usize,
    },
    /// One agent with many `tcp` and `command` checks: RSS and CPU seconds per minute.
    Checks {
        #[arg(long, default_value_t = 200)]
        tcp: usize,
        #[arg(long, default_value_t = 50)]
        command: usize,
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Hours of traffic compressed into minutes with short retention: the data directory's
    /// size and the collector's RSS over time, which must level off.
    Soak(soak::Args),
    /// A release agent with the host probe at 30 s: RSS and CPU seconds per hour.
    Agent {
        #[arg(long, default_value_t = 180)]
        seconds: u64,
    },
}

pub fn run(which: Which) -> anyhow::Result<()> {
    raise_nofile();
    match which {
        Which::Ingest { agents, samples, interval_ms, seconds, rules, fsync } => {
            ingest(agents, samples, interval_ms, seconds, rules, fsync)
        }
        Which::Agent { seconds } => agent(seconds),
        Which::Soak(args) => soak::soak(args),
        Which::Paging { faults } => paging_checks::paging(faults),
        Which::Checks { tcp, command, seconds } => paging_checks::checks(tcp, command, seconds),
    }
}

/// Thousands of connections need more than the usual 1024 descriptors.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub(crate) fn start_collector(
    bin: &std::path::Path,
    name: &str,
    extra_config: &str,
) -> anyhow::Result<(Killed, u16, std::path::PathBuf)> {
    start_collector_http(bin, name, extra_config).map(|(c, grpc, _, dir)| (c, grpc, dir))
}

/// [`start_collector`], also returning the HTTP (`/metrics`) port.
pub(crate) fn start_collector_http(
    bin: &std::path::Path,
    name: &str,
    extra_config: &str,
) -> anyhow::Result<(Killed, u16, u16, std::path::PathBuf)> {
    let dir = target_dir().join("bench").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (grpc, http) = (free_port()?, free_port()?);
    let cfg = dir.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\ndata_dir = \"{}\"\n{extra_config}\n",
            dir.join("data").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("collector.log"))?;
    let child = Command::new(bin.join("pikett-collector"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting pikett-collector")?;
    wait_port(grpc, Duration::from_secs(10))?;
    Ok((Killed(child), grpc, http, dir))
}

fn batch(seq: u64, samples: usize) -> pb::Batch {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    pb::Batch {
        seq,
        created_unix_ms: now,
        samples: (0..samples)
            .map(|i| pb::Sample {
                name: "pikett_redfish_temperature_celsius".into(),
                labels: [("sensor".to_string(), format!("Sensor {i}"))].into_iter().collect(),
                value: 40.0 + (i % 7) as f64,
                unit: "Cel".into(),
                time_unix_ms: now,
            })
            .collect(),
        checks: vec![pb::CheckResult::new("host/disk:/".into(), pb::CheckStatus::Ok, "ok".into(), now)],
        ..Default::default()
    }
}

struct AgentStats {
    acked: u64,
    latencies_us: Vec<u64>,
}

/// A simulated agent's stream: connected, hello sent as `host_id` of `customer` with spool
/// `epoch`, welcome received. Returns the sender for batches and the collector's answers.
pub(crate) async fn connect_agent(
    url: String,
    host_id: String,
    customer: &str,
    min_interval: Duration,
    epoch: u64,
) -> anyhow::Result<(mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::CollectorMessage>)> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            protocol_version: pikett_proto::PROTOCOL_VERSION,
            host_id,
            customer: customer.into(),
            agent_version: "bench".into(),
            capabilities: vec!["host".into()],
            min_interval_ms: min_interval.as_millis() as u64,
            spool_epoch: epoch,
        })),
    })
    .await?;
    let mut inbound =
        IngestClient::new(channel).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?; // welcome
    Ok((tx, inbound))
}

/// One simulated agent: connect, hello, then a batch every interval; ack latency per batch.
async fn simulated_agent(
    url: String,
    id: usize,
    samples: usize,
    interval: Duration,
    start_at: Instant,
    measure: (Instant, Instant),
) -> anyhow::Result<AgentStats> {
    let (tx, mut inbound) = connect_agent(url, format!("bench-{id:05}"), "bench", interval, id as u64 + 1).await?;
    tokio::time::sleep_until(start_at.into()).await;
    let sent: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut seq = 0;
            loop {
                tick.tick().await;
                if Instant::now() >= measure.1 {
                    break;
                }
                seq += 1;
                let b = batch(seq, samples);
                sent.lock().expect("lock").insert(seq, Instant::now());
                if tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(b)) }).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut stats = AgentStats { acked: 0, latencies_us: Vec::new() };
    let deadline = measure.1 + Duration::from_secs(5);
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(deadline.into(), inbound.message()).await {
        if let Some(pb::collector_message::Body::Ack(ack)) = msg.body
            && let Some(t) = sent.lock().expect("lock").remove(&ack.seq)
        {
            let now = Instant::now();
            if t >= measure.0 && t < measure.1 {
                stats.acked += 1;
                stats.latencies_us.push(now.duration_since(t).as_micros() as u64);
            }
        }
        if Instant::now() >= measure.1 && sent.lock().expect("lock").is_empty() {
            break;
        }
    }
    sender.abort();
    Ok(stats)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn ingest(
    agents: usize,
    samples: usize,
    interval_ms: u64,
    seconds: u64,
    rules: usize,
    fsync: bool,
) -> anyhow::Result<()> {
    let bin = build("release")?;
    // Rules that look at every sample of the benchmark (none fires: values stay below).
    let rules_toml: String = (0..rules)
        .map(|i| {
            format!(
                "[[rules]]\nname = \"hot-{i}\"\nmetric = \"pikett_redfish_temperature_celsius\"\nop = \">\"\nthreshold = {}\nfor = \"1m\"\n",
                90 + i
            )
        })
        .collect();
    let config = format!("store_fsync = {fsync}\n{rules_toml}");
    let (collector, port, _dir) = start_collector(&bin, "ingest", &config)?;
    let pid = collector.0.id();
    let url = format!("http://127.0.0.1:{port}");
    let interval = Duration::from_millis(interval_ms);
    println!(
        "bench ingest: {agents} agents × {samples} samples every {interval_ms} ms, {rules} rules, store_fsync {fsync}, {seconds} s measured, collector pid {pid}"
    );
    let rt = tokio::runtime::Runtime::new()?;
    let (stats, elapsed) = rt.block_on(async {
        // Connect everyone first (warm-up), then start sending staggered over one interval.
        let connect_budget = Duration::from_secs(20 + agents as u64 / 100);
        let start_at = Instant::now() + connect_budget;
        let measure = (start_at + Duration::from_secs(2), start_at + Duration::from_secs(2 + seconds));
        let mut tasks = Vec::new();
        for id in 0..agents {
            let stagger = interval.mul_f64(id as f64 / agents as f64);
            tasks.push(tokio::spawn(simulated_agent(url.clone(), id, samples, interval, start_at + stagger, measure)));
        }
        let mut all = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => all.push(s),
                Ok(Err(e)) => eprintln!("agent failed: {e:#}"),
                Err(e) => eprintln!("agent task failed: {e}"),
            }
        }
        (all, measure.1 - measure.0)
    });
    let (peak_kib, _, cpu) = proc_usage(pid)?;
    let connected = stats.len();
    if connected == 0 {
        bail!("no simulated agent could connect");
    }
    let acked: u64 = stats.iter().map(|s| s.acked).sum();
    let mut lat: Vec<u64> = stats.into_iter().flat_map(|s| s.latencies_us).collect();
    lat.sort_unstable();
    let secs = elapsed.as_secs_f64();
    println!("agents connected:        {connected}/{agents}");
    println!("batches acked:           {acked} in {secs:.1} s = {:.0} batches/s", acked as f64 / secs);
    println!("samples acked (durable): {:.0} samples/s", acked as f64 * samples as f64 / secs);
    println!(
        "ack latency:             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("collector peak RSS:      {:.1} MiB", peak_kib as f64 / 1024.0);
    println!("collector CPU:           {cpu:.1} s over the whole run");
    Ok(())
}

fn agent(seconds: u64) -> anyhow::Result<()> {
    let bin = build("release")?;
    let (_collector, port, dir) = start_collector(&bin, "agent", "")?;
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"bench-agent\"\ncollectors = [\"http://127.0.0.1:{port}\"]\nspool_dir = \"{}\"\n\n[host]\ninterval = \"30s\"\n",
            dir.join("spool").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let agent = Killed(
        Command::new(bin.join("pikett-agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::from(log))
            .spawn()?,
    );
    let pid = agent.0.id();
    println!("bench agent: host probe every 30 s for {seconds} s, agent pid {pid}");
    std::thread::sleep(Duration::from_secs(10));
    let (_, _, cpu_start) = proc_usage(pid)?;
    std::thread::sleep(Duration::from_secs(seconds.saturating_sub(10).max(1)));
    let (peak, rss, cpu_end) = proc_usage(pid)?;
    let steady = (cpu_end - cpu_start) / (seconds.saturating_sub(10).max(1)) as f64 * 3600.0;
    println!("agent RSS:               {:.1} MiB now, {:.1} MiB peak", rss as f64 / 1024.0, peak as f64 / 1024.0);
    println!("agent CPU:               {cpu_end:.2} s in {seconds} s (incl. start-up)");
    println!("agent CPU per hour:      {steady:.2} s (steady state, after the first 10 s)");
    Ok(())
}

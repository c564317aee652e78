//! `cargo xtask bench soak`: simulated agents stream to a release collector with retention
//! settings of minutes, so that hours of traffic pass in minutes. Every `--report-every` it
//! prints the data directory's size on disk, what the store holds and the collector's RSS;
//! at the end it compares the last third of the run with the middle: a collector that
//! prunes and reuses its disk levels off, one that does not grows linearly.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use pikett_proto::v1 as pb;

use super::load::connect_agent;
use super::start_collector_http;
use crate::util::{build, proc_usage};

#[derive(clap::Args)]
pub struct Args {
    /// Length of the run in minutes.
    #[arg(long, default_value_t = 12)]
    minutes: u64,
    /// Simulated agents (one stream each).
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Samples per batch.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Check results per batch (one of them flaps: CRITICAL for 20 s every 3 minutes).
    #[arg(long, default_value_t = 10)]
    checks: usize,
    /// Milliseconds between two batches of one agent.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// `[retention] batches` for the run.
    #[arg(long, default_value = "3m")]
    batches_retention: String,
    /// `[retention] faults` (and audit, outbox `keep_done`) for the run.
    #[arg(long, default_value = "4m")]
    faults_retention: String,
    /// The collector's `store_cache_bytes`, in MiB.
    #[arg(long, default_value_t = 64)]
    store_cache_mib: u64,
    /// Measure the packaged build (static musl, `dist` profile, as `cargo xtask rpm` makes
    /// it) instead of a glibc release build.
    #[arg(long)]
    musl: bool,
    /// Seconds between two rows of the table.
    #[arg(long, default_value_t = 60)]
    report_every: u64,
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du`).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() { disk_usage(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

/// The value of the first `/metrics` line starting with `name` (labels included).
fn scrape(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(f64::NAN)
}

fn get_metrics(port: u16) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// One batch of agent `id`: `samples` gauges that change a little, `checks` results of
/// which `bench/flap` is CRITICAL for 20 s in every 3 minutes (staggered over the agents).
fn batch(id: usize, seq: u64, samples: usize, checks: usize) -> pb::Batch {
    let now = jiff::Timestamp::now().as_millisecond();
    let phase = ((now / 1000) as usize + id * 7) % 180;
    let checks = (0..checks)
        .map(|i| {
            let (name, state) = if i == 0 {
                ("bench/flap".to_string(), if phase < 20 { pb::CheckStatus::Critical } else { pb::CheckStatus::Ok })
            } else {
                (format!("bench/check-{i}"), pb::CheckStatus::Ok)
            };
            pb::CheckResult::new(name, state, "soak".into(), now)
        })
        .collect();
    pb::Batch {
        seq,
        created_unix_ms: now,
        samples: (0..samples)
            .map(|i| pb::Sample {
                name: "pikett_redfish_temperature_celsius".into(),
                labels: [("sensor".to_string(), format!("Sensor {i}"))].into_iter().collect(),
                value: 40.0 + ((seq as usize + i) % 7) as f64,
                unit: "Cel".into(),
                time_unix_ms: now,
            })
            .collect(),
        checks,
        ..Default::default()
    }
}

/// One simulated agent until `end`: a batch every interval, acks read and counted.
async fn agent(
    url: String,
    id: (usize, usize),
    a: (usize, usize, Duration),
    start: Instant,
    end: Instant,
) -> anyhow::Result<u64> {
    let ((id, agents), (samples, checks, interval)) = (id, a);
    let (tx, mut inbound) = connect_agent(url, None, format!("soak-{id:05}"), "soak", interval, id as u64 + 1).await?;
    let acks = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(msg)) = inbound.message().await {
            if matches!(msg.body, Some(pb::collector_message::Body::Ack(_))) {
                n += 1;
            }
        }
        n
    });
    tokio::time::sleep_until((start + interval.mul_f64(id as f64 / agents as f64)).into()).await;
    let mut tick = tokio::time::interval(interval);
    let mut seq = 0;
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        let msg = pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(batch(id, seq, samples, checks))) };
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    drop(tx);
    Ok(tokio::time::timeout(Duration::from_secs(30), acks).await.ok().and_then(Result::ok).unwrap_or(0))
}

pub fn soak(a: Args) -> anyhow::Result<()> {
    let bin = if a.musl {
        crate::rpm::preflight()?;
        crate::rpm::build()?
    } else {
        build("release")?
    };
    let config = format!(
        "store_cache_bytes = {}\n[faults]\nfor = 1\n[outbox]\nkeep_done = \"{f}\"\n[retention]\nbatches = \"{b}\"\nfaults = \"{f}\"\naudit = \"{f}\"\nprune_every = \"10s\"\n",
        a.store_cache_mib << 20,
        b = a.batches_retention,
        f = a.faults_retention
    );
    let (collector, port, http, dir) = start_collector_http(&bin, "soak", &config)?;
    let pid = collector.0.id();
    let data = dir.join("data");
    let rate = a.agents as f64 * a.samples as f64 * 1000.0 / a.interval_ms as f64;
    println!(
        "bench soak: {} agents × {} samples + {} checks every {} ms ({rate:.0} samples/s) for {} min; \
         retention: batches {}, faults {}; {} build; collector pid {pid}",
        a.agents,
        a.samples,
        a.checks,
        a.interval_ms,
        a.minutes,
        a.batches_retention,
        a.faults_retention,
        if a.musl { "musl (packaged)" } else { "glibc release" }
    );
    let start = Instant::now() + Duration::from_secs(5);
    let end = start + Duration::from_secs(a.minutes * 60);
    let rt = tokio::runtime::Runtime::new()?;
    let url = format!("http://127.0.0.1:{port}");
    let agents: Vec<_> = (0..a.agents)
        .map(|id| {
            rt.spawn(agent(
                url.clone(),
                (id, a.agents),
                (a.samples, a.checks, Duration::from_millis(a.interval_ms)),
                start,
                end,
            ))
        })
        .collect();

    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "min", "samples", "data dir", "index", "files", "batches", "faults", "escal.", "inc.", "RSS", "CPU s"
    );
    let mut rows: Vec<(f64, f64, f64)> = Vec::new();
    std::thread::sleep(Duration::from_secs(5));
    let t0 = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(a.report_every).min(end.saturating_duration_since(Instant::now())));
        let m = get_metrics(http).context("scraping /metrics")?;
        let (_, rss, cpu) = proc_usage(pid)?;
        let disk = disk_usage(&data) as f64 / 1048576.0;
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        let rss_mib = rss as f64 / 1024.0;
        println!(
            "{minutes:>6.1} {:>12.0} {:>8.1} MiB {:>6.1} MiB {:>6.1} MiB {:>10} {:>8} {:>8} {:>8} {:>5.1} MiB {cpu:>8.1}",
            scrape(&m, "pikett_ingest_samples_total"),
            disk,
            scrape(&m, "pikett_store_size_bytes{part=\"index\"}") / 1048576.0,
            scrape(&m, "pikett_store_size_bytes{part=\"batch_files\"}") / 1048576.0,
            scrape(&m, "pikett_store_records{tree=\"batches\"}"),
            scrape(&m, "pikett_store_records{tree=\"faults\"}"),
            scrape(&m, "pikett_store_records{tree=\"escalations\"}"),
            scrape(&m, "pikett_store_records{tree=\"incidents\"}"),
            rss_mib,
        );
        rows.push((minutes, disk, rss_mib));
    }
    let acked: u64 = agents.into_iter().map(|h| rt.block_on(h).ok().and_then(Result::ok).unwrap_or(0)).sum();
    println!("batches acked: {acked}");
    let m = get_metrics(http)?;
    let stored = scrape(&m, "pikett_store_size_bytes{part=\"index\"}")
        + scrape(&m, "pikett_store_size_bytes{part=\"batch_files\"}");
    let batches = scrape(&m, "pikett_store_records{tree=\"batches\"}");
    println!(
        "store at the end: {:.1} MiB for {batches} batches = {:.0} bytes per batch ({} samples + {} checks)",
        stored / 1048576.0,
        stored / batches,
        a.samples,
        a.checks
    );
    for what in ["batches", "faults", "escalations", "incidents", "outbox"] {
        println!(
            "removed by retention: {what:<12} {}",
            scrape(&m, &format!("pikett_retention_removed_total{{what=\"{what}\"}}"))
        );
    }
    if rows.len() >= 3 {
        let (mid, last) = (rows[rows.len() * 2 / 3 - 1], rows[rows.len() - 1]);
        let per_min = (last.1 - mid.1) / (last.0 - mid.0).max(0.1);
        println!(
            "last third: data dir {:.1} → {:.1} MiB ({per_min:+.2} MiB/min), RSS {:.1} → {:.1} MiB",
            mid.1, last.1, mid.2, last.2
        );
    }
    Ok(())
}

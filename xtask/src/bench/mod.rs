//! Benchmarks that start the real release binaries and print figures for BENCHMARKS.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod agent_footprint;
mod compare;
mod failover;
mod load;
mod paging_checks;
mod pg;
mod pki;
mod prom_target;
mod series;
mod soak;

use anyhow::{Context, bail};
use clap::Subcommand;

use load::{BatchKind, Load, LoadResult, connect_all, drive};

use crate::util::{Killed, build, free_port, proc_usage, target_dir, wait_port};

#[derive(Subcommand)]
pub enum Which {
    /// Many simulated agents streaming to a release collector on loopback (or to several
    /// sharing a throwaway PostgreSQL: `--store postgres --collectors N`).
    Ingest(IngestArgs),
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
    /// The shipped agent build and a release build (host probe and five `tcp` checks every 30 s) next to Debian's
    /// prometheus-node-exporter scraped every 30 s: RSS and CPU seconds per hour of each.
    Agent {
        #[arg(long, default_value_t = 180)]
        seconds: u64,
    },
    /// The release collector and Prometheus at the same sample rate, one after the other in
    /// one run: CPU per sample, RSS, bytes on disk per sample.
    Compare(compare::Args),
    /// Collectors sharing a throwaway PostgreSQL: the leader is killed (SIGKILL) again and
    /// again; the time until another node leads (`/healthz/leader` answers 200).
    Failover(failover::Args),
}

#[derive(clap::Args)]
pub struct IngestArgs {
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
    /// The collector's `store_fsync` (fdatasync after every group commit; sled only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fsync: bool,
    /// The collectors' store: sled in their data directory, or one throwaway PostgreSQL 15
    /// (fsync and synchronous_commit on) shared by all of them.
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    store: StoreKind,
    /// Collectors sharing the PostgreSQL database (node_id c1..cN); the agents are split
    /// evenly across them. Only with `--store postgres`.
    #[arg(long, default_value_t = 1)]
    collectors: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sled,
    Postgres,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    raise_nofile();
    match which {
        Which::Ingest(args) => ingest(args),
        Which::Failover(args) => failover::failover(args),
        Which::Agent { seconds } => agent_footprint::agent(seconds),
        Which::Compare(args) => compare::compare(args),
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

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let IngestArgs { agents, samples, interval_ms, seconds, rules, fsync, store, collectors } = args;
    if collectors == 0 || (store == StoreKind::Sled && collectors != 1) {
        bail!("--collectors: 1 with sled (its own store each), 1 or more with --store postgres");
    }
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
    // Declared before the collectors, so it is dropped (stopped) after them.
    let pg = match store {
        StoreKind::Sled => None,
        StoreKind::Postgres => Some(pg::BenchPg::start()?),
    };
    let mut nodes = Vec::new();
    for i in 1..=collectors {
        let (name, config) = match &pg {
            None => ("ingest".to_string(), format!("store_fsync = {fsync}\n{rules_toml}")),
            Some(pg) => (format!("ingest-pg-c{i}"), format!("{rules_toml}{}", pg.store_toml(&format!("c{i}"), ""))),
        };
        let (collector, port, _dir) = start_collector(&bin, &name, &config)?;
        nodes.push((collector, port));
    }
    let pids: Vec<u32> = nodes.iter().map(|(c, _)| c.0.id()).collect();
    let url = nodes.iter().map(|(_, port)| format!("http://127.0.0.1:{port}")).collect::<Vec<_>>().join(" ");
    let interval = Duration::from_millis(interval_ms);
    let store_text = match &pg {
        None => format!("sled, store_fsync {fsync}"),
        Some(_) => format!(
            "{collectors} collector(s) on one PostgreSQL 15 (fsync=on, synchronous_commit=on: acks after a durable COMMIT)"
        ),
    };
    println!(
        "bench ingest: {agents} agents × {samples} samples every {interval_ms} ms, {rules} rules, {store_text}, {seconds} s measured, collector pid(s) {pids:?}"
    );
    let db_cpu_before = pg.as_ref().map(|pg| pg.cpu_seconds()).transpose()?;
    let load = Load { url, agents, samples, interval, kind: BatchKind::Sensors, pki: None };
    let rt = tokio::runtime::Runtime::new()?;
    let (result, elapsed) = rt.block_on(async {
        // Connect everyone first, then start sending staggered over one interval; 2 s of
        // warm-up before the measured window.
        let streams = connect_all(&load).await;
        let start_at = Instant::now() + Duration::from_secs(1);
        let measure = (start_at + Duration::from_secs(2), start_at + Duration::from_secs(2 + seconds));
        (drive(&load, streams, start_at, measure).await, measure.1 - measure.0)
    });
    let usage = pids.iter().map(|&pid| proc_usage(pid)).collect::<anyhow::Result<Vec<_>>>()?;
    let db_cpu = match (&pg, db_cpu_before) {
        (Some(pg), Some(before)) => Some(pg.cpu_seconds()? - before),
        _ => None,
    };
    let LoadResult { connected, acked_batches: acked, latencies_us: lat } = result;
    if connected == 0 {
        bail!("no simulated agent could connect");
    }
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
    for (i, (peak_kib, _, cpu)) in usage.iter().enumerate() {
        let who = if pg.is_some() { format!("collector c{}", i + 1) } else { "collector".to_string() };
        println!("{who:<13} peak RSS {:.1} MiB, CPU {cpu:.1} s over the whole run", *peak_kib as f64 / 1024.0);
    }
    if let Some(db_cpu) = db_cpu {
        println!(
            "PostgreSQL CPU:          {db_cpu:.1} s from the agents' connect to the last ack (all processes of the cluster)"
        );
    }
    Ok(())
}

/// Makes sure a Debian package is installed (`file` is one it provides): installs it with
/// apt-get when running as root, else says what to install.
pub(crate) fn ensure_package(package: &str, file: &str) -> anyhow::Result<()> {
    if Path::new(file).exists() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{file} is missing: install Debian's {package} (as root: apt-get install {package})");
    }
    println!("bench: installing {package} (apt-get)");
    // Another apt run may hold the dpkg lock for a while: wait for it rather than fail.
    const LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";
    let apt = |args: &[&str]| -> anyhow::Result<bool> {
        Ok(Command::new("apt-get")
            .args(["-o", LOCK_WAIT])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (is this Debian?)")?
            .success())
    };
    let install = || apt(&["install", "-y", "-qq", "--no-install-recommends", package]);
    // The package lists may be missing or stale: update them only when the install fails.
    let installed = install()? || (apt(&["update", "-qq"])? && install()?);
    if !installed {
        bail!("apt-get install {package} failed; install it by hand");
    }
    if !Path::new(file).exists() {
        bail!("{package} is installed but {file} is still missing");
    }
    Ok(())
}

/// GET over plain HTTP/1.1 on loopback: the body, or an error unless the status is 200.
pub(crate) fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to :{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).with_context(|| format!("reading GET :{port}{path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        bail!("GET :{port}{path}: {}", head.lines().next().unwrap_or("no answer"));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The sum of a metric's series in a text exposition (all label sets).
pub(crate) fn metric_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        // The value follows the labels (which may hold spaces in quoted values).
        let value = rest.rsplit_once('}').map_or(rest, |(_, v)| v).split_whitespace().next();
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

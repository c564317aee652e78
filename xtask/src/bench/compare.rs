//! `cargo xtask bench compare`: the release collector and Prometheus at the same sample
//! rate, one after the other in one run, each measured over a steady window after warm-up:
//! CPU per sample (utime+stime over the window), RSS, bytes on disk per sample, the rate
//! achieved by its own counters, and the collector's ack latency.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::load::{BatchKind, Load, connect_all, drive};
use super::pki::BenchPki;
use super::{ensure_package, http_get, metric_sum, percentile, prom_target, start_collector_http};
use crate::util::{Killed, build, free_port, proc_usage, target_dir};

const PROMETHEUS: &str = "/usr/bin/prometheus";

#[derive(clap::Args)]
pub struct Args {
    /// Samples per second, for each side.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Measured seconds per side.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Simulated agents talk to the collector over TLS with client certificates, as in
    /// production (`--tls false` for plaintext).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    tls: bool,
    /// Measure the collector only (for rates Prometheus is not run at).
    #[arg(long)]
    collector_only: bool,
    /// Run the `pikett-collector` in this directory instead of building the tree's release
    /// build (to compare two builds on the same machine in one sitting).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
    /// Samples in each simulated agent's batch (one batch per agent and second, so
    /// `rate / samples_per_batch` agents). 100 is a host probe's round; 1000 gives the
    /// collector requests as large as Prometheus' scrapes of 1,000 series.
    #[arg(long, default_value_t = 100)]
    samples_per_batch: u64,
    /// A line added to the collector's configuration, e.g. `--collector-toml
    /// 'store_commit_window = "20ms"'` (repeatable; top-level keys only).
    #[arg(long)]
    collector_toml: Vec<String>,
    /// Rounds of both sides, alternating (collector, Prometheus, collector, …), each on a
    /// fresh data directory: the table shows each side's median round by CPU per sample,
    /// so a spell of load on the machine weighs on both sides alike.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

pub fn compare(args: Args) -> anyhow::Result<()> {
    if args.rate == 0 || args.seconds == 0 || args.samples_per_batch == 0 || args.rounds == 0 {
        bail!("--rate, --seconds, --samples-per-batch and --rounds must be positive");
    }
    if !args.collector_only {
        ensure_package("prometheus", PROMETHEUS)?;
    }
    let bin = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => build("release")?,
    };
    let (mut collector, mut prometheus) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        collector.push(collector_side(&bin, &args)?);
        if !args.collector_only {
            prometheus.push(prometheus_side(&args)?);
        }
    }
    if args.rounds > 1 {
        println!();
        println!("µs CPU per sample by round (collector / Prometheus):");
        for (i, c) in collector.iter().enumerate() {
            let p = prometheus.get(i).map_or(String::new(), |p| format!(" / {:.2}", p.us_per_sample()));
            println!("  round {}: {:.2}{p}", i + 1, c.us_per_sample());
        }
    }
    print_table(&args, median(&collector), (!prometheus.is_empty()).then(|| median(&prometheus)));
    Ok(())
}

/// The side's round with the median CPU per sample (the lower middle of an even count).
fn median(rounds: &[Side]) -> &Side {
    let mut sorted: Vec<&Side> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.us_per_sample().total_cmp(&b.us_per_sample()));
    sorted[(sorted.len() - 1) / 2]
}

/// What one side did over its measured window.
struct Side {
    name: String,
    window_s: f64,
    cpu_s: f64,
    samples: f64,
    /// The time between the two reads of the sample counter (about the window).
    samples_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Growth of the data directory over the window: allocated blocks, apparent size.
    disk_growth: (i64, i64),
    load: (String, String),
    /// The collector's ack latency p50, p99 (ms).
    ack_ms: Option<(f64, f64)>,
}

impl Side {
    fn new(name: String, a: &Snapshot, b: &Snapshot) -> Side {
        Side {
            name,
            window_s: (b.at - a.at).as_secs_f64(),
            cpu_s: b.cpu_s - a.cpu_s,
            samples: b.samples - a.samples,
            samples_s: (b.samples_at - a.samples_at).as_secs_f64(),
            rss_kib: b.rss_kib,
            hwm_kib: b.hwm_kib,
            disk_growth: (b.disk.0 as i64 - a.disk.0 as i64, b.disk.1 as i64 - a.disk.1 as i64),
            load: (a.loadavg.clone(), b.loadavg.clone()),
            ack_ms: None,
        }
    }

    /// CPU over the window, divided by the samples stored in the window at the rate measured.
    fn us_per_sample(&self) -> f64 {
        self.cpu_s * 1e6 / (self.rate() * self.window_s)
    }

    fn rate(&self) -> f64 {
        self.samples / self.samples_s
    }

    fn disk_per_sample(&self) -> f64 {
        self.disk_growth.0 as f64 / (self.rate() * self.window_s)
    }
}

/// A process's figures at one moment, and its data directory's size.
struct Snapshot {
    at: Instant,
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// The sample counter of the process's own `/metrics`, and when it was read.
    samples: f64,
    samples_at: Instant,
    disk: (u64, u64),
    loadavg: String,
}

/// Takes a snapshot. The collector's `/metrics` also renders every series it holds (the
/// latest-value table), so it is read outside the window: before the CPU figure at the
/// window's start (`start`), after it at the end.
fn snapshot(pid: u32, metrics_port: u16, counter: &str, dir: &Path, start: bool) -> anyhow::Result<Snapshot> {
    let samples = || -> anyhow::Result<(f64, Instant)> {
        let text = http_get(metrics_port, "/metrics")?;
        let at = Instant::now();
        let n = metric_sum(&text, counter).with_context(|| format!("no {counter} in the /metrics of pid {pid}"))?;
        Ok((n, at))
    };
    let before = if start { Some(samples()?) } else { None };
    let at = Instant::now();
    let (hwm_kib, rss_kib, cpu_s) = proc_usage(pid).with_context(|| format!("reading /proc/{pid} (did it exit?)"))?;
    let (samples, samples_at) = match before {
        Some(s) => s,
        None => samples()?,
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg")?.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    Ok(Snapshot { at, cpu_s, rss_kib, hwm_kib, samples, samples_at, disk: dir_size(dir), loadavg })
}

/// Bytes under `dir`: allocated (blocks, what `du` shows) and apparent (file lengths).
/// Files that vanish during the walk (renamed, deleted) are skipped.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut allocated, mut apparent) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = dir_size(&entry.path());
            allocated += a;
            apparent += b;
        } else {
            allocated += meta.blocks() * 512;
            apparent += meta.len();
        }
    }
    (allocated, apparent)
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// The collector fed by simulated agents: `rate / samples_per_batch` agents with a batch of
/// that many host series every second.
fn collector_side(bin: &Path, args: &Args) -> anyhow::Result<Side> {
    let agents = (args.rate / args.samples_per_batch).max(1) as usize;
    let samples = (args.rate as usize / agents).max(1);
    let pki =
        if args.tls { Some(Arc::new(BenchPki::new(&target_dir().join("bench").join("compare-pki"))?)) } else { None };
    let mut extra = args.collector_toml.join("\n");
    extra.push('\n');
    extra.push_str(&pki.as_ref().map(|p| p.collector_toml()).unwrap_or_default());
    let (collector, grpc, http, dir) = start_collector_http(bin, "compare", &extra)?;
    let pid = collector.0.id();
    let data = dir.join("data");
    let scheme = if args.tls { "https" } else { "http" };
    let load = Load {
        url: format!("{scheme}://127.0.0.1:{grpc}"),
        agents,
        samples,
        interval: Duration::from_secs(1),
        kind: BatchKind::Host,
        pki,
    };
    println!(
        "bench compare: collector pid {pid}, {agents} agents × {samples} samples every 1 s over {}, \
         {} s warm-up, {} s measured",
        if args.tls { "TLS (client certificates)" } else { "plaintext" },
        args.warmup,
        args.seconds
    );
    let (warmup, seconds) = (Duration::from_secs(args.warmup), Duration::from_secs(args.seconds));
    let rt = tokio::runtime::Runtime::new()?;
    let (result, a, b) = rt.block_on(async {
        let streams = connect_all(&load).await;
        if streams.is_empty() {
            bail!("no simulated agent could connect (see {}/collector.log)", dir.display());
        }
        let start_at = Instant::now() + Duration::from_secs(1);
        let measure = (start_at + warmup, start_at + warmup + seconds);
        let snaps = tokio::task::spawn_blocking(move || {
            sleep_until(measure.0);
            let a = snapshot(pid, http, "pikett_ingest_samples_total", &data, true)?;
            sleep_until(measure.1);
            let b = snapshot(pid, http, "pikett_ingest_samples_total", &data, false)?;
            anyhow::Ok((a, b))
        });
        let result = drive(&load, streams, start_at, measure).await;
        let (a, b) = snaps.await.context("snapshot task")??;
        anyhow::Ok((result, a, b))
    })?;
    drop(collector);
    println!(
        "collector: {}/{agents} agents connected, {} batches of the window acked",
        result.connected, result.acked_batches
    );
    let mut side = Side::new("pikett-collector".into(), &a, &b);
    let lat = &result.latencies_us;
    side.ack_ms = Some((percentile(lat, 0.5), percentile(lat, 0.99)));
    Ok(side)
}

/// Prometheus scraping `rate / 1000` synthetic targets of about 1,000 series every second.
fn prometheus_side(args: &Args) -> anyhow::Result<Side> {
    let targets = (args.rate / 1000).max(1) as usize;
    let series = (args.rate as usize / targets).max(1);
    let bench_dir = target_dir().join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    // On the same file system as the collector's data directory.
    let tmp = tempfile::Builder::new()
        .prefix("compare-prometheus-")
        .tempdir_in(&bench_dir)
        .context("creating a temporary directory for Prometheus")?;
    let data = tmp.path().join("data");
    // One worker: the targets are not what is measured, and must leave the cores to Prometheus.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let served = rt.block_on(prom_target::start(targets, series))?;
    let list: Vec<String> = served.ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: synthetic\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )?;
    let port = free_port()?;
    let log_path = bench_dir.join("compare-prometheus.log");
    let log = std::fs::File::create(&log_path)?;
    let prometheus = Killed(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS}"))?,
    );
    let pid = prometheus.0.id();
    println!(
        "bench compare: {} pid {pid}, {targets} targets × {series} series every 1 s, {} s warm-up, {} s measured",
        prometheus_version(),
        args.warmup,
        args.seconds
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/-/ready").is_err() {
        if Instant::now() > deadline || std::fs::metadata(format!("/proc/{pid}")).is_err() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("Prometheus did not become ready; {}:\n{log}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The counter appears with the first samples appended; the warm-up starts then.
    const COUNTER: &str = "prometheus_tsdb_head_samples_appended_total";
    while !http_get(port, "/metrics").is_ok_and(|text| metric_sum(&text, COUNTER).is_some_and(|n| n > 0.0)) {
        if Instant::now() > deadline {
            bail!("Prometheus appended no samples within a minute; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now() + Duration::from_secs(args.warmup);
    sleep_until(start);
    let a = snapshot(pid, port, COUNTER, &data, true)?;
    let scrapes = served.scrapes.load(Ordering::Relaxed);
    sleep_until(start + Duration::from_secs(args.seconds));
    let b = snapshot(pid, port, COUNTER, &data, false)?;
    let scrapes = served.scrapes.load(Ordering::Relaxed) - scrapes;
    drop(prometheus);
    drop(rt);
    println!("prometheus: the targets answered {scrapes} scrapes in the window ({targets} targets × 1 per second)");
    Ok(Side::new("Prometheus".into(), &a, &b))
}

/// "Prometheus 2.42.0", from `prometheus --version`.
fn prometheus_version() -> String {
    let out = Command::new(PROMETHEUS).arg("--version").output();
    out.ok()
        .and_then(|o| {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?.to_string();
            Some(format!("Prometheus {}", v.split('+').next().unwrap_or(&v)))
        })
        .unwrap_or_else(|| "Prometheus".into())
}

fn print_table(args: &Args, c: &Side, p: Option<&Side>) {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let rows: Vec<(&str, String, Option<String>, String)> = vec![
        (
            "CPU per sample",
            format!("{:.2} µs", c.us_per_sample()),
            p.map(|p| format!("{:.2} µs", p.us_per_sample())),
            p.map_or(String::new(), |p| format!("{:.2}×", p.us_per_sample() / c.us_per_sample())),
        ),
        (
            "CPU in the window",
            format!("{:.2} s in {:.1} s", c.cpu_s, c.window_s),
            p.map(|p| format!("{:.2} s in {:.1} s", p.cpu_s, p.window_s)),
            String::new(),
        ),
        ("samples/s achieved", format!("{:.0}", c.rate()), p.map(|p| format!("{:.0}", p.rate())), String::new()),
        (
            "RSS (VmRSS / VmHWM)",
            format!("{} / {}", mib(c.rss_kib), mib(c.hwm_kib)),
            p.map(|p| format!("{} / {}", mib(p.rss_kib), mib(p.hwm_kib))),
            p.map_or(String::new(), |p| format!("{:.2}×", p.rss_kib as f64 / c.rss_kib as f64)),
        ),
        (
            "disk bytes per sample",
            format!("{:.2} B", c.disk_per_sample()),
            p.map(|p| format!("{:.2} B", p.disk_per_sample())),
            p.map_or(String::new(), |p| format!("{:.2}×", p.disk_per_sample() / c.disk_per_sample())),
        ),
        (
            "disk growth (du / apparent)",
            format!("{:.1} / {:.1} MiB", c.disk_growth.0 as f64 / 1048576.0, c.disk_growth.1 as f64 / 1048576.0),
            p.map(|p| {
                format!("{:.1} / {:.1} MiB", p.disk_growth.0 as f64 / 1048576.0, p.disk_growth.1 as f64 / 1048576.0)
            }),
            String::new(),
        ),
        (
            "ack latency p50 / p99",
            c.ack_ms.map_or("-".into(), |(p50, p99)| format!("{p50:.1} / {p99:.1} ms")),
            p.map(|_| "-".into()),
            String::new(),
        ),
        ("load average at start", c.load.0.clone(), p.map(|p| p.load.0.clone()), String::new()),
        ("load average at end", c.load.1.clone(), p.map(|p| p.load.1.clone()), String::new()),
    ];
    println!();
    println!(
        "requested: {} samples/s for each side, {} s measured after {} s warm-up{}",
        args.rate,
        args.seconds,
        args.warmup,
        if args.rounds > 1 { format!("; each side's median of {} rounds", args.rounds) } else { String::new() }
    );
    match p {
        Some(p) => println!("{:<28} {:>22} {:>22} {:>18}", "", c.name, p.name, "Prometheus ÷ pikett"),
        None => println!("{:<28} {:>22}", "", c.name),
    }
    for (label, cv, pv, ratio) in rows {
        match &pv {
            Some(pv) => println!("{label:<28} {cv:>22} {pv:>22} {ratio:>18}"),
            None => println!("{label:<28} {cv:>22}"),
        }
    }
    println!();
    println!(
        "CPU: utime+stime of the process over the window, from /proc/PID/stat; samples: each side's own counter \
         (pikett_ingest_samples_total, prometheus_tsdb_head_samples_appended_total, which includes the 5 \
         series Prometheus adds per target and scrape)."
    );
    println!(
        "Disk: growth of the data directory over the window. The collector's samples are in LZ4 batch files \
         and its index; Prometheus's head block is in memory + WAL (and mmapped head chunks) until compaction \
         into a block, which does not happen within this run."
    );
    if p.is_some() {
        println!(
            "The simulated agents (collector side) and the scrape targets (Prometheus side) run in this xtask \
             process and share the machine's cores; their CPU is not counted. Prometheus scrapes plain HTTP."
        );
    }
    for side in std::iter::once(c).chain(p) {
        if side.rate() < args.rate as f64 * 0.9 {
            println!("note: {} did not keep up ({:.0} of {} samples/s)", side.name, side.rate(), args.rate);
        }
    }
}

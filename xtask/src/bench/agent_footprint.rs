//! `cargo xtask bench agent`: the agent (host probe and five `tcp` checks every 30 s, streaming
//! to a local collector) next to Debian's prometheus-node-exporter scraped every 30 s, in the
//! same run: RSS (anonymous and file-backed), threads and CPU seconds per hour of each. Two
//! builds of the agent run side by side: the one that ships (`cargo xtask rpm`: static musl,
//! `dist` profile) and the glibc release build of the other benches. Most of an idle agent's
//! RSS is its own code mapped from the binary (file-backed, shared, reclaimable), so the two
//! differ by the size of their code and glibc's shared libraries, not by the heap.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{ensure_package, http_get, start_collector};
use crate::rpm;
use crate::util::{Killed, build, free_port, proc_usage, wait_port};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
/// The host probe's, the checks' and the scrape interval.
const INTERVAL_S: u64 = 30;
/// Seconds after start not counted in the steady state.
const WARMUP_S: u64 = 10;

pub fn agent(seconds: u64) -> anyhow::Result<()> {
    ensure_package("prometheus-node-exporter", NODE_EXPORTER)?;
    let bin = build("release")?;
    // The shipped build, built as `cargo xtask rpm` builds it (the same packages, so the same
    // dependency features); without the musl tools only the release build is measured.
    let dist = match rpm::preflight().and_then(|()| rpm::build()) {
        Ok(dir) => Some(dir),
        Err(e) => {
            println!("bench agent: not measuring the shipped build (static musl, dist profile): {e:#}");
            None
        }
    };
    let (_collector, port, dir) = start_collector(&bin, "agent", "")?;
    // Five services for the tcp checks to find listening.
    let mut checks = String::new();
    for i in 0..5 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        std::thread::spawn(move || for _ in listener.incoming() {});
        checks += &format!(
            "\n[[checks]]\nname = \"tcp-{i}\"\nkind = \"tcp\"\naddress = \"{address}\"\ninterval = \"{INTERVAL_S}s\"\n"
        );
    }
    let mut agents = Vec::new();
    if let Some(dist) = &dist {
        agents.push(("agent (dist, musl)", start_agent(&dist.join("pikett-agent"), &dir, "dist", port, &checks)?));
    }
    agents.push(("agent (release, glibc)", start_agent(&bin.join("pikett-agent"), &dir, "release", port, &checks)?));
    let ne_port = free_port()?;
    let ne_log = std::fs::File::create(dir.join("node-exporter.log"))?;
    let exporter = Killed(
        Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .stdout(Stdio::from(ne_log.try_clone()?))
            .stderr(Stdio::from(ne_log))
            .spawn()
            .with_context(|| format!("starting {NODE_EXPORTER}"))?,
    );
    wait_port(ne_port, Duration::from_secs(10)).context("prometheus-node-exporter did not start")?;
    let mut pids: Vec<(&str, u32)> = agents.iter().map(|(label, a)| (*label, a.0.id())).collect();
    pids.push(("node_exporter", exporter.0.id()));
    println!(
        "bench agent: host probe + 5 tcp checks every {INTERVAL_S} s ({}) next to prometheus-node-exporter \
         scraped every {INTERVAL_S} s, {seconds} s",
        pids.iter().map(|(label, pid)| format!("{label} pid {pid}")).collect::<Vec<_>>().join(", ")
    );
    // The window is a whole number of intervals after the warm-up, so it holds as many rounds
    // of the agent's probes as of scrapes.
    let intervals = (seconds.saturating_sub(WARMUP_S) / INTERVAL_S).max(1);
    let measured = Duration::from_secs(intervals * INTERVAL_S);
    let started = Instant::now();
    let window = (started + Duration::from_secs(WARMUP_S), started + Duration::from_secs(WARMUP_S) + measured);
    // The scraper Prometheus would be: a GET at the start, then every interval from 1 s into
    // the window (so each scrape's work falls inside it).
    let scraper = std::thread::spawn(move || {
        let (mut series, mut in_window) = (0, 0);
        let mut next = started;
        while next < window.1 {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            if let Ok(text) = http_get(ne_port, "/metrics") {
                series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
                in_window += u32::from(next >= window.0);
            }
            next = if next < window.0 {
                window.0 + Duration::from_secs(1)
            } else {
                next + Duration::from_secs(INTERVAL_S)
            };
        }
        (series, in_window)
    });
    std::thread::sleep(window.0.saturating_duration_since(Instant::now()));
    let cpu0 = pids.iter().map(|(_, pid)| proc_usage(*pid).map(|u| u.2)).collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(window.1.saturating_duration_since(Instant::now()));
    let end = pids.iter().map(|(_, pid)| Usage::read(*pid)).collect::<anyhow::Result<Vec<_>>>()?;
    let measured = measured.as_secs_f64();
    let (series, scrapes) = scraper.join().unwrap_or((0, 0));
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let row = |name: &str, cell: &dyn Fn(usize) -> String| {
        let cells: String = (0..pids.len()).map(|i| format!(" {:>24}", cell(i))).collect();
        println!("{name:<36}{cells}");
    };
    row("", &|i| pids[i].0.to_string());
    row("RSS (VmRSS)", &|i| mib(end[i].rss));
    row("  anonymous (RssAnon: heap, stacks)", &|i| mib(end[i].anon));
    row("  file-backed (RssFile: code, libs)", &|i| mib(end[i].file));
    row("peak RSS (VmHWM)", &|i| mib(end[i].hwm));
    row("threads", &|i| end[i].threads.to_string());
    row("CPU per hour (steady state)", &|i| format!("{:.2} s", (end[i].cpu - cpu0[i]) / measured * 3600.0));
    row("CPU in the window", &|i| format!("{:.2} s", end[i].cpu - cpu0[i]));
    row("CPU in all (incl. start-up)", &|i| format!("{:.2} s", end[i].cpu));
    println!(
        "steady state: {measured:.0} s ({intervals} × {INTERVAL_S} s) after the first {WARMUP_S} s, {scrapes} \
         scrape(s) of node_exporter in it ({series} series each, its default collectors); CPU is counted in \
         10 ms ticks, so short runs are coarse"
    );
    drop(agents);
    Ok(())
}

/// One `pikett-agent run` with the host probe and `checks`, its own host id and spool.
fn start_agent(bin: &Path, dir: &Path, name: &str, port: u16, checks: &str) -> anyhow::Result<Killed> {
    let cfg = dir.join(format!("agent-{name}.toml"));
    let spool: PathBuf = dir.join(format!("spool-{name}"));
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"bench-agent-{name}\"\ncollectors = [\"http://127.0.0.1:{port}\"]\nspool_dir = \"{}\"\n\n\
             [host]\ninterval = \"{INTERVAL_S}s\"\n{checks}",
            spool.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("agent-{name}.log")))?;
    Ok(Killed(
        Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}

/// What a process holds at the end of the window, from /proc/PID/status and stat.
struct Usage {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
    threads: u64,
    cpu: f64,
}

impl Usage {
    fn read(pid: u32) -> anyhow::Result<Usage> {
        let (hwm, rss, cpu) = proc_usage(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Usage { rss, anon: field("RssAnon:"), file: field("RssFile:"), hwm, threads: field("Threads:"), cpu })
    }
}

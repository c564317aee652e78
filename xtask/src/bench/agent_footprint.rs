//! `cargo xtask bench agent`: the release agent (host probe and five `tcp` checks every 30 s,
//! streaming to a local collector) next to Debian's prometheus-node-exporter scraped every
//! 30 s, in the same run: RSS and CPU seconds per hour of each.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{ensure_package, http_get, start_collector};
use crate::util::{Killed, build, free_port, proc_usage, wait_port};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
/// The host probe's, the checks' and the scrape interval.
const INTERVAL_S: u64 = 30;
/// Seconds after start not counted in the steady state.
const WARMUP_S: u64 = 10;

pub fn agent(seconds: u64) -> anyhow::Result<()> {
    ensure_package("prometheus-node-exporter", NODE_EXPORTER)?;
    let bin = build("release")?;
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
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"bench-agent\"\ncollectors = [\"http://127.0.0.1:{port}\"]\nspool_dir = \"{}\"\n\n\
             [host]\ninterval = \"{INTERVAL_S}s\"\n{checks}",
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
            .spawn()
            .context("starting pikett-agent")?,
    );
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
    let (agent_pid, ne_pid) = (agent.0.id(), exporter.0.id());
    println!(
        "bench agent: host probe + 5 tcp checks every {INTERVAL_S} s (agent pid {agent_pid}) next to \
         prometheus-node-exporter scraped every {INTERVAL_S} s (pid {ne_pid}), {seconds} s"
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
    let (_, _, agent_cpu0) = proc_usage(agent_pid)?;
    let (_, _, ne_cpu0) = proc_usage(ne_pid)?;
    std::thread::sleep(window.1.saturating_duration_since(Instant::now()));
    let (agent_hwm, agent_rss, agent_cpu1) = proc_usage(agent_pid)?;
    let (ne_hwm, ne_rss, ne_cpu1) = proc_usage(ne_pid)?;
    let measured = measured.as_secs_f64();
    let (series, scrapes) = scraper.join().unwrap_or((0, 0));
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let per_hour = |a: f64, b: f64| format!("{:.2} s", (b - a) / measured * 3600.0);
    println!("{:<32} {:>16} {:>16}", "", "pikett-agent", "node_exporter");
    println!("{:<32} {:>16} {:>16}", "RSS (VmRSS)", mib(agent_rss), mib(ne_rss));
    println!("{:<32} {:>16} {:>16}", "peak RSS (VmHWM)", mib(agent_hwm), mib(ne_hwm));
    println!(
        "{:<32} {:>16} {:>16}",
        "CPU per hour (steady state)",
        per_hour(agent_cpu0, agent_cpu1),
        per_hour(ne_cpu0, ne_cpu1)
    );
    println!(
        "{:<32} {:>16} {:>16}",
        "CPU in the window",
        format!("{:.2} s", agent_cpu1 - agent_cpu0),
        format!("{:.2} s", ne_cpu1 - ne_cpu0)
    );
    println!(
        "{:<32} {:>16} {:>16}",
        "CPU in all (incl. start-up)",
        format!("{agent_cpu1:.2} s"),
        format!("{ne_cpu1:.2} s")
    );
    println!(
        "steady state: {measured:.0} s ({intervals} × {INTERVAL_S} s) after the first {WARMUP_S} s, {scrapes} \
         scrape(s) of node_exporter in it ({series} series each, its default collectors); CPU is counted in \
         10 ms ticks, so short runs are coarse"
    );
    Ok(())
}

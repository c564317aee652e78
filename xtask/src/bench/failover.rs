//! `bench failover`: collectors sharing a throwaway PostgreSQL; in each round the leader (the
//! node whose `/healthz/leader` answers 200) is killed with SIGKILL, the time until another
//! node answers 200 is measured, and the killed node is started again with the same
//! configuration and ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::pg::BenchPg;
use super::{http_get, percentile, start_collector_http};
use crate::util::{Killed, build, wait_port};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds: the leader killed, another one leading, the killed node started again.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Collectors sharing the database (node_id c1..cN).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The collectors' `[store] lease_ttl`.
    #[arg(long, default_value = "5s")]
    lease_ttl: String,
}

struct Node {
    name: String,
    process: Option<Killed>,
    grpc: u16,
    http: u16,
    dir: PathBuf,
}

impl Node {
    fn leads(&self) -> bool {
        http_get(self.http, "/healthz/leader").is_ok()
    }

    /// Fails with the end of its log when the node's process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.process.as_mut()
            && let Some(status) = p.0.try_wait()?
        {
            bail!("{} exited by itself ({status}); its log ends with:\n{}", self.name, log_tail(&self.dir, 30));
        }
        Ok(())
    }
}

pub fn failover(args: Args) -> anyhow::Result<()> {
    let Args { kills, nodes: n, lease_ttl } = args;
    if n < 2 {
        bail!("--nodes: at least 2");
    }
    let bin = build("release")?;
    // Declared before the collectors, so it is dropped (stopped) after them.
    let pg = BenchPg::start()?;
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("c{i}");
        let config = pg.store_toml(&name, &format!("lease_ttl = \"{lease_ttl}\"\n"));
        let (process, grpc, http, dir) = start_collector_http(&bin, &format!("failover-{name}"), &config)?;
        nodes.push(Node { name, process: Some(process), grpc, http, dir });
    }
    println!(
        "bench failover: {n} collectors on one PostgreSQL 15 (fsync=on), lease_ttl {lease_ttl}, {kills} kills of the leader (SIGKILL); no agent load"
    );
    let started = Instant::now();
    let first = wait_leader(&mut nodes, None, Duration::from_secs(60))?;
    println!("first leader: {} after {:.2} s", nodes[first].name, started.elapsed().as_secs_f64());
    let (mut takeovers_ms, mut restarts_ms) = (Vec::new(), Vec::new());
    for round in 1..=kills {
        let old = wait_leader(&mut nodes, None, Duration::from_secs(60))?;
        let mut process = nodes[old].process.take().expect("every node runs between rounds");
        // SAFETY: kill(2) on our own, not yet reaped, child with a valid signal.
        unsafe { libc::kill(process.0.id() as i32, libc::SIGKILL) };
        let killed_at = Instant::now();
        process.0.wait()?;
        // Reaped: dropping it would signal a pid that may be someone else's by now.
        std::mem::forget(process);
        let new = wait_leader(&mut nodes, Some(old), Duration::from_secs(120))?;
        let took = killed_at.elapsed();
        let restart_at = Instant::now();
        let node = &mut nodes[old];
        node.process = Some(spawn(&bin, &node.dir)?);
        wait_port(node.grpc, Duration::from_secs(30))?;
        http_get(node.http, "/healthz").with_context(|| format!("{} after its restart", node.name))?;
        let up = restart_at.elapsed();
        println!(
            "round {round:>2}: leader {} killed → {} leads after {:.2} s; {} up again in {:.2} s",
            nodes[old].name,
            nodes[new].name,
            took.as_secs_f64(),
            nodes[old].name,
            up.as_secs_f64()
        );
        takeovers_ms.push(took.as_micros() as u64);
        restarts_ms.push(up.as_micros() as u64);
    }
    takeovers_ms.sort_unstable();
    restarts_ms.sort_unstable();
    println!(
        "takeover (SIGKILL → another node answers 200 on /healthz/leader): min {:.2} s, p50 {:.2} s, max {:.2} s",
        percentile(&takeovers_ms, 0.0) / 1000.0,
        percentile(&takeovers_ms, 0.5) / 1000.0,
        percentile(&takeovers_ms, 1.0) / 1000.0
    );
    println!(
        "restart of the killed node (spawn → gRPC and /healthz answer): p50 {:.2} s, max {:.2} s",
        percentile(&restarts_ms, 0.5) / 1000.0,
        percentile(&restarts_ms, 1.0) / 1000.0
    );
    for node in &mut nodes {
        node.check_alive()?;
        let errors: Vec<String> = std::fs::read_to_string(node.dir.join("collector.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_string)
            .collect();
        if !errors.is_empty() {
            println!(
                "{}: {} ERROR lines in its log, the first:\n  {}",
                node.name,
                errors.len(),
                errors[..errors.len().min(5)].join("\n  ")
            );
        }
    }
    drop(nodes);
    drop(pg);
    Ok(())
}

/// Waits until exactly one node (other than `except`) answers 200 on `/healthz/leader`;
/// returns its index. Fails when a node exited, or when none leads within `limit`. Two
/// nodes answering 200 at once are reported.
fn wait_leader(nodes: &mut [Node], except: Option<usize>, limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            if Some(i) != except {
                node.check_alive()?;
            }
        }
        let leaders: Vec<usize> = (0..nodes.len()).filter(|&i| Some(i) != except && nodes[i].leads()).collect();
        match leaders.as_slice() {
            [one] => return Ok(*one),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|&i| nodes[i].name.as_str()).collect();
                println!("warning: {} answer 200 on /healthz/leader at the same time", names.join(" and "));
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|n| format!("{}:\n{}", n.name, log_tail(&n.dir, 15))).collect();
            bail!("no single leader after {limit:?}; the collectors' logs end with:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the collector again from its directory (same `collector.toml`, so the same ports
/// and node id), appending to its log.
fn spawn(bin: &Path, dir: &Path) -> anyhow::Result<Killed> {
    let log = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("collector.log"))?;
    let child = Command::new(bin.join("pikett-collector"))
        .arg("--config")
        .arg(dir.join("collector.toml"))
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting pikett-collector")?;
    Ok(Killed(child))
}

fn log_tail(dir: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

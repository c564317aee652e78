//! A throwaway PostgreSQL 15 for the benchmarks of collectors sharing a database (`bench
//! ingest --store postgres`, `bench failover`), modelled on the collector's test server
//! (`collector/src/store/pg/testing.rs`) but durable: `fsync=on` and `synchronous_commit=on`,
//! PostgreSQL's defaults, so a commit the collectors wait for is on disk.
//!
//! The cluster lives in `target/bench/pg/data` (its log beside it, kept after the run) and
//! listens on 127.0.0.1 at a free port with trust authentication for the superuser `pikett`,
//! who owns the database `pikett`. `initdb` and `pg_ctl` run as the `postgres` user when
//! xtask runs as root (PostgreSQL refuses root). [`BenchPg`] stops the server (`pg_ctl stop
//! -m immediate`) and removes its data directory when dropped, also when the benchmark fails;
//! a server left running by a killed xtask is stopped by the next start.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::ensure_package;
use crate::util::{free_port, target_dir};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running server; stopped and its data directory removed on drop.
pub(crate) struct BenchPg {
    pub port: u16,
    data: PathBuf,
    as_root: bool,
}

impl BenchPg {
    /// Starts a fresh cluster in `target/bench/pg` and creates the database `pikett`.
    pub fn start() -> anyhow::Result<BenchPg> {
        ensure_package("postgresql-15", &format!("{BIN}/initdb"))?;
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let dir = target_dir().join("bench").join("pg");
        let data = dir.join("data");
        // A server of an earlier run that was killed before it could stop it.
        if data.join("postmaster.pid").exists() {
            stop(as_root, &data);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&data)?;
        let log = dir.join("postgres.log");
        std::fs::write(&log, "")?;
        if as_root {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir))?;
        }
        set_mode(&dir, 0o755)?;
        set_mode(&data, 0o700)?;
        run(pg_command(as_root, "initdb")
            .args(["-A", "trust", "-U", "pikett", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&data))?;
        let port = free_port()?;
        // From here on the guard stops whatever started.
        let pg = BenchPg { port, data: data.clone(), as_root };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c full_page_writes=on -c max_connections=200",
            data.display()
        );
        run(pg_command(as_root, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "start"]))
        .with_context(|| format!("starting PostgreSQL (its log: {})", log.display()))?;
        run(Command::new(Path::new(BIN).join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "pikett",
            "pikett",
        ]))?;
        Ok(pg)
    }

    /// The `[store] url` of the database `pikett` (plain text on loopback).
    pub fn url(&self) -> String {
        format!("postgresql://pikett@127.0.0.1:{}/pikett?sslmode=disable", self.port)
    }

    /// The `[store]` section of a collector named `node_id` on this database.
    pub fn store_toml(&self, node_id: &str, extra: &str) -> String {
        format!("[store]\nkind = \"postgres\"\nurl = \"{}\"\nnode_id = \"{node_id}\"\n{extra}", self.url())
    }

    /// CPU seconds (user + system) of the whole cluster so far: the postmaster, its live
    /// children (backends, checkpointer, WAL writer, …) and the children it already reaped
    /// (backends of closed sessions).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        let Some(postmaster) = pid_file.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            bail!("no pid in postmaster.pid");
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let f: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // f[1] is the parent; utime, stime, cutime, cstime are f[11..=14].
            if pid == postmaster {
                total += field(11) + field(12) + field(13) + field(14);
            } else if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(postmaster) {
                total += field(11) + field(12);
            }
        }
        Ok(total / ticks)
    }
}

impl Drop for BenchPg {
    fn drop(&mut self) {
        stop(self.as_root, &self.data);
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn stop(as_root: bool, data: &Path) {
    let _ = pg_command(as_root, "pg_ctl").arg("-D").arg(data).args(["-m", "immediate", "-w", "stop"]).output();
}

fn pg_command(as_root: bool, program: &str) -> Command {
    let program = Path::new(BIN).join(program);
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| path.display().to_string())
}

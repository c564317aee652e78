//! Shared helpers of the xtasks, and `demo` and `test`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace").to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// A `cargo` command at the workspace root, without the package variables
/// `cargo run` set for the xtask itself: build scripts such as ring's rerun
/// when `CARGO_PKG_NAME` or `CARGO_MANIFEST_DIR` change, so keeping them would
/// rebuild half the tree whenever one alternates `cargo build` and `cargo xtask`.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(key.as_ref(), "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
        {
            c.env_remove(key.as_ref());
        }
    }
    c
}

/// Builds the pikett binaries in `profile` ("dev" or "release"); returns their directory.
pub fn build(profile: &str) -> anyhow::Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--profile",
            profile,
            "-p",
            "pikett-agent",
            "-p",
            "pikett-collector",
            "-p",
            "pikett-cli",
            "--bins",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(target_dir().join(if profile == "dev" { "debug" } else { profile }))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until a TCP port accepts connections.
pub fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {limit:?}")
}

pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Debian packages the tests use, with a file each one provides.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("monitoring-plugins-basic", "/usr/lib/nagios/plugins/check_tcp"),
    ("prometheus", "/usr/bin/promtool"),
    ("python3-aiosmtpd", "/usr/lib/python3/dist-packages/aiosmtpd"),
    ("rpm", "/usr/bin/rpm"),
    // The patches probe's tests run the real dnf against a repository they build.
    ("dnf", "/usr/bin/dnf"),
    ("createrepo-c", "/usr/bin/createrepo_c"),
    // The backups probe's tests make real repositories and backups.
    ("restic", "/usr/bin/restic"),
    ("borgbackup", "/usr/bin/borg"),
    ("duplicity", "/usr/bin/duplicity"),
    // A virtual environment for the Python gRPC client (grpcio from PyPI).
    ("python3-venv", "/usr/share/doc/python3-venv"),
    // The customer status page is loaded in a real browser, headless.
    ("chromium", "/usr/bin/chromium"),
    // The collector's PostgreSQL engine is tested against a throwaway PostgreSQL 15.
    ("postgresql-15", "/usr/lib/postgresql/15/bin/initdb"),
];

pub fn test(args: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&str> =
        TEST_PACKAGES.iter().filter(|(_, file)| !Path::new(file).exists()).map(|(pkg, _)| *pkg).collect();
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the tests need these Debian packages: {}; install them (as root: apt-get install {})",
                missing.join(" "),
                missing.join(" ")
            );
        }
        println!("xtask test: installing {}", missing.join(" "));
        // Another apt run (unattended-upgrades on a fresh machine) holds the dpkg lock for a
        // while: wait for it rather than fail.
        const LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";
        let ok = Command::new("apt-get").args(["-o", LOCK_WAIT, "update", "-qq"]).status()?.success()
            && Command::new("apt-get")
                .args(["-o", LOCK_WAIT, "install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()?
                .success();
        if !ok {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    let status = cargo().args(["test", "--workspace"]).args(args).status()?;
    if !status.success() {
        bail!("cargo test failed");
    }
    Ok(())
}

/// Peak and current RSS (KiB) and CPU seconds (user+system) of a process, from /proc.
pub fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    Ok((field("VmHWM:"), field("VmRSS:"), cpu))
}

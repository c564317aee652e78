//! A throwaway PostgreSQL 15 for tests: started once per test binary, a database per test.
//!
//! `initdb` runs as the `postgres` user when the tests run as root (PostgreSQL refuses root),
//! in a temporary directory it can traverse; the server listens on 127.0.0.1 at a free port
//! and a Unix socket in its data directory, with trust authentication for the user `pikett`,
//! `fsync=off` (the tests reopen stores, they do not crash the server), and TLS on with a
//! certificate for `localhost` and `127.0.0.1` signed by a test CA ([`TestPg::ca_pem`]).
//!
//! The server is stopped (`pg_ctl stop -m immediate`) and its directory removed by an
//! `atexit` handler, registered before the server starts, when the test binary exits
//! normally. A test binary that is killed leaves its server running: its directory is named
//! `pikett-pg-<pid>-…` after the test binary's process, and the next start stops the servers
//! (and removes the directories) of such processes that are gone. A start that fails because
//! its port was taken meanwhile is retried on another.
//!
//! Missing binaries fail the tests with a message saying how to install them: PostgreSQL
//! tests never skip silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running test server.
pub struct TestPg {
    pub port: u16,
    /// The CA that signed the server's certificate.
    pub ca_pem: String,
}

static SERVER: OnceLock<Result<TestPg, String>> = OnceLock::new();

/// The data directory (also the Unix socket's directory) and the temporary directory holding
/// it, of this binary's server, for [`stop_at_exit`]; set before the server starts.
static CLEANUP: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// The prefix of the temporary directories; the test binary's pid and a `-` follow.
const DIR_PREFIX: &str = "pikett-pg-";

/// The test server, started on first use.
pub fn server() -> &'static TestPg {
    match SERVER.get_or_init(start) {
        Ok(pg) => pg,
        Err(e) => panic!("cannot start the test PostgreSQL: {e}"),
    }
}

/// A new, empty database on the test server; returns its URL (plain text, loopback).
pub async fn fresh_database() -> String {
    let pg = server();
    let name = format!("t_{:016x}", rand::random::<u64>());
    let admin = admin_client(&pg.url("postgres")).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    pg.url(&name)
}

/// A plain session (no pikett settings) for a test to look behind the engine's back.
pub async fn admin_client(url: &str) -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(url).expect("test URL");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connecting to the test server");
    tokio::spawn(connection);
    client
}

impl TestPg {
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://pikett@127.0.0.1:{}/{database}?sslmode=disable", self.port)
    }
}

fn start() -> Result<TestPg, String> {
    if !Path::new(BIN).join("initdb").exists() {
        return Err(format!(
            "PostgreSQL 15 is not installed ({BIN}/initdb is missing): run `cargo xtask test`, which installs \
             the Debian package postgresql-15 (or: apt-get install postgresql-15)"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    stop_leftovers(as_root);
    let root = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let data = root.join("data");
    let _ = CLEANUP.set((data.clone(), root.clone()));
    // SAFETY: registering a plain extern "C" function with no arguments.
    unsafe { libc::atexit(stop_at_exit) };
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    if as_root {
        set_mode(&root, 0o755)?;
        run(Command::new("chown").arg("postgres:postgres").arg(&data))?;
    }
    set_mode(&data, 0o700)?;
    let ca_pem = write_server_certificate(&data, as_root)?;
    run(pg_command(as_root, "initdb")
        .args(["-A", "trust", "-U", "pikett", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
        .arg(&data))?;
    // The free port found may be taken by someone else before the server binds it: then
    // the start fails on the bind, and is retried on another port.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on -c ssl_cert_file=../server.crt \
             -c ssl_key_file=../server.key",
            data.display()
        );
        let started = run(pg_command(as_root, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(data.join("log"))
            .args(["-w", "start"]));
        match started {
            Ok(()) => return Ok(TestPg { port, ca_pem }),
            Err(e) if attempt < 5 && bind_failed(&data) => {
                eprintln!("the test PostgreSQL could not bind port {port}, retrying on another: {e}");
                stop(as_root, &data);
                // The next attempt's log shows its own reason.
                let _ = std::fs::remove_file(data.join("log"));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the server's log says it could not bind its port.
fn bind_failed(data: &Path) -> bool {
    let log = std::fs::read_to_string(data.join("log")).unwrap_or_default();
    log.contains("could not bind") || log.contains("Address already in use")
}

/// Stops the servers of earlier test binaries that were killed: their directories carry the
/// pid of a process that is gone.
fn stop_leftovers(as_root: bool) {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        let root = entry.path();
        let data = root.join("data");
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid")).ok();
        let server = postmaster.as_deref().and_then(|p| p.lines().next()).and_then(|l| l.trim().parse::<i32>().ok());
        if server.is_some_and(process_alive) {
            stop(as_root, &data);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

fn stop(as_root: bool, data: &Path) {
    let _ = pg_command(as_root, "pg_ctl").arg("-D").arg(data).args(["-m", "immediate", "-w", "stop"]).output();
}

/// The server's key and certificate beside the data directory (initdb wants it empty),
/// readable by the server only; returns the signing CA.
fn write_server_certificate(data: &Path, as_root: bool) -> Result<String, String> {
    let err = |e: rcgen::Error| format!("making the test certificate: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(err)?
        .signed_by(&key, &issuer)
        .map_err(err)?;
    let dir = data.parent().ok_or("the data directory has no parent")?;
    let (crt, pem) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&crt, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&pem, key.serialize_pem()).map_err(|e| e.to_string())?;
    set_mode(&pem, 0o600)?;
    if as_root {
        run(Command::new("chown").arg("postgres:postgres").arg(&crt).arg(&pem))?;
    }
    Ok(ca_cert.pem())
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

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

extern "C" fn stop_at_exit() {
    if let Some((data, root)) = CLEANUP.get() {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        if data.join("postmaster.pid").exists() {
            stop(as_root, data);
        }
        let _ = std::fs::remove_dir_all(root);
    }
}

//! Harness for the end-to-end tests: a test PKI, free ports, and the real
//! `pikett-collector`, `pikett-agent` and `pikett` binaries as child processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// Builds the binaries once per test process and returns the directory they are in.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = cargo()
            .args(["build", "--quiet", "-p", "pikett-agent", "-p", "pikett-collector", "-p", "pikett-cli", "--bins"])
            // Live fault-injection points (inert unless FAILPOINTS is set), for the crash tests.
            .args(["--features", "pikett-collector/failpoints"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
        target.join("debug")
    })
}

/// A `cargo` command at the workspace root, without the package variables
/// `cargo test` sets for the test binary (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...): build scripts such as ring's rerun when they
/// change, so passing them on would rebuild half the tree on every switch
/// between `cargo test` and a plain `cargo build`.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// A test CA with a collector certificate (localhost, 127.0.0.1) and client certificates.
pub struct Pki {
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "pikett test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        let pki = Pki { dir: dir.to_path_buf(), issuer: Issuer::new(params, key) };
        pki.issue("collector", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        pki
    }

    /// Writes `<name>.pem` and `<name>.key`, subject CN = name.
    pub fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        // Private keys as an operator keeps them (the collector refuses keys others may read).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    }

    /// A client certificate for an agent whose host id is `host_id`.
    pub fn agent_cert(&self, host_id: &str) {
        self.issue(host_id, &[], ExtendedKeyUsagePurpose::ClientAuth);
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `limit` for a clean exit; returns the exit status code.
    pub fn sigterm(&mut self, limit: Duration) -> Option<i32> {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sigkill();
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a binary with `--config FILE ARGS...`, its stderr and stdout going to `log`.
pub fn spawn(binary: &str, config: &Path, args: &[&str], log: &Path) -> Proc {
    spawn_env(binary, config, args, log, &[])
}

/// [`spawn`] with extra environment variables (e.g. `FAILPOINTS` for fault injection).
pub fn spawn_env(binary: &str, config: &Path, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    let err = out.try_clone().expect("clone log handle");
    let child = Command::new(bin(binary))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    Proc { child, log: log.to_path_buf() }
}

/// Runs a binary to completion.
pub fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(bin(binary)).args(args).output().unwrap_or_else(|e| panic!("running {binary}: {e}"))
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET over plain HTTP/1.1 on loopback; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A collector with TLS (and client-certificate checks) on free loopback ports.
pub struct CollectorSetup {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
}

impl CollectorSetup {
    pub fn new(dir: &Path, pki: &Pki, extra: &str) -> CollectorSetup {
        let grpc_port = free_port();
        let http_port = free_port();
        let data_dir = dir.join("collector-data");
        let config = dir.join("collector.toml");
        // The machine running the tests may be short of disk (a CI runner at 5 % free): the
        // collector's own disk check would then page in every test. Tests that are about the
        // disk set their own thresholds.
        let disk = if extra.contains("data_dir_warn_free_percent") {
            ""
        } else {
            "data_dir_warn_free_percent = 0\ndata_dir_crit_free_percent = 0\n"
        };
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{grpc_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\ndata_dir = \"{}\"\n{disk}{extra}\n\
                 [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
                data_dir.display(),
                pki.path("collector.pem"),
                pki.path("collector.key"),
                pki.path("ca.pem"),
            ),
        )
        .expect("write collector.toml");
        CollectorSetup { config, data_dir, grpc_port, http_port, log: dir.join("collector.log") }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    /// Starts `pikett-collector serve` and waits until `/readyz` answers 200.
    pub fn start(&self) -> Proc {
        self.start_env(&[])
    }

    /// [`Self::start`] with extra environment variables, e.g. `FAILPOINTS=name=sleep(300)`
    /// (the test binaries are built with the collector's `failpoints` feature).
    pub fn start_env(&self, env: &[(&str, &str)]) -> Proc {
        let p = spawn_env("pikett-collector", &self.config, &["serve"], &self.log, env);
        let ready = wait_for(Duration::from_secs(20), || {
            http_get(self.http_port, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
        });
        assert!(ready.is_some(), "collector did not become ready; log:\n{}", p.log_text());
        p
    }

    /// Runs the `pikett` CLI against this collector.
    pub fn pikett(&self, args: &[&str], ca_file: &str) -> Output {
        let url = self.url();
        let mut all = vec!["--collector", &url, "--ca-file", ca_file];
        all.extend_from_slice(args);
        run("pikett", &all)
    }

    /// `pikett` as the staff member `user` (the CLI takes the acting user from `USER`).
    pub fn pikett_as(&self, user: &str, args: &[&str], ca_file: &str) -> Output {
        let url = self.url();
        Command::new(bin("pikett"))
            .args(["--collector", &url, "--ca-file", ca_file])
            .args(args)
            .env("USER", user)
            .output()
            .unwrap_or_else(|e| panic!("running pikett: {e}"))
    }
}

/// An agent config for `host_id` talking TLS to `collector_url`.
pub fn agent_config(dir: &Path, pki: &Pki, host_id: &str, collector_url: &str, extra: &str) -> PathBuf {
    pki.agent_cert(host_id);
    // The machine running the tests may be short of disk or memory (a CI runner at 99 %):
    // the host probe would then raise host/disk and page in every test. Tests about the
    // host's thresholds set their own.
    const QUIET_HOST: &str =
        "disk_warn = \"100%\"\ndisk_crit = \"100%\"\nmemory_warn = \"100%\"\nmemory_crit = \"100%\"\n";
    let extra = if extra.contains("disk_warn") || extra.contains("memory_warn") {
        extra.to_string()
    } else if extra.contains("[host]\n") {
        extra.replacen("[host]\n", &format!("[host]\n{QUIET_HOST}"), 1)
    } else {
        format!("{extra}\n[host]\n{QUIET_HOST}")
    };
    let path = dir.join(format!("{host_id}.toml"));
    std::fs::write(
        &path,
        format!(
            "host_id = \"{host_id}\"\ncustomer = \"acme\"\ncollectors = [\"{collector_url}\"]\n\
             spool_dir = \"{}\"\nbatch_interval = \"200ms\"\n{extra}\n\
             [tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join(format!("{host_id}-spool")).display(),
            pki.path("ca.pem"),
            pki.path(&format!("{host_id}.pem")),
            pki.path(&format!("{host_id}.key")),
        ),
    )
    .expect("write agent config");
    path
}

/// Parses JSON lines.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// One request received by a [`Receiver`].
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
    pub at: std::time::SystemTime,
    /// The status the receiver answered with.
    pub status: u16,
}

/// One HTTP/1.1 request as a test's stand-in server reads it.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

/// Reads one request (request line, headers, a `Content-Length` body) from `stream`;
/// `None` when the peer sent no complete request.
pub fn read_http_request(stream: &std::net::TcpStream) -> Option<HttpRequest> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A local HTTP/1.1 receiver standing in for an SMS or voice gateway: records
/// every request and answers with a status the test sets.
pub struct Receiver {
    pub port: u16,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(status: u16) -> Receiver {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(status));
        let received: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let (st, rec) = (status.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (st, rec) = (st.clone(), rec.clone());
                std::thread::spawn(move || {
                    let Some(HttpRequest { path, headers, body, .. }) = read_http_request(&stream) else {
                        return;
                    };
                    let code = st.load(std::sync::atomic::Ordering::SeqCst);
                    rec.lock().expect("lock").push(Received {
                        path,
                        headers,
                        body,
                        at: std::time::SystemTime::now(),
                        status: code,
                    });
                    let _ = write!(stream, "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                });
            }
        });
        Receiver { port, status, received }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/send", self.port)
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

/// A `command` check whose exit code the test sets by writing `state`.
pub struct ControlledCheck {
    pub script: PathBuf,
    pub state: PathBuf,
}

impl ControlledCheck {
    pub fn new(dir: &Path) -> ControlledCheck {
        use std::os::unix::fs::PermissionsExt;
        let state = dir.join("check-state");
        std::fs::write(&state, "0").expect("write state");
        let script = dir.join("check_controlled");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncode=$(cat {})\ncase $code in 0) echo \"OK - fine|v=1\";; 1) echo \"WARNING - degraded\";; 2) echo \"CRITICAL - broken\";; esac\nexit $code\n",
                state.display()
            ),
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ControlledCheck { script, state }
    }

    pub fn set(&self, code: u8) {
        std::fs::write(&self.state, code.to_string()).expect("write state");
    }

    /// The `[[checks]]` table for the agent config (check name `command/ctl`).
    pub fn toml(&self) -> String {
        format!(
            "[[checks]]\nname = \"ctl\"\nkind = \"command\"\ncommand = [\"{}\"]\ninterval = \"500ms\"\ntimeout = \"5s\"\n",
            self.script.display()
        )
    }
}

/// `pikett faults --all --output json` as values.
pub fn faults(collector: &CollectorSetup, ca: &str) -> Vec<serde_json::Value> {
    json_lines(&collector.pikett(&["faults", "--all", "--output", "json"], ca).stdout)
}

/// The fault of `check` on `host` in state `state`, if any.
pub fn find_fault(
    collector: &CollectorSetup,
    ca: &str,
    host: &str,
    check: &str,
    state: &str,
) -> Option<serde_json::Value> {
    faults(collector, ca).into_iter().find(|f| f["host"] == host && f["check"] == check && f["state"] == state)
}

/// A real SMTP server (Python's aiosmtpd, Debian's python3-aiosmtpd) writing a Maildir.
pub struct Smtp {
    child: Child,
    pub port: u16,
    pub maildir: tempfile::TempDir,
}

impl Smtp {
    pub fn start() -> Smtp {
        let port = free_port();
        let maildir = tempfile::tempdir().expect("maildir");
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (Debian package python3-aiosmtpd)");
        let up = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "aiosmtpd did not start; is python3-aiosmtpd installed?");
        Smtp { child, port, maildir }
    }

    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.path().join("mail").join("new")) else { return vec![] };
        entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The phone number of `alice` in [`alice_paged_by_sms`].
pub const ALICE_SMS: &str = "+4915100000001";

/// Collector config in which `alice` alone is on call (the primary rotation) and is paged by
/// SMS through `sms`; a fault opens on the first non-OK result. `escalation` adds keys to
/// `[escalation]`; `extra` is appended.
pub fn alice_paged_by_sms(sms: &Receiver, escalation: &str, extra: &str) -> String {
    format!(
        r#"
[faults]
for = 1

[people.alice]
sms = "{ALICE_SMS}"
rules = [ {{ channel = "sms" }} ]

[[rotations]]
role = "primary"
members = ["alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[escalation]
warning_channel = "sms"
{escalation}

[channels.sms]
gateways = ["{url}"]
body = '{{"to": "{{{{to}}}}", "text": "{{{{text}}}}"}}'
{extra}
"#,
        url = sms.url(),
    )
}

/// A small tmpfs mounted for a test (needs root); unmounted (lazily) when dropped.
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "64m") at `at`; `None` where mounting is not possible.
    pub fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).expect("create mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `file` until its file system is full.
pub fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).expect("create filler");
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    // The last bytes: small writes until not even those fit.
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

/// The collector's ingest log in `data_dir` (the collector must be stopped), to check what
/// it stored.
pub fn open_batch_log(
    storage: pikett_collector::store::SledStorage,
    data_dir: &Path,
) -> Result<pikett_collector::services::batches::BatchLog, pikett_collector::services::batches::BatchLogError> {
    use pikett_collector::store::batch_files::{BatchFiles, DIR};
    let files = BatchFiles::open(&data_dir.join(DIR), Duration::from_secs(3600), false)?;
    pikett_collector::services::batches::BatchLog::open(std::sync::Arc::new(storage), files)
}

/// The stdout of a command that must succeed; its exit code, stdout and stderr otherwise.
pub fn success_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The single JSON line a successful `--output json` command printed.
pub fn one_json_line(out: &Output) -> serde_json::Value {
    let mut lines = json_lines(success_stdout(out).as_bytes());
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.remove(0)
}

/// [`alice_paged_by_sms`] with `who` in the primary rotation and bob as a person too.
pub fn primary_rotation_of(sms: &Receiver, who: &str) -> String {
    alice_paged_by_sms(sms, "", "").replace("members = [\"alice\"]", &format!("members = [\"{who}\"]")).replace(
        "[people.alice]",
        "[people.bob]\nsms = \"+4915100000002\"\nrules = [ { channel = \"sms\" } ]\n\n[people.alice]",
    )
}

/// Who `pikett oncall` says holds the primary role now.
pub fn oncall_primary(collector: &CollectorSetup, ca: &str) -> String {
    let out = collector.pikett(&["oncall", "--output", "json"], ca);
    json_lines(success_stdout(&out).as_bytes())
        .iter()
        .find(|r| r["role"] == "primary")
        .and_then(|r| r["person"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no primary in {}", String::from_utf8_lossy(&out.stdout)))
}

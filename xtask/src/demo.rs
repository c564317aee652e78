//! `cargo xtask demo`: a collector, an agent and a stand-in SMS gateway on loopback, with a
//! customer, an SLA contract, three people on call and a check the user can break, so that
//! faults, paging, escalation, acknowledgement, on-call, incidents and SLA reports can all be
//! tried within minutes.
//!
//! The config files are written once into the demo's directory and then left alone, so the
//! user's edits survive the next run; `--reset` starts afresh.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{self, Killed};

#[derive(clap::Args)]
pub struct Args {
    /// Delete the demo's directory first (configs, data, logs): fresh configs and no history.
    #[arg(long)]
    reset: bool,
    /// Stop after this many seconds instead of running until Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    stop_after: Option<u64>,
    /// Only write the demo's config files into DIR (paths inside DIR) and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["reset", "stop_after"])]
    write_config: Option<PathBuf>,
}

/// Fixed loopback ports, so the commands the demo prints stay the same from run to run.
const GRPC_PORT: u16 = 19740;
const HTTP_PORT: u16 = 19741;
const SMS_PORT: u16 = 19742;

const CUSTOMER: &str = "acme";
const HOST: &str = "web01.acme.example";
/// The check the user breaks: `[[checks]] name = "app"`, kind command.
const CHECK: &str = "command/app";
/// The file whose presence makes the check CRITICAL.
const BROKEN: &str = "broken";
/// Marks a directory made by this version of the demo (an older one wrote other configs).
const MARKER: &str = ".pikett-demo";

/// Who gets which SMS, to name them in the stand-in's output.
const PHONES: &[(&str, &str)] = &[
    ("+41790000001", "alice"),
    ("+41790000002", "bob"),
    ("+41790000003", "carol"),
    ("+41790000099", "acme's contact"),
];

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = args.write_config {
        // The configs name files inside the directory: absolute, so they work from anywhere.
        let dir = absolute(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (path, _) in write_configs(&dir)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let dir = absolute(&util::target_dir().join("demo"))?;
    if args.reset && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("demo: --reset: removed {} (configs, data, logs)", dir.display());
    } else if dir.exists() && !dir.join(MARKER).exists() {
        // An older demo's directory: its configs lack everything this one shows.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("demo: {} was made by an older demo; starting afresh", dir.display());
    }

    println!("demo: building pikett-collector, pikett-agent and pikett (the first build takes a few minutes)");
    let bin = absolute(&util::build("dev")?)?;

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by cargo xtask demo\n")?;
    for (path, written) in write_configs(&dir)? {
        if written {
            println!("demo: wrote {}", path.display());
        } else {
            println!(
                "demo: kept {} as it is (yours to edit; `cargo xtask demo --reset` for a fresh one)",
                path.display()
            );
        }
    }
    if dir.join("collector-data").exists() {
        println!(
            "demo: the history of earlier runs is kept (`--reset` starts without it); a host silent \
             for longer than its timeout while the demo was stopped was down: a host/reachable \
             page and its resolution come first"
        );
    }
    let collector_cfg = dir.join("collector.toml");
    let agent_cfg = dir.join("agent.toml");
    check_config(&bin.join("pikett-collector"), &collector_cfg)?;
    check_config(&bin.join("pikett-agent"), &agent_cfg)?;

    // The addresses come from the file, which the user may have edited.
    let collector_text = std::fs::read_to_string(&collector_cfg)?;
    let grpc = top_level_string(&collector_text, "listen").unwrap_or_else(|| format!("127.0.0.1:{GRPC_PORT}"));
    let http = top_level_string(&collector_text, "http_listen").unwrap_or_else(|| format!("127.0.0.1:{HTTP_PORT}"));
    for addr in [&grpc, &http] {
        if TcpStream::connect(addr.as_str()).is_ok() {
            bail!(
                "something already listens on {addr} (a demo still running?); stop it, or change the port in {}",
                collector_cfg.display()
            );
        }
    }
    let sms = TcpListener::bind(("127.0.0.1", SMS_PORT))
        .with_context(|| format!("the SMS stand-in cannot listen on 127.0.0.1:{SMS_PORT} (a demo still running?)"))?;
    std::thread::spawn(move || sms_gateway(sms));

    // stdout and stderr share one handle (one file offset), so neither overwrites the other.
    let log = |name: &str| -> anyhow::Result<(Stdio, Stdio)> {
        let file = std::fs::File::create(dir.join(name))?;
        Ok((file.try_clone()?.into(), file.into()))
    };
    let (out, err) = log("collector.log")?;
    let mut collector = Killed(
        Command::new(bin.join("pikett-collector"))
            .arg("--config")
            .arg(&collector_cfg)
            .arg("serve")
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting pikett-collector")?,
    );
    wait_listening(&grpc, &mut collector, &dir.join("collector.log"))?;
    let (out, err) = log("agent.log")?;
    let mut agent = Killed(
        Command::new(bin.join("pikett-agent"))
            .arg("--config")
            .arg(&agent_cfg)
            .arg("run")
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting pikett-agent")?,
    );

    let url = format!("http://{grpc}");
    let pikett = bin.join("pikett");
    // The first batch arrives within a second or two; status is more telling with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !host_known(&pikett, &url) {
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("\n$ pikett --collector {url} status");
    let status = Command::new(&pikett).args(["--collector", &url, "status"]).status()?;
    if !status.success() {
        bail!("pikett status failed; see {}", dir.join("collector.log").display());
    }
    print_walkthrough(&bin, &dir, &url, &http);

    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for (name, child) in [("pikett-collector", &mut collector), ("pikett-agent", &mut agent)] {
            if let Some(exit) = child.0.try_wait()? {
                let log = if name == "pikett-agent" { "agent.log" } else { "collector.log" };
                bail!("{name} stopped ({exit}); see {}", dir.join(log).display());
            }
        }
        if args.stop_after.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            println!("demo: stopping after {}s", started.elapsed().as_secs());
            return Ok(());
        }
    }
}

fn print_walkthrough(bin: &Path, dir: &Path, url: &str, http: &str) {
    let broken = dir.join(BROKEN);
    let month = jiff::Timestamp::now()
        .in_tz("Europe/Zurich")
        .map(|z| z.strftime("%Y-%m").to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().strftime("%Y-%m").to_string());
    println!(
        r#"
demo: running. Customer {CUSTOMER} (SLA contract "gold") with host {HOST}. On call: alice
and bob take turns as primary and secondary, carol is management; a page not acknowledged
within a minute goes to the next role. SMS go to a stand-in gateway inside this process,
which prints every message it receives here.

In another terminal:

  export PATH={bin}:$PATH
  export PIKETT_COLLECTOR={url}      # or pass --collector {url} to every command

Then try, in this order (about five minutes):

  pikett status                      hosts up and down, open faults, who is on call
  touch {broken}
                                     breaks the check {CHECK}: CRITICAL every 5 s,
                                     a fault opens after two results and pages the primary
  pikett faults                      the open fault; its ID is the first column
  (wait a minute, do not ack)        nobody acknowledged: the secondary is paged too
  pikett ack ID                      acknowledges it: the escalation stops
  pikett oncall                      who holds primary, secondary and management now
  pikett incidents                   the incident the fault opened (pikett incident show ID)
  rm {broken}
                                     the check is OK again: the fault resolves (an SMS says so)
  pikett sla report --customer {CUSTOMER} --month {month}
                                     availability under the contract, the outage you made,
                                     and whether it was acknowledged in time

Configs: {dir}/collector.toml and agent.toml, kept across runs: edit them and run
`cargo xtask demo` again (`cargo xtask demo --reset` starts afresh, history included).
Logs: {dir}/collector.log and agent.log. Metrics: http://{http}/metrics
Ctrl-C stops the demo.
"#,
        bin = bin.display(),
        broken = broken.display(),
        dir = dir.display(),
    );
}

/// Whether the collector knows the demo host yet.
fn host_known(pikett: &Path, url: &str) -> bool {
    Command::new(pikett)
        .args(["--collector", url, "--output", "json", "hosts"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(HOST))
}

/// Runs `BINARY --config FILE check-config`; its own output names any problem.
fn check_config(binary: &Path, config: &Path) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("{} is not valid (see above); fix it, or `cargo xtask demo --reset` for a fresh one", config.display());
    }
    Ok(())
}

/// Waits until the collector accepts connections on `addr`, or says why it stopped.
fn wait_listening(addr: &str, collector: &mut Killed, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(exit) = collector.0.try_wait()? {
            bail!("pikett-collector stopped ({exit}); see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("pikett-collector does not listen on {addr} after 20s; see {}", log.display())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() { Ok(path.to_path_buf()) } else { Ok(std::env::current_dir()?.join(path)) }
}

/// Writes the demo's config files into `dir` where they are missing; returns each file and
/// whether it was written now (false: it existed and was kept).
pub fn write_configs(dir: &Path) -> anyhow::Result<Vec<(PathBuf, bool)>> {
    let files = [("collector.toml", collector_toml(dir)), ("agent.toml", agent_toml(dir))];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        let written = !path.exists();
        if written {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        out.push((path, written));
    }
    Ok(out)
}

fn collector_toml(dir: &Path) -> String {
    let data_dir = toml_str(&dir.join("collector-data").display().to_string());
    format!(
        r#"# The pikett demo's collector, written by `cargo xtask demo`. Edit it freely: the demo
# keeps this file (`cargo xtask demo --reset` writes a fresh one). Every key is described
# in docs/configuration.md. Delays are short so that a fault pages and escalates within
# minutes.

listen = "127.0.0.1:{GRPC_PORT}"        # gRPC: agents and the pikett CLI
http_listen = "127.0.0.1:{HTTP_PORT}"   # /metrics, /healthz, /readyz
data_dir = {data_dir}

[customers.{CUSTOMER}]
sla = "gold"
# A premium customer: its contact gets a copy of every critical alarm and its resolution.
copy_alerts = true
contacts = [ {{ sms = "+41790000099" }} ]

[faults]
for = 2          # two non-OK results in a row open a fault

[people.alice]
sms = "+41790000001"
timezone = "Europe/Zurich"
rules = [ {{ channel = "sms" }} ]

[people.bob]
sms = "+41790000002"
timezone = "Europe/Zurich"
rules = [ {{ channel = "sms" }} ]

[people.carol]
sms = "+41790000003"
timezone = "Europe/Zurich"
rules = [ {{ channel = "sms" }} ]

[[rotations]]
role = "primary"
members = ["alice", "bob"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Zurich"

[[rotations]]
role = "secondary"
members = ["bob", "alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Zurich"

[[rotations]]
role = "management"
members = ["carol"]
start = "2026-01-05T09:00:00"
period = "4w"
timezone = "Europe/Zurich"

[escalation]
ack_timeout = "1m"   # not acknowledged within a minute: the next role is paged
repeat = 0
# Warnings are delivered inside support hours only; the demo's are always.
support_hours = {{ days = "mon-sun", from = "00:00", to = "24:00", timezone = "Europe/Zurich" }}
warning_channel = "sms"

[channels.sms]
# The SMS gateway stand-in inside `cargo xtask demo`: it prints every message it receives.
gateways = ["http://127.0.0.1:{SMS_PORT}/sms"]

[sla.gold]
timezone = "Europe/Zurich"
windows = [
  {{ name = "core", from = "07:00", to = "19:00", days = "mon-sun", target = "99.5%" }},
  {{ name = "night", from = "19:00", to = "07:00", days = "mon-sun", target = "95%" }},
]
response_target = "15m"
checks = ["{CHECK}"]
"#
    )
}

fn agent_toml(dir: &Path) -> String {
    let spool = toml_str(&dir.join("agent-spool").display().to_string());
    let broken = dir.join(BROKEN).display().to_string();
    // The path goes to the script as $1, so no shell quoting of it is needed.
    let script = r#"if [ -e "$1" ]; then echo "CRITICAL - $1 exists (rm it to repair)"; exit 2; fi; echo "OK - running|errors=0"; exit 0"#;
    format!(
        r#"# The pikett demo's agent, written by `cargo xtask demo`. Edit it freely: the demo keeps
# this file (`cargo xtask demo --reset` writes a fresh one). Every key is described in
# docs/configuration.md.

host_id = "{HOST}"
customer = "{CUSTOMER}"
collectors = ["http://127.0.0.1:{GRPC_PORT}"]
spool_dir = {spool}

[host]
interval = "10s"

# The check to break: CRITICAL while this file exists.
#   touch {broken}
#   rm {broken}
[[checks]]
name = "app"
kind = "command"
command = ["/bin/sh", "-c", {script}, "app", {broken_toml}]
interval = "5s"
timeout = "5s"

[[checks]]
name = "collector-health"
kind = "http"
url = "http://127.0.0.1:{HTTP_PORT}/healthz"
expect_body = "ok"
interval = "30s"
"#,
        script = toml_str(script),
        broken_toml = toml_str(&broken),
    )
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The string value of a top-level `key = "value"` of a TOML file (before its first table).
fn top_level_string(text: &str, key: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return None;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if k.trim() == key {
            let v = v.trim();
            let v = v.strip_prefix('"')?;
            return Some(v[..v.find('"')?].to_string());
        }
    }
    None
}

/// The SMS gateway stand-in: accepts the collector's POSTs and prints each message.
fn sms_gateway(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(e) = sms_request(stream) {
                println!("[sms] a request could not be read: {e}");
            }
        });
    }
}

fn sms_request(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("Content-Length")?;
        }
    }
    // A gateway refuses absurd bodies; an SMS is short.
    if length > 1 << 20 {
        write!(stream, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{{\"status\":\"ok\"}}"
    )?;
    let time = jiff::Zoned::now().strftime("%H:%M:%S").to_string();
    match (json_string_field(&body, "to"), json_string_field(&body, "text")) {
        (Some(to), Some(text)) => {
            let who = PHONES.iter().find(|(n, _)| *n == to).map(|(_, who)| format!(" ({who})")).unwrap_or_default();
            println!("[sms {time}] to {to}{who}: {text}");
        }
        // A body template the user changed: show it as it came.
        _ => println!("[sms {time}] {}", body.trim()),
    }
    Ok(())
}

/// The string value of `"key": "…"` in a flat JSON object, unescaped. Enough for the bodies
/// the collector's SMS template renders; anything else yields None.
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\"");
    let mut rest = json;
    loop {
        let at = rest.find(&needle)?;
        let after = rest[at + needle.len()..].trim_start();
        rest = &rest[at + needle.len()..];
        let Some(value) = after.strip_prefix(':') else { continue };
        let value = value.trim_start().strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_unescaped() {
        let body = r#"{"to": "+41790000001", "text": "CRITICAL web01: \"app\" - a\\b\n\u00e9 (fault 3)"}"#;
        assert_eq!(json_string_field(body, "to").as_deref(), Some("+41790000001"));
        assert_eq!(json_string_field(body, "text").as_deref(), Some("CRITICAL web01: \"app\" - a\\b\né (fault 3)"));
        assert_eq!(json_string_field(body, "missing"), None);
        assert_eq!(json_string_field(r#"{"to": "unterminated"#, "to"), None);
    }

    #[test]
    fn a_key_inside_a_value_is_not_taken_for_the_key() {
        let body = r#"{"text": "say \"to\" here", "to": "+1"}"#;
        assert_eq!(json_string_field(body, "to").as_deref(), Some("+1"));
    }

    #[test]
    fn top_level_strings_stop_at_the_first_table() {
        let text = "# c\nlisten = \"127.0.0.1:1\"  # x\nhttp_listen=\"127.0.0.1:2\"\n[tls]\nlisten = \"x\"\n";
        assert_eq!(top_level_string(text, "listen").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(top_level_string(text, "http_listen").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(top_level_string("[a]\nlisten = \"y\"\n", "listen"), None);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(toml_str("a\nb"), "\"a\\u000Ab\"");
    }

    #[test]
    fn configs_are_written_once_and_then_kept() {
        let dir = std::env::temp_dir().join(format!("pikett-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = write_configs(&dir).unwrap();
        assert!(first.iter().all(|(_, written)| *written));
        std::fs::write(dir.join("agent.toml"), "# mine\n").unwrap();
        let second = write_configs(&dir).unwrap();
        assert!(second.iter().all(|(_, written)| !*written));
        assert_eq!(std::fs::read_to_string(dir.join("agent.toml")).unwrap(), "# mine\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
